//! The PostgreSQL backend, for operators who outgrow one machine: a connection pool, every
//! write in its own transaction, and writes of one bucket serialised by a row lock on
//! the bucket's `user_storage` row (1.1 buckets: an advisory lock on the bucket id). Under
//! that lock each write takes a time strictly later than its collection's last (S15-043), so
//! several server processes can share one database without a central writer, and two
//! buckets never wait for each other.
//!
//! The schema mirrors the SQLite one table for table (`migrations/postgres`) and the rules
//! are the same code (`storage.rs` and the others), so timestamps, paging keys, batches,
//! TTLs and quota behave alike to the letter; the conformance tests run against both.

use std::sync::Mutex;

use bytes::BytesMut;
use deadpool_postgres::{Object, Pool};
use syncstead_proto::SyncTimestamp;
use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};

use crate::db::{Db, Engine, Read, WriteTimes, FOREIGN_CLOCK};
use crate::sql::{column_type, Arg, BoxFuture, Dialect, Lock, Locked, Row, RowRef, Tx, Value, Written};
use crate::{StoreError, StoreResult, UserId};

pub(crate) const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_storage.sql")),
    (2, include_str!("../migrations/postgres/0002_tokenserver.sql")),
    (3, include_str!("../migrations/postgres/0003_accounts.sql")),
    (4, include_str!("../migrations/postgres/0004_nonces.sql")),
    (5, include_str!("../migrations/postgres/0005_collection_release.sql")),
    (6, include_str!("../migrations/postgres/0006_identities.sql")),
    (7, include_str!("../migrations/postgres/0007_device_commands.sql")),
    (8, include_str!("../migrations/postgres/0008_batch_totals.sql")),
];

/// How many buckets' last write times a process keeps as hints (only the current tick's
/// matter).
const MAX_RECENT: usize = 10_000;

/// Advisory-lock namespaces (the two-key form, which never meets the bucket locks that
/// use the one-key form).
const LOCK_MIGRATIONS: i32 = 1;
const LOCK_LOGIN: i32 = 2;
const LOCK_ACCOUNTS: i32 = 3;

/// A value that does not fit the parameter's type (an i64 beyond an INTEGER column).
#[derive(Debug, thiserror::Error)]
#[error("{0} does not fit a parameter of type {1}")]
struct ArgError(String, Type);

/// The driver's message and every cause beneath it: tokio-postgres shows only "db error"
/// or "error connecting to server" and keeps what happened (a missing database or role,
/// a refused connection and to where) in its sources.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct PgCause(String);

fn explained(e: &tokio_postgres::Error) -> Box<PgCause> {
    Box::new(PgCause(match e.as_db_error() {
        Some(db) => format!("{e}: {}", db.message()),
        None => with_sources(e),
    }))
}

/// An error's message followed by each of its sources'.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// `postgres at HOST:PORT/DB`, for messages.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = config.get_hosts().first().map_or_else(
        || "localhost".to_string(),
        |h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        },
    );
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("PostgreSQL at {host}:{port}/{}", config.get_dbname().unwrap_or(""))
}

fn at(target: &str, e: StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(c) => StoreError::Unavailable(Box::new(PgCause(format!("{target}: {c}")))),
        StoreError::Internal(c) => StoreError::Internal(Box::new(PgCause(format!("{target}: {c}")))),
        other => other,
    }
}

/// Connection and server trouble is worth a retry; a refused value is the input's fault.
fn classify(e: tokio_postgres::Error) -> StoreError {
    use std::error::Error as _;
    if e.source().is_some_and(|s| s.is::<ArgError>()) {
        return StoreError::BadInput(explained(&e));
    }
    if e.is_closed() || e.source().is_some_and(|s| s.is::<std::io::Error>()) {
        return StoreError::Unavailable(explained(&e));
    }
    let unavailable = e.code().is_some_and(|c| {
        let c = c.code();
        // 08: connection, 53: insufficient resources (disk full, …), 57: operator
        // intervention (shutdown), 40: serialization failure or deadlock.
        c.starts_with("08") || c.starts_with("53") || c.starts_with("57") || c.starts_with("40")
    });
    if unavailable {
        return StoreError::Unavailable(explained(&e));
    }
    // The only foreign keys are those on collection ids (migration 5).
    if e.code().is_some_and(|c| c.code() == "23503") {
        return StoreError::CollectionGone;
    }
    if e.code().is_some_and(|c| c.code().starts_with("22")) {
        return StoreError::BadInput(explained(&e));
    }
    StoreError::Internal(explained(&e))
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        classify(e)
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => classify(e),
            // Timeouts, a closed pool, a failed connect: all pass.
            other => StoreError::Unavailable(Box::new(PgCause(with_sources(&other)))),
        }
    }
}

