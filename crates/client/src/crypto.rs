//! Storage format 5: key bundles and the encrypted record envelope
//! (client-formats.md §2 and §3).

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use data_encoding::{BASE32, BASE64, BASE64URL_NOPAD, HEXLOWER, HEXLOWER_PERMISSIVE};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;
type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The HMAC does not match: the record was tampered with or uses another key.
    #[error("the record's HMAC does not match: wrong key or tampered record")]
    HmacMismatch,
    #[error("not an encrypted record: {0}")]
    Malformed(&'static str),
    #[error("invalid key material: {0}")]
    BadKey(&'static str),
}

/// An encryption key and an HMAC key, 32 bytes each.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyBundle {
    enc: [u8; 32],
    hmac: [u8; 32],
}

impl std::fmt::Debug for KeyBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyBundle(<redacted>)")
    }
}

/// The encrypted payload of a BSO (CF-030).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub ciphertext: String,
    #[serde(rename = "IV")]
    pub iv: String,
    pub hmac: String,
}

const SYNC_1_1_INFO: &[u8] = b"Sync-AES_256_CBC-HMAC256";
const OLDSYNC_INFO: &[u8] = b"identity.mozilla.com/picl/v1/oldsync";

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

impl KeyBundle {
    pub fn new(enc: [u8; 32], hmac: [u8; 32]) -> Self {
        KeyBundle { enc, hmac }
    }

    /// Random bulk keys, as a client generates for `crypto/keys`.
    pub fn random() -> Self {
        let mut enc = [0u8; 32];
        let mut hmac = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut enc);
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut hmac);
        KeyBundle { enc, hmac }
    }

    /// From the two base64 strings of a `crypto/keys` entry.
    pub fn from_base64(enc: &str, hmac: &str) -> Result<Self, CryptoError> {
        let decode = |s: &str| -> Result<[u8; 32], CryptoError> {
            BASE64
                .decode(s.as_bytes())
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or(CryptoError::BadKey("keys are 32 bytes of base64"))
        };
        Ok(KeyBundle {
            enc: decode(enc)?,
            hmac: decode(hmac)?,
        })
    }

    pub fn to_base64(&self) -> [String; 2] {
        [BASE64.encode(&self.enc), BASE64.encode(&self.hmac)]
    }

    /// Sync 1.1: HKDF-Expand with the Sync Key as PRK and the username in the info (CF-012).
    pub fn from_sync_key(sync_key: &[u8; 16], username: &str) -> Self {
        let enc = hmac_sha256(sync_key, &[SYNC_1_1_INFO, username.as_bytes(), &[1]]);
        let hmac = hmac_sha256(sync_key, &[&enc, SYNC_1_1_INFO, username.as_bytes(), &[2]]);
        KeyBundle { enc, hmac }
    }

    /// Sync 1.5: the 64-byte kSync scoped key, split 32/32 (CF-021).
    pub fn from_ksync(ksync: &[u8]) -> Result<Self, CryptoError> {
        if ksync.len() != 64 {
            return Err(CryptoError::BadKey("kSync is 64 bytes"));
        }
        let mut enc = [0u8; 32];
        let mut hmac = [0u8; 32];
        enc.copy_from_slice(&ksync[..32]);
        hmac.copy_from_slice(&ksync[32..]);
        Ok(KeyBundle { enc, hmac })
    }

    /// Encrypts a cleartext with a fresh random IV.
    pub fn encrypt(&self, cleartext: &[u8]) -> Envelope {
        let mut iv = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut iv);
        self.encrypt_with_iv(cleartext, &iv)
    }

    /// CF-030; the HMAC is over the base64 text of the ciphertext, written as lowercase hex.
    pub fn encrypt_with_iv(&self, cleartext: &[u8], iv: &[u8; 16]) -> Envelope {
        let ct = Aes256CbcEnc::new(&self.enc.into(), iv.into()).encrypt_padded_vec_mut::<Pkcs7>(cleartext);
        let ciphertext = BASE64.encode(&ct);
        let hmac = HEXLOWER.encode(&hmac_sha256(&self.hmac, &[ciphertext.as_bytes()]));
        Envelope {
            ciphertext,
            iv: BASE64.encode(iv),
            hmac,
        }
    }

    /// CF-031: the HMAC is checked, in constant time, before anything is decrypted.
    pub fn decrypt(&self, envelope: &Envelope) -> Result<Vec<u8>, CryptoError> {
        let given = HEXLOWER_PERMISSIVE
            .decode(envelope.hmac.as_bytes())
            .map_err(|_| CryptoError::Malformed("hmac is not hex"))?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.hmac).expect("HMAC takes any key length");
        mac.update(envelope.ciphertext.as_bytes());
        mac.verify_slice(&given).map_err(|_| CryptoError::HmacMismatch)?;
        let iv: [u8; 16] = BASE64
            .decode(envelope.iv.as_bytes())
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(CryptoError::Malformed("IV is not 16 bytes of base64"))?;
        let ct = BASE64
            .decode(envelope.ciphertext.as_bytes())
            .map_err(|_| CryptoError::Malformed("ciphertext is not base64"))?;
        Aes256CbcDec::new(&self.enc.into(), &iv.into())
            .decrypt_padded_vec_mut::<Pkcs7>(&ct)
            .map_err(|_| CryptoError::Malformed("bad padding"))
    }

    /// Encrypts a JSON cleartext into a BSO payload string.
    pub fn seal(&self, cleartext: &serde_json::Value) -> String {
        serde_json::to_string(&self.encrypt(cleartext.to_string().as_bytes())).expect("envelopes serialise")
    }

    /// Decrypts a BSO payload string into its JSON cleartext.
    pub fn open(&self, payload: &str) -> Result<serde_json::Value, CryptoError> {
        let envelope: Envelope =
            serde_json::from_str(payload).map_err(|_| CryptoError::Malformed("not an envelope"))?;
        let clear = self.decrypt(&envelope)?;
        serde_json::from_slice(&clear).map_err(|_| CryptoError::Malformed("cleartext is not JSON"))
    }
}

