//! Real Firefox against the real server (docs/accounts.md): Debian's `firefox-esr`,
//! headless, driven over Marionette, the remote protocol built into Firefox. A first
//! profile gets a bookmark, a visit, a saved login and an open tab, signs up on
//! Syncstead's sign-in page (typing the e-mail and password), syncs, and changes its
//! password on the page; a second, fresh profile signs in with the new password and must
//! receive all four. That proves the whole chain: discovery, onepw in the page, the
//! WebChannel, OAuth with `keys_jwe`, the token server, storage — and that a password
//! change keeps kB, since the second profile decrypts what the first encrypted before it.
//!
//! Runs on the suite's backend (SQLite, and PostgreSQL on the PostgreSQL run). Named
//! `firefox_*` so that scripts/test leaves it out, reported as skipped, where no
//! `firefox-esr` is installed; CI installs it (.ci/run).
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const EMAIL: &str = "firefox@example.org";
const PASSWORD: &str = "first password of the test";
const NEW_PASSWORD: &str = "second password of the test";
const BOOKMARK: &str = "https://example.org/syncstead/bookmark";
const VISIT: &str = "https://example.org/syncstead/visit";
const LOGIN_ORIGIN: &str = "https://login.example.org";

/// A minimal Marionette client: length-prefixed JSON, `[0, id, command, params]` out,
/// `[1, id, error, result]` back.
struct Marionette {
    stream: BufReader<TcpStream>,
    next: u64,
}

