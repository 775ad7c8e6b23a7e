//! `syncstead bench`: simulated Firefox clients against any storage 1.5 server that
//! accepts tokenlib/Hawk credentials derived from a master secret.
//!
//! Two modes. `sync`: each client owns a user with two devices that take turns; the first
//! sync uploads meta/global, crypto/keys, a clients record and batches of bookmarks and
//! history; later syncs poll info/collections, page through what the other device wrote,
//! upload small batches and sometimes delete. Every read is checked against what was
//! written, and at the end everything is read back. `hot`: many clients poll
//! info/collections with X-If-Modified-Since (info/collections is the request Firefox sends
//! most, though Firefox and application-services send it without the header).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use syncstead_client::StorageClient;
use syncstead_proto::token::{random_salt, TokenPayload, TokenSigner};

use crate::error::{CliError, CliResult};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Base URL of the server (loopback only).
    #[arg(long, env = "SYNC_SERVER_URL", default_value = "http://127.0.0.1:8000")]
    url: String,
    /// The server's master secret.
    #[arg(long, env = "SYNC_MASTER_SECRET", hide_env_values = true)]
    secret: String,
    /// `sync` (full client simulation), `hot` (info/collections polling), `light` (every
    /// client writes a small record and polls), `stall` (as `light`, but client 0 writes
    /// 1,000-record batches and deletes them again: how far one heavy user stalls others),
    /// or `populate` (fill the server with --records Firefox-shaped records, then stop).
    #[arg(long, default_value = "sync")]
    mode: String,
    /// With `--mode populate`: how many records to store, over users of about 2,000
    /// records each (history-heavy; one user in a hundred with a 20,000-bookmark tree; one
    /// record in twenty expiring within the hour), their uids spread below --uid-base.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Simulated clients running at once. A list (`8,16,32,64`) runs one load per level,
    /// each with users of its own, and ends with a table of the levels: where requests/s
    /// stops rising is the server's limit, provided the tool's own CPU is not the limit.
    #[arg(long, short = 'c', default_value = "8", value_delimiter = ',')]
    clients: Vec<usize>,
    /// Seconds of load (at most 1800).
    #[arg(long, short = 'd', default_value_t = 60)]
    duration: u64,
    /// Records of each of bookmarks and history uploaded by a first sync (low..high).
    #[arg(long, default_value_t = 500)]
    first_min: usize,
    #[arg(long, default_value_t = 2500)]
    first_max: usize,
    /// Payload sizes in bytes (low..high).
    #[arg(long, default_value_t = 512)]
    payload_min: usize,
    #[arg(long, default_value_t = 2048)]
    payload_max: usize,
    /// Records per GET page when downloading.
    #[arg(long, default_value_t = 1000)]
    page: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Process id of the server, to report its CPU time and peak RSS (Linux).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Also count the CPU time of every process of this name (Linux), e.g. `postgres`
    /// for a PostgreSQL on the same machine: its work per request is the server's too.
    #[arg(long, value_name = "NAME")]
    db_comm: Option<String>,
    /// Users get uids from here upwards.
    #[arg(long, default_value_t = 1_000_000_000)]
    uid_base: u64,
    /// Sync mode on a schedule (open loop): this many incremental syncs a second over all
    /// clients, each client's every clients/rate seconds. The measured window starts once
    /// every first sync is done. A client whose sync overran its slot starts the next at
    /// once, and the report counts those as late: while none are late, every server
    /// gets the same load. Without it each client syncs again as soon as it is done
    /// (closed loop), so a faster server gets more load, and its queues grow with it.
    #[arg(long, value_name = "SYNCS_PER_SECOND")]
    rate: Option<f64>,
}

/// Latencies per request type, in microseconds.
#[derive(Default)]
struct Stats {
    latencies: BTreeMap<&'static str, Vec<u32>>,
    /// The same, of the answers that succeeded (2xx, 304): a server that refuses a
    /// request quickly (503 and Retry-After) looks fast in `latencies` alone.
    succeeded: BTreeMap<&'static str, Vec<u32>>,
    errors: BTreeMap<String, u64>,
    verify_errors: u64,
    records_up: u64,
    /// Incremental syncs in the measured window, and those that started after their slot
    /// (with `--rate`).
    syncs: u64,
    late: u64,
    /// Requests made within the measured window, once it has ended (sync mode's final
    /// read-back comes after it).
    window: Option<usize>,
}

impl Stats {
    fn count(&self) -> usize {
        self.latencies.values().map(Vec::len).sum()
    }

    /// The measured window starts now: what came before counts only if it went wrong.
    fn window_started(&mut self) {
        self.latencies.clear();
        self.succeeded.clear();
        self.records_up = 0;
    }

