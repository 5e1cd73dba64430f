//! Loading: the layers (built-in defaults, the file, the
//! `HEISTD_<SECTION>__<KEY>` variables) merged as TOML values, read
//! strictly into a [`Config`] with every problem collected and named by its
//! key and origin, the secrets resolved, and each section's check run.
//!
//! The sections themselves (their keys, defaults and checks) live in their
//! own files; this file knows only how a config is put together.

use std::path::Path;

use super::{
    problems, schedule, secrets, Config, ConfigError, ScheduleConfig, ScheduleFields, ENV_PREFIX,
    ENV_SEPARATOR,
};

/// Loads the config: defaults, then `path` (if given; a given file must
/// exist), then the `HEISTD_*__*` variables among `environment`.
///
/// The layers are merged here as TOML values rather than with the `config`
/// crate, because that crate coerces types (`timeout_ms = true` became 1,
/// `turns = "5"` became 5) and a wrong type must be an error that names
/// the key. Environment values, which are always strings, take the type of
/// the default they override.
pub fn load(
    path: Option<&Path>,
    environment: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    load_with(path, environment, true)
}

/// As [`load`], every key read and checked, but no secret read (each is
/// left unset): for commands that only read the store (`heistd
/// sessions`), which a missing credential they never use must not stop.
pub fn load_without_secrets(
    path: Option<&Path>,
    environment: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    load_with(path, environment, false)
}

fn load_with(
    path: Option<&Path>,
    environment: impl IntoIterator<Item = (String, String)>,
    read_secrets: bool,
) -> Result<Config, ConfigError> {
    let environment = secrets::with_credentials_beside(environment.into_iter().collect(), path);
    let mut merged =
        toml::Value::try_from(Config::builtin()).unwrap_or(toml::Value::Table(Default::default()));
    if let Some(path) = path {
        merge(&mut merged, toml::Value::Table(read_file(path)?));
    }
    let origins = Origins {
        file: path.map(|path| path.display().to_string()),
        environment_keys: apply_environment(&mut merged, &environment),
    };
    let schedules = match &mut merged {
        toml::Value::Table(table) => table.remove("schedule"),
        _ => None,
    };
    // Every bad schedule is reported beside the rest of the file's problems.
    let (schedules, schedule_problems) = read_schedules(schedules, &origins);
    let mut config = match read_every_problem(merged, &origins) {
        Ok(config) => config,
        Err(mut found) => {
            found.extend(schedule_problems);
            return Err(problems::combined(found));
        }
    };
    config.schedule = schedules;
    let invalid = |(key, message): (String, String)| ConfigError::InvalidValue {
        origin: origins.of(&key),
        key,
        message,
    };
    // Unreadable secrets and the store password are reported beside the
    // other problems, all at once, not one per try.
    let (secrets, password) = if read_secrets {
        let secrets = config.resolve_secrets(&environment);
        (secrets, config.store.resolve_password(&environment).err())
    } else {
        (Vec::new(), None)
    };
    // A client whose secret could not be read is not also "too short".
    let unread = |key: &str| {
        secrets.iter().any(|(failed, _)| {
            failed
                .find(']')
                .is_some_and(|end| key.starts_with(&failed[..=end]))
        })
    };
    // Unread, a client's secret from a file or variable is empty: not a
    // problem to report.
    let checks: Vec<(String, String)> = validate(&config)
        .into_iter()
        .filter(|(key, _)| !unread(key) && (read_secrets || !key.ends_with(".client_secret")))
        .collect();
    let problems: Vec<ConfigError> = schedule_problems
        .into_iter()
        .chain(
            secrets
                .into_iter()
                .chain(password)
                .chain(checks)
                .map(invalid),
        )
        .collect();
    if !problems.is_empty() {
        return Err(problems::combined(problems));
    }
    Ok(config)
}

