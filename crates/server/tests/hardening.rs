//! What an outside attacker tried (issue "Hardening II"), over real HTTP from other client
//! addresses (127.0.0.2, 127.0.0.3, …: not the trusted loopback proxy 127.0.0.1).
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PASSWORD: &str = "correct horse battery";

async fn info(client: &reqwest::Client, s: &TestServer, user: &str, password: &str) -> Resp {
    send(
        client
            .get(format!("{}/1.1/{user}/info/collections", s.base))
            .header("authorization", basic_auth(user, password)),
    )
    .await
}

/// Guessing from one address locks that address out of that account only: the owner
/// elsewhere, and other accounts behind the guesser's address (a household's NAT), keep
/// working, and every refusal a guesser causes is a 401, never a 503 (U10-012, S11-010).
#[tokio::test]
async fn u10_012_throttle_is_per_address_and_account() {
    let s = TestServer::start().await;
    let victim = weave_account(&s, "victim@example.com", PASSWORD).await;
    let neighbour = weave_account(&s, "neighbour@example.com", PASSWORD).await;
    let (attacker, owner) = (client_from("127.0.0.2"), client_from("127.0.0.3"));
    for _ in 0..8 {
        assert_eq!(info(&attacker, &s, &victim, "guess guess").await.status, 401);
    }
    // Cheap failures (a Basic user that is not the path's) count for the pair only.
    for _ in 0..8 {
        let r = send(
            attacker
                .get(format!("{}/1.1/{victim}/info/collections", s.base))
                .header("authorization", basic_auth(&neighbour, PASSWORD)),
        )
        .await;
        assert_eq!(r.status, 401);
    }
    assert_eq!(
        info(&owner, &s, &victim, PASSWORD).await.status,
        200,
        "the owner elsewhere is not locked out"
    );
    assert_eq!(
        info(&attacker, &s, &neighbour, PASSWORD).await.status,
        200,
        "another account behind the guesser's address is not refused"
    );
    // The locked pair itself: a 401, as for a wrong password, and no hash is computed.
    assert_eq!(info(&attacker, &s, &victim, PASSWORD).await.status, 401);
}

/// One address past the ceiling of failures over all accounts is told to come back later,
/// except for clients that verified recently; other addresses are not affected.
#[tokio::test]
async fn u10_012_address_ceiling() {
    let s = TestServer::start().await;
    let mine = weave_account(&s, "mine@example.com", PASSWORD).await;
    let flood = client_from("127.0.0.4");
    assert_eq!(
        info(&flood, &s, &mine, PASSWORD).await.status,
        200,
        "verified before the flood"
    );
    let mut last = 0;
    for i in 0..(syncstead_server::auth::ADDRESS_CEILING + 5) {
        let user = syncstead_proto::username::username_for_account(&format!("nobody{i}@example.com"));
        last = info(&flood, &s, &user, "whatever").await.status.as_u16();
    }
    assert_eq!(last, 503, "past the ceiling");
    assert_eq!(
        info(&flood, &s, &mine, PASSWORD).await.status,
        200,
        "a recently verified client keeps syncing"
    );
    let other = weave_account(&s, "other@example.com", PASSWORD).await;
    let r = info(&flood, &s, &other, PASSWORD).await;
    r.assert_error(503, 0);
    assert!(r.header("retry-after").is_some());
    assert_eq!(info(&client_from("127.0.0.5"), &s, &other, PASSWORD).await.status, 200);
}

/// Opens a connection from `ip` and sends the first bytes of a request head.
async fn slow_connection(s: &TestServer, ip: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    let mut stream = socket
        .connect(s.base.trim_start_matches("http://").parse().unwrap())
        .await
        .unwrap();
    let _ = stream.write_all(b"GET /__heartbeat__ HTTP/1.1\r\nX-Slow: ").await;
    stream
}

/// Whether the server has closed the connection (reads end) within `within`, while the
/// client keeps dripping a byte every 200 ms.
async fn closed_while_dripping(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let start = Instant::now();
    let mut buf = [0u8; 512];
    while start.elapsed() < within {
        if stream.write_all(b"a").await.is_err() {
            return true;
        }
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // An error response (408 and the like) before the close also ends it.
            Ok(Ok(_)) => {}
            Err(_) => {}
        }
    }
    false
}

