// The criterion builder: validate as you type, preview, submit (confirmed above a
// threshold), save as a criterion, and the visual tree.
"use strict";

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
    return r.data; // {ok, expr, ast}
  }
  const err = (r.data && (r.data.error || (r.data.error === undefined ? null : r.data.error))) || {};
  status.textContent = err.message || errorText(r); status.className = "status error";
  markError(expr, err);
  return false;
}

// -- preview, and what a request will do ---------------------------------------------
const persona = () => el("persona").value;
const threshold = () => Number(el("builder").dataset.confirmThreshold || 0);
const contactChip = (id) => `<a class="chip contact-chip" href="/contacts?id=${encodeURIComponent(id)}">${esc(id)}</a>`;
const contacts = (n) => `${PT.num(n)} contact${n === 1 ? "" : "s"}`;
let previewSeq = 0;

function previewBody(action) {
  const body = { expr: el("expr").value, action, sample: 12 };
  if (persona()) body.persona = persona();
  return body;
}

function stat(id, label, n, kind) {
  return `<div class="stat ${kind}" id="${id}"><div class="label">${esc(label)}</div>`
    + `<div class="value">${PT.num(n)} <span class="unit">contacts</span></div></div>`;
}

// What the preview says the action does. would_enter is null for an untag and
// would_exit null for a tag (neither can do the other), so only what can happen shows.
function effectHtml(d) {
  let html = `<p id="preview-count" class="preview-count"><strong>${PT.num(d.count)}</strong> match now</p>`;
  if (!persona()) {
    html += '<p class="muted small">Choose a persona to see who would enter or leave it.</p>';
  } else {
    const stats = [];
    if (d.would_enter !== null) stats.push(stat("preview-enter", "would enter", d.would_enter, "enter"));
    if (d.would_exit !== null) stats.push(stat("preview-exit", "would exit", d.would_exit, "exit"));
    html += `<div class="stats preview-stats">${stats.join("")}</div>`;
  }
  if (d.hint) {
    const fix = d.suggestion
      ? ` <button type="button" class="small secondary" id="use-suggestion" data-expr="${esc(d.suggestion)}">Use ilike</button>`
      : "";
    html += `<p class="hint" role="note"><span id="preview-hint">${esc(d.hint)}</span>${fix}</p>`;
  }
  if (d.sample.length) {
    html += `<p class="sample"><span class="muted small">sample</span> ${d.sample.map(contactChip).join("")}`
      + (d.count > d.sample.length ? ` <span class="muted small">and ${PT.num(d.count - d.sample.length)} more</span>` : "") + "</p>";
  }
  return html;
}

function showPreview(d) {
  const out = el("preview-out");
  out.innerHTML = effectHtml(d);
  out.dataset.action = el("action").value;
}

async function preview() {
  const seq = ++previewSeq;
  const out = el("preview-out");
  out.classList.add("loading");
  const r = await api("POST", "/preview", previewBody(el("action").value));
  if (seq !== previewSeq) return; // a newer preview was asked for
  out.classList.remove("loading");
  if (!r.ok) { out.innerHTML = `<p class="error">${esc(errorText(r))}</p>`; return; }
  showPreview(r.data);
  ongoingEffect(seq);
}

// What saving as an ongoing criterion would do now: it tags, and with exit
// policy `remove` members who do not match leave.
async function ongoingEffect(seq) {
  const box = el("save-effect");
  if (!box) return;
  if (el("save-mode").value !== "ongoing" || !persona() || !el("expr").value.trim()) { box.hidden = true; return; }
  const exit = el("save-exit").value;
  const r = await api("POST", "/preview", { ...previewBody("tag"), sample: 0, mode: "ongoing", exit });
  if (seq !== previewSeq || !r.ok) return;
  const d = r.data;
  box.innerHTML = `Once swapped in: <strong>${contacts(d.would_enter)}</strong> would enter`
    + (d.would_exit === null ? "; nobody leaves (exit: keep)" : `, <strong>${contacts(d.would_exit)}</strong> would exit`) + ".";
  box.hidden = false;
}

function needPersona() {
  const field = el("persona");
  field.setAttribute("aria-invalid", "true");
  field.focus();
  PT.toast("Choose a persona first: the field has no default", "error");
}

