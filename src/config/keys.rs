//! The keys file: one record per key, holding the SHA-256 of the key and never the key.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    #[serde(default)]
    pub keys: Vec<KeyRecord>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// Public identifier, safe to log (`key_…`).
    pub id: String,
    /// Operator-chosen label, unique.
    pub name: String,
    pub plan: String,
    /// Lowercase hex SHA-256 of the full `sk-…` key.
    pub sha256: String,
    #[serde(default)]
    pub status: KeyStatus,
    /// Unix seconds after which the key no longer works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(default)]
    pub created_at: u64,
    /// The account has a payment method on file (premium lanes may need one).
    #[serde(default, skip_serializing_if = "is_false")]
    pub payment_method: bool,
    /// The account is on hold for payment review: every request gets 402 account_on_hold.
    #[serde(default, skip_serializing_if = "is_false")]
    pub on_hold: bool,
    /// This account's own monthly spend ceiling, instead of its plan's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceiling_usd: Option<crate::metering::Usd>,
    /// The operator restricted the key to these model ids (aliases or pinned ids); others
    /// get 403 model_not_allowed. Absent: whatever the plan allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    #[default]
    Active,
    Suspended,
    Revoked,
}

impl KeysFile {
    /// A missing keys file is an empty one: a fresh install has no keys yet.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => super::parse_yaml(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeysFile::default()),
            Err(e) => Err(ConfigError::new(
                path,
                "(file)",
                format!("cannot read: {e}"),
            )),
        }
    }

    /// Write atomically (temp file + rename), so a watching gateway never reads half a file.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_yaml::to_string(self).map_err(std::io::Error::other)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("keys"),
            std::process::id()
        ));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(
                b"# FluxRouter keys: SHA-256 hashes only. Managed by `fluxrouter keys`.\n",
            )?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    }
}
