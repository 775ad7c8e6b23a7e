//! Token Server 1.0 (`GET /1.0/sync/1.5`), as specified in `shared/spec/tokenserver.md`:
//! a Mozilla-accounts OAuth token in, a storage node and a short-lived Hawk credential out.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;
use syncstead_proto::token::{metrics_hash, random_salt, TokenPayload};
use syncstead_proto::tokenserver::{is_valid_client_state_header, Claims, KeyId, KeyIdError};
use syncstead_store::{Login, LoginError, NewUserPolicy};

use crate::listener::ClientAddr;
use crate::oauth::OAuthError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/1.0/{application}/{version}", get(token))
        .route("/token/1.0/{application}/{version}", get(token))
}

/// A token-server error: `{"status": …, "errors": [{"location", "name", "description"}]}`.
pub struct TokenError {
    status: StatusCode,
    kind: &'static str,
    location: &'static str,
    name: String,
    description: String,
    retry_after: Option<u64>,
}

impl TokenError {
    fn new(status: StatusCode, kind: &'static str, location: &'static str, name: &str, description: &str) -> Self {
        TokenError {
            status,
            kind,
            location,
            name: name.into(),
            description: description.into(),
            retry_after: None,
        }
    }
    fn unauthorized(kind: &'static str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, kind, "body", "", "Unauthorized")
    }
    fn internal(status: StatusCode) -> Self {
        Self::new(status, "internal-error", "internal", "", "Server error")
    }
}

fn x_timestamp() -> HeaderValue {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    HeaderValue::from(now)
}

impl IntoResponse for TokenError {
    fn into_response(self) -> Response {
        let body = json!({
            "status": self.kind,
            "errors": [{ "location": self.location, "name": self.name, "description": self.description }],
        });
        let mut r = (
            self.status,
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            body.to_string(),
        )
            .into_response();
        // T10-102: X-Timestamp on every response, so clients can correct their clocks.
        r.headers_mut().insert("x-timestamp", x_timestamp());
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

/// The OAuth token of `Authorization: Bearer …` (T10-010, T10-011).
fn bearer(headers: &HeaderMap) -> Result<&str, TokenError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| TokenError::unauthorized("error"))?;
    let (scheme, token) = value.split_once(' ').ok_or_else(|| TokenError::unauthorized("error"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::new(
            StatusCode::UNAUTHORIZED,
            "error",
            "body",
            "",
            "Unsupported",
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(TokenError::unauthorized("error"));
    }
    Ok(token)
}

/// `X-KeyID` and `X-Client-State` (T10-013…T10-016).
fn key_id(headers: &HeaderMap) -> Result<KeyId, TokenError> {
    let raw = headers.get("x-keyid").ok_or_else(|| {
        TokenError::new(
            StatusCode::UNAUTHORIZED,
            "invalid-key-id",
            "header",
            "",
            "Missing X-KeyID header",
        )
    })?;
    let key_id = KeyId::parse(raw.as_bytes()).map_err(|e| match e {
        KeyIdError::Invalid => TokenError::new(
            StatusCode::UNAUTHORIZED,
            "invalid-key-id",
            "header",
            "",
            "Invalid X-KeyID header",
        ),
        KeyIdError::Malformed => TokenError::unauthorized("invalid-credentials"),
    })?;
    if let Some(cs) = headers.get("x-client-state") {
        let cs = cs.to_str().unwrap_or("");
        if !is_valid_client_state_header(cs) {
            return Err(TokenError::new(
                StatusCode::BAD_REQUEST,
                "error",
                "header",
                "X-Client-State",
                "Invalid client state value",
            ));
        }
        if cs != key_id.client_state {
            return Err(TokenError::unauthorized("invalid-client-state"));
        }
    }
    Ok(key_id)
}

/// T10-004: `?duration=N` shortens the token's life; anything else is ignored.
fn duration(query: Option<&str>, max: u64) -> u64 {
    let requested = form_urlencoded_value(query.unwrap_or(""), "duration").and_then(|v| v.parse::<u64>().ok());
    match requested {
        Some(d) if d > 0 && d <= max => d,
        _ => max,
    }
}

fn form_urlencoded_value(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned())
    })
}

