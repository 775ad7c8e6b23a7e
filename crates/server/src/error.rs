//! The one place where failures become protocol responses (status + weave respcode).
//!
//! Store errors map by kind: a client's precondition or a protocol refusal to its status,
//! an unavailable database (busy, pool exhausted, connection lost, disk full) to 503 with
//! `Retry-After` on every surface, anything else to 500 on Storage 1.5 (§17). The Weave
//! 1.1 surfaces answer every backend failure with 503 (U10-021, U10-053): their handlers
//! return [`WeaveError`], which differs from [`ApiError`] in that one respect only.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use syncstead_proto::{respcode, ProtoError, SyncTimestamp};
use syncstead_store::StoreError;

use crate::headers::X_LAST_MODIFIED;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("not found")]
    NotFound,
    #[error("bad request ({0})")]
    BadRequest(u8),
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// Weave 1.1 HTTP Basic failure (U10-012, S11-012).
    #[error("basic authentication failed")]
    BasicUnauthorized,
    #[error("over quota")]
    OverQuota,
    #[error("not acceptable")]
    NotAcceptable,
    #[error("request too large")]
    PayloadTooLarge,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("not modified")]
    NotModified(SyncTimestamp),
    #[error("precondition failed")]
    PreconditionFailed(SyncTimestamp),
    #[error("write conflict")]
    Conflict,
    #[error("service unavailable")]
    Unavailable { retry_after: u64 },
    /// The database failed; how this is answered depends on the failure and the surface.
    #[error(transparent)]
    Backend(StoreError),
    #[error("internal error: {0}")]
    Internal(#[source] syncstead_store::Cause),
}

/// How long clients are asked to wait when the database is unavailable.
const BACKEND_RETRY_AFTER: u64 = 60;

impl ApiError {
    /// An internal failure, for the log.
    pub fn internal(e: impl Into<syncstead_store::Cause>) -> Self {
        ApiError::Internal(e.into())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotModified(t) => ApiError::NotModified(t),
            StoreError::PreconditionFailed(t) => ApiError::PreconditionFailed(t),
            StoreError::Conflict => ApiError::Conflict,
            StoreError::OverQuota => ApiError::OverQuota,
            StoreError::NotFound => ApiError::NotFound,
            StoreError::BatchNotFound => ApiError::BadRequest(respcode::NONE),
            StoreError::BatchTooLarge => ApiError::BadRequest(respcode::SIZE_LIMIT_EXCEEDED),
            // Only record fields reach the database unchecked by the protocol layer.
            StoreError::BadInput(cause) => {
                tracing::info!(error = %cause, "the database refused a value");
                ApiError::BadRequest(respcode::INVALID_WBO)
            }
            other => ApiError::Backend(other),
        }
    }
}

impl From<ProtoError> for ApiError {
    fn from(e: ProtoError) -> Self {
        match e {
            ProtoError::Bso(_) => ApiError::BadRequest(respcode::INVALID_WBO),
            _ => ApiError::BadRequest(respcode::NONE),
        }
    }
}

fn json_code(status: StatusCode, code: u8) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        code.to_string(),
    )
        .into_response()
}

fn empty_with_modified(status: StatusCode, t: SyncTimestamp) -> Response {
    let mut r = status.into_response();
    if let Ok(v) = HeaderValue::from_str(&t.to_string()) {
        r.headers_mut().insert(X_LAST_MODIFIED, v);
    }
    r
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::NotFound => json_code(StatusCode::NOT_FOUND, respcode::NONE),
            ApiError::BadRequest(code) => json_code(StatusCode::BAD_REQUEST, code),
            ApiError::Unauthorized(why) => {
                tracing::debug!(why, "authentication failed");
                let mut r = json_code(StatusCode::UNAUTHORIZED, respcode::NONE);
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Hawk"));
                r
            }
            ApiError::BasicUnauthorized => {
                let mut r = (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"Sync\""),
                );
                r
            }
            ApiError::OverQuota => json_code(StatusCode::FORBIDDEN, respcode::OVER_QUOTA),
            ApiError::NotAcceptable => json_code(StatusCode::NOT_ACCEPTABLE, respcode::NONE),
            ApiError::PayloadTooLarge => json_code(StatusCode::PAYLOAD_TOO_LARGE, respcode::SIZE_LIMIT_EXCEEDED),
            ApiError::UnsupportedMediaType => json_code(StatusCode::UNSUPPORTED_MEDIA_TYPE, respcode::NONE),
            ApiError::NotModified(t) => empty_with_modified(StatusCode::NOT_MODIFIED, t),
            ApiError::PreconditionFailed(t) => empty_with_modified(StatusCode::PRECONDITION_FAILED, t),
            ApiError::Conflict => {
                let mut r = json_code(StatusCode::SERVICE_UNAVAILABLE, respcode::NONE);
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
                r
            }
            ApiError::Unavailable { retry_after } => {
                let mut r = json_code(StatusCode::SERVICE_UNAVAILABLE, respcode::NONE);
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
                r
            }
            ApiError::Backend(e) if e.is_unavailable() => {
                tracing::warn!(error = %e, "database unavailable");
                try_later()
            }
            ApiError::Backend(e) => {
                tracing::error!(error = %e, "database error");
                json_code(StatusCode::INTERNAL_SERVER_ERROR, respcode::NONE)
            }
            ApiError::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                json_code(StatusCode::INTERNAL_SERVER_ERROR, respcode::NONE)
            }
        }
    }
}

