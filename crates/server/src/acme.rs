//! Certificates by ACME (RFC 8555) with TLS-ALPN-01 validation (RFC 8737): the CA
//! connects to the HTTPS port itself, so nothing but that one port has to be reachable.
//!
//! The account key, the certificate and its key live in `<data_dir>/acme/` (0600), so a
//! restart serves the certificate it has and the CA is asked again only near expiry.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::BodyExt;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType, Identifier,
    NewAccount, NewOrder, OrderStatus, RetryPolicy,
};

use crate::tls::{certified_key, Certificates, TlsError};

/// Let's Encrypt's production directory, the default `acme_directory_url`.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME: {0}")]
    Protocol(#[from] instant_acme::Error),
    #[error("ACME: the CA has no tls-alpn-01 challenge for {0}")]
    NoTlsAlpnChallenge(String),
    #[error("ACME: authorization for {0} ended {1}")]
    NotAuthorized(String, String),
    #[error("ACME: the order ended {0}")]
    Order(String),
    #[error("ACME: {path}: {source}", path = .0.display(), source = .1)]
    Io(PathBuf, #[source] std::io::Error),
    #[error("ACME: the CA file {path}: {why}", path = .0.display(), why = .1)]
    CaFile(PathBuf, String),
    #[error("ACME: the certificate it issued: {0}")]
    Certificate(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("ACME: {0}")]
    Http(#[from] reqwest::Error),
    #[error("ACME: a challenge certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// What the operator set: the names, a contact, the CA, and when to renew.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    pub domains: Vec<String>,
    pub contact: Option<String>,
    pub directory_url: String,
    /// Extra root certificate (PEM) to trust for the CA's own HTTPS: a test CA such as
    /// pebble, or a company CA.
    pub ca_file: Option<PathBuf>,
    pub dir: PathBuf,
    /// Renew when less than this part of the certificate's lifetime is left.
    pub renew_fraction: f64,
}

impl AcmeConfig {
    fn cert_path(&self) -> PathBuf {
        self.dir.join("certificate.pem")
    }
    fn key_path(&self) -> PathBuf {
        self.dir.join("certificate.key")
    }
    fn account_path(&self) -> PathBuf {
        self.dir.join("account.json")
    }
}

/// Installs the stored certificate, if it covers the names, and returns when it is due.
pub fn load_stored(config: &AcmeConfig, certs: &Certificates) -> Option<SystemTime> {
    let (cert, key) = (config.cert_path(), config.key_path());
    let chain = std::fs::read(&cert).ok()?;
    let secret = std::fs::read(&key).ok()?;
    let validity = validity(&chain).ok()?;
    if !covers(&chain, &config.domains) {
        tracing::info!("the stored certificate does not cover acme_domains; ordering a new one");
        return None;
    }
    match certified_key(&chain, &secret, (&cert, &key)) {
        Ok(k) => {
            certs.install(k);
            Some(validity.due(config.renew_fraction))
        }
        Err(e) => {
            tracing::warn!(error = %e, "the stored certificate is unusable; ordering a new one");
            None
        }
    }
}

/// Keeps a certificate in place: orders one now if there is none (`due` is `None`: see
/// [`load_stored`], called before the listener serves) or it is due, then sleeps until it
/// is due again. Failures are retried after a pause that grows to an hour.
pub async fn maintain(config: AcmeConfig, certs: Arc<Certificates>, mut due: Option<SystemTime>) {
    let mut pause = Duration::from_secs(10);
    loop {
        if let Some(at) = due {
            let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
            // Wake at least hourly: a clock that jumps must not skip a renewal.
            tokio::time::sleep(wait.min(Duration::from_secs(3600))).await;
            if SystemTime::now() < at {
                continue;
            }
        }
        match obtain(&config, &certs).await {
            Ok(next) => {
                pause = Duration::from_secs(10);
                due = Some(next);
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?pause, "no certificate from the ACME CA");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(3600));
            }
        }
    }
}

/// One order, start to end: returns when the new certificate is due for renewal.
async fn obtain(config: &AcmeConfig, certs: &Certificates) -> Result<SystemTime, AcmeError> {
    let account = account(config).await?;
    let identifiers: Vec<Identifier> = config.domains.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut answered = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz?;
        let name = authz.identifier().to_string();
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(AcmeError::NotAuthorized(name, format!("{other:?}"))),
        }
        let mut challenge = authz
            .challenge(ChallengeType::TlsAlpn01)
            .ok_or_else(|| AcmeError::NoTlsAlpnChallenge(name.clone()))?;
        let digest = challenge.key_authorization().digest();
        certs.set_challenge(&name, Some(challenge_certificate(&name, digest.as_ref())?));
        answered.push(name);
        challenge.set_ready().await?;
    }
    let outcome = finish(&mut order).await;
    for name in &answered {
        certs.set_challenge(name, None);
    }
    let (chain, key) = outcome?;
    let validity = validity(chain.as_bytes())?;
    let (cert_path, key_path) = (config.cert_path(), config.key_path());
    let certified = certified_key(chain.as_bytes(), key.as_bytes(), (&cert_path, &key_path))?;
    write_private(&key_path, key.as_bytes())?;
    write_private(&cert_path, chain.as_bytes())?;
    certs.install(certified);
    tracing::info!(
        domains = ?config.domains,
        valid_for_days = validity.not_after.duration_since(SystemTime::now()).unwrap_or_default().as_secs() / 86_400,
        "new TLS certificate from the ACME CA"
    );
    Ok(validity.due(config.renew_fraction))
}

