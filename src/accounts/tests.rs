use std::path::PathBuf;

use super::*;

fn dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("accounts.sqlite");
    (tmp, path)
}

fn account(d: &Directory, name: &str) -> AccountRow {
    d.create_account(NewAccount {
        name: name.into(),
        plan: "payg".into(),
        ..NewAccount::default()
    })
    .unwrap()
}

const NOW: u64 = 1_800_000_000;

/// A key "ci" of a new account "acme": its secret and row.
fn one_key(d: &Directory) -> (String, KeyRow) {
    let acct = account(d, "acme");
    d.create_key(&acct.id, "ci", KeyKind::Inference, KeyLimits::default())
        .unwrap()
}

#[test]
fn a_created_key_authenticates_at_once_and_only_its_hash_is_stored() {
    let (_tmp, path) = dir();
    let d = Directory::open(&path).unwrap();
    let acct = account(&d, "acme");
    assert!(acct.id.starts_with("acct_") && acct.id.len() == 17);
    let (secret, row) = d
        .create_key(&acct.id, "ci", KeyKind::Inference, KeyLimits::default())
        .unwrap();
    assert!(secret.starts_with("sk-") && secret.len() == 43);
    assert!(row.id.starts_with("key_") && row.id.len() == 16);
    let (key, account) = d.authenticate(&secret, NOW).unwrap();
    assert_eq!((&*key.id, &*account.name), (row.id.as_str(), "acme"));
    assert_eq!(key.account_id(), acct.id.as_str());
    assert_eq!(d.lookup(&digest_of(&secret)).unwrap().0.id, key.id);
    assert_eq!(
        d.authenticate("sk-nothing", NOW).unwrap_err(),
        Refusal::Unknown
    );

    // The file holds the digest, never the secret.
    let bytes = std::fs::read(&path).unwrap();
    let wal = std::fs::read(path.with_extension("sqlite-wal")).unwrap_or_default();
    let needle = &secret.as_bytes()[3..];
    for b in [&bytes, &wal] {
        assert!(!b.windows(needle.len()).any(|w| w == needle));
    }
    // And a new process finds it.
    let again = Directory::open(&path).unwrap();
    assert!(again.authenticate(&secret, NOW).is_ok());
    assert_eq!(again.keys_of(&acct.id).unwrap(), [row]);
}

#[test]
fn revoking_is_seen_at_once_here_and_by_refresh_elsewhere() {
    let (_tmp, path) = dir();
    let a = Directory::open(&path).unwrap();
    let b = Directory::open(&path).unwrap();
    let acct = account(&a, "acme");
    let (secret, row) = a
        .create_key(&acct.id, "ci", KeyKind::Inference, KeyLimits::default())
        .unwrap();

    // b has not refreshed: it does not know the key yet; then it does.
    assert_eq!(b.authenticate(&secret, NOW).unwrap_err(), Refusal::Unknown);
    assert_eq!(b.refresh().unwrap(), Refreshed::Applied(2));
    assert!(b.authenticate(&secret, NOW).is_ok());
    assert_eq!(b.refresh().unwrap(), Refreshed::Unchanged);

    a.revoke_key(&row.id).unwrap();
    assert_eq!(a.authenticate(&secret, NOW).unwrap_err(), Refusal::Revoked);
    assert!(b.authenticate(&secret, NOW).is_ok());
    assert_eq!(b.refresh().unwrap(), Refreshed::Applied(1));
    assert_eq!(b.authenticate(&secret, NOW).unwrap_err(), Refusal::Revoked);

    // A change made by b reaches a the same way.
    b.update_account(&acct.id, |r| r.on_hold = true).unwrap();
    assert!(!a.account(&acct.id).unwrap().on_hold);
    a.refresh().unwrap();
    assert!(a.account(&acct.id).unwrap().on_hold);

    // Suspension and expiry refuse with their own reason.
    let (s2, k2) = a
        .create_key(
            &acct.id,
            "old",
            KeyKind::Inference,
            KeyLimits {
                expires_at: Some(NOW),
                ..KeyLimits::default()
            },
        )
        .unwrap();
    assert_eq!(a.authenticate(&s2, NOW).unwrap_err(), Refusal::Expired);
    assert!(a.authenticate(&s2, NOW - 1).is_ok());
    a.set_key_status(&k2.id, KeyStatus::Suspended).unwrap();
    assert_eq!(
        a.authenticate(&s2, NOW - 1).unwrap_err(),
        Refusal::Suspended
    );
    a.set_key_status(&k2.id, KeyStatus::Active).unwrap();
    assert!(a.authenticate(&s2, NOW - 1).is_ok());
}