// A tag or untag first shows what it will do (a fresh preview); above the threshold
// the person confirms, and cancelling sends nothing. A dry run changes nothing.
async function submitRequest() {
  const status = el("submit-status");
  status.textContent = ""; status.className = "status";
  if (!persona()) { needPersona(); return; }
  const action = el("action").value, dryRun = el("dry-run").checked;
  const p = await api("POST", "/preview", previewBody(action));
  if (!p.ok) { PT.toast(errorText(p), "error"); return; }
  ++previewSeq; showPreview(p.data);
  const changes = action === "tag" ? p.data.would_enter : p.data.would_exit;
  const limit = threshold();
  if (!dryRun && (limit === 0 || changes > limit)) {
    const verb = action === "tag" ? "Tag" : "Untag";
    const body = `<p>${verb}ging <strong>${esc(persona())}</strong> ${action === "tag" ? "adds it to" : "removes it from"} `
      + `<strong>${contacts(changes)}</strong>${limit ? `, more than the ${PT.num(limit)} that need a confirmation` : ""}.</p>`
      + `<div class="confirm-effect">${effectHtml(p.data).replace(/ id="[^"]*"/g, "")}</div>`
      + '<p class="muted small">Cancel and tick “dry run” to count without changing anything.</p>';
    const ok = await PT.confirm(`${verb} ${contacts(changes)}?`, body, `${verb} ${contacts(changes)}`);
    if (!ok) {
      status.textContent = "cancelled: nothing was sent"; status.className = "status muted";
      return;
    }
  }
  const body = { version: 1, persona: persona(), action, expr: el("expr").value, dry_run: dryRun };
  const r = await api("POST", "/requests", body);
  if (!r.ok) { status.textContent = errorText(r); status.className = "status error"; PT.toast(errorText(r), "error"); return; }
  const id = r.data.request_id;
  status.innerHTML = `submitted <a href="/requests">${esc(id)}</a>`; status.className = "status ok";
  const what = action === "tag" ? `up to ${contacts(changes)} enter` : `up to ${contacts(changes)} leave`;
  PT.toast(dryRun ? `Dry run ${id} submitted: it counts, nothing changes` : `Request ${id} submitted: ${what} ${persona()}`, "ok");
}

// -- save as criterion -----------------------------------------------------------------
const editing = () => JSON.parse(el("builder").dataset.criterion || "null");

function saveFormFollowsMode() {
  const ongoing = el("save-mode").value === "ongoing";
  const action = el("save-action");
  // An ongoing criterion tags; leaving is its exit policy. An ad hoc one has no exit.
  action.querySelector('option[value="untag"]').disabled = ongoing;
  if (ongoing) action.value = "tag";
  el("save-exit").disabled = !ongoing;
  el("save-help").textContent = ongoing
    ? `Ongoing: the stream builds it over everyone, then keeps ${persona() || "the persona"} in step as contacts change: `
      + `whoever starts matching enters; whoever stops matching ${el("save-exit").value === "remove" ? "leaves" : "keeps it"}.`
    : "Ad hoc: saved to run when you choose (from its page or a request), as often as you like; it never removes on its own.";
}

async function saveCriterion(ev) {
  ev.preventDefault();
  const was = editing();
  const name = el("save-name").value.trim();
  if (!was && !name) {
    el("save-name").setAttribute("aria-invalid", "true"); el("save-name").focus();
    PT.toast("Give the criterion a name", "error"); return;
  }
  if (!persona()) { needPersona(); return; }
  if (!(await validate())) { PT.toast(`Fix the criterion first: ${el("expr-status").textContent || "it is empty"}`, "error"); return; }
  const body = {
    persona: persona(), expr: el("expr").value, action: el("save-action").value,
    // An ad hoc criterion's exit policy is not used; an edit keeps what it had.
    mode: el("save-mode").value, exit: el("save-exit").value,
  };
  const button = el("save-criterion");
  button.disabled = true;
  const r = was
    ? await api("PUT", `/criteria/${encodeURIComponent(was.name)}`, body)
    : await api("POST", "/criteria", { name, ...body });
  button.disabled = false;
  if (!PT.report(r)) {
    if (r.data && r.data.error && r.data.error.field === "name") el("save-name").setAttribute("aria-invalid", "true");
    return;
  }
  PT.toast(`Saved ${r.data.name} version ${r.data.version}`, "ok");
  // Let the toast be read, then open the criterion's page.
  setTimeout(() => window.location.assign(`/criteria/${encodeURIComponent(r.data.name)}`), 800);
}

