// Requests and jobs: the live list, uploads and a job's progress.
"use strict";

// -- requests ---------------------------------------------------------------------
const JOB_LIVE = ["queued", "running"];

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
  return bar + esc(since == null ? text : `${text} · ${since} s`);
}

// The job page: follow a queued or running job; once it ends, reload for its counts.
function initJobProgress() {
  const box = el("job"), status = el("job-status");
  if (!box || !status || !JOB_LIVE.includes(status.dataset.status)) return;
  const timer = setInterval(async () => {
    const r = await api("GET", `/jobs/${encodeURIComponent(box.dataset.job)}`);
    if (!r.ok) return;
    if (!JOB_LIVE.includes(r.data.status)) { clearInterval(timer); location.reload(); return; }
    status.textContent = r.data.status; status.className = `status-${r.data.status}`; status.dataset.status = r.data.status;
    el("job-progress").innerHTML = progressHtml(r.data) || "-";
  }, 2000);
}

async function refreshRequests() {
  const r = await api("GET", "/requests?limit=25");
  if (!r.ok) return;
  const rows = (r.data.requests || r.data || []).map((q) => {
    const j = q.job || q; const c = j.counts || {};
    const links = ["summary.json", "failed.csv", "changes.csv.gz"].map((f) => `<a href="/api/v1/requests/${encodeURIComponent(j.request_id)}/results/${f}">${f}</a>`).join(" ");
    return `<tr data-request="${esc(j.request_id)}"><td><a href="/jobs/${j.id}">${esc(j.request_id)}</a></td><td class="status-${esc(j.status)}">${esc(j.status)}</td><td class="progress">${progressHtml(j)}</td><td>${esc(j.engine)}</td>`
      + `<td class="num">${c.tagged ?? ""}</td><td class="num">${c.untagged ?? ""}</td><td class="num">${c.failed ?? ""}</td><td>${j.seconds ?? "-"}</td><td>${links}</td></tr>`;
  });
  el("requests-table").querySelector("tbody").innerHTML = rows.join("");
}

function initRequests() {
  initJobProgress();
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

PT.ready(initRequests);
