//! Token Server 1.0 over real HTTP: RSA keys made at test time, JWTs minted by the test,
//! the real server (and, where needed, a small fake Mozilla-accounts server).
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

mod common;

use std::sync::OnceLock;

use common::*;
use data_encoding::{BASE64URL_NOPAD, HEXLOWER};
use jsonwebtoken::{EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};
use syncstead_store::NodeUpdate;

const SCOPE: &str = "profile https://identity.mozilla.com/apps/oldsync";

struct Fxa {
    key: EncodingKey,
    jwk: Value,
}

fn rsa_key(kid: &str) -> Fxa {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;
    let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("RSA key");
    let pem = private.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).unwrap();
    let jwk = json!({
        "kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
        "n": BASE64URL_NOPAD.encode(&private.n().to_bytes_be()),
        "e": BASE64URL_NOPAD.encode(&private.e().to_bytes_be()),
    });
    Fxa {
        key: EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        jwk,
    }
}

fn fxa() -> &'static Fxa {
    static KEY: OnceLock<Fxa> = OnceLock::new();
    KEY.get_or_init(|| rsa_key("key-1"))
}

fn stranger() -> &'static Fxa {
    static KEY: OnceLock<Fxa> = OnceLock::new();
    KEY.get_or_init(|| rsa_key("key-1"))
}

fn jwt_with(key: &Fxa, claims: Value, typ: &str) -> String {
    let mut header = Header::new(jsonwebtoken::Algorithm::RS256);
    header.typ = Some(typ.into());
    header.kid = key.jwk["kid"].as_str().map(str::to_string);
    jsonwebtoken::encode(&header, &claims, &key.key).unwrap()
}

fn access_token(fxa_uid: &str, generation: Option<i64>) -> String {
    let mut claims =
        json!({"sub": fxa_uid, "scope": SCOPE, "exp": now() + 600, "iat": now(), "client_id": "5882386c6d801776"});
    if let Some(g) = generation {
        claims["fxa-generation"] = json!(g);
    }
    jwt_with(fxa(), claims, "at+JWT")
}

fn key_id(kca: i64, state: &[u8]) -> String {
    format!("{kca:013}-{}", BASE64URL_NOPAD.encode(state))
}

/// A token server whose trusted key is the test's.
async fn token_server(configure: impl FnOnce(&mut syncstead_server::ConfigLayer)) -> (TestServer, tempfile::TempDir) {
    let keys = tempfile::tempdir().unwrap();
    let file = keys.path().join("fxa.jwk");
    std::fs::write(&file, fxa().jwk.to_string()).unwrap();
    let s = TestServer::start_with(|c| {
        c.oauth_public_key_file = Some(file);
        c.oauth_jwks_url = Some(String::new());
        configure(c);
    })
    .await;
    (s, keys)
}

async fn get_token(s: &TestServer, path: &str, auth: Option<&str>, headers: &[(&str, &str)]) -> Resp {
    let mut rb = s.http.get(format!("{}{path}", s.base));
    if let Some(a) = auth {
        rb = rb.header("authorization", a);
    }
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    send(rb).await
}

async fn sign_in(s: &TestServer, fxa_uid: &str, generation: Option<i64>, kid: &str) -> Resp {
    let bearer = format!("Bearer {}", access_token(fxa_uid, generation));
    get_token(s, "/1.0/sync/1.5", Some(&bearer), &[("x-keyid", kid)]).await
}

fn assert_token_error(r: &Resp, status: u16, kind: &str, description: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", r.text);
    assert_eq!(r.header("content-type").as_deref(), Some("application/json"));
    let v = r.json();
    assert_eq!(v["status"], kind, "{}", r.text);
    assert_eq!(v["errors"][0]["description"], description, "{}", r.text);
    assert!(r.header("x-timestamp").is_some(), "T10-102");
}

fn storage_client(s: &TestServer, token: &Value) -> User {
    let creds = syncstead_client::Credentials {
        id: token["id"].as_str().unwrap().into(),
        key: token["key"].as_str().unwrap().into(),
    };
    User {
        storage: syncstead_client::StorageClient::new(s.http.clone(), token["api_endpoint"].as_str().unwrap(), creds)
            .unwrap(),
        uid: token["uid"].as_u64().unwrap(),
    }
}

