//! HTTPS in the binary: the certificate the listener presents, from PEM files (reloaded
//! when they change or on SIGHUP) or from ACME ([`crate::acme`]).
//!
//! Firefox's account pages need a secure context off loopback, so a self-hoster must be
//! able to serve HTTPS without a reverse proxy. rustls with the ring provider, which the
//! HTTP client already brings, keeps one TLS stack in the binary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}", path = .0.display(), source = .1)]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{}: no PEM certificate in it", .0.display())]
    NoCertificate(PathBuf),
    #[error("{}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1)", .0.display())]
    NoKey(PathBuf),
    #[error("the private key cannot be used: {0}")]
    BadKey(#[source] rustls::Error),
    #[error("the certificate does not match the private key")]
    KeyMismatch,
    #[error("TLS set-up: {0}")]
    Config(#[source] rustls::Error),
}

/// The certificates the listener can present: the server's own, and the short-lived
/// ones that answer a TLS-ALPN-01 challenge for a name while an ACME order is open.
#[derive(Debug, Default)]
pub struct Certificates {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl Certificates {
    pub fn install(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(key));
    }

    pub fn has_certificate(&self) -> bool {
        self.current.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    pub fn set_challenge(&self, name: &str, key: Option<CertifiedKey>) {
        let mut map = self.challenges.write().unwrap_or_else(|p| p.into_inner());
        match key {
            Some(k) => map.insert(name.to_ascii_lowercase(), Arc::new(k)),
            None => map.remove(&name.to_ascii_lowercase()),
        };
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if acme {
            let name = hello.server_name()?.to_ascii_lowercase();
            return self
                .challenges
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&name)
                .cloned();
        }
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The rustls configuration of the HTTPS listener: HTTP/1.1 only (Sync clients speak
/// it), and the ACME ALPN protocol so that validation connections can be told apart.
pub fn server_config(certs: Arc<Certificates>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// A certificate chain and its key, from PEM text.
pub fn certified_key(chain_pem: &[u8], key_pem: &[u8], names: (&Path, &Path)) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(names.0.to_path_buf()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsError::NoKey(names.1.to_path_buf()))?;
    let signing = any_supported_type(&key).map_err(TlsError::BadKey)?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        // Keys whose public half rustls cannot derive are taken as they are.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(_) => Err(TlsError::KeyMismatch),
    }
}

/// Reads a certificate chain and key from PEM files.
pub fn load_files(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = std::fs::read(cert).map_err(|e| TlsError::Read(cert.to_path_buf(), e))?;
    let secret = std::fs::read(key).map_err(|e| TlsError::Read(key.to_path_buf(), e))?;
    certified_key(&chain, &secret, (cert, key))
}

fn modified(paths: &[&Path]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// Reloads the certificate files when either changes (checked every `every`) or when the
/// process gets SIGHUP. A file that no longer parses is logged and the old certificate
/// kept: a renewal script writing the files in two steps never takes HTTPS down.
pub async fn watch_files(certs: Arc<Certificates>, cert: PathBuf, key: PathBuf, every: Duration) {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut seen = modified(&[&cert, &key]);
    loop {
        let signalled = tokio::select! {
            () = tokio::time::sleep(every) => false,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        let now = modified(&[&cert, &key]);
        if !signalled && now == seen {
            continue;
        }
        seen = now;
        match load_files(&cert, &key) {
            Ok(k) => {
                certs.install(k);
                tracing::info!(cert = %cert.display(), "TLS certificate reloaded");
            }
            Err(e) => tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays"),
        }
    }
}
