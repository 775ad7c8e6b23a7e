//! What a Sync client does with the records: keep `meta/global` and `crypto/keys` right
//! (client-formats.md §4–5), announce this device in the `clients` collection and obey the
//! commands other devices leave there (§6.1), and read and write encrypted collections,
//! resolving conflicting writes by re-fetching and merging (CF-071).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use syncstead_proto::names::{is_valid_bso_id, is_valid_collection};
use syncstead_proto::SyncTimestamp;

use crate::crypto::{CryptoError, KeyBundle};
use crate::transport::{Record, Transport};
use crate::ClientError;

/// The engines current clients declare in `meta/global`, with their versions (CF-051).
pub const ENGINES: &[(&str, i64)] = &[
    ("clients", 1),
    ("bookmarks", 2),
    ("history", 1),
    ("forms", 1),
    ("passwords", 1),
    ("prefs", 2),
    ("tabs", 1),
    ("addons", 1),
    ("addresses", 1),
    ("creditcards", 1),
];

/// The storage format this client reads and writes.
pub const STORAGE_VERSION: i64 = 5;

/// Client records live 180 days and are refreshed on every use (CF-060).
pub const CLIENT_RECORD_TTL: u64 = 15_552_000;

/// Collections that are not user data: the special records and the device list.
pub const SPECIAL: &[&str] = &["meta", "crypto", "clients"];

/// This device, as the clients collection shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Device {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
}

impl Device {
    pub fn new(name: &str) -> Self {
        Device {
            id: new_sync_id(),
            name: name.to_string(),
            kind: "desktop".into(),
        }
    }
}

/// What a device remembers between runs.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SyncState {
    /// The storage this state belongs to (a new 1.5 uid or 1.1 node voids it).
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub global_sync_id: Option<String>,
    #[serde(default)]
    pub engine_sync_ids: BTreeMap<String, String>,
    /// Each collection's last-modified time as of this device's last read or write: the
    /// `X-If-Unmodified-Since` of its next write.
    #[serde(default)]
    pub last_modified: BTreeMap<String, SyncTimestamp>,
}

impl SyncState {
    fn reset(&mut self) {
        self.global_sync_id = None;
        self.engine_sync_ids.clear();
        self.last_modified.clear();
    }
}

/// The bulk keys of `crypto/keys` (CF-040).
#[derive(Clone, Debug)]
pub struct CollectionKeys {
    pub default: KeyBundle,
    pub collections: BTreeMap<String, KeyBundle>,
}

impl CollectionKeys {
    fn random() -> Self {
        CollectionKeys {
            default: KeyBundle::random(),
            collections: BTreeMap::new(),
        }
    }

    pub fn for_collection(&self, collection: &str) -> &KeyBundle {
        self.collections.get(collection).unwrap_or(&self.default)
    }

    fn to_cleartext(&self) -> Value {
        let collections: Map<String, Value> = self
            .collections
            .iter()
            .map(|(c, k)| (c.clone(), json!(k.to_base64())))
            .collect();
        json!({"id": "keys", "collection": "crypto", "default": self.default.to_base64(), "collections": collections})
    }

    fn from_cleartext(v: &Value) -> Result<Self, CryptoError> {
        let pair = |p: &Value| -> Result<KeyBundle, CryptoError> {
            match (p.get(0).and_then(Value::as_str), p.get(1).and_then(Value::as_str)) {
                (Some(e), Some(h)) => KeyBundle::from_base64(e, h),
                _ => Err(CryptoError::BadKey("a key pair is two base64 strings")),
            }
        };
        let default = pair(&v["default"])?;
        let mut collections = BTreeMap::new();
        if let Some(m) = v["collections"].as_object() {
            for (c, p) in m {
                collections.insert(c.clone(), pair(p)?);
            }
        }
        Ok(CollectionKeys { default, collections })
    }
}

/// A command found in this device's client record, and what was done about it.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandOutcome {
    pub command: String,
    pub args: Vec<String>,
    /// False when the command is not one this client carries out (it is then reported).
    pub handled: bool,
    pub message: String,
}