function initSave() {
  const form = el("save-form");
  if (!form) return; // viewers do not save
  form.addEventListener("submit", saveCriterion);
  const followAndCount = () => { saveFormFollowsMode(); ongoingEffect(previewSeq); };
  el("save-mode").addEventListener("change", followAndCount);
  el("save-exit").addEventListener("change", followAndCount);
  el("persona").addEventListener("change", saveFormFollowsMode);
  el("save-name").addEventListener("input", () => el("save-name").removeAttribute("aria-invalid"));
  saveFormFollowsMode();
}

// The visual builder edits a tree of the same criterion as the text: the server turns
// the tree's AST into text (POST /criteria/render) and text into an AST (the `ast` of
// POST /criteria/validate), so the two views never disagree for long.
const OPS = {
  string: ["=", "!=", "in", "not_in", "ilike", "like", "starts_with", "ends_with", "<", "<=", ">", ">=", "between", "is_null", "is_not_null"],
  int: ["=", "!=", ">", ">=", "<", "<=", "between", "in", "not_in", "is_null", "is_not_null"],
  float: ["=", "!=", ">", ">=", "<", "<=", "between", "in", "not_in", "is_null", "is_not_null"],
  bool: ["=", "!=", "is_null", "is_not_null"],
  timestamp: ["within", ">", ">=", "<", "<=", "=", "!=", "between", "is_null", "is_not_null"],
  list: ["contains", "contains_any", "contains_all", "is_null", "is_not_null"],
};
const OP_LABELS = { not_in: "not in", is_null: "is null", is_not_null: "is not null", within: "within the last" };
const CMP = ["=", "!=", "<", "<=", ">", ">="];
const LIST_OPS = ["in", "not_in", "contains_any", "contains_all"];
const NO_VALUE_OPS = ["is_null", "is_not_null"];
const STRING_VALUE_OPS = ["contains", "contains_any", "contains_all", "starts_with", "ends_with", "like", "ilike"];
const DATE_ONLY = /^\d{4}-\d{2}-\d{2}$/;

// seq orders text validations and tree renders: only the newest answer is applied.
const vb = { tree: null, nextId: 1, seq: 0, fields: {}, personas: [], scopes: new Map(), made: new WeakMap(), focus: null };
const livePreview = debounce(preview, 700);

class TreeProblem extends Error {
  constructor(node, message) { super(message); this.node = node; }
}

const vbNode = (props) => ({ id: vb.nextId++, neg: false, ...props });
const newGroup = (op = "and", children = []) => vbNode({ kind: "group", op, children });
const newCondition = () => vbNode({ kind: "cond", field: "", op: "", values: [] });
const newCount = () => vbNode({ kind: "count", event: "read", days: "30", cmp: ">=", value: "1", where: newGroup() });
const newPersona = () => vbNode({ kind: "persona", key: vb.personas[0] || "" });
const childrenOf = (n) => (n.kind === "group" ? n.children : n.kind === "count" ? [n.where] : []);
const typeOf = (scope, field) => vb.fields[scope].get(field);
const sel = (on) => (on ? " selected" : "");

function valueKind(op, type) {
  if (NO_VALUE_OPS.includes(op)) return "none";
  if (op === "within") return "days";
  return STRING_VALUE_OPS.includes(op) ? "string" : type;
}

function fromAst(a) {
  if (a.op === "not") {
    const inner = fromAst(a.arg);
    if (!inner.neg) { inner.neg = true; return inner; }
    const g = newGroup("and", [inner]); g.neg = true; return g; // `not not x` keeps both
  }
  if (a.op === "and" || a.op === "or") return newGroup(a.op, a.args.map(fromAst));
  if (a.op === "count") {
    return vbNode({ kind: "count", event: a.event, days: String(a.days), cmp: a.cmp, value: String(a.value), where: asGroup(a.where ? fromAst(a.where) : null) });
  }
  if (a.op === "persona") return vbNode({ kind: "persona", key: a.key });
  let values = [];
  if (a.op === "between") values = [a.low, a.high];
  else if (a.op === "within") values = [a.days];
  else if ("values" in a) values = a.values;
  else if ("value" in a) values = [a.value];
  const raw = (v) => (v !== null && typeof v === "object" ? String(v.value) : String(v));
  return vbNode({ kind: "cond", field: a.field, op: a.op, values: values.map(raw) });
}

