//! Crash safety: writers hammer a real `syncstead serve` process, which is killed with
//! SIGKILL at a random moment (mid-POST and mid-batch); after a restart every acknowledged
//! write is there, intact, and every POST and every batch is either wholly there or wholly
//! absent. On SQLite, and on PostgreSQL when a test server is configured.
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rand::Rng;

/// (collection, id) → payload of every acknowledged write; every POST as its list of ids.
#[derive(Default)]
struct Ledger {
    acked: HashMap<(u64, String), String>,
    posts: Vec<(u64, Vec<String>)>,
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    kill_and_check(None);
}

/// The same on PostgreSQL: the server is killed, PostgreSQL is not; a transaction the
/// server never committed is rolled back by PostgreSQL when the connection drops.
#[test]
fn postgres_acknowledged_writes_survive_sigkill() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let Some(scratch) = rt.block_on(syncstead_store::testing::ScratchSchema::create()) else {
        eprintln!("SKIPPED (PostgreSQL): set SYNCSTEAD_TEST_POSTGRES_URL");
        return;
    };
    kill_and_check(Some(&scratch.url));
    drop(scratch);
}

fn kill_and_check(database_url: Option<&str>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    // Purges run every second, so kills also land in the middle of them.
    let mut args = vec![
        "--listen",
        listen.as_str(),
        "--master-secret",
        "crash-test-secret-1",
        "--purge-interval-seconds",
        "1",
    ];
    if let Some(url) = database_url {
        args.extend(["--database-url", url]);
    }
    let start = || spawn_server(dir.path(), &args).0;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let kills = 3;
    for round in 0..kills {
        let mut child = start();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for writer in 0..4u64 {
            let (ledger, stop) = (ledger.clone(), stop.clone());
            tasks.push(rt.spawn(async move {
                let uid = 1 + writer;
                let c = storage(&format!("127.0.0.1:{port}"), "crash-test-secret-1", uid);
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let ids: Vec<String> = (0..20).map(|i| format!("r{round}w{writer}n{n}i{i}")).collect();
                    let body = |ids: &[String]| {
                        let v: Vec<serde_json::Value> = ids
                            .iter()
                            .map(|id| serde_json::json!({"id": id, "payload": format!("payload of {id}")}))
                            .collect();
                        serde_json::to_string(&v).unwrap()
                    };
                    let post = |path: String, ids: Vec<String>| {
                        let rb = c.request(reqwest::Method::POST, &path).unwrap();
                        let b = body(&ids);
                        async move { rb.header("content-type", "application/json").body(b).send().await.ok() }
                    };
                    // Writer 3 uploads in batches of three POSTs, the others in single POSTs:
                    // a batch is acknowledged only by its commit, and must appear whole.
                    let ok = if writer == 3 {
                        let start = post("/storage/history?batch=true".into(), ids[..7].to_vec()).await;
                        let batch = match start {
                            Some(r) if r.status() == 202 => r
                                .json::<serde_json::Value>()
                                .await
                                .ok()
                                .and_then(|v| v["batch"].as_str().map(str::to_string)),
                            _ => None,
                        };
                        match batch {
                            Some(b) => {
                                let appended = post(format!("/storage/history?batch={b}"), ids[7..14].to_vec()).await;
                                if appended.is_some_and(|r| r.status() == 202) {
                                    let commit =
                                        post(format!("/storage/history?batch={b}&commit=true"), ids[14..].to_vec())
                                            .await;
                                    commit.is_some_and(|r| r.status() == 200)
                                } else {
                                    false
                                }
                            }
                            None => false,
                        }
                    } else {
                        let sent = post("/storage/history".into(), ids.clone()).await;
                        sent.is_some_and(|r| r.status() == 200)
                    };
                    let mut l = ledger.lock().unwrap();
                    l.posts.push((uid, ids.clone()));
                    if ok {
                        for id in ids {
                            let payload = format!("payload of {id}");
                            l.acked.insert((uid, id), payload);
                        }
                    }
                }
            }));
        }
        // A fifth writer keeps the purge busy: records that expire after a second (not
        // in the ledger, since they are meant to vanish).
        {
            let stop = stop.clone();
            tasks.push(rt.spawn(async move {
                let c = storage(&format!("127.0.0.1:{port}"), "crash-test-secret-1", 99);
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let body: Vec<serde_json::Value> = (0..50)
                        .map(|i| serde_json::json!({"id": format!("t{round}n{n}i{i}"), "payload": "short-lived", "ttl": 1}))
                        .collect();
                    let rb = c.request(reqwest::Method::POST, "/storage/tabs").unwrap();
                    let _ = rb
                        .header("content-type", "application/json")
                        .body(serde_json::to_string(&body).unwrap())
                        .send()
                        .await;
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(rand::thread_rng().gen_range(1200..2500)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            rt.block_on(t).unwrap();
        }
    }

    // Restart cleanly, with no repair, and read everything back.
    let mut child = start();
    let ledger = ledger.lock().unwrap();
    let mut stored: HashMap<(u64, String), String> = HashMap::new();
    for uid in 1..=4u64 {
        let c = storage(&format!("127.0.0.1:{port}"), "crash-test-secret-1", uid);
        let mut offset: Option<String> = None;
        loop {
            let mut path = "/storage/history?full=1&limit=1000".to_string();
            if let Some(o) = &offset {
                path.push_str(&format!("&offset={o}"));
            }
            let rb = c.request(reqwest::Method::GET, &path).unwrap();
            let (items, next): (Vec<serde_json::Value>, Option<String>) = rt.block_on(async {
                let r = rb.send().await.unwrap();
                assert_eq!(r.status(), 200);
                let next = r
                    .headers()
                    .get("x-weave-next-offset")
                    .map(|v| v.to_str().unwrap().to_string());
                (r.json().await.unwrap(), next)
            });
            for item in items {
                stored.insert(
                    (uid, item["id"].as_str().unwrap().to_string()),
                    item["payload"].as_str().unwrap().to_string(),
                );
            }
            offset = next;
            if offset.is_none() {
                break;
            }
        }
    }
    let lost: Vec<_> = ledger
        .acked
        .iter()
        .filter(|(k, v)| stored.get(*k) != Some(*v))
        .collect();
    assert!(!ledger.acked.is_empty());
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged records lost or changed",
        lost.len(),
        ledger.acked.len()
    );
    for (uid, ids) in &ledger.posts {
        let present = ids
            .iter()
            .filter(|id| stored.contains_key(&(*uid, (*id).clone())))
            .count();
        assert!(
            present == 0 || present == ids.len(),
            "a POST is partly visible: {present} of {}",
            ids.len()
        );
    }
    eprintln!(
        "{}: kills: {kills}, acknowledged records checked: {}, lost: 0",
        if database_url.is_some() { "PostgreSQL" } else { "SQLite" },
        ledger.acked.len()
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
