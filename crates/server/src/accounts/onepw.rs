//! The onepw protocol v1 (Mozilla accounts' password protocol) and the token derivations
//! that go with it: the client's half (used by `syncstead account add` and the tests; the
//! sign-in page does the same in JavaScript) and the server's half.
//!
//! The server never sees the password, only `authPW`; it keeps `verifyHash` to check it
//! and `wrapWrapKb`, from which only someone who knows the password recovers kB.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "identity.mozilla.com/picl/v1/";
const PBKDF2_ROUNDS: u32 = 1000;

/// onepw's HKDF: SHA-256, an empty salt, `identity.mozilla.com/picl/v1/<name>` as info.
pub fn hkdf(ikm: &[u8], name: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    Hkdf::<Sha256>::new(None, ikm)
        .expand(format!("{PREFIX}{name}").as_bytes(), &mut out)
        .expect("HKDF-SHA-256 gives up to 8160 bytes");
    out
}

pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// What the client derives from the password: `authPW` goes to the server,
/// `unwrapBKey` never leaves the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKeys {
    pub auth_pw: [u8; 32],
    pub unwrap_b_key: [u8; 32],
}

/// The client side of onepw v1: PBKDF2-SHA-256 (1,000 rounds, salted with the e-mail),
/// then HKDF.
pub fn stretch(email: &str, password: &str) -> ClientKeys {
    let salt = format!("{PREFIX}quickStretch:{email}");
    let mut quick = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt.as_bytes(), PBKDF2_ROUNDS, &mut quick);
    let mut keys = ClientKeys {
        auth_pw: [0; 32],
        unwrap_b_key: [0; 32],
    };
    keys.auth_pw.copy_from_slice(&hkdf(&quick, "authPW", 32));
    keys.unwrap_b_key.copy_from_slice(&hkdf(&quick, "unwrapBkey", 32));
    keys
}

/// The server's half: scrypt (N = 65,536, r = 8, p = 1) over `authPW`; its hex text is the
/// key material of `verifyHash` and of the key that wraps `wrapKb`. About 64 MiB and a
/// tenth of a second: it runs in the password-hashing pool.
pub struct Stretched {
    hex: String,
}

impl Stretched {
    pub fn new(auth_pw: &[u8], auth_salt: &[u8]) -> Self {
        Self::with_cost(auth_pw, auth_salt, 16)
    }

    fn with_cost(auth_pw: &[u8], auth_salt: &[u8], log_n: u8) -> Self {
        let params = scrypt::Params::new(log_n, 8, 1, 32).expect("valid scrypt parameters");
        let mut out = [0u8; 32];
        scrypt::scrypt(auth_pw, auth_salt, &params, &mut out).expect("32 bytes is a valid scrypt output");
        Stretched {
            hex: data_encoding::HEXLOWER.encode(&out),
        }
    }

    pub fn verify_hash(&self) -> Vec<u8> {
        hkdf(self.hex.as_bytes(), "verifyHash", 32)
    }

    /// `wrapWrapKb` from `wrapKb`, and back: the same XOR both ways.
    pub fn wrap(&self, wrap_kb: &[u8]) -> Vec<u8> {
        xor(&hkdf(self.hex.as_bytes(), "wrapwrapKey", 32), wrap_kb)
    }

    /// Constant-time comparison with the stored `verifyHash`.
    pub fn verifies(&self, stored: &[u8]) -> bool {
        self.verify_hash().ct_eq(stored).into()
    }
}

/// The three keys a token's value stands for: its public id (the Hawk id, the Bearer
/// body), the key its requests are signed with, and the key of what it fetches.
pub struct TokenKeys {
    pub id: [u8; 32],
    pub auth_key: [u8; 32],
    pub bundle_key: [u8; 32],
}

/// `kind` is `sessionToken` or `keyFetchToken`, as Mozilla's server names them.
pub fn token_keys(token: &[u8], kind: &str) -> TokenKeys {
    let out = hkdf(token, kind, 96);
    let mut keys = TokenKeys {
        id: [0; 32],
        auth_key: [0; 32],
        bundle_key: [0; 32],
    };
    keys.id.copy_from_slice(&out[..32]);
    keys.auth_key.copy_from_slice(&out[32..64]);
    keys.bundle_key.copy_from_slice(&out[64..]);
    keys
}

/// The `/account/keys` bundle: `(kA ‖ wrapKb) ⊕ xorKey ‖ HMAC(hmacKey, ciphertext)`.
pub fn key_bundle(bundle_key: &[u8], ka: &[u8], wrap_kb: &[u8]) -> Vec<u8> {
    let keys = hkdf(bundle_key, "account/keys", 96);
    let (hmac_key, xor_key) = keys.split_at(32);
    let mut plain = ka.to_vec();
    plain.extend_from_slice(wrap_kb);
    let mut out = xor(&plain, xor_key);
    let mac = hmac_sha256(hmac_key, &out);
    out.extend_from_slice(&mac);
    out
}

