//! Syncstead's own account server (docs/accounts.md): what Firefox asks of Mozilla
//! accounts, so that it signs in here. Discovery, the sign-in page, onepw login and key
//! fetch, OAuth codes and tokens, the profile and devices.
//!
//! The server holds no key a user's data can be read with: kB is wrapped by the password,
//! and the Sync key reaches the browser encrypted by the page (`keys_jwe`), which the
//! server stores with the code and hands back unread.

pub mod jwt;
pub mod onepw;
mod page;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{OriginalUri, Query, State};
use axum::http::{header, HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use data_encoding::{BASE64URL_NOPAD, HEXLOWER};
use rand::RngCore;
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use syncstead_proto::tokenserver::OLDSYNC_SCOPE;
use syncstead_store::{AccountError, AuthCode, AuthToken, Credentials, Device, DeviceCommand, Identity, TokenKind};

use crate::auth::{pair_key, HawkVerifier, Throttle};
use crate::config::AccountRegistration;
use crate::error::AccountsError;
use crate::listener::ClientAddr;
use crate::passwords::HashPool;
use crate::state::AppState;

/// The token server's e-mail domain for users of these accounts, apart from Mozilla's.
pub const EMAIL_DOMAIN: &str = "accounts.syncstead";
/// Firefox desktop, Firefox for Android, Firefox for iOS: Mozilla's public client ids,
/// which the browsers send whatever server they talk to.
const CLIENTS: &[&str] = &["5882386c6d801776", "a2270f727f45f648", "1b1a3e44c54fbb58"];
const PROFILE_SCOPE: &str = "profile";
const SESSION_SCOPE: &str = "https://identity.mozilla.com/tokens/session";
/// RFC 8693: Mozilla's mobile client trades its refresh token for one with more scopes.
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Scopes a refresh token can be widened to by a token exchange (none of them carries keys).
const EXCHANGEABLE: &[&str] = &[PROFILE_SCOPE, SESSION_SCOPE];
const WEBCHANNEL_REDIRECT: &str = "urn:ietf:wg:oauth:2.0:oob:oauth-redirect-webchannel";
const KEY_FETCH_LIFETIME_MS: i64 = 10 * 60 * 1000;
const CODE_LIFETIME_MS: i64 = 5 * 60 * 1000;
type Result<T> = std::result::Result<T, AccountsError>;

pub struct AccountServer {
    /// Made on first use when the data directory has no key yet: a 2,048-bit RSA key
    /// costs a second that a server which never signs anyone in should not pay.
    issuer: std::sync::OnceLock<jwt::Issuer>,
    making_key: std::sync::Mutex<()>,
    key_path: std::path::PathBuf,
    pub registration: AccountRegistration,
    pub max_identities: Option<u64>,
    /// Failed logins of one address on one account, and of one address on any.
    pub pairs: Throttle,
    pub addresses: Throttle,
    /// Reset mails per account, so nobody can flood an inbox through the page.
    pub mails: Throttle,
    /// The origin every URL the browser is given starts with (no trailing slash).
    pub base: String,
}

impl AccountServer {
    /// Loads the signing key now if it exists (so a broken one stops the start).
    pub fn new(
        key_path: std::path::PathBuf,
        registration: AccountRegistration,
        max_identities: Option<u64>,
        base: String,
    ) -> std::result::Result<Self, jwt::KeyError> {
        let issuer = std::sync::OnceLock::new();
        if key_path.exists() {
            let _ = issuer.set(jwt::Issuer::load_or_create(&key_path, base.clone())?);
        }
        let quarter_hour = std::time::Duration::from_secs(900);
        Ok(AccountServer {
            issuer,
            making_key: std::sync::Mutex::new(()),
            key_path,
            registration,
            max_identities,
            pairs: Throttle::new(10, quarter_hour, std::time::Duration::from_secs(30), quarter_hour),
            addresses: Throttle::new(200, quarter_hour, std::time::Duration::from_secs(60), quarter_hour),
            mails: Throttle::new(
                3,
                std::time::Duration::from_secs(3600),
                std::time::Duration::from_secs(3600),
                std::time::Duration::from_secs(3600),
            ),
            base,
        })
    }

    /// The token-signing key, made on first use.
    pub fn issuer(&self) -> Result<&jwt::Issuer> {
        if let Some(i) = self.issuer.get() {
            return Ok(i);
        }
        let _one_at_a_time = self.making_key.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = self.issuer.get() {
            return Ok(i);
        }
        let made = jwt::Issuer::load_or_create(&self.key_path, self.base.clone()).map_err(|e| {
            tracing::error!(error = %e, "cannot make the accounts' signing key");
            AccountsError::Unavailable { retry_after: 60 }
        })?;
        Ok(self.issuer.get_or_init(|| made))
    }

    /// Checks an access token this server issued: signature, expiry, issuer, audience.
    /// `None` for any other token (Mozilla's, say), or before a key exists.
    pub fn verify_own(&self, token: &str) -> Option<Option<jwt::AccessClaims>> {
        let issuer = self.issuer.get()?;
        issuer.is_ours(token).then(|| issuer.verify(token, &self.base))
    }

    /// The token-server user an account's Sync data is filed under.
    pub fn sync_email(uid: &str) -> String {
        format!("{uid}@{EMAIL_DOMAIN}")
    }
}

pub fn router() -> Router<AppState> {
    let mut r = Router::new()
        .route("/.well-known/fxa-client-configuration", get(discovery))
        .route("/.well-known/openid-configuration", get(openid_configuration))
        .route("/v1/account/create", post(create))
        .route("/v1/account/login", post(login))
        .route("/v1/account/keys", get(keys))
        .route("/v1/account/scoped-key-data", post(scoped_key_data))
        .route("/v1/account/status", get(account_status).post(account_status_by_email))
        .route("/v1/account/destroy", post(account_destroy))
        .route("/v1/account/reset", post(account_reset))
        .route("/v1/password/forgot/send_code", post(forgot_send_code))
        .route("/v1/password/change/start", post(change_start))
        .route("/v1/password/change/finish", post(change_finish))
        .route("/v1/session/status", get(session_status))
        .route("/v1/session/destroy", post(session_destroy))
        .route("/v1/recovery_email/status", get(email_status))
        .route("/v1/oauth/authorization", post(authorization))
        .route("/v1/oauth/token", post(token))
        .route("/v1/oauth/destroy", post(destroy))
        .route("/v1/destroy", post(destroy))
        .route("/v1/introspect", post(introspect))
        .route("/v1/jwks", get(jwks))
        .route("/profile/v1/profile", get(profile))
        .route("/v1/account/device", post(device))
        .route("/v1/account/devices", get(devices))
        .route("/v1/account/device/destroy", post(device_destroy))
        .route("/v1/account/attached_clients", get(attached_clients))
        .route("/v1/account/devices/notify", post(|| async { Json(json!({})) }))
        .route("/v1/account/devices/invoke_command", post(invoke_command))
        .route("/v1/account/device/commands", get(commands));
    for path in page::PATHS {
        r = r.route(path, get(page::page));
    }
    r.route("/oauth/success/{client}", get(page::page))
        .route("/accounts/app.mjs", get(page::app_js))
        .route("/accounts/onepw.mjs", get(page::onepw_js))
        .route("/accounts/avatar.svg", get(page::avatar))
}

fn server(state: &AppState) -> Result<&AccountServer> {
    state.account_server.as_deref().ok_or(AccountsError::NotFound)
}

fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T> {
    let value: Value = serde_json::from_slice(body).map_err(|_| AccountsError::BadJson)?;
    serde_json::from_value(value).map_err(|_| AccountsError::BadParameter("body"))
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

fn hex32(s: &str, what: &'static str) -> Result<Vec<u8>> {
    HEXLOWER
        .decode(s.to_ascii_lowercase().as_bytes())
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or(AccountsError::BadParameter(what))
}

/// How the server keeps a secret it hands out (refresh token, OAuth code, reset code):
/// by its SHA-256, so a copy of the database does not give it away.
fn hashed_id(secret: &[u8]) -> String {
    HEXLOWER.encode(&onepw::sha256(secret))
}

/// A query-string value, percent-encoded (the OAuth state is the client's to choose).
fn encode_component(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

fn now_ms() -> i64 {
    syncstead_proto::SyncTimestamp::now().as_millis()
}

fn normalise_email(email: &str) -> Result<String> {
    let email = email.trim().to_lowercase();
    if !crate::passwords::valid_email(&email) {
        return Err(AccountsError::BadParameter("email"));
    }
    Ok(email)
}

// ---- authentication -------------------------------------------------------------------

/// The token a request is authorised by: `Hawk id=…` (its MAC checked with the token's
/// key, which Mozilla's server skips), `Bearer fxs_<hex>` / `fxk_<hex>` / `fxp_<hex>`
/// (the session form is Firefox 154+'s; the key-fetch and password-change forms are the
/// sign-in page's, which signs no Hawk), each with the token id or the token itself, or
/// for device routes `Bearer <refresh token>`.
async fn authorise(
    state: &AppState,
    method: &Method,
    uri: &OriginalUri,
    headers: &HeaderMap,
    kind: TokenKind,
) -> Result<AuthToken> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(AccountsError::InvalidToken)?;
    let store = &state.identities;
    if let Some(attrs) = auth.strip_prefix("Hawk ") {
        let hawk = crate::auth::parse_hawk_header(attrs).ok_or(AccountsError::BadSignature)?;
        let id = hawk.id.as_deref().ok_or(AccountsError::InvalidToken)?;
        let token = store.token(id, kind).await?.ok_or(AccountsError::InvalidToken)?;
        check_mac(&state.hawk, &token, &hawk, method, uri, headers)?;
        // A captured request cannot be sent again (the same rule as storage's, T10-118).
        let nonce = state.hawk.account_nonce(id, &hawk);
        state
            .hawk
            .remember(state.nonces.as_ref(), nonce)
            .await
            .map_err(|e| match e {
                crate::error::ApiError::Unauthorized(_) => AccountsError::BadSignature,
                crate::error::ApiError::Backend(e) => AccountsError::Store(e),
                _ => AccountsError::Unavailable { retry_after: 60 },
            })?;
        return live(state, token).await;
    }
    let bearer = auth.strip_prefix("Bearer ").ok_or(AccountsError::InvalidToken)?.trim();
    let prefix = match kind {
        TokenKind::Session => "fxs_",
        TokenKind::KeyFetch => "fxk_",
        TokenKind::PasswordChange => "fxp_",
        TokenKind::Refresh | TokenKind::AccountReset => "",
    };
    let token = match bearer.strip_prefix(prefix).filter(|_| !prefix.is_empty()) {
        Some(hex) => {
            let raw = hex32(hex, "authorization").map_err(|_| AccountsError::InvalidToken)?;
            let name = match kind {
                TokenKind::Session => "sessionToken",
                TokenKind::PasswordChange => "passwordChangeToken",
                _ => "keyFetchToken",
            };
            let derived = HEXLOWER.encode(&onepw::token_keys(&raw, name).id);
            match store.token(&hex.to_ascii_lowercase(), kind).await? {
                Some(t) => Some(t),
                None => store.token(&derived, kind).await?,
            }
        }
        // A refresh token authorises the device routes of Mozilla's mobile client.
        None if !bearer.contains('_') && kind == TokenKind::Session => {
            let raw = hex32(bearer, "authorization").map_err(|_| AccountsError::InvalidToken)?;
            store.token(&hashed_id(&raw), TokenKind::Refresh).await?
        }
        None => None,
    };
    live(state, token.ok_or(AccountsError::InvalidToken)?).await
}

/// A disabled or deleted account's tokens are worthless whatever they are.
async fn live(state: &AppState, token: AuthToken) -> Result<AuthToken> {
    match state.identities.identity(&token.uid).await? {
        Some(i) if !i.disabled => Ok(token),
        Some(_) => Err(AccountsError::Disabled),
        None => Err(AccountsError::InvalidToken),
    }
}

fn check_mac(
    verifier: &HawkVerifier,
    token: &AuthToken,
    hawk: &hawk::Header,
    method: &Method,
    uri: &OriginalUri,
    headers: &HeaderMap,
) -> Result<()> {
    let auth_key = token.data.split(':').next().unwrap_or("");
    let key_bytes = HEXLOWER
        .decode(auth_key.as_bytes())
        .map_err(|_| AccountsError::InvalidToken)?;
    let key = hawk::Key::new(key_bytes, hawk::DigestAlgorithm::Sha256).map_err(|_| AccountsError::InvalidToken)?;
    let path = uri.0.path_and_query().map_or("/", |p| p.as_str());
    let (host, port, target) = verifier
        .signed_target(path, headers)
        .ok_or(AccountsError::BadSignature)?;
    let request = hawk::RequestBuilder::new(method.as_str(), &host, port, &target).request();
    if request.validate_header(hawk, &key, verifier.skew) {
        Ok(())
    } else {
        Err(AccountsError::BadSignature)
    }
}

/// A request carrying a session token, by whatever scheme.
async fn session(state: &AppState, method: &Method, uri: &OriginalUri, headers: &HeaderMap) -> Result<AuthToken> {
    authorise(state, method, uri, headers, TokenKind::Session).await
}

/// The session token a request is authorised by, as an extractor: most account routes
/// take nothing else from the request head.
struct SessionAuth(AuthToken);

impl axum::extract::FromRequestParts<AppState> for SessionAuth {
    type Rejection = AccountsError;

    async fn from_request_parts(parts: &mut http::request::Parts, state: &AppState) -> Result<Self> {
        server(state)?;
        let uri = parts
            .extensions
            .get::<OriginalUri>()
            .cloned()
            .unwrap_or_else(|| OriginalUri(parts.uri.clone()));
        session(state, &parts.method, &uri, &parts.headers)
            .await
            .map(SessionAuth)
    }
}

// ---- discovery ------------------------------------------------------------------------

async fn discovery(State(state): State<AppState>) -> Result<Json<Value>> {
    let base = &server(&state)?.base;
    // Without version segments: Firefox appends `/v1` and `/1.0/sync/1.5` itself.
    Ok(Json(json!({
        "auth_server_base_url": base,
        "oauth_server_base_url": base,
        "profile_server_base_url": format!("{base}/profile"),
        "sync_tokenserver_base_url": base,
    })))
}

/// The second discovery document, which Mozilla's mobile client (Firefox for Android and
/// iOS) reads beside the first: where to send the user, and the OAuth endpoints.
async fn openid_configuration(State(state): State<AppState>) -> Result<Json<Value>> {
    let base = &server(&state)?.base;
    Ok(Json(json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/authorization"),
        "token_endpoint": format!("{base}/v1/oauth/token"),
        "userinfo_endpoint": format!("{base}/profile/v1/profile"),
        "introspection_endpoint": format!("{base}/v1/introspect"),
        "revocation_endpoint": format!("{base}/v1/destroy"),
        "jwks_uri": format!("{base}/v1/jwks"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token", "fxa-credentials", TOKEN_EXCHANGE],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": [OLDSYNC_SCOPE, PROFILE_SCOPE, SESSION_SCOPE],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    })))
}

async fn jwks(State(state): State<AppState>) -> Result<Json<Value>> {
    Ok(Json(server(&state)?.issuer()?.jwks()))
}

// ---- credentials ----------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CredentialsBody {
    email: String,
    #[serde(rename = "authPW")]
    auth_pw: String,
    #[serde(default)]
    invite_code: Option<String>,
}

