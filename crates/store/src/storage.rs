//! Storage 1.5 (storage-1.5.md), written once for every backend: timestamps, PUT and POST
//! semantics, batches, TTLs, quota and paging.

use std::sync::Arc;

use async_trait::async_trait;
use syncstead_proto::query::{CollectionQuery, Offset, Sort, SortKey};
use syncstead_proto::{Bso, BsoInput, BsoRef, ListingFormat, SyncTimestamp};

use crate::db::{Db, Engine, Read, HEAVY};
use crate::sql::{query_one, Arg, Dialect, Locked, Row, Sql, Tx};
use crate::{
    CollectionUsage, DeletedCollection, Extent, Page, Precondition, PurgeReport, Store, StoreError, StoreResult,
    StoreStats, UserId, WriteLimits, BATCH_LIFETIME_MS,
};

fn first_time(row: Option<Row>) -> StoreResult<Option<SyncTimestamp>> {
    row.map(|r| r.time(0)).transpose()
}

pub(crate) async fn collection_id<T: Tx>(tx: &T, name: &str) -> StoreResult<Option<i64>> {
    tx.query_opt("SELECT id FROM collections WHERE name = $1", &[name.into()])
        .await?
        .map(|r| r.int(0))
        .transpose()
}

/// Registers a custom collection name (numbered from 101, S15-060) unless it exists.
pub(crate) async fn register_collection<T: Tx>(tx: &T, name: &str) -> StoreResult<i64> {
    if let Some(id) = collection_id(tx, name).await? {
        return Ok(id);
    }
    // SQLite's single writer can number by MAX; PostgreSQL nodes writing at once use a sequence.
    match tx.dialect() {
        Dialect::Sqlite => {
            tx.execute(
                // AUTOINCREMENT numbers past every id ever given (from 101, migration 5).
                "INSERT INTO collections (name) VALUES ($1)",
                &[name.into()],
            )
            .await?
        }
        Dialect::Postgres => {
            tx.execute(
                "INSERT INTO collections (id, name) VALUES (nextval('collections_custom_id'), $1)
                 ON CONFLICT (name) DO NOTHING",
                &[name.into()],
            )
            .await?
        }
    };
    collection_id(tx, name)
        .await?
        .ok_or_else(|| StoreError::Internal("a registered collection vanished".into()))
}

/// Deletes the custom collection names (those of `ids`, or all) that no bucket and no
/// batch uses. The foreign keys of migration 5 refuse it if a use appears meanwhile.
pub(crate) async fn release_collections<T: Tx>(tx: &T, ids: Option<&[i64]>) -> StoreResult<u64> {
    const UNUSED: &str = "DELETE FROM collections WHERE id >= $1
         AND NOT EXISTS (SELECT 1 FROM user_collections uc WHERE uc.collection_id = collections.id)
         AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.collection_id = collections.id)";
    let first = syncstead_proto::names::FIRST_CUSTOM_COLLECTION_ID;
    match ids {
        Some(ids) => {
            let sql = format!("{UNUSED} AND {}", tx.dialect().in_list("id", "$2"));
            let list = Arg::Ints(ids.iter().copied().map(Some).collect());
            tx.execute(&sql, &[first.into(), list]).await
        }
        None => tx.execute(UNUSED, &[first.into()]).await,
    }
}

/// The custom collections a bucket uses (its collections and its open batches'): the
/// names deleting the bucket may leave unused.
async fn custom_collections<T: Tx>(tx: &T, user: UserId) -> StoreResult<Vec<i64>> {
    tx.query(
        "SELECT collection_id FROM user_collections WHERE user_id = $1 AND collection_id >= $2
         UNION SELECT collection_id FROM batches WHERE user_id = $1 AND collection_id >= $2",
        &[user.into(), syncstead_proto::names::FIRST_CUSTOM_COLLECTION_ID.into()],
    )
    .await?
    .iter()
    .map(|r| r.int(0))
    .collect()
}

/// The storage-level last-modified of a bucket (S15-045); 0 without data.
pub(crate) async fn storage_time<T: Tx>(tx: &T, user: UserId) -> StoreResult<SyncTimestamp> {
    Ok(first_time(
        tx.query_opt("SELECT modified FROM user_storage WHERE user_id = $1", &[user.into()])
            .await?,
    )?
    .unwrap_or_default())
}

/// The last-modified of collection `coll` (0 if never written), or with `None` of the
/// whole bucket: what a write to it must be later than (S15-043).
pub(crate) async fn last_modified<T: Tx>(tx: &T, user: UserId, coll: Option<i64>) -> StoreResult<SyncTimestamp> {
    match coll {
        Some(c) => Ok(collection_time(tx, user, c).await?.unwrap_or_default()),
        None => storage_time(tx, user).await,
    }
}

/// A collection's last-modified, by user ($1) and collection ($2).
pub(crate) const COLLECTION_TIME: &str =
    "SELECT modified FROM user_collections WHERE user_id = $1 AND collection_id = $2";

async fn collection_time<T: Tx>(tx: &T, user: UserId, coll: i64) -> StoreResult<Option<SyncTimestamp>> {
    first_time(tx.query_opt(COLLECTION_TIME, &[user.into(), coll.into()]).await?)
}

/// A write moves the collection's and the storage's last-modified to its time (S15-044).
async fn touch<T: Tx>(tx: &T, user: UserId, coll: i64, now: SyncTimestamp) -> StoreResult<()> {
    let args = [user.into(), coll.into(), now.into()];
    pipelined(
        tx.execute(
            "INSERT INTO user_collections (user_id, collection_id, modified) VALUES ($1, $2, $3)
             ON CONFLICT (user_id, collection_id) DO UPDATE SET modified = excluded.modified",
            &args,
        ),
        touch_storage(tx, user, now),
    )
    .await?;
    Ok(())
}

/// Runs two statements together (PostgreSQL pipelines them) and reports the first one's
/// error before the second's: once a statement fails, PostgreSQL refuses every later one
/// with "current transaction is aborted", and which of the two errors a `try_join!`
/// sees first depends on polling order — a released collection id then showed as a 500
/// instead of the retried `CollectionGone`.
async fn pipelined<A, B>(
    first: impl std::future::Future<Output = StoreResult<A>>,
    second: impl std::future::Future<Output = StoreResult<B>>,
) -> StoreResult<(A, B)> {
    let (a, b) = tokio::join!(first, second);
    Ok((a?, b?))
}

async fn touch_storage<T: Tx>(tx: &T, user: UserId, now: SyncTimestamp) -> StoreResult<u64> {
    tx.execute(
        "INSERT INTO user_storage (user_id, modified) VALUES ($1, $2)
         ON CONFLICT (user_id) DO UPDATE SET modified = CASE
           WHEN excluded.modified > user_storage.modified THEN excluded.modified ELSE user_storage.modified END",
        &[user.into(), now.into()],
    )
    .await
}

/// Deletes everything a bucket holds (1.5 and 1.1 alike), holding its write lock.
pub(crate) async fn delete_bucket<T: Tx>(tx: &T, user: UserId) -> StoreResult<()> {
    tx.lock_bucket(user, None).await?;
    wipe_bucket(tx, user).await
}

/// [`delete_bucket`] for a caller that holds the bucket's write lock.
async fn wipe_bucket<T: Tx>(tx: &T, user: UserId) -> StoreResult<()> {
    for sql in [
        "DELETE FROM bsos WHERE user_id = $1",
        "DELETE FROM user_collections WHERE user_id = $1",
        "DELETE FROM batch_items WHERE batch_id IN (SELECT id FROM batches WHERE user_id = $1)",
        "DELETE FROM batches WHERE user_id = $1",
        "DELETE FROM user_storage WHERE user_id = $1",
    ] {
        tx.execute(sql, &[user.into()]).await?;
    }
    Ok(())
}

fn total_payload(bsos: &[BsoInput]) -> u64 {
    bsos.iter().map(|b| b.payload_len() as u64).sum()
}

