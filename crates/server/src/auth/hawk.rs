//! Hawk authentication of storage 1.5 requests with tokenlib tokens (tokenserver.md §9),
//! and [`HawkUser`], the extractor every 1.5 handler takes.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{FromRequestParts, OriginalUri, RawPathParams};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use syncstead_proto::names::{is_info_document, is_valid_bso_id, is_valid_collection, parse_uid};
use syncstead_proto::token::TokenSigner;
use syncstead_proto::{respcode, SyncTimestamp};
use syncstead_store::{Precondition, UserId};

use crate::config::PublicUrl;
use crate::error::ApiError;
use crate::headers::{X_IF_MODIFIED_SINCE, X_IF_UNMODIFIED_SINCE};
use crate::state::{AppState, RequestUid};

/// Who a verified request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HawkIdentity {
    pub uid: u64,
}

/// A verified request's nonce, to be remembered for as long as its token can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonceKey {
    /// Which token (a keyed hash of its id).
    token: u64,
    /// Which request of that token (a keyed hash of id, ts and nonce).
    key: u64,
    /// Unix seconds after which the token is refused, grace included.
    until: u64,
}

/// What remembering a nonce found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    First,
    Replay,
    /// Cannot remember more without forgetting nonces still in force: refused, never
    /// forgotten.
    Full,
    /// This token has been used more times than any client needs; a new token starts a
    /// new count.
    TokenWornOut,
}

/// Every request a token made, kept until the token can no longer be used (spec README
/// §5, T10-118), grouped by token: other users' traffic can never push a nonce out early.
/// When full, nonces of expired tokens go first; if none can go, new requests are
/// refused (503) rather than a live nonce forgotten.
pub struct NonceCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
}

#[derive(Default)]
struct Shard {
    tokens: std::collections::HashMap<u64, TokenNonces>,
    entries: usize,
    next_sweep: u64,
}

struct TokenNonces {
    until: u64,
    seen: HashSet<u64>,
}

/// Requests one token may make: 100,000 in its hour is 28 a second throughout.
const MAX_PER_TOKEN: usize = 100_000;

impl Shard {
    fn sweep(&mut self, now: u64) {
        self.tokens.retain(|_, t| t.until > now);
        self.entries = self.tokens.values().map(|t| t.seen.len()).sum();
        self.next_sweep = now + 60;
    }
}

impl NonceCache {
    pub fn new(capacity: usize) -> Self {
        let shards = 16;
        NonceCache {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: (capacity / shards).max(16),
        }
    }

    pub fn record(&self, k: NonceKey, now: u64) -> Recorded {
        let shard = &self.shards[(k.token as usize) % self.shards.len()];
        let mut s = shard.lock().expect("nonce cache lock");
        if s.tokens
            .get(&k.token)
            .is_some_and(|t| t.until > now && t.seen.contains(&k.key))
        {
            return Recorded::Replay;
        }
        if now >= s.next_sweep || s.entries >= self.per_shard {
            s.sweep(now);
            if s.entries >= self.per_shard {
                return Recorded::Full;
            }
        }
        let t = s.tokens.entry(k.token).or_insert_with(|| TokenNonces {
            until: k.until,
            seen: HashSet::new(),
        });
        if t.seen.len() >= MAX_PER_TOKEN {
            return Recorded::TokenWornOut;
        }
        t.seen.insert(k.key);
        s.entries += 1;
        Recorded::First
    }
}

pub struct HawkVerifier {
    pub signer: TokenSigner,
    pub public_url: Option<PublicUrl>,
    /// The port a Host header without one means: 443 when this server speaks HTTPS.
    pub default_port: u16,
    pub skew: Duration,
    pub expired_grace_seconds: u64,
    pub nonces: NonceCache,
    /// Keys the nonce hashes, the same in every process with the same master secret, so
    /// that processes sharing a database record the same keys.
    pub nonce_secret: [u8; 32],
    /// Tokens whose signature was already checked, with their uid, expiry and Hawk key:
    /// clients reuse a token for an hour, so this skips the signature, JSON and HKDF work.
    pub verified: Mutex<std::collections::HashMap<String, VerifiedToken>>,
}

