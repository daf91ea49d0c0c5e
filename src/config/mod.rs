//! Configuration: serde types for `conf/fluxrouter.yaml`, `lanes.yaml` and the keys file.
//!
//! Every file is parsed with unknown keys rejected, then validated once; what the hot path
//! sees is the compiled form built from these types (see [`crate::routing::RouteTable`] and
//! [`crate::auth::KeyTable`]). Errors name the file, the field and the reason.

pub mod address;
pub mod keys;
pub mod lanes;
pub mod listener;
pub mod server;

use std::fmt;
use std::path::{Path, PathBuf};

pub use address::PerAddressLimits;
pub use keys::{AccountRecord, KeyRecord, KeyStatus, KeysFile};
pub use lanes::{Capability, LanesFile};
pub use server::ServerConfig;

/// A configuration problem: which file, which field, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(file: &Path, field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// A YAML error carries the field path and position in its message.
    pub fn from_yaml(file: &Path, err: serde_norway::Error) -> Self {
        let field = match err.location() {
            Some(loc) => format!("line {} column {}", loc.line(), loc.column()),
            None => "(document)".to_string(),
        };
        ConfigError::new(file, field, err.to_string())
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.file.display(),
            self.field,
            self.reason
        )
    }
}

impl std::error::Error for ConfigError {}

/// Read a YAML file into `T`, rejecting unknown keys (the types use `deny_unknown_fields`).
pub fn read_yaml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path, "(file)", format!("cannot read: {e}")))?;
    parse_yaml(path, &text)
}

pub fn parse_yaml<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    serde_norway::from_str(text).map_err(|e| ConfigError::from_yaml(path, e))
}
