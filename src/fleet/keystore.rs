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
//! A gateway reads the stream every [`POLL`], applying the other gateways' changes
//! ([`Directory::apply_remote`]): a change made through any gateway is served by all within
//! about a tenth of a second. After each batch it marks in its copy how far the copy follows
//! the stream ([`crate::accounts::ReplicaMark`]). At start (and when Redis answers again
//! after a failed read) it resumes from that mark when it can: the mark is for this fleet
//! store (its epoch), the stream still holds every change after it, and the few rows the
//! local feed changed since are read again from Redis ([`resume`]); a restart then costs
//! opening the local copy, not reading a million rows. Otherwise (a new gateway, a stream
//! trimmed past the mark, a write of its own the fleet's store did not take) it loads every
//! row (HSCAN in pages) into its copy and index ([`load`]).
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
use crate::accounts::{
    AccountRow, Change, Directory, KeyKind, KeyRow, Named, Replication, StoreError,
};
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

/// Copy this gateway's rows into an empty fleet store, once for the fleet. Returns the
/// fleet store's epoch: the `seeded` marker's value, made by the gateway that seeded it (a
/// node name and a random part), so that a store emptied and seeded again has another.
async fn seed(
    fleet: &Arc<Fleet>,
    directory: &Arc<Directory>,
) -> Result<String, super::Unavailable> {
    let marker = fleet.layout.key_store("seeded");
    let made = format!("{}:{:016x}", fleet.node, rand::random::<u64>());
    let (first, epoch): (Option<String>, String) = fleet
        .run(Op::Report, move |mut conn| async move {
            redis::pipe()
                .cmd("SET")
                .arg(&marker)
                .arg(made)
                .arg("NX")
                .cmd("GET")
                .arg(&marker)
                .query_async(&mut conn)
                .await
        })
        .await?;
    if first.is_none() {
        return Ok(epoch);
    }
    let dir = directory.clone();
    let Ok(Ok((accounts, keys))) = tokio::task::spawn_blocking(move || dir.rows()).await else {
        log::warn!("accounts: cannot read the local key store to seed the fleet's");
        return Ok(epoch);
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
    Ok(epoch)
}

/// Load every row of the fleet's store into this gateway's copy and index; returns the
/// stream position to follow from (taken before the rows are read: a change made while
/// they are is applied again, harmlessly).
async fn load(fleet: &Arc<Fleet>, directory: &Arc<Directory>, epoch: &str) -> Result<String, ()> {
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
    let (dir, mark) = (directory.clone(), (epoch.to_string(), from.clone()));
    let replaced = tokio::task::spawn_blocking(move || {
        dir.replace_all(&accounts, &keys)?;
        dir.mark_replica(&mark.0, &mark.1)
    });
    match replaced.await {
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

/// A stream entry id (`ms-seq`) as numbers, to compare.
fn entry_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// What the fleet's stream still holds, from `XINFO STREAM`.
#[derive(Debug, PartialEq, Eq)]
struct FeedSpan {
    /// The oldest entry kept (`None`: empty).
    first: Option<(u64, u64)>,
    /// The newest id ever given out.
    last: (u64, u64),
    /// Whether every entry ever added is still there (nothing trimmed).
    whole: bool,
}

impl FeedSpan {
    /// A stream with nothing in it, taken to have never had anything.
    const NOTHING: FeedSpan = FeedSpan {
        first: None,
        last: (0, 0),
        whole: true,
    };

    /// Whether following from `at` misses nothing: `at` is no later than the newest id (a
    /// stream that went back in time is another stream), and the entries after it are all
    /// kept (`at` itself or something older is still there, or nothing was ever trimmed).
    fn reaches(&self, at: (u64, u64)) -> bool {
        at <= self.last && (self.whole || self.first.is_some_and(|f| f <= at))
    }
}

/// Read what the fleet's stream spans (an absent stream spans nothing, from `0-0`).
async fn feed_span(fleet: &Arc<Fleet>) -> Result<FeedSpan, super::Unavailable> {
    let feed = fleet.layout.key_store("feed");
    let f = feed.clone();
    let length: u64 = fleet
        .run(Op::Report, move |mut conn| async move {
            redis::cmd("XLEN").arg(f).query_async(&mut conn).await
        })
        .await?;
    if length == 0 {
        // Absent, or emptied (not by this code): only a copy marked at `0-0` follows it.
        return Ok(FeedSpan::NOTHING);
    }
    let info: std::collections::HashMap<String, redis::Value> = fleet
        .run(Op::Report, move |mut conn| async move {
            redis::cmd("XINFO")
                .arg("STREAM")
                .arg(feed)
                .query_async(&mut conn)
                .await
        })
        .await?;
    let text = |name: &str| {
        info.get(name)
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
    };
    let number = |name: &str| {
        info.get(name)
            .and_then(|v| redis::from_redis_value_ref::<u64>(v).ok())
    };
    Ok(FeedSpan {
        first: text("recorded-first-entry-id").and_then(|t| entry_id(&t)),
        last: text("last-generated-id")
            .and_then(|t| entry_id(&t))
            .unwrap_or_default(),
        whole: number("entries-added").is_some_and(|added| added == length),
    })
}

/// Resume from the local copy instead of loading every row: when the copy was marked for
/// this fleet store ([`crate::accounts::ReplicaMark`]) and the stream still holds every
/// change since the mark. The rows the local feed names since the mark are read again from
/// the fleet's store and written over the copy (so a write of this host's own that a crash
/// kept from the fleet's store does not outlive it); the stream's changes since the mark
/// are read next by [`follow`]. Returns where to follow from, or `None` when only a full
/// load will do.
async fn resume(
    fleet: &Arc<Fleet>,
    directory: &Arc<Directory>,
    epoch: &str,
) -> Result<Option<String>, ()> {
    let started = Instant::now();
    let dir = directory.clone();
    let mark = match tokio::task::spawn_blocking(move || dir.replica_mark()).await {
        Ok(Ok(Some(mark))) if mark.epoch == epoch => mark,
        _ => return Ok(None),
    };
    let Some(at) = entry_id(&mark.position) else {
        return Ok(None);
    };
    let span = feed_span(fleet).await.map_err(|_| ())?;
    if !span.reaches(at) {
        log::info!(
            "accounts: the fleet's stream no longer reaches back to this copy's mark ({}): \
             loading the fleet's key store whole",
            mark.position
        );
        return Ok(None);
    }
    let dir = directory.clone();
    let since = mark.local_seq;
    let named = match tokio::task::spawn_blocking(move || dir.named_since(since)).await {
        Ok(Ok(Some(named))) => named,
        _ => return Ok(None),
    };
    let (accounts, keys): (Vec<&Named>, Vec<&Named>) =
        named.iter().partition(|n| matches!(n, Named::Account(_)));
    let ids = |named: &[&Named]| -> Vec<String> {
        named
            .iter()
            .map(|n| match n {
                Named::Account(id) | Named::Key(id) => id.clone(),
            })
            .collect()
    };
    let rows = |table: &'static str, ids: Vec<String>| {
        let key = fleet.layout.key_store(table);
        async move {
            if ids.is_empty() {
                return Ok((ids, Vec::new()));
            }
            let query = ids.clone();
            let found: Vec<Option<String>> = fleet
                .run(Op::Report, move |mut conn| async move {
                    redis::cmd("HMGET")
                        .arg(key)
                        .arg(query)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            Ok::<_, super::Unavailable>((ids, found))
        }
    };
    let (account_ids, account_rows) = rows("rows:a", ids(&accounts)).await.map_err(|_| ())?;
    let (key_ids, key_rows) = rows("rows:k", ids(&keys)).await.map_err(|_| ())?;
    let parse = |text: &str| serde_json::from_str::<Value>(text).ok();
    let mut changes = Vec::with_capacity(named.len());
    for (id, row) in account_ids.into_iter().zip(account_rows) {
        match row {
            None => changes.push(Change::AccountDeleted(id)),
            Some(t) => changes.extend(
                parse(&t)
                    .as_ref()
                    .and_then(account_from)
                    .map(Change::Account),
            ),
        }
    }
    let dir = directory.clone();
    let fixed = tokio::task::spawn_blocking(move || {
        for (id, row) in key_ids.into_iter().zip(key_rows) {
            match row {
                // The local row's digest names it in the index.
                None => match dir.key(&id) {
                    Ok(Some(local)) => changes.push(Change::KeyDeleted {
                        id,
                        sha256: local.sha256,
                    }),
                    Ok(None) => {}
                    Err(_) => return false,
                },
                Some(t) => changes.extend(parse(&t).as_ref().and_then(key_from).map(Change::Key)),
            }
        }
        // Keys are deleted before their account; accounts written before their keys.
        changes.sort_by_key(|c| match c {
            Change::Account(_) => 0,
            Change::Key(_) | Change::KeyDeleted { .. } => 1,
            Change::AccountDeleted(_) => 2,
        });
        changes.iter().all(|c| dir.apply_remote(c))
    });
    if !matches!(fixed.await, Ok(true)) {
        return Ok(None);
    }
    log::info!(
        "accounts: resumed the fleet's key store from this host's copy at {} in {:?} ({} rows \
         read again); following its changes from there",
        mark.position,
        started.elapsed(),
        named.len()
    );
    Ok(Some(mark.position))
}

/// Where to follow the fleet's stream from, once Redis answers: resumed from the local copy
/// when it can be ([`resume`]), else after a full [`load`]. Seeds an empty fleet store first.
async fn start(
    fleet: &Arc<Fleet>,
    directory: &Arc<Directory>,
    epoch: &mut String,
) -> Result<String, ()> {
    *epoch = seed(fleet, directory).await.map_err(|_| ())?;
    if let Some(at) = resume(fleet, directory, epoch).await? {
        return Ok(at);
    }
    load(fleet, directory, epoch).await
}

/// Follow the fleet's key store until the fleet is gone: load, then read the stream.
async fn follow(
    fleet: Weak<Fleet>,
    directory: Arc<Directory>,
    mut first: Option<std::sync::mpsc::Sender<()>>,
) {
    let mut from: Option<String> = None;
    let mut epoch = String::new();
    loop {
        let Some(fleet) = fleet.upgrade() else { return };
        match from.clone() {
            None => {
                if fleet.is_up() {
                    if let Ok(at) = start(&fleet, &directory, &mut epoch).await {
                        // Ready once the stream is read to its end (below): resumed from an
                        // older mark, the changes since it must be in before this process
                        // writes, or a late one could undo a write of its own.
                        from = Some(at);
                        continue;
                    }
                }
            }
            Some(at) => {
                let feed = fleet.layout.key_store("feed");
                let after = format!("({at}");
                let read: Result<Vec<(String, Vec<String>)>, _> = fleet
                    .run(Op::Report, move |mut conn| async move {
                        redis::cmd("XRANGE")
                            .arg(feed)
                            .arg(after)
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
                        if let Some(position) = from.clone().filter(|p| *p != at) {
                            // Mark how far the local copy follows, so that a restart resumes
                            // from here; a change the copy refused leaves it to a full load.
                            let (dir, epoch) = (directory.clone(), epoch.clone());
                            let _ = tokio::task::spawn_blocking(move || {
                                // Every change is applied, whether or not one before fit.
                                let mut took = true;
                                for c in &changes {
                                    took &= dir.apply_remote(c);
                                }
                                let marked = if took {
                                    dir.mark_replica(&epoch, &position)
                                } else {
                                    dir.forget_replica()
                                };
                                if let Err(e) = marked {
                                    log::warn!("accounts: cannot mark the fleet replica: {e}");
                                }
                            })
                            .await;
                        }
                        if full {
                            continue;
                        }
                        if let Some(tx) = first.take() {
                            let _ = tx.send(());
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

    #[test]
    fn a_copy_resumes_only_when_the_stream_holds_every_change_after_its_mark() {
        assert_eq!(entry_id("1700000000000-3"), Some((1_700_000_000_000, 3)));
        assert_eq!(entry_id("nonsense"), None);
        let trimmed = FeedSpan {
            first: Some((100, 0)),
            last: (200, 5),
            whole: false,
        };
        assert!(trimmed.reaches((100, 0)), "the mark's own entry is kept");
        assert!(trimmed.reaches((150, 2)));
        assert!(trimmed.reaches((200, 5)), "nothing written since the mark");
        assert!(
            !trimmed.reaches((99, 9)),
            "entries after the mark may be gone"
        );
        assert!(
            !trimmed.reaches((200, 6)),
            "a mark past the stream: another stream"
        );
        let whole = FeedSpan {
            whole: true,
            ..trimmed
        };
        assert!(whole.reaches((0, 0)), "nothing was ever trimmed");
        let empty = FeedSpan::NOTHING;
        assert!(empty.reaches((0, 0)));
        assert!(!empty.reaches((5, 0)));
    }
}
