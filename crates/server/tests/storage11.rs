//! Storage 1.1 over real HTTP with Basic auth (storage-1.1.md).
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

mod common;

use common::*;
use data_encoding::BASE64;
use reqwest::Method;
use serde_json::{json, Value};

const EMAIL: &str = "john@example.com";
const USER: &str = "kismw365lo7emoxr3ohojgpild6lph4b";
const PASSWORD: &str = "correct horse battery";

struct Weave<'a> {
    s: &'a TestServer,
    auth: String,
}

impl Weave<'_> {
    async fn call(&self, method: Method, path: &str, body: Option<Value>, headers: &[(&str, &str)]) -> Resp {
        let mut rb = self
            .s
            .http
            .request(method, format!("{}/1.1/{USER}{path}", self.s.base))
            .header("authorization", &self.auth);
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb.header("content-type", "text/plain").body(b.to_string());
        }
        send(rb).await
    }
    async fn get(&self, path: &str) -> Resp {
        self.call(Method::GET, path, None, &[]).await
    }
}

async fn account(s: &TestServer) -> Weave<'_> {
    let r = send(
        s.http
            .put(format!("{}/user/1.0/{USER}", s.base))
            .body(json!({"password": PASSWORD, "email": EMAIL}).to_string()),
    )
    .await;
    assert_eq!(r.status, 200);
    Weave {
        s,
        auth: format!("Basic {}", BASE64.encode(format!("{USER}:{PASSWORD}").as_bytes())),
    }
}

fn ids(r: &Resp) -> Vec<String> {
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn s11_002_s11_010_s11_011_s11_012_s11_013_basic_auth() {
    let s = TestServer::start().await;
    let w = account(&s).await;
    let url = format!("{}/1.1/{USER}/info/collections", s.base);
    let r = send(s.http.get(&url)).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate").as_deref(), Some("Basic realm=\"Sync\""));
    let wrong = format!("Basic {}", BASE64.encode(format!("{USER}:nope nope").as_bytes()));
    assert_eq!(send(s.http.get(&url).header("authorization", wrong)).await.status, 401);
    // Another user's path with valid credentials: refused.
    let other = format!("{}/1.1/someoneelse/info/collections", s.base);
    assert_eq!(
        send(s.http.get(other).header("authorization", &w.auth)).await.status,
        401
    );
    assert_eq!(w.get("/info/collections").await.status, 200);
}

#[tokio::test]
async fn s11_001_s11_003_prefixes_and_trailing_slash() {
    let s = TestServer::start().await;
    let w = account(&s).await;
    w.call(Method::PUT, "/storage/tabs/a", Some(json!({"payload": "x"})), &[])
        .await;
    for prefix in ["1.1", "1.0", "1"] {
        let r = send(
            s.http
                .get(format!("{}/{prefix}/{USER}/storage/tabs/", s.base))
                .header("authorization", &w.auth),
        )
        .await;
        assert_eq!(ids(&r), vec!["a"], "{prefix}");
    }
    // The token server keeps GET /1.0/<a>/<b>; DELETE there is storage.
    let r = send(
        s.http
            .delete(format!("{}/1.0/{USER}/storage", s.base))
            .header("authorization", &w.auth),
    )
    .await;
    r.assert_error(400, 4);
}