/// The Sync 1.1 Sync Key in its "friendly base32" form (CF-011): 26 characters,
/// lower case, `l`→`8`, `o`→`9`; displayed with dashes after characters 1, 6, 11, 16, 21.
pub fn friendly_sync_key(key: &[u8; 16]) -> String {
    let b32 = BASE32.encode(key);
    let s: String = b32
        .trim_end_matches('=')
        .to_ascii_lowercase()
        .chars()
        .map(|c| match c {
            'l' => '8',
            'o' => '9',
            c => c,
        })
        .collect();
    let mut out = String::with_capacity(31);
    for (i, c) in s.chars().enumerate() {
        if [1, 6, 11, 16, 21].contains(&i) {
            out.push('-');
        }
        out.push(c);
    }
    out
}

/// Parses a Sync Key as users type it (with or without dashes, any case).
pub fn parse_sync_key(text: &str) -> Result<[u8; 16], CryptoError> {
    let mut s: String = text
        .chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .map(|c| match c.to_ascii_uppercase() {
            '8' => 'L',
            '9' => 'O',
            c => c,
        })
        .collect();
    if s.len() != 26 {
        return Err(CryptoError::BadKey("a Sync Key has 26 characters"));
    }
    while !s.len().is_multiple_of(8) {
        s.push('=');
    }
    BASE32
        .decode(s.as_bytes())
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or(CryptoError::BadKey("not a Sync Key"))
}

/// What a Sync 1.5 client derives from the account's kB (CF-021, CF-022).
#[derive(Clone)]
pub struct SyncKeys {
    pub ksync: [u8; 64],
    /// The first 16 bytes of SHA-256(kB).
    pub client_state: [u8; 16],
}

impl SyncKeys {
    pub fn from_kb(kb: &[u8; 32]) -> Self {
        let mut ksync = [0u8; 64];
        Hkdf::<Sha256>::new(Some(&[0u8; 32]), kb)
            .expand(OLDSYNC_INFO, &mut ksync)
            .expect("64 bytes is a valid HKDF-SHA256 length");
        let digest = Sha256::digest(kb);
        let mut client_state = [0u8; 16];
        client_state.copy_from_slice(&digest[..16]);
        SyncKeys { ksync, client_state }
    }

    pub fn bundle(&self) -> KeyBundle {
        KeyBundle::from_ksync(&self.ksync).expect("kSync is 64 bytes")
    }

    /// `X-Client-State`.
    pub fn client_state_hex(&self) -> String {
        HEXLOWER.encode(&self.client_state)
    }

    /// `X-KeyID`: `<keysChangedAt>-<base64url(client state)>`.
    pub fn key_id(&self, keys_changed_at: i64) -> String {
        format!("{keys_changed_at:013}-{}", BASE64URL_NOPAD.encode(&self.client_state))
    }

