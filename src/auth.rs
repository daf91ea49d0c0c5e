//! Authentication: the client's `sk-` key to its account and plan, by SHA-256.
//!
//! Only hashes are stored and compared; the key itself is never logged, echoed or forwarded.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::config::keys::own_account_id;
use crate::config::server::PlanConfig;
use crate::config::{AccountRecord, ConfigError, KeyRecord, KeyStatus, KeysFile};
use crate::errors::{ErrorKind, FluxError};
use crate::units::Usd;

pub use crate::accounts::model::KEY_PREFIX;

/// What an authenticated request is allowed to do, shared by the requests of one key: its
/// account's terms (spend, holds and limits count per account) and the key's own limits.
#[derive(Debug, Clone)]
pub struct Account {
    pub key_id: String,
    pub key_name: String,
    /// The account the key belongs to (`acct_…`): the subject of spend, holds and caps.
    pub account_id: String,
    pub account_name: String,
    pub plan: String,
    /// The plan's lanes, copied here so the hot path needs no second lookup.
    pub lanes: Vec<String>,
    /// The plan's terms, compiled at load (limits, credit, ceiling, premium rule).
    pub terms: Arc<Terms>,
    pub payment_method: bool,
    pub on_hold: bool,
    /// The account's own ceiling, which replaces the plan's.
    pub ceiling: Option<Usd>,
    /// Operator restriction to these model ids (the account's and the key's, both apply).
    pub models: Option<Vec<String>>,
    /// The key's own monthly spend limit, within the account's.
    pub key_limit: Option<Usd>,
    status: KeyStatus,
    expires_at: Option<u64>,
}

/// An account's terms at run time: a plan of the configuration (`PlanConfig`, the YAML type),
/// compiled once at load, so authentication, routing, the rate limits and the budget read
/// plain values and no YAML type reaches the request path.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Terms {
    /// Lanes (by name) whose alias, models and flux-auto routing the plan may use.
    pub lanes: Vec<String>,
    /// A free allowance: the monthly credit is a hard stop, and no ceiling applies.
    pub free: bool,
    /// Spend included each calendar month (UTC), if any.
    pub monthly_credit_usd: Option<Usd>,
    /// Whether use continues past the credit, up to the ceiling.
    pub overage: bool,
    /// The monthly credit when it is a hard stop, and the refusal it raises (402
    /// `free_allowance_exhausted` or `monthly_credit_exhausted`): worked out once here.
    pub credit_cap: Option<(Usd, ErrorKind)>,
    /// The plan's spend ceiling per month (an account may set its own); none on a free plan,
    /// whose allowance is its cap.
    pub ceiling_usd: Option<Usd>,
    /// Spend within one clock hour (402 `hourly_limit_reached` past it).
    pub hourly_limit_usd: Option<Usd>,
    pub premium_needs_payment_method: bool,
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub max_messages: Option<usize>,
    pub max_input_tokens: Option<u64>,
}

impl Terms {
    /// Compile a plan (validated with the configuration it came in).
    pub fn compile(plan: &PlanConfig) -> Terms {
        let credit_cap = match plan.monthly_credit_usd {
            Some(credit) if plan.free => Some((credit, ErrorKind::FreeAllowanceExhausted)),
            Some(credit) if !plan.overage => Some((credit, ErrorKind::CreditExhausted)),
            _ => None,
        };
        Terms {
            lanes: plan.lanes.clone(),
            free: plan.free,
            monthly_credit_usd: plan.monthly_credit_usd,
            overage: plan.overage,
            credit_cap,
            ceiling_usd: if plan.free { None } else { plan.ceiling_usd },
            hourly_limit_usd: plan.hourly_limit_usd,
            premium_needs_payment_method: plan.premium_needs_payment_method,
            requests_per_minute: plan.requests_per_minute,
            tokens_per_minute: plan.tokens_per_minute,
            max_messages: plan.max_messages,
            max_input_tokens: plan.max_input_tokens,
        }
    }
}

