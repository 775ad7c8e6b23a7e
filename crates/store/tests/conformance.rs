//! The backend conformance suite: the storage rules every backend must keep alike. It runs
//! on SQLite, and again on PostgreSQL with `SYNCSTEAD_TEST_BACKEND=postgres` (scripts/test
//! does both when `SYNCSTEAD_TEST_POSTGRES_URL` is set).
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

mod common;

use std::collections::HashSet;

use common::open;
use syncstead_proto::query::{CollectionQuery, Offset, Sort};
use syncstead_proto::wbo::{WboInput, WboQuery};
use syncstead_proto::{Bso, BsoInput, ListingFormat, SyncTimestamp};
use syncstead_store::testing::{
    backend_is_postgres, postgres_migrations_through, sqlite_migrations_through, ScratchSchema,
};
use syncstead_store::{Backend, PgStore, SqliteOptions, SqliteStore};
use syncstead_store::{Precondition, StoreError, WriteLimits};

const NONE: Precondition = Precondition::None;
const NO_LIMITS: WriteLimits = WriteLimits {
    quota_bytes: None,
    batch_records: None,
    batch_bytes: None,
};

fn bso(id: &str, payload: &str) -> BsoInput {
    BsoInput {
        id: id.into(),
        payload: Some(payload.into()),
        sortindex: None,
        ttl: None,
    }
}

fn query(sort: Sort, limit: Option<u32>, offset: Option<String>) -> CollectionQuery {
    CollectionQuery {
        ids: None,
        newer: None,
        older: None,
        full: true,
        limit,
        offset: offset.map(|o| Offset::parse(&o).unwrap()),
        sort,
    }
}

/// S15-043/044: concurrent writes of one bucket are serialised, without deadlock, each at
/// a strictly later time than the last write to its collection; another bucket's writes
/// go on alongside; the storage time is the latest of them (S15-045).
#[tokio::test]
async fn s15_043_concurrent_writes_get_distinct_increasing_times() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let store = s.store.clone();
        tasks.push(tokio::spawn(async move {
            let user = if i % 3 == 0 { 2 } else { 1 };
            let coll = if i % 2 == 0 { "tabs" } else { "history" };
            let t = store
                .post_bsos(user, coll, vec![bso(&format!("r{i}"), "x")], NONE, NO_LIMITS)
                .await
                .expect("no write fails under concurrency");
            (user, coll, t)
        }));
    }
    let mut seen: Vec<(i64, &str, SyncTimestamp)> = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap());
    }
    for user in [1, 2] {
        for coll in ["tabs", "history"] {
            let times: Vec<SyncTimestamp> = seen
                .iter()
                .filter(|(u, c, _)| *u == user && *c == coll)
                .map(|(_, _, t)| *t)
                .collect();
            let distinct: HashSet<i64> = times.iter().map(|t| t.as_millis()).collect();
            assert_eq!(
                distinct.len(),
                times.len(),
                "user {user}, {coll}: every write has its own time"
            );
        }
        let latest = seen.iter().filter(|(u, _, _)| *u == user).map(|(_, _, t)| *t).max();
        let storage = s.storage_timestamp(user).await.unwrap();
        assert_eq!(Some(storage), latest, "storage time = the last write");
    }
    let (_, cols) = s.collection_timestamps(1, NONE).await.unwrap();
    assert_eq!(cols.len(), 2);
}

