// Personas: create, edit, archive and restore (editors), and a persona's size and overlap charts.
"use strict";

function personaRow(key) {
  return document.querySelector(`[data-persona="${CSS.escape(key)}"]`);
}

function initPersonaCreate() {
  const card = el("persona-create");
  const form = el("persona-create-form");
  if (!card || !form) return;
  const open = () => { card.hidden = false; el("pc-key").focus(); };
  const openButton = el("persona-new");
  if (openButton) openButton.addEventListener("click", open);
  document.querySelectorAll("[data-open-create]").forEach((b) => b.addEventListener("click", open));
  el("persona-create-cancel").addEventListener("click", () => { card.hidden = true; form.reset(); el("persona-create-error").textContent = ""; });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const body = {
      key: String(f.get("key") || "").trim(),
      name: String(f.get("name") || "").trim(),
      category: String(f.get("category") || "").trim(),
    };
    const description = String(f.get("description") || "").trim();
    if (description) body.description = description;
    const missing = ["key", "name", "category"].filter((k) => !body[k]);
    const out = el("persona-create-error");
    if (missing.length) {
      out.textContent = `Fill in the ${missing.join(", ")}.`;
      el(`pc-${missing[0]}`).focus();
      return;
    }
    const submit = el("persona-create-submit");
    submit.disabled = true;
    const r = await api("POST", "/personas", body);
    submit.disabled = false;
    if (r.ok) {
      PT.toast(`Persona ${body.key} created`);
      location.href = `/personas/${encodeURIComponent(body.key)}`;
    } else {
      out.textContent = errorText(r);
      PT.toast(errorText(r), "error");
    }
  });
}

function initPersonaEdit() {
  const dialog = el("persona-edit");
  const form = el("persona-edit-form");
  if (!dialog || !form) return;
  document.querySelectorAll("[data-edit]").forEach((b) => b.addEventListener("click", () => {
    const row = personaRow(b.dataset.edit);
    el("pe-key").value = b.dataset.edit;
    el("pe-key-shown").textContent = b.dataset.edit;
    el("pe-name").value = row ? row.dataset.name : "";
    el("pe-category").value = row ? row.dataset.category : "";
    el("pe-description").value = row ? row.dataset.description : "";
    el("persona-edit-error").textContent = "";
    dialog.showModal();
    el("pe-name").focus();
  }));
  el("persona-edit-cancel").addEventListener("click", () => dialog.close());
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const key = el("pe-key").value;
    const body = {
      name: el("pe-name").value.trim(),
      category: el("pe-category").value.trim(),
      description: el("pe-description").value.trim() || null,
    };
    const missing = ["name", "category"].filter((k) => !body[k]);
    if (missing.length) {
      el("persona-edit-error").textContent = `The ${missing.join(" and ")} cannot be empty.`;
      return;
    }
    const r = await api("PATCH", `/personas/${encodeURIComponent(key)}`, body);
    if (r.ok) {
      dialog.close();
      PT.toast(`Persona ${key} saved`);
      setTimeout(() => location.reload(), 400);
    } else {
      el("persona-edit-error").textContent = errorText(r);
      PT.toast(errorText(r), "error");
    }
  });
}

function initPersonaArchive() {
  document.querySelectorAll("[data-archive]").forEach((b) => b.addEventListener("click", async () => {
    const key = b.dataset.archive;
    const ok = await PT.confirm(`Archive ${key}?`,
      `<p>No more tagging goes into ${PT.chip(key)}. Its members, pins and history are kept, and you can restore it later.</p>`,
      "Archive");
    if (!ok) return;
    const r = await api("POST", `/personas/${encodeURIComponent(key)}/archive`);
    if (PT.report(r, `Persona ${key} archived`)) setTimeout(() => location.reload(), 400);
  }));
  document.querySelectorAll("[data-restore]").forEach((b) => b.addEventListener("click", async () => {
    const key = b.dataset.restore;
    const r = await api("POST", `/personas/${encodeURIComponent(key)}/restore`);
    if (PT.report(r, `Persona ${key} restored`)) setTimeout(() => location.reload(), 400);
  }));
}

