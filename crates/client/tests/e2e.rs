//! The client library against the real server, on both protocols: what two devices of one
//! account see, conflicts, wrong keys, tampering, the special records and the commands.
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use syncstead_client::bookmarks::{from_records, parse_html};
use syncstead_client::transport::{Notice, Record};
use syncstead_client::ClientError;

/// Device A imports nested bookmarks and pushes history; device B, with the same account
/// and key, reads the identical plaintext and the same bookmark tree (spec §2.1–2.4).
#[tokio::test]
async fn second_device_reads_what_the_first_wrote() {
    let s = Server::start().await;
    for p in BOTH {
        let a_account = new_account(&s, p, &format!("share-{p:?}")).await;
        let mut a = client(&a_account).await;
        let report = a.import_bookmarks(BOOKMARKS_HTML, &|_| {}).await.unwrap();
        assert_eq!(report.records, 14, "{p:?}: 11 items + 3 roots");
        let pushed = history(250, "h");
        a.push("history", pushed.clone(), &|_| {}).await.unwrap();

        let mut b = client(&second_device(&a_account, "B")).await;
        let (pulled, _) = b.pull("history", &|_| {}).await.unwrap();
        assert_eq!(sorted(pulled), sorted(pushed), "{p:?}");
        let (html, n) = b.export_bookmarks(&|_| {}).await.unwrap();
        assert_eq!(n, 11);
        assert_eq!(parse_html(&html), parse_html(BOOKMARKS_HTML), "{p:?}: {html}");

        // meta/global declares the engines written (CF-050/051); both devices are listed.
        let meta = b.meta_global().unwrap();
        assert_eq!(meta["storageVersion"], 5);
        assert_eq!(meta["engines"]["bookmarks"]["version"], 2);
        assert_eq!(meta["engines"]["history"]["version"], 1);
        let devices = b.clients().await.unwrap();
        assert_eq!(devices.len(), 2, "{p:?}");
        let protocol = if p == Protocol::Weave11 { "1.1" } else { "1.5" };
        assert!(devices.iter().all(|d| d["protocols"] == json!([protocol])));
    }
    s.stop().await;
}