/// S15-043 orders each collection on its own, so a write to another collection of the
/// same user need not wait for the next clock tick: it may share the time of the write
/// before it. But a storage time that `info/collections` (or `info/collection_usage`)
/// reported is never given to a later write (S15-045, S15-054): a client holding it
/// would otherwise miss that write, told 304 by `X-If-Modified-Since`.
#[tokio::test]
async fn s15_043_other_collections_share_a_tick_but_never_a_reported_storage_time() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    let mut shared = 0;
    for i in 0..100 {
        let first = s
            .post_bsos(1, "tabs", vec![bso(&format!("t{i}"), "x")], NONE, NO_LIMITS)
            .await
            .unwrap();
        let second = s
            .post_bsos(1, "history", vec![bso(&format!("h{i}"), "x")], NONE, NO_LIMITS)
            .await
            .unwrap();
        assert!(second >= first);
        if second == first {
            shared += 1;
        }
        let reported = if i % 2 == 0 {
            s.collection_timestamps(1, NONE).await.unwrap().0
        } else {
            s.collection_usage(1, NONE).await.unwrap().0
        };
        assert_eq!(reported, second, "the storage time is the latest write's");
        let next = s
            .post_bsos(1, "bookmarks", vec![bso(&format!("b{i}"), "x")], NONE, NO_LIMITS)
            .await
            .unwrap();
        assert!(next > reported, "write {i}: {next:?} reuses the reported storage time");
        assert_eq!(
            s.collection_timestamps(1, Precondition::IfModifiedSince(reported))
                .await
                .map(|(t, _)| t)
                .ok(),
            Some(next),
            "X-If-Modified-Since with the reported time sees the later write"
        );
        if shared >= 3 && i >= 20 {
            break;
        }
    }
    assert!(shared >= 3, "writes to another collection waited for the next tick");
}

/// S15-080…: keyset paging visits every record exactly once, in the order of the unpaged
/// query, for each sort, even when records share a timestamp.
#[tokio::test]
async fn s15_080_paging_visits_every_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    for chunk in 0..3 {
        let records: Vec<BsoInput> = (0..9)
            .map(|i| BsoInput {
                sortindex: Some((chunk * 9 + i) % 5),
                ..bso(&format!("id{chunk}{i}"), "p")
            })
            .collect();
        s.post_bsos(7, "bookmarks", records, NONE, NO_LIMITS).await.unwrap();
    }
    for sort in [Sort::Newest, Sort::Oldest, Sort::Index] {
        let all: Vec<String> = s
            .get_collection(7, "bookmarks", &query(sort, None, None), NONE)
            .await
            .unwrap()
            .bsos
            .into_iter()
            .map(|b| b.id)
            .collect();
        assert_eq!(all.len(), 27);
        let mut paged = Vec::new();
        let mut offset = None;
        loop {
            let page = s
                .get_collection(7, "bookmarks", &query(sort, Some(4), offset), NONE)
                .await
                .unwrap();
            paged.extend(page.bsos.into_iter().map(|b| b.id));
            match page.next_offset {
                Some(o) => offset = Some(o),
                None => break,
            }
        }
        assert_eq!(paged, all, "{sort:?}");
    }
    // Ids order byte-wise on every backend (ties and paging keys depend on it).
    s.post_bsos(
        8,
        "c",
        vec![bso("b", "1"), bso("B", "2"), bso("a", "3"), bso("_", "4")],
        NONE,
        NO_LIMITS,
    )
    .await
    .unwrap();
    let ids: Vec<String> = s
        .get_collection(8, "c", &query(Sort::Oldest, None, None), NONE)
        .await
        .unwrap()
        .bsos
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(ids, ["B", "_", "a", "b"]);
}

