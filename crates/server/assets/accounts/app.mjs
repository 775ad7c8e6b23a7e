// The sign-in page: onepw with this server, then the WebChannel conversation with
// Firefox (`account_updates`): fxa_status, can_link_account, login, oauth_login.
import * as onepw from "/accounts/onepw.mjs";

const CHANNEL = "account_updates";
const REDIRECT = "urn:ietf:wg:oauth:2.0:oob:oauth-redirect-webchannel";
const params = new URLSearchParams(location.search);
const IOS = / FxiOS\//.test(navigator.userAgent);
const $ = (id) => document.getElementById(id);
let signUp = location.pathname === "/signup";
let changing = location.pathname === "/settings/change_password";
const view = location.pathname === "/reset_password" ? "reset" : location.pathname === "/settings" ? "settings" : "signin";

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
  document.body.dataset.state = error ? "error" : text ? "busy" : "";
}

// ---- WebChannel ----------------------------------------------------------------------
const pending = new Map();
let nextId = 1;
window.addEventListener("WebChannelMessageToContent", (e) => {
  const detail = typeof e.detail === "string" ? JSON.parse(e.detail) : e.detail;
  if (!detail || detail.id !== CHANNEL) return;
  const waiter = pending.get(detail.message && detail.message.messageId);
  if (waiter) {
    pending.delete(detail.message.messageId);
    waiter(detail.message.data);
  }
});

/** Sends a command; with `wait` ms, resolves with the reply or null when none came. */
function send(command, data, wait = 0) {
  const messageId = String(nextId++);
  const reply = wait
    ? new Promise((resolve) => {
        pending.set(messageId, resolve);
        setTimeout(() => pending.delete(messageId) && resolve(null), wait);
      })
    : Promise.resolve(null);
  // Firefox desktop and Android take only a string detail; Firefox for iOS reads an object.
  const message = { id: CHANNEL, message: { command, data, messageId } };
  window.dispatchEvent(
    new CustomEvent("WebChannelMessageToChrome", { detail: IOS ? message : JSON.stringify(message) }),
  );
  return reply;
}

// ---- the account server ----------------------------------------------------------------
async function api(path, body, token) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const res = await fetch(`/v1${path}`, {
    method: body === undefined ? "GET" : "POST",
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await res.json().catch(() => ({}));
  if (!res.ok) {
    const e = new Error(json.message || `the server answered ${res.status}`);
    e.errno = json.errno;
    throw e;
  }
  return json;
}

function explain(e) {
  switch (e.errno) {
    case 102: return "There is no account with this e-mail address here.";
    case 103: return "The password is not right.";
    case 101: return "An account with this e-mail address exists: sign in instead.";
    case 114: return "Too many attempts: wait a few minutes and try again.";
    case 127: return "This account is disabled. Ask the server's operator.";
    case 105: return "The reset code is wrong, used or expired.";
    case 123: return "That device is gone already.";
    default: return e.message;
  }
}

function needCrypto() {
  if (!globalThis.crypto || !globalThis.crypto.subtle) {
    throw new Error("This page needs HTTPS (or localhost): the browser offers no WebCrypto here.");
  }
}

/** kB, from a key-fetch token and the password's unwrapBKey. */
async function fetchKb(keyFetchToken, unwrapBKey) {
  const { bundle } = await api("/account/keys", undefined, `fxk_${keyFetchToken}`);
  const fetchKeys = await onepw.tokenKeys(onepw.fromHex(keyFetchToken), "keyFetchToken");
  const { wrapKb } = await onepw.openBundle(fetchKeys.bundleKey, onepw.fromHex(bundle));
  return onepw.unwrapKb(wrapKb, unwrapBKey);
}

/**
 * A password (or e-mail) change keeps kB: unwrapped with the old password, wrapped again
 * with the new one (onepw salts with the e-mail, so a new address re-wraps too). Every
 * session ends; the answer carries a new one for this page.
 */
async function changeCredentials(email, oldPassword, newPassword, newEmail) {
  needCrypto();
  status("Checking your password…");
  const old = await onepw.stretch(email, oldPassword);
  const start = await api("/password/change/start", { email, oldAuthPW: onepw.toHex(old.authPW) });
  const kB = await fetchKb(start.keyFetchToken, old.unwrapBKey);
  status("Wrapping your key again…");
  const fresh = await onepw.stretch(newEmail || email, newPassword);
  const body = { authPW: onepw.toHex(fresh.authPW), wrapKb: onepw.toHex(onepw.wrapKb(kB, fresh.unwrapBKey)) };
  if (newEmail) body.email = newEmail;
  return api("/password/change/finish", body, `fxp_${start.passwordChangeToken}`);
}

async function changePassword(email, oldPassword, newPassword) {
  await changeCredentials(email, oldPassword, newPassword);
  status("Password changed. Your synced data is kept; each device asks for the new password once.");
  document.body.dataset.state = "changed";
}

// ---- the account page (/settings) --------------------------------------------------------
const SESSION_KEY = "syncstead.session";
const EMAIL_KEY = "syncstead.email";
const pageSession = () => sessionStorage.getItem(SESSION_KEY);

function remember(email, sessionToken) {
  sessionStorage.setItem(SESSION_KEY, sessionToken);
  sessionStorage.setItem(EMAIL_KEY, email);
}

async function settingsSignIn(email, password) {
  needCrypto();
  status("Checking your password…");
  const { authPW } = await onepw.stretch(email, password);
  const session = await api("/account/login", { email, authPW: onepw.toHex(authPW) });
  remember(email, session.sessionToken);
  await showSettings();
}

async function showSettings(done = "", message = "") {
  const token = pageSession();
  const email = sessionStorage.getItem(EMAIL_KEY);
  let devices;
  try {
    devices = await api("/account/devices", undefined, `fxs_${token}`);
  } catch (e) {
    sessionStorage.removeItem(SESSION_KEY);
    render();
    throw e;
  }
  for (const id of ["form", "toggle", "change", "forgot", "intro"]) $(id).hidden = true;
  $("settings").hidden = false;
  $("title").textContent = "Your account";
  $("account-email").textContent = email;
  const list = $("devices");
  list.replaceChildren();
  if (!devices.length) {
    const li = document.createElement("li");
    li.textContent = "No device is signed in.";
    list.append(li);
  }
  for (const d of devices) {
    const li = document.createElement("li");
    li.dataset.id = d.id;
    const name = document.createElement("input");
    name.value = d.name;
    name.className = "device-name";
    name.setAttribute("aria-label", "Device name");
    const rename = document.createElement("button");
    rename.type = "button";
    rename.className = "small rename";
    rename.textContent = "Rename";
    rename.addEventListener("click", () =>
      act(async () => {
        await api("/account/device", { id: d.id, name: name.value.trim() }, `fxs_${pageSession()}`);
        await showSettings("renamed", `Renamed to “${name.value.trim()}”.`);
      }),
    );
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "small danger remove";
    remove.textContent = "Remove";
    remove.addEventListener("click", () =>
      act(async () => {
        await api("/account/device/destroy", { id: d.id }, `fxs_${pageSession()}`);
        await showSettings("removed", `${d.name || "The device"} is signed out.`);
      }),
    );
    li.append(name, rename, remove);
    list.append(li);
  }
  status(message);
  document.body.dataset.state = done || "settings";
}

/** Runs an account-page action with the buttons held and its error shown. */
async function act(f) {
  for (const b of document.querySelectorAll("button")) b.disabled = true;
  try {
    await f();
  } catch (e) {
    status(explain(e), true);
  } finally {
    for (const b of document.querySelectorAll("button")) b.disabled = false;
  }
}

$("pw-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  act(async () => {
    const email = sessionStorage.getItem(EMAIL_KEY);
    const answer = await changeCredentials(email, $("pw-current").value, $("pw-new").value);
    remember(email, answer.sessionToken);
    $("pw-form").reset();
    await showSettings("changed", "Password changed. Your synced data is kept; each device asks for the new password once.");
  });
});

