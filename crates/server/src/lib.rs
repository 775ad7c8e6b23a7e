//! Syncstead's HTTP server: one module per protocol surface, plus auth, config and the
//! cross-cutting middleware (Weave timestamps, maintenance, backoff, access log, metrics).

pub mod auth;
pub mod config;
pub mod error;
pub mod headers;
pub mod listener;
pub mod oauth;
mod ops;
pub mod passwords;
pub mod storage11;
pub mod storage15;
pub mod tokenserver;
pub mod user_api;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, OriginalUri, Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Router, ServiceExt};
use syncstead_proto::token::TokenSigner;
use syncstead_proto::SyncTimestamp;
use syncstead_store::{
    AccountStore, Backend, LegacyStore, NewUserPolicy, SqliteOptions, SqliteStore, Store, TokenStore,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::Layer;

use crate::auth::{HawkVerifier, NonceCache};
pub use crate::config::{ConfigLayer, Settings};
use crate::error::ApiError;
use crate::headers::*;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot open the database: {0}")]
    Store(#[from] syncstead_store::StoreError),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
    #[error("OAuth keys: {0}")]
    OAuthKeys(String),
    #[error("mail: {0}")]
    Mail(String),
}

/// Process-wide state that changes while the server runs.
#[derive(Default)]
pub struct Runtime {
    maintenance: AtomicBool,
    inflight: AtomicUsize,
}

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub token_store: Arc<dyn TokenStore>,
    pub accounts: Arc<dyn AccountStore>,
    pub legacy: Arc<dyn LegacyStore>,
    /// Weave 1.1 password checking.
    pub weave: Arc<user_api::WeaveAuth>,
    pub settings: Arc<Settings>,
    pub hawk: Arc<HawkVerifier>,
    pub runtime: Arc<Runtime>,
    /// Present when this server is a token server.
    pub tokens: Option<Arc<tokenserver::TokenService>>,
    /// The URL clients reach this server at, without a trailing slash.
    pub public_base: String,
}

/// Filled in by authentication so the access log can name the user.
#[derive(Clone, Default)]
pub struct RequestUid(pub Arc<OnceLock<u64>>);

/// Awaits a store call and records its duration.
pub async fn timed<T>(op: &'static str, fut: impl Future<Output = T>) -> T {
    let start = Instant::now();
    let out = fut.await;
    if ops::metrics_enabled() {
        metrics::histogram!("syncstead_store_seconds", "op" => op).record(start.elapsed().as_secs_f64());
    }
    out
}

/// Opens the store the settings name.
pub async fn open_store(settings: &Settings) -> Result<Arc<dyn Backend>, ServeError> {
    if settings.is_postgres() {
        let store = syncstead_store::PgStore::open(&settings.database_url, settings.postgres_pool_size).await?;
        return Ok(Arc::new(store));
    }
    let path = settings.sqlite_path()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = SqliteOptions::new(path);
    options.synchronous = settings.sqlite_synchronous;
    options.readers = settings.sqlite_readers;
    Ok(Arc::new(SqliteStore::open(options).await?))
}

impl AppState {
    pub fn new(backend: Arc<dyn Backend>, settings: Settings, public_base: String) -> Result<Self, ServeError> {
        let hawk = HawkVerifier {
            signer: TokenSigner::new(&settings.master_secret),
            public_url: settings.public_url.clone(),
            skew: Duration::from_secs(settings.hawk_skew_seconds),
            expired_grace_seconds: settings.expired_token_grace_seconds,
            nonces: NonceCache::new(200_000),
            verified: Default::default(),
        };
        let runtime = Runtime::default();
        runtime.maintenance.store(settings.maintenance, Ordering::Relaxed);
        let tokens = if settings.token_server {
            Some(Arc::new(token_service(&settings)?))
        } else {
            None
        };
        let hasher = passwords::Hasher::new(settings.argon2_memory_kib, settings.argon2_iterations);
        let mailer = match &settings.smtp_url {
            Some(url) => {
                let from = settings.smtp_from.clone().unwrap_or_else(|| {
                    let host = settings
                        .public_url
                        .as_ref()
                        .map_or("localhost", |p| p.host.as_str())
                        .to_string();
                    format!("Syncstead <noreply@{host}>")
                });
                Some(user_api::Mailer::new(url, &from).map_err(ServeError::Mail)?)
            }
            None => None,
        };
        Ok(AppState {
            store: backend.clone(),
            token_store: backend.clone(),
            accounts: backend.clone(),
            legacy: backend,
            weave: Arc::new(user_api::WeaveAuth::new(hasher, mailer)),
            settings: Arc::new(settings),
            hawk: Arc::new(hawk),
            runtime: Arc::new(runtime),
            tokens,
            public_base,
        })
    }
}