    fn window_ended(&mut self) {
        self.window = Some(self.count());
    }

    fn measured(&self) -> usize {
        self.window.unwrap_or_else(|| self.count())
    }

    fn merge(&mut self, other: Stats) {
        self.window = Some(self.measured() + other.measured());
        for (k, mut v) in other.latencies {
            self.latencies.entry(k).or_default().append(&mut v);
        }
        for (k, mut v) in other.succeeded {
            self.succeeded.entry(k).or_default().append(&mut v);
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.verify_errors += other.verify_errors;
        self.records_up += other.records_up;
        self.syncs += other.syncs;
        self.late += other.late;
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

struct Client {
    storage: StorageClient,
    stats: Stats,
    rng: StdRng,
}

impl Client {
    async fn call(
        &mut self,
        kind: &'static str,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Option<String>,
    ) -> Option<(StatusCode, reqwest::header::HeaderMap, String)> {
        let mut rb = match self.storage.request(method, path) {
            Ok(rb) => rb,
            Err(e) => {
                *self.stats.errors.entry(format!("{kind}: {e}")).or_default() += 1;
                return None;
            }
        };
        for (k, v) in headers {
            rb = rb.header(*k, v);
        }
        if let Some(b) = body {
            rb = rb.header("content-type", "application/json").body(b);
        }
        let start = Instant::now();
        let result = match rb.send().await {
            Ok(r) => {
                let status = r.status();
                let headers = r.headers().clone();
                match r.text().await {
                    Ok(text) => Some((status, headers, text)),
                    Err(e) => {
                        *self.stats.errors.entry(format!("{kind}: {e}")).or_default() += 1;
                        None
                    }
                }
            }
            Err(e) => {
                *self.stats.errors.entry(format!("{kind}: {e}")).or_default() += 1;
                None
            }
        };
        let micros = start.elapsed().as_micros().min(u32::MAX as u128) as u32;
        self.stats.latencies.entry(kind).or_default().push(micros);
        if let Some((status, _, text)) = &result {
            if status.is_success() || *status == StatusCode::NOT_MODIFIED {
                self.stats.succeeded.entry(kind).or_default().push(micros);
            } else {
                *self
                    .stats
                    .errors
                    .entry(format!(
                        "{kind}: HTTP {status} {}",
                        text.chars().take(40).collect::<String>()
                    ))
                    .or_default() += 1;
                return None;
            }
        }
        result
    }

    /// A record payload shaped as Firefox's (ciphertext, IV, HMAC). Random bytes mapped
    /// onto the alphabet: drawing each character on its own made payloads a large part
    /// of the tool's CPU.
    fn payload(&mut self, min: usize, max: usize) -> String {
        let len = self.rng.gen_range(min..=max).saturating_sub(110).max(16);
        let ct = self.chars(len, BASE64);
        let iv = self.chars(22, BASE64);
        let hmac = self.chars(64, b"0123456789abcdef");
        format!(r#"{{"ciphertext":"{ct}","IV":"{iv}==","hmac":"{hmac}"}}"#)
    }

    fn guid(&mut self) -> String {
        self.chars(12, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    }

    /// `n` characters of `alphabet`, whose length is a power of two.
    fn chars(&mut self, n: usize, alphabet: &[u8]) -> String {
        let mask = alphabet.len() - 1;
        let mut bytes = vec![0u8; n];
        self.rng.fill(&mut bytes[..]);
        bytes.iter().map(|b| alphabet[*b as usize & mask] as char).collect()
    }
}

const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// A record as read back, borrowed from the response: parsing whole pages into
/// `serde_json::Value`s was the other large part of the tool's CPU.
#[derive(serde::Deserialize)]
struct Item<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    payload: Option<std::borrow::Cow<'a, str>>,
}

fn parse_items(text: &str) -> Option<Vec<Item<'_>>> {
    serde_json::from_str(text).ok()
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn credentials(secret: &str, url: &str, uid: u64) -> syncstead_client::Credentials {
    TokenSigner::new(secret).mint(&TokenPayload {
        node: url.to_string(),
        fxa_kid: None,
        fxa_uid: None,
        hashed_device_id: None,
        hashed_fxa_uid: None,
        expires: now_secs() + 7200.0,
        uid,
        tokenserver_origin: Some("rust".into()),
        salt: random_salt(),
    })
}

/// What the simulated user's server-side data should be: collection → id → payload.
type Expected = HashMap<&'static str, HashMap<String, String>>;

struct SyncUser {
    client: Client,
    expected: Expected,
    /// Per device: the X-Last-Modified of its last info/collections, and per collection the
    /// last time it downloaded.
    devices: [Device; 2],
    turn: usize,
}

#[derive(Default, Clone)]
struct Device {
    info_seen: Option<String>,
    synced: HashMap<String, String>,
}

fn parse_json(text: &str) -> Option<Value> {
    serde_json::from_str(text).ok()
}

impl SyncUser {
    async fn upload(&mut self, coll: &'static str, records: Vec<(String, String)>, per_post: usize, args: &BenchArgs) {
        let chunks: Vec<Vec<(String, String)>> = records.chunks(per_post).map(|c| c.to_vec()).collect();
        let mut batch: Option<String> = None;
        let n = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let last = i + 1 == n;
            let body = Value::Array(
                chunk
                    .iter()
                    .map(|(id, p)| json!({"id": id, "payload": p, "sortindex": 100}))
                    .collect(),
            );
            let q = match (&batch, last) {
                (None, true) => "batch=true&commit=true".to_string(),
                (None, false) => "batch=true".to_string(),
                (Some(b), false) => format!("batch={b}"),
                (Some(b), true) => format!("batch={b}&commit=true"),
            };
            let kind = if last {
                "batch commit"
            } else if chunk.len() >= 100 {
                "batch append 100"
            } else {
                "batch append"
            };
            let Some((_, _, text)) = self
                .client
                .call(
                    kind,
                    Method::POST,
                    &format!("/storage/{coll}?{q}"),
                    &[],
                    Some(body.to_string()),
                )
                .await
            else {
                return;
            };
            let Some(v) = parse_json(&text) else {
                self.client.stats.verify_errors += 1;
                return;
            };
            if v["failed"].as_object().is_some_and(|f| !f.is_empty()) {
                self.client.stats.verify_errors += 1;
            }
            if !last {
                batch = v["batch"].as_str().map(str::to_string);
            } else {
                let exp = self.expected.entry(coll).or_default();
                for (id, p) in &records {
                    exp.insert(id.clone(), p.clone());
                }
                self.client.stats.records_up += records.len() as u64;
            }
        }
        let _ = args;
    }

    async fn first_sync(&mut self, args: &BenchArgs) {
        self.client
            .call("info/collections", Method::GET, "/info/collections", &[], None)
            .await;
        self.client
            .call("info/configuration", Method::GET, "/info/configuration", &[], None)
            .await;
        let meta = json!({"syncID": self.client.guid(), "storageVersion": 5, "engines": {"bookmarks": {"version": 2, "syncID": self.client.guid()}, "history": {"version": 1, "syncID": self.client.guid()}}, "declined": []}).to_string();
        self.put("meta", "global", meta).await;
        let keys = self.client.payload(200, 300);
        self.put("crypto", "keys", keys).await;
        let client_id = self.client.guid();
        let clients = self.client.payload(300, 500);
        self.put("clients", &client_id, clients).await;
        for coll in ["bookmarks", "history"] {
            let n = self
                .client
                .rng
                .gen_range(args.first_min..=args.first_max.max(args.first_min));
            let records: Vec<(String, String)> = (0..n)
                .map(|_| {
                    (
                        self.client.guid(),
                        self.client.payload(args.payload_min, args.payload_max),
                    )
                })
                .collect();
            self.upload(coll, records, 100, args).await;
        }
    }

    async fn put(&mut self, coll: &'static str, id: &str, payload: String) {
        let body = json!({"payload": payload}).to_string();
        if self
            .client
            .call(
                "put item",
                Method::PUT,
                &format!("/storage/{coll}/{id}"),
                &[],
                Some(body),
            )
            .await
            .is_some()
        {
            self.expected.entry(coll).or_default().insert(id.to_string(), payload);
        }
    }

    /// Downloads what changed since this device last looked, checking every record.
    async fn download(&mut self, coll: &'static str, args: &BenchArgs) {
        let dev = self.turn;
        let since = self.devices[dev]
            .synced
            .get(coll)
            .cloned()
            .unwrap_or_else(|| "0".into());
        let mut offset: Option<String> = None;
        let mut guard: Option<String> = None;
        loop {
            let mut path = format!("/storage/{coll}?full=1&newer={since}&limit={}", args.page);
            if let Some(o) = &offset {
                path.push_str(&format!("&offset={o}"));
            }
            let headers: Vec<(&str, String)> = guard.iter().map(|g| ("x-if-unmodified-since", g.clone())).collect();
            let Some((status, h, text)) = self.client.call("get newer", Method::GET, &path, &headers, None).await
            else {
                return;
            };
            if status == StatusCode::PRECONDITION_FAILED {
                return;
            }
            let Some(items) = parse_items(&text) else {
                self.client.stats.verify_errors += 1;
                return;
            };
            let exp = self.expected.get(coll);
            for item in &items {
                let ok = exp
                    .and_then(|e| e.get(item.id.as_ref()))
                    .is_some_and(|p| item.payload.as_deref() == Some(p.as_str()));
                if !ok {
                    self.client.stats.verify_errors += 1;
                }
            }
            let lm = h
                .get("x-last-modified")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if guard.is_none() {
                guard = lm.clone();
            }
            offset = h
                .get("x-weave-next-offset")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if offset.is_none() {
                if let Some(g) = guard {
                    self.devices[dev].synced.insert(coll.to_string(), g);
                }
                return;
            }
        }
    }

    async fn incremental_sync(&mut self, args: &BenchArgs) {
        let dev = self.turn;
        let headers: Vec<(&str, String)> = self.devices[dev]
            .info_seen
            .iter()
            .map(|t| ("x-if-modified-since", t.clone()))
            .collect();
        let Some((status, h, text)) = self
            .client
            .call("info/collections", Method::GET, "/info/collections", &headers, None)
            .await
        else {
            return;
        };
        if status == StatusCode::OK {
            let Some(Value::Object(colls)) = parse_json(&text) else {
                self.client.stats.verify_errors += 1;
                return;
            };
            for coll in ["bookmarks", "history", "tabs"] {
                let changed = colls.get(coll).map(|v| v.to_string());
                let seen = self.devices[dev].synced.get(coll).cloned();
                if let Some(changed) = changed {
                    if seen
                        .as_deref()
                        .is_none_or(|s| s.parse::<f64>().unwrap_or(0.0) < changed.parse::<f64>().unwrap_or(0.0))
                    {
                        self.download(coll, args).await;
                    }
                }
            }
            self.devices[dev].info_seen = h
                .get("x-last-modified")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
        }
        let visits = self.client.rng.gen_range(1..=20);
        let records: Vec<(String, String)> = (0..visits)
            .map(|_| {
                (
                    self.client.guid(),
                    self.client.payload(args.payload_min, args.payload_max),
                )
            })
            .collect();
        self.upload("history", records, 100, args).await;
        if self.client.rng.gen_bool(0.2) {
            let mut ids: Vec<String> = self
                .expected
                .get("bookmarks")
                .map(|m| m.keys().take(150).cloned().collect())
                .unwrap_or_default();
            ids.truncate(150);
            let records: Vec<(String, String)> = ids
                .into_iter()
                .map(|id| (id, self.client.payload(args.payload_min, args.payload_max)))
                .collect();
            self.upload("bookmarks", records, 100, args).await;
        }
        if self.client.rng.gen_bool(0.5) {
            let id = format!("device{dev}");
            let p = self.client.payload(args.payload_min, args.payload_max);
            self.put("tabs", &id, p).await;
        }
        if self.client.rng.gen_bool(0.1) {
            let ids: Vec<String> = self
                .expected
                .get("history")
                .map(|m| m.keys().take(10).cloned().collect())
                .unwrap_or_default();
            if !ids.is_empty() {
                let path = format!("/storage/history?ids={}", ids.join(","));
                if self
                    .client
                    .call("delete ids", Method::DELETE, &path, &[], None)
                    .await
                    .is_some()
                {
                    if let Some(m) = self.expected.get_mut("history") {
                        for id in &ids {
                            m.remove(id);
                        }
                    }
                }
            }
        }
        self.turn = 1 - self.turn;
    }

    /// Reads every collection back in full, page by page, and compares it with what was written.
    async fn verify_all(&mut self) {
        let expected = std::mem::take(&mut self.expected);
        for (coll, records) in &expected {
            let mut got: HashMap<String, String> = HashMap::new();
            let mut offset: Option<String> = None;
            loop {
                let mut path = format!("/storage/{coll}?full=1&limit=1000");
                if let Some(o) = &offset {
                    path.push_str(&format!("&offset={o}"));
                }
                let Some((_, h, text)) = self.client.call("final read", Method::GET, &path, &[], None).await else {
                    self.client.stats.verify_errors += 1;
                    break;
                };
                let Some(items) = parse_items(&text) else {
                    self.client.stats.verify_errors += 1;
                    break;
                };
                for i in items {
                    if let Some(p) = i.payload {
                        got.insert(i.id.into_owned(), p.into_owned());
                    }
                }
                offset = h
                    .get("x-weave-next-offset")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                if offset.is_none() {
                    break;
                }
            }
            if got.len() != records.len() || records.iter().any(|(id, p)| got.get(id) != Some(p)) {
                self.client.stats.verify_errors += 1;
            }
        }
        self.client
            .call("delete storage", Method::DELETE, "/storage", &[], None)
            .await;
    }
}

/// A process's name and CPU seconds (user + system) from its `/proc/<pid>/stat`.
fn stat_cpu(stat: &str) -> Option<(&str, f64)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((name, ticks / 100.0))
}

fn proc_stats(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, cpu) = stat_cpu(&stat)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((cpu, hwm))
}

pub async fn run(args: BenchArgs) -> CliResult<()> {
    let url = reqwest::Url::parse(&args.url).map_err(|e| CliError::Refused(format!("--url: {e}")))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    if !loopback {
        return Err(CliError::Refused(
            "the load tool only targets loopback addresses".into(),
        ));
    }
    let duration = Duration::from_secs(args.duration.min(1800));
    let args = Arc::new(args);
    let http = reqwest::Client::builder().pool_max_idle_per_host(1024).build()?;
    if args.mode == "populate" {
        return populate(args, http).await;
    }
    if let Some(rate) = args.rate {
        if args.mode != "sync" || !(rate > 0.0 && rate.is_finite()) {
            return Err(CliError::Refused(
                "--rate takes a positive number of syncs a second, in sync mode".into(),
            ));
        }
    }
    let mut levels = Vec::new();
    let mut failed = false;
    for (n, &clients) in args.clients.iter().enumerate() {
        // Each level's users are new ones, so every level starts with first syncs.
        let uid_base = args.uid_base + n as u64 * 1_000_000;
        let level = run_level(args.clone(), http.clone(), clients, uid_base, duration).await?;
        failed |= level.failed;
        levels.push(level);
    }
    if levels.len() > 1 {
        summarize(&levels);
    }
    if failed {
        return Err(CliError::Refused("errors during the run (see above)".into()));
    }
    Ok(())
}

/// CPU seconds of every process named `comm` (e.g. all of a PostgreSQL's backends), by pid.
fn comm_cpu(comm: &str) -> HashMap<u32, f64> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let (name, cpu) = stat_cpu(&stat)?;
            (name == comm).then_some((pid, cpu))
        })
        .collect()
}

