//! Operations the operator CLI, the admin API and the owners' management API share: an
//! account's terms changed field by field, a key rotated with a grace period, the ceiling
//! rule for owners, and the JSON an API shows of a row (never a secret).

use serde_json::{json, Value};

use super::model::{AccountRow, KeyRow, KeyStatus, MAX_NAME_LEN};
use super::{Directory, KeyLimits, StoreError};
use crate::units::Usd;

/// The longest grace period a rotated key may keep working: 30 days.
pub const MAX_ROTATION_GRACE_SECS: u64 = 30 * 86_400;

/// Keys an account owner may hold through the management API (revoked and expired ones
/// count until deleted): the store and every listing stay bounded whatever a script does.
pub const MAX_KEYS_PER_ACCOUNT: usize = 1_000;

/// Changes to an account's terms; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountEdit {
    pub plan: Option<String>,
    pub payment_method: Option<bool>,
    pub on_hold: Option<bool>,
    /// `Some(None)`: back to the plan's ceiling.
    pub ceiling_usd: Option<Option<Usd>>,
    /// `Some(None)`: whatever the plan allows.
    pub models: Option<Option<Vec<String>>>,
}

impl AccountEdit {
    pub fn apply(self, row: &mut AccountRow) {
        if let Some(plan) = self.plan {
            row.plan = plan;
        }
        if let Some(on) = self.payment_method {
            row.payment_method = on;
        }
        if let Some(on) = self.on_hold {
            row.on_hold = on;
        }
        if let Some(ceiling) = self.ceiling_usd {
            row.ceiling_usd = ceiling;
        }
        if let Some(models) = self.models {
            row.models = models;
        }
    }
}

/// A rotation's outcome: the new key's secret (shown once) and row, and the old key as it
/// is now (renamed, revoked at the end of the grace period, or at once without one).
#[derive(Debug, Clone)]
pub struct Rotated {
    pub secret: String,
    pub key: KeyRow,
    pub old: KeyRow,
}

/// Why an owner may not set this ceiling, or `None`: an account's own ceiling stays within
/// its plan's (a plan without one bounds nothing).
pub fn ceiling_problem(ceiling: Option<Usd>, plan_ceiling: Option<Usd>) -> Option<String> {
    match (ceiling, plan_ceiling) {
        (Some(mine), Some(plan)) if mine > plan => Some(format!(
            "the ceiling ${mine} is above the plan's ceiling ${plan}"
        )),
        _ => None,
    }
}

/// The name a rotated key keeps for its grace period: its own, marked, and unique in its
/// account (the id is).
fn rotated_name(name: &str, id: &str) -> String {
    let suffix = format!(" (rotated {id})");
    let mut keep = MAX_NAME_LEN.saturating_sub(suffix.len()).min(name.len());
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}{suffix}", name[..keep].trim_end())
}

impl Directory {
    /// Change an account's terms field by field.
    pub fn edit_account(&self, id: &str, edit: AccountEdit) -> Result<AccountRow, StoreError> {
        self.update_account(id, |row| edit.apply(row))
    }

    /// [`Directory::create_key`], refused (409) when the account already has `max_keys`.
    pub fn create_key_within(
        &self,
        account_id: &str,
        name: &str,
        kind: super::KeyKind,
        limits: KeyLimits,
        max_keys: usize,
    ) -> Result<(String, KeyRow), StoreError> {
        let held = self.keys_of(account_id)?.len();
        if held >= max_keys {
            return Err(StoreError::Conflict(format!(
                "the account has {held} keys, the most it may hold; delete keys it no longer \
                 uses"
            )));
        }
        self.create_key(account_id, name, kind, limits)
    }

