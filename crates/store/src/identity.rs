//! Syncstead's own accounts (the ones Firefox signs in to here): credentials, tokens,
//! OAuth codes and devices, written once for every backend. The protocol rules (what a
//! token is derived from, what a code grants) live in the server; this is what is kept.

use std::sync::Arc;

use async_trait::async_trait;

use crate::db::{now_ms, Db, Engine, Read};
use crate::sql::{query_one, Arg, Lock, Row, Tx};
use crate::storage::delete_bucket;
use crate::{AccountError, StoreResult};

/// One account: its onepw credentials (the server's half) and key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// 32 lower-case hex characters, as Mozilla's uids.
    pub uid: String,
    /// Lower-cased; onepw v1 salts the password with it.
    pub email: String,
    pub auth_salt: String,
    pub verify_hash: String,
    pub wrap_wrap_kb: String,
    pub ka: String,
    /// When kB last changed (ms): the timestamp half of the Sync key's `kid`.
    pub keys_changed_at: i64,
    pub created_at: i64,
    pub disabled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Session,
    KeyFetch,
    Refresh,
    /// Authorises the second step of a password change, once.
    PasswordChange,
    /// A forgotten password's one-time code (mailed, or given by the operator), by its hash.
    AccountReset,
}

impl TokenKind {
    fn as_str(self) -> &'static str {
        match self {
            TokenKind::Session => "session",
            TokenKind::KeyFetch => "key_fetch",
            TokenKind::Refresh => "refresh",
            TokenKind::PasswordChange => "password_change",
            TokenKind::AccountReset => "account_reset",
        }
    }
}

/// A token by its id. `data` is what the kind needs: a session's Hawk key, a key-fetch
/// token's finished key bundle, a refresh token's scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthToken {
    pub id: String,
    pub kind: TokenKind,
    pub uid: String,
    pub data: String,
    pub client_id: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

/// An OAuth authorization code (its hash) with what it grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthCode {
    pub code_hash: String,
    pub uid: String,
    pub client_id: String,
    pub scope: String,
    pub code_challenge: String,
    /// Handed back with the tokens, never read here: the keys, encrypted to the browser.
    pub keys_jwe: Option<String>,
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub id: String,
    pub uid: String,
    /// The session or refresh token the device signed in with; it goes with it.
    pub token_id: Option<String>,
    pub name: String,
    pub device_type: String,
    pub push_callback: Option<String>,
    pub push_public_key: Option<String>,
    pub push_auth_key: Option<String>,
    /// `availableCommands`, as JSON.
    pub commands: String,
    pub created_at: i64,
    pub last_access: i64,
}

/// A command (Send Tab, say) queued for one device until it polls or the command expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCommand {
    /// What the device pages by; given by the store, increasing.
    pub index: i64,
    pub device_id: String,
    pub command: String,
    /// The sender's encrypted payload, as JSON text; never read here.
    pub payload: String,
    pub sender: Option<String>,
    pub expires_at: i64,
}

/// New credentials for an account: a password change keeps the keys (the same kB under a
/// new wrapping), a reset replaces them and moves `keys_changed_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub auth_salt: String,
    pub verify_hash: String,
    pub wrap_wrap_kb: String,
    /// Set by a reset: new kA and the time the keys changed.
    pub new_keys: Option<(String, i64)>,
    /// A new e-mail address: onepw salts the password with it, so it changes together
    /// with the credentials made from it.
    pub new_email: Option<String>,
}

