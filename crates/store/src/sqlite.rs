//! The embedded SQLite backend: one writer thread owning the only read-write connection
//! (so every write is serialised and gets a strictly later timestamp per bucket), a small
//! pool of read-only connections, WAL.
//!
//! The writer commits in groups: it takes every write waiting in its queue, runs each in
//! its own savepoint inside one transaction, and answers them all after a single commit.
//! Each request stays atomic (a failed one is rolled back to its savepoint), every
//! acknowledged write is on disk (one fsync covers the group), and under load the fsync
//! cost is shared instead of queued.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior};
use syncstead_proto::query::{CollectionQuery, Offset, Sort, SortKey};
use syncstead_proto::{Bso, BsoInput, SyncTimestamp};
use tokio::sync::Semaphore;

use crate::{
    CollectionUsage, DeletedCollection, Page, Precondition, PurgeReport, Store, StoreError, StoreResult, StoreStats,
    UserId, WriteLimits, BATCH_LIFETIME_MS,
};

mod accounts;
mod legacy;
mod tokens;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_storage.sql")),
    (2, include_str!("../migrations/sqlite/0002_tokenserver.sql")),
    (3, include_str!("../migrations/sqlite/0003_accounts.sql")),
];

/// How hard SQLite pushes each commit to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// fsync on every commit: acknowledged writes survive power loss (the default).
    #[default]
    Full,
    /// fsync at checkpoints only: survives a process crash, may lose the last commits on power loss.
    Normal,
}

#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub path: PathBuf,
    pub synchronous: Synchronous,
    pub readers: usize,
}

impl SqliteOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteOptions {
            path: path.into(),
            synchronous: Synchronous::Full,
            readers: 4,
        }
    }
}

/// Collection names and ids, cached: the table only ever grows.
#[derive(Default)]
struct Collections {
    by_name: HashMap<String, i64>,
}

pub struct SqliteStore {
    path: PathBuf,
    writer: std::sync::mpsc::Sender<Queued>,
    readers: Arc<Mutex<Vec<Connection>>>,
    reader_slots: Arc<Semaphore>,
    collections: Arc<RwLock<Collections>>,
    /// Storage timestamps of buckets written since start, kept by the writer thread right
    /// after each commit (before anyone hears of the write), so polling
    /// `info/collections` with X-If-Modified-Since needs no database round trip.
    storage_times: Arc<Mutex<HashMap<UserId, SyncTimestamp>>>,
    /// Dropping the store drops this and so stops the checkpoint thread.
    _checkpoint_stop: std::sync::mpsc::Sender<()>,
}

const MAX_CACHED_TIMES: usize = 200_000;

/// How many clock ticks (10 ms) a write waits for its bucket before answering 503.
const MAX_TICK_RETRIES: usize = 32;

fn open_connection(path: &Path, read_only: bool, sync: Synchronous) -> StoreResult<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(64);
    if !read_only {
        // auto_vacuum only takes effect on a new database, before the first table.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match sync {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        // Savepoints (one per request in a group commit) journal pages; keep that in memory.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // The checkpoint thread keeps the log short; this is only the backstop if it lags.
        conn.pragma_update(None, "wal_autocheckpoint", 16_384)?;
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    }
    // A reader's page cache is thrown away whenever another connection commits, and
    // dropping a large cache costs more than re-reading pages from the OS cache: keep
    // readers' caches small, the writer's (which stays valid) larger. Sizes in KiB.
    conn.pragma_update(None, "cache_size", if read_only { -1024 } else { -8192 })?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > latest {
        return Err(StoreError::Database(format!(
            "database schema version {current} is newer than this release supports ({latest}); upgrade syncstead"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        tracing::info!(version, "applied database migration");
    }
    Ok(())
}

/// A write job runs inside the group transaction and returns what to do once the group
/// has committed (or failed to: then with the commit error).
type Job = Box<dyn FnOnce(&Transaction) -> Completion + Send>;
type Completion = Box<dyn FnOnce(Option<&str>) + Send>;

/// Most jobs one commit covers, and roughly the most payload bytes: together they bound how
/// long a request can wait behind a group that is already running.
const MAX_GROUP: usize = 64;
const GROUP_BYTES: usize = 1 << 20;
/// The estimate for jobs whose size is unknown up front (batch commits, bulk deletes).
const HEAVY: usize = GROUP_BYTES / 4;

/// A job with an estimate of the payload bytes it writes.
struct Queued {
    bytes: usize,
    job: Job,
}

fn writer_thread(mut conn: Connection, jobs: std::sync::mpsc::Receiver<Queued>) {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    while let Ok(first) = jobs.recv() {
        let mut bytes = first.bytes;
        let mut group = vec![first.job];
        while group.len() < MAX_GROUP && bytes < GROUP_BYTES {
            match jobs.try_recv() {
                Ok(q) => {
                    bytes += q.bytes;
                    group.push(q.job);
                }
                Err(_) => break,
            }
        }
        let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                tracing::error!(error = %e, "cannot begin a write transaction");
                // Each dropped job answers its caller with an error.
                continue;
            }
        };
        let mut done = Vec::with_capacity(group.len());
        let mut panicked = false;
        for job in group {
            match catch_unwind(AssertUnwindSafe(|| job(&tx))) {
                Ok(completion) => done.push(completion),
                Err(_) => panicked = true,
            }
        }
        // A panic may have left a savepoint half done: then nothing of the group is kept.
        let failure = if panicked {
            drop(tx);
            Some("a write failed unexpectedly; the group was rolled back".to_string())
        } else {
            tx.commit().err().map(|e| e.to_string())
        };
        if let Some(e) = &failure {
            tracing::error!(error = %e, "group commit failed");
        }
        for d in done {
            d(failure.as_deref());
        }
    }
}

