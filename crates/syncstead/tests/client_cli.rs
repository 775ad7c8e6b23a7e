//! `syncstead client` end to end: the real binary as server and as two client devices,
//! on Weave 1.1 (sign-up / login) and Sync 1.5 (connect through the token server).
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use common::*;
use data_encoding::BASE64URL_NOPAD;
use serde_json::{json, Value};
use syncstead_client::bookmarks::parse_html;

const BOOKMARKS: &str = r#"<!DOCTYPE NETSCAPE-Bookmark-file-1>
<TITLE>Bookmarks</TITLE>
<H1>Bookmarks Menu</H1>
<DL><p>
    <DT><A HREF="https://www.mozilla.org/" ADD_DATE="1700000000">Mozilla</A>
    <DT><H3>Work</H3>
    <DL><p>
        <DT><A HREF="https://example.com/tickets">Tickets</A>
        <DT><H3>Archive</H3>
        <DL><p>
            <DT><A HREF="https://example.com/old">Old &amp; dusty</A>
        </DL><p>
        <HR>
    </DL><p>
    <DT><H3 PERSONAL_TOOLBAR_FOLDER="true">Bookmarks Toolbar</H3>
    <DL><p>
        <DT><A HREF="https://news.example/">News</A>
    </DL><p>
</DL>
"#;

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `syncstead client --config <config> …` with `stdin` piped in.
fn client(config: &Path, args: &[&str], stdin: &str) -> Out {
    let mut child = bin()
        .arg("client")
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("SYNCSTEAD_CLIENT_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(o: Out) -> Out {
    assert!(o.ok, "stdout: {}\nstderr: {}", o.stdout, o.stderr);
    o
}

fn history() -> Vec<Value> {
    (0..120)
        .map(|i| json!({"id": format!("hist{i:08}"), "histUri": format!("https://site.example/{i}"), "title": format!("Seite {i} ü"), "visits": [{"date": 1_700_000_000_000_000u64 + i, "type": 1}]}))
        .collect()
}

fn sorted(mut v: Vec<Value>) -> Vec<Value> {
    v.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    v
}

/// What both protocols share once the devices are signed in: A imports bookmarks and
/// pushes history; B pulls the same plaintext and exports an equivalent bookmark file.
fn share(dir: &Path, a: &Path, b: &Path) {
    let html = dir.join("bookmarks.html");
    std::fs::write(&html, BOOKMARKS).unwrap();
    let hist = dir.join("history.json");
    std::fs::write(&hist, serde_json::to_vec(&history()).unwrap()).unwrap();
    let o = ok(client(a, &["bookmarks", "import", html.to_str().unwrap()], ""));
    assert!(o.stdout.contains("imported 9 bookmark records"), "{}", o.stdout);
    let o = ok(client(a, &["push", "history", hist.to_str().unwrap()], ""));
    assert!(o.stdout.contains("pushed 120 records"), "{}", o.stdout);

    let pulled = dir.join("pulled.json");
    ok(client(b, &["pull", "history", "--out", pulled.to_str().unwrap()], ""));
    assert_eq!(std::fs::metadata(&pulled).unwrap().permissions().mode() & 0o777, 0o600);
    let got: Vec<Value> = serde_json::from_slice(&std::fs::read(&pulled).unwrap()).unwrap();
    assert_eq!(sorted(got), sorted(history()));
    let exported = dir.join("exported.html");
    ok(client(b, &["bookmarks", "export", exported.to_str().unwrap()], ""));
    assert_eq!(
        parse_html(&std::fs::read_to_string(&exported).unwrap()),
        parse_html(BOOKMARKS)
    );
    let status = ok(client(b, &["status"], "")).stdout;
    assert!(status.contains("(this device)"), "{status}");
    assert_eq!(status.matches("[desktop]").count(), 2, "{status}");
    assert!(status.contains("history") && status.contains("120 records"), "{status}");
}

#[test]
fn weave11_signup_login_share_and_wrong_key() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr) = spawn_server(dir.path(), &["--argon2-memory-kib", "64", "--argon2-iterations", "1"]);
    let url = format!("http://{addr}/");
    let a = dir.path().join("a.json");
    let b = dir.path().join("b.json");
    let o = ok(client(
        &a,
        &[
            "signup",
            "--server",
            &url,
            "--email",
            "cli@example.org",
            "--device-name",
            "laptop",
        ],
        "a good long password\n",
    ));
    let key = o
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Sync Key: "))
        .expect("the Sync Key is shown")
        .to_string();
    assert_eq!(key.len(), 31, "{key}");
    // The account file holds secrets: owner-only.
    assert_eq!(std::fs::metadata(&a).unwrap().permissions().mode() & 0o777, 0o600);
    ok(client(
        &b,
        &[
            "login",
            "--server",
            &url,
            "--email",
            "cli@example.org",
            "--sync-key",
            &key,
        ],
        "a good long password\n",
    ));
    share(dir.path(), &a, &b);

    // A wrong Sync Key is named as such, and no account file is written.
    let c = dir.path().join("c.json");
    let o = client(
        &c,
        &[
            "login",
            "--server",
            &url,
            "--email",
            "cli@example.org",
            "--sync-key",
            &syncstead_client::crypto::friendly_sync_key(&[7; 16]),
        ],
        "a good long password\n",
    );
    assert!(!o.ok && o.stderr.contains("wrong key"), "{}", o.stderr);
    assert!(!c.exists());
    // Signing up twice is refused with a hint.
    let o = client(&c, &["signup", "--server", &url, "--email", "cli@example.org"], "x\n");
    assert!(!o.ok && o.stderr.contains("already has an account"), "{}", o.stderr);
    stop(server);
}

