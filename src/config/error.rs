//! [`ConfigError`]: what a load refuses, each case naming the key at fault
//! and the file or variable it came from, so `heistd` can exit with a
//! message that says what to fix.

use super::problems;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} not found")]
    FileNotFound { path: String },
    #[error("config file {path}: {message}")]
    Syntax { path: String, message: String },
    #[error(
        "unknown key `{key}` in {origin}{}",
        problems::suggestion_text(suggestion)
    )]
    UnknownKey {
        key: String,
        origin: String,
        /// The known key that was probably meant.
        suggestion: Option<String>,
    },
    #[error("key `{key}` in {origin}: {message}")]
    InvalidValue {
        key: String,
        origin: String,
        message: String,
    },
    /// Every problem one read found, each on its own line.
    #[error("{count} problems in the config:{problems}")]
    Several { count: usize, problems: String },
}
