//! User API 1.0 (`/user/1.0/<username>/…`), as specified in `shared/spec/user-api-1.0.md`:
//! legacy account creation, password and e-mail changes, and node assignment.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use subtle::ConstantTimeEq;
use syncstead_proto::names::is_valid_username;
use syncstead_proto::respcode;
use syncstead_proto::username::username_for_account;
use syncstead_store::{Account, AccountError};

use crate::auth::{authenticate, pair_key, WeaveUser};
use crate::config::Registration;
use crate::error::{ApiError, WeaveError};
use crate::listener::ClientAddr;
use crate::passwords::{strong_enough, valid_email};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/user/{version}/{username}",
            get(exists).put(create).delete(delete_account),
        )
        .route("/user/{version}/{username}/node/weave", get(node))
        .route("/user/{version}/{username}/password", post(change_password))
        .route("/user/{version}/{username}/email", post(change_email))
        .route(
            "/user/{version}/{username}/password_reset",
            get(request_reset).delete(clear_reset),
        )
        .route("/misc/{version}/captcha_html", get(captcha).post(captcha))
        .route("/weave-password-reset", get(reset_form).post(reset_form_post))
}

fn text(body: impl Into<String>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        body.into(),
    )
        .into_response()
}

/// U10-001: the version segment is `1.0` or `1`; usernames are `[a-zA-Z0-9._-]+`.
fn check_path(version: &str, username: &str) -> Result<(), ApiError> {
    if !matches!(version, "1.0" | "1") || !is_valid_username(username) {
        return Err(ApiError::NotFound);
    }
    Ok(())
}

async fn hash_password(state: &AppState, password: String) -> Result<String, ApiError> {
    Ok(state.weave.hasher.hash(password).await?)
}

/// U10-020: `1` if the username is taken, `0` if free.
async fn exists(
    State(state): State<AppState>,
    Path((version, username)): Path<(String, String)>,
) -> Result<Response, WeaveError> {
    check_path(&version, &username)?;
    let taken = state.accounts.account(&username).await?.is_some();
    Ok(text(if taken { "1" } else { "0" }))
}