/// Deserialises the merged layers; on errors, reads again past each one
/// (`problems`), so the errors list every key at fault, not the first.
fn read_every_problem(merged: toml::Value, origins: &Origins) -> Result<Config, Vec<ConfigError>> {
    let defaults =
        toml::Value::try_from(Config::builtin()).unwrap_or(toml::Value::Table(Default::default()));
    let mut current = merged;
    let mut found = Vec::new();
    loop {
        let error = match serde_path_to_error::deserialize::<_, Config>(current.clone()) {
            Ok(config) if found.is_empty() => return Ok(config),
            Ok(_) => break,
            Err(error) => deserialize_error(&error, "", origins),
        };
        let can_go_on = problems::step_past(&mut current, &defaults, &error);
        found.push(error);
        if !can_go_on || !problems::room_for_more(&found) {
            break;
        }
    }
    Err(found)
}

/// Where a running daemon's admin API most likely listens: the file's
/// `daemon.admin_address`, overridden by `HEISTD_DAEMON__ADMIN_ADDRESS`,
/// else the default. Read leniently, ignoring every other key, because
/// `heistd reload` must reach the daemon to hear it refuse an invalid file.
pub fn admin_address_hint(
    path: Option<&Path>,
    environment: impl IntoIterator<Item = (String, String)>,
) -> String {
    let variable = format!("{ENV_PREFIX}DAEMON{ENV_SEPARATOR}ADMIN_ADDRESS");
    if let Some((_, value)) = environment.into_iter().find(|(name, _)| *name == variable) {
        return value;
    }
    path.and_then(|path| read_file(path).ok())
        .and_then(|table| {
            table
                .get("daemon")?
                .get("admin_address")?
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_else(|| Config::builtin().daemon.admin_address)
}

/// The variables a process should pass to [`load`]: the real environment.
pub fn process_environment() -> Vec<(String, String)> {
    std::env::vars().collect()
}

/// What systemd tells a service through its environment.
#[derive(Debug, Clone, Default)]
pub struct SystemdEnvironment {
    /// The datagram socket for `READY=1` and friends (`NOTIFY_SOCKET`).
    pub notify_socket: Option<String>,
    /// Microseconds within which systemd expects `WATCHDOG=1`.
    pub watchdog_usec: Option<String>,
    /// The process the watchdog setting is meant for.
    pub watchdog_pid: Option<String>,
}

/// Reads [`SystemdEnvironment`] from the process environment.
pub fn systemd_environment() -> SystemdEnvironment {
    SystemdEnvironment {
        notify_socket: std::env::var("NOTIFY_SOCKET").ok(),
        watchdog_usec: std::env::var("WATCHDOG_USEC").ok(),
        watchdog_pid: std::env::var("WATCHDOG_PID").ok(),
    }
}

impl Config {
    /// Reads the secrets from the variables and files the config names;
    /// returns every one that could not be read, as (key, why).
    fn resolve_secrets(&mut self, environment: &[(String, String)]) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut read = |key: &str, variable: &str, file: Option<&Path>| {
            secrets::resolve(environment, variable, file)
                .map_err(|message| problems.push((key.to_string(), message)))
                .ok()
                .flatten()
        };
        self.daemon.admin_token = read(
            "daemon.admin_token_file",
            &self.daemon.admin_token_env,
            self.daemon.admin_token_file.as_deref(),
        );
        self.llm.api_key = read(
            "llm.api_key_file",
            &self.llm.api_key_env,
            self.llm.api_key_file.as_deref(),
        );
        for (list, endpoints) in [
            ("llm.endpoints", &mut self.llm.endpoints),
            ("llm.fallbacks", &mut self.llm.fallbacks),
        ] {
            for (index, endpoint) in endpoints.iter_mut().enumerate() {
                if endpoint.api_key_env.is_none() && endpoint.api_key_file.is_none() {
                    continue;
                }
                endpoint.api_key = read(
                    &format!("{list}[{index}].api_key_file"),
                    endpoint.api_key_env.as_deref().unwrap_or_default(),
                    endpoint.api_key_file.as_deref(),
                );
            }
        }
        self.oauth.signing_key = read(
            "oauth.signing_key_file",
            &self.oauth.signing_key_env,
            self.oauth.signing_key_file.as_deref(),
        );
        for (index, client) in self.oauth.clients.iter_mut().enumerate() {
            if let Err(problem) = client.resolve_secret(environment, index) {
                problems.push(problem);
            }
        }
        problems
    }
}

/// Where each value came from, so an error can name the file or variable.
struct Origins {
    /// The config file, if one was given.
    file: Option<String>,
    /// (key, variable) for every override, in the order applied.
    environment_keys: Vec<(String, String)>,
}

impl Origins {
    /// The variable that set `key` (or a table holding it, or a key inside
    /// it), else the file, else the defaults. Keys are compared segment by
    /// segment: `llm.timeout` does not hold `llm.timeout_ms`.
    fn of(&self, key: &str) -> String {
        let from_environment = self.environment_keys.iter().find(|(environment_key, _)| {
            is_same_or_below(key, environment_key) || is_same_or_below(environment_key, key)
        });
        match from_environment {
            Some((_, name)) => format!("environment variable {name}"),
            None => self
                .file
                .clone()
                .unwrap_or_else(|| "built-in defaults".into()),
        }
    }
}

/// Whether `key` is `ancestor` or a key inside it (`a.b` or `a[0]` in `a`).
pub(super) fn is_same_or_below(key: &str, ancestor: &str) -> bool {
    match key.strip_prefix(ancestor) {
        Some(rest) => rest.is_empty() || rest.starts_with('.') || rest.starts_with('['),
        None => false,
    }
}

fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    if !path.is_file() {
        return Err(ConfigError::FileNotFound {
            path: path.display().to_string(),
        });
    }
    let syntax = |message: String| ConfigError::Syntax {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|error| syntax(error.to_string()))?;
    toml::from_str(&text).map_err(|error| syntax(error.to_string()))
}

