// Users and tokens (admins).
"use strict";

function initUsers() {
  const form = el("user-form");
  if (!form) return;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const r = await api("POST", "/users", { username: f.get("username"), password: f.get("password"), role: f.get("role") });
    if (r.ok) location.reload(); else el("user-out").textContent = errorText(r);
  });
  const tokens = el("token-form");
  tokens.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(tokens);
    const r = await api("POST", `/users/${encodeURIComponent(f.get("username"))}/tokens`, { name: f.get("name") });
    const out = el("token-out");
    if (r.ok) { out.innerHTML = `token for ${esc(r.data.info.username)} (shown once): <code id="new-token">${esc(r.data.token)}</code>`; out.className = "status ok"; }
    else { out.textContent = errorText(r); out.className = "status error"; }
  });
}

PT.ready(initUsers);
