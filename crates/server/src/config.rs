//! Settings: built-in defaults, then a TOML file, then `SYNCSTEAD_*` environment variables,
//! then command-line flags. One struct serves as the TOML schema and as the flag set, so a
//! setting cannot exist in one place and not the other.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("invalid config file {0}: {1}")]
    Parse(PathBuf, String),
    #[error("invalid setting {0}: {1}")]
    Invalid(&'static str, String),
    #[error("master secret: {0}")]
    Secret(String),
}

/// Every setting, each optional so that layers can be merged. Flags and environment
/// variables come from clap; the TOML file uses the same names.
#[derive(Default, Clone, Deserialize, serde::Serialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ConfigLayer {
    /// TOML configuration file; its keys are the setting names below (e.g. `listen = "0.0.0.0:8000"`).
    #[arg(long, env = "SYNCSTEAD_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address and port to listen on [default: 127.0.0.1:8000].
    #[arg(long, env = "SYNCSTEAD_LISTEN", value_name = "ADDR", value_parser = parse_listen)]
    pub listen: Option<SocketAddr>,

    /// The origin and path prefix clients use to reach this server, e.g. `https://sync.example.com/sync`.
    /// Hawk signatures are checked against it, so set it behind a TLS reverse proxy
    /// [default: the Host header of each request, over http].
    #[arg(long, env = "SYNCSTEAD_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,

    /// Directory for the SQLite database and the generated master secret [default: ./syncstead-data].
    #[arg(long, env = "SYNCSTEAD_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Database to use: `sqlite://PATH` or `postgres://USER:PASSWORD@HOST:PORT/DB`
    /// [default: sqlite://<data_dir>/syncstead.db].
    #[arg(long, env = "SYNCSTEAD_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,

    /// Secret shared with the token server that signs tokens and derives Hawk keys.
    /// Prefer `master_secret_file`; without either, one is generated in the data directory.
    #[arg(long, env = "SYNCSTEAD_MASTER_SECRET", value_name = "SECRET", hide_env_values = true)]
    pub master_secret: Option<String>,

    /// File holding the master secret (its first line).
    #[arg(long, env = "SYNCSTEAD_MASTER_SECRET_FILE", value_name = "FILE")]
    pub master_secret_file: Option<PathBuf>,

    /// Serve HTTPS with this certificate chain (PEM, leaf first). Reloaded when the file
    /// changes or on SIGHUP; needs `tls_key_file`. Off unless set (plain HTTP).
    #[arg(long, env = "SYNCSTEAD_TLS_CERT_FILE", value_name = "FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// The private key of `tls_cert_file` (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "SYNCSTEAD_TLS_KEY_FILE", value_name = "FILE")]
    pub tls_key_file: Option<PathBuf>,

    /// Serve HTTPS with a certificate for these names (comma-separated) obtained and renewed
    /// by ACME (TLS-ALPN-01: the CA must reach this server's `listen` port as port 443 of
    /// each name). Kept in <data_dir>/acme. Off unless set.
    #[arg(long, env = "SYNCSTEAD_ACME_DOMAINS", value_name = "NAMES", value_delimiter = ',')]
    pub acme_domains: Option<Vec<String>>,

    /// E-mail address the ACME CA may write to about the certificates (expiry, revocation).
    #[arg(long, env = "SYNCSTEAD_ACME_CONTACT", value_name = "EMAIL")]
    pub acme_contact: Option<String>,

    /// The ACME CA's directory [default: https://acme-v02.api.letsencrypt.org/directory].
    #[arg(long, env = "SYNCSTEAD_ACME_DIRECTORY_URL", value_name = "URL")]
    pub acme_directory_url: Option<String>,

    /// A root certificate (PEM) to trust for the ACME CA's own HTTPS, for a private or
    /// test CA; the public roots otherwise.
    #[arg(long, env = "SYNCSTEAD_ACME_CA_FILE", value_name = "FILE")]
    pub acme_ca_file: Option<PathBuf>,

    /// Renew an ACME certificate once less than this percentage of its lifetime is left
    /// [default: 33].
    #[arg(long, env = "SYNCSTEAD_ACME_RENEW_PERCENT", value_name = "PERCENT")]
    pub acme_renew_percent: Option<u8>,

    /// Address for the Prometheus `/metrics` listener; off unless set.
    #[arg(long, env = "SYNCSTEAD_METRICS_LISTEN", value_name = "ADDR", value_parser = parse_listen)]
    pub metrics_listen: Option<SocketAddr>,

    /// Log format: `text` or `json` [default: text].
    #[arg(long, env = "SYNCSTEAD_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,

    /// Log filter, e.g. `info` or `syncstead=debug` [default: info].
    #[arg(long, env = "SYNCSTEAD_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,

    /// SQLite durability: `full` (every acknowledged write survives power loss) or
    /// `normal` (faster; survives a crash of the process, not of the machine) [default: full].
    #[arg(long, env = "SYNCSTEAD_SQLITE_SYNCHRONOUS", value_name = "MODE")]
    pub sqlite_synchronous: Option<String>,

    /// Read connections in the SQLite pool [default: 4].
    #[arg(long, env = "SYNCSTEAD_SQLITE_READERS", value_name = "N")]
    pub sqlite_readers: Option<usize>,

    /// Connections in the PostgreSQL pool, per server process [default: twice this
    /// machine's CPU cores]. PostgreSQL does the most with about two connections per core
    /// of its own machine; if it runs on another, size this from that machine's cores,
    /// shared among the server processes that use it.
    #[arg(long, env = "SYNCSTEAD_POSTGRES_POOL_SIZE", value_name = "N")]
    pub postgres_pool_size: Option<usize>,

    /// Most client connections open at once; more wait in the kernel's backlog
    /// [default: 1000].
    #[arg(long, env = "SYNCSTEAD_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,

    /// A connection with nothing read or written for this long is closed: slow and idle
    /// clients cannot hold connections [default: 60].
    #[arg(long, env = "SYNCSTEAD_IDLE_TIMEOUT_SECONDS", value_name = "SECONDS")]
    pub idle_timeout_seconds: Option<u64>,

    /// Most connections one client address may hold open; reverse proxies named in
    /// `trusted_proxies` are exempt [default: 64].
    #[arg(long, env = "SYNCSTEAD_MAX_CONNECTIONS_PER_ADDRESS", value_name = "N")]
    pub max_connections_per_address: Option<usize>,

    /// Time a client has to send a request's whole head (request line and headers) from
    /// its first byte, and a kept-alive connection to start its next request [default: 10].
    #[arg(long, env = "SYNCSTEAD_REQUEST_HEAD_TIMEOUT_SECONDS", value_name = "SECONDS")]
    pub request_head_timeout_seconds: Option<u64>,

    /// Time a client has to send a request's whole body [default: 60].
    #[arg(long, env = "SYNCSTEAD_REQUEST_BODY_TIMEOUT_SECONDS", value_name = "SECONDS")]
    pub request_body_timeout_seconds: Option<u64>,

    /// Reverse proxies whose `X-Forwarded-For` is believed: addresses or CIDR ranges,
    /// comma-separated. A request from one of them is keyed by the right-most
    /// forwarded address that is not itself a trusted proxy [default: 127.0.0.1,::1].
    #[arg(long, env = "SYNCSTEAD_TRUSTED_PROXIES", value_name = "ADDRS", value_delimiter = ',')]
    pub trusted_proxies: Option<Vec<String>>,

    /// Origins web pages may call this server from (CORS), comma-separated; `*` allows
    /// any, answering with the caller's own origin as Mozilla's server does [default: *].
    #[arg(
        long,
        env = "SYNCSTEAD_CORS_ALLOWED_ORIGINS",
        value_name = "ORIGINS",
        value_delimiter = ','
    )]
    pub cors_allowed_origins: Option<Vec<String>>,

    /// Largest request body in bytes [default: 2625536].
    #[arg(long, env = "SYNCSTEAD_MAX_REQUEST_BYTES", value_name = "N")]
    pub max_request_bytes: Option<u64>,

    /// Most records in one POST [default: 100].
    #[arg(long, env = "SYNCSTEAD_MAX_POST_RECORDS", value_name = "N")]
    pub max_post_records: Option<u64>,

    /// Most payload bytes in one POST [default: 2621440].
    #[arg(long, env = "SYNCSTEAD_MAX_POST_BYTES", value_name = "N")]
    pub max_post_bytes: Option<u64>,

    /// Most records in one batch [default: 10000].
    #[arg(long, env = "SYNCSTEAD_MAX_TOTAL_RECORDS", value_name = "N")]
    pub max_total_records: Option<u64>,

    /// Most payload bytes in one batch [default: 262144000].
    #[arg(long, env = "SYNCSTEAD_MAX_TOTAL_BYTES", value_name = "N")]
    pub max_total_bytes: Option<u64>,

    /// Largest single record payload in bytes (at least 262144) [default: 2621440].
    #[arg(long, env = "SYNCSTEAD_MAX_RECORD_PAYLOAD_BYTES", value_name = "N")]
    pub max_record_payload_bytes: Option<u64>,

    /// Per-user storage quota in bytes, enforced with 403 when set above 0 [default: 0, off].
    #[arg(long, env = "SYNCSTEAD_QUOTA_BYTES", value_name = "N")]
    pub quota_bytes: Option<u64>,

    /// Accepted difference between a client's Hawk timestamp and the server clock [default: 31449600, 52 weeks].
    #[arg(long, env = "SYNCSTEAD_HAWK_SKEW_SECONDS", value_name = "SECS")]
    pub hawk_skew_seconds: Option<u64>,

    /// How long after expiry a token still reads `info/collections` [default: 7200].
    #[arg(long, env = "SYNCSTEAD_EXPIRED_TOKEN_GRACE_SECONDS", value_name = "SECS")]
    pub expired_token_grace_seconds: Option<u64>,

    /// Seconds between purges of expired records and abandoned batches [default: 900].
    #[arg(long, env = "SYNCSTEAD_PURGE_INTERVAL_SECONDS", value_name = "SECS")]
    pub purge_interval_seconds: Option<u64>,

    /// Answer every storage request with 503 + Retry-After (also on while a file
    /// `maintenance` exists in the data directory) [default: false].
    #[arg(long, env = "SYNCSTEAD_MAINTENANCE", value_name = "BOOL")]
    pub maintenance: Option<bool>,

    /// Retry-After seconds sent in maintenance mode [default: 300].
    #[arg(long, env = "SYNCSTEAD_RETRY_AFTER_SECONDS", value_name = "SECS")]
    pub retry_after_seconds: Option<u64>,

    /// Requests in flight above which responses carry X-Weave-Backoff [default: 512].
    #[arg(long, env = "SYNCSTEAD_BACKOFF_INFLIGHT", value_name = "N")]
    pub backoff_inflight: Option<usize>,

    /// X-Weave-Backoff seconds sent when overloaded [default: 60].
    #[arg(long, env = "SYNCSTEAD_BACKOFF_SECONDS", value_name = "SECS")]
    pub backoff_seconds: Option<u64>,

    /// Serve the token server (`/1.0/sync/1.5`) [default: true].
    #[arg(long, env = "SYNCSTEAD_TOKEN_SERVER", value_name = "BOOL")]
    pub token_server: Option<bool>,

    /// Serve storage 1.5 (`/1.5/<uid>`) as a storage node [default: true].
    #[arg(long, env = "SYNCSTEAD_STORAGE_NODE", value_name = "BOOL")]
    pub storage_node: Option<bool>,

    /// Let accounts that have never synced here sign up. When false, only accounts on the
    /// allow list (`syncstead user allow <fxa uid>`) may [default: true].
    #[arg(long, env = "SYNCSTEAD_ALLOW_NEW_USERS", value_name = "BOOL")]
    pub allow_new_users: Option<bool>,

    /// Most accounts the token server assigns; 0 for no limit [default: 0].
    #[arg(long, env = "SYNCSTEAD_MAX_USERS", value_name = "N")]
    pub max_users: Option<u64>,

    /// How OAuth tokens are checked: `local` (JWT signature against public keys) or
    /// `remote` (POST to oauth_verify_url) [default: local].
    #[arg(long, env = "SYNCSTEAD_OAUTH_VERIFICATION", value_name = "MODE")]
    pub oauth_verification: Option<String>,

    /// JWKS URL the public keys are fetched from (cached; refetched for an unknown key id)
    /// [default: https://oauth.accounts.firefox.com/v1/jwks; set empty to disable].
    #[arg(long, env = "SYNCSTEAD_OAUTH_JWKS_URL", value_name = "URL")]
    pub oauth_jwks_url: Option<String>,

    /// File with the OAuth public key(s): PEM, a JWK or a JWKS; used before the JWKS URL.
    #[arg(long, env = "SYNCSTEAD_OAUTH_PUBLIC_KEY_FILE", value_name = "FILE")]
    pub oauth_public_key_file: Option<PathBuf>,

    /// Mozilla accounts' token verify endpoint for remote verification
    /// [default: https://oauth.accounts.firefox.com/v1/verify].
    #[arg(long, env = "SYNCSTEAD_OAUTH_VERIFY_URL", value_name = "URL")]
    pub oauth_verify_url: Option<String>,

    /// Required `iss` of access tokens; empty to accept any, as Mozilla's server does [default: empty].
    #[arg(long, env = "SYNCSTEAD_OAUTH_ISSUER", value_name = "ISSUER")]
    pub oauth_issuer: Option<String>,

    /// Timeout for calls to Mozilla accounts [default: 10].
    #[arg(long, env = "SYNCSTEAD_OAUTH_TIMEOUT_SECONDS", value_name = "SECS")]
    pub oauth_timeout_seconds: Option<u64>,

    /// Domain appended to account uids to name users [default: api.accounts.firefox.com].
    #[arg(long, env = "SYNCSTEAD_FXA_EMAIL_DOMAIN", value_name = "DOMAIN")]
    pub fxa_email_domain: Option<String>,

    /// Lifetime of storage tokens in seconds [default: 3600].
    #[arg(long, env = "SYNCSTEAD_TOKEN_DURATION", value_name = "SECS")]
    pub token_duration: Option<u64>,

    /// Capacity given to this server's own node when it registers itself [default: 100000].
    #[arg(long, env = "SYNCSTEAD_NODE_CAPACITY", value_name = "N")]
    pub node_capacity: Option<i64>,

    /// `node_type` label in token responses [default: spanner, as Mozilla's server].
    #[arg(long, env = "SYNCSTEAD_NODE_TYPE", value_name = "LABEL")]
    pub node_type: Option<String>,

    /// Who may create Weave 1.1 accounts through the User API: `open`, `secret` (requests
    /// must carry X-Weave-Secret), `admin` (only `syncstead user add`) or `closed` [default: open].
    #[arg(long, env = "SYNCSTEAD_REGISTRATION", value_name = "POLICY")]
    pub registration: Option<String>,

    /// The shared secret of `registration = "secret"`.
    #[arg(long, env = "SYNCSTEAD_WEAVE_SECRET", value_name = "SECRET", hide_env_values = true)]
    pub weave_secret: Option<String>,

    /// Most Weave 1.1 accounts; 0 for no limit [default: 0].
    #[arg(long, env = "SYNCSTEAD_MAX_ACCOUNTS", value_name = "N")]
    pub max_accounts: Option<u64>,

    /// Require the username to be the one derived from the e-mail, as clients derive it
    /// [default: true].
    #[arg(long, env = "SYNCSTEAD_STRICT_USERNAMES", value_name = "BOOL")]
    pub strict_usernames: Option<bool>,

    /// Argon2id memory cost in KiB for Weave 1.1 passwords [default: 19456].
    #[arg(long, env = "SYNCSTEAD_ARGON2_MEMORY_KIB", value_name = "KIB")]
    pub argon2_memory_kib: Option<u32>,

    /// Argon2id iterations [default: 2].
    #[arg(long, env = "SYNCSTEAD_ARGON2_ITERATIONS", value_name = "N")]
    pub argon2_iterations: Option<u32>,

    /// Password hashes computed at once; further logins wait up to 10 s, then get 503
    /// [default: the number of CPU cores].
    #[arg(long, env = "SYNCSTEAD_PASSWORD_HASH_CONCURRENCY", value_name = "N")]
    pub password_hash_concurrency: Option<usize>,

    /// Mail server for Weave 1.1 password-reset e-mails, e.g.
    /// `smtps://user:password@smtp.example.com` or `smtp://localhost:25`; off unless set.
    #[arg(long, env = "SYNCSTEAD_SMTP_URL", value_name = "URL", hide_env_values = true)]
    pub smtp_url: Option<String>,

    /// Sender of password-reset e-mails [default: Syncstead <noreply@HOST of public_url>].
    #[arg(long, env = "SYNCSTEAD_SMTP_FROM", value_name = "ADDRESS")]
    pub smtp_from: Option<String>,

    /// Syncstead's own accounts: Firefox signs in here (docs/accounts.md); needs the
    /// token server [default: true].
    #[arg(long, env = "SYNCSTEAD_ACCOUNTS", value_name = "BOOL")]
    pub accounts: Option<bool>,

    /// Who may create a Syncstead account on the sign-in page: `closed` (only `syncstead
    /// account add`), `invite` (with account_invite_code) or `open` [default: closed].
    #[arg(long, env = "SYNCSTEAD_ACCOUNT_REGISTRATION", value_name = "POLICY")]
    pub account_registration: Option<String>,

    /// The code a new account must give when account_registration = "invite".
    #[arg(
        long,
        env = "SYNCSTEAD_ACCOUNT_INVITE_CODE",
        value_name = "CODE",
        hide_env_values = true
    )]
    pub account_invite_code: Option<String>,

    /// Most Syncstead accounts; 0 for no limit [default: 0].
    #[arg(long, env = "SYNCSTEAD_MAX_IDENTITIES", value_name = "N")]
    pub max_identities: Option<u64>,

    /// Accept access tokens of Mozilla accounts at the token server (the `oauth_*`
    /// settings); with false only Syncstead's own accounts sync here [default: true].
    #[arg(long, env = "SYNCSTEAD_MOZILLA_ACCOUNTS", value_name = "BOOL")]
    pub mozilla_accounts: Option<bool>,

    /// Turns on the operator's page at /admin: the token to sign in there with, 16
    /// characters or more (e.g. `openssl rand -hex 32`) [default: none, the page is off].
    #[arg(long, env = "SYNCSTEAD_ADMIN_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

