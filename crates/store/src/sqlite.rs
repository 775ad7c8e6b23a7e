//! The embedded SQLite backend: one writer thread owning the only read-write connection
//! (so every write is serialised and gets a strictly later timestamp per bucket), a small
//! pool of read-only connections, WAL.
//!
//! The writer commits in groups: it takes every write waiting in its queue, runs each in
//! its own savepoint inside one transaction, and answers them all after a single commit.
//! Each request stays atomic (a failed one is rolled back to its savepoint), every
//! acknowledged write is on disk (one fsync covers the group), and under load the fsync
//! cost is shared instead of queued.
//!
//! The protocol rules run here as they are written (`storage.rs` and the others): every
//! call of [`Conn`] is answered at once, so a rule completes on its first poll, in place,
//! on the writer thread or a reader's blocking thread.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags};
use syncstead_proto::SyncTimestamp;
use tokio::sync::Semaphore;

use crate::db::{Db, Engine, Read, WriteTimes, HEAVY};
use crate::lock::beside;
use crate::sql::{
    column_type, sqlite_placeholders, Arg, BoxFuture, Dialect, Lock, Locked, Row, RowRef, Tx, Value, Written,
};
use crate::{AdminError, AdminResult, StoreError, StoreResult, UserId};

pub(crate) const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_storage.sql")),
    (2, include_str!("../migrations/sqlite/0002_tokenserver.sql")),
    (3, include_str!("../migrations/sqlite/0003_accounts.sql")),
    (4, include_str!("../migrations/sqlite/0004_nonces.sql")),
    (5, include_str!("../migrations/sqlite/0005_collection_release.sql")),
    (6, include_str!("../migrations/sqlite/0006_identities.sql")),
    (7, include_str!("../migrations/sqlite/0007_device_commands.sql")),
    (8, include_str!("../migrations/sqlite/0008_batch_totals.sql")),
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

const MAX_CACHED_TIMES: usize = 200_000;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::*;
        match &e {
            // The only foreign keys are those on collection ids (migration 5).
            rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY => {
                StoreError::CollectionGone
            }
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(
                    f.code,
                    DatabaseBusy | DatabaseLocked | DiskFull | CannotOpen | SystemIoFailure | OutOfMemory
                ) =>
            {
                StoreError::Unavailable(Box::new(e))
            }
            rusqlite::Error::ToSqlConversionFailure(_)
            | rusqlite::Error::IntegralValueOutOfRange(..)
            | rusqlite::Error::Utf8Error(_)
            | rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error {
                    code: TooBig | TypeMismatch,
                    ..
                },
                _,
            ) => StoreError::BadInput(Box::new(e)),
            _ => StoreError::Internal(Box::new(e)),
        }
    }
}

impl rusqlite::ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        use rusqlite::types::Value as V;
        let json = |v: serde_json::Result<String>| {
            v.map(|s| ToSqlOutput::Owned(V::Text(s)))
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
        };
        Ok(match self {
            Arg::Null => ToSqlOutput::Owned(V::Null),
            Arg::Int(v) => ToSqlOutput::Owned(V::Integer(*v)),
            Arg::Float(v) => ToSqlOutput::Owned(V::Real(*v)),
            Arg::Bool(v) => ToSqlOutput::Owned(V::Integer(i64::from(*v))),
            Arg::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            // Lists are read with json_each (Dialect::in_list).
            Arg::Ints(v) => return json(serde_json::to_string(v)),
            Arg::Texts(v) => return json(serde_json::to_string(v)),
        })
    }
}

fn value(v: ValueRef<'_>) -> StoreResult<Value> {
    Ok(match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Float(f),
        ValueRef::Text(t) => Value::Text(
            std::str::from_utf8(t)
                .map_err(|e| StoreError::Internal(Box::new(e)))?
                .to_string(),
        ),
        ValueRef::Blob(_) => return Err(StoreError::Internal("a BLOB where text was expected".into())),
    })
}

/// A SQLite connection as the rules see it. Its calls run at once (the futures they
/// return are ready), so a rule runs to completion on the thread that polls it.
pub struct Conn {
    conn: Mutex<Connection>,
    /// What this transaction gave a new time, and that time: the buckets' storage times
    /// and these times go to the caches once the transaction has committed.
    touched: Mutex<Vec<(Written, SyncTimestamp)>>,
}

impl Conn {
    fn new(conn: Connection) -> Self {
        Conn {
            conn: Mutex::new(conn),
            touched: Mutex::new(Vec::new()),
        }
    }

