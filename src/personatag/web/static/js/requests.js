// Requests and jobs: the filtered, paged list (live while jobs run), CSV uploads,
// and a job's page (live progress, cancel).
"use strict";

const JOB_LIVE = ["queued", "running"];
const REQUEST_FILTERS = ["persona", "action", "engine", "dry_run", "who", "source", "status"];
const PAGE_SIZE = 25;

// What a job does now: "applying 3/10 items · 12 s" (a bar when done/total are
// known), "done", or where a failed job stopped. Never a guessed percentage.
function progressHtml(j) {
  const p = j.progress;
  if (!p) return "";
  const n = (x) => Number(x).toLocaleString("en");
  let text = p.phase;
  if (p.done != null && p.total != null) text += ` ${n(p.done)}/${n(p.total)}`;
  else if (p.total != null) text += ` ${n(p.total)}`;
  else if (p.done != null) text += ` ${n(p.done)}`;
  const count = p.total ?? p.done;
  if (p.unit && count != null) text += ` ${count === 1 ? p.unit.replace(/s$/, "") : p.unit}`;
  if ((j.status === "failed" || j.status === "cancelled") && p.phase !== "done") return esc(`stopped while ${text}`);
  if (j.status !== "running") return esc(text);
  const bar = p.done != null && p.total ? `<progress max="${Number(p.total)}" value="${Number(p.done)}"></progress> ` : "";
  const since = j.started_at ? Math.max(0, Math.round((Date.now() - Date.parse(j.started_at)) / 1000)) : null;
  return bar + esc(since == null ? text : `${text} · ${PT.seconds(since)}`);
}

// -- the job page -------------------------------------------------------------------

// Follow a queued or running job; once it ends, reload for its counts and files.
function initJobPage() {
  const box = el("job"), status = el("job-status");
  if (!box || !status) return;
  const cancel = el("job-cancel");
  if (cancel) cancel.addEventListener("click", async () => {
    const ok = await PT.confirm(`Cancel job #${box.dataset.job}?`, "<p>A queued job does not start; a running one stops at its next step. Nothing is half-applied.</p>", "Cancel job");
    if (!ok) return;
    const r = await api("POST", `/jobs/${encodeURIComponent(box.dataset.job)}/cancel`);
    if (PT.report(r, `job #${box.dataset.job} is ${r.ok ? r.data.status : ""}`)) setTimeout(() => location.reload(), 600);
  });
  if (!JOB_LIVE.includes(status.dataset.status)) return;
  const timer = setInterval(async () => {
    if (document.hidden) return;
    const r = await api("GET", `/jobs/${encodeURIComponent(box.dataset.job)}`);
    if (!r.ok) return;
    if (!JOB_LIVE.includes(r.data.status)) { clearInterval(timer); location.reload(); return; }
    status.textContent = r.data.status; status.className = `badge status-${r.data.status}`; status.dataset.status = r.data.status;
    el("job-progress").innerHTML = progressHtml(r.data) || "-";
  }, 2000);
}

// -- the list -----------------------------------------------------------------------

function listQuery() {
  const here = new URLSearchParams(location.search), q = new URLSearchParams();
  REQUEST_FILTERS.forEach((k) => { const v = here.get(k); if (v) q.set(k, v); });
  const offset = Math.max(0, parseInt(here.get("offset") || "0", 10) || 0);
  return { q, offset };
}

function requestRow(item) {
  const j = item.job || {}, r = item.request || {}, c = j.counts || {};
  const personas = r.personas || [];
  const more = personas.length > 1 ? ` <span class="muted small" title="${esc(personas.slice(1).join(", "))}">+${personas.length - 1}</span>` : "";
  const changed = j.counts ? (c.tagged || 0) + (c.untagged || 0) : null;
  const live = JOB_LIVE.includes(j.status);
  const took = live && j.started_at ? `<span class="muted">${PT.seconds(Math.max(0, (Date.now() - Date.parse(j.started_at)) / 1000))}…</span>` : PT.seconds(j.seconds);
  const who = (r.submitted_by ? esc(r.submitted_by) : '<span class="muted">unknown</span>') + (r.token ? ` <span class="muted small">token “${esc(r.token)}”</span>` : "");
  const progress = live ? `<div class="progress small">${progressHtml(j)}</div>` : "";
  return `<tr data-request="${esc(item.request_id)}" data-job="${esc(j.id)}" data-status="${esc(j.status)}" data-phase="${esc((j.progress && j.progress.phase) || "")}">`
    + `<td class="nowrap"><a href="/jobs/${encodeURIComponent(j.id)}">#${esc(j.id)}</a> ${PT.id(item.request_id, 12)}</td>`
    + `<td class="nowrap">${personas.length ? PT.chip(personas[0]) : "-"}${more}</td>`
    + `<td>${esc((r.actions || []).join(", ") || "-")}</td>`
    + `<td>${esc(r.engine || j.engine)}</td>`
    + `<td>${j.dry_run ? '<span class="badge">dry run</span>' : '<span class="muted">no</span>'}</td>`
    + `<td class="who-cell">${who}</td>`
    + `<td class="source-cell">${r.source ? `<span class="badge source">${esc(r.source)}</span>` : '<span class="muted">-</span>'}</td>`
    + `<td class="num">${PT.num(c.matched)}</td><td class="num">${PT.num(changed)}</td>`
    + `<td class="nowrap">${PT.status(j.status)}${progress}</td>`
    + `<td class="num">${took}</td>`
    + `<td class="nowrap">${PT.time(r.created_at || j.queued_at, true)}</td></tr>`;
}