// The root and a count's `where` are always groups, so they can grow.
const asGroup = (n) => (!n ? newGroup() : n.kind === "group" ? n : newGroup("and", [n]));

function wholeNumber(n, raw, what) {
  const s = String(raw ?? "").trim();
  if (!/^\d+$/.test(s)) throw new TreeProblem(n, `${what}: enter a whole number`);
  return Number(s);
}

function typedValue(n, type, raw) {
  const s = String(raw ?? "");
  if (type === "int" || type === "float") {
    if (!s.trim() || !Number.isFinite(Number(s))) throw new TreeProblem(n, `${n.field}: enter a number`);
    return Number(s);
  }
  if (type === "bool") return s === "true";
  if (type === "timestamp") {
    if (!s.trim()) throw new TreeProblem(n, `${n.field}: enter a date`);
    return { type: "timestamp", value: s.trim() };
  }
  return s;
}

function conditionAst(n, scope) {
  if (!n.field) throw new TreeProblem(n, "choose a field (or remove the empty condition)");
  const a = { op: n.op, field: n.field };
  const kind = valueKind(n.op, typeOf(scope, n.field));
  if (kind === "none") return a;
  if (kind === "days") { a.days = wholeNumber(n, n.values[0], `${n.field} within`); return a; }
  const values = n.values.map((v) => typedValue(n, kind, v));
  if (n.op === "between") { a.low = values[0]; a.high = values[1]; }
  else if (LIST_OPS.includes(n.op)) a.values = values;
  else a.value = values[0];
  return a;
}

// The tree as an AST node (null when empty); vb.made maps each made object to its node.
function toAst(n, scope) {
  let a;
  if (n.kind === "group") {
    const args = n.children.map((c) => toAst(c, scope)).filter(Boolean);
    if (!args.length) return null; // an empty group means nothing yet
    a = args.length === 1 ? args[0] : { op: n.op, args };
  } else if (n.kind === "count") {
    a = { op: "count", event: n.event };
    const where = n.event === "read" ? toAst(n.where, "publication") : null;
    if (where) a.where = where;
    Object.assign(a, { days: wholeNumber(n, n.days, "count days"), cmp: n.cmp, value: wholeNumber(n, n.value, "count") });
  } else if (n.kind === "persona") {
    if (!n.key) throw new TreeProblem(n, "choose a persona");
    a = { op: "persona", key: n.key };
  } else {
    a = conditionAst(n, scope);
  }
  if (n.neg) a = { op: "not", arg: a };
  if (!vb.made.has(a)) vb.made.set(a, n);
  return a;
}

// The tree node an error path such as `$.ast.args[1].value` points into.
function nodeAt(ast, path) {
  let obj = ast, found = vb.made.get(ast);
  for (const m of String(path).replace(/^\$\.ast/, "").matchAll(/\.(\w+)|\[(\d+)\]/g)) {
    obj = obj && typeof obj === "object" ? obj[m[1] ?? Number(m[2])] : undefined;
    if (obj && typeof obj === "object" && vb.made.has(obj)) found = vb.made.get(obj);
  }
  return found;
}

// The tree as HTML (every text goes through esc).
const notButton = (n) => `<button type="button" class="vb-not" data-act="not" aria-pressed="${n.neg}" title="negate">not</button>`;
const removeButton = (what) => `<button type="button" class="vb-remove" data-act="remove" aria-label="remove ${what}" title="remove ${what}">×</button>`;

function optionsHtml(values, current, label = (v) => v) {
  const list = current && !values.includes(current) ? [current, ...values] : values;
  return list.map((v) => `<option value="${esc(v)}"${sel(v === current)}>${esc(label(v))}</option>`).join("");
}

function groupHtml(g, scope, top) {
  vb.scopes.set(g.id, scope);
  const kids = g.children.map((c) => nodeHtml(c, scope)).join("") || '<p class="muted small vb-empty">empty: add a condition</p>';
  const more = scope === "contact"
    ? '<button type="button" class="vb-add-count" data-act="add-count">+ count</button><button type="button" class="vb-add-persona" data-act="add-persona">+ persona</button>'
    : "";
  return `<div class="vb-group${g.neg ? " vb-negated" : ""}" data-node="${g.id}" role="group" aria-label="group">`
    + `<div class="row vb-head">${notButton(g)}`
    + `<select class="vb-join" data-act="join" aria-label="combine with"><option value="and"${sel(g.op === "and")}>and (all of)</option><option value="or"${sel(g.op === "or")}>or (any of)</option></select>`
    + '<button type="button" class="vb-add-cond" data-act="add-cond">+ condition</button><button type="button" class="vb-add-group" data-act="add-group">+ group</button>'
    + `${more}${top ? "" : removeButton("group")}</div><div class="vb-children">${kids}</div></div>`;
}