/// HTTPS from the TLS settings: certificate files, or ACME, or neither.
fn tls_source(layer: &ConfigLayer, data_dir: &Path) -> Result<Option<TlsSource>, ConfigError> {
    let domains: Vec<String> = layer
        .acme_domains
        .iter()
        .flatten()
        .map(|d| d.trim().to_ascii_lowercase())
        .filter(|d| !d.is_empty())
        .collect();
    match (&layer.tls_cert_file, &layer.tls_key_file) {
        (Some(_), None) => Err(ConfigError::Invalid(
            "tls_key_file",
            "tls_cert_file is set: set tls_key_file to its private key too".into(),
        )),
        (None, Some(_)) => Err(ConfigError::Invalid(
            "tls_cert_file",
            "tls_key_file is set: set tls_cert_file to its certificate chain too".into(),
        )),
        (Some(_), Some(_)) if !domains.is_empty() => Err(ConfigError::Invalid(
            "acme_domains",
            "set either tls_cert_file and tls_key_file or acme_domains, not both".into(),
        )),
        (Some(cert), Some(key)) => Ok(Some(TlsSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        })),
        (None, None) if domains.is_empty() => Ok(None),
        (None, None) => {
            if let Some(bad) = domains.iter().find(|d| d.parse::<IpAddr>().is_ok() || !d.contains('.')) {
                return Err(ConfigError::Invalid(
                    "acme_domains",
                    format!("{bad:?}: ACME certifies DNS names such as sync.example.com"),
                ));
            }
            let directory_url = layer
                .acme_directory_url
                .clone()
                .unwrap_or_else(|| crate::acme::LETS_ENCRYPT.into());
            if !directory_url.starts_with("https://") {
                return Err(ConfigError::Invalid(
                    "acme_directory_url",
                    format!("{directory_url:?}: an ACME directory is an https:// URL"),
                ));
            }
            let percent = layer.acme_renew_percent.unwrap_or(33);
            if !(1..=99).contains(&percent) {
                return Err(ConfigError::Invalid("acme_renew_percent", "must be 1 to 99".into()));
            }
            Ok(Some(TlsSource::Acme(crate::acme::AcmeConfig {
                domains,
                contact: layer.acme_contact.clone().filter(|c| !c.is_empty()),
                directory_url,
                ca_file: layer.acme_ca_file.clone(),
                dir: data_dir.join("acme"),
                renew_fraction: f64::from(percent) / 100.0,
            })))
        }
    }
}

