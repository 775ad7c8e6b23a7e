//! The one SQL surface the protocol rules are written against, whatever the backend.
//!
//! A rule (in `storage`, `legacy`, `tokens`, `accounts`) is an `async fn` over a [`Tx`]: it
//! runs SQL written once with PostgreSQL's `$n` placeholders and only the syntax both
//! dialects accept (`CAST(x AS BIGINT)`, `ON CONFLICT`, `RETURNING`, `TRUE`/`FALSE`, `CASE`
//! instead of `GREATEST`). Where the dialects really differ the rule asks
//! [`Tx::dialect`], so each difference stands next to the rule it belongs to. Arguments
//! and column values travel as [`Arg`] and [`Value`], which each backend converts to and
//! from its driver's types (PostgreSQL's by the parameter's inferred type, so an `i64`
//! binds to an `INTEGER` column too).
//!
//! A backend provides the transaction: the SQLite one answers every call at once (its
//! futures are ready on the first poll, so the writer thread runs a rule to completion in
//! place), the PostgreSQL one over the network, pipelining calls that a rule joins.

use std::future::Future;
use std::pin::Pin;

use syncstead_proto::SyncTimestamp;

use crate::{StoreError, StoreResult, UserId};

/// What a backend's rule-runner takes: a rule applied to its transaction.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// `column IN list-parameter`: PostgreSQL takes an array, SQLite a JSON array.
    pub fn in_list(self, column: &str, param: &str) -> String {
        match self {
            Dialect::Postgres => format!("{column} = ANY({param})"),
            Dialect::Sqlite => format!("{column} IN (SELECT value FROM json_each({param}))"),
        }
    }

    /// The hidden physical row id, for deleting a limited selection.
    pub fn row_id(self) -> &'static str {
        match self {
            Dialect::Postgres => "ctid",
            Dialect::Sqlite => "rowid",
        }
    }
}

/// A statement argument, borrowed from the caller where it can be.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg<'a> {
    Null,
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(&'a str),
    /// A list, for [`Dialect::in_list`] and PostgreSQL's `UNNEST`.
    Ints(Vec<Option<i64>>),
    Texts(Vec<Option<&'a str>>),
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}
impl From<i32> for Arg<'_> {
    fn from(v: i32) -> Self {
        Arg::Int(v.into())
    }
}
impl From<u32> for Arg<'_> {
    fn from(v: u32) -> Self {
        Arg::Int(v.into())
    }
}
impl From<bool> for Arg<'_> {
    fn from(v: bool) -> Self {
        Arg::Bool(v)
    }
}
impl From<f64> for Arg<'_> {
    fn from(v: f64) -> Self {
        Arg::Float(v)
    }
}
impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(v)
    }
}
impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::Text(v)
    }
}
impl From<SyncTimestamp> for Arg<'_> {
    fn from(v: SyncTimestamp) -> Self {
        Arg::Int(v.as_millis())
    }
}
impl<'a, T: Into<Arg<'a>>> From<Option<T>> for Arg<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Arg::Null, Into::into)
    }
}

/// A column value as read back. Booleans arrive as `Int` 0/1 from both backends.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
}

/// One result row; columns are taken by index.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub Vec<Value>);

pub(crate) fn column_type(index: usize, wanted: &'static str) -> StoreError {
    StoreError::Internal(format!("column {index} is not {wanted}").into())
}

/// A timestamp column's value (NULL: 0).
fn time_of(ms: Option<i64>) -> SyncTimestamp {
    SyncTimestamp::from_millis(ms.unwrap_or(0))
}

/// An integer column's value as an `i32` (a sortindex).
fn narrow_i32(i: usize, v: Option<i64>) -> StoreResult<Option<i32>> {
    v.map(|v| i32::try_from(v).map_err(|_| column_type(i, "a 32-bit integer")))
        .transpose()
}

impl Row {
    fn value(&self, i: usize) -> StoreResult<&Value> {
        self.0
            .get(i)
            .ok_or_else(|| StoreError::Internal(format!("no column {i}").into()))
    }