/// A second source of keys, by digest: `None` when it does not know the key.
pub type StoreLookup<'a> = dyn Fn(&[u8; 32]) -> Option<Result<Arc<Account>, FluxError>> + 'a;

/// The compiled keys file: SHA-256 digest to account.
#[derive(Debug, Default)]
pub struct KeyTable {
    by_hash: HashMap<[u8; 32], Arc<Account>>,
}

impl KeyTable {
    /// Validate the keys file against the configured plans (compiled) and compile it.
    pub fn compile(
        path: &Path,
        file: &KeysFile,
        plans: &dyn Fn(&str) -> Option<Arc<Terms>>,
    ) -> Result<Self, ConfigError> {
        let mut by_hash = HashMap::with_capacity(file.keys.len());
        let mut accounts: HashMap<&str, &AccountRecord> = HashMap::new();
        let mut account_names = std::collections::HashSet::new();
        for (i, a) in file.accounts.iter().enumerate() {
            let field = |f: &str| format!("accounts[{i}].{f}");
            if plans(&a.plan).is_none() {
                return Err(ConfigError::new(
                    path,
                    field("plan"),
                    format!("unknown plan '{}'", a.plan),
                ));
            }
            if accounts.insert(a.id.as_str(), a).is_some() {
                return Err(ConfigError::new(path, field("id"), "listed twice"));
            }
            if !account_names.insert(a.name.as_str()) {
                return Err(ConfigError::new(path, field("name"), "used twice"));
            }
        }
        for (i, k) in file.keys.iter().enumerate() {
            let field = |f: &str| format!("keys[{i}].{f}");
            let mut digest = [0u8; 32];
            if hex::decode_to_slice(&k.sha256, &mut digest).is_err() {
                return Err(ConfigError::new(
                    path,
                    field("sha256"),
                    "must be 64 hex digits",
                ));
            }
            // The account's terms: a named account's, or the key's own fields.
            let own;
            let owner = match &k.account {
                Some(id) => {
                    let Some(a) = accounts.get(id.as_str()) else {
                        return Err(ConfigError::new(
                            path,
                            field("account"),
                            format!("no account '{id}' in accounts"),
                        ));
                    };
                    if !k.plan.is_empty()
                        || k.payment_method
                        || k.on_hold
                        || k.ceiling_usd.is_some()
                    {
                        return Err(ConfigError::new(
                            path,
                            field("plan"),
                            "a key of an account takes its plan, payment method, hold and \
                             ceiling from the account: set them there",
                        ));
                    }
                    *a
                }
                None => {
                    own = AccountRecord {
                        id: own_account_id(&k.id),
                        name: k.name.clone(),
                        plan: k.plan.clone(),
                        payment_method: k.payment_method,
                        on_hold: k.on_hold,
                        ceiling_usd: k.ceiling_usd,
                        models: None,
                        created_at: k.created_at,
                    };
                    &own
                }
            };
            let Some(terms) = plans(&owner.plan) else {
                return Err(ConfigError::new(
                    path,
                    field("plan"),
                    format!("unknown plan '{}'", owner.plan),
                ));
            };
            let account = Account {
                key_id: k.id.clone(),
                key_name: k.name.clone(),
                account_id: owner.id.clone(),
                account_name: owner.name.clone(),
                plan: owner.plan.clone(),
                lanes: terms.lanes.clone(),
                terms,
                payment_method: owner.payment_method,
                on_hold: owner.on_hold,
                ceiling: owner.ceiling_usd,
                models: both_restrictions(owner.models.as_deref(), k.models.as_deref()),
                key_limit: k.monthly_limit_usd,
                status: k.status,
                expires_at: k.expires_at,
            };
            // Spend is kept under both ids: they must never name the same thing.
            if accounts.contains_key(k.id.as_str()) {
                return Err(ConfigError::new(
                    path,
                    field("id"),
                    "an account has the same id: ids name one thing",
                ));
            }
            if by_hash.insert(digest, Arc::new(account)).is_some() {
                return Err(ConfigError::new(
                    path,
                    field("sha256"),
                    "the same key is listed twice",
                ));
            }
        }
        Ok(KeyTable { by_hash })
    }

