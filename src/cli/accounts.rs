//! `fluxrouter accounts`: accounts and their keys in the key store, one row per change. A
//! running gateway serves what this writes within a quarter of a second (it follows the
//! store's change feed); nothing is re-read whole.

use std::path::Path;

use clap::Subcommand;

use fluxrouter::accounts::{AccountEdit, AccountRow, KeyLimits};
use fluxrouter::accounts::{Directory, KeyKind, KeyRow, KeyStatus, NewAccount};
use fluxrouter::config::{KeysFile, ServerConfig};
use fluxrouter::errors::{Error, Fault};
use fluxrouter::units::Usd;

use super::CliResult;

#[derive(Subcommand)]
pub enum AccountsAction {
    /// Create an account; prints its id.
    New {
        #[arg(long)]
        name: String,
        #[arg(long)]
        plan: String,
        /// The account's own monthly spend ceiling in USD, instead of its plan's.
        #[arg(long)]
        ceiling: Option<Usd>,
        #[arg(long)]
        payment_method: bool,
    },
    /// Change an account's terms: the integration point for a billing system (a card added
    /// sets the payment method, a failed payment puts the account on hold).
    Set {
        /// The account's name or id.
        account: String,
        #[arg(long)]
        plan: Option<String>,
        #[arg(long)]
        payment_method: Option<bool>,
        #[arg(long)]
        on_hold: Option<bool>,
        /// A ceiling in USD, or `none` for the plan's.
        #[arg(long)]
        ceiling: Option<String>,
    },
    /// Create a key of an account; the key is printed once and never stored.
    Key {
        /// The account's name or id.
        #[arg(long)]
        account: String,
        #[arg(long)]
        name: String,
        /// The key's own monthly spend limit in USD, within the account's.
        #[arg(long)]
        monthly_limit: Option<Usd>,
        /// A management key: it manages the account's keys and cannot make generation
        /// requests.
        #[arg(long)]
        management: bool,
    },
    /// Replace a key by a new one (same name, kind and limits; printed once); the old key
    /// keeps working for the grace period, then is revoked (no grace: at once).
    Rotate {
        key: String,
        /// Seconds the old key keeps working (at most 30 days).
        #[arg(long, default_value_t = 0)]
        grace_seconds: u64,
    },
    /// Revoke a key by id, for good.
    Revoke { key: String },
    /// Suspend a key by id (`resume` undoes it).
    Suspend { key: String },
    /// Let a suspended key work again.
    Resume { key: String },
    /// Accounts and their keys (ids, names, plans, status, last use in Unix seconds; never a
    /// key).
    List,
    /// Copy the keys file into the key store: its accounts, and each key that names none as
    /// an account of its own (`acct_` + its id's random part, as the ledger counts it), with
    /// the same ids and hashes, so every key keeps working and every account keeps its
    /// month's spend. Rows already in the store are left as they are.
    Import,
}

