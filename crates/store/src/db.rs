//! [`Db`]: the store every protocol talks to, generic over the backend's [`Engine`].
//!
//! The store traits (`Store`, `LegacyStore`, `TokenStore`, `AccountStore`) are
//! implemented once, on `Db`, next to their rules (`storage.rs`, `legacy.rs`,
//! `tokens.rs`, `accounts.rs`). A backend only says how to run a rule: in which
//! transaction, on which connection, with which locks. Everything that passes through
//! here is timed, so the store's metrics cover every surface alike.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use syncstead_proto::names::FIRST_CUSTOM_COLLECTION_ID;
use syncstead_proto::SyncTimestamp;

use crate::sql::{BoxFuture, Tx, Written};
use crate::{Precondition, StoreError, StoreResult, UserId};

/// How many clock ticks (10 ms) a write waits for its bucket before answering 503.
const MAX_TICK_RETRIES: usize = 32;

/// How a read sees the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// A single statement, which is its own snapshot: no transaction needed.
    Statement,
    /// Several statements that must agree (a check and the rows it guards).
    Snapshot,
}

/// What a backend provides: transactions to run rules in.
pub trait Engine: Clone + Send + Sync + 'static {
    #[doc(hidden)]
    type Tx: Tx;

    /// Whether several server processes may serve the same users from this database
    /// (PostgreSQL), so that what guards against replays must live in it. SQLite is served
    /// by one process, which the instance lock ensures.
    const SHARED_BY_PROCESSES: bool;

    /// Whether background clean-up (the sweep of a committed batch's staged records)
    /// waits for long listings to finish first. On PostgreSQL a sweep is one large
    /// DELETE that competes with a burst of downloads for the database's CPU; measured,
    /// waiting helped there and not on SQLite, whose sweep already runs in small steps
    /// only while its writer is idle (docs/benchmarks.md, "Batch appends without a
    /// tick").
    const CLEANUP_WAITS_FOR_BULK_READS: bool;

    /// Runs `f` in a read-only transaction.
    #[doc(hidden)]
    fn read<R, F>(&self, mode: Read, f: F) -> impl Future<Output = StoreResult<R>> + Send
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t Self::Tx) -> BoxFuture<'t, StoreResult<R>> + Send + 'static;

    /// Runs `f` in a write transaction that commits when `f` succeeds (and is durable
    /// when this returns) and rolls back when it fails. `cost` estimates the payload
    /// bytes written, for backends that group writes.
    #[doc(hidden)]
    fn write<R, F>(&self, cost: usize, f: F) -> impl Future<Output = StoreResult<R>> + Send
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t Self::Tx) -> BoxFuture<'t, StoreResult<R>> + Send + 'static;

    /// [`Engine::write`] for clean-up that nobody waits for: a backend that orders its
    /// writes runs it after those that requests wait for.
    #[doc(hidden)]
    fn write_idle<R, F>(&self, f: F) -> impl Future<Output = StoreResult<R>> + Send
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t Self::Tx) -> BoxFuture<'t, StoreResult<R>> + Send + 'static,
    {
        self.write(0, f)
    }

    /// How many reads can run at once (SQLite's readers, PostgreSQL's pool).
    fn read_slots(&self) -> usize;

    /// A bucket's storage time if the backend knows it without asking the database.
    fn cached_storage_time(&self, _user: UserId) -> Option<SyncTimestamp> {
        None
    }

    /// The time of the last write to the bucket's collection `coll` (with `None`, to the
    /// bucket) as far as this process knows, which may be behind the database's: used
    /// only to wait for the next tick before a write rather than inside it.
    fn last_write_hint(&self, _user: UserId, _coll: Option<i64>) -> Option<SyncTimestamp> {
        None
    }

    /// Gives space freed by deletes back to the file system, where the backend must be
    /// asked to (PostgreSQL's autovacuum does it by itself).
    fn reclaim_space(&self) -> impl Future<Output = StoreResult<()>> + Send;

    /// The bytes the database occupies.
    fn database_bytes(&self) -> impl Future<Output = StoreResult<u64>> + Send;

    /// What a query cannot see: the files under the database (still there, writable,
    /// room left on the disk). The heartbeat's first check.
    fn health(&self) -> StoreResult<()> {
        Ok(())
    }
}