#[async_trait]
pub trait IdentityStore: Send + Sync + 'static {
    /// Creates the account unless its e-mail is taken or `max` accounts exist.
    async fn create_identity(&self, identity: &Identity, max: Option<u64>) -> Result<(), AccountError>;
    async fn identity(&self, uid: &str) -> StoreResult<Option<Identity>>;
    async fn identity_by_email(&self, email: &str) -> StoreResult<Option<Identity>>;
    async fn identities(&self) -> StoreResult<Vec<Identity>>;
    /// Disabling also ends every session and refresh token of the account.
    async fn set_identity_disabled(&self, uid: &str, disabled: bool) -> StoreResult<bool>;
    /// Replaces the credentials and ends every token of the account. With new keys (a
    /// reset) the devices go too; a password change keeps them, detached. `Exists` when
    /// the new e-mail address is another account's.
    async fn set_credentials(&self, uid: &str, credentials: &Credentials) -> Result<bool, AccountError>;
    /// Deletes the account, its tokens and devices, and the Sync data of the token-server
    /// user `sync_email` stands for.
    async fn delete_identity(&self, uid: &str, sync_email: &str) -> StoreResult<bool>;
    async fn put_token(&self, token: &AuthToken) -> StoreResult<()>;
    /// A token of `kind` that has not expired.
    async fn token(&self, id: &str, kind: TokenKind) -> StoreResult<Option<AuthToken>>;
    /// Removes the token and returns it: single-use tokens are spent exactly once.
    async fn take_token(&self, id: &str, kind: TokenKind) -> StoreResult<Option<AuthToken>>;
    /// Removes a token and any device registered with it (with the device's queued commands).
    async fn delete_token(&self, id: &str) -> StoreResult<bool>;
    async fn put_code(&self, code: &AuthCode) -> StoreResult<()>;
    /// Removes the code and returns it unless it has expired.
    async fn take_code(&self, code_hash: &str) -> StoreResult<Option<AuthCode>>;
    /// Registers or updates a device (by id).
    async fn put_device(&self, device: &Device) -> StoreResult<()>;
    async fn devices(&self, uid: &str) -> StoreResult<Vec<Device>>;
    /// Removes a device, the token it signed in with and the commands queued for it.
    async fn delete_device(&self, uid: &str, id: &str) -> StoreResult<bool>;
    /// Queues a command for a device of `uid`; `None` when that device already has
    /// `max_pending` unexpired commands waiting.
    async fn put_command(&self, uid: &str, command: &DeviceCommand, max_pending: u64) -> StoreResult<Option<i64>>;
    /// The unexpired commands for a device of `uid` from `from_index` on, oldest first, at
    /// most `limit`.
    async fn commands(
        &self,
        uid: &str,
        device_id: &str,
        from_index: i64,
        limit: u64,
    ) -> StoreResult<Vec<DeviceCommand>>;
}

const ID_COLUMNS: &str = "uid, email, auth_salt, verify_hash, wrap_wrap_kb, ka, keys_changed_at, created_at, disabled";
const TOKEN_COLUMNS: &str = "id, kind, uid, data, client_id, created_at, expires_at";
const CODE_COLUMNS: &str = "code_hash, uid, client_id, scope, code_challenge, keys_jwe, expires_at";
const DEVICE_COLUMNS: &str = "id, uid, token_id, name, device_type, push_callback, push_public_key, \
     push_auth_key, commands, created_at, last_access";

fn identity_from(mut r: Row) -> StoreResult<Identity> {
    Ok(Identity {
        uid: r.text(0)?,
        email: r.text(1)?,
        auth_salt: r.text(2)?,
        verify_hash: r.text(3)?,
        wrap_wrap_kb: r.text(4)?,
        ka: r.text(5)?,
        keys_changed_at: r.int(6)?,
        created_at: r.int(7)?,
        disabled: r.bool(8)?,
    })
}

fn token_from(mut r: Row) -> StoreResult<AuthToken> {
    let kind = match r.text(1)?.as_str() {
        "session" => TokenKind::Session,
        "key_fetch" => TokenKind::KeyFetch,
        "password_change" => TokenKind::PasswordChange,
        "account_reset" => TokenKind::AccountReset,
        _ => TokenKind::Refresh,
    };
    Ok(AuthToken {
        id: r.text(0)?,
        kind,
        uid: r.text(2)?,
        data: r.text(3)?,
        client_id: r.opt_text(4)?,
        created_at: r.int(5)?,
        expires_at: r.opt_int(6)?,
    })
}

fn code_from(mut r: Row) -> StoreResult<AuthCode> {
    Ok(AuthCode {
        code_hash: r.text(0)?,
        uid: r.text(1)?,
        client_id: r.text(2)?,
        scope: r.text(3)?,
        code_challenge: r.text(4)?,
        keys_jwe: r.opt_text(5)?,
        expires_at: r.int(6)?,
    })
}

fn device_from(mut r: Row) -> StoreResult<Device> {
    Ok(Device {
        id: r.text(0)?,
        uid: r.text(1)?,
        token_id: r.opt_text(2)?,
        name: r.text(3)?,
        device_type: r.text(4)?,
        push_callback: r.opt_text(5)?,
        push_public_key: r.opt_text(6)?,
        push_auth_key: r.opt_text(7)?,
        commands: r.text(8)?,
        created_at: r.int(9)?,
        last_access: r.int(10)?,
    })
}