$("email-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  act(async () => {
    const email = sessionStorage.getItem(EMAIL_KEY);
    const newEmail = $("new-email").value.trim().toLowerCase();
    const answer = await changeCredentials(email, $("email-password").value, $("email-password").value, newEmail);
    remember(newEmail, answer.sessionToken);
    $("email-form").reset();
    await showSettings("email-changed", `Your account is now ${newEmail}. Each device asks for the password once.`);
  });
});

$("delete-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  act(async () => {
    const email = sessionStorage.getItem(EMAIL_KEY);
    const { authPW } = await onepw.stretch(email, $("delete-password").value);
    await api("/account/destroy", { email, authPW: onepw.toHex(authPW) }, `fxs_${pageSession()}`);
    sessionStorage.clear();
    $("settings").hidden = true;
    $("title").textContent = "Account deleted";
    status("The account and all of its Sync data are deleted from this server.");
    document.body.dataset.state = "deleted";
  });
});

$("signout").addEventListener("click", () =>
  act(async () => {
    await api("/session/destroy", {}, `fxs_${pageSession()}`).catch(() => {});
    sessionStorage.clear();
    location.reload();
  }),
);

// ---- a forgotten password (/reset_password) ----------------------------------------------
$("reset-send-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  act(async () => {
    await api("/password/forgot/send_code", { email: $("reset-email").value.trim().toLowerCase() });
    status("A code is on its way to that address. Enter it below with a new password.");
    document.body.dataset.state = "code-sent";
  });
});

$("reset-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  act(async () => {
    needCrypto();
    const email = $("reset-email").value.trim().toLowerCase();
    const { authPW } = await onepw.stretch(email, $("reset-password").value);
    await api("/account/reset", { email, code: $("reset-code").value.trim(), authPW: onepw.toHex(authPW) });
    $("reset").hidden = true;
    $("title").textContent = "Account reset";
    status("Done. Sign in to Sync again on each device with the new password; they upload what they have afresh.");
    document.body.dataset.state = "reset";
  });
});