#[test]
fn a_reader_behind_the_pruned_feed_reloads_and_converges() {
    let (_tmp, path) = dir();
    let a = Directory::open(&path).unwrap();
    let b = Directory::open(&path).unwrap();
    let acct = account(&a, "acme");
    let mut secrets = Vec::new();
    for i in 0..20 {
        let (s, row) = a
            .create_key(
                &acct.id,
                &format!("k{i}"),
                KeyKind::Inference,
                KeyLimits::default(),
            )
            .unwrap();
        secrets.push((s, row));
    }
    a.revoke_key(&secrets[0].1.id).unwrap();
    a.delete_key(&secrets[1].1.id).unwrap();
    assert!(a.prune_feed(5).unwrap() > 0);
    // b's cursor (0) is behind what the feed keeps.
    let mut store = Store::open(&path).unwrap();
    assert_eq!(store.changes_since(0).unwrap(), Feed::Reload);
    assert_eq!(b.refresh().unwrap(), Refreshed::Reloaded);
    assert_eq!(b.cursor(), a.cursor());
    assert_eq!(b.index().len(), 19);
    assert_eq!(
        b.authenticate(&secrets[0].0, NOW).unwrap_err(),
        Refusal::Revoked
    );
    assert_eq!(
        b.authenticate(&secrets[1].0, NOW).unwrap_err(),
        Refusal::Unknown
    );
    assert!(b.authenticate(&secrets[2].0, NOW).is_ok());
    // After the reload b follows the feed again.
    a.revoke_key(&secrets[2].1.id).unwrap();
    assert_eq!(b.refresh().unwrap(), Refreshed::Applied(1));
    assert_eq!(
        b.authenticate(&secrets[2].0, NOW).unwrap_err(),
        Refusal::Revoked
    );
    // A bulk import also sends readers back to a reload.
    let (_, mut extra) = (0, secrets[3].1.clone());
    extra.id = new_key_id();
    extra.name = "imported".into();
    extra.sha256 = new_secret().1;
    store.import(&[], &[extra.clone()]).unwrap();
    assert_eq!(b.refresh().unwrap(), Refreshed::Reloaded);
    assert!(b.lookup(&extra.sha256).is_some());
}

#[test]
fn names_are_unique_and_refusals_say_which() {
    let (_tmp, path) = dir();
    let d = Directory::open(&path).unwrap();
    let acme = account(&d, "acme");
    let other = account(&d, "other");
    let dup = d.create_account(NewAccount {
        name: "acme".into(),
        plan: "payg".into(),
        ..NewAccount::default()
    });
    assert!(
        matches!(&dup, Err(StoreError::Conflict(m)) if m.contains("account named 'acme'")),
        "{dup:?}"
    );
    d.create_key(&acme.id, "ci", KeyKind::Inference, KeyLimits::default())
        .unwrap();
    let dup = d.create_key(&acme.id, "ci", KeyKind::Management, KeyLimits::default());
    assert!(
        matches!(&dup, Err(StoreError::Conflict(m)) if m.contains("key named 'ci'")),
        "{dup:?}"
    );
    // The same name in another account is fine.
    d.create_key(&other.id, "ci", KeyKind::Inference, KeyLimits::default())
        .unwrap();
    let missing = d.create_key("acct_nope", "x", KeyKind::Inference, KeyLimits::default());
    assert!(matches!(missing, Err(StoreError::NotFound(_))));
    assert!(matches!(
        d.revoke_key("key_nope"),
        Err(StoreError::NotFound(_))
    ));
    for bad in ["", " padded", "bidi\u{202e}", "nul\0"] {
        let r = d.create_key(&acme.id, bad, KeyKind::Inference, KeyLimits::default());
        assert!(matches!(r, Err(StoreError::Invalid(_))), "{bad:?}: {r:?}");
    }
    // Renaming onto a taken name is refused; the stored row is unchanged.
    let r = d.update_account(&other.id, |a| a.name = "acme".into());
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
    assert_eq!(&*d.account(&other.id).unwrap().name, "other");
    let r = d.update_account(&other.id, |a| a.plan.clear());
    assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
    // Revoked stays revoked; an account with keys cannot be deleted.
    let (_, k) = d
        .create_key(&acme.id, "gone", KeyKind::Inference, KeyLimits::default())
        .unwrap();
    d.revoke_key(&k.id).unwrap();
    let r = d.set_key_status(&k.id, KeyStatus::Active);
    assert!(
        matches!(&r, Err(StoreError::Conflict(m)) if m.contains("revoked for good")),
        "{r:?}"
    );
    assert!(matches!(
        d.delete_account(&acme.id),
        Err(StoreError::Conflict(_))
    ));
    // Errors are std errors; a database failure keeps its cause.
    let e: Box<dyn std::error::Error> = Box::new(StoreError::Conflict("x".into()));
    assert!(e.source().is_none());
}