    /// The connection. A rule that panicked left nothing half-done that matters: its
    /// transaction is rolled back, so a poisoned lock is taken over as it is.
    fn guard(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn batch(&self, sql: &str) -> StoreResult<()> {
        Ok(self.guard().execute_batch(sql)?)
    }

    fn take_touched(&self) -> Vec<(Written, SyncTimestamp)> {
        std::mem::take(&mut *self.touched.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn execute_now(&self, sql: &str, args: &[Arg<'_>]) -> StoreResult<u64> {
        let conn = self.guard();
        let mut stmt = conn.prepare_cached(&sqlite_placeholders(sql))?;
        Ok(stmt.execute(rusqlite::params_from_iter(args))? as u64)
    }

    fn query_now(&self, sql: &str, args: &[Arg<'_>], max: usize) -> StoreResult<Vec<Row>> {
        let conn = self.guard();
        let mut stmt = conn.prepare_cached(&sqlite_placeholders(sql))?;
        let columns = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        let mut out = Vec::new();
        while out.len() < max {
            let Some(r) = rows.next()? else { break };
            out.push(Row((0..columns)
                .map(|i| value(r.get_ref(i)?))
                .collect::<StoreResult<_>>()?));
        }
        Ok(out)
    }

    fn query_each_now(
        &self,
        sql: &str,
        args: &[Arg<'_>],
        each: &mut (dyn FnMut(&dyn RowRef) -> StoreResult<()> + Send),
    ) -> StoreResult<()> {
        let conn = self.guard();
        let mut stmt = conn.prepare_cached(&sqlite_placeholders(sql))?;
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        while let Some(r) = rows.next()? {
            each(&SqliteRow(r))?;
        }
        Ok(())
    }
}

/// A row as SQLite holds it while it is being read.
struct SqliteRow<'a, 'r>(&'a rusqlite::Row<'r>);

impl RowRef for SqliteRow<'_, '_> {
    fn text(&self, i: usize) -> StoreResult<&str> {
        match self.0.get_ref(i)? {
            ValueRef::Text(t) => std::str::from_utf8(t).map_err(|_| column_type(i, "UTF-8 text")),
            _ => Err(column_type(i, "text")),
        }
    }

    fn opt_int(&self, i: usize) -> StoreResult<Option<i64>> {
        match self.0.get_ref(i)? {
            ValueRef::Null => Ok(None),
            ValueRef::Integer(v) => Ok(Some(v)),
            _ => Err(column_type(i, "an integer")),
        }
    }
}

impl Tx for Conn {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&self, sql: &str, args: &[Arg<'_>]) -> impl Future<Output = StoreResult<u64>> + Send {
        std::future::ready(self.execute_now(sql, args))
    }

    fn query(&self, sql: &str, args: &[Arg<'_>]) -> impl Future<Output = StoreResult<Vec<Row>>> + Send {
        std::future::ready(self.query_now(sql, args, usize::MAX))
    }

    fn query_opt(&self, sql: &str, args: &[Arg<'_>]) -> impl Future<Output = StoreResult<Option<Row>>> + Send {
        std::future::ready(self.query_now(sql, args, 1).map(|rows| rows.into_iter().next()))
    }

    fn query_each(
        &self,
        sql: &str,
        args: &[Arg<'_>],
        each: &mut (dyn FnMut(&dyn RowRef) -> StoreResult<()> + Send),
    ) -> impl Future<Output = StoreResult<()>> + Send {
        std::future::ready(self.query_each_now(sql, args, each))
    }

    /// The single writer is the lock; a collection (or bucket) that already used this
    /// tick answers Conflict, and the write is retried at the next one.
    async fn lock_bucket(&self, user: UserId, coll: Option<i64>) -> StoreResult<Locked> {
        let now = SyncTimestamp::now();
        let modified = crate::storage::last_modified(self, user, coll).await?;
        if modified >= now {
            return Err(StoreError::Conflict);
        }
        self.touched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(((user, coll), now));
        Ok(Locked { now, modified })
    }

    /// The single writer is the lock.
    fn lock_bucket_to_stage(&self, _user: UserId) -> impl Future<Output = StoreResult<SyncTimestamp>> + Send {
        std::future::ready(Ok(SyncTimestamp::now()))
    }

    fn lock(&self, _lock: Lock<'_>) -> impl Future<Output = StoreResult<()>> + Send {
        std::future::ready(Ok(()))
    }
}

/// Runs a rule to completion in place. Every call of [`Conn`] is answered at once, so a
/// rule is ready on its first poll; one that is not waited for something it must not.
fn run_now<R>(mut rule: BoxFuture<'_, StoreResult<R>>) -> StoreResult<R> {
    match rule.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => r,
        Poll::Pending => Err(StoreError::Internal("a SQLite rule waited for something".into())),
    }
}

/// Creates an empty database file readable by its owner only, unless one exists. SQLite
/// gives the `-wal` and `-shm` files it makes later the same permissions.
pub(crate) fn create_private_file(path: &Path) -> StoreResult<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Unavailable(Box::new(e))),
    }
}

/// How long a connection waits for a lock another holds: 10 s, then `SQLITE_BUSY` (503).
const BUSY_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a log restart waits at most for readers of the old log to finish: the writer
/// thread runs it between groups, so writes wait meanwhile. When the readers take
/// longer it gives up until the next complete copy (a quarter of a second later).
const RESTART_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

/// The pause before try `tries + 1` at a lock, or `None` once `limit` has been waited.
/// SQLite's own handler (`busy_timeout`) sleeps 1, 2, 5, 10, 15, 20 ms… between tries,
/// so a wait for a read or a group of a millisecond or two became 8 or 18 ms asleep: the
/// log restart held the writer 17–23 ms on average with it, 12–16 ms with this, and no
/// longer over 50 ms. Here tries come every 100 µs for the first 5 ms, then every
/// millisecond.
fn busy_pause(tries: i32, limit: std::time::Duration) -> Option<std::time::Duration> {
    const FINE_TRIES: u32 = 50;
    const FINE: std::time::Duration = std::time::Duration::from_micros(100);
    const COARSE: std::time::Duration = std::time::Duration::from_millis(1);
    let tries = tries.max(0) as u32;
    let (waited, pause) = if tries < FINE_TRIES {
        (FINE * tries, FINE)
    } else {
        (FINE * FINE_TRIES + COARSE * (tries - FINE_TRIES), COARSE)
    };
    (waited < limit).then_some(pause)
}

fn wait_for_lock(tries: i32, limit: std::time::Duration) -> bool {
    busy_pause(tries, limit).map(std::thread::sleep).is_some()
}

/// The busy handler of the server's connections.
fn patient(tries: i32) -> bool {
    wait_for_lock(tries, BUSY_LIMIT)
}

/// The busy handler of a log restart.
fn brief(tries: i32) -> bool {
    wait_for_lock(tries, RESTART_WAIT)
}

fn open_connection(path: &Path, read_only: bool, sync: Synchronous) -> StoreResult<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_handler(Some(patient))?;
    conn.set_prepared_statement_cache_capacity(64);
    // Off by default in SQLite; the collection ids' references depend on it.
    conn.pragma_update(None, "foreign_keys", true)?;
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
        // The checkpoint thread keeps the log short (see there); no commit checkpoints.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    }
    // A reader's page cache is thrown away whenever another connection commits, and
    // dropping a large cache costs more than re-reading pages from the OS cache: keep
    // readers' caches small, the writer's (which stays valid) larger. Sizes in KiB. The
    // writer's 2 MiB hold the tables' upper levels; what a cache of 8 MiB kept beyond
    // that was a quarter of the server's heap under load for no measurable gain (the OS
    // cache has the pages anyway: docs/benchmarks.md, "Memory, CPU per request and tail
    // latency beside Mozilla's server").
    conn.pragma_update(None, "cache_size", if read_only { -1024 } else { -2048 })?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > latest {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported: latest,
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        tracing::info!(version, "applied database migration");
    }
    Ok(())
}

/// A write job runs inside the group transaction and returns what to do once the group
/// has committed (or failed to: then with the commit error).
type Job = Box<dyn FnOnce(&Conn) -> Completion + Send>;
type Completion = Box<dyn FnOnce(Option<&str>) + Send>;

/// Most jobs one commit covers, and roughly the most payload bytes: together they bound how
/// long a request can wait behind a group that is already running.
const MAX_GROUP: usize = 64;
const GROUP_BYTES: usize = 1 << 20;

/// A job with an estimate of the payload bytes it writes.
struct Queued {
    bytes: usize,
    /// Clean-up nobody waits for: it runs when no other write is queued.
    later: bool,
    job: Job,
    queued: std::time::Instant,
}

/// The database file as it was opened. A file deleted or replaced under a running server
/// still takes writes (the server holds the old inode open) that nobody will ever read
/// again; the guard notices, and from then on every commit is refused until a restart.
#[derive(Clone)]
struct FileGuard {
    path: PathBuf,
    identity: (u64, u64),
    lost: Arc<AtomicBool>,
    /// The `-shm` file, opened to read its inode flags: see [`FileGuard::shared_memory`].
    shm: Arc<Option<std::fs::File>>,
    shm_blocked: Arc<AtomicBool>,
}

/// Less free space than this on the database's file system fails the heartbeat: SQLite
/// needs room for the log before a write can even start.
const MIN_FREE_BYTES: u64 = 8 << 20;

impl FileGuard {
    fn new(path: &Path) -> StoreResult<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        Ok(FileGuard {
            path: path.to_path_buf(),
            identity: (m.dev(), m.ino()),
            lost: Default::default(),
            shm: Arc::new(std::fs::File::open(beside(path, "-shm")).ok()),
            shm_blocked: Default::default(),
        })
    }

    /// Checked before every transaction (reads, writes, checkpoints). Once the `-shm` file
    /// is made immutable or append-only under a running server, SQLite's next write to
    /// its mapping of that file kills the process with SIGBUS, and every connection
    /// writes to it (read marks, the log index). Refusing the transaction first turns
    /// that into a 503 until the flag is taken off. An ioctl on an open file: about a
    /// microsecond. A flag set between this check and the access can still end the
    /// process; the binary then names the cause.
    fn shared_memory(&self) -> StoreResult<()> {
        use rustix::fs::IFlags;
        const BLOCKED: &str =
            "the database's -shm file is immutable or append-only; every request is refused until the flag is removed (chattr -i)";
        let Some(shm) = self.shm.as_ref() else {
            return Ok(());
        };
        // File systems without inode flags cannot have these either.
        let blocked = rustix::fs::ioctl_getflags(shm).is_ok_and(|f| f.intersects(IFlags::IMMUTABLE | IFlags::APPEND));
        // Read first: every request passes here, and only a change needs a write.
        if blocked == self.shm_blocked.load(Ordering::Relaxed) {
            return if blocked { Err(unavailable(BLOCKED)) } else { Ok(()) };
        }
        let was = self.shm_blocked.swap(blocked, Ordering::Relaxed);
        if !blocked {
            if was {
                tracing::warn!(path = %self.path.display(), "the -shm file is writable again; serving");
            }
            return Ok(());
        }
        if !was {
            tracing::error!(path = %self.path.display(), "{BLOCKED}");
        }
        Err(unavailable(BLOCKED))
    }

    fn check(&self) -> StoreResult<()> {
        use std::os::unix::fs::MetadataExt;
        const LOST: &str = "the database file was deleted or replaced while the server ran; restart it";
        if self.lost.load(Ordering::Relaxed) {
            return Err(unavailable(LOST));
        }
        match std::fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.identity => Ok(()),
            _ => {
                if !self.lost.swap(true, Ordering::Relaxed) {
                    tracing::error!(path = %self.path.display(), "{LOST}; refusing every write");
                }
                Err(unavailable(LOST))
            }
        }
    }

    /// The heartbeat's view: the file is ours, it and its log are writable, the disk
    /// has room.
    fn health(&self) -> StoreResult<()> {
        self.check()?;
        self.shared_memory()?;
        sidecars_writable(&self.path)?;
        for suffix in ["", "-wal"] {
            if std::fs::metadata(beside(&self.path, suffix)).is_ok_and(|m| m.permissions().readonly()) {
                return Err(unavailable("the database or its write-ahead log is read-only"));
            }
        }
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if let Ok(fs) = rustix::fs::statvfs(dir) {
            if fs.f_bavail.saturating_mul(fs.f_frsize) < MIN_FREE_BYTES {
                return Err(unavailable("the disk under the database is full"));
            }
        }
        Ok(())
    }
}

/// Whether the log and shared-memory files beside the database can be opened for
/// writing. While they cannot (an immutable `-shm`), SQLite's next use of the shared
/// memory kills the process with SIGBUS: the server refuses to start then, and the
/// heartbeat reports it (the binary also names the cause if the signal comes).
fn sidecars_writable(db: &Path) -> StoreResult<()> {
    for suffix in ["-wal", "-shm"] {
        let p = beside(db, suffix);
        match std::fs::OpenOptions::new().write(true).open(&p) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(path = ?p, error = %e, "cannot open a database file for writing");
                return Err(unavailable(
                    "a file beside the database (-wal or -shm) cannot be opened for writing: read-only or immutable",
                ));
            }
        }
    }
    Ok(())
}

