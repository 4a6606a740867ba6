// A criterion's page: compare versions (text and membership), edit (validate as
// you type, review the diff, save a new version), run an ad hoc criterion and
// follow its job, pause / resume / retire an ongoing one, and follow a new
// version from building through backfilling to its swap.
"use strict";

// Wrapped: the page scripts share one global scope.
(() => {
const CRIT_TOAST = "pt-criterion-toast";
// The message this page showed as it loaded (a save's), carried over if the
// page must reload again straight away.
let justSaid = "";
const JOB_ENDED = ["succeeded", "failed", "cancelled"];

const critUrl = (name, rest = "") => `/criteria/${encodeURIComponent(name)}${rest}`;

// The text diff: deleted tokens struck through, added ones highlighted.
function textDiffHtml(parts) {
  return parts.map((p) => p.op === "same" ? esc(p.text)
    : p.op === "del" ? `<del class="del">${esc(p.text)}</del>` : `<ins class="add">${esc(p.text)}</ins>`).join("");
}

function sampleHtml(part) {
  if (!part.count) return '<span class="muted">nobody</span>';
  const links = part.sample.map((id) => `<a href="/contacts?id=${encodeURIComponent(id)}">${esc(id)}</a>`).join(", ");
  const more = part.count > part.sample.length ? ` <span class="muted">and ${PT.num(part.count - part.sample.length)} more</span>` : "";
  return links + more;
}

// +N / −N, coloured only when something moves.
const plus = (n) => n ? `<span class="add">+${PT.num(n)}</span>` : "+0";
const minus = (n) => n ? `<span class="del-num">−${PT.num(n)}</span>` : "−0";

function stat(label, value, unit, id) {
  return `<div class="stat"${id ? ` id="${id}"` : ""}><div class="label">${esc(label)}</div><div class="value">${value}<span class="unit">${esc(unit)}</span></div></div>`;
}

// Criterion text, highlighted: keywords, fields, strings and numbers; a long
// text breaks before its top-level and / or. The characters stay the same
// (only whitespace before a break becomes a newline).
const KEYWORDS = new Set(["and", "or", "not", "in", "is", "null", "between", "contains", "contains_any",
  "contains_all", "starts_with", "ends_with", "like", "ilike", "within", "count", "where", "persona", "true", "false", "date"]);
const TOKEN = /"(?:[^"\\]|\\.)*"?|'(?:[^'\\]|\\.)*'?|\s+|\w+|[^\w\s]/gu;

function prettyExpr(text, breakLong) {
  const tokens = text.match(TOKEN) || [];
  const long = breakLong && text.length > 80;
  let depth = 0, out = "";
  tokens.forEach((t, i) => {
    if (t === "(") depth += 1;
    if (t === ")") depth = Math.max(0, depth - 1);
    const next = tokens[i + 1];
    if (/^\s+$/.test(t)) { out += long && depth === 0 && (next === "and" || next === "or") ? "\n" : t; return; }
    let cls = "";
    if (t[0] === '"' || t[0] === "'") cls = "tok-str";
    else if (/^\d/.test(t)) cls = "tok-num";
    else if (KEYWORDS.has(t)) cls = "tok-kw";
    else if (/^\w+$/.test(t)) cls = "tok-field";
    out += cls ? `<span class="${cls}">${esc(t)}</span>` : esc(t);
  });
  return out;
}

function prettyAll() {
  const main = el("crit-expr");
  if (main) main.innerHTML = prettyExpr(main.textContent, true);
  document.querySelectorAll("#versions code.expr, #criteria-table code.expr").forEach((c) => { c.innerHTML = prettyExpr(c.textContent, false); });
}

