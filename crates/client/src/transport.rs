//! HTTP transport to a user's storage, for both protocols: Weave 1.1 (User API node
//! lookup + HTTP Basic) and Sync 1.5 (a token from a token server + Hawk).
//!
//! The transport owns authentication and the server's flow-control signals: it refreshes
//! a 1.5 token on 401 (spec README §2.4 step 1), re-queries the 1.1 node on 401 (§2.2 step
//! 6), waits out `Retry-After` on 503 a bounded number of times, and keeps every
//! `X-Weave-Backoff` / `X-Weave-Alert` it sees as a [`Notice`] for the user.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use data_encoding::BASE64;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use syncstead_proto::token::Credentials;
pub use syncstead_proto::Limits;
use syncstead_proto::SyncTimestamp;
use url::Url;

use crate::{hawk_authorization, ClientError};

/// A record as the server stores it (a 1.5 BSO or a 1.1 WBO; the 1.1-only fields are
/// never written by this client).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub id: String,
    #[serde(default, skip_serializing)]
    pub modified: SyncTimestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sortindex: Option<i64>,
    #[serde(default)]
    pub payload: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
}

/// Something the server asked the user or the client to know.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    /// `X-Weave-Backoff` / `X-Backoff`: do not sync again for this many seconds.
    Backoff(u64),
    /// `Retry-After` on a 503: the server is busy for this many seconds.
    RetryAfter(u64),
    /// `X-Weave-Alert`: a message from the operator (often an end-of-life warning).
    Alert(String),
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::Backoff(s) => write!(f, "the server asks clients to back off for {s} s"),
            Notice::RetryAfter(s) => write!(f, "the server is busy; retry after {s} s"),
            Notice::Alert(a) => write!(f, "server alert: {a}"),
        }
    }
}

/// How a user's storage is reached.
#[derive(Clone, Debug)]
pub enum Auth {
    /// Weave 1.1: `server` is the User API origin; the storage node is looked up.
    Basic {
        server: Url,
        username: String,
        password: String,
    },
    /// Sync 1.5: `token_server` is the token server origin (`…/1.0/sync/1.5` is appended).
    Token {
        token_server: Url,
        access_token: String,
        key_id: String,
    },
}

#[derive(Clone, Debug)]
struct Session {
    /// `<node>/1.1/<username>` or the token's `api_endpoint`.
    base: String,
    creds: Option<Credentials>,
    expires: Option<Instant>,
}

/// A response, read whole (every body this client asks for is bounded by the server's
/// own limits).
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn timestamp(&self, name: &str) -> Option<SyncTimestamp> {
        self.header(name).and_then(|v| SyncTimestamp::parse_seconds(v).ok())
    }
    fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_str(&self.body).map_err(|e| ClientError::Protocol(format!("unexpected response body ({e})")))
    }
    fn error(self, what: &str) -> ClientError {
        ClientError::Status {
            what: what.to_string(),
            status: self.status.as_u16(),
            body: self.body.chars().take(200).collect(),
        }
    }
}

/// What an upload did.
#[derive(Clone, Debug, Default)]
pub struct Uploaded {
    /// The collection's new last-modified time.
    pub modified: SyncTimestamp,
    pub records: usize,
    pub requests: usize,
}

pub struct Transport {
    http: reqwest::Client,
    auth: Auth,
    session: Option<Session>,
    limits: Option<Limits>,
    /// How long one `Retry-After` may make us wait before giving up.
    pub max_retry_wait: Duration,
    /// Records per page when downloading (1.5).
    pub page_size: usize,
    notices: Vec<Notice>,
    /// Set when a new token names another storage bucket (a key change or a node move):
    /// everything the client remembers about the server is then void.
    pub endpoint_changed: bool,
}

impl Transport {
    pub fn new(http: reqwest::Client, auth: Auth) -> Self {
        Transport {
            http,
            auth,
            session: None,
            limits: None,
            max_retry_wait: Duration::from_secs(30),
            page_size: 1000,
            notices: Vec::new(),
            endpoint_changed: false,
        }
    }