    /// The id of the key named `name` (admin reports take names).
    pub fn id_of(&self, name: &str) -> Option<String> {
        self.by_hash
            .values()
            .find(|a| a.key_name == name)
            .map(|a| a.key_id.clone())
    }

    /// The account of the key with id `id`.
    pub fn account_by_id(&self, id: &str) -> Option<&Arc<Account>> {
        self.by_hash.values().find(|a| a.key_id == id)
    }

    /// Every key's name by its id, for reports over many rows.
    pub fn names_by_id(&self) -> HashMap<&str, &str> {
        self.by_hash
            .values()
            .map(|a| (a.key_id.as_str(), a.key_name.as_str()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Check a presented credential. `now` is Unix seconds.
    pub fn authenticate(
        &self,
        presented: Option<&str>,
        now: u64,
    ) -> Result<Arc<Account>, FluxError> {
        self.authenticate_or(presented, now, &|_| None)
    }

    /// [`KeyTable::authenticate`], with `store` asked for a key this table does not hold (by
    /// its digest; the key store's keys are served beside the keys file's).
    pub fn authenticate_or(
        &self,
        presented: Option<&str>,
        now: u64,
        store: &StoreLookup<'_>,
    ) -> Result<Arc<Account>, FluxError> {
        let key = presented.ok_or_else(|| {
            unauthorized("Missing API key. Send your Flux key as 'Authorization: Bearer sk-...'.")
        })?;
        if let Some(vendor) = foreign_vendor(key) {
            return Err(unauthorized(format!(
                "This looks like an {vendor} API key, not a Flux key. Remove the provider key from \
                 your client's config and send your Flux key (sk-...) instead."
            )));
        }
        if !key.starts_with(KEY_PREFIX) {
            return Err(unauthorized(
                "Malformed API key: Flux keys start with 'sk-'. Check for a typo, quotes or \
                 whitespace around the key.",
            ));
        }
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let Some(account) = self.by_hash.get(&digest) else {
            return store(&digest)
                .unwrap_or_else(|| Err(unauthorized("Incorrect API key provided.")));
        };
        match account.status {
            KeyStatus::Active => {}
            KeyStatus::Revoked => {
                return Err(unauthorized(
                    "This API key has been revoked. Create a new key.",
                ))
            }
            KeyStatus::Suspended => {
                return Err(unauthorized(
                    "This API key is suspended. Ask your operator to re-enable it.",
                ))
            }
        }
        if account.expires_at.is_some_and(|t| now >= t) {
            return Err(unauthorized("This API key has expired. Create a new key."));
        }
        Ok(account.clone())
    }
}

/// The principal of a key found in the key store, for a request at `now`: refused as the
/// keys file's keys are (revoked, suspended, expired), and a management key may manage its
/// account's keys but never make a generation request. `plans` gives a plan's compiled terms.
pub fn from_store(
    found: &crate::accounts::Found,
    plans: &dyn Fn(&str) -> Option<Arc<Terms>>,
    now: u64,
) -> Result<Arc<Account>, FluxError> {
    let (key, account) = found;
    key.usable_at(now).map_err(|r| unauthorized(r.message()))?;
    if key.kind == crate::accounts::KeyKind::Management {
        return Err(unauthorized(
            "This is a management key: it manages its account's keys and cannot make \
             generation requests. Use one of the account's API keys.",
        ));
    }
    let Some(terms) = plans(&account.plan) else {
        log::error!(
            "key store: account {} is on plan '{}', which the configuration does not have",
            account.id,
            account.plan
        );
        return Err(unauthorized(
            "This key's account is on a plan the gateway does not offer. Ask your operator.",
        ));
    };
    let owned = |models: Option<&[Box<str>]>| {
        models.map(|m| m.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    };
    let account_models = owned(account.models.as_deref());
    let key_models = owned(key.models());
    Ok(Arc::new(Account {
        key_id: key.id.to_string(),
        key_name: key.name.to_string(),
        account_id: account.id.to_string(),
        account_name: account.name.to_string(),
        plan: account.plan.to_string(),
        lanes: terms.lanes.clone(),
        terms,
        payment_method: account.payment_method,
        on_hold: account.on_hold,
        ceiling: account.ceiling_usd,
        models: both_restrictions(account_models.as_deref(), key_models.as_deref()),
        key_limit: key.monthly_limit_usd(),
        status: KeyStatus::Active,
        expires_at: key.expires_at(),
    }))
}

/// The principal of the management API: a management key of the key store and its account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manager {
    pub key_id: String,
    pub account_id: String,
}

/// A key store key presented to the management API: a usable management key is its
/// account's manager; a usable inference key gets 403 (it may generate, not manage).
pub fn manager_from_store(found: &crate::accounts::Found, now: u64) -> Result<Manager, FluxError> {
    let (key, account) = found;
    key.usable_at(now).map_err(|r| unauthorized(r.message()))?;
    if key.kind != crate::accounts::KeyKind::Management {
        return Err(inference_key_on_management());
    }
    Ok(Manager {
        key_id: key.id.to_string(),
        account_id: account.id.to_string(),
    })
}

/// 403: an inference key on the management API.
pub fn inference_key_on_management() -> FluxError {
    FluxError::new(
        ErrorKind::ManagementKeyRequired,
        "This is an API key for model requests: the management API (/v1/keys, /v1/account) \
         needs one of the account's management keys.",
    )
}

/// The model ids a key may use when its account and the key itself may each restrict them:
/// those both allow.
fn both_restrictions(account: Option<&[String]>, key: Option<&[String]>) -> Option<Vec<String>> {
    match (account, key) {
        (None, None) => None,
        (Some(only), None) | (None, Some(only)) => Some(only.to_vec()),
        (Some(a), Some(k)) => Some(k.iter().filter(|m| a.contains(m)).cloned().collect()),
    }
}

fn unauthorized(message: impl Into<std::borrow::Cow<'static, str>>) -> FluxError {
    FluxError::new(ErrorKind::InvalidApiKey, message)
}

/// Recognise keys of other vendors by their documented prefixes, to say so in the 401.
fn foreign_vendor(key: &str) -> Option<&'static str> {
    const PREFIXES: [(&str, &str); 8] = [
        ("sk-ant-", "Anthropic"),
        ("sk-proj-", "OpenAI"),
        ("sk-svcacct-", "OpenAI"),
        ("sk-admin-", "OpenAI"),
        ("sk-or-", "OpenRouter"),
        ("AIza", "Google"),
        ("gsk_", "Groq"),
        ("xai-", "xAI"),
    ];
    PREFIXES
        .iter()
        .find(|(prefix, _)| key.starts_with(prefix))
        .map(|(_, vendor)| *vendor)
}

/// The credential on a request: `Authorization: Bearer …`, or `x-api-key` where the wire
/// format allows it (the Anthropic paths).
pub fn presented_key<'a>(
    authorization: Option<&'a [u8]>,
    x_api_key: Option<&'a [u8]>,
    allow_x_api_key: bool,
) -> Option<&'a str> {
    let bearer = authorization
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty());
    bearer.or_else(|| {
        if allow_x_api_key {
            x_api_key
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::trim)
                .filter(|t| !t.is_empty())
        } else {
            None
        }
    })
}