#[test]
fn sync15_connect_share_backup_restore() {
    let dir = tempfile::tempdir().unwrap();
    let fxa = Fxa::new(dir.path());
    let jwk_file = fxa.jwk_file.clone();
    let (server, addr) = spawn_server(
        dir.path(),
        &[
            "--oauth-public-key-file",
            jwk_file.to_str().unwrap(),
            "--oauth-jwks-url",
            "",
        ],
    );
    let token = fxa.access_token("0123456789abcdef0123456789abcdef", None);
    let kb = "2ee722fdd8ccaa721bdeb2d1b76560efef705b04349d9357c3e592cf4906e075";
    let connect = |config: &Path| {
        ok(client(
            config,
            &[
                "connect",
                "--token-server",
                &format!("http://{addr}"),
                "--access-token",
                &token,
                "--kb",
                kb,
                "--keys-changed-at",
                "1510726317123",
            ],
            "",
        ))
    };
    let a = dir.path().join("a.json");
    let b = dir.path().join("b.json");
    let o = connect(&a);
    assert!(o.stdout.contains("/1.5/"), "{}", o.stdout);
    connect(&b);
    share(dir.path(), &a, &b);

    // Backup, wipe, restore: B reads everything back.
    let backup = dir.path().join("backup");
    let o = ok(client(&a, &["backup", backup.to_str().unwrap()], ""));
    assert!(o.stdout.contains("holds no keys"), "{}", o.stdout);
    let o = client(&a, &["wipe"], "");
    assert!(!o.ok && o.stderr.contains("--yes"), "wipe asks first: {}", o.stderr);
    ok(client(&a, &["wipe", "--yes"], ""));
    let o = ok(client(&b, &["pull", "history"], ""));
    assert_eq!(serde_json::from_str::<Value>(&o.stdout).unwrap(), json!([]));
    ok(client(&a, &["restore", backup.to_str().unwrap()], ""));
    let o = ok(client(&b, &["pull", "history"], ""));
    assert_eq!(sorted(serde_json::from_str(&o.stdout).unwrap()), sorted(history()));

    // Another kB (the key id stays, so the same uid): the key is reported as wrong.
    let c = dir.path().join("c.json");
    let o = client(
        &c,
        &[
            "connect",
            "--token-server",
            &format!("http://{addr}"),
            "--access-token",
            &token,
            "--scoped-key",
            &{
                let f = dir.path().join("wrong.jwk");
                std::fs::write(
                    &f,
                    json!({"k": BASE64URL_NOPAD.encode(&[9u8; 64]), "kid": "1510726317123-BAik7hEOdpGnPZnPBSdaTg"})
                        .to_string(),
                )
                .unwrap();
                f.to_str().unwrap().to_string()
            },
        ],
        "",
    );
    assert!(!o.ok && o.stderr.contains("wrong key"), "{}", o.stderr);
    stop(server);
}
