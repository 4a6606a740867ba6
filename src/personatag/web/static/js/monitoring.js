// The Monitoring page's charts, each fed from one /api/v1/monitoring/* route
// (counted in SQL per UTC day or hour). Every figure names its unit on the
// axis; a chart with nothing to show says what would fill it.
"use strict";

const MON = {
  caption(id, text) { const c = el(`caption-${id}`); if (c) c.textContent = text || ""; },
  // "2026-12-05" -> "Dec 5"; "2026-12-05 14:00" -> "Dec 5 14:00" (UTC, as counted).
  dayLabel(day) {
    const [date, hour] = day.split(" ");
    const d = new Date(`${date}T00:00:00Z`);
    const text = d.toLocaleDateString("en", { month: "short", day: "numeric", timeZone: "UTC" });
    return hour ? `${text} ${hour}` : text;
  },
  sum(values) { return values.reduce((a, b) => a + (b || 0), 0); },
  // Counts are whole: no "3.5 jobs" on the axis.
  whole(chart) { if (chart) { chart.options.scales.y.ticks.precision = 0; chart.update(); } },
  // Times along the x axis: a few, not one per sample.
  fewTimes(chart) {
    if (!chart) return;
    chart.options.scales.x.ticks.maxTicksLimit = chart.canvas.clientWidth < 500 ? 4 : 7;
    chart.update();
  },
  failed(id, r) { MON.caption(id, `Could not load: ${errorText(r)}`); PT.toast(errorText(r), "error"); },
};

async function monStream() {
  const r = await api("GET", "/monitoring/stream-history?hours=24");
  if (!r.ok) { MON.failed("stream-lag", r); return; }
  const samples = r.data.samples;
  const labels = samples.map((s) => new Date(s.at).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", hourCycle: "h23" }));
  MON.fewTimes(PT.chart("chart-stream-lag", {
    labels, unit: "seconds",
    series: [{ label: "lag (age of the oldest unread change)", data: samples.map((s) => s.lag_seconds) }],
  }));
  MON.fewTimes(PT.chart("chart-stream-rate", {
    labels, unit: "changes/s",
    series: [{ label: "changes consumed", data: samples.map((s) => s.changes_per_s) }],
  }));
  if (!samples.length) {
    const why = "No samples in the last 24 h — the stream processor stores one every "
      + `${r.data.sample_s} s while it runs (inside \`personatag serve\` or \`personatag stream\`).`;
    MON.caption("stream-lag", why);
    MON.caption("stream-rate", why);
  } else {
    const last = samples[samples.length - 1];
    MON.caption("stream-lag", `${PT.num(samples.length)} samples; now ${PT.num(last.lag_changes)} changes, ${PT.seconds(last.lag_seconds)} behind.`);
    MON.caption("stream-rate", `Busiest: ${PT.num(Math.max(...samples.map((s) => s.changes_per_s)))} changes/s.`);
  }
}

async function monJobs(days) {
  const r = await api("GET", `/monitoring/jobs-daily?days=${days}`);
  if (!r.ok) { MON.failed("jobs", r); return; }
  const rows = r.data.days;
  const labels = rows.map((d) => MON.dayLabel(d.day));
  const outcomes = [
    ["succeeded", "#16a34a"], ["partial", "#ca8a04"], ["failed", "#dc2626"], ["cancelled", "#6b7280"],
  ];
  MON.whole(PT.chart("chart-jobs", {
    type: "bar", labels, unit: "jobs/day", stacked: true,
    series: outcomes.map(([k, color]) => ({ label: k, data: rows.map((d) => d[k]), color })),
  }));
  PT.chart("chart-durations", {
    type: "bar", labels, unit: "seconds",
    series: [
      { label: "mean run time", data: rows.map((d) => d.mean_seconds) },
      { label: "longest run time", data: rows.map((d) => d.max_seconds) },
    ],
  });
  const total = MON.sum(rows.flatMap((d) => outcomes.map(([k]) => d[k])));
  if (!total) {
    MON.caption("jobs", `No jobs ended in the last ${days} days — submit a request from the builder.`);
    MON.caption("durations", "Run times appear once jobs have run.");
  } else {
    const failed = MON.sum(rows.map((d) => d.failed));
    MON.caption("jobs", `${PT.num(total)} jobs ended, ${PT.num(failed)} failed.`);
    const longest = Math.max(...rows.map((d) => d.max_seconds || 0));
    MON.caption("durations", `Longest: ${PT.seconds(longest)}.`);
  }
}

async function monRequests(days) {
  const byHour = el("mon-requests-by") && el("mon-requests-by").value === "hour";
  const r = await api("GET", byHour ? "/monitoring/requests-hourly?hours=48" : `/monitoring/requests-daily?days=${days}`);
  if (!r.ok) { MON.failed("requests", r); return; }
  const rows = byHour ? r.data.hours : r.data.days;
  const key = byHour ? "hour" : "day";
  MON.whole(PT.chart("chart-requests", {
    type: "bar", labels: rows.map((d) => MON.dayLabel(d[key])), unit: byHour ? "requests/hour" : "requests/day",
    series: [
      { label: "tag or untag", data: rows.map((d) => d.requests - d.dry_runs) },
      { label: "dry run", data: rows.map((d) => d.dry_runs) },
    ],
    stacked: true,
  }));
  const total = MON.sum(rows.map((d) => d.requests));
  MON.caption("requests", total ? `${PT.num(total)} requests.` : "No requests in this span — build a criterion and submit it.");
}

async function monMoves(days) {
  const r = await api("GET", `/monitoring/memberships-daily?days=${days}`);
  if (!r.ok) { MON.failed("moves", r); return; }
  const rows = r.data.days;
  MON.whole(PT.chart("chart-moves", {
    type: "bar", labels: rows.map((d) => MON.dayLabel(d.day)), unit: "contacts/day",
    series: [
      { label: "entered", data: rows.map((d) => d.entered), color: "#16a34a" },
      { label: "exited", data: rows.map((d) => d.exited), color: "#dc2626" },
    ],
  }));
  const entered = MON.sum(rows.map((d) => d.entered)), exited = MON.sum(rows.map((d) => d.exited));
  MON.caption("moves", entered + exited
    ? `${PT.num(entered)} entered, ${PT.num(exited)} exited.`
    : "No contact entered or left a persona in this span — run a criterion to tag contacts.");
}

async function monSizes() {
  const r = await api("GET", "/monitoring/persona-sizes");
  if (!r.ok) { MON.failed("sizes", r); return; }
  const rows = r.data.personas;
  MON.whole(PT.chart("chart-sizes", {
    type: "bar", labels: rows.map((p) => p.key), unit: "contacts",
    series: [{ label: "members", data: rows.map((p) => p.members) }],
  }));
  MON.caption("sizes", rows.length ? `${PT.num(rows.length)} personas.` : "No personas yet — create one on the Personas page.");
}

PT.ready(async () => {
  if (document.body.dataset.page !== "monitoring") return;
  const days = () => Number(el("mon-days").value);
  const daily = () => Promise.all([monJobs(days()), monRequests(days()), monMoves(days())]);
  el("mon-days").addEventListener("change", daily);
  el("mon-requests-by").addEventListener("change", () => monRequests(days()));
  await Promise.all([monStream(), daily(), monSizes()]);
  document.body.dataset.chartsReady = "1";
});
