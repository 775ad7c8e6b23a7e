//! The Sync client library: storage format 5 crypto and key material ([`crypto`]), the
//! transport to a user's storage over Weave 1.1 or Sync 1.5 ([`transport`]), the special
//! records and the record-level operations a Sync client performs ([`sync`]), the
//! account file a device keeps ([`account`]) and the Netscape bookmark file ([`bookmarks`]).

pub mod account;
pub mod bookmarks;
pub mod crypto;
pub mod sync;
pub mod transport;

use std::time::SystemTime;

use reqwest::{Method, RequestBuilder};
pub use syncstead_proto::token::Credentials;
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid URL: {0}")]
    Url(String),
    #[error("cannot sign request: {0}")]
    Hawk(String),
    #[error("HTTP error: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{what} failed: HTTP {status} {body}")]
    Status { what: String, status: u16, body: String },
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("the server is busy{}", retry_after.map(|s| format!("; retry after {s} s")).unwrap_or_default())]
    Busy { retry_after: Option<u64> },
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("record too large: {0}")]
    TooLarge(String),
    #[error("the server refused records of {collection}: {ids:?} ({detail})")]
    UploadFailed {
        collection: String,
        ids: Vec<String>,
        detail: String,
    },
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    #[error("{0}")]
    Crypto(#[from] crypto::CryptoError),
    /// crypto/keys does not verify with our root key (CF-043): the Sync Key (1.1) or the
    /// account key (1.5) is not the one the data was written with.
    #[error("wrong key: the server's crypto/keys cannot be verified with this Sync Key (was it typed correctly?)")]
    WrongKey,
    #[error("record {collection}/{id} is not valid: {why}")]
    BadRecord {
        collection: String,
        id: String,
        why: String,
    },
    #[error("the server's data needs a newer client (storageVersion {0}; this client writes 5)")]
    StorageVersion(i64),
    #[error("engine {0} is declined on this account (turned off by the user on another device)")]
    Declined(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Config(String),
}

/// The `Authorization` header value for a request (Hawk, SHA-256, no payload hash — as
/// Firefox signs storage requests).
pub fn hawk_authorization(creds: &Credentials, method: &str, url: &Url) -> Result<String, ClientError> {
    hawk_authorization_at(creds, method, url, SystemTime::now())
}

/// Like [`hawk_authorization`], with an explicit timestamp (to test clock skew).
pub fn hawk_authorization_at(
    creds: &Credentials,
    method: &str,
    url: &Url,
    ts: SystemTime,
) -> Result<String, ClientError> {
    let host = url.host_str().ok_or_else(|| ClientError::Url("no host".into()))?;
    let port = url
        .port_or_known_default()
        .ok_or_else(|| ClientError::Url("no port".into()))?;
    let mut path = url.path().to_string();
    if let Some(q) = url.query() {
        path.push('?');
        path.push_str(q);
    }
    let key = hawk::Key::new(creds.key.as_bytes(), hawk::DigestAlgorithm::Sha256)
        .map_err(|e| ClientError::Hawk(e.to_string()))?;
    let hawk_creds = hawk::Credentials {
        id: creds.id.clone(),
        key,
    };
    let request = hawk::RequestBuilder::new(method, host, port, &path).request();
    let mut nonce = [0u8; 8];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut nonce);
    let nonce = data_encoding::BASE64.encode(&nonce);
    let header = request
        .make_header_full(&hawk_creds, ts, nonce)
        .map_err(|e| ClientError::Hawk(e.to_string()))?;
    Ok(format!("Hawk {header}"))
}

/// A storage 1.5 client for one user: `endpoint` is the token's `api_endpoint`
/// (`<node>/1.5/<uid>`).
#[derive(Clone, Debug)]
pub struct StorageClient {
    pub http: reqwest::Client,
    pub endpoint: Url,
    pub creds: Credentials,
}

impl StorageClient {
    pub fn new(http: reqwest::Client, endpoint: &str, creds: Credentials) -> Result<Self, ClientError> {
        let endpoint = Url::parse(endpoint.trim_end_matches('/')).map_err(|e| ClientError::Url(e.to_string()))?;
        Ok(StorageClient { http, endpoint, creds })
    }

    /// The URL of `path` (e.g. `/info/collections`, `/storage/bookmarks?full=1`) under the endpoint.
    pub fn url(&self, path: &str) -> Result<Url, ClientError> {
        Url::parse(&format!("{}{}", self.endpoint.as_str().trim_end_matches('/'), path))
            .map_err(|e| ClientError::Url(e.to_string()))
    }

    /// A signed request builder.
    pub fn request(&self, method: Method, path: &str) -> Result<RequestBuilder, ClientError> {
        let url = self.url(path)?;
        let auth = hawk_authorization(&self.creds, method.as_str(), &url)?;
        Ok(self
            .http
            .request(method, url)
            .header(reqwest::header::AUTHORIZATION, auth))
    }
}
