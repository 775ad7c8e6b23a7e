//! Firefox for Android (and iOS) against Syncstead accounts: the requests of Mozilla's Rust
//! account client (application-services `components/fxa-client`, `internal/http_client.rs`
//! and `internal/oauth.rs`) replayed in its order, with its bodies and headers, against the
//! real server; then its Sync client's whole-collection download (one GET, no limit).
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

mod common;

use common::accounts::*;
use common::*;
use data_encoding::BASE64URL_NOPAD;
use reqwest::Method;
use serde_json::{json, Value};
use syncstead_server::accounts::onepw;

/// Firefox for Android's OAuth client id.
const ANDROID: &str = "a2270f727f45f648";
const SESSION: &str = "https://identity.mozilla.com/tokens/session";
const SEND_TAB: &str = "https://identity.mozilla.com/cmd/open-uri";

/// What the app holds after signing in.
struct Phone {
    refresh: String,
    session: String,
    device: String,
    kb: Vec<u8>,
}

/// The sign-in as the app makes it: both discovery documents, the web content's onepw and
/// authorization (the same page as desktop), then the code exchange without any session
/// token (a public client proves itself by PKCE), which keeps the refresh token; the
/// over-scoped access token is destroyed at once; the device registers with the refresh
/// token.
async fn sign_in_phone(s: &TestServer, email: &str, create: bool, name: &str) -> Phone {
    let config = call(s, Method::GET, "/.well-known/fxa-client-configuration", None, None).await;
    assert_eq!(config.json()["auth_server_base_url"], s.base);
    let openid = call(s, Method::GET, "/.well-known/openid-configuration", None, None).await;
    assert_eq!(openid.status, 200, "{}", openid.text);
    let o = openid.json();
    for (field, path) in [
        ("authorization_endpoint", "/authorization"),
        ("introspection_endpoint", "/v1/introspect"),
        ("userinfo_endpoint", "/profile/v1/profile"),
        ("jwks_uri", "/v1/jwks"),
    ] {
        assert_eq!(o[field], format!("{}{path}", s.base), "{o}");
    }
    assert_eq!(o["issuer"], s.base);
    // The authorization endpoint is the sign-in page itself.
    let page = call(
        s,
        Method::GET,
        "/authorization?action=email&response_type=code",
        None,
        None,
    )
    .await;
    assert!(page.text.contains("/accounts/app.mjs"));

    let web = page_sign_in(s, email, PASSWORD, create).await;
    let verifier = BASE64URL_NOPAD.encode(&[7u8; 32]);
    let challenge = BASE64URL_NOPAD.encode(&onepw::sha256(verifier.as_bytes()));
    let scope = format!("profile {OLDSYNC} {SESSION}");
    let r = call(
        s,
        Method::POST,
        "/v1/oauth/authorization",
        Some(format!("Bearer fxs_{}", web.session)),
        Some(json!({
            "client_id": ANDROID, "scope": scope, "state": "android-state",
            "access_type": "offline", "code_challenge": challenge,
            "code_challenge_method": "S256", "keys_jwe": "eyJhbGciOiJFQ0RILUVTIn0..aXY.Y3Q.dGFn",
        })),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let code = r.json()["code"].as_str().unwrap().to_string();
    // complete_oauth_flow: no Authorization header.
    let r = call(
        s,
        Method::POST,
        "/v1/oauth/token",
        None,
        Some(
            json!({"grant_type": "authorization_code", "client_id": ANDROID, "code": code, "code_verifier": verifier}),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let t = r.json();
    for field in ["access_token", "refresh_token", "session_token", "keys_jwe", "scope"] {
        assert!(t[field].is_string(), "{field} in {t}");
    }
    assert!(t["expires_in"].is_u64());
    let r = call(
        s,
        Method::POST,
        "/v1/destroy",
        None,
        Some(json!({"token": t["access_token"]})),
    )
    .await;
    assert_eq!(r.status, 200);
    let refresh = t["refresh_token"].as_str().unwrap().to_string();
    let r = call(
        s,
        Method::POST,
        "/v1/account/device",
        Some(format!("Bearer {refresh}")),
        Some(json!({"name": name, "type": "mobile", "availableCommands": {SEND_TAB: "keys-of-this-device"}})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let d = r.json();
    // DeviceResponseCommon: a string name, a known type, commands as strings.
    assert_eq!(d["name"], name);
    assert_eq!(d["type"], "mobile");
    assert_eq!(d["pushEndpointExpired"], false);
    assert_eq!(d["availableCommands"][SEND_TAB], "keys-of-this-device");
    Phone {
        refresh,
        session: t["session_token"].as_str().unwrap().to_string(),
        device: d["id"].as_str().unwrap().to_string(),
        kb: web.kb,
    }
}

/// `get_access_token`: a refresh-token grant for one scope.
async fn access_token(s: &TestServer, phone: &Phone, scope: &str) -> Value {
    let r = call(
        s,
        Method::POST,
        "/v1/oauth/token",
        None,
        Some(json!({"grant_type": "refresh_token", "client_id": ANDROID, "refresh_token": phone.refresh, "scope": scope})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()
}

/// `get_pending_commands`: the device's queue from `index` on.
async fn poll(s: &TestServer, who: &Phone, index: u64, limit: Option<u64>) -> Resp {
    let q = limit.map_or(String::new(), |l| format!("&limit={l}"));
    let path = format!("/v1/account/device/commands?index={index}{q}");
    call(s, Method::GET, &path, bearer(who), None).await
}

fn bearer(phone: &Phone) -> Option<String> {
    Some(format!("Bearer {}", phone.refresh))
}

#[tokio::test]
async fn android_sign_in_profile_sync_and_devices_as_mozillas_client_asks() {
    let s = open_server().await;
    let phone = sign_in_phone(&s, "and@example.org", true, "Pixel").await;

    // The profile, by the userinfo endpoint, with an access token for "profile".
    let t = access_token(&s, &phone, "profile").await;
    let r = send(
        s.http
            .get(format!("{}/profile/v1/profile", s.base))
            .bearer_auth(t["access_token"].as_str().unwrap()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let p = r.json();
    assert_eq!(p["email"], "and@example.org");
    assert!(p["avatar"].is_string(), "always a string: {p}");
    assert_eq!(p["avatarDefault"], true);

    // The device list and the attached clients, as the app asks for them (the latter with
    // the session token's derived id, `Bearer fxs_<id>`).
    let r = call(
        &s,
        Method::GET,
        "/v1/account/devices?filterIdleDevicesTimestamp=1700000000000",
        bearer(&phone),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let list = r.json();
    assert_eq!(list[0]["id"], phone.device.as_str());
    assert_eq!(list[0]["isCurrentDevice"], true);
    assert!(list[0]["location"].is_object());
    let id = onepw::token_keys(
        &data_encoding::HEXLOWER.decode(phone.session.as_bytes()).unwrap(),
        "sessionToken",
    )
    .id;
    let derived = format!("Bearer fxs_{}", data_encoding::HEXLOWER.encode(&id));
    let r = call(&s, Method::GET, "/v1/account/attached_clients", Some(derived), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    for c in r.json().as_array().unwrap() {
        assert!(
            c["deviceType"].is_string() && c["userAgent"].is_string() && c["isCurrentSession"].is_boolean(),
            "{c}"
        );
    }

    // The command queue answers 200 and an empty page to a poll (a 403 closes the app).
    let r = call(
        &s,
        Method::GET,
        "/v1/account/device/commands?index=1",
        bearer(&phone),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json(), json!({"index": 0, "last": true, "messages": []}));

    // check_authorization_status.
    let body = json!({"token_type_hint": "refresh_token", "token": phone.refresh});
    let r = call(&s, Method::POST, "/v1/introspect", None, Some(body.clone())).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["active"], true);

    // Sync: an oldsync access token, the token server, and the Rust Sync client's whole
    // download of a large collection: one GET, no limit, no paging.
    let t = access_token(&s, &phone, OLDSYNC).await;
    let r = call(
        &s,
        Method::POST,
        "/v1/account/scoped-key-data",
        Some(format!("Bearer fxs_{}", phone.session)),
        Some(json!({"client_id": ANDROID, "scope": OLDSYNC})),
    )
    .await;
    let rotation = r.json()[OLDSYNC]["keyRotationTimestamp"].as_i64().unwrap();
    let (_, kid) = onepw::sync_key(&phone.kb, rotation);
    let r = send(
        s.http
            .get(format!("{}/1.0/sync/1.5", s.base))
            .bearer_auth(t["access_token"].as_str().unwrap())
            .header("x-keyid", kid),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let token = r.json();
    let storage = storage_for(&s, &token);
    const RECORDS: usize = 25_000;
    let payload = "b".repeat(300);
    for chunk in 0..RECORDS / 100 {
        let items: Vec<Value> = (0..100)
            .map(|i| json!({"id": format!("bm{chunk:03}-{i:02}"), "payload": payload}))
            .collect();
        let r = send(
            storage
                .request(Method::POST, "/storage/bookmarks")
                .unwrap()
                .json(&items),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let r = send(
        storage
            .request(Method::GET, "/storage/bookmarks?full=1&newer=0")
            .unwrap()
            .header("accept", "application/json"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.header("x-weave-next-offset").is_none(), "nothing held back");
    assert_eq!(
        r.json().as_array().unwrap().len(),
        RECORDS,
        "every record in one response"
    );

    // Signing out: the device record, then the refresh token; the token is dead after.
    let r = call(
        &s,
        Method::POST,
        "/v1/account/device/destroy",
        bearer(&phone),
        Some(json!({"id": phone.device})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = call(
        &s,
        Method::POST,
        "/v1/destroy",
        None,
        Some(json!({"refresh_token": phone.refresh})),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = call(&s, Method::POST, "/v1/introspect", None, Some(body)).await;
    assert_eq!(r.json(), json!({"active": false}));
    let r = call(&s, Method::GET, "/v1/account/devices", bearer(&phone), None).await;
    assert_errno(&r, 401, 110);
    s.stop().await;
}

/// Send Tab between two phones of one account: invoke_command, the per-device queue with
/// its index paging, and the errors Mozilla's client knows.
#[tokio::test]
async fn send_tab_queues_commands_per_device_with_index_paging() {
    let s = open_server().await;
    let a = sign_in_phone(&s, "tab@example.org", true, "Phone A").await;
    let b = sign_in_phone(&s, "tab@example.org", false, "Phone B").await;
    let invoke = |from: &Phone, target: &str, command: &str, n: u32| {
        let body =
            json!({"command": command, "target": target, "payload": {"encrypted": format!("tab {n}")}, "ttl": 3600});
        call(
            &s,
            Method::POST,
            "/v1/account/devices/invoke_command",
            bearer(from),
            Some(body),
        )
    };
    for n in 1..=3 {
        let r = invoke(&a, &b.device, SEND_TAB, n).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json()["enqueued"], true);
    }
    assert_errno(
        &invoke(&a, "00000000000000000000000000000000", SEND_TAB, 0).await,
        400,
        123,
    );
    assert_errno(
        &invoke(&a, &b.device, "https://identity.mozilla.com/cmd/unknown", 0).await,
        400,
        157,
    );

    // The sender's own queue is empty; the target's holds the three, oldest first.
    assert_eq!(poll(&s, &a, 1, None).await.json()["messages"], json!([]));
    let page = poll(&s, &b, 1, Some(2)).await.json();
    assert_eq!(page["last"], false, "{page}");
    let msgs = page["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0]["data"]["command"], SEND_TAB);
    assert_eq!(msgs[0]["data"]["payload"], json!({"encrypted": "tab 1"}));
    assert_eq!(msgs[0]["data"]["sender"], a.device.as_str());
    assert_eq!(page["index"], msgs[1]["index"], "the last index handed out");
    // The client asks from the last handled index + 1.
    let next = page["index"].as_u64().unwrap() + 1;
    let page = poll(&s, &b, next, None).await.json();
    assert_eq!(page["last"], true);
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);
    assert_eq!(page["messages"][0]["data"]["payload"], json!({"encrypted": "tab 3"}));
    let next = page["index"].as_u64().unwrap() + 1;
    assert_eq!(poll(&s, &b, next, None).await.json()["messages"], json!([]));

    // A command expires with its ttl (seconds): one that lived a second is not handed out.
    let r = call(
        &s,
        Method::POST,
        "/v1/account/devices/invoke_command",
        bearer(&a),
        Some(json!({"command": SEND_TAB, "target": b.device, "payload": {"encrypted": "short"}, "ttl": 1})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(poll(&s, &b, next, None).await.json()["messages"], json!([]), "expired");

    // A device removed takes its queue with it.
    let r = call(
        &s,
        Method::POST,
        "/v1/account/device/destroy",
        bearer(&a),
        Some(json!({"id": b.device})),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_errno(&invoke(&a, &b.device, SEND_TAB, 4).await, 400, 123);
    s.stop().await;
}

/// `exchange_token_for_scope`: a refresh token traded for one with more scopes; the old one
/// stops working and the device moves to the new one.
#[tokio::test]
async fn a_refresh_token_is_exchanged_for_more_scopes() {
    let s = open_server().await;
    let web = page_sign_in(&s, "ex@example.org", PASSWORD, true).await;
    let r = call(
        &s,
        Method::POST,
        "/v1/oauth/token",
        Some(format!("Bearer fxs_{}", web.session)),
        Some(json!({"grant_type": "fxa-credentials", "client_id": ANDROID, "scope": "profile", "access_type": "offline"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let old = r.json()["refresh_token"].as_str().unwrap().to_string();
    let r = call(
        &s,
        Method::POST,
        "/v1/account/device",
        Some(format!("Bearer {old}")),
        Some(json!({"name": "Tablet", "type": "tablet"})),
    )
    .await;
    let device = r.json()["id"].as_str().unwrap().to_string();
    let exchange = |token: &str, scope: &str| {
        let body = json!({
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": token,
            "subject_token_type": "urn:ietf:params:oauth:token-type:refresh_token",
            "scope": scope,
        });
        call(&s, Method::POST, "/v1/oauth/token", None, Some(body))
    };
    // Keys cannot be gained this way.
    assert_errno(&exchange(&old, OLDSYNC).await, 400, 107);
    let r = exchange(&old, SESSION).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let t = r.json();
    let new = t["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(t["scope"], format!("profile {SESSION}"));
    assert!(t["session_token"].is_string(), "{t}");
    let introspect = |token: &str| {
        call(
            &s,
            Method::POST,
            "/v1/introspect",
            None,
            Some(json!({"token": token, "token_type_hint": "refresh_token"})),
        )
    };
    assert_eq!(introspect(&old).await.json()["active"], false);
    assert_eq!(introspect(&new).await.json()["active"], true);
    let r = call(
        &s,
        Method::GET,
        "/v1/account/devices",
        Some(format!("Bearer {new}")),
        None,
    )
    .await;
    let list = r.json();
    assert_eq!(list[0]["id"], device.as_str());
    assert_eq!(
        list[0]["isCurrentDevice"], true,
        "the device moved to the new token: {list}"
    );
    assert_errno(&exchange(&old, SESSION).await, 401, 110);
    s.stop().await;
}

/// Firefox for iOS: its Rust client takes the code over the WebChannel like Android; an
/// older app watches for `/oauth/success/<client id>` instead. Only those redirects are
/// handed a code.
#[tokio::test]
async fn ios_redirects_are_limited_to_the_apps_own() {
    const IOS: &str = "1b1a3e44c54fbb58";
    let s = open_server().await;
    let web = page_sign_in(&s, "ios@example.org", PASSWORD, true).await;
    let challenge = BASE64URL_NOPAD.encode(&onepw::sha256(b"an-ios-code-verifier-an-ios-code-verifier"));
    let ask = |redirect: Option<String>| {
        let mut body = json!({
            "client_id": IOS, "scope": OLDSYNC, "state": "st ate", "access_type": "offline",
            "code_challenge": challenge, "code_challenge_method": "S256",
        });
        if let Some(r) = redirect {
            body["redirect_uri"] = r.into();
        }
        call(
            &s,
            Method::POST,
            "/v1/oauth/authorization",
            Some(format!("Bearer fxs_{}", web.session)),
            Some(body),
        )
    };
    let r = ask(None).await;
    assert!(r.json()["redirect"]
        .as_str()
        .unwrap()
        .starts_with("urn:ietf:wg:oauth:2.0:oob:oauth-redirect-webchannel?code="));
    let own = format!("{}/oauth/success/{IOS}", s.base);
    let r = ask(Some(own.clone())).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let redirect = r.json()["redirect"].as_str().unwrap().to_string();
    assert!(redirect.starts_with(&format!("{own}?code=")), "{redirect}");
    assert!(redirect.ends_with("&state=st+ate"), "the state is encoded: {redirect}");
    let r = ask(Some(format!("https://accounts.firefox.com/oauth/success/{IOS}"))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    for bad in [
        "https://evil.example/oauth/success/1b1a3e44c54fbb58",
        "https://accounts.firefox.com/oauth/success/a2270f727f45f648",
    ] {
        assert_errno(&ask(Some(bad.into())).await, 400, 107);
    }
    // The page the redirect lands on is this server's.
    let page = call(
        &s,
        Method::GET,
        &format!("/oauth/success/{IOS}?code=x&state=y"),
        None,
        None,
    )
    .await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("/accounts/app.mjs"));
    s.stop().await;
}