#[tokio::test]
async fn s11_004_s11_020_s11_022_s11_032_s11_034_s11_060_s11_070_s11_073_s11_074_put_and_get_items() {
    let s = TestServer::start().await;
    let w = account(&s).await;
    let r = w.call(Method::PUT, "/storage/bookmarks/b1", Some(json!({"payload": "p", "parentid": "menu", "predecessorid": "b0", "sortindex": 5, "ttl": 1000, "extra": 1})), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let t1 = r.text.clone();
    assert_eq!(r.header("x-weave-timestamp"), Some(t1.clone()));
    let item = w.get("/storage/bookmarks/b1").await;
    assert_eq!(
        item.json(),
        json!({"id": "b1", "parentid": "menu", "predecessorid": "b0", "sortindex": 5, "modified": t1.parse::<f64>().unwrap(), "payload": "p"})
    );
    assert!(
        item.text.contains(&format!("\"modified\":{t1}")),
        "two decimals: {}",
        item.text
    );
    // Metadata-only writes leave modified alone (S11-032) and so the collection time too.
    let r = w
        .call(Method::PUT, "/storage/bookmarks/b1", Some(json!({"sortindex": 9})), &[])
        .await;
    assert_eq!(r.text, t1);
    assert_eq!(w.get("/storage/bookmarks/b1").await.json()["sortindex"], 9);
    w.get("/storage/bookmarks/nope").await.assert_error(404, 0);
    w.call(Method::PUT, "/storage/bookmarks/b2", Some(json!({"payload": 4})), &[])
        .await
        .assert_error(400, 8);
    let r = send(
        s.http
            .put(format!("{}/1.1/{USER}/storage/bookmarks/b2", s.base))
            .header("authorization", &w.auth)
            .body("{nope"),
    )
    .await;
    r.assert_error(400, 6);
    w.get("/storage/bad%20name").await.assert_error(400, 13);
}

#[tokio::test]
async fn s11_030_s11_031_s11_033_s11_035_s11_072_collection_time_is_the_newest_item() {
    let s = TestServer::start().await;
    let w = account(&s).await;
    let t1 = w
        .call(Method::PUT, "/storage/history/a", Some(json!({"payload": "1"})), &[])
        .await
        .text;
    let t2 = w
        .call(Method::PUT, "/storage/history/b", Some(json!({"payload": "2"})), &[])
        .await
        .text;
    let info = w.get("/info/collections").await;
    assert!(info.text.contains(&format!("\"history\":{t2}")), "{}", info.text);
    assert_eq!(info.header("x-weave-records").as_deref(), Some("1"));
    w.call(Method::DELETE, "/storage/history/b", None, &[]).await;
    let info = w.get("/info/collections").await;
    assert!(
        info.text.contains(&format!("\"history\":{t1}")),
        "after deleting the newest: {}",
        info.text
    );
    // X-If-Unmodified-Since compares with that time (S11-072).
    let r = w
        .call(
            Method::PUT,
            "/storage/history/c",
            Some(json!({"payload": "3"})),
            &[("x-if-unmodified-since", "1.00")],
        )
        .await;
    assert_eq!(r.status, 412);
    let ok = w
        .call(
            Method::PUT,
            "/storage/history/c",
            Some(json!({"payload": "3"})),
            &[("x-if-unmodified-since", &t1)],
        )
        .await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn s11_080_s11_081_s11_082_s11_084_post_results() {
    let s = TestServer::start().await;
    let w = account(&s).await;
    let mut items: Vec<Value> = (0..102)
        .map(|i| json!({"id": format!("{i:03}"), "payload": "x"}))
        .collect();
    items.push(json!({"payload": "no id"}));
    items.push(json!("not an object"));
    items.push(json!({"id": "bad", "ttl": -1}));
    let r = w
        .call(Method::POST, "/storage/forms", Some(Value::Array(items)), &[])
        .await;
    assert_eq!(r.status, 200);
    assert!(r.text.starts_with("{\"modified\":") && r.text.contains('.'));
    let b = r.json();
    assert_eq!(b["success"].as_array().unwrap().len(), 100);
    assert_eq!(b["failed"]["100"], json!(["retry wbo"]));
    assert_eq!(b["failed"]["bad"], json!(["invalid ttl"]));
    assert_eq!(b["failed"][""], json!(["invalid id", "invalid wbo"]));
    // A single object is a PUT of that object.
    let r = w
        .call(
            Method::POST,
            "/storage/forms",
            Some(json!({"id": "single", "payload": "y"})),
            &[],
        )
        .await;
    assert!(r.text.parse::<f64>().is_ok(), "answered like a PUT: {}", r.text);
    let r = w
        .call(
            Method::PUT,
            "/storage/forms",
            Some(json!([{"id": "viaput", "payload": "z"}])),
            &[],
        )
        .await;
    assert_eq!(r.json()["success"], json!(["viaput"]), "PUT on a collection is a POST");
}

#[tokio::test]
async fn s11_050_s11_051_s11_052_s11_053_s11_054_s11_055_queries_and_formats() {
    let s = TestServer::start().await;
    let w = account(&s).await;
    for (id, si, parent) in [("01", 1, "p1"), ("02", 3, "p2"), ("03", 2, "p1")] {
        w.call(
            Method::PUT,
            &format!("/storage/bookmarks/{id}"),
            Some(json!({"payload": id, "sortindex": si, "parentid": parent})),
            &[],
        )
        .await;
    }
    assert_eq!(
        ids(&w.get("/storage/bookmarks?sort=index").await),
        vec!["02", "03", "01"]
    );
    assert_eq!(
        ids(&w.get("/storage/bookmarks?sort=oldest").await),
        vec!["01", "02", "03"]
    );
    assert_eq!(
        ids(&w.get("/storage/bookmarks?parentid=p1&sort=oldest").await),
        vec!["01", "03"]
    );
    assert_eq!(
        ids(&w.get("/storage/bookmarks?index_above=1&index_below=3").await),
        vec!["03"]
    );
    assert_eq!(
        ids(&w.get("/storage/bookmarks?sort=oldest&limit=1&offset=1").await),
        vec!["02"]
    );
    assert_eq!(
        ids(&w.get("/storage/bookmarks?ids=01,03&sort=oldest").await),
        vec!["01", "03"]
    );
    let r = w.get("/storage/bookmarks?sort=oldest&full=1").await;
    assert_eq!(r.json()[0]["payload"], "01");
    assert_eq!(r.header("x-weave-records").as_deref(), Some("3"));
    for bad in ["older=x", "newer=x", "index_above=x", "limit=x", "offset=x"] {
        assert_eq!(w.get(&format!("/storage/bookmarks?{bad}")).await.status, 400, "{bad}");
    }
    assert_eq!(w.get("/storage/nothing").await.json(), json!([]));
    // S11-055: whoisi is length-prefixed JSON.
    let r = w
        .call(
            Method::GET,
            "/storage/bookmarks?ids=01,02&sort=oldest",
            None,
            &[("accept", "application/whoisi")],
        )
        .await;
    assert_eq!(r.header("content-type").as_deref(), Some("application/whoisi"));
    assert_eq!(r.text.as_bytes(), b"\0\0\0\x04\"01\"\0\0\0\x04\"02\"");
    let r = w
        .call(
            Method::GET,
            "/storage/bookmarks?sort=oldest",
            None,
            &[("accept", "application/newlines")],
        )
        .await;
    assert_eq!(r.text, "\"01\"\n\"02\"\n\"03\"\n");
}

#[tokio::test]
async fn s11_090_s11_091_s11_092_s11_093_s11_094_s11_095_deletes() {
    let s = TestServer::start().await;
    let w = account(&s).await;
    let items: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("{i}"), "payload": "x", "parentid": if i < 2 { "a" } else { "b" }}))
        .collect();
    w.call(Method::POST, "/storage/history", Some(Value::Array(items)), &[])
        .await;
    let r = w.call(Method::DELETE, "/storage/history?parentid=a", None, &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.text.parse::<f64>().is_ok());
    assert_eq!(w.get("/storage/history").await.json().as_array().unwrap().len(), 3);
    assert_eq!(
        w.call(Method::DELETE, "/storage/history/missing", None, &[])
            .await
            .status,
        200
    );
    w.call(Method::DELETE, "/storage/history", None, &[]).await;
    assert_eq!(w.get("/storage/history").await.json(), json!([]));
    w.call(Method::PUT, "/storage/tabs/t", Some(json!({"payload": "x"})), &[])
        .await;
    w.call(Method::DELETE, "/storage", None, &[]).await.assert_error(400, 4);
    assert_eq!(w.get("/storage/tabs").await.json(), json!(["t"]));
    assert_eq!(
        w.call(Method::DELETE, "/storage", None, &[("x-confirm-delete", "1")])
            .await
            .status,
        200
    );
    assert_eq!(w.get("/info/collections").await.json(), json!({}));
}