/// A client dripping header bytes is cut off once the head deadline passes, however often
/// it sends a byte (the inactivity timer alone never fires for it).
#[tokio::test]
async fn request_head_has_a_deadline() {
    let s = TestServer::start_with(|c| c.request_head_timeout_seconds = Some(2)).await;
    let mut stream = slow_connection(&s, "127.0.0.2").await;
    assert!(closed_while_dripping(&mut stream, Duration::from_secs(8)).await);
}

/// The same for a body: the whole body within its deadline.
#[tokio::test]
async fn request_body_has_a_deadline() {
    let s = TestServer::start_with(|c| c.request_body_timeout_seconds = Some(2)).await;
    let w = weave_account(&s, "body@example.com", PASSWORD).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut stream = socket
        .connect(s.base.trim_start_matches("http://").parse().unwrap())
        .await
        .unwrap();
    let head = format!(
        "PUT /1.1/{w}/storage/tabs/a HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{",
        basic_auth(&w, PASSWORD)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let start = Instant::now();
    let mut answered = false;
    let mut buf = [0u8; 512];
    while start.elapsed() < Duration::from_secs(8) && !answered {
        if stream.write_all(b" ").await.is_err() {
            answered = true;
        }
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => answered = true,
            Err(_) => {}
        }
    }
    assert!(answered, "the server gave up on the trickled body");
}

/// One address holding many slow connections takes at most its share of the connection
/// slots: other clients keep being served.
#[tokio::test]
async fn one_address_cannot_hold_every_connection() {
    let s = TestServer::start_with(|c| {
        c.max_connections = Some(60);
        c.max_connections_per_address = Some(20);
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(slow_connection(&s, "127.0.0.2").await);
    }
    let others = client_from("127.0.0.3");
    for _ in 0..10 {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            others.get(format!("{}/__heartbeat__", s.base)).send(),
        )
        .await;
        assert!(
            r.is_ok_and(|r| r.is_ok_and(|r| r.status() == 200)),
            "another client is served"
        );
    }
    // Most of the slow connections were closed at once.
    let mut closed = 0;
    for stream in &mut held {
        let mut buf = [0u8; 16];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(20), stream.read(&mut buf)).await {
            closed += 1;
        }
    }
    assert!(closed >= 80, "{closed} of 100 closed");
}

fn same_files(s: &TestServer) -> syncstead_server::Settings {
    syncstead_server::Settings::resolve(syncstead_server::ConfigLayer {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(s.dir.path().to_path_buf()),
        master_secret: Some(SECRET.into()),
        database_url: s.postgres.as_ref().map(|p| p.url.clone()),
        ..Default::default()
    })
    .unwrap()
}

/// A second server on the same data directory is refused with a clear message (it would
/// rename the node under the first and serve stale answers).
#[tokio::test]
async fn a_second_server_on_one_data_directory_is_refused() {
    let s = TestServer::start().await;
    let Err(e) = syncstead_server::start(same_files(&s)).await else {
        panic!("a second server started on the same data directory");
    };
    assert!(e.to_string().contains("in use by another Syncstead process"), "{e}");
    assert_eq!(
        s.client(1).get("/info/collections").await.status,
        200,
        "the first serves on"
    );
}