/// CPU seconds the processes alive at the end spent since `before` (a process that
/// started meanwhile counts whole; one that ended meanwhile is not seen, as with any
/// sampling of /proc).
fn comm_cpu_since(before: &HashMap<u32, f64>, after: &HashMap<u32, f64>) -> f64 {
    after
        .iter()
        .map(|(pid, t)| t - before.get(pid).copied().unwrap_or(0.0))
        .sum()
}

/// What one load level measured.
struct Level {
    clients: usize,
    requests: usize,
    secs: f64,
    server_cpu: Option<f64>,
    db_cpu: Option<f64>,
    tool_cpu: Option<f64>,
    peak_rss_kib: Option<u64>,
    /// p99 in ms of the request types the summary shows.
    p99: BTreeMap<&'static str, f64>,
    failed: bool,
}

async fn run_level(
    args: Arc<BenchArgs>,
    http: reqwest::Client,
    clients: usize,
    uid_base: u64,
    duration: Duration,
) -> CliResult<Level> {
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(Mutex::new(Stats::default()));
    // With --rate, the window opens when every client has done its first sync.
    let paced = args.rate.map(|rate| Duration::from_secs_f64(clients as f64 / rate));
    let first_syncs_done = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let mut tasks = Vec::new();
    for i in 0..clients {
        let (args, http, stop, total) = (args.clone(), http.clone(), stop.clone(), total.clone());
        let first_syncs_done = first_syncs_done.clone();
        tasks.push(tokio::spawn(async move {
            let uid = uid_base + i as u64;
            let base = args.url.trim_end_matches('/').to_string();
            let creds = credentials(&args.secret, &base, uid);
            let storage = StorageClient::new(http, &format!("{base}/1.5/{uid}"), creds).expect("valid URL");
            let client = Client {
                storage,
                stats: Stats::default(),
                rng: StdRng::seed_from_u64(args.seed.wrapping_mul(1000).wrapping_add(uid)),
            };
            let stats = if args.mode == "hot" {
                hot_loop(client, &stop).await
            } else if args.mode == "stall" && i == 0 {
                heavy_loop(client, &stop).await
            } else if args.mode == "light" || args.mode == "stall" {
                light_loop(client, &stop).await
            } else {
                let mut user = SyncUser {
                    client,
                    expected: Expected::new(),
                    devices: Default::default(),
                    turn: 0,
                };
                user.client
                    .call("delete storage", Method::DELETE, "/storage", &[], None)
                    .await;
                user.first_sync(&args).await;
                // With --rate, the next sync's slot; the clients' slots are spread evenly
                // over one period.
                let mut slot = None;
                if let Some(every) = paced {
                    first_syncs_done.wait().await;
                    user.client.stats.window_started();
                    slot = Some((Instant::now() + every.mul_f64(i as f64 / clients as f64), every));
                }
                while !stop.load(Ordering::Relaxed) {
                    if let Some((at, every)) = slot.as_mut() {
                        if !wait_for_slot(at, *every, &mut user.client.stats, &stop).await {
                            break;
                        }
                    }
                    user.incremental_sync(&args).await;
                    user.client.stats.syncs += 1;
                }
                // The final read-back is outside the measured window.
                user.client.stats.window_ended();
                user.verify_all().await;
                user.client.stats
            };
            total.lock().expect("stats lock").merge(stats);
        }));
    }
    if paced.is_some() {
        first_syncs_done.wait().await;
    }
    let before = args.server_pid.and_then(proc_stats);
    let db_before = args.db_comm.as_deref().map(comm_cpu);
    // The load tool's own CPU, reported beside the server's: on a small machine the two
    // share the cores, and a saturated tool measures itself, not the server.
    let own_before = proc_stats(std::process::id());
    let start = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    let after = args.server_pid.and_then(proc_stats);
    let db_after = args.db_comm.as_deref().map(comm_cpu);
    let own_after = proc_stats(std::process::id());
    for t in tasks {
        t.await?;
    }
    let mut stats = std::mem::take(&mut *total.lock().expect("stats lock"));
    let requests = stats.measured();
    let mut level = Level {
        clients,
        requests,
        secs,
        server_cpu: before.zip(after).map(|(b, a)| a.0 - b.0),
        db_cpu: db_before.zip(db_after).map(|(b, a)| comm_cpu_since(&b, &a)),
        tool_cpu: own_before.zip(own_after).map(|(b, a)| a.0 - b.0),
        peak_rss_kib: after.map(|a| a.1),
        p99: BTreeMap::new(),
        failed: stats.verify_errors > 0 || !stats.errors.is_empty(),
    };
    report(&args, &mut stats, &mut level);
    Ok(level)
}