/// S15-035, S15-081: a listing opened with a short first read announces its extent (how
/// many records, the token after them) from that read's snapshot, and the chunks read from
/// its tokens return exactly the listing `get_collection` returns in one read.
#[tokio::test]
async fn s15_081_a_streamed_listing_matches_one_read() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    for chunk in 0..3 {
        let records: Vec<BsoInput> = (0..9)
            .map(|i| BsoInput {
                sortindex: Some((chunk * 9 + i) % 4),
                ..bso(&format!("id{chunk}{i}"), &format!("payload {chunk} {i}"))
            })
            .collect();
        s.post_bsos(7, "bookmarks", records, NONE, NO_LIMITS).await.unwrap();
    }
    for sort in [Sort::Newest, Sort::Oldest, Sort::Index] {
        for limit in [None, Some(20), Some(27), Some(40)] {
            let whole = s
                .get_collection(7, "bookmarks", &query(sort, limit, None), NONE)
                .await
                .unwrap();
            let (head, extent) = s
                .open_listing(7, "bookmarks", &query(sort, limit, None), 5, NONE)
                .await
                .unwrap();
            assert_eq!(head.modified, whole.modified);
            assert_eq!(head.bsos[..], whole.bsos[..5], "{sort:?} {limit:?}");
            let extent = extent.expect("more than the first read holds: an extent");
            assert_eq!(extent.records, whole.bsos.len() as u64, "{sort:?} {limit:?}");
            assert_eq!(extent.next_offset, whole.next_offset, "{sort:?} {limit:?}");
            // The chunks come written (as JSON or newlines): together with the first
            // read they make exactly the listing of the single read.
            for newlines in [false, true] {
                let format = ListingFormat { full: true, newlines };
                let render = |bsos: &[Bso]| {
                    let mut out = Vec::new();
                    for (i, b) in bsos.iter().enumerate() {
                        format.push(&mut out, &b.as_ref(), i == 0);
                    }
                    out
                };
                let mut got = render(&head.bsos);
                let mut sent = head.bsos.len() as u64;
                let mut cursor = head.next_offset.clone();
                while let Some(at) = cursor.take().filter(|_| sent < extent.records) {
                    let left = (extent.records - sent) as u32;
                    let (bytes, n, next) = s
                        .listing_chunk(7, "bookmarks", &query(sort, Some(left.min(7)), Some(at)), format, 64)
                        .await
                        .unwrap();
                    got.extend(bytes);
                    sent += n;
                    cursor = next;
                }
                assert_eq!(sent, extent.records, "{sort:?} {limit:?}");
                assert_eq!(
                    String::from_utf8(got).unwrap(),
                    String::from_utf8(render(&whole.bsos)).unwrap(),
                    "{sort:?} {limit:?} newlines {newlines}"
                );
            }
        }
    }
    // No extent when the first read holds everything, or all the client asked for.
    let (head, extent) = s
        .open_listing(7, "bookmarks", &query(Sort::Newest, None, None), 27, NONE)
        .await
        .unwrap();
    assert_eq!((head.bsos.len(), extent), (27, None));
    let (head, extent) = s
        .open_listing(7, "bookmarks", &query(Sort::Newest, Some(3), None), 5, NONE)
        .await
        .unwrap();
    assert_eq!((head.bsos.len(), head.next_offset.is_some(), extent), (3, true, None));
    // The precondition is checked by the first read (S15-055).
    let stale = SyncTimestamp::from_millis(head.modified.as_millis() - 10);
    let out = s
        .open_listing(
            7,
            "bookmarks",
            &query(Sort::Newest, None, None),
            5,
            Precondition::IfUnmodifiedSince(stale),
        )
        .await;
    assert!(matches!(out, Err(StoreError::PreconditionFailed(_))), "{out:?}");
}

/// S15-120…125: staged records are invisible until the commit applies them all at one time.
#[tokio::test]
async fn s15_125_batches_apply_whole_at_commit() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    let (batch, _) = s
        .create_batch(3, "history", vec![bso("a", "1"), bso("b", "1")], NONE, NO_LIMITS)
        .await
        .unwrap();
    s.append_batch(
        3,
        "history",
        &batch,
        vec![bso("c", "1"), bso("a", "2")],
        NONE,
        NO_LIMITS,
    )
    .await
    .unwrap();
    let before = s
        .get_collection(3, "history", &query(Sort::Newest, None, None), NONE)
        .await
        .unwrap();
    assert!(before.bsos.is_empty(), "nothing visible before the commit");
    // Another bucket cannot use the batch.
    assert!(matches!(
        s.commit_batch(4, "history", &batch, vec![], NONE, NO_LIMITS).await,
        Err(StoreError::BatchNotFound)
    ));
    let t = s
        .commit_batch(3, "history", &batch, vec![bso("d", "1")], NONE, NO_LIMITS)
        .await
        .unwrap();
    let page = s
        .get_collection(3, "history", &query(Sort::Oldest, None, None), NONE)
        .await
        .unwrap();
    assert_eq!(page.bsos.len(), 4);
    assert!(page.bsos.iter().all(|b| b.modified == t));
    assert_eq!(page.bsos.iter().find(|b| b.id == "a").unwrap().payload, "2");
    assert!(matches!(
        s.commit_batch(3, "history", &batch, vec![], NONE, NO_LIMITS).await,
        Err(StoreError::BatchNotFound)
    ));
    assert!(matches!(
        s.append_batch(3, "history", "not-a-batch", vec![], NONE, NO_LIMITS)
            .await,
        Err(StoreError::BatchNotFound)
    ));
}