/// A database file deleted under the running server: writes are refused with 503 (never
/// acknowledged into a file nobody will read), the heartbeat turns red, and a restart
/// refuses to put a fresh empty database in its place.
#[tokio::test]
async fn sqlite_deleted_database_is_noticed_and_never_replaced_silently() {
    if on_postgres() {
        eprintln!("SKIPPED: about SQLite's database file");
        return;
    }
    let mut s = TestServer::start().await;
    let u = s.client(1);
    assert_eq!(
        u.put("/storage/tabs/a", serde_json::json!({"payload": "x"}))
            .await
            .status,
        200
    );
    for f in ["syncstead.db", "syncstead.db-wal", "syncstead.db-shm"] {
        let _ = std::fs::remove_file(s.dir.path().join(f));
    }
    for i in 0..5 {
        let r = u
            .put(&format!("/storage/tabs/b{i}"), serde_json::json!({"payload": "y"}))
            .await;
        r.assert_error(503, 0);
        assert!(r.header("retry-after").is_some());
    }
    let w = weave_account_status(&s).await;
    assert_eq!(w, 503, "Weave writes too");
    let r = send(s.http.get(format!("{}/__heartbeat__", s.base))).await;
    assert_eq!(r.status, 503, "{}", r.text);
    s.running.take().unwrap().shutdown().await.unwrap();
    let Err(e) = syncstead_server::start(same_files(&s)).await else {
        panic!("started with a fresh database over the lost one");
    };
    assert!(e.to_string().contains("is missing"), "{e}");
    assert!(
        !s.dir.path().join("syncstead.db").exists(),
        "no empty database was made"
    );
}

async fn weave_account_status(s: &TestServer) -> u16 {
    send(
        s.http
            .put(format!(
                "{}/user/1.0/{}",
                s.base,
                syncstead_proto::username::username_for_account("w@example.com")
            ))
            .body(serde_json::json!({"password": PASSWORD, "email": "w@example.com"}).to_string()),
    )
    .await
    .status
    .as_u16()
}