#[test]
fn key_limits_must_fit_within_the_account() {
    let (_tmp, path) = dir();
    let d = Directory::open(&path).unwrap();
    let acct = d
        .create_account(NewAccount {
            name: "capped".into(),
            plan: "payg".into(),
            ceiling_usd: Some(Usd(10 * crate::units::PICOS_PER_USD)),
            models: Some(vec!["gpt-4o".into(), "claude".into()]),
            ..NewAccount::default()
        })
        .unwrap();
    let limits = |usd: u64, models: &[&str]| KeyLimits {
        monthly_limit_usd: Some(Usd(usd * crate::units::PICOS_PER_USD)),
        models: Some(models.iter().map(|m| m.to_string()).collect()),
        ..KeyLimits::default()
    };
    let (_, k) = d
        .create_key(&acct.id, "ok", KeyKind::Inference, limits(5, &["claude"]))
        .unwrap();
    assert_eq!(
        d.lookup(&k.sha256).unwrap().0.models().map(|m| m.len()),
        Some(1)
    );
    for (usd, models) in [(11, &["claude"][..]), (5, &["o3"][..])] {
        let r = d.create_key(&acct.id, "bad", KeyKind::Inference, limits(usd, models));
        assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
    }
    let r = d.update_key(&k.id, |k| k.monthly_limit_usd = Some(Usd(u64::MAX)));
    assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
}

#[test]
fn deleted_rows_leave_the_index_here_and_elsewhere() {
    let (_tmp, path) = dir();
    let a = Directory::open(&path).unwrap();
    let b = Directory::open(&path).unwrap();
    let acct = account(&a, "acme");
    let (secret, k) = a
        .create_key(&acct.id, "ci", KeyKind::Inference, KeyLimits::default())
        .unwrap();
    b.refresh().unwrap();
    assert_eq!(b.keys_of(&acct.id).unwrap().len(), 1);
    // A key's digest never changes (indexes are keyed by it).
    let mut store = Store::open(&path).unwrap();
    let r = store.write(&Change::Key(KeyRow {
        sha256: [9; 32],
        ..k.clone()
    }));
    assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");

    a.delete_key(&k.id).unwrap();
    assert_eq!(a.authenticate(&secret, NOW).unwrap_err(), Refusal::Unknown);
    assert!(a.key(&k.id).unwrap().is_none() && a.keys_of(&acct.id).unwrap().is_empty());
    assert_eq!(a.index().len(), 0);
    a.delete_account(&acct.id).unwrap();
    assert!(a.account(&acct.id).is_none());

    assert_eq!(b.refresh().unwrap(), Refreshed::Applied(2));
    assert_eq!(b.authenticate(&secret, NOW).unwrap_err(), Refusal::Unknown);
    assert!(b.lookup(&k.sha256).is_none() && b.account(&acct.id).is_none());
    assert_eq!((b.index().len(), b.index().account_count()), (0, 0));
    assert!(matches!(a.delete_key(&k.id), Err(StoreError::NotFound(_))));
}

