//! The storage trait Syncstead's HTTP layer talks to, and its backends.
//!
//! A *bucket* (`UserId`) holds one user's collections. Storage 1.5 uids map to buckets
//! directly; later protocol surfaces get their own, non-overlapping ranges.

use async_trait::async_trait;
use syncstead_proto::query::CollectionQuery;
use syncstead_proto::wbo::{Wbo, WboInput, WboQuery};
use syncstead_proto::{Bso, BsoInput, ListingFormat, SyncTimestamp};

pub mod accounts;
pub mod copy;
mod db;
mod error;
pub mod identity;
mod legacy;
pub mod lock;
mod nonces;
pub mod postgres;
#[doc(hidden)]
pub mod sql;
pub mod sqlite;
mod storage;
pub mod testing;
pub mod tokens;

pub use accounts::{Account, AccountError};
pub use db::{Db, Engine};
pub use error::{AdminError, AdminResult, Cause, StoreError, StoreResult};
pub use identity::{AuthCode, AuthToken, Credentials, Device, DeviceCommand, Identity, IdentityStore, TokenKind};
pub use lock::{InstanceLock, LockError};
pub use nonces::NonceStore;
pub use sqlite::{SqliteOptions, Synchronous};
pub use tokens::{Assignment, Login, LoginError, NewUserPolicy, Node, NodeUpdate};

/// The embedded SQLite store (the default).
pub type SqliteStore = Db<sqlite::SqliteEngine>;
/// The PostgreSQL store, for operators who outgrow one machine.
pub type PgStore = Db<postgres::PgEngine>;

pub type UserId = i64;

/// Batches expire two hours after creation (S15-122).
pub const BATCH_LIFETIME_MS: i64 = 2 * 60 * 60 * 1000;

/// A client precondition, evaluated inside the operation's own transaction (S15-057).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precondition {
    #[default]
    None,
    IfModifiedSince(SyncTimestamp),
    IfUnmodifiedSince(SyncTimestamp),
}

impl Precondition {
    /// Compares the resource timestamp (S15-051) with the precondition (S15-054, S15-055).
    pub fn check(self, resource: SyncTimestamp) -> StoreResult<()> {
        match self {
            Precondition::IfModifiedSince(t) if resource <= t => Err(StoreError::NotModified(resource)),
            Precondition::IfUnmodifiedSince(t) if resource > t => Err(StoreError::PreconditionFailed(resource)),
            _ => Ok(()),
        }
    }
}

/// How many records a listing returns and, when its `limit` cuts it, the paging token
/// after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    pub records: u64,
    pub next_offset: Option<String>,
}

/// Live records and payload bytes of one collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionUsage {
    pub collection: String,
    pub count: u64,
    pub bytes: u64,
}

/// One page of `GET /storage/{c}`. Without `full`, payloads are left empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub modified: SyncTimestamp,
    pub bsos: Vec<Bso>,
    pub next_offset: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeletedCollection {
    /// The collection's last-modified before the delete (0 if it did not exist).
    pub previous: SyncTimestamp,
    /// The storage last-modified afterwards.
    pub storage: SyncTimestamp,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeReport {
    pub bsos: u64,
    pub batches: u64,
    /// Custom collection names released because nothing used them any more.
    pub collections: u64,
    /// Time spent deleting, and then giving free pages back (SQLite's incremental vacuum;
    /// nothing on PostgreSQL, whose autovacuum does it).
    pub deleting: std::time::Duration,
    pub reclaiming: std::time::Duration,
}

/// What `syncstead doctor` reads of a database, without changing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// The schema version the database is at, and the one this release migrates to.
    pub schema: i64,
    pub latest: i64,
    /// The storage nodes the token server knows.
    pub nodes: Vec<String>,
    /// PostgreSQL's `autovacuum` setting (None for SQLite). Off, dead rows and planner
    /// statistics from a young, nearly empty database slow every request as data grows.
    pub autovacuum: Option<bool>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub users: u64,
    pub active_batches: u64,
    /// Rows in the collection-name registry: the standard names and the custom ones in use.
    pub collection_names: u64,
    pub database_bytes: u64,
}

/// Per-write policy the HTTP layer passes down: the quota, if enforced (S15-170), and what
/// one batch may stage in all (S15-130).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteLimits {
    pub quota_bytes: Option<u64>,
    pub batch_records: Option<u64>,
    pub batch_bytes: Option<u64>,
}

