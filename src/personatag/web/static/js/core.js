// What every workbench page shares: the JSON API call (session cookie + CSRF
// token), escaping, and the design system's pieces: readable times, persona
// chips, short ids with copy, toasts, a confirm dialog, empty states and
// charts. Page scripts (js/*.js) register their start with PT.ready(fn).
"use strict";

const csrf = () => document.querySelector('meta[name="csrf"]').content;

async function api(method, path, body, isForm) {
  const headers = { "X-CSRF-Token": csrf() };
  let payload;
  if (isForm) payload = body;
  else if (body !== undefined) { headers["Content-Type"] = "application/json"; payload = JSON.stringify(body); }
  let res;
  try {
    res = await fetch("/api/v1" + path, { method, headers, body: payload, credentials: "same-origin" });
  } catch (e) {
    return { ok: false, status: 0, data: { error: { message: "the server could not be reached; check your connection and try again" } } };
  }
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  return { ok: res.ok, status: res.status, data };
}

const errorText = (r) => (r.data && r.data.error && r.data.error.message) || `HTTP ${r.status}`;
const el = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

function debounce(fn, ms) { let t; return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); }; }

const PT = {
  starts: [],
  charts: {},
  // Run `fn` once the page is parsed; one page script failing does not stop the others.
  ready(fn) { PT.starts.push(fn); },

  num(n) { return n == null || n === "" ? "-" : Number(n).toLocaleString("en"); },

  // Times: local time as text, the UTC value on hover; "3 min ago" where recency matters.
  parseTime(iso) { const t = Date.parse(iso); return Number.isNaN(t) ? null : new Date(t); },
  localTime(iso) {
    const d = PT.parseTime(iso);
    if (!d) return String(iso ?? "-");
    return d.toLocaleString(undefined, { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  },
  utcTime(iso) { const d = PT.parseTime(iso); return d ? d.toISOString().replace(/\.\d+Z$/, "Z").replace("T", " ") + " UTC" : ""; },
  ago(iso) {
    const d = PT.parseTime(iso);
    if (!d) return String(iso ?? "-");
    const s = Math.round((Date.now() - d.getTime()) / 1000);
    const a = Math.abs(s), future = s < 0;
    let text;
    if (a < 45) text = "just now";
    else if (a < 3600) text = `${Math.round(a / 60)} min`;
    else if (a < 86400) text = `${Math.round(a / 3600)} h`;
    else if (a < 86400 * 30) text = `${Math.round(a / 86400)} d`;
    else return PT.localTime(iso);
    return text === "just now" ? text : future ? `in ${text}` : `${text} ago`;
  },
  time(iso, ago) {
    if (!iso) return '<span class="muted">-</span>';
    return `<time datetime="${esc(iso)}"${ago ? " data-ago" : ""} title="${esc(PT.utcTime(iso))}">${esc(ago ? PT.ago(iso) : PT.localTime(iso))}</time>`;
  },
  // Server-rendered <time> elements (the `when` filter) get the same treatment.
  localiseTimes(root = document) {
    root.querySelectorAll("time[datetime]").forEach((t) => {
      const iso = t.getAttribute("datetime");
      if (!PT.parseTime(iso)) return;
      t.title = PT.utcTime(iso);
      t.textContent = t.hasAttribute("data-ago") ? PT.ago(iso) : PT.localTime(iso);
    });
  },
  seconds(s) {
    if (s == null) return "-";
    const v = Number(s);
    if (v < 1) return `${Math.round(v * 1000)} ms`;
    if (v < 90) return `${v.toFixed(v < 10 ? 1 : 0)} s`;
    if (v < 5400) return `${Math.round(v / 60)} min`;
    return `${(v / 3600).toFixed(1)} h`;
  },

  chip(key) { return `<a class="chip" href="/personas/${encodeURIComponent(key)}">${esc(key)}</a>`; },
  id(value, keep = 8) {
    const text = String(value ?? "");
    const shown = text.length <= keep + 1 ? text : text.slice(0, keep) + "…";
    return `<button type="button" class="id" data-copy="${esc(text)}" title="${esc(text)} (click to copy)">${esc(shown)}</button>`;
  },
  status(s) { return `<span class="badge status-${esc(s)}">${esc(s)}</span>`; },
  // An empty state says what to do next: `action` is HTML (a link or a button).
  empty(message, action) { return `<div class="empty"><p>${esc(message)}</p>${action || ""}</div>`; },

  toast(message, kind = "ok") {
    let box = el("toasts");
    if (!box) { box = document.createElement("div"); box.id = "toasts"; box.setAttribute("aria-live", "polite"); document.body.append(box); }
    const t = document.createElement("div");
    t.className = `toast toast-${kind}`;
    t.setAttribute("role", kind === "error" ? "alert" : "status");
    t.textContent = message;
    box.append(t);
    setTimeout(() => t.classList.add("toast-gone"), kind === "error" ? 8000 : 4000);
    setTimeout(() => t.remove(), kind === "error" ? 8600 : 4600);
  },
  // Show an API call's outcome as a toast; returns r.ok.
  report(r, okMessage) {
    if (r.ok) { if (okMessage) PT.toast(okMessage, "ok"); return true; }
    PT.toast(errorText(r), "error");
    return false;
  },

  // A modal confirmation: resolves true when the person confirms.
  confirm(title, bodyHtml, confirmLabel = "Confirm") {
    return new Promise((resolve) => {
      const d = document.createElement("dialog");
      d.className = "confirm";
      d.innerHTML = `<form method="dialog"><h2>${esc(title)}</h2><div class="confirm-body">${bodyHtml}</div>`
        + `<div class="row end"><button value="cancel" class="secondary">Cancel</button> <button value="ok" class="primary" id="confirm-ok">${esc(confirmLabel)}</button></div></form>`;
      document.body.append(d);
      d.addEventListener("close", () => { resolve(d.returnValue === "ok"); d.remove(); });
      d.showModal();
    });
  },

  // A chart: `series` is [{label, data}] over `labels`; `unit` names the
  // values (on the axis and in tooltips). The numbers fed are kept on the
  // canvas (data-fed) so what is drawn can be checked.
  chart(canvas, { type = "line", labels, series, unit, stacked = false, title }) {
    if (typeof canvas === "string") canvas = el(canvas);
    if (!canvas) return null;
    canvas.dataset.fed = JSON.stringify({ labels, series: series.map((s) => ({ label: s.label, data: s.data })), unit });
    if (canvas.id && PT.charts[canvas.id]) PT.charts[canvas.id].destroy();
    const palette = ["#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#4b5563"];
    if (typeof Chart === "undefined") return null;
    const chart = new Chart(canvas, {
      type,
      data: {
        labels,
        datasets: series.map((s, i) => ({
          label: s.label, data: s.data, borderColor: s.color || palette[i % palette.length],
          backgroundColor: (s.color || palette[i % palette.length]) + (type === "line" ? "22" : "cc"),
          fill: type === "line" && series.length === 1, tension: 0.2, pointRadius: labels.length > 40 ? 0 : 2,
        })),
      },
      options: {
        responsive: true, maintainAspectRatio: false, animation: false,
        interaction: { mode: "index", intersect: false },
        plugins: {
          legend: { display: series.length > 1 },
          title: { display: !!title, text: title },
          tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ${PT.num(c.parsed.y)}${unit ? " " + unit : ""}` } },
        },
        scales: {
          x: { stacked, ticks: { maxRotation: 0, autoSkip: true } },
          y: { stacked, beginAtZero: true, title: { display: !!unit, text: unit } },
        },
      },
    });
    if (canvas.id) PT.charts[canvas.id] = chart;
    return chart;
  },
};

// Tables scroll inside their card on a narrow screen.
function wrapTables(root = document) {
  root.querySelectorAll("table").forEach((t) => {
    if (t.parentElement && t.parentElement.classList.contains("table-wrap")) return;
    const w = document.createElement("div");
    w.className = "table-wrap";
    t.replaceWith(w);
    w.append(t);
  });
}

// Copy an id on click (buttons made by PT.id or the short_id filter).
document.addEventListener("click", async (ev) => {
  const b = ev.target.closest("button.id[data-copy]");
  if (!b) return;
  try { await navigator.clipboard.writeText(b.dataset.copy); PT.toast(`copied ${b.dataset.copy}`); }
  catch (e) { PT.toast(`could not copy; the id is ${b.dataset.copy}`, "error"); }
});

// -- login / logout ---------------------------------------------------------------
function initLogin() {
  const form = el("login-form");
  if (!form) return;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const r = await api("POST", "/login", { username: f.get("username"), password: f.get("password") });
    if (r.ok) location.href = location.pathname === "/login" ? "/" : location.href;
    else el("login-error").textContent = errorText(r);
  });
}

function initLogout() {
  const b = el("logout");
  if (b) b.addEventListener("click", async () => { await api("POST", "/logout"); location.href = "/login"; });
}

// -- selects that submit their form on change (no inline handlers: see the CSP) --
function initAutosubmit() {
  document.querySelectorAll("select[data-autosubmit]").forEach((s) =>
    s.addEventListener("change", () => s.form.submit()));
}

// -- the menu on a narrow screen ----------------------------------------------------
function initMenu() {
  const b = el("menu-toggle");
  if (!b) return;
  b.addEventListener("click", () => {
    const open = document.body.classList.toggle("menu-open");
    b.setAttribute("aria-expanded", String(open));
  });
}

PT.ready(initAutosubmit); PT.ready(initLogin); PT.ready(initLogout); PT.ready(initMenu);
PT.ready(() => { PT.localiseTimes(); wrapTables(); });
setInterval(() => document.querySelectorAll("time[data-ago]").forEach((t) => { t.textContent = PT.ago(t.getAttribute("datetime")); }), 30000);

document.addEventListener("DOMContentLoaded", () => {
  for (const fn of PT.starts) {
    try { const p = fn(); if (p && p.catch) p.catch((e) => console.error(e)); } catch (e) { console.error(e); }
  }
});
