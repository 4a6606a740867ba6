// Feed rules and feed evaluations.
"use strict";

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

// -- feed evaluations --------------------------------------------------------------
function initFeedEvaluations() {
  const cancel = el("evaluation-cancel");
  if (cancel) cancel.addEventListener("click", async () => {
    const r = await api("POST", `/feed/evaluations/${encodeURIComponent(cancel.dataset.run)}/cancel`);
    if (r.ok || r.status === 409) location.reload();
    else { const s = el("evaluation-status"); if (s) { s.textContent = errorText(r); s.className = "status error"; } }
  });
  const form = el("evaluation-form");
  if (!form) return;
  const status = el("evaluation-status");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const body = {};
    for (const key of ["contacts", "reports", "weeks", "seed", "samples"]) {
      if (f.get(key) !== "") body[key] = parseInt(f.get(key), 10);
    }
    if (f.get("persona_share") !== "") body.persona_share = parseFloat(f.get("persona_share"));
    const r = await api("POST", "/feed/evaluations", body);
    if (r.ok) { location.href = `/feed-evaluations?id=${encodeURIComponent(r.data.id)}`; return; }
    status.textContent = errorText(r); status.className = "status error";
  });
}

PT.ready(initFeedRules);
PT.ready(initFeedEvaluations);
