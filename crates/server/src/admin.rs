//! The operator's page (`/admin`, docs/admin.md) and the operations behind it. Off unless
//! `admin_token` is set. Every action here is also a `syncstead` command, and both call
//! the functions in this module, so the page and the command line cannot drift apart.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use syncstead_store::{AccountStore, Identity, IdentityStore, Precondition, Store, StoreError, TokenStore};

use crate::accounts::{self, AccountServer};
use crate::auth::Throttle;
use crate::error::AccountsError;
use crate::listener::ClientAddr;
use crate::passwords::HashPool;
use crate::state::AppState;

/// What an operation refuses, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no Syncstead account {0}")]
    NoAccount(String),
    #[error("no Weave 1.1 account {0}")]
    NoWeaveUser(String),
    #[error("{0} was not on the allow list")]
    NotAllowed(String),
    #[error("{0}")]
    BadInput(&'static str),
    #[error("no action {0}")]
    NoAction(String),
    #[error("{0}")]
    Accounts(#[from] AccountsError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

// ---- the operations (the CLI calls these too) ---------------------------------------------

/// The account named by e-mail or uid.
async fn account(store: &dyn IdentityStore, who: &str) -> Result<Identity, AdminError> {
    match accounts::find_account(store, who).await {
        Ok(i) => Ok(i),
        Err(AccountsError::UnknownAccount) | Err(AccountsError::BadParameter(_)) => {
            Err(AdminError::NoAccount(who.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Disables (signing out every device) or enables a Syncstead account.
pub async fn set_account_disabled(
    store: &dyn IdentityStore,
    who: &str,
    disabled: bool,
) -> Result<Identity, AdminError> {
    let i = account(store, who).await?;
    store.set_identity_disabled(&i.uid, disabled).await?;
    Ok(i)
}

/// Deletes a Syncstead account, its devices and all of its Sync data.
pub async fn delete_account(store: &dyn IdentityStore, who: &str) -> Result<Identity, AdminError> {
    let i = account(store, who).await?;
    store
        .delete_identity(&i.uid, &AccountServer::sync_email(&i.uid))
        .await?;
    Ok(i)
}

/// Creates an account for `email` with a password nobody knows and answers a one-time
/// code with which its owner chooses one at `/reset_password` (24 hours): an invitation
/// that works whatever the registration policy, without the operator learning the password.
pub async fn invite_account(
    store: &dyn IdentityStore,
    pool: &Arc<HashPool>,
    email: &str,
    max: Option<u64>,
) -> Result<(Identity, String), AdminError> {
    let unknowable = data_encoding::HEXLOWER.encode(&rand::random::<[u8; 32]>());
    let identity = accounts::add_account(store, pool, email, &unknowable, max).await?;
    let code = accounts::issue_reset_code(store, &identity.uid).await?;
    Ok((identity, code))
}

fn weave_name(who: &str) -> String {
    syncstead_proto::username::username_for_account(who)
}

/// Disables or enables a Weave 1.1 account (by username or e-mail).
pub async fn set_weave_disabled(store: &dyn AccountStore, who: &str, disabled: bool) -> Result<String, AdminError> {
    let name = weave_name(who);
    if !store.set_disabled(&name, disabled).await? {
        return Err(AdminError::NoWeaveUser(name));
    }
    Ok(name)
}

/// Deletes a Weave 1.1 account and its data.
pub async fn delete_weave_user(store: &dyn AccountStore, who: &str) -> Result<String, AdminError> {
    let name = weave_name(who);
    if !store.delete_account(&name).await? {
        return Err(AdminError::NoWeaveUser(name));
    }
    Ok(name)
}

/// Puts a Mozilla account on the token server's allow list, or takes it off.
pub async fn set_allowed(store: &dyn TokenStore, fxa_uid: &str, allow: bool) -> Result<(), AdminError> {
    if !store.allow_account(fxa_uid, allow).await? && !allow {
        return Err(AdminError::NotAllowed(fxa_uid.to_string()));
    }
    Ok(())
}

/// Bytes of live records in a bucket.
async fn bucket_bytes(store: &dyn Store, uid: i64) -> Result<u64, StoreError> {
    let (_, usage) = store.collection_usage(uid, Precondition::None).await?;
    Ok(usage.iter().map(|u| u.bytes).sum())
}

/// Most rows one list on the page shows.
const MAX_ROWS: usize = 1000;

// ---- HTTP ----------------------------------------------------------------------------------

pub struct Admin {
    token: String,
    /// Wrong tokens per address: guessing is slow and the log says who tried.
    failures: Throttle,
}

impl Admin {
    pub fn new(token: String) -> Self {
        let quarter_hour = std::time::Duration::from_secs(900);
        Admin {
            token,
            failures: Throttle::new(10, quarter_hour, std::time::Duration::from_secs(60), quarter_hour),
        }
    }
}

/// A refusal: its status and what the page shows.
struct Refused(StatusCode, String);

/// An admin request's answer: JSON, or `{error}` with its status.
struct Answer(Result<Value, Refused>);

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        match self.0 {
            Ok(v) => Json(v).into_response(),
            Err(Refused(status, error)) => (status, Json(json!({ "error": error }))).into_response(),
        }
    }
}

impl From<AdminError> for Refused {
    fn from(e: AdminError) -> Self {
        let status = match &e {
            AdminError::NoAccount(_)
            | AdminError::NoWeaveUser(_)
            | AdminError::NotAllowed(_)
            | AdminError::NoAction(_) => StatusCode::NOT_FOUND,
            AdminError::BadInput(_) | AdminError::Accounts(AccountsError::BadParameter(_)) => StatusCode::BAD_REQUEST,
            AdminError::Accounts(AccountsError::AccountExists) => StatusCode::CONFLICT,
            AdminError::Accounts(AccountsError::Forbidden(_)) => StatusCode::FORBIDDEN,
            AdminError::Store(e) | AdminError::Accounts(AccountsError::Store(e)) if e.is_unavailable() => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "admin action failed");
        }
        Refused(status, e.to_string())
    }
}

type Handled = Result<Value, AdminError>;

/// The admin token, checked in constant time, after the address's failures.
fn authorised(state: &AppState, headers: &HeaderMap, addr: Option<std::net::IpAddr>) -> Result<(), Refused> {
    let Some(admin) = state.admin.as_deref() else {
        return Err(Refused(StatusCode::NOT_FOUND, "not found".into()));
    };
    let key = addr.map(|a| a.to_string()).unwrap_or_default();
    if let Some(wait) = admin.failures.locked(&key) {
        return Err(Refused(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many wrong tokens: wait {wait} s"),
        ));
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(admin.token.as_bytes())) {
        admin.failures.forgive(&key);
        Ok(())
    } else {
        admin.failures.failure(&key);
        tracing::warn!(address = %key, "admin page: wrong token");
        Err(Refused(StatusCode::UNAUTHORIZED, "wrong admin token".into()))
    }
}

/// Wraps a handler body with the admin check.
async fn guarded<F, Fut>(state: AppState, headers: HeaderMap, addr: ClientAddr, f: F) -> Answer
where
    F: FnOnce(AppState) -> Fut,
    Fut: std::future::Future<Output = Handled>,
{
    if let Err(e) = authorised(&state, &headers, addr.0) {
        return Answer(Err(e));
    }
    Answer(f(state).await.map_err(Refused::from))
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin", get(page))
        .route("/admin/admin.mjs", get(script))
        .route("/admin/api/overview", get(overview))
        .route("/admin/api/accounts", get(list_accounts))
        .route("/admin/api/accounts/invite", post(invite))
        .route("/admin/api/accounts/{who}/{action}", post(account_action))
        .route("/admin/api/weave-users", get(list_weave_users))
        .route("/admin/api/weave-users/{who}/{action}", post(weave_action))
        .route("/admin/api/token-users", get(list_token_users))
        .route("/admin/api/allowed", get(list_allowed).post(change_allowed))
}

const HTML: &str = include_str!("../assets/admin/index.html");
const SCRIPT: &str = include_str!("../assets/admin/admin.mjs");
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; \
                   form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

async fn page(State(state): State<AppState>) -> Response {
    if state.admin.is_none() {
        return StatusCode::NOT_FOUND.into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        HTML,
    )
        .into_response()
}

async fn script(State(state): State<AppState>) -> Response {
    if state.admin.is_none() {
        return StatusCode::NOT_FOUND.into_response();
    }
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT).into_response()
}

/// Health, policy, nodes and the figures the metrics endpoint exposes.
async fn overview(State(state): State<AppState>, headers: HeaderMap, addr: ClientAddr) -> Answer {
    guarded(state, headers, addr, |state| async move {
        let database = state.store.check().await.is_ok();
        let stats = state.store.stats().await.ok();
        let nodes = state.token_store.nodes().await?;
        let s = &state.settings;
        let text = crate::ops::metrics_text();
        let metrics: Vec<Value> = text
            .as_deref()
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.contains("_bucket{") && !l.is_empty())
            .take(200)
            .filter_map(|l| l.rsplit_once(' ').map(|(k, v)| json!([k, v])))
            .collect();
        Ok(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "health": { "database": if database { "Ok" } else { "Err" }, "maintenance": state.runtime.maintenance.load(std::sync::atomic::Ordering::Relaxed) },
            "policy": {
                "accounts": s.accounts,
                "account_registration": match &s.account_registration {
                    crate::config::AccountRegistration::Closed => "closed",
                    crate::config::AccountRegistration::Invite(_) => "invite",
                    crate::config::AccountRegistration::Open => "open",
                },
                "max_identities": s.max_identities,
                "mozilla_accounts": s.mozilla_accounts,
                "token_server": s.token_server,
            },
            "store": stats.map(|st| json!({
                "users": st.users, "active_batches": st.active_batches,
                "collection_names": st.collection_names, "database_bytes": st.database_bytes,
            })),
            "nodes": nodes.iter().map(|n| json!({
                "url": n.url, "capacity": n.capacity, "current_load": n.current_load,
                "available": n.available, "downed": n.downed, "backoff": n.backoff,
            })).collect::<Vec<_>>(),
            "metrics": metrics,
            "metrics_enabled": text.is_some(),
        }))
    })
    .await
}