/// Writes of at most this many payload bytes take the small lane: a tabs record, a few
/// history visits, meta/global, a delete by ids.
const SMALL_JOB: usize = 64 << 10;

/// Clean-up waits for the lanes of requests at most this long, so that a writer busy
/// without a pause still purges (one step at a time).
const LATER_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The writer's queue in two lanes. A small write used to wait behind whatever groups of
/// first-sync uploads were ahead of it, and in a group with them; now small writes go in
/// groups of their own, and the lanes take turns, so a small write waits for at most one
/// group of large ones (and a large one for at most one group of small ones). Clean-up
/// (`later`) waits until both are empty, or a second at most, and then goes one job at a
/// time.
#[derive(Default)]
struct Lanes {
    small: std::collections::VecDeque<Queued>,
    large: std::collections::VecDeque<Queued>,
    later: std::collections::VecDeque<Queued>,
    small_last: bool,
}

impl Lanes {
    fn push(&mut self, q: Queued) {
        if q.later {
            self.later.push_back(q);
        } else if q.bytes <= SMALL_JOB {
            self.small.push_back(q);
        } else {
            self.large.push_back(q);
        }
    }

    fn is_empty(&self) -> bool {
        self.small.is_empty() && self.large.is_empty() && self.later.is_empty()
    }

