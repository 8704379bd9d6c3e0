// The Tally dashboard: analytics (a view over time, chart and table, refreshed every two
// seconds, the batch/speed horizon drawn on the chart), governance (the registry and recent
// rejected events) and search over raw events. It talks only to the public HTTP API with a
// read key, taken from ?key= or typed in, and kept in this browser's localStorage.
"use strict";

const REFRESH_MS = 2000;
const MAX_SERIES = 12;
const COLORS = ["#2a6ef0", "#e8710a", "#188038", "#d93025", "#9334e6", "#12b5cb",
  "#f9ab00", "#5f6368", "#b31412", "#1a73e8", "#0d652d", "#a142f4"];

const $ = (id) => document.getElementById(id);
const state = { overview: null, chart: null, searchCursor: null, timer: null, xRange: null };

function key() { return $("key").value.trim(); }

function showError(message) { $("error").textContent = message || ""; }

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${key()}` } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${path}: HTTP ${response.status}`);
  return body;
}

function cell(row, value, className) {
  const td = row.insertCell();
  td.textContent = value === null || value === undefined ? "" : value;
  if (className) td.className = className;
}

function fill(table, rows, columns) {
  const body = $(table).tBodies[0];
  body.replaceChildren();
  for (const item of rows) {
    const row = body.insertRow();
    for (const column of columns) cell(row, column.value(item), column.className);
  }
}

// ---- analytics ----

function currentView() {
  return state.overview?.views.find((v) => v.name === $("view").value);
}

function defaultMeasures(view) {
  const names = [];
  for (const measure of view.measures) {
    const field = measure.match(/\((.*)\)/)?.[1];
    if (measure === "count") names.push("count");
    else if (measure.startsWith("sum")) names.push(`sum(${field})`, `avg(${field})`);
    else if (measure.startsWith("quantiles")) names.push(`p50(${field})`, `p90(${field})`, `p99(${field})`);
    else names.push(measure);
  }
  return names;
}

function viewChanged() {
  const view = currentView();
  if (!view) return;
  $("group-by").replaceChildren(new Option("(none)", ""), ...view.dimensions.map((d) => new Option(d, d)));
  $("measures").value = "";
  measuresChanged();
  const finest = ["minute", "hour", "day", "all"];
  for (const option of $("granularity").options) {
    option.disabled = finest.indexOf(option.value) < finest.indexOf(view.granularity);
  }
  $("granularity").value = view.granularity;
  refresh();
}

function measuresChanged() {
  const view = currentView();
  const typed = $("measures").value.split(",").map((m) => m.trim()).filter(Boolean);
  const names = typed.length ? typed : defaultMeasures(view);
  const chosen = $("chart-measure").value;
  $("chart-measure").replaceChildren(...names.map((m) => new Option(m, m)));
  if (names.includes(chosen)) $("chart-measure").value = chosen;
}

function queryPath() {
  const to = Date.now() + 60000;
  const params = new URLSearchParams({
    view: $("view").value,
    from: String(to - Number($("range").value)),
    to: String(to),
    granularity: $("granularity").value,
  });
  if ($("group-by").value) params.set("group_by", $("group-by").value);
  if ($("measures").value.trim()) params.set("measures", $("measures").value.trim());
  return `/v1/query?${params}`;
}

async function refresh() {
  if (!key() || !currentView()) return;
  try {
    const answer = await api(queryPath());
    render(answer);
    showError("");
  } catch (err) {
    showError(err.message);
  }
}

function render(answer) {
  const measure = $("chart-measure").value || "count";
  const group = $("group-by").value;
  const measures = answer.rows.length ? Object.keys(answer.rows[0]).filter((k) => k !== "bucket" && k !== group) : [];
  const total = answer.rows.reduce((sum, row) => sum + (typeof row[measure] === "number" ? row[measure] : 0), 0);
  $("total").textContent = Number.isInteger(total) ? String(total) : total.toFixed(2);
  $("chart-measure-name").textContent = measure;
  $("batch-range").textContent = answer.sources.batch.join(" → ");
  $("speed-range").textContent = answer.sources.speed.join(" → ");
  $("refreshed").textContent = new Date().toLocaleTimeString();

  const head = $("rows").tHead;
  head.replaceChildren();
  const headRow = head.insertRow();
  for (const name of ["bucket", ...(group ? [group] : []), ...measures]) {
    const th = document.createElement("th");
    th.textContent = name;
    headRow.appendChild(th);
  }
  fill("rows", answer.rows, ["bucket", ...(group ? [group] : []), ...measures].map((name) => ({
    value: (row) => (typeof row[name] === "object" && row[name] !== null ? JSON.stringify(row[name]) : row[name]),
  })));
  drawChart(answer, measure, group);
}

function drawChart(answer, measure, group) {
  const buckets = [...new Set(answer.rows.map((r) => Date.parse(r.bucket) / 1000))].sort((a, b) => a - b);
  const index = new Map(buckets.map((b, i) => [b, i]));
  const groups = [...new Set(answer.rows.map((r) => (group ? r[group] : measure)))].slice(0, MAX_SERIES);
  const series = groups.map(() => buckets.map(() => null));
  for (const row of answer.rows) {
    const g = groups.indexOf(group ? row[group] : measure);
    if (g >= 0) series[g][index.get(Date.parse(row.bucket) / 1000)] = row[measure];
  }
  const horizon = answer.horizon ? Date.parse(answer.horizon) / 1000 : null;
  // The x axis spans the asked range, however few buckets hold events.
  state.xRange = [Date.parse(answer.sources.batch[0]) / 1000, Date.parse(answer.sources.speed[1]) / 1000];
  const options = {
    scales: { x: { time: true, range: () => state.xRange } },
    width: Math.max(600, document.body.clientWidth - 40),
    height: 320,
    series: [{}, ...groups.map((g, i) => ({ label: String(g === "" ? "(empty)" : g), stroke: COLORS[i % COLORS.length], width: 2, points: { show: true } }))],
    axes: [{}, { size: 60 }],
    plugins: [horizonLine(horizon)],
  };
  const data = [buckets, ...series];
  if (state.chart && state.chart.series.length === options.series.length && state.chart.horizon === horizon) {
    state.chart.setData(data);
  } else {
    state.chart?.destroy();
    state.chart = new uPlot(options, data, $("chart"));
    state.chart.horizon = horizon;
  }
}