/// An address and port to listen on. `localhost:PORT` is taken as 127.0.0.1:PORT; anything
/// else that is not an IP address and port is refused with an example.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    if let Some(port) = s.strip_prefix("localhost:").and_then(|p| p.parse::<u16>().ok()) {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    Err(format!(
        "{s:?} is not an IP address and port: e.g. 127.0.0.1:8000 (this machine only) or 0.0.0.0:8000 (every interface)"
    ))
}

/// Who may create Weave 1.1 accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    Open,
    Secret,
    Admin,
    Closed,
}

/// Settings layers hold secrets (master secret, SMTP credentials, Weave secret), so their
/// Debug form names only the file.
impl std::fmt::Debug for ConfigLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigLayer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ConfigLayer {
    /// `self` (flags and environment) over the TOML file it names, if any. Every field
    /// is merged through its serde form, so a new setting cannot be forgotten here.
    pub fn with_file(self) -> Result<ConfigLayer, ConfigError> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::Read(path.clone(), e))?;
        let file: ConfigLayer =
            toml::from_str(&text).map_err(|e| ConfigError::Parse(path.clone(), with_suggestion(e.to_string())))?;
        let to_map = |layer: &ConfigLayer| match serde_json::to_value(layer) {
            Ok(serde_json::Value::Object(map)) => Ok(map),
            _ => Err(ConfigError::Parse(path.clone(), "cannot merge settings".into())),
        };
        let mut merged = to_map(&self)?;
        for (key, value) in to_map(&file)? {
            if merged.get(&key).is_none_or(serde_json::Value::is_null) {
                merged.insert(key, value);
            }
        }
        let mut layer: ConfigLayer = serde_json::from_value(serde_json::Value::Object(merged))
            .map_err(|e| ConfigError::Parse(path.clone(), e.to_string()))?;
        layer.config = Some(path);
        Ok(layer)
    }
}