let listTimer = null;

async function refreshRequests() {
  const table = el("requests-table");
  const { q, offset } = listQuery();
  q.set("limit", String(PAGE_SIZE)); q.set("offset", String(offset));
  const r = await api("GET", `/requests?${q}`);
  const errorBox = el("requests-error");
  if (!r.ok) {
    errorBox.innerHTML = `<p class="error">${esc(errorText(r))}</p><p><a class="button secondary small" href="/requests">Clear the filters</a></p>`;
    table.hidden = true; el("requests-pager").hidden = true;
    return false;
  }
  errorBox.innerHTML = "";
  const items = r.data.requests || [], total = r.data.total ?? items.length;
  table.querySelector("tbody").innerHTML = items.map(requestRow).join("");
  table.hidden = items.length === 0;
  const filtered = table.dataset.filtered === "true";
  const editor = table.dataset.editor === "true";
  let empty = "";
  if (!items.length && offset > 0) empty = PT.empty("No requests on this page.", '<a class="button secondary" href="/requests">Back to the newest</a>');
  else if (!items.length && filtered) empty = PT.empty("No request matches these filters.", '<a class="button secondary" href="/requests">Clear the filters</a>');
  else if (!items.length) empty = PT.empty(
    editor ? "No requests yet. Build a criterion in the builder and press Submit request, or upload a CSV list below." : "No requests yet. Editors submit them from the builder.",
    '<a class="button primary" href="/criteria/new">Open the builder</a>');
  el("requests-empty").innerHTML = empty;
  el("requests-total").textContent = total ? `${PT.num(total)} ${total === 1 ? "request" : "requests"}` : "";
  const pager = el("requests-pager");
  pager.hidden = total <= PAGE_SIZE && offset === 0;
  el("page-where").textContent = items.length ? `${PT.num(offset + 1)}–${PT.num(offset + items.length)} of ${PT.num(total)}` : "";
  el("page-prev").disabled = offset === 0;
  el("page-next").disabled = offset + items.length >= total;
  const live = items.some((x) => JOB_LIVE.includes(x.status));
  clearTimeout(listTimer);
  listTimer = setTimeout(() => { if (!document.hidden) refreshRequests(); else listTimer = setTimeout(refreshRequests, 2000); }, live ? 2000 : 10000);
  return true;
}

function goToOffset(offset) {
  const here = new URLSearchParams(location.search);
  if (offset > 0) here.set("offset", String(offset)); else here.delete("offset");
  history.pushState(null, "", `/requests${here.toString() ? "?" + here : ""}`);
  refreshRequests();
}

function initRequestList() {
  if (!el("requests-table")) return;
  refreshRequests();
  window.addEventListener("popstate", refreshRequests);
  el("page-prev").addEventListener("click", () => goToOffset(Math.max(0, listQuery().offset - PAGE_SIZE)));
  el("page-next").addEventListener("click", () => goToOffset(listQuery().offset + PAGE_SIZE));
  const form = el("request-filters");
  // The filters live in the URL (a link shares them); empty ones are left out.
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    new FormData(form).forEach((v, k) => { const s = String(v).trim(); if (s) q.set(k, s); });
    location.href = `/requests${q.toString() ? "?" + q : ""}`;
  });
  form.querySelectorAll("select").forEach((s) => s.addEventListener("change", () => form.requestSubmit()));
}

function initUpload() {
  const form = el("upload-form");
  if (!form) return;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await api("POST", "/requests/upload", new FormData(form), true);
    const out = el("upload-out");
    if (r.ok) {
      out.innerHTML = `<p class="ok">Submitted ${PT.id(r.data.request_id, 24)}: it appears in the list once a dispatcher picks it up.</p>`;
      PT.toast(`submitted ${r.data.request_id}`, "ok");
      form.reset();
      refreshRequests();
      return;
    }
    PT.toast(errorText(r), "error");
    const rows = (r.data && r.data.error && r.data.error.rows) || [];
    out.innerHTML = `<p class="error">${esc(errorText(r))}</p>` + (rows.length
      ? `<table class="upload-errors"><thead><tr><th class="num">Row</th><th>Contact</th><th>Persona</th><th>Reason</th></tr></thead><tbody>${rows.map((x) => `<tr><td class="num">${esc(x.row)}</td><td>${esc(x.contact_id)}</td><td>${esc(x.persona)}</td><td>${esc(x.reason)}</td></tr>`).join("")}</tbody></table>`
      : "");
    wrapTables(out);
  });
}

PT.ready(initJobPage);
PT.ready(initRequestList);
PT.ready(initUpload);
