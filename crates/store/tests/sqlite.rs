//! The SQLite backend through the `Store` trait, on a real database file.
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

use syncstead_proto::query::CollectionQuery;
use syncstead_proto::BsoInput;
use syncstead_store::testing::sqlite_migrations_through;
use syncstead_store::{Precondition, SqliteOptions, SqliteStore, Store, StoreError, WriteLimits};

async fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(SqliteOptions::new(dir.path().join("t.db")))
        .await
        .unwrap()
}

fn bso(id: &str, payload: &str, ttl: Option<u32>) -> BsoInput {
    BsoInput {
        id: id.into(),
        payload: Some(payload.into()),
        sortindex: None,
        ttl,
    }
}

const NONE: Precondition = Precondition::None;

/// S15-122: a batch older than two hours is unknown. The clock is not faked: the test
/// ages the batch in the database file itself.
#[tokio::test]
async fn s15_122_expired_batches_are_unknown_and_purged() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let (batch, _) = store
        .create_batch(1, "col", vec![bso("a", "x", None)], NONE, WriteLimits::default())
        .await
        .unwrap();
    {
        let conn = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
        conn.execute("UPDATE batches SET expiry = expiry - 7200001", [])
            .unwrap();
    }
    let err = store
        .commit_batch(1, "col", &batch, vec![], NONE, WriteLimits::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::BatchNotFound));
    let report = store.purge_expired().await.unwrap();
    assert_eq!(report.batches, 1);
    assert_eq!(store.stats().await.unwrap().active_batches, 0);
}

/// S15-007: expired records are invisible at once and the purge removes them.
#[tokio::test]
async fn s15_007_purge_removes_expired_records_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    store
        .post_bsos(
            1,
            "col",
            vec![
                bso("gone", "x", Some(0)),
                bso("kept", "y", None),
                bso("later", "z", Some(3600)),
            ],
            NONE,
            WriteLimits::default(),
        )
        .await
        .unwrap();
    let page = store
        .get_collection(1, "col", &CollectionQuery::default(), NONE)
        .await
        .unwrap();
    let ids: Vec<_> = page.bsos.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids.len(), 2);
    assert!(!ids.contains(&"gone"));
    let report = store.purge_expired().await.unwrap();
    assert_eq!(report.bsos, 1);
    let conn = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM bsos", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 2);
}

/// Custom collections are numbered from 101 and keep their ids across restarts (S15-004).
#[tokio::test]
async fn s15_004_custom_collections_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir).await;
        store
            .put_bso(1, "mine", bso("a", "x", None), NONE, WriteLimits::default())
            .await
            .unwrap();
        store
            .put_bso(1, "bookmarks", bso("b", "y", None), NONE, WriteLimits::default())
            .await
            .unwrap();
    }
    let store = open(&dir).await;
    let (_, colls) = store.collection_timestamps(1, NONE).await.unwrap();
    assert_eq!(colls.len(), 2);
    let conn = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
    let id: i64 = conn
        .query_row("SELECT id FROM collections WHERE name = 'mine'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(id, 101);
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, 8, "every migration applied");
}

/// Migration 5 (collection names released when unused) rebuilds three tables of a
/// database written by an earlier release: every record, collection id and batch stays,
/// and neither a collection id nor a batch id is handed out again.
#[tokio::test]
async fn migration_5_keeps_an_earlier_database_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        for sql in sqlite_migrations_through(4) {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute_batch(
            "INSERT INTO collections (id, name) VALUES (101, 'mine'), (102, 'theirs');
             INSERT INTO user_storage VALUES (1, 1000);
             INSERT INTO user_collections VALUES (1, 101, 1000), (1, 4, 900);
             INSERT INTO bsos VALUES (1, 101, 'a', NULL, 'pa', 2, 1000, 9223372036854775807, NULL, NULL);
             INSERT INTO bsos VALUES (1, 4, 'h', NULL, 'ph', 2, 900, 9223372036854775807, NULL, NULL);
             INSERT INTO batches (id, user_id, collection_id, expiry) VALUES (57, 1, 102, 9000000000000);
             DELETE FROM batches;
             INSERT INTO batches (id, user_id, collection_id, expiry) VALUES (40, 1, 102, 9000000000000);",
        )
        .unwrap();
        conn.pragma_update(None, "user_version", 4).unwrap();
    }
    let store = SqliteStore::open(SqliteOptions::new(path.clone())).await.unwrap();
    let (_, colls) = store.collection_timestamps(1, NONE).await.unwrap();
    assert_eq!(colls.len(), 2, "{colls:?}");
    assert_eq!(store.get_bso(1, "mine", "a", NONE).await.unwrap().payload, "pa");
    assert_eq!(store.get_bso(1, "history", "h", NONE).await.unwrap().payload, "ph");
    store
        .append_batch(
            1,
            "theirs",
            "40",
            vec![bso("b", "pb", None)],
            NONE,
            WriteLimits::default(),
        )
        .await
        .unwrap();
    let (batch, _) = store
        .create_batch(2, "new", vec![bso("c", "pc", None)], NONE, WriteLimits::default())
        .await
        .unwrap();
    assert!(batch.parse::<i64>().unwrap() > 57, "batch id {batch} reused");
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let new_id: i64 = conn
        .query_row("SELECT id FROM collections WHERE name = 'new'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(new_id, 103);
    let fk: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM pragma_foreign_key_list('user_collections')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(fk, 1);
}

