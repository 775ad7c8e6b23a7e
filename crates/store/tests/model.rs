//! A property test: random sequences of storage operations run against the store and
//! against a small in-memory model of the 1.5 rules (S15-04x, S15-07x, S15-09x, S15-14x),
//! and every answer is compared. Seeds are fixed, so a failure names a reproducible case.
//! Runs on SQLite, and on PostgreSQL in its run of the suite.
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

mod common;

use std::collections::BTreeMap;

use common::open;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use syncstead_proto::query::{CollectionQuery, Sort};
use syncstead_proto::{BsoInput, SyncTimestamp};
use syncstead_store::{Precondition, StoreError, WriteLimits};

#[derive(Clone, Debug, PartialEq)]
struct Rec {
    payload: String,
    sortindex: Option<i32>,
    modified: i64,
}

#[derive(Default)]
struct Model {
    /// (user, collection) → (collection modified, records).
    collections: BTreeMap<(i64, String), (i64, BTreeMap<String, Rec>)>,
    storage: BTreeMap<i64, i64>,
}

impl Model {
    fn coll_time(&self, user: i64, c: &str) -> i64 {
        self.collections.get(&(user, c.to_string())).map_or(0, |(t, _)| *t)
    }

    fn write(&mut self, user: i64, c: &str, t: i64, bsos: &[BsoInput]) {
        let entry = self.collections.entry((user, c.to_string())).or_default();
        for b in bsos {
            match entry.1.get_mut(&b.id) {
                Some(r) => {
                    if let Some(p) = &b.payload {
                        r.payload = p.clone();
                    }
                    if b.sortindex.is_some() {
                        r.sortindex = b.sortindex;
                    }
                    if b.payload.is_some() || b.sortindex.is_some() {
                        r.modified = t;
                    }
                }
                None => {
                    entry.1.insert(
                        b.id.clone(),
                        Rec {
                            payload: b.payload.clone().unwrap_or_default(),
                            sortindex: b.sortindex,
                            modified: t,
                        },
                    );
                }
            }
        }
        entry.0 = t;
        self.storage.insert(user, t);
    }

    fn listing(&self, user: i64, c: &str, sort: Sort, newer: Option<i64>) -> Vec<(String, Rec)> {
        let Some((_, recs)) = self.collections.get(&(user, c.to_string())) else {
            return Vec::new();
        };
        let mut v: Vec<(String, Rec)> = recs
            .iter()
            .filter(|(_, r)| newer.is_none_or(|n| r.modified > n))
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        match sort {
            Sort::Newest => v.sort_by(|a, b| (b.1.modified, &b.0).cmp(&(a.1.modified, &a.0))),
            Sort::Oldest => v.sort_by(|a, b| (a.1.modified, &a.0).cmp(&(b.1.modified, &b.0))),
            // Highest sortindex first, records without one last; ties by id descending.
            Sort::Index => v.sort_by(|a, b| {
                let key = |r: &(String, Rec)| (r.1.sortindex.is_some(), r.1.sortindex, r.0.clone());
                key(b).cmp(&key(a))
            }),
        }
        v
    }
}

const COLLS: [&str; 3] = ["bookmarks", "history", "custom-one"];

fn bso(rng: &mut StdRng, payload_always: bool) -> BsoInput {
    BsoInput {
        id: format!("id{}", rng.gen_range(0..8)),
        payload: (payload_always || rng.gen_bool(0.7)).then(|| format!("p{}", rng.gen_range(0..1000))),
        sortindex: rng.gen_bool(0.5).then(|| rng.gen_range(-3..4)),
        ttl: None,
    }
}

