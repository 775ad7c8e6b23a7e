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

/** A password change keeps kB: unwrapped with the old password, wrapped again with the new. */
async function changePassword(email, oldPassword, newPassword) {
  needCrypto();
  status("Checking your password…");
  const old = await onepw.stretch(email, oldPassword);
  const start = await api("/password/change/start", { email, oldAuthPW: onepw.toHex(old.authPW) });
  const kB = await fetchKb(start.keyFetchToken, old.unwrapBKey);
  status("Wrapping your key with the new password…");
  const fresh = await onepw.stretch(email, newPassword);
  await api(
    "/password/change/finish",
    { authPW: onepw.toHex(fresh.authPW), wrapKb: onepw.toHex(onepw.wrapKb(kB, fresh.unwrapBKey)) },
    `fxp_${start.passwordChangeToken}`,
  );
  status("Password changed. Your synced data is kept; each device asks for the new password once.");
  document.body.dataset.state = "changed";
}

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
    else await signIn(email, $("password").value, $("invite").value.trim());
  } catch (e) {
    status(explain(e), true);
  } finally {
    $("submit").disabled = false;
  }
});
if (params.get("email")) $("email").value = params.get("email");
render();
if (location.pathname.startsWith("/oauth/success/")) {
  $("form").hidden = true;
  $("toggle").hidden = true;
  $("change").hidden = true;
  $("title").textContent = "Signed in";
  status(params.get("code") ? "You are signed in. Go back to Firefox." : "Nothing to do here.");
  document.body.dataset.state = "signed-in";
}