    /// The next group: up to [`MAX_GROUP`] jobs and about [`GROUP_BYTES`], from one lane.
    fn next_group(&mut self) -> (&'static str, Vec<Queued>) {
        let starved = self.later.front().is_some_and(|q| q.queued.elapsed() >= LATER_MAX_WAIT);
        if starved || (self.small.is_empty() && self.large.is_empty()) {
            return ("later", self.later.pop_front().into_iter().collect());
        }
        let take_large = !self.large.is_empty() && (self.small.is_empty() || self.small_last);
        self.small_last = !take_large;
        let (lane, queue) = if take_large {
            ("large", &mut self.large)
        } else {
            ("small", &mut self.small)
        };
        let mut group = Vec::new();
        let mut bytes = 0;
        while let Some(q) = queue.front() {
            if !group.is_empty() && (group.len() >= MAX_GROUP || bytes + q.bytes > GROUP_BYTES) {
                break;
            }
            bytes += q.bytes;
            group.extend(queue.pop_front());
        }
        (lane, group)
    }
}

fn writer_thread(conn: Conn, jobs: std::sync::mpsc::Receiver<Queued>, guard: FileGuard, restart: Arc<AtomicBool>) {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let mut lanes = Lanes::default();
    loop {
        if lanes.is_empty() {
            match jobs.recv() {
                Ok(q) => lanes.push(q),
                Err(_) => return,
            }
        }
        while let Ok(q) = jobs.try_recv() {
            lanes.push(q);
        }
        if restart.swap(false, Ordering::Relaxed) && guard.shared_memory().is_ok() {
            restart_log(&conn.guard());
        }
        let (lane, queued) = lanes.next_group();
        let started = std::time::Instant::now();
        // Where a write waits: for the writer (this), in its group (the store's own
        // timing of the operation has the rest), for the commit's fsync (below).
        let wait = metrics::histogram!("syncstead_sqlite_write_wait_seconds", "lane" => lane);
        let mut group = Vec::with_capacity(queued.len());
        for q in queued {
            wait.record(started.duration_since(q.queued).as_secs_f64());
            group.push(q.job);
        }
        metrics::histogram!("syncstead_sqlite_group_jobs", "lane" => lane).record(group.len() as f64);
        if let Err(e) = guard.shared_memory() {
            // Each dropped job answers its caller that the database is unavailable.
            drop(group);
            tracing::debug!(error = %e, "write group refused");
            continue;
        }
        if let Err(e) = conn.batch("BEGIN IMMEDIATE") {
            tracing::error!(error = %e, "cannot begin a write transaction");
            // Each dropped job answers its caller that the database is unavailable.
            continue;
        }
        let mut done = Vec::with_capacity(group.len());
        let mut panicked = false;
        for job in group {
            match catch_unwind(AssertUnwindSafe(|| job(&conn))) {
                Ok(completion) => done.push(completion),
                Err(_) => panicked = true,
            }
        }
        // A panic may have left a savepoint half done: then nothing of the group is kept.
        let failure = if panicked {
            Some("a write failed unexpectedly; the group was rolled back".to_string())
        } else if let Err(e) = guard.check() {
            Some(e.to_string())
        } else {
            let commit = std::time::Instant::now();
            let r = conn.batch("COMMIT").err().map(|e| e.to_string());
            metrics::histogram!("syncstead_sqlite_commit_seconds").record(commit.elapsed().as_secs_f64());
            r
        };
        if let Some(e) = &failure {
            tracing::error!(error = %e, "group commit failed");
            let _ = conn.batch("ROLLBACK");
        }
        metrics::histogram!("syncstead_sqlite_group_seconds", "lane" => lane).record(started.elapsed().as_secs_f64());
        for d in done {
            d(failure.as_deref());
        }
    }
}