/// U10-030: the checks in order, then the account.
async fn create(
    State(state): State<AppState>,
    Path((version, username)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, WeaveError> {
    check_path(&version, &username)?;
    let settings = &state.settings;
    if matches!(settings.registration, Registration::Closed | Registration::Admin) {
        return Err(ApiError::BadRequest(respcode::CANNOT_OVERWRITE).into());
    }
    if state.accounts.account(&username).await?.is_some() {
        return Err(ApiError::BadRequest(respcode::CANNOT_OVERWRITE).into());
    }
    let Ok(Value::Object(fields)) = syncstead_proto::json::from_slice(&body) else {
        return Err(ApiError::BadRequest(respcode::JSON_PARSE_FAILURE).into());
    };
    let email = fields
        .get("email")
        .or_else(|| fields.get("e-mail"))
        .and_then(Value::as_str)
        .filter(|e| valid_email(e))
        .ok_or(ApiError::BadRequest(respcode::NO_EMAIL))?;
    if settings.strict_usernames && username_for_account(email) != username {
        return Err(ApiError::BadRequest(respcode::EMAIL_MISMATCH).into());
    }
    let password = fields
        .get("password")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .ok_or(ApiError::BadRequest(respcode::MISSING_PASSWORD))?;
    if !strong_enough(password, &username) {
        return Err(ApiError::BadRequest(respcode::WEAK_PASSWORD).into());
    }
    // U10-090: the shared secret stands in for a CAPTCHA (which this server does not offer).
    if settings.registration == Registration::Secret {
        let given = headers.get("x-weave-secret").map(|v| v.as_bytes()).unwrap_or(b"");
        let expected = settings.weave_secret.as_deref().unwrap_or("").as_bytes();
        if expected.is_empty() || !bool::from(given.ct_eq(expected)) {
            return Err(ApiError::BadRequest(respcode::INVALID_CAPTCHA).into());
        }
    }
    let hash = hash_password(&state, password.to_string()).await?;
    match state
        .accounts
        .create_account(&username, email, &hash, settings.max_accounts)
        .await
    {
        Ok(_) => Ok(text(username)),
        Err(AccountError::Exists) | Err(AccountError::Full) => {
            Err(ApiError::BadRequest(respcode::CANNOT_OVERWRITE).into())
        }
        Err(AccountError::Store(e)) => Err(ApiError::Unavailable { retry_after: 60 }.into()).inspect_err(|_| {
            tracing::error!(error = %e, "account creation failed");
        }),
    }
}

/// U10-040: deletes the account and everything it stored.
async fn delete_account(State(state): State<AppState>, user: WeaveUser) -> Result<Response, WeaveError> {
    let username = user.account.username;
    state.accounts.delete_account(&username).await?;
    state.weave.verified.forget(&username);
    Ok(text("0"))
}

/// U10-050/051: this server's own URL, ending with `/`.
async fn node(
    State(state): State<AppState>,
    Path((version, username)): Path<(String, String)>,
) -> Result<Response, WeaveError> {
    check_path(&version, &username)?;
    if state.accounts.account(&username).await?.is_none() {
        return Err(ApiError::NotFound.into());
    }
    Ok(text(format!("{}/", state.public_base)))
}

fn utf8_body(body: &Bytes) -> Result<String, ApiError> {
    String::from_utf8(body.to_vec()).map_err(|_| ApiError::BadRequest(respcode::JSON_PARSE_FAILURE))
}

/// U10-063…066: the body is the new password; Basic auth or a reset code authorises it.
async fn change_password(
    State(state): State<AppState>,
    Path((version, username)): Path<(String, String)>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, WeaveError> {
    check_path(&version, &username)?;
    if let Some(code) = headers.get("x-weave-password-reset") {
        let account = state.accounts.account(&username).await?.ok_or(ApiError::NotFound)?;
        let pair = pair_key(&username, addr);
        if state.weave.pairs.locked(&pair).is_some() || !reset_code_matches(&account, code.as_bytes()) {
            state.weave.pairs.failure(&pair);
            return Err(ApiError::BadRequest(respcode::INVALID_RESET_CODE).into());
        }
    } else {
        authenticate(&state, &headers, &username, addr).await?;
    }
    let password = utf8_body(&body)?;
    if password.is_empty() {
        return Err(ApiError::BadRequest(respcode::MISSING_PASSWORD).into());
    }
    if !strong_enough(&password, &username) {
        return Err(ApiError::BadRequest(respcode::WEAK_PASSWORD).into());
    }
    let hash = hash_password(&state, password).await?;
    state.accounts.set_password(&username, &hash).await?;
    state.weave.verified.forget(&username);
    Ok(text("success"))
}

/// The reset code is stored hashed; it is single-use and expires.
pub fn reset_code_hash(code: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(&syncstead_proto::token::sha256(code))
}

fn reset_code_matches(account: &Account, code: &[u8]) -> bool {
    let now = syncstead_proto::SyncTimestamp::now().as_millis();
    match &account.reset {
        Some((hash, expires)) if *expires > now => bool::from(reset_code_hash(code).as_bytes().ct_eq(hash.as_bytes())),
        _ => false,
    }
}

/// U10-070: the body is the new address.
async fn change_email(State(state): State<AppState>, user: WeaveUser, body: Bytes) -> Result<Response, WeaveError> {
    let username = user.account.username;
    let email = utf8_body(&body)?.trim().to_string();
    if !valid_email(&email) {
        return Err(ApiError::BadRequest(respcode::NO_EMAIL).into());
    }
    state.accounts.set_email(&username, &email).await?;
    Ok(text(email))
}

/// U10-060/061: mails a one-time reset code (and a link to the reset form); without a
/// mail server, 503, and the operator issues codes with `syncstead user reset-code`.
async fn request_reset(
    State(state): State<AppState>,
    Path((version, username)): Path<(String, String)>,
) -> Result<Response, WeaveError> {
    check_path(&version, &username)?;
    send_reset_mail(&state, &username).await?;
    Ok(text("success"))
}

async fn send_reset_mail(state: &AppState, username: &str) -> Result<(), ApiError> {
    let account = state
        .accounts
        .account(username)
        .await?
        .ok_or(ApiError::BadRequest(respcode::INVALID_USERNAME))?;
    if !valid_email(&account.email) {
        return Err(ApiError::BadRequest(respcode::NO_EMAIL));
    }
    let Some(mailer) = &state.weave.mailer else {
        return Err(ApiError::Unavailable { retry_after: 3600 });
    };
    // A few mails per account, then a pause: nobody can flood an inbox through this.
    let key = format!("mail:{username}");
    if let Some(wait) = state.weave.mails.locked(&key) {
        return Err(ApiError::Unavailable { retry_after: wait });
    }
    state.weave.mails.failure(&key);
    let code = new_reset_code();
    let expires = syncstead_proto::SyncTimestamp::now().as_millis() + 24 * 3600 * 1000;
    state
        .accounts
        .set_reset_code(username, Some((reset_code_hash(code.as_bytes()), expires)))
        .await?;
    let link = format!(
        "{}/weave-password-reset?username={username}&key={code}",
        state.public_base
    );
    let body = format!(
        "Someone asked to reset the Sync password of this account.\n\n\
         To choose a new password, open:\n{link}\n\n\
         The code {code} works once, for 24 hours. If you did not ask for this, ignore this mail.\n"
    );
    mailer
        .send(&account.email, "Reset your Sync password", body)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot send a password-reset mail");
            ApiError::Unavailable { retry_after: 300 }
        })
}

/// A one-time reset code: 80 random bits in base32.
pub fn new_reset_code() -> String {
    let mut bytes = [0u8; 10];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    data_encoding::BASE32_NOPAD.encode(&bytes)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn page(status: StatusCode, message: &str, form: Option<(&str, &str)>) -> Response {
    let form = form.map_or(String::new(), |(username, key)| {
        format!(
            "<form method=\"post\" action=\"weave-password-reset\">\
             <input type=\"hidden\" name=\"username\" value=\"{}\"><input type=\"hidden\" name=\"key\" value=\"{}\">\
             <p><label>New password <input type=\"password\" name=\"password\"></label></p>\
             <p><label>Again <input type=\"password\" name=\"confirm\"></label></p>\
             <p><button>Change password</button></p></form>",
            escape(username),
            escape(key)
        )
    });
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Sync password</title></head>\
         <body><h1>Sync password</h1><p>{}</p>{form}</body></html>",
        escape(message)
    );
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        html,
    )
        .into_response()
}