/// Overlays the `HEISTD_*__*` variables on `merged`; returns (key,
/// variable) for each one applied.
fn apply_environment(
    merged: &mut toml::Value,
    environment: &[(String, String)],
) -> Vec<(String, String)> {
    let mut environment_keys = Vec::new();
    for (name, value) in environment {
        let Some(key) = environment_key(name) else {
            continue;
        };
        let path: Vec<&str> = key.split('.').collect();
        let mut overlay = typed_like(lookup(merged, &path), value);
        for segment in path.iter().rev() {
            let mut table = toml::Table::new();
            table.insert(segment.to_string(), overlay);
            overlay = toml::Value::Table(table);
        }
        merge(merged, overlay);
        environment_keys.push((key, name.clone()));
    }
    environment_keys
}

/// The `[[schedule]]` entries, each deserialised and checked
/// (`schedule::check_entry`), with every problem of every entry: an error
/// names the entry (`schedule[2]`) and the field at fault. The entries
/// come back only when all of them are good.
fn read_schedules(
    schedules: Option<toml::Value>,
    origins: &Origins,
) -> (Vec<ScheduleConfig>, Vec<ConfigError>) {
    let invalid = |key: String, message: String| ConfigError::InvalidValue {
        origin: origins.of(&key),
        key,
        message,
    };
    let entries = match schedules {
        None => return (Vec::new(), Vec::new()),
        Some(toml::Value::Array(entries)) => entries,
        Some(other) => {
            let message = format!(
                "must be an array of tables (`[[schedule]]`), not a {}",
                other.type_str()
            );
            return (Vec::new(), vec![invalid("schedule".into(), message)]);
        }
    };
    let mut schedules = Vec::new();
    let mut names = Vec::new();
    let mut found = Vec::new();
    for (index, entry) in entries.into_iter().enumerate() {
        let fields: ScheduleFields = match serde_path_to_error::deserialize(entry) {
            Ok(fields) => fields,
            Err(error) => {
                found.push(deserialize_error(
                    &error,
                    &format!("schedule[{index}]"),
                    origins,
                ));
                continue;
            }
        };
        let name = fields.name.clone();
        match schedule::check_entry(index, fields, &names) {
            Ok(schedule) => schedules.push(schedule),
            Err(problems) => found.extend(
                problems
                    .into_iter()
                    .map(|(key, message)| invalid(key, message)),
            ),
        }
        names.push(name);
    }
    if !found.is_empty() {
        schedules.clear();
    }
    (schedules, found)
}