fn checked<T: ToSql>(v: T, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
    if !T::accepts(ty) {
        return Err(Box::new(ArgError(std::any::type_name::<T>().to_string(), ty.clone())));
    }
    v.to_sql(ty, out)
}

fn int(v: i64, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
    let too_big = || Box::new(ArgError(v.to_string(), ty.clone()));
    if *ty == Type::INT8 {
        checked(v, ty, out)
    } else if *ty == Type::INT4 {
        checked(i32::try_from(v).map_err(|_| too_big())?, ty, out)
    } else if *ty == Type::INT2 {
        checked(i16::try_from(v).map_err(|_| too_big())?, ty, out)
    } else if *ty == Type::BOOL {
        checked(v != 0, ty, out)
    } else {
        checked(v as f64, ty, out)
    }
}

/// Arguments bind by the type PostgreSQL inferred for the parameter, so the rules can pass
/// an `i64` for an `INTEGER` column (checked, never truncated).
impl ToSql for Arg<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Arg::Null => Ok(IsNull::Yes),
            Arg::Int(v) => int(*v, ty, out),
            Arg::Bool(v) if *ty == Type::BOOL => checked(*v, ty, out),
            Arg::Bool(v) => int(i64::from(*v), ty, out),
            Arg::Float(v) => checked(*v, ty, out),
            Arg::Text(s) => checked(*s, ty, out),
            Arg::Ints(v) if *ty == Type::INT4_ARRAY => {
                let narrow = v
                    .iter()
                    .map(|x| x.map(i32::try_from).transpose())
                    .collect::<Result<Vec<Option<i32>>, _>>()
                    .map_err(|_| Box::new(ArgError("a list element".into(), ty.clone())))?;
                checked(narrow, ty, out)
            }
            Arg::Ints(v) => checked(v, ty, out),
            Arg::Texts(v) => checked(v, ty, out),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        // Checked per value in to_sql: the variant decides.
        true
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Value {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(if *ty == Type::INT8 {
            Value::Int(i64::from_sql(ty, raw)?)
        } else if *ty == Type::INT4 {
            Value::Int(i32::from_sql(ty, raw)?.into())
        } else if *ty == Type::INT2 {
            Value::Int(i16::from_sql(ty, raw)?.into())
        } else if *ty == Type::BOOL {
            Value::Int(bool::from_sql(ty, raw)?.into())
        } else if *ty == Type::FLOAT8 {
            Value::Float(f64::from_sql(ty, raw)?)
        } else {
            Value::Text(String::from_sql(ty, raw)?)
        })
    }

    fn from_sql_null(_ty: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Value::Null)
    }

    fn accepts(ty: &Type) -> bool {
        [Type::INT8, Type::INT4, Type::INT2, Type::BOOL, Type::FLOAT8].contains(ty) || <String as FromSql>::accepts(ty)
    }
}

/// A row as the driver received it.
struct PgRow<'a>(&'a tokio_postgres::Row);

impl RowRef for PgRow<'_> {
    fn text(&self, i: usize) -> StoreResult<&str> {
        Ok(self.0.try_get::<_, &str>(i)?)
    }

    fn opt_int(&self, i: usize) -> StoreResult<Option<i64>> {
        let column = self.0.columns().get(i).ok_or_else(|| column_type(i, "a column"))?;
        Ok(match *column.type_() {
            Type::INT2 => self.0.try_get::<_, Option<i16>>(i)?.map(i64::from),
            Type::INT4 => self.0.try_get::<_, Option<i32>>(i)?.map(i64::from),
            _ => self.0.try_get::<_, Option<i64>>(i)?,
        })
    }
}

fn row(r: &tokio_postgres::Row) -> StoreResult<Row> {
    Ok(Row((0..r.len())
        .map(|i| r.try_get::<_, Value>(i))
        .collect::<Result<_, _>>()?))
}

/// A pooled connection as the rules see it, inside a transaction unless it serves a
/// single statement. Statements go through the connection's prepared-statement cache: one
/// round trip each instead of two, and no re-planning of the same SQL.
pub struct PgTx {
    client: Option<Object>,
    in_transaction: bool,
    /// What this transaction gave a new time, and that time, for [`PgEngine::recent`]
    /// once it has committed.
    written: Mutex<Vec<(Written, SyncTimestamp)>>,
}