/** A uPlot plugin drawing the batch horizon: batch views left of it, real-time views right. */
function horizonLine(horizon) {
  return {
    hooks: {
      draw: (u) => {
        if (horizon === null) return;
        const x = u.valToPos(horizon, "x", true);
        if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) return;
        const ctx = u.ctx;
        ctx.save();
        ctx.strokeStyle = "#b3261e";
        ctx.setLineDash([6, 4]);
        ctx.beginPath();
        ctx.moveTo(x, u.bbox.top);
        ctx.lineTo(x, u.bbox.top + u.bbox.height);
        ctx.stroke();
        ctx.fillStyle = "#b3261e";
        ctx.font = `${12 * devicePixelRatio}px system-ui`;
        ctx.fillText("batch | speed", x + 4, u.bbox.top + 14 * devicePixelRatio);
        ctx.restore();
      },
    },
  };
}

// ---- governance ----

async function loadGovernance() {
  try {
    const overview = state.overview;
    const registry = overview.registry;
    fill("event-types", Object.entries(registry.event_types), [
      { value: ([name]) => name },
      { value: ([, spec]) => spec.required.join(", ") },
      { value: ([, spec]) => spec.optional.join(", ") },
      { value: ([, spec]) => spec.retention_days },
    ]);
    fill("tags", Object.entries(registry.tags), [
      { value: ([name]) => name },
      { value: ([, spec]) => spec.type },
      { value: ([, spec]) => spec.aliases.join(", ") },
    ]);
    fill("sources", Object.entries(registry.sources), [
      { value: ([name]) => name },
      { value: ([, policy]) => policy.event_types.join(", ") },
    ]);
    const rejected = await api("/v1/governance/rejected?limit=50");
    fill("rejected", rejected, [
      { value: (r) => new Date(r.received_at).toISOString() },
      { value: (r) => r.source },
      { value: (r) => r.reasons.join("; ") },
      { value: (r) => r.payload, className: "payload" },
    ]);
  } catch (err) {
    showError(err.message);
  }
}

// ---- search ----

function localInput(ms) {
  const date = new Date(ms - new Date().getTimezoneOffset() * 60000);
  return date.toISOString().slice(0, 16);
}

async function search(cursor) {
  const params = new URLSearchParams({
    start_time: String(Math.floor(new Date($("search-from").value).getTime() / 1000)),
    end_time: String(Math.ceil(new Date($("search-to").value).getTime() / 1000) + 60),
    limit: "100",
  });
  if ($("search-type").value.trim()) params.set("event_type", $("search-type").value.trim());
  if (cursor) params.set("cursor", cursor);
  try {
    const answer = await api(`/v1/events/search?${params}`);
    fill("events", answer.result, [
      { value: (e) => new Date(e.ts).toISOString() },
      { value: (e) => e.event_type },
      { value: (e) => e.user_id },
      { value: (e) => e.source },
      { value: (e) => JSON.stringify(e.tags), className: "payload" },
      { value: (e) => e.event_id },
    ]);
    state.searchCursor = answer.nextCursor;
    $("search-next").disabled = !answer.nextCursor;
    showError("");
  } catch (err) {
    showError(err.message);
  }
}

// ---- wiring ----

async function start() {
  if (!key()) {
    showError("Enter a read key (tally up prints the demo tenant's).");
    return;
  }
  localStorage.setItem("tally-read-key", key());
  try {
    state.overview = await api("/v1/governance");
  } catch (err) {
    showError(err.message);
    return;
  }
  const chosen = $("view").value;
  $("view").replaceChildren(...state.overview.views.map((v) => new Option(v.name, v.name)));
  if (state.overview.views.some((v) => v.name === chosen)) $("view").value = chosen;
  viewChanged();
  clearInterval(state.timer);
  state.timer = setInterval(refresh, REFRESH_MS);
}

for (const button of document.querySelectorAll("nav button")) {
  button.addEventListener("click", () => {
    for (const other of document.querySelectorAll("nav button")) other.classList.toggle("active", other === button);
    for (const tab of document.querySelectorAll(".tab")) tab.hidden = tab.id !== button.dataset.tab;
    if (button.dataset.tab === "governance" && state.overview) loadGovernance();
  });
}
$("view").addEventListener("change", viewChanged);
for (const id of ["range", "granularity", "group-by", "chart-measure"]) $(id).addEventListener("change", refresh);
$("measures").addEventListener("change", () => { measuresChanged(); refresh(); });
$("key").addEventListener("change", start);
$("search-form").addEventListener("submit", (e) => { e.preventDefault(); search(null); });
$("search-next").addEventListener("click", () => search(state.searchCursor));
$("search-from").value = localInput(Date.now() - 3600000);
$("search-to").value = localInput(Date.now());

$("key").value = new URLSearchParams(location.search).get("key") || localStorage.getItem("tally-read-key") || "";
start();