    pub fn opt_int(&self, i: usize) -> StoreResult<Option<i64>> {
        match self.value(i)? {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(*v)),
            // SQLite hands back a REAL where an aggregate of integers overflowed.
            Value::Float(f) => Ok(Some(*f as i64)),
            Value::Text(_) => Err(column_type(i, "an integer")),
        }
    }

    pub fn int(&self, i: usize) -> StoreResult<i64> {
        self.opt_int(i)?.ok_or_else(|| column_type(i, "a non-null integer"))
    }

    pub fn opt_i32(&self, i: usize) -> StoreResult<Option<i32>> {
        narrow_i32(i, self.opt_int(i)?)
    }

    /// A count or size: never negative.
    pub fn count(&self, i: usize) -> StoreResult<u64> {
        Ok(self.opt_int(i)?.unwrap_or(0).max(0) as u64)
    }

    pub fn bool(&self, i: usize) -> StoreResult<bool> {
        Ok(self.int(i)? != 0)
    }

    pub fn time(&self, i: usize) -> StoreResult<SyncTimestamp> {
        Ok(time_of(self.opt_int(i)?))
    }

    /// Moves a text column out of the row (payloads are not copied).
    pub fn opt_text(&mut self, i: usize) -> StoreResult<Option<String>> {
        match self.0.get_mut(i) {
            Some(Value::Null) => Ok(None),
            Some(Value::Text(s)) => Ok(Some(std::mem::take(s))),
            Some(_) => Err(column_type(i, "text")),
            None => Err(StoreError::Internal(format!("no column {i}").into())),
        }
    }

    pub fn text(&mut self, i: usize) -> StoreResult<String> {
        self.opt_text(i)?.ok_or_else(|| column_type(i, "non-null text"))
    }
}

/// A row of [`Tx::query_each`], borrowed; columns are taken by index.
pub trait RowRef {
    fn text(&self, i: usize) -> StoreResult<&str>;

    fn opt_int(&self, i: usize) -> StoreResult<Option<i64>>;

    fn time(&self, i: usize) -> StoreResult<SyncTimestamp> {
        Ok(time_of(self.opt_int(i)?))
    }

    fn opt_i32(&self, i: usize) -> StoreResult<Option<i32>> {
        narrow_i32(i, self.opt_int(i)?)
    }
}

/// A way to make transactions wait for each other where one backend needs it; the SQLite
/// backend has a single writer, so it needs none of them.
#[derive(Debug, Clone, Copy)]
pub enum Lock<'a> {
    /// A Storage 1.1 bucket: its writes take turns (1.5 buckets use [`Tx::lock_bucket`]).
    Legacy(UserId),
    /// One account's token requests.
    Login(&'a str),
    /// Sign-ups against a user limit (token server).
    SignUps,
    /// Weave account creation against an account limit.
    Accounts,
}

/// A bucket's write lock, taken: the time of this write and the last-modified it is
/// later than (0 for a collection never written), read under the lock.
#[derive(Debug, Clone, Copy)]
pub struct Locked {
    pub now: SyncTimestamp,
    pub modified: SyncTimestamp,
}

/// What a write transaction gave a new time: a bucket's collection, or (`None`) the
/// whole bucket.
pub(crate) type Written = (UserId, Option<i64>);

/// One transaction of a backend. Every method's future is `Send`, so a rule written once
/// serves the multi-threaded HTTP server on every backend.
pub trait Tx: Sync {
    fn dialect(&self) -> Dialect;