/// The heartbeat checks the files, not only a query: a read-only log fails it.
#[tokio::test]
async fn sqlite_s15_180_heartbeat_sees_a_read_only_log() {
    if on_postgres() {
        eprintln!("SKIPPED: about SQLite's files");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let s = TestServer::start().await;
    let beat = || async { send(s.http.get(format!("{}/__heartbeat__", s.base))).await.status };
    assert_eq!(beat().await, 200);
    let wal = s.dir.path().join("syncstead.db-wal");
    std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert_eq!(beat().await, 503);
    std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(beat().await, 200);
}

/// T10-118: a captured request replayed is refused for as long as its token lives: after
/// a flood of other users' requests, and (PostgreSQL) at another server process sharing
/// the database.
#[tokio::test]
async fn t10_118_replays_are_refused_whatever_happens_meanwhile() {
    const PUBLIC: &str = "http://sync.example.test";
    let s = TestServer::start_with(|c| c.public_url = Some(PUBLIC.into())).await;
    let creds = s.creds(1);
    let url = url::Url::parse(&format!("{PUBLIC}/1.5/1/storage/tabs/a")).unwrap();
    let auth = syncstead_client::hawk_authorization(&creds, "PUT", &url).unwrap();
    let put = |base: &str| {
        s.http
            .put(format!("{base}/1.5/1/storage/tabs/a"))
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .body(r#"{"payload":"captured"}"#)
    };
    assert_eq!(send(put(&s.base)).await.status, 200);
    for uid in 100..400 {
        let url = url::Url::parse(&format!("{PUBLIC}/1.5/{uid}/info/collections")).unwrap();
        let other = syncstead_client::hawk_authorization(&s.creds(uid), "GET", &url).unwrap();
        let r = send(
            s.http
                .get(format!("{}/1.5/{uid}/info/collections", s.base))
                .header("authorization", other),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(send(put(&s.base)).await.status, 401, "replayed after a flood");
    if on_postgres() {
        let url = s.postgres.as_ref().unwrap().url.clone();
        let second = TestServer::start_with(|c| {
            c.public_url = Some(PUBLIC.into());
            c.database_url = Some(url);
        })
        .await;
        assert_eq!(send(put(&second.base)).await.status, 401, "replayed at another process");
    }
}

/// Sets or clears a file's inode flag (`+i`, `-i`); false where chattr cannot (not root,
/// or a file system without the flags).
fn chattr(flag: &str, path: &std::path::Path) -> bool {
    std::process::Command::new("chattr")
        .arg(flag)
        .arg(path)
        .status()
        .is_ok_and(|st| st.success())
}

/// An immutable `-shm` file (SQLite would die of SIGBUS at its first use of the shared
/// memory): a server does not start on it, and says why.
#[tokio::test]
async fn sqlite_immutable_shm_file_is_refused_at_start() {
    if on_postgres() {
        eprintln!("SKIPPED: about SQLite's files");
        return;
    }
    // A data directory no connection of this process maps (a live one would get SIGBUS).
    let dir = tempfile::tempdir().unwrap();
    let shm = dir.path().join("syncstead.db-shm");
    std::fs::write(&shm, vec![0u8; 32768]).unwrap();
    let chattr = |flag: &str| chattr(flag, &shm);
    if !chattr("+i") {
        eprintln!("SKIPPED: chattr +i is not available here (needs root and a file system that has it)");
        return;
    }
    let settings = || {
        syncstead_server::Settings::resolve(syncstead_server::ConfigLayer {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            data_dir: Some(dir.path().to_path_buf()),
            master_secret: Some(SECRET.into()),
            ..Default::default()
        })
        .unwrap()
    };
    let started = syncstead_server::start(settings()).await;
    assert!(chattr("-i"), "the flag must come off again");
    let Err(e) = started else {
        panic!("started on an immutable -shm file");
    };
    assert!(e.to_string().contains("cannot be opened for writing"), "{e}");
    assert!(
        syncstead_server::start(settings()).await.is_ok(),
        "and starts once it is writable"
    );
}

/// Finding 10: the `-shm` file made immutable under a running server. SQLite's next write
/// to its mapping of that file would end the process with SIGBUS (the `sync` makes the
/// kernel write the mapped pages back, so that the next write faults); instead every
/// request is refused with 503 + Retry-After, the heartbeat turns red, and all is served
/// again, data intact, once the flag is off.
#[tokio::test]
async fn sqlite_immutable_shm_file_under_a_running_server_is_a_503_not_a_crash() {
    if on_postgres() {
        eprintln!("SKIPPED: about SQLite's files");
        return;
    }
    let s = TestServer::start().await;
    let u = s.client(1);
    let shm = s.dir.path().join("syncstead.db-shm");
    let chattr = |flag: &str| chattr(flag, &shm);
    let beat = || async { send(s.http.get(format!("{}/__heartbeat__", s.base))).await.status };
    assert_eq!(
        u.put("/storage/tabs/a", serde_json::json!({"payload": "x"}))
            .await
            .status,
        200
    );
    if !chattr("+i") {
        eprintln!("SKIPPED: chattr +i is not available here (needs root and a file system that has it)");
        return;
    }
    struct Unflag<'a>(&'a dyn Fn(&str) -> bool);
    impl Drop for Unflag<'_> {
        fn drop(&mut self) {
            (self.0)("-i");
        }
    }
    let unflag = Unflag(&chattr);
    let _ = std::process::Command::new("sync").status();
    for i in 0..5 {
        let w = u
            .put(&format!("/storage/tabs/b{i}"), serde_json::json!({"payload": "y"}))
            .await;
        w.assert_error(503, 0);
        assert!(w.header("retry-after").is_some());
        assert_eq!(u.get("/storage/tabs/a").await.status, 503);
        assert_eq!(u.get("/info/collections").await.status, 503);
        tokio::time::sleep(Duration::from_millis(300)).await; // the checkpoint thread runs too
    }
    assert_eq!(beat().await, 503);
    drop(unflag);
    assert_eq!(beat().await, 200);
    assert_eq!(
        u.put("/storage/tabs/c", serde_json::json!({"payload": "z"}))
            .await
            .status,
        200
    );
    let r = u.get("/storage/tabs?full=1").await;
    assert_eq!(r.status, 200);
    let ids: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
}

/// A full disk: the heartbeat says so, and writes are answered 200 (when SQLite still has
/// room in its log) or 503 + Retry-After, never 500; all is well again once there is room.
#[tokio::test]
async fn sqlite_s15_180_a_full_disk_turns_the_heartbeat_red() {
    if on_postgres() {
        eprintln!("SKIPPED: about SQLite's disk");
        return;
    }
    let mount = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(mount.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED: cannot mount a small file system here (needs root)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount.path().to_path_buf());
    let data = mount.path().join("data");
    let s = TestServer::start_with(|c| c.data_dir = Some(data.clone())).await;
    let u = s.client(1);
    let beat = || async { send(s.http.get(format!("{}/__heartbeat__", s.base))).await.status };
    assert_eq!(
        u.put("/storage/tabs/a", serde_json::json!({"payload": "x"}))
            .await
            .status,
        200
    );
    assert_eq!(beat().await, 200);
    // Fill the disk.
    let filler = mount.path().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 1 << 20];
        while f.write_all(&block).is_ok() {}
        let _ = f.flush();
    }
    assert_eq!(beat().await, 503, "the heartbeat sees the full disk");
    for i in 0..20 {
        let r = u
            .put(
                &format!("/storage/tabs/f{i}"),
                serde_json::json!({"payload": "y".repeat(100_000)}),
            )
            .await;
        match r.status.as_u16() {
            200 => {}
            503 => assert!(r.header("retry-after").is_some()),
            other => panic!("a write on a full disk answered {other}: {}", r.text),
        }
    }
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(beat().await, 200);
    assert_eq!(
        u.put("/storage/tabs/b", serde_json::json!({"payload": "z"}))
            .await
            .status,
        200
    );
}