/// The storage operations of the Sync protocols. Every write is atomic: it happens whole or
/// not at all, and writes to one bucket are serialised so each gets a strictly later time.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Storage-level last-modified (S15-045): the hot read behind `info/collections` polling.
    async fn storage_timestamp(&self, user: UserId) -> StoreResult<SyncTimestamp>;
    /// `info/collections`: every existing collection with its last-modified.
    async fn collection_timestamps(
        &self,
        user: UserId,
        pre: Precondition,
    ) -> StoreResult<(SyncTimestamp, Vec<(String, SyncTimestamp)>)>;
    /// Live counts and bytes per collection (collections without live records omitted).
    async fn collection_usage(
        &self,
        user: UserId,
        pre: Precondition,
    ) -> StoreResult<(SyncTimestamp, Vec<CollectionUsage>)>;
    async fn get_collection(
        &self,
        user: UserId,
        collection: &str,
        query: &CollectionQuery,
        pre: Precondition,
    ) -> StoreResult<Page>;
    /// The first read of a listing that may be streamed: `get_collection` cut at `first`
    /// records and, when more follow and `query` asks for more than those, the extent of
    /// the whole listing, read in the same snapshot without payloads: what a response
    /// streamed in chunks announces in its headers.
    async fn open_listing(
        &self,
        user: UserId,
        collection: &str,
        query: &CollectionQuery,
        first: u32,
        pre: Precondition,
    ) -> StoreResult<(Page, Option<Extent>)>;
    /// The next records of a listing being streamed, from the paging token in
    /// `query.offset`: a single statement, with no collection time and no precondition
    /// (the first read checked those). They come written in `format`, each after a
    /// separator, into a buffer of about `size_hint` bytes: rendered as they are read,
    /// with nothing allocated per record, since long listings are most of what a server
    /// reads. Returns the bytes, how many records they hold, and the paging token after
    /// them.
    async fn listing_chunk(
        &self,
        user: UserId,
        collection: &str,
        query: &CollectionQuery,
        format: ListingFormat,
        size_hint: usize,
    ) -> StoreResult<(Vec<u8>, u64, Option<String>)>;
    async fn get_bso(&self, user: UserId, collection: &str, id: &str, pre: Precondition) -> StoreResult<Bso>;
    /// Upserts one BSO (S15-093); returns the write time.
    async fn put_bso(
        &self,
        user: UserId,
        collection: &str,
        bso: BsoInput,
        pre: Precondition,
        limits: WriteLimits,
    ) -> StoreResult<SyncTimestamp>;
    /// Upserts many BSOs at one time (S15-107); the collection is touched even when `bsos` is empty.
    async fn post_bsos(
        &self,
        user: UserId,
        collection: &str,
        bsos: Vec<BsoInput>,
        pre: Precondition,
        limits: WriteLimits,
    ) -> StoreResult<SyncTimestamp>;
    async fn delete_bso(
        &self,
        user: UserId,
        collection: &str,
        id: &str,
        pre: Precondition,
    ) -> StoreResult<SyncTimestamp>;
    async fn delete_bsos(
        &self,
        user: UserId,
        collection: &str,
        ids: Vec<String>,
        pre: Precondition,
    ) -> StoreResult<SyncTimestamp>;
    async fn delete_collection(
        &self,
        user: UserId,
        collection: &str,
        pre: Precondition,
    ) -> StoreResult<DeletedCollection>;
    /// Deletes the whole bucket; returns the storage last-modified it had.
    async fn delete_storage(&self, user: UserId, pre: Precondition) -> StoreResult<SyncTimestamp>;
    /// Opens a batch and stages `bsos` in it; returns the batch id and the collection's
    /// unchanged last-modified.
    async fn create_batch(
        &self,
        user: UserId,
        collection: &str,
        bsos: Vec<BsoInput>,
        pre: Precondition,
        limits: WriteLimits,
    ) -> StoreResult<(String, SyncTimestamp)>;
    async fn append_batch(
        &self,
        user: UserId,
        collection: &str,
        batch: &str,
        bsos: Vec<BsoInput>,
        pre: Precondition,
        limits: WriteLimits,
    ) -> StoreResult<SyncTimestamp>;
    /// Applies the staged records, then `bsos`, at one time T (S15-125).
    async fn commit_batch(
        &self,
        user: UserId,
        collection: &str,
        batch: &str,
        bsos: Vec<BsoInput>,
        pre: Precondition,
        limits: WriteLimits,
    ) -> StoreResult<SyncTimestamp>;
    /// Removes expired records and batches.
    async fn purge_expired(&self) -> StoreResult<PurgeReport>;
    async fn stats(&self) -> StoreResult<StoreStats>;
    /// A cheap round trip to the database, for `__heartbeat__`.
    async fn check(&self) -> StoreResult<()>;
}