/// Syncstead accounts with the storage their current bucket uses.
async fn list_accounts(State(state): State<AppState>, headers: HeaderMap, addr: ClientAddr) -> Answer {
    guarded(state, headers, addr, |state| async move {
        let buckets: std::collections::HashMap<String, i64> = state
            .token_store
            .token_users()
            .await?
            .into_iter()
            .map(|(email, uid, _)| (email, uid))
            .collect();
        let mut rows = Vec::new();
        for i in state.identities.identities().await?.into_iter().take(MAX_ROWS) {
            let bucket = buckets.get(&AccountServer::sync_email(&i.uid)).copied();
            let bytes = match bucket {
                Some(b) => Some(bucket_bytes(state.store.as_ref(), b).await?),
                None => None,
            };
            rows.push(json!({
                "uid": i.uid, "email": i.email, "disabled": i.disabled, "created_at": i.created_at,
                "bucket": bucket, "storage_bytes": bytes,
            }));
        }
        Ok(Value::Array(rows))
    })
    .await
}

#[derive(Deserialize)]
struct InviteBody {
    email: String,
}

async fn invite(State(state): State<AppState>, headers: HeaderMap, addr: ClientAddr, body: Bytes) -> Answer {
    guarded(state, headers, addr, |state| async move {
        let b: InviteBody =
            serde_json::from_slice(&body).map_err(|_| AdminError::BadInput("expected {\"email\": …}"))?;
        let (i, code) = invite_account(
            state.identities.as_ref(),
            &state.weave.hasher,
            &b.email,
            state.settings.max_identities,
        )
        .await?;
        tracing::info!(uid = %i.uid, "admin page: account invited");
        Ok(json!({
            "uid": i.uid, "email": i.email, "code": code,
            "link": format!("{}/reset_password?email={}", state.public_base, i.email),
        }))
    })
    .await
}