/// A store on one backend: `SqliteStore` or `PgStore`.
pub struct Db<E> {
    pub(crate) engine: E,
    /// The standard collections' ids, which are never released. Custom names are looked
    /// up each time: any process may release one when no bucket uses it any more.
    collections: RwLock<HashMap<String, i64>>,
    /// Bulk reads (the chunks of long listings) take one of these first: one read slot
    /// fewer than the backend has, so a burst of downloads never takes every connection
    /// and a short request waits behind at most the bulk reads already running; and no
    /// more than one per core, as each keeps a core busy (reading, then rendering) and
    /// more would only queue for the CPUs.
    bulk: Arc<tokio::sync::Semaphore>,
    bulk_slots: usize,
}

/// Payload estimate of jobs whose size is unknown up front (batch commits, bulk deletes):
/// a whole group's worth on SQLite, so such a job commits alone and a small write never
/// waits behind several of them in one group.
pub(crate) const HEAVY: usize = 1 << 20;

impl<E: Engine> Db<E> {
    /// Wraps an opened engine and loads the collection names.
    pub(crate) async fn new(engine: E) -> StoreResult<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let bulk_slots = engine.read_slots().saturating_sub(1).min(cores).max(1);
        let bulk = Arc::new(tokio::sync::Semaphore::new(bulk_slots));
        let db = Db {
            engine,
            collections: RwLock::new(HashMap::new()),
            bulk,
            bulk_slots,
        };
        // Through the writer: SQLite then opens its read connections only when requests come.
        let names = db
            .write("collections", 0, |tx| {
                Box::pin(async move {
                    let rows = tx
                        .query(
                            "SELECT id, name FROM collections WHERE id < $1",
                            &[FIRST_CUSTOM_COLLECTION_ID.into()],
                        )
                        .await?;
                    rows.into_iter()
                        .map(|mut r| Ok((r.text(1)?, r.int(0)?)))
                        .collect::<StoreResult<Vec<_>>>()
                })
            })
            .await?;
        db.collections.write().expect("collections lock").extend(names);
        Ok(db)
    }

    /// Runs a read rule, timed as `op`.
    pub(crate) async fn read<R, F>(&self, op: &'static str, mode: Read, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t E::Tx) -> BoxFuture<'t, StoreResult<R>> + Send + 'static,
    {
        let start = Instant::now();
        let out = self.engine.read(mode, f).await;
        record(op, start);
        out
    }

    /// Runs a single-statement read of many rows, timed as `op` (its wait for a bulk slot
    /// included).
    pub(crate) async fn read_bulk<R, F>(&self, op: &'static str, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t E::Tx) -> BoxFuture<'t, StoreResult<R>> + Send + 'static,
    {
        let start = Instant::now();
        let out = match self.bulk.acquire().await {
            Ok(_slot) => self.engine.read(Read::Statement, f).await,
            Err(_) => Err(StoreError::Unavailable("the store is closed".into())),
        };
        record(op, start);
        out
    }

    /// Runs a write rule, timed as `op`. A [`StoreError::Conflict`] (the bucket already
    /// used this clock tick) is retried at the next tick, so many devices of one user
    /// writing at once are served in turn; only a bucket busy for longer than
    /// [`MAX_TICK_RETRIES`] ticks answers 503 (S15-043).
    pub(crate) async fn write<R, F>(&self, op: &'static str, cost: usize, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: for<'t> Fn(&'t E::Tx) -> BoxFuture<'t, StoreResult<R>> + Send + Sync + 'static,
    {
        let start = Instant::now();
        let f = Arc::new(f);
        let mut attempt = 1;
        let out = loop {
            let f = f.clone();
            let out = self.engine.write(cost, move |tx| f(tx)).await;
            if attempt == MAX_TICK_RETRIES || !matches!(out, Err(StoreError::Conflict)) {
                break out;
            }
            attempt += 1;
            metrics::counter!("syncstead_store_tick_waits_total", "op" => op).increment(1);
            next_tick().await;
        };
        record(op, start);
        out
    }

    /// [`Db::write`] for a rule that gives `user`'s collection `coll` (with `None`, the
    /// whole bucket) a new time ([`Tx::lock_bucket`]). When its last write, as far as this
    /// process knows, already has this tick's time, it waits for the next tick first,
    /// outside the backend: on SQLite the write then visits the writer thread once instead
    /// of being turned away and queued again, and on PostgreSQL it does not sit out the
    /// tick holding a pooled connection and the bucket's lock.
    pub(crate) async fn write_bucket<R, F>(
        &self,
        op: &'static str,
        (user, coll): Written,
        cost: usize,
        f: F,
    ) -> StoreResult<R>
    where
        R: Send + 'static,
        F: for<'t> Fn(&'t E::Tx) -> BoxFuture<'t, StoreResult<R>> + Send + Sync + 'static,
    {
        if let Some(wait) = self
            .engine
            .last_write_hint(user, coll)
            .and_then(|last| tick_wait(last, std::time::SystemTime::now()))
        {
            metrics::counter!("syncstead_store_tick_waits_total", "op" => op).increment(1);
            tokio::time::sleep(wait).await;
        }
        self.write(op, cost, f).await
    }

    /// Runs a read that reports the bucket's storage time (S15-045), then checks `pre`
    /// against it. Writes to different collections may share a clock tick (S15-043 orders
    /// each collection on its own), so a storage time of the current tick may yet be
    /// given to another collection's write, which a client holding that time would miss
    /// (`X-If-Modified-Since` would answer 304). Such a read waits for the tick to end and
    /// reads again under the bucket's write lock, after every write that took the lock
    /// before it: a time whose tick has ended by then is carried by no later write.
    pub(crate) async fn read_storage_level<R, F>(
        &self,
        op: &'static str,
        mode: Read,
        user: UserId,
        pre: Precondition,
        f: F,
    ) -> StoreResult<(SyncTimestamp, R)>
    where
        R: Send + 'static,
        F: for<'t> Fn(&'t E::Tx) -> BoxFuture<'t, StoreResult<(SyncTimestamp, R)>> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let first = f.clone();
        let mut got = self.read(op, mode, move |tx| first(tx)).await?;
        let mut tries = 0;
        while got.0 >= SyncTimestamp::now() && tries < MAX_TICK_RETRIES {
            tries += 1;
            match tick_wait(got.0, std::time::SystemTime::now()) {
                Some(wait) => tokio::time::sleep(wait).await,
                // Another server's clock: no wait here helps.
                None => break,
            }
            let f = f.clone();
            let (storage, out, settled) = self
                .write(op, 0, move |tx| {
                    let f = f.clone();
                    Box::pin(async move {
                        tx.lock_bucket_to_stage(user).await?;
                        let (storage, out) = f(tx).await?;
                        Ok((storage, out, storage < SyncTimestamp::now()))
                    })
                })
                .await?;
            got = (storage, out);
            if settled {
                break;
            }
        }
        pre.check(got.0)?;
        Ok(got)
    }

    /// Runs a clean-up rule that a caller waits for but no request does (the purge),
    /// after the writes that requests wait for, timed as `op`.
    pub(crate) async fn write_idle<R, F>(&self, op: &'static str, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t E::Tx) -> BoxFuture<'t, StoreResult<R>> + Send + 'static,
    {
        idle_write(&self.engine, op, f).await
    }

    /// Runs a clean-up rule in the background, again for as long as it answers true (one
    /// bounded chunk at a time), each run timed as `op` (and, where the backend asks for
    /// it, started once no long listing is being read, or after [`BULK_YIELD`]). A
    /// failure is logged and ends it: the purge catches up with what is left.
    pub(crate) fn write_later<F>(&self, op: &'static str, f: F)
    where
        F: for<'t> Fn(&'t E::Tx) -> BoxFuture<'t, StoreResult<bool>> + Send + Sync + 'static,
    {
        let engine = self.engine.clone();
        let (bulk, slots) = (self.bulk.clone(), self.bulk_slots);
        let f = Arc::new(f);
        tokio::spawn(async move {
            loop {
                if E::CLEANUP_WAITS_FOR_BULK_READS {
                    no_bulk_reads(&bulk, slots).await;
                }
                let f = f.clone();
                match idle_write(&engine, op, move |tx| f(tx)).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        tracing::debug!(op, error = %e, "clean-up write failed; the purge catches up");
                        break;
                    }
                }
            }
        });
    }

    fn cached_collection(&self, name: &str) -> Option<i64> {
        self.collections.read().expect("collections lock").get(name).copied()
    }

    fn remember_collection(&self, name: &str, id: i64) {
        self.collections
            .write()
            .expect("collections lock")
            .insert(name.to_string(), id);
    }

    /// Looks a collection up, also in the database: another process (an admin command,
    /// another node) may have registered it since this one started.
    pub(crate) async fn find_collection(&self, name: &str) -> StoreResult<Option<i64>> {
        if let Some(id) = self.cached_collection(name) {
            return Ok(Some(id));
        }
        let owned = name.to_string();
        let id = self
            .read("find_collection", Read::Statement, move |tx| {
                Box::pin(async move { crate::storage::collection_id(tx, &owned).await })
            })
            .await?;
        if let Some(id) = id.filter(|id| *id < FIRST_CUSTOM_COLLECTION_ID) {
            self.remember_collection(name, id);
        }
        Ok(id)
    }

    /// The id of a collection, registering a new custom name if needed. A name registered
    /// by a write that then fails is released again like any unused name.
    pub(crate) async fn ensure_collection(&self, name: &str) -> StoreResult<i64> {
        if let Some(id) = self.find_collection(name).await? {
            return Ok(id);
        }
        let owned: Arc<str> = name.into();
        let id = self
            .write("register_collection", 0, move |tx| {
                let name = owned.clone();
                Box::pin(async move { crate::storage::register_collection(tx, &name).await })
            })
            .await?;
        if id < FIRST_CUSTOM_COLLECTION_ID {
            self.remember_collection(name, id);
        }
        Ok(id)
    }

    /// Runs a write that may create the collection on its id, registering the name if
    /// needed; if the name was released under it, once more with the name registered anew.
    pub(crate) async fn in_collection<R, F, Fut>(&self, name: &str, f: F) -> StoreResult<R>
    where
        F: Fn(i64) -> Fut,
        Fut: Future<Output = StoreResult<R>>,
    {
        let mut retried = false;
        loop {
            let coll = self.ensure_collection(name).await?;
            match f(coll).await {
                Err(StoreError::CollectionGone) if !retried => retried = true,
                out => return out,
            }
        }
    }

    /// Releases custom collection names that no bucket and no batch uses: those of `ids`
    /// (the standard ones are never released), or all of them. Best effort: a release that
    /// races a new use of the name is refused by the database, and the name stays until
    /// the next purge.
    pub(crate) async fn release_collections(&self, ids: Option<Vec<i64>>) -> u64 {
        let ids: Option<Arc<[i64]>> =
            ids.map(|v| v.into_iter().filter(|id| *id >= FIRST_CUSTOM_COLLECTION_ID).collect());
        if ids.as_ref().is_some_and(|v| v.is_empty()) {
            return 0;
        }
        let out = self
            .write("release_collections", 0, move |tx| {
                let ids = ids.clone();
                Box::pin(async move { crate::storage::release_collections(tx, ids.as_deref()).await })
            })
            .await;
        match out {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "collection names kept until the next purge");
                0
            }
        }
    }
}

