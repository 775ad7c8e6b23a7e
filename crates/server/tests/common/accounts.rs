//! The client half of Syncstead accounts for the tests: onepw as the sign-in page does it,
//! Hawk-signed account requests, and the OAuth steps Firefox takes.
#![allow(dead_code)]

use data_encoding::{BASE64URL_NOPAD, HEXLOWER};
use reqwest::Method;
use serde_json::{json, Value};
use syncstead_server::accounts::onepw;

use super::*;

pub const DESKTOP: &str = "5882386c6d801776";
pub const OLDSYNC: &str = "https://identity.mozilla.com/apps/oldsync";
pub const PASSWORD: &str = "correct horse battery";

pub async fn open_server() -> TestServer {
    TestServer::start_with(|l| l.account_registration = Some("open".into())).await
}

/// A Hawk header signed with a session token's key, as Firefox signs account requests.
pub fn hawk_header(s: &TestServer, token_hex: &str, method: &str, path: &str) -> String {
    hawk_header_for(s, token_hex, "sessionToken", method, path)
}

/// A Hawk header signed with the key of a token of kind `name` (onepw's HKDF label).
pub fn hawk_header_for(s: &TestServer, token_hex: &str, name: &str, method: &str, path: &str) -> String {
    let keys = onepw::token_keys(&HEXLOWER.decode(token_hex.as_bytes()).unwrap(), name);
    let url = reqwest::Url::parse(&format!("{}{path}", s.base)).unwrap();
    let creds = hawk::Credentials {
        id: HEXLOWER.encode(&keys.id),
        key: hawk::Key::new(keys.auth_key, hawk::DigestAlgorithm::Sha256).unwrap(),
    };
    let full = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let header = hawk::RequestBuilder::new(method, url.host_str().unwrap(), url.port().unwrap(), &full)
        .request()
        .make_header(&creds)
        .unwrap();
    format!("Hawk {header}")
}

pub async fn call(s: &TestServer, method: Method, path: &str, auth: Option<String>, body: Option<Value>) -> Resp {
    let mut rb = s.http.request(method, format!("{}{path}", s.base));
    if let Some(a) = auth {
        rb = rb.header("authorization", a);
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    send(rb).await
}

pub fn assert_errno(r: &Resp, status: u16, errno: i64) {
    assert_eq!(r.status.as_u16(), status, "{}", r.text);
    let v = r.json();
    assert_eq!(v["errno"], errno, "{v}");
    assert_eq!(v["code"], status);
    assert!(v["message"].is_string() && v["error"].is_string(), "{v}");
}

pub struct SignedIn {
    pub uid: String,
    pub session: String,
    pub kb: Vec<u8>,
}

/// What the sign-in page does: stretch, log in (or sign up) with keys, fetch and unwrap kB.
pub async fn page_sign_in(s: &TestServer, email: &str, password: &str, create: bool) -> SignedIn {
    let keys = onepw::stretch(email, password);
    let route = if create {
        "/v1/account/create?keys=true"
    } else {
        "/v1/account/login?keys=true"
    };
    let r = call(
        s,
        Method::POST,
        route,
        None,
        Some(json!({"email": email, "authPW": HEXLOWER.encode(&keys.auth_pw)})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["verified"], true);
    let fetch = v["keyFetchToken"].as_str().unwrap().to_string();
    let kb = fetch_kb(s, &fetch, &keys.unwrap_b_key).await;
    SignedIn {
        uid: v["uid"].as_str().unwrap().to_string(),
        session: v["sessionToken"].as_str().unwrap().to_string(),
        kb,
    }
}

/// kB from a key-fetch token, as the page gets it; the token is spent by its one use.
pub async fn fetch_kb(s: &TestServer, fetch: &str, unwrap_b_key: &[u8]) -> Vec<u8> {
    let auth = || Some(format!("Bearer fxk_{fetch}"));
    let r = call(s, Method::GET, "/v1/account/keys", auth(), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let bundle = HEXLOWER
        .decode(r.json()["bundle"].as_str().unwrap().as_bytes())
        .unwrap();
    assert_eq!(bundle.len(), 96);
    let fetch_keys = onepw::token_keys(&HEXLOWER.decode(fetch.as_bytes()).unwrap(), "keyFetchToken");
    let (_ka, wrap_kb) = onepw::open_bundle(&fetch_keys.bundle_key, &bundle).expect("the bundle's MAC holds");
    let again = call(s, Method::GET, "/v1/account/keys", auth(), None).await;
    assert_errno(&again, 401, 110);
    onepw::unwrap_kb(&wrap_kb, unwrap_b_key)
}

/// Scoped-key data, then the authorization code with PKCE, as the page asks for it.
pub async fn authorize(s: &TestServer, who: &SignedIn, verifier: &str, jwe: &str) -> (i64, String) {
    let path = "/v1/account/scoped-key-data";
    let r = call(
        s,
        Method::POST,
        path,
        Some(hawk_header(s, &who.session, "POST", path)),
        Some(json!({"client_id": DESKTOP, "scope": OLDSYNC})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let data = r.json()[OLDSYNC].clone();
    assert_eq!(data["keyRotationSecret"], "0".repeat(64));
    let rotation = data["keyRotationTimestamp"].as_i64().unwrap();
    let challenge = BASE64URL_NOPAD.encode(&onepw::sha256(verifier.as_bytes()));
    let r = call(
        s,
        Method::POST,
        "/v1/oauth/authorization",
        Some(format!("Bearer fxs_{}", who.session)),
        Some(json!({
            "client_id": DESKTOP, "state": "st4te", "scope": format!("{OLDSYNC} profile"),
            "access_type": "offline", "response_type": "code", "code_challenge": challenge,
            "code_challenge_method": "S256", "keys_jwe": jwe,
        })),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["state"], "st4te");
    (rotation, v["code"].as_str().unwrap().to_string())
}

/// The token server's answer for a signed-in device, as Firefox gets it: scoped-key data
/// for the kid, an access token by the fxa-credentials grant, then `/1.0/sync/1.5`.
pub async fn sync_token(s: &TestServer, who: &SignedIn) -> Value {
    let auth = || Some(format!("Bearer fxs_{}", who.session));
    let body = json!({"client_id": DESKTOP, "scope": OLDSYNC});
    let r = call(s, Method::POST, "/v1/account/scoped-key-data", auth(), Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let rotation = r.json()[OLDSYNC]["keyRotationTimestamp"].as_i64().unwrap();
    let body = json!({"grant_type": "fxa-credentials", "client_id": DESKTOP, "scope": OLDSYNC});
    let r = call(s, Method::POST, "/v1/oauth/token", auth(), Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let access = r.json()["access_token"].as_str().unwrap().to_string();
    let (_, kid) = onepw::sync_key(&who.kb, rotation);
    let url = format!("{}/1.0/sync/1.5", s.base);
    let r = send(s.http.get(url).bearer_auth(access).header("x-keyid", kid)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()
}

/// A storage client with the credentials and endpoint of a token-server answer.
pub fn storage_for(s: &TestServer, token: &Value) -> StorageClient {
    let creds = Credentials {
        id: token["id"].as_str().unwrap().into(),
        key: token["key"].as_str().unwrap().into(),
    };
    StorageClient::new(s.http.clone(), token["api_endpoint"].as_str().unwrap(), creds).unwrap()
}
