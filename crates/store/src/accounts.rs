//! Weave 1.1 accounts: username, e-mail, password hash (user-api-1.0.md), written once
//! for every backend.

use std::sync::Arc;

use async_trait::async_trait;

use crate::db::{now_ms, Db, Engine, Read};
use crate::sql::{query_one, Arg, Lock, Row, Tx};
use crate::storage::delete_bucket;
use crate::{AccountStore, StoreResult, UserId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: i64,
    pub username: String,
    pub email: String,
    pub password_hash: String,
    pub created_at: i64,
    pub disabled: bool,
    /// A pending password-reset code (its hash) and when it expires (ms).
    pub reset: Option<(String, i64)>,
}

impl Account {
    /// The storage bucket of a 1.1 account: negative, so never a 1.5 uid.
    pub fn bucket(&self) -> UserId {
        -self.id
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("the account exists")]
    Exists,
    #[error("the server holds its maximum number of accounts")]
    Full,
    #[error(transparent)]
    Store(#[from] crate::StoreError),
}

const COLUMNS: &str = "id, username, email, password_hash, created_at, disabled, reset_code_hash, reset_expires";

fn from_row(mut r: Row) -> StoreResult<Account> {
    let code = r.opt_text(6)?;
    let expires = r.opt_int(7)?;
    Ok(Account {
        id: r.int(0)?,
        username: r.text(1)?,
        email: r.text(2)?,
        password_hash: r.text(3)?,
        created_at: r.int(4)?,
        disabled: r.bool(5)?,
        reset: code.zip(expires),
    })
}

async fn create<T: Tx>(
    tx: &T,
    username: &str,
    email: &str,
    hash: &str,
    max_accounts: Option<u64>,
) -> StoreResult<Result<Account, AccountError>> {
    // Sign-ups take turns, so the account limit holds under concurrency.
    tx.lock(Lock::Accounts).await?;
    let exists = tx
        .query_opt("SELECT id FROM accounts WHERE username = $1", &[username.into()])
        .await?;
    if exists.is_some() {
        return Ok(Err(AccountError::Exists));
    }
    if let Some(max) = max_accounts {
        let n = query_one(tx, "SELECT CAST(COUNT(*) AS BIGINT) FROM accounts", &[])
            .await?
            .count(0)?;
        if n >= max {
            return Ok(Err(AccountError::Full));
        }
    }
    let row = query_one(
        tx,
        &format!(
            "INSERT INTO accounts (username, email, password_hash, created_at) VALUES ($1, $2, $3, $4)
             RETURNING {COLUMNS}"
        ),
        &[username.into(), email.into(), hash.into(), now_ms().into()],
    )
    .await?;
    Ok(Ok(from_row(row)?))
}

impl<E: Engine> Db<E> {
    /// One `UPDATE accounts … WHERE username = $1` with `values` as `$2…`.
    async fn update_account(
        &self,
        op: &'static str,
        sql: &'static str,
        username: &str,
        values: Vec<Owned>,
    ) -> StoreResult<bool> {
        let username = username.to_string();
        let values = Arc::new(values);
        self.write(op, 0, move |tx| {
            let (username, values) = (username.clone(), values.clone());
            Box::pin(async move {
                let mut args = vec![Arg::from(&username)];
                args.extend(values.iter().map(Owned::arg));
                Ok(tx.execute(sql, &args).await? > 0)
            })
        })
        .await
    }
}

/// An owned argument for [`Db::update_account`].
enum Owned {
    Text(Option<String>),
    Int(Option<i64>),
    Bool(bool),
}

impl Owned {
    fn arg(&self) -> Arg<'_> {
        match self {
            Owned::Text(v) => v.as_ref().into(),
            Owned::Int(v) => (*v).into(),
            Owned::Bool(v) => (*v).into(),
        }
    }
}

#[async_trait]
impl<E: Engine> AccountStore for Db<E> {
    async fn create_account(
        &self,
        username: &str,
        email: &str,
        password_hash: &str,
        max_accounts: Option<u64>,
    ) -> Result<Account, AccountError> {
        let fields: Arc<(String, String, String)> =
            Arc::new((username.to_string(), email.to_string(), password_hash.to_string()));
        self.write("create_account", 0, move |tx| {
            let f = fields.clone();
            Box::pin(async move { create(tx, &f.0, &f.1, &f.2, max_accounts).await })
        })
        .await?
    }

    async fn account(&self, username: &str) -> StoreResult<Option<Account>> {
        let username = username.to_string();
        self.read("account", Read::Statement, move |tx| {
            Box::pin(async move {
                tx.query_opt(
                    &format!("SELECT {COLUMNS} FROM accounts WHERE username = $1"),
                    &[(&username).into()],
                )
                .await?
                .map(from_row)
                .transpose()
            })
        })
        .await
    }

    async fn accounts(&self) -> StoreResult<Vec<Account>> {
        self.read("accounts", Read::Statement, |tx| {
            Box::pin(async move {
                tx.query(&format!("SELECT {COLUMNS} FROM accounts ORDER BY id"), &[])
                    .await?
                    .into_iter()
                    .map(from_row)
                    .collect()
            })
        })
        .await
    }

    async fn delete_account(&self, username: &str) -> StoreResult<bool> {
        let username = username.to_string();
        self.write("delete_account", crate::db::HEAVY, move |tx| {
            let username = username.clone();
            Box::pin(async move {
                let Some(row) = tx
                    .query_opt("SELECT id FROM accounts WHERE username = $1", &[(&username).into()])
                    .await?
                else {
                    return Ok(false);
                };
                let id = row.int(0)?;
                // The bucket's 1.1 writers wait for this, then find it gone.
                tx.lock(Lock::Legacy(-id)).await?;
                delete_bucket(tx, -id).await?;
                tx.execute("DELETE FROM accounts WHERE id = $1", &[id.into()]).await?;
                Ok(true)
            })
        })
        .await
    }

    async fn set_password(&self, username: &str, password_hash: &str) -> StoreResult<bool> {
        self.update_account(
            "set_password",
            "UPDATE accounts SET password_hash = $2, reset_code_hash = NULL, reset_expires = NULL WHERE username = $1",
            username,
            vec![Owned::Text(Some(password_hash.to_string()))],
        )
        .await
    }

    async fn set_email(&self, username: &str, email: &str) -> StoreResult<bool> {
        self.update_account(
            "set_email",
            "UPDATE accounts SET email = $2 WHERE username = $1",
            username,
            vec![Owned::Text(Some(email.to_string()))],
        )
        .await
    }

    async fn set_disabled(&self, username: &str, disabled: bool) -> StoreResult<bool> {
        self.update_account(
            "set_disabled",
            "UPDATE accounts SET disabled = $2 WHERE username = $1",
            username,
            vec![Owned::Bool(disabled)],
        )
        .await
    }

    async fn set_reset_code(&self, username: &str, code: Option<(String, i64)>) -> StoreResult<bool> {
        let (hash, expires) = code.unzip();
        self.update_account(
            "set_reset_code",
            "UPDATE accounts SET reset_code_hash = $2, reset_expires = $3 WHERE username = $1",
            username,
            vec![Owned::Text(hash), Owned::Int(expires)],
        )
        .await
    }
}