#[derive(Clone)]
pub struct VerifiedToken {
    uid: u64,
    expires: f64,
    key: String,
    /// The token's key in the nonce cache, hashed once per token rather than per request.
    nonce_token: u64,
}

const MAX_VERIFIED_TOKENS: usize = 50_000;

/// The host and port a request was addressed to, as the client signed them (T10-115).
fn request_authority(headers: &HeaderMap, default_port: u16) -> Option<(String, u16)> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(']') || host.starts_with('[') => match port.parse() {
            Ok(p) => (name, p),
            Err(_) => (host, default_port),
        },
        _ => (host, default_port),
    };
    Some((name.to_ascii_lowercase(), port))
}

/// Parses the attributes of a Hawk header. The `hawk` crate panics on a `ts` too large
/// for `SystemTime` (found by fuzzing: `ts="10000000006021490421"`), so every `ts` value
/// is checked first: more than 12 digits (beyond the year 33658) is malformed.
pub fn parse_hawk_header(attrs: &str) -> Option<hawk::Header> {
    let mut rest = attrs;
    while let Some(eq) = rest.find('=') {
        let name = rest[..eq]
            .rsplit(|c: char| c == ',' || c.is_whitespace())
            .find(|w| !w.is_empty())
            .unwrap_or("");
        let value = rest[eq + 1..].trim_start();
        if name == "ts" {
            let digits = value.strip_prefix('"').unwrap_or(value);
            let digits = digits.split('"').next().unwrap_or("");
            if digits.trim_start_matches('0').len() > 12 {
                return None;
            }
        }
        rest = &rest[eq + 1..];
    }
    hawk::Header::from_str(attrs).ok()
}

impl HawkVerifier {
    /// Verifies the `Authorization: Hawk …` header of a request for `path_and_query` (as
    /// received). `allow_expired` is set for `GET /1.5/{uid}/info/collections` (S15-022).
    pub fn verify(
        &self,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        allow_expired: bool,
    ) -> Result<(HawkIdentity, NonceKey), ApiError> {
        let auth = headers
            .get(header::AUTHORIZATION)
            .ok_or(ApiError::Unauthorized("missing authorization"))?
            .to_str()
            .map_err(|_| ApiError::Unauthorized("unreadable authorization"))?;
        let attrs = auth.strip_prefix("Hawk ").ok_or(ApiError::Unauthorized("not hawk"))?;
        let hawk_header = parse_hawk_header(attrs).ok_or(ApiError::Unauthorized("malformed hawk header"))?;
        let id = hawk_header.id.as_deref().ok_or(ApiError::Unauthorized("no id"))?;
        let cached = self.verified.lock().expect("token cache lock").get(id).cloned();
        let token = match cached {
            Some(t) => t,
            None => {
                let (payload, key) = self
                    .signer
                    .verify(id)
                    .map_err(|_| ApiError::Unauthorized("bad token"))?;
                let t = VerifiedToken {
                    uid: payload.uid,
                    expires: payload.expires,
                    key,
                    nonce_token: self.keyed(&[id.as_bytes()]),
                };
                let mut cache = self.verified.lock().expect("token cache lock");
                if cache.len() >= MAX_VERIFIED_TOKENS {
                    cache.clear();
                }
                cache.insert(id.to_string(), t.clone());
                t
            }
        };

        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let expires = token.expires.round();
        let grace = if allow_expired {
            self.expired_grace_seconds as f64
        } else {
            0.0
        };
        if expires + grace <= now.floor() {
            return Err(ApiError::Unauthorized("token expired"));
        }

        let (host, port, target) = self
            .signed_target(path_and_query, headers)
            .ok_or(ApiError::Unauthorized("no host"))?;
        let hawk_key = hawk::Key::new(token.key.as_bytes(), hawk::DigestAlgorithm::Sha256)
            .map_err(|_| ApiError::internal("hawk key"))?;
        let request = hawk::RequestBuilder::new(method.as_str(), &host, port, &target).request();
        if !request.validate_header(&hawk_header, &hawk_key, self.skew) {
            return Err(ApiError::Unauthorized("bad signature"));
        }
        let ts = hawk_header
            .ts
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let nonce = hawk_header.nonce.as_deref().unwrap_or("");
        let key = NonceKey {
            token: token.nonce_token,
            key: self.keyed(&[id.as_bytes(), &ts.to_be_bytes(), nonce.as_bytes()]),
            until: (expires + self.expired_grace_seconds as f64).max(0.0) as u64 + 1,
        };
        Ok((HawkIdentity { uid: token.uid }, key))
    }