#[tokio::test]
async fn s11_036_s11_040_s11_041_s11_042_s11_043_s11_044_info_and_expiry() {
    let s = TestServer::start().await;
    let w = account(&s).await;
    w.call(
        Method::POST,
        "/storage/a",
        Some(json!([{"id": "1", "payload": "xxxxx"}, {"id": "2", "payload": "yyy", "ttl": 0}])),
        &[],
    )
    .await;
    w.get("/storage/a/2").await.assert_error(404, 0);
    assert_eq!(w.get("/info/collection_counts").await.json(), json!({"a": 1}));
    assert_eq!(w.get("/info/collection_usage").await.json(), json!({"a": 5.0 / 1024.0}));
    assert_eq!(w.get("/info/quota").await.json(), json!([5.0 / 1024.0, null]));
}

/// S11-120: a 1.1 account and a 1.5 user share the store but never each other's data.
#[tokio::test]
async fn s11_120_s11_121_namespaces_never_collide() {
    let s = TestServer::start().await;
    let w = account(&s).await;
    w.call(
        Method::PUT,
        "/storage/tabs/legacy",
        Some(json!({"payload": "1.1 data"})),
        &[],
    )
    .await;
    let modern = s.client(1);
    modern.put("/storage/tabs/modern", json!({"payload": "1.5 data"})).await;
    assert_eq!(modern.get("/storage/tabs").await.json(), json!(["modern"]));
    assert_eq!(w.get("/storage/tabs").await.json(), json!(["legacy"]));
}