async fn finish(order: &mut instant_acme::Order) -> Result<(String, String), AcmeError> {
    let retries = RetryPolicy::default().timeout(Duration::from_secs(120));
    let status = order.poll_ready(&retries).await?;
    if status != OrderStatus::Ready {
        return Err(AcmeError::Order(format!("{status:?}")));
    }
    let key = order.finalize().await?;
    let chain = order.poll_certificate(&retries).await?;
    Ok((chain, key))
}

/// The account: the stored one, or a new one (stored for next time).
async fn account(config: &AcmeConfig) -> Result<Account, AcmeError> {
    let builder = || -> Result<_, AcmeError> { Ok(Account::builder_with_http(Box::new(Client::new(config)?))) };
    let path = config.account_path();
    if let Ok(text) = std::fs::read(&path) {
        if let Ok(credentials) = serde_json::from_slice::<AccountCredentials>(&text) {
            match builder()?.from_credentials(credentials).await {
                Ok(a) => return Ok(a),
                Err(e) => tracing::warn!(error = %e, "the stored ACME account was refused; making a new one"),
            }
        }
    }
    let contact: Vec<String> = config.contact.iter().map(|c| format!("mailto:{c}")).collect();
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            config.directory_url.clone(),
            None,
        )
        .await?;
    let text = serde_json::to_vec(&credentials).map_err(|e| AcmeError::Certificate(e.to_string()))?;
    write_private(&path, &text)?;
    Ok(account)
}

/// The self-signed certificate that proves control of `name` (RFC 8737 §3).
fn challenge_certificate(name: &str, digest: &[u8]) -> Result<rustls::sign::CertifiedKey, AcmeError> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = rustls::crypto::ring::sign::any_supported_type(&der).map_err(TlsError::BadKey)?;
    Ok(rustls::sign::CertifiedKey::new(vec![cert.der().clone()], signing))
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), AcmeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e| AcmeError::Io(path.to_path_buf(), e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(data).and_then(|()| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// A certificate's validity period.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// When to renew: once less than `fraction` of the lifetime is left.
    pub fn due(&self, fraction: f64) -> SystemTime {
        let life = self.not_after.duration_since(self.not_before).unwrap_or_default();
        self.not_after - life.mul_f64(fraction.clamp(0.0, 1.0))
    }
}

fn leaf(chain_pem: &[u8]) -> Result<Vec<u8>, AcmeError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(chain_pem)
        .next()
        .and_then(Result::ok)
        .map(|c| c.to_vec())
        .ok_or_else(|| AcmeError::Certificate("no certificate in the PEM".into()))
}

/// The validity of the first certificate of a PEM chain.
pub fn validity(chain_pem: &[u8]) -> Result<Validity, AcmeError> {
    let der = leaf(chain_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| AcmeError::Certificate(e.to_string()))?;
    let at = |t: x509_parser::time::ASN1Time| SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64);
    Ok(Validity {
        not_before: at(cert.validity().not_before),
        not_after: at(cert.validity().not_after),
    })
}

/// Whether the first certificate names every one of `domains`.
pub fn covers(chain_pem: &[u8], domains: &[String]) -> bool {
    let Ok(der) = leaf(chain_pem) else { return false };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
        return false;
    };
    let names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    domains.iter().all(|d| names.contains(&d.to_ascii_lowercase()))
}

/// The ACME client's HTTP: reqwest, which the server already uses (one TLS stack), with
/// the optional extra root for test or private CAs.
struct Client(reqwest::Client);

impl Client {
    fn new(config: &AcmeConfig) -> Result<Self, AcmeError> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("syncstead/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(30));
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca).map_err(|e| AcmeError::Io(ca.clone(), e))?;
            let root =
                reqwest::Certificate::from_pem(&pem).map_err(|e| AcmeError::CaFile(ca.clone(), e.to_string()))?;
            builder = builder.add_root_certificate(root);
        }
        Ok(Client(builder.build()?))
    }
}

impl instant_acme::HttpClient for Client {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let client = self.0.clone();
        Box::pin(async move {
            let other = |e: Box<dyn std::error::Error + Send + Sync>| instant_acme::Error::Other(e);
            let (parts, body) = req.into_parts();
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(never) => match never {},
            };
            let req =
                reqwest::Request::try_from(http::Request::from_parts(parts, body)).map_err(|e| other(Box::new(e)))?;
            let rsp = client.execute(req).await.map_err(|e| other(Box::new(e)))?;
            Ok(BytesResponse::from(http::Response::<reqwest::Body>::from(rsp)))
        })
    }
}
