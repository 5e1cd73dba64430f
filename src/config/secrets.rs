//! Secrets: a value that never shows itself. The admin token, the LLM API
//! key, the token signing key and each client secret are read once, at
//! load, from the environment variable (`*_env`) or the file (`*_file`) the
//! config names; a relative `*_file` is a systemd credential, read from
//! `$CREDENTIALS_DIRECTORY` (`LoadCredential=`), or outside systemd from the
//! `credentials` folder beside the config file, where the units take them
//! from (so `sudo heistd config check` reads what the service reads). Client secrets may also be
//! written in the file, and the built-in rehearsal ones are recognised so
//! they can be warned about and refused off loopback. All of them are a
//! [`Secret`], whose `Debug` and `Display` print `<redacted>`, so a config
//! logged with `{:?}` or an error that formats one cannot leak it.
//!
//! It must not decide what a secret is for; the component that needs one
//! asks for its value with [`Secret::expose`], at the point of use.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What every secret shows instead of its value.
pub const REDACTED: &str = "<redacted>";
/// systemd's variable naming the directory of a unit's credentials.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";
/// The built-in client secrets are `<client_id>` followed by this.
pub const BUILTIN_SECRET_SUFFIX: &str = "-rehearsal-secret";

/// A value that must not be printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that sends or checks it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "Secret({REDACTED})")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(REDACTED)
    }
}

/// Writes the value itself: the config's layers are merged as TOML values,
/// so the built-in defaults' client secrets must survive a round trip.
/// Nothing prints a serialised config except `Config::redacted_toml`, which
/// replaces every secret first.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// The value of the environment variable named `variable` among
/// `environment`; unset, empty, or no variable named: none.
pub(super) fn from_environment(environment: &[(String, String)], variable: &str) -> Option<Secret> {
    if variable.is_empty() {
        return None;
    }
    environment
        .iter()
        .rev()
        .find(|(name, _)| name == variable)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
        .map(|value| Secret::new(value.clone()))
}