    pub fn is_weave11(&self) -> bool {
        matches!(self.auth, Auth::Basic { .. })
    }

    /// The notices seen since the last call.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// The storage base URL (after authenticating if needed).
    pub async fn endpoint(&mut self) -> Result<String, ClientError> {
        Ok(self.session().await?.base.clone())
    }

    async fn session(&mut self) -> Result<&Session, ClientError> {
        let stale = match &self.session {
            None => true,
            Some(s) => s.expires.is_some_and(|e| Instant::now() >= e),
        };
        if stale {
            let fresh = self.authenticate().await?;
            if let Some(old) = &self.session {
                if old.base != fresh.base {
                    self.endpoint_changed = true;
                }
            }
            self.session = Some(fresh);
        }
        Ok(self.session.as_ref().expect("session just set"))
    }

    async fn authenticate(&mut self) -> Result<Session, ClientError> {
        match self.auth.clone() {
            Auth::Basic { server, username, .. } => {
                let url = join(&server, &format!("user/1.0/{username}/node/weave"))?;
                let r = self.send_raw(self.http.get(url)).await?;
                let node = match r.status.as_u16() {
                    200 => r.body.trim().to_string(),
                    // A 404 means "use the server you were given" (spec README §2.1 step 5).
                    404 => server.as_str().to_string(),
                    401 => return Err(ClientError::Auth("wrong username or password".into())),
                    _ => return Err(r.error("node lookup")),
                };
                if node.is_empty() || node == "null" {
                    return Err(ClientError::Protocol(
                        "the server has no storage node for this account".into(),
                    ));
                }
                let node = Url::parse(&node).map_err(|e| ClientError::Url(format!("{node}: {e}")))?;
                Ok(Session {
                    base: join(&node, &format!("1.1/{username}"))?.to_string(),
                    creds: None,
                    expires: None,
                })
            }
            Auth::Token {
                token_server,
                access_token,
                key_id,
            } => {
                let url = join(&token_server, "1.0/sync/1.5")?;
                let r = self
                    .send_raw(self.http.get(url).bearer_auth(&access_token).header("X-KeyID", &key_id))
                    .await?;
                if r.status == StatusCode::UNAUTHORIZED {
                    let status = serde_json::from_str::<Value>(&r.body)
                        .ok()
                        .and_then(|v| v["status"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    return Err(ClientError::Auth(format!(
                        "the token server refused the access token ({status}); connect again with a fresh one"
                    )));
                }
                if !r.status.is_success() {
                    return Err(r.error("token request"));
                }
                #[derive(Deserialize)]
                struct Token {
                    id: String,
                    key: String,
                    api_endpoint: String,
                    duration: u64,
                }
                let t: Token = r.json()?;
                // Renew a little early, so a request never races the expiry.
                let life = Duration::from_secs(t.duration.saturating_sub(30).max(1));
                Ok(Session {
                    base: t.api_endpoint.trim_end_matches('/').to_string(),
                    creds: Some(Credentials { id: t.id, key: t.key }),
                    expires: Some(Instant::now() + life),
                })
            }
        }
    }

    /// Sends and records flow-control headers; no retries.
    async fn send_raw(&mut self, rb: reqwest::RequestBuilder) -> Result<Response, ClientError> {
        let r = rb.send().await?;
        let status = r.status();
        let headers = r.headers().clone();
        let body = r.text().await?;
        let resp = Response { status, headers, body };
        for name in ["x-weave-backoff", "x-backoff"] {
            if let Some(s) = resp.header(name).and_then(|v| v.trim().parse().ok()) {
                self.notices.push(Notice::Backoff(s));
            }
        }
        if let Some(a) = resp.header("x-weave-alert") {
            self.notices.push(Notice::Alert(a.to_string()));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            if let Some(s) = resp.header("retry-after").and_then(|v| v.trim().parse().ok()) {
                self.notices.push(Notice::RetryAfter(s));
            }
        }
        Ok(resp)
    }

    /// One storage request, authenticated; `path` is relative to the storage base (e.g.
    /// `/info/collections`). Retries once after re-authenticating on 401, and waits out a
    /// 503's `Retry-After` up to three times when it is short enough.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Option<&str>,
    ) -> Result<Response, ClientError> {
        let mut reauthenticated = false;
        let mut busy = 0;
        loop {
            let session = self.session().await?.clone();
            let url = Url::parse(&format!("{}{path}", session.base)).map_err(|e| ClientError::Url(e.to_string()))?;
            let mut rb = self.http.request(method.clone(), url.clone());
            rb = match (&self.auth, &session.creds) {
                (Auth::Basic { username, password, .. }, _) => rb.header(
                    reqwest::header::AUTHORIZATION,
                    format!("Basic {}", BASE64.encode(format!("{username}:{password}").as_bytes())),
                ),
                (Auth::Token { .. }, Some(creds)) => rb.header(
                    reqwest::header::AUTHORIZATION,
                    hawk_authorization(creds, method.as_str(), &url)?,
                ),
                (Auth::Token { .. }, None) => unreachable!("a token session always has credentials"),
            };
            for (k, v) in headers {
                rb = rb.header(*k, v);
            }
            if let Some(b) = body {
                rb = rb
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(b.to_string());
            }
            let r = self.send_raw(rb).await?;
            match r.status {
                StatusCode::UNAUTHORIZED if !reauthenticated => {
                    reauthenticated = true;
                    let fresh = self.authenticate().await?;
                    if fresh.base != session.base {
                        self.endpoint_changed = true;
                    }
                    self.session = Some(fresh);
                }
                StatusCode::UNAUTHORIZED => {
                    return Err(ClientError::Auth(if self.is_weave11() {
                        "wrong username or password".into()
                    } else {
                        "the storage node refused the token server's credentials".into()
                    }))
                }
                StatusCode::SERVICE_UNAVAILABLE if busy < 3 => {
                    let wait = r.header("retry-after").and_then(|v| v.trim().parse::<u64>().ok());
                    match wait.map(Duration::from_secs) {
                        Some(w) if w <= self.max_retry_wait => {
                            busy += 1;
                            tokio::time::sleep(w).await;
                        }
                        _ => return Err(ClientError::Busy { retry_after: wait }),
                    }
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    return Err(ClientError::Busy {
                        retry_after: r.header("retry-after").and_then(|v| v.trim().parse().ok()),
                    })
                }
                _ => return Ok(r),
            }
        }
    }

    /// `info/collections`: collection name → last-modified.
    pub async fn info_collections(&mut self) -> Result<BTreeMap<String, SyncTimestamp>, ClientError> {
        let r = self.request(Method::GET, "/info/collections", &[], None).await?;
        if !r.status.is_success() {
            return Err(r.error("info/collections"));
        }
        r.json()
    }

    /// Upload limits (fetched once per transport).
    pub async fn limits(&mut self) -> Result<Limits, ClientError> {
        if let Some(l) = &self.limits {
            return Ok(*l);
        }
        let limits = if self.is_weave11() {
            Limits::WEAVE11
        } else {
            let r = self.request(Method::GET, "/info/configuration", &[], None).await?;
            match r.status.as_u16() {
                200 => r.json()?,
                // An older server without the document: the client defaults (CF-070).
                404 => serde_json::from_str("{}").expect("defaults"),
                _ => return Err(r.error("info/configuration")),
            }
        };
        self.limits = Some(limits);
        Ok(limits)
    }

    pub async fn get_record(&mut self, collection: &str, id: &str) -> Result<Option<Record>, ClientError> {
        let r = self
            .request(Method::GET, &format!("/storage/{collection}/{}", enc(id)), &[], None)
            .await?;
        match r.status.as_u16() {
            200 => Ok(Some(r.json()?)),
            404 => Ok(None),
            _ => Err(r.error(&format!("GET {collection}/{id}"))),
        }
    }

    /// Every record of a collection (newer than `newer` if given) and the collection's
    /// last-modified time as of the download. 1.5 pages with `limit`/`offset`, guarding the
    /// later pages with `X-If-Unmodified-Since` and starting over if the collection changes
    /// underneath (S15-074); 1.1 has no paging tokens and is read in one request.
    pub async fn get_records(
        &mut self,
        collection: &str,
        newer: Option<SyncTimestamp>,
        progress: &dyn Fn(usize),
    ) -> Result<(Vec<Record>, SyncTimestamp), ClientError> {
        let newer_q = newer.map(|n| format!("&newer={n:.2}")).unwrap_or_default();
        if self.is_weave11() {
            let r = self
                .request(
                    Method::GET,
                    &format!("/storage/{collection}?full=1{newer_q}"),
                    &[("accept", "application/json".into())],
                    None,
                )
                .await?;
            let records: Vec<Record> = match r.status.as_u16() {
                200 => r.json()?,
                404 => Vec::new(),
                _ => return Err(r.error(&format!("GET {collection}"))),
            };
            progress(records.len());
            // 1.1's collection time is its newest record's.
            let modified = records
                .iter()
                .map(|r| r.modified)
                .fold(newer.unwrap_or_default(), SyncTimestamp::max);
            return Ok((records, modified));
        }
        'restart: for _ in 0..5 {
            let mut out = Vec::new();
            let mut offset: Option<String> = None;
            let mut last_modified: Option<SyncTimestamp> = None;
            loop {
                let mut path = format!("/storage/{collection}?full=1&limit={}{newer_q}", self.page_size);
                if let Some(o) = &offset {
                    path.push_str(&format!("&offset={}", enc(o)));
                }
                let guard: Vec<(&str, String)> = last_modified
                    .map(|t| vec![("x-if-unmodified-since", format!("{t:.2}"))])
                    .unwrap_or_default();
                let r = self.request(Method::GET, &path, &guard, None).await?;
                match r.status.as_u16() {
                    200 => {}
                    404 => return Ok((Vec::new(), SyncTimestamp::ZERO)),
                    412 => continue 'restart,
                    _ => return Err(r.error(&format!("GET {collection}"))),
                }
                let lm = r.timestamp("x-last-modified").unwrap_or_default();
                last_modified.get_or_insert(lm);
                let next = r.header("x-weave-next-offset").map(str::to_string);
                let page: Vec<Record> = r.json()?;
                progress(page.len());
                out.extend(page);
                match next {
                    Some(n) => offset = Some(n),
                    None => return Ok((out, last_modified.unwrap_or_default())),
                }
            }
        }
        Err(ClientError::Conflict(format!(
            "{collection} kept changing while it was being downloaded"
        )))
    }