fn form_urlencoded_pairs(s: &str) -> std::collections::HashMap<String, String> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |x: &str| {
                percent_encoding::percent_decode_str(&x.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(k), decode(v))
        })
        .collect()
}

/// U10-067: the page the reset mail links to.
async fn reset_form(axum::extract::RawQuery(query): axum::extract::RawQuery) -> Response {
    let fields = form_urlencoded_pairs(query.as_deref().unwrap_or(""));
    match (fields.get("username"), fields.get("key")) {
        (Some(u), Some(k)) => page(
            StatusCode::OK,
            "Choose a new password (at least 8 characters).",
            Some((u, k)),
        ),
        _ => page(StatusCode::OK, "Use the link from the password-reset mail.", None),
    }
}

/// U10-067: with username and key, sets the new password; with a username alone, mails a code.
async fn reset_form_post(State(state): State<AppState>, ClientAddr(addr): ClientAddr, body: Bytes) -> Response {
    let fields = form_urlencoded_pairs(&String::from_utf8_lossy(&body));
    let username = fields.get("username").cloned().unwrap_or_default();
    if check_path("1.0", &username).is_err() {
        return page(StatusCode::BAD_REQUEST, "Unknown account.", None);
    }
    let Some(key) = fields.get("key") else {
        return match send_reset_mail(&state, &username).await {
            Ok(()) => page(
                StatusCode::OK,
                "A reset link is on its way to the account's e-mail address.",
                None,
            ),
            Err(_) => page(StatusCode::SERVICE_UNAVAILABLE, "No reset mail could be sent.", None),
        };
    };
    let (password, confirm) = (
        fields.get("password").cloned().unwrap_or_default(),
        fields.get("confirm").cloned().unwrap_or_default(),
    );
    if password != confirm {
        return page(
            StatusCode::BAD_REQUEST,
            "The two passwords differ.",
            Some((&username, key)),
        );
    }
    if !strong_enough(&password, &username) {
        return page(
            StatusCode::BAD_REQUEST,
            "That password is too weak: use at least 8 characters.",
            Some((&username, key)),
        );
    }
    let Ok(Some(account)) = state.accounts.account(&username).await else {
        return page(StatusCode::BAD_REQUEST, "Unknown account.", None);
    };
    let pair = pair_key(&username, addr);
    if state.weave.pairs.locked(&pair).is_some() || !reset_code_matches(&account, key.as_bytes()) {
        state.weave.pairs.failure(&pair);
        return page(
            StatusCode::BAD_REQUEST,
            "This reset link is not valid (any more).",
            None,
        );
    }
    let Ok(hash) = hash_password(&state, password).await else {
        return page(StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong.", None);
    };
    if state.accounts.set_password(&username, &hash).await.is_err() {
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Something went wrong; try again later.",
            None,
        );
    }
    state.weave.verified.forget(&username);
    page(
        StatusCode::OK,
        "Your password was changed. Sign in to Sync with it on your devices.",
        None,
    )
}

/// U10-062.
async fn clear_reset(State(state): State<AppState>, user: WeaveUser) -> Result<Response, WeaveError> {
    let username = user.account.username;
    state.accounts.set_reset_code(&username, None).await?;
    Ok(text("success"))
}

/// U10-080: no CAPTCHA is configured.
async fn captcha(Path(version): Path<String>) -> Result<Response, WeaveError> {
    let _ = version;
    Ok((StatusCode::NOT_FOUND, text("")).into_response())
}