async function loadSizeHistory() {
  const canvas = el("size-chart");
  if (!canvas) return;
  const key = canvas.dataset.key;
  const days = el("size-days").value;
  // From the persona sets' per-day counts (the same figures as /size-history).
  const r = await api("GET", `/persona-stats?key=${encodeURIComponent(key)}&days=${days}`);
  if (!r.ok) { PT.toast(errorText(r), "error"); return; }
  const s = r.data.history;
  const h = { days: s.days, size: s.size[key], entered: s.entered[key], exited: s.exited[key] };
  const charts = [
    PT.chart(canvas, { type: "line", labels: h.days, series: [{ label: "members", data: h.size }], unit: "contacts" }),
    PT.chart("moves-chart", {
      type: "bar", labels: h.days, unit: "contacts",
      series: [{ label: "entered", data: h.entered, color: "#16a34a" }, { label: "exited", data: h.exited, color: "#dc2626" }],
    }),
  ];
  for (const chart of charts) tidyAxes(chart);
  const sum = (a) => a.reduce((x, y) => x + y, 0);
  el("persona-moves").innerHTML = `+${PT.num(sum(h.entered))} / −${PT.num(sum(h.exited))}<span class="unit">contacts</span>`;
  el("size-quiet").hidden = sum(h.entered) + sum(h.exited) + Math.max(0, ...h.size) > 0;
  el("size-quiet-days").textContent = PT.num(h.days.length);
}

// Whole contacts on the value axis; days as "Sep 7" (the labels fed stay ISO days).
function tidyAxes(chart) {
  if (!chart) return;
  chart.options.scales.y.ticks.precision = 0;
  chart.options.scales.x.ticks.callback = function (value) {
    const day = this.getLabelForValue(value);
    const d = new Date(`${day}T00:00:00Z`);
    return Number.isNaN(d.getTime()) ? day : d.toLocaleDateString(undefined, { month: "short", day: "numeric", timeZone: "UTC" });
  };
  chart.update();
}

function initSizeChart() {
  const select = el("size-days");
  if (!select) return;
  select.addEventListener("change", loadSizeHistory);
  return loadSizeHistory();
}

// Overlap with another persona: this only, both, the other only (one stacked bar).
async function loadOverlap() {
  const select = el("overlap-with");
  const key = select.dataset.key;
  const other = select.value;
  const out = el("overlap-figures");
  if (!other) { out.textContent = "Choose a persona to see how many contacts hold both."; return; }
  const r = await api("GET", `/persona-stats?key=${encodeURIComponent(key)}&key=${encodeURIComponent(other)}`);
  if (!r.ok) { PT.toast(errorText(r), "error"); return; }
  const p = r.data.pairs[0];
  const chart = PT.chart("overlap-chart", {
    type: "bar", labels: [""], unit: "contacts", stacked: true,
    series: [
      { label: `${key} only`, data: [p.a_not_b], color: "#2563eb" },
      { label: "both", data: [p.both], color: "#9333ea" },
      { label: `${other} only`, data: [p.b_not_a], color: "#ea580c" },
    ],
  });
  if (chart) {
    chart.options.indexAxis = "y";
    chart.options.scales = { x: { stacked: true, beginAtZero: true, ticks: { precision: 0 } }, y: { stacked: true } };
    chart.options.plugins.tooltip.callbacks.label = (c) => `${c.dataset.label}: ${PT.num(c.parsed.x)} contacts`;
    chart.update();
  }
  out.innerHTML = `<strong>${PT.num(p.both)}</strong> hold both · ${PT.chip(key)} not ${PT.chip(other)}: ${PT.num(p.a_not_b)}`
    + ` · ${PT.chip(other)} not ${PT.chip(key)}: ${PT.num(p.b_not_a)} · either: ${PT.num(p.either)}`
    + ` · Jaccard ${p.jaccard.toFixed(3)} <span class="muted small">(${r.data.took_ms} ms)</span>`;
}

function initOverlap() {
  const select = el("overlap-with");
  if (!select) return;
  select.addEventListener("change", loadOverlap);
}

PT.ready(initPersonaCreate);
PT.ready(initPersonaEdit);
PT.ready(initPersonaArchive);
PT.ready(initSizeChart);
PT.ready(initOverlap);
