//! The errors of loading settings.

/// A setting that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
    #[error(".env file {path}: {message}")]
    DotEnv { path: String, message: String },
    #[error("invalid setting: {0}")]
    Invalid(String),
}