/// What a push did.
#[derive(Clone, Debug, Default)]
pub struct PushReport {
    pub records: usize,
    pub requests: usize,
    /// Records that another device had changed meanwhile and that were merged.
    pub merged: usize,
    /// Conflicts (412) met and resolved.
    pub conflicts: usize,
    pub modified: SyncTimestamp,
}

/// A random 12-character base64url id (a syncID, a device id, a record id).
pub fn new_sync_id() -> String {
    let mut b = [0u8; 9];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
    data_encoding::BASE64URL_NOPAD.encode(&b)
}

/// A Sync client for one account on one device.
pub struct SyncClient {
    pub transport: Transport,
    root: KeyBundle,
    pub device: Device,
    pub state: SyncState,
    keys: Option<CollectionKeys>,
    meta: Option<(Value, SyncTimestamp)>,
    /// What happened that the user should hear about (fresh starts, resets, commands).
    pub events: Vec<String>,
}

impl SyncClient {
    /// `root` is the Sync Key Bundle: from the 1.1 Sync Key and username (CF-012) or from
    /// kSync (CF-021).
    pub fn new(transport: Transport, root: KeyBundle, device: Device, state: SyncState) -> Self {
        SyncClient {
            transport,
            root,
            device,
            state,
            keys: None,
            meta: None,
            events: Vec::new(),
        }
    }

    /// The start of every sync (spec README §2.2, §2.4): meta/global, crypto/keys, then
    /// this device's client record and its commands.
    pub async fn prepare(&mut self) -> Result<Vec<CommandOutcome>, ClientError> {
        let endpoint = self.transport.endpoint().await?;
        if self.state.endpoint.as_deref() != Some(endpoint.as_str()) || self.transport.endpoint_changed {
            if self.state.endpoint.is_some() {
                self.events
                    .push("the account's storage moved (new node or new key): starting from the server's data".into());
            }
            self.state.reset();
            self.state.endpoint = Some(endpoint);
            self.transport.endpoint_changed = false;
        }
        let info = self.transport.info_collections().await?;
        let fresh = self.ensure_meta_global(&info).await?;
        if !fresh {
            self.ensure_keys(&info).await?;
        }
        self.sync_clients().await
    }

    /// meta/global per CF-052. Returns true when this client made a fresh start (which
    /// also uploads new keys).
    async fn ensure_meta_global(&mut self, info: &BTreeMap<String, SyncTimestamp>) -> Result<bool, ClientError> {
        for _ in 0..3 {
            let Some(rec) = self.transport.get_record("meta", "global").await? else {
                let others = info.keys().any(|c| c != "meta");
                match self.fresh_start(others, SyncTimestamp::ZERO).await {
                    Err(ClientError::Conflict(_)) => continue,
                    other => return other.map(|_| true),
                }
            };
            let meta: Value = serde_json::from_str(&rec.payload).unwrap_or(Value::Null);
            let version = meta["storageVersion"].as_i64();
            if let Some(v) = version.filter(|v| *v > STORAGE_VERSION) {
                // Never write over data a newer client owns.
                return Err(ClientError::StorageVersion(v));
            }
            let sync_id = meta["syncID"].as_str().filter(|s| is_valid_bso_id(s));
            if version != Some(STORAGE_VERSION) || sync_id.is_none() || !meta["engines"].is_object() {
                self.events
                    .push("meta/global is from an older or broken client: wiping the server and starting fresh".into());
                match self.fresh_start(true, rec.modified).await {
                    Err(ClientError::Conflict(_)) => continue,
                    other => return other.map(|_| true),
                }
            }
            self.adopt_meta(meta, rec.modified);
            return Ok(false);
        }
        Err(ClientError::Conflict("meta/global kept changing".into()))
    }