#[tokio::test]
async fn t10_100_t10_101_new_user_gets_a_token_that_works_on_storage() {
    let (s, _keys) = token_server(|_| {}).await;
    let kid = key_id(1_510_726_317_123, &[4u8; 16]);
    let r = sign_in(&s, "0123456789abcdef0123456789abcdef", Some(1_510_726_317_000), &kid).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let t = r.json();
    for field in [
        "id",
        "key",
        "uid",
        "api_endpoint",
        "duration",
        "hashed_fxa_uid",
        "hashalg",
        "node_type",
    ] {
        assert!(!t[field].is_null(), "{field} in {t}");
    }
    assert_eq!(t["duration"], 3600);
    assert_eq!(t["hashalg"], "sha256");
    assert_eq!(t["api_endpoint"], format!("{}/1.5/{}", s.base, t["uid"]));
    assert!(r.header("x-timestamp").unwrap().parse::<u64>().is_ok());
    assert_eq!(r.header("x-content-type-options").as_deref(), Some("nosniff"));
    // The credential works against the storage node (Hawk, uid).
    let u = storage_client(&s, &t);
    assert_eq!(
        u.put("/storage/meta/global", json!({"payload": "{}"})).await.status,
        200
    );
    assert_eq!(u.get("/storage/meta/global").await.json()["payload"], "{}");
    // The same account gets the same uid back; the token itself carries fxa_kid.
    let again = sign_in(&s, "0123456789abcdef0123456789abcdef", Some(1_510_726_317_000), &kid)
        .await
        .json();
    assert_eq!(again["uid"], t["uid"]);
    let (payload, _) = syncstead_proto::token::TokenSigner::new(SECRET)
        .verify(again["id"].as_str().unwrap())
        .unwrap();
    assert_eq!(payload.fxa_kid.as_deref(), Some(kid.as_str()));
    // Another account gets another uid.
    let other = sign_in(&s, "ffffffffffffffffffffffffffffffff", None, &key_id(1, &[1u8; 16]))
        .await
        .json();
    assert_ne!(other["uid"], t["uid"]);
    // The old-path alias serves the same (T10-001 and the Python package's URL).
    let bearer = format!(
        "Bearer {}",
        access_token("0123456789abcdef0123456789abcdef", Some(1_510_726_317_000))
    );
    let r = get_token(&s, "/token/1.0/sync/1.5", Some(&bearer), &[("x-keyid", &kid)]).await;
    assert_eq!(r.json()["uid"], t["uid"]);
}

#[tokio::test]
async fn t10_031_t10_061_key_change_gives_a_fresh_uid_and_hides_old_data() {
    let (s, _keys) = token_server(|_| {}).await;
    let user = "00000000000000000000000000000abc";
    let first = sign_in(&s, user, Some(1000), &key_id(1000, &[1u8; 16])).await.json();
    let u = storage_client(&s, &first);
    u.put("/storage/bookmarks/a", json!({"payload": "old"})).await;
    // A password reset: new keys, later keys_changed_at and generation.
    let second = sign_in(&s, user, Some(2000), &key_id(2000, &[2u8; 16])).await;
    assert_eq!(second.status, 200, "{}", second.text);
    let second = second.json();
    assert_ne!(second["uid"], first["uid"]);
    assert_eq!(
        second["api_endpoint"].as_str().unwrap().rsplit_once('/').unwrap().0,
        first["api_endpoint"].as_str().unwrap().rsplit_once('/').unwrap().0,
        "same node"
    );
    let v = storage_client(&s, &second);
    assert_eq!(
        v.get("/info/collections").await.json(),
        json!({}),
        "the new uid starts empty"
    );
    v.get("/storage/bookmarks/a").await.assert_error(404, 0);
    // The old client state is refused from now on (T10-050 #3).
    let r = sign_in(&s, user, Some(3000), &key_id(3000, &[1u8; 16])).await;
    assert_token_error(
        &r,
        401,
        "invalid-client-state",
        "Unacceptable client-state value stale value",
    );
}

