//! Weave 1.1 passwords: Argon2id hashes and the rules for new passwords and addresses.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// Argon2id with the configured cost. The work memory is the caller's (see [`HashPool`]),
/// so the memory a burst of logins costs is bounded by the pool, not by the burst.
#[derive(Clone)]
pub struct Hasher {
    params: Params,
}

/// The hash's output length, as the argon2 crate's own PHC strings have it.
const OUTPUT_BYTES: usize = 32;

impl Hasher {
    pub fn new(memory_kib: u32, iterations: u32) -> Self {
        let params = Params::new(memory_kib.max(8), iterations.max(1), 1, Some(OUTPUT_BYTES)).unwrap_or_default();
        Hasher { params }
    }

    /// A PHC string (`$argon2id$…`), salt included.
    pub fn hash(&self, password: &str) -> String {
        self.hash_with(password, &mut Vec::new())
    }

    /// Constant-time verification against a PHC string, with the parameters it names.
    pub fn verify(&self, password: &str, phc: &str) -> bool {
        verify_with(password, phc, &mut Vec::new())
    }

    /// A PHC string with this cost that no password matches: its output is random, not
    /// computed (which would take the full work memory at startup, the process's peak
    /// until then). Checking a password against it costs what a real check costs.
    pub fn unmatchable(&self) -> String {
        let (mut salt, mut out) = ([0u8; 16], [0u8; OUTPUT_BYTES]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut out);
        self.phc(&salt, out)
    }

    fn hash_with(&self, password: &str, memory: &mut Vec<Block>) -> String {
        let mut salt = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
        let mut out = [0u8; OUTPUT_BYTES];
        let blocks = work_memory(memory, self.params.block_count());
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
            .hash_password_into_with_memory(password.as_bytes(), &salt, &mut out, blocks)
            .expect("Argon2 hashes any password with valid parameters");
        self.phc(&salt, out)
    }

    fn phc(&self, salt: &[u8; 16], out: [u8; OUTPUT_BYTES]) -> String {
        let salt = SaltString::encode_b64(salt).expect("16 bytes are a valid salt");
        PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&self.params).expect("valid parameters encode"),
            salt: Some(salt.as_salt()),
            hash: Some(Output::new(&out).expect("32 bytes are a valid output")),
        }
        .to_string()
    }
}

/// Grows the reused work memory to `blocks` and lends it out.
fn work_memory(memory: &mut Vec<Block>, blocks: usize) -> &mut [Block] {
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    &mut memory[..blocks]
}

fn verify_with(password: &str, phc: &str, memory: &mut Vec<Block>) -> bool {
    let Ok(stored) = PasswordHash::new(phc) else {
        return false;
    };
    let (Ok(algorithm), Ok(params), Some(salt), Some(expected)) = (
        Algorithm::try_from(stored.algorithm),
        Params::try_from(&stored),
        stored.salt,
        stored.hash,
    ) else {
        return false;
    };
    let version = match stored.version.map(Version::try_from) {
        None => Version::V0x13,
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let blocks = work_memory(memory, params.block_count());
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, blocks)
        .is_ok()
        && bool::from(out.ct_eq(expected.as_bytes()))
}

/// Every password hash the server computes goes through here: at most `concurrency` at a
/// time, each in reused work memory, so 200 simultaneous logins cost `concurrency` hashes'
/// memory (19 MiB each by default) instead of 200 (S9: limits on everything). A request
/// that cannot get a slot within [`HashPool::WAIT`] is told to come back later.
pub struct HashPool {
    hasher: Hasher,
    slots: Arc<Semaphore>,
    capacity: usize,
    spare: Mutex<Vec<Vec<Block>>>,
}

/// No hashing slot came free in time.
#[derive(Debug, thiserror::Error)]
#[error("every password-hashing slot is busy")]
pub struct Busy;

impl HashPool {
    pub const WAIT: Duration = Duration::from_secs(10);

