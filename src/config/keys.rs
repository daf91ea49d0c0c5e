//! The keys file: one record per key, holding the SHA-256 of the key and never the key.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::errors::{Context, Error, Fault};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    /// Accounts that own several keys. A key that names no account is an account of its
    /// own (the keys file before accounts existed): see [`KeyRecord::account`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accounts: Vec<AccountRecord>,
    #[serde(default)]
    pub keys: Vec<KeyRecord>,
}

/// An account: the money terms its keys share. Spend, holds, the monthly caps and the hourly
/// limit count per account, whichever of its keys a request came with.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccountRecord {
    /// Public identifier (`acct_…`), what keys name in `account`.
    pub id: String,
    /// The owner's label, unique among accounts.
    pub name: String,
    pub plan: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub payment_method: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub on_hold: bool,
    /// The account's own monthly spend ceiling, instead of its plan's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceiling_usd: Option<crate::units::Usd>,
    /// Model ids every key of the account is restricted to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub created_at: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// Public identifier, safe to log (`key_…`).
    pub id: String,
    /// Operator-chosen label, unique.
    pub name: String,
    /// The account (`acct_…` id) the key belongs to. Absent: the key is an account of its
    /// own, with id `acct_` + the key id's random part, whose terms are the fields below
    /// (`plan`, `payment_method`, `on_hold`, `ceiling_usd`, `models`); a key of a named
    /// account leaves those to the account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The plan of a key that is its own account (empty for a key of a named account).
    #[serde(default, skip_serializing_if = "String::is_empty")]
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
    pub ceiling_usd: Option<crate::units::Usd>,
    /// The operator restricted the key to these model ids (aliases or pinned ids); others
    /// get 403 model_not_allowed. Absent: whatever the plan allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// This key's own monthly spend limit, within its account's: past it the key gets 402
    /// `key_spend_limit_reached` while the account's other keys go on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_limit_usd: Option<crate::units::Usd>,
}

impl KeyRecord {
    /// The id of the account this key belongs to: the named one, or its own.
    pub fn account_id(&self) -> String {
        match &self.account {
            Some(account) => account.clone(),
            None => own_account_id(&self.id),
        }
    }
}

