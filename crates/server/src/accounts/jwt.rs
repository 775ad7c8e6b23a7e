//! The access tokens Syncstead's accounts issue: RS256 JWTs (`typ: at+jwt`) as Mozilla's
//! are, signed with a key made at first start and kept in the data directory. The token
//! server checks its own issuer's in-process; `/v1/jwks` serves the public key to token
//! servers elsewhere.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey, EncodeRsaPublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not an RSA private key in PKCS#1 PEM: {reason}")]
    Format { path: String, reason: String },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub client_id: String,
    pub scope: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    #[serde(rename = "fxa-generation")]
    pub generation: i64,
}

pub struct Issuer {
    pub issuer: String,
    pub kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    jwk: serde_json::Value,
}

const KEY_BITS: usize = 2048;

impl Issuer {
    /// Loads the signing key from `path`, or makes one there (readable by the owner only).
    pub fn load_or_create(path: &Path, issuer: String) -> Result<Self, KeyError> {
        let shown = path.display().to_string();
        let io = |source| KeyError::Io {
            path: shown.clone(),
            source,
        };
        let key = match std::fs::read_to_string(path) {
            Ok(pem) => RsaPrivateKey::from_pkcs1_pem(&pem).map_err(|e| KeyError::Format {
                path: shown.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = RsaPrivateKey::new(&mut rand::rngs::OsRng, KEY_BITS).map_err(|e| KeyError::Format {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?;
                let pem = key.to_pkcs1_pem(LineEnding::LF).map_err(|e| KeyError::Format {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?;
                write_private(path, pem.as_bytes()).map_err(io)?;
                tracing::info!(path = %shown, "made the accounts' token-signing key");
                key
            }
            Err(e) => return Err(io(e)),
        };
        Self::from_key(&key, issuer).map_err(|reason| KeyError::Format { path: shown, reason })
    }

    fn from_key(key: &RsaPrivateKey, issuer: String) -> Result<Self, String> {
        let private_pem = key.to_pkcs1_pem(LineEnding::LF).map_err(|e| e.to_string())?;
        let public = key.to_public_key();
        let public_pem = public.to_pkcs1_pem(LineEnding::LF).map_err(|e| e.to_string())?;
        let b64 = |v: &[u8]| data_encoding::BASE64URL_NOPAD.encode(v);
        let n = public.n().to_bytes_be();
        // The key id names the key: a new key (a restored data directory elsewhere) is told apart.
        let kid = format!("syncstead-{}", &b64(&super::onepw::sha256(&n))[..16]);
        let jwk = serde_json::json!({
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "kid": kid,
            "n": b64(&n),
            "e": b64(&public.e().to_bytes_be()),
        });
        Ok(Issuer {
            issuer,
            kid,
            encoding: EncodingKey::from_rsa_pem(private_pem.as_bytes()).map_err(|e| e.to_string())?,
            decoding: DecodingKey::from_rsa_pem(public_pem.as_bytes()).map_err(|e| e.to_string())?,
            jwk,
        })
    }

    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.jwk] })
    }

    pub fn sign(&self, claims: &AccessClaims) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.typ = Some("at+jwt".into());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("RS256 signs any claims")
    }

    /// Whether a token names this issuer's key: only those are checked here.
    pub fn is_ours(&self, token: &str) -> bool {
        jsonwebtoken::decode_header(token).is_ok_and(|h| h.kid.as_deref() == Some(self.kid.as_str()))
    }

    /// Signature, expiry, issuer and audience.
    pub fn verify(&self, token: &str, audience: &str) -> Option<AccessClaims> {
        let mut v = Validation::new(Algorithm::RS256);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[audience]);
        v.leeway = 0;
        jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &v)
            .ok()
            .map(|d| d.claims)
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