// A diff answer (GET or POST /criteria/{name}/diff) as HTML.
function diffHtml(d) {
  const oldName = d.old.version ? `v${d.old.version}` : "draft";
  const newName = d.new.version ? `v${d.new.version}` : "the edit";
  const m = d.membership;
  const settings = [["persona", "persona"], ["action", "action"], ["mode", "mode"], ["exit", "exit policy"]]
    .filter(([k]) => d.old[k] !== d.new[k])
    .map(([k, label]) => `<li>${esc(label)}: <del class="del">${esc(d.old[k])}</del> → <ins class="add">${esc(d.new[k])}</ins></li>`).join("");
  const changed = d.text.some((p) => p.op !== "same");
  const enter = m.would_enter == null ? "" : stat(`would enter ${d.new.persona}`, PT.num(m.would_enter), "contacts", "diff-would-enter");
  // "would exit" only where the action can remove anyone.
  const exit = m.would_exit == null ? "" : stat(`would exit ${d.new.persona}`, PT.num(m.would_exit), "contacts", "diff-would-exit");
  const why = m.would_exit == null
    ? `<p class="muted small">No “would exit”: ${d.new.action === "tag" && d.new.mode === "adhoc" ? "an ad hoc tag" : "an ongoing criterion with exit policy keep"} removes nobody.</p>` : "";
  return `<div class="crit-diff">
    <h3>Text: ${esc(oldName)} → ${esc(newName)}</h3>
    <pre class="diff" id="diff-text">${changed ? textDiffHtml(d.text) : esc(d.new.expr)}</pre>
    ${changed ? "" : '<p class="muted small">The text is the same.</p>'}
    ${settings ? `<ul class="crit-settings">${settings}</ul>` : ""}
    <h3>Membership now</h3>
    <div class="stats">
      ${stat(`${oldName} matches`, PT.num(m.old_count), "contacts")}
      ${stat(`${newName} matches`, PT.num(m.new_count), "contacts")}
      ${stat(`caught by ${newName} only`, plus(m.gained.count), "contacts", "diff-gained")}
      ${stat(`caught by ${oldName} only`, minus(m.lost.count), "contacts", "diff-lost")}
      ${enter}${exit}
    </div>
    ${why}
    <p class="small"><strong>Caught by ${esc(newName)} only:</strong> ${sampleHtml(m.gained)}</p>
    <p class="small"><strong>Caught by ${esc(oldName)} only:</strong> ${sampleHtml(m.lost)}</p>
  </div>`;
}

// -- compare two stored versions ------------------------------------------------------
function initCompare(name) {
  const b = el("compare");
  if (!b) return;
  b.addEventListener("click", async () => {
    const from = document.querySelector('input[name="diff-from"]:checked');
    const to = document.querySelector('input[name="diff-to"]:checked');
    const out = el("version-diff");
    if (!from || !to) { PT.toast("pick a version in From and one in To", "error"); return; }
    if (from.value === to.value) { PT.toast("pick two different versions to compare", "error"); return; }
    out.innerHTML = '<p class="muted">Comparing…</p>';
    const r = await api("GET", critUrl(name, `/diff?from=${from.value}&to=${to.value}`));
    if (!r.ok) { out.innerHTML = ""; PT.report(r); return; }
    out.innerHTML = diffHtml(r.data);
  });
}

// -- edit: validate as you type, review, save -------------------------------------------
function initEdit(name) {
  const card = el("edit-card"), open = el("crit-edit");
  if (!card || !open) return;
  const expr = el("edit-expr"), status = el("edit-status"), marker = el("edit-marker");
  const save = el("edit-save"), out = el("edit-diff");
  const fields = () => ({ persona: el("edit-persona").value, action: el("edit-action").value,
    mode: el("edit-mode").value, exit: el("edit-exit").value, expr: expr.value });
  const stale = () => { save.disabled = true; out.innerHTML = ""; };
  open.addEventListener("click", () => { card.hidden = false; expr.focus(); card.scrollIntoView({ block: "start" }); });
  el("edit-cancel").addEventListener("click", () => { card.hidden = true; stale(); });

  async function validate() {
    const r = await api("POST", "/criteria/validate", { expr: expr.value });
    if (!r.ok) { status.textContent = errorText(r); status.className = "status error"; marker.textContent = ""; return false; }
    if (r.data.ok) { status.textContent = "valid"; status.className = "status ok"; marker.textContent = ""; return true; }
    const e = r.data.error;
    status.textContent = e.line ? `line ${e.line}, col ${e.col}: ${e.message}` : e.message;
    status.className = "status error";
    const line = (expr.value.split("\n")[(e.line || 1) - 1]) || "";
    marker.textContent = e.col ? `${line}\n${" ".repeat(Math.max(e.col - 1, 0))}^` : "";
    return false;
  }
  const later = debounce(validate, 300);
  expr.addEventListener("input", () => { stale(); later(); });
  ["edit-persona", "edit-action", "edit-mode", "edit-exit"].forEach((id) => el(id).addEventListener("change", stale));

  el("edit-review").addEventListener("click", async () => {
    if (!(await validate())) return;
    out.innerHTML = '<p class="muted">Working out what would change…</p>';
    const r = await api("POST", critUrl(name, "/diff"), fields());
    if (!r.ok) { out.innerHTML = ""; status.textContent = errorText(r); status.className = "status error"; PT.report(r); return; }
    out.innerHTML = diffHtml(r.data);
    const d = r.data;
    const same = d.text.every((x) => x.op === "same") && ["persona", "action", "mode", "exit"].every((k) => d.old[k] === d.new[k]);
    if (same) { status.textContent = `nothing to save: the edit is the same as version ${d.old.version}`; status.className = "status warn"; return; }
    save.disabled = false;
  });
  save.addEventListener("click", async () => {
    save.disabled = true;
    const r = await api("PUT", critUrl(name), fields());
    if (!PT.report(r)) { save.disabled = false; return; }
    sessionStorage.setItem(CRIT_TOAST, `saved ${r.data.name} version ${r.data.version}`);
    location.reload();
  });
}