/// S15-054/055/056 and S15-170: preconditions and the quota, inside the write.
#[tokio::test]
async fn s15_055_preconditions_and_quota() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    let t1 = s.put_bso(5, "tabs", bso("x", "12345"), NONE, NO_LIMITS).await.unwrap();
    let stale = Precondition::IfUnmodifiedSince(SyncTimestamp::from_millis(t1.as_millis() - 10));
    assert!(matches!(
        s.post_bsos(5, "tabs", vec![bso("y", "1")], stale, NO_LIMITS).await,
        Err(StoreError::PreconditionFailed(t)) if t == t1
    ));
    assert!(matches!(
        s.put_bso(
            5,
            "tabs",
            bso("x", "new"),
            Precondition::IfUnmodifiedSince(SyncTimestamp::ZERO),
            NO_LIMITS
        )
        .await,
        Err(StoreError::PreconditionFailed(_))
    ));
    assert!(matches!(
        s.get_bso(5, "tabs", "x", Precondition::IfModifiedSince(t1)).await,
        Err(StoreError::NotModified(_))
    ));
    assert_eq!(s.get_bso(5, "tabs", "x", NONE).await.unwrap().payload, "12345");
    let quota = WriteLimits {
        quota_bytes: Some(5),
        ..NO_LIMITS
    };
    assert!(matches!(
        s.put_bso(5, "tabs", bso("z", "1"), NONE, quota).await,
        Err(StoreError::OverQuota)
    ));
    assert!(
        s.get_bso(5, "tabs", "z", NONE).await.is_err(),
        "a refused write leaves nothing"
    );
}

/// S15-047: a record with a TTL disappears when it expires, and the purge removes it.
#[tokio::test]
async fn s15_047_ttl_expiry_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    let short = BsoInput {
        ttl: Some(1),
        ..bso("soon", "gone")
    };
    s.post_bsos(6, "clients", vec![short, bso("kept", "here")], NONE, NO_LIMITS)
        .await
        .unwrap();
    assert_eq!(s.get_bso(6, "clients", "soon", NONE).await.unwrap().payload, "gone");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert!(matches!(
        s.get_bso(6, "clients", "soon", NONE).await,
        Err(StoreError::NotFound)
    ));
    let (_, usage) = s.collection_usage(6, NONE).await.unwrap();
    assert_eq!(usage[0].count, 1);
    let purged = s.purge_expired().await.unwrap();
    assert!(purged.bsos >= 1);
    // Rewriting an expired record starts it afresh (S15-094).
    s.put_bso(6, "clients", bso("soon", "back"), NONE, NO_LIMITS)
        .await
        .unwrap();
    assert_eq!(s.get_bso(6, "clients", "soon", NONE).await.unwrap().payload, "back");
}

/// S15-047, issue 16: the purge deletes in short steps (200 records on SQLite) and goes
/// on until nothing expired is left.
#[tokio::test]
async fn s15_047_purge_takes_as_many_steps_as_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    for chunk in 0..5 {
        let records = (0..100)
            .map(|i| BsoInput {
                ttl: Some(1),
                ..bso(&format!("r{chunk}-{i}"), "x")
            })
            .collect();
        s.post_bsos(7, "history", records, NONE, NO_LIMITS).await.unwrap();
    }
    s.post_bsos(7, "history", vec![bso("kept", "here")], NONE, NO_LIMITS)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let purged = s.purge_expired().await.unwrap();
    assert_eq!(purged.bsos, 500);
    let (_, usage) = s.collection_usage(7, NONE).await.unwrap();
    assert_eq!(usage[0].count, 1);
    assert_eq!(s.purge_expired().await.unwrap().bsos, 0);
}

