//! Real Firefox for the tests: Debian's `firefox-esr`, headless, driven over Marionette,
//! the remote protocol built into Firefox (a small client here; no separate driver).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A minimal Marionette client: length-prefixed JSON, `[0, id, command, params]` out,
/// `[1, id, error, result]` back.
pub struct Marionette {
    stream: BufReader<TcpStream>,
    next: u64,
}

impl Marionette {
    pub fn connect(port: u16) -> Marionette {
        let deadline = Instant::now() + Duration::from_secs(60);
        let stream = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => panic!("Marionette on {port}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(180))).unwrap();
        let mut m = Marionette {
            stream: BufReader::new(stream),
            next: 1,
        };
        let hello = m.read();
        assert_eq!(hello["marionetteProtocol"], 3, "{hello}");
        m
    }

    pub fn read(&mut self) -> Value {
        let mut len = Vec::new();
        self.stream.read_until(b':', &mut len).unwrap();
        let len: usize = std::str::from_utf8(&len[..len.len() - 1]).unwrap().parse().unwrap();
        let mut body = vec![0; len];
        self.stream.read_exact(&mut body).unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    pub fn cmd(&mut self, name: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        let msg = json!([0, id, name, params]).to_string();
        let out = self.stream.get_mut();
        out.write_all(format!("{}:{msg}", msg.len()).as_bytes()).unwrap();
        let reply = self.read();
        assert_eq!(reply[1], id, "{reply}");
        assert!(reply[2].is_null(), "{name} failed: {}", reply[2]);
        reply[3].clone()
    }

    pub fn context(&mut self, which: &str) {
        self.cmd("Marionette:SetContext", json!({ "value": which }));
    }

    /// Runs `script` (a function body; a returned promise is awaited) in the current context.
    pub fn js(&mut self, script: &str, args: Value) -> Value {
        self.cmd("WebDriver:ExecuteScript", json!({ "script": script, "args": args }))["value"].clone()
    }

    pub fn element(&mut self, css: &str) -> String {
        let found = self.cmd(
            "WebDriver:FindElement",
            json!({ "using": "css selector", "value": css }),
        );
        found["value"]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn type_into(&mut self, css: &str, text: &str) {
        let id = self.element(css);
        self.cmd("WebDriver:ElementSendKeys", json!({ "id": id, "text": text }));
    }

    pub fn click(&mut self, css: &str) {
        let id = self.element(css);
        self.cmd("WebDriver:ElementClick", json!({ "id": id }));
    }

    /// Waits for the page's `data-state` to become `expected` (or "error"); answers the
    /// state and the status text.
    pub fn wait_state(&mut self, expected: &str) -> (String, String) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let v = self.js(
                "return [document.body.dataset.state || '', (document.getElementById('status') || {}).textContent || ''];",
                json!([]),
            );
            let state = v[0].as_str().unwrap().to_string();
            if state == expected || state == "error" || Instant::now() > deadline {
                return (state, v[1].as_str().unwrap().to_string());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Saves the page as `<target>/tmp/screenshots/<name>.png` (kept for the reader of
    /// a run: CI keeps the target directory).
    pub fn screenshot(&mut self, name: &str) {
        let v = self.cmd("WebDriver:TakeScreenshot", json!({ "full": true, "hash": false }));
        let png = data_encoding::BASE64
            .decode(v["value"].as_str().unwrap().as_bytes())
            .unwrap();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let backend = if super::on_postgres() { "postgres" } else { "sqlite" };
        std::fs::write(dir.join(format!("{backend}-{name}.png")), png).unwrap();
    }
}

/// A headless Firefox on a profile of its own, ended when dropped.
pub struct Firefox {
    pub child: Child,
    pub m: Marionette,
}

impl Firefox {
    pub fn start(profile: &Path, server: &str) -> Firefox {
        std::fs::create_dir_all(profile).unwrap();
        let prefs = [
            // The one preference a user sets (docs/accounts.md); allowHttp because this
            // server is plain HTTP on loopback.
            ("identity.fxaccounts.autoconfig.uri", json!(server)),
            ("identity.fxaccounts.allowHttp", json!(true)),
            ("marionette.port", json!(0)),
            ("browser.shell.checkDefaultBrowser", json!(false)),
            ("browser.startup.homepage_override.mstone", json!("ignore")),
            ("browser.aboutwelcome.enabled", json!(false)),
            ("datareporting.policy.dataSubmissionEnabled", json!(false)),
            ("toolkit.telemetry.reportingpolicy.firstRun", json!(false)),
            ("app.update.disabledForTesting", json!(true)),
            // No requests to the outside world from the test machine.
            ("network.connectivity-service.enabled", json!(false)),
            ("network.captive-portal-service.enabled", json!(false)),
            ("browser.safebrowsing.update.enabled", json!(false)),
            ("extensions.update.enabled", json!(false)),
            ("browser.newtabpage.enabled", json!(false)),
            ("browser.startup.page", json!(0)),
        ];
        let user_js: String = prefs
            .iter()
            .map(|(k, v)| format!("user_pref(\"{k}\", {v});\n"))
            .collect();
        std::fs::write(profile.join("user.js"), user_js).unwrap();
        let child = Command::new(firefox_binary())
            .args([
                "--headless",
                "--marionette",
                "-remote-allow-system-access",
                "-no-remote",
            ])
            .arg("-profile")
            .arg(profile)
            .env("MOZ_CRASHREPORTER_DISABLE", "1")
            // Firefox's own output goes with the test's, shown when it fails.
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("firefox-esr starts");
        // With marionette.port 0 Firefox picks a free port and writes it here.
        let port_file = profile.join("MarionetteActivePort");
        let deadline = Instant::now() + Duration::from_secs(90);
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                break p;
            }
            assert!(Instant::now() < deadline, "Firefox wrote no Marionette port");
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut m = Marionette::connect(port);
        m.cmd("WebDriver:NewSession", json!({ "capabilities": { "alwaysMatch": {} } }));
        m.cmd(
            "WebDriver:SetTimeouts",
            json!({ "script": 150_000, "pageLoad": 60_000, "implicit": 5_000 }),
        );
        Firefox { child, m }
    }

    /// Opens Syncstead's sign-in page the way Firefox's "Sign in to sync" does, and signs
    /// in (or up) by typing into it.
    pub fn sign_in(&mut self, email: &str, password: &str, sign_up: bool) {
        self.m.context("chrome");
        let uri = self.m.js(
            r#"const { FxAccountsConfig } = ChromeUtils.importESModule("resource://gre/modules/FxAccountsConfig.sys.mjs");
               return FxAccountsConfig.promiseConnectAccountURI("test");"#,
            json!([]),
        );
        let uri = uri.as_str().unwrap().to_string();
        self.m.context("content");
        self.m.cmd("WebDriver:Navigate", json!({ "url": uri }));
        if sign_up {
            self.m.click("#toggle");
        }
        self.m.type_into("#email", email);
        self.m.type_into("#password", password);
        self.m.click("#submit");
        let (state, text) = self.m.wait_state("signed-in");
        assert_eq!(state, "signed-in", "the sign-in page says: {text}");
    }

    /// Syncs until bookmarks, history, passwords, tabs and clients have each synced once
    /// without error.
    pub fn sync(&mut self) -> Value {
        self.sync_engines(&["bookmarks", "history", "passwords", "tabs", "clients"])
    }

    /// Syncs until each of `engines` has synced once without error (an engine with
    /// nothing to upload or download, passwords say, may not count a sync).
    pub fn sync_engines(&mut self, engines: &[&str]) -> Value {
        self.m.context("chrome");
        let deadline = Instant::now() + Duration::from_secs(150);
        loop {
            let v = self.m.js(
                r#"const { Weave } = ChromeUtils.importESModule("resource://services-sync/main.sys.mjs");
                   const { getFxAccountsSingleton } = ChromeUtils.importESModule("resource://gre/modules/FxAccounts.sys.mjs");
                   return (async () => {
                     const user = await getFxAccountsSingleton().getSignedInUser();
                     if (!user || !user.verified) return { user: null };
                     await Weave.Service.sync({ why: "user" });
                     const last = {};
                     for (const name of ["bookmarks", "history", "passwords", "tabs"]) {
                       const engine = Weave.Service.engineManager.get(name);
                       last[name] = engine && engine.enabled ? Number(await engine.getLastSync()) : null;
                     }
                     last.clients = Number(await Weave.Service.clientsEngine.getLastSync());
                     return { user: user.email, login: Weave.Status.login, service: Weave.Status.service,
                              sync: Weave.Status.sync, last };
                   })();"#,
                json!([]),
            );
            let done = v["sync"] == "success.sync"
                && v["service"] == "success.status_ok"
                && engines.iter().all(|e| v["last"][*e].as_f64().is_some_and(|t| t > 0.0));
            if done {
                return v;
            }
            assert!(Instant::now() < deadline, "Firefox did not sync: {v}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    pub fn quit(mut self) {
        let _ = self.m.cmd("Marionette:Quit", json!({ "flags": ["eForceQuit"] }));
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Firefox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn firefox_binary() -> PathBuf {
    std::env::var_os("SYNCSTEAD_TEST_FIREFOX").map_or_else(|| PathBuf::from("firefox-esr"), PathBuf::from)
}