function nodeHtml(n, scope) {
  vb.scopes.set(n.id, scope);
  if (n.kind === "group") return groupHtml(n, scope, false);
  if (n.kind === "count") return countHtml(n);
  if (n.kind === "persona") {
    return `<div class="vb-persona row" data-node="${n.id}">${notButton(n)}<span>member of persona</span>`
      + `<select class="vb-key" data-act="key" aria-label="persona">${optionsHtml(vb.personas, n.key)}</select>${removeButton("persona condition")}</div>`;
  }
  return conditionHtml(n, scope);
}

function countHtml(n) {
  const where = n.event === "read"
    ? `<div class="vb-where"><span class="muted small">where the publication matches</span>${groupHtml(n.where, "publication", true)}</div>`
    : "";
  return `<div class="vb-count" data-node="${n.id}"><div class="row">${notButton(n)}<span>count of</span>`
    + `<select class="vb-event" data-act="event" aria-label="event">${optionsHtml(["read", "login"], n.event, (v) => `${v}s`)}</select>`
    + `<span>in the last</span><input type="number" min="1" step="1" class="vb-days" data-act="days" aria-label="days" value="${esc(n.days)}"><span>days</span>`
    + `<select class="vb-cmp" data-act="cmp" aria-label="comparison">${optionsHtml(CMP, n.cmp)}</select>`
    + `<input type="number" min="0" step="1" class="vb-count-value" data-act="count-value" aria-label="count" value="${esc(n.value)}">`
    + `${removeButton("count condition")}</div>${where}</div>`;
}

function conditionHtml(n, scope) {
  const fields = vb.fields[scope];
  const type = typeOf(scope, n.field);
  const names = [...fields.keys()];
  const fieldOptions = `<option value=""${sel(!n.field)}>field…</option>`
    + optionsHtml(names, n.field || undefined, (f) => `${f} (${fields.get(f) || "unknown"})`);
  const ops = n.field ? optionsHtml(OPS[type] || [n.op], n.op, (o) => OP_LABELS[o] || o) : "";
  return `<div class="vb-cond row" data-node="${n.id}">${notButton(n)}`
    + `<select class="vb-field" data-act="field" aria-label="field">${fieldOptions}</select>`
    + `<select class="vb-op" data-act="op" aria-label="operator"${n.field ? "" : " disabled"}>${ops}</select>`
    + `${valuesHtml(n, type)}${removeButton("condition")}</div>`;
}

function valueInput(n, i, kind) {
  const v = n.values[i] ?? "";
  const attrs = `class="vb-value" data-act="value" data-idx="${i}" aria-label="${esc(n.field)} value${i ? ` ${i + 1}` : ""}"`;
  if (kind === "bool") return `<select ${attrs}>${optionsHtml(["true", "false"], v)}</select>`;
  if (kind === "int" || kind === "float") return `<input type="number" step="${kind === "int" ? "1" : "any"}" ${attrs} value="${esc(v)}">`;
  if (kind === "days") return `<input type="number" min="1" step="1" ${attrs} value="${esc(v)}"><span>days</span>`;
  // A date input cannot show a time of day: such a timestamp stays plain text.
  if (kind === "timestamp") return `<input type="${!v || DATE_ONLY.test(v) ? "date" : "text"}" ${attrs} value="${esc(v)}">`;
  return `<input type="text" ${attrs} value="${esc(v)}">`;
}

function valuesHtml(n, type) {
  const kind = valueKind(n.op, type);
  if (!n.field || kind === "none") return "";
  if (n.op === "between") return `${valueInput(n, 0, kind)}<span>and</span>${valueInput(n, 1, kind)}`;
  if (!LIST_OPS.includes(n.op)) return valueInput(n, 0, kind);
  const items = n.values.map((_, i) => valueInput(n, i, kind)
    + `<button type="button" class="vb-list-remove" data-act="list-remove" data-idx="${i}" aria-label="remove value ${i + 1}">−</button>`);
  return `<span class="vb-list">${items.join("")}<button type="button" class="vb-list-add" data-act="list-add">+ value</button></span>`;
}