/// A database from a newer release is refused, not damaged.
#[tokio::test]
async fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(&dir).await);
    rusqlite::Connection::open(dir.path().join("t.db"))
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = SqliteStore::open(SqliteOptions::new(dir.path().join("t.db")))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("newer"), "{err}");
}

/// The queries behind `newer`/`sort` paging use indexes, not a scan of the user's records,
/// so collections of 100,000+ records stay fast.
#[test]
fn collection_queries_use_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { drop(open(&dir).await) });
    let conn = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
    for (sql, index) in [
        ("SELECT id FROM bsos WHERE user_id = 1 AND collection_id = 2 AND expiry > 0 AND modified > 5 ORDER BY modified DESC, id DESC LIMIT 10", "bsos_by_modified"),
        ("SELECT id FROM bsos WHERE user_id = 1 AND collection_id = 2 AND expiry > 0 ORDER BY sortindex DESC NULLS LAST, id DESC LIMIT 10", "bsos_by_sortindex"),
        ("SELECT id FROM bsos WHERE user_id = 1 AND collection_id = 2 AND id = 'x'", "bsos_pk"),
    ] {
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let plan = plan.join(" | ");
        assert!(plan.contains(index), "{sql}: {plan}");
    }
}

/// Writes of one bucket get strictly increasing times even when issued at once (S15-043).
#[tokio::test]
async fn s15_043_concurrent_writes_get_distinct_times() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(open(&dir).await);
    let mut tasks = Vec::new();
    for i in 0..10 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .put_bso(1, "col", bso(&i.to_string(), "x", None), NONE, WriteLimits::default())
                .await
        }));
    }
    let mut times = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(t) => times.push(t),
            Err(StoreError::Conflict) => {}
            Err(e) => panic!("{e}"),
        }
    }
    let n = times.len();
    times.sort();
    times.dedup();
    assert_eq!(times.len(), n);
    assert!(n >= 2);
}

/// Resource bounds: after a user deletes their data, the purge gives the space back to
/// the file system (incremental vacuum), so the database file shrinks again.
#[tokio::test]
async fn deleted_data_is_given_back_to_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let db = dir.path().join("t.db");
    // The database file itself; its write-ahead log is bounded separately
    // (journal_size_limit) and reused.
    let size = || std::fs::metadata(&db).map_or(0, |m| m.len());
    store
        .post_bsos(2, "tabs", vec![bso("small", "x", None)], NONE, WriteLimits::default())
        .await
        .unwrap();
    let payload = "y".repeat(4000);
    for chunk in 0..30 {
        let records = (0..100)
            .map(|i| bso(&format!("c{chunk}r{i}"), &payload, None))
            .collect();
        store
            .post_bsos(1, "history", records, NONE, WriteLimits::default())
            .await
            .unwrap();
    }
    // Let the checkpoint thread move the log into the file.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let full = size();
    assert!(full > 10_000_000, "{full}");
    store.delete_storage(1, NONE).await.unwrap();
    store.purge_expired().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let after = size();
    assert!(after < full / 3, "the file did not shrink: {full} → {after} bytes");
}
