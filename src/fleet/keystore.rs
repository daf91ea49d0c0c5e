//! The fleet's key store: accounts and keys shared by every gateway through Redis.
//!
//! Redis holds the fleet's rows (a hash per table, field = id, value = the row's JSON) and a
//! stream of changes (`XADD … MAXLEN ~ 100000`); see [`super::Layout::key_store`]. A write
//! is one Lua script that stores (or deletes) the row and appends its change, so the row
//! and the feed never disagree. Each gateway keeps its SQLite store as its local copy: its
//! index is loaded from it, the admin pages read it (with keys' last use) and it checks
//! names and limits as on a single gateway; the write goes to Redis right after, under the
//! same lock, so the stream has this gateway's writes in its order ([`Shared`]).
//!
//! Every gateway loads all rows at start (HSCAN in pages) into its copy and index, then
//! reads the stream every [`POLL`] from where the load began, applying the other gateways'
//! changes ([`Directory::apply_remote`]): a change made through any gateway is served by
//! all within about a tenth of a second. A read that fails (Redis down, slow, restarted)
//! makes the gateway load everything again once Redis answers: only then could the stream
//! have been trimmed past it, or a write of its own have failed half-way.
//!
//! While Redis is down the keys already loaded keep working from the index; writes are
//! refused before anything changes ([`StoreError::Unavailable`], a 503 to API callers).
//!
//! The first gateway to start on an empty fleet store (no `seeded` marker) copies its own
//! SQLite rows in (`HSETNX`: idempotent); after that Redis is the source of truth and every
//! gateway's copy is replaced by its rows at start.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redis::Script;
use serde_json::{json, Value};

use super::{Fleet, Op};
use crate::accounts::{AccountRow, Change, Directory, KeyKind, KeyRow, Replication, StoreError};
use crate::units::Usd;

/// Stream entries kept (approximately: `MAXLEN ~`).
pub const KEY_STORE_FEED_KEEP: u64 = 100_000;
/// How often a gateway reads the stream.
const POLL: Duration = Duration::from_millis(100);
/// Entries read at once, and rows per HSCAN page.
const PAGE: usize = 1000;
/// Longest wait at start for the first load, when Redis answers.
const FIRST_LOAD: Duration = Duration::from_secs(60);

const PUBLISH: &str = r#"
if ARGV[1] == 'set' then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
else
  redis.call('HDEL', KEYS[1], ARGV[2])
end
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'c', ARGV[4], 'n', ARGV[5])
"#;

fn usd(v: Option<Usd>) -> Value {
    v.map_or(Value::Null, |u| json!(u.picos()))
}

fn usd_of(v: &Value) -> Option<Usd> {
    v.as_u64().map(Usd)
}

fn models_of(v: &Value) -> Option<Vec<String>> {
    serde_json::from_value(v.clone()).ok().flatten()
}

fn account_to(a: &AccountRow) -> Value {
    json!({
        "id": a.id, "name": a.name, "plan": a.plan, "payment_method": a.payment_method,
        "on_hold": a.on_hold, "ceiling": usd(a.ceiling_usd), "models": a.models,
        "created_at": a.created_at,
    })
}

fn account_from(v: &Value) -> Option<AccountRow> {
    Some(AccountRow {
        id: v["id"].as_str()?.to_string(),
        name: v["name"].as_str()?.to_string(),
        plan: v["plan"].as_str()?.to_string(),
        payment_method: v["payment_method"].as_bool()?,
        on_hold: v["on_hold"].as_bool()?,
        ceiling_usd: usd_of(&v["ceiling"]),
        models: models_of(&v["models"]),
        created_at: v["created_at"].as_u64()?,
    })
}

fn key_to(k: &KeyRow) -> Value {
    json!({
        "id": k.id, "account_id": k.account_id, "name": k.name,
        "sha256": hex::encode(k.sha256), "kind": k.kind.as_str(), "status": k.status,
        "expires_at": k.expires_at, "revoke_at_expiry": k.revoke_at_expiry,
        "created_at": k.created_at,
        "monthly_limit": usd(k.monthly_limit_usd), "models": k.models,
    })
}

fn digest_of(v: &Value) -> Option<[u8; 32]> {
    hex::decode(v.as_str()?).ok()?.try_into().ok()
}