// The tree's state and events.
function fitValues(n, scope) {
  const kind = valueKind(n.op, typeOf(scope, n.field));
  const fill = kind === "days" ? "30" : kind === "bool" ? "true" : "";
  const want = kind === "none" ? 0 : n.op === "between" ? 2 : LIST_OPS.includes(n.op) ? Math.max(n.values.length, 1) : 1;
  n.values = Array.from({ length: want }, (_, i) => n.values[i] ?? fill);
}

function setField(n, field, scope) {
  const before = typeOf(scope, n.field);
  n.field = field;
  const type = typeOf(scope, field);
  if (!(OPS[type] || []).includes(n.op)) n.op = field ? (OPS[type] || ["="])[0] : "";
  if (type !== before) n.values = [];
  fitValues(n, scope);
}

function setOp(n, op, scope) {
  const type = typeOf(scope, n.field);
  if (valueKind(op, type) !== valueKind(n.op, type)) n.values = [];
  n.op = op;
  fitValues(n, scope);
}

function findNode(id, n = vb.tree) {
  if (n.id === id) return n;
  for (const c of childrenOf(n)) { const hit = findNode(id, c); if (hit) return hit; }
  return null;
}

function parentOf(id, n = vb.tree) {
  for (const c of childrenOf(n)) { if (c.id === id) return n; const hit = parentOf(id, c); if (hit) return hit; }
  return null;
}

function controlKey(control) {
  const holder = control && control.closest && control.closest("[data-node]");
  return holder && control.dataset.act ? { id: Number(holder.dataset.node), act: control.dataset.act, idx: control.dataset.idx } : null;
}

function drawTree() {
  const box = el("tree");
  const focus = vb.focus || controlKey(document.activeElement);
  vb.focus = null;
  vb.scopes = new Map();
  box.innerHTML = groupHtml(vb.tree, "contact", true);
  if (!focus) return;
  // Keep the keyboard where it was (or on the control just added).
  const hit = [...box.querySelectorAll("[data-act]")].find((c) => {
    const k = controlKey(c);
    return k.id === focus.id && (!focus.act || (k.act === focus.act && (focus.idx === undefined || k.idx === focus.idx)));
  });
  if (hit) hit.focus();
}

function treeStatus(message, kind) {
  const status = el("tree-status");
  status.textContent = message; status.className = `status ${kind || ""}`;
}

function markStale(stale, why = "the text above does not parse; fix it there, or edit here to replace it") {
  el("tree").classList.toggle("vb-stale", stale);
  el("tree").dataset.stale = String(stale);
  if (stale) treeStatus(`out of date: ${why}`, "error");
}

function showTreeProblem(node, message) {
  el("tree").querySelectorAll(".vb-bad").forEach((x) => x.classList.remove("vb-bad"));
  const row = node && el("tree").querySelector(`[data-node="${node.id}"]`);
  if (row) row.classList.add("vb-bad");
  treeStatus(`${message} (the text above is unchanged)`, "error");
}

// The text changed and `checked` is what validate answered: show its AST, or mark stale.
function treeFromText(checked) {
  if (checked && !checked.ast) { markStale(true, "the text nests too deeply for the tree; edit it there"); return; }
  if (checked) vb.tree = asGroup(fromAst(checked.ast));
  else if (!el("expr").value.trim()) vb.tree = newGroup();
  else { markStale(true); return; }
  markStale(false); treeStatus("", ""); drawTree();
}

async function renderTree() {
  const seq = ++vb.seq;
  vb.made = new WeakMap();
  let ast;
  try { ast = toAst(vb.tree, "contact"); } catch (e) {
    if (!(e instanceof TreeProblem)) throw e;
    showTreeProblem(e.node, e.message); return;
  }
  const expr = el("expr");
  if (ast === null) {
    expr.value = ""; markError("", null); el("expr-status").textContent = "";
    markStale(false); treeStatus("", ""); return;
  }
  const r = await api("POST", "/criteria/render", { ast });
  if (seq !== vb.seq) return; // a newer edit (in the tree or the text) wins
  if (!(r.ok && r.data.ok)) {
    const err = (r.data && r.data.error) || {};
    showTreeProblem(err.path ? nodeAt(ast, err.path) : null, err.message || errorText(r)); return;
  }
  expr.value = r.data.expr;
  const status = el("expr-status");
  status.textContent = "valid"; status.className = "status ok"; markError(r.data.expr, null);
  markStale(false); treeStatus("", "");
  el("tree").querySelectorAll(".vb-bad").forEach((x) => x.classList.remove("vb-bad"));
  livePreview();
}
const renderTreeSoon = debounce(renderTree, 300);

