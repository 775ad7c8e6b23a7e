//! Weave 1.1 usernames (user-api-1.0.md U10-010): what clients put in URLs for an account.

use data_encoding::BASE32_NOPAD;
use sha1::{Digest, Sha1};

/// An account string made only of `[A-Za-z0-9._-]` is its own (lower-cased) username;
/// anything else (an e-mail address) becomes lowercase(base32(SHA-1(lowercase(account)))).
/// Non-ASCII addresses are hashed as their UTF-8 bytes, as clients do (spec README §5).
pub fn username_for_account(account: &str) -> String {
    let plain = !account.is_empty()
        && account
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if plain {
        return account.to_ascii_lowercase();
    }
    let digest = Sha1::digest(account.to_lowercase().as_bytes());
    BASE32_NOPAD.encode(&digest).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u10_010_vectors() {
        assert_eq!(
            username_for_account("john@example.com"),
            "kismw365lo7emoxr3ohojgpild6lph4b"
        );
        assert_eq!(
            username_for_account("John@Example.COM"),
            "kismw365lo7emoxr3ohojgpild6lph4b"
        );
        assert_eq!(
            username_for_account("foobar@baz.com"),
            "xee7ffonluzpdp66l6xgpyh2v2w6ojkc"
        );
        assert_eq!(
            username_for_account("FooBar@Baz.com"),
            "xee7ffonluzpdp66l6xgpyh2v2w6ojkc"
        );
        assert_eq!(
            username_for_account("johndoe@example.com"),
            "v64aw4knp6ittxnarcpmoi7smokoazsr"
        );
        assert_eq!(username_for_account("FOOBAr"), "foobar");
    }
}
