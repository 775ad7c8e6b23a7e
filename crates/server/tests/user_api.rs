//! User API 1.0 over real HTTP (user-api-1.0.md).
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

mod common;

use common::*;
use data_encoding::BASE64;
use reqwest::Method;
use serde_json::json;

const EMAIL: &str = "john@example.com";
const USER: &str = "kismw365lo7emoxr3ohojgpild6lph4b";
const PASSWORD: &str = "correct horse battery";

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", BASE64.encode(format!("{user}:{password}").as_bytes()))
}

async fn call(s: &TestServer, method: Method, path: &str, auth: Option<String>, body: Option<String>) -> Resp {
    let mut rb = s.http.request(method, format!("{}{path}", s.base));
    if let Some(a) = auth {
        rb = rb.header("authorization", a);
    }
    if let Some(b) = body {
        rb = rb.header("content-type", "text/plain").body(b);
    }
    send(rb).await
}

async fn create(s: &TestServer, user: &str, body: serde_json::Value) -> Resp {
    call(
        s,
        Method::PUT,
        &format!("/user/1.0/{user}"),
        None,
        Some(body.to_string()),
    )
    .await
}

#[tokio::test]
async fn u10_001_u10_002_u10_003_u10_020_u10_031_create_and_exists() {
    let s = TestServer::start().await;
    let r = call(&s, Method::GET, &format!("/user/1.0/{USER}"), None, None).await;
    assert_eq!((r.status.as_u16(), r.text.as_str()), (200, "0"));
    let r = create(&s, USER, json!({"password": PASSWORD, "email": EMAIL})).await;
    assert_eq!((r.status.as_u16(), r.text.as_str()), (200, USER));
    assert!(r.header("x-weave-timestamp").is_some(), "U10-003");
    let r = call(&s, Method::GET, &format!("/user/1/{USER}"), None, None).await;
    assert_eq!(r.text, "1", "version 1 works too");
    call(&s, Method::GET, &format!("/user/2.0/{USER}"), None, None)
        .await
        .assert_error(404, 0);
    call(&s, Method::GET, "/user/1.0/bad%20name", None, None)
        .await
        .assert_error(404, 0);
    // The password is stored as an Argon2id hash.
    let store = s.running.as_ref().unwrap().state.accounts.clone();
    assert!(store
        .account(USER)
        .await
        .unwrap()
        .unwrap()
        .password_hash
        .starts_with("$argon2id$"));
}

#[tokio::test]
async fn u10_010_u10_011_u10_013_u10_014_u10_030_create_checks_in_order() {
    let s = TestServer::start().await;
    let other = "v64aw4knp6ittxnarcpmoi7smokoazsr"; // johndoe@example.com
    create(&s, USER, json!({"password": PASSWORD, "email": EMAIL})).await;
    create(&s, USER, json!({"password": PASSWORD, "email": EMAIL}))
        .await
        .assert_error(400, 4);
    call(
        &s,
        Method::PUT,
        &format!("/user/1.0/{other}"),
        None,
        Some("{not json".into()),
    )
    .await
    .assert_error(400, 6);
    create(&s, other, json!({"password": PASSWORD}))
        .await
        .assert_error(400, 12);
    create(&s, other, json!({"password": PASSWORD, "email": "not-an-address"}))
        .await
        .assert_error(400, 12);
    create(&s, other, json!({"password": PASSWORD, "email": EMAIL}))
        .await
        .assert_error(400, 15);
    create(&s, other, json!({"email": "johndoe@example.com"}))
        .await
        .assert_error(400, 7);
    create(&s, other, json!({"password": "short", "email": "johndoe@example.com"}))
        .await
        .assert_error(400, 9);
    let r = create(
        &s,
        other,
        json!({"password": PASSWORD, "e-mail": "johndoe@example.com"}),
    )
    .await;
    assert_eq!(r.status, 200, "the documented e-mail key works too: {}", r.text);
}

