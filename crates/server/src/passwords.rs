//! Weave 1.1 passwords: Argon2id hashes, HTTP Basic authentication, a short-lived cache of
//! successful verifications (Argon2 is slow on purpose, and a sync makes dozens of
//! requests), and throttling of failed attempts per username and per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use axum::http::{header, HeaderMap};
use data_encoding::BASE64;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Argon2id with the configured cost.
#[derive(Clone)]
pub struct Hasher {
    params: Params,
}

impl Hasher {
    pub fn new(memory_kib: u32, iterations: u32) -> Self {
        let params = Params::new(memory_kib.max(8), iterations.max(1), 1, None).unwrap_or_default();
        Hasher { params }
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// A PHC string (`$argon2id$…`), salt included.
    pub fn hash(&self, password: &str) -> String {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        self.argon2()
            .hash_password(password.as_bytes(), &salt)
            .expect("Argon2 hashes any password with valid parameters")
            .to_string()
    }

    /// Constant-time verification (the argon2 crate compares in constant time).
    pub fn verify(&self, password: &str, phc: &str) -> bool {
        PasswordHash::new(phc).is_ok_and(|h| self.argon2().verify_password(password.as_bytes(), &h).is_ok())
    }
}

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

const MAX_CACHED: usize = 100_000;

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

/// Slows down guessing: after `free` failures within `window`, a key (a username or a
/// client address) is refused for a lockout that doubles with each further failure, up to
/// `max_lockout`. A success clears the key, and every lockout ends by itself, so the real
/// owner is never locked out for good.
pub struct Throttle {
    entries: Mutex<HashMap<String, Failures>>,
    free: u32,
    window: Duration,
    base_lockout: Duration,
    max_lockout: Duration,
}

struct Failures {
    count: u32,
    first: Instant,
    locked_until: Option<Instant>,
}

impl Throttle {
    pub fn new(free: u32, window: Duration, base_lockout: Duration, max_lockout: Duration) -> Self {
        Throttle {
            entries: Mutex::new(HashMap::new()),
            free: free.max(1),
            window,
            base_lockout,
            max_lockout,
        }
    }

    /// Seconds to wait if the key is locked out.
    pub fn locked(&self, key: &str) -> Option<u64> {
        let entries = self.entries.lock().expect("throttle lock");
        let until = entries.get(key)?.locked_until?;
        let now = Instant::now();
        // Rounded up: a client that waits what it is told is let in.
        (until > now).then(|| (until - now).as_millis().div_ceil(1000).max(1) as u64)
    }

    pub fn failure(&self, key: &str) {
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("throttle lock");
        if entries.len() >= MAX_CACHED {
            entries.retain(|_, f| f.locked_until.is_some_and(|u| u > now) || now - f.first < self.window);
        }
        let f = entries.entry(key.to_string()).or_insert(Failures {
            count: 0,
            first: now,
            locked_until: None,
        });
        if now - f.first > self.window && f.locked_until.is_none_or(|u| u <= now) {
            *f = Failures {
                count: 0,
                first: now,
                locked_until: None,
            };
        }
        f.count += 1;
        if f.count >= self.free {
            let doublings = (f.count - self.free).min(16);
            let lockout = self.base_lockout.saturating_mul(1 << doublings).min(self.max_lockout);
            f.locked_until = Some(now + lockout);
        }
    }

    pub fn success(&self, key: &str) {
        self.entries.lock().expect("throttle lock").remove(key);
    }
}

/// The throttle keys of one attempt.
pub fn throttle_keys(username: &str, addr: Option<IpAddr>) -> Vec<String> {
    let mut keys = vec![format!("user:{username}")];
    if let Some(ip) = addr {
        keys.push(format!("addr:{ip}"));
    }
    keys
}

/// U10-013: at least 8 bytes, and not the username.
pub fn strong_enough(password: &str, username: &str) -> bool {
    password.len() >= 8 && password.trim().to_lowercase() != username.trim().to_lowercase()
}

/// U10-014, simplified to what matters: `local@domain.tld`, no spaces or brackets.
pub fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.rsplit_once('@') else {
        return false;
    };
    let bad = |c: char| c.is_whitespace() || "<>()[]\\,;:@\"".contains(c);
    if local.is_empty()
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
        || local.chars().any(bad)
    {
        return false;
    }
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels
            .iter()
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        && labels.last().is_some_and(|tld| tld.len() >= 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_round_trip() {
        let h = Hasher::new(64, 1);
        let phc = h.hash("correct horse");
        assert!(phc.starts_with("$argon2id$"));
        assert!(h.verify("correct horse", &phc));
        assert!(!h.verify("wrong horse", &phc));
        assert!(!h.verify("x", "not a hash"));
    }

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
    fn throttle_locks_then_recovers() {
        let t = Throttle::new(
            3,
            Duration::from_secs(60),
            Duration::from_millis(50),
            Duration::from_millis(200),
        );
        t.failure("k");
        t.failure("k");
        assert!(t.locked("k").is_none());
        t.failure("k");
        assert!(t.locked("k").is_some());
        std::thread::sleep(Duration::from_millis(80));
        assert!(t.locked("k").is_none(), "a lockout ends by itself");
        t.success("k");
        assert!(t.locked("k").is_none());
    }

    #[test]
    fn u10_013_u10_014_rules() {
        assert!(strong_enough("longenough", "someone"));
        assert!(!strong_enough("short", "someone"));
        assert!(!strong_enough("SomeOne12", "someone12"));
        assert!(valid_email("john@example.com"));
        assert!(valid_email("a.b+c@sub.example.org"));
        for bad in [
            "john",
            "john@",
            "@example.com",
            "john@example",
            "jo hn@example.com",
            "john@exa_mple.com",
            "john@example.c",
        ] {
            assert!(!valid_email(bad), "{bad}");
        }
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
