//! The `[oauth]` section: the clients the OAuth service knows (one per
//! agent, the operator, and heistd itself) with their secrets and scopes,
//! the key the tokens are signed with, and the tokens' lifetime. The
//! built-in clients' secrets are the rehearsal ones anyone can read here;
//! `Config::warnings` says so.
//!
//! This is only configuration; the OAuth companion and `clients` use it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::secrets::{self, BUILTIN_SECRET_SUFFIX};
use super::Secret;

/// `[oauth]`: the OAuth clients, the token signing key and the tokens'
/// lifetime.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    /// The clients the OAuth service knows, and the secrets the heist runner
    /// presents for each agent (an agent's client id is its name). None
    /// listed: the four agents, `operator` and `heistd`, with the built-in
    /// rehearsal secrets; a list replaces them all.
    #[serde(
        default = "default_oauth_clients",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub clients: Vec<OAuthClient>,
    /// The environment variable holding the HS256 signing key (32 bytes or
    /// more) shared by the OAuth and tool services in separate processes.
    /// Unset: a random key per process, which is right when all companions
    /// run in one process (`services all`, `demo`).
    #[serde(default = "default_signing_key_env")]
    pub signing_key_env: String,
    /// A file holding the signing key (wins over `signing_key_env`); a
    /// relative path names a systemd credential in `$CREDENTIALS_DIRECTORY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key_file: Option<PathBuf>,
    /// The key, read once at load; never written out.
    #[serde(skip)]
    pub signing_key: Option<Secret>,
    /// Token lifetime, 60 to 86400 seconds; heistd renews a token 60 s
    /// before it expires.
    #[serde(default = "default_token_ttl_seconds")]
    pub token_ttl_seconds: u64,
    /// The client heistd itself is to the memory service (its outbox
    /// deliveries and memory reads); it needs `memory:admin`. When no
    /// client of that id is configured, memory calls carry no token.
    #[serde(default = "default_memory_client_id")]
    pub memory_client_id: String,
}

/// `[[oauth.clients]]`: one client of the OAuth service, with exactly one
/// of `client_secret`, `client_secret_env`, `client_secret_file`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthClient {
    /// The client's id; an agent's client id is its name.
    pub client_id: String,
    /// The secret itself, at least 8 characters; better from
    /// `client_secret_env` or `client_secret_file`, so the config file
    /// holds none.
    #[serde(default, skip_serializing_if = "is_unset")]
    pub client_secret: Secret,
    /// An environment variable holding the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_env: Option<String>,
    /// A file holding the secret; a relative path is a systemd credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
    /// Scopes this client may be granted; asking for more is `invalid_scope`.
    pub scopes: Vec<String>,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        Self {
            clients: default_oauth_clients(),
            signing_key_env: default_signing_key_env(),
            signing_key_file: None,
            signing_key: None,
            token_ttl_seconds: default_token_ttl_seconds(),
            memory_client_id: default_memory_client_id(),
        }
    }
}

impl OAuthConfig {
    /// Checks the clients and the token lifetime; the error is (key, why).
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (index, client) in self.clients.iter().enumerate() {
            if client.client_id.is_empty() {
                return Err((
                    format!("oauth.clients[{index}].client_id"),
                    "must not be empty".into(),
                ));
            }
            // `config defaults` and `config check` print every secret as this;
            // a file made from their output must not use it as the secret.
            if client.client_secret.expose() == secrets::REDACTED {
                return Err((
                    format!("oauth.clients[{index}].client_secret"),
                    format!(
                        "is `{}`, as `config defaults` prints it, not a secret: give client_secret_file or client_secret_env (or leave [[oauth.clients]] out to use the built-in rehearsal clients)",
                        secrets::REDACTED
                    ),
                ));
            }
            if client.client_secret.expose().len() < 8 {
                return Err((
                    format!("oauth.clients[{index}].client_secret"),
                    "must be at least 8 characters".into(),
                ));
            }
        }
        if !(60..=86_400).contains(&self.token_ttl_seconds) {
            return Err((
                "oauth.token_ttl_seconds".into(),
                "must be between 60 and 86400".into(),
            ));
        }
        Ok(())
    }
}

impl OAuthClient {
    /// Whether this client's secret is the built-in rehearsal one, which
    /// anyone who has read the source knows.
    pub(super) fn has_builtin_secret(&self) -> bool {
        self.client_secret.expose() == format!("{}{BUILTIN_SECRET_SUFFIX}", self.client_id)
    }

    /// Reads the secret from exactly one of its three sources; `index` is
    /// the client's place in `oauth.clients`, for the key an error names.
    pub(super) fn resolve_secret(
        &mut self,
        environment: &[(String, String)],
        index: usize,
    ) -> Result<(), (String, String)> {
        let key = format!("oauth.clients[{index}]");
        let sources = [
            !self.client_secret.expose().is_empty(),
            self.client_secret_env.is_some(),
            self.client_secret_file.is_some(),
        ];
        if sources.iter().filter(|given| **given).count() != 1 {
            return Err((
                key,
                "give exactly one of client_secret, client_secret_env, client_secret_file".into(),
            ));
        }
        if self.client_secret_env.is_none() && self.client_secret_file.is_none() {
            return Ok(());
        }
        let variable = self.client_secret_env.clone().unwrap_or_default();
        let resolved = secrets::resolve(environment, &variable, self.client_secret_file.as_deref())
            .map_err(|message| (format!("{key}.client_secret_file"), message))?;
        self.client_secret = resolved.ok_or_else(|| {
            (
                format!("{key}.client_secret_env"),
                format!("variable {variable} is not set"),
            )
        })?;
        Ok(())
    }
}

/// Client secrets given in no form are skipped when serialising, so the
/// merged layers do not invent an empty one.
fn is_unset(secret: &Secret) -> bool {
    secret.expose().is_empty()
}

fn default_signing_key_env() -> String {
    "HEISTD_OAUTH_SIGNING_KEY".into()
}

fn default_token_ttl_seconds() -> u64 {
    3600
}

fn default_memory_client_id() -> String {
    "heistd".into()
}

/// The demo crew's credentials. A real deployment replaces these in its
/// file; `config check` shows them redacted either way.
fn default_oauth_clients() -> Vec<OAuthClient> {
    let client = |id: &str, scopes: &[&str]| OAuthClient {
        client_id: id.into(),
        client_secret: Secret::new(format!("{id}{BUILTIN_SECRET_SUFFIX}")),
        client_secret_env: None,
        client_secret_file: None,
        scopes: scopes.iter().map(|scope| scope.to_string()).collect(),
    };
    vec![
        client(
            "planner",
            &[
                "file_reader:use",
                "calculator:use",
                "database_query:use",
                "memory:write",
                "memory:read",
            ],
        ),
        client(
            "hacker",
            &[
                "database_query:use",
                "calculator:use",
                "memory:write",
                "memory:read",
            ],
        ),
        client(
            "safecracker",
            &[
                "calculator:use",
                "file_reader:use",
                "memory:write",
                "memory:read",
            ],
        ),
        client(
            "mole",
            &[
                "file_reader:use",
                "database_query:use",
                "memory:write",
                "memory:read",
            ],
        ),
        client("operator", &["memory:admin"]),
        // heistd's own deliveries to the memory service (the outbox).
        client("heistd", &["memory:admin"]),
    ]
}