// -- run an ad hoc criterion: submit a request, follow its job --------------------------
function initRun(name, action) {
  const b = el("crit-run");
  if (!b) return;
  b.addEventListener("click", async () => {
    const card = el("run-card"), out = el("run-out");
    const dry = el("run-dry").checked;
    b.disabled = true;
    const r = await api("POST", "/requests", { version: 1, criterion: name, action, dry_run: dry });
    if (!PT.report(r, `request ${r.data && r.data.request_id} submitted`)) { b.disabled = false; return; }
    card.hidden = false;
    const rid = r.data.request_id;
    const show = (job, summary) => {
      const link = job ? ` <a id="run-job" href="/jobs/${encodeURIComponent(job.id)}">job ${esc(job.id)}</a>` : "";
      const counts = job && job.counts ? Object.entries(job.counts).filter(([, v]) => typeof v === "number")
        .map(([k, v]) => `${esc(k.replace(/_/g, " "))} ${PT.num(v)}`).join(" · ") : "";
      out.innerHTML = `<p>Request ${PT.id(rid, 12)}${dry ? ' <span class="badge">dry run</span>' : ""}: `
        + `<span id="run-status">${PT.status(job ? job.status : "submitted")}</span>${link}</p>`
        + (counts ? `<p class="muted small">${counts}</p>` : "")
        + (summary && summary.error ? `<p class="error">${esc(summary.error)}</p>` : "");
    };
    show(null);
    for (;;) {
      await new Promise((ok) => setTimeout(ok, 1000));
      const s = await api("GET", `/requests/${encodeURIComponent(rid)}`);
      if (!s.ok) { if (s.status !== 404) { PT.report(s); break; } continue; }
      show(s.data.job, s.data);
      if (s.data.job && JOB_ENDED.includes(s.data.job.status)) {
        PT.toast(`${name}: job ${s.data.job.id} ${s.data.job.status}`, s.data.job.status === "succeeded" ? "ok" : "error");
        break;
      }
    }
    b.disabled = false;
  });
}

// -- pause / resume / retire ----------------------------------------------------------
function initLifecycle(name) {
  const act = async (what, done) => {
    const r = await api("POST", critUrl(name, `/${what}`));
    if (!PT.report(r)) return;
    sessionStorage.setItem(CRIT_TOAST, `${name} ${done}`);
    location.reload();
  };
  const pause = el("crit-pause"), resume = el("crit-resume"), retire = el("crit-retire");
  if (pause) pause.addEventListener("click", () => act("pause", "paused: the stream skips it; its members stay"));
  if (resume) resume.addEventListener("click", () => act("resume", "resumed: the stream rebuilds it and swaps it in"));
  if (retire) retire.addEventListener("click", async () => {
    const ok = await PT.confirm(`Retire ${name}?`,
      `<p>The stream stops evaluating <strong>${esc(name)}</strong> and every membership it holds is removed `
      + "(each contact that holds the persona through nothing else exits). This cannot be undone; "
      + "to stop it for a while, pause it instead.</p>", "Retire");
    if (ok) act("retire", "retired: its memberships were removed");
  });
}