    pub fn new(hasher: Hasher, concurrency: usize) -> Arc<Self> {
        Arc::new(HashPool {
            hasher,
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            capacity: concurrency.max(1),
            spare: Mutex::new(Vec::new()),
        })
    }

    pub fn hasher(&self) -> &Hasher {
        &self.hasher
    }

    pub async fn hash(self: &Arc<Self>, password: String) -> Result<String, Busy> {
        self.run(move |h, memory| h.hash_with(&password, memory)).await
    }

    pub async fn verify(self: &Arc<Self>, password: String, phc: String) -> Result<bool, Busy> {
        self.run(move |_, memory| verify_with(&password, &phc, memory)).await
    }

    /// Other heavy password work (the accounts' scrypt) under the same bound.
    pub async fn run_blocking<R: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, Busy> {
        self.run(move |_, _| work()).await
    }

    async fn run<R: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Hasher, &mut Vec<Block>) -> R + Send + 'static,
    ) -> Result<R, Busy> {
        let permit = tokio::time::timeout(Self::WAIT, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| Busy)?
            .map_err(|_| Busy)?;
        let pool = self.clone();
        // The slot and the memory travel with the blocking work: a request cancelled
        // mid-hash cannot free its slot while its hash still runs.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut memory = pool.spare.lock().expect("hash memory lock").pop().unwrap_or_default();
            let out = work(&pool.hasher, &mut memory);
            let mut spare = pool.spare.lock().expect("hash memory lock");
            // The last hash of a burst gives the memory back: an idle server holds none.
            if pool.slots.available_permits() + 1 < pool.capacity {
                spare.push(memory);
            } else {
                spare.clear();
            }
            out
        })
        .await
        .map_err(|_| Busy)
    }
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
    fn hashes_agree_with_the_argon2_crates_own() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let h = Hasher::new(64, 1);
        let ours = h.hash("pw");
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default().verify_password(b"pw", &parsed).is_ok());
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let params = Params::new(64, 1, 1, None).unwrap();
        let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(b"pw", &salt)
            .unwrap()
            .to_string();
        assert!(h.verify("pw", &theirs));
        assert!(!h.verify("pW", &theirs));
    }

    #[tokio::test]
    async fn the_pool_bounds_and_reuses_its_memory() {
        let pool = HashPool::new(Hasher::new(64, 1), 2);
        let phc = pool.hash("pw".into()).await.unwrap();
        let checks: Vec<_> = (0..20)
            .map(|i| {
                let (pool, phc) = (pool.clone(), phc.clone());
                tokio::spawn(async move { pool.verify(if i % 2 == 0 { "pw" } else { "no" }.into(), phc).await })
            })
            .collect();
        for (i, c) in checks.into_iter().enumerate() {
            assert_eq!(c.await.unwrap().unwrap(), i % 2 == 0);
        }
        assert!(
            pool.spare.lock().unwrap().len() <= 2,
            "one work memory per slot at most"
        );
    }

    #[test]
    fn argon2id_round_trip() {
        let h = Hasher::new(64, 1);
        let phc = h.hash("correct horse");
        assert!(phc.starts_with("$argon2id$"));
        assert!(h.verify("correct horse", &phc));
        assert!(!h.verify("wrong horse", &phc));
        assert!(!h.verify("x", "not a hash"));
    }

    // S9: an unknown user's check costs what a known one's does, against a hash that has
    // the configured cost and that no password matches.
    #[test]
    fn the_unmatchable_hash_has_the_configured_cost_and_matches_nothing() {
        let h = Hasher::new(64, 3);
        let phc = h.unmatchable();
        let parsed = PasswordHash::new(&phc).expect("a valid PHC string");
        let params = Params::try_from(&parsed).expect("argon2 parameters");
        assert_eq!((params.m_cost(), params.t_cost(), params.p_cost()), (64, 3, 1));
        assert_eq!(parsed.algorithm, Algorithm::Argon2id.ident());
        for guess in ["", "not a password anyone has", "correct horse"] {
            assert!(!h.verify(guess, &phc));
        }
        assert_ne!(phc, h.unmatchable(), "salt and output are random");
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
}
