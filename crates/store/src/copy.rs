//! Whole-database moves. [`migrate`] copies a Syncstead database to another backend
//! (SQLite ⇄ PostgreSQL, or to a new file or server of the same kind); [`import_syncserver`]
//! reads the database of Mozilla's old Python `syncserver` (server-syncstorage's `bso`,
//! `collections` and `user_collections` tables and tokenserver's `users`, `nodes` and
//! `services`). Both copy in key order and in chunks, each chunk one transaction, so an
//! interrupted run continues where it stopped (`Mode::Resume`); both verify row counts and
//! per-collection checksums at the end. Pending batches are not copied.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};
use tokio_postgres::types::ToSql;

use crate::{AdminError, AdminResult, PgStore, SqliteOptions, SqliteStore, StoreError, StoreResult};

const CHUNK: usize = 1000;
/// An expiry of "never" in the Python server's `ttl` column (seconds).
const PY_MAX_TTL: i64 = 2_100_000_000;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Ty {
    I32,
    I64,
    Bool,
    Text,
}

struct Table {
    name: Cow<'static, str>,
    cols: &'static [(&'static str, Ty)],
    /// The primary key: rows are read in this order, and resumed after the target's last.
    key: usize,
}

use Ty::*;

/// Syncstead's tables in copy order (batches are left out on purpose).
const TABLES: &[Table] = &[
    Table {
        name: Cow::Borrowed("collections"),
        cols: &[("id", I32), ("name", Text)],
        key: 1,
    },
    Table {
        name: Cow::Borrowed("nodes"),
        cols: &[
            ("id", I64),
            ("node", Text),
            ("available", I64),
            ("current_load", I64),
            ("capacity", I64),
            ("downed", Bool),
            ("backoff", Bool),
        ],
        key: 1,
    },
    Table {
        name: Cow::Borrowed("users"),
        cols: &[
            ("uid", I64),
            ("email", Text),
            ("generation", I64),
            ("client_state", Text),
            ("created_at", I64),
            ("replaced_at", I64),
            ("nodeid", I64),
            ("keys_changed_at", I64),
            ("data_purged", Bool),
        ],
        key: 1,
    },
    Table {
        name: Cow::Borrowed("allowed_accounts"),
        cols: &[("fxa_uid", Text), ("added_at", I64)],
        key: 1,
    },
    Table {
        name: Cow::Borrowed("accounts"),
        cols: &[
            ("id", I64),
            ("username", Text),
            ("email", Text),
            ("password_hash", Text),
            ("created_at", I64),
            ("disabled", Bool),
            ("reset_code_hash", Text),
            ("reset_expires", I64),
        ],
        key: 1,
    },
    Table {
        name: Cow::Borrowed("identities"),
        cols: &[
            ("uid", Text),
            ("email", Text),
            ("auth_salt", Text),
            ("verify_hash", Text),
            ("wrap_wrap_kb", Text),
            ("ka", Text),
            ("keys_changed_at", I64),
            ("created_at", I64),
            ("disabled", Bool),
        ],
        key: 1,
    },
    // Signed-in devices keep their sessions across a move; codes live minutes and queued
    // device commands days, and are not copied.
    Table {
        name: Cow::Borrowed("identity_tokens"),
        cols: &[
            ("id", Text),
            ("kind", Text),
            ("uid", Text),
            ("data", Text),
            ("client_id", Text),
            ("created_at", I64),
            ("expires_at", I64),
        ],
        key: 1,
    },
    Table {
        name: Cow::Borrowed("identity_devices"),
        cols: &[
            ("id", Text),
            ("uid", Text),
            ("token_id", Text),
            ("name", Text),
            ("device_type", Text),
            ("push_callback", Text),
            ("push_public_key", Text),
            ("push_auth_key", Text),
            ("commands", Text),
            ("created_at", I64),
            ("last_access", I64),
        ],
        key: 1,
    },
    Table {
        name: Cow::Borrowed("user_storage"),
        cols: &[("user_id", I64), ("modified", I64)],
        key: 1,
    },
    Table {
        name: Cow::Borrowed("user_collections"),
        cols: &[("user_id", I64), ("collection_id", I32), ("modified", I64)],
        key: 2,
    },
    Table {
        name: Cow::Borrowed("bsos"),
        cols: &[
            ("user_id", I64),
            ("collection_id", I32),
            ("id", Text),
            ("sortindex", I32),
            ("payload", Text),
            ("payload_size", I64),
            ("modified", I64),
            ("expiry", I64),
            ("parentid", Text),
            ("predecessorid", Text),
        ],
        key: 3,
    },
];

