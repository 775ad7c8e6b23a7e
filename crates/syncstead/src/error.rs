//! The one error type of the `syncstead` binary: what a command could not do, for the
//! message `syncstead: …` and a failing exit status.

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] syncstead_server::config::ConfigError),
    #[error(transparent)]
    Serve(#[from] syncstead_server::ServeError),
    #[error(transparent)]
    Store(#[from] syncstead_store::StoreError),
    #[error(transparent)]
    Admin(#[from] syncstead_store::AdminError),
    #[error(transparent)]
    Client(#[from] syncstead_client::ClientError),
    #[error(transparent)]
    Accounts(#[from] syncstead_server::error::AccountsError),
    /// An account operation the admin page shares with the command line.
    #[error(transparent)]
    Operator(#[from] syncstead_server::admin::AdminError),
    #[error(transparent)]
    Lock(#[from] syncstead_store::LockError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{path}: {source}", path = .0.display(), source = .1)]
    File(std::path::PathBuf, #[source] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
    /// The command refuses what it was asked (a bad argument, a missing confirmation,
    /// something that does not exist); the text says what to change.
    #[error("{0}")]
    Refused(String),
}

pub type CliResult<T> = Result<T, CliError>;
