//! The sign-in page and its scripts, built into the binary: no external requests, no
//! build step. The page does onepw, the key fetch and the `keys_jwe` in WebCrypto, and
//! talks to Firefox over the `account_updates` WebChannel (assets/accounts/).

use axum::http::header;
use axum::response::IntoResponse;

/// Every path Firefox may open on the account origin for signing in.
pub const PATHS: &[&str] = &[
    "/",
    "/signin",
    "/signup",
    "/oauth",
    "/oauth/signin",
    "/oauth/force_auth",
    "/authorization",
    "/force_auth",
    "/settings",
    "/settings/change_password",
    "/reset_password",
];

const HTML: &str = include_str!("../../assets/accounts/index.html");
const APP: &str = include_str!("../../assets/accounts/app.mjs");
const ONEPW: &str = include_str!("../../assets/accounts/onepw.mjs");
const AVATAR: &str = include_str!("../../assets/accounts/avatar.svg");

/// The page loads nothing from elsewhere and cannot be framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; img-src 'self'; \
                   connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        HTML,
    )
}

fn script(text: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], text)
}

pub async fn app_js() -> impl IntoResponse {
    script(APP)
}

pub async fn onepw_js() -> impl IntoResponse {
    script(ONEPW)
}

pub async fn avatar() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "image/svg+xml")], AVATAR)
}