/// Everything an account's sign-ins left behind: tokens, the devices on them and the
/// devices' queued commands.
async fn end_sessions<T: Tx>(tx: &T, uid: &str) -> StoreResult<()> {
    tx.execute("DELETE FROM identity_tokens WHERE uid = $1", &[uid.into()])
        .await?;
    tx.execute("DELETE FROM identity_devices WHERE uid = $1", &[uid.into()])
        .await?;
    tx.execute("DELETE FROM identity_commands WHERE uid = $1", &[uid.into()])
        .await?;
    Ok(())
}

const COMMAND_COLUMNS: &str = "idx, device_id, command, payload, sender, expires_at";

fn command_from(mut r: Row) -> StoreResult<DeviceCommand> {
    Ok(DeviceCommand {
        index: r.int(0)?,
        device_id: r.text(1)?,
        command: r.text(2)?,
        payload: r.text(3)?,
        sender: r.opt_text(4)?,
        expires_at: r.int(5)?,
    })
}

async fn create<T: Tx>(tx: &T, i: &Identity, max: Option<u64>) -> StoreResult<Result<(), AccountError>> {
    // Sign-ups take turns, so the account limit holds under concurrency.
    tx.lock(Lock::Accounts).await?;
    let taken = tx
        .query_opt(
            "SELECT uid FROM identities WHERE email = $1 OR uid = $2",
            &[(&i.email).into(), (&i.uid).into()],
        )
        .await?;
    if taken.is_some() {
        return Ok(Err(AccountError::Exists));
    }
    if let Some(max) = max {
        let n = query_one(tx, "SELECT CAST(COUNT(*) AS BIGINT) FROM identities", &[])
            .await?
            .count(0)?;
        if n >= max {
            return Ok(Err(AccountError::Full));
        }
    }
    tx.execute(
        &format!("INSERT INTO identities ({ID_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"),
        &[
            (&i.uid).into(),
            (&i.email).into(),
            (&i.auth_salt).into(),
            (&i.verify_hash).into(),
            (&i.wrap_wrap_kb).into(),
            (&i.ka).into(),
            i.keys_changed_at.into(),
            i.created_at.into(),
            i.disabled.into(),
        ],
    )
    .await?;
    Ok(Ok(()))
}

impl<E: Engine> Db<E> {
    async fn identity_where(
        &self,
        op: &'static str,
        clause: &'static str,
        value: &str,
    ) -> StoreResult<Option<Identity>> {
        let value = value.to_string();
        self.read(op, Read::Statement, move |tx| {
            Box::pin(async move {
                tx.query_opt(
                    &format!("SELECT {ID_COLUMNS} FROM identities WHERE {clause}"),
                    &[(&value).into()],
                )
                .await?
                .map(identity_from)
                .transpose()
            })
        })
        .await
    }
}

#[async_trait]
impl<E: Engine> IdentityStore for Db<E> {
    async fn create_identity(&self, identity: &Identity, max: Option<u64>) -> Result<(), AccountError> {
        let identity = Arc::new(identity.clone());
        self.write("create_identity", 0, move |tx| {
            let i = identity.clone();
            Box::pin(async move { create(tx, &i, max).await })
        })
        .await?
    }

    async fn identity(&self, uid: &str) -> StoreResult<Option<Identity>> {
        self.identity_where("identity", "uid = $1", uid).await
    }

    async fn identity_by_email(&self, email: &str) -> StoreResult<Option<Identity>> {
        self.identity_where("identity_by_email", "email = $1", email).await
    }

    async fn identities(&self) -> StoreResult<Vec<Identity>> {
        self.read("identities", Read::Statement, |tx| {
            Box::pin(async move {
                tx.query(
                    &format!("SELECT {ID_COLUMNS} FROM identities ORDER BY created_at, uid"),
                    &[],
                )
                .await?
                .into_iter()
                .map(identity_from)
                .collect()
            })
        })
        .await
    }

