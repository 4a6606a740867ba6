// The workbench's few interactive parts. Every call goes to the JSON API with
// the session cookie and the CSRF token the page carries.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf"]').content;

async function api(method, path, body, isForm) {
  const headers = { "X-CSRF-Token": csrf() };
  let payload;
  if (isForm) payload = body;
  else if (body !== undefined) { headers["Content-Type"] = "application/json"; payload = JSON.stringify(body); }
  const res = await fetch("/api/v1" + path, { method, headers, body: payload, credentials: "same-origin" });
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  return { ok: res.ok, status: res.status, data };
}

const errorText = (r) => (r.data && r.data.error && r.data.error.message) || `HTTP ${r.status}`;
const el = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

function debounce(fn, ms) { let t; return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); }; }

// -- login / logout ---------------------------------------------------------------
function initLogin() {
  const form = el("login-form");
  if (!form) return;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const r = await api("POST", "/login", { username: f.get("username"), password: f.get("password") });
    if (r.ok) location.href = location.pathname === "/login" ? "/personas" : location.href;
    else el("login-error").textContent = errorText(r);
  });
}

function initLogout() {
  const b = el("logout");
  if (b) b.addEventListener("click", async () => { await api("POST", "/logout"); location.href = "/login"; });
}

// -- criterion builder ------------------------------------------------------------
function markError(expr, err) {
  const marker = el("expr-marker");
  if (!err) { marker.textContent = ""; return; }
  const lines = expr.split("\n");
  const line = lines[(err.line || 1) - 1] || "";
  marker.textContent = `${line}\n${" ".repeat(Math.max((err.col || 1) - 1, 0))}^ line ${err.line}, col ${err.col}`;
}

async function validate() {
  const expr = el("expr").value;
  const status = el("expr-status");
  if (!expr.trim()) { status.textContent = ""; markError(expr, null); return false; }
  const r = await api("POST", "/criteria/validate", { expr });
  if (r.ok && r.data.ok) {
    status.textContent = "valid"; status.className = "status ok"; markError(expr, null);
    return true;
  }
  const err = (r.data && (r.data.error || (r.data.error === undefined ? null : r.data.error))) || {};
  status.textContent = err.message || errorText(r); status.className = "status error";
  markError(expr, err);
  return false;
}

async function preview() {
  const out = el("preview-out");
  out.textContent = "…";
  const r = await api("POST", "/preview", { persona: el("persona").value, expr: el("expr").value });
  if (!r.ok) { out.innerHTML = `<p class="error">${esc(errorText(r))}</p>`; return; }
  const d = r.data;
  out.innerHTML = `<p id="preview-count"><strong>${d.count.toLocaleString()}</strong> match · would enter ${d.would_enter.toLocaleString()} · would exit ${d.would_exit.toLocaleString()}</p>`
    + `<p class="muted">sample: ${d.sample.map((s) => `<a href="/contacts?id=${encodeURIComponent(s)}">${esc(s)}</a>`).join(", ")}</p>`;
}

async function submitRequest() {
  const status = el("submit-status");
  const body = { version: 1, persona: el("persona").value, action: el("action").value, expr: el("expr").value, dry_run: el("dry-run").checked };
  const r = await api("POST", "/requests", body);
  if (!r.ok) { status.textContent = errorText(r); status.className = "status error"; return; }
  status.innerHTML = `submitted <a href="/requests">${esc(r.data.request_id)}</a>`; status.className = "status ok";
}

const OPS = {
  string: ["=", "!=", "ilike", "like", "starts_with", "ends_with", "in", "is null", "is not null"],
  int: ["=", "!=", ">", ">=", "<", "<=", "between", "is null", "is not null"],
  float: ["=", "!=", ">", ">=", "<", "<=", "between", "is null", "is not null"],
  bool: ["= true", "= false", "is null"],
  timestamp: ["within", "<", ">", "is null", "is not null"],
  list: ["contains", "contains_any", "contains_all", "is null"],
};

function literal(type, v) {
  if (type === "int" || type === "float") return v.trim();
  return JSON.stringify(v);
}

function buildCondition(field, type, op, value) {
  if (op.startsWith("is ") || op.startsWith("= t") || op.startsWith("= f")) return `${field} ${op}`;
  if (op === "within") return `${field} within ${parseInt(value, 10) || 30}d`;
  if (op === "between") { const [a, b] = value.split(/\s*(?:,|and)\s*/); return `${field} between ${literal(type, a || "")} and ${literal(type, b || "")}`; }
  if (op === "in" || op === "contains_any" || op === "contains_all") return `${field} ${op} (${value.split(",").map((x) => literal("string", x.trim())).join(", ")})`;
  if (type === "timestamp") return `${field} ${op} date(${JSON.stringify(value)})`;
  return `${field} ${op} ${literal(type, value)}`;
}