    /// Takes another client's meta/global: a changed syncID resets what we remember.
    fn adopt_meta(&mut self, meta: Value, modified: SyncTimestamp) {
        let global = meta["syncID"].as_str().unwrap_or_default().to_string();
        if self.state.global_sync_id.as_deref() != Some(global.as_str()) {
            if self.state.global_sync_id.is_some() {
                self.events
                    .push("the account was reset by another device: resetting all engines".into());
            }
            self.state.last_modified.clear();
            self.state.engine_sync_ids.clear();
            self.state.global_sync_id = Some(global);
        }
        if let Some(engines) = meta["engines"].as_object() {
            for (name, e) in engines {
                let id = e["syncID"].as_str().unwrap_or_default().to_string();
                let known = self.state.engine_sync_ids.get(name);
                if known.is_some_and(|k| *k != id) {
                    self.events.push(format!("engine {name} was reset by another device"));
                    self.state.last_modified.remove(name);
                }
                self.state.engine_sync_ids.insert(name.clone(), id);
            }
        }
        self.meta = Some((meta, modified));
    }

    /// A new meta/global and new keys, after wiping the server if `wipe` (CF-052). The
    /// meta/global write is guarded, so a client that got there first wins (a Conflict).
    async fn fresh_start(&mut self, wipe: bool, meta_modified: SyncTimestamp) -> Result<(), ClientError> {
        let mut guard = meta_modified;
        if wipe {
            self.transport.delete_storage().await?;
            self.events.push("started fresh: the server's data was wiped".into());
            guard = SyncTimestamp::ZERO;
        }
        let engines: Map<String, Value> = ENGINES
            .iter()
            .map(|(name, version)| (name.to_string(), json!({"version": version, "syncID": new_sync_id()})))
            .collect();
        let meta =
            json!({"syncID": new_sync_id(), "storageVersion": STORAGE_VERSION, "engines": engines, "declined": []});
        let modified = self
            .transport
            .put_record(
                "meta",
                &Record {
                    id: "global".into(),
                    payload: meta.to_string(),
                    ..Default::default()
                },
                Some(guard),
            )
            .await?;
        self.state.reset();
        self.adopt_meta(meta, modified);
        self.upload_new_keys(None).await
    }

    async fn upload_new_keys(&mut self, guard: Option<SyncTimestamp>) -> Result<(), ClientError> {
        self.upload_keys(CollectionKeys::random(), guard).await
    }

    async fn upload_keys(&mut self, keys: CollectionKeys, guard: Option<SyncTimestamp>) -> Result<(), ClientError> {
        let rec = Record {
            id: "keys".into(),
            payload: self.root.seal(&keys.to_cleartext()),
            ..Default::default()
        };
        self.transport
            .put_record("crypto", &rec, guard.or(Some(SyncTimestamp::ZERO)))
            .await?;
        self.keys = Some(keys);
        Ok(())
    }

    /// crypto/keys (CF-040…043): read and verified with the root key, or made when absent.
    async fn ensure_keys(&mut self, info: &BTreeMap<String, SyncTimestamp>) -> Result<(), ClientError> {
        match self.transport.get_record("crypto", "keys").await? {
            Some(rec) => {
                let clear = self.root.open(&rec.payload).map_err(|e| match e {
                    CryptoError::HmacMismatch => ClientError::WrongKey,
                    e => ClientError::BadRecord {
                        collection: "crypto".into(),
                        id: "keys".into(),
                        why: e.to_string(),
                    },
                })?;
                let keys = CollectionKeys::from_cleartext(&clear).map_err(|e| ClientError::BadRecord {
                    collection: "crypto".into(),
                    id: "keys".into(),
                    why: e.to_string(),
                })?;
                self.keys = Some(keys);
                Ok(())
            }
            None => {
                // Records encrypted with lost keys are unreadable (CF-042): start over.
                let data = info.keys().any(|c| !["meta", "crypto"].contains(&c.as_str()));
                if data {
                    self.fresh_start(true, SyncTimestamp::ZERO).await
                } else {
                    match self
                        .upload_new_keys(Some(info.get("crypto").copied().unwrap_or_default()))
                        .await
                    {
                        Err(ClientError::Conflict(_)) => Box::pin(self.ensure_keys(info)).await,
                        other => other,
                    }
                }
            }
        }
    }