/// Frames of write-ahead log (4 KiB each) past which the checkpoint thread starts the
/// log over: 32 MiB.
const RESTART_FRAMES: i64 = 8192;

/// Copies the write-ahead log into the database four times a second, on its own
/// connection, so the writer never pays for copying inside a request. PASSIVE never
/// blocks the writer or readers. It never starts the log over either, so under steady
/// writes the log would only grow: once a copy was complete and the log is long, this
/// asks the writer thread to start it over between two groups ([`restart_log`]).
///
/// That used to be a RESTART on this connection, which needs the writer's lock; but the
/// writer begins its next group microseconds after each commit, so under steady writes
/// RESTART waited out its limit for a gap it never saw, fell back to a PASSIVE copy, and
/// the log grew without bound: 572 MiB in one 40-second benchmark run.
fn checkpoint_thread(
    conn: Connection,
    stop: std::sync::mpsc::Receiver<()>,
    guard: FileGuard,
    restart: Arc<AtomicBool>,
    restart_frames: i64,
) {
    use std::sync::mpsc::RecvTimeoutError;
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(std::time::Duration::from_millis(250)) {
        if guard.shared_memory().is_err() {
            continue;
        }
        match copy_for_restart(&conn, restart_frames) {
            Ok(true) => restart.store(true, Ordering::Relaxed),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "checkpoint failed"),
        }
    }
}

/// Frames that may have arrived since the last complete copy for the writer to start the
/// log over: the restart copies and syncs them while writes wait.
const RESTART_LEFT: i64 = 256;

/// Copies the log into the database; true when the log is past `restart_frames` and
/// copied. A copy of a long log takes long enough for many new frames to arrive
/// meanwhile, and the restart copies those while writes wait, so it copies again (up to
/// three times) until few have; then it asks anyway, as a log that is never started over
/// costs more than one longer pause. A copy that a reader held back (it is on an older
/// snapshot) would hold the restart back too: then it waits for the next turn.
fn copy_for_restart(conn: &Connection, restart_frames: i64) -> rusqlite::Result<bool> {
    let mut pass = checkpoint(conn, "PASSIVE")?;
    if pass.frames < restart_frames {
        return Ok(false);
    }
    for _ in 0..3 {
        if !pass.is_complete() {
            return Ok(false);
        }
        let again = checkpoint(conn, "PASSIVE")?;
        if again.is_complete() && again.frames - pass.frames <= RESTART_LEFT {
            return Ok(true);
        }
        pass = again;
    }
    Ok(pass.is_complete())
}

/// What one `PRAGMA wal_checkpoint` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pass {
    /// The checkpoint could not have the locks its mode needs (a RESTART: readers of the
    /// old log remained).
    busy: bool,
    /// Frames in the log.
    frames: i64,
    /// Frames copied into the database.
    copied: i64,
}

impl Pass {
    fn is_complete(&self) -> bool {
        self.copied == self.frames
    }
}

fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<Pass> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok(Pass {
            busy: r.get::<_, i64>(0)? != 0,
            frames: r.get(1)?,
            copied: r.get(2)?,
        })
    })
}

/// Starts the log over, on the writer's connection between two groups, so the lock it
/// needs is already free. The checkpoint thread has just copied the log, so what is left
/// to copy and sync is what the last group or two wrote; then it waits (at most
/// [`RESTART_WAIT`]) for readers still on the old log. Writes wait for it meanwhile,
/// once per 32 MiB of log. Readers that take longer put it off to the next complete copy.
fn restart_log(conn: &Connection) {
    let started = std::time::Instant::now();
    let outcome = conn
        .busy_handler(Some(brief))
        .and_then(|()| checkpoint(conn, "RESTART"));
    if let Err(e) = conn.busy_handler(Some(patient)) {
        tracing::error!(error = %e, "cannot restore the writer's busy handler");
    }
    let outcome = match outcome {
        Ok(pass) if !pass.busy => "done",
        Ok(_) => "put_off",
        Err(e) => {
            tracing::warn!(error = %e, "log restart failed");
            "failed"
        }
    };
    metrics::histogram!("syncstead_sqlite_restart_seconds").record(started.elapsed().as_secs_f64());
    metrics::counter!("syncstead_sqlite_restarts_total", "outcome" => outcome).increment(1);
}

fn join_err(e: tokio::task::JoinError) -> StoreError {
    StoreError::Internal(Box::new(e))
}

fn unavailable(what: &'static str) -> StoreError {
    StoreError::Unavailable(what.into())
}

/// The SQLite side of [`Db`]: the writer thread, the readers and a cache of storage times.
/// A copy shares them all (a clean-up write outliving its request holds one).
#[derive(Clone)]
pub struct SqliteEngine {
    path: PathBuf,
    guard: FileGuard,
    /// The way to the writer thread.
    writer: std::sync::mpsc::Sender<Queued>,
    /// Storage timestamps of buckets written since start, kept by the writer thread right
    /// after each commit (before anyone hears of the write), so polling
    /// `info/collections` with X-If-Modified-Since needs no database round trip.
    storage_times: WriteTimes<UserId>,
    /// The times of recent writes to each collection, so that a write which would be
    /// turned away for its tick waits for the next one before it queues for the writer.
    recent: WriteTimes<Written>,
    readers: Arc<Mutex<Vec<Conn>>>,
    reader_slots: Arc<Semaphore>,
    readers_max: usize,
    /// Dropping the store's last copy drops this and so stops the checkpoint thread.
    _checkpoint_stop: std::sync::mpsc::Sender<()>,
}