/// The account id of a key that is an account of its own: `acct_` + the random part of the
/// key id. Fixed by the key id, so the ledger can carry a key's spend over to its account
/// when it upgrades (see `metering::ledger`).
pub fn own_account_id(key_id: &str) -> String {
    format!("acct_{}", key_id.strip_prefix("key_").unwrap_or(key_id))
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
        let text = serde_norway::to_string(self).map_err(std::io::Error::other)?;
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

    /// Read, change and write the file under an exclusive lock (a `.lock` file beside it), so
    /// concurrent writers (the CLI on one terminal, a console on another) never lose each
    /// other's changes. Nothing is written when `change` fails.
    pub fn edit<T>(
        path: &Path,
        change: impl FnOnce(&mut KeysFile) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let _lock =
            lock(path).with_context(Fault::Io, || format!("{}: cannot lock", path.display()))?;
        let mut file = KeysFile::load(path).context(Fault::Invalid, "the keys file as it is")?;
        let out = change(&mut file)?;
        file.save(path)
            .with_context(Fault::Io, || format!("{}: cannot write", path.display()))?;
        Ok(out)
    }

    /// The record named `name_or_id` (its name or its `key_…` id).
    pub fn find_mut(&mut self, name_or_id: &str) -> Result<&mut KeyRecord, Error> {
        self.keys
            .iter_mut()
            .find(|k| k.name == name_or_id || k.id == name_or_id)
            .ok_or_else(|| Error::new(Fault::NotFound, format!("no key named '{name_or_id}'")))
    }

    /// The account named `name_or_id` (its name or its `acct_…` id).
    pub fn find_account(&self, name_or_id: &str) -> Result<&AccountRecord, Error> {
        self.accounts
            .iter()
            .find(|a| a.name == name_or_id || a.id == name_or_id)
            .ok_or_else(|| Error::new(Fault::NotFound, format!("no account named '{name_or_id}'")))
    }

    /// Add an account on `plan` (one of `plans`); its name must be new.
    pub fn add_account(&mut self, account: AccountRecord, plans: &[&str]) -> Result<(), Error> {
        if !plans.contains(&account.plan.as_str()) {
            return Err(unknown_plan(&account.plan, plans));
        }
        check_name(&account.name)?;
        if self.accounts.iter().any(|a| a.name == account.name) {
            return Err(Error::new(
                Fault::Conflict,
                format!("an account named '{}' already exists", account.name),
            ));
        }
        self.accounts.push(account);
        Ok(())
    }

    /// Add a record for a new key on `plan` (one of `plans`); the name must be new.
    pub fn add(&mut self, record: KeyRecord, plans: &[&str]) -> Result<(), Error> {
        match &record.account {
            Some(id) if !self.accounts.iter().any(|a| a.id == *id) => {
                return Err(Error::new(Fault::NotFound, format!("no account '{id}'")));
            }
            Some(_) => {}
            None if !plans.contains(&record.plan.as_str()) => {
                return Err(unknown_plan(&record.plan, plans));
            }
            None => {}
        }
        check_name(&record.name)?;
        if self.keys.iter().any(|k| k.name == record.name) {
            return Err(Error::new(
                Fault::Conflict,
                format!("a key named '{}' already exists", record.name),
            ));
        }
        self.keys.push(record);
        Ok(())
    }

    /// Move the key to another of `plans`.
    pub fn set_plan(&mut self, name_or_id: &str, plan: &str, plans: &[&str]) -> Result<(), Error> {
        if !plans.contains(&plan) {
            return Err(unknown_plan(plan, plans));
        }
        // A key of a named account: the account's plan is what changes.
        let record = self.find_mut(name_or_id)?;
        match record.account.clone() {
            None => record.plan = plan.to_string(),
            Some(id) => match self.accounts.iter_mut().find(|a| a.id == id) {
                Some(account) => account.plan = plan.to_string(),
                None => return Err(Error::new(Fault::NotFound, format!("no account '{id}'"))),
            },
        }
        Ok(())
    }

    /// Activate, suspend or revoke. A revoked key stays revoked: it was given out and may
    /// be known to others, so only a new key brings its owner back.
    pub fn set_status(&mut self, name_or_id: &str, status: KeyStatus) -> Result<(), Error> {
        let record = self.find_mut(name_or_id)?;
        if record.status == KeyStatus::Revoked && status != KeyStatus::Revoked {
            return Err(Error::new(
                Fault::Conflict,
                format!("'{}' is revoked for good; create a new key", record.name),
            ));
        }
        record.status = status;
        Ok(())
    }
}

/// A name shown to people (the console, `keys list`, reports) must look like what it is.
pub fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty()
        || name.len() > 128
        || name.chars().any(|c| c.is_control() || is_format_char(c))
        || name.trim() != name
    {
        return Err(Error::new(
            Fault::Invalid,
            "a name is 1 to 128 characters, without control or format characters (such as \
             bidirectional overrides or zero-width spaces) or surrounding spaces",
        ));
    }
    Ok(())
}

fn unknown_plan(plan: &str, plans: &[&str]) -> Error {
    Error::new(
        Fault::Invalid,
        format!("unknown plan '{plan}' (plans: {plans:?})"),
    )
}

/// Whether `c` is a format character (Unicode general category Cf): invisible characters
/// that change how the text around them displays, such as bidirectional overrides
/// (`\u{202e}yek-nimda` shows as "admin-key"), isolates and zero-width spaces. A name is
/// shown to people (the console, `keys list`, reports), so it must look like what it is.
///
/// The ranges are every Cf code point of Unicode 15.1 (DerivedGeneralCategory.txt); no
/// crate in the dependency tree exposes the general category.
pub fn is_format_char(c: char) -> bool {
    const CF: &[(u32, u32)] = &[
        (0x00AD, 0x00AD),   // soft hyphen
        (0x0600, 0x0605),   // Arabic number signs
        (0x061C, 0x061C),   // Arabic letter mark
        (0x06DD, 0x06DD),   // Arabic end of ayah
        (0x070F, 0x070F),   // Syriac abbreviation mark
        (0x0890, 0x0891),   // Arabic pound and piastre marks above
        (0x08E2, 0x08E2),   // Arabic disputed end of ayah
        (0x180E, 0x180E),   // Mongolian vowel separator
        (0x200B, 0x200F),   // zero-width space, (non-)joiner, LRM, RLM
        (0x202A, 0x202E),   // bidirectional embeddings and overrides
        (0x2060, 0x2064),   // word joiner, invisible operators
        (0x2066, 0x206F),   // bidirectional isolates, deprecated format characters
        (0xFEFF, 0xFEFF),   // zero-width no-break space (byte order mark)
        (0xFFF9, 0xFFFB),   // interlinear annotation
        (0x110BD, 0x110BD), // Kaithi number sign
        (0x110CD, 0x110CD), // Kaithi number sign above
        (0x13430, 0x1343F), // Egyptian hieroglyph format controls
        (0x1BCA0, 0x1BCA3), // shorthand format controls
        (0x1D173, 0x1D17A), // musical symbol beams, ties, slurs, phrases
        (0xE0001, 0xE0001), // language tag
        (0xE0020, 0xE007F), // tag characters
    ];
    let c = u32::from(c);
    CF.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
}