/// S15-170: checked before the write, so one write may overshoot. `staged` counts the
/// payload bytes a batch already holds plus those arriving.
async fn check_quota<T: Tx>(
    tx: &T,
    user: UserId,
    now: SyncTimestamp,
    limits: WriteLimits,
    staged: u64,
) -> StoreResult<()> {
    let Some(quota) = limits.quota_bytes else {
        return Ok(());
    };
    if used_bytes(tx, user, now).await? + staged >= quota {
        return Err(StoreError::OverQuota);
    }
    Ok(())
}

/// The payload bytes of a bucket's live records: what the quota counts (S15-170, S11-071).
pub(crate) async fn used_bytes<T: Tx>(tx: &T, user: UserId, now: SyncTimestamp) -> StoreResult<u64> {
    query_one(
        tx,
        "SELECT CAST(COALESCE(SUM(payload_size), 0) AS BIGINT) FROM bsos WHERE user_id = $1 AND expiry > $2",
        &[user.into(), now.into()],
    )
    .await?
    .count(0)
}

/// The per-record upsert with PUT semantics (S15-093, S15-094, S15-047): fields left out
/// keep their values, an expired record is replaced whole, only a change of payload or
/// sortindex (or `$9`, a batch commit) moves `modified`; ttl sets a new expiry.
const UPSERT_ONE: &str = "INSERT INTO bsos AS b (user_id, collection_id, id, sortindex, payload, payload_size, modified, expiry)
     VALUES ($1, $2, $3, $4, COALESCE($5, ''), $6, $7, $8)
     ON CONFLICT (user_id, collection_id, id) DO UPDATE SET
       sortindex = CASE WHEN b.expiry <= $7 THEN excluded.sortindex ELSE COALESCE($4, b.sortindex) END,
       payload = CASE WHEN CAST($5 AS TEXT) IS NOT NULL OR b.expiry <= $7 THEN excluded.payload ELSE b.payload END,
       payload_size = CASE WHEN CAST($5 AS TEXT) IS NOT NULL OR b.expiry <= $7 THEN excluded.payload_size ELSE b.payload_size END,
       modified = CASE WHEN $9 OR CAST($5 AS TEXT) IS NOT NULL OR CAST($4 AS INTEGER) IS NOT NULL OR b.expiry <= $7
                  THEN $7 ELSE b.modified END,
       expiry = CASE WHEN CAST($10 AS BIGINT) IS NOT NULL THEN excluded.expiry WHEN b.expiry <= $7 THEN $11 ELSE b.expiry END";

/// The same rules for many records that all carry a payload, in one PostgreSQL statement:
/// payload and `modified` always change; an absent ttl arrives as expiry "never", which a
/// real ttl can never produce.
const UPSERT_MANY_PG: &str = "INSERT INTO bsos AS b (user_id, collection_id, id, sortindex, payload, payload_size, modified, expiry)
     SELECT $1::BIGINT, $2::INTEGER, u.id, u.sortindex, u.payload, u.size, $3::BIGINT, u.expiry
     FROM UNNEST($4::TEXT[], $5::INTEGER[], $6::TEXT[], $7::BIGINT[], $8::BIGINT[]) AS u(id, sortindex, payload, size, expiry)
     ON CONFLICT (user_id, collection_id, id) DO UPDATE SET
       sortindex = CASE WHEN b.expiry <= $3 THEN excluded.sortindex ELSE COALESCE(excluded.sortindex, b.sortindex) END,
       payload = excluded.payload,
       payload_size = excluded.payload_size,
       modified = $3,
       expiry = CASE WHEN excluded.expiry < $9 THEN excluded.expiry WHEN b.expiry <= $3 THEN $9 ELSE b.expiry END";

fn unique_ids(bsos: &[BsoInput]) -> bool {
    let mut seen = std::collections::HashSet::with_capacity(bsos.len());
    bsos.iter().all(|b| seen.insert(b.id.as_str()))
}

fn expiry(bso: &BsoInput, now: SyncTimestamp) -> i64 {
    bso.ttl
        .map_or(SyncTimestamp::NEVER, |ttl| now.plus_seconds(ttl.into()))
        .as_millis()
}

/// Upserts records at `now`. With `touch_all` (batch commit) every record gets
/// `modified = now`. On PostgreSQL, records that all carry payloads and distinct ids (what
/// clients send) go in one statement, saving a round trip per record.
async fn upsert<T: Tx>(
    tx: &T,
    user: UserId,
    coll: i64,
    bsos: &[BsoInput],
    now: SyncTimestamp,
    touch_all: bool,
) -> StoreResult<()> {
    let never = SyncTimestamp::NEVER.as_millis();
    if tx.dialect() == Dialect::Postgres
        && bsos.len() > 1
        && bsos.iter().all(|b| b.payload.is_some())
        && unique_ids(bsos)
    {
        let args = [
            user.into(),
            coll.into(),
            now.into(),
            Arg::Texts(bsos.iter().map(|b| Some(b.id.as_str())).collect()),
            Arg::Ints(bsos.iter().map(|b| b.sortindex.map(i64::from)).collect()),
            Arg::Texts(bsos.iter().map(|b| b.payload.as_deref()).collect()),
            Arg::Ints(bsos.iter().map(|b| Some(b.payload_len() as i64)).collect()),
            Arg::Ints(bsos.iter().map(|b| Some(expiry(b, now))).collect()),
            never.into(),
        ];
        tx.execute(UPSERT_MANY_PG, &args).await?;
        return Ok(());
    }
    for bso in bsos {
        let args = [
            user.into(),
            coll.into(),
            (&bso.id).into(),
            bso.sortindex.into(),
            bso.payload.as_ref().into(),
            (bso.payload_len() as i64).into(),
            now.into(),
            expiry(bso, now).into(),
            touch_all.into(),
            bso.ttl.into(),
            never.into(),
        ];
        tx.execute(UPSERT_ONE, &args).await?;
    }
    Ok(())
}

/// A PUT's or a non-batch POST's records, stored at `now` under the quota (S15-093, S15-107).
async fn write_records<T: Tx>(
    tx: &T,
    user: UserId,
    coll: i64,
    bsos: &[BsoInput],
    now: SyncTimestamp,
    limits: WriteLimits,
) -> StoreResult<SyncTimestamp> {
    check_quota(tx, user, now, limits, 0).await?;
    upsert(tx, user, coll, bsos, now, false).await?;
    touch(tx, user, coll, now).await?;
    Ok(now)
}

/// Adds records to a batch; a later record of the same id overrides the fields it sets.
const STAGE_ONE: &str = "INSERT INTO batch_items AS i (batch_id, seq, id, sortindex, payload, payload_size, ttl)
     VALUES ($1, $2, $3, $4, $5, $6, $7)
     ON CONFLICT (batch_id, id) DO UPDATE SET
       sortindex = COALESCE(excluded.sortindex, i.sortindex),
       payload = COALESCE(excluded.payload, i.payload),
       payload_size = CASE WHEN excluded.payload IS NULL THEN i.payload_size ELSE excluded.payload_size END,
       ttl = COALESCE(excluded.ttl, i.ttl)";

const STAGE_MANY_PG: &str = "INSERT INTO batch_items AS i (batch_id, seq, id, sortindex, payload, payload_size, ttl)
     SELECT $1::BIGINT, $2::BIGINT + u.ord, u.id, u.sortindex, u.payload, u.size, u.ttl
     FROM UNNEST($3::TEXT[], $4::INTEGER[], $5::TEXT[], $6::BIGINT[], $7::BIGINT[])
          WITH ORDINALITY AS u(id, sortindex, payload, size, ttl, ord)
     ON CONFLICT (batch_id, id) DO UPDATE SET
       sortindex = COALESCE(excluded.sortindex, i.sortindex),
       payload = COALESCE(excluded.payload, i.payload),
       payload_size = CASE WHEN excluded.payload IS NULL THEN i.payload_size ELSE excluded.payload_size END,
       ttl = COALESCE(excluded.ttl, i.ttl)";