impl Db<SqliteEngine> {
    /// Opens (creating if needed) the database and applies pending migrations.
    pub async fn open(options: SqliteOptions) -> StoreResult<Self> {
        let engine = tokio::task::spawn_blocking(move || SqliteEngine::open(options))
            .await
            .map_err(join_err)??;
        Db::new(engine).await
    }
}

impl SqliteEngine {
    fn open(options: SqliteOptions) -> StoreResult<Self> {
        Self::open_with(options, RESTART_FRAMES)
    }

    /// [`SqliteEngine::open`], with the log started over past `restart_frames` frames.
    fn open_with(options: SqliteOptions, restart_frames: i64) -> StoreResult<Self> {
        create_private_file(&options.path)?;
        sidecars_writable(&options.path)?;
        let mut writer = open_connection(&options.path, false, options.synchronous)?;
        migrate(&mut writer)?;
        let guard = FileGuard::new(&options.path)?;
        let (writer_guard, checkpoint_guard) = (guard.clone(), guard.clone());
        let restart = Arc::new(AtomicBool::new(false));
        let checkpoint_restart = restart.clone();
        let readers = options.readers.max(1);
        let (sender, jobs) = std::sync::mpsc::channel::<Queued>();
        let writer = Conn::new(writer);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_thread(writer, jobs, writer_guard, restart))
            .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        let (checkpoint_stop, checkpoint_rx) = std::sync::mpsc::channel::<()>();
        let checkpoint_conn = open_connection(&options.path, false, options.synchronous)?;
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                checkpoint_thread(
                    checkpoint_conn,
                    checkpoint_rx,
                    checkpoint_guard,
                    checkpoint_restart,
                    restart_frames,
                );
            })
            .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        Ok(SqliteEngine {
            guard,
            path: options.path,
            writer: sender,
            storage_times: WriteTimes::new(MAX_CACHED_TIMES),
            recent: WriteTimes::new(MAX_CACHED_TIMES),
            _checkpoint_stop: checkpoint_stop,
            readers: Arc::new(Mutex::new(Vec::with_capacity(readers))),
            reader_slots: Arc::new(Semaphore::new(readers)),
            readers_max: readers,
        })
    }

    /// Runs `f` on the writer, in its own savepoint of the current group transaction.
    /// The answer arrives after the group has committed.
    async fn submit<R, F>(&self, bytes: usize, later: bool, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t Conn) -> BoxFuture<'t, StoreResult<R>> + Send + 'static,
    {
        let (done, answer) = tokio::sync::oneshot::channel::<StoreResult<R>>();
        let (times, recent) = (self.storage_times.clone(), self.recent.clone());
        let job: Job = Box::new(move |conn| {
            let (mut new_times, mut written) = (Vec::new(), Vec::new());
            conn.take_touched();
            let result = (|| {
                conn.batch("SAVEPOINT job")?;
                let r = run_now(f(conn));
                match &r {
                    Ok(_) => {
                        written = conn.take_touched();
                        for ((user, _), _) in &written {
                            let t = run_now(Box::pin(crate::storage::storage_time(conn, *user)))?;
                            new_times.push((*user, t));
                        }
                        conn.batch("RELEASE job")?;
                    }
                    Err(_) => conn.batch("ROLLBACK TO job; RELEASE job")?,
                }
                r
            })();
            Box::new(move |commit_error| {
                let result = match (result, commit_error) {
                    (_, Some(e)) => Err(StoreError::Unavailable(format!("commit failed: {e}").into())),
                    (r, _) => r,
                };
                if result.is_ok() {
                    times.record(new_times);
                    recent.record(written);
                }
                let _ = done.send(result);
            })
        });
        self.writer
            .send(Queued {
                bytes,
                later,
                job,
                queued: std::time::Instant::now(),
            })
            .map_err(|_| unavailable("the writer has stopped"))?;
        answer.await.map_err(|_| unavailable("the writer dropped a job"))?
    }
}

impl Engine for SqliteEngine {
    type Tx = Conn;
    const SHARED_BY_PROCESSES: bool = false;
    const CLEANUP_WAITS_FOR_BULK_READS: bool = false;

    fn read_slots(&self) -> usize {
        self.readers_max
    }

    async fn read<R, F>(&self, mode: Read, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t Conn) -> BoxFuture<'t, StoreResult<R>> + Send + 'static,
    {
        let _permit = self
            .reader_slots
            .acquire()
            .await
            .map_err(|_| unavailable("the store is closed"))?;
        self.guard.shared_memory()?;
        let pool = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let conn = match pooled {
                Some(c) => c,
                None => Conn::new(open_connection(&path, true, Synchronous::Full)?),
            };
            // A single statement is its own snapshot; several share one read transaction.
            let result = if mode == Read::Snapshot {
                conn.batch("BEGIN DEFERRED").and_then(|_| {
                    let r = run_now(f(&conn));
                    conn.batch("COMMIT").and(r)
                })
            } else {
                run_now(f(&conn))
            };
            pool.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
            result
        })
        .await
        .map_err(join_err)?
    }

    async fn write<R, F>(&self, cost: usize, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t Conn) -> BoxFuture<'t, StoreResult<R>> + Send + 'static,
    {
        self.submit(cost, false, f).await
    }

    async fn write_idle<R, F>(&self, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t Conn) -> BoxFuture<'t, StoreResult<R>> + Send + 'static,
    {
        self.submit(0, true, f).await
    }

    fn cached_storage_time(&self, user: UserId) -> Option<SyncTimestamp> {
        self.storage_times.get(user)
    }

    fn last_write_hint(&self, user: UserId, coll: Option<i64>) -> Option<SyncTimestamp> {
        match coll {
            Some(_) => self.recent.get((user, coll)),
            None => self.storage_times.get(user),
        }
    }

    /// Gives free pages (left by purges and by users deleting their data) back to the file
    /// system, 2,000 pages (8 MiB) per writer job so requests never wait long.
    async fn reclaim_space(&self) -> StoreResult<()> {
        for _ in 0..256 {
            let left = self
                .submit(HEAVY, false, |conn| {
                    Box::pin(std::future::ready((|| {
                        let c = conn.guard();
                        // The pragma frees one page per step: step it to the end.
                        let mut stmt = c.prepare_cached("PRAGMA incremental_vacuum(2000)")?;
                        let mut rows = stmt.query([])?;
                        while rows.next()?.is_some() {}
                        drop(rows);
                        Ok(c.query_row("PRAGMA freelist_count", [], |r| r.get::<_, i64>(0))?)
                    })()))
                })
                .await?;
            if left == 0 {
                break;
            }
        }
        Ok(())
    }

    fn health(&self) -> StoreResult<()> {
        self.guard.health()
    }

    async fn database_bytes(&self) -> StoreResult<u64> {
        let mut bytes = 0;
        for suffix in ["", "-wal"] {
            bytes += std::fs::metadata(beside(&self.path, suffix))
                .map(|m| m.len())
                .unwrap_or(0);
        }
        Ok(bytes)
    }
}

