//! Starting and stopping the server: the store, the listeners, the background tasks, and
//! node self-registration.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use syncstead_store::{Backend, InstanceLock, SqliteOptions, SqliteStore};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::Layer;

use crate::config::{self, Settings};
use crate::middleware::strip_prefix;
use crate::routes::router;
use crate::state::AppState;
use crate::{listener, ops};

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
    #[error("accounts' signing key: {0}")]
    AccountsKey(#[from] crate::accounts::jwt::KeyError),
    #[error("mail: {0}")]
    Mail(#[from] crate::mail::MailError),
    #[error(transparent)]
    Lock(#[from] syncstead_store::LockError),
    #[error("cannot open the database {} for writing: {}{}", .0.display(), .1, .2)]
    DatabaseFile(std::path::PathBuf, std::io::Error, String),
    #[error("HTTPS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error(
        "listening on every interface ({0}) needs public_url, the URL Firefox reaches this server at, \
         e.g. --public-url http://192.168.1.20:{port} (or https://sync.example.com behind a proxy)",
        port = .0.port()
    )]
    NeedsPublicUrl(SocketAddr),
    #[error(
        "the database {} is missing, but one was in use here before (its lock file {} remains); \
         restore a backup with `syncstead restore`, or delete the lock file to start with an empty database",
        .0.display(), .1.display()
    )]
    DatabaseMissing(std::path::PathBuf, std::path::PathBuf),
}

/// Takes the data directory and (SQLite) the database for this process alone, so that
/// neither a second server nor a restore can work on them while this one runs.
pub fn lock_instance(settings: &Settings) -> Result<Vec<InstanceLock>, ServeError> {
    syncstead_store::lock::create_private_dir(&settings.data_dir)?;
    let mut locks = vec![InstanceLock::acquire(&settings.data_dir.join("syncstead.lock"))?];
    if !settings.is_postgres() {
        locks.push(InstanceLock::acquire(&InstanceLock::sqlite_path(
            &settings.sqlite_path()?,
        ))?);
    }
    Ok(locks)
}

/// Opens the store the settings name.
pub async fn open_store(settings: &Settings) -> Result<Arc<dyn Backend>, ServeError> {
    if settings.is_postgres() {
        let store = syncstead_store::PgStore::open(&settings.database_url, settings.postgres_pool_size).await?;
        return Ok(Arc::new(store));
    }
    let path = settings.sqlite_path()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        syncstead_store::lock::create_private_dir(dir)?;
    }
    // A database that served before leaves its lock file behind: never answer its loss
    // with a fresh, empty database that every client would then sync against.
    let lock = InstanceLock::sqlite_path(&path);
    if !path.exists() && lock.exists() {
        return Err(ServeError::DatabaseMissing(path, lock));
    }
    if let Some((e, hint)) = syncstead_store::sqlite::unwritable(&path) {
        return Err(ServeError::DatabaseFile(path, e, hint));
    }
    let mut options = SqliteOptions::new(path);
    options.synchronous = settings.sqlite_synchronous;
    options.readers = settings.sqlite_readers;
    Ok(Arc::new(SqliteStore::open(options).await?))
}

/// A server started by [`start`]: its bound address, and the means to stop it.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<std::io::Result<()>>,
    background: Vec<JoinHandle<()>>,
    locks: Vec<InstanceLock>,
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
    // A port in use is found before anything is made on disk.
    drop(std::net::TcpListener::bind(settings.listen).map_err(|e| ServeError::Bind(settings.listen, e))?);
    settings.load_master_secret()?;
    let store = open_store(&settings).await?;
    let locks = lock_instance(&settings)?;
    let mut running = start_with_store(settings, store).await?;
    running.locks = locks;
    Ok(running)
}

pub async fn start_with_store(settings: Settings, store: Arc<dyn Backend>) -> Result<RunningServer, ServeError> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| ServeError::Bind(settings.listen, e))?;
    let addr = listener.local_addr()?;
    // Zero-touch node assignment: a server that is both token server and storage node
    // registers itself as a node the first time it starts.
    if settings.public_url.is_none() && addr.ip().is_unspecified() && settings.token_server && settings.storage_node {
        // The token server would send Firefox to http://0.0.0.0:…, which reaches nothing.
        return Err(ServeError::NeedsPublicUrl(addr));
    }
    let scheme = settings.scheme();
    let own = settings
        .public_url
        .as_ref()
        .map_or_else(|| format!("{scheme}://{addr}"), |p| p.base());
    // Certificate files are read before anything is served: a wrong path fails the start.
    let tls = match &settings.tls {
        None => None,
        Some(source) => {
            let certs = Arc::new(crate::tls::Certificates::default());
            if let config::TlsSource::Files { cert, key } = source {
                certs.install(crate::tls::load_files(cert, key)?);
            }
            Some((certs.clone(), crate::tls::server_config(certs)?))
        }
    };
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
    match (&settings.tls, &tls) {
        (Some(config::TlsSource::Files { cert, key }), Some((certs, _))) => background.push(tokio::spawn(
            crate::tls::watch_files(certs.clone(), cert.clone(), key.clone(), Duration::from_secs(10)),
        )),
        (Some(config::TlsSource::Acme(acme)), Some((certs, _))) => {
            // The stored certificate is in place before the first connection is accepted.
            let due = crate::acme::load_stored(acme, certs);
            background.push(tokio::spawn(crate::acme::maintain(acme.clone(), certs.clone(), due)));
        }
        _ => {}
    }
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
    let limits = listener::ConnectionLimits {
        max_connections: settings.max_connections,
        per_address: settings.max_connections_per_address,
        idle: Duration::from_secs(settings.idle_timeout_seconds),
        head: Duration::from_secs(settings.request_head_timeout_seconds),
        body: Duration::from_secs(settings.request_body_timeout_seconds),
        trusted_proxies: settings.trusted_proxies.clone().into(),
        tls: tls.map(|(_, config)| tokio_rustls::TlsAcceptor::from(config)),
    };
    let handle = tokio::spawn(listener::serve(listener, app, limits, async {
        let _ = rx.await;
    }));
    Ok(RunningServer {
        addr,
        metrics_addr,
        state,
        shutdown: Some(tx),
        handle,
        background,
        locks: Vec::new(),
    })
}
