//! Syncstead's own accounts over real HTTP, on the backend the suite runs on: the requests
//! Firefox desktop and the sign-in page make, in their order (docs/accounts.md), with the
//! client half of onepw done here as the page does it.
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

mod common;

use common::accounts::*;
use common::*;
use data_encoding::HEXLOWER;
use reqwest::Method;
use serde_json::json;
use syncstead_server::accounts::onepw;

/// The whole desktop sign-in and first token, then a second device: same kB, same kid,
/// same Sync bucket (accounts.md "key stability").
#[tokio::test]
async fn desktop_sign_in_reaches_storage_and_a_second_device_gets_the_same_keys() {
    let s = open_server().await;
    let r = call(&s, Method::GET, "/.well-known/fxa-client-configuration", None, None).await;
    let d = r.json();
    assert_eq!(
        d["auth_server_base_url"], s.base,
        "no version segment: Firefox adds /v1"
    );
    assert_eq!(d["sync_tokenserver_base_url"], s.base);
    assert_eq!(d["profile_server_base_url"], format!("{}/profile", s.base));
    // The sign-in page is served from that same origin.
    let page = call(
        &s,
        Method::GET,
        "/?context=oauth_webchannel_v1&service=sync",
        None,
        None,
    )
    .await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("/accounts/app.mjs"));
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'none'"));

    let email = "ada@example.org";
    let first = page_sign_in(&s, email, PASSWORD, true).await;
    let jwe = "eyJhbGciOiJFQ0RILUVTIn0..aXY.Y3Q.dGFn";
    let (rotation, code) = authorize(&s, &first, "verifier-verifier-verifier-verifier-verifier", jwe).await;

    // Firefox: the code exchange, Hawk-signed with the session token from fxaccounts:login.
    let path = "/v1/oauth/token";
    let r = call(
        &s,
        Method::POST,
        path,
        Some(hawk_header(&s, &first.session, "POST", path)),
        Some(json!({
            "grant_type": "authorization_code", "code": code, "client_id": DESKTOP,
            "code_verifier": "verifier-verifier-verifier-verifier-verifier",
        })),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let t = r.json();
    assert_eq!(t["keys_jwe"], jwe, "handed back as stored, never opened");
    assert!(t["scope"].as_str().unwrap().contains(OLDSYNC));
    let refresh = t["refresh_token"].as_str().unwrap().to_string();
    // A code is good once.
    let r = call(
        &s,
        Method::POST,
        path,
        None,
        Some(json!({
            "grant_type": "authorization_code", "code": code, "client_id": DESKTOP,
            "code_verifier": "verifier-verifier-verifier-verifier-verifier",
        })),
    )
    .await;
    assert_errno(&r, 400, 163);
    // Firefox throws the refresh token away at once.
    let r = call(
        &s,
        Method::POST,
        "/v1/oauth/destroy",
        None,
        Some(json!({"client_id": DESKTOP, "token": refresh})),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = call(
        &s,
        Method::POST,
        path,
        None,
        Some(json!({"grant_type": "refresh_token", "client_id": DESKTOP, "refresh_token": refresh})),
    )
    .await;
    assert_errno(&r, 401, 110);

    // From then on every access token comes from the fxa-credentials grant.
    let r = call(
        &s,
        Method::POST,
        path,
        Some(hawk_header(&s, &first.session, "POST", path)),
        Some(json!({
            "grant_type": "fxa-credentials", "client_id": DESKTOP, "scope": OLDSYNC, "ttl": 21600,
        })),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let access = r.json()["access_token"].as_str().unwrap().to_string();
    let (_, kid) = onepw::sync_key(&first.kb, rotation);
    let r = send(
        s.http
            .get(format!("{}/1.0/sync/1.5", s.base))
            .bearer_auth(&access)
            .header("x-keyid", &kid),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let token = r.json();
    assert!(token["api_endpoint"].as_str().unwrap().starts_with(&s.base));

    // A second device: the same password unlocks the same kB, so the same kid and bucket.
    let second = page_sign_in(&s, email, PASSWORD, false).await;
    assert_eq!(second.uid, first.uid);
    assert_eq!(second.kb, first.kb, "every device gets the same kB");
    let (rotation2, _) = authorize(&s, &second, "another-verifier-another-verifier-another", jwe).await;
    assert_eq!(rotation2, rotation);
    assert_eq!(
        onepw::sync_key(&second.kb, rotation2),
        onepw::sync_key(&first.kb, rotation)
    );
    let r = call(
        &s,
        Method::POST,
        path,
        Some(format!("Bearer fxs_{}", second.session)),
        Some(json!({
            "grant_type": "fxa-credentials", "client_id": DESKTOP, "scope": OLDSYNC,
        })),
    )
    .await;
    let access2 = r.json()["access_token"].as_str().unwrap().to_string();
    let r = send(
        s.http
            .get(format!("{}/1.0/sync/1.5", s.base))
            .bearer_auth(&access2)
            .header("x-keyid", &kid),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["uid"], token["uid"], "the same Sync bucket");
    s.stop().await;
}

#[tokio::test]
async fn wrong_passwords_signatures_and_tokens_get_the_account_servers_errors() {
    let s = open_server().await;
    let me = page_sign_in(&s, "bo@example.org", PASSWORD, true).await;
    let wrong = onepw::stretch("bo@example.org", "not the password");
    let r = call(
        &s,
        Method::POST,
        "/v1/account/login",
        None,
        Some(json!({"email": "bo@example.org", "authPW": HEXLOWER.encode(&wrong.auth_pw)})),
    )
    .await;
    assert_errno(&r, 400, 103);
    assert!(r.header("retry-after").is_none(), "no backoff on a permanent error");
    let r = call(
        &s,
        Method::POST,
        "/v1/account/login",
        None,
        Some(json!({"email": "nobody@example.org", "authPW": HEXLOWER.encode(&wrong.auth_pw)})),
    )
    .await;
    assert_errno(&r, 400, 102);
    let r = send(s.http.post(format!("{}/v1/account/login", s.base)).body("{not json")).await;
    assert_errno(&r, 400, 106);
    let r = call(
        &s,
        Method::POST,
        "/v1/account/login",
        None,
        Some(json!({"email": "bo@example.org", "authPW": "short"})),
    )
    .await;
    assert_errno(&r, 400, 107);
    let r = page_sign_in_fails_twice(&s, &me).await;
    assert_errno(&r, 400, 101);
    // A Hawk header signed for another path does not verify.
    let r = call(
        &s,
        Method::GET,
        "/v1/session/status",
        Some(hawk_header(&s, &me.session, "GET", "/v1/account/devices")),
        None,
    )
    .await;
    assert_errno(&r, 401, 109);
    let signed = hawk_header(&s, &me.session, "GET", "/v1/session/status");
    let r = call(&s, Method::GET, "/v1/session/status", Some(signed.clone()), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["uid"], me.uid.as_str());
    // The same signed request again is a replay (T10-118's rule, on every process that
    // shares the PostgreSQL database).
    let r = call(&s, Method::GET, "/v1/session/status", Some(signed), None).await;
    assert_errno(&r, 401, 109);
    let r = call(
        &s,
        Method::GET,
        "/v1/session/status",
        Some(format!("Bearer fxs_{}", "0".repeat(64))),
        None,
    )
    .await;
    assert_errno(&r, 401, 110);
    // PKCE: a code is refused to a caller without the verifier (and is then spent).
    let (_, code) = authorize(&s, &me, "the-right-verifier-the-right-verifier-right", "a.b.c.d.e").await;
    let r = call(
        &s,
        Method::POST,
        "/v1/oauth/token",
        None,
        Some(
            json!({"grant_type": "authorization_code", "code": code, "client_id": DESKTOP, "code_verifier": "a-guess"}),
        ),
    )
    .await;
    assert_errno(&r, 400, 163);
    let r = call(
        &s,
        Method::POST,
        "/v1/oauth/token",
        None,
        Some(json!({"grant_type": "fxa-credentials", "client_id": "0000000000000000", "scope": OLDSYNC})),
    )
    .await;
    assert_errno(&r, 400, 162);
    // A session destroyed is gone.
    let path = "/v1/session/destroy";
    let r = call(
        &s,
        Method::POST,
        path,
        Some(hawk_header(&s, &me.session, "POST", path)),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = call(
        &s,
        Method::GET,
        "/v1/session/status",
        Some(format!("Bearer fxs_{}", me.session)),
        None,
    )
    .await;
    assert_errno(&r, 401, 110);
    s.stop().await;
}

/// What the page's "Change password" does: prove the old password, unwrap kB with it, and
/// hand the server kB wrapped under the new one. Answers the finish step's response.
async fn change_password(s: &TestServer, email: &str, old: &str, new: &str) -> Resp {
    change_credentials(s, email, old, new, None).await
}

/// A password change, or with `new_email` the account page's e-mail change (onepw salts
/// with the address, so kB is wrapped again for the new one).
async fn change_credentials(s: &TestServer, email: &str, old: &str, new: &str, new_email: Option<&str>) -> Resp {
    let o = onepw::stretch(email, old);
    let body = json!({"email": email, "oldAuthPW": HEXLOWER.encode(&o.auth_pw)});
    let r = call(s, Method::POST, "/v1/password/change/start", None, Some(body)).await;
    if r.status != 200 {
        return r;
    }
    let start = r.json();
    let kb = fetch_kb(s, start["keyFetchToken"].as_str().unwrap(), &o.unwrap_b_key).await;
    let n = onepw::stretch(new_email.unwrap_or(email), new);
    // wrapKb = kB XOR the new password's unwrapBKey (the same XOR that unwraps).
    let mut body = json!({
        "authPW": HEXLOWER.encode(&n.auth_pw),
        "wrapKb": HEXLOWER.encode(&onepw::unwrap_kb(&kb, &n.unwrap_b_key)),
    });
    if let Some(e) = new_email {
        body["email"] = e.into();
    }
    let change = start["passwordChangeToken"].as_str().unwrap();
    let path = "/v1/password/change/finish?keys=true";
    let hawk = || Some(hawk_header_for(s, change, "passwordChangeToken", "POST", path));
    let r = call(s, Method::POST, path, hawk(), Some(body.clone())).await;
    if r.status == 200 {
        // The change token is good once.
        let again = call(s, Method::POST, path, hawk(), Some(body)).await;
        assert_errno(&again, 401, 110);
    }
    r
}

/// A password change keeps kB, the kid and the Sync bucket (accounts.md), signs out every
/// other session, and the old password stops working.
#[tokio::test]
async fn password_change_keeps_the_keys_and_the_bucket() {
    let s = open_server().await;
    let email = "cy@example.org";
    let first = page_sign_in(&s, email, PASSWORD, true).await;
    let before = sync_token(&s, &first).await;
    let path = "/v1/account/device";
    let auth = Some(format!("Bearer fxs_{}", first.session));
    let r = call(
        &s,
        Method::POST,
        path,
        auth,
        Some(json!({"name": "laptop", "type": "desktop"})),
    )
    .await;
    let device = r.json()["id"].as_str().unwrap().to_string();
    let r = change_password(&s, email, "not the password", "a brand new password").await;
    assert_errno(&r, 400, 103);
    let r = change_password(&s, email, PASSWORD, "a brand new password").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["uid"], first.uid.as_str());
    assert!(v["sessionToken"].is_string() && v["keyFetchToken"].is_string(), "{v}");
    let r = call(
        &s,
        Method::GET,
        "/v1/session/status",
        Some(format!("Bearer fxs_{}", first.session)),
        None,
    )
    .await;
    assert_errno(&r, 401, 110);
    let old = onepw::stretch(email, PASSWORD);
    let body = json!({"email": email, "authPW": HEXLOWER.encode(&old.auth_pw)});
    let r = call(&s, Method::POST, "/v1/account/login", None, Some(body)).await;
    assert_errno(&r, 400, 103);
    let again = page_sign_in(&s, email, "a brand new password", false).await;
    assert_eq!(again.kb, first.kb, "a password change keeps kB");
    let after = sync_token(&s, &again).await;
    assert_eq!(after["uid"], before["uid"], "the same Sync bucket");
    // The device outlives its ended session: Firefox keeps its device id when it signs in
    // again, and its update attaches the device to the new session.
    let auth = || Some(format!("Bearer fxs_{}", again.session));
    let list = call(&s, Method::GET, "/v1/account/devices", auth(), None).await.json();
    assert_eq!(list[0]["id"], device.as_str(), "{list}");
    assert_eq!(list[0]["isCurrentDevice"], false);
    let r = call(
        &s,
        Method::POST,
        path,
        auth(),
        Some(json!({"id": device, "name": "laptop"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["isCurrentDevice"], true);
    // A change token cannot be forged from a session token.
    let path = "/v1/password/change/finish";
    let r = call(
        &s,
        Method::POST,
        path,
        Some(format!("Bearer fxp_{}", again.session)),
        Some(json!({"authPW": "0".repeat(64), "wrapKb": "0".repeat(64)})),
    )
    .await;
    assert_errno(&r, 401, 110);
    s.stop().await;
}

/// The token server takes this server's access tokens only when they are for it: signed
/// with the kept key, unexpired, with this server as audience and the Sync scope.
#[tokio::test]
async fn the_token_server_checks_its_own_tokens_audience_expiry_and_scope() {
    use syncstead_server::accounts::jwt::{AccessClaims, Issuer};
    let s = open_server().await;
    let me = page_sign_in(&s, "di@example.org", PASSWORD, true).await;
    let good = sync_token(&s, &me).await;
    assert!(good["id"].is_string());
    // The key the server made on first use, in its data directory.
    let issuer = Issuer::load_or_create(&s.dir.path().join("accounts-signing-key.pem"), s.base.clone()).unwrap();
    let r = call(
        &s,
        Method::POST,
        "/v1/account/scoped-key-data",
        Some(format!("Bearer fxs_{}", me.session)),
        Some(json!({"client_id": DESKTOP, "scope": OLDSYNC})),
    )
    .await;
    let rotation = r.json()[OLDSYNC]["keyRotationTimestamp"].as_i64().unwrap();
    let (_, kid) = onepw::sync_key(&me.kb, rotation);
    let now = (now() as i64) - 5;
    let claims = |aud: &str, scope: &str, exp: i64| AccessClaims {
        iss: issuer.issuer.clone(),
        sub: me.uid.clone(),
        aud: aud.to_string(),
        client_id: DESKTOP.into(),
        scope: scope.to_string(),
        iat: now,
        exp,
        jti: "jti".into(),
        generation: rotation,
    };
    let token_server = |jwt: String| {
        let url = format!("{}/1.0/sync/1.5", s.base);
        send(s.http.get(url).bearer_auth(jwt).header("x-keyid", kid.clone()))
    };
    let r = token_server(issuer.sign(&claims(&s.base, OLDSYNC, now + 600))).await;
    assert_eq!(r.status, 200, "the same claims as the server's own: {}", r.text);
    assert_eq!(r.json()["uid"], good["uid"]);
    let r = token_server(issuer.sign(&claims("https://another.example", OLDSYNC, now + 600))).await;
    assert_eq!(r.status, 401, "another audience: {}", r.text);
    let r = token_server(issuer.sign(&claims(&s.base, OLDSYNC, now - 120))).await;
    assert_eq!(r.status, 401, "expired: {}", r.text);
    let r = token_server(issuer.sign(&claims(&s.base, "profile", now + 600))).await;
    assert_eq!(r.status, 401, "no Sync scope: {}", r.text);
    s.stop().await;
}

async fn page_sign_in_fails_twice(s: &TestServer, me: &SignedIn) -> Resp {
    let _ = me;
    let keys = onepw::stretch("bo@example.org", PASSWORD);
    call(
        s,
        Method::POST,
        "/v1/account/create",
        None,
        Some(json!({"email": "BO@example.org", "authPW": HEXLOWER.encode(&keys.auth_pw)})),
    )
    .await
}

/// Registration is closed unless the operator opens it, or asks for an invitation code.
#[tokio::test]
async fn sign_up_follows_the_registration_policy() {
    let auth_pw = HEXLOWER.encode(&onepw::stretch("cy@example.org", PASSWORD).auth_pw);
    let closed = TestServer::start().await;
    let r = call(
        &closed,
        Method::POST,
        "/v1/account/create",
        None,
        Some(json!({"email": "cy@example.org", "authPW": auth_pw})),
    )
    .await;
    assert_errno(&r, 403, 125);
    closed.stop().await;
    let invite = TestServer::start_with(|l| {
        l.account_registration = Some("invite".into());
        l.account_invite_code = Some("let-me-in".into());
    })
    .await;
    let r = call(
        &invite,
        Method::POST,
        "/v1/account/create",
        None,
        Some(json!({"email": "cy@example.org", "authPW": auth_pw, "inviteCode": "guess"})),
    )
    .await;
    assert_errno(&r, 403, 125);
    let r = call(
        &invite,
        Method::POST,
        "/v1/account/create",
        None,
        Some(json!({"email": "cy@example.org", "authPW": auth_pw, "inviteCode": "let-me-in"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    invite.stop().await;
}

/// The requests Firefox repeats after sign-in: profile, device registration and list,
/// attached clients, the (empty) command queue, notify; and the public key.
#[tokio::test]
async fn profile_devices_and_commands_answer_as_firefox_expects() {
    let s = open_server().await;
    let me = page_sign_in(&s, "di@example.org", PASSWORD, true).await;
    let path = "/v1/oauth/token";
    let r = call(
        &s,
        Method::POST,
        path,
        Some(hawk_header(&s, &me.session, "POST", path)),
        Some(json!({
            "grant_type": "fxa-credentials", "client_id": DESKTOP, "scope": "profile",
        })),
    )
    .await;
    let profile_token = r.json()["access_token"].as_str().unwrap().to_string();
    let r = send(
        s.http
            .get(format!("{}/profile/v1/profile", s.base))
            .bearer_auth(&profile_token),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let p = r.json();
    assert_eq!(p["email"], "di@example.org");
    assert!(p["avatar"].is_string(), "Firefox for Android needs a string");
    // A profile token is no Sync token.
    let r = send(
        s.http
            .get(format!("{}/1.0/sync/1.5", s.base))
            .bearer_auth(&profile_token)
            .header("x-keyid", "1-AAAAAAAAAAAAAAAAAAAAAA"),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text);

    let auth = |p: &str, m: &str| Some(hawk_header(&s, &me.session, m, p));
    let body = json!({"name": "Ada's Firefox", "type": "desktop", "availableCommands": {"https://identity.mozilla.com/cmd/open-uri": "k"}});
    let r = call(
        &s,
        Method::POST,
        "/v1/account/device",
        auth("/v1/account/device", "POST"),
        Some(body),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.json()["id"].as_str().unwrap().to_string();
    // The same session registering again updates its device, not a second one.
    let r = call(
        &s,
        Method::POST,
        "/v1/account/device",
        auth("/v1/account/device", "POST"),
        Some(json!({"name": "renamed"})),
    )
    .await;
    assert_eq!(r.json()["id"], id.as_str());
    let path = "/v1/account/devices?filterIdleDevicesTimestamp=0";
    let r = call(&s, Method::GET, path, auth(path, "GET"), None).await;
    let list = r.json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["name"], "renamed");
    assert_eq!(list[0]["isCurrentDevice"], true);
    assert!(list[0]["availableCommands"]["https://identity.mozilla.com/cmd/open-uri"].is_string());
    let r = call(
        &s,
        Method::GET,
        "/v1/account/attached_clients",
        auth("/v1/account/attached_clients", "GET"),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    let path = "/v1/account/device/commands?index=0&limit=200";
    let r = call(&s, Method::GET, path, auth(path, "GET"), None).await;
    assert_eq!(r.json(), json!({"index": 0, "last": true, "messages": []}));
    let r = call(
        &s,
        Method::POST,
        "/v1/account/devices/notify",
        None,
        Some(json!({"to": "all"})),
    )
    .await;
    assert_eq!(r.status, 200);
    // Another account's session cannot rename this device: to it the id is unknown (123,
    // on which Firefox registers a new device rather than giving up).
    let other = page_sign_in(&s, "eve@example.org", PASSWORD, true).await;
    let r = call(
        &s,
        Method::POST,
        "/v1/account/device",
        Some(hawk_header(&s, &other.session, "POST", "/v1/account/device")),
        Some(json!({"id": id, "name": "pwned"})),
    )
    .await;
    assert_errno(&r, 400, 123);
    let path = "/v1/account/devices";
    let r = call(&s, Method::GET, path, auth(path, "GET"), None).await;
    assert_eq!(r.json()[0]["name"], "renamed");
    let jwks = call(&s, Method::GET, "/v1/jwks", None, None).await.json();
    assert_eq!(jwks["keys"][0]["kty"], "RSA");
    assert!(jwks["keys"][0].get("d").is_none(), "the public half only");
    s.stop().await;
}

/// The account page's e-mail change: the same kB and bucket under the new address; an
/// address another account has is refused.
#[tokio::test]
async fn an_email_change_keeps_the_keys_and_the_bucket() {
    let s = open_server().await;
    let first = page_sign_in(&s, "old@example.org", PASSWORD, true).await;
    let before = sync_token(&s, &first).await;
    page_sign_in(&s, "taken@example.org", PASSWORD, true).await;
    let r = change_credentials(&s, "old@example.org", PASSWORD, PASSWORD, Some("taken@example.org")).await;
    assert_errno(&r, 400, 101);
    // The page sends the address lower-cased, as it stretched the password with it.
    let r = change_credentials(&s, "old@example.org", PASSWORD, PASSWORD, Some("New@Example.org")).await;
    assert_errno(&r, 400, 107);
    let r = change_credentials(&s, "old@example.org", PASSWORD, PASSWORD, Some("new@example.org")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let again = page_sign_in(&s, "new@example.org", PASSWORD, false).await;
    assert_eq!(again.uid, first.uid);
    assert_eq!(again.kb, first.kb, "kB is kept under the new address");
    assert_eq!(sync_token(&s, &again).await["uid"], before["uid"]);
    let keys = onepw::stretch("old@example.org", PASSWORD);
    let body = json!({"email": "old@example.org", "authPW": HEXLOWER.encode(&keys.auth_pw)});
    assert_errno(
        &call(&s, Method::POST, "/v1/account/login", None, Some(body)).await,
        400,
        102,
    );
    s.stop().await;
}

/// The account page's "Delete account": the password and a session; the account and its
/// Sync data go.
#[tokio::test]
async fn an_account_deletes_itself_with_its_sync_data() {
    let s = open_server().await;
    let email = "gone@example.org";
    let me = page_sign_in(&s, email, PASSWORD, true).await;
    let token = sync_token(&s, &me).await;
    let storage = storage_for(&s, &token);
    let put = storage.request(Method::PUT, "/storage/bookmarks/abcdefghijkl").unwrap();
    assert_eq!(send(put.json(&json!({"payload": "x"}))).await.status, 200);
    let destroy = |password: &str| {
        let keys = onepw::stretch(email, password);
        let body = json!({"email": email, "authPW": HEXLOWER.encode(&keys.auth_pw)});
        call(
            &s,
            Method::POST,
            "/v1/account/destroy",
            Some(format!("Bearer fxs_{}", me.session)),
            Some(body),
        )
    };
    assert_errno(&destroy("not the password at all").await, 400, 103);
    let r = destroy(PASSWORD).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let keys = onepw::stretch(email, PASSWORD);
    let body = json!({"email": email, "authPW": HEXLOWER.encode(&keys.auth_pw)});
    assert_errno(
        &call(&s, Method::POST, "/v1/account/login", None, Some(body)).await,
        400,
        102,
    );
    let get = storage.request(Method::GET, "/storage/bookmarks/abcdefghijkl").unwrap();
    assert_eq!(send(get).await.status, 404, "the Sync data went with the account");
    s.stop().await;
}

/// A forgotten password, by a mailed code: new kB, a fresh bucket, the code good once;
/// without a mail server the page is told to ask the operator.
#[tokio::test]
async fn a_forgotten_password_is_reset_by_a_mailed_code() {
    let (port, inbox) = fake_smtp().await;
    let s = TestServer::start_with(|c| {
        c.account_registration = Some("open".into());
        c.smtp_url = Some(format!("smtp://127.0.0.1:{port}"));
        c.smtp_from = Some("Sync <sync@example.com>".into());
    })
    .await;
    let email = "lost@example.org";
    let me = page_sign_in(&s, email, PASSWORD, true).await;
    let before = sync_token(&s, &me).await;
    let r = call(
        &s,
        Method::POST,
        "/v1/password/forgot/send_code",
        None,
        Some(json!({"email": email})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mail = inbox.lock().unwrap().join("\n");
    let code = mail
        .split_whitespace()
        .skip_while(|w| *w != "code")
        .nth(1)
        .unwrap_or_else(|| panic!("no code in {mail}"))
        .trim_end_matches('.')
        .to_string();
    assert!(mail.contains("/reset_password"), "{mail}");
    let fresh = onepw::stretch(email, "a new password entirely");
    let reset = |code: &str| {
        let body = json!({"email": email, "code": code, "authPW": HEXLOWER.encode(&fresh.auth_pw)});
        call(&s, Method::POST, "/v1/account/reset", None, Some(body))
    };
    assert_errno(&reset("AAAAAAAAAAAAAAAA").await, 400, 105);
    let r = reset(&code.to_lowercase()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_errno(&reset(&code).await, 400, 105);
    let again = page_sign_in(&s, email, "a new password entirely", false).await;
    assert_ne!(again.kb, me.kb, "a reset makes a new kB");
    assert_ne!(sync_token(&s, &again).await["uid"], before["uid"], "and a fresh bucket");
    s.stop().await;

    let s = open_server().await;
    page_sign_in(&s, email, PASSWORD, true).await;
    let r = call(
        &s,
        Method::POST,
        "/v1/password/forgot/send_code",
        None,
        Some(json!({"email": email})),
    )
    .await;
    assert_errno(&r, 403, 125);
    assert!(r.json()["message"].as_str().unwrap().contains("operator"));
    s.stop().await;
}

/// `account/status` (Firefox asks it when a token fails, to tell a deleted account from a
/// signed-out device) and `recovery_email/status`.
#[tokio::test]
async fn account_and_email_status_answer_as_firefox_asks() {
    let s = open_server().await;
    let me = page_sign_in(&s, "st@example.org", PASSWORD, true).await;
    let exists = |path: String| {
        let s = &s;
        async move { call(s, Method::GET, &path, None, None).await.json()["exists"].clone() }
    };
    assert_eq!(exists(format!("/v1/account/status?uid={}", me.uid)).await, true);
    assert_eq!(
        exists(format!("/v1/account/status?uid={}", "0".repeat(32))).await,
        false
    );
    let r = call(
        &s,
        Method::POST,
        "/v1/account/status",
        None,
        Some(json!({"email": "ST@example.org"})),
    )
    .await;
    assert_eq!(r.json()["exists"], true);
    let path = "/v1/recovery_email/status";
    let r = call(
        &s,
        Method::GET,
        path,
        Some(hawk_header(&s, &me.session, "GET", path)),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["email"], "st@example.org");
    assert_eq!(v["verified"], true);
    assert_eq!(v["sessionVerified"], true);
    assert_errno(&call(&s, Method::GET, path, None, None).await, 401, 110);
    s.stop().await;
}
