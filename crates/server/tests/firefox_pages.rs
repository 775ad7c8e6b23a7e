//! The account holder's page and the operator's page, clicked through in a real Firefox
//! (Debian's `firefox-esr`, headless, over Marionette), on the suite's backend. Each step
//! leaves a screenshot in `target/tmp/screenshots/`. Named `firefox_*`: scripts/test
//! reports them as skipped where no `firefox-esr` is installed; CI installs it.
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

mod common;

use common::accounts::*;
use common::browser::Firefox;
use common::*;
use data_encoding::HEXLOWER;
use reqwest::Method;
use serde_json::json;
use syncstead_server::accounts::onepw;

const EMAIL: &str = "pages@example.org";
const FIRST: &str = "the first password here";
const SECOND: &str = "the second password here";
const BOOKMARK: &str = "https://example.org/syncstead/page-test";
const ADMIN_TOKEN: &str = "an-admin-token-for-the-browser";

fn count_devices(ff: &mut Firefox) -> u64 {
    ff.m.js(
        "return document.querySelectorAll('#devices li[data-id]').length;",
        json!([]),
    )
    .as_u64()
    .unwrap()
}

/// Opens /settings in the current tab and signs in there by typing.
fn open_account_page(ff: &mut Firefox, base: &str, password: &str) {
    ff.m.context("content");
    ff.m.cmd("WebDriver:Navigate", json!({ "url": format!("{base}/settings") }));
    ff.m.type_into("#email", EMAIL);
    ff.m.type_into("#password", password);
    ff.m.click("#submit");
    let (state, text) = ff.m.wait_state("settings");
    assert_eq!(state, "settings", "the page says: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firefox_account_page_manages_devices_the_password_and_deletion() {
    let s = open_server().await;
    let base = s.base.clone();
    let profiles = s.dir.path().join("profiles");
    tokio::task::spawn_blocking(move || {
        // A first Firefox signs up, syncs a bookmark, and its owner opens the account page.
        let mut a = Firefox::start(&profiles.join("a"), &base);
        a.m.context("chrome");
        a.m.js(
            r#"const { PlacesUtils } = ChromeUtils.importESModule("resource://gre/modules/PlacesUtils.sys.mjs");
               return PlacesUtils.bookmarks.insert({ parentGuid: PlacesUtils.bookmarks.toolbarGuid,
                                                     url: arguments[0], title: "Page test" }).then(() => 1);"#,
            json!([BOOKMARK]),
        );
        a.sign_in(EMAIL, FIRST, true);
        a.sync_engines(&["bookmarks", "clients"]);
        open_account_page(&mut a, &base, FIRST);
        assert_eq!(count_devices(&mut a), 1, "the Firefox that signed in");
        a.m.screenshot("account-page");

        // Rename the device by typing its new name.
        let name = a.m.element("#devices li[data-id] .device-name");
        a.m.cmd("WebDriver:ElementClear", json!({ "id": name }));
        a.m.type_into("#devices li[data-id] .device-name", "Work laptop");
        a.m.click("#devices li[data-id] .rename");
        let (state, text) = a.m.wait_state("renamed");
        assert_eq!(state, "renamed", "{text}");
        let shown = a.m.js(
            "return document.querySelector('#devices .device-name').value;",
            json!([]),
        );
        assert_eq!(shown, "Work laptop", "the list is read back from the server");
        a.m.screenshot("account-page-renamed");

        // Change the password.
        a.m.type_into("#pw-current", FIRST);
        a.m.type_into("#pw-new", SECOND);
        a.m.click("#pw-submit");
        let (state, text) = a.m.wait_state("changed");
        assert_eq!(state, "changed", "{text}");
        a.m.screenshot("account-page-password-changed");
        a.quit();

        // A second device signs in with the new password and still decrypts the data.
        let mut b = Firefox::start(&profiles.join("b"), &base);
        b.sign_in(EMAIL, SECOND, false);
        b.sync_engines(&["bookmarks", "clients"]);
        b.m.context("chrome");
        let title = b.m.js(
            r#"const { PlacesUtils } = ChromeUtils.importESModule("resource://gre/modules/PlacesUtils.sys.mjs");
               return PlacesUtils.bookmarks.fetch({ url: arguments[0] }).then(b => b && b.title);"#,
            json!([BOOKMARK]),
        );
        assert_eq!(
            title, "Page test",
            "the bookmark synced before the change, decrypted after it"
        );

        // Remove the first device from the account page.
        open_account_page(&mut b, &base, SECOND);
        assert_eq!(count_devices(&mut b), 2);
        b.m.js(
            r#"const li = [...document.querySelectorAll('#devices li[data-id]')]
                 .find(li => li.querySelector('.device-name').value === 'Work laptop');
               li.querySelector('.remove').id = 'remove-work-laptop';"#,
            json!([]),
        );
        b.m.click("#remove-work-laptop");
        let (state, text) = b.m.wait_state("removed");
        assert_eq!(state, "removed", "{text}");
        assert_eq!(count_devices(&mut b), 1);
        b.m.screenshot("account-page-device-removed");

        // Delete the account.
        b.m.type_into("#delete-password", SECOND);
        b.m.click("#delete-confirm");
        b.m.click("#delete-submit");
        let (state, text) = b.m.wait_state("deleted");
        assert_eq!(state, "deleted", "{text}");
        b.m.screenshot("account-page-deleted");
        b.quit();
    })
    .await
    .unwrap();
    let keys = onepw::stretch(EMAIL, SECOND);
    let body = json!({"email": EMAIL, "authPW": HEXLOWER.encode(&keys.auth_pw)});
    assert_errno(
        &call(&s, Method::POST, "/v1/account/login", None, Some(body)).await,
        400,
        102,
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firefox_admin_page_lists_disables_and_invites() {
    let s = TestServer::start_with(|l| l.admin_token = Some(ADMIN_TOKEN.into())).await;
    page_sign_in_closed(&s, "listed@example.org").await;
    let base = s.base.clone();
    let profile = s.dir.path().join("admin-profile");
    let code = tokio::task::spawn_blocking(move || {
        let mut ff = Firefox::start(&profile, &base);
        ff.m.context("content");
        ff.m.cmd("WebDriver:Navigate", json!({ "url": format!("{base}/admin") }));
        ff.m.type_into("#token", ADMIN_TOKEN);
        ff.m.click("#token-submit");
        let (state, text) = ff.m.wait_state("ready");
        assert_eq!(state, "ready", "{text}");
        let row = "tr[data-email='listed@example.org']";
        let shown = ff.m.js(
            &format!("return document.querySelector(\"{row} .state\").textContent;"),
            json!([]),
        );
        assert_eq!(shown, "active");
        ff.m.screenshot("admin-page");

        ff.m.click(&format!("{row} .disable"));
        let (state, text) = ff.m.wait_state("done");
        assert_eq!(state, "done", "{text}");
        let shown = ff.m.js(
            &format!("return document.querySelector(\"{row} .state\").textContent;"),
            json!([]),
        );
        assert_eq!(shown, "disabled");
        ff.m.screenshot("admin-page-disabled");

        ff.m.type_into("#invite-email", "invited@example.org");
        // The page still says "done" from the disable: clear it before the click.
        ff.m.js("document.body.dataset.state = 'inviting';", json!([]));
        ff.m.click("#invite-submit");
        let (state, text) = ff.m.wait_state("done");
        assert_eq!(state, "done", "{text}");
        ff.m.screenshot("admin-page-invited");
        let code =
            ff.m.js("return document.getElementById('invite-code').textContent;", json!([]));
        ff.quit();
        code.as_str().unwrap().to_string()
    })
    .await
    .unwrap();
    // What the page did, seen from outside: the listed account is refused, the invited
    // one's owner sets a password with the code.
    let keys = onepw::stretch("listed@example.org", PASSWORD);
    let body = json!({"email": "listed@example.org", "authPW": HEXLOWER.encode(&keys.auth_pw)});
    assert_errno(
        &call(&s, Method::POST, "/v1/account/login", None, Some(body)).await,
        400,
        127,
    );
    let fresh = onepw::stretch("invited@example.org", "set by the invited");
    let body = json!({"email": "invited@example.org", "code": code, "authPW": HEXLOWER.encode(&fresh.auth_pw)});
    assert_eq!(
        call(&s, Method::POST, "/v1/account/reset", None, Some(body))
            .await
            .status,
        200
    );
    s.stop().await;
}

/// An account made as `syncstead account add` makes it (registration is closed here).
async fn page_sign_in_closed(s: &TestServer, email: &str) {
    let r = send(
        s.http
            .post(format!("{}/admin/api/accounts/invite", s.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"email": email})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let fresh = onepw::stretch(email, PASSWORD);
    let body = json!({"email": email, "code": r.json()["code"], "authPW": HEXLOWER.encode(&fresh.auth_pw)});
    assert_eq!(
        call(s, Method::POST, "/v1/account/reset", None, Some(body))
            .await
            .status,
        200
    );
}