    /// The host, port and path a client signed a request for: the public URL's when one
    /// is set (a proxy in front may rewrite both), else the request's own.
    pub fn signed_target(&self, path_and_query: &str, headers: &HeaderMap) -> Option<(String, u16, String)> {
        match &self.public_url {
            Some(p) => {
                let target = if p.prefix.is_empty() || path_and_query.starts_with(&format!("{}/", p.prefix)) {
                    path_and_query.to_string()
                } else {
                    format!("{}{}", p.prefix, path_and_query)
                };
                Some((p.host.clone(), p.port, target))
            }
            None => {
                let (host, port) = request_authority(headers, self.default_port)?;
                Some((host, port, path_and_query.to_string()))
            }
        }
    }

    /// The nonce of a request signed with an account token (id `id`), kept for as long as
    /// its timestamp is acceptable: those tokens have no expiry of their own.
    pub fn account_nonce(&self, id: &str, header: &hawk::Header) -> NonceKey {
        let ts = header
            .ts
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let nonce = header.nonce.as_deref().unwrap_or("");
        NonceKey {
            token: self.keyed(&[id.as_bytes()]),
            key: self.keyed(&[id.as_bytes(), &ts.to_be_bytes(), nonce.as_bytes()]),
            until: ts + self.skew.as_secs() + 1,
        }
    }

    fn keyed(&self, parts: &[&[u8]]) -> u64 {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.nonce_secret);
        for p in parts {
            h.update((p.len() as u64).to_be_bytes());
            h.update(p);
        }
        let d = h.finalize();
        u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
    }

    /// Refuses a request seen before (T10-118): in the database when other processes share
    /// it (PostgreSQL), else in this process's memory.
    pub async fn remember(&self, store: &dyn syncstead_store::NonceStore, k: NonceKey) -> Result<(), ApiError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if store.nonces_are_shared() {
            let until = SyncTimestamp::from_millis(k.until.saturating_mul(1000).min(i64::MAX as u64) as i64);
            return match store.first_use(k.key as i64, until).await? {
                true => Ok(()),
                false => Err(ApiError::Unauthorized("replayed nonce")),
            };
        }
        match self.nonces.record(k, now) {
            Recorded::First => Ok(()),
            Recorded::Replay => Err(ApiError::Unauthorized("replayed nonce")),
            Recorded::TokenWornOut => Err(ApiError::Unauthorized("token used too many times")),
            Recorded::Full => Err(ApiError::Unavailable { retry_after: 60 }),
        }
    }
}

/// A Storage 1.5 request whose path, credentials and preconditions are checked, in the
/// order clients rely on: path (404), Hawk (401), uid of the token against the path's
/// (400, S15-021), preconditions (400, S15-052/053).
#[derive(Debug)]
pub struct HawkUser {
    /// The bucket of the authenticated uid.
    pub bucket: UserId,
    /// The `{collection}` segment, or empty.
    pub collection: String,
    /// The `{id}` segment, or empty.
    pub id: String,
    pub pre: Precondition,
}

fn decode_segment(raw: &str) -> Option<String> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

impl FromRequestParts<AppState> for HawkUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NotFound)?;
        let (mut uid, mut collection, mut id) = (None, String::new(), String::new());
        for (name, raw) in &params {
            let value = decode_segment(raw).ok_or(ApiError::NotFound)?;
            match name {
                "uid" => uid = Some(parse_uid(&value).ok_or(ApiError::NotFound)?),
                "collection" if is_valid_collection(&value) => collection = value,
                "id" if is_valid_bso_id(&value) => id = value,
                "what" if is_info_document(&value) => {}
                _ => return Err(ApiError::NotFound),
            }
        }
        let uid = uid.ok_or(ApiError::NotFound)?;
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let original = parts
            .extensions
            .get::<OriginalUri>()
            .and_then(|u| u.0.path_and_query().map(|p| p.as_str().to_string()))
            .unwrap_or_else(|| path_and_query.to_string());
        // S15-022: exactly `/1.5/{uid}/info/collections` (the path is already validated above).
        let info_collections = parts.method == Method::GET
            && parts
                .uri
                .path()
                .strip_prefix("/1.5/")
                .and_then(|r| r.split_once('/'))
                .is_some_and(|(_, rest)| rest == "info/collections");
        let (identity, nonce) = state
            .hawk
            .verify(&parts.method, &original, &parts.headers, info_collections)?;
        state.hawk.remember(state.nonces.as_ref(), nonce).await?;
        if let Some(slot) = parts.extensions.get::<RequestUid>() {
            let _ = slot.0.set(identity.uid);
        }
        if identity.uid != uid {
            return Err(ApiError::BadRequest(respcode::NONE));
        }
        Ok(HawkUser {
            bucket: uid as UserId,
            collection,
            id,
            pre: preconditions(&parts.headers)?,
        })
    }
}