/// A deserialisation error as a [`ConfigError`] that names the full key;
/// `prefix` is where the deserialised value sits (`schedule[2]`), or empty.
fn deserialize_error(
    error: &serde_path_to_error::Error<toml::de::Error>,
    prefix: &str,
    origins: &Origins,
) -> ConfigError {
    let path = error.path().to_string();
    let key = match (prefix.is_empty(), path.as_str()) {
        (true, _) => path,
        (false, "." | "") => prefix.to_string(),
        (false, _) => format!("{prefix}.{path}"),
    };
    // toml appends its own "in `key`" line; the key is ours to say.
    let message = error
        .inner()
        .to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    if let Some(field) = unknown_field_name(&message) {
        let full_key = if key == "." || key.is_empty() {
            field
        } else if key == field || key.ends_with(&format!(".{field}")) {
            key
        } else {
            format!("{key}.{field}")
        };
        let suggestion =
            problems::did_you_mean(full_key.rsplit('.').next().unwrap_or_default(), &message).map(
                |field| match full_key.rsplit_once('.') {
                    Some((table, _)) => format!("{table}.{field}"),
                    None => field,
                },
            );
        return ConfigError::UnknownKey {
            origin: origins.of(&full_key),
            key: full_key,
            suggestion,
        };
    }
    ConfigError::InvalidValue {
        origin: origins.of(&key),
        key,
        message,
    }
}

/// Overlays `top` on `base`: tables merge key by key, anything else
/// (including arrays of tables) replaces.
fn merge(base: &mut toml::Value, top: toml::Value) {
    match (base, top) {
        (toml::Value::Table(base), toml::Value::Table(top)) => {
            for (key, value) in top {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, top) => *base = top,
    }
}

fn lookup<'a>(value: &'a toml::Value, path: &[&str]) -> Option<&'a toml::Value> {
    path.iter()
        .try_fold(value, |value, segment| value.get(segment))
}

/// An environment string as the type of the value it overrides; with no
/// default to go by, as whatever TOML literal it spells, else a string.
fn typed_like(default: Option<&toml::Value>, text: &str) -> toml::Value {
    let string = || toml::Value::String(text.to_string());
    match default {
        Some(toml::Value::String(_)) => string(),
        Some(toml::Value::Integer(_)) => text
            .trim()
            .parse()
            .map(toml::Value::Integer)
            .unwrap_or_else(|_| string()),
        Some(toml::Value::Float(_)) => text
            .trim()
            .parse()
            .map(toml::Value::Float)
            .unwrap_or_else(|_| string()),
        Some(toml::Value::Boolean(_)) => text
            .trim()
            .parse()
            .map(toml::Value::Boolean)
            .unwrap_or_else(|_| string()),
        _ => toml::from_str::<toml::Table>(&format!("value = {text}"))
            .ok()
            .and_then(|mut table| table.remove("value"))
            .unwrap_or_else(string),
    }
}

fn environment_key(name: &str) -> Option<String> {
    let rest = name.strip_prefix(ENV_PREFIX)?;
    if !rest.contains(ENV_SEPARATOR) {
        // HEISTD_LLM_API_KEY and friends are values, not config overrides.
        return None;
    }
    Some(rest.to_ascii_lowercase().replace(ENV_SEPARATOR, "."))
}

fn unknown_field_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

/// A check of one part of the config: the key at fault and why.
type Check = fn(&Config) -> Result<(), (String, String)>;

/// Every part's check, so one load reports each part's problem at once.
/// (The `[[schedule]]` entries are checked as they are read.)
const CHECKS: [Check; 12] = [
    |config| config.heist.validate(),
    |config| config.llm.validate(),
    |config| config.llm.policy.validate("llm.policy"),
    |config| config.llm.health.validate("llm.health"),
    |config| config.daemon.validate(),
    |config| config.retention.validate(),
    |config| {
        config
            .outbox
            .validate()
            .and_then(|()| config.events.validate())
    },
    |config| config.store.validate(),
    |config| config.cluster.validate(),
    |config| config.services.validate(),
    |config| config.oauth.validate(),
    |config| {
        config
            .companions
            .validate()
            .and_then(|()| config.http.validate())
    },
];

/// The first problem of each part of the config (none: valid).
fn validate(config: &Config) -> Vec<(String, String)> {
    CHECKS
        .iter()
        .filter_map(|check| check(config).err())
        .collect()
}
