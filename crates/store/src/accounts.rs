//! Weave 1.1 accounts: username, e-mail, password hash (user-api-1.0.md).

use crate::UserId;

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