#[derive(Deserialize, Default)]
struct KeysQuery {
    #[serde(default)]
    keys: Option<String>,
}

/// Runs scrypt in the password-hashing pool: its 64 MiB count against the same bound as
/// the Weave surface's Argon2.
async fn stretch(pool: &Arc<HashPool>, auth_pw: Vec<u8>, salt: Vec<u8>) -> Result<onepw::Stretched> {
    pool.run_blocking(move || onepw::Stretched::new(&auth_pw, &salt))
        .await
        .map_err(|_| AccountsError::Unavailable { retry_after: 10 })
}

/// An account's server-side record, made from `authPW`: fresh salt, kA and wrapKb.
pub async fn new_identity(pool: &Arc<HashPool>, email: String, auth_pw: Vec<u8>) -> Result<Identity> {
    let salt = random::<32>();
    let wrap_kb = random::<32>();
    let stretched = stretch(pool, auth_pw, salt.to_vec()).await?;
    let now = now_ms();
    Ok(Identity {
        uid: HEXLOWER.encode(&random::<16>()),
        email,
        auth_salt: HEXLOWER.encode(&salt),
        verify_hash: HEXLOWER.encode(&stretched.verify_hash()),
        wrap_wrap_kb: HEXLOWER.encode(&stretched.wrap(&wrap_kb)),
        ka: HEXLOWER.encode(&random::<32>()),
        keys_changed_at: now,
        created_at: now,
        disabled: false,
    })
}