/// Adds "did you mean …" to an unknown-key error: the setting whose name is closest.
fn with_suggestion(message: String) -> String {
    let Some(unknown) = message
        .split("unknown field `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
    else {
        return message;
    };
    let Ok(serde_json::Value::Object(known)) = serde_json::to_value(ConfigLayer::default()) else {
        return message;
    };
    let best = known
        .keys()
        .map(|k| (edit_distance(unknown, k), k))
        .min()
        .filter(|(d, _)| *d <= unknown.len().max(3) / 2 + 2);
    match best {
        Some((_, k)) => format!("{message}\ndid you mean `{k}`?"),
        None => message,
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The limits advertised in `info/configuration` and enforced (S15-160).
pub use syncstead_proto::Limits;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where clients reach the server: used to check Hawk signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    pub url: url::Url,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash; empty at the root.
    pub prefix: String,
}

impl PublicUrl {
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        if !s.contains("://") {
            return Err(ConfigError::Invalid(
                "public_url",
                format!("{s:?} needs its scheme: e.g. https://{}", s.trim_start_matches('/')),
            ));
        }
        let url = url::Url::parse(s).map_err(|e| ConfigError::Invalid("public_url", e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.query().is_some() {
            return Err(ConfigError::Invalid(
                "public_url",
                "must be an http(s) URL without a query".into(),
            ));
        }
        let host = url
            .host_str()
            .ok_or_else(|| ConfigError::Invalid("public_url", "has no host".into()))?
            .to_ascii_lowercase();
        let port = url.port_or_known_default().unwrap_or(80);
        let prefix = url.path().trim_end_matches('/').to_string();
        Ok(PublicUrl {
            url,
            host,
            port,
            prefix,
        })
    }

    /// The origin and prefix as clients should write it, without a trailing slash.
    pub fn base(&self) -> String {
        let mut s = self.url.as_str().trim_end_matches('/').to_string();
        if s.is_empty() {
            s = self.url.origin().ascii_serialization();
        }
        s
    }
}

/// The shortest master secret accepted.
pub const MIN_SECRET_CHARS: usize = 16;

/// An address range (`192.0.2.0/24`, `::1`), for `trusted_proxies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn host(addr: IpAddr) -> Self {
        IpNet {
            addr,
            prefix: if addr.is_ipv4() { 32 } else { 128 },
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let host = IpNet::host(addr);
        let prefix = prefix.unwrap_or(host.prefix);
        (prefix <= host.prefix).then_some(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32u32),
            // An IPv4-mapped peer (`::ffff:192.0.2.1`) matches IPv4 ranges.
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => (u128::from(u32::from(v4)), 32),
                None => (u128::from(v6), 128),
            },
        };
        let ((net, width), (ip, ip_width)) = (bits(self.addr), bits(ip));
        if width != ip_width {
            return false;
        }
        let shift = width - u32::from(self.prefix);
        shift >= width || (net >> shift) == (ip >> shift)
    }
}

