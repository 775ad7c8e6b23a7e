//! The operator's API behind `/admin` over real HTTP, on the suite's backend: off without
//! `admin_token`, the token checked and guessing throttled, and each action doing what
//! its `syncstead` command does.
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

mod common;

use common::accounts::*;
use common::*;
use data_encoding::HEXLOWER;
use reqwest::Method;
use serde_json::{json, Value};
use syncstead_server::accounts::onepw;

const TOKEN: &str = "an-admin-token-for-the-tests";

async fn admin_server() -> TestServer {
    TestServer::start_with(|l| {
        l.account_registration = Some("open".into());
        l.admin_token = Some(TOKEN.into());
    })
    .await
}

async fn admin(s: &TestServer, method: Method, path: &str, body: Option<Value>) -> Resp {
    let mut rb = s
        .http
        .request(method, format!("{}/admin/api{path}", s.base))
        .bearer_auth(TOKEN);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    send(rb).await
}

#[tokio::test]
async fn the_admin_page_is_off_without_a_token_and_guarded_with_one() {
    let s = open_server().await;
    assert_eq!(call(&s, Method::GET, "/admin", None, None).await.status, 404);
    assert_eq!(admin(&s, Method::GET, "/overview", None).await.status, 404);
    s.stop().await;

    let s = admin_server().await;
    let page = call(&s, Method::GET, "/admin", None, None).await;
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'none'"));
    assert_eq!(
        call(&s, Method::GET, "/admin/api/overview", None, None).await.status,
        401
    );
    let wrong = || {
        call(
            &s,
            Method::GET,
            "/admin/api/overview",
            Some("Bearer not-the-token".into()),
            None,
        )
    };
    // Ten failures in all (the request without a token counts) are answered 401.
    for _ in 0..9 {
        assert_eq!(wrong().await.status, 401);
    }
    // Guessing from one address is throttled, even with the right token meanwhile.
    let r = wrong().await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(admin(&s, Method::GET, "/overview", None).await.status, 429);
    s.stop().await;
}

#[tokio::test]
async fn admin_actions_list_disable_invite_and_delete() {
    let s = admin_server().await;
    let me = page_sign_in(&s, "op@example.org", PASSWORD, true).await;
    let token = sync_token(&s, &me).await;
    let storage = storage_for(&s, &token);
    let put = storage.request(Method::PUT, "/storage/bookmarks/abcdefghijkl").unwrap();
    assert_eq!(send(put.json(&json!({"payload": "x".repeat(500)}))).await.status, 200);

    let o = admin(&s, Method::GET, "/overview", None).await;
    assert_eq!(o.status, 200, "{}", o.text);
    let o = o.json();
    assert_eq!(o["health"]["database"], "Ok");
    assert_eq!(o["policy"]["account_registration"], "open");
    assert_eq!(o["nodes"][0]["url"], s.base);
    assert_eq!(o["nodes"][0]["current_load"], 1);

    let list = admin(&s, Method::GET, "/accounts", None).await.json();
    assert_eq!(list[0]["email"], "op@example.org");
    assert_eq!(list[0]["disabled"], false);
    assert!(list[0]["storage_bytes"].as_u64().unwrap() >= 500, "{list}");
    let users = admin(&s, Method::GET, "/token-users", None).await.json();
    assert_eq!(users[0]["uid"], token["uid"]);

    // Disable: the owner's sign-in is refused; enable: back.
    let login = || {
        let keys = onepw::stretch("op@example.org", PASSWORD);
        let body = json!({"email": "op@example.org", "authPW": HEXLOWER.encode(&keys.auth_pw)});
        call(&s, Method::POST, "/v1/account/login", None, Some(body))
    };
    let uid = me.uid.clone();
    assert_eq!(
        admin(&s, Method::POST, &format!("/accounts/{uid}/disable"), Some(json!({})))
            .await
            .status,
        200
    );
    assert_errno(&login().await, 400, 127);
    assert_eq!(
        admin(&s, Method::POST, "/accounts/op@example.org/enable", Some(json!({})))
            .await
            .status,
        200
    );
    assert_eq!(login().await.status, 200);
    let r = admin(
        &s,
        Method::POST,
        "/accounts/nobody@example.org/disable",
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().unwrap().contains("nobody@example.org"));
    assert_eq!(
        admin(&s, Method::POST, &format!("/accounts/{uid}/explode"), Some(json!({})))
            .await
            .status,
        404
    );

    // Invite: the account exists and its owner chooses the password with the code.
    let r = admin(
        &s,
        Method::POST,
        "/accounts/invite",
        Some(json!({"email": "new@example.org"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let invite = r.json();
    assert!(invite["link"]
        .as_str()
        .unwrap()
        .ends_with("/reset_password?email=new@example.org"));
    let fresh = onepw::stretch("new@example.org", "chosen by its owner");
    let body = json!({"email": "new@example.org", "code": invite["code"], "authPW": HEXLOWER.encode(&fresh.auth_pw)});
    assert_eq!(
        call(&s, Method::POST, "/v1/account/reset", None, Some(body))
            .await
            .status,
        200
    );
    page_sign_in(&s, "new@example.org", "chosen by its owner", false).await;
    let r = admin(
        &s,
        Method::POST,
        "/accounts/invite",
        Some(json!({"email": "new@example.org"})),
    )
    .await;
    assert_eq!(r.status, 409);

    // Weave 1.1 users and the allow list.
    let weave = weave_account(&s, "pale@example.org", "a weave password").await;
    let list = admin(&s, Method::GET, "/weave-users", None).await.json();
    assert_eq!(list[0]["username"], weave.as_str());
    let r = admin(
        &s,
        Method::POST,
        &format!("/weave-users/{weave}/disable"),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        admin(&s, Method::GET, "/weave-users", None).await.json()[0]["disabled"],
        true
    );
    let r = admin(
        &s,
        Method::POST,
        "/allowed",
        Some(json!({"fxa_uid": "abc123", "allow": true})),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(admin(&s, Method::GET, "/allowed", None).await.json(), json!(["abc123"]));
    assert_eq!(
        admin(
            &s,
            Method::POST,
            "/allowed",
            Some(json!({"fxa_uid": "abc123", "allow": false}))
        )
        .await
        .status,
        200
    );
    assert_eq!(
        admin(
            &s,
            Method::POST,
            "/allowed",
            Some(json!({"fxa_uid": "abc123", "allow": false}))
        )
        .await
        .status,
        404
    );
    assert_eq!(
        admin(&s, Method::POST, "/allowed", Some(json!({"nope": 1})))
            .await
            .status,
        400
    );

    // Delete: the account and its Sync data.
    assert_eq!(
        admin(&s, Method::POST, &format!("/accounts/{uid}/delete"), Some(json!({})))
            .await
            .status,
        200
    );
    assert_errno(&login().await, 400, 102);
    let get = storage.request(Method::GET, "/storage/bookmarks/abcdefghijkl").unwrap();
    assert_eq!(send(get).await.status, 404);
    s.stop().await;
}