async fn run_seed(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    let mut m = Model::default();
    let mut rng = StdRng::seed_from_u64(seed);
    let none = WriteLimits::default();
    for step in 0..150 {
        let user = rng.gen_range(1..3);
        let c = COLLS[rng.gen_range(0..COLLS.len())];
        let ctx = format!("seed {seed} step {step} user {user} {c}");
        let last_storage = *m.storage.get(&user).unwrap_or(&0);
        // A precondition now and then: sometimes current (passes), sometimes stale.
        let current = m.coll_time(user, c);
        let pre = match rng.gen_range(0..6) {
            0 if current > 0 => Precondition::IfUnmodifiedSince(SyncTimestamp::from_millis(current - 10)),
            1 => Precondition::IfUnmodifiedSince(SyncTimestamp::from_millis(current)),
            _ => Precondition::None,
        };
        let fails = matches!(pre, Precondition::IfUnmodifiedSince(t) if current > t.as_millis());
        match rng.gen_range(0..7) {
            0 => {
                let b = bso(&mut rng, false);
                // PUT compares with the record's own time (S15-051).
                let rec_time = m
                    .collections
                    .get(&(user, c.to_string()))
                    .and_then(|(_, r)| r.get(&b.id))
                    .map_or(0, |r| r.modified);
                let pre = match pre {
                    Precondition::IfUnmodifiedSince(_) => {
                        Precondition::IfUnmodifiedSince(SyncTimestamp::from_millis(rec_time))
                    }
                    p => p,
                };
                let t = s
                    .put_bso(user, c, b.clone(), pre, none)
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                assert!(t.as_millis() > last_storage, "{ctx}: S15-043");
                m.write(user, c, t.as_millis(), &[b]);
            }
            1 | 2 => {
                let mut bsos: Vec<BsoInput> = (0..rng.gen_range(0..5)).map(|_| bso(&mut rng, true)).collect();
                bsos.sort_by(|a, b| a.id.cmp(&b.id));
                bsos.dedup_by(|a, b| a.id == b.id);
                match s.post_bsos(user, c, bsos.clone(), pre, none).await {
                    Ok(t) => {
                        assert!(!fails, "{ctx}: a stale precondition passed");
                        assert!(t.as_millis() > last_storage, "{ctx}: S15-043");
                        m.write(user, c, t.as_millis(), &bsos);
                    }
                    Err(StoreError::PreconditionFailed(t)) => {
                        assert!(fails, "{ctx}: refused a current precondition");
                        assert_eq!(t.as_millis(), current, "{ctx}");
                    }
                    Err(e) => panic!("{ctx}: {e}"),
                }
            }
            3 => {
                let id = format!("id{}", rng.gen_range(0..8));
                let exists = m
                    .collections
                    .get(&(user, c.to_string()))
                    .is_some_and(|(_, r)| r.contains_key(&id));
                match s.delete_bso(user, c, &id, Precondition::None).await {
                    Ok(t) => {
                        assert!(exists, "{ctx}: deleted a missing record");
                        let e = m.collections.get_mut(&(user, c.to_string())).unwrap();
                        e.1.remove(&id);
                        e.0 = t.as_millis();
                        m.storage.insert(user, t.as_millis());
                    }
                    Err(StoreError::NotFound) => assert!(!exists, "{ctx}: record not found"),
                    Err(e) => panic!("{ctx}: {e}"),
                }
            }
            4 => {
                let ids: Vec<String> = (0..rng.gen_range(1..4))
                    .map(|_| format!("id{}", rng.gen_range(0..8)))
                    .collect();
                let t = s
                    .delete_bsos(user, c, ids.clone(), Precondition::None)
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                let e = m.collections.entry((user, c.to_string())).or_default();
                for id in &ids {
                    e.1.remove(id);
                }
                e.0 = t.as_millis();
                m.storage.insert(user, t.as_millis());
            }
            5 => {
                let d = s
                    .delete_collection(user, c, Precondition::None)
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                assert_eq!(d.previous.as_millis(), current, "{ctx}");
                if current > 0 {
                    m.collections.remove(&(user, c.to_string()));
                    m.storage.insert(user, d.storage.as_millis());
                }
                assert_eq!(d.storage.as_millis(), *m.storage.get(&user).unwrap_or(&0), "{ctx}");
            }
            _ => {
                let sort = [Sort::Newest, Sort::Oldest, Sort::Index][rng.gen_range(0..3)];
                let newer = (rng.gen_bool(0.3) && current > 0).then(|| current - 10);
                let q = CollectionQuery {
                    ids: None,
                    newer: newer.map(SyncTimestamp::from_millis),
                    older: None,
                    full: true,
                    limit: None,
                    offset: None,
                    sort,
                };
                let page = s.get_collection(user, c, &q, Precondition::None).await.unwrap();
                assert_eq!(page.modified.as_millis(), current, "{ctx}: collection time");
                let got: Vec<(String, Rec)> = page
                    .bsos
                    .into_iter()
                    .map(|b| {
                        (
                            b.id,
                            Rec {
                                payload: b.payload,
                                sortindex: b.sortindex,
                                modified: b.modified.as_millis(),
                            },
                        )
                    })
                    .collect();
                assert_eq!(got, m.listing(user, c, sort, newer), "{ctx}: {sort:?} newer {newer:?}");
            }
        }
        // The whole view agrees after every step.
        let (storage, cols) = s.collection_timestamps(user, Precondition::None).await.unwrap();
        assert_eq!(
            storage.as_millis(),
            *m.storage.get(&user).unwrap_or(&0),
            "{ctx}: storage time"
        );
        let mut cols: Vec<(String, i64)> = cols.into_iter().map(|(c, t)| (c, t.as_millis())).collect();
        cols.sort();
        let expected: Vec<(String, i64)> = m
            .collections
            .iter()
            .filter(|((u, _), _)| *u == user)
            .map(|((_, c), (t, _))| (c.clone(), *t))
            .collect();
        assert_eq!(cols, expected, "{ctx}: info/collections");
    }
}

#[tokio::test]
async fn random_operation_sequences_match_the_model() {
    for seed in 1..=12 {
        run_seed(seed).await;
    }
}