impl PgTx {
    async fn begin(client: Object, begin: &str) -> StoreResult<Self> {
        client.batch_execute(begin).await?;
        Ok(PgTx {
            client: Some(client),
            in_transaction: true,
            written: Default::default(),
        })
    }

    /// The bucket's user_storage row is its write lock: FOR UPDATE waits for a concurrent
    /// writer and then reads the row as that writer left it. Returns the last-modified of
    /// `coll` (with `None`, the storage time), read under the lock: the collection's by a
    /// statement of its own sent right behind the lock (one round trip for both), which
    /// runs once the lock is held and, in READ COMMITTED, sees what the writer before it
    /// committed.
    async fn lock_row(&self, user: UserId, coll: Option<i64>) -> StoreResult<SyncTimestamp> {
        const LOCK: &str = "SELECT modified FROM user_storage WHERE user_id = $1 FOR UPDATE";
        let c = self.client()?;
        // Both prepared first, so that each query below is sent when first polled, in
        // order: the collection's read must not overtake the lock.
        let (lock, collection) = (
            c.prepare_cached(LOCK).await?,
            c.prepare_cached(crate::storage::COLLECTION_TIME).await?,
        );
        let coll_time = || async {
            match coll {
                Some(id) => {
                    let args = [Arg::from(user), Arg::from(id)];
                    let r = c.query_opt(&collection, &params(&args)).await?;
                    Ok::<_, StoreError>(Some(r.map_or(Ok(SyncTimestamp::ZERO), |r| PgRow(&r).time(0))?))
                }
                None => Ok(None),
            }
        };
        let user_arg = [Arg::from(user)];
        let user_params = params(&user_arg);
        let (locked, after) = tokio::join!(c.query_opt(&lock, &user_params), coll_time());
        let (locked, mut after) = (locked?, after?);
        let locked = match locked {
            Some(r) => r,
            None => {
                // A first write: make the row (a concurrent first write waits on it), lock
                // it, and read the collection's time again (that writer may have set it).
                self.execute(
                    "INSERT INTO user_storage (user_id, modified) VALUES ($1, 0) ON CONFLICT DO NOTHING",
                    &[user.into()],
                )
                .await?;
                let r = c.query_one(&lock, &user_params).await?;
                after = coll_time().await?;
                r
            }
        };
        match after {
            Some(t) => Ok(t),
            None => PgRow(&locked).time(0),
        }
    }

    fn client(&self) -> StoreResult<&Object> {
        self.client
            .as_ref()
            .ok_or_else(|| StoreError::Internal("the transaction has ended".into()))
    }

    /// Commits or rolls back; the connection goes back to the pool.
    async fn finish(mut self, commit: bool) -> StoreResult<()> {
        let client = self.client.take();
        self.in_transaction = false;
        if let Some(c) = client {
            c.batch_execute(if commit { "COMMIT" } else { "ROLLBACK" }).await?;
        }
        Ok(())
    }

    async fn statement(&self, sql: &str) -> StoreResult<(&Object, tokio_postgres::Statement)> {
        let c = self.client()?;
        Ok((c, c.prepare_cached(sql).await?))
    }
}

impl Drop for PgTx {
    /// A transaction abandoned half-way (the request was cancelled) must not go back to the
    /// pool open: the connection is closed instead, which rolls it back.
    fn drop(&mut self) {
        if let (Some(c), true) = (self.client.take(), self.in_transaction) {
            drop(Object::take(c));
        }
    }
}