/// Waits for a paced client's slot and moves it one period on; a slot already past counts
/// as late (the previous sync overran it). False when the run stopped meanwhile.
async fn wait_for_slot(slot: &mut Instant, every: Duration, stats: &mut Stats, stop: &AtomicBool) -> bool {
    let now = Instant::now();
    if *slot > now {
        tokio::time::sleep(*slot - now).await;
        if stop.load(Ordering::Relaxed) {
            return false;
        }
    } else if now - *slot > Duration::from_millis(1) {
        stats.late += 1;
    }
    *slot += every;
    true
}

/// The levels side by side. Saturation: the first level whose requests/s is less than
/// 5 % above the previous one's.
fn summarize(levels: &[Level]) {
    println!();
    println!("levels (requests/s over the measured window; CPU as % of one core)");
    let kinds: Vec<&'static str> = levels[0].p99.keys().copied().collect();
    print!(
        "{:>8} {:>9} {:>8} {:>8} {:>8} {:>11}",
        "clients", "req/s", "server", "database", "tool", "CPU ms/req"
    );
    for k in &kinds {
        print!(" {:>14}", format!("p99 {k}"));
    }
    println!();
    for l in levels {
        let pct = |c: Option<f64>| c.map_or("-".to_string(), |c| format!("{:.0} %", c * 100.0 / l.secs));
        let cpu = l.server_cpu.map(|s| s + l.db_cpu.unwrap_or(0.0));
        print!(
            "{:>8} {:>9.0} {:>8} {:>8} {:>8} {:>11}",
            l.clients,
            l.requests as f64 / l.secs,
            pct(l.server_cpu),
            pct(l.db_cpu),
            pct(l.tool_cpu),
            cpu.map_or("-".to_string(), |c| format!(
                "{:.3}",
                c * 1000.0 / l.requests.max(1) as f64
            )),
        );
        for k in &kinds {
            print!(" {:>14}", l.p99.get(k).map_or("-".to_string(), |v| format!("{v:.1}")));
        }
        println!();
    }
    let rate = |l: &Level| l.requests as f64 / l.secs;
    match levels.windows(2).find(|w| rate(&w[1]) < rate(&w[0]) * 1.05) {
        Some(w) => println!(
            "saturated: {} clients gave {:.0} req/s, less than 5 % above {} clients' {:.0}",
            w[1].clients,
            rate(&w[1]),
            w[0].clients,
            rate(&w[0])
        ),
        None => println!("not saturated: requests/s still rose at the last level"),
    }
}