/// Listening on every interface without public_url would register http://0.0.0.0:… as
/// this server's node, which the token server then sends Firefox to: refused, with what
/// to set.
#[tokio::test]
async fn every_interface_needs_a_public_url() {
    let dir = tempfile::tempdir().unwrap();
    let layer = |public_url: Option<&str>| syncstead_server::ConfigLayer {
        listen: Some("0.0.0.0:0".parse().unwrap()),
        data_dir: Some(dir.path().to_path_buf()),
        master_secret: Some(SECRET.into()),
        public_url: public_url.map(str::to_string),
        ..Default::default()
    };
    let Err(e) = syncstead_server::start(syncstead_server::Settings::resolve(layer(None)).unwrap()).await else {
        panic!("started on 0.0.0.0 without public_url");
    };
    assert!(e.to_string().contains("needs public_url"), "{e}");
    let ok =
        syncstead_server::start(syncstead_server::Settings::resolve(layer(Some("http://192.0.2.1:8000"))).unwrap())
            .await;
    assert!(ok.is_ok());
}

/// Reads a whole listing as it streams in; its record count.
async fn drain(r: reqwest::Response) -> usize {
    let body = r.bytes().await.unwrap();
    serde_json::from_slice::<Vec<serde_json::Value>>(&body).unwrap().len()
}

/// A long listing (S15-081 streams it) holds no database connection while its client does
/// not read: even with a single connection (1 SQLite reader, a PostgreSQL pool of 1),
/// other long listings and short reads go on beside a stalled one, and the stalled one
/// still comes out whole once its client reads again. (A build that kept the connection
/// from chunk to chunk, without giving it back to a client that stopped reading, failed
/// this.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_download_does_not_keep_a_database_connection() {
    let s = TestServer::start_with(|c| {
        c.sqlite_readers = Some(1);
        c.postgres_pool_size = Some(1);
    })
    .await;
    let (stalling, others) = (s.client(1), s.client(2));
    // 20 MB: more than the socket buffers between the server and the client hold.
    fill_history(&stalling, 10_000).await;
    fill_history(&others, 1_000).await;
    let stalled = stalling
        .req(reqwest::Method::GET, "/storage/history?full=1&newer=0")
        .send()
        .await
        .unwrap();
    assert_eq!(stalled.status(), 200);
    assert_eq!(stalled.headers()["x-weave-records"], "10000");
    // Until the socket buffers are full and the listing waits for its client, with nobody
    // else waiting for its connection.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let meanwhile = async {
        for _ in 0..3 {
            let r = others
                .req(reqwest::Method::GET, "/storage/history?full=1&newer=0")
                .send()
                .await
                .unwrap();
            assert_eq!(drain(r).await, 1_000);
            assert_eq!(others.get("/info/collections").await.status, 200);
        }
    };
    tokio::time::timeout(Duration::from_secs(20), meanwhile)
        .await
        .expect("other listings went on while one client did not read");
    assert_eq!(drain(stalled).await, 10_000);
}