fn key_from(v: &Value) -> Option<KeyRow> {
    Some(KeyRow {
        id: v["id"].as_str()?.to_string(),
        account_id: v["account_id"].as_str()?.to_string(),
        name: v["name"].as_str()?.to_string(),
        sha256: digest_of(&v["sha256"])?,
        kind: KeyKind::parse(v["kind"].as_str()?)?,
        status: serde_json::from_value(v["status"].clone()).ok()?,
        expires_at: v["expires_at"].as_u64(),
        // Absent in rows written before rotations ended revoked.
        revoke_at_expiry: v["revoke_at_expiry"].as_bool().unwrap_or(false),
        created_at: v["created_at"].as_u64()?,
        monthly_limit_usd: usd_of(&v["monthly_limit"]),
        models: models_of(&v["models"]),
        last_used_at: None,
    })
}

fn change_to(c: &Change) -> Value {
    match c {
        Change::Account(a) => json!({"t": "account", "row": account_to(a)}),
        Change::Key(k) => json!({"t": "key", "row": key_to(k)}),
        Change::AccountDeleted(id) => json!({"t": "account_deleted", "id": id}),
        Change::KeyDeleted { id, sha256 } => {
            json!({"t": "key_deleted", "id": id, "sha256": hex::encode(sha256)})
        }
    }
}

fn change_from(text: &str) -> Option<Change> {
    let v: Value = serde_json::from_str(text).ok()?;
    Some(match v["t"].as_str()? {
        "account" => Change::Account(account_from(&v["row"])?),
        "key" => Change::Key(key_from(&v["row"])?),
        "account_deleted" => Change::AccountDeleted(v["id"].as_str()?.to_string()),
        "key_deleted" => Change::KeyDeleted {
            id: v["id"].as_str()?.to_string(),
            sha256: digest_of(&v["sha256"])?,
        },
        _ => return None,
    })
}

/// Run `f` on the Redis runtime and wait for it from a plain thread (the directory's
/// writers: a blocking task, the CLI), bounded.
fn wait_on<T: Send + 'static>(
    fleet: &Arc<Fleet>,
    f: impl std::future::Future<Output = T> + Send + 'static,
    limit: Duration,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    fleet.handle.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv_timeout(limit).ok()
}

/// Where a fleet gateway's (or the CLI's) directory writes go.
struct Shared {
    fleet: Arc<Fleet>,
}

impl Replication for Shared {
    fn ready(&self) -> bool {
        self.fleet.is_up()
    }

    fn publish(&self, change: &Change) -> Result<(), StoreError> {
        static SCRIPT: std::sync::LazyLock<Script> =
            std::sync::LazyLock::new(|| Script::new(PUBLISH));
        let l = &self.fleet.layout;
        let (table, op, id, row) = match change {
            Change::Account(a) => ("rows:a", "set", &a.id, account_to(a).to_string()),
            Change::Key(k) => ("rows:k", "set", &k.id, key_to(k).to_string()),
            Change::AccountDeleted(id) => ("rows:a", "del", id, String::new()),
            Change::KeyDeleted { id, .. } => ("rows:k", "del", id, String::new()),
        };
        let keys = vec![l.key_store(table), l.key_store("feed")];
        let args = vec![
            op.to_string(),
            id.clone(),
            row,
            change_to(change).to_string(),
            self.fleet.node.to_string(),
            KEY_STORE_FEED_KEEP.to_string(),
        ];
        let fleet = self.fleet.clone();
        let limit = self.fleet.timeout * 2 + Duration::from_millis(100);
        let sent = wait_on(
            &self.fleet,
            async move {
                fleet
                    .script::<String>(Op::Report, &SCRIPT, keys, args)
                    .await
            },
            limit,
        );
        match sent {
            Some(Ok(_)) => Ok(()),
            _ => Err(StoreError::Unavailable(
                "the fleet's shared key store (Redis) did not take the write; retry".into(),
            )),
        }
    }
}

