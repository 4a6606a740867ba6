// Users and API tokens (admins): roles, disable/enable, password resets, tokens.
"use strict";

const USERS_TOAST = "pt-users-toast";

// Reload to show the change, with its toast shown after the reload.
function usersReload(message) {
  try { sessionStorage.setItem(USERS_TOAST, message); } catch (e) { /* private mode: no toast */ }
  location.reload();
}

// A secret (a new password or token), shown once with a copy button; resolves when closed.
function showSecret(title, intro, secret, id = "secret-value") {
  return new Promise((resolve) => {
    const d = document.createElement("dialog");
    d.className = "confirm secret";
    d.innerHTML = `<form method="dialog"><h2>${esc(title)}</h2><p>${intro}</p>`
      + `<div class="secret-box"><code id="${esc(id)}" class="secret-value">${esc(secret)}</code> <button type="button" class="secondary small" id="secret-copy">Copy</button></div>`
      + `<p class="muted small">It is shown only this once: it is not stored, only its hash is.</p>`
      + `<div class="row end"><button value="ok" class="primary" id="secret-done">Done</button></div></form>`;
    document.body.append(d);
    d.querySelector("#secret-copy").addEventListener("click", async () => {
      try { await navigator.clipboard.writeText(secret); PT.toast("copied"); }
      catch (e) { PT.toast("could not copy: select the text and copy it by hand", "error"); }
    });
    d.addEventListener("close", () => { d.remove(); resolve(); });
    d.showModal();
  });
}

const userPath = (name, tail) => `/users/${encodeURIComponent(name)}${tail}`;

async function changeRole(tr) {
  const name = tr.dataset.user, from = tr.dataset.role;
  const to = tr.querySelector(".user-role").value;
  if (to === from) { PT.toast(`${name} is already ${to}`); return; }
  if (from === "admin") {
    const self = tr.dataset.me === "true";
    const body = `<p><strong>${esc(name)}</strong> will no longer manage users or see the audit log.`
      + (self ? " That is you: you lose this page as soon as you confirm." : "") + "</p>";
    if (!(await PT.confirm(`Make ${name} ${to === "editor" ? "an" : "a"} ${to}?`, body, `Make ${to}`))) {
      tr.querySelector(".user-role").value = from;
      return;
    }
  }
  const r = await api("PUT", userPath(name, "/role"), { role: to });
  if (PT.report(r)) usersReload(`${name} is now ${r.data.role}`);
  else tr.querySelector(".user-role").value = from;
}

async function disableUser(tr) {
  const name = tr.dataset.user;
  const body = `<p><strong>${esc(name)}</strong> is logged out at once, their API tokens are revoked, and they cannot log in until an admin enables them again.</p>`;
  if (!(await PT.confirm(`Disable ${name}?`, body, "Disable"))) return;
  const r = await api("POST", userPath(name, "/disable"));
  if (PT.report(r)) usersReload(`${name} disabled`);
}

async function enableUser(tr) {
  const name = tr.dataset.user;
  const r = await api("POST", userPath(name, "/enable"));
  if (PT.report(r)) usersReload(`${name} can log in again (revoked tokens stay revoked)`);
}

async function resetPassword(tr) {
  const name = tr.dataset.user;
  const body = `<p>A new password is generated for <strong>${esc(name)}</strong> and shown to you once. Their current password stops working and they are logged out; their API tokens keep working.</p>`;
  if (!(await PT.confirm(`Reset ${name}'s password?`, body, "Reset password"))) return;
  const r = await api("POST", userPath(name, "/password-reset"));
  if (!PT.report(r)) return;
  await showSecret(`New password for ${name}`, "Give it to them through a safe channel:", r.data.password);
  usersReload(`password of ${name} reset`);
}

function initUsers() {
  const pending = (() => { try { return sessionStorage.getItem(USERS_TOAST); } catch (e) { return null; } })();
  if (pending) { try { sessionStorage.removeItem(USERS_TOAST); } catch (e) { /* ignore */ } PT.toast(pending); }

  const table = el("users-table");
  if (table) table.addEventListener("click", (ev) => {
    const b = ev.target.closest("button");
    const tr = b && b.closest("tr[data-user]");
    if (!tr) return;
    if (b.classList.contains("user-role-save")) changeRole(tr);
    else if (b.classList.contains("user-disable")) disableUser(tr);
    else if (b.classList.contains("user-enable")) enableUser(tr);
    else if (b.classList.contains("user-reset")) resetPassword(tr);
  });

  const form = el("user-form");
  if (form) form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const r = await api("POST", "/users", { username: f.get("username"), password: f.get("password"), role: f.get("role") });
    if (PT.report(r)) usersReload(`user ${r.data.username} (${r.data.role}) added`);
  });

  const tokens = el("token-form");
  if (tokens) tokens.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(tokens);
    const days = f.get("expires_days");
    const body = { name: f.get("name") };
    if (days) body.expires_days = Number(days);
    const r = await api("POST", userPath(f.get("username"), "/tokens"), body);
    if (!PT.report(r)) return;
    await showSecret(`API token for ${r.data.info.username}`, "Use it as <code>Authorization: Bearer …</code> or <code>PERSONATAG_TOKEN</code>:", r.data.token, "new-token");
    usersReload(`token ${r.data.info.name} created`);
  });

  const list = el("tokens-table");
  if (list) list.addEventListener("click", async (ev) => {
    const b = ev.target.closest("button.token-revoke");
    const tr = b && b.closest("tr[data-token]");
    if (!tr) return;
    if (!(await PT.confirm(`Revoke token ${tr.dataset.token}?`, "<p>Scripts using it are refused from now on. This cannot be undone.</p>", "Revoke"))) return;
    const r = await api("DELETE", `/tokens/${encodeURIComponent(tr.dataset.token)}`);
    if (PT.report(r)) usersReload(`token ${tr.dataset.token} revoked`);
  });
}

PT.ready(initUsers);