function initBuilder() {
  const expr = el("expr");
  if (!expr) return;
  // Live: validate as you type; once valid and the typing pauses, preview too.
  const livePreview = debounce(preview, 700);
  expr.addEventListener("input", debounce(async () => { if (await validate()) livePreview(); }, 250));
  el("persona").addEventListener("change", async () => { if (await validate()) preview(); });
  el("preview").addEventListener("click", async () => { if (await validate()) preview(); });
  el("submit-request").addEventListener("click", async () => { if (await validate()) submitRequest(); });
  const field = el("vb-field"), op = el("vb-op");
  const fillOps = () => { const t = field.selectedOptions[0].dataset.type; op.innerHTML = (OPS[t] || ["="]).map((o) => `<option>${o}</option>`).join(""); };
  field.addEventListener("change", fillOps);
  fillOps();
  el("vb-add").addEventListener("click", () => {
    const t = field.selectedOptions[0].dataset.type;
    const cond = buildCondition(field.value, t, op.value, el("vb-value").value);
    const cur = expr.value.trim();
    const join = el("vb-join").value;
    expr.value = cur ? `(${cur}) ${join} ${cond}` : (join === "and not" ? `not ${cond}` : cond);
    validate();
  });
  if (expr.value.trim()) validate();
}

// -- requests ---------------------------------------------------------------------
async function refreshRequests() {
  const r = await api("GET", "/requests?limit=25");
  if (!r.ok) return;
  const rows = (r.data.requests || r.data || []).map((q) => {
    const j = q.job || q; const c = j.counts || {};
    const links = ["summary.json", "failed.csv", "changes.csv.gz"].map((f) => `<a href="/api/v1/requests/${encodeURIComponent(j.request_id)}/results/${f}">${f}</a>`).join(" ");
    return `<tr data-request="${esc(j.request_id)}"><td><a href="/jobs/${j.id}">${esc(j.request_id)}</a></td><td class="status-${esc(j.status)}">${esc(j.status)}</td><td>${esc(j.engine)}</td>`
      + `<td class="num">${c.tagged ?? ""}</td><td class="num">${c.untagged ?? ""}</td><td class="num">${c.failed ?? ""}</td><td>${j.seconds ?? "-"}</td><td>${links}</td></tr>`;
  });
  el("requests-table").querySelector("tbody").innerHTML = rows.join("");
}

function initRequests() {
  if (!el("requests-table")) return;
  refreshRequests();
  setInterval(refreshRequests, 2000);
  const form = el("upload-form");
  if (form) form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await api("POST", "/requests/upload", new FormData(form), true);
    const out = el("upload-out");
    if (r.ok) { out.innerHTML = `<p class="ok">submitted ${esc(r.data.request_id)}</p>`; refreshRequests(); return; }
    const rows = (r.data && r.data.error && r.data.error.rows) || [];
    out.innerHTML = `<p class="error">${esc(errorText(r))}</p>` + (rows.length ? `<table><tr><th>Row</th><th>Contact</th><th>Persona</th><th>Reason</th></tr>${rows.map((x) => `<tr><td>${x.row}</td><td>${esc(x.contact_id)}</td><td>${esc(x.persona)}</td><td>${esc(x.reason)}</td></tr>`).join("")}</table>` : "");
  });
}

// -- contacts ---------------------------------------------------------------------
function initContact() {
  const status = el("pin-status");
  if (!status) return;
  const id = new URLSearchParams(location.search).get("id");
  document.querySelectorAll("button.pin").forEach((b) => b.addEventListener("click", async () => {
    const r = await api("POST", `/contacts/${encodeURIComponent(id)}/pins`, { persona: el("pin-persona").value, kind: b.dataset.kind });
    if (r.ok) location.reload(); else { status.textContent = errorText(r); status.className = "status error"; }
  }));
  el("unpin").addEventListener("click", async () => {
    const r = await api("DELETE", `/contacts/${encodeURIComponent(id)}/pins/${encodeURIComponent(el("pin-persona").value)}`);
    if (r.ok) location.reload(); else { status.textContent = errorText(r); status.className = "status error"; }
  });
}

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

// -- feed rules -------------------------------------------------------------------
function initFeedRules() {
  const table = el("feed-rules");
  if (!table) return;
  const persona = encodeURIComponent(table.dataset.persona);
  const status = el("rule-status");
  document.querySelectorAll("button.rule-remove").forEach((b) => b.addEventListener("click", async () => {
    const r = await api("DELETE", `/personas/${persona}/feed-rules/${b.dataset.rule}`);
    if (r.ok) location.reload(); else { status.textContent = errorText(r); status.className = "status error"; }
  }));
  const form = el("rule-form");
  if (!form) return;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const kind = f.get("kind");
    const body = { kind };
    if (kind === "boost" || kind === "filter") body.expr = f.get("expr");
    if (kind === "boost") body.weight = parseFloat(f.get("weight"));
    if (kind === "pin") { body.publication = f.get("publication"); if (f.get("expires_at")) body.expires_at = f.get("expires_at"); }
    if (kind === "cap") body.cap = parseInt(f.get("cap"), 10);
    const r = await api("POST", `/personas/${persona}/feed-rules`, body);
    if (r.ok) { location.reload(); return; }
    status.textContent = errorText(r); status.className = "status error";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  initLogin(); initLogout(); initBuilder(); initRequests(); initContact(); initUsers();
  initFeedRules();
});