fn params<'a>(args: &'a [Arg<'_>]) -> Vec<&'a (dyn ToSql + Sync)> {
    args.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

impl Tx for PgTx {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn execute(&self, sql: &str, args: &[Arg<'_>]) -> StoreResult<u64> {
        let (c, st) = self.statement(sql).await?;
        Ok(c.execute(&st, &params(args)).await?)
    }

    /// Rows are converted as they arrive, so a large page is never held twice (raw and
    /// converted).
    async fn query(&self, sql: &str, args: &[Arg<'_>]) -> StoreResult<Vec<Row>> {
        use futures_util::TryStreamExt;
        let (c, st) = self.statement(sql).await?;
        let stream = c.query_raw(&st, params(args)).await?;
        let mut stream = std::pin::pin!(stream);
        let mut out = Vec::new();
        while let Some(r) = stream.try_next().await? {
            out.push(row(&r)?);
        }
        Ok(out)
    }

    async fn query_opt(&self, sql: &str, args: &[Arg<'_>]) -> StoreResult<Option<Row>> {
        let (c, st) = self.statement(sql).await?;
        c.query_opt(&st, &params(args)).await?.as_ref().map(row).transpose()
    }

    async fn query_each(
        &self,
        sql: &str,
        args: &[Arg<'_>],
        each: &mut (dyn FnMut(&dyn RowRef) -> StoreResult<()> + Send),
    ) -> StoreResult<()> {
        let (c, st) = self.statement(sql).await?;
        for r in &c.query(&st, &params(args)).await? {
            each(&PgRow(r))?;
        }
        Ok(())
    }

    /// Waits for the first clock tick after the collection's (or bucket's) last write (at
    /// most a tick).
    async fn lock_bucket(&self, user: UserId, coll: Option<i64>) -> StoreResult<Locked> {
        let modified = self.lock_row(user, coll).await?;
        let now = later_than(modified).await;
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(((user, coll), now));
        Ok(Locked { now, modified })
    }

    async fn lock_bucket_to_stage(&self, user: UserId) -> StoreResult<SyncTimestamp> {
        self.lock_row(user, None).await?;
        Ok(SyncTimestamp::now())
    }

    async fn lock(&self, lock: Lock<'_>) -> StoreResult<()> {
        match lock {
            Lock::Legacy(user) => self.execute("SELECT pg_advisory_xact_lock($1)", &[user.into()]).await,
            // hashtext() spreads accounts over the lock space; a collision only
            // serialises two accounts' token requests.
            Lock::Login(email) => {
                self.execute(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                    &[LOCK_LOGIN.into(), email.into()],
                )
                .await
            }
            Lock::SignUps => {
                self.execute("SELECT pg_advisory_xact_lock($1, 1)", &[LOCK_LOGIN.into()])
                    .await
            }
            Lock::Accounts => {
                self.execute("SELECT pg_advisory_xact_lock($1, 0)", &[LOCK_ACCOUNTS.into()])
                    .await
            }
        }?;
        Ok(())
    }
}

/// The first clock tick after `last`: waits for it (at most a tick), unless `last` is
/// further ahead than [`FOREIGN_CLOCK`]; then the tick right after it.
async fn later_than(last: SyncTimestamp) -> SyncTimestamp {
    loop {
        let now = SyncTimestamp::now();
        if now > last {
            return now;
        }
        let behind = last.as_millis() - now.as_millis();
        if behind as u128 > FOREIGN_CLOCK.as_millis() {
            return SyncTimestamp::from_millis(last.as_millis() + 10);
        }
        tokio::time::sleep(std::time::Duration::from_millis(behind as u64 + 1)).await;
    }
}

/// The PostgreSQL side of [`Db`]: a pool of connections.
#[derive(Clone)]
pub struct PgEngine {
    pool: Pool,
    /// The times this process last gave the buckets it wrote: a hint only (other
    /// processes may write the same buckets), so that a write which would wait for the
    /// next tick under the bucket's lock waits before it takes a connection.
    recent: WriteTimes<Written>,
}

impl Db<PgEngine> {
    /// Connects (`postgres://user@host:port/db`), applies pending migrations and keeps a
    /// pool of up to `pool_size` connections.
    pub async fn open(url: &str, pool_size: usize) -> StoreResult<Self> {
        let config: tokio_postgres::Config = url.parse().map_err(|e| StoreError::BadUrl(Box::new(e)))?;
        let target = describe(&config);
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
            .map_err(|e| StoreError::Internal(Box::new(e)))?;
        let engine = PgEngine {
            pool,
            recent: WriteTimes::new(MAX_RECENT),
        };
        // The first connection: its failure names where it tried.
        engine.migrate().await.map_err(|e| at(&target, e))?;
        Db::new(engine).await
    }
}

impl PgEngine {
    /// Applies pending migrations under an advisory lock, so nodes starting together
    /// take turns and each migration runs once.
    async fn migrate(&self) -> StoreResult<()> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&LOCK_MIGRATIONS])
            .await?;
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
            return Err(StoreError::SchemaTooNew {
                found: current.into(),
                supported: latest.into(),
            });
        }
        for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO syncstead_schema (version, applied_at) VALUES ($1, $2)",
                &[version, &SyncTimestamp::now().as_millis()],
            )
            .await?;
            tracing::info!(version, "applied database migration");
        }
        tx.commit().await?;
        if !autovacuum_on(&c).await? {
            tracing::warn!("{AUTOVACUUM_OFF}: {AUTOVACUUM_FIX}");
        }
        Ok(())
    }

    /// A pooled connection; the wait for it is what a request spends queuing when the
    /// pool is too small for the load.
    async fn connection(&self) -> StoreResult<Object> {
        let start = std::time::Instant::now();
        let client = self.pool.get().await?;
        metrics::histogram!("syncstead_postgres_pool_wait_seconds").record(start.elapsed().as_secs_f64());
        Ok(client)
    }
}