    /// Runs a statement; returns the number of rows it changed.
    fn execute(&self, sql: &str, args: &[Arg<'_>]) -> impl Future<Output = StoreResult<u64>> + Send;

    fn query(&self, sql: &str, args: &[Arg<'_>]) -> impl Future<Output = StoreResult<Vec<Row>>> + Send;

    fn query_opt(&self, sql: &str, args: &[Arg<'_>]) -> impl Future<Output = StoreResult<Option<Row>>> + Send;

    /// Runs a query and hands `each` every row as it is read, borrowed from the database's
    /// buffers rather than copied into a [`Row`]: for long listings, the bulk of what a
    /// server reads, where a copy (and an allocation) per value is most of the cost.
    fn query_each(
        &self,
        sql: &str,
        args: &[Arg<'_>],
        each: &mut (dyn FnMut(&dyn RowRef) -> StoreResult<()> + Send),
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Takes the bucket's write lock for the rest of the transaction and returns the time
    /// of this write, strictly later than the last-modified of what it writes (S15-043):
    /// collection `coll`, or with `None` the whole bucket (its storage time). Writes to
    /// different collections may share a clock tick, as in Mozilla's server. A backend
    /// that cannot wait here answers [`StoreError::Conflict`], and its runner retries the
    /// whole transaction at the next clock tick.
    fn lock_bucket(&self, user: UserId, coll: Option<i64>) -> impl Future<Output = StoreResult<Locked>> + Send;

    /// Takes the bucket's write lock for a write that moves no timestamp (a batch's
    /// create and appends only stage records, S15-046) and returns the current time, for
    /// expiries: such a write never waits for the next clock tick.
    fn lock_bucket_to_stage(&self, user: UserId) -> impl Future<Output = StoreResult<SyncTimestamp>> + Send;

    /// Holds `lock` until the transaction ends.
    fn lock(&self, lock: Lock<'_>) -> impl Future<Output = StoreResult<()>> + Send;
}

/// A query that must return one row.
pub(crate) async fn query_one<T: Tx>(tx: &T, sql: &str, args: &[Arg<'_>]) -> StoreResult<Row> {
    tx.query_opt(sql, args)
        .await?
        .ok_or_else(|| StoreError::Internal("a query returned no row".into()))
}

/// `$n` placeholders to SQLite's `?n` (the same numbering, so arguments may repeat).
/// Byte-wise: every statement passes through here, and `$` and digits are ASCII.
pub(crate) fn sqlite_placeholders(sql: &str) -> std::borrow::Cow<'_, str> {
    let bytes = sql.as_bytes();
    if !bytes.contains(&b'$') {
        return std::borrow::Cow::Borrowed(sql);
    }
    let mut out = bytes.to_vec();
    for i in 0..out.len().saturating_sub(1) {
        if out[i] == b'$' && out[i + 1].is_ascii_digit() {
            out[i] = b'?';
        }
    }
    // Only ASCII was replaced by ASCII, so the text is still UTF-8.
    match String::from_utf8(out) {
        Ok(s) => std::borrow::Cow::Owned(s),
        Err(_) => std::borrow::Cow::Borrowed(sql),
    }
}

/// A builder for statements whose conditions depend on the request (listings, 1.1
/// selectors): each argument gets the next `$n`.
#[derive(Default)]
pub(crate) struct Sql<'a> {
    pub text: String,
    pub args: Vec<Arg<'a>>,
}

impl<'a> Sql<'a> {
    pub fn new(text: &str, args: Vec<Arg<'a>>) -> Self {
        Sql {
            text: text.to_string(),
            args,
        }
    }

    /// Adds an argument and returns its placeholder.
    pub fn arg(&mut self, v: impl Into<Arg<'a>>) -> String {
        self.args.push(v.into());
        format!("${}", self.args.len())
    }

    pub fn push(&mut self, s: &str) {
        self.text.push_str(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_keep_their_numbers_for_sqlite() {
        assert_eq!(
            sqlite_placeholders("SELECT $2, $1, $10 WHERE x = '$'"),
            "SELECT ?2, ?1, ?10 WHERE x = '$'"
        );
        assert!(matches!(sqlite_placeholders("SELECT 1"), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn rows_convert_and_refuse_wrong_types() {
        let mut row = Row(vec![Value::Int(3), Value::Null, Value::Text("x".into())]);
        assert_eq!(row.int(0).unwrap(), 3);
        assert!(row.bool(0).unwrap());
        assert_eq!(row.opt_int(1).unwrap(), None);
        assert!(row.int(2).is_err());
        assert_eq!(row.text(2).unwrap(), "x");
        assert!(row.int(9).is_err());
    }
}