/// Fully resolved settings.
#[derive(Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub public_url: Option<PublicUrl>,
    /// HTTPS on the listener: from files or by ACME; plain HTTP when `None`.
    pub tls: Option<TlsSource>,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub master_secret: String,
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub log_level: String,
    pub sqlite_synchronous: syncstead_store::Synchronous,
    pub sqlite_readers: usize,
    pub postgres_pool_size: usize,
    pub max_connections: usize,
    pub idle_timeout_seconds: u64,
    pub max_connections_per_address: usize,
    pub request_head_timeout_seconds: u64,
    pub request_body_timeout_seconds: u64,
    pub trusted_proxies: Vec<IpNet>,
    /// `None`: any origin.
    pub cors_allowed_origins: Option<Vec<String>>,
    pub limits: Limits,
    pub quota_bytes: Option<u64>,
    pub hawk_skew_seconds: u64,
    pub expired_token_grace_seconds: u64,
    pub purge_interval_seconds: u64,
    pub maintenance: bool,
    pub retry_after_seconds: u64,
    pub backoff_inflight: usize,
    pub backoff_seconds: u64,
    pub token_server: bool,
    pub storage_node: bool,
    pub allow_new_users: bool,
    pub max_users: Option<u64>,
    pub oauth: OAuthSettings,
    pub fxa_email_domain: String,
    pub token_duration: u64,
    pub node_capacity: i64,
    pub node_type: String,
    pub registration: Registration,
    pub weave_secret: Option<String>,
    pub max_accounts: Option<u64>,
    pub strict_usernames: bool,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub password_hash_concurrency: usize,
    pub smtp_url: Option<String>,
    pub smtp_from: Option<String>,
    pub accounts: bool,
    pub account_registration: AccountRegistration,
    pub max_identities: Option<u64>,
    pub mozilla_accounts: bool,
    pub admin_token: Option<String>,
}

/// Who may create a Syncstead account from the sign-in page.
#[derive(Clone, PartialEq, Eq)]
pub enum AccountRegistration {
    Closed,
    Open,
    Invite(String),
}

impl std::fmt::Debug for AccountRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AccountRegistration::Closed => "Closed",
            AccountRegistration::Open => "Open",
            AccountRegistration::Invite(_) => "Invite(<redacted>)",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OAuthSettings {
    Local {
        jwks_url: Option<String>,
        public_key_file: Option<PathBuf>,
        issuer: Option<String>,
        timeout_seconds: u64,
    },
    Remote {
        verify_url: String,
        timeout_seconds: u64,
    },
}

