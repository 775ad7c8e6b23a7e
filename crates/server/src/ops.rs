//! Operations: health endpoints, the Prometheus listener, and background maintenance.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::state::AppState;

/// `with_root`: answer `/` here (with Syncstead accounts on, the sign-in page is there).
pub fn router(with_root: bool) -> Router<AppState> {
    let r = Router::new();
    let r = if with_root {
        r.route(
            "/",
            get(|| async { "Syncstead: a Firefox Sync server. See /__version__.\n" }),
        )
    } else {
        r
    };
    r.route("/__heartbeat__", get(heartbeat))
        .route("/__lbheartbeat__", get(|| async { Json(json!({})) }))
        .route("/__version__", get(version))
}

async fn version() -> Json<serde_json::Value> {
    Json(json!({
        "name": "syncstead",
        "version": env!("CARGO_PKG_VERSION"),
        "source": "https://github.com/syncstead/syncstead",
    }))
}

/// S15-180: 200 when the database answers, 503 otherwise.
async fn heartbeat(State(state): State<AppState>) -> Response {
    let quota =
        json!({ "enabled": state.settings.quota_bytes.is_some(), "size": state.settings.quota_bytes.unwrap_or(0) });
    match state.store.check().await {
        Ok(()) => Json(json!({
            "status": "Ok", "database": "Ok", "version": env!("CARGO_PKG_VERSION"), "quota": quota,
        }))
        .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "heartbeat: database check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(
                    json!({ "status": "Err", "database": "Err", "version": env!("CARGO_PKG_VERSION"), "quota": quota }),
                ),
            )
                .into_response()
        }
    }
}

/// Purges expired records and abandoned batches on a schedule.
pub async fn purge_task(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(state.settings.purge_interval_seconds));
    tick.tick().await;
    loop {
        tick.tick().await;
        match state.store.purge_expired().await {
            Ok(r) => tracing::info!(
                bsos = r.bsos,
                batches = r.batches,
                collection_names = r.collections,
                delete_ms = r.deleting.as_millis() as u64,
                reclaim_ms = r.reclaiming.as_millis() as u64,
                "purged expired data"
            ),
            Err(e) => tracing::error!(error = %e, "purge failed"),
        }
        if state.tokens.is_some() && state.settings.storage_node {
            // Buckets of records replaced by a key change or a move (T10-090), once no
            // token for them can still be valid.
            let grace_ms = (state.settings.token_duration + state.settings.expired_token_grace_seconds) as i64 * 1000;
            let before = syncstead_proto::SyncTimestamp::now().as_millis() - grace_ms;
            match state.token_store.purge_replaced(&state.public_base, before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(buckets = n, "purged the data of replaced users"),
                Err(e) => tracing::error!(error = %e, "purge of replaced users failed"),
            }
        }
    }
}

/// Maintenance mode follows the setting, or a `maintenance` file in the data directory, so
/// an operator can switch it without a restart.
pub async fn maintenance_watch(state: AppState) {
    let file = state.settings.data_dir.join("maintenance");
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let on = state.settings.maintenance || file.exists();
        state.runtime.maintenance.store(on, Ordering::Relaxed);
    }
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Whether a recorder is installed: without one, building metric labels is wasted work.
pub fn metrics_enabled() -> bool {
    HANDLE.get().is_some()
}

/// The process has one metrics recorder, installed by the first server that asks.
fn prometheus() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .set_buckets(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ])
            .expect("static buckets are valid")
            // Counts, not seconds: how many writes one SQLite commit covered.
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_jobs".into()),
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
            )
            .expect("static buckets are valid")
            .install_recorder()
            .expect("metrics recorder installs once")
    })
}

/// The metrics as the metrics endpoint would give them, when a recorder is installed
/// (`metrics_listen` is set); the admin page shows them.
pub fn metrics_text() -> Option<String> {
    HANDLE.get().map(|h| h.render())
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    if let Ok(stats) = state.store.stats().await {
        metrics::gauge!("syncstead_users").set(stats.users as f64);
        metrics::gauge!("syncstead_active_batches").set(stats.active_batches as f64);
        metrics::gauge!("syncstead_collection_names").set(stats.collection_names as f64);
        metrics::gauge!("syncstead_database_bytes").set(stats.database_bytes as f64);
    }
    metrics::gauge!("syncstead_requests_in_flight").set(state.runtime.inflight.load(Ordering::Relaxed) as f64);
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        prometheus().render(),
    )
        .into_response()
}

/// Serves `/metrics` on its own listener, so it is never exposed with the public API.
pub async fn metrics_server(state: AppState, listen: SocketAddr) -> std::io::Result<(JoinHandle<()>, SocketAddr)> {
    prometheus();
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new().route("/metrics", get(render_metrics)).with_state(state);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics listener failed");
        }
    });
    Ok((task, addr))
}