/// Stages records; `batch`'s totals already count them, so they take its last
/// `bsos.len()` sequence numbers.
async fn stage<T: Tx>(tx: &T, batch: &Staged, bsos: &[BsoInput]) -> StoreResult<()> {
    if bsos.is_empty() {
        return Ok(());
    }
    let (batch, seq) = (batch.id, batch.seq - bsos.len() as i64);
    // One PostgreSQL statement for distinct ids; repeated ids (rare) merge in order, one by one.
    if tx.dialect() == Dialect::Postgres && unique_ids(bsos) {
        let args = [
            batch.into(),
            seq.into(),
            Arg::Texts(bsos.iter().map(|b| Some(b.id.as_str())).collect()),
            Arg::Ints(bsos.iter().map(|b| b.sortindex.map(i64::from)).collect()),
            Arg::Texts(bsos.iter().map(|b| b.payload.as_deref()).collect()),
            Arg::Ints(bsos.iter().map(|b| Some(b.payload_len() as i64)).collect()),
            Arg::Ints(bsos.iter().map(|b| b.ttl.map(i64::from)).collect()),
        ];
        tx.execute(STAGE_MANY_PG, &args).await?;
        return Ok(());
    }
    for (n, bso) in bsos.iter().enumerate() {
        let args = [
            batch.into(),
            (seq + 1 + n as i64).into(),
            (&bso.id).into(),
            bso.sortindex.into(),
            bso.payload.as_ref().into(),
            (bso.payload_len() as i64).into(),
            bso.ttl.into(),
        ];
        tx.execute(STAGE_ONE, &args).await?;
    }
    Ok(())
}

/// A pending batch and the totals its row keeps of what was sent to it, so that neither an
/// append nor a commit counts the staged records (a cost that grew with the batch).
#[derive(Default)]
struct Staged {
    id: i64,
    /// Records sent, an id sent twice counting twice.
    records: u64,
    /// Payload bytes sent.
    bytes: u64,
    /// The last sequence number handed out.
    seq: i64,
    /// Records sent without a payload.
    partial: u64,
}

impl Staged {
    /// The totals once `bsos` are staged too.
    fn grow(&self, bsos: &[BsoInput]) -> Staged {
        Staged {
            id: self.id,
            records: self.records + bsos.len() as u64,
            bytes: self.bytes + total_payload(bsos),
            seq: self.seq + bsos.len() as i64,
            partial: self.partial + bsos.iter().filter(|b| b.payload.is_none()).count() as u64,
        }
    }
}

/// What a batch does after the records a request adds to it.
#[derive(Clone, Copy, PartialEq)]
enum Then {
    /// It waits for more.
    Append,
    /// It is spent: its id is refused from then on (its expiry is past), and its staged
    /// records go afterwards, in the background ([`sweep_batch`]). Deleting them in the
    /// commit more than doubled a large commit's time (the freed pages go through the log
    /// too), and on SQLite every other write waited for that; the purge removes whatever a
    /// stop left.
    Commit,
}

/// Finds a live batch of this bucket and collection (S15-121, S15-122) and adds `bsos` to
/// its totals, in one statement; the totals returned include them. A write that fails
/// afterwards (over a limit, say) is rolled back whole, totals included.
async fn grow_batch<T: Tx>(
    tx: &T,
    (user, coll): (UserId, i64),
    batch: &str,
    bsos: &[BsoInput],
    then: Then,
    now: SyncTimestamp,
) -> StoreResult<Staged> {
    let id: i64 = batch.parse().map_err(|_| StoreError::BatchNotFound)?;
    let add = Staged::default().grow(bsos);
    let row = tx
        .query_opt(
            "UPDATE batches SET staged_records = staged_records + $5, staged_bytes = staged_bytes + $6,
                    staged_seq = staged_seq + $7, staged_partial = staged_partial + $8,
                    expiry = CASE WHEN CAST($9 AS BIGINT) = 1 THEN 0 ELSE expiry END
             WHERE id = $1 AND user_id = $2 AND collection_id = $3 AND expiry > $4
             RETURNING staged_records, staged_bytes, staged_seq, staged_partial",
            &[
                id.into(),
                user.into(),
                coll.into(),
                now.into(),
                (add.records as i64).into(),
                (add.bytes as i64).into(),
                add.seq.into(),
                (add.partial as i64).into(),
                i64::from(then == Then::Commit).into(),
            ],
        )
        .await?
        .ok_or(StoreError::BatchNotFound)?;
    Ok(Staged {
        id,
        records: row.count(0)?,
        bytes: row.count(1)?,
        seq: row.int(2)?,
        partial: row.count(3)?,
    })
}

/// S15-130: what was actually sent counts, whether or not the client announced its totals
/// in X-Weave-Total-* headers. (Records are counted as sent; one id sent twice counts
/// twice, which only errs on the safe side.) `after` is the batch with the incoming
/// records.
fn check_batch_size(limits: WriteLimits, after: &Staged) -> StoreResult<()> {
    let (records, bytes) = (after.records, after.bytes);
    if limits.batch_records.is_some_and(|max| records > max) || limits.batch_bytes.is_some_and(|max| bytes > max) {
        return Err(StoreError::BatchTooLarge);
    }
    Ok(())
}

async fn delete_batches<T: Tx>(tx: &T, ids: Vec<i64>) -> StoreResult<()> {
    let d = tx.dialect();
    let list = [Arg::Ints(ids.into_iter().map(Some).collect())];
    tx.execute(
        &format!("DELETE FROM batch_items WHERE {}", d.in_list("batch_id", "$1")),
        &list,
    )
    .await?;
    tx.execute(&format!("DELETE FROM batches WHERE {}", d.in_list("id", "$1")), &list)
        .await?;
    Ok(())
}

fn bso_from_row(mut r: Row) -> StoreResult<Bso> {
    Ok(Bso {
        id: r.text(0)?,
        modified: r.time(1)?,
        sortindex: r.opt_i32(2)?,
        payload: r.text(3)?,
    })
}

/// The ORDER BY of a 1.5 listing (S15-072) and of a 1.1 one (S11-054): the same three
/// orders, with ids breaking ties so paging keys are total.
pub(crate) fn order_by(sort: Sort) -> &'static str {
    match sort {
        Sort::Newest => " ORDER BY modified DESC, id DESC",
        Sort::Oldest => " ORDER BY modified ASC, id ASC",
        Sort::Index => " ORDER BY sortindex DESC NULLS LAST, id DESC",
    }
}

/// Rows past the (modified, id) key `m`, `i` (placeholders) in a newest- or oldest-first
/// listing. The first term bounds the index range, so a page deep in a listing starts
/// where the last one stopped instead of walking past everything before it.
pub(crate) fn after_modified_key(oldest_first: bool, m: &str, i: &str) -> String {
    let op = if oldest_first { ">" } else { "<" };
    format!(" AND modified {op}= {m} AND (modified {op} {m} OR id {op} {i})")
}

/// `LIMIT`/`OFFSET` for a listing; SQLite needs a LIMIT (−1: none) before an OFFSET.
pub(crate) fn limit_offset(sql: &mut Sql<'_>, dialect: Dialect, limit: Option<i64>, skip: u64) {
    match (limit, dialect) {
        (Some(limit), _) => {
            let p = sql.arg(limit);
            sql.push(&format!(" LIMIT {p}"));
        }
        (None, Dialect::Sqlite) if skip > 0 => sql.push(" LIMIT -1"),
        (None, _) => {}
    }
    if skip > 0 {
        let p = sql.arg(skip.min(i64::MAX as u64) as i64);
        sql.push(&format!(" OFFSET {p}"));
    }
}