    /// Replaces the bulk keys (CF-042), giving the collections in `own_keys` keys of their
    /// own (CF-040): every other client must then re-download, so all engine data is
    /// re-encrypted and re-uploaded with the new keys.
    pub async fn rotate_keys(&mut self, own_keys: &[&str]) -> Result<PushReport, ClientError> {
        for c in own_keys {
            check_collection(c)?;
        }
        self.require_ready()?;
        let info = self.transport.info_collections().await?;
        let mut saved = Vec::new();
        for c in info.keys().filter(|c| !SPECIAL.contains(&c.as_str())) {
            let (records, _) = self.pull(c, &|_| {}).await?;
            saved.push((c.clone(), records));
        }
        let guard = info.get("crypto").copied();
        let mut keys = CollectionKeys::random();
        for c in own_keys {
            keys.collections.insert(c.to_string(), KeyBundle::random());
        }
        self.upload_keys(keys, guard).await?;
        let mut total = PushReport::default();
        for (c, records) in saved {
            self.transport.delete_collection(&c).await?;
            self.state.last_modified.remove(&c);
            let r = self.push(&c, records, &|_| {}).await?;
            total.records += r.records;
            total.requests += r.requests;
        }
        self.sync_clients().await?;
        Ok(total)
    }

    fn require_ready(&self) -> Result<&CollectionKeys, ClientError> {
        self.keys
            .as_ref()
            .ok_or_else(|| ClientError::Config("prepare() must run first".into()))
    }

    /// The bulk keys in use (after [`prepare`](Self::prepare)).
    pub fn collection_keys(&self) -> Option<&CollectionKeys> {
        self.keys.as_ref()
    }

    /// The meta/global this client last read or wrote.
    pub fn meta_global(&self) -> Option<&Value> {
        self.meta.as_ref().map(|(m, _)| m)
    }

    /// Encrypts a cleartext record for `collection`.
    pub fn encrypt(&self, collection: &str, clear: &Value) -> Result<Record, ClientError> {
        let keys = self.require_ready()?;
        let id = record_id(collection, clear)?;
        Ok(Record {
            id,
            payload: keys.for_collection(collection).seal(clear),
            ..Default::default()
        })
    }

    /// Decrypts a record, checking its HMAC first and that the cleartext names the same
    /// id (CF-002, CF-031).
    pub fn decrypt(&self, collection: &str, rec: &Record) -> Result<Value, ClientError> {
        let keys = self.require_ready()?;
        let bad = |why: String| ClientError::BadRecord {
            collection: collection.into(),
            id: rec.id.clone(),
            why,
        };
        let clear = keys
            .for_collection(collection)
            .open(&rec.payload)
            .map_err(|e| match e {
                CryptoError::HmacMismatch => {
                    bad("its HMAC does not verify: it was tampered with or written with other keys".into())
                }
                e => bad(e.to_string()),
            })?;
        if clear["id"].as_str() != Some(rec.id.as_str()) {
            return Err(bad("the encrypted id differs from the record's id".into()));
        }
        Ok(clear)
    }

    /// This device's client record: commands addressed to it are carried out (or
    /// reported) and cleared, and the record is refreshed (CF-060).
    pub async fn sync_clients(&mut self) -> Result<Vec<CommandOutcome>, ClientError> {
        for _ in 0..3 {
            let existing = self.transport.get_record("clients", &self.device.id).await?;
            let mut outcomes = Vec::new();
            let mut extra = Map::new();
            if let Some(rec) = &existing {
                // A record we cannot read (older keys) is simply replaced.
                if let Ok(Value::Object(clear)) = self.decrypt("clients", rec) {
                    for cmd in clear.get("commands").and_then(Value::as_array).into_iter().flatten() {
                        outcomes.push(self.obey(cmd));
                    }
                    // Keep fields other clients may have put there (objectformats: unknown
                    // fields are preserved).
                    extra = clear;
                }
            }
            let protocol = if self.transport.is_weave11() { "1.1" } else { "1.5" };
            for (k, v) in [
                ("id", json!(self.device.id)),
                ("name", json!(self.device.name)),
                ("type", json!(self.device.kind)),
                ("version", json!(env!("CARGO_PKG_VERSION"))),
                ("protocols", json!([protocol])),
                ("commands", json!([])),
                ("os", json!(std::env::consts::OS)),
                ("application", json!("Syncstead")),
            ] {
                extra.insert(k.into(), v);
            }
            let mut rec = self.encrypt("clients", &Value::Object(extra))?;
            rec.ttl = Some(CLIENT_RECORD_TTL);
            // Guarded, so a command appended meanwhile is not lost: read again and obey it.
            let guard = existing.as_ref().map(|r| r.modified).unwrap_or_default();
            match self.put_guarded_record("clients", &rec, guard).await {
                Err(ClientError::Conflict(_)) => continue,
                Err(e) => return Err(e),
                Ok(_) => {
                    for o in &outcomes {
                        self.events.push(o.message.clone());
                    }
                    return Ok(outcomes);
                }
            }
        }
        Err(ClientError::Conflict(
            "this device's client record kept changing".into(),
        ))
    }