    async fn set_identity_disabled(&self, uid: &str, disabled: bool) -> StoreResult<bool> {
        let uid = uid.to_string();
        self.write("set_identity_disabled", 0, move |tx| {
            let uid = uid.clone();
            Box::pin(async move {
                let changed = tx
                    .execute(
                        "UPDATE identities SET disabled = $2 WHERE uid = $1",
                        &[(&uid).into(), disabled.into()],
                    )
                    .await?;
                if changed > 0 && disabled {
                    end_sessions(tx, &uid).await?;
                }
                Ok(changed > 0)
            })
        })
        .await
    }

    async fn set_credentials(&self, uid: &str, credentials: &Credentials) -> Result<bool, AccountError> {
        let args = Arc::new((uid.to_string(), credentials.clone()));
        self.write("set_credentials", 0, move |tx| {
            let args = args.clone();
            Box::pin(async move {
                let (uid, c) = &*args;
                if let Some(email) = &c.new_email {
                    // E-mail changes take turns with sign-ups, so an address stays unique.
                    tx.lock(Lock::Accounts).await?;
                    let taken = tx
                        .query_opt(
                            "SELECT uid FROM identities WHERE email = $1 AND uid <> $2",
                            &[email.into(), uid.into()],
                        )
                        .await?;
                    if taken.is_some() {
                        return Ok(Err(AccountError::Exists));
                    }
                }
                let (ka, changed_at) = c.new_keys.clone().unzip();
                let changed = tx
                    .execute(
                        "UPDATE identities SET auth_salt = $2, verify_hash = $3, wrap_wrap_kb = $4,
                             ka = COALESCE($5, ka), keys_changed_at = COALESCE($6, keys_changed_at),
                             email = COALESCE($7, email)
                         WHERE uid = $1",
                        &[
                            uid.into(),
                            (&c.auth_salt).into(),
                            (&c.verify_hash).into(),
                            (&c.wrap_wrap_kb).into(),
                            ka.as_ref().into(),
                            changed_at.into(),
                            c.new_email.as_ref().into(),
                        ],
                    )
                    .await?;
                if changed > 0 && c.new_keys.is_some() {
                    end_sessions(tx, uid).await?;
                } else if changed > 0 {
                    // A password change keeps the devices, detached from their ended
                    // sessions: Firefox keeps its device id when it signs in again, and
                    // the others would otherwise take it for a stale client.
                    tx.execute("DELETE FROM identity_tokens WHERE uid = $1", &[uid.into()])
                        .await?;
                    tx.execute(
                        "UPDATE identity_devices SET token_id = NULL WHERE uid = $1",
                        &[uid.into()],
                    )
                    .await?;
                }
                Ok(Ok(changed > 0))
            })
        })
        .await?
    }

    async fn delete_identity(&self, uid: &str, sync_email: &str) -> StoreResult<bool> {
        let args = Arc::new((uid.to_string(), sync_email.to_string()));
        self.write("delete_identity", crate::db::HEAVY, move |tx| {
            let args = args.clone();
            Box::pin(async move {
                let (uid, email) = &*args;
                let deleted = tx
                    .execute("DELETE FROM identities WHERE uid = $1", &[uid.into()])
                    .await?;
                if deleted == 0 {
                    return Ok(false);
                }
                end_sessions(tx, uid).await?;
                tx.execute("DELETE FROM identity_codes WHERE uid = $1", &[uid.into()])
                    .await?;
                // Every bucket the token server gave the account, past ones included.
                let buckets = tx
                    .query("SELECT uid FROM users WHERE email = $1", &[email.into()])
                    .await?;
                for row in buckets {
                    delete_bucket(tx, row.int(0)?).await?;
                }
                tx.execute("DELETE FROM users WHERE email = $1", &[email.into()])
                    .await?;
                Ok(true)
            })
        })
        .await
    }

