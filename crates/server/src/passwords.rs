//! Weave 1.1 passwords: Argon2id hashes and the rules for new passwords and addresses.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

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