/// Builds the query of `GET /storage/{c}` (§7.2–7.4). The keyset after an offset token
/// continues exactly after the last record sent (S15-081).
fn page_query<'q>(dialect: Dialect, user: UserId, coll: i64, q: &'q CollectionQuery, now: SyncTimestamp) -> Sql<'q> {
    let mut sql = Sql::new(
        if q.full {
            "SELECT id, modified, sortindex, payload FROM bsos"
        } else {
            "SELECT id, modified, sortindex, CAST('' AS TEXT) FROM bsos"
        },
        vec![user.into(), coll.into(), now.into()],
    );
    sql.push(" WHERE user_id = $1 AND collection_id = $2 AND expiry > $3");
    if let Some(ids) = &q.ids {
        let p = sql.arg(Arg::Texts(ids.iter().map(|i| Some(i.as_str())).collect()));
        sql.push(&format!(" AND {}", dialect.in_list("id", &p)));
    }
    if let Some(newer) = q.newer {
        let p = sql.arg(newer);
        sql.push(&format!(" AND modified > {p}"));
    }
    if let Some(older) = q.older {
        let p = sql.arg(older);
        sql.push(&format!(" AND modified < {p}"));
    }
    let mut skip: u64 = 0;
    match &q.offset {
        None => {}
        Some(Offset::Skip(n)) => skip = *n,
        Some(Offset::Legacy { ms, skip: n }) => {
            skip = *n;
            let op = match q.sort {
                Sort::Newest => Some("<="),
                Sort::Oldest => Some(">="),
                Sort::Index => None,
            };
            if let Some(op) = op {
                let p = sql.arg(*ms);
                sql.push(&format!(" AND modified {op} {p}"));
            }
        }
        Some(Offset::After(SortKey::Modified { ms, id })) => {
            let m = sql.arg(*ms);
            let i = sql.arg(id.as_str());
            sql.push(&after_modified_key(q.sort == Sort::Oldest, &m, &i));
        }
        Some(Offset::After(SortKey::Index { sortindex: Some(s), id })) => {
            let s = sql.arg(*s);
            let i = sql.arg(id.as_str());
            sql.push(&format!(
                " AND (sortindex < {s} OR (sortindex = {s} AND id < {i}) OR sortindex IS NULL)"
            ));
        }
        Some(Offset::After(SortKey::Index { sortindex: None, id })) => {
            let i = sql.arg(id.as_str());
            sql.push(&format!(" AND sortindex IS NULL AND id < {i}"));
        }
    }
    sql.push(order_by(q.sort));
    // One row more than asked tells whether another page exists.
    limit_offset(&mut sql, dialect, q.limit.map(|l| l as i64 + 1), skip);
    sql
}

/// Cuts a page fetched with one row more than `q.limit` to the limit and, when more rows
/// exist, makes the keyset token of the last row kept (S15-081; limit=0 returns [] with no
/// token, spec README §5).
fn finish_page(mut bsos: Vec<Bso>, q: &CollectionQuery) -> (Vec<Bso>, Option<String>) {
    let Some(limit) = q.limit.map(|l| l as usize) else {
        return (bsos, None);
    };
    if bsos.len() <= limit {
        return (bsos, None);
    }
    bsos.truncate(limit);
    let next = bsos
        .last()
        .map(|last| next_offset(q.sort, last.modified, last.sortindex, last.id.clone()));
    (bsos, next)
}

/// The paging token after the last record of a page, in the listing's sort (S15-081).
fn next_offset(sort: Sort, modified: SyncTimestamp, sortindex: Option<i32>, id: String) -> String {
    Offset::encode(&match sort {
        Sort::Index => SortKey::Index { sortindex, id },
        _ => SortKey::Modified {
            ms: modified.as_millis(),
            id,
        },
    })
}

/// The statement of a page, or `None` for `ids=` naming no record (nothing to read).
fn page_statement<'q, T: Tx>(
    tx: &T,
    user: UserId,
    coll: i64,
    q: &'q CollectionQuery,
    now: SyncTimestamp,
) -> Option<Sql<'q>> {
    (!q.ids.as_ref().is_some_and(Vec::is_empty)).then(|| page_query(tx.dialect(), user, coll, q, now))
}

async fn query_page<T: Tx>(
    tx: &T,
    user: UserId,
    coll: i64,
    q: &CollectionQuery,
    now: SyncTimestamp,
) -> StoreResult<(Vec<Bso>, Option<String>)> {
    let Some(sql) = page_statement(tx, user, coll, q, now) else {
        return Ok((Vec::new(), None));
    };
    let bsos = tx
        .query(&sql.text, &sql.args)
        .await?
        .into_iter()
        .map(bso_from_row)
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(finish_page(bsos, q))
}

/// [`query_page`] for a later part of a listing, written in `format` into `out` as the
/// rows are read, without a [`Bso`] per record. Returns how many records it wrote and
/// the same paging token.
async fn render_page<T: Tx>(
    tx: &T,
    (user, coll): (UserId, i64),
    q: &CollectionQuery,
    now: SyncTimestamp,
    format: ListingFormat,
    out: &mut Vec<u8>,
) -> StoreResult<(u64, Option<String>)> {
    let Some(sql) = page_statement(tx, user, coll, q, now) else {
        return Ok((0, None));
    };
    let limit = q.limit.map(u64::from);
    let (mut written, mut more) = (0u64, false);
    let (mut last_modified, mut last_id, mut last_index) = (SyncTimestamp::ZERO, String::new(), None);
    tx.query_each(&sql.text, &sql.args, &mut |r| {
        // The row past the limit only tells that there is another page (page_query).
        if limit.is_some_and(|l| written >= l) {
            more = true;
            return Ok(());
        }
        let bso = BsoRef {
            id: r.text(0)?,
            modified: r.time(1)?,
            sortindex: r.opt_i32(2)?,
            payload: r.text(3)?,
        };
        format.push(out, &bso, false);
        (last_modified, last_index) = (bso.modified, bso.sortindex);
        last_id.clear();
        last_id.push_str(bso.id);
        written += 1;
        Ok(())
    })
    .await?;
    let next = (more && written > 0).then(|| next_offset(q.sort, last_modified, last_index, last_id));
    Ok((written, next))
}

fn empty_page(modified: SyncTimestamp) -> Page {
    Page {
        modified,
        bsos: Vec::new(),
        next_offset: None,
    }
}

/// A page of `GET /storage/{c}` with the collection's time, the precondition checked
/// against it (S15-055). Both statements go out together (PostgreSQL pipelines them); run
/// in a snapshot, they agree.
async fn checked_page<T: Tx>(
    tx: &T,
    user: UserId,
    coll: i64,
    query: &CollectionQuery,
    pre: Precondition,
    now: SyncTimestamp,
) -> StoreResult<Page> {
    let (modified, (bsos, next_offset)) =
        pipelined(collection_time(tx, user, coll), query_page(tx, user, coll, query, now)).await?;
    let modified = modified.unwrap_or_default();
    pre.check(modified)?;
    if modified == SyncTimestamp::ZERO {
        return Ok(empty_page(modified));
    }
    Ok(Page {
        modified,
        bsos,
        next_offset,
    })
}

/// The extent of a listing without its payloads. A limited listing is at most
/// max_total_records keys: they are read and the paging rule makes the token. An
/// unlimited one is counted.
async fn listing_extent<T: Tx>(
    tx: &T,
    user: UserId,
    coll: i64,
    query: CollectionQuery,
    now: SyncTimestamp,
) -> StoreResult<Extent> {
    let query = CollectionQuery { full: false, ..query };
    if query.limit.is_some() {
        let (keys, next_offset) = query_page(tx, user, coll, &query, now).await?;
        return Ok(Extent {
            records: keys.len() as u64,
            next_offset,
        });
    }
    let rows = page_query(tx.dialect(), user, coll, &query, now);
    let count = format!("SELECT CAST(COUNT(*) AS BIGINT) FROM ({}) AS page", rows.text);
    Ok(Extent {
        records: query_one(tx, &count, &rows.args).await?.count(0)?,
        next_offset: None,
    })
}

/// A commit whose staged records all carry a payload (what clients send): one statement
/// inside the database, no record passing through the server's memory. The rules are
/// UPSERT_MANY_PG's.
const COMMIT_STAGED: &str =
    "INSERT INTO bsos AS b (user_id, collection_id, id, sortindex, payload, payload_size, modified, expiry)
     SELECT CAST($1 AS BIGINT), CAST($2 AS INTEGER), i.id, i.sortindex, i.payload, i.payload_size, CAST($3 AS BIGINT),
            CASE WHEN i.ttl IS NULL THEN CAST($4 AS BIGINT) ELSE CAST($3 AS BIGINT) + CAST(i.ttl AS BIGINT) * 1000 END
     FROM batch_items AS i WHERE i.batch_id = $5
     ON CONFLICT (user_id, collection_id, id) DO UPDATE SET
       sortindex = CASE WHEN b.expiry <= $3 THEN excluded.sortindex ELSE COALESCE(excluded.sortindex, b.sortindex) END,
       payload = excluded.payload,
       payload_size = excluded.payload_size,
       modified = $3,
       expiry = CASE WHEN excluded.expiry < $4 THEN excluded.expiry WHEN b.expiry <= $3 THEN $4 ELSE b.expiry END";