async fn account_action(
    State(state): State<AppState>,
    Path((who, action)): Path<(String, String)>,
    headers: HeaderMap,
    addr: ClientAddr,
) -> Answer {
    guarded(state, headers, addr, |state| async move {
        let store = state.identities.as_ref();
        let i = match action.as_str() {
            "disable" => set_account_disabled(store, &who, true).await?,
            "enable" => set_account_disabled(store, &who, false).await?,
            "delete" => delete_account(store, &who).await?,
            _ => return Err(AdminError::NoAction(action)),
        };
        tracing::info!(uid = %i.uid, action = %action, "admin page: account");
        Ok(json!({ "uid": i.uid, "email": i.email }))
    })
    .await
}

async fn list_weave_users(State(state): State<AppState>, headers: HeaderMap, addr: ClientAddr) -> Answer {
    guarded(state, headers, addr, |state| async move {
        let mut rows = Vec::new();
        for a in state.accounts.accounts().await?.into_iter().take(MAX_ROWS) {
            rows.push(json!({
                "username": a.username, "email": a.email, "disabled": a.disabled, "created_at": a.created_at,
                "storage_bytes": bucket_bytes(state.store.as_ref(), a.bucket()).await?,
            }));
        }
        Ok(Value::Array(rows))
    })
    .await
}

