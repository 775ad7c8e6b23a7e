//! Mozilla tokenlib tokens: the Hawk id a token server hands out and the key derived from it
//! (T10-091…T10-095, T10-111…T10-114). Both sides need only the shared master secret.

use data_encoding::BASE64URL;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ProtoError;

const SIGNING_INFO: &[u8] = b"services.mozilla.com/tokenlib/v1/signing";
const DERIVE_INFO: &[u8] = b"services.mozilla.com/tokenlib/v1/derive/";

/// The fields carried inside a token. Unknown fields are ignored; `expires` may be an
/// integer or a float (T10-092, T10-112).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenPayload {
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fxa_kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fxa_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashed_device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashed_fxa_uid: Option<String>,
    pub expires: f64,
    pub uid: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenserver_origin: Option<String>,
    pub salt: String,
}

/// A token id with its Hawk key: the base64url text of the derived secret (T10-114).
#[derive(Clone)]
pub struct Credentials {
    pub id: String,
    pub key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("id", &self.id)
            .field("key", &"<redacted>")
            .finish()
    }
}

fn hkdf32(ikm: &[u8], salt: Option<&[u8]>, info: &[&[u8]]) -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(salt, ikm);
    let mut out = [0u8; 32];
    hk.expand_multi_info(info, &mut out)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

/// Holds the keys derived from one master secret, so requests do not redo the signing-key HKDF.
#[derive(Clone)]
pub struct TokenSigner {
    master: Vec<u8>,
    signing_key: [u8; 32],
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(<redacted>)")
    }
}

impl TokenSigner {
    pub fn new(master_secret: &str) -> Self {
        let master = master_secret.as_bytes().to_vec();
        let signing_key = hkdf32(&master, None, &[SIGNING_INFO]);
        TokenSigner { master, signing_key }
    }

    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.signing_key).expect("HMAC takes any key length");
        mac.update(payload);
        mac
    }

    /// The Hawk key for a token id: base64url (with padding) of HKDF(master, salt, derive-info ‖ id).
    pub fn derive_key(&self, salt: &str, id: &str) -> String {
        BASE64URL.encode(&hkdf32(
            &self.master,
            Some(salt.as_bytes()),
            &[DERIVE_INFO, id.as_bytes()],
        ))
    }

    /// Signs a payload into a token id and derives its key (T10-093, T10-094).
    pub fn mint(&self, payload: &TokenPayload) -> Credentials {
        let mut bytes = serde_json::to_vec(payload).expect("token payload serialises");
        let sig = self.mac(&bytes).finalize().into_bytes();
        bytes.extend_from_slice(&sig);
        let id = BASE64URL.encode(&bytes);
        let key = self.derive_key(&payload.salt, &id);
        Credentials { id, key }
    }

    /// Checks a token id's signature in constant time and returns its payload and Hawk key
    /// (T10-111, T10-112). Expiry is the caller's decision (it depends on the route).
    pub fn verify(&self, id: &str) -> Result<(TokenPayload, String), ProtoError> {
        let raw = BASE64URL
            .decode(id.as_bytes())
            .map_err(|_| ProtoError::Token("not base64url"))?;
        if raw.len() <= 32 {
            return Err(ProtoError::Token("too short"));
        }
        let (payload, sig) = raw.split_at(raw.len() - 32);
        self.mac(payload)
            .verify_slice(sig)
            .map_err(|_| ProtoError::Token("bad signature"))?;
        let payload: TokenPayload = serde_json::from_slice(payload).map_err(|_| ProtoError::Token("bad payload"))?;
        let key = self.derive_key(&payload.salt, id);
        Ok((payload, key))
    }
}

/// Six lowercase hex characters from three random bytes, as tokenlib salts are.
pub fn random_salt() -> String {
    let mut b = [0u8; 3];
    rand::thread_rng().fill_bytes(&mut b);
    data_encoding::HEXLOWER.encode(&b)
}

/// `hashed_fxa_uid`: the first 32 hex characters of HMAC-SHA256(secret, fxa_uid) (T10-08x),
/// where the secret is the tokenserver's `fxa_metrics_hash_secret`.
pub fn metrics_hash(secret: &str, value: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(value.as_bytes());
    let hex = data_encoding::HEXLOWER.encode(&mac.finalize().into_bytes());
    hex[..32].to_string()
}

/// SHA-256 helper for callers that only need a digest.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(uid: u64) -> TokenPayload {
        TokenPayload {
            node: "http://localhost:8000".into(),
            fxa_kid: Some("0000000001234-qqo".into()),
            fxa_uid: Some("abc".into()),
            hashed_device_id: None,
            hashed_fxa_uid: None,
            expires: 2_000_000_000.0,
            uid,
            tokenserver_origin: Some("rust".into()),
            salt: "a1b2c3".into(),
        }
    }

    #[test]
    fn t10_093_mint_and_verify_round_trip() {
        let signer = TokenSigner::new("secret");
        let creds = signer.mint(&payload(42));
        let (p, key) = signer.verify(&creds.id).unwrap();
        assert_eq!(p.uid, 42);
        assert_eq!(key, creds.key);
        assert_eq!(key.len(), 44);
        assert!(TokenSigner::new("other").verify(&creds.id).is_err());
        let mut tampered = creds.id.clone().into_bytes();
        tampered[5] ^= 1;
        assert!(signer.verify(std::str::from_utf8(&tampered).unwrap()).is_err());
        assert!(signer.verify("AAAA").is_err());
        assert!(signer.verify("!!!").is_err());
    }

    /// A token as Python's tokenlib writes it (json.dumps spacing, float expires) verifies (T10-092).
    #[test]
    fn t10_092_python_style_payload() {
        let signer = TokenSigner::new("secret");
        let body = br#"{"uid": 7, "node": "http://x", "expires": 1700000000.5, "salt": "abcdef", "extra": [1]}"#;
        let sig = signer.mac(body).finalize().into_bytes();
        let mut raw = body.to_vec();
        raw.extend_from_slice(&sig);
        let id = BASE64URL.encode(&raw);
        let (p, key) = signer.verify(&id).unwrap();
        assert_eq!(p.uid, 7);
        assert_eq!(key, signer.derive_key("abcdef", &id));
    }

    /// A token and key computed by an independent implementation of tokenlib (Python's
    /// hmac/hashlib, json.dumps): the Rust side must verify it and derive the same key.
    #[test]
    fn t10_094_cross_implementation_vector() {
        let id = "eyJ1aWQiOiA0MiwgIm5vZGUiOiAiaHR0cHM6Ly9leGFtcGxlLmNvbSIsICJleHBpcmVzIjogMTcwMDAwMDAwMC4wLCAic2FsdCI6ICJhYmMxMjMifW_yJZ4kEBqUIIH4ReMBIWpZmlAzZitlKHGHBwYwdQXl";
        let (payload, key) = TokenSigner::new("Ted Koppel is a robot").verify(id).unwrap();
        assert_eq!(
            (payload.uid, payload.node.as_str(), payload.salt.as_str()),
            (42, "https://example.com", "abc123")
        );
        assert_eq!(key, "9ZtIyPkWiRMH2Y2wpj9bF59y1IqxU5LNGx_oRwwL8HM=");
    }

    /// Computed check from the spec: secret "", uid "test123" (T10-08x).
    #[test]
    fn t10_080_metrics_hash_vector() {
        assert_eq!(metrics_hash("", "test123"), "4d00ecae64b98dd7dc7dea68d0dd615d");
    }
}