/// Copies the write-ahead log into the database twice a second, on its own connection, so
/// the writer never pays for checkpoints inside a request. PASSIVE never blocks the writer
/// or readers.
fn checkpoint_thread(conn: Connection, stop: std::sync::mpsc::Receiver<()>) {
    use std::sync::mpsc::RecvTimeoutError;
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(std::time::Duration::from_millis(500)) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "checkpoint failed");
        }
    }
}

fn ts(ms: i64) -> SyncTimestamp {
    SyncTimestamp::from_millis(ms)
}

fn join_err(e: tokio::task::JoinError) -> StoreError {
    StoreError::Database(format!("store task failed: {e}"))
}

impl SqliteStore {
    /// Opens (creating if needed) the database and applies pending migrations.
    pub async fn open(options: SqliteOptions) -> StoreResult<Self> {
        tokio::task::spawn_blocking(move || Self::open_blocking(options))
            .await
            .map_err(join_err)?
    }

    fn open_blocking(options: SqliteOptions) -> StoreResult<Self> {
        let mut writer = open_connection(&options.path, false, options.synchronous)?;
        migrate(&mut writer)?;
        let mut collections = Collections::default();
        {
            let mut stmt = writer.prepare("SELECT id, name FROM collections")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (id, name) = row?;
                collections.by_name.insert(name, id);
            }
        }
        let readers = options.readers.max(1);
        let (sender, jobs) = std::sync::mpsc::channel::<Queued>();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_thread(writer, jobs))
            .map_err(|e| StoreError::Database(format!("cannot start the writer thread: {e}")))?;
        let (checkpoint_stop, checkpoint_rx) = std::sync::mpsc::channel::<()>();
        let checkpoint_conn = open_connection(&options.path, false, options.synchronous)?;
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_thread(checkpoint_conn, checkpoint_rx))
            .map_err(|e| StoreError::Database(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(SqliteStore {
            path: options.path,
            writer: sender,
            _checkpoint_stop: checkpoint_stop,
            readers: Arc::new(Mutex::new(Vec::with_capacity(readers))),
            reader_slots: Arc::new(Semaphore::new(readers)),
            collections: Arc::new(RwLock::new(collections)),
            storage_times: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    fn cached_storage_time(&self, user: UserId) -> Option<SyncTimestamp> {
        self.storage_times
            .lock()
            .expect("storage times lock")
            .get(&user)
            .copied()
    }

    fn collection_id(&self, name: &str) -> Option<i64> {
        self.collections
            .read()
            .expect("collections lock")
            .by_name
            .get(name)
            .copied()
    }

    /// Runs `f` on a pooled read-only connection inside one read transaction (a snapshot).
    async fn read<R, F>(&self, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Transaction) -> StoreResult<R> + Send + 'static,
    {
        let _permit = self
            .reader_slots
            .acquire()
            .await
            .map_err(|_| StoreError::Database("store closed".into()))?;
        let pool = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.lock().expect("reader pool lock").pop();
            let mut conn = match conn {
                Some(c) => c,
                None => open_connection(&path, true, Synchronous::Full)?,
            };
            let result = (|| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
                let r = f(&tx)?;
                tx.finish()?;
                Ok(r)
            })();
            pool.lock().expect("reader pool lock").push(conn);
            result
        })
        .await
        .map_err(join_err)?
    }

    /// Runs `f` on the writer, in its own savepoint of the current group transaction.
    /// The answer arrives after the group has committed.
    async fn submit<R, F>(&self, user: Option<UserId>, bytes: usize, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Transaction) -> StoreResult<R> + Send + 'static,
    {
        let (done, answer) = tokio::sync::oneshot::channel::<StoreResult<R>>();
        let times = self.storage_times.clone();
        let job: Job = Box::new(move |tx| {
            let mut new_time = None;
            let result = (|| {
                tx.execute_batch("SAVEPOINT job")?;
                let r = f(tx);
                match &r {
                    Ok(_) => {
                        if let Some(user) = user {
                            new_time = Some((user, storage_ts(tx, user)?));
                        }
                        tx.execute_batch("RELEASE job")?
                    }
                    Err(_) => tx.execute_batch("ROLLBACK TO job; RELEASE job")?,
                }
                r
            })();
            Box::new(move |commit_error| {
                let result = match (result, commit_error) {
                    (_, Some(e)) => Err(StoreError::Database(format!("commit failed: {e}"))),
                    (r, _) => r,
                };
                if let (Ok(_), Some((user, t))) = (&result, new_time) {
                    let mut times = times.lock().expect("storage times lock");
                    if times.len() >= MAX_CACHED_TIMES {
                        times.clear();
                    }
                    times.insert(user, t);
                }
                let _ = done.send(result);
            })
        });
        self.writer
            .send(Queued { bytes, job })
            .map_err(|_| StoreError::Database("the writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Database("the writer dropped a job".into()))?
    }

    /// Runs a write at a fresh time T. A conflict (another write of the bucket already
    /// used T) is retried at the next tick, so many devices of one user writing at once
    /// are served in turn, as the PostgreSQL backend's bucket lock serves them; only a
    /// bucket busy for longer than [`MAX_TICK_RETRIES`] ticks answers 503 (S15-043).
    async fn write<R, F>(&self, user: Option<UserId>, bytes: usize, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: Fn(&Transaction, SyncTimestamp) -> StoreResult<R> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        for attempt in 0..MAX_TICK_RETRIES {
            let f = f.clone();
            match self.submit(user, bytes, move |tx| f(tx, SyncTimestamp::now())).await {
                Err(StoreError::Conflict) if attempt + 1 < MAX_TICK_RETRIES => {
                    // Wait for the clock to reach the next centisecond, then try once more.
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default();
                    let into_tick = (now.as_micros() % 10_000) as u64;
                    tokio::time::sleep(std::time::Duration::from_micros(10_000 - into_tick + 200)).await;
                }
                other => return other,
            }
        }
        Err(StoreError::Conflict)
    }

    /// The id of a collection, registering a new custom name if needed. The registry only
    /// grows, so a name registered by a write that later fails is harmless.
    async fn ensure_collection(&self, name: &str) -> StoreResult<i64> {
        if let Some(id) = self.collection_id(name) {
            return Ok(id);
        }
        let owned = name.to_string();
        let id = self
            .submit(None, 0, move |tx| {
                if let Some(id) = tx
                    .prepare_cached("SELECT id FROM collections WHERE name = ?1")?
                    .query_row([&owned], |r| r.get(0))
                    .optional()?
                {
                    return Ok(id);
                }
                tx.execute(
                    "INSERT INTO collections (id, name) SELECT MAX(COALESCE(MAX(id), 0) + 1, ?2), ?1 FROM collections",
                    params![owned, syncstead_proto::names::FIRST_CUSTOM_COLLECTION_ID],
                )?;
                Ok(tx.last_insert_rowid())
            })
            .await?;
        self.collections
            .write()
            .expect("collections lock")
            .by_name
            .insert(name.to_string(), id);
        Ok(id)
    }

    /// Looks a collection up, also in the database: another process (an admin command)
    /// may have registered it since this one started.
    async fn find_collection(&self, name: &str) -> StoreResult<Option<i64>> {
        if let Some(id) = self.collection_id(name) {
            return Ok(Some(id));
        }
        let owned = name.to_string();
        let id: Option<i64> = self
            .read(move |tx| {
                Ok(tx
                    .query_row("SELECT id FROM collections WHERE name = ?1", [&owned], |r| r.get(0))
                    .optional()?)
            })
            .await?;
        if let Some(id) = id {
            self.collections
                .write()
                .expect("collections lock")
                .by_name
                .insert(name.to_string(), id);
        }
        Ok(id)
    }
}

// ---- helpers that run inside a transaction -------------------------------------------

fn storage_ts(tx: &Transaction, user: UserId) -> StoreResult<SyncTimestamp> {
    let ms: Option<i64> = tx
        .prepare_cached("SELECT modified FROM user_storage WHERE user_id = ?1")?
        .query_row([user], |r| r.get(0))
        .optional()?;
    Ok(ts(ms.unwrap_or(0)))
}

fn collection_ts(tx: &Transaction, user: UserId, coll: i64) -> StoreResult<Option<SyncTimestamp>> {
    let ms: Option<i64> = tx
        .prepare_cached("SELECT modified FROM user_collections WHERE user_id = ?1 AND collection_id = ?2")?
        .query_row(params![user, coll], |r| r.get(0))
        .optional()?;
    Ok(ms.map(ts))
}

/// S15-043: the write time must be later than everything the bucket has seen.
fn ensure_later(tx: &Transaction, user: UserId, now: SyncTimestamp) -> StoreResult<()> {
    if storage_ts(tx, user)? >= now {
        return Err(StoreError::Conflict);
    }
    Ok(())
}

fn touch(tx: &Transaction, user: UserId, coll: i64, now: SyncTimestamp) -> StoreResult<()> {
    tx.prepare_cached(
        "INSERT INTO user_collections (user_id, collection_id, modified) VALUES (?1, ?2, ?3)
         ON CONFLICT (user_id, collection_id) DO UPDATE SET modified = excluded.modified",
    )?
    .execute(params![user, coll, now.as_millis()])?;
    touch_storage(tx, user, now)
}

fn touch_storage(tx: &Transaction, user: UserId, now: SyncTimestamp) -> StoreResult<()> {
    tx.prepare_cached(
        "INSERT INTO user_storage (user_id, modified) VALUES (?1, ?2)
         ON CONFLICT (user_id) DO UPDATE SET modified = excluded.modified",
    )?
    .execute(params![user, now.as_millis()])?;
    Ok(())
}

fn total_payload(bsos: &[BsoInput]) -> u64 {
    bsos.iter().map(|b| b.payload_len() as u64).sum()
}

/// Deletes everything a bucket holds.
fn delete_bucket(tx: &Transaction, user: UserId) -> StoreResult<()> {
    tx.prepare_cached("DELETE FROM bsos WHERE user_id = ?1")?
        .execute([user])?;
    tx.prepare_cached("DELETE FROM user_collections WHERE user_id = ?1")?
        .execute([user])?;
    tx.prepare_cached("DELETE FROM batch_items WHERE batch_id IN (SELECT id FROM batches WHERE user_id = ?1)")?
        .execute([user])?;
    tx.prepare_cached("DELETE FROM batches WHERE user_id = ?1")?
        .execute([user])?;
    tx.prepare_cached("DELETE FROM user_storage WHERE user_id = ?1")?
        .execute([user])?;
    Ok(())
}

fn usage_bytes(tx: &Transaction, user: UserId, now: SyncTimestamp) -> StoreResult<u64> {
    let bytes: i64 = tx
        .prepare_cached("SELECT COALESCE(SUM(payload_size), 0) FROM bsos WHERE user_id = ?1 AND expiry > ?2")?
        .query_row(params![user, now.as_millis()], |r| r.get(0))?;
    Ok(bytes.max(0) as u64)
}

/// S15-170: checked before the write, so one write may overshoot. `staged` counts the
/// payload bytes a batch already holds.
fn check_quota(
    tx: &Transaction,
    user: UserId,
    now: SyncTimestamp,
    limits: WriteLimits,
    staged: u64,
) -> StoreResult<()> {
    if let Some(quota) = limits.quota_bytes {
        if usage_bytes(tx, user, now)? + staged >= quota {
            return Err(StoreError::OverQuota);
        }
    }
    Ok(())
}

/// Upserts one record with PUT semantics (S15-093, S15-094, S15-047). With `touch_all`
/// (batch commit) every record gets `modified = now`.
fn upsert(
    tx: &Transaction,
    user: UserId,
    coll: i64,
    bso: &BsoInput,
    now: SyncTimestamp,
    touch_all: bool,
) -> StoreResult<()> {
    let expiry = bso.ttl.map_or(SyncTimestamp::NEVER, |ttl| now.plus_seconds(ttl.into()));
    tx.prepare_cached(
        "INSERT INTO bsos (user_id, collection_id, id, sortindex, payload, payload_size, modified, expiry)
         VALUES (?1, ?2, ?3, ?4, COALESCE(?5, ''), ?6, ?7, ?8)
         ON CONFLICT (user_id, collection_id, id) DO UPDATE SET
           sortindex = CASE WHEN bsos.expiry <= ?7 THEN excluded.sortindex ELSE COALESCE(?4, bsos.sortindex) END,
           payload = CASE WHEN ?5 IS NOT NULL OR bsos.expiry <= ?7 THEN excluded.payload ELSE bsos.payload END,
           payload_size = CASE WHEN ?5 IS NOT NULL OR bsos.expiry <= ?7 THEN excluded.payload_size ELSE bsos.payload_size END,
           modified = CASE WHEN ?9 OR ?5 IS NOT NULL OR ?4 IS NOT NULL OR bsos.expiry <= ?7 THEN ?7 ELSE bsos.modified END,
           expiry = CASE WHEN ?10 IS NOT NULL THEN excluded.expiry WHEN bsos.expiry <= ?7 THEN ?11 ELSE bsos.expiry END",
    )?
    .execute(params![
        user,
        coll,
        bso.id,
        bso.sortindex,
        bso.payload,
        bso.payload_len() as i64,
        now.as_millis(),
        expiry.as_millis(),
        touch_all,
        bso.ttl,
        SyncTimestamp::NEVER.as_millis(),
    ])?;
    Ok(())
}

fn stage(tx: &Transaction, batch: i64, bsos: &[BsoInput]) -> StoreResult<()> {
    let mut seq: i64 = tx
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM batch_items WHERE batch_id = ?1")?
        .query_row([batch], |r| r.get(0))?;
    let mut stmt = tx.prepare_cached(
        "INSERT INTO batch_items (batch_id, seq, id, sortindex, payload, payload_size, ttl)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (batch_id, id) DO UPDATE SET
           sortindex = COALESCE(excluded.sortindex, batch_items.sortindex),
           payload = COALESCE(excluded.payload, batch_items.payload),
           payload_size = CASE WHEN excluded.payload IS NULL THEN batch_items.payload_size ELSE excluded.payload_size END,
           ttl = COALESCE(excluded.ttl, batch_items.ttl)",
    )?;
    for bso in bsos {
        seq += 1;
        stmt.execute(params![
            batch,
            seq,
            bso.id,
            bso.sortindex,
            bso.payload,
            bso.payload_len() as i64,
            bso.ttl
        ])?;
    }
    Ok(())
}

/// Finds a live batch of this bucket and collection (S15-121, S15-122).
fn live_batch(tx: &Transaction, user: UserId, coll: i64, batch: &str, now: SyncTimestamp) -> StoreResult<i64> {
    let id: i64 = batch.parse().map_err(|_| StoreError::BatchNotFound)?;
    let found: Option<i64> = tx
        .prepare_cached("SELECT id FROM batches WHERE id = ?1 AND user_id = ?2 AND collection_id = ?3 AND expiry > ?4")?
        .query_row(params![id, user, coll, now.as_millis()], |r| r.get(0))
        .optional()?;
    found.ok_or(StoreError::BatchNotFound)
}

fn staged_bytes(tx: &Transaction, batch: i64) -> StoreResult<u64> {
    let n: i64 = tx
        .prepare_cached("SELECT COALESCE(SUM(payload_size), 0) FROM batch_items WHERE batch_id = ?1")?
        .query_row([batch], |r| r.get(0))?;
    Ok(n.max(0) as u64)
}

fn delete_batch(tx: &Transaction, batch: i64) -> StoreResult<()> {
    tx.prepare_cached("DELETE FROM batch_items WHERE batch_id = ?1")?
        .execute([batch])?;
    tx.prepare_cached("DELETE FROM batches WHERE id = ?1")?
        .execute([batch])?;
    Ok(())
}

fn bso_from_row(r: &rusqlite::Row) -> rusqlite::Result<Bso> {
    Ok(Bso {
        id: r.get(0)?,
        modified: ts(r.get(1)?),
        sortindex: r.get(2)?,
        payload: r.get(3)?,
    })
}

/// Builds and runs the query of `GET /storage/{c}` (§7.2–7.4).
fn query_page(
    tx: &Transaction,
    user: UserId,
    coll: i64,
    q: &CollectionQuery,
    now: SyncTimestamp,
) -> StoreResult<(Vec<Bso>, Option<String>)> {
    use rusqlite::types::Value;
    let mut sql = String::from("SELECT id, modified, sortindex, ");
    sql.push_str(if q.full { "payload" } else { "''" });
    sql.push_str(" FROM bsos WHERE user_id = ? AND collection_id = ? AND expiry > ?");
    let mut args: Vec<Value> = vec![user.into(), coll.into(), now.as_millis().into()];
    if let Some(ids) = &q.ids {
        if ids.is_empty() {
            return Ok((Vec::new(), None));
        }
        sql.push_str(" AND id IN (");
        sql.push_str(&vec!["?"; ids.len()].join(","));
        sql.push(')');
        args.extend(ids.iter().map(|id| Value::from(id.clone())));
    }
    if let Some(newer) = q.newer {
        sql.push_str(" AND modified > ?");
        args.push(newer.as_millis().into());
    }
    if let Some(older) = q.older {
        sql.push_str(" AND modified < ?");
        args.push(older.as_millis().into());
    }
    let mut skip: u64 = 0;
    match &q.offset {
        None => {}
        Some(Offset::Skip(n)) => skip = *n,
        Some(Offset::Legacy { ms, skip: n }) => {
            skip = *n;
            match q.sort {
                Sort::Newest => {
                    sql.push_str(" AND modified <= ?");
                    args.push((*ms).into());
                }
                Sort::Oldest => {
                    sql.push_str(" AND modified >= ?");
                    args.push((*ms).into());
                }
                Sort::Index => {}
            }
        }
        Some(Offset::After(SortKey::Modified { ms, id })) => {
            sql.push_str(if q.sort == Sort::Oldest {
                " AND (modified > ? OR (modified = ? AND id > ?))"
            } else {
                " AND (modified < ? OR (modified = ? AND id < ?))"
            });
            args.extend([Value::from(*ms), Value::from(*ms), Value::from(id.clone())]);
        }
        Some(Offset::After(SortKey::Index { sortindex: Some(s), id })) => {
            sql.push_str(" AND (sortindex < ? OR (sortindex = ? AND id < ?) OR sortindex IS NULL)");
            args.extend([Value::from(*s), Value::from(*s), Value::from(id.clone())]);
        }
        Some(Offset::After(SortKey::Index { sortindex: None, id })) => {
            sql.push_str(" AND sortindex IS NULL AND id < ?");
            args.push(Value::from(id.clone()));
        }
    }
    sql.push_str(crate::order_by(q.sort));
    // One row more than asked tells whether another page exists.
    let fetch = q.limit.map(|l| l as i64 + 1).unwrap_or(-1);
    sql.push_str(" LIMIT ? OFFSET ?");
    args.push(fetch.into());
    args.push((skip.min(i64::MAX as u64) as i64).into());

    let mut stmt = tx.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), bso_from_row)?;
    let bsos = rows.collect::<Result<Vec<_>, _>>()?;
    Ok(crate::finish_page(bsos, q))
}