/// A new account's record (`acct_` + 12 random alphanumerics).
pub fn new_account(name: &str, plan: &str, now: u64) -> AccountRecord {
    AccountRecord {
        id: crate::accounts::new_account_id(),
        name: name.to_string(),
        plan: plan.to_string(),
        payment_method: false,
        on_hold: false,
        ceiling_usd: None,
        models: None,
        created_at: now,
    }
}

/// A new key and the record that stores only its hash.
pub fn new_key(name: &str, plan: &str, now: u64) -> (String, KeyRecord) {
    // One generator for the keys file and the key store.
    let (key, digest) = crate::accounts::new_secret();
    let record = KeyRecord {
        id: crate::accounts::new_key_id(),
        name: name.to_string(),
        account: None,
        plan: plan.to_string(),
        sha256: hex::encode(digest),
        status: KeyStatus::Active,
        expires_at: None,
        created_at: now,
        payment_method: false,
        on_hold: false,
        ceiling_usd: None,
        models: None,
        monthly_limit_usd: None,
    };
    (key, record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(records: Vec<KeyRecord>) -> KeyTable {
        let plans = |p: &str| {
            (p == "free").then(|| {
                Arc::new(Terms::compile(&PlanConfig {
                    lanes: vec!["express".to_string()],
                    ..PlanConfig::default()
                }))
            })
        };
        KeyTable::compile(
            Path::new("keys.yaml"),
            &KeysFile {
                keys: records,
                ..KeysFile::default()
            },
            &plans,
        )
        .unwrap()
    }

    #[test]
    fn a_new_key_authenticates_and_only_its_hash_is_stored() {
        let (key, record) = new_key("ci", "free", 0);
        assert!(key.starts_with("sk-") && key.len() == 43);
        assert!(!record.sha256.contains(&key[3..]));
        let t = table(vec![record]);
        let account = t.authenticate(Some(&key), 1).unwrap();
        assert_eq!(account.plan, "free");
        assert_eq!(account.lanes, vec!["express"]);
    }

    #[test]
    fn each_failure_says_which_case_and_never_echoes_the_key() {
        let (key, mut record) = new_key("ci", "free", 0);
        let (expired_key, mut expired) = new_key("old", "free", 0);
        expired.expires_at = Some(10);
        record.status = KeyStatus::Revoked;
        let t = table(vec![record, expired]);
        let cases = [
            (None, "Missing"),
            (Some("sk-ant-api03-secretsecret"), "Anthropic"),
            (Some("sk-proj-secretsecret"), "OpenAI"),
            (Some("hello-secretsecret"), "Malformed"),
            (Some("sk-unknownsecretsecret"), "Incorrect"),
            (Some(key.as_str()), "revoked"),
            (Some(expired_key.as_str()), "expired"),
        ];
        for (presented, expect) in cases {
            let err = t.authenticate(presented, 100).unwrap_err();
            assert_eq!(err.status(), 401);
            assert_eq!(err.code(), "invalid_api_key");
            assert!(
                err.message.contains(expect),
                "{presented:?}: {}",
                err.message
            );
            if let Some(p) = presented {
                assert!(
                    !err.message.contains(&p[3..]),
                    "key echoed: {}",
                    err.message
                );
            }
        }
    }

    #[test]
    fn unknown_plan_and_bad_hash_are_rejected_at_load() {
        let (_, mut r) = new_key("a", "gold", 0);
        let plans = |p: &str| (p == "free").then(|| Arc::new(Terms::default()));
        let e = KeyTable::compile(
            Path::new("k"),
            &KeysFile {
                keys: vec![r.clone()],
                ..KeysFile::default()
            },
            &plans,
        )
        .unwrap_err();
        assert_eq!(e.field, "keys[0].plan");
        r.plan = "free".into();
        r.sha256 = "xyz".into();
        let e = KeyTable::compile(
            Path::new("k"),
            &KeysFile {
                keys: vec![r],
                ..KeysFile::default()
            },
            &plans,
        )
        .unwrap_err();
        assert_eq!(e.field, "keys[0].sha256");
    }

    fn team(plan: &str) -> AccountRecord {
        AccountRecord {
            id: "acct_team".into(),
            name: "team".into(),
            plan: plan.into(),
            payment_method: true,
            on_hold: false,
            ceiling_usd: Some("5".parse().unwrap()),
            models: Some(vec!["flux-fast".into(), "flux-auto".into()]),
            created_at: 0,
        }
    }

    #[test]
    fn keys_of_an_account_take_its_terms_and_add_their_own_limits() {
        let (k1, mut r1) = new_key("ci", "", 0);
        let (k2, mut r2) = new_key("laptop", "", 0);
        let (k3, r3) = new_key("solo", "free", 0);
        r1.account = Some("acct_team".into());
        r2.account = Some("acct_team".into());
        r2.monthly_limit_usd = Some("1".parse().unwrap());
        r2.models = Some(vec!["flux-fast".into(), "flux-reasoning".into()]);
        let file = KeysFile {
            accounts: vec![team("free")],
            keys: vec![r1, r2, r3.clone()],
        };
        let plans = |p: &str| (p == "free").then(|| Arc::new(Terms::default()));
        let t = KeyTable::compile(Path::new("k"), &file, &plans).unwrap();
        let a1 = t.authenticate(Some(&k1), 1).unwrap();
        let a2 = t.authenticate(Some(&k2), 1).unwrap();
        assert_eq!(
            (a1.account_id.as_str(), a2.account_id.as_str()),
            ("acct_team", "acct_team")
        );
        assert_eq!(a1.account_name, "team");
        assert!(a2.payment_method && a2.ceiling == Some("5".parse().unwrap()));
        assert_eq!(a1.key_limit, None);
        assert_eq!(a2.key_limit, Some("1".parse().unwrap()));
        // Both restrictions apply: only what the account and the key allow.
        assert_eq!(a2.models.as_deref(), Some(&["flux-fast".to_string()][..]));
        // A key without an account is one of its own, as before accounts.
        let a3 = t.authenticate(Some(&k3), 1).unwrap();
        assert_eq!(a3.account_id, format!("acct_{}", &r3.id[4..]));
        assert_eq!(a3.account_name, "solo");
    }

    #[test]
    fn an_account_file_with_a_dangling_or_doubled_name_is_refused() {
        let plans = |p: &str| (p == "free").then(|| Arc::new(Terms::default()));
        let (_, mut orphan) = new_key("a", "", 0);
        orphan.account = Some("acct_nobody".into());
        let (_, mut with_plan) = new_key("b", "free", 0);
        with_plan.account = Some("acct_team".into());
        let (_, mut clash) = new_key("c", "free", 0);
        clash.id = "acct_team".into();
        let cases = [
            (vec![team("free")], orphan, "keys[0].account"),
            (vec![team("free")], with_plan, "keys[0].plan"),
            (
                vec![team("gold")],
                new_key("d", "free", 0).1,
                "accounts[0].plan",
            ),
            (
                vec![team("free"), team("free")],
                new_key("e", "free", 0).1,
                "accounts[1].id",
            ),
            (vec![team("free")], clash, "keys[0].id"),
        ];
        for (accounts, key, field) in cases {
            let file = KeysFile {
                accounts,
                keys: vec![key],
            };
            let e = KeyTable::compile(Path::new("k"), &file, &plans).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn bearer_and_x_api_key_extraction() {
        assert_eq!(
            presented_key(Some(b"Bearer sk-1"), None, false),
            Some("sk-1")
        );
        assert_eq!(
            presented_key(Some(b"bearer   sk-1 "), None, false),
            Some("sk-1")
        );
        assert_eq!(presented_key(Some(b"Basic abc"), None, false), None);
        assert_eq!(presented_key(None, Some(b"sk-2"), false), None);
        assert_eq!(presented_key(None, Some(b"sk-2"), true), Some("sk-2"));
    }
}