    /// PUT one record, guarded by `X-If-Unmodified-Since` when given; returns the new
    /// last-modified time.
    pub async fn put_record(
        &mut self,
        collection: &str,
        record: &Record,
        if_unmodified_since: Option<SyncTimestamp>,
    ) -> Result<SyncTimestamp, ClientError> {
        let guard: Vec<(&str, String)> = if_unmodified_since
            .map(|t| vec![("x-if-unmodified-since", format!("{t:.2}"))])
            .unwrap_or_default();
        let body = serde_json::to_string(record).expect("record serializes");
        let r = self
            .request(
                Method::PUT,
                &format!("/storage/{collection}/{}", enc(&record.id)),
                &guard,
                Some(&body),
            )
            .await?;
        match r.status.as_u16() {
            200 => Ok(r
                .timestamp("x-last-modified")
                .or_else(|| SyncTimestamp::parse_seconds(&r.body).ok())
                .or_else(|| r.timestamp("x-weave-timestamp"))
                .unwrap_or_default()),
            412 => Err(ClientError::Conflict(format!(
                "{collection}/{} changed on the server",
                record.id
            ))),
            _ => Err(r.error(&format!("PUT {collection}/{}", record.id))),
        }
    }

    /// Uploads `records` to a collection, sized by the server's limits: on 1.5 in atomic
    /// batches (S15-150…), on 1.1 in POSTs of at most 100 records. Every request carries
    /// `X-If-Unmodified-Since` (CF-071), starting from `if_unmodified_since`; a 412 is
    /// returned as [`ClientError::Conflict`] for the caller to merge and retry. A record the
    /// server refuses is an error (CF-072).
    pub async fn upload(
        &mut self,
        collection: &str,
        records: &[Record],
        if_unmodified_since: SyncTimestamp,
        progress: &dyn Fn(usize),
    ) -> Result<Uploaded, ClientError> {
        let limits = self.limits().await?;
        let mut done = Uploaded {
            modified: if_unmodified_since,
            ..Default::default()
        };
        for r in records {
            if r.payload.len() as u64 > limits.max_record_payload_bytes {
                return Err(ClientError::TooLarge(format!(
                    "{collection}/{}: {} bytes, the server takes at most {}",
                    r.id,
                    r.payload.len(),
                    limits.max_record_payload_bytes
                )));
            }
        }
        let encoded: Vec<String> = records
            .iter()
            .map(|r| serde_json::to_string(r).expect("record serializes"))
            .collect();
        // Group into POST bodies, then POST bodies into batches.
        let post_bytes = limits.max_post_bytes.min(limits.max_request_bytes).saturating_sub(2);
        let mut posts: Vec<std::ops::Range<usize>> = Vec::new();
        let mut start = 0;
        let mut bytes = 0u64;
        for (i, e) in encoded.iter().enumerate() {
            let len = e.len() as u64 + 1;
            if i > start && ((i - start) as u64 >= limits.max_post_records || bytes + len > post_bytes) {
                posts.push(start..i);
                start = i;
                bytes = 0;
            }
            bytes += len;
        }
        if start < encoded.len() {
            posts.push(start..encoded.len());
        }
        let weave11 = self.is_weave11();
        let mut batch: Option<String> = None;
        let (mut batch_records, mut batch_bytes) = (0u64, 0u64);
        for (n, range) in posts.iter().enumerate() {
            let body = format!("[{}]", encoded[range.clone()].join(","));
            let count = range.len() as u64;
            let size: u64 = encoded[range.clone()].iter().map(|e| e.len() as u64).sum();
            let last = n + 1 == posts.len();
            let next_fits = posts.get(n + 1).is_some_and(|next| {
                let c = next.len() as u64;
                let s: u64 = encoded[next.clone()].iter().map(|e| e.len() as u64).sum();
                batch_records + count + c <= limits.max_total_records
                    && batch_bytes + size + s <= limits.max_total_bytes
            });
            let commit = last || !next_fits;
            let query = if weave11 {
                String::new()
            } else {
                match (&batch, commit) {
                    (None, true) => "?batch=true&commit=true".into(),
                    (None, false) => "?batch=true".into(),
                    (Some(b), true) => format!("?batch={}&commit=true", enc(b)),
                    (Some(b), false) => format!("?batch={}", enc(b)),
                }
            };
            let guard = vec![("x-if-unmodified-since", done.modified.to_string())];
            let r = self
                .request(
                    Method::POST,
                    &format!("/storage/{collection}{query}"),
                    &guard,
                    Some(&body),
                )
                .await?;
            done.requests += 1;
            match r.status.as_u16() {
                200 | 202 => {}
                412 => return Err(ClientError::Conflict(format!("{collection} changed on the server"))),
                _ => return Err(r.error(&format!("POST {collection}"))),
            }
            #[derive(Deserialize)]
            struct PostResult {
                #[serde(default)]
                modified: Option<SyncTimestamp>,
                #[serde(default)]
                batch: Option<String>,
                #[serde(default)]
                failed: Value,
            }
            let result: PostResult = r.json()?;
            let failed = match &result.failed {
                Value::Object(m) => m.keys().cloned().collect::<Vec<_>>(),
                Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
                _ => Vec::new(),
            };
            if !failed.is_empty() {
                return Err(ClientError::UploadFailed {
                    collection: collection.to_string(),
                    ids: failed,
                    detail: result.failed.to_string().chars().take(300).collect(),
                });
            }
            done.records += range.len();
            progress(range.len());
            if weave11 || commit {
                done.modified = result
                    .modified
                    .or_else(|| r.timestamp("x-last-modified"))
                    .or_else(|| r.timestamp("x-weave-timestamp"))
                    .unwrap_or(done.modified);
                batch = None;
                batch_records = 0;
                batch_bytes = 0;
            } else {
                batch =
                    Some(result.batch.ok_or_else(|| {
                        ClientError::Protocol("the server did not open a batch (no batch id)".into())
                    })?);
                batch_records += count;
                batch_bytes += size;
            }
        }
        Ok(done)
    }