/// Staged records read back per chunk when some lack a payload (their fields merge one by
/// one): memory stays a chunk's whatever the batch's size.
const COMMIT_CHUNK: i64 = 500;

/// Moves a batch's staged records into the collection at `now`.
/// `batch` holds the totals with the commit's own records.
async fn commit_staged<T: Tx>(tx: &T, user: UserId, coll: i64, batch: &Staged, now: SyncTimestamp) -> StoreResult<()> {
    let (partial, batch) = (batch.partial, batch.id);
    if partial == 0 {
        let never = SyncTimestamp::NEVER.as_millis();
        tx.execute(
            COMMIT_STAGED,
            &[user.into(), coll.into(), now.into(), never.into(), batch.into()],
        )
        .await?;
        return Ok(());
    }
    let mut after = 0i64;
    loop {
        let rows = tx
            .query(
                "SELECT seq, id, sortindex, payload, ttl FROM batch_items WHERE batch_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                &[batch.into(), after.into(), COMMIT_CHUNK.into()],
            )
            .await?;
        let Some(last) = rows.last() else {
            return Ok(());
        };
        after = last.int(0)?;
        let records = rows
            .into_iter()
            .map(|mut r| {
                Ok(BsoInput {
                    id: r.text(1)?,
                    sortindex: r.opt_i32(2)?,
                    payload: r.opt_text(3)?,
                    ttl: r.opt_int(4)?.map(|t| t.clamp(0, u32::MAX as i64) as u32),
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        upsert(tx, user, coll, &records, now, true).await?;
    }
}

/// Staged records removed per clean-up write on SQLite: a few milliseconds of its one
/// writer.
const SWEEP_CHUNK: i64 = 500;

/// Removes a spent batch's staged records, and the batch with the last of them; true while
/// some are left. SQLite takes [`SWEEP_CHUNK`] at a time, so that a request's write never
/// waits long behind the sweep. PostgreSQL takes them all at once: nobody waits for it
/// there, and every extra transaction is its CPU (in chunks the
/// sweep cost PostgreSQL about 0.2 ms per request of the load, 1.34 against 1.12 ms).
async fn sweep_batch<T: Tx>(tx: &T, id: i64) -> StoreResult<bool> {
    if tx.dialect() == Dialect::Postgres {
        delete_batches(tx, vec![id]).await?;
        return Ok(false);
    }
    let removed = tx
        .execute(
            "DELETE FROM batch_items WHERE batch_id = $1 AND id IN (SELECT id FROM batch_items WHERE batch_id = $1 LIMIT $2)",
            &[id.into(), SWEEP_CHUNK.into()],
        )
        .await?;
    if removed < SWEEP_CHUNK as u64 {
        tx.execute("DELETE FROM batches WHERE id = $1", &[id.into()]).await?;
        return Ok(false);
    }
    Ok(true)
}

/// Expired records one purge step deletes at most. On SQLite a step holds the one writer:
/// at 10 M records a step of 1,000 took 270 ms (the rows and their index entries are
/// scattered over the file), and a request's write that came meanwhile waited for it.
fn purge_chunk(d: Dialect) -> u64 {
    match d {
        Dialect::Sqlite => 200,
        Dialect::Postgres => 1000,
    }
}

/// One purge step: at most [`purge_chunk`] expired records, 100 expired batches and
/// 10,000 spent nonces, so each transaction stays short. Answers the records and batches
/// deleted, and whether some may be left.
async fn purge_step<T: Tx>(tx: &T, now: SyncTimestamp) -> StoreResult<(u64, u64, bool)> {
    const EXPIRED: &str = "SELECT {row} FROM bsos WHERE expiry < 9223372036854775800 AND expiry <= $1 LIMIT $2";
    let chunk = purge_chunk(tx.dialect());
    let sql = match tx.dialect() {
        Dialect::Sqlite => format!(
            "DELETE FROM bsos WHERE rowid IN ({})",
            EXPIRED.replace("{row}", "rowid")
        ),
        // A tid array makes a tid scan, where IN (subquery) might scan the table.
        Dialect::Postgres => format!(
            "DELETE FROM bsos WHERE ctid = ANY(ARRAY({}))",
            EXPIRED.replace("{row}", "ctid")
        ),
    };
    let bsos = tx.execute(&sql, &[now.into(), (chunk as i64).into()]).await?;
    let expired = tx
        .query("SELECT id FROM batches WHERE expiry <= $1 LIMIT 100", &[now.into()])
        .await?
        .iter()
        .map(|r| r.int(0))
        .collect::<StoreResult<Vec<i64>>>()?;
    let batches = expired.len() as u64;
    if !expired.is_empty() {
        delete_batches(tx, expired).await?;
    }
    let nonces = crate::nonces::purge_nonces(tx, now).await?;
    Ok((bsos, batches, bsos == chunk || batches == 100 || nonces == 10_000))
}

#[async_trait]
impl<E: Engine> Store for Db<E> {
    async fn storage_timestamp(&self, user: UserId) -> StoreResult<SyncTimestamp> {
        if let Some(t) = self.engine.cached_storage_time(user) {
            return Ok(t);
        }
        self.read("storage_timestamp", Read::Statement, move |tx| {
            Box::pin(storage_time(tx, user))
        })
        .await
    }

    async fn collection_timestamps(
        &self,
        user: UserId,
        pre: Precondition,
    ) -> StoreResult<(SyncTimestamp, Vec<(String, SyncTimestamp)>)> {
        if let (Precondition::IfModifiedSince(_), Some(t)) = (pre, self.engine.cached_storage_time(user)) {
            if t < SyncTimestamp::now() {
                pre.check(t)?;
            }
        }
        self.read_storage_level("collection_timestamps", Read::Statement, user, pre, move |tx| {
            Box::pin(async move {
                // One statement is one snapshot: the storage time and the collections agree.
                let rows = tx
                    .query(
                        "SELECT s.modified, c.name, uc.modified FROM user_storage s
                         LEFT JOIN user_collections uc ON uc.user_id = s.user_id
                         LEFT JOIN collections c ON c.id = uc.collection_id
                         WHERE s.user_id = $1",
                        &[user.into()],
                    )
                    .await?;
                let storage = rows.first().map(|r| r.time(0)).transpose()?.unwrap_or_default();
                let mut out = Vec::with_capacity(rows.len());
                for mut r in rows {
                    if let Some(name) = r.opt_text(1)? {
                        out.push((name, r.time(2)?));
                    }
                }
                Ok((storage, out))
            })
        })
        .await
    }

    async fn collection_usage(
        &self,
        user: UserId,
        pre: Precondition,
    ) -> StoreResult<(SyncTimestamp, Vec<CollectionUsage>)> {
        self.read_storage_level("collection_usage", Read::Snapshot, user, pre, move |tx| {
            Box::pin(async move {
                let storage = storage_time(tx, user).await?;
                let rows = tx
                    .query(
                        "SELECT c.name, CAST(COUNT(*) AS BIGINT), CAST(SUM(b.payload_size) AS BIGINT)
                         FROM bsos b JOIN collections c ON c.id = b.collection_id
                         WHERE b.user_id = $1 AND b.expiry > $2 GROUP BY c.name",
                        &[user.into(), SyncTimestamp::now().into()],
                    )
                    .await?;
                let usage = rows
                    .into_iter()
                    .map(|mut r| {
                        Ok(CollectionUsage {
                            collection: r.text(0)?,
                            count: r.count(1)?,
                            bytes: r.count(2)?,
                        })
                    })
                    .collect::<StoreResult<_>>()?;
                Ok((storage, usage))
            })
        })
        .await
    }

    async fn get_collection(
        &self,
        user: UserId,
        collection: &str,
        query: &CollectionQuery,
        pre: Precondition,
    ) -> StoreResult<Page> {
        let Some(coll) = self.find_collection(collection).await? else {
            pre.check(SyncTimestamp::ZERO)?;
            return Ok(empty_page(SyncTimestamp::ZERO));
        };
        let query = query.clone();
        self.read("get_collection", Read::Snapshot, move |tx| {
            Box::pin(async move { checked_page(tx, user, coll, &query, pre, SyncTimestamp::now()).await })
        })
        .await
    }

    async fn open_listing(
        &self,
        user: UserId,
        collection: &str,
        query: &CollectionQuery,
        first: u32,
        pre: Precondition,
    ) -> StoreResult<(Page, Option<Extent>)> {
        let Some(coll) = self.find_collection(collection).await? else {
            pre.check(SyncTimestamp::ZERO)?;
            return Ok((empty_page(SyncTimestamp::ZERO), None));
        };
        let query = query.clone();
        // One visit to a reader (a pooled connection) for the first records and the
        // extent: in a burst of long downloads each visit queues behind the others'.
        self.read("open_listing", Read::Snapshot, move |tx| {
            Box::pin(async move {
                let now = SyncTimestamp::now();
                let head = CollectionQuery {
                    limit: Some(query.limit.map_or(first, |l| l.min(first))),
                    ..query.clone()
                };
                let page = checked_page(tx, user, coll, &head, pre, now).await?;
                let more = page.next_offset.is_some() && query.limit.is_none_or(|l| l > first);
                let extent = if more {
                    Some(listing_extent(tx, user, coll, query, now).await?)
                } else {
                    None
                };
                Ok((page, extent))
            })
        })
        .await
    }

    async fn listing_chunk(
        &self,
        user: UserId,
        collection: &str,
        query: &CollectionQuery,
        format: ListingFormat,
        size_hint: usize,
    ) -> StoreResult<(Vec<u8>, u64, Option<String>)> {
        let Some(coll) = self.find_collection(collection).await? else {
            return Ok((Vec::new(), 0, None));
        };
        let query = query.clone();
        // Each chunk is a snapshot of its own whatever the transaction, so it needs none:
        // one round trip instead of three on PostgreSQL.
        self.read_bulk("listing_chunk", move |tx| {
            Box::pin(async move {
                let mut out = Vec::with_capacity(size_hint);
                let now = SyncTimestamp::now();
                let (n, next) = render_page(tx, (user, coll), &query, now, format, &mut out).await?;
                Ok((out, n, next))
            })
        })
        .await
    }

    async fn get_bso(&self, user: UserId, collection: &str, id: &str, pre: Precondition) -> StoreResult<Bso> {
        let Some(coll) = self.find_collection(collection).await? else {
            pre.check(SyncTimestamp::ZERO)?;
            return Err(StoreError::NotFound);
        };
        let id = id.to_string();
        self.read("get_bso", Read::Statement, move |tx| {
            Box::pin(async move {
                let bso = tx
                    .query_opt(
                        "SELECT id, modified, sortindex, payload FROM bsos
                         WHERE user_id = $1 AND collection_id = $2 AND id = $3 AND expiry > $4",
                        &[user.into(), coll.into(), (&id).into(), SyncTimestamp::now().into()],
                    )
                    .await?
                    .map(bso_from_row)
                    .transpose()?;
                pre.check(bso.as_ref().map_or(SyncTimestamp::ZERO, |b| b.modified))?;
                bso.ok_or(StoreError::NotFound)
            })
        })
        .await
    }

    async fn put_bso(
        &self,
        user: UserId,
        collection: &str,
        bso: BsoInput,
        pre: Precondition,
        limits: WriteLimits,
    ) -> StoreResult<SyncTimestamp> {
        let cost = bso.payload_len();
        let bso = Arc::new(bso);
        self.in_collection(collection, |coll| {
            let bso = bso.clone();
            self.write_bucket("put_bso", (user, Some(coll)), cost, move |tx| {
                let bso = bso.clone();
                Box::pin(async move {
                    let now = tx.lock_bucket(user, Some(coll)).await?.now;
                    let current = first_time(
                        tx.query_opt(
                            "SELECT modified FROM bsos WHERE user_id = $1 AND collection_id = $2 AND id = $3",
                            &[user.into(), coll.into(), (&bso.id).into()],
                        )
                        .await?,
                    )?;
                    pre.check(current.unwrap_or_default())?;
                    write_records(tx, user, coll, std::slice::from_ref(&bso), now, limits).await
                })
            })
        })
        .await
    }

    async fn post_bsos(
        &self,
        user: UserId,
        collection: &str,
        bsos: Vec<BsoInput>,
        pre: Precondition,
        limits: WriteLimits,
    ) -> StoreResult<SyncTimestamp> {
        let cost = total_payload(&bsos) as usize;
        let bsos = Arc::new(bsos);
        self.in_collection(collection, |coll| {
            let bsos = bsos.clone();
            self.write_bucket("post_bsos", (user, Some(coll)), cost, move |tx| {
                let bsos = bsos.clone();
                Box::pin(async move {
                    let locked = tx.lock_bucket(user, Some(coll)).await?;
                    pre.check(locked.modified)?;
                    write_records(tx, user, coll, &bsos, locked.now, limits).await
                })
            })
        })
        .await
    }

    async fn delete_bso(
        &self,
        user: UserId,
        collection: &str,
        id: &str,
        pre: Precondition,
    ) -> StoreResult<SyncTimestamp> {
        let Some(coll) = self.find_collection(collection).await? else {
            pre.check(SyncTimestamp::ZERO)?;
            return Err(StoreError::NotFound);
        };
        let id: Arc<str> = id.into();
        self.write_bucket("delete_bso", (user, Some(coll)), 0, move |tx| {
            let id = id.clone();
            Box::pin(async move {
                let now = tx.lock_bucket(user, Some(coll)).await?.now;
                let args = [user.into(), coll.into(), (&*id).into(), now.into()];
                let live = first_time(
                    tx.query_opt(
                        "SELECT modified FROM bsos WHERE user_id = $1 AND collection_id = $2 AND id = $3 AND expiry > $4",
                        &args,
                    )
                    .await?,
                )?;
                pre.check(live.unwrap_or_default())?;
                if live.is_none() {
                    return Err(StoreError::NotFound);
                }
                tx.execute(
                    "DELETE FROM bsos WHERE user_id = $1 AND collection_id = $2 AND id = $3",
                    &args[..3],
                )
                .await?;
                touch(tx, user, coll, now).await?;
                Ok(now)
            })
        })
        .await
    }

    async fn delete_bsos(
        &self,
        user: UserId,
        collection: &str,
        ids: Vec<String>,
        pre: Precondition,
    ) -> StoreResult<SyncTimestamp> {
        let ids = Arc::new(ids);
        self.in_collection(collection, |coll| {
            let ids = ids.clone();
            self.write_bucket("delete_bsos", (user, Some(coll)), 0, move |tx| {
                let ids = ids.clone();
                Box::pin(async move {
                    let Locked { now, modified } = tx.lock_bucket(user, Some(coll)).await?;
                    pre.check(modified)?;
                    let sql = format!(
                        "DELETE FROM bsos WHERE user_id = $1 AND collection_id = $2 AND {}",
                        tx.dialect().in_list("id", "$3")
                    );
                    let list = Arg::Texts(ids.iter().map(|i| Some(i.as_str())).collect());
                    tx.execute(&sql, &[user.into(), coll.into(), list]).await?;
                    touch(tx, user, coll, now).await?;
                    Ok(now)
                })
            })
        })
        .await
    }

    async fn delete_collection(
        &self,
        user: UserId,
        collection: &str,
        pre: Precondition,
    ) -> StoreResult<DeletedCollection> {
        let coll = self.find_collection(collection).await?;
        // A collection never registered has nothing to delete; its write still takes the
        // bucket's lock, so that the answer agrees with the writes around it.
        let deleted = self.write_bucket("delete_collection", (user, coll), HEAVY, move |tx| {
            Box::pin(async move {
                let Locked { now, modified } = tx.lock_bucket(user, coll).await?;
                let previous = coll.and((modified != SyncTimestamp::ZERO).then_some(modified));
                pre.check(previous.unwrap_or_default())?;
                let (Some(coll), Some(previous)) = (coll, previous) else {
                    // S15-143: a collection that does not exist: nothing changes.
                    return Ok(DeletedCollection {
                        previous: SyncTimestamp::ZERO,
                        storage: storage_time(tx, user).await?,
                    });
                };
                for sql in [
                    "DELETE FROM bsos WHERE user_id = $1 AND collection_id = $2",
                    "DELETE FROM user_collections WHERE user_id = $1 AND collection_id = $2",
                    "DELETE FROM batch_items WHERE batch_id IN (SELECT id FROM batches WHERE user_id = $1 AND collection_id = $2)",
                    "DELETE FROM batches WHERE user_id = $1 AND collection_id = $2",
                ] {
                    tx.execute(sql, &[user.into(), coll.into()]).await?;
                }
                // The storage timestamp is the deleted-collection marker of S15-142.
                touch_storage(tx, user, now).await?;
                Ok(DeletedCollection { previous, storage: now })
            })
        })
        .await?;
        if let Some(coll) = coll {
            self.release_collections(Some(vec![coll])).await;
        }
        Ok(deleted)
    }

    async fn delete_storage(&self, user: UserId, pre: Precondition) -> StoreResult<SyncTimestamp> {
        let (previous, custom) = self
            .write_bucket("delete_storage", (user, None), HEAVY, move |tx| {
                Box::pin(async move {
                    // Checked under the lock, so no write lands between check and delete
                    // (S15-057).
                    let previous = tx.lock_bucket(user, None).await?.modified;
                    pre.check(previous)?;
                    let custom = custom_collections(tx, user).await?;
                    wipe_bucket(tx, user).await?;
                    Ok((previous, custom))
                })
            })
            .await?;
        self.release_collections(Some(custom)).await;
        Ok(previous)
    }

    async fn create_batch(
        &self,
        user: UserId,
        collection: &str,
        bsos: Vec<BsoInput>,
        pre: Precondition,
        limits: WriteLimits,
    ) -> StoreResult<(String, SyncTimestamp)> {
        let cost = total_payload(&bsos) as usize;
        let bsos = Arc::new(bsos);
        self.in_collection(collection, |coll| {
            let bsos = bsos.clone();
            self.write("create_batch", cost, move |tx| {
                let bsos = bsos.clone();
                Box::pin(async move {
                    let now = tx.lock_bucket_to_stage(user).await?;
                    let modified = collection_time(tx, user, coll).await?.unwrap_or_default();
                    pre.check(modified)?;
                    let after = Staged::default().grow(&bsos);
                    check_batch_size(limits, &after)?;
                    check_quota(tx, user, now, limits, after.bytes).await?;
                    let id = query_one(
                        tx,
                        "INSERT INTO batches (user_id, collection_id, expiry, staged_records, staged_bytes, staged_seq, staged_partial)
                         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                        &[
                            user.into(),
                            coll.into(),
                            (now.as_millis() + BATCH_LIFETIME_MS).into(),
                            (after.records as i64).into(),
                            (after.bytes as i64).into(),
                            after.seq.into(),
                            (after.partial as i64).into(),
                        ],
                    )
                    .await?
                    .int(0)?;
                    stage(tx, &Staged { id, ..after }, &bsos).await?;
                    Ok((id.to_string(), modified))
                })
            })
        })
        .await
    }

    async fn append_batch(
        &self,
        user: UserId,
        collection: &str,
        batch: &str,
        bsos: Vec<BsoInput>,
        pre: Precondition,
        limits: WriteLimits,
    ) -> StoreResult<SyncTimestamp> {
        let Some(coll) = self.find_collection(collection).await? else {
            return Err(StoreError::BatchNotFound);
        };
        let cost = total_payload(&bsos) as usize;
        let (batch, bsos): (Arc<str>, _) = (batch.into(), Arc::new(bsos));
        self.write("append_batch", cost, move |tx| {
            let (batch, bsos) = (batch.clone(), bsos.clone());
            Box::pin(async move {
                let now = tx.lock_bucket_to_stage(user).await?;
                let modified = collection_time(tx, user, coll).await?.unwrap_or_default();
                pre.check(modified)?;
                let after = grow_batch(tx, (user, coll), &batch, &bsos, Then::Append, now).await?;
                check_batch_size(limits, &after)?;
                check_quota(tx, user, now, limits, after.bytes).await?;
                stage(tx, &after, &bsos).await?;
                Ok(modified)
            })
        })
        .await
    }

    async fn commit_batch(
        &self,
        user: UserId,
        collection: &str,
        batch: &str,
        bsos: Vec<BsoInput>,
        pre: Precondition,
        limits: WriteLimits,
    ) -> StoreResult<SyncTimestamp> {
        let Some(coll) = self.find_collection(collection).await? else {
            return Err(StoreError::BatchNotFound);
        };
        let (batch, bsos): (Arc<str>, _) = (batch.into(), Arc::new(bsos));
        self.write_bucket("commit_batch", (user, Some(coll)), HEAVY, move |tx| {
            let (batch, bsos) = (batch.clone(), bsos.clone());
            Box::pin(async move {
                let Locked { now, modified } = tx.lock_bucket(user, Some(coll)).await?;
                pre.check(modified)?;
                let after = grow_batch(tx, (user, coll), &batch, &bsos, Then::Commit, now).await?;
                check_batch_size(limits, &after)?;
                check_quota(tx, user, now, limits, after.bytes).await?;
                // The commit body overrides staged fields of the same id (S15-125).
                stage(tx, &after, &bsos).await?;
                commit_staged(tx, user, coll, &after, now).await?;
                touch(tx, user, coll, now).await?;
                Ok((now, after.id))
            })
        })
        .await
        .map(|(now, id)| {
            self.write_later("sweep_batch", move |tx| Box::pin(sweep_batch(tx, id)));
            now
        })
    }

    async fn purge_expired(&self) -> StoreResult<PurgeReport> {
        let mut report = PurgeReport::default();
        let started = std::time::Instant::now();
        loop {
            // After the writes requests wait for: on SQLite, one step whenever the writer
            // has nothing else to do.
            let (bsos, batches, more) = self
                .write_idle("purge_expired", |tx| Box::pin(purge_step(tx, SyncTimestamp::now())))
                .await?;
            report.bsos += bsos;
            report.batches += batches;
            if !more {
                break;
            }
        }
        // Expired batches and deleted buckets may have been a name's last users.
        report.collections = self.release_collections(None).await;
        report.deleting = started.elapsed();
        let reclaim = std::time::Instant::now();
        self.engine.reclaim_space().await?;
        report.reclaiming = reclaim.elapsed();
        Ok(report)
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        let row = self
            .read("stats", Read::Statement, |tx| {
                Box::pin(async move {
                    query_one(
                        tx,
                        "SELECT (SELECT CAST(COUNT(*) AS BIGINT) FROM user_storage),
                                (SELECT CAST(COUNT(*) AS BIGINT) FROM batches WHERE expiry > $1),
                                (SELECT CAST(COUNT(*) AS BIGINT) FROM collections)",
                        &[SyncTimestamp::now().into()],
                    )
                    .await
                })
            })
            .await?;
        Ok(StoreStats {
            users: row.count(0)?,
            active_batches: row.count(1)?,
            collection_names: row.count(2)?,
            database_bytes: self.engine.database_bytes().await?,
        })
    }

    async fn check(&self) -> StoreResult<()> {
        self.engine.health()?;
        self.read("check", Read::Statement, |tx| {
            Box::pin(async move {
                query_one(tx, "SELECT 1", &[]).await?;
                Ok(())
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failure here is a failed test

    use super::*;
    use crate::testing::ScratchSchema;
    use crate::{PgStore, SqliteOptions, SqliteStore};

    /// Hardening finding 13: a write that holds the id of a name released under it (by
    /// another request, node or admin command) is refused by the database, never filed
    /// under a dead id; the public path then registers the name afresh.
    async fn released_id_is_refused<E: Engine>(db: &Db<E>) {
        let stale = db.ensure_collection("released-under-me").await.unwrap();
        assert_eq!(db.release_collections(Some(vec![stale])).await, 1);
        let out = db
            .write("test", 0, move |tx| {
                Box::pin(async move { touch(tx, 5, stale, SyncTimestamp::now()).await })
            })
            .await;
        assert!(matches!(out, Err(StoreError::CollectionGone)), "{out:?}");
        let at = db
            .put_bso(
                5,
                "released-under-me",
                BsoInput {
                    id: "x".into(),
                    payload: Some("y".into()),
                    sortindex: None,
                    ttl: None,
                },
                Precondition::None,
                WriteLimits::default(),
            )
            .await
            .unwrap();
        assert!(at > SyncTimestamp::ZERO);
        let fresh = db.find_collection("released-under-me").await.unwrap().unwrap();
        assert!(fresh > stale, "an id is never handed out twice: {fresh} after {stale}");
        // A standard name is never released.
        assert_eq!(db.release_collections(Some(vec![4])).await, 0);
        assert_eq!(db.find_collection("history").await.unwrap(), Some(4));
    }

    #[tokio::test]
    async fn released_id_is_refused_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteStore::open(SqliteOptions::new(dir.path().join("t.db")))
            .await
            .unwrap();
        released_id_is_refused(&db).await;
    }

    #[tokio::test]
    async fn postgres_released_id_is_refused() {
        let Some(scratch) = ScratchSchema::create().await else {
            eprintln!("SKIPPED: {} is not set", crate::testing::POSTGRES_URL_VAR);
            return;
        };
        let db = PgStore::open(&scratch.url, 2).await.unwrap();
        released_id_is_refused(&db).await;
    }

    /// Starts a bulk read (as a long listing's chunk) that holds its slot until the answer
    /// is sent on the returned channel, once it is running.
    async fn hold_a_bulk_read<E: Engine>(
        db: &Arc<Db<E>>,
    ) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<StoreResult<()>>) {
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let (started, running) = tokio::sync::oneshot::channel::<()>();
        let read = tokio::spawn({
            let db = db.clone();
            async move {
                db.read_bulk("test", move |_| {
                    Box::pin(async move {
                        let _ = started.send(());
                        // Blocks this thread (a tokio worker on PostgreSQL): the test
                        // runtime has others.
                        let _ = gate.recv();
                        Ok(())
                    })
                })
                .await
            }
        });
        running.await.unwrap();
        (release, read)
    }

    /// Bulk reads (long listings' chunks) leave a read slot for short requests: with one
    /// bulk read holding a connection of two, a second waits for it, while a short read is
    /// served.
    async fn bulk_reads_leave_a_slot<E: Engine>(db: Arc<Db<E>>) {
        assert_eq!(db.engine.read_slots(), 2);
        let (release, first) = hold_a_bulk_read(&db).await;
        let mut second = tokio::spawn({
            let db = db.clone();
            async move { db.read_bulk("test", |_| Box::pin(async { Ok(()) })).await }
        });
        // Without the lane it would take the free connection and be done at once.
        let waited = tokio::time::timeout(std::time::Duration::from_millis(300), &mut second).await;
        assert!(waited.is_err(), "a second bulk read waits for the first");
        let short = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            db.get_collection(1, "history", &CollectionQuery::default(), Precondition::None),
        )
        .await;
        assert!(matches!(short, Ok(Ok(_))), "a short read is served beside a bulk one");
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(20), second)
            .await
            .expect("the second bulk read runs once the first is done")
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn bulk_reads_leave_a_slot_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteOptions {
            readers: 2,
            ..SqliteOptions::new(dir.path().join("t.db"))
        };
        bulk_reads_leave_a_slot(Arc::new(SqliteStore::open(options).await.unwrap())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_bulk_reads_leave_a_slot() {
        let Some(scratch) = ScratchSchema::create().await else {
            eprintln!("SKIPPED: {} is not set", crate::testing::POSTGRES_URL_VAR);
            return;
        };
        bulk_reads_leave_a_slot(Arc::new(PgStore::open(&scratch.url, 2).await.unwrap())).await;
    }

    fn records(from: usize, n: usize) -> Vec<BsoInput> {
        (from..from + n)
            .map(|i| BsoInput {
                id: format!("r{i}"),
                payload: Some(format!("payload {i}")),
                sortindex: None,
                ttl: None,
            })
            .collect()
    }

    async fn count<E: Engine>(db: &Db<E>, sql: &'static str, batch: i64) -> u64 {
        db.read("test", Read::Statement, move |tx| {
            Box::pin(async move { query_one(tx, sql, &[batch.into()]).await?.count(0) })
        })
        .await
        .unwrap()
    }

    /// S15-125 with the staged records swept after the commit: the commit applies every
    /// record, its batch id is refused at once, and the staged copies (more than one
    /// clean-up chunk of them) leave the database soon after, batch row last.
    async fn committed_batch_is_spent_then_swept<E: Engine>(db: &Db<E>) {
        let limits = WriteLimits::default();
        let (batch, _) = db
            .create_batch(7, "history", records(0, 100), Precondition::None, limits)
            .await
            .unwrap();
        for k in 1..12 {
            db.append_batch(7, "history", &batch, records(k * 100, 100), Precondition::None, limits)
                .await
                .unwrap();
        }
        let id: i64 = batch.parse().unwrap();
        assert!(1200 > SWEEP_CHUNK as usize * 2, "the sweep takes several chunks");
        db.commit_batch(7, "history", &batch, records(1200, 1), Precondition::None, limits)
            .await
            .unwrap();
        let again = db
            .append_batch(7, "history", &batch, records(0, 1), Precondition::None, limits)
            .await;
        assert!(matches!(again, Err(StoreError::BatchNotFound)), "{again:?}");
        let page = db
            .get_collection(7, "history", &CollectionQuery::default(), Precondition::None)
            .await
            .unwrap();
        assert_eq!(page.bsos.len(), 1201);
        let items = "SELECT CAST(COUNT(*) AS BIGINT) FROM batch_items WHERE batch_id = $1";
        let rows = "SELECT CAST(COUNT(*) AS BIGINT) FROM batches WHERE id = $1";
        for _ in 0..500 {
            if count(db, rows, id).await == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!((count(db, items, id).await, count(db, rows, id).await), (0, 0));
    }

    /// On PostgreSQL a committed batch's sweep waits while a long listing is being read
    /// (a bulk read holds a slot here), and runs once it is done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_a_sweep_waits_for_long_listings() {
        let Some(scratch) = ScratchSchema::create().await else {
            eprintln!("SKIPPED: {} is not set", crate::testing::POSTGRES_URL_VAR);
            return;
        };
        let db = Arc::new(PgStore::open(&scratch.url, 4).await.unwrap());
        let limits = WriteLimits::default();
        let (batch, _) = db
            .create_batch(7, "history", records(0, 100), Precondition::None, limits)
            .await
            .unwrap();
        let id: i64 = batch.parse().unwrap();
        let (release, listing) = hold_a_bulk_read(&db).await;
        db.commit_batch(7, "history", &batch, records(100, 1), Precondition::None, limits)
            .await
            .unwrap();
        let rows = "SELECT CAST(COUNT(*) AS BIGINT) FROM batches WHERE id = $1";
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(count(&*db, rows, id).await, 1, "the sweep waits for the listing");
        release.send(()).unwrap();
        listing.await.unwrap().unwrap();
        for _ in 0..500 {
            if count(&*db, rows, id).await == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(count(&*db, rows, id).await, 0, "and runs once it is done");
    }

    #[tokio::test]
    async fn committed_batch_is_spent_then_swept_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteStore::open(SqliteOptions::new(dir.path().join("t.db")))
            .await
            .unwrap();
        committed_batch_is_spent_then_swept(&db).await;
    }

    #[tokio::test]
    async fn postgres_committed_batch_is_spent_then_swept() {
        let Some(scratch) = ScratchSchema::create().await else {
            eprintln!("SKIPPED: {} is not set", crate::testing::POSTGRES_URL_VAR);
            return;
        };
        let db = PgStore::open(&scratch.url, 2).await.unwrap();
        committed_batch_is_spent_then_swept(&db).await;
    }
}