    /// Replace a key with a new one of the same name, kind and limits. The old key keeps
    /// working for `grace_secs` (at most [`MAX_ROTATION_GRACE_SECS`]) under a name marking
    /// it rotated, then is revoked (`expires_at` is the end of the grace, with
    /// `revoke_at_expiry`); with no grace it is revoked at once. An earlier expiry of its own
    /// stays, and then it expires as it would have. A revoked key cannot be rotated.
    pub fn rotate_key(&self, id: &str, grace_secs: u64, now: u64) -> Result<Rotated, StoreError> {
        if grace_secs > MAX_ROTATION_GRACE_SECS {
            return Err(StoreError::Invalid(format!(
                "grace_seconds must be at most {MAX_ROTATION_GRACE_SECS} (30 days)"
            )));
        }
        let before = self
            .key(id)?
            .ok_or_else(|| StoreError::NotFound(format!("no key with id '{id}'")))?;
        if before.revoked_at(now) {
            return Err(StoreError::Conflict(format!(
                "key '{}' is revoked; create a new key",
                before.name
            )));
        }
        let until = now.saturating_add(grace_secs);
        let old = self.update_key(id, |row| {
            row.name = rotated_name(&before.name, &before.id);
            if grace_secs == 0 {
                row.status = KeyStatus::Revoked;
            }
            match row.expires_at {
                Some(own) if own <= until => {}
                _ => {
                    row.expires_at = Some(until);
                    row.revoke_at_expiry = true;
                }
            }
        })?;
        let limits = KeyLimits {
            expires_at: None,
            monthly_limit_usd: before.monthly_limit_usd,
            models: before.models.clone(),
        };
        match self.create_key(&before.account_id, &before.name, before.kind, limits) {
            Ok((secret, key)) => Ok(Rotated { secret, key, old }),
            Err(e) => {
                // The old key goes back to what it was: no rotation happened.
                let _ = self.update_key(id, |row| *row = before.clone());
                Err(e)
            }
        }
    }
}

/// A key's state as an API shows it: `active`, `disabled`, `revoked` or `expired`.
pub fn key_state(row: &KeyRow, now: u64) -> &'static str {
    if row.revoked_at(now) {
        return "revoked";
    }
    match row.status {
        KeyStatus::Revoked => "revoked",
        KeyStatus::Suspended => "disabled",
        KeyStatus::Active if row.expires_at.is_some_and(|t| now >= t) => "expired",
        KeyStatus::Active => "active",
    }
}

/// A key as the APIs show it: everything but its secret (which is never stored) and its
/// digest.
pub fn key_json(row: &KeyRow, now: u64) -> Value {
    json!({
        "id": row.id,
        "object": "key",
        "account_id": row.account_id,
        "name": row.name,
        "kind": row.kind.as_str(),
        "status": key_state(row, now),
        "disabled": row.status == KeyStatus::Suspended,
        "expires_at": row.expires_at,
        "revoke_at_expiry": row.revoke_at_expiry,
        "created_at": row.created_at,
        "last_used_at": row.last_used_at,
        "monthly_limit_usd": row.monthly_limit_usd,
        "models": row.models,
    })
}