/// An account reset: new credentials from `auth_pw`, a new wrapKb (so a new kB), a new
/// kA, and the keys-changed time that gives the account a fresh Sync bucket. Every device
/// is signed out.
async fn reset_keys(
    store: &dyn syncstead_store::IdentityStore,
    pool: &Arc<HashPool>,
    uid: &str,
    auth_pw: Vec<u8>,
) -> Result<()> {
    let fresh = new_identity(pool, String::new(), auth_pw).await?;
    let credentials = Credentials {
        auth_salt: fresh.auth_salt,
        verify_hash: fresh.verify_hash,
        wrap_wrap_kb: fresh.wrap_wrap_kb,
        new_keys: Some((fresh.ka, fresh.keys_changed_at)),
        new_email: None,
    };
    store.set_credentials(uid, &credentials).await.map_err(account_error)?;
    Ok(())
}

async fn create(State(state): State<AppState>, Query(q): Query<KeysQuery>, body: Bytes) -> Result<Json<Value>> {
    let srv = server(&state)?;
    let b: CredentialsBody = parse(&body)?;
    match &srv.registration {
        AccountRegistration::Open => {}
        AccountRegistration::Closed => return Err(AccountsError::Forbidden("registration is closed on this server")),
        AccountRegistration::Invite(code) => {
            let given = b.invite_code.as_deref().unwrap_or("");
            if !bool::from(given.as_bytes().ct_eq(code.as_bytes())) {
                return Err(AccountsError::Forbidden(
                    "a valid invitation code is needed to sign up here",
                ));
            }
        }
    }
    let email = normalise_email(&b.email)?;
    let auth_pw = hex32(&b.auth_pw, "authPW")?;
    let identity = new_identity(&state.weave.hasher, email, auth_pw.clone()).await?;
    state
        .identities
        .create_identity(&identity, srv.max_identities)
        .await
        .map_err(account_error)?;
    tracing::info!(uid = %identity.uid, "account created");
    // The new account's keys are known only from authPW at this moment: log straight in.
    let stretched = stretch(&state.weave.hasher, auth_pw, hex32(&identity.auth_salt, "salt")?).await?;
    signed_in(&state, &identity, &stretched, q.keys.as_deref() == Some("true")).await
}

async fn login(
    State(state): State<AppState>,
    Query(q): Query<KeysQuery>,
    ClientAddr(addr): ClientAddr,
    body: Bytes,
) -> Result<Json<Value>> {
    let b: CredentialsBody = parse(&body)?;
    let (identity, stretched) = check_password(&state, addr, &b.email, &b.auth_pw).await?;
    signed_in(&state, &identity, &stretched, q.keys.as_deref() == Some("true")).await
}

/// The account of `email` if `auth_pw` is its password. Throttling is decided before any
/// scrypt runs: counted ahead, forgiven on success.
async fn check_password(
    state: &AppState,
    addr: Option<std::net::IpAddr>,
    email: &str,
    auth_pw: &str,
) -> Result<(Identity, onepw::Stretched)> {
    let srv = server(state)?;
    let email = normalise_email(email)?;
    let auth_pw = hex32(auth_pw, "authPW")?;
    let pair = pair_key(&email, addr);
    let address = addr.map(|a| a.to_string()).unwrap_or_default();
    srv.pairs
        .attempt(&pair)
        .map_err(|retry_after| AccountsError::Throttled { retry_after })?;
    if let Err(retry_after) = srv.addresses.attempt(&address) {
        srv.pairs.forgive(&pair);
        return Err(AccountsError::Throttled { retry_after });
    }
    let Some(identity) = state.identities.identity_by_email(&email).await? else {
        return Err(AccountsError::UnknownAccount);
    };
    if identity.disabled {
        return Err(AccountsError::Disabled);
    }
    let stretched = stretch(&state.weave.hasher, auth_pw, hex32(&identity.auth_salt, "salt")?).await?;
    let stored = hex32(&identity.verify_hash, "verifyHash")?;
    if !stretched.verifies(&stored) {
        tracing::info!(uid = %identity.uid, "incorrect password");
        return Err(AccountsError::IncorrectPassword);
    }
    srv.pairs.success(&pair);
    srv.addresses.forgive(&address);
    Ok((identity, stretched))
}

/// A new session token, and with `keys` a single-use key-fetch token.
async fn signed_in(
    state: &AppState,
    identity: &Identity,
    stretched: &onepw::Stretched,
    keys: bool,
) -> Result<Json<Value>> {
    let session = new_session(state, &identity.uid).await?;
    let mut out = json!({
        "uid": identity.uid,
        "sessionToken": session,
        "verified": true,
        "authAt": now_ms() / 1000,
    });
    if keys {
        out["keyFetchToken"] = key_fetch_token(state, identity, stretched).await?.into();
    }
    Ok(Json(out))
}

/// A single-use key-fetch token (hex) whose bundle is made now, while the password's
/// stretch can unwrap wrapKb.
async fn key_fetch_token(state: &AppState, identity: &Identity, stretched: &onepw::Stretched) -> Result<String> {
    let token = random::<32>();
    let k = onepw::token_keys(&token, "keyFetchToken");
    let wrap_kb = stretched.wrap(&hex32(&identity.wrap_wrap_kb, "wrapWrapKb")?);
    let bundle = onepw::key_bundle(&k.bundle_key, &hex32(&identity.ka, "kA")?, &wrap_kb);
    let now = now_ms();
    state
        .identities
        .put_token(&AuthToken {
            id: HEXLOWER.encode(&k.id),
            kind: TokenKind::KeyFetch,
            uid: identity.uid.clone(),
            data: format!("{}:{}", HEXLOWER.encode(&k.auth_key), HEXLOWER.encode(&bundle)),
            client_id: None,
            created_at: now,
            expires_at: Some(now + KEY_FETCH_LIFETIME_MS),
        })
        .await?;
    Ok(HEXLOWER.encode(&token))
}