/// The token server's records: storage nodes, and the users assigned to them.
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// Finds or creates the account's current record, checks the request against it and
    /// updates it, all in one transaction (tokenserver.md §5).
    async fn login(&self, request: Login, policy: NewUserPolicy) -> Result<Assignment, LoginError>;
    async fn nodes(&self) -> StoreResult<Vec<Node>>;
    /// Adds a node with `capacity`; false (and the node untouched) if it exists.
    async fn add_node(&self, url: &str, capacity: i64) -> StoreResult<bool>;
    async fn update_node(&self, url: &str, update: NodeUpdate) -> StoreResult<bool>;
    /// Changes a node's URL, keeping its users (the server moved behind a new address).
    async fn rename_node(&self, from: &str, to: &str) -> StoreResult<bool>;
    /// Removes a node; its users move to another node at their next token request.
    async fn remove_node(&self, url: &str) -> StoreResult<bool>;
    /// Adds an account to (or removes it from) the sign-up allow list.
    async fn allow_account(&self, fxa_uid: &str, allow: bool) -> StoreResult<bool>;
    async fn allowed_accounts(&self) -> StoreResult<Vec<String>>;
    /// Current records: (email, uid, node).
    async fn token_users(&self) -> StoreResult<Vec<(String, i64, String)>>;
    /// Deletes the stored data of records on `node` replaced before `before_ms` (a key
    /// change or a move gave the account a new uid); returns how many buckets were emptied.
    async fn purge_replaced(&self, node: &str, before_ms: i64) -> StoreResult<u64>;
}

/// Weave 1.1 accounts.
#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    /// Creates an account unless the username is taken or `max_accounts` are reached.
    async fn create_account(
        &self,
        username: &str,
        email: &str,
        password_hash: &str,
        max_accounts: Option<u64>,
    ) -> Result<Account, AccountError>;
    async fn account(&self, username: &str) -> StoreResult<Option<Account>>;
    async fn accounts(&self) -> StoreResult<Vec<Account>>;
    /// Deletes the account and all of its stored data.
    async fn delete_account(&self, username: &str) -> StoreResult<bool>;
    /// Sets a new password hash and clears any pending reset code.
    async fn set_password(&self, username: &str, password_hash: &str) -> StoreResult<bool>;
    async fn set_email(&self, username: &str, email: &str) -> StoreResult<bool>;
    async fn set_disabled(&self, username: &str, disabled: bool) -> StoreResult<bool>;
    /// Stores (or with `None` clears) the hash of a password-reset code and its expiry (ms).
    async fn set_reset_code(&self, username: &str, code: Option<(String, i64)>) -> StoreResult<bool>;
}

/// Live count, live payload bytes and last-modified (max `modified`, expired included,
/// S11-033) of one 1.1 collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WboCollection {
    pub name: String,
    pub modified: SyncTimestamp,
    pub count: u64,
    pub bytes: u64,
}

/// What a 1.1 write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WboWrite {
    /// The write time T.
    pub time: SyncTimestamp,
    /// Each WBO's `modified` after the write (unchanged where no payload was sent).
    pub modified: Vec<SyncTimestamp>,
    /// With a quota: the payload bytes stored before the write.
    pub used_bytes: Option<u64>,
}

/// Storage 1.1 (storage-1.1.md): last writer wins, a collection's time is its newest
/// item, only payload writes move `modified`.
#[async_trait]
pub trait LegacyStore: Send + Sync + 'static {
    async fn wbo_collections(&self, user: UserId) -> StoreResult<Vec<WboCollection>>;
    async fn wbo_get(&self, user: UserId, collection: &str, query: &WboQuery) -> StoreResult<Vec<Wbo>>;
    /// `wbo_get` continued past the (modified, id) key of the last item of a previous
    /// read, for listings sorted newest or oldest first: how a long listing is streamed.
    async fn wbo_get_after(
        &self,
        user: UserId,
        collection: &str,
        query: &WboQuery,
        after: (SyncTimestamp, String),
    ) -> StoreResult<Vec<Wbo>>;
    /// How many items `wbo_get` with `query` would return.
    async fn wbo_count(&self, user: UserId, collection: &str, query: &WboQuery) -> StoreResult<u64>;
    async fn wbo_get_one(&self, user: UserId, collection: &str, id: &str) -> StoreResult<Option<Wbo>>;
    /// Writes the WBOs at one time T, unless the collection changed after
    /// `if_unmodified_since` (S11-072) or the quota is used up (S11-071).
    async fn wbo_put(
        &self,
        user: UserId,
        collection: &str,
        wbos: Vec<WboInput>,
        if_unmodified_since: Option<SyncTimestamp>,
        limits: WriteLimits,
    ) -> StoreResult<WboWrite>;
    /// Deletes the WBOs the selectors name (all, without selectors).
    async fn wbo_delete(
        &self,
        user: UserId,
        collection: &str,
        query: &WboQuery,
        if_unmodified_since: Option<SyncTimestamp>,
    ) -> StoreResult<SyncTimestamp>;
}

/// Everything a backend provides.
pub trait Backend: Store + TokenStore + AccountStore + IdentityStore + LegacyStore + NonceStore {}
impl<T: Store + TokenStore + AccountStore + IdentityStore + LegacyStore + NonceStore> Backend for T {}