async fn weave_action(
    State(state): State<AppState>,
    Path((who, action)): Path<(String, String)>,
    headers: HeaderMap,
    addr: ClientAddr,
) -> Answer {
    guarded(state, headers, addr, |state| async move {
        let store = state.accounts.as_ref();
        let name = match action.as_str() {
            "disable" => set_weave_disabled(store, &who, true).await?,
            "enable" => set_weave_disabled(store, &who, false).await?,
            "delete" => delete_weave_user(store, &who).await?,
            _ => return Err(AdminError::NoAction(action)),
        };
        tracing::info!(username = %name, action = %action, "admin page: Weave 1.1 account");
        Ok(json!({ "username": name }))
    })
    .await
}

/// The token server's current users (Mozilla and Syncstead accounts alike), with storage.
async fn list_token_users(State(state): State<AppState>, headers: HeaderMap, addr: ClientAddr) -> Answer {
    guarded(state, headers, addr, |state| async move {
        let mut rows = Vec::new();
        for (email, uid, node) in state.token_store.token_users().await?.into_iter().take(MAX_ROWS) {
            let bytes = if node == state.public_base {
                Some(bucket_bytes(state.store.as_ref(), uid).await?)
            } else {
                None
            };
            rows.push(json!({ "email": email, "uid": uid, "node": node, "storage_bytes": bytes }));
        }
        Ok(Value::Array(rows))
    })
    .await
}

async fn list_allowed(State(state): State<AppState>, headers: HeaderMap, addr: ClientAddr) -> Answer {
    guarded(state, headers, addr, |state| async move {
        Ok(json!(state.token_store.allowed_accounts().await?))
    })
    .await
}

#[derive(Deserialize)]
struct AllowBody {
    fxa_uid: String,
    allow: bool,
}

async fn change_allowed(State(state): State<AppState>, headers: HeaderMap, addr: ClientAddr, body: Bytes) -> Answer {
    guarded(state, headers, addr, |state| async move {
        let b: AllowBody = serde_json::from_slice(&body)
            .map_err(|_| AdminError::BadInput("expected {\"fxa_uid\": …, \"allow\": true|false}"))?;
        let uid = b.fxa_uid.trim();
        if uid.is_empty() || uid.len() > 64 {
            return Err(AdminError::BadInput("fxa_uid: a Mozilla account uid"));
        }
        set_allowed(state.token_store.as_ref(), uid, b.allow).await?;
        Ok(json!({ "fxa_uid": uid, "allowed": b.allow }))
    })
    .await
}
