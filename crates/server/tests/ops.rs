//! Operations over real HTTP: health, metrics, maintenance, backoff, CORS, reverse-proxy
//! prefixes, restarts.
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

mod common;

use common::*;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn s15_180_health_endpoints() {
    let s = TestServer::start().await;
    let r = send(s.http.get(format!("{}/__heartbeat__", s.base))).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!((v["status"].as_str(), v["database"].as_str()), (Some("Ok"), Some("Ok")));
    assert!(r.header("x-weave-timestamp").is_none());
    assert_eq!(
        send(s.http.get(format!("{}/__lbheartbeat__", s.base))).await.status,
        200
    );
    let v = send(s.http.get(format!("{}/__version__", s.base))).await.json();
    assert_eq!(v["name"], "syncstead");
    assert!(v["version"].is_string());
}

#[tokio::test]
async fn metrics_listener_counts_requests_and_is_separate() {
    let s = TestServer::start_with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let u = s.client(1);
    u.put("/storage/col/a", json!({"payload": "x"})).await;
    u.get("/storage/col/a").await;
    let addr = s.running.as_ref().unwrap().metrics_addr.unwrap();
    let text = send(s.http.get(format!("http://{addr}/metrics"))).await.text;
    assert!(text.contains("syncstead_requests_total"), "{text}");
    assert!(text.contains("/1.5/{uid}/storage/{collection}/{id}"));
    assert!(text.contains("syncstead_store_seconds"));
    assert!(text.contains("syncstead_users 1"));
    // Hardening finding 13: custom names ("col" and 40 more) go once the user deletes
    // everything; the registry keeps the 13 standard ones.
    assert!(text.contains("syncstead_collection_names 14"), "{text}");
    for i in 0..40 {
        assert_eq!(
            u.put(&format!("/storage/custom{i}/a"), json!({"payload": "x"}))
                .await
                .status,
            200
        );
    }
    let text = send(s.http.get(format!("http://{addr}/metrics"))).await.text;
    assert!(text.contains("syncstead_collection_names 54"), "{text}");
    assert_eq!(u.delete("/storage").await.status, 200);
    let text = send(s.http.get(format!("http://{addr}/metrics"))).await.text;
    assert!(text.contains("syncstead_collection_names 13"), "{text}");
    // The public listener does not serve metrics.
    send(s.http.get(format!("{}/metrics", s.base)))
        .await
        .assert_error(404, 0);
}

#[tokio::test]
async fn s15_150_maintenance_mode_answers_503_with_retry_after() {
    let s = TestServer::start_with(|c| {
        c.maintenance = Some(true);
        c.retry_after_seconds = Some(120);
    })
    .await;
    let r = s.client(1).get("/info/collections").await;
    r.assert_error(503, 0);
    assert_eq!(r.header("retry-after").as_deref(), Some("120"));
    assert!(r.header("x-weave-timestamp").is_some());
    assert_eq!(
        send(s.http.get(format!("{}/__lbheartbeat__", s.base))).await.status,
        200
    );
}

#[tokio::test]
async fn maintenance_file_switches_mode_without_restart() {
    let s = TestServer::start().await;
    let u = s.client(1);
    assert_eq!(u.get("/info/collections").await.status, 200);
    let flag = s.dir.path().join("maintenance");
    std::fs::write(&flag, "").unwrap();
    let mut status = 200;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        status = u.get("/info/collections").await.status.as_u16();
        if status == 503 {
            break;
        }
    }
    assert_eq!(status, 503);
    std::fs::remove_file(&flag).unwrap();
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        status = u.get("/info/collections").await.status.as_u16();
        if status == 200 {
            break;
        }
    }
    assert_eq!(status, 200);
}

#[tokio::test]
async fn x_weave_backoff_when_overloaded() {
    let s = TestServer::start_with(|c| {
        c.backoff_inflight = Some(0);
        c.backoff_seconds = Some(42);
    })
    .await;
    let r = s.client(1).get("/info/collections").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-weave-backoff").as_deref(), Some("42"));
    let quiet = TestServer::start().await;
    assert!(quiet
        .client(1)
        .get("/info/collections")
        .await
        .header("x-weave-backoff")
        .is_none());
}