impl Engine for PgEngine {
    type Tx = PgTx;
    const SHARED_BY_PROCESSES: bool = true;
    const CLEANUP_WAITS_FOR_BULK_READS: bool = true;

    fn read_slots(&self) -> usize {
        self.pool.status().max_size
    }

    fn last_write_hint(&self, user: UserId, coll: Option<i64>) -> Option<SyncTimestamp> {
        self.recent.get((user, coll))
    }

    async fn read<R, F>(&self, mode: Read, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t PgTx) -> BoxFuture<'t, StoreResult<R>> + Send + 'static,
    {
        let client = self.connection().await?;
        // One statement in autocommit: also how a shared nonce is recorded in a single
        // round trip (nonces.rs).
        if mode == Read::Statement {
            let tx = PgTx {
                client: Some(client),
                in_transaction: false,
                written: Default::default(),
            };
            return f(&tx).await;
        }
        // A read-only snapshot, so a check and the rows it guards agree.
        let tx = PgTx::begin(client, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
        let out = f(&tx).await;
        tx.finish(out.is_ok()).await?;
        out
    }

    async fn write<R, F>(&self, _cost: usize, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t PgTx) -> BoxFuture<'t, StoreResult<R>> + Send + 'static,
    {
        let tx = PgTx::begin(self.connection().await?, "BEGIN").await?;
        let out = f(&tx).await;
        match out {
            Ok(v) => {
                let written = std::mem::take(&mut *tx.written.lock().unwrap_or_else(|p| p.into_inner()));
                tx.finish(true).await?;
                self.recent.record(written);
                Ok(v)
            }
            Err(e) => {
                if let Err(rollback) = tx.finish(false).await {
                    tracing::warn!(error = %rollback, "rollback failed");
                }
                Err(e)
            }
        }
    }

    /// PostgreSQL's autovacuum reclaims space by itself.
    async fn reclaim_space(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn database_bytes(&self) -> StoreResult<u64> {
        let c = self.pool.get().await?;
        let n: i64 = c
            .query_one("SELECT CAST(pg_database_size(current_database()) AS BIGINT)", &[])
            .await?
            .get(0);
        Ok(n.max(0) as u64)
    }
}

/// Looks at a database without changing it (`syncstead doctor`): its schema version and
/// nodes; a connection failure names where it tried.
/// What an autovacuum that is off does, and the fix: said by `serve` and by `doctor`.
pub const AUTOVACUUM_OFF: &str = "PostgreSQL's autovacuum is off: dead rows pile up and the planner keeps the \
     statistics of a young, nearly empty database, so requests slow down as data grows";
pub const AUTOVACUUM_FIX: &str =
    "set autovacuum = on in postgresql.conf (the default), or run VACUUM ANALYZE on a schedule";

/// Whether the server vacuums and analyzes on its own (`autovacuum`, on by default).
async fn autovacuum_on(client: &tokio_postgres::Client) -> StoreResult<bool> {
    let row = client.query_one("SHOW autovacuum", &[]).await?;
    Ok(row.get::<_, String>(0) == "on")
}

pub async fn inspect(url: &str) -> StoreResult<crate::Inspection> {
    let config: tokio_postgres::Config = url.parse().map_err(|e| StoreError::BadUrl(Box::new(e)))?;
    let target = describe(&config);
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| at(&target, classify(e)))?;
    let task = tokio::spawn(conn);
    let has = |table: &'static str| {
        let client = &client;
        async move {
            let row = client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
                .await?;
            Ok::<bool, StoreError>(row.get(0))
        }
    };
    let schema: i64 = if has("syncstead_schema").await? {
        let row = client
            .query_one(
                "SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM syncstead_schema",
                &[],
            )
            .await?;
        row.get(0)
    } else {
        0
    };
    let nodes = if has("nodes").await? {
        client
            .query("SELECT node FROM nodes ORDER BY id", &[])
            .await?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect()
    } else {
        Vec::new()
    };
    let autovacuum = autovacuum_on(&client).await?;
    drop(client);
    let _ = task.await;
    Ok(crate::Inspection {
        schema,
        latest: MIGRATIONS.last().map_or(0, |m| m.0).into(),
        nodes,
        autovacuum: Some(autovacuum),
    })
}