pub fn accounts(config_path: &Path, action: AccountsAction) -> CliResult {
    let config = ServerConfig::load(config_path)?;
    let plans: Vec<&str> = config.plans.keys().map(String::as_str).collect();
    let known_plan = |plan: &str| -> Result<(), Error> {
        if plans.contains(&plan) {
            Ok(())
        } else {
            Err(Error::new(
                Fault::Invalid,
                format!("unknown plan '{plan}' (plans: {plans:?})"),
            ))
        }
    };
    let directory = std::sync::Arc::new(Directory::open(&config.key_store_path())?);
    // Fleet mode: read the fleet's rows first and write through Redis, as a gateway does.
    let _fleet = match &config.redis {
        Some(redis) => {
            let fleet = fluxrouter::fleet::Fleet::connect(redis, false)?;
            fluxrouter::fleet::share_key_store(&fleet, &directory, true);
            Some(fleet)
        }
        None => None,
    };
    let account_of = |name_or_id: &str| -> Result<AccountRow, Box<dyn std::error::Error>> {
        if let Some(a) = directory.account(name_or_id) {
            return Ok(a.to_row());
        }
        directory.account_by_name(name_or_id)?.ok_or_else(|| {
            Error::new(Fault::NotFound, format!("no account named '{name_or_id}'")).into()
        })
    };
    match action {
        AccountsAction::New {
            name,
            plan,
            ceiling,
            payment_method,
        } => {
            known_plan(&plan)?;
            let row = directory.create_account(NewAccount {
                name,
                plan,
                payment_method,
                ceiling_usd: ceiling,
                ..NewAccount::default()
            })?;
            eprintln!(
                "created account {} ({}, plan {})",
                row.id, row.name, row.plan
            );
            println!("{}", row.id);
        }
        AccountsAction::Set {
            account,
            plan,
            payment_method,
            on_hold,
            ceiling,
        } => {
            let id = account_of(&account)?.id;
            if let Some(plan) = &plan {
                known_plan(plan)?;
            }
            let ceiling = match ceiling.as_deref() {
                None => None,
                Some("none") => Some(None),
                Some(amount) => Some(Some(amount.parse::<Usd>()?)),
            };
            let row = directory.edit_account(
                &id,
                AccountEdit {
                    plan,
                    payment_method,
                    on_hold,
                    ceiling_usd: ceiling,
                    models: None,
                },
            )?;
            println!(
                "{} ({}): plan {}, payment method {}, on hold {}, ceiling {}",
                row.id,
                row.name,
                row.plan,
                row.payment_method,
                row.on_hold,
                row.ceiling_usd
                    .map_or("the plan's".to_string(), |c| format!("${c}"))
            );
        }
        AccountsAction::Key {
            account,
            name,
            monthly_limit,
            management,
        } => {
            let owner = account_of(&account)?;
            let kind = if management {
                KeyKind::Management
            } else {
                KeyKind::Inference
            };
            let limits = KeyLimits {
                monthly_limit_usd: monthly_limit,
                ..KeyLimits::default()
            };
            let (secret, row) = directory.create_key(&owner.id, &name, kind, limits)?;
            eprintln!(
                "created {} ({}, account {}); the key is shown once:",
                row.id, row.name, owner.name
            );
            println!("{secret}");
        }
        AccountsAction::Rotate { key, grace_seconds } => {
            let r =
                directory.rotate_key(&key, grace_seconds, fluxrouter::units::clock::unix_now())?;
            eprintln!(
                "rotated {} into {} ({}); the old key works until {}, then is revoked; the new \
                 key is shown once:",
                r.old.id,
                r.key.id,
                r.key.name,
                r.old.expires_at.unwrap_or_default()
            );
            println!("{}", r.secret);
        }
        AccountsAction::Revoke { key } => {
            let row = directory.set_key_status(&key, KeyStatus::Revoked)?;
            println!("revoked {} ({})", row.id, row.name);
        }
        AccountsAction::Suspend { key } => {
            let row = directory.set_key_status(&key, KeyStatus::Suspended)?;
            println!("suspended {} ({})", row.id, row.name);
        }
        AccountsAction::Resume { key } => {
            let row = directory.set_key_status(&key, KeyStatus::Active)?;
            println!("resumed {} ({})", row.id, row.name);
        }
        AccountsAction::List => {
            let mut accounts = directory.index().accounts();
            accounts.sort_by(|a, b| a.name.cmp(&b.name));
            for a in accounts {
                println!("{}\t{}\t{}\taccount", a.id, a.name, a.plan);
                let now = fluxrouter::units::clock::unix_now();
                for k in directory.keys_of(&a.id)? {
                    let last_used = k
                        .last_used_at
                        .map_or_else(|| "never used".to_string(), |t| format!("last used {t}"));
                    println!(
                        "  {}\t{}\t{}\t{}\t{last_used}",
                        k.id,
                        k.name,
                        k.kind.as_str(),
                        fluxrouter::accounts::ops::key_state(&k, now),
                    );
                }
            }
            // Reads only: nothing for the gateway to load.
            return Ok(());
        }
        AccountsAction::Import => {
            let file = KeysFile::load(&config.keys_file)?;
            let (accounts, keys) = rows_of(&file)?;
            let (mut added_accounts, mut added_keys) = (0, 0);
            let mut fresh_accounts = Vec::new();
            for a in accounts {
                if directory.account(&a.id).is_none() {
                    fresh_accounts.push(a);
                    added_accounts += 1;
                }
            }
            let mut fresh_keys = Vec::new();
            for k in keys {
                if directory.key(&k.id)?.is_none() {
                    fresh_keys.push(k);
                    added_keys += 1;
                }
            }
            directory.import(&fresh_accounts, &fresh_keys)?;
            println!(
                "imported {added_accounts} accounts and {added_keys} keys from {} into {}",
                config.keys_file.display(),
                config.key_store_path().display()
            );
        }
    }
    // In effect when the command returns: the running gateway is asked to follow the store
    // now (it would within a quarter of a second anyway).
    super::keys::confirm_keys_loaded(&config)
}

/// The keys file as the key store's rows: its accounts, and each key without one as an
/// account of its own.
fn rows_of(file: &KeysFile) -> Result<(Vec<AccountRow>, Vec<KeyRow>), Error> {
    let mut accounts: Vec<AccountRow> = file
        .accounts
        .iter()
        .map(|a| AccountRow {
            id: a.id.clone(),
            name: a.name.clone(),
            plan: a.plan.clone(),
            payment_method: a.payment_method,
            on_hold: a.on_hold,
            ceiling_usd: a.ceiling_usd,
            models: a.models.clone(),
            created_at: a.created_at,
        })
        .collect();
    let mut keys = Vec::with_capacity(file.keys.len());
    for k in &file.keys {
        let mut sha256 = [0u8; 32];
        hex::decode_to_slice(&k.sha256, &mut sha256).map_err(|_| {
            Error::new(
                Fault::Invalid,
                format!("key {}: sha256 must be 64 hex digits", k.id),
            )
        })?;
        if k.account.is_none() {
            accounts.push(AccountRow {
                id: k.account_id(),
                // Names are unique among accounts; a key's name is unique among keys.
                name: k.name.clone(),
                plan: k.plan.clone(),
                payment_method: k.payment_method,
                on_hold: k.on_hold,
                ceiling_usd: k.ceiling_usd,
                models: k.models.clone(),
                created_at: k.created_at,
            });
        }
        keys.push(KeyRow {
            id: k.id.clone(),
            account_id: k.account_id(),
            name: k.name.clone(),
            sha256,
            kind: KeyKind::Inference,
            status: k.status,
            expires_at: k.expires_at,
            revoke_at_expiry: false,
            created_at: k.created_at,
            monthly_limit_usd: k.monthly_limit_usd,
            // A key of its own account: its restriction went to the account.
            models: k.account.as_ref().and(k.models.clone()),
            last_used_at: None,
        });
    }
    Ok((accounts, keys))
}
