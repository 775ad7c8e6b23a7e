//! Hawk nonces recorded in the database, so that a request captured on its way to one
//! server process cannot be replayed to another that shares the database (T10-118).

use async_trait::async_trait;
use syncstead_proto::SyncTimestamp;

use crate::db::{Db, Engine, Read};
use crate::sql::{BoxFuture, Tx};
use crate::StoreResult;

#[async_trait]
pub trait NonceStore: Send + Sync {
    /// Whether nonces must be kept here: other processes may serve the same users from
    /// this database. When false the one serving process keeps them in memory.
    fn nonces_are_shared(&self) -> bool;

    /// Records a nonce's key until `expiry`; false if it was recorded before (a replay).
    async fn first_use(&self, key: i64, expiry: SyncTimestamp) -> StoreResult<bool>;
}

const RECORD: &str = "INSERT INTO hawk_nonces (id, expiry) VALUES ($1, $2) ON CONFLICT DO NOTHING";

fn record<T: Tx>(tx: &T, key: i64, expiry: SyncTimestamp) -> BoxFuture<'_, StoreResult<u64>> {
    Box::pin(async move { tx.execute(RECORD, &[key.into(), expiry.into()]).await })
}

/// Nonces whose token can no longer be used, a chunk at a time.
pub(crate) async fn purge_nonces<T: Tx>(tx: &T, now: SyncTimestamp) -> StoreResult<u64> {
    tx.execute(
        "DELETE FROM hawk_nonces WHERE id IN (SELECT id FROM hawk_nonces WHERE expiry <= $1 LIMIT 10000)",
        &[now.into()],
    )
    .await
}

#[async_trait]
impl<E: Engine> NonceStore for Db<E> {
    fn nonces_are_shared(&self) -> bool {
        E::SHARED_BY_PROCESSES
    }

    async fn first_use(&self, key: i64, expiry: SyncTimestamp) -> StoreResult<bool> {
        // A shared database takes it as one autocommit statement, one round trip; the
        // single-process store (never asked in practice) through its writer.
        let inserted = if E::SHARED_BY_PROCESSES {
            self.read("first_use", Read::Statement, move |tx| record(tx, key, expiry))
                .await?
        } else {
            self.write("first_use", 0, move |tx| record(tx, key, expiry)).await?
        };
        Ok(inserted == 1)
    }
}