fn table(name: &str) -> &'static Table {
    TABLES.iter().find(|t| t.name == name).expect("a known table")
}

/// A column value, whatever the backend.
#[derive(Clone, Debug, PartialEq, PartialOrd)]
pub enum Val {
    Null,
    Int(i64),
    Text(String),
}

impl Val {
    fn int(&self) -> Option<i64> {
        match self {
            Val::Int(i) => Some(*i),
            _ => None,
        }
    }
    fn text(&self) -> Option<&str> {
        match self {
            Val::Text(s) => Some(s),
            _ => None,
        }
    }
}

/// A raw connection to either backend.
enum Db {
    Sqlite(rusqlite::Connection),
    Postgres(tokio_postgres::Client),
}

/// The file a `sqlite://` URL names.
pub fn sqlite_path(url: &str) -> Option<&str> {
    url.strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .map(|p| p.split('?').next().unwrap_or(p))
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl Db {
    async fn connect(url: &str, read_only: bool) -> AdminResult<Db> {
        if let Some(path) = sqlite_path(url) {
            let flags = if read_only {
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
            } else {
                rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
            };
            let conn = rusqlite::Connection::open_with_flags(path, flags).map_err(StoreError::from)?;
            conn.busy_timeout(std::time::Duration::from_secs(30))
                .map_err(StoreError::from)?;
            return Ok(Db::Sqlite(conn));
        }
        if is_postgres(url) {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .map_err(StoreError::from)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::warn!(error = %e, "database connection closed");
                }
            });
            return Ok(Db::Postgres(client));
        }
        Err(AdminError::UnknownUrl(url.to_string()))
    }

    /// A Syncstead database: created and migrated by opening it as a store first.
    async fn syncstead(url: &str) -> AdminResult<Db> {
        if let Some(path) = sqlite_path(url) {
            drop(SqliteStore::open(SqliteOptions::new(path)).await?);
        } else if is_postgres(url) {
            drop(PgStore::open(url, 1).await?);
        }
        Db::connect(url, false).await
    }

    fn is_sqlite(&self) -> bool {
        matches!(self, Db::Sqlite(_))
    }

    /// Runs a query whose columns are typed by `types`.
    async fn select(&mut self, sql: &str, args: &[Val], types: &[Ty]) -> StoreResult<Vec<Vec<Val>>> {
        match self {
            Db::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let params: Vec<rusqlite::types::Value> = args.iter().map(to_sqlite).collect();
                let rows = stmt.query_map(rusqlite::params_from_iter(params), |r| {
                    (0..types.len())
                        .map(|i| {
                            Ok(match r.get::<_, rusqlite::types::Value>(i)? {
                                rusqlite::types::Value::Null => Val::Null,
                                rusqlite::types::Value::Integer(n) => Val::Int(n),
                                rusqlite::types::Value::Real(f) => Val::Int(f as i64),
                                rusqlite::types::Value::Text(s) => Val::Text(s),
                                rusqlite::types::Value::Blob(b) => Val::Text(String::from_utf8_lossy(&b).into_owned()),
                            })
                        })
                        .collect::<rusqlite::Result<Vec<Val>>>()
                })?;
                Ok(rows.collect::<Result<_, _>>()?)
            }
            Db::Postgres(c) => {
                let sql = numbered(sql);
                let params = pg_params(args);
                let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
                let rows = c.query(&sql, &refs).await?;
                // Read by the column's own type: other schemas (the Python server's) use
                // int4 where ours use int8.
                rows.iter()
                    .map(|r| (0..types.len()).map(|i| pg_value(r, i)).collect())
                    .collect()
            }
        }
    }

    /// The next chunk of `t` after `after` (its key values), in key order.
    async fn read(&mut self, t: &Table, after: Option<&[Val]>) -> StoreResult<Vec<Vec<Val>>> {
        let cols: Vec<&str> = t.cols.iter().map(|c| c.0).collect();
        let key = cols[..t.key].join(", ");
        let mut sql = format!("SELECT {} FROM {}", cols.join(", "), t.name);
        let args: Vec<Val> = after.map(|a| a.to_vec()).unwrap_or_default();
        if after.is_some() {
            // PostgreSQL must know the parameters' types; wide ones compare with any width.
            let sqlite = self.is_sqlite();
            let marks: Vec<&str> = t.cols[..t.key]
                .iter()
                .map(|(_, ty)| match (sqlite, ty) {
                    (true, _) => "?",
                    (false, Text) => "?::TEXT",
                    (false, _) => "?::BIGINT",
                })
                .collect();
            let marks = marks.join(", ");
            sql.push_str(&format!(" WHERE ({key}) > ({marks})"));
        }
        sql.push_str(&format!(" ORDER BY {key} LIMIT {CHUNK}"));
        let types: Vec<Ty> = t.cols.iter().map(|c| c.1).collect();
        self.select(&sql, &args, &types).await
    }

    /// Inserts rows in one transaction, leaving rows whose key exists untouched.
    async fn write(&mut self, t: &Table, rows: &[Vec<Val>]) -> StoreResult<()> {
        let cols: Vec<&str> = t.cols.iter().map(|c| c.0).collect();
        match self {
            Db::Sqlite(c) => {
                let tx = c.transaction()?;
                {
                    let marks = vec!["?"; cols.len()].join(", ");
                    let mut stmt = tx.prepare_cached(&format!(
                        "INSERT OR IGNORE INTO {} ({}) VALUES ({marks})",
                        t.name,
                        cols.join(", ")
                    ))?;
                    for row in rows {
                        let params: Vec<rusqlite::types::Value> = row.iter().map(to_sqlite).collect();
                        stmt.execute(rusqlite::params_from_iter(params))?;
                    }
                }
                tx.commit()?;
            }
            Db::Postgres(c) => {
                let tx = c.transaction().await?;
                let marks: Vec<String> = t
                    .cols
                    .iter()
                    .enumerate()
                    .map(|(i, (_, ty))| match ty {
                        I32 => format!("${}::INTEGER", i + 1),
                        I64 => format!("${}::BIGINT", i + 1),
                        Bool => format!("${}::BOOLEAN", i + 1),
                        Text => format!("${}::TEXT", i + 1),
                    })
                    .collect();
                let stmt = tx
                    .prepare(&format!(
                        "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT DO NOTHING",
                        t.name,
                        cols.join(", "),
                        marks.join(", ")
                    ))
                    .await?;
                for row in rows {
                    let params = typed_pg_params(row, t.cols);
                    let refs: Vec<&(dyn ToSql + Sync)> =
                        params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
                    tx.execute(&stmt, &refs).await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    async fn scalar(&mut self, sql: &str) -> StoreResult<i64> {
        Ok(self.select(sql, &[], &[I64]).await?[0][0].int().unwrap_or(0))
    }

    async fn count(&mut self, t: &str) -> StoreResult<i64> {
        self.scalar(&format!("SELECT COUNT(*) FROM {t}")).await
    }

    /// The key of the last row of `t`, if any.
    async fn last_key(&mut self, t: &Table) -> StoreResult<Option<Vec<Val>>> {
        let key: Vec<&str> = t.cols[..t.key].iter().map(|c| c.0).collect();
        let desc: Vec<String> = key.iter().map(|k| format!("{k} DESC")).collect();
        let types: Vec<Ty> = t.cols[..t.key].iter().map(|c| c.1).collect();
        let rows = self
            .select(
                &format!(
                    "SELECT {} FROM {} ORDER BY {} LIMIT 1",
                    key.join(", "),
                    t.name,
                    desc.join(", ")
                ),
                &[],
                &types,
            )
            .await?;
        Ok(rows.into_iter().next())
    }

    async fn has_table(&mut self, name: &str) -> StoreResult<bool> {
        let sql = if self.is_sqlite() {
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?"
        } else {
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = ? AND table_schema = ANY(current_schemas(false))"
        };
        Ok(self.select(sql, &[Val::Text(name.into())], &[I64]).await?[0][0].int() > Some(0))
    }

    async fn columns(&mut self, table: &str) -> StoreResult<Vec<String>> {
        let rows = if self.is_sqlite() {
            self.select(
                "SELECT name FROM pragma_table_info(?)",
                &[Val::Text(table.into())],
                &[Text],
            )
            .await?
        } else {
            self.select(
                "SELECT column_name::TEXT FROM information_schema.columns WHERE table_name = ? AND table_schema = ANY(current_schemas(false))",
                &[Val::Text(table.into())],
                &[Text],
            )
            .await?
        };
        Ok(rows
            .into_iter()
            .filter_map(|r| r[0].text().map(str::to_string))
            .collect())
    }

    /// After rows were inserted with explicit ids, PostgreSQL's sequences must move past them.
    async fn fix_sequences(&mut self) -> StoreResult<()> {
        if let Db::Postgres(c) = self {
            c.batch_execute(
                "SELECT setval(pg_get_serial_sequence('users', 'uid'), GREATEST((SELECT MAX(uid) FROM users), 1));
                 SELECT setval(pg_get_serial_sequence('nodes', 'id'), GREATEST((SELECT MAX(id) FROM nodes), 1));
                 SELECT setval(pg_get_serial_sequence('accounts', 'id'), GREATEST((SELECT MAX(id) FROM accounts), 1));
                 SELECT setval('collections_custom_id', GREATEST((SELECT MAX(id) FROM collections), 100) + 1, false);",
            )
            .await?;
        }
        Ok(())
    }
}

fn pg_value(r: &tokio_postgres::Row, i: usize) -> StoreResult<Val> {
    use tokio_postgres::types::Type;
    let ty = r.columns()[i].type_().clone();
    Ok(if ty == Type::INT2 {
        r.try_get::<_, Option<i16>>(i)?
            .map_or(Val::Null, |v| Val::Int(v.into()))
    } else if ty == Type::INT4 {
        r.try_get::<_, Option<i32>>(i)?
            .map_or(Val::Null, |v| Val::Int(v.into()))
    } else if ty == Type::INT8 {
        r.try_get::<_, Option<i64>>(i)?.map_or(Val::Null, Val::Int)
    } else if ty == Type::BOOL {
        r.try_get::<_, Option<bool>>(i)?
            .map_or(Val::Null, |v| Val::Int(v as i64))
    } else {
        r.try_get::<_, Option<String>>(i)?.map_or(Val::Null, Val::Text)
    })
}

fn to_sqlite(v: &Val) -> rusqlite::types::Value {
    match v {
        Val::Null => rusqlite::types::Value::Null,
        Val::Int(i) => rusqlite::types::Value::Integer(*i),
        Val::Text(s) => rusqlite::types::Value::Text(s.clone()),
    }
}

type PgParam = Box<dyn ToSql + Sync + Send>;

fn pg_params(args: &[Val]) -> Vec<PgParam> {
    args.iter()
        .map(|a| -> PgParam {
            match a {
                Val::Null => Box::new(Option::<i64>::None),
                Val::Int(i) => Box::new(*i),
                Val::Text(s) => Box::new(s.clone()),
            }
        })
        .collect()
}

fn typed_pg_params(row: &[Val], cols: &[(&str, Ty)]) -> Vec<PgParam> {
    row.iter()
        .zip(cols)
        .map(|(v, (_, ty))| -> PgParam {
            match (ty, v) {
                (I32, v) => Box::new(v.int().map(|i| i as i32)),
                (I64, v) => Box::new(v.int()),
                (Bool, v) => Box::new(v.int().map(|i| i != 0)),
                (Text, v) => Box::new(v.text().map(str::to_string)),
            }
        })
        .collect()
}

/// `?` placeholders to PostgreSQL's `$n`, with casts where the type must be known.
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// What a target may already hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The target must hold no data.
    Empty,
    /// Continue an interrupted run: each table goes on after the target's last row.
    Resume,
    /// Write into a target that has data; rows whose key exists there are kept as they are.
    Force,
}

/// What the copy is doing, for a progress display.
#[derive(Clone, Debug)]
pub enum Progress {
    Table { name: String, total: u64 },
    Rows(u64),
    Verifying,
}

/// The outcome: rows copied per table, and the checks made.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub copied: Vec<(String, u64)>,
    pub collections_checked: u64,
    pub records_checked: u64,
}

async fn check_target(to: &mut Db, mode: Mode) -> AdminResult<()> {
    if mode != Mode::Empty {
        return Ok(());
    }
    for t in ["bsos", "users", "accounts", "nodes", "user_collections"] {
        let n = to.count(t).await?;
        if n > 0 {
            return Err(AdminError::TargetNotEmpty {
                table: t.to_string(),
                rows: n,
            });
        }
    }
    Ok(())
}

/// Copies a Syncstead database `from` → `to` (both `sqlite://…` or `postgres://…`).
pub async fn migrate(from: &str, to: &str, mode: Mode, progress: &dyn Fn(Progress)) -> AdminResult<Report> {
    if from == to {
        return Err(AdminError::SameDatabase);
    }
    let mut src = Db::connect(from, true).await?;
    if !src.has_table("bsos").await? {
        return Err(AdminError::WrongSource(format!(
            "{from} is not a Syncstead database (for Mozilla's syncserver use import-syncserver)"
        )));
    }
    let mut dst = Db::syncstead(to).await?;
    check_target(&mut dst, mode).await?;
    let mut report = Report::default();
    for t in TABLES {
        let total = src.count(&t.name).await? as u64;
        progress(Progress::Table {
            name: t.name.to_string(),
            total,
        });
        let mut after = if mode == Mode::Resume && t.name.as_ref() != "collections" {
            dst.last_key(t).await?
        } else {
            None
        };
        let mut copied = 0u64;
        loop {
            let rows = src.read(t, after.as_deref()).await?;
            if rows.is_empty() {
                break;
            }
            dst.write(t, &rows).await?;
            copied += rows.len() as u64;
            progress(Progress::Rows(rows.len() as u64));
            after = rows.last().map(|r| r[..t.key].to_vec());
        }
        report.copied.push((t.name.to_string(), copied));
    }
    dst.fix_sequences().await?;
    progress(Progress::Verifying);
    for t in TABLES.iter().filter(|t| t.name.as_ref() != "collections") {
        let (a, b) = (src.count(&t.name).await?, dst.count(&t.name).await?);
        if a != b && mode != Mode::Force {
            return Err(AdminError::Verification(format!(
                "{} has {a} rows in the source and {b} in the target",
                t.name
            )));
        }
    }
    let (source, target) = (checksums(&mut src, None).await?, checksums(&mut dst, None).await?);
    compare(&source, &target, &mut report)?;
    Ok(report)
}

/// (user, collection) → (records, SHA-256 over them in key order).
type Sums = BTreeMap<(i64, i64), (u64, [u8; 32])>;

/// Checksums of every collection's records. With `python`, the rows are read from the
/// old server's tables and mapped as the import maps them.
async fn checksums(db: &mut Db, python: Option<&PyLayout>) -> AdminResult<Sums> {
    let mut acc: BTreeMap<(i64, i64), (u64, Sha256)> = BTreeMap::new();
    let mut feed = |row: &[Val]| {
        let key = (row[0].int().unwrap_or(0), row[1].int().unwrap_or(0));
        let entry = acc.entry(key).or_insert_with(|| (0, Sha256::new()));
        entry.0 += 1;
        for v in &row[2..] {
            match v {
                Val::Null => entry.1.update([0u8]),
                Val::Int(i) => {
                    entry.1.update([1u8]);
                    entry.1.update(i.to_be_bytes());
                }
                Val::Text(s) => {
                    entry.1.update([2u8]);
                    entry.1.update((s.len() as u64).to_be_bytes());
                    entry.1.update(s.as_bytes());
                }
            }
        }
    };
    match python {
        None => {
            let t = table("bsos");
            let mut after: Option<Vec<Val>> = None;
            loop {
                let rows = db.read(t, after.as_deref()).await?;
                if rows.is_empty() {
                    break;
                }
                rows.iter().for_each(|r| feed(r));
                after = rows.last().map(|r| r[..t.key].to_vec());
            }
        }
        Some(py) => {
            for shard in &py.bso_tables {
                let t = py_bso_table(shard);
                let mut after: Option<Vec<Val>> = None;
                loop {
                    let rows = db.read(&t, after.as_deref()).await?;
                    if rows.is_empty() {
                        break;
                    }
                    for r in &rows {
                        feed(&py.bso_row(r)?);
                    }
                    after = rows.last().map(|r| r[..t.key].to_vec());
                }
            }
        }
    }
    Ok(acc
        .into_iter()
        .map(|(k, (n, h))| (k, (n, h.finalize().into())))
        .collect())
}

fn compare(source: &Sums, target: &Sums, report: &mut Report) -> AdminResult<()> {
    for (key, (n, sum)) in source {
        match target.get(key) {
            Some((m, other)) if m == n && other == sum => {
                report.collections_checked += 1;
                report.records_checked += n;
            }
            Some((m, _)) => {
                return Err(AdminError::Verification(format!(
                    "user {} collection {}: {n} records in the source, {m} in the target{}",
                    key.0,
                    key.1,
                    if m == n { " with different contents" } else { "" }
                )))
            }
            None => {
                return Err(AdminError::Verification(format!(
                    "user {} collection {} is missing in the target",
                    key.0, key.1
                )))
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Mozilla's Python syncserver

/// The old server's bso table(s): `bso`, or `bso0`…`bsoN` when it sharded.
fn py_bso_table(name: &str) -> Table {
    const COLS: &[(&str, Ty)] = &[
        ("userid", I64),
        ("collection", I64),
        ("id", Text),
        ("sortindex", I64),
        ("payload", Text),
        ("payload_size", I64),
        ("modified", I64),
        ("ttl", I64),
    ];
    Table {
        // Table names are checked against the database's own list before use.
        name: Cow::Owned(name.to_string()),
        cols: COLS,
        key: 3,
    }
}

struct PyLayout {
    bso_tables: Vec<String>,
    /// The old collection id → ours.
    collections: HashMap<i64, i64>,
}

impl PyLayout {
    /// One old `bso` row as a row of our `bsos`.
    fn bso_row(&self, r: &[Val]) -> AdminResult<Vec<Val>> {
        let coll = r[1].int().unwrap_or(0);
        let ours = *self
            .collections
            .get(&coll)
            .ok_or_else(|| AdminError::WrongSource(format!("a bso row names unknown collection {coll}")))?;
        let ttl = r[7].int().unwrap_or(PY_MAX_TTL);
        let expiry = if ttl >= PY_MAX_TTL {
            syncstead_proto::SyncTimestamp::NEVER.as_millis()
        } else {
            ttl.saturating_mul(1000)
        };
        Ok(vec![
            r[0].clone(),
            Val::Int(ours),
            r[2].clone(),
            r[3].clone(),
            r[4].clone(),
            r[5].clone(),
            r[6].clone(),
            Val::Int(expiry),
            Val::Null,
            Val::Null,
        ])
    }
}

/// Imports the database of Mozilla's Python `syncserver` (its SQLite file or its
/// PostgreSQL database) into a Syncstead database: token-server users (uid, generation,
/// keys_changed_at, client_state) and nodes, and every stored record with its timestamps,
/// so Firefox keeps syncing without uploading again.
pub async fn import_syncserver(from: &str, to: &str, mode: Mode, progress: &dyn Fn(Progress)) -> AdminResult<Report> {
    let mut src = Db::connect(from, true).await?;
    for needed in ["collections", "user_collections", "users", "nodes"] {
        if !src.has_table(needed).await? {
            return Err(AdminError::WrongSource(format!(
                "{from} has no {needed} table: not a syncserver database"
            )));
        }
    }
    let mut bso_tables = Vec::new();
    if src.has_table("bso").await? {
        bso_tables.push("bso".to_string());
    }
    for i in 0..1000 {
        let name = format!("bso{i}");
        if !src.has_table(&name).await? {
            break;
        }
        bso_tables.push(name);
    }
    if bso_tables.is_empty() {
        return Err(AdminError::WrongSource(format!("{from} has no bso table")));
    }
    let mut dst = Db::syncstead(to).await?;
    check_target(&mut dst, mode).await?;
    let mut report = Report::default();

    // Collections: by name; new names get ids after ours.
    let ours: HashMap<String, i64> = dst
        .select("SELECT name, id FROM collections", &[], &[Text, I64])
        .await?
        .into_iter()
        .filter_map(|r| Some((r[0].text()?.to_string(), r[1].int()?)))
        .collect();
    let theirs = src
        .select(
            "SELECT collectionid, name FROM collections ORDER BY collectionid",
            &[],
            &[I64, Text],
        )
        .await?;
    let mut next = ours.values().copied().max().unwrap_or(0).max(100) + 1;
    let mut map = HashMap::new();
    let mut new_collections = Vec::new();
    for r in &theirs {
        let (Some(id), Some(name)) = (r[0].int(), r[1].text()) else {
            continue;
        };
        let mine = match ours.get(name) {
            Some(m) => *m,
            None => {
                new_collections.push(vec![Val::Int(next), Val::Text(name.to_string())]);
                next += 1;
                next - 1
            }
        };
        map.insert(id, mine);
    }
    dst.write(table("collections"), &new_collections).await?;
    let layout = PyLayout {
        bso_tables,
        collections: map,
    };

    // Nodes of the sync-1.5 service (all nodes when there is no services table).
    let sync_service: Option<i64> = if src.has_table("services").await? {
        src.select("SELECT id FROM services WHERE service LIKE 'sync-1.5%'", &[], &[I64])
            .await?
            .first()
            .and_then(|r| r[0].int())
    } else {
        None
    };
    let service_filter = |col: &str| sync_service.map(|s| format!(" WHERE {col} = {s}")).unwrap_or_default();
    let nodes = src
        .select(
            &format!(
                "SELECT id, node, available, current_load, capacity, downed, backoff FROM nodes{} ORDER BY id",
                service_filter("service")
            ),
            &[],
            &[I64, Text, I64, I64, I64, I64, I64],
        )
        .await?;
    progress(Progress::Table {
        name: "nodes".into(),
        total: nodes.len() as u64,
    });
    let node_by_url: HashMap<String, i64> = nodes
        .iter()
        .filter_map(|n| Some((n[1].text()?.to_string(), n[0].int()?)))
        .collect();
    dst.write(table("nodes"), &nodes).await?;
    report.copied.push(("nodes".into(), nodes.len() as u64));

    // Users: the columns changed over the old server's life (node → nodeid, keys_changed_at).
    let cols = src.columns("users").await?;
    let has = |c: &str| cols.iter().any(|x| x == c);
    let node_expr = if has("nodeid") { "nodeid" } else { "NULL" };
    let node_url = if has("node") { "node" } else { "NULL" };
    let kca = if has("keys_changed_at") {
        "keys_changed_at"
    } else {
        "NULL"
    };
    let users_sql = format!(
        "SELECT uid, email, generation, client_state, created_at, replaced_at, {node_expr}, {kca}, {node_url} FROM users{} ORDER BY uid",
        service_filter("service")
    );
    let users = src
        .select(&users_sql, &[], &[I64, Text, I64, Text, I64, I64, I64, I64, Text])
        .await?;
    progress(Progress::Table {
        name: "users".into(),
        total: users.len() as u64,
    });
    let rows: Vec<Vec<Val>> = users
        .iter()
        .map(|u| {
            let nodeid = u[6]
                .int()
                .or_else(|| u[8].text().and_then(|n| node_by_url.get(n).copied()))
                .unwrap_or(0);
            vec![
                u[0].clone(),
                u[1].clone(),
                u[2].clone(),
                u[3].clone(),
                u[4].clone(),
                u[5].clone(),
                Val::Int(nodeid),
                u[7].clone(),
                Val::Int(0),
            ]
        })
        .collect();
    for chunk in rows.chunks(CHUNK) {
        dst.write(table("users"), chunk).await?;
        progress(Progress::Rows(chunk.len() as u64));
    }
    report.copied.push(("users".into(), rows.len() as u64));

    // Collection times, and each bucket's storage time (its newest collection).
    let uc = src
        .select(
            "SELECT userid, collection, last_modified FROM user_collections ORDER BY userid, collection",
            &[],
            &[I64, I64, I64],
        )
        .await?;
    progress(Progress::Table {
        name: "user_collections".into(),
        total: uc.len() as u64,
    });
    let mut storage: BTreeMap<i64, i64> = BTreeMap::new();
    let mut rows = Vec::with_capacity(uc.len());
    for r in &uc {
        let (Some(user), Some(coll), Some(modified)) = (r[0].int(), r[1].int(), r[2].int()) else {
            continue;
        };
        let Some(mine) = layout.collections.get(&coll) else {
            continue;
        };
        rows.push(vec![Val::Int(user), Val::Int(*mine), Val::Int(modified)]);
        let s = storage.entry(user).or_insert(0);
        *s = (*s).max(modified);
    }
    for chunk in rows.chunks(CHUNK) {
        dst.write(table("user_collections"), chunk).await?;
        progress(Progress::Rows(chunk.len() as u64));
    }
    report.copied.push(("user_collections".into(), rows.len() as u64));
    let storage_rows: Vec<Vec<Val>> = storage.iter().map(|(u, m)| vec![Val::Int(*u), Val::Int(*m)]).collect();
    dst.write(table("user_storage"), &storage_rows).await?;
    report.copied.push(("user_storage".into(), storage_rows.len() as u64));

    // Records, in key order and chunks. A resumed run reads them again and skips those
    // the target already has.
    let mut copied = 0u64;
    for shard in &layout.bso_tables {
        let t = py_bso_table(shard);
        let total = src.count(shard).await? as u64;
        progress(Progress::Table {
            name: format!("records ({shard})"),
            total,
        });
        let mut after: Option<Vec<Val>> = None;
        loop {
            let rows = src.read(&t, after.as_deref()).await?;
            if rows.is_empty() {
                break;
            }
            let mapped = rows
                .iter()
                .map(|r| layout.bso_row(r))
                .collect::<AdminResult<Vec<_>>>()?;
            dst.write(table("bsos"), &mapped).await?;
            copied += rows.len() as u64;
            progress(Progress::Rows(rows.len() as u64));
            after = rows.last().map(|r| r[..t.key].to_vec());
        }
    }
    report.copied.push(("bsos".into(), copied));
    dst.fix_sequences().await?;

    progress(Progress::Verifying);
    let source = checksums(&mut src, Some(&layout)).await?;
    let target = checksums(&mut dst, None).await?;
    compare(&source, &target, &mut report)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    //! `TABLES` is a third description of the schema, beside the two migrations: these
    //! tests hold it to both, so a column added to a migration cannot be left out of
    //! `syncstead migrate` unnoticed.

    use super::*;

    /// Tables the copy leaves out on purpose: pending batches (two hours of life), and
    /// each backend's own bookkeeping.
    const NOT_COPIED: &[&str] = &[
        "batches",
        "batch_items",
        "hawk_nonces",
        "identity_codes",
        "identity_commands",
        "syncstead_schema",
        "sqlite_sequence",
    ];

    fn expected() -> BTreeMap<String, Vec<(String, Ty)>> {
        TABLES
            .iter()
            .map(|t| {
                let cols = t.cols.iter().map(|(c, ty)| (c.to_string(), *ty)).collect();
                (t.name.to_string(), cols)
            })
            .collect()
    }

    fn without_types(tables: &BTreeMap<String, Vec<(String, Ty)>>) -> BTreeMap<String, Vec<String>> {
        tables
            .iter()
            .map(|(t, cols)| (t.clone(), cols.iter().map(|c| c.0.clone()).collect()))
            .collect()
    }

    #[tokio::test]
    async fn copy_tables_match_the_sqlite_migrations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("schema.db");
        drop(SqliteStore::open(SqliteOptions::new(&path)).await.unwrap());
        let conn = rusqlite::Connection::open(&path).unwrap();
        let names: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut found = BTreeMap::new();
        for name in names.iter().filter(|n| !NOT_COPIED.contains(&n.as_str())) {
            let cols: Vec<String> = conn
                .prepare(&format!("SELECT name FROM pragma_table_info('{name}') ORDER BY cid"))
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            found.insert(name.clone(), cols);
        }
        assert_eq!(
            found,
            without_types(&expected()),
            "copy.rs TABLES against migrations/sqlite"
        );
    }

    #[tokio::test]
    async fn postgres_copy_tables_match_the_migrations() {
        let Some(scratch) = crate::testing::ScratchSchema::create().await else {
            eprintln!("SKIPPED: no {} configured", crate::testing::POSTGRES_URL_VAR);
            return;
        };
        drop(PgStore::open(&scratch.url, 1).await.unwrap());
        let (client, conn) = tokio_postgres::connect(&scratch.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let rows = client
            .query(
                "SELECT table_name::TEXT, column_name::TEXT, data_type::TEXT FROM information_schema.columns
                 WHERE table_schema = $1 ORDER BY table_name, ordinal_position",
                &[&scratch.schema],
            )
            .await
            .unwrap();
        let mut found: BTreeMap<String, Vec<(String, Ty)>> = BTreeMap::new();
        for r in &rows {
            let (table, column, ty): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            if NOT_COPIED.contains(&table.as_str()) {
                continue;
            }
            let ty = match ty.as_str() {
                "integer" => I32,
                "bigint" => I64,
                "boolean" => Bool,
                "text" => Text,
                other => panic!("{table}.{column}: a type copy.rs does not know: {other}"),
            };
            found.entry(table).or_default().push((column, ty));
        }
        assert_eq!(found, expected(), "copy.rs TABLES against migrations/postgres");
    }
}