#[tokio::test]
async fn s15_181_cors_preflight() {
    async fn preflight(s: &TestServer, origin: &str) -> Resp {
        send(
            s.http
                .request(Method::OPTIONS, format!("{}/1.5/1/storage/bookmarks", s.base))
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "authorization,x-if-unmodified-since"),
        )
        .await
    }
    let s = TestServer::start().await;
    let r = preflight(&s, "https://example.org").await;
    assert!(r.status.is_success());
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("https://example.org")
    );
    assert_eq!(r.header("access-control-max-age").as_deref(), Some("1728000"));
    assert!(r.header("access-control-allow-methods").unwrap().contains("POST"));
    // Mozilla's suite (test_cors_settings_are_set) sends `Origin: localhost` and expects it back.
    let r = preflight(&s, "localhost").await;
    assert_eq!(r.header("access-control-allow-origin").as_deref(), Some("localhost"));

    let listed = TestServer::start_with(|c| c.cors_allowed_origins = Some(vec!["https://mine.example".into()])).await;
    let r = preflight(&listed, "https://mine.example").await;
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("https://mine.example")
    );
    let r = preflight(&listed, "https://example.org").await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        None,
        "an origin off the list gets no grant"
    );
}

/// Behind a TLS reverse proxy under a path prefix, clients sign the public URL; the server
/// must accept the request whether or not the proxy strips the prefix (T10-115).
#[tokio::test]
async fn t10_115_public_url_and_path_prefix() {
    let s = TestServer::start_with(|c| c.public_url = Some("https://sync.example.com/sync/".into())).await;
    let creds = s.creds(5);
    let public: url::Url = "https://sync.example.com/sync/1.5/5/info/collections".parse().unwrap();
    for path in ["/sync/1.5/5/info/collections", "/1.5/5/info/collections"] {
        let auth = syncstead_client::hawk_authorization(&creds, "GET", &public).unwrap();
        let r = send(s.http.get(format!("{}{path}", s.base)).header("authorization", auth)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
    }
    // Signed for the address the server listens on instead: refused.
    let direct: url::Url = format!("{}/1.5/5/info/collections", s.base).parse().unwrap();
    let auth = syncstead_client::hawk_authorization(&creds, "GET", &direct).unwrap();
    send(s.http.get(direct.as_str()).header("authorization", auth))
        .await
        .assert_error(401, 0);
}

#[tokio::test]
async fn data_survives_a_restart() {
    let s = TestServer::start().await;
    let dir = s.dir.path().to_path_buf();
    let t = s
        .client(9)
        .post("/storage/col", json!([{"id": "a", "payload": "kept"}]))
        .await
        .json()["modified"]
        .clone();
    let TestServer {
        running,
        dir: tmp,
        postgres,
        ..
    } = s;
    running.unwrap().shutdown().await.unwrap();
    let again = TestServer::start_with(|c| {
        c.data_dir = Some(dir.clone());
        if let Some(p) = &postgres {
            c.database_url = Some(p.url.clone());
        }
    })
    .await;
    let r = again.client(9).get("/storage/col?full=1").await;
    assert_eq!(r.json(), json!([{"id": "a", "modified": t, "payload": "kept"}]));
    drop(tmp);
}

/// Abuse resistance: a connection that sends nothing for idle_timeout_seconds is closed
/// (slow-loris headers included), and past max_connections new connections wait until
/// one closes.
#[tokio::test]
async fn idle_connections_are_closed_and_connections_are_capped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start_with(|c| {
        c.idle_timeout_seconds = Some(1);
        c.max_connections = Some(2);
    })
    .await;
    let addr = s.base.trim_start_matches("http://").to_string();
    let request = format!("GET /__lbheartbeat__ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");

    // Half a request, then silence: the server hangs up.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /__lbheartbeat__ HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the slow connection was not closed");

    // Two silent connections hold both slots; a third is served only when one goes away.
    let a = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let b = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    c.write_all(request.as_bytes()).await.unwrap();
    let mut first = [0u8; 12];
    let early = tokio::time::timeout(std::time::Duration::from_millis(400), c.read_exact(&mut first)).await;
    assert!(early.is_err(), "served past the connection cap");
    drop(a);
    // The dropped connection frees its slot at once; b would also time out after 1 s.
    let served = tokio::time::timeout(std::time::Duration::from_secs(5), c.read_exact(&mut first)).await;
    assert!(served.is_ok(), "not served after a slot was freed");
    assert_eq!(&first, b"HTTP/1.1 200");
    drop(b);
    s.stop().await;
}