/// Where the HTTPS certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    Files { cert: PathBuf, key: PathBuf },
    Acme(crate::acme::AcmeConfig),
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("public_url", &self.public_url.as_ref().map(|p| p.base()))
            .field("tls", &self.tls)
            .field("data_dir", &self.data_dir)
            .field("database_url", &self.database_display())
            .field("master_secret", &"<redacted>")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// The per-write policy every storage surface passes to the store (S15-170, S11-071).
    pub fn write_limits(&self) -> syncstead_store::WriteLimits {
        syncstead_store::WriteLimits {
            quota_bytes: self.quota_bytes,
            batch_records: Some(self.limits.max_total_records),
            batch_bytes: Some(self.limits.max_total_bytes),
        }
    }

    /// Resolves a merged layer into settings, applying defaults. Does not touch the disk
    /// except to read a secret file; see [`Settings::load_master_secret`].
    pub fn resolve(layer: ConfigLayer) -> Result<Settings, ConfigError> {
        let data_dir = layer
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("syncstead-data"));
        let tls = tls_source(&layer, &data_dir)?;
        let database_url = layer
            .database_url
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("syncstead.db").display()));
        let known = ["sqlite:", "postgres://", "postgresql://"];
        if !known.iter().any(|k| database_url.starts_with(k)) {
            return Err(ConfigError::Invalid(
                "database_url",
                format!(
                    "{}: use sqlite://PATH or postgres://USER:PASSWORD@HOST:PORT/DB (only SQLite and PostgreSQL are supported)",
                    redact_url(&database_url)
                ),
            ));
        }
        let log_format = match layer.log_format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::Invalid(
                    "log_format",
                    format!("{other:?} is not text or json"),
                ))
            }
        };
        let sqlite_synchronous = match layer.sqlite_synchronous.as_deref().unwrap_or("full") {
            "full" => syncstead_store::Synchronous::Full,
            "normal" => syncstead_store::Synchronous::Normal,
            other => {
                return Err(ConfigError::Invalid(
                    "sqlite_synchronous",
                    format!("{other:?} is not full or normal"),
                ))
            }
        };
        let d = Limits::default();
        let quota = layer.quota_bytes.filter(|q| *q > 0);
        let limits = Limits {
            max_post_bytes: layer.max_post_bytes.unwrap_or(d.max_post_bytes),
            max_post_records: layer.max_post_records.unwrap_or(d.max_post_records),
            max_quota_limit: quota.unwrap_or(d.max_quota_limit),
            max_record_payload_bytes: layer.max_record_payload_bytes.unwrap_or(d.max_record_payload_bytes),
            max_request_bytes: layer.max_request_bytes.unwrap_or(d.max_request_bytes),
            max_total_bytes: layer.max_total_bytes.unwrap_or(d.max_total_bytes),
            max_total_records: layer.max_total_records.unwrap_or(d.max_total_records),
        };
        if limits.max_record_payload_bytes < Limits::MIN_RECORD_PAYLOAD_BYTES {
            return Err(ConfigError::Invalid(
                "max_record_payload_bytes",
                "must be at least 262144".into(),
            ));
        }
        let mut public_url = layer.public_url.as_deref().map(PublicUrl::parse).transpose()?;
        if let (Some(p), Some(_)) = (&public_url, &tls) {
            if p.url.scheme() != "https" {
                return Err(ConfigError::Invalid(
                    "public_url",
                    format!(
                        "{} is http://, but this server serves HTTPS (tls_cert_file or acme_domains): use https://",
                        p.base()
                    ),
                ));
            }
        }
        if let (None, Some(TlsSource::Acme(acme))) = (&public_url, &tls) {
            // Clients reach an ACME-certified server by its first name.
            let port = layer.listen.map_or(443, |l| l.port());
            let base = if port == 443 {
                format!("https://{}", acme.domains[0])
            } else {
                format!("https://{}:{port}", acme.domains[0])
            };
            public_url = Some(PublicUrl::parse(&base)?);
        }
        let registration = match layer.registration.as_deref().unwrap_or("open") {
            "open" => Registration::Open,
            "secret" => Registration::Secret,
            "admin" => Registration::Admin,
            "closed" => Registration::Closed,
            other => {
                return Err(ConfigError::Invalid(
                    "registration",
                    format!("{other:?} is not open, secret, admin or closed"),
                ))
            }
        };
        let account_registration = match layer.account_registration.as_deref().unwrap_or("closed") {
            "closed" => AccountRegistration::Closed,
            "open" => AccountRegistration::Open,
            "invite" => match layer.account_invite_code.clone().filter(|c| !c.is_empty()) {
                Some(code) => AccountRegistration::Invite(code),
                None => {
                    return Err(ConfigError::Invalid(
                        "account_invite_code",
                        "account_registration is invite: set account_invite_code to the code to give".into(),
                    ))
                }
            },
            other => {
                return Err(ConfigError::Invalid(
                    "account_registration",
                    format!("{other:?} is not closed, invite or open"),
                ))
            }
        };
        let timeout_seconds = layer.oauth_timeout_seconds.unwrap_or(10).max(1);
        let oauth = match layer.oauth_verification.as_deref().unwrap_or("local") {
            "local" => OAuthSettings::Local {
                jwks_url: match layer.oauth_jwks_url {
                    Some(u) if u.is_empty() => None,
                    Some(u) => Some(u),
                    None => Some("https://oauth.accounts.firefox.com/v1/jwks".into()),
                },
                public_key_file: layer.oauth_public_key_file,
                issuer: layer.oauth_issuer.filter(|i| !i.is_empty()),
                timeout_seconds,
            },
            "remote" => OAuthSettings::Remote {
                verify_url: layer
                    .oauth_verify_url
                    .unwrap_or_else(|| "https://oauth.accounts.firefox.com/v1/verify".into()),
                timeout_seconds,
            },
            other => {
                return Err(ConfigError::Invalid(
                    "oauth_verification",
                    format!("{other:?} is not local or remote"),
                ))
            }
        };
        let trusted_proxies = match &layer.trusted_proxies {
            None => vec![
                IpNet::host([127, 0, 0, 1].into()),
                IpNet::host(std::net::Ipv6Addr::LOCALHOST.into()),
            ],
            Some(list) => list
                .iter()
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(|s| IpNet::parse(s).ok_or_else(|| ConfigError::Invalid("trusted_proxies", format!("{s:?}"))))
                .collect::<Result<_, _>>()?,
        };
        let cors_allowed_origins = match layer.cors_allowed_origins {
            None => None,
            Some(list) if list.iter().any(|o| o.trim() == "*") => None,
            Some(list) => Some(list.into_iter().map(|o| o.trim().to_string()).collect()),
        };
        let log_level = layer.log_level.unwrap_or_else(|| "info".into());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_level) {
            return Err(ConfigError::Invalid(
                "log_level",
                format!("{log_level:?} is not a log filter ({e}); e.g. info, warn or syncstead=debug"),
            ));
        }
        let master_secret = match (layer.master_secret, layer.master_secret_file) {
            (Some(s), _) => s,
            (None, Some(file)) => read_secret_file(&file)?,
            (None, None) => String::new(),
        };
        // Tokens and Hawk keys are derived from it: a guessable secret is a master key.
        if !master_secret.is_empty() && master_secret.chars().count() < MIN_SECRET_CHARS {
            return Err(ConfigError::Secret(format!(
                "it is {} characters; use at least {MIN_SECRET_CHARS} (e.g. the output of `openssl rand -hex 32`), \
                 or set none and Syncstead generates one in the data directory",
                master_secret.chars().count()
            )));
        }
        // The admin page can delete every account: a guessable token is no lock at all.
        let admin_token = layer.admin_token.clone().filter(|t| !t.is_empty());
        if admin_token
            .as_ref()
            .is_some_and(|t| t.chars().count() < MIN_SECRET_CHARS)
        {
            return Err(ConfigError::Invalid(
                "admin_token",
                format!("use at least {MIN_SECRET_CHARS} characters, e.g. the output of `openssl rand -hex 32`"),
            ));
        }
        Ok(Settings {
            listen: layer.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8000))),
            public_url,
            tls,
            data_dir,
            database_url,
            master_secret,
            metrics_listen: layer.metrics_listen,
            log_format,
            log_level,
            sqlite_synchronous,
            sqlite_readers: layer.sqlite_readers.unwrap_or(4).max(1),
            postgres_pool_size: layer.postgres_pool_size.unwrap_or_else(default_pool_size).max(1),
            max_connections: layer.max_connections.unwrap_or(1000).max(1),
            idle_timeout_seconds: layer.idle_timeout_seconds.unwrap_or(60).max(1),
            max_connections_per_address: layer.max_connections_per_address.unwrap_or(64).max(1),
            request_head_timeout_seconds: layer.request_head_timeout_seconds.unwrap_or(10).max(1),
            request_body_timeout_seconds: layer.request_body_timeout_seconds.unwrap_or(60).max(1),
            trusted_proxies,
            cors_allowed_origins,
            limits,
            quota_bytes: quota,
            hawk_skew_seconds: layer.hawk_skew_seconds.unwrap_or(52 * 7 * 24 * 3600),
            expired_token_grace_seconds: layer.expired_token_grace_seconds.unwrap_or(7200),
            purge_interval_seconds: layer.purge_interval_seconds.unwrap_or(900).max(1),
            maintenance: layer.maintenance.unwrap_or(false),
            retry_after_seconds: layer.retry_after_seconds.unwrap_or(300),
            backoff_inflight: layer.backoff_inflight.unwrap_or(512),
            backoff_seconds: layer.backoff_seconds.unwrap_or(60),
            token_server: layer.token_server.unwrap_or(true),
            storage_node: layer.storage_node.unwrap_or(true),
            allow_new_users: layer.allow_new_users.unwrap_or(true),
            max_users: layer.max_users.filter(|n| *n > 0),
            oauth,
            fxa_email_domain: layer
                .fxa_email_domain
                .unwrap_or_else(|| "api.accounts.firefox.com".into()),
            token_duration: layer.token_duration.unwrap_or(3600).max(1),
            node_capacity: layer.node_capacity.unwrap_or(100_000).max(1),
            node_type: layer.node_type.unwrap_or_else(|| "spanner".into()),
            registration,
            weave_secret: layer.weave_secret.filter(|s| !s.is_empty()),
            max_accounts: layer.max_accounts.filter(|n| *n > 0),
            strict_usernames: layer.strict_usernames.unwrap_or(true),
            argon2_memory_kib: layer.argon2_memory_kib.unwrap_or(19_456),
            argon2_iterations: layer.argon2_iterations.unwrap_or(2),
            password_hash_concurrency: layer.password_hash_concurrency.unwrap_or_else(cpu_cores).max(1),
            smtp_url: layer.smtp_url.filter(|u| !u.is_empty()),
            smtp_from: layer.smtp_from.filter(|f| !f.is_empty()),
            accounts: layer.accounts.unwrap_or(true),
            account_registration,
            max_identities: layer.max_identities.filter(|n| *n > 0),
            mozilla_accounts: layer.mozilla_accounts.unwrap_or(true),
            admin_token,
        })
    }

    /// Ensures a master secret: the configured one, or the one kept in the data directory,
    /// generated (mode 0600) on first start.
    pub fn load_master_secret(&mut self) -> Result<(), ConfigError> {
        let path = self.data_dir.join("master-secret");
        if !self.master_secret.is_empty() {
            // A configured secret beside a different kept one: tokens the other one signed
            // (and clients holding them) are about to be refused.
            if let Ok(kept) = read_secret_file(&path) {
                if kept != self.master_secret {
                    tracing::warn!(
                        kept = %path.display(),
                        "the configured master secret differs from the one kept in the data directory; \
                         tokens signed with the kept one will be refused"
                    );
                }
            }
            return Ok(());
        }
        // try_exists: a secret behind a directory this user cannot enter is not "missing".
        match path.try_exists() {
            Ok(true) => {
                self.master_secret = read_secret_file(&path)?;
                return Ok(());
            }
            Ok(false) => {}
            Err(e) => {
                return Err(ConfigError::Secret(format!(
                    "cannot look for {}: {e}{}",
                    path.display(),
                    syncstead_store::lock::access_hint(&path, &e)
                )))
            }
        }
        syncstead_store::lock::create_private_dir(&self.data_dir).map_err(|e| {
            ConfigError::Secret(format!(
                "cannot create the data directory {}: {e}{}",
                self.data_dir.display(),
                syncstead_store::lock::access_hint(&self.data_dir, &e)
            ))
        })?;
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        let secret = data_encoding::HEXLOWER.encode(&bytes);
        write_private(&path, &format!("{secret}\n")).map_err(|e| {
            ConfigError::Secret(format!(
                "cannot write {}: {e}{}",
                path.display(),
                syncstead_store::lock::access_hint(&path, &e)
            ))
        })?;
        tracing::info!(path = %path.display(), "generated a new master secret");
        self.master_secret = secret;
        Ok(())
    }

    /// The master secret a server running with these settings uses, never a new one: for
    /// commands that must sign what that server accepts (`syncstead token`).
    pub fn existing_master_secret(&mut self) -> Result<(), ConfigError> {
        if self.master_secret.is_empty() {
            let path = self.data_dir.join("master-secret");
            if !path.exists() {
                return Err(ConfigError::Secret(format!(
                    "no master secret at {} (is this the server's data directory?): run this where the \
                     server runs, or pass --data-dir, --master-secret-file or --config as the server has them",
                    path.display()
                )));
            }
        }
        self.load_master_secret()
    }

    /// The SQLite file named by `database_url`, if it is a SQLite URL.
    /// The database URL without its password, for logs and output.
    pub fn database_display(&self) -> String {
        redact_url(&self.database_url)
    }

    /// The scheme clients use on the listener: https when this server serves TLS itself.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.database_url.starts_with("postgres://") || self.database_url.starts_with("postgresql://")
    }

    pub fn sqlite_path(&self) -> Result<PathBuf, ConfigError> {
        let url = &self.database_url;
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| ConfigError::Invalid("database_url", format!("{url:?}: not a sqlite:// URL")))?;
        let path = path.split('?').next().unwrap_or(path);
        if path.is_empty() {
            return Err(ConfigError::Invalid("database_url", "empty SQLite path".into()));
        }
        Ok(PathBuf::from(path))
    }
}