#[tokio::test]
async fn t10_010_t10_016_request_errors() {
    let (s, _keys) = token_server(|_| {}).await;
    let kid = key_id(1000, &[7u8; 16]);
    let good = format!(
        "Bearer {}",
        access_token("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", Some(1000))
    );
    let r = get_token(&s, "/1.0/sync/1.5", None, &[("x-keyid", &kid)]).await;
    assert_token_error(&r, 401, "error", "Unauthorized");
    let r = get_token(&s, "/1.0/sync/1.5", Some("Basic dTpw"), &[("x-keyid", &kid)]).await;
    assert_token_error(&r, 401, "error", "Unsupported");
    let r = get_token(&s, "/1.0/sync/1.5", Some("Bearer"), &[("x-keyid", &kid)]).await;
    assert_token_error(&r, 401, "error", "Unauthorized");
    let r = get_token(&s, "/1.0/sync/1.5", Some(&good), &[]).await;
    assert_token_error(&r, 401, "invalid-key-id", "Missing X-KeyID header");
    let r = get_token(&s, "/1.0/sync/1.5", Some(&good), &[("x-keyid", "1234-state!")]).await;
    assert_token_error(&r, 401, "invalid-credentials", "Unauthorized");
    let r = get_token(
        &s,
        "/1.0/sync/1.5",
        Some(&good),
        &[("x-keyid", &kid), ("x-client-state", "00ff")],
    )
    .await;
    assert_token_error(&r, 401, "invalid-client-state", "Unauthorized");
    let r = get_token(
        &s,
        "/1.0/sync/1.5",
        Some(&good),
        &[("x-keyid", &kid), ("x-client-state", "not valid!")],
    )
    .await;
    assert_token_error(&r, 400, "error", "Invalid client state value");
    let matching = HEXLOWER.encode(&[7u8; 16]);
    let r = get_token(
        &s,
        "/1.0/sync/1.5",
        Some(&good),
        &[("x-keyid", &kid), ("x-client-state", &matching)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // T10-002, T10-003.
    let r = get_token(&s, "/1.0/weave/1.5", Some(&good), &[("x-keyid", &kid)]).await;
    assert_token_error(&r, 404, "error", "Unsupported application");
    let r = get_token(&s, "/1.0/sync/1.2", Some(&good), &[("x-keyid", &kid)]).await;
    assert_token_error(&r, 404, "error", "Unsupported application version");
    assert_eq!(r.json()["errors"][0]["name"], "1.2");
    let r = send(s.http.request(Method::POST, format!("{}/1.0/sync/1.5", s.base))).await;
    assert_eq!(r.status, 405);
    // T10-004.
    let r = get_token(&s, "/1.0/sync/1.5?duration=12", Some(&good), &[("x-keyid", &kid)]).await;
    assert_eq!(r.json()["duration"], 12);
}

#[tokio::test]
async fn t10_012_t10_022_bad_oauth_tokens() {
    let (s, _keys) = token_server(|_| {}).await;
    let kid = key_id(1000, &[7u8; 16]);
    let uid = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    let claims = |scope: &str, exp: u64| json!({"sub": uid, "scope": scope, "exp": exp});
    for bearer in [
        jwt_with(stranger(), claims(SCOPE, now() + 600), "at+JWT"),
        jwt_with(fxa(), claims(SCOPE, now() - 3600), "at+JWT"),
        jwt_with(fxa(), claims("profile", now() + 600), "at+JWT"),
        jwt_with(
            fxa(),
            claims("https://identity.mozilla.com/apps/oldsync/x", now() + 600),
            "at+JWT",
        ),
        jwt_with(fxa(), claims(SCOPE, now() + 600), "JWT"),
        "not-a-jwt".to_string(),
    ] {
        let r = get_token(
            &s,
            "/1.0/sync/1.5",
            Some(&format!("Bearer {bearer}")),
            &[("x-keyid", &kid)],
        )
        .await;
        assert_token_error(&r, 401, "invalid-credentials", "Unauthorized");
    }
    // Comma-separated scopes are accepted too (spec README §5).
    let comma = jwt_with(
        fxa(),
        claims("profile,https://identity.mozilla.com/apps/oldsync", now() + 600),
        "at+JWT",
    );
    let r = get_token(
        &s,
        "/1.0/sync/1.5",
        Some(&format!("Bearer {comma}")),
        &[("x-keyid", &kid)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn t10_050_t10_051_generation_and_keys_changed_at_rules() {
    let (s, _keys) = token_server(|_| {}).await;
    let user = "cccccccccccccccccccccccccccccccc";
    let state = [3u8; 16];
    assert_eq!(sign_in(&s, user, Some(2000), &key_id(2000, &state)).await.status, 200);
    let r = sign_in(&s, user, Some(1999), &key_id(2000, &state)).await;
    assert_token_error(&r, 401, "invalid-generation", "Unauthorized");
    let r = sign_in(&s, user, Some(2000), &key_id(1999, &state)).await;
    assert_token_error(&r, 401, "invalid-keysChangedAt", "Unauthorized");
    let r = sign_in(&s, user, Some(2000), &key_id(2000, &[4u8; 16])).await;
    assert_token_error(
        &r,
        401,
        "invalid-client-state",
        "Unacceptable client-state value new value with no generation change",
    );
    assert_eq!(r.json()["errors"][0]["location"], "header");
}

#[tokio::test]
async fn t10_040_new_users_can_be_refused_or_allow_listed() {
    let (s, _keys) = token_server(|c| c.allow_new_users = Some(false)).await;
    let kid = key_id(1, &[1u8; 16]);
    let user = "dddddddddddddddddddddddddddddddd";
    let r = sign_in(&s, user, None, &kid).await;
    assert_token_error(&r, 403, "new-users-disabled", "New users are not allowed");
    let store = s.running.as_ref().unwrap().state.token_store.clone();
    assert!(store.allow_account(user, true).await.unwrap());
    assert_eq!(sign_in(&s, user, None, &kid).await.status, 200);
    assert_eq!(store.allowed_accounts().await.unwrap(), vec![user.to_string()]);

    let (capped, _keys2) = token_server(|c| c.max_users = Some(1)).await;
    assert_eq!(sign_in(&capped, user, None, &kid).await.status, 200);
    assert_eq!(
        sign_in(&capped, user, None, &kid).await.status,
        200,
        "existing users keep working"
    );
    let r = sign_in(&capped, "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee", None, &kid).await;
    assert_token_error(&r, 403, "new-users-disabled", "New users are not allowed");
}

/// A fake Mozilla-accounts server: JWKS and the verify endpoint.
async fn fake_fxa(verify_status: u16) -> (String, tokio::task::JoinHandle<()>) {
    use axum::routing::{get, post};
    let jwks = json!({"keys": [fxa().jwk.clone()]});
    let app = axum::Router::new()
        .route("/v1/jwks", get(move || async move { axum::Json(jwks) }))
        .route(
            "/v1/verify",
            post(move |axum::Json(body): axum::Json<Value>| async move {
                let ok = body["token"] == "good-opaque-token";
                let status = if ok { verify_status } else { 400 };
                let body = if ok {
                    json!({"user": "ffffffffffffffffffffffffffffff01", "scope": ["profile", "https://identity.mozilla.com/apps/oldsync"], "generation": 5})
                } else {
                    json!({"code": 400, "message": "invalid token"})
                };
                (http::StatusCode::from_u16(status).unwrap(), axum::Json(body))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (base, task)
}

#[tokio::test]
async fn t10_020_t10_024_keys_from_a_jwks_url() {
    let (fxa_base, _task) = fake_fxa(200).await;
    let s = TestServer::start_with(|c| c.oauth_jwks_url = Some(format!("{fxa_base}/v1/jwks"))).await;
    let r = sign_in(&s, "abababababababababababababababab", None, &key_id(1, &[1u8; 16])).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Unreachable JWKS: a clear 503.
    let down = TestServer::start_with(|c| c.oauth_jwks_url = Some("http://127.0.0.1:9/v1/jwks".into())).await;
    let r = sign_in(&down, "abababababababababababababababab", None, &key_id(1, &[1u8; 16])).await;
    assert_token_error(&r, 503, "error", "Resource is not available");
}

#[tokio::test]
async fn t10_024_remote_verification() {
    let (fxa_base, _task) = fake_fxa(200).await;
    let s = TestServer::start_with(|c| {
        c.oauth_verification = Some("remote".into());
        c.oauth_verify_url = Some(format!("{fxa_base}/v1/verify"));
    })
    .await;
    let kid = key_id(5, &[1u8; 16]);
    let r = get_token(
        &s,
        "/1.0/sync/1.5",
        Some("Bearer good-opaque-token"),
        &[("x-keyid", &kid)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = get_token(&s, "/1.0/sync/1.5", Some("Bearer forged"), &[("x-keyid", &kid)]).await;
    assert_token_error(&r, 401, "invalid-credentials", "Unauthorized");
    let (broken, _task2) = fake_fxa(502).await;
    let s2 = TestServer::start_with(|c| {
        c.oauth_verification = Some("remote".into());
        c.oauth_verify_url = Some(format!("{broken}/v1/verify"));
    })
    .await;
    let r = get_token(
        &s2,
        "/1.0/sync/1.5",
        Some("Bearer good-opaque-token"),
        &[("x-keyid", &kid)],
    )
    .await;
    assert_token_error(&r, 503, "error", "Resource is not available");
}

/// One token server, two storage nodes with their own databases and the shared secret:
/// users spread by capacity, and users of a downed node move at their next token request.
#[tokio::test]
async fn t10_070_t10_072_two_storage_nodes_behind_one_token_server() {
    let keys = tempfile::tempdir().unwrap();
    let file = keys.path().join("fxa.jwk");
    std::fs::write(&file, fxa().jwk.to_string()).unwrap();
    let node_a = TestServer::start_with(|c| c.token_server = Some(false)).await;
    let node_b = TestServer::start_with(|c| c.token_server = Some(false)).await;
    let ts = TestServer::start_with(|c| {
        c.storage_node = Some(false);
        c.oauth_public_key_file = Some(file.clone());
        c.oauth_jwks_url = Some(String::new());
    })
    .await;
    let store = ts.running.as_ref().unwrap().state.token_store.clone();
    assert!(
        store.nodes().await.unwrap().is_empty(),
        "a token-only server registers no node of its own"
    );
    assert!(store.add_node(&node_a.base, 100).await.unwrap());
    assert!(store.add_node(&node_b.base, 300).await.unwrap());
    assert!(!store.add_node(&node_b.base, 300).await.unwrap());

    let mut on = std::collections::HashMap::<String, u32>::new();
    let mut tokens = Vec::new();
    for i in 0..40 {
        let t = sign_in(&ts, &format!("{i:032x}"), None, &key_id(1, &[1u8; 16]))
            .await
            .json();
        let node = t["api_endpoint"]
            .as_str()
            .unwrap()
            .rsplit_once("/1.5/")
            .unwrap()
            .0
            .to_string();
        *on.entry(node).or_default() += 1;
        tokens.push(t);
    }
    let (a, b) = (on[&node_a.base], on[&node_b.base]);
    assert!(b > a && a > 0, "spread by capacity: a={a} b={b}");
    // The token works on the node it names, with the node's own database.
    let first = &tokens[0];
    let home = if first["api_endpoint"].as_str().unwrap().starts_with(&node_a.base) {
        &node_a
    } else {
        &node_b
    };
    let u = storage_client(home, first);
    assert_eq!(u.put("/storage/tabs/x", json!({"payload": "p"})).await.status, 200);
    // Storage nodes are not token servers: the path only takes Storage 1.1's DELETE there.
    assert_eq!(get_token(&node_a, "/1.0/sync/1.5", None, &[]).await.status, 405);

    // Node A goes down: its users are reassigned to B with a fresh uid.
    store
        .update_node(
            &node_a.base,
            NodeUpdate {
                downed: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let on_a: Vec<usize> = (0..40)
        .filter(|i| tokens[*i]["api_endpoint"].as_str().unwrap().starts_with(&node_a.base))
        .collect();
    let i = on_a[0];
    let moved = sign_in(&ts, &format!("{i:032x}"), None, &key_id(1, &[1u8; 16]))
        .await
        .json();
    assert!(
        moved["api_endpoint"].as_str().unwrap().starts_with(&node_b.base),
        "{moved}"
    );
    assert_ne!(moved["uid"], tokens[i]["uid"]);
    let v = storage_client(&node_b, &moved);
    assert_eq!(v.get("/info/collections").await.status, 200);
}

#[tokio::test]
async fn t10_071_zero_touch_single_node() {
    let (s, _keys) = token_server(|_| {}).await;
    let store = s.running.as_ref().unwrap().state.token_store.clone();
    let nodes = store.nodes().await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].url, s.base);
    assert_eq!(nodes[0].capacity, 100_000);
}

/// A self-hoster who first ran on the default address and then set `public_url` keeps
/// their users: the single node follows the public URL.
#[tokio::test]
async fn t10_071_single_node_follows_public_url() {
    let keys = tempfile::tempdir().unwrap();
    let file = keys.path().join("fxa.jwk");
    std::fs::write(&file, fxa().jwk.to_string()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let configure = |c: &mut syncstead_server::ConfigLayer, public: Option<&str>| {
        c.data_dir = Some(data.path().to_path_buf());
        c.oauth_public_key_file = Some(file.clone());
        c.oauth_jwks_url = Some(String::new());
        c.public_url = public.map(str::to_string);
    };
    let s = TestServer::start_with(|c| configure(c, None)).await;
    let first = sign_in(&s, "12121212121212121212121212121212", None, &key_id(1, &[1u8; 16]))
        .await
        .json();
    s.stop().await;
    let moved = TestServer::start_with(|c| configure(c, Some("https://sync.example.com/"))).await;
    let again = sign_in(&moved, "12121212121212121212121212121212", None, &key_id(1, &[1u8; 16]))
        .await
        .json();
    assert_eq!(again["uid"], first["uid"], "same bucket");
    assert_eq!(
        again["api_endpoint"],
        format!("https://sync.example.com/1.5/{}", first["uid"])
    );
    let nodes = moved.running.as_ref().unwrap().state.token_store.nodes().await.unwrap();
    assert_eq!(nodes.len(), 1);
}

/// Abuse resistance: refused access tokens are throttled per client address (the peer, or
/// what a reverse proxy on the same machine names in X-Forwarded-For), with 503 +
/// Retry-After in the token server's error format; other addresses are unaffected.
#[tokio::test]
async fn refused_tokens_are_throttled_per_client_address() {
    let (s, _keys) = token_server(|_| {}).await;
    let kid = key_id(1_700_000_000_000, &[1; 16]);
    let guess = |from: &'static str| {
        let s = &s;
        let kid = kid.clone();
        async move {
            get_token(
                s,
                "/1.0/sync/1.5",
                Some("Bearer not.a.token"),
                &[("x-keyid", kid.as_str()), ("x-forwarded-for", from)],
            )
            .await
        }
    };
    for i in 0..20 {
        let r = guess("203.0.113.5").await;
        assert_eq!(r.status, 401, "attempt {i}: {}", r.text);
    }
    let r = guess("203.0.113.5").await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.header("retry-after").as_deref(), Some("30"));
    assert_eq!(r.json()["status"], "error");
    // Another address is not locked out, and a real token from it works.
    assert_eq!(guess("198.51.100.8").await.status, 401);
    let r = get_token(
        &s,
        "/1.0/sync/1.5",
        Some(&format!(
            "Bearer {}",
            access_token("7f1e5a4b3c2d1e0f7f1e5a4b3c2d1e0f", None)
        )),
        &[("x-keyid", kid.as_str()), ("x-forwarded-for", "198.51.100.8")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    s.stop().await;
}

/// A failing JWKS endpoint is asked once, not once per token: one fetch at a time, and
/// after a failure a short pause in which tokens that need it get 503 (T10-024).
#[tokio::test]
async fn t10_024_a_failing_jwks_endpoint_is_fetched_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().route(
        "/v1/jwks",
        axum::routing::get(move || {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                http::StatusCode::INTERNAL_SERVER_ERROR
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let s = Arc::new(TestServer::start_with(|c| c.oauth_jwks_url = Some(format!("{base}/v1/jwks"))).await);
    let kid = key_id(1, &[1u8; 16]);
    let tries: Vec<_> = (0..50)
        .map(|_| {
            let (s, kid) = (s.clone(), kid.clone());
            tokio::spawn(async move { sign_in(&s, "abababababababababababababababab", None, &kid).await.status })
        })
        .collect();
    for t in tries {
        assert_eq!(t.await.unwrap(), 503);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1, "one fetch for fifty tokens");
}