// ---- password change --------------------------------------------------------------------

#[derive(Deserialize)]
struct ChangeStartBody {
    email: String,
    #[serde(rename = "oldAuthPW")]
    old_auth_pw: String,
}

/// The first step of a password change: the old password proven, a key-fetch token (so
/// the page can unwrap kB with the old password) and a single-use change token.
async fn change_start(State(state): State<AppState>, ClientAddr(addr): ClientAddr, body: Bytes) -> Result<Json<Value>> {
    let b: ChangeStartBody = parse(&body)?;
    let (identity, stretched) = check_password(&state, addr, &b.email, &b.old_auth_pw).await?;
    let key_fetch = key_fetch_token(&state, &identity, &stretched).await?;
    let token = random::<32>();
    let k = onepw::token_keys(&token, "passwordChangeToken");
    let now = now_ms();
    state
        .identities
        .put_token(&AuthToken {
            id: HEXLOWER.encode(&k.id),
            kind: TokenKind::PasswordChange,
            uid: identity.uid.clone(),
            data: HEXLOWER.encode(&k.auth_key),
            client_id: None,
            created_at: now,
            expires_at: Some(now + KEY_FETCH_LIFETIME_MS),
        })
        .await?;
    Ok(Json(json!({
        "keyFetchToken": key_fetch,
        "passwordChangeToken": HEXLOWER.encode(&token),
        "verified": true,
    })))
}

#[derive(Deserialize)]
struct ChangeFinishBody {
    #[serde(rename = "authPW")]
    auth_pw: String,
    #[serde(rename = "wrapKb")]
    wrap_kb: String,
    /// A new e-mail address (the account page's "change e-mail"): onepw salts the
    /// password with the address, so authPW and wrapKb are made with the new one.
    #[serde(default)]
    email: Option<String>,
}