/// S15-140…143: deleting a collection moves the storage time; deleting storage empties
/// the bucket.
#[tokio::test]
async fn s15_142_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    let t = s
        .post_bsos(9, "forms", vec![bso("f", "1")], NONE, NO_LIMITS)
        .await
        .unwrap();
    s.post_bsos(9, "prefs", vec![bso("p", "1")], NONE, NO_LIMITS)
        .await
        .unwrap();
    let d = s.delete_collection(9, "forms", NONE).await.unwrap();
    assert_eq!(d.previous, t);
    assert!(d.storage > t);
    assert_eq!(s.storage_timestamp(9).await.unwrap(), d.storage);
    let none = s.delete_collection(9, "never", NONE).await.unwrap();
    assert_eq!(none.previous, SyncTimestamp::ZERO);
    s.delete_storage(9, NONE).await.unwrap();
    assert_eq!(s.storage_timestamp(9).await.unwrap(), SyncTimestamp::ZERO);
    assert!(s.collection_timestamps(9, NONE).await.unwrap().1.is_empty());
}

/// Hardening finding 13: custom collection names are released once nothing uses them,
/// so a user who makes and deletes names cannot grow the registry for ever; a name still
/// used by another bucket or by an open batch stays, and a released name can be used again.
#[tokio::test]
async fn custom_collection_names_are_released_when_unused() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    let standard = s.stats().await.unwrap().collection_names;
    assert_eq!(standard, 13);
    for i in 0..300 {
        s.post_bsos(21, &format!("custom{i}"), vec![bso("a", "1")], NONE, NO_LIMITS)
            .await
            .unwrap();
    }
    // Another user shares one name; a third holds another in an open batch only.
    s.post_bsos(22, "custom7", vec![bso("b", "1")], NONE, NO_LIMITS)
        .await
        .unwrap();
    s.create_batch(23, "custom8", vec![bso("c", "1")], NONE, NO_LIMITS)
        .await
        .unwrap();
    assert_eq!(s.stats().await.unwrap().collection_names, standard + 300);

    s.delete_storage(21, NONE).await.unwrap();
    assert_eq!(s.stats().await.unwrap().collection_names, standard + 2);
    let (_, colls) = s.collection_timestamps(22, NONE).await.unwrap();
    assert!(colls.iter().any(|(name, _)| name == "custom7"), "{colls:?}");

    // Deleting the last user's collection releases the name; using it again works, and
    // the new id is not the old one (the records land under the name, not a dead id).
    s.delete_collection(22, "custom7", NONE).await.unwrap();
    assert_eq!(s.stats().await.unwrap().collection_names, standard + 1);
    s.put_bso(22, "custom7", bso("again", "2"), NONE, NO_LIMITS)
        .await
        .unwrap();
    assert_eq!(s.get_bso(22, "custom7", "again", NONE).await.unwrap().payload, "2");
    assert_eq!(s.stats().await.unwrap().collection_names, standard + 2);

    // The purge sweeps what a bulk delete elsewhere left behind; standard names stay.
    s.delete_storage(22, NONE).await.unwrap();
    s.delete_storage(23, NONE).await.unwrap();
    s.purge_expired().await.unwrap();
    assert_eq!(s.stats().await.unwrap().collection_names, standard);
    s.delete_collection(24, "tabs", NONE).await.unwrap();
    assert_eq!(s.stats().await.unwrap().collection_names, standard);
}

