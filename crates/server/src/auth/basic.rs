//! HTTP Basic authentication of Weave 1.1 users (U10-012, S11-010…S11-013): the
//! [`WeaveUser`] extractor, password checking with a short-lived cache of successful
//! verifications (Argon2 is slow on purpose, and a sync makes dozens of requests), and
//! throttling of failures per username and per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use data_encoding::BASE64;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use syncstead_proto::names::{is_info_document, is_valid_collection, is_valid_username};
use syncstead_proto::respcode;
use syncstead_proto::username::username_for_account;
use syncstead_proto::wbo::is_valid_wbo_id;
use syncstead_store::{Account, UserId};

use super::throttle::{pair_key, Throttle};
use crate::error::{ApiError, WeaveError};
use crate::listener::ClientAddr;
use crate::mail::Mailer;
use crate::passwords::{HashPool, Hasher};
use crate::state::AppState;

const MAX_CACHED: usize = 100_000;

/// Failed password checks one client address may cause in 15 minutes, over all accounts.
pub const ADDRESS_CEILING: u32 = 100;

/// `Authorization: Basic base64(user:password)`, split at the first `:` (S11-010).
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = BASE64.decode(rest.trim().as_bytes()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Recent successful verifications: username → (digest of the password, valid until).
/// The digest is keyed with a per-process random key, so the cache holds nothing a
/// password could be recovered from offline.
pub struct VerifiedCache {
    key: [u8; 32],
    entries: Mutex<HashMap<String, ([u8; 32], Instant)>>,
    ttl: Duration,
}

impl VerifiedCache {
    pub fn new(ttl: Duration) -> Self {
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
        VerifiedCache {
            key,
            entries: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    fn digest(&self, password_hash: &str, password: &str) -> [u8; 32] {
        // Bound to the stored hash too, so a password change elsewhere (another process,
        // the CLI) makes old entries miss.
        Sha256::new()
            .chain_update(self.key)
            .chain_update(password_hash.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .finalize()
            .into()
    }

    pub fn contains(&self, username: &str, password_hash: &str, password: &str) -> bool {
        let d = self.digest(password_hash, password);
        let entries = self.entries.lock().expect("password cache lock");
        entries
            .get(username)
            .is_some_and(|(cached, until)| *until > Instant::now() && bool::from(cached.ct_eq(&d)))
    }

    pub fn insert(&self, username: &str, password_hash: &str, password: &str) {
        let d = self.digest(password_hash, password);
        let mut entries = self.entries.lock().expect("password cache lock");
        if entries.len() >= MAX_CACHED {
            entries.clear();
        }
        entries.insert(username.to_string(), (d, Instant::now() + self.ttl));
    }

    pub fn forget(&self, username: &str) {
        self.entries.lock().expect("password cache lock").remove(username);
    }
}

/// Password checking shared by the User API and Storage 1.1.
pub struct WeaveAuth {
    pub hasher: Arc<HashPool>,
    pub verified: VerifiedCache,
    /// Failures of one address on one account: five, then a lockout.
    pub pairs: Throttle,
    /// Failures of one address on any account: a ceiling far above what a household
    /// behind one NAT address reaches, so only a flood meets it.
    pub addresses: Throttle,
    /// Reset mails per account.
    pub mails: Throttle,
    pub mailer: Option<Mailer>,
    /// Verified against when the user does not exist, so that a wrong username costs as
    /// much time as a wrong password.
    dummy_hash: String,
}

impl WeaveAuth {
    pub fn new(hasher: Hasher, hash_concurrency: usize, mailer: Option<Mailer>) -> Self {
        let dummy_hash = hasher.unmatchable();
        let quarter_hour = Duration::from_secs(900);
        WeaveAuth {
            hasher: HashPool::new(hasher, hash_concurrency),
            mailer,
            verified: VerifiedCache::new(Duration::from_secs(600)),
            pairs: Throttle::new(5, quarter_hour, Duration::from_secs(30), quarter_hour),
            addresses: Throttle::new(ADDRESS_CEILING, quarter_hour, Duration::from_secs(60), quarter_hour),
            mails: Throttle::new(5, quarter_hour, Duration::from_secs(30), quarter_hour),
            dummy_hash,
        }
    }
}

/// HTTP Basic for `username` (U10-012, S11-010…S11-013), throttled per (address,
/// account) pair with a per-address ceiling above it (docs/operations.md, "Password
/// guessing"). Every refusal a client can cause by guessing is a 401, which Weave clients
/// read as "wrong credentials"; only an address past the ceiling, or a server out of
/// hashing slots, gets 503 + Retry-After. Both throttles are consulted before any hash.
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    username: &str,
    addr: Option<IpAddr>,
) -> Result<Account, ApiError> {
    let auth = &state.weave;
    let Some((user, password)) = basic_credentials(headers) else {
        return Err(ApiError::BasicUnauthorized);
    };
    let pair = pair_key(username, addr);
    let refuse = |why: &'static str| {
        tracing::info!(why, "basic authentication failed");
        ApiError::BasicUnauthorized
    };
    // Counted now, before anything awaits, so simultaneous guesses see each other; a
    // success clears it.
    if auth.pairs.attempt(&pair).is_err() {
        return Err(refuse("this address is locked out of this account for a while"));
    }
    // The Basic user is the URL username, or an e-mail address that derives to it (S11-011).
    if user != username && username_for_account(&user) != username {
        return Err(refuse("user does not match the path"));
    }
    let account = state.accounts.account(username).await?;
    let (hash, usable) = match &account {
        Some(a) => (a.password_hash.clone(), !a.disabled),
        None => (auth.dummy_hash.clone(), false),
    };
    // A client that verified recently costs no hash, so even an address past the ceiling
    // keeps its syncing clients.
    let cached = usable && auth.verified.contains(username, &hash, &password);
    let address = addr.map(|ip| ip.to_string());
    if !cached {
        if let Some(a) = &address {
            if let Err(wait) = auth.addresses.attempt(a) {
                return Err(ApiError::Unavailable { retry_after: wait });
            }
        }
    }
    let verified = cached || (auth.hasher.verify(password.clone(), hash.clone()).await? && usable);
    match account {
        Some(a) if verified => {
            auth.verified.insert(username, &hash, &password);
            auth.pairs.success(&pair);
            if let (false, Some(a)) = (cached, &address) {
                auth.addresses.forgive(a);
            }
            Ok(a)
        }
        _ => Err(refuse("wrong password, unknown or disabled account")),
    }
}

/// A Weave 1.1 request whose user is authenticated. The path is checked first, so a
/// malformed path answers 404 (or 400 `13` for a bad collection name, S11-020) before any
/// credentials are looked at, as the Weave clients expect:
/// - `/user/{version}/{username}/…`: the version is `1.0` or `1`, the username well formed (U10-001);
/// - `/{api}/{username}/info/{what}`: a known info document;
/// - `/{api}/{username}/storage/{collection}[/{id}]`: a valid collection name and id (S11-005);
/// - `/{api}/{username}/storage` (routed as `{application}/{version}`): only `storage`.
pub struct WeaveUser {
    pub account: Account,
}

impl WeaveUser {
    /// The account's storage bucket.
    pub fn bucket(&self) -> UserId {
        self.account.bucket()
    }
}

impl FromRequestParts<AppState> for WeaveUser {
    /// The Weave surfaces' answers, backend failures included (U10-021).
    type Rejection = WeaveError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, WeaveError> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NotFound)?;
        let user_api = parts.uri.path().starts_with("/user/");
        let mut username = None;
        for (name, value) in &params {
            match name {
                "username" if user_api && !is_valid_username(value) => return Err(ApiError::NotFound.into()),
                "username" | "application" => username = Some(value.to_string()),
                "version" if user_api && !matches!(value, "1.0" | "1") => return Err(ApiError::NotFound.into()),
                "version" if !user_api && value != "storage" => return Err(ApiError::NotFound.into()),
                "what" if !is_info_document(value) => return Err(ApiError::NotFound.into()),
                "id" if !is_valid_wbo_id(value) => return Err(ApiError::NotFound.into()),
                "collection" if !is_valid_collection(value) => {
                    return Err(ApiError::BadRequest(respcode::INVALID_COLLECTION).into())
                }
                _ => {}
            }
        }
        let username = username.ok_or(ApiError::NotFound)?;
        let ClientAddr(addr) = match ClientAddr::from_request_parts(parts, state).await {
            Ok(a) => a,
            Err(never) => match never {},
        };
        let account = authenticate(state, &parts.headers, &username, addr).await?;
        Ok(WeaveUser { account })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s11_010_basic_header() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {}", BASE64.encode(b"user:pa:ss")).parse().unwrap(),
        );
        assert_eq!(basic_credentials(&h), Some(("user".into(), "pa:ss".into())));
        h.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(basic_credentials(&h), None);
        h.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert_eq!(basic_credentials(&h), None);
    }

    #[test]
    fn verified_cache_is_bound_to_password_and_hash() {
        let c = VerifiedCache::new(Duration::from_secs(60));
        c.insert("u", "hash1", "pw");
        assert!(c.contains("u", "hash1", "pw"));
        assert!(!c.contains("u", "hash1", "other"));
        assert!(!c.contains("u", "hash2", "pw"));
        c.forget("u");
        assert!(!c.contains("u", "hash1", "pw"));
    }
}
