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

use std::path::Path;

use common::browser::Firefox;
use common::*;
use serde_json::{json, Value};

const EMAIL: &str = "firefox@example.org";
const PASSWORD: &str = "first password of the test";
const NEW_PASSWORD: &str = "second password of the test";
const BOOKMARK: &str = "https://example.org/syncstead/bookmark";
const VISIT: &str = "https://example.org/syncstead/visit";
const LOGIN_ORIGIN: &str = "https://login.example.org";

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
    ff.sign_in(EMAIL, PASSWORD, true);
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
    let (state, text) = ff.m.wait_state("changed");
    assert_eq!(state, "changed", "the page says: {text}");
    // The change signed every device out; this one signs in again, as its user would, and
    // its device (which the second profile's list of tabs goes by) comes back.
    ff.sign_in(EMAIL, NEW_PASSWORD, false);
    ff.sync();
    ff.quit();
}

fn second_profile(dir: &Path, base: &str) -> Value {
    let mut ff = Firefox::start(&dir.join("second"), base);
    ff.sign_in(EMAIL, NEW_PASSWORD, false);
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