// -- the stream's progress on the newest version ------------------------------------------
function progressHtml(p) {
  const since = PT.time(p.since, true);
  // The swap of the live version (a paused or retired one's is in the history).
  const swap = p.swap && p.state === "active" ? `<p id="crit-swap">Swapped in ${PT.time(p.swap.at, true)}: ${PT.num(p.swap.members)} members `
    + `(${plus(p.swap.entered)} entered, ${minus(p.swap.exited)} exited)`
    + `${p.swap.replaces ? `, replacing ${esc(p.swap.replaces)}` : ""}.</p>` : "";
  let head;
  if (p.state === "building") {
    const ahead = p.ahead.length ? ` ${PT.num(p.ahead.length)} version(s) ahead of it: ${p.ahead.map(esc).join(", ")} (one is built at a time).` : "";
    head = `<p><span class="spinner" aria-hidden="true"></span> v${p.version} is waiting for the stream to start its backfill (saved ${since}).${ahead}</p>`;
  } else if (p.state === "backfilling") {
    head = `<p><span class="spinner" aria-hidden="true"></span> The stream is backfilling v${p.version}: evaluating it over every contact beside the feed, since ${since}. `
      + "Then it catches up with the changes that arrived meanwhile and swaps it in for the live version.</p>";
  } else if (p.state === "active") head = `<p class="ok">v${p.version} is live: the stream evaluates it on every change.</p>`;
  else if (p.state === "paused") head = `<p class="warn">v${p.version} is paused since ${since}: the stream skips it; its members stay. Resume rebuilds it.</p>`;
  else if (p.state === "retired") head = `<p class="muted">Retired ${since}: its memberships were removed.</p>`;
  else head = `<p>v${p.version} is ${esc(p.state)} since ${since}.</p>`;
  const changes = (n) => `${PT.num(n)} change${n === 1 ? "" : "s"}`;
  const lag = !p.stream ? ""
    : p.stream.updated_at ? `<p class="muted small">Stream lag: ${changes(p.stream.lag_changes)}, ${PT.seconds(p.stream.lag_seconds)}; last step ${PT.time(p.stream.updated_at, true)}.</p>`
    : `<p class="muted small">The stream has not stepped yet (${changes(p.stream.lag_changes)} waiting): it runs in <code>personatag serve</code> or <code>personatag stream</code>.</p>`;
  const err = p.error ? `<p class="error">Last backfill failed: ${esc(p.error)} (the stream tries again).</p>` : "";
  return head + err + lag + swap;
}

function initProgress(name) {
  const box = el("crit-progress");
  if (!box) return;
  // Drawn while building: a swap that happens before the first poll still
  // redraws the page (its history and buttons), as one seen later does.
  let wasBuilding = box.dataset.renderedBuilding === "true" ? true : null;
  const tick = async () => {
    const r = await api("GET", critUrl(name, "/progress"));
    if (!r.ok) {
      box.innerHTML = `<p class="error">${esc(errorText(r))}</p>`;
      if (wasBuilding) setTimeout(tick, 3000);  // keep following through a passing failure
      return;
    }
    const p = r.data;
    if (wasBuilding && !p.building) {
      // Swapped in (or paused meanwhile): the history and the buttons change
      // with it, so the page is drawn again rather than patched.
      // A swap right after a save reloads at once: say both, or the save's
      // message would vanish before anyone could read it.
      const now = `${name} v${p.version} is ${p.state}`;
      sessionStorage.setItem(CRIT_TOAST, justSaid ? `${justSaid}; ${now}` : now);
      location.reload();
      return;
    }
    box.innerHTML = progressHtml(p);
    box.dataset.state = p.state;
    const badge = el("crit-state");
    if (badge) { badge.textContent = p.state; badge.className = `badge state-${p.state}`; }
    wasBuilding = p.building;
    if (p.building) setTimeout(tick, 1500);
  };
  tick();
}

PT.ready(() => {
  prettyAll();
  const root = el("criterion");
  if (!root) return;
  const said = sessionStorage.getItem(CRIT_TOAST);
  if (said) { sessionStorage.removeItem(CRIT_TOAST); PT.toast(said); justSaid = said; }
  const name = root.dataset.name;
  initCompare(name);
  initEdit(name);
  initRun(name, root.dataset.action);
  initLifecycle(name);
  initProgress(name);
});
})();