/// Serialize writers of the keys file across processes.
fn lock(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.with_extension("lock"))?;
    lock.lock()?;
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, plan: &str) -> KeyRecord {
        crate::auth::new_key(name, plan, 0).1
    }

    #[test]
    fn edits_are_checked_and_written_under_a_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        let plans = ["free", "payg"];
        KeysFile::edit(&path, |f| f.add(record("alice", "free"), &plans)).unwrap();
        let e = KeysFile::edit(&path, |f| f.add(record("alice", "payg"), &plans)).unwrap_err();
        assert_eq!(e.fault(), Fault::Conflict);
        assert!(e.to_string().contains("already exists"), "{e}");
        let e = KeysFile::edit(&path, |f| f.add(record("bob", "gold"), &plans)).unwrap_err();
        assert_eq!(e.fault(), Fault::Invalid);
        assert!(e.to_string().contains("unknown plan 'gold'"), "{e}");
        for bad in [
            "",
            "tab\there",
            "line\nbreak",
            " padded",
            &"x".repeat(129),
            // Displays as "admin-key".
            "\u{202e}yek-nimda",
            "zero\u{200b}width",
            "\u{2066}isolate\u{2069}",
            "soft\u{ad}hyphen",
            "bom\u{feff}",
            "tag\u{e0041}",
        ] {
            let e = KeysFile::edit(&path, |f| f.add(record(bad, "free"), &plans)).unwrap_err();
            assert!(
                e.to_string().contains("1 to 128 characters"),
                "{bad:?}: {e}"
            );
            assert!(e.to_string().contains("format characters"), "{bad:?}: {e}");
        }
        // Letters of any script, emoji and marks are names like any other.
        for good in ["équipe-ü", "نور", "团队", "chef 👩", "e\u{301}"] {
            KeysFile::edit(&path, |f| f.add(record(good, "free"), &plans)).unwrap();
        }
        let id = KeysFile::load(&path).unwrap().keys[0].id.clone();

        KeysFile::edit(&path, |f| f.set_plan(&id, "payg", &plans)).unwrap();
        KeysFile::edit(&path, |f| f.set_status("alice", KeyStatus::Suspended)).unwrap();
        let k = &KeysFile::load(&path).unwrap().keys[0];
        assert_eq!((k.plan.as_str(), k.status), ("payg", KeyStatus::Suspended));
        KeysFile::edit(&path, |f| f.set_status("alice", KeyStatus::Active)).unwrap();
        KeysFile::edit(&path, |f| f.set_status("alice", KeyStatus::Revoked)).unwrap();
        let e = KeysFile::edit(&path, |f| f.set_status("alice", KeyStatus::Active)).unwrap_err();
        assert!(e.to_string().contains("revoked for good"), "{e}");
        let e = KeysFile::edit(&path, |f| f.set_plan("nobody", "payg", &plans)).unwrap_err();
        assert_eq!(e.fault(), Fault::NotFound);
        assert!(e.to_string().contains("no key named 'nobody'"), "{e}");
        // A failed edit writes nothing.
        assert_eq!(KeysFile::load(&path).unwrap().keys.len(), 6);
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for i in 0..10 {
                        let name = format!("k{t}-{i}");
                        KeysFile::edit(&path, |f| f.add(record(&name, "payg"), &["payg"])).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(KeysFile::load(&path).unwrap().keys.len(), 80);
    }
}