/// Every row of one table's hash, in pages.
async fn scan(fleet: &Fleet, key: String) -> Result<Vec<String>, super::Unavailable> {
    let mut cursor = "0".to_string();
    let mut rows = Vec::new();
    loop {
        let (k, c) = (key.clone(), cursor.clone());
        let (next, page): (String, Vec<String>) = fleet
            .run(Op::Report, move |mut conn| async move {
                redis::cmd("HSCAN")
                    .arg(k)
                    .arg(c)
                    .arg("COUNT")
                    .arg(PAGE)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        // Field, value, field, value…
        rows.extend(page.into_iter().skip(1).step_by(2));
        if next == "0" {
            return Ok(rows);
        }
        cursor = next;
    }
}

/// Copy this gateway's rows into an empty fleet store, once for the fleet.
async fn seed(fleet: &Arc<Fleet>, directory: &Arc<Directory>) -> Result<(), super::Unavailable> {
    let marker = fleet.layout.key_store("seeded");
    let node = fleet.node.to_string();
    let first: Option<String> = fleet
        .run(Op::Report, move |mut conn| async move {
            redis::cmd("SET")
                .arg(marker)
                .arg(node)
                .arg("NX")
                .query_async(&mut conn)
                .await
        })
        .await?;
    if first.is_none() {
        return Ok(());
    }
    let dir = directory.clone();
    let Ok(Ok((accounts, keys))) = tokio::task::spawn_blocking(move || dir.rows()).await else {
        log::warn!("accounts: cannot read the local key store to seed the fleet's");
        return Ok(());
    };
    let l = &fleet.layout;
    let rows: Vec<(String, String, String)> = accounts
        .iter()
        .map(|a| {
            (
                l.key_store("rows:a"),
                a.id.clone(),
                account_to(a).to_string(),
            )
        })
        .chain(
            keys.iter()
                .map(|k| (l.key_store("rows:k"), k.id.clone(), key_to(k).to_string())),
        )
        .collect();
    let n = rows.len();
    for chunk in rows.chunks(PAGE) {
        let chunk = chunk.to_vec();
        fleet
            .run(Op::Report, move |mut conn| async move {
                let mut pipe = redis::pipe();
                for (key, id, row) in &chunk {
                    pipe.cmd("HSETNX").arg(key).arg(id).arg(row).ignore();
                }
                pipe.query_async::<()>(&mut conn).await
            })
            .await?;
    }
    if n > 0 {
        log::info!("accounts: copied {n} rows of this gateway's key store into the fleet's");
    }
    Ok(())
}

/// Load every row of the fleet's store into this gateway's copy and index; returns the
/// stream position to follow from (taken before the rows are read: a change made while
/// they are is applied again, harmlessly).
async fn load(fleet: &Arc<Fleet>, directory: &Arc<Directory>) -> Result<String, ()> {
    seed(fleet, directory).await.map_err(|_| ())?;
    let started = Instant::now();
    let feed = fleet.layout.key_store("feed");
    let last: Vec<(String, Vec<String>)> = fleet
        .run(Op::Report, move |mut conn| async move {
            redis::cmd("XREVRANGE")
                .arg(feed)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await
        })
        .await
        .map_err(|_| ())?;
    let from = last.into_iter().next().map_or("0-0".to_string(), |e| e.0);
    let accounts = scan(fleet, fleet.layout.key_store("rows:a"))
        .await
        .map_err(|_| ())?;
    let keys = scan(fleet, fleet.layout.key_store("rows:k"))
        .await
        .map_err(|_| ())?;
    let read = started.elapsed();
    let parse = |text: &String| serde_json::from_str::<Value>(text).ok();
    let accounts: Vec<AccountRow> = accounts
        .iter()
        .filter_map(|t| parse(t).as_ref().and_then(account_from))
        .collect();
    let keys: Vec<KeyRow> = keys
        .iter()
        .filter_map(|t| parse(t).as_ref().and_then(key_from))
        .collect();
    let (na, nk) = (accounts.len(), keys.len());
    let parsed = started.elapsed();
    let dir = directory.clone();
    match tokio::task::spawn_blocking(move || dir.replace_all(&accounts, &keys)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            log::warn!("accounts: cannot load the fleet's key store: {e}");
            return Err(());
        }
        Err(_) => return Err(()),
    }
    log::info!(
        "accounts: loaded the fleet's key store ({na} accounts, {nk} keys) in {:?} (read \
         {read:?}, parsed {:?}, stored and indexed {:?})",
        started.elapsed(),
        parsed - read,
        started.elapsed() - parsed
    );
    Ok(from)
}

/// Follow the fleet's key store until the fleet is gone: load, then read the stream.
async fn follow(
    fleet: Weak<Fleet>,
    directory: Arc<Directory>,
    mut first: Option<std::sync::mpsc::Sender<()>>,
) {
    let mut from: Option<String> = None;
    loop {
        let Some(fleet) = fleet.upgrade() else { return };
        match from.clone() {
            None => {
                if fleet.is_up() {
                    if let Ok(at) = load(&fleet, &directory).await {
                        from = Some(at);
                        if let Some(tx) = first.take() {
                            let _ = tx.send(());
                        }
                        continue;
                    }
                }
            }
            Some(at) => {
                let feed = fleet.layout.key_store("feed");
                let read: Result<Vec<(String, Vec<String>)>, _> = fleet
                    .run(Op::Report, move |mut conn| async move {
                        redis::cmd("XRANGE")
                            .arg(feed)
                            .arg(format!("({at}"))
                            .arg("+")
                            .arg("COUNT")
                            .arg(PAGE)
                            .query_async(&mut conn)
                            .await
                    })
                    .await;
                match read {
                    Err(_) => from = None,
                    Ok(entries) => {
                        let full = entries.len() >= PAGE;
                        if let Some(last) = entries.last() {
                            from = Some(last.0.clone());
                        }
                        let node = fleet.node.to_string();
                        let changes: Vec<Change> = entries
                            .into_iter()
                            .filter_map(|(_, fields)| {
                                let mut c = None;
                                let mut n = None;
                                for pair in fields.chunks(2) {
                                    if let [f, v] = pair {
                                        match f.as_str() {
                                            "c" => c = Some(v.clone()),
                                            "n" => n = Some(v.clone()),
                                            _ => {}
                                        }
                                    }
                                }
                                // This gateway's own writes are in its index already.
                                (n.as_deref() != Some(&node))
                                    .then(|| c.as_deref().and_then(change_from))
                                    .flatten()
                            })
                            .collect();
                        if !changes.is_empty() {
                            let dir = directory.clone();
                            let _ = tokio::task::spawn_blocking(move || {
                                for c in &changes {
                                    dir.apply_remote(c);
                                }
                            })
                            .await;
                        }
                        if full {
                            continue;
                        }
                    }
                }
            }
        }
        drop(fleet);
        tokio::time::sleep(POLL).await;
    }
}

/// Share `directory` with the fleet: its writes go to Redis from now on. A gateway
/// (`follow`) also loads the fleet's rows (waiting for that at start while Redis answers)
/// and follows the other gateways' changes; the CLI only writes.
pub fn share_key_store(fleet: &Arc<Fleet>, directory: &Arc<Directory>, follow_it: bool) {
    directory.replicate_to(Arc::new(Shared {
        fleet: fleet.clone(),
    }));
    if !follow_it {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let up = fleet.is_up();
    fleet
        .handle
        .spawn(follow(Arc::downgrade(fleet), directory.clone(), Some(tx)));
    if up && rx.recv_timeout(FIRST_LOAD).is_err() {
        log::warn!("accounts: the fleet's key store did not load at start; serving the local copy until it does");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_changes_survive_their_json() {
        let a = AccountRow {
            id: "acct_a".into(),
            name: "A".into(),
            plan: "payg".into(),
            payment_method: true,
            on_hold: false,
            ceiling_usd: Some(Usd(5)),
            models: Some(vec!["m".into()]),
            created_at: 7,
        };
        let k = KeyRow {
            id: "key_k".into(),
            account_id: "acct_a".into(),
            name: "k".into(),
            sha256: [3; 32],
            kind: KeyKind::Management,
            status: crate::accounts::KeyStatus::Suspended,
            expires_at: Some(9),
            revoke_at_expiry: true,
            created_at: 8,
            monthly_limit_usd: None,
            models: None,
            last_used_at: None,
        };
        for c in [
            Change::Account(a),
            Change::Key(k),
            Change::AccountDeleted("acct_a".into()),
            Change::KeyDeleted {
                id: "key_k".into(),
                sha256: [1; 32],
            },
        ] {
            assert_eq!(change_from(&change_to(&c).to_string()), Some(c));
        }
    }
}