    async fn put_token(&self, token: &AuthToken) -> StoreResult<()> {
        let t = Arc::new(token.clone());
        self.write("put_token", 0, move |tx| {
            let t = t.clone();
            Box::pin(async move {
                tx.execute(
                    &format!("INSERT INTO identity_tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"),
                    &[
                        (&t.id).into(),
                        t.kind.as_str().into(),
                        (&t.uid).into(),
                        (&t.data).into(),
                        t.client_id.as_ref().into(),
                        t.created_at.into(),
                        t.expires_at.into(),
                    ],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn token(&self, id: &str, kind: TokenKind) -> StoreResult<Option<AuthToken>> {
        let id = id.to_string();
        self.read("token", Read::Statement, move |tx| {
            Box::pin(async move {
                tx.query_opt(
                    &format!(
                        "SELECT {TOKEN_COLUMNS} FROM identity_tokens
                         WHERE id = $1 AND kind = $2 AND (expires_at IS NULL OR expires_at > $3)"
                    ),
                    &[(&id).into(), kind.as_str().into(), now_ms().into()],
                )
                .await?
                .map(token_from)
                .transpose()
            })
        })
        .await
    }

    async fn take_token(&self, id: &str, kind: TokenKind) -> StoreResult<Option<AuthToken>> {
        let id = id.to_string();
        self.write("take_token", 0, move |tx| {
            let id = id.clone();
            Box::pin(async move {
                let row = tx
                    .query_opt(
                        &format!("DELETE FROM identity_tokens WHERE id = $1 AND kind = $2 RETURNING {TOKEN_COLUMNS}"),
                        &[(&id).into(), kind.as_str().into()],
                    )
                    .await?;
                let token = row.map(token_from).transpose()?;
                Ok(token.filter(|t| t.expires_at.is_none_or(|e| e > now_ms())))
            })
        })
        .await
    }

    async fn delete_token(&self, id: &str) -> StoreResult<bool> {
        let id = id.to_string();
        self.write("delete_token", 0, move |tx| {
            let id = id.clone();
            Box::pin(async move {
                tx.execute(
                    "DELETE FROM identity_commands WHERE device_id IN
                         (SELECT id FROM identity_devices WHERE token_id = $1)",
                    &[(&id).into()],
                )
                .await?;
                tx.execute("DELETE FROM identity_devices WHERE token_id = $1", &[(&id).into()])
                    .await?;
                Ok(tx
                    .execute("DELETE FROM identity_tokens WHERE id = $1", &[(&id).into()])
                    .await?
                    > 0)
            })
        })
        .await
    }

    async fn put_code(&self, code: &AuthCode) -> StoreResult<()> {
        let c = Arc::new(code.clone());
        self.write("put_code", 0, move |tx| {
            let c = c.clone();
            Box::pin(async move {
                // Codes live minutes: each new one sweeps the expired.
                tx.execute("DELETE FROM identity_codes WHERE expires_at <= $1", &[now_ms().into()])
                    .await?;
                tx.execute(
                    &format!("INSERT INTO identity_codes ({CODE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"),
                    &[
                        (&c.code_hash).into(),
                        (&c.uid).into(),
                        (&c.client_id).into(),
                        (&c.scope).into(),
                        (&c.code_challenge).into(),
                        c.keys_jwe.as_ref().into(),
                        c.expires_at.into(),
                    ],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn take_code(&self, code_hash: &str) -> StoreResult<Option<AuthCode>> {
        let hash = code_hash.to_string();
        self.write("take_code", 0, move |tx| {
            let hash = hash.clone();
            Box::pin(async move {
                let row = tx
                    .query_opt(
                        &format!("DELETE FROM identity_codes WHERE code_hash = $1 RETURNING {CODE_COLUMNS}"),
                        &[(&hash).into()],
                    )
                    .await?;
                let code = row.map(code_from).transpose()?;
                Ok(code.filter(|c| c.expires_at > now_ms()))
            })
        })
        .await
    }

    async fn put_device(&self, device: &Device) -> StoreResult<()> {
        let d = Arc::new(device.clone());
        self.write("put_device", 0, move |tx| {
            let d = d.clone();
            Box::pin(async move {
                let args: [Arg<'_>; 11] = [
                    (&d.id).into(),
                    (&d.uid).into(),
                    d.token_id.as_ref().into(),
                    (&d.name).into(),
                    (&d.device_type).into(),
                    d.push_callback.as_ref().into(),
                    d.push_public_key.as_ref().into(),
                    d.push_auth_key.as_ref().into(),
                    (&d.commands).into(),
                    d.created_at.into(),
                    d.last_access.into(),
                ];
                // The uid in the conflict clause keeps one account from rewriting another's device.
                tx.execute(
                    &format!(
                        "INSERT INTO identity_devices ({DEVICE_COLUMNS})
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                         ON CONFLICT (id) DO UPDATE SET token_id = excluded.token_id, name = excluded.name,
                             device_type = excluded.device_type, push_callback = excluded.push_callback,
                             push_public_key = excluded.push_public_key, push_auth_key = excluded.push_auth_key,
                             commands = excluded.commands, last_access = excluded.last_access
                         WHERE identity_devices.uid = excluded.uid"
                    ),
                    &args,
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn devices(&self, uid: &str) -> StoreResult<Vec<Device>> {
        let uid = uid.to_string();
        self.read("devices", Read::Statement, move |tx| {
            Box::pin(async move {
                tx.query(
                    &format!("SELECT {DEVICE_COLUMNS} FROM identity_devices WHERE uid = $1 ORDER BY created_at, id"),
                    &[(&uid).into()],
                )
                .await?
                .into_iter()
                .map(device_from)
                .collect()
            })
        })
        .await
    }

    async fn delete_device(&self, uid: &str, id: &str) -> StoreResult<bool> {
        let args = Arc::new((uid.to_string(), id.to_string()));
        self.write("delete_device", 0, move |tx| {
            let args = args.clone();
            Box::pin(async move {
                let (uid, id) = &*args;
                let row = tx
                    .query_opt(
                        "DELETE FROM identity_devices WHERE uid = $1 AND id = $2 RETURNING token_id",
                        &[uid.into(), id.into()],
                    )
                    .await?;
                let Some(mut row) = row else {
                    return Ok(false);
                };
                if let Some(token) = row.opt_text(0)? {
                    tx.execute("DELETE FROM identity_tokens WHERE id = $1", &[(&token).into()])
                        .await?;
                }
                tx.execute(
                    "DELETE FROM identity_commands WHERE uid = $1 AND device_id = $2",
                    &[uid.into(), id.into()],
                )
                .await?;
                Ok(true)
            })
        })
        .await
    }

    async fn put_command(&self, uid: &str, command: &DeviceCommand, max_pending: u64) -> StoreResult<Option<i64>> {
        let args = Arc::new((uid.to_string(), command.clone()));
        self.write("put_command", 0, move |tx| {
            let args = args.clone();
            Box::pin(async move {
                let (uid, c) = &*args;
                let now = now_ms();
                // Each new command sweeps the account's expired ones.
                tx.execute(
                    "DELETE FROM identity_commands WHERE uid = $1 AND expires_at <= $2",
                    &[uid.into(), now.into()],
                )
                .await?;
                let waiting = tx
                    .query_opt(
                        "SELECT COUNT(*) FROM identity_commands WHERE uid = $1 AND device_id = $2",
                        &[uid.into(), (&c.device_id).into()],
                    )
                    .await?
                    .map(|r| r.int(0))
                    .transpose()?
                    .unwrap_or(0);
                if waiting as u64 >= max_pending {
                    return Ok(None);
                }
                let row = tx
                    .query_opt(
                        "INSERT INTO identity_commands (uid, device_id, command, payload, sender, created_at, expires_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING idx",
                        &[
                            uid.into(),
                            (&c.device_id).into(),
                            (&c.command).into(),
                            (&c.payload).into(),
                            c.sender.as_ref().into(),
                            now.into(),
                            c.expires_at.into(),
                        ],
                    )
                    .await?
                    .ok_or_else(|| crate::StoreError::Internal("INSERT … RETURNING gave no row".into()))?;
                Ok(Some(row.int(0)?))
            })
        })
        .await
    }

    async fn commands(
        &self,
        uid: &str,
        device_id: &str,
        from_index: i64,
        limit: u64,
    ) -> StoreResult<Vec<DeviceCommand>> {
        let args = Arc::new((uid.to_string(), device_id.to_string()));
        let limit = limit.min(i64::MAX as u64) as i64;
        self.read("commands", Read::Statement, move |tx| {
            let args = args.clone();
            Box::pin(async move {
                let (uid, device) = &*args;
                tx.query(
                    &format!(
                        "SELECT {COMMAND_COLUMNS} FROM identity_commands
                         WHERE uid = $1 AND device_id = $2 AND idx >= $3 AND expires_at > $4
                         ORDER BY idx LIMIT $5"
                    ),
                    &[
                        uid.into(),
                        device.into(),
                        from_index.into(),
                        now_ms().into(),
                        limit.into(),
                    ],
                )
                .await?
                .into_iter()
                .map(command_from)
                .collect()
            })
        })
        .await
    }
}