#[test]
fn the_index_applies_changes_in_place() {
    let index = KeyIndex::default();
    let acct = AccountRow {
        id: "acct_aaaaaaaaaaaa".into(),
        name: "acme".into(),
        plan: "payg".into(),
        payment_method: false,
        on_hold: false,
        ceiling_usd: None,
        models: None,
        created_at: 1,
    };
    let key = |id: &str, name: &str, sha: u8| KeyRow {
        id: id.into(),
        account_id: acct.id.clone(),
        name: name.into(),
        sha256: [sha; 32],
        kind: KeyKind::Inference,
        status: KeyStatus::Active,
        expires_at: None,
        revoke_at_expiry: false,
        created_at: 1,
        monthly_limit_usd: None,
        models: None,
        last_used_at: None,
    };
    // A key arriving before its account is held, and found once the account arrives.
    index.apply(&Change::Key(key("key_1", "b", 1)));
    assert!(index.lookup(&[1; 32]).is_none());
    index.apply(&Change::Account(acct.clone()));
    assert!(index.lookup(&[1; 32]).is_some());
    index.apply(&Change::Key(key("key_2", "a", 2)));
    let (k, a) = index.lookup(&[2; 32]).unwrap();
    assert!(k.account_id() == &*a.id, "keys share the account's id");
    // A changed account keeps the id its keys share.
    index.apply(&Change::Account(AccountRow {
        on_hold: true,
        ..acct.clone()
    }));
    let (k, a) = index.lookup(&[2; 32]).unwrap();
    assert!(a.on_hold && k.account_id() == &*a.id);
    // A changed key replaces its entry.
    index.apply(&Change::Key(KeyRow {
        status: KeyStatus::Suspended,
        monthly_limit_usd: Some(Usd(7)),
        ..key("key_2", "a", 2)
    }));
    let (k, _) = index.lookup(&[2; 32]).unwrap();
    assert_eq!(
        (k.status, k.monthly_limit_usd()),
        (KeyStatus::Suspended, Some(Usd(7)))
    );
    assert_eq!(index.len(), 2);
    // A delete removes the entry only if the digest is still that key's.
    index.apply(&Change::KeyDeleted {
        id: "key_other".into(),
        sha256: [1; 32],
    });
    assert_eq!(index.len(), 2);
    index.apply(&Change::KeyDeleted {
        id: "key_1".into(),
        sha256: [1; 32],
    });
    assert!(index.lookup(&[1; 32]).is_none());
    assert_eq!(index.len(), 1);
    index.apply(&Change::AccountDeleted(acct.id.clone()));
    assert!(index.lookup(&[2; 32]).is_none() && index.account_count() == 0);
}

#[test]
fn last_use_is_written_in_batches_and_is_not_a_change() {
    let (_tmp, path) = dir();
    let d = Directory::open(&path).unwrap();
    let (_, k) = one_key(&d);
    let head = d.cursor();
    d.touch_last_used(&[(k.id.clone(), 50), ("key_unknown".into(), 60)])
        .unwrap();
    d.touch_last_used(&[(k.id.clone(), 40)]).unwrap();
    let mut store = Store::open(&path).unwrap();
    assert_eq!(store.key(&k.id).unwrap().unwrap().last_used_at, Some(50));
    assert_eq!(store.head().unwrap(), head);
    // Writing the row again leaves its last use alone.
    d.update_key(&k.id, |k| k.name = "renamed".into()).unwrap();
    let (_, keys, _) = store.load_all().unwrap();
    assert_eq!(
        (keys[0].name.as_str(), keys[0].last_used_at),
        ("renamed", Some(50))
    );
}

