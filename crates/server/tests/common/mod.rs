//! Test harness: the real server on an ephemeral port, a temporary SQLite database, and a
//! Hawk-signing client.
// Test support: a failure here is a failed test, so unwrap is the right answer.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

pub mod accounts;
pub mod browser;

use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::{Method, StatusCode};
use serde_json::Value;
use syncstead_client::{Credentials, StorageClient};
use syncstead_proto::token::{random_salt, TokenPayload, TokenSigner};
use syncstead_server::{ConfigLayer, RunningServer, Settings};

pub const SECRET: &str = "test-master-secret";

pub struct TestServer {
    pub base: String,
    pub http: reqwest::Client,
    pub running: Option<RunningServer>,
    pub dir: tempfile::TempDir,
    /// The PostgreSQL schema of this test when the suite runs on PostgreSQL.
    pub postgres: Option<syncstead_store::testing::ScratchSchema>,
}

/// Whether this run of the suite uses PostgreSQL (`SYNCSTEAD_TEST_BACKEND=postgres`).
pub fn on_postgres() -> bool {
    syncstead_store::testing::backend_is_postgres()
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut ConfigLayer)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut layer = ConfigLayer {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            data_dir: Some(dir.path().to_path_buf()),
            master_secret: Some(SECRET.into()),
            // Cheap Argon2 keeps debug-build tests fast; the cost does not change behaviour.
            argon2_memory_kib: Some(64),
            argon2_iterations: Some(1),
            ..Default::default()
        };
        let postgres = if on_postgres() {
            let scratch = syncstead_store::testing::ScratchSchema::create()
                .await
                .expect("SYNCSTEAD_TEST_BACKEND=postgres needs SYNCSTEAD_TEST_POSTGRES_URL");
            layer.database_url = Some(scratch.url.clone());
            layer.postgres_pool_size = Some(4);
            Some(scratch)
        } else {
            None
        };
        configure(&mut layer);
        let settings = Settings::resolve(layer).expect("settings");
        let running = syncstead_server::start(settings).await.expect("server starts");
        let base = format!("http://{}", running.addr);
        TestServer {
            base,
            http: reqwest::Client::new(),
            running: Some(running),
            dir,
            postgres,
        }
    }

    pub fn creds(&self, uid: u64) -> Credentials {
        self.creds_expiring(uid, now() as f64 + 3600.0)
    }

    pub fn creds_expiring(&self, uid: u64, expires: f64) -> Credentials {
        TokenSigner::new(SECRET).mint(&TokenPayload {
            node: self.base.clone(),
            fxa_kid: None,
            fxa_uid: Some("fxa".into()),
            hashed_device_id: None,
            hashed_fxa_uid: None,
            expires,
            uid,
            tokenserver_origin: Some("rust".into()),
            salt: random_salt(),
        })
    }

    pub fn client(&self, uid: u64) -> User {
        let creds = self.creds(uid);
        User {
            storage: StorageClient::new(self.http.clone(), &format!("{}/1.5/{uid}", self.base), creds).unwrap(),
            uid,
        }
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.expect("clean shutdown");
        }
    }
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// One user's signed client with shorthand for the common calls.
pub struct User {
    pub storage: StorageClient,
    pub uid: u64,
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap().to_string())
    }
    pub fn last_modified(&self) -> String {
        self.header("x-last-modified").expect("X-Last-Modified")
    }
    pub fn ts(&self, name: &str) -> f64 {
        self.header(name)
            .unwrap_or_else(|| panic!("missing {name}"))
            .parse()
            .unwrap()
    }
    /// An error response with a bare JSON integer body (S15-033).
    pub fn assert_error(&self, status: u16, code: i64) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text);
        assert_eq!(self.header("content-type").as_deref(), Some("application/json"));
        assert_eq!(self.json(), Value::from(code), "error body");
    }
}

pub async fn send(rb: reqwest::RequestBuilder) -> Resp {
    let r = rb.send().await.expect("request sent");
    let status = r.status();
    let headers = r.headers().clone();
    let text = r.text().await.expect("body");
    Resp { status, headers, text }
}