    /// Deletes one collection (1.5 and 1.1 alike).
    pub async fn delete_collection(&mut self, collection: &str) -> Result<(), ClientError> {
        let r = self
            .request(Method::DELETE, &format!("/storage/{collection}"), &[], None)
            .await?;
        match r.status.as_u16() {
            200 | 204 | 404 => Ok(()),
            _ => Err(r.error(&format!("DELETE {collection}"))),
        }
    }

    /// Deletes everything the user has on the server (S15-140, S11 with X-Confirm-Delete).
    pub async fn delete_storage(&mut self) -> Result<(), ClientError> {
        let (path, headers) = if self.is_weave11() {
            ("/storage", vec![("x-confirm-delete", "1".to_string())])
        } else {
            ("/storage", Vec::new())
        };
        let r = self.request(Method::DELETE, path, &headers, None).await?;
        match r.status.as_u16() {
            200 | 204 | 404 => Ok(()),
            _ => Err(r.error("DELETE storage")),
        }
    }
}

/// `base` + `path`, whatever trailing slash `base` has.
fn join(base: &Url, path: &str) -> Result<Url, ClientError> {
    let s = format!(
        "{}/{}",
        base.as_str().trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    Url::parse(&s).map_err(|e| ClientError::Url(format!("{s}: {e}")))
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Weave 1.1 account calls of the User API (user-api-1.0.md).
pub mod user_api {
    use super::*;

    /// Whether the username is taken (U10-001).
    pub async fn exists(http: &reqwest::Client, server: &Url, username: &str) -> Result<bool, ClientError> {
        let r = http.get(join(server, &format!("user/1.0/{username}"))?).send().await?;
        let status = r.status();
        let body = r.text().await?;
        match (status.as_u16(), body.trim()) {
            (200, "1") => Ok(true),
            (200, "0") => Ok(false),
            _ => Err(ClientError::Status {
                what: "user check".into(),
                status: status.as_u16(),
                body,
            }),
        }
    }

    /// Creates the account (U10-010…); `secret` is the operator's `X-Weave-Secret`, if any.
    pub async fn create(
        http: &reqwest::Client,
        server: &Url,
        username: &str,
        email: &str,
        password: &str,
        secret: Option<&str>,
    ) -> Result<(), ClientError> {
        let mut rb = http
            .put(join(server, &format!("user/1.0/{username}"))?)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::json!({"password": password, "email": email}).to_string());
        if let Some(s) = secret {
            rb = rb.header("X-Weave-Secret", s);
        }
        let r = rb.send().await?;
        let status = r.status().as_u16();
        let body = r.text().await?;
        match status {
            200 => Ok(()),
            _ => {
                let why = match body.trim() {
                    "2" => "the server wants a CAPTCHA or its registration secret (--secret)",
                    "4" => "the account already exists",
                    "9" => "the password is not strong enough",
                    "12" | "15" => "the e-mail address is not acceptable",
                    _ => "",
                };
                Err(ClientError::Status {
                    what: if why.is_empty() {
                        "sign-up".into()
                    } else {
                        format!("sign-up: {why}")
                    },
                    status,
                    body,
                })
            }
        }
    }
}
