//! Opening a data directory: the lock, damaged files, moving them aside, the format marker,
//! and `inspect`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use common::{put_queued, put_session, put_sub};
use makelaar_store::{
    inspect, move_aside, RedbOptions, RedbStore, Store, StoreError, FORMAT_VERSION, STORE_FILE,
};

fn open(dir: &Path) -> Result<RedbStore, StoreError> {
    RedbStore::open(dir, &RedbOptions::default())
}

/// A store with a few sessions and queued messages, closed cleanly.
fn filled(dir: &Path) {
    let mut store = open(dir).unwrap();
    for c in 0..50 {
        let c = format!("client-{c}");
        let mut ops = vec![put_session(&c), put_sub(&c, "a/#")];
        ops.extend((0..20).map(|seq| put_queued(&c, seq, &[7u8; 200])));
        store.apply(&ops, true).unwrap();
    }
}

fn assert_corrupt(r: Result<impl Sized, StoreError>, dir: &Path) {
    let Err(e) = r else {
        panic!("a damaged store opened")
    };
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains(&dir.join(STORE_FILE).display().to_string()),
        "{text}"
    );
    assert!(text.contains("--on-corrupt-store move-aside"), "{text}");
}

/// Opens, reads everything, and expects `Corrupt` at one of the steps.
fn open_and_read(dir: &Path, options: &RedbOptions) -> Result<(), StoreError> {
    let store = RedbStore::open(dir, options)?;
    store.load_index()?;
    for c in 0..50 {
        store.load_queue(&format!("client-{c}"))?;
    }
    Ok(())
}

#[test]
fn a_second_open_of_the_directory_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path()).unwrap();
    let Err(e) = open(dir.path()) else {
        panic!("second open succeeded")
    };
    assert!(matches!(e, StoreError::Locked { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains(&dir.path().display().to_string()), "{text}");
    assert!(
        text.contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
    // Moving the file aside under a running broker is refused too.
    assert!(matches!(
        move_aside(dir.path()),
        Err(StoreError::Locked { .. })
    ));
    drop(first);
    open(dir.path()).unwrap();
}

#[test]
fn garbage_is_corrupt_and_move_aside_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STORE_FILE);
    let garbage: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, garbage).unwrap();
    assert_corrupt(open(dir.path()), dir.path());

    let aside = move_aside(dir.path()).unwrap();
    assert!(aside
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("makelaar.redb.corrupt-"));
    assert!(aside.exists() && !path.exists());
    let store = open(dir.path()).unwrap();
    assert!(store.load_index().unwrap().sessions.is_empty());
}

#[test]
fn a_truncated_file_is_corrupt() {
    for keep in [100u64, 4096, 20_000] {
        let dir = tempfile::tempdir().unwrap();
        filled(dir.path());
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join(STORE_FILE))
            .unwrap();
        f.set_len(keep).unwrap();
        drop(f);
        assert_corrupt(
            open_and_read(dir.path(), &RedbOptions::default()),
            dir.path(),
        );
        move_aside(dir.path()).unwrap();
        open(dir.path()).unwrap();
    }
}

#[test]
fn overwritten_pages_are_corrupt_not_a_panic() {
    for verify_on_open in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        filled(dir.path());
        let path = dir.path().join(STORE_FILE);
        let len = std::fs::metadata(&path).unwrap().len();
        let mut f = OpenOptions::new().write(true).open(&path).unwrap();
        // Everything after the header: every data page is damaged.
        f.seek(SeekFrom::Start(4096)).unwrap();
        f.write_all(&vec![0xA5; (len - 4096) as usize]).unwrap();
        drop(f);
        let options = RedbOptions {
            verify_on_open,
            ..RedbOptions::default()
        };
        assert_corrupt(open_and_read(dir.path(), &options), dir.path());
    }
}

#[test]
fn another_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()).unwrap());
    {
        let db = redb::Database::open(dir.path().join(STORE_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
        txn.open_table(meta)
            .unwrap()
            .insert("format", FORMAT_VERSION + 1)
            .unwrap();
        txn.commit().unwrap();
    }
    let Err(e) = open(dir.path()) else {
        panic!("opened")
    };
    assert!(
        matches!(e, StoreError::Format { found, .. } if found == FORMAT_VERSION + 1),
        "{e:?}"
    );
    assert!(e.to_string().contains("format version 2"), "{e}");
}

#[test]
fn a_foreign_redb_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = redb::Database::create(dir.path().join(STORE_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        let t: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("something");
        txn.open_table(t).unwrap().insert(1, 2).unwrap();
        txn.commit().unwrap();
    }
    assert_corrupt(open(dir.path()), dir.path());
}

#[test]
fn inspect_summarises_without_creating() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(inspect(dir.path()), Err(StoreError::Io { .. })));
    assert!(!dir.path().join(STORE_FILE).exists());
    filled(dir.path());
    let summary = inspect(dir.path()).unwrap();
    assert_eq!(summary.sessions.len(), 50);
    let s = &summary.sessions[0];
    assert_eq!(
        (s.client_id.as_str(), s.queued, s.queued_bytes),
        ("client-0", 20, 20 * 201)
    );
    assert_eq!(s.subscriptions, vec!["a/#".to_owned()]);
    assert!(summary.file_bytes > 0);
    let text = summary.to_string();
    assert!(
        text.contains("sessions  50") && text.contains("client-49"),
        "{text}"
    );
    let json = serde_json::to_value(&summary).unwrap();
    assert_eq!(json["sessions"][0]["queued"], 20);
    assert_eq!(json["sessions"][0]["expiry_interval"], 3600);
}