/// S11-072 and friends on the 1.1 store: the collection time is the newest item's, each
/// write is strictly later, metadata-only writes keep `modified`.
#[tokio::test]
async fn s11_072_weave_records() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    let w = |id: &str, payload: Option<&str>, parent: Option<&str>| WboInput {
        id: id.into(),
        parentid: parent.map(str::to_string),
        predecessorid: None,
        sortindex: Some(3),
        payload: payload.map(str::to_string),
        ttl: None,
    };
    let t1 = s
        .wbo_put(
            -1,
            "bookmarks",
            vec![w("a", Some("1"), Some("p"))],
            None,
            WriteLimits::default(),
        )
        .await
        .unwrap()
        .time;
    let t2 = s
        .wbo_put(
            -1,
            "bookmarks",
            vec![w("b", Some("1"), None)],
            Some(t1),
            WriteLimits::default(),
        )
        .await
        .unwrap()
        .time;
    assert!(t2 > t1);
    assert!(matches!(
        s.wbo_put(-1, "bookmarks", vec![w("c", Some("1"), None)], Some(t1), WriteLimits::default()).await,
        Err(StoreError::PreconditionFailed(t)) if t == t2
    ));
    let m = s
        .wbo_put(
            -1,
            "bookmarks",
            vec![w("a", None, Some("q"))],
            None,
            WriteLimits::default(),
        )
        .await
        .unwrap()
        .modified;
    assert_eq!(m[0], t1, "a metadata-only write keeps modified");
    let q = WboQuery::parse("parentid=q&full=1").unwrap();
    let got = s.wbo_get(-1, "bookmarks", &q).await.unwrap();
    assert_eq!((got.len(), got[0].payload.as_deref()), (1, Some("1")));
    let above = s
        .wbo_get(-1, "bookmarks", &WboQuery::parse("index_above=2").unwrap())
        .await
        .unwrap();
    assert_eq!(above.len(), 2);
    let cols = s.wbo_collections(-1).await.unwrap();
    assert_eq!((cols[0].count, cols[0].modified), (2, t2));
    s.wbo_delete(-1, "bookmarks", &WboQuery::parse("ids=a").unwrap(), None)
        .await
        .unwrap();
    assert!(s.wbo_get_one(-1, "bookmarks", "a").await.unwrap().is_none());
    assert!(s.wbo_get_one(-1, "bookmarks", "b").await.unwrap().is_some());
    // 1.1 buckets never show through 1.5 (and the reverse).
    assert!(s.collection_timestamps(1, NONE).await.unwrap().1.is_empty());
}

/// S11-071: the 1.1 quota is checked inside the write's transaction: a write is refused
/// once the bucket holds the quota, and reports what it held before.
#[tokio::test]
async fn s11_071_weave_quota_in_the_write() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    let limits = WriteLimits {
        quota_bytes: Some(10),
        ..NO_LIMITS
    };
    let w = |id: &str| WboInput {
        id: id.into(),
        payload: Some("x".repeat(12)),
        ..Default::default()
    };
    let first = s.wbo_put(-2, "tabs", vec![w("a")], None, limits).await.unwrap();
    assert_eq!(first.used_bytes, Some(0));
    assert!(matches!(
        s.wbo_put(-2, "tabs", vec![w("b")], None, limits).await,
        Err(StoreError::OverQuota)
    ));
    assert!(
        s.wbo_get_one(-2, "tabs", "b").await.unwrap().is_none(),
        "nothing of a refused write"
    );
    let unlimited = s
        .wbo_put(-2, "tabs", vec![w("b")], None, WriteLimits::default())
        .await
        .unwrap();
    assert_eq!(unlimited.used_bytes, None);
}