/// The second step: the new password's authPW and kB re-wrapped by the page under it. The
/// server never sees kB; it keeps kA and the keys-changed time, so the account's Sync
/// data stays readable. Every other sign-in ends; the caller gets a new session.
async fn change_finish(
    State(state): State<AppState>,
    Query(q): Query<KeysQuery>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>> {
    server(&state)?;
    let token = authorise(&state, &method, &uri, &headers, TokenKind::PasswordChange).await?;
    let b: ChangeFinishBody = parse(&body)?;
    let auth_pw = hex32(&b.auth_pw, "authPW")?;
    let wrap_kb = hex32(&b.wrap_kb, "wrapKb")?;
    // onepw salts with the address as the page typed it: one not already in normal form
    // would give credentials that no later sign-in could reproduce.
    let new_email = b.email.as_deref().map(normalise_email).transpose()?;
    if new_email.as_deref() != b.email.as_deref() {
        return Err(AccountsError::BadParameter("email"));
    }
    state
        .identities
        .take_token(&token.id, TokenKind::PasswordChange)
        .await?
        .ok_or(AccountsError::InvalidToken)?;
    let salt = random::<32>();
    let stretched = stretch(&state.weave.hasher, auth_pw, salt.to_vec()).await?;
    let credentials = Credentials {
        auth_salt: HEXLOWER.encode(&salt),
        verify_hash: HEXLOWER.encode(&stretched.verify_hash()),
        wrap_wrap_kb: HEXLOWER.encode(&stretched.wrap(&wrap_kb)),
        new_keys: None,
        new_email,
    };
    match state.identities.set_credentials(&token.uid, &credentials).await {
        Ok(true) => {}
        Ok(false) => return Err(AccountsError::InvalidToken),
        Err(e) => return Err(account_error(e)),
    }
    tracing::info!(uid = %token.uid, email_changed = credentials.new_email.is_some(), "password changed");
    let identity = state
        .identities
        .identity(&token.uid)
        .await?
        .ok_or(AccountsError::InvalidToken)?;
    signed_in(&state, &identity, &stretched, q.keys.as_deref() == Some("true")).await
}

/// A new session token (hex), kept by its derived id with its Hawk key.
async fn new_session(state: &AppState, uid: &str) -> Result<String> {
    let token = random::<32>();
    let k = onepw::token_keys(&token, "sessionToken");
    state
        .identities
        .put_token(&AuthToken {
            id: HEXLOWER.encode(&k.id),
            kind: TokenKind::Session,
            uid: uid.to_string(),
            data: HEXLOWER.encode(&k.auth_key),
            client_id: None,
            created_at: now_ms(),
            expires_at: None,
        })
        .await?;
    Ok(HEXLOWER.encode(&token))
}

async fn keys(
    State(state): State<AppState>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    server(&state)?;
    let token = authorise(&state, &method, &uri, &headers, TokenKind::KeyFetch).await?;
    // Spent by this request whether or not the client reads the answer.
    let token = state
        .identities
        .take_token(&token.id, TokenKind::KeyFetch)
        .await?
        .ok_or(AccountsError::InvalidToken)?;
    let bundle = token.data.split(':').nth(1).unwrap_or("").to_string();
    Ok(Json(json!({ "bundle": bundle })))
}

#[derive(Deserialize)]
struct ScopedKeyBody {
    client_id: String,
    scope: String,
}

async fn scoped_key_data(
    State(state): State<AppState>,
    SessionAuth(s): SessionAuth,
    body: Bytes,
) -> Result<Json<Value>> {
    let b: ScopedKeyBody = parse(&body)?;
    known_client(&b.client_id)?;
    let identity = state
        .identities
        .identity(&s.uid)
        .await?
        .ok_or(AccountsError::InvalidToken)?;
    let mut out = serde_json::Map::new();
    if b.scope.split_whitespace().any(|s| s == OLDSYNC_SCOPE) {
        out.insert(
            OLDSYNC_SCOPE.into(),
            json!({
                "identifier": OLDSYNC_SCOPE,
                "keyRotationSecret": "0".repeat(64),
                "keyRotationTimestamp": identity.keys_changed_at,
            }),
        );
    }
    Ok(Json(Value::Object(out)))
}

#[derive(Deserialize)]
struct UidQuery {
    uid: String,
}

async fn account_status(State(state): State<AppState>, Query(q): Query<UidQuery>) -> Result<Json<Value>> {
    server(&state)?;
    let exists = state.identities.identity(&q.uid.to_ascii_lowercase()).await?.is_some();
    Ok(Json(json!({ "exists": exists })))
}

#[derive(Deserialize)]
struct EmailBody {
    email: String,
}

async fn account_status_by_email(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>> {
    server(&state)?;
    let b: EmailBody = parse(&body)?;
    let exists = state
        .identities
        .identity_by_email(&normalise_email(&b.email)?)
        .await?
        .is_some();
    Ok(Json(json!({ "exists": exists })))
}

async fn session_status(SessionAuth(s): SessionAuth) -> Result<Json<Value>> {
    Ok(Json(json!({ "state": "verified", "uid": s.uid })))
}

async fn email_status(State(state): State<AppState>, SessionAuth(s): SessionAuth) -> Result<Json<Value>> {
    let identity = state
        .identities
        .identity(&s.uid)
        .await?
        .ok_or(AccountsError::InvalidToken)?;
    Ok(Json(json!({
        "email": identity.email,
        "verified": true,
        "sessionVerified": true,
        "emailVerified": true,
    })))
}

async fn session_destroy(State(state): State<AppState>, SessionAuth(s): SessionAuth) -> Result<Json<Value>> {
    state.identities.delete_token(&s.id).await?;
    Ok(Json(json!({})))
}

// ---- OAuth ----------------------------------------------------------------------------

fn known_client(client_id: &str) -> Result<()> {
    if CLIENTS.contains(&client_id) {
        Ok(())
    } else {
        Err(AccountsError::UnknownClient)
    }
}

#[derive(Deserialize)]
struct AuthorizationBody {
    client_id: String,
    state: String,
    scope: String,
    #[serde(default)]
    response_type: Option<String>,
    code_challenge: String,
    #[serde(default)]
    code_challenge_method: Option<String>,
    #[serde(default)]
    keys_jwe: Option<String>,
    #[serde(default)]
    access_type: Option<String>,
    #[serde(default)]
    redirect_uri: Option<String>,
}

/// Where the code goes: the WebChannel (desktop, Android, iOS's Rust client), or a page
/// the app watches for, `/oauth/success/<client id>` on this server or on Mozilla's (the
/// redirect older Firefox for iOS registers). Anything else would hand the code to a page
/// the user never meant to trust.
fn redirect_for(srv: &AccountServer, asked: Option<&str>, client_id: &str) -> Result<String> {
    match asked {
        None | Some(WEBCHANNEL_REDIRECT) => Ok(WEBCHANNEL_REDIRECT.to_string()),
        Some(uri)
            if uri == format!("{}/oauth/success/{client_id}", srv.base)
                || uri == format!("https://accounts.firefox.com/oauth/success/{client_id}") =>
        {
            Ok(uri.to_string())
        }
        Some(_) => Err(AccountsError::BadParameter("redirect_uri")),
    }
}

async fn authorization(State(state): State<AppState>, SessionAuth(s): SessionAuth, body: Bytes) -> Result<Json<Value>> {
    let srv = server(&state)?;
    let b: AuthorizationBody = parse(&body)?;
    known_client(&b.client_id)?;
    let redirect = redirect_for(srv, b.redirect_uri.as_deref(), &b.client_id)?;
    if b.response_type.as_deref().is_some_and(|t| t != "code") {
        return Err(AccountsError::BadParameter("response_type"));
    }
    // PKCE is required: public clients hold no secret, the verifier proves the caller.
    if b.code_challenge_method.as_deref() != Some("S256") || b.code_challenge.len() != 43 {
        return Err(AccountsError::BadParameter("code_challenge"));
    }
    if b.keys_jwe
        .as_ref()
        .is_some_and(|j| j.len() > 8192 || j.split('.').count() != 5)
    {
        return Err(AccountsError::BadParameter("keys_jwe"));
    }
    let offline = b.access_type.as_deref() == Some("offline");
    let code = random::<32>();
    state
        .identities
        .put_code(&AuthCode {
            code_hash: hashed_id(&code),
            uid: s.uid,
            client_id: b.client_id,
            // The code remembers whether a refresh token was asked for.
            scope: format!("{}{}", if offline { "offline " } else { "" }, b.scope),
            code_challenge: b.code_challenge,
            keys_jwe: b.keys_jwe,
            expires_at: now_ms() + CODE_LIFETIME_MS,
        })
        .await?;
    let code = HEXLOWER.encode(&code);
    Ok(Json(json!({
        "code": code,
        "state": b.state,
        "redirect": format!("{redirect}?code={code}&state={}", encode_component(&b.state)),
    })))
}

#[derive(Deserialize)]
struct TokenBody {
    grant_type: String,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    subject_token: Option<String>,
    #[serde(default)]
    subject_token_type: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    code_verifier: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    ttl: Option<u64>,
    #[serde(default)]
    access_type: Option<String>,
}

async fn token(
    State(state): State<AppState>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>> {
    let srv = server(&state)?;
    let b: TokenBody = parse(&body)?;
    let ttl = b.ttl.unwrap_or(21_600).clamp(60, 86_400);
    if b.grant_type == TOKEN_EXCHANGE {
        return token_exchange(&state, srv, &b, ttl).await;
    }
    let client_id = b.client_id.as_deref().ok_or(AccountsError::BadParameter("client_id"))?;
    known_client(client_id)?;
    match b.grant_type.as_str() {
        "authorization_code" => {
            let code = hex32(b.code.as_deref().unwrap_or(""), "code")?;
            let verifier = b
                .code_verifier
                .as_deref()
                .ok_or(AccountsError::BadParameter("code_verifier"))?;
            let grant = state
                .identities
                .take_code(&hashed_id(&code))
                .await?
                .ok_or(AccountsError::BadCode)?;
            let challenge = BASE64URL_NOPAD.encode(&onepw::sha256(verifier.as_bytes()));
            if grant.client_id != client_id || !bool::from(challenge.as_bytes().ct_eq(grant.code_challenge.as_bytes()))
            {
                return Err(AccountsError::BadCode);
            }
            let (offline, scope) = match grant.scope.strip_prefix("offline ") {
                Some(rest) => (true, rest.to_string()),
                None => (false, grant.scope.clone()),
            };
            let mut out = access(&state, srv, &grant.uid, client_id, &scope, ttl).await?;
            if offline {
                out["refresh_token"] = new_refresh(&state, &grant.uid, client_id, &scope).await?.0.into();
            }
            if scope.split_whitespace().any(|s| s == SESSION_SCOPE) {
                out["session_token"] = new_session(&state, &grant.uid).await?.into();
            }
            if let Some(jwe) = grant.keys_jwe {
                out["keys_jwe"] = jwe.into();
            }
            Ok(Json(out))
        }
        "fxa-credentials" => {
            let s = session(&state, &method, &uri, &headers).await?;
            let scope = b.scope.unwrap_or_default();
            let mut out = access(&state, srv, &s.uid, client_id, &scope, ttl).await?;
            if b.access_type.as_deref() == Some("offline") {
                out["refresh_token"] = new_refresh(&state, &s.uid, client_id, &scope).await?.0.into();
            }
            Ok(Json(out))
        }
        "refresh_token" => {
            let raw = hex32(b.refresh_token.as_deref().unwrap_or(""), "refresh_token")?;
            let token = state
                .identities
                .token(&hashed_id(&raw), TokenKind::Refresh)
                .await?
                .ok_or(AccountsError::InvalidToken)?;
            let token = live(&state, token).await?;
            if token.client_id.as_deref() != Some(client_id) {
                return Err(AccountsError::InvalidToken);
            }
            // A refresh token grants at most what it was given for.
            let granted: Vec<&str> = token.data.split_whitespace().collect();
            let scope = match b.scope.as_deref() {
                Some(asked) => {
                    if !asked.split_whitespace().all(|s| granted.contains(&s)) {
                        return Err(AccountsError::BadParameter("scope"));
                    }
                    asked.to_string()
                }
                None => token.data.clone(),
            };
            Ok(Json(access(&state, srv, &token.uid, client_id, &scope, ttl).await?))
        }
        _ => Err(AccountsError::BadParameter("grant_type")),
    }
}

/// A refresh token traded for a new one with more scopes (RFC 8693), as Mozilla's mobile
/// client asks when it needs a scope it was not given. The old token goes, and the
/// device registered with it moves to the new one.
async fn token_exchange(state: &AppState, srv: &AccountServer, b: &TokenBody, ttl: u64) -> Result<Json<Value>> {
    if b.subject_token_type.as_deref() != Some("urn:ietf:params:oauth:token-type:refresh_token") {
        return Err(AccountsError::BadParameter("subject_token_type"));
    }
    let raw = hex32(b.subject_token.as_deref().unwrap_or(""), "subject_token")?;
    let old = state
        .identities
        .token(&hashed_id(&raw), TokenKind::Refresh)
        .await?
        .ok_or(AccountsError::InvalidToken)?;
    let old = live(state, old).await?;
    let asked = b.scope.as_deref().unwrap_or("");
    if asked.split_whitespace().any(|s| !EXCHANGEABLE.contains(&s)) {
        return Err(AccountsError::BadParameter("scope"));
    }
    let mut scopes: Vec<&str> = old.data.split_whitespace().collect();
    for s in asked.split_whitespace() {
        if !scopes.contains(&s) {
            scopes.push(s);
        }
    }
    let scope = scopes.join(" ");
    let client_id = old.client_id.clone().unwrap_or_default();
    let mut out = access(state, srv, &old.uid, &client_id, &scope, ttl).await?;
    let (refresh, new_id) = new_refresh(state, &old.uid, &client_id, &scope).await?;
    for mut d in state.identities.devices(&old.uid).await? {
        if d.token_id.as_deref() == Some(old.id.as_str()) {
            d.token_id = Some(new_id.clone());
            state.identities.put_device(&d).await?;
        }
    }
    state.identities.delete_token(&old.id).await?;
    out["refresh_token"] = refresh.into();
    if scopes.contains(&SESSION_SCOPE) && !old.data.split_whitespace().any(|s| s == SESSION_SCOPE) {
        out["session_token"] = new_session(state, &old.uid).await?.into();
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
struct IntrospectBody {
    token: String,
    #[serde(default)]
    token_type_hint: Option<String>,
}

/// Whether a refresh token (or one of this server's access tokens) is still good: Mozilla's
/// mobile client asks to learn whether it has been signed out.
async fn introspect(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>> {
    let srv = server(&state)?;
    let b: IntrospectBody = parse(&body)?;
    if b.token_type_hint.as_deref() != Some("refresh_token") {
        if let Some(claims) = srv.verify_own(&b.token).flatten() {
            let live = state
                .identities
                .identity(&claims.sub)
                .await?
                .is_some_and(|i| !i.disabled);
            return Ok(Json(json!({
                "active": live,
                "token_type": "access_token",
                "scope": claims.scope,
                "client_id": claims.client_id,
                "sub": claims.sub,
                "exp": claims.exp,
                "iat": claims.iat,
            })));
        }
    }
    let found = match hex32(&b.token, "token") {
        Ok(raw) => state.identities.token(&hashed_id(&raw), TokenKind::Refresh).await?,
        Err(_) => None,
    };
    let found = match found {
        Some(t) => live(&state, t).await.ok(),
        None => None,
    };
    Ok(Json(match found {
        Some(t) => json!({
            "active": true,
            "token_type": "refresh_token",
            "scope": t.data,
            "client_id": t.client_id,
            "sub": t.uid,
            "iat": t.created_at / 1000,
        }),
        None => json!({ "active": false }),
    }))
}

/// An access token for `scope`: a JWT the token server (here or elsewhere) can check.
async fn access(
    state: &AppState,
    srv: &AccountServer,
    uid: &str,
    client_id: &str,
    scope: &str,
    ttl: u64,
) -> Result<Value> {
    let identity = state
        .identities
        .identity(uid)
        .await?
        .ok_or(AccountsError::InvalidToken)?;
    if identity.disabled {
        return Err(AccountsError::Disabled);
    }
    let now = now_ms() / 1000;
    let issuer = srv.issuer()?;
    let jwt = issuer.sign(&jwt::AccessClaims {
        iss: issuer.issuer.clone(),
        sub: uid.to_string(),
        aud: srv.base.clone(),
        client_id: client_id.to_string(),
        scope: scope.to_string(),
        iat: now,
        exp: now + ttl as i64,
        jti: HEXLOWER.encode(&random::<16>()),
        generation: identity.keys_changed_at,
    });
    Ok(json!({
        "access_token": jwt,
        "token_type": "bearer",
        "scope": scope,
        "expires_in": ttl,
        "auth_at": now,
    }))
}

/// A new refresh token: the token (hex) for the client, and the id it is kept by.
async fn new_refresh(state: &AppState, uid: &str, client_id: &str, scope: &str) -> Result<(String, String)> {
    let raw = random::<32>();
    let id = hashed_id(&raw);
    state
        .identities
        .put_token(&AuthToken {
            id: id.clone(),
            kind: TokenKind::Refresh,
            uid: uid.to_string(),
            data: scope.to_string(),
            client_id: Some(client_id.to_string()),
            created_at: now_ms(),
            expires_at: None,
        })
        .await?;
    Ok((HEXLOWER.encode(&raw), id))
}

#[derive(Deserialize)]
struct DestroyBody {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
}

/// Revokes a refresh token. Access tokens are self-contained JWTs and run out by
/// themselves (within their `ttl`); destroying one is accepted and does nothing.
async fn destroy(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>> {
    server(&state)?;
    let b: DestroyBody = parse(&body)?;
    if let Some(t) = b.refresh_token.or(b.token) {
        if let Ok(raw) = hex32(&t, "token") {
            state.identities.delete_token(&hashed_id(&raw)).await?;
        }
    }
    Ok(Json(json!({})))
}

// ---- profile --------------------------------------------------------------------------

async fn profile(State(state): State<AppState>, headers: HeaderMap) -> Result<Response> {
    let srv = server(&state)?;
    let jwt = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(AccountsError::InvalidToken)?;
    let claims = srv
        .verify_own(jwt.trim())
        .flatten()
        .ok_or(AccountsError::InvalidToken)?;
    if !claims
        .scope
        .split_whitespace()
        .any(|s| s == PROFILE_SCOPE || s.starts_with("profile:"))
    {
        return Err(AccountsError::Forbidden("the token does not grant the profile"));
    }
    let identity = state
        .identities
        .identity(&claims.sub)
        .await?
        .filter(|i| !i.disabled)
        .ok_or(AccountsError::InvalidToken)?;
    // `avatar` is always a string: Mozilla's mobile client fails on anything else.
    Ok(Json(json!({
        "uid": identity.uid,
        "email": identity.email,
        "locale": "",
        "displayName": null,
        "avatar": format!("{}/accounts/avatar.svg", srv.base),
        "avatarDefault": true,
        "amrValues": ["pwd"],
        "twoFactorAuthentication": false,
        "subscriptions": [],
    }))
    .into_response())
}

// ---- devices --------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceBody {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "type")]
    device_type: Option<String>,
    #[serde(default)]
    available_commands: Option<Value>,
    #[serde(default)]
    push_callback: Option<String>,
    #[serde(default)]
    push_public_key: Option<String>,
    #[serde(default)]
    push_auth_key: Option<String>,
}

/// The caller's own device among the account's: the one registered with the token the
/// request came with.
fn own_device<'a>(devices: &'a [Device], token: &AuthToken) -> Option<&'a Device> {
    devices
        .iter()
        .find(|d| d.token_id.as_deref() == Some(token.id.as_str()))
}

fn device_json(d: &Device, current: Option<&str>) -> Value {
    json!({
        "id": d.id,
        "name": d.name,
        "type": d.device_type,
        "isCurrentDevice": current.is_some_and(|t| d.token_id.as_deref() == Some(t)),
        "pushCallback": d.push_callback,
        "pushPublicKey": d.push_public_key,
        "pushAuthKey": d.push_auth_key,
        "pushEndpointExpired": false,
        "availableCommands": serde_json::from_str::<Value>(&d.commands).unwrap_or_else(|_| json!({})),
        "lastAccessTime": d.last_access,
        "location": {},
    })
}

async fn device(State(state): State<AppState>, SessionAuth(s): SessionAuth, body: Bytes) -> Result<Json<Value>> {
    let b: DeviceBody = parse(&body)?;
    let mine = state.identities.devices(&s.uid).await?;
    let existing = match &b.id {
        Some(id) => Some(
            mine.iter()
                .find(|d| &d.id == id)
                .cloned()
                .ok_or(AccountsError::UnknownDevice)?,
        ),
        None => own_device(&mine, &s).cloned(),
    };
    let limit = |v: Option<String>, max: usize, what| match v {
        Some(v) if v.len() > max => Err(AccountsError::BadParameter(what)),
        v => Ok(v),
    };
    let name = limit(b.name, 255, "name")?;
    let now = now_ms();
    let mut d = existing.unwrap_or_else(|| Device {
        id: HEXLOWER.encode(&random::<16>()),
        uid: s.uid.clone(),
        token_id: Some(s.id.clone()),
        name: String::new(),
        device_type: "desktop".into(),
        push_callback: None,
        push_public_key: None,
        push_auth_key: None,
        commands: "{}".into(),
        created_at: now,
        last_access: now,
    });
    // A detached device that signs in again (after a password change) is the device of
    // this session from now on; another session (the account page) only renames it.
    if d.token_id.is_none() {
        d.token_id = Some(s.id.clone());
    }
    if let Some(n) = name {
        d.name = n;
    }
    if let Some(t) = limit(b.device_type, 16, "type")? {
        d.device_type = t;
    }
    if let Some(c) = b.available_commands {
        let text = c.to_string();
        if !c.is_object() || text.len() > 16 * 1024 {
            return Err(AccountsError::BadParameter("availableCommands"));
        }
        d.commands = text;
    }
    if let Some(p) = limit(b.push_callback, 2048, "pushCallback")? {
        d.push_callback = Some(p);
    }
    if let Some(p) = limit(b.push_public_key, 256, "pushPublicKey")? {
        d.push_public_key = Some(p);
    }
    if let Some(p) = limit(b.push_auth_key, 256, "pushAuthKey")? {
        d.push_auth_key = Some(p);
    }
    d.last_access = now;
    state.identities.put_device(&d).await?;
    Ok(Json(device_json(&d, Some(&s.id))))
}

async fn devices(State(state): State<AppState>, SessionAuth(s): SessionAuth) -> Result<Json<Value>> {
    let list = state.identities.devices(&s.uid).await?;
    Ok(Json(Value::Array(
        list.iter().map(|d| device_json(d, Some(&s.id))).collect(),
    )))
}

async fn device_destroy(
    State(state): State<AppState>,
    SessionAuth(s): SessionAuth,
    body: Bytes,
) -> Result<Json<Value>> {
    #[derive(Deserialize)]
    struct Body {
        id: String,
    }
    let b: Body = parse(&body)?;
    state.identities.delete_device(&s.uid, &b.id).await?;
    Ok(Json(json!({})))
}

async fn attached_clients(State(state): State<AppState>, SessionAuth(s): SessionAuth) -> Result<Json<Value>> {
    let list = state.identities.devices(&s.uid).await?;
    Ok(Json(Value::Array(
        list.iter()
            .map(|d| {
                json!({
                    "clientId": null,
                    "deviceId": d.id,
                    "sessionTokenId": d.token_id,
                    "refreshTokenId": null,
                    "isCurrentSession": d.token_id.as_deref() == Some(s.id.as_str()),
                    "deviceType": d.device_type,
                    "name": d.name,
                    "scope": null,
                    "lastAccessTime": d.last_access,
                    "createdTime": d.created_at,
                    "userAgent": "",
                    "os": null,
                })
            })
            .collect(),
    )))
}

#[derive(Deserialize)]
struct CommandsQuery {
    #[serde(default)]
    index: Option<i64>,
    #[serde(default)]
    limit: Option<u64>,
}

/// Most commands one poll returns, and most waiting for one device.
const COMMANDS_PAGE: u64 = 100;
const COMMANDS_PENDING: u64 = 500;
/// How long a command waits for its device unless the sender says less (and at most).
const COMMAND_TTL_SECONDS: u64 = 30 * 24 * 3600;

/// Commands queued for the caller's device from `index` on. There is no push service, so
/// devices learn of commands only by polling (Firefox desktop at most once a day during a
/// scheduled sync, `identity.fxaccounts.commands.missed.fetch_interval`; the mobile apps
/// when they look for commands themselves). Any valid session gets 200: a 403 here closes
/// Firefox for Android.
async fn commands(
    State(state): State<AppState>,
    SessionAuth(s): SessionAuth,
    Query(q): Query<CommandsQuery>,
) -> Result<Json<Value>> {
    let devices = state.identities.devices(&s.uid).await?;
    let Some(device) = own_device(&devices, &s) else {
        return Ok(Json(json!({ "index": 0, "last": true, "messages": [] })));
    };
    let limit = q.limit.unwrap_or(COMMANDS_PAGE).clamp(1, COMMANDS_PAGE);
    let from = q.index.unwrap_or(0).max(0);
    let mut found = state.identities.commands(&s.uid, &device.id, from, limit + 1).await?;
    let last = found.len() as u64 <= limit;
    found.truncate(limit as usize);
    let index = found.last().map_or(0, |c| c.index);
    let messages: Vec<Value> = found
        .iter()
        .map(|c| {
            json!({
                "index": c.index,
                "data": {
                    "command": c.command,
                    "payload": serde_json::from_str::<Value>(&c.payload).unwrap_or(Value::Null),
                    "sender": c.sender,
                },
            })
        })
        .collect();
    Ok(Json(json!({ "index": index, "last": last, "messages": messages })))
}

#[derive(Deserialize)]
struct InvokeBody {
    command: String,
    target: String,
    payload: Value,
    #[serde(default)]
    ttl: Option<u64>,
}

/// Queues a command (Send Tab, Close Tabs) for another device of the same account. The
/// payload is encrypted by the sender to the target's keys and is stored unread.
async fn invoke_command(
    State(state): State<AppState>,
    SessionAuth(s): SessionAuth,
    body: Bytes,
) -> Result<Json<Value>> {
    let b: InvokeBody = parse(&body)?;
    let payload = b.payload.to_string();
    if !b.payload.is_object() || payload.len() > 64 * 1024 || b.command.len() > 256 {
        return Err(AccountsError::BadParameter("payload"));
    }
    let devices = state.identities.devices(&s.uid).await?;
    let target = devices
        .iter()
        .find(|d| d.id == b.target)
        .ok_or(AccountsError::UnknownDevice)?;
    let supported = serde_json::from_str::<Value>(&target.commands)
        .ok()
        .is_some_and(|c| c.get(&b.command).is_some());
    if !supported {
        return Err(AccountsError::UnavailableCommand);
    }
    let sender = own_device(&devices, &s).map(|d| d.id.clone());
    let ttl = b.ttl.unwrap_or(COMMAND_TTL_SECONDS).clamp(1, COMMAND_TTL_SECONDS);
    let command = DeviceCommand {
        index: 0,
        device_id: target.id.clone(),
        command: b.command,
        payload,
        sender,
        expires_at: now_ms() + ttl as i64 * 1000,
    };
    let Some(index) = state.identities.put_command(&s.uid, &command, COMMANDS_PENDING).await? else {
        return Err(AccountsError::Forbidden(
            "too many commands are waiting for that device",
        ));
    };
    tracing::debug!(uid = %s.uid, index, "device command queued");
    // Without a push service the target finds the command when it next polls.
    Ok(Json(
        json!({ "enqueued": true, "notified": false, "notifyError": "no push service" }),
    ))
}

// ---- the account page: deletion and forgotten passwords ----------------------------------

/// Deletes the account and all of its Sync data, on the account's password and a session.
async fn account_destroy(
    State(state): State<AppState>,
    SessionAuth(s): SessionAuth,
    ClientAddr(addr): ClientAddr,
    body: Bytes,
) -> Result<Json<Value>> {
    let b: CredentialsBody = parse(&body)?;
    let (identity, _) = check_password(&state, addr, &b.email, &b.auth_pw).await?;
    if identity.uid != s.uid {
        return Err(AccountsError::InvalidToken);
    }
    state
        .identities
        .delete_identity(&identity.uid, &AccountServer::sync_email(&identity.uid))
        .await?;
    tracing::info!(uid = %identity.uid, "account deleted by its owner");
    Ok(Json(json!({})))
}

/// How long a forgotten password's code works.
const RESET_CODE_LIFETIME_MS: i64 = 24 * 3600 * 1000;

fn reset_code_id(code: &str) -> String {
    let normal: String = code
        .trim()
        .to_ascii_uppercase()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    hashed_id(normal.as_bytes())
}

/// A one-time code that lets the account's owner choose a new password (and so new keys),
/// kept by its hash. Mailed by the page, or printed by `syncstead account reset --code`.
pub async fn issue_reset_code(store: &dyn syncstead_store::IdentityStore, uid: &str) -> Result<String> {
    let code = crate::user_api::new_reset_code();
    let now = now_ms();
    store
        .put_token(&AuthToken {
            id: reset_code_id(&code),
            kind: TokenKind::AccountReset,
            uid: uid.to_string(),
            data: String::new(),
            client_id: None,
            created_at: now,
            expires_at: Some(now + RESET_CODE_LIFETIME_MS),
        })
        .await?;
    Ok(code)
}

/// Mails a reset code when the server has a mail server; otherwise the page tells the user
/// to ask the operator for one.
async fn forgot_send_code(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>> {
    let srv = server(&state)?;
    let b: EmailBody = parse(&body)?;
    let email = normalise_email(&b.email)?;
    let Some(mailer) = &state.weave.mailer else {
        return Err(AccountsError::Forbidden(
            "this server sends no mail: ask its operator for a reset code",
        ));
    };
    let identity = state
        .identities
        .identity_by_email(&email)
        .await?
        .ok_or(AccountsError::UnknownAccount)?;
    srv.mails
        .attempt(&identity.uid)
        .map_err(|retry_after| AccountsError::Throttled { retry_after })?;
    let code = issue_reset_code(state.identities.as_ref(), &identity.uid).await?;
    let body = format!(
        "Someone asked to reset the password of this Sync account.\n\n\
         To choose a new one, open {}/reset_password and enter the code {code}.\n\n\
         Your synced data is encrypted with your old password, so a reset starts Sync afresh:\n\
         your devices upload what they have again. The code works once, for 24 hours.\n\
         If you did not ask for this, ignore this mail.\n",
        srv.base
    );
    mailer
        .send(&identity.email, "Reset your Sync password", body)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot send a reset mail");
            AccountsError::Unavailable { retry_after: 300 }
        })?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResetBody {
    email: String,
    code: String,
    #[serde(rename = "authPW")]
    auth_pw: String,
}

/// A forgotten password: the code and a new password's authPW. New kB and keys, every
/// device signed out; the token server then gives the account a fresh, empty bucket.
async fn account_reset(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    body: Bytes,
) -> Result<Json<Value>> {
    let srv = server(&state)?;
    let b: ResetBody = parse(&body)?;
    let email = normalise_email(&b.email)?;
    let auth_pw = hex32(&b.auth_pw, "authPW")?;
    let pair = pair_key(&email, addr);
    srv.pairs
        .attempt(&pair)
        .map_err(|retry_after| AccountsError::Throttled { retry_after })?;
    let identity = state
        .identities
        .identity_by_email(&email)
        .await?
        .ok_or(AccountsError::UnknownAccount)?;
    let id = reset_code_id(&b.code);
    // Looked at before it is spent, so another account's code is not used up.
    match state.identities.token(&id, TokenKind::AccountReset).await? {
        Some(t) if t.uid == identity.uid => {}
        _ => return Err(AccountsError::BadResetCode),
    }
    state
        .identities
        .take_token(&id, TokenKind::AccountReset)
        .await?
        .ok_or(AccountsError::BadResetCode)?;
    srv.pairs.success(&pair);
    reset_keys(state.identities.as_ref(), &state.weave.hasher, &identity.uid, auth_pw).await?;
    tracing::info!(uid = %identity.uid, "account reset with a code");
    Ok(Json(json!({})))
}

/// The store's account refusals as the account server words them.
fn account_error(e: AccountError) -> AccountsError {
    match e {
        AccountError::Exists => AccountsError::AccountExists,
        AccountError::Full => AccountsError::Forbidden("this server holds its maximum number of accounts"),
        AccountError::Store(e) => e.into(),
    }
}

// ---- administration (the `syncstead account` commands) -----------------------------------

/// Creates an account for `email` with `password`, as the sign-up page would.
pub async fn add_account(
    store: &dyn syncstead_store::IdentityStore,
    pool: &Arc<HashPool>,
    email: &str,
    password: &str,
    max: Option<u64>,
) -> Result<Identity> {
    let email = normalise_email(email)?;
    let keys = onepw::stretch(&email, password);
    let identity = new_identity(pool, email, keys.auth_pw.to_vec()).await?;
    store.create_identity(&identity, max).await.map_err(account_error)?;
    Ok(identity)
}

/// A forgotten password: new credentials and new keys. Every device is signed out, and
/// the token server gives the account a fresh, empty bucket at its next sign-in (the old
/// data was encrypted with the old kB, which nobody can recover).
pub async fn reset_account(
    store: &dyn syncstead_store::IdentityStore,
    pool: &Arc<HashPool>,
    email: &str,
    password: &str,
) -> Result<Identity> {
    let email = normalise_email(email)?;
    let identity = store
        .identity_by_email(&email)
        .await?
        .ok_or(AccountsError::UnknownAccount)?;
    let keys = onepw::stretch(&email, password);
    reset_keys(store, pool, &identity.uid, keys.auth_pw.to_vec()).await?;
    store
        .identity(&identity.uid)
        .await?
        .ok_or(AccountsError::UnknownAccount)
}

/// The account named by its e-mail address or its uid.
pub async fn find_account(store: &dyn syncstead_store::IdentityStore, who: &str) -> Result<Identity> {
    let who = who.trim().to_lowercase();
    let found = if who.contains('@') {
        store.identity_by_email(&who).await?
    } else {
        store.identity(&who).await?
    };
    found.ok_or(AccountsError::UnknownAccount)
}