/// Records of one populated user, by collection: history-heavy, as Firefox profiles are.
fn user_shape(rng: &mut StdRng, heavy: bool) -> Vec<(&'static str, usize)> {
    let total = rng.gen_range(500..=3500);
    let bookmarks = if heavy { 20_000 } else { total / 5 };
    vec![
        ("history", total * 7 / 10),
        ("bookmarks", bookmarks),
        ("forms", total / 20),
        ("passwords", total / 30),
        ("addresses", 2),
        ("prefs", 1),
        ("clients", 3),
        ("tabs", 3),
    ]
}

/// `--mode populate`: fills the server through the storage API (batched POSTs, as a first
/// sync uploads) with `--records` records over many users, so that load runs can start from
/// a database of realistic size. Users' uids lie below `--uid-base`, spread over ten times
/// their number, so the load's own users (from `--uid-base` up) are new ones.
async fn populate(args: Arc<BenchArgs>, http: reqwest::Client) -> CliResult<()> {
    let start = Instant::now();
    let own_before = proc_stats(std::process::id());
    let stored = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let next_user = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let users_estimate = (args.records / 2000).max(1);
    let mut tasks = Vec::new();
    for worker in 0..args.clients.first().copied().unwrap_or(1).max(1) {
        let (args, http) = (args.clone(), http.clone());
        let (stored, next_user, errors) = (stored.clone(), next_user.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(args.seed.wrapping_mul(7919).wrapping_add(worker as u64));
            let base = args.url.trim_end_matches('/').to_string();
            while stored.load(Ordering::Relaxed) < args.records {
                let n = next_user.fetch_add(1, Ordering::Relaxed);
                let spread = users_estimate * 10;
                let uid = args
                    .uid_base
                    .saturating_sub(1 + (n * 7 + rng.gen_range(0..7)) % spread.max(1));
                let creds = credentials(&args.secret, &base, uid);
                let storage = StorageClient::new(http.clone(), &format!("{base}/1.5/{uid}"), creds).expect("valid URL");
                let mut client = Client {
                    storage,
                    stats: Stats::default(),
                    rng: StdRng::seed_from_u64(rng.gen()),
                };
                let heavy = n % 100 == 37;
                for (coll, count) in user_shape(&mut client.rng, heavy) {
                    let mut left = count;
                    while left > 0 && stored.load(Ordering::Relaxed) < args.records {
                        let take = left.min(100);
                        left -= take;
                        let items: Vec<Value> = (0..take)
                            .map(|_| {
                                let expiring = client.rng.gen_range(0..20) == 0;
                                let mut item = json!({
                                    "id": client.guid(),
                                    "payload": client.payload(args.payload_min, args.payload_max),
                                    "sortindex": client.rng.gen_range(0..2000),
                                });
                                if expiring {
                                    item["ttl"] = client.rng.gen_range(60..3600).into();
                                }
                                item
                            })
                            .collect();
                        let body = Value::Array(items).to_string();
                        let ok = client
                            .call(
                                "populate post",
                                Method::POST,
                                &format!("/storage/{coll}"),
                                &[],
                                Some(body),
                            )
                            .await
                            .is_some();
                        if ok {
                            stored.fetch_add(take as u64, Ordering::Relaxed);
                        } else {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let n = stored.load(Ordering::Relaxed);
    println!(
        "populated {n} records for {} users in {secs:.1} s ({:.0} records/s)",
        next_user.load(Ordering::Relaxed),
        n as f64 / secs
    );
    if let (Some((c0, _)), Some((c1, _))) = (own_before, proc_stats(std::process::id())) {
        println!("load tool CPU: {:.1} s", c1 - c0);
    }
    match errors.load(Ordering::Relaxed) {
        0 => Ok(()),
        e => Err(CliError::Refused(format!("{e} uploads failed"))),
    }
}

async fn hot_loop(mut client: Client, stop: &AtomicBool) -> Stats {
    let body = json!({"payload": "x"}).to_string();
    let Some((_, h, _)) = client
        .call("put item", Method::PUT, "/storage/tabs/hot", &[], Some(body))
        .await
    else {
        return client.stats;
    };
    let seen = h
        .get("x-last-modified")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("0")
        .to_string();
    let headers = [("x-if-modified-since", seen)];
    while !stop.load(Ordering::Relaxed) {
        if let Some((status, _, _)) = client
            .call("info/collections 304", Method::GET, "/info/collections", &headers, None)
            .await
        {
            if status != StatusCode::NOT_MODIFIED {
                client.stats.verify_errors += 1;
            }
        }
    }
    client.stats
}

/// A light user: a small write and an info/collections poll, again and again.
async fn light_loop(mut client: Client, stop: &AtomicBool) -> Stats {
    let body = json!({"payload": "x".repeat(200)}).to_string();
    while !stop.load(Ordering::Relaxed) {
        client
            .call("light put", Method::PUT, "/storage/tabs/t", &[], Some(body.clone()))
            .await;
        client
            .call("light info/collections", Method::GET, "/info/collections", &[], None)
            .await;
    }
    client.stats
}

/// A heavy user: batches of 10 × 100 records of 2 KiB, and every third round all of it
/// deleted again.
async fn heavy_loop(mut client: Client, stop: &AtomicBool) -> Stats {
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let body = |part: u64| {
            let records: Vec<Value> = (0..100)
                .map(|i| json!({"id": format!("h{round}p{part}i{i}"), "payload": "y".repeat(2048)}))
                .collect();
            Value::Array(records).to_string()
        };
        let Some((_, _, text)) = client
            .call(
                "heavy batch start",
                Method::POST,
                "/storage/history?batch=true",
                &[],
                Some(body(0)),
            )
            .await
        else {
            continue;
        };
        let batch = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["batch"].as_str().map(str::to_string));
        let Some(batch) = batch else { continue };
        for part in 1..9 {
            client
                .call(
                    "heavy batch append",
                    Method::POST,
                    &format!("/storage/history?batch={batch}"),
                    &[],
                    Some(body(part)),
                )
                .await;
        }
        client
            .call(
                "heavy batch commit",
                Method::POST,
                &format!("/storage/history?batch={batch}&commit=true"),
                &[],
                Some(body(9)),
            )
            .await;
        client.stats.records_up += 1000;
        if round.is_multiple_of(3) {
            client
                .call("heavy delete storage", Method::DELETE, "/storage", &[], None)
                .await;
        }
    }
    client.stats
}

/// The request types the levels' summary compares.
const SUMMARY_KINDS: [&str; 4] = ["info/collections", "get newer", "batch commit", "put item"];

fn report(args: &BenchArgs, stats: &mut Stats, level: &mut Level) {
    let (requests, secs) = (level.requests, level.secs);
    println!("mode {}, {} clients, {:.1} s", args.mode, level.clients, secs);
    println!(
        "requests: {requests} ({:.0} req/s), records uploaded: {} ({:.0}/s)",
        requests as f64 / secs,
        stats.records_up,
        stats.records_up as f64 / secs
    );
    // "failed" counts answers that were errors (a 503 included) and requests that got
    // none; "p99 ok" is over the answers that succeeded only.
    println!(
        "{:<24} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "request", "count", "failed", "p50 ms", "p99 ms", "p99 ok", "max ms"
    );
    for (kind, lat) in stats.latencies.iter_mut() {
        lat.sort_unstable();
        let p99 = percentile(lat, 0.99);
        if SUMMARY_KINDS.contains(kind) {
            level.p99.insert(kind, p99);
        }
        let ok = stats.succeeded.entry(kind).or_default();
        ok.sort_unstable();
        println!(
            "{:<24} {:>9} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            kind,
            lat.len(),
            lat.len() - ok.len(),
            percentile(lat, 0.5),
            p99,
            percentile(ok, 0.99),
            percentile(lat, 1.0)
        );
    }
    if let (Some(cpu), Some(hwm)) = (level.server_cpu, level.peak_rss_kib) {
        println!(
            "server CPU: {cpu:.1} s over the run ({:.3} ms per request); peak RSS {:.1} MiB",
            cpu * 1000.0 / requests.max(1) as f64,
            hwm as f64 / 1024.0
        );
    }
    if let (Some(db), Some(name)) = (level.db_cpu, args.db_comm.as_deref()) {
        println!(
            "database CPU ({name} processes): {db:.1} s ({:.3} ms per request)",
            db * 1000.0 / requests.max(1) as f64
        );
        if let Some(cpu) = level.server_cpu {
            println!(
                "server + database CPU: {:.3} ms per request",
                (cpu + db) * 1000.0 / requests.max(1) as f64
            );
        }
    }
    if let Some(own) = level.tool_cpu {
        println!(
            "load tool CPU: {own:.1} s over the run ({:.0} % of one core)",
            own * 100.0 / secs
        );
    }
    match args.rate {
        Some(rate) => println!(
            "incremental syncs: {} ({:.1}/s, scheduled {rate}/s), {} of them late",
            stats.syncs,
            stats.syncs as f64 / secs,
            stats.late
        ),
        None => println!(
            "incremental syncs: {} ({:.1}/s)",
            stats.syncs,
            stats.syncs as f64 / secs
        ),
    }
    println!("HTTP errors: {}", stats.errors.values().sum::<u64>());
    for (e, n) in &stats.errors {
        println!("  {n} × {e}");
    }
    println!("verification errors: {}", stats.verify_errors);
}