/// S15-042/043/046: a write that gives a collection a new time waits for a tick that
/// collection has not used, and waits for it before it reaches the store (counted in
/// `syncstead_store_tick_waits_total`, on both backends); a write to another collection
/// of the same user does not wait for it, and may share its time; a batch's create and
/// appends move no time, so they never wait for a tick, even one just used.
#[tokio::test]
async fn s15_043_only_writes_that_move_the_time_wait_for_the_next_tick() {
    let s = TestServer::start_with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let addr = s.running.as_ref().unwrap().metrics_addr.unwrap();
    let u = s.client(7);
    let record = |id: &str| json!([{"id": id, "payload": "x"}]);
    let waits = |text: &str, op: &str| text.contains(&format!("syncstead_store_tick_waits_total{{op=\"{op}\"}}"));
    // Stages that arrived in the tick of the collection's last write: those would have
    // waited; writes to another collection that got the same time: those did not wait.
    let (mut staged_in_used_tick, mut shared) = (0, 0);
    let mut text = String::new();
    for i in 0..200 {
        let put = u
            .put(&format!("/storage/bookmarks/p{i}"), json!({"payload": "x"}))
            .await;
        assert_eq!(put.status, 200);
        // Right after a write to the same collection: waits if that tick is still on.
        let again = u
            .put(&format!("/storage/bookmarks/q{i}"), json!({"payload": "x"}))
            .await;
        assert_eq!(again.status, 200);
        assert!(again.ts("x-last-modified") > put.ts("x-last-modified"), "S15-043");
        let last = again.ts("x-last-modified");
        let create = send(u.req(Method::POST, "/storage/bookmarks?batch=true").json(&record("a"))).await;
        assert_eq!(create.status, 202, "{}", create.text);
        let batch = create.json()["batch"].as_str().unwrap().to_string();
        let append = send(
            u.req(Method::POST, &format!("/storage/bookmarks?batch={batch}"))
                .json(&record("b")),
        )
        .await;
        assert_eq!(append.status, 202, "{}", append.text);
        for r in [&create, &append] {
            if r.ts("x-weave-timestamp") == last {
                staged_in_used_tick += 1;
            }
        }
        let commit = send(
            u.req(Method::POST, &format!("/storage/bookmarks?batch={batch}&commit=true"))
                .json(&json!([])),
        )
        .await;
        assert_eq!(commit.status, 200, "{}", commit.text);
        assert!(
            commit.ts("x-last-modified") > last,
            "S15-043: a later time than the collection's last write"
        );
        let other = send(u.req(Method::POST, "/storage/tabs").json(&record(&format!("t{i}")))).await;
        assert_eq!(other.status, 200, "{}", other.text);
        if other.ts("x-last-modified") == commit.ts("x-last-modified") {
            shared += 1;
        }
        text = send(s.http.get(format!("http://{addr}/metrics"))).await.text;
        if staged_in_used_tick >= 3 && shared >= 3 && waits(&text, "put_bso") {
            break;
        }
    }
    assert!(
        staged_in_used_tick >= 3,
        "no batch write arrived in a tick its collection had used"
    );
    assert!(
        shared >= 3,
        "writes to another collection waited for the tick ({shared} shared it)"
    );
    assert!(
        waits(&text, "put_bso"),
        "a write in its collection's used tick waited, and was counted: {text}"
    );
    assert!(!waits(&text, "create_batch"), "{text}");
    assert!(!waits(&text, "append_batch"), "{text}");
    let got = u.get("/storage/bookmarks?full=1").await.json();
    assert!(got
        .as_array()
        .is_some_and(|a| ["a", "b"].iter().all(|id| a.iter().any(|b| b["id"] == *id))));
}
