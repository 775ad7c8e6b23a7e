//! What can go wrong in the store, in terms the protocol layers can answer: a client's
//! precondition, a protocol refusal, or the database itself (unavailable for now, or
//! broken). Each backend classifies its driver's errors into these in its own module.

use std::path::PathBuf;

use syncstead_proto::SyncTimestamp;

/// The underlying error, kept for the log.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `X-If-Modified-Since` matched: nothing to send (S15-054).
    #[error("not modified")]
    NotModified(SyncTimestamp),
    /// `X-If-Unmodified-Since` failed (S15-055, S11-072).
    #[error("precondition failed")]
    PreconditionFailed(SyncTimestamp),
    /// The bucket stayed busy: every clock tick the write waited for was taken (S15-043).
    #[error("write conflict")]
    Conflict,
    #[error("over quota")]
    OverQuota,
    #[error("not found")]
    NotFound,
    #[error("no such batch")]
    BatchNotFound,
    /// A custom collection name was released (no bucket used it) while this write held its
    /// id: the database refused the write, which is retried with the name registered anew.
    #[error("the collection's id was released during the write")]
    CollectionGone,
    /// What a batch has staged would pass `max_total_records` or `max_total_bytes` (S15-130).
    #[error("the batch would exceed its size limits")]
    BatchTooLarge,
    /// The database cannot serve now (busy, pool exhausted, connection lost, disk full);
    /// the same request may succeed later.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] Cause),
    /// The database refused a value (out of range for its column, not valid text).
    #[error("value refused by the database: {0}")]
    BadInput(#[source] Cause),
    /// The database was written by a newer release.
    #[error("database schema version {found} is newer than this release supports ({supported}); upgrade syncstead")]
    SchemaTooNew { found: i64, supported: i64 },
    /// A database URL this release cannot use.
    #[error("bad database URL: {0}")]
    BadUrl(#[source] Cause),
    /// Anything else: a bug or a damaged database.
    #[error("database error: {0}")]
    Internal(#[source] Cause),
}

impl StoreError {
    /// Whether retrying later may succeed (the protocol layers answer 503 + Retry-After).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::Conflict | StoreError::CollectionGone
        )
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What the administrator's commands (backup, restore, migrate, import) can meet besides
/// database errors.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("{} exists; refusing to overwrite it", .0.display())]
    Exists(PathBuf),
    #[error("{} exists; pass --force to replace it", .0.display())]
    ExistsWithoutForce(PathBuf),
    #[error("{} is not a Syncstead database this release can open (schema {version})", .path.display())]
    NotADatabase { path: PathBuf, version: i64 },
    #[error("the copy failed its integrity check: {0}")]
    Integrity(String),
    #[error("{0:?}: expected sqlite://PATH or postgres://…")]
    UnknownUrl(String),
    #[error("source and target are the same database")]
    SameDatabase,
    #[error("the target is not empty ({table}: {rows} rows); use --resume to continue an interrupted run or --force to write into it")]
    TargetNotEmpty { table: String, rows: i64 },
    #[error("{0}")]
    WrongSource(String),
    /// The copy differs from its source.
    #[error("verification failed: {0}")]
    Verification(String),
}

pub type AdminResult<T> = Result<T, AdminError>;
