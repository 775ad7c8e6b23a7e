//! The state every handler shares: the stores, settings, verifiers, and what changes
//! while the server runs; and how it is built from the settings (policies included).

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use syncstead_proto::token::TokenSigner;
use syncstead_store::{
    AccountStore, Backend, IdentityStore, LegacyStore, NewUserPolicy, NonceStore, Store, TokenStore,
};

use crate::auth::{HawkVerifier, NonceCache, Throttle, WeaveAuth};
use crate::config::Settings;
use crate::mail::Mailer;
use crate::serve::ServeError;
use crate::{oauth, passwords, tokenserver};

/// Process-wide state that changes while the server runs.
pub struct Runtime {
    pub(crate) maintenance: AtomicBool,
    pub(crate) inflight: AtomicUsize,
    /// Large request bodies being read or written, in KiB: see [`crate::body`].
    pub(crate) bodies: crate::body::Budget,
}

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub token_store: Arc<dyn TokenStore>,
    pub accounts: Arc<dyn AccountStore>,
    /// Syncstead's own accounts (the account server's records).
    pub identities: Arc<dyn IdentityStore>,
    pub legacy: Arc<dyn LegacyStore>,
    pub nonces: Arc<dyn NonceStore>,
    /// Weave 1.1 password checking.
    pub weave: Arc<WeaveAuth>,
    pub settings: Arc<Settings>,
    pub hawk: Arc<HawkVerifier>,
    pub runtime: Arc<Runtime>,
    /// Present when this server is a token server.
    pub tokens: Option<Arc<tokenserver::TokenService>>,
    /// Present when Syncstead's own accounts are on.
    pub account_server: Option<Arc<crate::accounts::AccountServer>>,
    /// Present when the operator's page is on (`admin_token`).
    pub admin: Option<Arc<crate::admin::Admin>>,
    /// The URL clients reach this server at, without a trailing slash.
    pub public_base: String,
}

/// Filled in by authentication so the access log can name the user.
#[derive(Clone, Default)]
pub struct RequestUid(pub Arc<OnceLock<u64>>);

impl AppState {
    pub fn new(backend: Arc<dyn Backend>, settings: Settings, public_base: String) -> Result<Self, ServeError> {
        let hawk = HawkVerifier {
            signer: TokenSigner::new(&settings.master_secret),
            public_url: settings.public_url.clone(),
            default_port: if settings.scheme() == "https" { 443 } else { 80 },
            skew: Duration::from_secs(settings.hawk_skew_seconds),
            expired_grace_seconds: settings.expired_token_grace_seconds,
            // 2 million requests in force at once (a token's hour plus its grace): the
            // memory is about 40 bytes each at most.
            nonces: NonceCache::new(2_000_000),
            nonce_secret: syncstead_proto::token::sha256(
                format!("syncstead hawk nonces\n{}", settings.master_secret).as_bytes(),
            ),
            verified: Default::default(),
        };
        let runtime = Runtime {
            maintenance: AtomicBool::new(settings.maintenance),
            inflight: AtomicUsize::new(0),
            bodies: crate::body::Budget::new(settings.limits.max_request_bytes),
        };
        let admin = settings
            .admin_token
            .clone()
            .map(|t| Arc::new(crate::admin::Admin::new(t)));
        let account_server = if settings.accounts && settings.token_server {
            Some(Arc::new(crate::accounts::AccountServer::new(
                settings.data_dir.join("accounts-signing-key.pem"),
                settings.account_registration.clone(),
                settings.max_identities,
                public_base.clone(),
            )?))
        } else {
            None
        };
        let tokens = if settings.token_server {
            Some(Arc::new(token_service(&settings, account_server.clone())?))
        } else {
            None
        };
        let hasher = passwords::Hasher::new(settings.argon2_memory_kib, settings.argon2_iterations);
        let mailer = match &settings.smtp_url {
            Some(url) => {
                let from = settings.smtp_from.clone().unwrap_or_else(|| {
                    let host = settings
                        .public_url
                        .as_ref()
                        .map_or("localhost", |p| p.host.as_str())
                        .to_string();
                    format!("Syncstead <noreply@{host}>")
                });
                Some(Mailer::new(url, &from)?)
            }
            None => None,
        };
        Ok(AppState {
            store: backend.clone(),
            token_store: backend.clone(),
            accounts: backend.clone(),
            identities: backend.clone(),
            nonces: backend.clone(),
            legacy: backend,
            weave: Arc::new(WeaveAuth::new(hasher, settings.password_hash_concurrency, mailer)),
            settings: Arc::new(settings),
            hawk: Arc::new(hawk),
            runtime: Arc::new(runtime),
            tokens,
            account_server,
            admin,
            public_base,
        })
    }
}

fn token_service(
    settings: &Settings,
    own: Option<Arc<crate::accounts::AccountServer>>,
) -> Result<tokenserver::TokenService, ServeError> {
    use crate::config::OAuthSettings;
    let verifier = match &settings.oauth {
        OAuthSettings::Local {
            jwks_url,
            public_key_file,
            issuer,
            timeout_seconds,
        } => {
            let configured = match public_key_file {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| ServeError::OAuthKeys(format!("{}: {e}", path.display())))?;
                    oauth::load_keys(&text).map_err(|e| ServeError::OAuthKeys(format!("{}: {e}", path.display())))?
                }
                None => Vec::new(),
            };
            oauth::Verifier::local(
                configured,
                jwks_url.clone(),
                issuer.clone(),
                Duration::from_secs(*timeout_seconds),
            )
        }
        OAuthSettings::Remote {
            verify_url,
            timeout_seconds,
        } => oauth::Verifier::remote(verify_url.clone(), Duration::from_secs(*timeout_seconds)),
    };
    // The metrics hash only needs to be stable and private: derive it from the master secret.
    let metrics_secret = data_encoding::HEXLOWER.encode(&syncstead_proto::token::sha256(
        format!("syncstead metrics hash\n{}", settings.master_secret).as_bytes(),
    ));
    Ok(tokenserver::TokenService {
        verifier: settings.mozilla_accounts.then_some(verifier),
        own,
        // Twenty refused tokens in 15 minutes from one address, then 30 s doubling to
        // 15 minutes: nobody's Firefox gets there, a guesser gets nowhere.
        throttle: Throttle::new(
            20,
            Duration::from_secs(900),
            Duration::from_secs(30),
            Duration::from_secs(900),
        ),
        policy: NewUserPolicy {
            open: true,
            allow_list_only: !settings.allow_new_users,
            max_users: settings.max_users,
            release_rate: 0.1,
        },
        email_domain: settings.fxa_email_domain.clone(),
        duration: settings.token_duration,
        metrics_secret,
        node_type: settings.node_type.clone(),
    })
}
