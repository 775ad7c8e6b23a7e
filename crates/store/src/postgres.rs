//! The PostgreSQL backend, for operators who outgrow one machine: a connection pool, every
//! request in its own transaction, and writes of one bucket serialised by a row lock on
//! the bucket's `user_storage` row (1.1 buckets: an advisory lock on the bucket id). Under that lock each write takes a time strictly
//! later than the bucket's last (S15-043), so several server processes can share one
//! database without a central writer, and two buckets never wait for each other.
//!
//! The schema mirrors the SQLite one table for table (`migrations/postgres`), so the
//! semantics — timestamps, paging keys, batches, TTLs, quota — are the same to the letter;
//! the shared conformance tests run against both.

use std::collections::HashMap;
use std::sync::RwLock;

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool, Transaction};
use syncstead_proto::query::{CollectionQuery, Offset, Sort, SortKey};
use syncstead_proto::{Bso, BsoInput, SyncTimestamp};
use tokio_postgres::types::ToSql;
use tokio_postgres::IsolationLevel;

use crate::{
    CollectionUsage, DeletedCollection, Page, Precondition, PurgeReport, Store, StoreError, StoreResult, StoreStats,
    UserId, WriteLimits, BATCH_LIFETIME_MS,
};

mod accounts;
mod legacy;
mod tokens;

const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_storage.sql")),
    (2, include_str!("../migrations/postgres/0002_tokenserver.sql")),
    (3, include_str!("../migrations/postgres/0003_accounts.sql")),
];

/// Advisory-lock namespaces (the two-key form, which never meets the bucket locks that
/// use the one-key form).
const LOCK_MIGRATIONS: i32 = 1;
pub(crate) const LOCK_LOGIN: i32 = 2;
pub(crate) const LOCK_ACCOUNTS: i32 = 3;

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Database(format!("database pool: {e}"))
    }
}

type Param = Box<dyn ToSql + Sync + Send>;

fn refs(args: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|a| a.as_ref() as &(dyn ToSql + Sync)).collect()
}

pub(crate) fn ts(ms: i64) -> SyncTimestamp {
    SyncTimestamp::from_millis(ms)
}

pub struct PgStore {
    pool: Pool,
    collections: RwLock<HashMap<String, i32>>,
}

impl PgStore {
    /// Connects (`postgres://user@host:port/db`), applies pending migrations and keeps a
    /// pool of up to `pool_size` connections.
    pub async fn open(url: &str, pool_size: usize) -> StoreResult<Self> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Database(format!("bad PostgreSQL URL: {e}")))?;
        let manager = deadpool_postgres::Manager::from_config(
            config,
            tokio_postgres::NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(std::time::Duration::from_secs(10)))
            .create_timeout(Some(std::time::Duration::from_secs(10)))
            .build()
            .map_err(|e| StoreError::Database(format!("database pool: {e}")))?;
        let store = PgStore {
            pool,
            collections: RwLock::new(HashMap::new()),
        };
        store.migrate().await?;
        let c = store.client().await?;
        let rows = c.query("SELECT id, name FROM collections", &[]).await?;
        let mut map = store.collections.write().expect("collections lock");
        for row in rows {
            map.insert(row.get(1), row.get(0));
        }
        drop(map);
        drop(c);
        Ok(store)
    }

    /// Applies pending migrations under an advisory lock, so nodes starting together
    /// take turns and each migration runs once.
    async fn migrate(&self) -> StoreResult<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        run(&tx, "SELECT pg_advisory_xact_lock($1, 0)", &[&LOCK_MIGRATIONS]).await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS syncstead_schema (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .await?;
        let current: i32 = tx
            .query_one("SELECT COALESCE(MAX(version), 0) FROM syncstead_schema", &[])
            .await?
            .get(0);
        let latest = MIGRATIONS.last().map_or(0, |m| m.0);
        if current > latest {
            return Err(StoreError::Database(format!(
                "database schema version {current} is newer than this release supports ({latest}); upgrade syncstead"
            )));
        }
        for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            tx.batch_execute(sql).await?;
            run(
                &tx,
                "INSERT INTO syncstead_schema (version, applied_at) VALUES ($1, $2)",
                &[version, &SyncTimestamp::now().as_millis()],
            )
            .await?;
            tracing::info!(version, "applied database migration");
        }
        tx.commit().await?;
        Ok(())
    }

    async fn client(&self) -> StoreResult<Object> {
        Ok(self.pool.get().await?)
    }

    fn cached_collection(&self, name: &str) -> Option<i32> {
        self.collections.read().expect("collections lock").get(name).copied()
    }

    async fn find_collection(&self, name: &str) -> StoreResult<Option<i32>> {
        if let Some(id) = self.cached_collection(name) {
            return Ok(Some(id));
        }
        let c = self.client().await?;
        let id: Option<i32> = c
            .query_opt("SELECT id FROM collections WHERE name = $1", &[&name])
            .await?
            .map(|r| r.get(0));
        if let Some(id) = id {
            self.collections
                .write()
                .expect("collections lock")
                .insert(name.to_string(), id);
        }
        Ok(id)
    }

    async fn ensure_collection(&self, name: &str) -> StoreResult<i32> {
        if let Some(id) = self.find_collection(name).await? {
            return Ok(id);
        }
        let c = self.client().await?;
        c.execute(
            "INSERT INTO collections (id, name) VALUES (nextval('collections_custom_id'), $1) ON CONFLICT (name) DO NOTHING",
            &[&name],
        )
        .await?;
        let id: i32 = c
            .query_one("SELECT id FROM collections WHERE name = $1", &[&name])
            .await?
            .get(0);
        self.collections
            .write()
            .expect("collections lock")
            .insert(name.to_string(), id);
        Ok(id)
    }

    /// A read-only snapshot transaction, so a check and the rows it guards agree.
    async fn snapshot<'a>(&self, c: &'a mut Object) -> StoreResult<Transaction<'a>> {
        Ok(c.build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?)
    }
}