    /// A PUT guarded by what this device last saw of the record.
    async fn put_guarded_record(
        &mut self,
        collection: &str,
        rec: &Record,
        record_modified: SyncTimestamp,
    ) -> Result<SyncTimestamp, ClientError> {
        // 1.5's X-If-Unmodified-Since on a record PUT compares with the record's own
        // timestamp (S15-108); 1.1 compares with the collection's. For 1.1 take the fresh
        // collection time, accepting the small race.
        let guard = if self.transport.is_weave11() {
            self.transport
                .info_collections()
                .await?
                .get(collection)
                .copied()
                .unwrap_or_default()
                .max(record_modified)
        } else {
            record_modified
        };
        self.transport.put_record(collection, rec, Some(guard)).await
    }

    fn obey(&mut self, cmd: &Value) -> CommandOutcome {
        let command = cmd["command"].as_str().unwrap_or_default().to_string();
        let args: Vec<String> = cmd["args"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| a.as_str().map(str::to_string).unwrap_or_else(|| a.to_string()))
            .collect();
        let first = args.first().cloned().unwrap_or_default();
        let (handled, message) = match command.as_str() {
            "resetEngine" | "wipeEngine" => {
                self.state.last_modified.remove(&first);
                (
                    true,
                    format!("{command} {first}: this device forgot its sync position for {first} (it keeps no local copy to wipe)"),
                )
            }
            "resetAll" | "wipeAll" => {
                self.state.last_modified.clear();
                (
                    true,
                    format!("{command}: this device forgot its sync position for every engine (it keeps no local copy to wipe)"),
                )
            }
            "displayURI" => (
                true,
                format!(
                    "a page was sent to this device: {first}{}",
                    args.get(2).map(|t| format!(" ({t})")).unwrap_or_default()
                ),
            ),
            _ => (
                false,
                format!("command {command} {args:?} from another device is not supported here; ignored"),
            ),
        };
        CommandOutcome {
            command,
            args,
            handled,
            message,
        }
    }