/// How long background clean-up gives way to long listings before it takes its next
/// step anyway.
const BULK_YIELD: Duration = Duration::from_secs(1);

/// Waits until no long listing is being read, or [`BULK_YIELD`] has passed.
async fn no_bulk_reads(bulk: &tokio::sync::Semaphore, slots: usize) {
    let start = Instant::now();
    while bulk.available_permits() < slots && start.elapsed() < BULK_YIELD {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// [`Engine::write_idle`], timed as `op`.
async fn idle_write<E, R, F>(engine: &E, op: &'static str, f: F) -> StoreResult<R>
where
    E: Engine,
    R: Send + 'static,
    F: for<'t> FnOnce(&'t E::Tx) -> BoxFuture<'t, StoreResult<R>> + Send + 'static,
{
    let start = Instant::now();
    let out = engine.write_idle(f).await;
    record(op, start);
    out
}

fn record(op: &'static str, start: Instant) {
    metrics::histogram!("syncstead_store_seconds", "op" => op).record(start.elapsed().as_secs_f64());
}

/// The last write times of buckets (or of their collections) as this process saw them
/// commit, at most `max` of them: a full map forgets all but the current tick's (a time
/// forgotten is asked of the database again, or simply not waited for).
#[derive(Clone)]
pub(crate) struct WriteTimes<K> {
    times: Arc<std::sync::Mutex<HashMap<K, SyncTimestamp>>>,
    max: usize,
}

impl<K: std::hash::Hash + Eq + Copy> WriteTimes<K> {
    pub(crate) fn new(max: usize) -> Self {
        WriteTimes {
            times: Default::default(),
            max,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<K, SyncTimestamp>> {
        self.times.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, key: K) -> Option<SyncTimestamp> {
        self.map().get(&key).copied()
    }

    pub(crate) fn record(&self, written: impl IntoIterator<Item = (K, SyncTimestamp)>) {
        let mut written = written.into_iter().peekable();
        if written.peek().is_none() {
            return;
        }
        let mut times = self.map();
        if times.len() >= self.max {
            let tick = SyncTimestamp::now();
            times.retain(|_, t| *t >= tick);
        }
        times.extend(written);
    }
}

/// How far ahead of this server's clock a bucket's last write time may be and still be
/// waited for: a time further ahead came from another server's clock, and waiting for it
/// would stall the bucket.
pub(crate) const FOREIGN_CLOCK: Duration = Duration::from_secs(1);

/// How far past a tick's start a wait for it ends, so that the clock read right after
/// surely shows the new tick.
const TICK_MARGIN: Duration = Duration::from_micros(200);

/// Sleeps until the clock has reached the next centisecond.
pub(crate) async fn next_tick() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let into_tick = Duration::from_micros((now.as_micros() % 10_000) as u64);
    tokio::time::sleep(Duration::from_millis(10) - into_tick + TICK_MARGIN).await;
}

/// How long a write must wait at `now` for a tick later than `last` (its bucket's last
/// write time): `None` when the clock is past `last`'s tick already, or when `last` is
/// further ahead than [`FOREIGN_CLOCK`] (the backend's rule deals with it rather than
/// have the write sleep).
pub(crate) fn tick_wait(last: SyncTimestamp, now: std::time::SystemTime) -> Option<Duration> {
    let now = now.duration_since(std::time::UNIX_EPOCH).ok()?;
    let next = Duration::from_millis(u64::try_from(last.as_millis()).ok()? + 10);
    let wait = next.checked_sub(now).filter(|w| !w.is_zero())?;
    (wait <= FOREIGN_CLOCK).then_some(wait + TICK_MARGIN)
}

/// The current time in milliseconds, for bookkeeping columns (`created_at`, …).
pub(crate) fn now_ms() -> i64 {
    SyncTimestamp::now().as_millis()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn at(ms: u64, us: u64) -> std::time::SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms) + Duration::from_micros(us)
    }

    // S15-042/043: a write of a bucket whose last write has this tick's time waits for
    // the next tick; one in a later tick does not wait.
    #[test]
    fn s15_043_a_write_waits_only_for_a_tick_its_bucket_has_used() {
        let last = SyncTimestamp::from_millis(1_700_000_000_120);
        let wait = |ms, us| tick_wait(last, at(ms, us));
        assert_eq!(
            wait(1_700_000_000_123, 500),
            Some(Duration::from_micros(6_500) + TICK_MARGIN)
        );
        assert_eq!(
            wait(1_700_000_000_120, 0),
            Some(Duration::from_millis(10) + TICK_MARGIN)
        );
        assert_eq!(wait(1_700_000_000_130, 0), None);
        assert_eq!(wait(1_700_000_005_000, 0), None);
        // A time ahead of this clock by more than a second is another server's: no sleep.
        assert_eq!(wait(1_700_000_000_120 - 2_000, 0), None);
        assert!(wait(1_700_000_000_120 - 900, 0).is_some());
        assert_eq!(tick_wait(SyncTimestamp::ZERO, at(1_700_000_000_000, 0)), None);
    }
}
