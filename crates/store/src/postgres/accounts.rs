//! Weave 1.1 accounts in PostgreSQL.

use async_trait::async_trait;
use tokio_postgres::types::ToSql;

use super::{delete_bucket, PgStore, LOCK_ACCOUNTS};
use crate::accounts::{Account, AccountError};
use crate::{AccountStore, StoreResult};

const COLUMNS: &str = "id, username, email, password_hash, created_at, disabled, reset_code_hash, reset_expires";

fn from_row(r: &tokio_postgres::Row) -> Account {
    let code: Option<String> = r.get(6);
    let expires: Option<i64> = r.get(7);
    Account {
        id: r.get(0),
        username: r.get(1),
        email: r.get(2),
        password_hash: r.get(3),
        created_at: r.get(4),
        disabled: r.get(5),
        reset: code.zip(expires),
    }
}

fn now_ms() -> i64 {
    syncstead_proto::SyncTimestamp::now().as_millis()
}

impl PgStore {
    async fn update_account(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<bool> {
        let c = self.client().await?;
        Ok(c.execute(sql, params).await? > 0)
    }
}

#[async_trait]
impl AccountStore for PgStore {
    async fn create_account(
        &self,
        username: &str,
        email: &str,
        password_hash: &str,
        max_accounts: Option<u64>,
    ) -> Result<Account, AccountError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(crate::StoreError::from)?;
        // Serialises sign-ups, so the account limit holds under concurrency.
        tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&LOCK_ACCOUNTS])
            .await
            .map_err(crate::StoreError::from)?;
        let exists = tx
            .query_opt("SELECT id FROM accounts WHERE username = $1", &[&username])
            .await
            .map_err(crate::StoreError::from)?;
        if exists.is_some() {
            return Err(AccountError::Exists);
        }
        if let Some(max) = max_accounts {
            let n: i64 = tx
                .query_one("SELECT COUNT(*)::BIGINT FROM accounts", &[])
                .await
                .map_err(crate::StoreError::from)?
                .get(0);
            if n as u64 >= max {
                return Err(AccountError::Full);
            }
        }
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO accounts (username, email, password_hash, created_at) VALUES ($1, $2, $3, $4)
                     RETURNING {COLUMNS}"
                ),
                &[&username, &email, &password_hash, &now_ms()],
            )
            .await
            .map_err(crate::StoreError::from)?;
        tx.commit().await.map_err(crate::StoreError::from)?;
        Ok(from_row(&row))
    }

    async fn account(&self, username: &str) -> StoreResult<Option<Account>> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                &c.prepare_cached(&format!("SELECT {COLUMNS} FROM accounts WHERE username = $1"))
                    .await?,
                &[&username],
            )
            .await?;
        Ok(row.map(|r| from_row(&r)))
    }

    async fn accounts(&self) -> StoreResult<Vec<Account>> {
        let c = self.client().await?;
        let rows = c
            .query(&format!("SELECT {COLUMNS} FROM accounts ORDER BY id"), &[])
            .await?;
        Ok(rows.iter().map(from_row).collect())
    }

    async fn delete_account(&self, username: &str) -> StoreResult<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let id: Option<i64> = tx
            .query_opt("SELECT id FROM accounts WHERE username = $1 FOR UPDATE", &[&username])
            .await?
            .map(|r| r.get(0));
        if let Some(id) = id {
            // 1.1 writes lock the bucket with an advisory lock.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&-id]).await?;
            super::lock_bucket(&tx, -id).await?;
            delete_bucket(&tx, -id).await?;
            tx.execute("DELETE FROM accounts WHERE id = $1", &[&id]).await?;
        }
        tx.commit().await?;
        Ok(id.is_some())
    }

    async fn set_password(&self, username: &str, password_hash: &str) -> StoreResult<bool> {
        self.update_account(
            "UPDATE accounts SET password_hash = $2, reset_code_hash = NULL, reset_expires = NULL WHERE username = $1",
            &[&username, &password_hash],
        )
        .await
    }

    async fn set_email(&self, username: &str, email: &str) -> StoreResult<bool> {
        self.update_account(
            "UPDATE accounts SET email = $2 WHERE username = $1",
            &[&username, &email],
        )
        .await
    }

    async fn set_disabled(&self, username: &str, disabled: bool) -> StoreResult<bool> {
        self.update_account(
            "UPDATE accounts SET disabled = $2 WHERE username = $1",
            &[&username, &disabled],
        )
        .await
    }

    async fn set_reset_code(&self, username: &str, code: Option<(String, i64)>) -> StoreResult<bool> {
        let (hash, expires) = code.unzip();
        self.update_account(
            "UPDATE accounts SET reset_code_hash = $2, reset_expires = $3 WHERE username = $1",
            &[&username, &hash, &expires],
        )
        .await
    }
}