#[async_trait]
impl Store for SqliteStore {
    async fn storage_timestamp(&self, user: UserId) -> StoreResult<SyncTimestamp> {
        if let Some(t) = self.cached_storage_time(user) {
            return Ok(t);
        }
        self.read(move |tx| storage_ts(tx, user)).await
    }

    async fn collection_timestamps(
        &self,
        user: UserId,
        pre: Precondition,
    ) -> StoreResult<(SyncTimestamp, Vec<(String, SyncTimestamp)>)> {
        if let (Precondition::IfModifiedSince(_), Some(t)) = (pre, self.cached_storage_time(user)) {
            pre.check(t)?;
        }
        self.read(move |tx| {
            let storage = storage_ts(tx, user)?;
            pre.check(storage)?;
            let mut stmt = tx.prepare_cached(
                "SELECT c.name, uc.modified FROM user_collections uc JOIN collections c ON c.id = uc.collection_id
                 WHERE uc.user_id = ?1",
            )?;
            let rows = stmt.query_map([user], |r| Ok((r.get::<_, String>(0)?, ts(r.get(1)?))))?;
            Ok((storage, rows.collect::<Result<Vec<_>, _>>()?))
        })
        .await
    }

    async fn collection_usage(
        &self,
        user: UserId,
        pre: Precondition,
    ) -> StoreResult<(SyncTimestamp, Vec<CollectionUsage>)> {
        self.read(move |tx| {
            let storage = storage_ts(tx, user)?;
            pre.check(storage)?;
            let mut stmt = tx.prepare_cached(
                "SELECT c.name, COUNT(*), SUM(b.payload_size) FROM bsos b JOIN collections c ON c.id = b.collection_id
                 WHERE b.user_id = ?1 AND b.expiry > ?2 GROUP BY c.name",
            )?;
            let rows = stmt.query_map(params![user, SyncTimestamp::now().as_millis()], |r| {
                Ok(CollectionUsage {
                    collection: r.get(0)?,
                    count: r.get::<_, i64>(1)? as u64,
                    bytes: r.get::<_, i64>(2)? as u64,
                })
            })?;
            Ok((storage, rows.collect::<Result<Vec<_>, _>>()?))
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
            return Ok(Page {
                modified: SyncTimestamp::ZERO,
                bsos: Vec::new(),
                next_offset: None,
            });
        };
        let query = query.clone();
        self.read(move |tx| {
            let modified = collection_ts(tx, user, coll)?.unwrap_or_default();
            pre.check(modified)?;
            if modified == SyncTimestamp::ZERO {
                return Ok(Page {
                    modified,
                    bsos: Vec::new(),
                    next_offset: None,
                });
            }
            let (bsos, next_offset) = query_page(tx, user, coll, &query, SyncTimestamp::now())?;
            Ok(Page {
                modified,
                bsos,
                next_offset,
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
        self.read(move |tx| {
            let bso = tx
                .prepare_cached(
                    "SELECT id, modified, sortindex, payload FROM bsos
                     WHERE user_id = ?1 AND collection_id = ?2 AND id = ?3 AND expiry > ?4",
                )?
                .query_row(params![user, coll, id, SyncTimestamp::now().as_millis()], bso_from_row)
                .optional()?;
            pre.check(bso.as_ref().map_or(SyncTimestamp::ZERO, |b| b.modified))?;
            bso.ok_or(StoreError::NotFound)
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
        let coll = self.ensure_collection(collection).await?;
        self.write(Some(user), bso.payload_len(), move |tx, now| {
            let current: Option<i64> = tx
                .prepare_cached("SELECT modified FROM bsos WHERE user_id = ?1 AND collection_id = ?2 AND id = ?3")?
                .query_row(params![user, coll, bso.id], |r| r.get(0))
                .optional()?;
            pre.check(ts(current.unwrap_or(0)))?;
            ensure_later(tx, user, now)?;
            check_quota(tx, user, now, limits, 0)?;
            upsert(tx, user, coll, &bso, now, false)?;
            touch(tx, user, coll, now)?;
            Ok(now)
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
        let coll = self.ensure_collection(collection).await?;
        self.write(Some(user), total_payload(&bsos) as usize, move |tx, now| {
            pre.check(collection_ts(tx, user, coll)?.unwrap_or_default())?;
            ensure_later(tx, user, now)?;
            check_quota(tx, user, now, limits, 0)?;
            for bso in &bsos {
                upsert(tx, user, coll, bso, now, false)?;
            }
            touch(tx, user, coll, now)?;
            Ok(now)
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
        let id = id.to_string();
        self.write(Some(user), 0, move |tx, now| {
            let current: Option<(i64, i64)> = tx
                .prepare_cached(
                    "SELECT modified, expiry FROM bsos WHERE user_id = ?1 AND collection_id = ?2 AND id = ?3",
                )?
                .query_row(params![user, coll, id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let live = current.filter(|(_, expiry)| *expiry > now.as_millis());
            pre.check(ts(live.map_or(0, |(m, _)| m)))?;
            if live.is_none() {
                return Err(StoreError::NotFound);
            }
            ensure_later(tx, user, now)?;
            tx.prepare_cached("DELETE FROM bsos WHERE user_id = ?1 AND collection_id = ?2 AND id = ?3")?
                .execute(params![user, coll, id])?;
            touch(tx, user, coll, now)?;
            Ok(now)
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
        let coll = self.ensure_collection(collection).await?;
        self.write(Some(user), 0, move |tx, now| {
            pre.check(collection_ts(tx, user, coll)?.unwrap_or_default())?;
            ensure_later(tx, user, now)?;
            let mut stmt =
                tx.prepare_cached("DELETE FROM bsos WHERE user_id = ?1 AND collection_id = ?2 AND id = ?3")?;
            for id in &ids {
                stmt.execute(params![user, coll, id])?;
            }
            touch(tx, user, coll, now)?;
            Ok(now)
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
        self.write(Some(user), HEAVY, move |tx, now| {
            let previous = match coll {
                Some(c) => collection_ts(tx, user, c)?,
                None => None,
            };
            pre.check(previous.unwrap_or_default())?;
            let (Some(c), Some(previous)) = (coll, previous) else {
                // S15-143: a collection that does not exist: nothing changes.
                return Ok(DeletedCollection { previous: SyncTimestamp::ZERO, storage: storage_ts(tx, user)? });
            };
            ensure_later(tx, user, now)?;
            tx.prepare_cached("DELETE FROM bsos WHERE user_id = ?1 AND collection_id = ?2")?.execute(params![user, c])?;
            tx.prepare_cached("DELETE FROM user_collections WHERE user_id = ?1 AND collection_id = ?2")?
                .execute(params![user, c])?;
            tx.prepare_cached(
                "DELETE FROM batch_items WHERE batch_id IN (SELECT id FROM batches WHERE user_id = ?1 AND collection_id = ?2)",
            )?
            .execute(params![user, c])?;
            tx.prepare_cached("DELETE FROM batches WHERE user_id = ?1 AND collection_id = ?2")?.execute(params![user, c])?;
            // The storage timestamp is the deleted-collection marker of S15-142.
            touch_storage(tx, user, now)?;
            Ok(DeletedCollection { previous, storage: now })
        })
        .await
    }

    async fn delete_storage(&self, user: UserId, pre: Precondition) -> StoreResult<SyncTimestamp> {
        self.write(Some(user), HEAVY, move |tx, _now| {
            let previous = storage_ts(tx, user)?;
            pre.check(previous)?;
            delete_bucket(tx, user)?;
            Ok(previous)
        })
        .await
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
        self.write(Some(user), total_payload(&bsos) as usize, move |tx, now| {
            let modified = collection_ts(tx, user, coll)?.unwrap_or_default();
            pre.check(modified)?;
            check_quota(tx, user, now, limits, total_payload(&bsos))?;
            tx.prepare_cached("INSERT INTO batches (user_id, collection_id, expiry) VALUES (?1, ?2, ?3)")?
                .execute(params![user, coll, now.as_millis() + BATCH_LIFETIME_MS])?;
            let batch = tx.last_insert_rowid();
            stage(tx, batch, &bsos)?;
            Ok((batch.to_string(), modified))
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
        let batch = batch.to_string();
        self.write(Some(user), total_payload(&bsos) as usize, move |tx, now| {
            let modified = collection_ts(tx, user, coll)?.unwrap_or_default();
            pre.check(modified)?;
            let id = live_batch(tx, user, coll, &batch, now)?;
            let new_bytes: u64 = total_payload(&bsos);
            check_quota(tx, user, now, limits, staged_bytes(tx, id)? + new_bytes)?;
            stage(tx, id, &bsos)?;
            Ok(modified)
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
        let batch = batch.to_string();
        self.write(Some(user), HEAVY, move |tx, now| {
            pre.check(collection_ts(tx, user, coll)?.unwrap_or_default())?;
            let id = live_batch(tx, user, coll, &batch, now)?;
            ensure_later(tx, user, now)?;
            let new_bytes: u64 = total_payload(&bsos);
            check_quota(tx, user, now, limits, staged_bytes(tx, id)? + new_bytes)?;
            // The commit body overrides staged fields of the same id (S15-125).
            stage(tx, id, &bsos)?;
            let staged: Vec<BsoInput> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT id, sortindex, payload, ttl FROM batch_items WHERE batch_id = ?1 ORDER BY seq",
                )?;
                let rows = stmt.query_map([id], |r| {
                    Ok(BsoInput {
                        id: r.get(0)?,
                        sortindex: r.get(1)?,
                        payload: r.get(2)?,
                        ttl: r.get(3)?,
                    })
                })?;
                rows.collect::<Result<_, _>>()?
            };
            for bso in &staged {
                upsert(tx, user, coll, bso, now, true)?;
            }
            delete_batch(tx, id)?;
            touch(tx, user, coll, now)?;
            Ok(now)
        })
        .await
    }

    async fn purge_expired(&self) -> StoreResult<PurgeReport> {
        // Small chunks keep each writer transaction short, so requests never wait long.
        let mut report = PurgeReport::default();
        loop {
            let (bsos, batches) = self
                .write(None, HEAVY, |tx, now| {
                    let bsos = tx
                        .prepare_cached(
                            "DELETE FROM bsos WHERE rowid IN
                             (SELECT rowid FROM bsos WHERE expiry < 9223372036854775800 AND expiry <= ?1 LIMIT 1000)",
                        )?
                        .execute([now.as_millis()])?;
                    let expired: Vec<i64> = {
                        let mut stmt = tx.prepare_cached("SELECT id FROM batches WHERE expiry <= ?1 LIMIT 100")?;
                        let rows = stmt.query_map([now.as_millis()], |r| r.get(0))?;
                        rows.collect::<Result<_, _>>()?
                    };
                    for id in &expired {
                        delete_batch(tx, *id)?;
                    }
                    Ok((bsos as u64, expired.len() as u64))
                })
                .await?;
            report.bsos += bsos;
            report.batches += batches;
            if bsos < 1000 && batches < 100 {
                break;
            }
        }
        // Give free pages (left by purges and by users deleting their data) back to the
        // file system, 2,000 pages (8 MiB) per writer job so requests never wait long.
        for _ in 0..256 {
            let left: i64 = self
                .write(None, HEAVY, |tx, _| {
                    // The pragma frees one page per step: step it to the end.
                    let mut stmt = tx.prepare_cached("PRAGMA incremental_vacuum(2000)")?;
                    let mut rows = stmt.query([])?;
                    while rows.next()?.is_some() {}
                    drop(rows);
                    Ok(tx.query_row("PRAGMA freelist_count", [], |r| r.get(0))?)
                })
                .await?;
            if left == 0 {
                break;
            }
        }
        Ok(report)
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        let path = self.path.clone();
        let (users, active_batches) = self
            .read(move |tx| {
                let users: i64 = tx.query_row("SELECT COUNT(*) FROM user_storage", [], |r| r.get(0))?;
                let batches: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM batches WHERE expiry > ?1",
                    [SyncTimestamp::now().as_millis()],
                    |r| r.get(0),
                )?;
                Ok((users as u64, batches as u64))
            })
            .await?;
        let mut database_bytes = 0;
        for suffix in ["", "-wal"] {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            database_bytes += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        }
        Ok(StoreStats {
            users,
            active_batches,
            database_bytes,
        })
    }

    async fn check(&self) -> StoreResult<()> {
        self.read(|tx| {
            tx.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }
}

/// Copies a live database into `dest` with SQLite's online backup: a consistent snapshot
/// while the server keeps serving (writers are only paused between steps). Returns the
/// number of pages copied.
pub fn backup(db: &Path, dest: &Path) -> StoreResult<u64> {
    if dest.exists() {
        return Err(StoreError::Database(format!(
            "{} exists; refusing to overwrite it",
            dest.display()
        )));
    }
    let src = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    src.busy_timeout(std::time::Duration::from_secs(10))?;
    let mut out = Connection::open(dest)?;
    let pages = {
        let backup = rusqlite::backup::Backup::new(&src, &mut out)?;
        backup.run_to_completion(256, std::time::Duration::from_millis(5), None)?;
        backup.progress().pagecount
    };
    // A backup is a single self-contained file.
    out.pragma_update(None, "journal_mode", "DELETE")?;
    let check: String = out.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(StoreError::Database(format!(
            "the copy failed its integrity check: {check}"
        )));
    }
    Ok(pages.max(0) as u64)
}

/// Puts a backup in place as the database at `db` (the server must be stopped). Refuses a
/// file that is not a Syncstead database this release can open, and an existing database
/// unless `force`.
pub fn restore(backup_file: &Path, db: &Path, force: bool) -> StoreResult<()> {
    let src = Connection::open_with_flags(backup_file, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let version: i64 = src.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
    let has_bsos: i64 = src.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'bsos'",
        [],
        |r| r.get(0),
    )?;
    if version == 0 || version > latest || has_bsos == 0 {
        return Err(StoreError::Database(format!(
            "{} is not a Syncstead database this release can open (schema {version})",
            backup_file.display()
        )));
    }
    if db.exists() && !force {
        return Err(StoreError::Database(format!(
            "{} exists; pass --force to replace it",
            db.display()
        )));
    }
    for suffix in ["-wal", "-shm"] {
        let mut side = db.as_os_str().to_owned();
        side.push(suffix);
        let _ = std::fs::remove_file(&side);
    }
    let _ = std::fs::remove_file(db);
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Database(e.to_string()))?;
    }
    let mut out = Connection::open(db)?;
    let backup = rusqlite::backup::Backup::new(&src, &mut out)?;
    backup.run_to_completion(1024, std::time::Duration::ZERO, None)?;
    Ok(())
}
