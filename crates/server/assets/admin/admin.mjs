// The operator's page: each button calls /admin/api, the same operations as the
// `syncstead account|user` commands (docs/admin.md).
const $ = (id) => document.getElementById(id);
const KEY = "syncstead.admin";

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function api(path, body) {
  const res = await fetch(`/admin/api${path}`, {
    method: body === undefined ? "GET" : "POST",
    headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY)}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await res.json().catch(() => ({}));
  if (!res.ok) {
    const e = new Error(json.error || `the server answered ${res.status}`);
    e.status = res.status;
    throw e;
  }
  return json;
}

function cell(tr, text, className) {
  const td = document.createElement("td");
  td.textContent = text ?? "—";
  if (className) td.className = className;
  tr.append(td);
  return td;
}

function bytes(n) {
  if (n === null || n === undefined) return "—";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function button(label, className, action) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.className = className;
  b.addEventListener("click", () => run(action));
  return b;
}

/** Runs an action, then shows everything afresh; the page's state says what happened. */
async function run(action) {
  for (const b of document.querySelectorAll("button")) b.disabled = true;
  try {
    const done = await action();
    await load();
    if (done) {
      status(done);
      document.body.dataset.state = "done";
    }
  } catch (e) {
    status(e.message, true);
    document.body.dataset.state = "error";
    if (e.status === 401) {
      sessionStorage.removeItem(KEY);
      $("panel").hidden = true;
      $("login").hidden = false;
    }
  } finally {
    for (const b of document.querySelectorAll("button")) b.disabled = false;
  }
}

function fill(id, rows, render) {
  const body = $(id);
  body.replaceChildren();
  if (!rows.length) {
    const tr = document.createElement("tr");
    cell(tr, "none", "muted");
    body.append(tr);
  }
  for (const r of rows) {
    const tr = document.createElement("tr");
    render(tr, r);
    body.append(tr);
  }
}

async function load() {
  const [o, accounts, weave, users, allowed] = await Promise.all([
    api("/overview"),
    api("/accounts"),
    api("/weave-users"),
    api("/token-users"),
    api("/allowed"),
  ]);
  $("login").hidden = true;
  $("panel").hidden = false;
  const facts = [
    ["Version", o.version],
    ["Database", o.health.database],
    ["Maintenance mode", o.health.maintenance ? "on" : "off"],
    ["Syncstead accounts", o.policy.accounts ? "on" : "off"],
    ["Registration", o.policy.account_registration],
    ["Most accounts", o.policy.max_identities ?? "no limit"],
    ["Mozilla accounts", o.policy.mozilla_accounts ? "accepted" : "refused"],
    ["Token server", o.policy.token_server ? "on" : "off"],
  ];
  if (o.store) {
    facts.push(["Storage users", o.store.users], ["Database size", bytes(o.store.database_bytes)], ["Batches open", o.store.active_batches]);
  }
  fill("overview", facts, (tr, [k, v]) => {
    cell(tr, k);
    cell(tr, String(v), v === "Ok" ? "ok" : v === "Err" ? "bad" : "");
  });
  fill("accounts", accounts, (tr, a) => {
    tr.dataset.email = a.email;
    cell(tr, a.email);
    cell(tr, a.uid, "muted");
    cell(tr, a.disabled ? "disabled" : "active", a.disabled ? "bad" : "ok").className += " state";
    cell(tr, bytes(a.storage_bytes), "num");
    const td = cell(tr, "");
    td.textContent = "";
    td.append(
      a.disabled
        ? button("Enable", "enable", async () => (await api(`/accounts/${a.uid}/enable`, {}), `Enabled ${a.email}.`))
        : button("Disable", "disable", async () => (await api(`/accounts/${a.uid}/disable`, {}), `Disabled ${a.email}; its devices are signed out.`)),
      " ",
      button("Delete", "danger delete", async () => {
        if (!confirm(`Delete ${a.email} and all of its Sync data?`)) return null;
        await api(`/accounts/${a.uid}/delete`, {});
        return `Deleted ${a.email} and its data.`;
      }),
    );
  });
  fill("weave", weave, (tr, u) => {
    tr.dataset.username = u.username;
    cell(tr, u.username);
    cell(tr, u.email);
    cell(tr, u.disabled ? "disabled" : "active", u.disabled ? "bad" : "ok");
    cell(tr, bytes(u.storage_bytes), "num");
    const td = cell(tr, "");
    td.textContent = "";
    td.append(
      button(u.disabled ? "Enable" : "Disable", u.disabled ? "enable" : "disable", async () => {
        await api(`/weave-users/${u.username}/${u.disabled ? "enable" : "disable"}`, {});
        return `${u.disabled ? "Enabled" : "Disabled"} ${u.username}.`;
      }),
      " ",
      button("Delete", "danger delete", async () => {
        if (!confirm(`Delete ${u.username} and its data?`)) return null;
        await api(`/weave-users/${u.username}/delete`, {});
        return `Deleted ${u.username}.`;
      }),
    );
  });
  fill("token-users", users, (tr, u) => {
    cell(tr, u.email);
    cell(tr, String(u.uid), "num");
    cell(tr, u.node);
    cell(tr, bytes(u.storage_bytes), "num");
  });
  fill("allowed", allowed, (tr, uid) => {
    cell(tr, uid);
    const td = cell(tr, "");
    td.textContent = "";
    td.append(button("Remove", "danger", async () => (await api("/allowed", { fxa_uid: uid, allow: false }), `Removed ${uid}.`)));
  });
  fill("nodes", o.nodes, (tr, n) => {
    cell(tr, n.url);
    cell(tr, String(n.current_load), "num");
    cell(tr, String(n.capacity), "num");
    cell(tr, n.downed ? "down" : n.backoff ? "backing off" : "up", n.downed ? "bad" : "ok");
  });
  const metrics = o.metrics_enabled ? o.metrics : [["metrics", "off: set metrics_listen to collect them"]];
  fill("metrics", metrics, (tr, [k, v]) => {
    cell(tr, k);
    cell(tr, v, "num");
  });
  document.body.dataset.state = "ready";
}

$("login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY, $("token").value);
  run(async () => null);
});
$("invite-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  run(async () => {
    const r = await api("/accounts/invite", { email: $("invite-email").value.trim() });
    const p = $("invite-result");
    p.hidden = false;
    p.replaceChildren("Give ", r.email, " this code: ");
    const code = document.createElement("code");
    code.id = "invite-code";
    code.textContent = r.code;
    p.append(code, ` (one use, 24 hours), to enter with a new password at ${r.link}`);
    $("invite-form").reset();
    return `Invited ${r.email}.`;
  });
});
$("allow-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  run(async () => {
    const uid = $("allow-uid").value.trim();
    await api("/allowed", { fxa_uid: uid, allow: true });
    $("allow-form").reset();
    return `Allowed ${uid}.`;
  });
});
if (sessionStorage.getItem(KEY)) run(async () => null);