fn token_service(settings: &Settings) -> Result<tokenserver::TokenService, ServeError> {
    use config::OAuthSettings;
    let verifier = match &settings.oauth {
        OAuthSettings::Local {
            jwks_url,
            public_key_file,
            issuer,
            timeout_seconds,
        } => {
            let configured = match public_key_file {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| ServeError::OAuthKeys(format!("{}: {e}", path.display())))?;
                    oauth::load_keys(&text).map_err(|e| ServeError::OAuthKeys(format!("{}: {e}", path.display())))?
                }
                None => Vec::new(),
            };
            oauth::Verifier::local(
                configured,
                jwks_url.clone(),
                issuer.clone(),
                Duration::from_secs(*timeout_seconds),
            )
        }
        OAuthSettings::Remote {
            verify_url,
            timeout_seconds,
        } => oauth::Verifier::remote(verify_url.clone(), Duration::from_secs(*timeout_seconds)),
    };
    // The metrics hash only needs to be stable and private: derive it from the master secret.
    let metrics_secret = data_encoding::HEXLOWER.encode(&syncstead_proto::token::sha256(
        format!("syncstead metrics hash\n{}", settings.master_secret).as_bytes(),
    ));
    Ok(tokenserver::TokenService {
        verifier,
        // Twenty refused tokens in 15 minutes from one address, then 30 s doubling to
        // 15 minutes: nobody's Firefox gets there, a guesser gets nowhere.
        throttle: passwords::Throttle::new(
            20,
            Duration::from_secs(900),
            Duration::from_secs(30),
            Duration::from_secs(900),
        ),
        policy: NewUserPolicy {
            open: true,
            allow_list_only: !settings.allow_new_users,
            max_users: settings.max_users,
            release_rate: 0.1,
        },
        email_domain: settings.fxa_email_domain.clone(),
        duration: settings.token_duration,
        metrics_secret,
        node_type: settings.node_type.clone(),
    })
}

fn cors() -> tower_http::cors::CorsLayer {
    use tower_http::cors::{Any, CorsLayer};
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
        .allow_origin(Any)
        .allow_methods([Method::DELETE, Method::GET, Method::POST, Method::PUT])
        .allow_headers(names.clone())
        .expose_headers(names)
        .max_age(Duration::from_secs(1_728_000))
}

/// The whole HTTP application, before path-prefix handling.
pub fn router(state: AppState) -> Router {
    let mut app = Router::new().merge(ops::router()).merge(user_api::router());
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
        .layer(cors())
        .with_state(state)
}

fn is_protocol_path(path: &str) -> bool {
    !path.starts_with("/__")
}

/// Maintenance mode, X-Weave-Timestamp (S15-030), X-Weave-Backoff, the access log and
/// request metrics.
async fn weave_middleware(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
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
async fn strip_prefix(State(prefix): State<Arc<str>>, mut req: Request, next: Next) -> Response {
    if req.extensions().get::<OriginalUri>().is_none() {
        let original = OriginalUri(req.uri().clone());
        req.extensions_mut().insert(original);
    }
    let path = req.uri().path();
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

/// A server started by [`start`]: its bound address, and the means to stop it.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<std::io::Result<()>>,
    background: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// Stops accepting connections, lets in-flight requests finish, then stops the
    /// background tasks and closes the database.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let result = (&mut self.handle)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        for task in &self.background {
            task.abort();
        }
        result?;
        Ok(())
    }

    /// Waits until the server stops by itself (it only does on an I/O failure).
    pub async fn wait(&mut self) -> Result<(), ServeError> {
        let result = (&mut self.handle)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(result?)
    }
}

/// Opens the store, binds the listeners and starts serving.
pub async fn start(mut settings: Settings) -> Result<RunningServer, ServeError> {
    settings.load_master_secret()?;
    let store = open_store(&settings).await?;
    start_with_store(settings, store).await
}

pub async fn start_with_store(settings: Settings, store: Arc<dyn Backend>) -> Result<RunningServer, ServeError> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| ServeError::Bind(settings.listen, e))?;
    let addr = listener.local_addr()?;
    // Zero-touch node assignment: a server that is both token server and storage node
    // registers itself as a node the first time it starts.
    let own = settings
        .public_url
        .as_ref()
        .map_or_else(|| format!("http://{addr}"), |p| p.base());
    if settings.token_server && settings.storage_node {
        // When this server is the only node, it follows its public URL: a self-hoster who
        // later puts it behind a proxy keeps every user on it.
        match store.nodes().await?.as_slice() {
            [only] if only.url != own => {
                tracing::info!(from = %only.url, to = %own, "the single storage node follows public_url");
                store.rename_node(&only.url, &own).await?;
            }
            _ => {
                store.add_node(&own, settings.node_capacity).await?;
            }
        }
    }
    let state = AppState::new(store, settings, own)?;
    let settings = state.settings.clone();

    let mut background = vec![
        tokio::spawn(ops::purge_task(state.clone())),
        tokio::spawn(ops::maintenance_watch(state.clone())),
    ];
    let metrics_addr = match settings.metrics_listen {
        Some(listen) => {
            let (task, addr) = ops::metrics_server(state.clone(), listen).await?;
            background.push(task);
            Some(addr)
        }
        None => None,
    };

    let prefix: Arc<str> = settings.public_url.as_ref().map_or("", |p| p.prefix.as_str()).into();
    let app = axum::middleware::from_fn_with_state(prefix, strip_prefix).layer(router(state.clone()));
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        let listener = listener::GuardedListener::new(
            listener,
            settings.max_connections,
            Duration::from_secs(settings.idle_timeout_seconds),
        );
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<listener::PeerAddr>(),
        )
        .with_graceful_shutdown(async {
            let _ = rx.await;
        })
        .await
    });
    Ok(RunningServer {
        addr,
        metrics_addr,
        state,
        shutdown: Some(tx),
        handle,
        background,
    })
}
