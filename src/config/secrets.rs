//! Secrets: a value that never shows itself. The admin token, the LLM API
//! key and the token signing key are read once, at load, from the
//! environment variables the config names; client secrets come from the
//! file. All of them are a [`Secret`], whose `Debug` and `Display` print
//! `<redacted>`, so a config logged with `{:?}` or an error that formats one
//! cannot leak it.
//!
//! It must not decide what a secret is for; the component that needs one
//! asks for its value with [`Secret::expose`], at the point of use.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What every secret shows instead of its value.
pub const REDACTED: &str = "<redacted>";

/// A value that must not be printed.
#[derive(Clone, PartialEq, Eq)]
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

#[cfg(test)]
mod tests {
    use super::*;

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
