//! Verification of Mozilla-accounts OAuth access tokens (tokenserver.md §3): locally, as
//! RS256 JWTs against configured or fetched public keys, or remotely through FxA's verify
//! endpoint.

use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use syncstead_proto::tokenserver::{grants_oldsync, OLDSYNC_SCOPE};

/// Who the token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub fxa_uid: String,
    /// `fxa-generation`; `None` when absent, null or 0 (T10-023).
    pub generation: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    /// The token is not valid for Sync: 401 `invalid-credentials`.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    /// The verifier could not reach Mozilla accounts: 503.
    #[error("verifier unavailable: {0}")]
    Unavailable(String),
}

#[derive(Deserialize)]
struct AccessClaims {
    sub: String,
    #[serde(default)]
    scope: String,
    #[serde(default, rename = "fxa-generation")]
    generation: Option<i64>,
}

/// Keys fetched from a JWKS URL, with when they were fetched.
pub struct Fetched {
    keys: Vec<(Option<String>, DecodingKey)>,
    at: Option<Instant>,
    /// The last failed fetch: none is tried again for [`FAILED_FETCH_PAUSE`].
    failed: Option<Instant>,
}

impl Fetched {
    fn wants_fetch(&self, kid: &Option<String>) -> bool {
        let expired = self.at.is_none_or(|at| at.elapsed() > JWKS_TTL);
        let known = self.keys.iter().any(|(k, _)| k.is_some() && k == kid);
        let may_refetch = self.at.is_none_or(|at| at.elapsed() > REFETCH_INTERVAL);
        (expired || (!known && may_refetch)) && self.failed.is_none_or(|t| t.elapsed() > FAILED_FETCH_PAUSE)
    }
}

pub enum Verifier {
    Local {
        /// Keys from `oauth_public_key_file`.
        configured: Vec<(Option<String>, DecodingKey)>,
        jwks_url: Option<String>,
        fetched: RwLock<Fetched>,
        /// One fetch at a time: the others wait for it and use what it brought.
        fetching: tokio::sync::Mutex<()>,
        issuer: Option<String>,
        http: reqwest::Client,
    },
    Remote {
        verify_url: String,
        http: reqwest::Client,
    },
}

/// Refetch a JWKS for an unknown key id at most this often.
const REFETCH_INTERVAL: Duration = Duration::from_secs(60);
/// After a failed JWKS fetch, tokens that need it are answered 503 for this long without
/// asking again: a failing endpoint is not hit once per request.
const FAILED_FETCH_PAUSE: Duration = Duration::from_secs(10);
/// Keys fetched from a JWKS URL are used for this long.
const JWKS_TTL: Duration = Duration::from_secs(3600);

/// Reads a public key file: a PEM RSA public key, a JWK, or a JWKS.
pub fn load_keys(text: &str) -> Result<Vec<(Option<String>, DecodingKey)>, String> {
    let trimmed = text.trim();
    if trimmed.starts_with("-----BEGIN") {
        let key = DecodingKey::from_rsa_pem(trimmed.as_bytes()).map_err(|e| e.to_string())?;
        return Ok(vec![(None, key)]);
    }
    if let Ok(set) = serde_json::from_str::<JwkSet>(trimmed) {
        return keys_from_set(&set);
    }
    let jwk: Jwk = serde_json::from_str(trimmed).map_err(|e| format!("not a PEM key, JWK or JWKS: {e}"))?;
    Ok(vec![(
        jwk.common.key_id.clone(),
        DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?,
    )])
}

fn keys_from_set(set: &JwkSet) -> Result<Vec<(Option<String>, DecodingKey)>, String> {
    set.keys
        .iter()
        .map(|jwk| {
            Ok((
                jwk.common.key_id.clone(),
                DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?,
            ))
        })
        .collect()
}

impl Verifier {
    pub fn local(
        configured: Vec<(Option<String>, DecodingKey)>,
        jwks_url: Option<String>,
        issuer: Option<String>,
        timeout: Duration,
    ) -> Self {
        Verifier::Local {
            configured,
            jwks_url,
            fetched: RwLock::new(Fetched {
                keys: Vec::new(),
                at: None,
                failed: None,
            }),
            fetching: tokio::sync::Mutex::new(()),
            issuer,
            http: http_client(timeout),
        }
    }

    pub fn remote(verify_url: String, timeout: Duration) -> Self {
        Verifier::Remote {
            verify_url,
            http: http_client(timeout),
        }
    }

