//! Hawk authentication of storage 1.5 requests with tokenlib tokens (tokenserver.md §9),
//! and [`HawkUser`], the extractor every 1.5 handler takes.

use std::collections::HashSet;
use std::hash::BuildHasher;
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

/// Remembers recently seen (token, ts, nonce) triples so that a captured request cannot be
/// replayed (spec README §5, T10-118). Two generations bound the memory: when the current
/// one fills up it becomes the previous one, so at least `capacity / 2` of the most recent
/// requests are always remembered.
pub struct NonceCache {
    shards: Vec<Mutex<Generations>>,
    hasher: std::collections::hash_map::RandomState,
    per_shard: usize,
}

#[derive(Default)]
struct Generations {
    current: HashSet<u64>,
    previous: HashSet<u64>,
}

impl NonceCache {
    pub fn new(capacity: usize) -> Self {
        let shards = 16;
        NonceCache {
            shards: (0..shards).map(|_| Mutex::new(Generations::default())).collect(),
            hasher: Default::default(),
            per_shard: (capacity / shards / 2).max(16),
        }
    }

    /// Records the triple; false if it was seen before.
    pub fn insert(&self, id: &str, ts: u64, nonce: &str) -> bool {
        let key = self.hasher.hash_one((id, ts, nonce));
        let shard = &self.shards[(key as usize) % self.shards.len()];
        let mut g = shard.lock().expect("nonce cache lock");
        if g.previous.contains(&key) || !g.current.insert(key) {
            return false;
        }
        if g.current.len() >= self.per_shard {
            g.previous = std::mem::take(&mut g.current);
        }
        true
    }
}

pub struct HawkVerifier {
    pub signer: TokenSigner,
    pub public_url: Option<PublicUrl>,
    pub skew: Duration,
    pub expired_grace_seconds: u64,
    pub nonces: NonceCache,
    /// Tokens whose signature was already checked, with their uid, expiry and Hawk key:
    /// clients reuse a token for an hour, so this skips the signature, JSON and HKDF work.
    pub verified: Mutex<std::collections::HashMap<String, VerifiedToken>>,
}

#[derive(Clone)]
pub struct VerifiedToken {
    uid: u64,
    expires: f64,
    key: String,
}

const MAX_VERIFIED_TOKENS: usize = 50_000;

/// The host and port a request was addressed to, as the client signed them (T10-115).
fn request_authority(headers: &HeaderMap) -> Option<(String, u16)> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(']') || host.starts_with('[') => match port.parse() {
            Ok(p) => (name, p),
            Err(_) => (host, 80),
        },
        _ => (host, 80),
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
    ) -> Result<HawkIdentity, ApiError> {
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

        let (host, port, target) = match &self.public_url {
            Some(p) => {
                let target = if p.prefix.is_empty() || path_and_query.starts_with(&format!("{}/", p.prefix)) {
                    path_and_query.to_string()
                } else {
                    format!("{}{}", p.prefix, path_and_query)
                };
                (p.host.clone(), p.port, target)
            }
            None => {
                let (host, port) = request_authority(headers).ok_or(ApiError::Unauthorized("no host"))?;
                (host, port, path_and_query.to_string())
            }
        };
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
        if !self.nonces.insert(id, ts, nonce) {
            return Err(ApiError::Unauthorized("replayed nonce"));
        }
        Ok(HawkIdentity { uid: token.uid })
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
        let identity = state
            .hawk
            .verify(&parts.method, &original, &parts.headers, info_collections)?;
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

    #[test]
    fn t10_118_nonce_cache_rejects_replays_and_stays_bounded() {
        let cache = NonceCache::new(64);
        assert!(cache.insert("id", 1, "n1"));
        assert!(!cache.insert("id", 1, "n1"));
        assert!(cache.insert("id", 1, "n2"));
        assert!(cache.insert("other", 1, "n1"));
        for i in 0..10_000 {
            cache.insert("id", 2, &i.to_string());
        }
        let total: usize = cache
            .shards
            .iter()
            .map(|s| {
                let g = s.lock().unwrap();
                g.current.len() + g.previous.len()
            })
            .sum();
        assert!(total <= 16 * 2 * 16, "{total}");
    }

    #[test]
    fn authority_from_host_header() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "Example.com:8080".parse().unwrap());
        assert_eq!(request_authority(&h), Some(("example.com".into(), 8080)));
        h.insert(header::HOST, "example.com".parse().unwrap());
        assert_eq!(request_authority(&h), Some(("example.com".into(), 80)));
        h.insert(header::HOST, "[::1]:9".parse().unwrap());
        assert_eq!(request_authority(&h), Some(("[::1]".into(), 9)));
    }
}
