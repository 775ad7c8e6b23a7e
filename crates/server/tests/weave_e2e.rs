//! A Pale Moon-like first sync and a second device's download over Weave 1.1
//! (spec README §2.1–2.2), with records encrypted as client-formats.md says.
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

mod common;

use common::*;
use data_encoding::BASE64;
use serde_json::{json, Value};
use syncstead_client::crypto::{friendly_sync_key, parse_sync_key, CryptoError, KeyBundle};
use syncstead_proto::username::username_for_account;

const EMAIL: &str = "Pale.Moon.User@example.org";
const PASSWORD: &str = "a long enough password";

struct Device<'a> {
    s: &'a TestServer,
    username: String,
    node: String,
}

impl Device<'_> {
    fn auth(&self) -> String {
        format!(
            "Basic {}",
            BASE64.encode(format!("{}:{PASSWORD}", self.username).as_bytes())
        )
    }
    fn url(&self, path: &str) -> String {
        format!("{}1.1/{}{path}", self.node, self.username)
    }
    async fn get(&self, path: &str) -> Resp {
        send(self.s.http.get(self.url(path)).header("authorization", self.auth())).await
    }
    async fn put(&self, path: &str, body: Value) -> Resp {
        send(
            self.s
                .http
                .put(self.url(path))
                .header("authorization", self.auth())
                .body(body.to_string()),
        )
        .await
    }
}

async fn sign_in(s: &TestServer) -> Device<'_> {
    let username = username_for_account(EMAIL);
    let node = send(s.http.get(format!("{}/user/1.0/{username}/node/weave", s.base))).await;
    assert_eq!(node.status, 200);
    assert!(node.text.ends_with('/'));
    Device {
        s,
        username,
        node: node.text,
    }
}

#[tokio::test]
async fn pale_moon_first_sync_and_second_device() {
    let s = TestServer::start().await;
    // Device A: account set-up (§2.1).
    let username = username_for_account(EMAIL);
    assert_eq!(
        send(s.http.get(format!("{}/user/1.0/{username}", s.base))).await.text,
        "0"
    );
    let r = send(
        s.http
            .put(format!("{}/user/1.0/{username}", s.base))
            .body(json!({"password": PASSWORD, "email": EMAIL}).to_string()),
    )
    .await;
    assert_eq!((r.status.as_u16(), r.text.as_str()), (200, username.as_str()));
    let a = sign_in(&s).await;
    let mut sync_key = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut sync_key);
    let shown = friendly_sync_key(&sync_key);
    let root = KeyBundle::from_sync_key(&sync_key, &username);

    // Empty server: wipe, then meta/global and crypto/keys (§2.2 step 2).
    assert_eq!(a.get("/info/collections").await.json(), json!({}));
    let wipe = send(
        s.http
            .delete(a.url("/storage"))
            .header("authorization", a.auth())
            .header("x-confirm-delete", "1"),
    )
    .await;
    assert_eq!(wipe.status, 200);
    let meta = json!({"syncID": "abcdefghijkl", "storageVersion": 5, "engines": {"bookmarks": {"version": 2, "syncID": "bookmarks012"}}, "declined": []});
    assert_eq!(
        a.put("/storage/meta/global", json!({"payload": meta.to_string()}))
            .await
            .status,
        200
    );
    let bulk = KeyBundle::random();
    let keys = json!({"id": "keys", "collection": "crypto", "default": bulk.to_base64(), "collections": {}});
    assert_eq!(
        a.put("/storage/crypto/keys", json!({"payload": root.seal(&keys)}))
            .await
            .status,
        200
    );

    // Bookmarks, encrypted with the bulk keys, uploaded guarded by the collection time.
    let records: Vec<Value> = (0..30)
        .map(|i| json!({"id": format!("bookmark{i:04}"), "type": "bookmark", "title": format!("Site {i}"), "bmkUri": format!("https://example.org/{i}"), "parentid": "toolbar"}))
        .collect();
    let wbos: Vec<Value> = records
        .iter()
        .map(|r| json!({"id": r["id"], "payload": bulk.seal(r), "parentid": "toolbar", "sortindex": 100}))
        .collect();
    let info = a.get("/info/collections").await.json();
    assert!(info.get("bookmarks").is_none());
    let r = send(
        s.http
            .post(a.url("/storage/bookmarks"))
            .header("authorization", a.auth())
            .header("x-if-unmodified-since", "0")
            .body(Value::Array(wbos).to_string()),
    )
    .await;
    assert_eq!(r.json()["success"].as_array().unwrap().len(), 30);

    // Device B: same account, the Sync Key typed in from its friendly form.
    let b = sign_in(&s).await;
    let typed = parse_sync_key(&shown.to_uppercase()).unwrap();
    let root_b = KeyBundle::from_sync_key(&typed, &b.username);
    let colls = b.get("/info/collections").await.json();
    assert!(colls.get("meta").is_some() && colls.get("crypto").is_some() && colls.get("bookmarks").is_some());
    let meta_b: Value =
        serde_json::from_str(b.get("/storage/meta/global").await.json()["payload"].as_str().unwrap()).unwrap();
    assert_eq!(meta_b["storageVersion"], 5);
    let keys_payload = b.get("/storage/crypto/keys").await.json()["payload"]
        .as_str()
        .unwrap()
        .to_string();
    let keys_b = root_b.open(&keys_payload).unwrap();
    let default = keys_b["default"].as_array().unwrap();
    let bulk_b = KeyBundle::from_base64(default[0].as_str().unwrap(), default[1].as_str().unwrap()).unwrap();
    let got = b.get("/storage/bookmarks?full=1&sort=oldest").await.json();
    let mut clear: Vec<Value> = got
        .as_array()
        .unwrap()
        .iter()
        .map(|w| bulk_b.open(w["payload"].as_str().unwrap()).unwrap())
        .collect();
    clear.sort_by(|x, y| x["id"].as_str().cmp(&y["id"].as_str()));
    assert_eq!(clear, records, "device B reads exactly what device A wrote");

    // A wrong Sync Key is detected, never decrypted into garbage.
    let mut wrong = typed;
    wrong[0] ^= 1;
    let err = KeyBundle::from_sync_key(&wrong, &b.username)
        .open(&keys_payload)
        .unwrap_err();
    assert_eq!(err, CryptoError::HmacMismatch);
    // A tampered record is detected too.
    let mut tampered: Value = serde_json::from_str(got[0]["payload"].as_str().unwrap()).unwrap();
    tampered["ciphertext"] = json!(BASE64.encode(b"sixteen bytes!!!"));
    assert_eq!(
        bulk_b.open(&tampered.to_string()).unwrap_err(),
        CryptoError::HmacMismatch
    );
}