/// An account as the APIs show it, with its plan's ceiling and the one that applies.
pub fn account_json(row: &AccountRow, plan_ceiling: Option<Usd>) -> Value {
    json!({
        "id": row.id,
        "object": "account",
        "name": row.name,
        "plan": row.plan,
        "payment_method": row.payment_method,
        "on_hold": row.on_hold,
        "ceiling_usd": row.ceiling_usd,
        "plan_ceiling_usd": plan_ceiling,
        "effective_ceiling_usd": row.ceiling_usd.or(plan_ceiling),
        "models": row.models,
        "created_at": row.created_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::{KeyKind, NewAccount};

    #[test]
    fn a_rotated_key_keeps_working_for_its_grace_then_is_revoked_and_the_new_one_takes_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let d = Directory::open(&dir.path().join("accounts.db")).unwrap();
        let a = d
            .create_account(NewAccount {
                name: "acme".into(),
                plan: "payg".into(),
                ..NewAccount::default()
            })
            .unwrap();
        let limits = KeyLimits {
            monthly_limit_usd: Some("2".parse().unwrap()),
            ..KeyLimits::default()
        };
        let (old_secret, old) = d
            .create_key(&a.id, "ci", KeyKind::Inference, limits)
            .unwrap();
        let now = 1_000_000;
        let r = d.rotate_key(&old.id, 60, now).unwrap();
        assert_eq!(r.key.name, "ci");
        assert_eq!(r.key.monthly_limit_usd, old.monthly_limit_usd);
        assert_eq!(r.old.expires_at, Some(now + 60));
        assert!(r.old.name.starts_with("ci (rotated key_"), "{}", r.old.name);
        assert!(d.authenticate(&old_secret, now + 59).is_ok());
        assert_eq!(
            d.authenticate(&old_secret, now + 60).unwrap_err(),
            crate::accounts::Refusal::Revoked
        );
        assert_eq!(key_state(&r.old, now + 59), "active");
        assert_eq!(key_state(&r.old, now + 60), "revoked");
        // Past the grace it is revoked for good: not enabled again, not rotated again.
        let revive = d.update_key(&old.id, |row| row.status = KeyStatus::Active);
        assert!(matches!(revive, Err(StoreError::Conflict(_))), "{revive:?}");
        let renamed = d
            .update_key(&old.id, |row| row.name = "gone".into())
            .unwrap();
        assert_eq!(renamed.status, KeyStatus::Revoked, "written as revoked");
        assert!(matches!(
            d.rotate_key(&old.id, 10, now + 60),
            Err(StoreError::Conflict(_))
        ));
        // A key expiring before the grace would end still just expires.
        let (soon_secret, soon) = d
            .create_key(
                &a.id,
                "soon",
                KeyKind::Inference,
                KeyLimits {
                    expires_at: Some(now + 10),
                    ..KeyLimits::default()
                },
            )
            .unwrap();
        let r2 = d.rotate_key(&soon.id, 60, now).unwrap();
        assert_eq!(
            (r2.old.expires_at, r2.old.revoke_at_expiry),
            (Some(now + 10), false)
        );
        assert_eq!(
            d.authenticate(&soon_secret, now + 10).unwrap_err(),
            crate::accounts::Refusal::Expired
        );
        assert!(d.authenticate(&r.secret, now + 60).is_ok());
        // No grace: revoked at once; past the cap: refused, nothing changed.
        let again = d.rotate_key(&r.key.id, 0, now).unwrap();
        assert_eq!(again.old.status, KeyStatus::Revoked);
        let too_long = d.rotate_key(&again.key.id, MAX_ROTATION_GRACE_SECS + 1, now);
        assert!(matches!(too_long, Err(StoreError::Invalid(_))));
        assert!(matches!(
            d.rotate_key(&again.old.id, 10, now),
            Err(StoreError::Conflict(_))
        ));
    }

    #[test]
    fn an_account_holds_at_most_max_keys_through_the_api() {
        let dir = tempfile::tempdir().unwrap();
        let d = Directory::open(&dir.path().join("accounts.db")).unwrap();
        let a = d
            .create_account(NewAccount {
                name: "acme".into(),
                plan: "payg".into(),
                ..NewAccount::default()
            })
            .unwrap();
        let make = |name: &str| {
            d.create_key_within(&a.id, name, KeyKind::Inference, KeyLimits::default(), 2)
        };
        make("a").unwrap();
        let (_, b) = make("b").unwrap();
        assert!(matches!(make("c"), Err(StoreError::Conflict(_))));
        d.delete_key(&b.id).unwrap();
        make("c").unwrap();
    }

    #[test]
    fn rotated_names_stay_within_the_name_limit() {
        let long = "é".repeat(100);
        let n = rotated_name(&long, "key_abcdefghijkl");
        assert!(n.len() <= MAX_NAME_LEN, "{}", n.len());
        assert!(n.ends_with("(rotated key_abcdefghijkl)"));
    }

    #[test]
    fn an_owner_s_ceiling_stays_within_the_plan_s() {
        let usd = |s: &str| Some(s.parse::<Usd>().unwrap());
        assert!(ceiling_problem(usd("10"), usd("5")).is_some());
        assert!(ceiling_problem(usd("5"), usd("5")).is_none());
        assert!(ceiling_problem(usd("500"), None).is_none());
        assert!(ceiling_problem(None, usd("5")).is_none());
    }
}