    /// The scoped key's `k`: base64url of kSync.
    pub fn scoped_key(&self) -> String {
        BASE64URL_NOPAD.encode(&self.ksync)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex32(s: &str) -> [u8; 32] {
        HEXLOWER.decode(s.as_bytes()).unwrap().try_into().unwrap()
    }

    #[test]
    fn cf_011_friendly_sync_key() {
        let key: [u8; 16] = HEXLOWER
            .decode(b"c71aa7cbd8b82a8ff6eda55c39479fd2")
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(friendly_sync_key(&key), "y-4nkps-6yxav-i75xn-uv9ds-r472i");
        assert_eq!(parse_sync_key("y-4nkps-6yxav-i75xn-uv9ds-r472i").unwrap(), key);
        assert_eq!(parse_sync_key("Y4NKPS6YXAVI75XNUV9DSR472I").unwrap(), key);
        assert!(parse_sync_key("y-4nkps").is_err());
    }

    #[test]
    fn cf_012_sync_key_bundle() {
        let key: [u8; 16] = HEXLOWER
            .decode(b"c71aa7cbd8b82a8ff6eda55c39479fd2")
            .unwrap()
            .try_into()
            .unwrap();
        let doc = KeyBundle::from_sync_key(&key, "johndoe@example.com");
        assert_eq!(
            doc.enc,
            hex32("8d0765430ea0d9dbd53c536c6c5c4cb639c093075ef2bd77cd30cf485138b905")
        );
        assert_eq!(
            doc.hmac,
            hex32("bf9e48ac50a2fcc400ae4d30a58dc6a83a7720c32f58c60fd9d02db16e406216")
        );
        let real = KeyBundle::from_sync_key(&key, "v64aw4knp6ittxnarcpmoi7smokoazsr");
        assert_eq!(
            real.to_base64(),
            [
                "0dPKQI/0czYElRq/wCWvUia3le90iBtT8l7nrDNL294=".to_string(),
                "Jx28GYIGnWsbNRZwBGLYOaOV5EHxdCmm3i032yaVwHI=".to_string()
            ]
        );
    }

    #[test]
    fn cf_021_cf_022_ksync_and_key_id() {
        let keys = SyncKeys::from_kb(&hex32(
            "2ee722fdd8ccaa721bdeb2d1b76560efef705b04349d9357c3e592cf4906e075",
        ));
        assert_eq!(
            keys.scoped_key(),
            "fwM5VZu0Spf5XcFRZYX2zk6MrqZP7zvovCBcvuKwgYMif3hz98FHmIVa3qjKjrW0J244Zj-P5oWaOcQbvypmpw"
        );
        assert_eq!(keys.key_id(1_510_726_317_123), "1510726317123-BAik7hEOdpGnPZnPBSdaTg");
        assert_eq!(keys.client_state_hex(), "0408a4ee110e7691a73d99cf05275a4e");
        assert_eq!(
            keys.bundle().to_base64(),
            [
                "fwM5VZu0Spf5XcFRZYX2zk6MrqZP7zvovCBcvuKwgYM=".to_string(),
                "In94c/fBR5iFWt6oyo61tCduOGY/j+aFmjnEG78qZqc=".to_string()
            ]
        );
        let real = SyncKeys::from_kb(&hex32(
            "85c4f8c1d8e3e2186824c127af786891dd03c6e05b1b45f28f7181211bf2affb",
        ));
        assert_eq!(HEXLOWER.encode(&real.ksync), "d63eb2610f1e5edc21b37fed22b93b0f9ea379840fb5c3c5eb95991b9b3bfab69cbabfda0762bdf0b27431d81960c8cf5dab7d482901213a5a1b003eb0081ed0");
        assert_eq!(real.client_state_hex(), "518fef27c6bbc0220aab0f00b1a37308");
    }

    #[test]
    fn cf_030_doc_vector() {
        let keys = KeyBundle::new(
            hex32("d3af449d2dc4b432b8cb5b59d40c8a5fe53b584b16469f5b44828b756ffb6a81"),
            hex32("2c5d98092d500a048d09fd01090bd0d3a4861fc8ea2438bd74a8f43be6f47f02"),
        );
        let iv: [u8; 16] = HEXLOWER
            .decode(b"375a12d6de4ef26b735f6fccfbafff2d")
            .unwrap()
            .try_into()
            .unwrap();
        let env = keys.encrypt_with_iv(b"SECRET MESSAGE", &iv);
        assert_eq!(env.ciphertext, "wcgqzENt5iXt9/7KPJ3rTA==");
        assert_eq!(env.iv, "N1oS1t5O8mtzX2/M+6//LQ==");
        assert_eq!(
            env.hmac,
            "b5d1479ae2019663d6572b8e8a734e5f06c1602a0cd0becb87ca81501a08fa55"
        );
        assert_eq!(
            serde_json::to_string(&env).unwrap(),
            r#"{"ciphertext":"wcgqzENt5iXt9/7KPJ3rTA==","IV":"N1oS1t5O8mtzX2/M+6//LQ==","hmac":"b5d1479ae2019663d6572b8e8a734e5f06c1602a0cd0becb87ca81501a08fa55"}"#
        );
        assert_eq!(keys.decrypt(&env).unwrap(), b"SECRET MESSAGE");
    }

    #[test]
    fn cf_030_bookmark_vector() {
        let enc: [u8; 32] = std::array::from_fn(|i| i as u8);
        let hmac: [u8; 32] = std::array::from_fn(|i| 32 + i as u8);
        let iv: [u8; 16] = std::array::from_fn(|i| i as u8);
        let clear = br#"{"id":"abcdefghijkl","type":"bookmark","title":"Mozilla","bmkUri":"https://www.mozilla.org/","parentid":"toolbar","parentName":"Bookmarks Toolbar","tags":[],"dateAdded":1700000000000}"#;
        let env = KeyBundle::new(enc, hmac).encrypt_with_iv(clear, &iv);
        assert_eq!(env.ciphertext, "iVhjxFBt50RsoReAg47preHtM0Zy7gufQ6GpT6F7+q3A48PMjrXVJW0xotfj2k63oGrRicms5Ed/rcFYH8i9/TiMR1rf8zO1zbsn66mfQHpVfHO9KLVmx7tGe+evD31qvLXGZcLzJbaSAu5kFGZe6iguY4IotCebAPk9WkeZHU5lH2N9mJYRLQXSjVGh4KqxLiczVpwdvwwIztkjtm/FeeSbysYBKIL17oGUlrAeYgONMKmk+nfwNfRPTc9aDtno");
        assert_eq!(
            env.hmac,
            "c50fb26b88579a46895120b9aa7b51e5538cb873d009b1495357e878838953ef"
        );
    }

    #[test]
    fn cf_031_real_crypto_keys_record() {
        let keys = SyncKeys::from_kb(&hex32(
            "85c4f8c1d8e3e2186824c127af786891dd03c6e05b1b45f28f7181211bf2affb",
        ))
        .bundle();
        let env = Envelope {
            ciphertext: "PP5yNUYwJJoLcsL5o85i6RZfvanYDrwtChDD/LdKTZ8JOLubZ9DyRv3HMetSkbhL3HLvVm/FJ1Z4F2Z6IKQCxAc5dNnLsBIUUxhOHLbT0x9/jfnqZ8fLtlbkogI3ZlNvbc8iUF1aX+boe0Pv43vM0VvzxrnJDYzZ2a6jm9nbzUn0ldV9sv6vuvGHE6dANnRkZ3wA/q0q8UvjdwpzXBixAw==".into(),
            iv: "FmosM+XBNy81/9oEAgI4Uw==".into(),
            hmac: "01a816e4577c6cf3f97b66b4382d0a3e7e9178c75a3d38ed9ac8ad6397c2ecce".into(),
        };
        let clear = keys.decrypt(&env).unwrap();
        assert_eq!(
            std::str::from_utf8(&clear).unwrap(),
            r#"{"default":["/XKu2GgjfQfrqoIJOQxdBkO++atxe0xO6C3fJaeAbmg=","cVehNzSJd0YDn3JaPz7alyuOuDW1iHmCzlJMZqJdfTc="],"collections":{},"collection":"crypto","id":"keys"}"#
        );
        // Upper-case hex is accepted; a tampered ciphertext or a wrong key is refused
        // before anything is decrypted.
        let upper = Envelope {
            hmac: env.hmac.to_ascii_uppercase(),
            ..env.clone()
        };
        assert!(keys.decrypt(&upper).is_ok());
        let mut tampered = env.clone();
        tampered.ciphertext.replace_range(0..1, "Q");
        assert_eq!(keys.decrypt(&tampered), Err(CryptoError::HmacMismatch));
        assert_eq!(KeyBundle::random().decrypt(&env), Err(CryptoError::HmacMismatch));
    }

    #[test]
    fn seal_and_open_round_trip() {
        let keys = KeyBundle::random();
        let clear = serde_json::json!({"id": "abc", "histUri": "https://example.org/", "visits": []});
        let payload = keys.seal(&clear);
        assert_eq!(keys.open(&payload).unwrap(), clear);
        assert!(matches!(keys.open("{\"x\":1}"), Err(CryptoError::Malformed(_))));
    }
}