    /// Leaves a command for another device in its client record (what a device does to
    /// ask a peer to reset or wipe an engine).
    pub async fn send_command(&mut self, client_id: &str, command: &str, args: &[&str]) -> Result<(), ClientError> {
        for _ in 0..3 {
            let rec = self
                .transport
                .get_record("clients", client_id)
                .await?
                .ok_or_else(|| ClientError::Config(format!("no client {client_id} on this account")))?;
            let mut clear = self.decrypt("clients", &rec)?;
            let entry = json!({"command": command, "args": args});
            match clear["commands"].as_array_mut() {
                Some(list) => list.push(entry),
                None => clear["commands"] = json!([entry]),
            }
            let mut out = self.encrypt("clients", &clear)?;
            out.ttl = Some(CLIENT_RECORD_TTL);
            match self.put_guarded_record("clients", &out, rec.modified).await {
                Err(ClientError::Conflict(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
        Err(ClientError::Conflict(format!("client {client_id} kept changing")))
    }

    /// Every device on the account (decrypted client records).
    pub async fn clients(&mut self) -> Result<Vec<Value>, ClientError> {
        let (records, _) = self.transport.get_records("clients", None, &|_| {}).await?;
        records.iter().map(|r| self.decrypt("clients", r)).collect()
    }

    /// Every record of a collection, decrypted (tombstones included), and the
    /// collection's last-modified time, which becomes this device's base for its next write.
    pub async fn pull(
        &mut self,
        collection: &str,
        progress: &dyn Fn(usize),
    ) -> Result<(Vec<Value>, SyncTimestamp), ClientError> {
        check_collection(collection)?;
        let (records, modified) = self.transport.get_records(collection, None, progress).await?;
        let clear = records
            .iter()
            .map(|r| self.decrypt(collection, r))
            .collect::<Result<Vec<_>, _>>()?;
        self.state.last_modified.insert(collection.to_string(), modified);
        Ok((clear, modified))
    }

    /// Encrypts and uploads cleartext records, replacing those with the same ids. The write
    /// is guarded by this device's last view of the collection; when another device wrote
    /// meanwhile (412), its changes are fetched and merged into ours (folder children
    /// united, our other fields kept), and the upload is retried.
    pub async fn push(
        &mut self,
        collection: &str,
        mut records: Vec<Value>,
        progress: &dyn Fn(usize),
    ) -> Result<PushReport, ClientError> {
        check_collection(collection)?;
        if SPECIAL.contains(&collection) {
            return Err(ClientError::Config(format!(
                "{collection} is managed by the client itself and cannot be pushed"
            )));
        }
        for r in &records {
            record_id(collection, r)?;
        }
        self.declare_engine(collection).await?;
        let mut base = match self.state.last_modified.get(collection) {
            Some(t) => *t,
            None => self
                .transport
                .info_collections()
                .await?
                .get(collection)
                .copied()
                .unwrap_or_default(),
        };
        let mut report = PushReport {
            records: records.len(),
            ..Default::default()
        };
        for _ in 0..5 {
            let encrypted = records
                .iter()
                .map(|r| self.encrypt(collection, r))
                .collect::<Result<Vec<_>, _>>()?;
            match self.transport.upload(collection, &encrypted, base, progress).await {
                Ok(up) => {
                    report.requests += up.requests;
                    report.modified = up.modified;
                    self.state.last_modified.insert(collection.to_string(), up.modified);
                    return Ok(report);
                }
                Err(ClientError::Conflict(_)) => {
                    report.conflicts += 1;
                    let (theirs, modified) = self.transport.get_records(collection, Some(base), &|_| {}).await?;
                    for rec in &theirs {
                        let their = self.decrypt(collection, rec)?;
                        if let Some(ours) = records.iter_mut().find(|r| r["id"] == their["id"]) {
                            merge_record(ours, &their);
                            report.merged += 1;
                        }
                    }
                    base = modified.max(base);
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Conflict(format!(
            "{collection} kept changing; try again later"
        )))
    }

    /// Makes sure meta/global lists an engine before its data is written, so other
    /// clients sync it; refuses an engine the user declined (CF-050).
    async fn declare_engine(&mut self, collection: &str) -> Result<(), ClientError> {
        for _ in 0..3 {
            let Some((meta, modified)) = self.meta.clone() else {
                return Err(ClientError::Config("prepare() must run first".into()));
            };
            if meta["engines"].get(collection).is_some() {
                return Ok(());
            }
            if meta["declined"]
                .as_array()
                .is_some_and(|d| d.iter().any(|e| e.as_str() == Some(collection)))
            {
                return Err(ClientError::Declined(collection.to_string()));
            }
            let Some((_, version)) = ENGINES.iter().find(|(n, _)| *n == collection) else {
                // A collection that is no engine (custom data) needs no declaration.
                return Ok(());
            };
            let mut meta = meta;
            meta["engines"][collection] = json!({"version": version, "syncID": new_sync_id()});
            let rec = Record {
                id: "global".into(),
                payload: meta.to_string(),
                ..Default::default()
            };
            match self.put_guarded_record("meta", &rec, modified).await {
                Ok(t) => {
                    self.adopt_meta(meta, t);
                    return Ok(());
                }
                Err(ClientError::Conflict(_)) => {
                    let info = self.transport.info_collections().await?;
                    self.ensure_meta_global(&info).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Conflict("meta/global kept changing".into()))
    }

    /// Deletes everything on the server and starts afresh (new syncIDs and keys); other
    /// devices notice the new syncID and reset (CF-052).
    pub async fn wipe(&mut self) -> Result<(), ClientError> {
        self.fresh_start(true, SyncTimestamp::ZERO).await?;
        self.sync_clients().await?;
        Ok(())
    }

    /// Writes every user-data collection, decrypted, to `dir` as `<collection>.json`, and
    /// a `manifest.json`. The files hold plaintext and no keys: the directory is made
    /// private to the user (0700, files 0600).
    pub async fn backup(&mut self, dir: &Path, progress: &dyn Fn(usize)) -> Result<Vec<(String, usize)>, ClientError> {
        create_private_dir(dir)?;
        let info = self.transport.info_collections().await?;
        let mut done = Vec::new();
        for c in info.keys().filter(|c| !SPECIAL.contains(&c.as_str())) {
            let (records, _) = self.pull(c, progress).await?;
            write_private(
                &dir.join(format!("{c}.json")),
                &serde_json::to_vec_pretty(&records).expect("JSON"),
            )?;
            done.push((c.clone(), records.len()));
        }
        let manifest = json!({
            "format": "syncstead-client-backup-1",
            "created": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            "encrypted": false,
            "contains_keys": false,
            "collections": done.iter().map(|(c, n)| (c.clone(), json!(n))).collect::<Map<String, Value>>(),
        });
        write_private(
            &dir.join("manifest.json"),
            &serde_json::to_vec_pretty(&manifest).expect("JSON"),
        )?;
        Ok(done)
    }

    /// Uploads a [`backup`](Self::backup) again, encrypted with this account's current
    /// keys, merged by id with what the server holds.
    pub async fn restore(&mut self, dir: &Path, progress: &dyn Fn(usize)) -> Result<Vec<(String, usize)>, ClientError> {
        let manifest: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json"))?)
            .map_err(|e| ClientError::Config(format!("{}: not a backup manifest ({e})", dir.display())))?;
        let collections = manifest["collections"]
            .as_object()
            .ok_or_else(|| ClientError::Config("the backup manifest lists no collections".into()))?;
        let mut done = Vec::new();
        for c in collections.keys() {
            check_collection(c)?;
            let records: Vec<Value> = serde_json::from_slice(&std::fs::read(dir.join(format!("{c}.json")))?)
                .map_err(|e| ClientError::Config(format!("{c}.json: {e}")))?;
            let n = records.len();
            self.push(c, records, progress).await?;
            done.push((c.clone(), n));
        }
        Ok(done)
    }
}

/// Merges another device's version of a record into ours: a folder keeps the union of
/// both child lists (ours first), so neither device's new children are lost; the other
/// fields are ours, the write being made now.
pub fn merge_record(ours: &mut Value, theirs: &Value) {
    if let (Some(mine), Some(other)) = (ours["children"].as_array().cloned(), theirs["children"].as_array()) {
        let mut merged = mine.clone();
        for c in other {
            if !merged.contains(c) {
                merged.push(c.clone());
            }
        }
        ours["children"] = Value::Array(merged);
    }
}

fn record_id(collection: &str, clear: &Value) -> Result<String, ClientError> {
    let id = clear["id"].as_str().unwrap_or_default();
    if !clear.is_object() || !is_valid_bso_id(id) {
        return Err(ClientError::BadRecord {
            collection: collection.into(),
            id: id.into(),
            why: "a record is a JSON object with an \"id\" of 1–64 printable characters".into(),
        });
    }
    Ok(id.to_string())
}

fn check_collection(c: &str) -> Result<(), ClientError> {
    if is_valid_collection(c) {
        Ok(())
    } else {
        Err(ClientError::Config(format!("{c:?} is not a collection name")))
    }
}

/// A directory only its owner can read.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Writes a file only its owner can read, atomically (a temporary file renamed over it).
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}