#[tokio::test]
async fn the_refresher_applies_what_other_processes_write() {
    let (_tmp, path) = dir();
    let a = Directory::open(&path).unwrap();
    let b = Arc::new(Directory::open(&path).unwrap());
    let task = b
        .clone()
        .spawn_refresher(std::time::Duration::from_millis(10));
    let acct = account(&a, "acme");
    let (secret, _) = a
        .create_key(&acct.id, "ci", KeyKind::Inference, KeyLimits::default())
        .unwrap();
    let mut seen = false;
    for _ in 0..200 {
        if b.authenticate(&secret, NOW).is_ok() {
            seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    task.abort();
    assert!(seen, "b never saw the key a created");
}

/// A fleet store that takes nothing.
struct Refusing;

impl Replication for Refusing {
    fn ready(&self) -> bool {
        true
    }
    fn publish(&self, _: &Change) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
}

#[test]
fn the_replica_mark_names_what_changed_since_and_a_write_the_fleet_refused_forgets_it() {
    let (_tmp, path) = dir();
    let d = Directory::open(&path).unwrap();
    assert_eq!(d.replica_mark().unwrap(), None);
    let acct = account(&d, "acme");
    d.mark_replica("epoch-1", "170-0").unwrap();
    let mark = d.replica_mark().unwrap().unwrap();
    assert_eq!((&*mark.epoch, &*mark.position), ("epoch-1", "170-0"));
    assert_eq!(d.named_since(mark.local_seq).unwrap(), Some(vec![]));

    // Rows written after the mark are named once each.
    let (_, key) = d
        .create_key(&acct.id, "ci", KeyKind::Inference, KeyLimits::default())
        .unwrap();
    d.update_key(&key.id, |k| k.name = "build".into()).unwrap();
    assert_eq!(
        d.named_since(mark.local_seq).unwrap(),
        Some(vec![Named::Key(key.id.clone())])
    );
    // Across a reopen too.
    drop(d);
    let d = Directory::open(&path).unwrap();
    assert_eq!(d.replica_mark().unwrap(), Some(mark.clone()));

    // A write the fleet's store did not take leaves the copy unmarked.
    d.replicate_to(Arc::new(Refusing));
    assert!(d
        .create_account(NewAccount {
            name: "lost".into(),
            plan: "payg".into(),
            ..NewAccount::default()
        })
        .is_err());
    assert_eq!(d.replica_mark().unwrap(), None);

    // A feed pruned past the mark names nothing: only a full load will do.
    d.forget_replica().unwrap();
    for i in 0..5 {
        account(&Directory::open(&path).unwrap(), &format!("a{i}"));
    }
    d.prune_feed(1).unwrap();
    assert_eq!(d.named_since(mark.local_seq).unwrap(), None);
}

#[test]
fn a_key_s_use_is_noted_in_memory_and_written_once_a_minute_in_one_batch() {
    let (_tmp, path) = dir();
    let d = Directory::open(&path).unwrap();
    let (secret, k) = one_key(&d);
    let head = d.cursor();
    let (key, _) = d.authenticate(&secret, NOW).unwrap();
    for t in [NOW, NOW + 1, NOW + 59] {
        d.record_use(&key, t);
    }
    assert_eq!(key.last_used_at(), Some(NOW), "to the minute");
    assert_eq!(
        d.key(&k.id).unwrap().unwrap().last_used_at,
        None,
        "nothing written yet"
    );
    assert_eq!(d.flush_last_used().unwrap(), 1);
    assert_eq!(d.key(&k.id).unwrap().unwrap().last_used_at, Some(NOW));
    assert_eq!(d.flush_last_used().unwrap(), 0, "nothing new");
    // A change to the key keeps the use noted; the next minute's use is written.
    d.update_key(&k.id, |k| k.name = "renamed".into()).unwrap();
    let (key, _) = d.authenticate(&secret, NOW).unwrap();
    assert_eq!(key.last_used_at(), Some(NOW));
    d.record_use(&key, NOW + 60);
    assert_eq!(d.flush_last_used().unwrap(), 1);
    assert_eq!(d.key(&k.id).unwrap().unwrap().last_used_at, Some(NOW + 60));
    assert_eq!(d.cursor(), head + 1, "last use is not a change");
    // A new process starts from the stored last use.
    let other = Directory::open(&path).unwrap();
    let (key, _) = other.authenticate(&secret, NOW).unwrap();
    assert_eq!(key.last_used_at(), Some(NOW + 60));
}

#[test]
fn a_schema_1_store_is_upgraded_and_keeps_its_keys() {
    let (_tmp, path) = dir();
    let secret = one_key(&Directory::open(&path).unwrap()).0;
    // Made as schema 1 was: no revoke_at_expiry column.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("ALTER TABLE keys DROP COLUMN revoke_at_expiry; PRAGMA user_version = 1;")
        .unwrap();
    drop(conn);
    let d = Directory::open(&path).unwrap();
    assert!(d.authenticate(&secret, NOW).is_ok());
    let key_id = d.authenticate(&secret, NOW).unwrap().0.id.to_string();
    let r = d.rotate_key(&key_id, 60, NOW).unwrap();
    assert!(d.key(&r.old.id).unwrap().unwrap().revoke_at_expiry);
}

#[test]
fn an_indexed_key_stays_small() {
    // The key table's memory at a million keys (README "Key store benchmark").
    assert!(
        std::mem::size_of::<IndexedKey>() <= 80,
        "{}",
        std::mem::size_of::<IndexedKey>()
    );
}