impl User {
    pub fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.storage.request(method, path).unwrap()
    }
    pub async fn get(&self, path: &str) -> Resp {
        send(self.req(Method::GET, path)).await
    }
    pub async fn delete(&self, path: &str) -> Resp {
        send(self.req(Method::DELETE, path)).await
    }
    pub async fn put(&self, path: &str, body: Value) -> Resp {
        send(
            self.req(Method::PUT, path)
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }
    pub async fn post(&self, path: &str, body: Value) -> Resp {
        send(
            self.req(Method::POST, path)
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }
    pub async fn with(
        &self,
        method: Method,
        path: &str,
        f: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Resp {
        send(f(self.req(method, path))).await
    }
}

/// Sends a signed request with a chunked body (no Content-Length) over a raw socket and
/// returns the raw response head and body.
pub async fn raw_chunked(s: &TestServer, u: &User, method: &str, path: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = u.storage.url(path).unwrap();
    let auth = syncstead_client::hawk_authorization(&u.storage.creds, method, &url).unwrap();
    let addr = s.base.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        url.path()
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.as_bytes().chunks(64 * 1024) {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(chunk);
        frame.extend_from_slice(b"\r\n");
        if sock.write_all(&frame).await.is_err() {
            break;
        }
    }
    let _ = sock.write_all(b"0\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = sock.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Compares a two-decimal timestamp header with a JSON number (which may have lost a
/// trailing zero when parsed).
/// Posts `n` records with 2,000-byte payloads to a user's history, 100 a request.
pub async fn fill_history(u: &User, n: usize) {
    let payload = "p".repeat(2000);
    for chunk in 0..n.div_ceil(100) {
        let items: Vec<Value> = (0..100.min(n - chunk * 100))
            .map(|i| serde_json::json!({"id": format!("r{chunk:04}-{i:02}"), "payload": payload}))
            .collect();
        assert_eq!(u.post("/storage/history", Value::Array(items)).await.status, 200);
    }
}

pub fn assert_ts(header: &str, v: &Value) {
    let h: f64 = header.parse().unwrap_or_else(|_| panic!("bad timestamp {header:?}"));
    let j = v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    assert!((h - j).abs() < 0.001, "{header} != {v}");
    assert!(
        header.split_once('.').is_some_and(|(_, d)| d.len() == 2),
        "two decimals: {header}"
    );
}

/// An HTTP client whose connections come from `ip` (any of 127/8 on Linux): the server
/// sees another client address, one that is not a trusted proxy.
pub fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .unwrap()
}

/// `Authorization: Basic` for a Weave user.
pub fn basic_auth(user: &str, password: &str) -> String {
    use data_encoding::BASE64;
    format!("Basic {}", BASE64.encode(format!("{user}:{password}").as_bytes()))
}

/// Creates a Weave 1.1 account through the User API; returns its username.
pub async fn weave_account(s: &TestServer, email: &str, password: &str) -> String {
    let user = syncstead_proto::username::username_for_account(email);
    let r = send(
        s.http
            .put(format!("{}/user/1.0/{user}", s.base))
            .body(serde_json::json!({"password": password, "email": email}).to_string()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    user
}

/// The resident set size of this process, in bytes.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// The peak of this process's RSS while it runs, sampled every 2 ms on a thread of its own.
pub struct PeakRss {
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl PeakRss {
    pub fn start() -> Self {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let peak = std::sync::Arc::new(AtomicU64::new(rss_bytes()));
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let (p, d) = (peak.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            while !d.load(Ordering::Relaxed) {
                p.fetch_max(rss_bytes(), Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        });
        PeakRss { peak, done, thread }
    }

    pub fn stop(self) -> u64 {
        use std::sync::atomic::Ordering;
        self.done.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        self.peak.load(Ordering::Relaxed)
    }
}

/// A minimal SMTP server that keeps every message it receives.
pub async fn fake_smtp() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let inbox = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = inbox.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else { return };
            let inbox = kept.clone();
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut lines = BufReader::new(r).lines();
                w.write_all(b"220 fake ESMTP\r\n").await.unwrap();
                while let Ok(Some(line)) = lines.next_line().await {
                    let upper = line.to_ascii_uppercase();
                    if upper.starts_with("DATA") {
                        w.write_all(b"354 go ahead\r\n").await.unwrap();
                        let mut message = String::new();
                        while let Ok(Some(l)) = lines.next_line().await {
                            if l == "." {
                                break;
                            }
                            message.push_str(&l);
                            message.push('\n');
                        }
                        inbox.lock().unwrap().push(message);
                        w.write_all(b"250 queued\r\n").await.unwrap();
                    } else if upper.starts_with("QUIT") {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        w.write_all(b"250 ok\r\n").await.unwrap();
                    }
                }
            });
        }
    });
    (port, inbox)
}
