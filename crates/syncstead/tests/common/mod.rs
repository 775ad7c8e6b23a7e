//! Helpers shared by the binary's tests: the real `syncstead` process and a signed client.
// Test support: a failure here is a failed test, so unwrap is the right answer.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_syncstead"))
}

/// Starts `syncstead serve` in `dir` on an ephemeral port; returns the process and address.
pub fn spawn_server(dir: &std::path::Path, extra: &[&str]) -> (std::process::Child, String) {
    let mut child = bin()
        .args(["serve", "--log-level", "warn"])
        .args(if extra.contains(&"--listen") {
            &[][..]
        } else {
            &["--listen", "127.0.0.1:0"][..]
        })
        .args(extra)
        .current_dir(dir)
        .env_remove("SYNCSTEAD_MASTER_SECRET")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("server prints its address").unwrap();
        if let Some(rest) = line.trim().strip_prefix("listening on") {
            break rest.trim().trim_start_matches("http://").to_string();
        }
    };
    // Keep reading, so the server never writes into a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr)
}

/// SIGTERM, then waits for a successful exit.
pub fn stop(mut child: std::process::Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let mut waited = 0;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
        waited += 1;
        assert!(waited < 200, "server did not stop on SIGTERM");
    };
    assert!(status.success());
}

/// A storage 1.5 client for `uid` with a token signed by `secret`.
pub fn storage(addr: &str, secret: &str, uid: u64) -> syncstead_client::StorageClient {
    let node = format!("http://{addr}");
    let creds = syncstead_proto::token::TokenSigner::new(secret).mint(&syncstead_proto::token::TokenPayload {
        node: node.clone(),
        fxa_kid: None,
        fxa_uid: None,
        hashed_device_id: None,
        hashed_fxa_uid: None,
        expires: (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600) as f64,
        uid,
        tokenserver_origin: None,
        salt: syncstead_proto::token::random_salt(),
    });
    syncstead_client::StorageClient::new(reqwest::Client::new(), &format!("{node}/1.5/{uid}"), creds).unwrap()
}

/// A stand-in for Mozilla accounts: an RSA key made for the test, its public JWK in a file
/// the server is told to trust, and access tokens signed with it.
pub struct Fxa {
    pub jwk_file: std::path::PathBuf,
    key: jsonwebtoken::EncodingKey,
}

impl Fxa {
    pub fn new(dir: &std::path::Path) -> Self {
        use data_encoding::BASE64URL_NOPAD;
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::traits::PublicKeyParts;
        let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
        let jwk = serde_json::json!({"kty": "RSA", "alg": "RS256", "kid": "k1",
            "n": BASE64URL_NOPAD.encode(&private.n().to_bytes_be()), "e": BASE64URL_NOPAD.encode(&private.e().to_bytes_be())});
        let jwk_file = dir.join("fxa.jwk");
        std::fs::write(&jwk_file, jwk.to_string()).unwrap();
        let pem = private.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).unwrap();
        Fxa {
            jwk_file,
            key: jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        }
    }

    /// An OAuth access token for the oldsync scope of Mozilla account `sub`.
    pub fn access_token(&self, sub: &str, generation: Option<i64>) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some("k1".into());
        header.typ = Some("at+JWT".into());
        let mut claims = serde_json::json!({"sub": sub, "scope": "https://identity.mozilla.com/apps/oldsync",
            "exp": now + 600, "iat": now});
        if let Some(g) = generation {
            claims["fxa-generation"] = g.into();
        }
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}