/// Copies a live database into `dest` with SQLite's online backup: a consistent snapshot
/// while the server keeps serving (writers are only paused between steps). Returns the
/// number of pages copied.
pub fn backup(db: &Path, dest: &Path) -> AdminResult<u64> {
    if dest.exists() {
        return Err(AdminError::Exists(dest.to_path_buf()));
    }
    let src = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(StoreError::from)?;
    create_private_file(dest)?;
    let run = || -> rusqlite::Result<(u64, String)> {
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
        Ok((pages.max(0) as u64, check))
    };
    let (pages, check) = run().map_err(StoreError::from)?;
    if check != "ok" {
        return Err(AdminError::Integrity(check));
    }
    Ok(pages)
}

/// Puts a backup in place as the database at `db` (the server must be stopped). Refuses a
/// file that is not a Syncstead database this release can open, and an existing database
/// unless `force`.
pub fn restore(backup_file: &Path, db: &Path, force: bool) -> AdminResult<()> {
    let src = Connection::open_with_flags(backup_file, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(StoreError::from)?;
    let probe = || -> rusqlite::Result<(i64, i64)> {
        let version: i64 = src.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let has_bsos: i64 = src.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'bsos'",
            [],
            |r| r.get(0),
        )?;
        Ok((version, has_bsos))
    };
    let not_a_database = |version| AdminError::NotADatabase {
        path: backup_file.to_path_buf(),
        version,
    };
    let (version, has_bsos) = probe().map_err(|_| not_a_database(0))?;
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
    if version == 0 || version > latest || has_bsos == 0 {
        return Err(not_a_database(version));
    }
    if db.exists() && !force {
        return Err(AdminError::ExistsWithoutForce(db.to_path_buf()));
    }
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(beside(db, suffix));
    }
    let _ = std::fs::remove_file(db);
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::lock::create_private_dir(dir).map_err(|e| AdminError::Io(dir.to_path_buf(), e))?;
    }
    create_private_file(db)?;
    let copy = || -> rusqlite::Result<()> {
        let mut out = Connection::open(db)?;
        let backup = rusqlite::backup::Backup::new(&src, &mut out)?;
        backup.run_to_completion(1024, std::time::Duration::ZERO, None)
    };
    copy().map_err(StoreError::from)?;
    Ok(())
}

/// An existing database file this user cannot open for writing, with what to do about
/// it: SQLite itself would only say "attempt to write a readonly database".
pub fn unwritable(path: &Path) -> Option<(std::io::Error, String)> {
    if !path.exists() {
        return None;
    }
    let e = std::fs::OpenOptions::new().read(true).write(true).open(path).err()?;
    let hint = crate::lock::access_hint(path, &e);
    Some((e, hint))
}