/// 503 + `Retry-After`: what every Sync client reads as "try again later".
fn try_later() -> Response {
    ApiError::Unavailable {
        retry_after: BACKEND_RETRY_AFTER,
    }
    .into_response()
}

/// An [`ApiError`] of a Weave 1.1 surface (User API, Storage 1.1): a failing backend is
/// 503 + `Retry-After`, which Weave clients treat as "try later" (U10-021, U10-053).
#[derive(Debug)]
pub struct WeaveError(pub ApiError);

impl<E: Into<ApiError>> From<E> for WeaveError {
    fn from(e: E) -> Self {
        WeaveError(e.into())
    }
}

impl IntoResponse for WeaveError {
    fn into_response(self) -> Response {
        match self.0 {
            ApiError::Backend(e) => {
                tracing::error!(error = %e, "database error");
                try_later()
            }
            ApiError::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                try_later()
            }
            // S11-071: over quota is 400 `14` in Weave 1.1 (403 in 1.5).
            ApiError::OverQuota => ApiError::BadRequest(respcode::OVER_QUOTA).into_response(),
            other => other.into_response(),
        }
    }
}

/// Out of password-hashing slots: a load problem, so the client comes back later.
impl From<crate::passwords::Busy> for ApiError {
    fn from(_: crate::passwords::Busy) -> Self {
        ApiError::Unavailable { retry_after: 10 }
    }
}

/// Failures of Syncstead's account server, answered in Mozilla accounts' envelope
/// `{code, errno, error, message}`: Firefox acts on the `errno` (110 makes it check the
/// account). Only a throttled request carries a retry time: on anything permanent one
/// would put the browser's whole account client into backoff.
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error("account already exists")]
    AccountExists,
    #[error("unknown account")]
    UnknownAccount,
    #[error("incorrect password")]
    IncorrectPassword,
    #[error("invalid JSON in request body")]
    BadJson,
    #[error("invalid parameter in request body: {0}")]
    BadParameter(&'static str),
    #[error("invalid authentication token in request signature")]
    InvalidToken,
    #[error("invalid request signature")]
    BadSignature,
    #[error("client has sent too many requests")]
    Throttled { retry_after: u64 },
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("this account has been disabled")]
    Disabled,
    /// A device id the account does not have (any more): Firefox then registers anew.
    #[error("unknown device")]
    UnknownDevice,
    /// A forgotten password's code that is wrong, spent or expired.
    #[error("invalid or expired reset code")]
    BadResetCode,
    /// The target device does not offer the command (errno 157).
    #[error("unavailable device command")]
    UnavailableCommand,
    #[error("unknown OAuth client")]
    UnknownClient,
    #[error("invalid or expired authorization code")]
    BadCode,
    #[error("service unavailable")]
    Unavailable { retry_after: u64 },
    #[error("resource not found")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl IntoResponse for AccountsError {
    fn into_response(self) -> Response {
        use AccountsError as E;
        let (status, errno) = match &self {
            E::AccountExists => (StatusCode::BAD_REQUEST, 101),
            E::UnknownAccount => (StatusCode::BAD_REQUEST, 102),
            E::IncorrectPassword => (StatusCode::BAD_REQUEST, 103),
            E::BadJson => (StatusCode::BAD_REQUEST, 106),
            E::BadParameter(_) => (StatusCode::BAD_REQUEST, 107),
            E::BadSignature => (StatusCode::UNAUTHORIZED, 109),
            E::InvalidToken => (StatusCode::UNAUTHORIZED, 110),
            E::Throttled { .. } => (StatusCode::TOO_MANY_REQUESTS, 114),
            E::UnknownDevice => (StatusCode::BAD_REQUEST, 123),
            E::UnavailableCommand => (StatusCode::BAD_REQUEST, 157),
            E::BadResetCode => (StatusCode::BAD_REQUEST, 105),
            E::Disabled => (StatusCode::BAD_REQUEST, 127),
            E::Forbidden(_) => (StatusCode::FORBIDDEN, 125),
            E::UnknownClient => (StatusCode::BAD_REQUEST, 162),
            E::BadCode => (StatusCode::BAD_REQUEST, 163),
            E::NotFound => (StatusCode::NOT_FOUND, 116),
            E::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, 201),
            E::Store(e) if e.is_unavailable() => (StatusCode::SERVICE_UNAVAILABLE, 201),
            E::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, 999),
        };
        if let E::Store(e) = &self {
            tracing::error!(error = %e, "account server: database failure");
        }
        let retry_after = match &self {
            E::Throttled { retry_after } | E::Unavailable { retry_after } => Some(*retry_after),
            E::Store(e) if e.is_unavailable() => Some(BACKEND_RETRY_AFTER),
            _ => None,
        };
        let message = match &self {
            E::Store(_) => "unexpected error".to_string(),
            other => other.to_string(),
        };
        let mut body = serde_json::json!({
            "code": status.as_u16(),
            "errno": errno,
            "error": status.canonical_reason().unwrap_or(""),
            "message": message,
        });
        let mut response = (status, axum::Json(&body)).into_response();
        if let Some(secs) = retry_after {
            body["retryAfter"] = secs.into();
            response = (status, axum::Json(&body)).into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
