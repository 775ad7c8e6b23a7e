//! Weave 1.1 accounts in SQLite.

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use super::SqliteStore;
use crate::accounts::{Account, AccountError};
use crate::{AccountStore, StoreResult};

const COLUMNS: &str = "id, username, email, password_hash, created_at, disabled, reset_code_hash, reset_expires";

fn from_row(r: &rusqlite::Row) -> rusqlite::Result<Account> {
    let code: Option<String> = r.get(6)?;
    let expires: Option<i64> = r.get(7)?;
    Ok(Account {
        id: r.get(0)?,
        username: r.get(1)?,
        email: r.get(2)?,
        password_hash: r.get(3)?,
        created_at: r.get(4)?,
        disabled: r.get::<_, i64>(5)? != 0,
        reset: code.zip(expires),
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl SqliteStore {
    async fn update_account(
        &self,
        sql: &'static str,
        username: &str,
        value: rusqlite::types::Value,
    ) -> StoreResult<bool> {
        let username = username.to_string();
        self.submit(None, 0, move |tx| Ok(tx.execute(sql, params![username, value])? > 0))
            .await
    }
}

#[async_trait]
impl AccountStore for SqliteStore {
    async fn create_account(
        &self,
        username: &str,
        email: &str,
        password_hash: &str,
        max_accounts: Option<u64>,
    ) -> Result<Account, AccountError> {
        let (username, email, hash) = (username.to_string(), email.to_string(), password_hash.to_string());
        let outcome = self
            .submit(None, 0, move |tx| {
                let exists: Option<i64> = tx
                    .query_row("SELECT id FROM accounts WHERE username = ?1", [&username], |r| r.get(0))
                    .optional()?;
                if exists.is_some() {
                    return Ok(Err(AccountError::Exists));
                }
                if let Some(max) = max_accounts {
                    let n: i64 = tx.query_row("SELECT COUNT(*) FROM accounts", [], |r| r.get(0))?;
                    if n as u64 >= max {
                        return Ok(Err(AccountError::Full));
                    }
                }
                tx.execute(
                    "INSERT INTO accounts (username, email, password_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![username, email, hash, now_ms()],
                )?;
                let id = tx.last_insert_rowid();
                Ok(Ok(tx.query_row(
                    &format!("SELECT {COLUMNS} FROM accounts WHERE id = ?1"),
                    [id],
                    from_row,
                )?))
            })
            .await?;
        outcome
    }

    async fn account(&self, username: &str) -> StoreResult<Option<Account>> {
        let username = username.to_string();
        self.read(move |tx| {
            Ok(tx
                .prepare_cached(&format!("SELECT {COLUMNS} FROM accounts WHERE username = ?1"))?
                .query_row([username], from_row)
                .optional()?)
        })
        .await
    }

    async fn accounts(&self) -> StoreResult<Vec<Account>> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(&format!("SELECT {COLUMNS} FROM accounts ORDER BY id"))?;
            let rows = stmt.query_map([], from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn delete_account(&self, username: &str) -> StoreResult<bool> {
        let username = username.to_string();
        let deleted: Option<i64> = self
            .submit(None, 0, move |tx| {
                let id: Option<i64> = tx
                    .query_row("SELECT id FROM accounts WHERE username = ?1", [&username], |r| r.get(0))
                    .optional()?;
                if let Some(id) = id {
                    super::delete_bucket(tx, -id)?;
                    tx.execute("DELETE FROM accounts WHERE id = ?1", [id])?;
                }
                Ok(id)
            })
            .await?;
        if let Some(id) = deleted {
            self.storage_times.lock().expect("storage times lock").remove(&-id);
        }
        Ok(deleted.is_some())
    }

    async fn set_password(&self, username: &str, password_hash: &str) -> StoreResult<bool> {
        self.update_account(
            "UPDATE accounts SET password_hash = ?2, reset_code_hash = NULL, reset_expires = NULL WHERE username = ?1",
            username,
            password_hash.to_string().into(),
        )
        .await
    }

    async fn set_email(&self, username: &str, email: &str) -> StoreResult<bool> {
        self.update_account(
            "UPDATE accounts SET email = ?2 WHERE username = ?1",
            username,
            email.to_string().into(),
        )
        .await
    }

    async fn set_disabled(&self, username: &str, disabled: bool) -> StoreResult<bool> {
        self.update_account(
            "UPDATE accounts SET disabled = ?2 WHERE username = ?1",
            username,
            (disabled as i64).into(),
        )
        .await
    }

    async fn set_reset_code(&self, username: &str, code: Option<(String, i64)>) -> StoreResult<bool> {
        let username = username.to_string();
        self.submit(None, 0, move |tx| {
            let (hash, expires) = code.unzip();
            Ok(tx.execute(
                "UPDATE accounts SET reset_code_hash = ?2, reset_expires = ?3 WHERE username = ?1",
                params![username, hash, expires],
            )? > 0)
        })
        .await
    }
}