/// Statements run through the connection's prepared-statement cache: one round trip per
/// statement instead of two, and no re-planning of the same SQL.
async fn run(tx: &Transaction<'_>, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<u64> {
    let st = tx.prepare_cached(sql).await?;
    Ok(tx.execute(&st, params).await?)
}

async fn rows(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> StoreResult<Vec<tokio_postgres::Row>> {
    let st = tx.prepare_cached(sql).await?;
    Ok(tx.query(&st, params).await?)
}

async fn row_opt(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> StoreResult<Option<tokio_postgres::Row>> {
    let st = tx.prepare_cached(sql).await?;
    Ok(tx.query_opt(&st, params).await?)
}

async fn row(tx: &Transaction<'_>, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<tokio_postgres::Row> {
    let st = tx.prepare_cached(sql).await?;
    Ok(tx.query_one(&st, params).await?)
}

/// Takes the bucket's write lock for the rest of the transaction and returns the write
/// time: now, or just after the bucket's last write if the clock has not moved past it
/// (S15-043) — possible when several servers with slightly different clocks share it.
pub(crate) async fn lock_bucket(tx: &Transaction<'_>, user: UserId) -> StoreResult<SyncTimestamp> {
    // The bucket's user_storage row is its write lock: FOR UPDATE waits for a concurrent
    // writer and then reads the row as that writer left it, so one statement both locks
    // and reads the last write time.
    const LOCK: &str = "SELECT modified FROM user_storage WHERE user_id = $1 FOR UPDATE";
    let last: i64 = match row_opt(tx, LOCK, &[&user]).await? {
        Some(r) => r.get(0),
        None => {
            // A first write: make the row (a concurrent first write waits on it), then lock it.
            run(
                tx,
                "INSERT INTO user_storage (user_id, modified) VALUES ($1, 0) ON CONFLICT DO NOTHING",
                &[&user],
            )
            .await?;
            row(tx, LOCK, &[&user]).await?.get(0)
        }
    };
    Ok(later_than(ts(last)).await)
}

/// The first clock tick after `last`: waits for it (at most a tick, as the SQLite backend
/// does), unless `last` is far ahead — another server's clock — where waiting would stall
/// the bucket; then the tick right after it.
pub(crate) async fn later_than(last: SyncTimestamp) -> SyncTimestamp {
    loop {
        let now = SyncTimestamp::now();
        if now > last {
            return now;
        }
        let behind = last.as_millis() - now.as_millis();
        if behind > 1000 {
            return ts(last.as_millis() + 10);
        }
        tokio::time::sleep(std::time::Duration::from_millis(behind as u64 + 1)).await;
    }
}

pub(crate) async fn storage_ts(tx: &Transaction<'_>, user: UserId) -> StoreResult<SyncTimestamp> {
    let row = tx
        .query_opt("SELECT modified FROM user_storage WHERE user_id = $1", &[&user])
        .await?;
    Ok(ts(row.map_or(0, |r| r.get(0))))
}

async fn collection_ts(tx: &Transaction<'_>, user: UserId, coll: i32) -> StoreResult<Option<SyncTimestamp>> {
    let row = tx
        .query_opt(
            "SELECT modified FROM user_collections WHERE user_id = $1 AND collection_id = $2",
            &[&user, &coll],
        )
        .await?;
    Ok(row.map(|r| ts(r.get(0))))
}

async fn touch(tx: &Transaction<'_>, user: UserId, coll: i32, now: SyncTimestamp) -> StoreResult<()> {
    run(
        tx,
        "WITH c AS (
           INSERT INTO user_collections (user_id, collection_id, modified) VALUES ($1, $2, $3)
           ON CONFLICT (user_id, collection_id) DO UPDATE SET modified = excluded.modified)
         INSERT INTO user_storage (user_id, modified) VALUES ($1, $3)
         ON CONFLICT (user_id) DO UPDATE SET modified = excluded.modified",
        &[&user, &coll, &now.as_millis()],
    )
    .await?;
    Ok(())
}

pub(crate) async fn touch_storage(tx: &Transaction<'_>, user: UserId, now: SyncTimestamp) -> StoreResult<()> {
    run(
        tx,
        "INSERT INTO user_storage (user_id, modified) VALUES ($1, $2)
             ON CONFLICT (user_id) DO UPDATE SET modified = excluded.modified",
        &[&user, &now.as_millis()],
    )
    .await?;
    Ok(())
}

fn total_payload(bsos: &[BsoInput]) -> u64 {
    bsos.iter().map(|b| b.payload_len() as u64).sum()
}

/// Deletes everything a bucket holds.
pub(crate) async fn delete_bucket(tx: &Transaction<'_>, user: UserId) -> StoreResult<()> {
    for sql in [
        "DELETE FROM bsos WHERE user_id = $1",
        "DELETE FROM user_collections WHERE user_id = $1",
        "DELETE FROM batch_items WHERE batch_id IN (SELECT id FROM batches WHERE user_id = $1)",
        "DELETE FROM batches WHERE user_id = $1",
        "DELETE FROM user_storage WHERE user_id = $1",
    ] {
        run(tx, sql, &[&user]).await?;
    }
    Ok(())
}

/// S15-170: checked before the write, so one write may overshoot.
async fn check_quota(
    tx: &Transaction<'_>,
    user: UserId,
    now: SyncTimestamp,
    limits: WriteLimits,
    staged: u64,
) -> StoreResult<()> {
    if let Some(quota) = limits.quota_bytes {
        let used: i64 = tx
            .query_one(
                "SELECT COALESCE(SUM(payload_size), 0)::BIGINT FROM bsos WHERE user_id = $1 AND expiry > $2",
                &[&user, &now.as_millis()],
            )
            .await?
            .get(0);
        if used.max(0) as u64 + staged >= quota {
            return Err(StoreError::OverQuota);
        }
    }
    Ok(())
}

/// The per-record upsert with PUT semantics (S15-093, S15-094, S15-047); the same rules as
/// the SQLite backend's statement. With `$9` (batch commit) every record gets `modified = now`.
const UPSERT_ONE: &str = "INSERT INTO bsos AS b (user_id, collection_id, id, sortindex, payload, payload_size, modified, expiry)
     VALUES ($1, $2, $3, $4, COALESCE($5, ''), $6, $7, $8)
     ON CONFLICT (user_id, collection_id, id) DO UPDATE SET
       sortindex = CASE WHEN b.expiry <= $7 THEN excluded.sortindex ELSE COALESCE($4, b.sortindex) END,
       payload = CASE WHEN $5::TEXT IS NOT NULL OR b.expiry <= $7 THEN excluded.payload ELSE b.payload END,
       payload_size = CASE WHEN $5::TEXT IS NOT NULL OR b.expiry <= $7 THEN excluded.payload_size ELSE b.payload_size END,
       modified = CASE WHEN $9 OR $5::TEXT IS NOT NULL OR $4::INTEGER IS NOT NULL OR b.expiry <= $7 THEN $7 ELSE b.modified END,
       expiry = CASE WHEN $10::BIGINT IS NOT NULL THEN excluded.expiry WHEN b.expiry <= $7 THEN $11 ELSE b.expiry END";

/// The same rules for many records that all carry a payload, in one statement: the
/// payload and `modified` always change; an absent ttl arrives as expiry "never", which a
/// real ttl can never produce.
const UPSERT_MANY: &str = "INSERT INTO bsos AS b (user_id, collection_id, id, sortindex, payload, payload_size, modified, expiry)
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

/// Upserts records at `now`, in one statement when they all carry payloads and distinct ids
/// (what clients send), else one by one so that repeated ids merge in order.
async fn upsert(
    tx: &Transaction<'_>,
    user: UserId,
    coll: i32,
    bsos: &[BsoInput],
    now: SyncTimestamp,
    touch_all: bool,
) -> StoreResult<()> {
    let never = SyncTimestamp::NEVER.as_millis();
    let expiry = |b: &BsoInput| {
        b.ttl
            .map_or(SyncTimestamp::NEVER, |ttl| now.plus_seconds(ttl.into()))
            .as_millis()
    };
    if bsos.len() > 1 && bsos.iter().all(|b| b.payload.is_some()) && unique_ids(bsos) {
        let ids: Vec<&str> = bsos.iter().map(|b| b.id.as_str()).collect();
        let sortindexes: Vec<Option<i32>> = bsos.iter().map(|b| b.sortindex).collect();
        let payloads: Vec<&str> = bsos.iter().map(|b| b.payload.as_deref().unwrap_or_default()).collect();
        let sizes: Vec<i64> = bsos.iter().map(|b| b.payload_len() as i64).collect();
        let expiries: Vec<i64> = bsos.iter().map(expiry).collect();
        run(
            tx,
            UPSERT_MANY,
            &[
                &user,
                &coll,
                &now.as_millis(),
                &ids,
                &sortindexes,
                &payloads,
                &sizes,
                &expiries,
                &never,
            ],
        )
        .await?;
        return Ok(());
    }
    for bso in bsos {
        run(
            tx,
            UPSERT_ONE,
            &[
                &user,
                &coll,
                &bso.id,
                &bso.sortindex,
                &bso.payload,
                &(bso.payload_len() as i64),
                &now.as_millis(),
                &expiry(bso),
                &touch_all,
                &bso.ttl.map(i64::from),
                &never,
            ],
        )
        .await?;
    }
    Ok(())
}

/// Adds records to a batch in one statement (repeated ids, rare, go one by one).
async fn stage(tx: &Transaction<'_>, batch: i64, bsos: &[BsoInput]) -> StoreResult<()> {
    const STAGE: &str = "INSERT INTO batch_items AS i (batch_id, seq, id, sortindex, payload, payload_size, ttl)
         SELECT $1::BIGINT, $2::BIGINT + u.ord, u.id, u.sortindex, u.payload, u.size, u.ttl
         FROM UNNEST($3::TEXT[], $4::INTEGER[], $5::TEXT[], $6::BIGINT[], $7::BIGINT[])
              WITH ORDINALITY AS u(id, sortindex, payload, size, ttl, ord)
         ON CONFLICT (batch_id, id) DO UPDATE SET
           sortindex = COALESCE(excluded.sortindex, i.sortindex),
           payload = COALESCE(excluded.payload, i.payload),
           payload_size = CASE WHEN excluded.payload IS NULL THEN i.payload_size ELSE excluded.payload_size END,
           ttl = COALESCE(excluded.ttl, i.ttl)";
    if bsos.is_empty() {
        return Ok(());
    }
    let mut seq: i64 = row(
        tx,
        "SELECT COALESCE(MAX(seq), 0)::BIGINT FROM batch_items WHERE batch_id = $1",
        &[&batch],
    )
    .await?
    .get(0);
    let groups: Vec<&[BsoInput]> = if unique_ids(bsos) {
        vec![bsos]
    } else {
        bsos.chunks(1).collect()
    };
    for group in groups {
        let ids: Vec<&str> = group.iter().map(|b| b.id.as_str()).collect();
        let sortindexes: Vec<Option<i32>> = group.iter().map(|b| b.sortindex).collect();
        let payloads: Vec<Option<&str>> = group.iter().map(|b| b.payload.as_deref()).collect();
        let sizes: Vec<i64> = group.iter().map(|b| b.payload_len() as i64).collect();
        let ttls: Vec<Option<i64>> = group.iter().map(|b| b.ttl.map(i64::from)).collect();
        run(tx, STAGE, &[&batch, &seq, &ids, &sortindexes, &payloads, &sizes, &ttls]).await?;
        seq += group.len() as i64;
    }
    Ok(())
}

/// Finds a live batch of this bucket and collection (S15-121, S15-122).
async fn live_batch(
    tx: &Transaction<'_>,
    user: UserId,
    coll: i32,
    batch: &str,
    now: SyncTimestamp,
) -> StoreResult<i64> {
    let id: i64 = batch.parse().map_err(|_| StoreError::BatchNotFound)?;
    row_opt(
        tx,
        "SELECT id FROM batches WHERE id = $1 AND user_id = $2 AND collection_id = $3 AND expiry > $4",
        &[&id, &user, &coll, &now.as_millis()],
    )
    .await?
    .map(|r| r.get(0))
    .ok_or(StoreError::BatchNotFound)
}

async fn staged_bytes(tx: &Transaction<'_>, batch: i64) -> StoreResult<u64> {
    let n: i64 = tx
        .query_one(
            "SELECT COALESCE(SUM(payload_size), 0)::BIGINT FROM batch_items WHERE batch_id = $1",
            &[&batch],
        )
        .await?
        .get(0);
    Ok(n.max(0) as u64)
}

async fn delete_batch(tx: &Transaction<'_>, batch: i64) -> StoreResult<()> {
    run(tx, "DELETE FROM batch_items WHERE batch_id = $1", &[&batch]).await?;
    run(tx, "DELETE FROM batches WHERE id = $1", &[&batch]).await?;
    Ok(())
}

fn bso_from_row(r: &tokio_postgres::Row) -> Bso {
    Bso {
        id: r.get(0),
        modified: ts(r.get(1)),
        sortindex: r.get(2),
        payload: r.get(3),
    }
}

/// Builds and runs the query of `GET /storage/{c}` (§7.2–7.4), as the SQLite backend does.
async fn query_page(
    tx: &Transaction<'_>,
    user: UserId,
    coll: i32,
    q: &CollectionQuery,
    now: SyncTimestamp,
) -> StoreResult<(Vec<Bso>, Option<String>)> {
    let mut args: Vec<Param> = vec![Box::new(user), Box::new(coll), Box::new(now.as_millis())];
    let mut sql = String::from("SELECT id, modified, sortindex, ");
    sql.push_str(if q.full { "payload" } else { "''::TEXT" });
    sql.push_str(" FROM bsos WHERE user_id = $1 AND collection_id = $2 AND expiry > $3");
    let arg = |args: &mut Vec<Param>, v: Param| -> String {
        args.push(v);
        format!("${}", args.len())
    };
    if let Some(ids) = &q.ids {
        if ids.is_empty() {
            return Ok((Vec::new(), None));
        }
        let p = arg(&mut args, Box::new(ids.clone()));
        sql.push_str(&format!(" AND id = ANY({p})"));
    }
    if let Some(newer) = q.newer {
        let p = arg(&mut args, Box::new(newer.as_millis()));
        sql.push_str(&format!(" AND modified > {p}"));
    }
    if let Some(older) = q.older {
        let p = arg(&mut args, Box::new(older.as_millis()));
        sql.push_str(&format!(" AND modified < {p}"));
    }
    let mut skip: u64 = 0;
    match &q.offset {
        None => {}
        Some(Offset::Skip(n)) => skip = *n,
        Some(Offset::Legacy { ms, skip: n }) => {
            skip = *n;
            match q.sort {
                Sort::Newest => {
                    let p = arg(&mut args, Box::new(*ms));
                    sql.push_str(&format!(" AND modified <= {p}"));
                }
                Sort::Oldest => {
                    let p = arg(&mut args, Box::new(*ms));
                    sql.push_str(&format!(" AND modified >= {p}"));
                }
                Sort::Index => {}
            }
        }
        Some(Offset::After(SortKey::Modified { ms, id })) => {
            let m = arg(&mut args, Box::new(*ms));
            let i = arg(&mut args, Box::new(id.clone()));
            sql.push_str(&if q.sort == Sort::Oldest {
                format!(" AND (modified > {m} OR (modified = {m} AND id > {i}))")
            } else {
                format!(" AND (modified < {m} OR (modified = {m} AND id < {i}))")
            });
        }
        Some(Offset::After(SortKey::Index { sortindex: Some(s), id })) => {
            let s = arg(&mut args, Box::new(*s));
            let i = arg(&mut args, Box::new(id.clone()));
            sql.push_str(&format!(
                " AND (sortindex < {s} OR (sortindex = {s} AND id < {i}) OR sortindex IS NULL)"
            ));
        }
        Some(Offset::After(SortKey::Index { sortindex: None, id })) => {
            let i = arg(&mut args, Box::new(id.clone()));
            sql.push_str(&format!(" AND sortindex IS NULL AND id < {i}"));
        }
    }
    sql.push_str(crate::order_by(q.sort));
    if let Some(limit) = q.limit {
        // One row more than asked tells whether another page exists.
        let p = arg(&mut args, Box::new(limit as i64 + 1));
        sql.push_str(&format!(" LIMIT {p}"));
    }
    if skip > 0 {
        let p = arg(&mut args, Box::new(skip.min(i64::MAX as u64) as i64));
        sql.push_str(&format!(" OFFSET {p}"));
    }
    let rows = rows(tx, &sql, &refs(&args)).await?;
    let bsos: Vec<Bso> = rows.iter().map(bso_from_row).collect();
    Ok(crate::finish_page(bsos, q))
}

#[async_trait]
impl Store for PgStore {
    async fn storage_timestamp(&self, user: UserId) -> StoreResult<SyncTimestamp> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                &c.prepare_cached("SELECT modified FROM user_storage WHERE user_id = $1")
                    .await?,
                &[&user],
            )
            .await?;
        Ok(ts(row.map_or(0, |r| r.get(0))))
    }

    async fn collection_timestamps(
        &self,
        user: UserId,
        pre: Precondition,
    ) -> StoreResult<(SyncTimestamp, Vec<(String, SyncTimestamp)>)> {
        // One statement is one snapshot: the storage time and the collections agree.
        let c = self.client().await?;
        let rows = c
            .query(
                &c.prepare_cached(
                    "SELECT s.modified, c.name, uc.modified FROM user_storage s
                     LEFT JOIN user_collections uc ON uc.user_id = s.user_id
                     LEFT JOIN collections c ON c.id = uc.collection_id
                     WHERE s.user_id = $1",
                )
                .await?,
                &[&user],
            )
            .await?;
        let storage = ts(rows.first().map_or(0, |r| r.get(0)));
        pre.check(storage)?;
        Ok((
            storage,
            rows.iter()
                .filter_map(|r| Some((r.get::<_, Option<String>>(1)?, ts(r.get::<_, Option<i64>>(2)?))))
                .collect(),
        ))
    }

    async fn collection_usage(
        &self,
        user: UserId,
        pre: Precondition,
    ) -> StoreResult<(SyncTimestamp, Vec<CollectionUsage>)> {
        let mut c = self.client().await?;
        let tx = self.snapshot(&mut c).await?;
        let storage = storage_ts(&tx, user).await?;
        pre.check(storage)?;
        let rows = tx
            .query(
                "SELECT c.name, COUNT(*)::BIGINT, SUM(b.payload_size)::BIGINT FROM bsos b
                 JOIN collections c ON c.id = b.collection_id
                 WHERE b.user_id = $1 AND b.expiry > $2 GROUP BY c.name",
                &[&user, &SyncTimestamp::now().as_millis()],
            )
            .await?;
        tx.commit().await?;
        Ok((
            storage,
            rows.iter()
                .map(|r| CollectionUsage {
                    collection: r.get(0),
                    count: r.get::<_, i64>(1) as u64,
                    bytes: r.get::<_, i64>(2) as u64,
                })
                .collect(),
        ))
    }

    async fn get_collection(
        &self,
        user: UserId,
        collection: &str,
        query: &CollectionQuery,
        pre: Precondition,
    ) -> StoreResult<Page> {
        let empty = |modified| Page {
            modified,
            bsos: Vec::new(),
            next_offset: None,
        };
        let Some(coll) = self.find_collection(collection).await? else {
            pre.check(SyncTimestamp::ZERO)?;
            return Ok(empty(SyncTimestamp::ZERO));
        };
        let mut c = self.client().await?;
        let tx = self.snapshot(&mut c).await?;
        // Both queries go out at once on the connection (pipelined) inside the snapshot.
        let (modified, (bsos, next_offset)) = tokio::try_join!(
            collection_ts(&tx, user, coll),
            query_page(&tx, user, coll, query, SyncTimestamp::now())
        )?;
        let modified = modified.unwrap_or_default();
        pre.check(modified)?;
        if modified == SyncTimestamp::ZERO {
            return Ok(empty(modified));
        }
        tx.commit().await?;
        Ok(Page {
            modified,
            bsos,
            next_offset,
        })
    }

    async fn get_bso(&self, user: UserId, collection: &str, id: &str, pre: Precondition) -> StoreResult<Bso> {
        let Some(coll) = self.find_collection(collection).await? else {
            pre.check(SyncTimestamp::ZERO)?;
            return Err(StoreError::NotFound);
        };
        let c = self.client().await?;
        let bso = c
            .query_opt(
                &c.prepare_cached(
                    "SELECT id, modified, sortindex, payload FROM bsos
                     WHERE user_id = $1 AND collection_id = $2 AND id = $3 AND expiry > $4",
                )
                .await?,
                &[&user, &coll, &id, &SyncTimestamp::now().as_millis()],
            )
            .await?
            .map(|r| bso_from_row(&r));
        pre.check(bso.as_ref().map_or(SyncTimestamp::ZERO, |b| b.modified))?;
        bso.ok_or(StoreError::NotFound)
    }

    async fn put_bso(
        &self,
        user: UserId,
        collection: &str,
        bso: BsoInput,
        pre: Precondition,
        limits: WriteLimits,
    ) -> StoreResult<SyncTimestamp> {
        let coll = self.ensure_collection(collection).await?;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let now = lock_bucket(&tx, user).await?;
        let current: Option<i64> = tx
            .query_opt(
                "SELECT modified FROM bsos WHERE user_id = $1 AND collection_id = $2 AND id = $3",
                &[&user, &coll, &bso.id],
            )
            .await?
            .map(|r| r.get(0));
        pre.check(ts(current.unwrap_or(0)))?;
        check_quota(&tx, user, now, limits, 0).await?;
        upsert(&tx, user, coll, std::slice::from_ref(&bso), now, false).await?;
        touch(&tx, user, coll, now).await?;
        tx.commit().await?;
        Ok(now)
    }

    async fn post_bsos(
        &self,
        user: UserId,
        collection: &str,
        bsos: Vec<BsoInput>,
        pre: Precondition,
        limits: WriteLimits,
    ) -> StoreResult<SyncTimestamp> {
        let coll = self.ensure_collection(collection).await?;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let now = lock_bucket(&tx, user).await?;
        if pre != Precondition::None {
            pre.check(collection_ts(&tx, user, coll).await?.unwrap_or_default())?;
        }
        check_quota(&tx, user, now, limits, 0).await?;
        upsert(&tx, user, coll, &bsos, now, false).await?;
        touch(&tx, user, coll, now).await?;
        tx.commit().await?;
        Ok(now)
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
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let now = lock_bucket(&tx, user).await?;
        let live: Option<i64> = tx
            .query_opt(
                "SELECT modified FROM bsos WHERE user_id = $1 AND collection_id = $2 AND id = $3 AND expiry > $4",
                &[&user, &coll, &id, &now.as_millis()],
            )
            .await?
            .map(|r| r.get(0));
        pre.check(ts(live.unwrap_or(0)))?;
        if live.is_none() {
            return Err(StoreError::NotFound);
        }
        run(
            &tx,
            "DELETE FROM bsos WHERE user_id = $1 AND collection_id = $2 AND id = $3",
            &[&user, &coll, &id],
        )
        .await?;
        touch(&tx, user, coll, now).await?;
        tx.commit().await?;
        Ok(now)
    }

    async fn delete_bsos(
        &self,
        user: UserId,
        collection: &str,
        ids: Vec<String>,
        pre: Precondition,
    ) -> StoreResult<SyncTimestamp> {
        let coll = self.ensure_collection(collection).await?;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let now = lock_bucket(&tx, user).await?;
        pre.check(collection_ts(&tx, user, coll).await?.unwrap_or_default())?;
        run(
            &tx,
            "DELETE FROM bsos WHERE user_id = $1 AND collection_id = $2 AND id = ANY($3)",
            &[&user, &coll, &ids],
        )
        .await?;
        touch(&tx, user, coll, now).await?;
        tx.commit().await?;
        Ok(now)
    }

    async fn delete_collection(
        &self,
        user: UserId,
        collection: &str,
        pre: Precondition,
    ) -> StoreResult<DeletedCollection> {
        let coll = self.find_collection(collection).await?;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let now = lock_bucket(&tx, user).await?;
        let previous = match coll {
            Some(c) => collection_ts(&tx, user, c).await?,
            None => None,
        };
        pre.check(previous.unwrap_or_default())?;
        let (Some(coll), Some(previous)) = (coll, previous) else {
            // S15-143: a collection that does not exist: nothing changes.
            return Ok(DeletedCollection {
                previous: SyncTimestamp::ZERO,
                storage: storage_ts(&tx, user).await?,
            });
        };
        for sql in [
            "DELETE FROM bsos WHERE user_id = $1 AND collection_id = $2",
            "DELETE FROM user_collections WHERE user_id = $1 AND collection_id = $2",
            "DELETE FROM batch_items WHERE batch_id IN (SELECT id FROM batches WHERE user_id = $1 AND collection_id = $2)",
            "DELETE FROM batches WHERE user_id = $1 AND collection_id = $2",
        ] {
            run(&tx, sql, &[&user, &coll]).await?;
        }
        // The storage timestamp is the deleted-collection marker of S15-142.
        touch_storage(&tx, user, now).await?;
        tx.commit().await?;
        Ok(DeletedCollection { previous, storage: now })
    }

    async fn delete_storage(&self, user: UserId, pre: Precondition) -> StoreResult<SyncTimestamp> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        lock_bucket(&tx, user).await?;
        let previous = storage_ts(&tx, user).await?;
        pre.check(previous)?;
        delete_bucket(&tx, user).await?;
        tx.commit().await?;
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
        let coll = self.ensure_collection(collection).await?;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let now = lock_bucket(&tx, user).await?;
        let modified = collection_ts(&tx, user, coll).await?.unwrap_or_default();
        pre.check(modified)?;
        check_quota(&tx, user, now, limits, total_payload(&bsos)).await?;
        let batch: i64 = tx
            .query_one(
                "INSERT INTO batches (user_id, collection_id, expiry) VALUES ($1, $2, $3) RETURNING id",
                &[&user, &coll, &(now.as_millis() + BATCH_LIFETIME_MS)],
            )
            .await?
            .get(0);
        stage(&tx, batch, &bsos).await?;
        tx.commit().await?;
        Ok((batch.to_string(), modified))
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
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let now = lock_bucket(&tx, user).await?;
        let modified = collection_ts(&tx, user, coll).await?.unwrap_or_default();
        pre.check(modified)?;
        let id = live_batch(&tx, user, coll, batch, now).await?;
        check_quota(
            &tx,
            user,
            now,
            limits,
            staged_bytes(&tx, id).await? + total_payload(&bsos),
        )
        .await?;
        stage(&tx, id, &bsos).await?;
        tx.commit().await?;
        Ok(modified)
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
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let now = lock_bucket(&tx, user).await?;
        pre.check(collection_ts(&tx, user, coll).await?.unwrap_or_default())?;
        let id = live_batch(&tx, user, coll, batch, now).await?;
        check_quota(
            &tx,
            user,
            now,
            limits,
            staged_bytes(&tx, id).await? + total_payload(&bsos),
        )
        .await?;
        // The commit body overrides staged fields of the same id (S15-125).
        stage(&tx, id, &bsos).await?;
        let staged: Vec<BsoInput> = tx
            .query(
                "SELECT id, sortindex, payload, ttl FROM batch_items WHERE batch_id = $1 ORDER BY seq",
                &[&id],
            )
            .await?
            .iter()
            .map(|r| BsoInput {
                id: r.get(0),
                sortindex: r.get(1),
                payload: r.get(2),
                ttl: r.get::<_, Option<i64>>(3).map(|t| t.clamp(0, u32::MAX as i64) as u32),
            })
            .collect();
        upsert(&tx, user, coll, &staged, now, true).await?;
        delete_batch(&tx, id).await?;
        touch(&tx, user, coll, now).await?;
        tx.commit().await?;
        Ok(now)
    }

    async fn purge_expired(&self) -> StoreResult<PurgeReport> {
        // Small chunks keep each transaction and its row locks short. Space is reclaimed by
        // PostgreSQL's autovacuum.
        let mut report = PurgeReport::default();
        let c = self.client().await?;
        loop {
            let now = SyncTimestamp::now().as_millis();
            let bsos = c
                .execute(
                    "DELETE FROM bsos WHERE ctid = ANY(ARRAY(
                       SELECT ctid FROM bsos WHERE expiry < 9223372036854775800 AND expiry <= $1 LIMIT 1000))",
                    &[&now],
                )
                .await?;
            let expired: Vec<i64> = c
                .query("SELECT id FROM batches WHERE expiry <= $1 LIMIT 100", &[&now])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if !expired.is_empty() {
                c.execute("DELETE FROM batch_items WHERE batch_id = ANY($1)", &[&expired])
                    .await?;
                c.execute("DELETE FROM batches WHERE id = ANY($1)", &[&expired]).await?;
            }
            report.bsos += bsos;
            report.batches += expired.len() as u64;
            if bsos < 1000 && expired.len() < 100 {
                break;
            }
        }
        Ok(report)
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        let c = self.client().await?;
        let row = c
            .query_one(
                "SELECT (SELECT COUNT(*) FROM user_storage)::BIGINT,
                        (SELECT COUNT(*) FROM batches WHERE expiry > $1)::BIGINT,
                        pg_database_size(current_database())::BIGINT",
                &[&SyncTimestamp::now().as_millis()],
            )
            .await?;
        Ok(StoreStats {
            users: row.get::<_, i64>(0) as u64,
            active_batches: row.get::<_, i64>(1) as u64,
            database_bytes: row.get::<_, i64>(2) as u64,
        })
    }

    async fn check(&self) -> StoreResult<()> {
        let c = self.client().await?;
        c.query_one("SELECT 1", &[]).await?;
        Ok(())
    }
}
