//! The real server on an ephemeral port (SQLite in a temporary directory, cheap Argon2),
//! Mozilla-accounts access tokens signed with an RSA key the server is told to trust, and
//! accounts for both protocols.
// Test support: a failure here is a failed test, so unwrap is the right answer.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use data_encoding::BASE64URL_NOPAD;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use syncstead_client::account::{Account, Login};
use syncstead_client::crypto::{friendly_sync_key, SyncKeys};
use syncstead_client::sync::{Device, SyncClient};
use syncstead_client::transport::user_api;
use syncstead_server::{ConfigLayer, RunningServer, Settings};

pub const PASSWORD: &str = "correct horse battery";

pub struct Server {
    pub base: String,
    pub running: Option<RunningServer>,
    pub dir: tempfile::TempDir,
    pub keys: tempfile::TempDir,
    /// The PostgreSQL schema of this test when the suite runs on PostgreSQL.
    pub postgres: Option<syncstead_store::testing::ScratchSchema>,
}

struct Fxa {
    key: EncodingKey,
    jwk: Value,
}

fn fxa() -> &'static Fxa {
    static KEY: OnceLock<Fxa> = OnceLock::new();
    KEY.get_or_init(|| {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::traits::PublicKeyParts;
        let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("RSA key");
        let pem = private.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).unwrap();
        Fxa {
            key: EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
            jwk: json!({
                "kty": "RSA", "alg": "RS256", "use": "sig", "kid": "test-key",
                "n": BASE64URL_NOPAD.encode(&private.n().to_bytes_be()),
                "e": BASE64URL_NOPAD.encode(&private.e().to_bytes_be()),
            }),
        }
    })
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// An OAuth access token for the oldsync scope, as Mozilla accounts issues it.
pub fn access_token(fxa_uid: &str) -> String {
    let mut header = Header::new(jsonwebtoken::Algorithm::RS256);
    header.typ = Some("at+JWT".into());
    header.kid = Some("test-key".into());
    let claims = json!({"sub": fxa_uid, "scope": "profile https://identity.mozilla.com/apps/oldsync",
        "exp": now() + 600, "iat": now(), "client_id": "5882386c6d801776", "fxa-generation": 1});
    jsonwebtoken::encode(&header, &claims, &fxa().key).unwrap()
}

impl Server {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut ConfigLayer)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keys = tempfile::tempdir().unwrap();
        let jwk = keys.path().join("fxa.jwk");
        std::fs::write(&jwk, fxa().jwk.to_string()).unwrap();
        let mut layer = ConfigLayer {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            data_dir: Some(dir.path().to_path_buf()),
            master_secret: Some("client-test-secret".into()),
            argon2_memory_kib: Some(64),
            argon2_iterations: Some(1),
            oauth_public_key_file: Some(jwk),
            oauth_jwks_url: Some(String::new()),
            ..Default::default()
        };
        let postgres = if syncstead_store::testing::backend_is_postgres() {
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
        let running = syncstead_server::start(Settings::resolve(layer).unwrap())
            .await
            .expect("server starts");
        Server {
            base: format!("http://{}", running.addr),
            running: Some(running),
            dir,
            keys,
            postgres,
        }
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.unwrap();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Protocol {
    Weave11,
    Sync15,
}

pub const BOTH: [Protocol; 2] = [Protocol::Weave11, Protocol::Sync15];

/// A new account on `s`, as its first device: 1.1 signs up through the User API with a
/// random Sync Key; 1.5 is a Mozilla account with a random kB.
pub async fn new_account(s: &Server, p: Protocol, who: &str) -> Account {
    let mut secret = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut secret);
    let login = match p {
        Protocol::Weave11 => {
            let email = format!("{who}@example.org");
            let username = syncstead_proto::username::username_for_account(&email);
            let server = url::Url::parse(&s.base).unwrap();
            user_api::create(&reqwest::Client::new(), &server, &username, &email, PASSWORD, None)
                .await
                .expect("sign-up");
            Login::Weave11 {
                server: s.base.clone(),
                email,
                username,
                password: PASSWORD.into(),
                sync_key: friendly_sync_key(&secret[..16].try_into().unwrap()),
            }
        }
        Protocol::Sync15 => {
            let keys = SyncKeys::from_kb(&secret);
            let fxa_uid = data_encoding::HEXLOWER.encode(&secret[..16]);
            Login::Sync15 {
                token_server: s.base.clone(),
                access_token: access_token(&fxa_uid),
                key_id: keys.key_id(1_700_000_000_000),
                ksync: keys.scoped_key(),
            }
        }
    };
    Account {
        login,
        device: Device::new(&format!("{who}'s first device")),
        state: Default::default(),
    }
}

/// Another device of the same account (same credentials and key, its own identity).
pub fn second_device(a: &Account, name: &str) -> Account {
    Account {
        login: a.login.clone(),
        device: Device::new(name),
        state: Default::default(),
    }
}

/// A prepared client.
pub async fn client(a: &Account) -> SyncClient {
    let mut c = a.client(reqwest::Client::new()).unwrap();
    c.prepare().await.expect("prepare");
    c
}

pub fn history(n: usize, tag: &str) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({"id": format!("{tag}{i:08}"), "histUri": format!("https://{tag}.example/{i}"),
                "title": format!("Page {i} ✓"), "visits": [{"date": 1_700_000_000_000_000u64 + i as u64, "type": 1}]})
        })
        .collect()
}

pub fn sorted(mut v: Vec<Value>) -> Vec<Value> {
    v.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    v
}

pub const BOOKMARKS_HTML: &str = r#"<!DOCTYPE NETSCAPE-Bookmark-file-1>
<META HTTP-EQUIV="Content-Type" CONTENT="text/html; charset=UTF-8">
<TITLE>Bookmarks</TITLE>
<H1>Bookmarks Menu</H1>
<DL><p>
    <DT><A HREF="https://www.mozilla.org/" ADD_DATE="1700000000" TAGS="moz">Mozilla</A>
    <DD>Home of Firefox
    <DT><H3 ADD_DATE="1600000000">Work</H3>
    <DL><p>
        <DT><A HREF="https://example.com/tickets">Tickets &amp; bugs</A>
        <HR>
        <DT><H3>Archive</H3>
        <DL><p>
            <DT><A HREF="https://example.com/old" SHORTCUTURL="old">Old wiki</A>
            <DT><H3>Deepest</H3>
            <DL><p>
                <DT><A HREF="https://example.com/deep">Deep</A>
            </DL><p>
        </DL><p>
    </DL><p>
    <DT><H3 PERSONAL_TOOLBAR_FOLDER="true">Bookmarks Toolbar</H3>
    <DL><p>
        <DT><A HREF="https://news.example/">News</A>
        <DT><A HREF="https://mail.example/">Mail</A>
    </DL><p>
    <DT><H3 UNFILED_BOOKMARKS_FOLDER="true">Other Bookmarks</H3>
    <DL><p>
        <DT><A HREF="https://other.example/">Ünïcode</A>
    </DL><p>
</DL>
"#;