impl Marionette {
    fn connect(port: u16) -> Marionette {
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

    fn read(&mut self) -> Value {
        let mut len = Vec::new();
        self.stream.read_until(b':', &mut len).unwrap();
        let len: usize = std::str::from_utf8(&len[..len.len() - 1]).unwrap().parse().unwrap();
        let mut body = vec![0; len];
        self.stream.read_exact(&mut body).unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    fn cmd(&mut self, name: &str, params: Value) -> Value {
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

    fn context(&mut self, which: &str) {
        self.cmd("Marionette:SetContext", json!({ "value": which }));
    }

    /// Runs `script` (a function body; a returned promise is awaited) in the current context.
    fn js(&mut self, script: &str, args: Value) -> Value {
        self.cmd("WebDriver:ExecuteScript", json!({ "script": script, "args": args }))["value"].clone()
    }

    fn element(&mut self, css: &str) -> String {
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

    fn type_into(&mut self, css: &str, text: &str) {
        let id = self.element(css);
        self.cmd("WebDriver:ElementSendKeys", json!({ "id": id, "text": text }));
    }

    fn click(&mut self, css: &str) {
        let id = self.element(css);
        self.cmd("WebDriver:ElementClick", json!({ "id": id }));
    }

    /// Waits for the page's `data-state` to leave "busy"; answers it with the status text.
    fn page_outcome(&mut self) -> (String, String) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let v = self.js(
                "return [document.body.dataset.state || '', document.getElementById('status').textContent];",
                json!([]),
            );
            let state = v[0].as_str().unwrap().to_string();
            if !(state.is_empty() || state == "busy") || Instant::now() > deadline {
                return (state, v[1].as_str().unwrap().to_string());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// A headless Firefox on a profile of its own, ended when dropped.
struct Firefox {
    child: Child,
    m: Marionette,
}

impl Firefox {
    fn start(profile: &Path, server: &str) -> Firefox {
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
    fn sign_in(&mut self, password: &str, sign_up: bool) {
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
        self.m.type_into("#email", EMAIL);
        self.m.type_into("#password", password);
        self.m.click("#submit");
        let (state, text) = self.m.page_outcome();
        assert_eq!(state, "signed-in", "the sign-in page says: {text}");
    }

    /// Syncs until every engine the test looks at has synced once without error.
    fn sync(&mut self) -> Value {
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
                && v["last"]
                    .as_object()
                    .is_some_and(|l| l.values().all(|t| t.as_f64().is_some_and(|t| t > 0.0)));
            if done {
                return v;
            }
            assert!(Instant::now() < deadline, "Firefox did not sync: {v}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn quit(mut self) {
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

fn firefox_binary() -> PathBuf {
    std::env::var_os("SYNCSTEAD_TEST_FIREFOX").map_or_else(|| PathBuf::from("firefox-esr"), PathBuf::from)
}

fn first_profile(dir: &Path, base: &str) {
    let mut ff = Firefox::start(&dir.join("first"), base);
    ff.m.context("chrome");
    ff.m.js(
        r#"const [bookmark, visit, origin] = arguments;
           const { PlacesUtils } = ChromeUtils.importESModule("resource://gre/modules/PlacesUtils.sys.mjs");
           return (async () => {
             await PlacesUtils.bookmarks.insert({ parentGuid: PlacesUtils.bookmarks.toolbarGuid,
                                                  url: bookmark, title: "Syncstead bookmark" });
             await PlacesUtils.history.insert({ url: visit, title: "Syncstead visit",
                                                visits: [{ date: new Date() }] });
             const login = Cc["@mozilla.org/login-manager/loginInfo;1"].createInstance(Ci.nsILoginInfo);
             login.init(origin, origin, null, "ada", "s3cret", "user", "pass");
             await Services.logins.addLoginAsync(login);
           })();"#,
        json!([BOOKMARK, VISIT, LOGIN_ORIGIN]),
    );
    // An open tab for the tabs engine, beside the one the sign-in page uses.
    ff.m.context("content");
    let tab = ff.m.cmd("WebDriver:NewWindow", json!({ "type": "tab" }));
    let handle = tab["handle"].as_str().unwrap().to_string();
    let sign_in_tab = ff.m.cmd("WebDriver:GetWindowHandle", json!({}))["value"].clone();
    ff.m.cmd("WebDriver:SwitchToWindow", json!({ "handle": handle }));
    ff.m.cmd(
        "WebDriver:Navigate",
        json!({ "url": format!("{base}/accounts/avatar.svg?open-tab") }),
    );
    ff.m.cmd("WebDriver:SwitchToWindow", json!({ "handle": sign_in_tab }));
    ff.sign_in(PASSWORD, true);
    let synced = ff.sync();
    assert_eq!(synced["user"], EMAIL, "{synced}");
    // The password changes on the page; the data the profile uploaded stays readable.
    ff.m.context("content");
    ff.m.cmd(
        "WebDriver:Navigate",
        json!({ "url": format!("{base}/settings/change_password") }),
    );
    ff.m.type_into("#email", EMAIL);
    ff.m.type_into("#password", PASSWORD);
    ff.m.type_into("#new-password", NEW_PASSWORD);
    ff.m.click("#submit");
    let (state, text) = ff.m.page_outcome();
    assert_eq!(state, "changed", "the page says: {text}");
    // The change signed every device out; this one signs in again, as its user would, and
    // its device (which the second profile's list of tabs goes by) comes back.
    ff.sign_in(NEW_PASSWORD, false);
    ff.sync();
    ff.quit();
}

fn second_profile(dir: &Path, base: &str) -> Value {
    let mut ff = Firefox::start(&dir.join("second"), base);
    ff.sign_in(NEW_PASSWORD, false);
    ff.sync();
    ff.m.context("chrome");
    let got = ff.m.js(
        r#"const [bookmark, visit, origin] = arguments;
           const { PlacesUtils } = ChromeUtils.importESModule("resource://gre/modules/PlacesUtils.sys.mjs");
           const { SyncedTabs } = ChromeUtils.importESModule("resource://services-sync/SyncedTabs.sys.mjs");
           return (async () => {
             const b = await PlacesUtils.bookmarks.fetch({ url: bookmark });
             const logins = await Services.logins.searchLoginsAsync({ origin });
             const clients = await SyncedTabs.getTabClients();
             return {
               bookmark: b ? b.title : null,
               visited: await PlacesUtils.history.hasVisits(visit),
               logins: logins.map(l => `${l.username}:${l.password}`),
               tabs: clients.flatMap(c => c.tabs.map(t => t.url)),
             };
           })();"#,
        json!([BOOKMARK, VISIT, LOGIN_ORIGIN]),
    );
    ff.quit();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firefox_signs_up_syncs_and_a_second_profile_receives_the_data() {
    let s = TestServer::start_with(|l| l.account_registration = Some("open".into())).await;
    let base = s.base.clone();
    let profiles = s.dir.path().join("profiles");
    let got = tokio::task::spawn_blocking(move || {
        first_profile(&profiles, &base);
        second_profile(&profiles, &base)
    })
    .await
    .unwrap();
    assert_eq!(got["bookmark"], "Syncstead bookmark", "{got}");
    assert_eq!(got["visited"], true, "{got}");
    assert_eq!(got["logins"], json!(["ada:s3cret"]), "{got}");
    let tab = format!("{}/accounts/avatar.svg?open-tab", s.base);
    assert!(
        got["tabs"].as_array().unwrap().iter().any(|t| t == &json!(tab)),
        "the first profile's open tab: {got}"
    );
    s.stop().await;
}