function treeEdited(redraw) {
  if (redraw) drawTree();
  renderTreeSoon();
}

function onTreeClick(ev) {
  const b = ev.target.closest("button[data-act]");
  if (!b) return;
  const n = findNode(Number(b.closest("[data-node]").dataset.node));
  const act = b.dataset.act;
  const add = { "add-cond": newCondition, "add-group": newGroup, "add-count": newCount, "add-persona": newPersona }[act];
  if (act === "not") n.neg = !n.neg;
  else if (add) {
    const child = add();
    n.children.push(child);
    vb.focus = { id: child.id, act: child.kind === "cond" ? "field" : child.kind === "group" ? "join" : child.kind === "count" ? "event" : "key" };
  } else if (act === "remove") {
    const parent = parentOf(n.id);
    parent.children.splice(parent.children.indexOf(n), 1);
    vb.focus = { id: parent.id, act: "add-cond" };
  } else if (act === "list-add") {
    n.values.push("");
    vb.focus = { id: n.id, act: "value", idx: String(n.values.length - 1) };
  } else if (act === "list-remove") {
    n.values.splice(Number(b.dataset.idx), 1);
    fitValues(n, vb.scopes.get(n.id));
  } else return;
  treeEdited(true);
}

function onTreeChange(ev) {
  const t = ev.target;
  const isSelect = t.tagName === "SELECT";
  if ((ev.type === "change") !== isSelect || !t.dataset.act) return; // selects on change, inputs on input
  const n = findNode(Number(t.closest("[data-node]").dataset.node));
  const scope = vb.scopes.get(n.id);
  const act = t.dataset.act;
  if (act === "value") { n.values[Number(t.dataset.idx)] = t.value; treeEdited(false); return; }
  if (act === "days") { n.days = t.value; treeEdited(false); return; }
  if (act === "count-value") { n.value = t.value; treeEdited(false); return; }
  if (act === "cmp") { n.cmp = t.value; treeEdited(false); return; }
  if (act === "key") { n.key = t.value; treeEdited(false); return; }
  if (act === "join") n.op = t.value;
  else if (act === "field") setField(n, t.value, scope);
  else if (act === "op") setOp(n, t.value, scope);
  else if (act === "event") n.event = t.value;
  else return;
  treeEdited(true);
}

function initTree() {
  const box = el("tree");
  const fields = (attr) => new Map(JSON.parse(box.dataset[attr]).map((f) => [f.name, f.type]));
  vb.fields = { contact: fields("fields"), publication: fields("publicationFields") };
  vb.personas = JSON.parse(box.dataset.personas);
  vb.tree = newGroup();
  drawTree();
  box.addEventListener("click", onTreeClick);
  box.addEventListener("change", onTreeChange);
  box.addEventListener("input", onTreeChange);
}

function initBuilder() {
  const expr = el("expr");
  if (!expr) return;
  initTree();
  // Live: validate as you type; the tree follows a valid text; once the typing
  // pauses, preview too.
  const fromText = async (now) => {
    const seq = ++vb.seq;
    const checked = await validate();
    if (seq !== vb.seq) return;
    treeFromText(checked);
    if (checked) { if (now === true) preview(); else livePreview(); }
  };
  expr.addEventListener("input", debounce(fromText, 250));
  const refresh = async () => { if (await validate()) preview(); };
  el("persona").addEventListener("change", () => { el("persona").removeAttribute("aria-invalid"); refresh(); });
  el("action").addEventListener("change", refresh);
  el("preview").addEventListener("click", refresh);
  el("submit-request").addEventListener("click", async () => {
    if (await validate()) submitRequest();
    else PT.toast(`Nothing sent: ${el("expr-status").textContent || "write a criterion first"}`, "error");
  });
  // The case hint's fix: the same criterion with its string compares as ilike.
  el("preview-out").addEventListener("click", (ev) => {
    const b = ev.target.closest("#use-suggestion");
    if (!b) return;
    expr.value = b.dataset.expr;
    fromText(true);
    expr.focus();
  });
  initSave();
  if (expr.value.trim()) fromText(true); // a criterion opened to edit: preview at once
}

PT.ready(initBuilder);