/// Looks at a database without changing it (`syncstead doctor`): its schema version and
/// nodes. `None` when the file does not exist yet.
pub fn inspect(path: &Path) -> StoreResult<Option<crate::Inspection>> {
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let schema: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let has_nodes: i64 = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'nodes'",
        [],
        |r| r.get(0),
    )?;
    let nodes = if has_nodes == 1 {
        let mut stmt = conn.prepare("SELECT node FROM nodes ORDER BY id")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    Ok(Some(crate::Inspection {
        schema,
        latest: MIGRATIONS.last().map_or(0, |m| m.0),
        nodes,
        autovacuum: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(bytes: usize) -> Queued {
        Queued {
            later: false,
            bytes,
            job: Box::new(|_| Box::new(|_| {})),
            queued: std::time::Instant::now(),
        }
    }

    fn clean_up(bytes: usize) -> Queued {
        Queued {
            later: true,
            bytes,
            job: Box::new(|_| Box::new(|_| {})),
            queued: std::time::Instant::now(),
        }
    }

    fn sizes(group: &[Queued]) -> Vec<usize> {
        group.iter().map(|q| q.bytes).collect()
    }

    // Issue 16, item 4: a small write waits for at most one group of large ones, and is
    // never in a group with them; large ones are not starved by a stream of small ones.
    #[test]
    fn small_writes_go_in_their_own_groups_and_the_lanes_take_turns() {
        let mut lanes = Lanes::default();
        for bytes in [300_000, 300_000, 300_000, 300_000, 100, 200] {
            lanes.push(job(bytes));
        }
        let (lane, g) = lanes.next_group();
        assert_eq!((lane, sizes(&g)), ("small", vec![100, 200]));
        let (lane, g) = lanes.next_group();
        assert_eq!(
            (lane, sizes(&g)),
            ("large", vec![300_000, 300_000, 300_000]),
            "about GROUP_BYTES"
        );
        lanes.push(job(50));
        let (lane, g) = lanes.next_group();
        assert_eq!((lane, sizes(&g)), ("small", vec![50]));
        lanes.push(job(60));
        let (lane, g) = lanes.next_group();
        assert_eq!((lane, sizes(&g)), ("large", vec![300_000]), "the large lane's turn");
        let (lane, g) = lanes.next_group();
        assert_eq!((lane, sizes(&g)), ("small", vec![60]));
        assert!(lanes.is_empty());
    }

    // Issue 16: under writes without a pause the log is still started over. The writer
    // begins its next group microseconds after each commit; a restart that waited for the
    // writer's lock from another connection rarely saw it free, and the log grew by all
    // that was written (572 MiB in a 40-second benchmark run). Here the log restarts past
    // 1 MiB while eight users write 64 KiB requests back to back for two seconds; the
    // log's header counts its restarts, read while the writes still go on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_log_restarts_while_writes_never_pause() {
        use crate::{BsoInput, Precondition, Store, WriteLimits};
        use std::sync::atomic::AtomicU64;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let options = SqliteOptions::new(&path);
        let engine = tokio::task::spawn_blocking(move || SqliteEngine::open_with(options, 256))
            .await
            .unwrap()
            .unwrap();
        let db = Arc::new(Db::new(engine).await.unwrap());
        let (stop, written) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let writers: Vec<_> = (0..8)
            .map(|user| {
                let (db, stop, written) = (db.clone(), stop.clone(), written.clone());
                tokio::spawn(async move {
                    for n in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let bsos = (0..4)
                            .map(|i| BsoInput {
                                id: format!("r{n}_{i}"),
                                payload: Some("x".repeat(16 << 10)),
                                sortindex: None,
                                ttl: None,
                            })
                            .collect();
                        db.post_bsos(user, "history", bsos, Precondition::None, WriteLimits::default())
                            .await
                            .unwrap();
                        written.fetch_add(64 << 10, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        // The checkpoint sequence number of the log's header (bytes 12..16), which SQLite
        // counts up each time the log starts over.
        let header = std::fs::read(beside(&path, "-wal")).unwrap();
        let restarts = u32::from_be_bytes(header[12..16].try_into().unwrap());
        let written = written.load(Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        assert!(
            restarts >= 2 && written >= 8 << 20,
            "{restarts} restarts while {written} bytes were written"
        );
    }

    #[test]
    fn a_job_larger_than_a_group_still_runs_alone() {
        let mut lanes = Lanes::default();
        lanes.push(job(5 << 20));
        lanes.push(job(5 << 20));
        let (_, g) = lanes.next_group();
        assert_eq!(sizes(&g), vec![5 << 20]);
        let small = (0..100).map(|_| job(10)).collect::<Vec<_>>();
        for q in small {
            lanes.push(q);
        }
        let (lane, g) = lanes.next_group();
        assert_eq!((lane, g.len()), ("small", MAX_GROUP));
    }

    // Issue 16, item 4: the sweep of a committed batch's staged records never delays a
    // request's write: it waits for both lanes to be empty, and goes one job at a time.
    #[test]
    fn clean_up_waits_for_both_lanes_and_goes_alone() {
        let mut lanes = Lanes::default();
        lanes.push(clean_up(0));
        lanes.push(clean_up(0));
        lanes.push(job(100));
        lanes.push(job(300_000));
        assert_eq!(lanes.next_group().0, "small");
        lanes.push(job(200));
        assert_eq!(lanes.next_group().0, "large");
        assert_eq!(lanes.next_group().0, "small");
        let (lane, g) = lanes.next_group();
        assert_eq!((lane, g.len()), ("later", 1));
        lanes.push(job(300));
        assert_eq!(
            lanes.next_group().0,
            "small",
            "a request's write goes before the rest of the clean-up"
        );
        let (lane, g) = lanes.next_group();
        assert_eq!((lane, g.len()), ("later", 1));
        assert!(lanes.is_empty());
    }

    // A writer that is never idle still runs the purge: clean-up that has waited a second
    // goes before the requests' writes.
    #[test]
    fn clean_up_is_not_starved() {
        let mut lanes = Lanes::default();
        let mut old = clean_up(0);
        old.queued -= LATER_MAX_WAIT;
        lanes.push(job(100));
        lanes.push(old);
        lanes.push(clean_up(0));
        let (lane, g) = lanes.next_group();
        assert_eq!((lane, g.len()), ("later", 1));
        assert_eq!(lanes.next_group().0, "small", "the clean-up that has not waited long");
        assert_eq!(lanes.next_group().0, "later");
    }

    // Issue 16, item 4: a wait for a lock tries again every 100 µs at first, and gives
    // up after its limit, not before and not long after.
    #[test]
    fn lock_waits_try_often_then_give_up_at_their_limit() {
        let total = |limit| {
            let mut waited = std::time::Duration::ZERO;
            let mut tries = 0;
            while let Some(pause) = busy_pause(tries, limit) {
                waited += pause;
                tries += 1;
            }
            (tries, waited)
        };
        let limit = std::time::Duration::from_millis(50);
        assert_eq!(busy_pause(0, limit), Some(std::time::Duration::from_micros(100)));
        assert_eq!(busy_pause(49, limit), Some(std::time::Duration::from_micros(100)));
        assert_eq!(busy_pause(50, limit), Some(std::time::Duration::from_millis(1)));
        assert_eq!(total(limit), (95, limit));
        assert_eq!(total(RESTART_WAIT).1, RESTART_WAIT);
        assert_eq!(total(BUSY_LIMIT).1, BUSY_LIMIT);
        assert_eq!(busy_pause(-1, limit), busy_pause(0, limit));
    }
}
