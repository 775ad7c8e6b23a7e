//! What every request passes through: maintenance mode, X-Weave-Timestamp (S15-030),
//! X-Weave-Backoff, the access log and request metrics; and the public URL's path prefix.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, OriginalUri, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use syncstead_proto::SyncTimestamp;

use crate::error::ApiError;
use crate::headers::*;
use crate::state::{AppState, RequestUid};
use crate::{ops, storage11};

fn is_protocol_path(path: &str) -> bool {
    !path.starts_with("/__")
}

/// Maintenance mode, X-Weave-Timestamp (S15-030), X-Weave-Backoff, the access log and
/// request metrics.
pub async fn weave_middleware(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let arrival = SyncTimestamp::now();
    let start = Instant::now();
    let inflight = state.runtime.inflight.fetch_add(1, Ordering::Relaxed) + 1;
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let protocol = is_protocol_path(req.uri().path());
    let uid = RequestUid::default();
    req.extensions_mut().insert(uid.clone());

    let mut response = if protocol && state.runtime.maintenance.load(Ordering::Relaxed) {
        ApiError::Unavailable {
            retry_after: state.settings.retry_after_seconds,
        }
        .into_response()
    } else {
        next.run(req).await
    };
    state.runtime.inflight.fetch_sub(1, Ordering::Relaxed);

    if protocol {
        let headers = response.headers_mut();
        let last_modified = headers
            .get(X_LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| SyncTimestamp::parse_seconds(v).ok())
            .unwrap_or_default();
        // A handler may already have set it to its write time (Storage 1.1).
        let written = headers
            .get(X_WEAVE_TIMESTAMP)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| SyncTimestamp::parse_seconds(v).ok())
            .unwrap_or_default();
        let ts = arrival.max(last_modified).max(written);
        headers.insert(
            X_WEAVE_TIMESTAMP,
            HeaderValue::from_str(&ts.to_string()).expect("ASCII"),
        );
        if inflight > state.settings.backoff_inflight {
            headers.insert(X_WEAVE_BACKOFF, HeaderValue::from(state.settings.backoff_seconds));
        }
    }
    let status = response.status().as_u16();
    let elapsed = start.elapsed();
    if ops::metrics_enabled() {
        metrics::counter!("syncstead_requests_total", "route" => route.clone(), "method" => method.to_string(), "status" => status.to_string())
            .increment(1);
        metrics::histogram!("syncstead_request_seconds", "route" => route.clone(), "method" => method.to_string())
            .record(elapsed.as_secs_f64());
    }
    tracing::info!(
        target: "syncstead::access",
        method = %method,
        route = %route,
        status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        uid = uid.0.get().copied(),
        "request"
    );
    response
}

/// Rewrites `<prefix>/…` to `/…` so the server works whether or not a reverse proxy strips
/// the public URL's path prefix. The original URI stays available for Hawk.
pub async fn strip_prefix(State(prefix): State<Arc<str>>, mut req: Request, next: Next) -> Response {
    if req.extensions().get::<OriginalUri>().is_none() {
        let original = OriginalUri(req.uri().clone());
        req.extensions_mut().insert(original);
    }
    let path = req.uri().path();
    // S15-010, S11-005: a path with a broken escape names no record.
    if syncstead_proto::names::has_malformed_escape(path) {
        return ApiError::NotFound.into_response();
    }
    let rest = path
        .strip_prefix(&*prefix)
        .filter(|r| r.starts_with('/'))
        .unwrap_or(path);
    // Storage 1.1 ignores a trailing slash (S11-003); 1.5 answers it with 404.
    let legacy = storage11::PREFIXES.iter().any(|p| rest.starts_with(&format!("/{p}/")));
    let trimmed = if legacy && rest.len() > 1 {
        rest.trim_end_matches('/')
    } else {
        rest
    };
    if trimmed.len() != path.len() {
        let rest = trimmed;
        let mut pq = rest.to_string();
        if let Some(q) = req.uri().query() {
            pq.push('?');
            pq.push_str(q);
        }
        if let Ok(uri) = pq.parse() {
            *req.uri_mut() = uri;
        }
    }
    next.run(req).await
}