async fn token(
    State(state): State<AppState>,
    Path((application, version)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
) -> Result<Response, TokenError> {
    let ts = state
        .tokens
        .as_ref()
        .ok_or_else(|| TokenError::internal(StatusCode::NOT_FOUND))?;
    let throttle_key = addr.map(|ip| format!("token:{ip}"));
    if let Some(wait) = throttle_key.as_deref().and_then(|k| ts.throttle.locked(k)) {
        let mut err = TokenError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "error",
            "header",
            "Authorization",
            "Too many refused tokens from this address; retry later",
        );
        err.retry_after = Some(wait);
        return Err(err);
    }
    // Authenticate first, then check the application, as Mozilla's server does (T10-002).
    let oauth_token = bearer(&headers)?;
    let key_id = key_id(&headers)?;
    let own = ts.own.as_ref().and_then(|a| a.verify_own(oauth_token));
    let verified = match (&own, &ts.verifier) {
        (Some(claims), _) => claims
            .as_ref()
            .filter(|c| syncstead_proto::tokenserver::grants_oldsync(&c.scope))
            .map(|c| crate::oauth::Account {
                fxa_uid: c.sub.clone(),
                generation: Some(c.generation).filter(|g| *g > 0),
            })
            .ok_or(OAuthError::Invalid("not a valid Syncstead access token for Sync")),
        (None, Some(mozilla)) => mozilla.verify(oauth_token).await,
        (None, None) => Err(OAuthError::Invalid("Mozilla accounts are not accepted here")),
    };
    let account = verified.map_err(|e| match e {
        OAuthError::Invalid(why) => {
            tracing::debug!(why, "OAuth token refused");
            if let Some(k) = &throttle_key {
                ts.throttle.failure(k);
            }
            TokenError::unauthorized("invalid-credentials")
        }
        OAuthError::Unavailable(why) => {
            tracing::warn!(error = %why, "cannot verify OAuth tokens");
            TokenError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "error",
                "body",
                "",
                "Resource is not available",
            )
        }
    })?;
    if let Some(k) = &throttle_key {
        ts.throttle.success(k);
    }
    if application != "sync" {
        return Err(TokenError::new(
            StatusCode::NOT_FOUND,
            "error",
            "url",
            "application",
            "Unsupported application",
        ));
    }
    if version != "1.5" {
        return Err(TokenError::new(
            StatusCode::NOT_FOUND,
            "error",
            "url",
            &version,
            "Unsupported application version",
        ));
    }

    // Accounts made here were let in by the registration policy: the allow list is for
    // Mozilla accounts.
    let (domain, policy) = match own {
        Some(_) => (
            crate::accounts::EMAIL_DOMAIN,
            NewUserPolicy {
                allow_list_only: false,
                ..ts.policy
            },
        ),
        None => (ts.email_domain.as_str(), ts.policy),
    };
    let login = Login {
        email: format!("{}@{}", account.fxa_uid, domain),
        fxa_uid: account.fxa_uid.clone(),
        claims: Claims {
            generation: account.generation,
            keys_changed_at: key_id.keys_changed_at,
            client_state: key_id.client_state.clone(),
        },
    };
    let assignment = state.token_store.login(login, policy).await.map_err(|e| match e {
        LoginError::NewUsersDisabled => {
            // Logged so an operator can let this account in with `syncstead user allow`.
            tracing::warn!(fxa_uid = %account.fxa_uid, "refused a new user");
            TokenError::new(
                StatusCode::FORBIDDEN,
                "new-users-disabled",
                "body",
                "",
                "New users are not allowed",
            )
        }
        LoginError::Rejected(r) => {
            let mut err = TokenError::unauthorized(r.status());
            if let syncstead_proto::tokenserver::Rejection::InvalidClientState(description) = r {
                err.location = "header";
                err.name = "X-Client-State".into();
                err.description = description.into();
            }
            err
        }
        LoginError::NoNode => {
            tracing::error!("no storage node can take a new user");
            TokenError::internal(StatusCode::SERVICE_UNAVAILABLE)
        }
        LoginError::RetiredWithoutNode => TokenError::internal(StatusCode::INTERNAL_SERVER_ERROR),
        LoginError::Store(e) => {
            tracing::error!(error = %e, "token store failed");
            TokenError::internal(StatusCode::SERVICE_UNAVAILABLE)
        }
    })?;

    let duration = duration(query.as_deref(), ts.duration);
    let hashed_fxa_uid = metrics_hash(&ts.metrics_secret, &account.fxa_uid);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let kca_or_generation = assignment.keys_changed_at.unwrap_or(assignment.generation);
    let payload = TokenPayload {
        node: assignment.node.clone(),
        fxa_kid: Some(KeyId::fxa_kid(kca_or_generation, &assignment.client_state)),
        fxa_uid: Some(account.fxa_uid.clone()),
        hashed_device_id: Some(metrics_hash(&ts.metrics_secret, &format!("{hashed_fxa_uid}none"))),
        hashed_fxa_uid: Some(hashed_fxa_uid.clone()),
        expires: (now + duration) as f64,
        uid: assignment.uid as u64,
        tokenserver_origin: Some("rust".into()),
        salt: random_salt(),
    };
    let creds = state.hawk.signer.mint(&payload);
    let body = json!({
        "id": creds.id,
        "key": creds.key,
        "uid": assignment.uid,
        "api_endpoint": format!("{}/1.5/{}", assignment.node, assignment.uid),
        "duration": duration,
        "hashed_fxa_uid": hashed_fxa_uid,
        "hashalg": "sha256",
        "node_type": ts.node_type,
    });
    let mut r = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body.to_string(),
    )
        .into_response();
    r.headers_mut().insert("x-timestamp", x_timestamp());
    r.headers_mut()
        .insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    Ok(r)
}

/// The token server's part of the application state.
pub struct TokenService {
    /// Mozilla accounts' tokens; `None` when only Syncstead's own accounts sync here.
    pub verifier: Option<crate::oauth::Verifier>,
    /// Syncstead's own accounts: their tokens are checked in-process, `aud` included.
    pub own: Option<Arc<crate::accounts::AccountServer>>,
    /// Refused access tokens per client address: guessing is slowed to a crawl.
    pub throttle: crate::auth::Throttle,
    pub policy: NewUserPolicy,
    pub email_domain: String,
    pub duration: u64,
    pub metrics_secret: String,
    pub node_type: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_004_duration_parameter() {
        assert_eq!(duration(Some("duration=12"), 3600), 12);
        assert_eq!(duration(Some("duration=4000"), 3600), 3600);
        assert_eq!(duration(Some("duration=lolwut"), 3600), 3600);
        assert_eq!(duration(Some("duration=-1"), 3600), 3600);
        assert_eq!(duration(Some("duration=0"), 3600), 3600);
        assert_eq!(duration(None, 3600), 3600);
    }
}