/// Two PostgreSQL connections per core: with more, the extra queries only wait inside
/// the database for a CPU, and a burst of long listings then slows every request. On
/// two cores, 4 connections instead of 16 cut the p99 of every request type by 11–55 %
/// at the same load, and 2 were worse than 4 (docs/benchmarks.md, "Long listings and
/// PostgreSQL's pool size").
fn default_pool_size() -> usize {
    2 * cpu_cores()
}

/// The cores this process may run on (2 if the system will not say).
fn cpu_cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn read_secret_file(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::Secret(format!(
            "cannot read {}: {e}{}",
            path.display(),
            syncstead_store::lock::access_hint(path, &e)
        ))
    })?;
    let secret = text.lines().next().unwrap_or("").trim().to_string();
    if secret.is_empty() {
        return Err(ConfigError::Secret(format!("{} is empty", path.display())));
    }
    Ok(secret)
}

/// Writes a file readable only by its owner.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

/// A URL without its password, for logs and output.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("<redacted>"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_master_secret_is_refused() {
        let layer = |secret: &str| ConfigLayer {
            master_secret: Some(secret.into()),
            ..Default::default()
        };
        let e = Settings::resolve(layer("s")).expect_err("refused").to_string();
        assert!(e.contains("at least 16") && e.contains("openssl rand"), "{e}");
        assert!(Settings::resolve(layer("sixteen-chars-ok")).is_ok());
    }

    #[test]
    fn unknown_keys_get_a_suggestion() {
        let m = with_suggestion("unknown field `lisen`, expected one of …".into());
        assert!(m.ends_with("did you mean `listen`?"), "{m}");
        let m = with_suggestion("unknown field `databse_url`, expected …".into());
        assert!(m.ends_with("did you mean `database_url`?"), "{m}");
        let m = with_suggestion("unknown field `zzzzzzzzzzzzzzzzzzzzzz`".into());
        assert!(!m.contains("did you mean"), "{m}");
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn messages_name_the_fix() {
        assert_eq!(parse_listen("localhost:8010"), Ok("127.0.0.1:8010".parse().unwrap()));
        assert!(parse_listen("8010").unwrap_err().contains("e.g. 127.0.0.1:8000"));
        let e = PublicUrl::parse("sync.example.com").unwrap_err().to_string();
        assert!(e.contains("e.g. https://sync.example.com"), "{e}");
        let layer = ConfigLayer {
            database_url: Some("mysql://root:pw@db/sync".into()),
            ..Default::default()
        };
        let e = Settings::resolve(layer).expect_err("refused").to_string();
        assert!(e.contains("only SQLite and PostgreSQL") && !e.contains("pw@"), "{e}");
    }

    #[test]
    fn a_bad_log_filter_is_refused_with_an_example() {
        let layer = ConfigLayer {
            log_level: Some("syncstead=loud".into()),
            ..Default::default()
        };
        let e = Settings::resolve(layer).expect_err("refused").to_string();
        assert!(e.contains("log_level") && e.contains("e.g. info"), "{e}");
    }

    #[test]
    fn trusted_proxy_ranges() {
        let net = IpNet::parse("192.0.2.0/24").unwrap();
        assert!(net.contains("192.0.2.77".parse().unwrap()));
        assert!(net.contains("::ffff:192.0.2.1".parse().unwrap()));
        assert!(!net.contains("192.0.3.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        assert!(IpNet::parse("::/0").unwrap().contains("2001:db8::1".parse().unwrap()));
        assert!(IpNet::parse("0.0.0.0/0")
            .unwrap()
            .contains("198.51.100.1".parse().unwrap()));
        let one = IpNet::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()) && !one.contains("127.0.0.2".parse().unwrap()));
        for bad in ["192.0.2.0/33", "nope", "10.0.0.1/x"] {
            assert!(IpNet::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn defaults_resolve() {
        let s = Settings::resolve(ConfigLayer::default()).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(s.limits, Limits::default());
        assert_eq!(s.sqlite_path().unwrap(), PathBuf::from("syncstead-data/syncstead.db"));
        assert!(s.quota_bytes.is_none());
    }

    #[test]
    fn unknown_toml_keys_are_errors() {
        assert!(toml::from_str::<ConfigLayer>("listen = \"127.0.0.1:1\"\nbogus = 1\n").is_err());
        let layer: ConfigLayer = toml::from_str("listen = \"127.0.0.1:1\"\nquota_bytes = 10\n").unwrap();
        assert_eq!(layer.quota_bytes, Some(10));
    }

    #[test]
    fn flags_win_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:1\"\nlog_level = \"debug\"\n").unwrap();
        let layer = ConfigLayer {
            config: Some(file),
            listen: Some("127.0.0.1:2".parse().unwrap()),
            ..Default::default()
        };
        let s = Settings::resolve(layer.with_file().unwrap()).unwrap();
        assert_eq!(s.listen.port(), 2);
        assert_eq!(s.log_level, "debug");
    }

    /// Every kind of setting read from the file reaches the resolved settings.
    #[test]
    fn file_settings_of_every_surface_apply() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "allow_new_users = false\nregistration = \"closed\"\noauth_verification = \"remote\"\n\
             max_accounts = 3\ntoken_duration = 60\nsmtp_from = \"a@example.com\"\nquota_bytes = 5\n",
        )
        .unwrap();
        let layer = ConfigLayer {
            config: Some(file),
            ..Default::default()
        }
        .with_file()
        .unwrap();
        let s = Settings::resolve(layer).unwrap();
        assert!(!s.allow_new_users);
        assert_eq!(s.registration, Registration::Closed);
        assert!(matches!(s.oauth, OAuthSettings::Remote { .. }));
        assert_eq!(
            (s.max_accounts, s.token_duration, s.quota_bytes),
            (Some(3), 60, Some(5))
        );
        assert_eq!(s.smtp_from.as_deref(), Some("a@example.com"));
    }

    #[test]
    fn tls_settings_are_checked() {
        let err = |layer: ConfigLayer| Settings::resolve(layer).unwrap_err().to_string();
        let cert = || Some(PathBuf::from("c.pem"));
        let key = || Some(PathBuf::from("k.pem"));
        assert!(err(ConfigLayer {
            tls_cert_file: cert(),
            ..Default::default()
        })
        .contains("tls_key_file"));
        assert!(err(ConfigLayer {
            tls_key_file: key(),
            ..Default::default()
        })
        .contains("tls_cert_file"));
        let both = ConfigLayer {
            tls_cert_file: cert(),
            tls_key_file: key(),
            acme_domains: Some(vec!["a.example.com".into()]),
            ..Default::default()
        };
        assert!(err(both).contains("not both"));
        let ip = ConfigLayer {
            acme_domains: Some(vec!["192.0.2.1".into()]),
            ..Default::default()
        };
        assert!(err(ip).contains("DNS names"));
        let http = ConfigLayer {
            tls_cert_file: cert(),
            tls_key_file: key(),
            public_url: Some("http://sync.example.com".into()),
            ..Default::default()
        };
        assert!(err(http).contains("use https://"));
        let acme = Settings::resolve(ConfigLayer {
            acme_domains: Some(vec!["Sync.Example.com".into(), "b.example.com".into()]),
            listen: Some("0.0.0.0:443".parse().unwrap()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(acme.public_url.unwrap().base(), "https://sync.example.com");
        let Some(TlsSource::Acme(a)) = acme.tls else {
            panic!("ACME expected")
        };
        assert_eq!(a.directory_url, crate::acme::LETS_ENCRYPT);
        assert_eq!(a.domains, ["sync.example.com", "b.example.com"]);
    }

    #[test]
    fn public_url_parts() {
        let p = PublicUrl::parse("https://Sync.Example.com/sync/").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.prefix.as_str()),
            ("sync.example.com", 443, "/sync")
        );
        assert_eq!(p.base(), "https://sync.example.com/sync");
        assert!(PublicUrl::parse("ftp://x").is_err());
    }

    #[test]
    fn secret_is_generated_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let layer = ConfigLayer {
            data_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        let mut s = Settings::resolve(layer.clone()).unwrap();
        s.load_master_secret().unwrap();
        assert_eq!(s.master_secret.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("master-secret"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let mut again = Settings::resolve(layer).unwrap();
        again.load_master_secret().unwrap();
        assert_eq!(again.master_secret, s.master_secret);
        assert!(!format!("{again:?}").contains(&s.master_secret));
    }
}