#[tokio::test]
async fn s11_005_s11_006_s11_071_s11_100_s11_110_ids_methods_quota_maintenance() {
    let s = TestServer::start_with(|c| c.quota_bytes = Some(20 * 1024)).await;
    let w = account(&s).await;
    // Ids with the characters clients use, percent-decoded.
    let r = w
        .call(
            Method::PUT,
            "/storage/passwords/%7Bd2f9e1c0-1234%7D",
            Some(json!({"payload": "x"})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(w.get("/storage/passwords").await.json(), json!(["{d2f9e1c0-1234}"]));
    assert_eq!(
        r.header("x-weave-quota-remaining").as_deref(),
        Some("20"),
        "KiB left (before the write) when 1 MiB or less remains"
    );
    assert_eq!(w.call(Method::PATCH, "/storage/passwords", None, &[]).await.status, 405);
    w.call(
        Method::PUT,
        "/storage/big/a",
        Some(json!({"payload": "x".repeat(21 * 1024)})),
        &[],
    )
    .await;
    let r = w
        .call(Method::PUT, "/storage/big/b", Some(json!({"payload": "y"})), &[])
        .await;
    r.assert_error(400, 14);
    let maint = TestServer::start_with(|c| c.maintenance = Some(true)).await;
    let url = format!("{}/1.1/{USER}/info/collections", maint.base);
    let r = send(maint.http.get(url).header("authorization", &w.auth)).await;
    r.assert_error(503, 0);
    assert!(r.header("retry-after").is_some());
}

/// S11-072 with two devices: the collection's time is its newest item, so two writes in
/// the same centisecond would share it and the second device's guarded write would pass
/// over the first's change. Every write to a collection gets a strictly later time.
#[tokio::test]
async fn s11_072_back_to_back_writes_get_strictly_later_times() {
    let s = TestServer::start().await;
    let w = account(&s).await;
    let mut last = 0.0f64;
    for i in 0..30 {
        let r = w
            .call(
                Method::PUT,
                &format!("/storage/tabs/t{i}"),
                Some(json!({"payload": "x"})),
                &[],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let t: f64 = r.text.trim().parse().unwrap();
        assert!(t > last, "write {i} at {t} is not after {last}");
        last = t;
    }
    s.stop().await;
}

impl Weave<'_> {
    /// A raw body with a content type.
    async fn raw(&self, method: Method, path: &str, content_type: &str, body: &str) -> Resp {
        send(
            self.s
                .http
                .request(method, format!("{}/1.1/{USER}{path}", self.s.base))
                .header("authorization", &self.auth)
                .header("content-type", content_type)
                .body(body.to_string()),
        )
        .await
    }
}

/// S11-074, S11-080: a POSTed single object is a PUT of it, answered with its time.
#[tokio::test]
async fn s11_074_s11_080_post_of_one_object_is_a_put() {
    let s = TestServer::start().await;
    let w = account(&s).await;
    let r = w
        .call(
            Method::POST,
            "/storage/tabs",
            Some(json!({"id": "one", "payload": "p"})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let t: f64 = r
        .text
        .parse()
        .unwrap_or_else(|_| panic!("a bare timestamp, got {}", r.text));
    assert_eq!(r.ts("x-weave-timestamp"), t);
    let item = w.get("/storage/tabs/one").await.json();
    assert_eq!(item["payload"], "p");
    assert_eq!(item["modified"].as_f64().unwrap(), t);
    // Its id is required and must not hold a slash (400 8).
    w.call(Method::POST, "/storage/tabs", Some(json!({"payload": "p"})), &[])
        .await
        .assert_error(400, 8);
    w.call(
        Method::POST,
        "/storage/tabs",
        Some(json!({"id": "a/b", "payload": "p"})),
        &[],
    )
    .await
    .assert_error(400, 8);
}

/// S11-070, S11-080: a body that parses but is not a list (or object) is an invalid WBO
/// (8); a body that does not parse, or names a key twice, is a parse failure (6).
#[tokio::test]
async fn s11_080_bodies_that_are_not_lists() {
    let s = TestServer::start().await;
    let w = account(&s).await;
    for body in ["\"notalist\"", "42", "true", "null"] {
        w.raw(Method::POST, "/storage/tabs", "text/plain", body)
            .await
            .assert_error(400, 8);
    }
    w.raw(Method::POST, "/storage/tabs", "text/plain", "[{")
        .await
        .assert_error(400, 6);
    w.raw(
        Method::POST,
        "/storage/tabs",
        "text/plain",
        r#"[{"id":"a","payload":"x","payload":"y"}]"#,
    )
    .await
    .assert_error(400, 6);
    w.raw(
        Method::PUT,
        "/storage/tabs/a",
        "text/plain",
        r#"{"payload":"x","payload":"y"}"#,
    )
    .await
    .assert_error(400, 6);
    assert_eq!(
        ids(&w.get("/storage/tabs").await),
        Vec::<String>::new(),
        "nothing written"
    );
}

/// A POST may send `application/newlines`: one WBO per line.
#[tokio::test]
async fn s11_080_newline_bodies() {
    let s = TestServer::start().await;
    let w = account(&s).await;
    let r = w
        .raw(
            Method::POST,
            "/storage/forms",
            "application/newlines",
            "{\"id\":\"a\",\"payload\":\"1\"}\n{\"id\":\"b\",\"payload\":\"2\"}\n",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["success"], json!(["a", "b"]));
    let mut got = ids(&w.get("/storage/forms").await);
    got.sort();
    assert_eq!(got, ["a", "b"]);
}

/// S11-022: a payload written as "" is a value, and comes back as "".
#[tokio::test]
async fn s11_022_empty_payload_round_trip() {
    let s = TestServer::start().await;
    let w = account(&s).await;
    w.call(Method::PUT, "/storage/prefs/e", Some(json!({"payload": ""})), &[])
        .await;
    let item = w.get("/storage/prefs/e").await.json();
    assert_eq!(item.get("payload"), Some(&json!("")), "{item}");
    let full = w.get("/storage/prefs?full=1").await.json();
    assert_eq!(full[0].get("payload"), Some(&json!("")), "{full}");
}

/// S11-005: a NUL, or a broken percent-escape, in an id is refused alike on every
/// backend (PostgreSQL cannot store a NUL), and nothing is written.
#[tokio::test]
async fn s11_005_nul_and_broken_escapes_in_ids() {
    let s = TestServer::start().await;
    let w = account(&s).await;
    for path in [
        "/storage/tabs/a%00b",
        "/storage/tabs/a%",
        "/storage/tabs/%%",
        "/storage/tabs/a%2",
    ] {
        let r = w.call(Method::PUT, path, Some(json!({"payload": "x"})), &[]).await;
        assert_eq!(r.status, 404, "{path}: {}", r.text);
        assert_eq!(w.get(path).await.status, 404, "{path}");
    }
    let r = w
        .call(
            Method::POST,
            "/storage/tabs",
            Some(json!([{"id": "a\u{0}b", "payload": "x"}])),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["success"], json!([]));
    assert!(r.json()["failed"].get("a\u{0}b").is_some(), "{}", r.text);
    let r = w
        .call(
            Method::PUT,
            "/storage/tabs/fine",
            Some(json!({"payload": "a\u{0}b"})),
            &[],
        )
        .await;
    r.assert_error(400, 8);
    assert_eq!(ids(&w.get("/storage/tabs").await), Vec::<String>::new());
}

/// S11-051: a listing larger than one read is streamed a read at a time: every item once,
/// in order, in every output format, with `limit`/`offset` still exact.
#[tokio::test]
async fn s11_051_large_listings_stream_whole() {
    let s = TestServer::start().await;
    let w = account(&s).await;
    for chunk in 0..12 {
        let items: Vec<Value> = (0..100)
            .map(|i| json!({"id": format!("{chunk:02}-{i:02}"), "payload": "x", "sortindex": chunk * 100 + i}))
            .collect();
        assert_eq!(
            w.call(Method::POST, "/storage/history", Some(Value::Array(items)), &[])
                .await
                .status,
            200
        );
    }
    let r = w.get("/storage/history?sort=index").await;
    assert_eq!(r.header("x-weave-records").as_deref(), Some("1200"));
    let got = ids(&r);
    assert_eq!(got.len(), 1200);
    assert_eq!(
        got.first().map(String::as_str),
        Some("11-99"),
        "highest sortindex first"
    );
    assert_eq!(got.last().map(String::as_str), Some("00-00"));
    let full = w.get("/storage/history?full=1&sort=oldest").await.json();
    let full_ids: std::collections::HashSet<&str> = full
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(full_ids.len(), 1200, "oldest first, continued by key");
    let newest = ids(&w.get("/storage/history?sort=newest").await);
    let unique: std::collections::HashSet<&String> = newest.iter().collect();
    assert_eq!(
        (newest.len(), unique.len()),
        (1200, 1200),
        "newest first, continued by key"
    );
    let r = w
        .call(
            Method::GET,
            "/storage/history?sort=index",
            None,
            &[("accept", "application/whoisi")],
        )
        .await;
    let bytes = r.text.as_bytes();
    let (mut at, mut n) = (0, 0);
    while at < bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += 4 + len;
        n += 1;
    }
    assert_eq!((at, n), (bytes.len(), 1200));
    let page = ids(&w.get("/storage/history?sort=index&limit=700&offset=400").await);
    assert_eq!(page.len(), 700);
    assert_eq!(page[0], got[400]);
    assert_eq!(page[699], got[1099]);
}