async function signIn(email, password, invite) {
  const fromFirefox = params.get("context") === "oauth_webchannel_v1" || params.has("keys_jwk");
  needCrypto();
  if (fromFirefox) await send("fxaccounts:fxa_status", { service: "sync", context: params.get("context") }, 1000);
  status("Checking your password…");
  const { authPW, unwrapBKey } = await onepw.stretch(email, password);
  const body = { email, authPW: onepw.toHex(authPW) };
  if (signUp && invite) body.inviteCode = invite;
  const session = await api(signUp ? "/account/create?keys=true" : "/account/login?keys=true", body);
  status("Unlocking your keys…");
  const kB = await fetchKb(session.keyFetchToken, unwrapBKey);
  if (!fromFirefox) {
    status("Your password is right. To sync, open this page from Firefox: Settings, Sync, Sign in.");
    document.body.dataset.state = "verified";
    return;
  }
  const clientId = params.get("client_id");
  const scope = params.get("scope") || `${onepw.OLDSYNC_SCOPE} profile`;
  const keyData = await api("/account/scoped-key-data", { client_id: clientId, scope: onepw.OLDSYNC_SCOPE }, `fxs_${session.sessionToken}`);
  const rotation = keyData[onepw.OLDSYNC_SCOPE].keyRotationTimestamp;
  const keysJwe = await onepw.keysJwe(params.get("keys_jwk"), await onepw.scopedKeys(kB, rotation));
  const grant = await api(
    "/oauth/authorization",
    {
      client_id: clientId,
      state: params.get("state"),
      scope,
      access_type: params.get("access_type") || "offline",
      response_type: "code",
      code_challenge: params.get("code_challenge"),
      code_challenge_method: params.get("code_challenge_method") || "S256",
      keys_jwe: keysJwe,
      redirect_uri: params.get("redirect_uri") || undefined,
    },
    `fxs_${session.sessionToken}`,
  );
  // An app that watches for its redirect (older Firefox for iOS) takes the code from there.
  if (/^https:\/\//.test(grant.redirect)) {
    status("Signed in. Returning to Firefox…");
    document.body.dataset.state = "signed-in";
    location.assign(grant.redirect);
    return;
  }
  // No answer within half a second counts as consent, as Mozilla's page does.
  const link = await send("fxaccounts:can_link_account", { email, uid: session.uid }, 500);
  if (link && link.ok === false) throw new Error("Firefox declined to link this account.");
  // Only the fields Firefox knows: an unknown one makes it refuse a re-sign-in.
  send("fxaccounts:login", {
    email,
    uid: session.uid,
    sessionToken: session.sessionToken,
    verified: true,
    verifiedCanLinkAccount: true,
    services: { sync: { offeredEngines: [], declinedEngines: [] } },
  });
  send("fxaccounts:oauth_login", {
    code: grant.code,
    state: grant.state,
    action: signUp ? "signup" : "signin",
    redirect: REDIRECT,
    scope,
    offeredSyncEngines: [],
    declinedSyncEngines: [],
  });
  status("Signed in. Firefox is now syncing; you can close this tab.");
  document.body.dataset.state = "signed-in";
}

function render() {
  $("title").textContent = changing ? "Change your password" : signUp ? "Create a Sync account" : "Sign in to Sync";
  $("submit").textContent = changing ? "Change password" : signUp ? "Create account" : "Sign in";
  $("toggle").textContent = signUp ? "I have an account" : "Create an account";
  $("toggle").hidden = changing;
  $("change").hidden = changing || signUp;
  $("invite-row").hidden = !signUp || changing;
  $("new-row").hidden = !changing;
  $("new-password").required = changing;
  $("password-label").textContent = changing ? "Current password" : "Password";
  $("password").autocomplete = signUp ? "new-password" : "current-password";
}

$("toggle").addEventListener("click", () => {
  signUp = !signUp;
  render();
});
$("change").addEventListener("click", () => {
  changing = true;
  render();
});
$("form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("submit").disabled = true;
  try {
    const email = $("email").value.trim().toLowerCase();
    if (changing) await changePassword(email, $("password").value, $("new-password").value);
    else if (view === "settings") await settingsSignIn(email, $("password").value);
    else await signIn(email, $("password").value, $("invite").value.trim());
  } catch (e) {
    status(explain(e), true);
  } finally {
    $("submit").disabled = false;
  }
});
if (params.get("email")) $("email").value = params.get("email");
render();
if (view === "settings") {
  $("title").textContent = "Sign in to manage your account";
  $("toggle").hidden = true;
  $("change").hidden = true;
  if (pageSession()) showSettings().catch((e) => status(explain(e), true));
}
if (view === "reset") {
  for (const id of ["form", "toggle", "change", "forgot", "intro"]) $(id).hidden = true;
  $("title").textContent = "Forgot your password?";
  $("reset").hidden = false;
  if (params.get("email")) $("reset-email").value = params.get("email");
}
if (location.pathname.startsWith("/oauth/success/")) {
  $("form").hidden = true;
  $("toggle").hidden = true;
  $("change").hidden = true;
  $("title").textContent = "Signed in";
  status(params.get("code") ? "You are signed in. Go back to Firefox." : "Nothing to do here.");
  document.body.dataset.state = "signed-in";
}