/// `X-If-Modified-Since` or `X-If-Unmodified-Since`, not both (S15-052, S15-053).
fn preconditions(headers: &HeaderMap) -> Result<Precondition, ApiError> {
    let parse = |name: &str| -> Result<Option<SyncTimestamp>, ApiError> {
        match headers.get(name) {
            None => Ok(None),
            Some(v) => {
                let s = v.to_str().map_err(|_| ApiError::BadRequest(respcode::NONE))?;
                Ok(Some(SyncTimestamp::parse_seconds(s)?))
            }
        }
    };
    match (parse(X_IF_MODIFIED_SINCE)?, parse(X_IF_UNMODIFIED_SINCE)?) {
        (Some(_), Some(_)) => Err(ApiError::BadRequest(respcode::NONE)),
        (Some(t), None) => Ok(Precondition::IfModifiedSince(t)),
        (None, Some(t)) => Ok(Precondition::IfUnmodifiedSince(t)),
        (None, None) => Ok(Precondition::None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(token: u64, key: u64, until: u64) -> NonceKey {
        NonceKey { token, key, until }
    }

    /// T10-118: a nonce is refused for as long as its token lives, whatever other tokens
    /// do; past the capacity new requests are refused, never old nonces forgotten.
    #[test]
    fn t10_118_nonces_outlive_any_flood_of_other_tokens() {
        let cache = NonceCache::new(16 * 100);
        let now = 1_000;
        assert_eq!(cache.record(key(1, 7, now + 3600), now), Recorded::First);
        assert_eq!(cache.record(key(1, 7, now + 3600), now), Recorded::Replay);
        assert_eq!(cache.record(key(1, 8, now + 3600), now), Recorded::First);
        let mut full = 0;
        for t in 2..300_000u64 {
            if cache.record(key(t, t, now + 3600), now) == Recorded::Full {
                full += 1;
            }
        }
        assert!(full > 290_000, "the flood was refused ({full})");
        assert_eq!(
            cache.record(key(1, 7, now + 3600), now),
            Recorded::Replay,
            "still remembered"
        );
        // Once every flooding token has expired, there is room again.
        let later = now + 3601;
        assert_eq!(cache.record(key(9_999_999, 1, later + 3600), later), Recorded::First);
        assert_eq!(
            cache.record(key(1, 7, now + 3600), later),
            Recorded::First,
            "its token is gone"
        );
    }

    #[test]
    fn a_token_has_a_lifetime_budget() {
        let cache = NonceCache::new(10 * MAX_PER_TOKEN * 16);
        for k in 0..MAX_PER_TOKEN as u64 {
            assert_eq!(cache.record(key(1, k, 5000), 0), Recorded::First);
        }
        assert_eq!(cache.record(key(1, u64::MAX, 5000), 0), Recorded::TokenWornOut);
        assert_eq!(cache.record(key(2, 0, 5000), 0), Recorded::First);
    }

    #[test]
    fn authority_from_host_header() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "Example.com:8080".parse().unwrap());
        assert_eq!(request_authority(&h, 80), Some(("example.com".into(), 8080)));
        h.insert(header::HOST, "example.com".parse().unwrap());
        assert_eq!(request_authority(&h, 80), Some(("example.com".into(), 80)));
        h.insert(header::HOST, "[::1]:9".parse().unwrap());
        assert_eq!(request_authority(&h, 80), Some(("[::1]".into(), 9)));
    }
}