/// A secret from `file` (if given) or else the variable `variable`. A
/// relative `file` is looked up in `$CREDENTIALS_DIRECTORY`; one trailing
/// newline is dropped. The error says what could not be read, never the value.
pub(super) fn resolve(
    environment: &[(String, String)],
    variable: &str,
    file: Option<&Path>,
) -> Result<Option<Secret>, String> {
    let Some(file) = file else {
        return Ok(from_environment(environment, variable));
    };
    let path = credential_path(environment, file)?;
    let text = std::fs::read_to_string(&path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let value = text
        .strip_suffix('\n')
        .map(|rest| rest.strip_suffix('\r').unwrap_or(rest))
        .unwrap_or(&text);
    if value.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(Some(Secret::new(value)))
}

/// `environment` with `$CREDENTIALS_DIRECTORY` pointing at the
/// `credentials` folder beside `config_file` when systemd did not set it and
/// that folder exists: `/etc/heistd/credentials` is both where the units'
/// `LoadCredential=` lines read from and what an operator's `sudo heistd
/// ...` then reads, so both see the same secrets.
pub(super) fn with_credentials_beside(
    mut environment: Vec<(String, String)>,
    config_file: Option<&Path>,
) -> Vec<(String, String)> {
    if from_environment(&environment, CREDENTIALS_DIRECTORY).is_some() {
        return environment;
    }
    let Some(directory) = config_file
        .and_then(Path::parent)
        .map(|parent| parent.join("credentials"))
    else {
        return environment;
    };
    if directory.is_dir() {
        environment.push((
            CREDENTIALS_DIRECTORY.to_string(),
            directory.display().to_string(),
        ));
    }
    environment
}

fn credential_path(environment: &[(String, String)], file: &Path) -> Result<PathBuf, String> {
    if file.is_absolute() {
        return Ok(file.to_path_buf());
    }
    match from_environment(environment, CREDENTIALS_DIRECTORY) {
        Some(directory) => Ok(Path::new(directory.expose()).join(file)),
        None => Err(format!(
            "`{}` is relative, so it names a systemd credential, but ${CREDENTIALS_DIRECTORY} is not set and there is no `credentials` folder beside the config file (use LoadCredential=, that folder or an absolute path)",
            file.display()
        )),
    }
}

/// Whether `address` (`host:port` or a bare host) is on loopback; a host
/// name other than `localhost` is not.
pub fn is_loopback_address(address: &str) -> bool {
    if let Ok(ip) = address.parse::<std::net::IpAddr>() {
        return ip.is_loopback();
    }
    let host = match address.parse::<std::net::SocketAddr>() {
        Ok(socket) => return socket.ip().is_loopback(),
        Err(_) => address
            .rsplit_once(':')
            .map_or(address, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']'),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_from_files_and_credentials() {
        let directory = tempfile::tempdir().expect("temp dir");
        std::fs::write(directory.path().join("admin"), "from-a-file\n").expect("write");
        let environment = vec![(
            CREDENTIALS_DIRECTORY.to_string(),
            directory.path().display().to_string(),
        )];
        let relative = resolve(&environment, "UNSET", Some(Path::new("admin"))).expect("read");
        assert_eq!(relative.as_ref().map(Secret::expose), Some("from-a-file"));
        let absolute = directory.path().join("admin");
        let read = resolve(&[], "UNSET", Some(&absolute)).expect("read");
        assert_eq!(read.as_ref().map(Secret::expose), Some("from-a-file"));
        let error = resolve(&[], "UNSET", Some(Path::new("admin"))).expect_err("no directory");
        assert!(error.contains(CREDENTIALS_DIRECTORY), "{error}");
        let missing = resolve(&[], "UNSET", Some(Path::new("/nonexistent/secret")));
        assert!(missing.is_err());
    }

    #[test]
    fn outside_systemd_credentials_are_read_beside_the_config_file() {
        let directory = tempfile::tempdir().expect("temp dir");
        let config_file = directory.path().join("heistd.toml");
        let no_folder = with_credentials_beside(Vec::new(), Some(&config_file));
        assert!(resolve(&no_folder, "UNSET", Some(Path::new("admin"))).is_err());
        std::fs::create_dir(directory.path().join("credentials")).expect("mkdir");
        std::fs::write(directory.path().join("credentials/admin"), "beside\n").expect("write");
        let beside = with_credentials_beside(Vec::new(), Some(&config_file));
        let read = resolve(&beside, "UNSET", Some(Path::new("admin"))).expect("read");
        assert_eq!(read.as_ref().map(Secret::expose), Some("beside"));
        // systemd's own directory wins.
        let systemd = vec![(
            CREDENTIALS_DIRECTORY.to_string(),
            "/run/credentials/x".to_string(),
        )];
        let kept = with_credentials_beside(systemd.clone(), Some(&config_file));
        assert_eq!(kept, systemd);
    }

    #[test]
    fn loopback_addresses() {
        for address in [
            "127.0.0.1:9750",
            "127.0.0.1",
            "[::1]:80",
            "localhost:1",
            "::1",
        ] {
            assert!(is_loopback_address(address), "{address}");
        }
        for address in [
            "0.0.0.0:9750",
            "0.0.0.0",
            "10.0.0.1:80",
            "example.com:80",
            "[::]:80",
        ] {
            assert!(!is_loopback_address(address), "{address}");
        }
    }

    #[test]
    fn a_secret_never_formats_its_value() {
        let secret = Secret::new("hunter2-hunter2");
        assert_eq!(secret.to_string(), REDACTED);
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert!(!format!("{:?}", Some(&secret)).contains("hunter2"));
        assert_eq!(secret.expose(), "hunter2-hunter2");
    }

    #[test]
    fn only_a_named_set_and_non_empty_variable_is_a_secret() {
        let environment = vec![
            ("HEISTD_ADMIN_TOKEN".to_string(), "token-value".to_string()),
            ("EMPTY".to_string(), String::new()),
        ];
        let found = from_environment(&environment, "HEISTD_ADMIN_TOKEN");
        assert_eq!(found.as_ref().map(Secret::expose), Some("token-value"));
        assert_eq!(from_environment(&environment, "EMPTY"), None);
        assert_eq!(from_environment(&environment, "UNSET"), None);
        assert_eq!(from_environment(&environment, ""), None);
    }
}