/// The client's unbundling: `(kA, wrapKb)`, or `None` when the MAC does not match.
pub fn open_bundle(bundle_key: &[u8], bundle: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    if bundle.len() != 96 {
        return None;
    }
    let keys = hkdf(bundle_key, "account/keys", 96);
    let (hmac_key, xor_key) = keys.split_at(32);
    let (ct, mac) = bundle.split_at(64);
    if !bool::from(hmac_sha256(hmac_key, ct).ct_eq(mac)) {
        return None;
    }
    let plain = xor(ct, xor_key);
    Some((plain[..32].to_vec(), plain[32..].to_vec()))
}

/// kB from what the key fetch returned and the password's `unwrapBKey`.
pub fn unwrap_kb(wrap_kb: &[u8], unwrap_b_key: &[u8]) -> Vec<u8> {
    xor(wrap_kb, unwrap_b_key)
}

pub const OLDSYNC_KEY_INFO: &str = "oldsync";

/// The Sync scoped key: `k` (64 bytes) and `kid` = `<keys changed, ms>-<b64url(SHA-256(kB)[..16])>`.
pub fn sync_key(kb: &[u8], keys_changed_at_ms: i64) -> (Vec<u8>, String) {
    let k = hkdf(kb, OLDSYNC_KEY_INFO, 64);
    let fingerprint = data_encoding::BASE64URL_NOPAD.encode(&sha256(kb)[..16]);
    (k, format!("{keys_changed_at_ms}-{fingerprint}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use data_encoding::HEXLOWER;

    /// Mozilla's published onepw v1 vectors ("client stretch-KDF", also in Firefox's own
    /// test_credentials.js): e-mail "andré@example.org", password "pässwörd".
    #[test]
    fn client_stretch_matches_mozillas_vectors() {
        let keys = stretch("andr\u{e9}@example.org", "p\u{e4}ssw\u{f6}rd");
        assert_eq!(
            HEXLOWER.encode(&keys.auth_pw),
            "247b675ffb4c46310bc87e26d712153abe5e1c90ef00a4784594f97ef54f2375"
        );
        assert_eq!(
            HEXLOWER.encode(&keys.unwrap_b_key),
            "de6a2648b78284fcb9ffa81ba95803309cfba7af583c01a8a1a63e567234dd28"
        );
    }

    /// The known answers the sign-in page's Node.js test checks too (vectors.json): the
    /// server's bundle, kB, the Sync key and the session-token derivation agree.
    #[test]
    fn server_agrees_with_the_page_on_vectors_json() {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("../../assets/accounts/vectors.json")).expect("vectors.json");
        let hex = |k: &str| HEXLOWER.decode(v["server"][k].as_str().expect(k).as_bytes()).expect(k);
        let keys = token_keys(&hex("keyFetchToken"), "keyFetchToken");
        assert_eq!(key_bundle(&keys.bundle_key, &hex("kA"), &hex("wrapKb")), hex("bundle"));
        let unwrap = stretch("andr\u{e9}@example.org", "p\u{e4}ssw\u{f6}rd").unwrap_b_key;
        let kb = unwrap_kb(&hex("wrapKb"), &unwrap);
        assert_eq!(kb, hex("kB"));
        let (k, kid) = sync_key(&kb, v["server"]["keysChangedAt"].as_i64().expect("keysChangedAt"));
        assert_eq!(data_encoding::BASE64URL_NOPAD.encode(&k), v["server"]["k"]);
        assert_eq!(kid, v["server"]["kid"]);
        let session = token_keys(&hex("sessionToken"), "sessionToken");
        assert_eq!(session.id.to_vec(), hex("sessionTokenId"));
        assert_eq!(session.auth_key.to_vec(), hex("sessionAuthKey"));
    }

    #[test]
    fn bundle_round_trips_and_a_changed_byte_is_refused() {
        let (ka, wrap_kb, key) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let mut bundle = key_bundle(&key, &ka, &wrap_kb);
        assert_eq!(open_bundle(&key, &bundle), Some((ka.to_vec(), wrap_kb.to_vec())));
        bundle[5] ^= 1;
        assert_eq!(open_bundle(&key, &bundle), None);
    }

    #[test]
    fn wrapping_is_undone_by_the_same_password_only() {
        let salt = [0u8; 32];
        // A cheap cost: the rule under test is the derivation, not scrypt's parameters.
        let s = Stretched::with_cost(b"auth pw", &salt, 4);
        let wrapped = s.wrap(&[7u8; 32]);
        assert_eq!(s.wrap(&wrapped), vec![7u8; 32]);
        assert!(s.verifies(&s.verify_hash()));
        assert!(!Stretched::with_cost(b"other", &salt, 4).verifies(&s.verify_hash()));
    }
}