/// CF-071: two devices write the same collection from the same starting point; the later
/// write meets a 412, fetches the other's change, merges the folder and retries: neither
/// device's bookmark is lost.
#[tokio::test]
async fn concurrent_writes_are_merged_after_412() {
    let s = Server::start().await;
    for p in BOTH {
        let account = new_account(&s, p, &format!("race-{p:?}")).await;
        let mut a = client(&account).await;
        let mut b = client(&second_device(&account, "B")).await;
        let (base_a, _) = a.pull("bookmarks", &|_| {}).await.unwrap();
        let (base_b, _) = b.pull("bookmarks", &|_| {}).await.unwrap();
        assert!(base_a.is_empty() && base_b.is_empty());
        let toolbar = |child: &str| json!({"id": "toolbar", "type": "folder", "parentid": "places", "title": "toolbar", "children": [child]});
        let bookmark = |id: &str| json!({"id": id, "type": "bookmark", "parentid": "toolbar", "title": id, "bmkUri": format!("https://{id}.example/")});

        let ra = a
            .push(
                "bookmarks",
                vec![bookmark("fromdeviceA1"), toolbar("fromdeviceA1")],
                &|_| {},
            )
            .await
            .unwrap();
        assert_eq!(ra.conflicts, 0);
        // B still has the base it read before A wrote.
        let rb = b
            .push(
                "bookmarks",
                vec![bookmark("fromdeviceB1"), toolbar("fromdeviceB1")],
                &|_| {},
            )
            .await
            .unwrap();
        assert_eq!(rb.conflicts, 1, "{p:?}: B's write must meet a 412");
        assert_eq!(rb.merged, 1, "{p:?}: the toolbar folder is merged");

        let mut c = client(&second_device(&account, "C")).await;
        let (all, _) = c.pull("bookmarks", &|_| {}).await.unwrap();
        let tree = from_records(&all);
        let titles: Vec<String> = tree
            .toolbar
            .iter()
            .map(|i| match i {
                syncstead_client::bookmarks::Item::Bookmark { title, .. } => title.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(titles, ["fromdeviceB1", "fromdeviceA1"], "{p:?}");
        let folder = all.iter().find(|r| r["id"] == "toolbar").unwrap();
        assert_eq!(
            folder["children"],
            json!(["fromdeviceB1", "fromdeviceA1"]),
            "{p:?}: the merged folder lists both"
        );
        // A's next write is guarded by its own, now stale, view: it merges too.
        let ra2 = a
            .push("bookmarks", vec![toolbar("fromdeviceA1")], &|_| {})
            .await
            .unwrap();
        assert_eq!(ra2.conflicts, 1, "{p:?}");
        let (all, _) = c.pull("bookmarks", &|_| {}).await.unwrap();
        assert_eq!(from_records(&all).toolbar.len(), 2, "{p:?}");
    }
    s.stop().await;
}

/// CF-031 / CF-043: a device with another key is told so, and writes nothing; a record
/// altered on the server fails its HMAC and is reported, not decrypted into garbage.
#[tokio::test]
async fn wrong_key_and_tampered_record_are_detected() {
    let s = Server::start().await;
    for p in BOTH {
        let account = new_account(&s, p, &format!("keys-{p:?}")).await;
        let mut a = client(&account).await;
        a.push("history", history(3, "t"), &|_| {}).await.unwrap();
        let before = a.transport.info_collections().await.unwrap();

        let mut wrong = second_device(&account, "wrong key");
        match &mut wrong.login {
            syncstead_client::account::Login::Weave11 { sync_key, .. } => {
                *sync_key = syncstead_client::crypto::friendly_sync_key(&[7u8; 16]);
            }
            // 1.5: the same uid (same key id), another kSync.
            syncstead_client::account::Login::Sync15 { ksync, .. } => {
                *ksync = data_encoding::BASE64URL_NOPAD.encode(&[7u8; 64]);
            }
        }
        let mut w = wrong.client(reqwest::Client::new()).unwrap();
        assert!(matches!(w.prepare().await, Err(ClientError::WrongKey)), "{p:?}");
        assert_eq!(
            a.transport.info_collections().await.unwrap(),
            before,
            "{p:?}: the wrong key wrote nothing"
        );

        // Flip one character of a record's ciphertext on the server.
        let rec = a.transport.get_record("history", "t00000001").await.unwrap().unwrap();
        let mut env: Value = serde_json::from_str(&rec.payload).unwrap();
        let ct = env["ciphertext"].as_str().unwrap().to_string();
        let flipped = match ct.strip_prefix('A') {
            Some(rest) => format!("B{rest}"),
            None => format!("A{}", &ct[1..]),
        };
        env["ciphertext"] = json!(flipped);
        a.transport
            .put_record(
                "history",
                &Record {
                    id: rec.id.clone(),
                    payload: env.to_string(),
                    ..Default::default()
                },
                None,
            )
            .await
            .unwrap();
        let err = a.pull("history", &|_| {}).await.unwrap_err();
        assert!(
            matches!(&err, ClientError::BadRecord { id, why, .. } if id == "t00000001" && why.contains("HMAC")),
            "{p:?}: {err}"
        );
        // A record whose encrypted id differs from its server id is refused (CF-002).
        let other = a.encrypt("history", &json!({"id": "someoneelse"})).unwrap();
        a.transport
            .put_record(
                "history",
                &Record {
                    id: "t00000001".into(),
                    payload: other.payload,
                    ..Default::default()
                },
                None,
            )
            .await
            .unwrap();
        let err = a.pull("history", &|_| {}).await.unwrap_err();
        assert!(err.to_string().contains("id differs"), "{p:?}: {err}");
    }
    s.stop().await;
}

/// CF-052: meta/global missing while data exists → wipe and fresh start; a newer
/// storageVersion → stop without writing; a changed syncID → the other device resets.
#[tokio::test]
async fn meta_global_rules() {
    let s = Server::start().await;
    for p in BOTH {
        let account = new_account(&s, p, &format!("meta-{p:?}")).await;
        let mut a = client(&account).await;
        a.push("history", history(2, "m"), &|_| {}).await.unwrap();
        let first_sync_id = a.meta_global().unwrap()["syncID"].clone();

        // Another client removed meta/global only.
        a.transport
            .request(Method::DELETE, "/storage/meta", &[], None)
            .await
            .unwrap();
        let mut b = client(&second_device(&account, "B")).await;
        assert!(b.events.iter().any(|e| e.contains("wiped")), "{p:?}: {:?}", b.events);
        assert_ne!(b.meta_global().unwrap()["syncID"], first_sync_id);
        let info = b.transport.info_collections().await.unwrap();
        assert!(!info.contains_key("history"), "{p:?}: old data wiped: {info:?}");

        // A notices the new syncID and forgets its positions; its keys are reloaded.
        a.prepare().await.unwrap();
        assert!(a.events.iter().any(|e| e.contains("reset")), "{p:?}: {:?}", a.events);
        assert!(!a.state.last_modified.contains_key("history"));
        let (h, _) = a.pull("history", &|_| {}).await.unwrap();
        assert!(h.is_empty());

        // A newer client's meta/global is never overwritten.
        let newer = json!({"syncID": "abcdefghijkl", "storageVersion": 6, "engines": {}, "declined": []});
        b.transport
            .put_record(
                "meta",
                &Record {
                    id: "global".into(),
                    payload: newer.to_string(),
                    ..Default::default()
                },
                None,
            )
            .await
            .unwrap();
        let before = b.transport.info_collections().await.unwrap();
        let mut c = second_device(&account, "C").client(reqwest::Client::new()).unwrap();
        assert!(
            matches!(c.prepare().await, Err(ClientError::StorageVersion(6))),
            "{p:?}"
        );
        assert_eq!(b.transport.info_collections().await.unwrap(), before);
        let kept = b.transport.get_record("meta", "global").await.unwrap().unwrap();
        assert_eq!(kept.payload, newer.to_string());
    }
    s.stop().await;
}

/// CF-050: an engine the user declined elsewhere is not written to.
#[tokio::test]
async fn declined_engine_is_refused() {
    let s = Server::start().await;
    let account = new_account(&s, Protocol::Sync15, "declined").await;
    let mut a = client(&account).await;
    let mut meta = a.meta_global().unwrap().clone();
    meta["engines"].as_object_mut().unwrap().remove("passwords");
    meta["declined"] = json!(["passwords"]);
    a.transport
        .put_record(
            "meta",
            &Record {
                id: "global".into(),
                payload: meta.to_string(),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    let mut b = client(&second_device(&account, "B")).await;
    let err = b
        .push(
            "passwords",
            vec![json!({"id": "{0000-1111}", "hostname": "https://x"})],
            &|_| {},
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Declined(ref e) if e == "passwords"), "{err}");
    s.stop().await;
}

/// §6.1: a command left in a device's client record is carried out and cleared at that
/// device's next sync; unknown commands are reported.
#[tokio::test]
async fn commands_reach_the_addressed_device() {
    let s = Server::start().await;
    for p in BOTH {
        let account = new_account(&s, p, &format!("cmd-{p:?}")).await;
        let mut a = client(&account).await;
        a.push("history", history(1, "c"), &|_| {}).await.unwrap();
        assert!(a.state.last_modified.contains_key("history"));
        let mut b = client(&second_device(&account, "B")).await;
        let a_id = a.device.id.clone();
        b.send_command(&a_id, "resetEngine", &["history"]).await.unwrap();
        b.send_command(&a_id, "frobnicate", &[]).await.unwrap();

        let outcomes = a.prepare().await.unwrap();
        assert_eq!(outcomes.len(), 2, "{p:?}");
        assert!(outcomes[0].handled && outcomes[0].command == "resetEngine");
        assert!(!outcomes[1].handled && outcomes[1].message.contains("not supported"));
        assert!(!a.state.last_modified.contains_key("history"), "{p:?}");
        // Cleared: the next sync finds nothing.
        assert!(a.prepare().await.unwrap().is_empty());
        let me = b
            .clients()
            .await
            .unwrap()
            .into_iter()
            .find(|c| c["id"] == json!(a_id))
            .unwrap();
        assert_eq!(me["commands"], json!([]));
        assert_eq!(me["name"], json!(a.device.name));
    }
    s.stop().await;
}

/// S15-150…: uploads are split by the server's advertised limits into several POSTs and
/// batches; downloads page with X-Weave-Next-Offset.
#[tokio::test]
async fn batched_upload_and_paged_download_follow_the_limits() {
    let s = Server::start_with(|c| {
        c.max_post_records = Some(10);
        c.max_total_records = Some(25);
    })
    .await;
    let account = new_account(&s, Protocol::Sync15, "limits").await;
    let mut a = client(&account).await;
    let records = history(60, "l");
    let counted = std::sync::atomic::AtomicUsize::new(0);
    let report = a
        .push("history", records.clone(), &|n| {
            counted.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        })
        .await
        .unwrap();
    assert_eq!(counted.into_inner(), 60);
    assert_eq!(report.requests, 6, "60 records, 10 per POST");
    let mut b = client(&second_device(&account, "B")).await;
    b.transport.page_size = 7;
    let pages = std::sync::atomic::AtomicUsize::new(0);
    let (pulled, _) = b
        .pull("history", &|_| {
            pages.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .await
        .unwrap();
    assert_eq!(pages.into_inner(), 9, "60 records in pages of 7");
    assert_eq!(sorted(pulled), sorted(records));
    s.stop().await;
}

/// Spec §2.4 step 1: a token the node no longer accepts (here: the operator changed the
/// master secret and restarted) is replaced by a fresh one and the request goes through.
#[tokio::test]
async fn refreshes_its_token_on_401() {
    let s = Server::start().await;
    let account = new_account(&s, Protocol::Sync15, "refresh").await;
    let mut a = client(&account).await;
    a.push("history", history(2, "r"), &|_| {}).await.unwrap();
    let addr = s.running.as_ref().unwrap().addr;
    let data = s.dir.path().to_path_buf();
    let keys = s.keys.path().join("fxa.jwk");
    let database_url = s.postgres.as_ref().map(|p| p.url.clone());
    let Server {
        running,
        dir,
        keys: key_dir,
        postgres,
        ..
    } = s;
    running.unwrap().shutdown().await.unwrap();
    let layer = syncstead_server::ConfigLayer {
        listen: Some(addr),
        data_dir: Some(data),
        master_secret: Some("a rotated secret".into()),
        oauth_public_key_file: Some(keys),
        oauth_jwks_url: Some(String::new()),
        database_url,
        ..Default::default()
    };
    let restarted = syncstead_server::start(syncstead_server::Settings::resolve(layer).unwrap())
        .await
        .unwrap();
    let (h, _) = a.pull("history", &|_| {}).await.expect("pull after re-authenticating");
    assert_eq!(h.len(), 2);
    assert!(!a.transport.endpoint_changed, "same user, same node");
    restarted.shutdown().await.unwrap();
    drop((dir, key_dir, postgres));
}

/// §2.2 step 6 / S15: X-Weave-Backoff is kept for the user, and a 503 with Retry-After
/// (maintenance) is waited out before the request is retried.
#[tokio::test]
async fn honours_backoff_and_retry_after() {
    let s = Server::start_with(|c| {
        c.backoff_inflight = Some(0);
        c.backoff_seconds = Some(42);
        c.retry_after_seconds = Some(1);
    })
    .await;
    for p in BOTH {
        let account = new_account(&s, p, &format!("backoff-{p:?}")).await;
        let mut a = client(&account).await;
        assert!(a.transport.take_notices().contains(&Notice::Backoff(42)), "{p:?}");
    }
    let account = new_account(&s, Protocol::Sync15, "maintenance").await;
    let mut a = client(&account).await;
    let flag = s.dir.path().join("maintenance");
    std::fs::write(&flag, "").unwrap();
    // The server looks for the file every 2 s.
    let mut on = false;
    for _ in 0..50 {
        let r = a.transport.request(Method::GET, "/info/collections", &[], None).await;
        if matches!(r, Err(ClientError::Busy { retry_after: Some(1) })) {
            on = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        on,
        "maintenance mode answers 503 + Retry-After, and the client gave up after 3 waits"
    );
    let clear = {
        let flag = flag.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            std::fs::remove_file(flag).unwrap();
        })
    };
    a.transport.max_retry_wait = Duration::from_secs(5);
    // Up to three 1 s waits might not cover the 2 s poll; a second call always does.
    let mut ok = false;
    for _ in 0..3 {
        if a.transport.info_collections().await.is_ok() {
            ok = true;
            break;
        }
    }
    clear.await.unwrap();
    assert!(ok, "the client waited out Retry-After and got through");
    assert!(a.transport.take_notices().contains(&Notice::RetryAfter(1)));
    s.stop().await;
}

/// The client's backup holds every collection decrypted (files 0600, directory 0700);
/// after a wipe, restore brings it back and another device reads it.
#[tokio::test]
async fn backup_wipe_restore() {
    use std::os::unix::fs::PermissionsExt;
    let s = Server::start().await;
    for p in BOTH {
        let account = new_account(&s, p, &format!("backup-{p:?}")).await;
        let mut a = client(&account).await;
        a.import_bookmarks(BOOKMARKS_HTML, &|_| {}).await.unwrap();
        let h = history(40, "b");
        a.push("history", h.clone(), &|_| {}).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("backup");
        let done = a.backup(&target, &|_| {}).await.unwrap();
        assert_eq!(done, [("bookmarks".to_string(), 14), ("history".to_string(), 40)]);
        assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(
            std::fs::metadata(target.join("history.json"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        a.wipe().await.unwrap();
        let info = a.transport.info_collections().await.unwrap();
        assert!(!info.contains_key("history"));
        a.restore(&target, &|_| {}).await.unwrap();
        let mut b = client(&second_device(&account, "B")).await;
        let (pulled, _) = b.pull("history", &|_| {}).await.unwrap();
        assert_eq!(sorted(pulled), sorted(h), "{p:?}");
        let (html, _) = b.export_bookmarks(&|_| {}).await.unwrap();
        assert_eq!(parse_html(&html), parse_html(BOOKMARKS_HTML));
    }
    s.stop().await;
}

/// CF-040/042: new bulk keys, with a key of its own for one collection; everything is
/// re-encrypted, and another device reads it after its next prepare.
#[tokio::test]
async fn keys_rotate_with_per_collection_keys() {
    let s = Server::start().await;
    for p in BOTH {
        let account = new_account(&s, p, &format!("rotate-{p:?}")).await;
        let mut a = client(&account).await;
        let h = history(30, "k");
        a.push("history", h.clone(), &|_| {}).await.unwrap();
        a.push(
            "forms",
            vec![json!({"id": "form00000001", "name": "q", "value": "rust"})],
            &|_| {},
        )
        .await
        .unwrap();
        let mut b = client(&second_device(&account, "B")).await;
        let old_default = b.collection_keys().unwrap().default.to_base64();

        let report = a.rotate_keys(&["history"]).await.unwrap();
        assert_eq!(report.records, 31, "{p:?}");
        let keys = a.collection_keys().unwrap().clone();
        assert_ne!(keys.default.to_base64(), old_default);
        assert!(keys.collections.contains_key("history"));
        // The history records are sealed with the history key, not the default one.
        let rec = a.transport.get_record("history", "k00000003").await.unwrap().unwrap();
        assert!(keys.for_collection("history").open(&rec.payload).is_ok());
        assert!(keys.default.open(&rec.payload).is_err());

        // B's old keys no longer open the data; after prepare it reads everything.
        assert!(b.pull("history", &|_| {}).await.is_err(), "{p:?}");
        b.prepare().await.unwrap();
        let (pulled, _) = b.pull("history", &|_| {}).await.unwrap();
        assert_eq!(sorted(pulled), sorted(h), "{p:?}");
        let (forms, _) = b.pull("forms", &|_| {}).await.unwrap();
        assert_eq!(forms[0]["value"], "rust");
    }
    s.stop().await;
}

/// Spec §2.2 step 6: X-Weave-Alert is passed on to the user. Syncstead itself never sends
/// one (it is how an operator announced an end of service), so a bare socket answers here.
#[tokio::test]
async fn weave_alert_reaches_the_user() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = vec![0u8; 4096];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let (status, body) = if head.contains("/node/weave") {
                ("404 Not Found", "")
            } else {
                ("200 OK", "{}")
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nX-Weave-Alert: This server closes on 2027-01-01\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(reply.as_bytes()).await;
        }
    });
    let mut t = syncstead_client::transport::Transport::new(
        reqwest::Client::new(),
        syncstead_client::transport::Auth::Basic {
            server: url::Url::parse(&format!("http://{addr}/")).unwrap(),
            username: "someone".into(),
            password: "pw".into(),
        },
    );
    assert!(t.info_collections().await.unwrap().is_empty());
    let notices = t.take_notices();
    assert!(
        notices.contains(&Notice::Alert("This server closes on 2027-01-01".into())),
        "{notices:?}"
    );
}
