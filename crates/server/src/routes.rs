//! The whole HTTP application: every surface's routes, CORS, and the shared middleware.

use std::time::Duration;

use axum::http::{HeaderName, Method};
use axum::Router;

use crate::error::ApiError;
use crate::headers::*;
use crate::middleware::weave_middleware;
use crate::state::AppState;
use crate::{accounts, ops, storage11, storage15, tokenserver, user_api};

/// Any origin by default, answered with the caller's own origin as Mozilla's server does
/// (records are encrypted and requests carry their credentials explicitly, never cookies);
/// or only the operator's list.
fn cors(allowed: Option<&[String]>) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let names = [
        "authorization",
        "content-type",
        "user-agent",
        X_LAST_MODIFIED,
        X_WEAVE_TIMESTAMP,
        X_WEAVE_NEXT_OFFSET,
        X_WEAVE_RECORDS,
        X_WEAVE_BYTES,
        X_WEAVE_TOTAL_RECORDS,
        X_WEAVE_TOTAL_BYTES,
        "x-verify-code",
        X_IF_MODIFIED_SINCE,
        X_IF_UNMODIFIED_SINCE,
    ]
    .map(HeaderName::from_static);
    CorsLayer::new()
        .allow_origin(match allowed {
            None => AllowOrigin::mirror_request(),
            Some(list) => AllowOrigin::list(list.iter().filter_map(|o| o.parse().ok())),
        })
        .allow_methods([Method::DELETE, Method::GET, Method::POST, Method::PUT])
        .allow_headers(names.clone())
        .expose_headers(names)
        .max_age(Duration::from_secs(1_728_000))
}

/// The whole HTTP application, before path-prefix handling.
pub fn router(state: AppState) -> Router {
    let mut app = Router::new()
        .merge(ops::router(state.account_server.is_none()))
        .merge(user_api::router());
    if state.account_server.is_some() {
        app = app.merge(accounts::router());
    }
    if state.admin.is_some() {
        app = app.merge(crate::admin::router());
    }
    if state.settings.storage_node {
        app = app.merge(storage15::router());
    }
    if state.tokens.is_some() {
        app = app.merge(tokenserver::router());
    }
    for prefix in storage11::PREFIXES {
        app = app.merge(storage11::router(prefix));
    }
    app.fallback(|| async { ApiError::NotFound })
        .layer(axum::middleware::from_fn_with_state(state.clone(), weave_middleware))
        .layer(cors(state.settings.cors_allowed_origins.as_deref()))
        .with_state(state)
}