    pub async fn verify(&self, token: &str) -> Result<Account, OAuthError> {
        match self {
            Verifier::Local {
                configured,
                jwks_url,
                fetched,
                fetching,
                issuer,
                http,
            } => {
                let header = jsonwebtoken::decode_header(token).map_err(|_| OAuthError::Invalid("not a JWT"))?;
                // T10-021: an FxA access token says it is one.
                let typ = header.typ.as_deref().unwrap_or("").to_ascii_lowercase();
                if typ != "at+jwt" && typ != "application/at+jwt" {
                    return Err(OAuthError::Invalid("not an access token"));
                }
                let mut validation = Validation::new(Algorithm::RS256);
                validation.leeway = 60;
                validation.validate_aud = false;
                validation.set_required_spec_claims(&["exp", "sub"]);
                if let Some(iss) = issuer {
                    validation.set_issuer(&[iss]);
                }
                let kid = header.kid.clone();
                let try_keys = |keys: &[(Option<String>, DecodingKey)]| -> Option<Result<AccessClaims, OAuthError>> {
                    let mut outcome = None;
                    for (key_id, key) in keys {
                        if kid.is_some() && key_id.is_some() && key_id != &kid {
                            continue;
                        }
                        match jsonwebtoken::decode::<AccessClaims>(token, key, &validation) {
                            Ok(data) => return Some(Ok(data.claims)),
                            Err(e) => {
                                use jsonwebtoken::errors::ErrorKind;
                                let why = match e.kind() {
                                    ErrorKind::ExpiredSignature => "expired",
                                    ErrorKind::InvalidIssuer => "wrong issuer",
                                    _ => "bad signature",
                                };
                                outcome = Some(Err(OAuthError::Invalid(why)));
                            }
                        }
                    }
                    outcome
                };
                let mut result = try_keys(configured);
                if !matches!(result, Some(Ok(_))) {
                    if let Some(url) = jwks_url {
                        if fetched.read().expect("jwks lock").wants_fetch(&kid) {
                            let _one = fetching.lock().await;
                            // Whoever fetched while this request waited may have brought the key.
                            if fetched.read().expect("jwks lock").wants_fetch(&kid) {
                                let got = fetch_jwks(http, url).await;
                                let mut f = fetched.write().expect("jwks lock");
                                match got {
                                    Ok(keys) => {
                                        f.keys = keys;
                                        f.at = Some(Instant::now());
                                        f.failed = None;
                                    }
                                    Err(e) => {
                                        f.failed = Some(Instant::now());
                                        return Err(e);
                                    }
                                }
                            }
                        }
                        let f = fetched.read().expect("jwks lock");
                        let failing = f.failed.is_some_and(|t| t.elapsed() <= FAILED_FETCH_PAUSE);
                        result = try_keys(&f.keys).or(result);
                        if failing && !matches!(result, Some(Ok(_))) {
                            return Err(OAuthError::Unavailable("the JWKS endpoint failed a moment ago".into()));
                        }
                    }
                }
                let claims = result.unwrap_or(Err(OAuthError::Invalid("no key")))?;
                if !grants_oldsync(&claims.scope) {
                    return Err(OAuthError::Invalid("scope"));
                }
                account(claims.sub, claims.generation)
            }
            Verifier::Remote { verify_url, http } => {
                let resp = http
                    .post(verify_url)
                    .json(&serde_json::json!({ "token": token }))
                    .send()
                    .await
                    .map_err(|e| OAuthError::Unavailable(e.to_string()))?;
                if resp.status().is_server_error() {
                    return Err(OAuthError::Unavailable(format!("verifier answered {}", resp.status())));
                }
                if !resp.status().is_success() {
                    return Err(OAuthError::Invalid("rejected by the verifier"));
                }
                #[derive(Deserialize)]
                struct Verified {
                    user: String,
                    #[serde(default)]
                    scope: Vec<String>,
                    #[serde(default)]
                    generation: Option<i64>,
                }
                let v: Verified = resp
                    .json()
                    .await
                    .map_err(|_| OAuthError::Invalid("unreadable verifier answer"))?;
                if !v.scope.iter().any(|s| s == OLDSYNC_SCOPE) {
                    return Err(OAuthError::Invalid("scope"));
                }
                account(v.user, v.generation)
            }
        }
    }
}

fn account(sub: String, generation: Option<i64>) -> Result<Account, OAuthError> {
    // FxA uids are 32 hex characters; anything else cannot name an account here.
    if sub.is_empty() || sub.len() > 64 || !sub.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(OAuthError::Invalid("bad subject"));
    }
    Ok(Account {
        fxa_uid: sub,
        generation: generation.filter(|g| *g != 0),
    })
}

fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder().timeout(timeout).build().unwrap_or_default()
}

async fn fetch_jwks(http: &reqwest::Client, url: &str) -> Result<Vec<(Option<String>, DecodingKey)>, OAuthError> {
    let resp = http
        .get(url)
        .send()
        .await
        .map_err(|e| OAuthError::Unavailable(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(OAuthError::Unavailable(format!("JWKS answered {}", resp.status())));
    }
    let set: JwkSet = resp.json().await.map_err(|e| OAuthError::Unavailable(e.to_string()))?;
    keys_from_set(&set).map_err(OAuthError::Unavailable)
}