/// PostgreSQL only: nodes starting together against a fresh database migrate it once,
/// taking turns on the migration lock.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_nodes_starting_together_migrate_once() {
    let Some(scratch) = ScratchSchema::create().await else {
        eprintln!("SKIPPED (PostgreSQL): set SYNCSTEAD_TEST_POSTGRES_URL");
        return;
    };
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let url = scratch.url.clone();
            tokio::spawn(async move { PgStore::open(&url, 2).await })
        })
        .collect();
    let mut stores = Vec::new();
    for s in starts {
        stores.push(s.await.unwrap().expect("every node starts"));
    }
    let (client, conn) = tokio_postgres::connect(&scratch.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let versions: Vec<i32> = client
        .query("SELECT version FROM syncstead_schema ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6, 7, 8], "each migration once");
    drop(stores);
}

/// Migration 8 (a batch's totals kept on its row) fills them in for batches pending across
/// the upgrade: the limits count what was staged before it, sequence numbers go on after
/// the staged ones, and a record staged without a payload still merges at the commit.
#[tokio::test]
async fn migration_8_counts_batches_pending_across_the_upgrade() {
    const PENDING: &str = "INSERT INTO batches (id, user_id, collection_id, expiry) VALUES (40, 1, 4, 9000000000000);
        INSERT INTO batch_items (batch_id, seq, id, sortindex, payload, payload_size, ttl) VALUES
            (40, 1, 'a', NULL, 'pa', 2, NULL), (40, 2, 'b', 7, NULL, 0, NULL), (40, 3, 'c', NULL, 'pccc', 4, NULL);";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    // The database as release 7 left it, with a batch half sent; then the store opens it.
    let (s, _scratch, pg): (Box<dyn Backend>, _, _) = if backend_is_postgres() {
        let scratch = ScratchSchema::create().await.unwrap();
        let (client, conn) = tokio_postgres::connect(&scratch.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let recorded = "CREATE TABLE syncstead_schema (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL);
             INSERT INTO syncstead_schema SELECT v, 0 FROM generate_series(1, 7) AS v;";
        for sql in postgres_migrations_through(7).chain([recorded, PENDING]) {
            client.batch_execute(sql).await.unwrap();
        }
        let store = PgStore::open(&scratch.url, 2).await.unwrap();
        (Box::new(store), Some(scratch), Some(client))
    } else {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        for sql in sqlite_migrations_through(7).chain([PENDING]) {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 7).unwrap();
        drop(conn);
        let store = SqliteStore::open(SqliteOptions::new(path.clone())).await.unwrap();
        (Box::new(store), None, None)
    };
    let four = WriteLimits {
        batch_records: Some(4),
        ..NO_LIMITS
    };
    s.append_batch(1, "history", "40", vec![bso("d", "pd")], NONE, four)
        .await
        .unwrap();
    assert!(matches!(
        s.append_batch(1, "history", "40", vec![bso("e", "pe")], NONE, four)
            .await,
        Err(StoreError::BatchTooLarge)
    ));
    let seq_of_d = "SELECT seq FROM batch_items WHERE batch_id = 40 AND id = 'd'";
    let seq: i64 = match &pg {
        Some(client) => client.query_one(seq_of_d, &[]).await.unwrap().get(0),
        None => rusqlite::Connection::open(&path)
            .unwrap()
            .query_row(seq_of_d, [], |r| r.get(0))
            .unwrap(),
    };
    assert_eq!(seq, 4, "after the staged records");
    s.commit_batch(1, "history", "40", vec![], NONE, four).await.unwrap();
    let page = s
        .get_collection(1, "history", &query(Sort::Index, None, None), NONE)
        .await
        .unwrap();
    let got: Vec<_> = page
        .bsos
        .iter()
        .map(|b| (b.id.as_str(), b.payload.as_str(), b.sortindex))
        .collect();
    assert_eq!(
        got,
        [
            ("b", "", Some(7)),
            ("d", "pd", None),
            ("c", "pccc", None),
            ("a", "pa", None)
        ],
    );
}

/// S15-130: a batch's limits count the records sent to it, one id sent twice counting
/// twice (its row keeps the totals, so nothing staged is counted again).
#[tokio::test]
async fn s15_130_batch_limits_count_what_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    let three = WriteLimits {
        batch_records: Some(3),
        batch_bytes: Some(7),
        ..NO_LIMITS
    };
    let (batch, _) = s
        .create_batch(1, "forms", vec![bso("a", "1"), bso("b", "22")], NONE, three)
        .await
        .unwrap();
    s.append_batch(1, "forms", &batch, vec![bso("a", "333")], NONE, three)
        .await
        .unwrap();
    for refused in [bso("c", ""), bso("b", "4")] {
        assert!(matches!(
            s.append_batch(1, "forms", &batch, vec![refused], NONE, three).await,
            Err(StoreError::BatchTooLarge)
        ));
    }
    let bytes = WriteLimits {
        batch_records: Some(4),
        ..three
    };
    assert!(matches!(
        s.append_batch(1, "forms", &batch, vec![bso("c", "55")], NONE, bytes)
            .await,
        Err(StoreError::BatchTooLarge)
    ));
    s.commit_batch(1, "forms", &batch, vec![bso("c", "5")], NONE, bytes)
        .await
        .unwrap();
    let page = s
        .get_collection(1, "forms", &query(Sort::Index, None, None), NONE)
        .await
        .unwrap();
    let got: Vec<_> = page.bsos.iter().map(|b| (b.id.as_str(), b.payload.as_str())).collect();
    assert_eq!(got, [("c", "5"), ("b", "22"), ("a", "333")]);
}