#[tokio::test]
async fn u10_033_u10_090_registration_policies() {
    let closed = TestServer::start_with(|c| c.registration = Some("closed".into())).await;
    create(&closed, USER, json!({"password": PASSWORD, "email": EMAIL}))
        .await
        .assert_error(400, 4);
    let admin = TestServer::start_with(|c| c.registration = Some("admin".into())).await;
    create(&admin, USER, json!({"password": PASSWORD, "email": EMAIL}))
        .await
        .assert_error(400, 4);
    let secret = TestServer::start_with(|c| {
        c.registration = Some("secret".into());
        c.weave_secret = Some("let-me-in".into());
    })
    .await;
    create(&secret, USER, json!({"password": PASSWORD, "email": EMAIL}))
        .await
        .assert_error(400, 2);
    let r = send(
        secret
            .http
            .put(format!("{}/user/1.0/{USER}", secret.base))
            .header("x-weave-secret", "wrong")
            .body(json!({"password": PASSWORD, "email": EMAIL}).to_string()),
    )
    .await;
    r.assert_error(400, 2);
    let r = send(
        secret
            .http
            .put(format!("{}/user/1.0/{USER}", secret.base))
            .header("x-weave-secret", "let-me-in")
            .body(json!({"password": PASSWORD, "email": EMAIL}).to_string()),
    )
    .await;
    assert_eq!(r.status, 200);
    let capped = TestServer::start_with(|c| c.max_accounts = Some(1)).await;
    assert_eq!(
        create(&capped, USER, json!({"password": PASSWORD, "email": EMAIL}))
            .await
            .status,
        200
    );
    create(
        &capped,
        "v64aw4knp6ittxnarcpmoi7smokoazsr",
        json!({"password": PASSWORD, "email": "johndoe@example.com"}),
    )
    .await
    .assert_error(400, 4);
    let loose = TestServer::start_with(|c| c.strict_usernames = Some(false)).await;
    assert_eq!(
        create(&loose, "anyname", json!({"password": PASSWORD, "email": EMAIL}))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn u10_050_u10_051_u10_054_node_assignment() {
    let s = TestServer::start().await;
    let r = call(&s, Method::GET, &format!("/user/1.0/{USER}/node/weave"), None, None).await;
    assert_eq!(r.status, 404);
    create(&s, USER, json!({"password": PASSWORD, "email": EMAIL})).await;
    let r = call(&s, Method::GET, &format!("/user/1.0/{USER}/node/weave"), None, None).await;
    assert_eq!((r.status.as_u16(), r.text.clone()), (200, format!("{}/", s.base)));
}

#[tokio::test]
async fn u10_012_u10_040_u10_041_basic_auth_and_delete() {
    let s = TestServer::start().await;
    create(&s, USER, json!({"password": PASSWORD, "email": EMAIL})).await;
    let path = format!("/user/1.0/{USER}");
    let r = call(&s, Method::DELETE, &path, None, None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate").as_deref(), Some("Basic realm=\"Sync\""));
    assert_eq!(
        call(&s, Method::DELETE, &path, Some(basic(USER, "wrong password")), None)
            .await
            .status,
        401
    );
    assert_eq!(
        call(&s, Method::DELETE, &path, Some(basic("someoneelse", PASSWORD)), None)
            .await
            .status,
        401
    );
    let r = call(&s, Method::DELETE, &path, Some(basic(EMAIL, PASSWORD)), None).await;
    assert_eq!(
        (r.status.as_u16(), r.text.as_str()),
        (200, "0"),
        "the e-mail address works as Basic user (S11-011)"
    );
    assert_eq!(call(&s, Method::GET, &path, None, None).await.text, "0");
}

#[tokio::test]
async fn u10_062_u10_063_u10_064_u10_065_u10_066_password_changes() {
    let s = TestServer::start().await;
    create(&s, USER, json!({"password": PASSWORD, "email": EMAIL})).await;
    let path = format!("/user/1.0/{USER}/password");
    let auth = Some(basic(USER, PASSWORD));
    call(&s, Method::POST, &path, auth.clone(), Some(String::new()))
        .await
        .assert_error(400, 7);
    call(&s, Method::POST, &path, auth.clone(), Some("short".into()))
        .await
        .assert_error(400, 9);
    assert_eq!(
        call(&s, Method::POST, &path, None, Some("new password 1".into()))
            .await
            .status,
        401
    );
    let r = call(&s, Method::POST, &path, auth.clone(), Some("new password 1".into())).await;
    assert_eq!((r.status.as_u16(), r.text.as_str()), (200, "success"));
    // The old password no longer works, the new one does.
    let del = format!("/user/1.0/{USER}/password_reset");
    assert_eq!(call(&s, Method::DELETE, &del, auth, None).await.status, 401);
    assert_eq!(
        call(&s, Method::DELETE, &del, Some(basic(USER, "new password 1")), None)
            .await
            .status,
        200
    );
    // A reset code from the operator authorises a change once.
    let store = s.running.as_ref().unwrap().state.accounts.clone();
    let hash = syncstead_server::user_api::reset_code_hash(b"CODE-123");
    store.set_reset_code(USER, Some((hash, i64::MAX))).await.unwrap();
    let with_code = |code: &'static str, pw: &'static str| {
        send(
            s.http
                .post(format!("{}{path}", s.base))
                .header("x-weave-password-reset", code)
                .body(pw),
        )
    };
    with_code("WRONG", "new password 2").await.assert_error(400, 10);
    assert_eq!(with_code("CODE-123", "new password 2").await.status, 200);
    with_code("CODE-123", "new password 3").await.assert_error(400, 10);
    assert_eq!(
        call(&s, Method::DELETE, &del, Some(basic(USER, "new password 2")), None)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn u10_060_u10_061_u10_070_u10_080_email_reset_and_captcha() {
    let s = TestServer::start().await;
    create(&s, USER, json!({"password": PASSWORD, "email": EMAIL})).await;
    let auth = Some(basic(USER, PASSWORD));
    let path = format!("/user/1.0/{USER}/email");
    call(&s, Method::POST, &path, auth.clone(), Some("nope".into()))
        .await
        .assert_error(400, 12);
    let r = call(&s, Method::POST, &path, auth, Some("john.new@example.org".into())).await;
    assert_eq!((r.status.as_u16(), r.text.as_str()), (200, "john.new@example.org"));
    let store = s.running.as_ref().unwrap().state.accounts.clone();
    assert_eq!(
        store.account(USER).await.unwrap().unwrap().email,
        "john.new@example.org"
    );
    // No mail server: the reset request is refused with 503; unknown users get code 3.
    call(&s, Method::GET, "/user/1.0/nobody/password_reset", None, None)
        .await
        .assert_error(400, 3);
    assert_eq!(
        call(&s, Method::GET, &format!("/user/1.0/{USER}/password_reset"), None, None)
            .await
            .status,
        503
    );
    assert_eq!(
        call(&s, Method::GET, "/misc/1.0/captcha_html", None, None).await.status,
        404
    );
}

#[tokio::test]
async fn repeated_failures_are_throttled() {
    let s = TestServer::start().await;
    create(&s, USER, json!({"password": PASSWORD, "email": EMAIL})).await;
    let path = format!("/user/1.0/{USER}/password_reset");
    for _ in 0..5 {
        assert_eq!(
            call(&s, Method::DELETE, &path, Some(basic(USER, "guess guess")), None)
                .await
                .status,
            401
        );
    }
    // The pair is locked out for a while: a 401, as Weave clients expect (a 503 makes
    // them report a server error), even with the right password, and no hash is computed.
    let r = call(&s, Method::DELETE, &path, Some(basic(USER, PASSWORD)), None).await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn u10_061_u10_067_reset_by_mail_and_web_form() {
    let (port, inbox) = fake_smtp().await;
    let s = TestServer::start_with(|c| {
        c.smtp_url = Some(format!("smtp://127.0.0.1:{port}"));
        c.smtp_from = Some("Sync <sync@example.com>".into());
    })
    .await;
    create(&s, USER, json!({"password": PASSWORD, "email": EMAIL})).await;
    let r = call(&s, Method::GET, &format!("/user/1.0/{USER}/password_reset"), None, None).await;
    assert_eq!((r.status.as_u16(), r.text.as_str()), (200, "success"));
    let raw = inbox.lock().unwrap().last().cloned().expect("a reset mail");
    // Undo quoted-printable: soft line breaks and the encoded '='.
    let mail = raw.replace("=\n", "").replace("=3D", "=");
    assert!(mail.contains(EMAIL) || mail.to_lowercase().contains("to:"), "{mail}");
    let key = mail
        .split("key=")
        .nth(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect::<String>()
        })
        .expect("the link carries the code");
    // The form the link opens, then the new password.
    let form = send(
        s.http
            .get(format!("{}/weave-password-reset?username={USER}&key={key}", s.base)),
    )
    .await;
    assert!(form.status == 200 && form.text.contains("<form"), "{}", form.text);
    let post = |password: &str, confirm: &str| {
        send(
            s.http
                .post(format!("{}/weave-password-reset", s.base))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!(
                    "username={USER}&key={key}&password={password}&confirm={confirm}"
                )),
        )
    };
    assert_eq!(post("new+password+1", "different+one").await.status, 400);
    assert_eq!(post("short", "short").await.status, 400);
    let r = post("new+password+1", "new+password+1").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let del = format!("/user/1.0/{USER}/password_reset");
    assert_eq!(
        call(&s, Method::DELETE, &del, Some(basic(USER, "new password 1")), None)
            .await
            .status,
        200
    );
    assert_eq!(
        post("new+password+2", "new+password+2").await.status,
        400,
        "the code works once"
    );
}

/// A real backend failure: the database file vanishes before the first read connection
/// is opened (on PostgreSQL: the schema is dropped). The Weave surfaces answer 503 with Retry-After (U10-021, U10-032, U10-053).
#[tokio::test]
async fn u10_021_u10_032_u10_053_backend_failure_is_503() {
    let s = TestServer::start_with(|c| c.token_server = Some(false)).await;
    match &s.postgres {
        Some(pg) => pg.drop_now().await,
        None => {
            for f in ["syncstead.db", "syncstead.db-wal", "syncstead.db-shm"] {
                let _ = std::fs::remove_file(s.dir.path().join(f));
            }
        }
    }
    let r = call(&s, Method::GET, &format!("/user/1.0/{USER}"), None, None).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.header("retry-after").as_deref(), Some("60"));
    let r = call(&s, Method::GET, &format!("/user/1.0/{USER}/node/weave"), None, None).await;
    assert_eq!(r.status, 503);
    let r = call(
        &s,
        Method::GET,
        &format!("/1.1/{USER}/info/collections"),
        Some(basic(USER, PASSWORD)),
        None,
    )
    .await;
    assert_eq!(r.status, 503, "S11-100");
}
