// The Tally dashboard: analytics (a view over time, filtered and grouped, chart and table,
// refreshed every two seconds, the batch/real-time horizon drawn on the chart, the query kept
// in a shareable link), governance (tags, event types, permissions and keys, changed through
// the governance API with an admin key; recent rejected events) and search over raw events.
// It talks only to the public HTTP API with the key taken from ?key= or typed in, and kept in
// this browser's localStorage.
"use strict";

const REFRESH_MS = 2000;
const MAX_SERIES = 12;
const COLORS = ["#2a6ef0", "#e8710a", "#188038", "#d93025", "#9334e6", "#12b5cb",
  "#f9ab00", "#5f6368", "#b31412", "#1a73e8", "#0d652d", "#a142f4"];

const $ = (id) => document.getElementById(id);
const state = { overview: null, chart: null, searchCursor: null, timer: null, xRange: null, asked: 0, linked: null };

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
//
// Every refresh asks two questions of the query API: the rows for the chart and the table,
// and the chosen measure over the whole range (granularity=all), which is the total. A
// total is never added up from buckets: uniq and quantiles do not add, and the API merges
// their states instead. An answer that fails clears what was shown, and an answer that
// arrives after a newer question was asked is dropped.

const GRANULARITY_MS = { minute: 60000, hour: 3600000, day: 86400000 };
/** The most buckets the automatic granularity draws. */
const MAX_BUCKETS = 360;
const compact = new Intl.NumberFormat("en", { notation: "compact", maximumFractionDigits: 2 });
const exact = new Intl.NumberFormat("en", { maximumFractionDigits: 2 });

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

function viewChanged(keep) {
  const view = currentView();
  if (!view) return;
  const chosen = keep ? groupBy() : [];
  $("group-by").replaceChildren(...view.dimensions.map((d) => new Option(d, d, false, chosen.includes(d))));
  if (!keep) {
    $("measures").value = "";
    $("filter").value = "";
  }
  measuresChanged();
  const order = ["minute", "hour", "day", "all"];
  for (const option of $("granularity").options) {
    option.disabled = option.value !== "auto" && order.indexOf(option.value) < order.indexOf(view.granularity);
  }
  if ($("granularity").selectedOptions[0]?.disabled) $("granularity").value = "auto";
  refresh();
}

function measuresChanged() {
  const view = currentView();
  const typed = $("measures").value.split(",").map((m) => m.trim()).filter(Boolean);
  const names = typed.length ? typed : defaultMeasures(view);
  const chosen = $("chart-measure").dataset.wanted || $("chart-measure").value;
  $("chart-measure").replaceChildren(...names.map((m) => new Option(m, m)));
  if (names.includes(chosen)) $("chart-measure").value = chosen;
  delete $("chart-measure").dataset.wanted;
}

function groupBy() { return [...$("group-by").selectedOptions].map((o) => o.value); }

function filters() { return $("filter").value.split(",").map((f) => f.trim()).filter(Boolean); }

/** [from, to) in epoch ms: a relative range ending a minute from now, or the custom one. */
function timeRange() {
  if ($("range").value === "custom") {
    return [new Date($("range-from").value).getTime(), new Date($("range-to").value).getTime()];
  }
  const to = Date.now() + 60000;
  return [to - Number($("range").value), to];
}

/** The granularity asked, or for "auto" the finest the view keeps that draws few enough buckets. */
function granularity(view, span) {
  if ($("granularity").value !== "auto") return $("granularity").value;
  const kept = ["minute", "hour", "day"].slice(["minute", "hour", "day"].indexOf(view.granularity));
  return kept.find((g) => span / GRANULARITY_MS[g] <= MAX_BUCKETS) || kept[kept.length - 1];
}

function queryParams(view) {
  const [from, to] = timeRange();
  const params = new URLSearchParams({ view: view.name, from: String(from), to: String(to), granularity: granularity(view, to - from) });
  if (groupBy().length) params.set("group_by", groupBy().join(","));
  for (const filter of filters()) params.append("filter", filter);
  if ($("measures").value.trim()) params.set("measures", $("measures").value.trim());
  return params;
}

async function refresh() {
  const view = currentView();
  if (!key() || !view) return;
  const measure = $("chart-measure").value || "count";
  const params = queryParams(view);
  const whole = new URLSearchParams(params);
  whole.set("granularity", "all");
  whole.delete("group_by");
  whole.set("measures", measure);
  const asked = ++state.asked;
  saveToLink();
  try {
    const [answer, total] = await Promise.all([api(`/v1/query?${params}`), api(`/v1/query?${whole}`)]);
    if (asked !== state.asked) return;
    render(answer, total.rows[0]?.[measure], measure);
    showError("");
  } catch (err) {
    if (asked !== state.asked) return;
    clearAnalytics();
    $("refreshed").textContent = `failed at ${new Date().toLocaleTimeString()}`;
    showError(err.message);
  }
}

function clearAnalytics() {
  state.chart?.destroy();
  state.chart = null;
  $("rows").tHead.replaceChildren();
  $("rows").tBodies[0].replaceChildren();
  $("total").textContent = "—";
  $("total").dataset.value = "";
  $("empty").hidden = true;
}

function formatted(value) {
  if (typeof value === "number") return exact.format(value);
  if (value === null || value === undefined) return "";
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

function render(answer, total, measure) {
  const groups = groupBy();
  const columns = answer.rows.length ? Object.keys(answer.rows[0]) : ["bucket", ...groups];
  // No events in the range: a count is 0, and other measures have no value.
  const value = total ?? (measure === "count" ? 0 : null);
  $("total").textContent = value === null ? "—" : exact.format(value);
  $("total").dataset.value = value === null ? "" : String(value);
  $("chart-measure-name").textContent = measure;
  $("horizon").textContent = answer.horizon ?? "none yet";
  $("refreshed").textContent = new Date().toLocaleTimeString();
  $("empty").hidden = answer.rows.length > 0;
  $("empty-snippet").textContent = emptySnippet();
  if (!answer.rows.length) {
    // Nothing to draw: the hint says what to do instead of an empty frame.
    state.chart?.destroy();
    state.chart = null;
  }

  const head = $("rows").tHead;
  head.replaceChildren();
  const headRow = head.insertRow();
  for (const name of columns) {
    const th = document.createElement("th");
    th.textContent = name;
    headRow.appendChild(th);
  }
  // The most recent buckets first.
  const newestFirst = [...answer.rows].sort((a, b) => (a.bucket < b.bucket ? 1 : a.bucket > b.bucket ? -1 : 0));
  fill("rows", newestFirst, columns.map((name) => ({ value: (row) => formatted(row[name]) })));
  if (answer.rows.length) drawChart(answer, measure, groups);
}

function emptySnippet() {
  return `curl -X POST ${location.origin}/v1/events \\
  -H 'Authorization: Bearer <write key>' -H 'Content-Type: application/json' \\
  -d '[{"event_type":"page_view","user_id":"u1","tags":{"url":"/home"}}]'`;
}

function drawChart(answer, measure, groups) {
  const seriesOf = (row) => (groups.length ? groups.map((g) => (row[g] === "" ? "(empty)" : row[g])).join(" · ") : measure);
  const buckets = [...new Set(answer.rows.map((r) => Date.parse(r.bucket) / 1000))].sort((a, b) => a - b);
  const index = new Map(buckets.map((b, i) => [b, i]));
  const names = [...new Set(answer.rows.map(seriesOf))].slice(0, MAX_SERIES);
  const series = names.map(() => buckets.map(() => null));
  for (const row of answer.rows) {
    const s = names.indexOf(seriesOf(row));
    if (s >= 0) series[s][index.get(Date.parse(row.bucket) / 1000)] = row[measure];
  }
  const horizon = answer.horizon ? Date.parse(answer.horizon) / 1000 : null;
  // The x axis spans the asked range, however few buckets hold events.
  state.xRange = [Date.parse(answer.sources.batch[0]) / 1000, Date.parse(answer.sources.speed[1]) / 1000];
  const yValues = (u, splits) => splits.map((v) => compact.format(v));
  const options = {
    scales: { x: { time: true, range: () => state.xRange } },
    width: Math.max(600, document.body.clientWidth - 40),
    height: 320,
    series: [{}, ...names.map((name, i) => ({ label: String(name), stroke: COLORS[i % COLORS.length], width: 2, points: { show: true }, value: (u, v) => (v === null ? "—" : exact.format(v)) }))],
    axes: [
      // Time labels at least 90 px apart, so that a 6-hour range by minute stays readable.
      { space: 90 },
      // Compact labels (1.2K, 3.4M), the axis as wide as its longest label.
      { values: yValues, size: (u, values) => 16 + 8 * Math.max(3, ...(values || []).map((v) => v.length)) },
    ],
    plugins: [horizonLine(horizon)],
  };
  const data = [buckets, ...series];
  const sameShape = state.chart && state.chart.series.length === options.series.length
    && state.chart.horizon === horizon && state.chart.names === names.join("\n");
  if (sameShape) {
    state.chart.setData(data);
  } else {
    state.chart?.destroy();
    state.chart = new uPlot(options, data, $("chart"));
    state.chart.horizon = horizon;
    state.chart.names = names.join("\n");
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
        ctx.fillText("batch | real-time", x + 4, u.bbox.top + 14 * devicePixelRatio);
        ctx.restore();
      },
    },
  };
}

// The query lives in the address's #fragment, never the key: a link to it is safe to share.
const LINKED = ["view", "range", "from", "to", "granularity", "group_by", "filter", "measures", "chart"];

function saveToLink() {
  const link = new URLSearchParams({ view: $("view").value, range: $("range").value, granularity: $("granularity").value });
  if ($("range").value === "custom") {
    link.set("from", $("range-from").value);
    link.set("to", $("range-to").value);
  }
  if (groupBy().length) link.set("group_by", groupBy().join(","));
  if ($("filter").value.trim()) link.set("filter", $("filter").value.trim());
  if ($("measures").value.trim()) link.set("measures", $("measures").value.trim());
  if ($("chart-measure").value) link.set("chart", $("chart-measure").value);
  const hash = `#${link}`;
  if (location.hash !== hash) history.replaceState(null, "", `${location.pathname}${hash}`);
  $("share").href = `${location.origin}${location.pathname}${hash}`;
}

/** Sets the controls from a shared link; the view's own options are set once it is loaded. */
function loadFromLink() {
  const link = new URLSearchParams(location.hash.slice(1));
  if (![...link.keys()].some((name) => LINKED.includes(name))) return null;
  if (link.get("range")) $("range").value = link.get("range");
  if (link.get("from")) $("range-from").value = link.get("from");
  if (link.get("to")) $("range-to").value = link.get("to");
  if (link.get("granularity")) $("granularity").value = link.get("granularity");
  $("filter").value = link.get("filter") || "";
  $("measures").value = link.get("measures") || "";
  if (link.get("chart")) $("chart-measure").dataset.wanted = link.get("chart");
  rangeChanged(false);
  return { view: link.get("view"), groupBy: (link.get("group_by") || "").split(",").filter(Boolean) };
}

function rangeChanged(andRefresh) {
  const custom = $("range").value === "custom";
  for (const label of document.querySelectorAll(".custom-range")) label.hidden = !custom;
  if (custom && !$("range-from").value) {
    $("range-from").value = localInput(Date.now() - 3600000);
    $("range-to").value = localInput(Date.now() + 60000);
  }
  if (andRefresh) refresh();
}

// ---- governance ----
//
// The registry, permissions and keys, changed through the governance API only: with an admin
// key the forms save, with a read key the page is read-only. Every answer of a change is
// shown as the API words it (a refused alias says which tag owns it), and a new secret is
// shown once, until the user says it is stored.

const list = (text) => text.split(",").map((item) => item.trim()).filter(Boolean);

function isAdmin() { return state.overview?.you?.scopes.includes("admin") ?? false; }

async function change(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${key()}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(answer.error || `${method} ${path}: HTTP ${response.status}`);
  return answer;
}

/** Runs a change, shows what the API answered, and reloads what it changed. */
async function governed(run) {
  try {
    const answer = await run();
    $("governance-message").textContent = answer.message || "";
    showError("");
    state.overview = await api("/v1/governance");
    await loadGovernance();
    return answer;
  } catch (err) {
    $("governance-message").textContent = "";
    showError(err.message);
    return null;
  }
}

function actions(row, buttons) {
  const td = row.insertCell();
  if (!isAdmin()) return;
  for (const [label, run] of buttons) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = label;
    button.addEventListener("click", run);
    td.appendChild(button);
  }
}

/** Fills `table` with `rows`, each a list of cells and the row's buttons. */
function fillWithActions(table, rows) {
  const body = $(table).tBodies[0];
  body.replaceChildren();
  for (const [cells, buttons] of rows) {
    const row = body.insertRow();
    for (const value of cells) cell(row, value);
    actions(row, buttons);
  }
}

async function loadGovernance() {
  try {
    const overview = state.overview;
    const registry = overview.registry;
    $("read-only").hidden = isAdmin();
    for (const form of document.querySelectorAll("form.admin")) form.hidden = !isAdmin();
    $("tag-names").replaceChildren(...Object.keys(registry.tags).map((name) => new Option(name)));
    fillWithActions("tags", Object.entries(registry.tags).map(([name, spec]) => [
      [name, spec.type, spec.aliases.join(", ")],
      [["Edit", () => editTag(name, spec)], ["Delete", () => governed(() => change("DELETE", `/v1/governance/tags/${encodeURIComponent(name)}`))]],
    ]));
    fillWithActions("event-types", Object.entries(registry.event_types).map(([name, spec]) => [
      [name, (spec.aliases || []).join(", "), spec.required.join(", "), spec.optional.join(", "), spec.retention_days],
      [["Edit", () => editEventType(name, spec)], ["Delete", () => governed(() => change("DELETE", `/v1/governance/event-types/${encodeURIComponent(name)}`))]],
    ]));
    fillWithActions("sources", Object.entries(registry.sources).map(([name, policy]) => [
      [name, policy.event_types.join(", ")],
      [["Edit", () => { $("source-name").value = name; $("source-types").value = policy.event_types.join(", "); }]],
    ]));
    fillWithActions("keys", overview.keys.map((k) => [
      [k.id, k.source, k.scopes.join(", "), k.expires_at || ""],
      [["Rotate", () => rotateKey(k.source)], ["Revoke", () => revokeKey(k.source)]],
    ]));
    await loadRejected();
  } catch (err) {
    showError(err.message);
  }
}

/** The rejected events' counts per hour, code and source, and the latest ones, filtered. */
async function loadRejected() {
  try {
    const counts = await api("/v1/governance/rejected/counts?hours=24");
    const newestFirst = [...counts.counts].reverse();
    fill("reject-counts", newestFirst, [
      { value: (c) => c.hour },
      { value: (c) => c.code || "(before codes were kept)" },
      { value: (c) => c.source },
      { value: (c) => c.count },
    ]);
    $("reject-codes").replaceChildren(...[...new Set(counts.counts.map((c) => c.code).filter(Boolean))].map((code) => new Option(code)));
    const filter = new URLSearchParams({ limit: "100" });
    if ($("reject-code").value.trim()) filter.set("code", $("reject-code").value.trim());
    if ($("reject-source").value.trim()) filter.set("source", $("reject-source").value.trim());
    const rejected = await api(`/v1/governance/rejected?${filter}`);
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

function editTag(name, spec) {
  $("tag-name").value = name;
  $("tag-type").value = spec.type;
  $("tag-aliases").value = spec.aliases.join(", ");
  checkAliases();
}

function editEventType(name, spec) {
  $("event-type-name").value = name;
  $("event-type-aliases").value = (spec.aliases || []).join(", ");
  $("event-type-required").value = spec.required.join(", ");
  $("event-type-optional").value = spec.optional.join(", ");
  $("event-type-retention").value = spec.retention_days;
}

/** Asks, for each alias typed, which tag it already names or resembles. */
async function checkAliases() {
  const tag = $("tag-name").value.trim();
  const notes = [];
  for (const alias of list($("tag-aliases").value)) {
    try {
      const answer = await api(`/v1/governance/suggest?tag=${encodeURIComponent(alias)}`);
      if (answer.canonical && answer.canonical !== tag && answer.match !== "similar") {
        notes.push(`'${alias}' already names tag '${answer.canonical}'`);
      } else if (answer.match === "similar" && answer.canonical !== tag) {
        notes.push(`'${alias}' is close to tag '${answer.canonical}': did you mean it?`);
      }
    } catch (err) {
      notes.push(err.message);
    }
  }
  $("alias-check").textContent = notes.join("; ");
  $("alias-check").classList.toggle("warn", notes.length > 0);
}

function showSecret(answer) {
  if (!answer) return;
  $("secret-message").textContent = answer.message;
  $("secret").textContent = answer.key;
  $("secret-box").hidden = false;
}

async function rotateKey(source) {
  showSecret(await governed(() => change("POST", `/v1/governance/keys/${encodeURIComponent(source)}/rotate`)));
}

async function revokeKey(source) {
  if (!confirm(`Revoke key '${source}'? Its senders are refused from now on.`)) return;
  await governed(() => change("DELETE", `/v1/governance/keys/${encodeURIComponent(source)}`));
}

$("tag-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("tag-name").value.trim();
  governed(() => change("PUT", `/v1/governance/tags/${encodeURIComponent(name)}`,
    { type: $("tag-type").value, aliases: list($("tag-aliases").value) }));
});
$("tag-aliases").addEventListener("input", checkAliases);
$("event-type-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("event-type-name").value.trim();
  governed(() => change("PUT", `/v1/governance/event-types/${encodeURIComponent(name)}`, {
    aliases: list($("event-type-aliases").value),
    required: list($("event-type-required").value),
    optional: list($("event-type-optional").value),
    retention_days: Number($("event-type-retention").value),
  }));
});
$("source-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("source-name").value.trim();
  governed(() => change("PUT", `/v1/governance/sources/${encodeURIComponent(name)}`, { event_types: list($("source-types").value) }));
});
$("key-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const scopes = [...$("key-scopes").selectedOptions].map((o) => o.value);
  showSecret(await governed(() => change("POST", "/v1/governance/keys", { source: $("key-source").value.trim(), scopes })));
});
$("reject-form").addEventListener("submit", (e) => { e.preventDefault(); loadRejected(); });
$("secret-done").addEventListener("click", () => {
  // Shown once: gone from the page as soon as the user has it.
  $("secret").textContent = "";
  $("secret-box").hidden = true;
});

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
  const linked = state.linked;
  state.linked = null;
  const chosen = linked?.view || $("view").value;
  $("view").replaceChildren(...state.overview.views.map((v) => new Option(v.name, v.name)));
  if (state.overview.views.some((v) => v.name === chosen)) $("view").value = chosen;
  if (linked) {
    viewChanged(true);
    for (const option of $("group-by").options) option.selected = linked.groupBy.includes(option.value);
    refresh();
  } else {
    viewChanged(false);
  }
  clearInterval(state.timer);
  state.timer = setInterval(refresh, REFRESH_MS);
  // Another key may see another tenant, or may not change it.
  if (!$("governance").hidden) loadGovernance();
}

for (const button of document.querySelectorAll("nav button")) {
  button.addEventListener("click", () => {
    for (const other of document.querySelectorAll("nav button")) other.classList.toggle("active", other === button);
    for (const tab of document.querySelectorAll(".tab")) tab.hidden = tab.id !== button.dataset.tab;
    if (button.dataset.tab === "governance" && state.overview) loadGovernance();
  });
}
$("view").addEventListener("change", () => viewChanged(false));
$("range").addEventListener("change", () => rangeChanged(true));
for (const id of ["range-from", "range-to", "granularity", "group-by", "chart-measure", "filter"]) $(id).addEventListener("change", refresh);
$("measures").addEventListener("change", () => { measuresChanged(); refresh(); });
$("query-form").addEventListener("submit", (e) => { e.preventDefault(); refresh(); });
$("key").addEventListener("change", start);
$("search-form").addEventListener("submit", (e) => { e.preventDefault(); search(null); });
$("search-next").addEventListener("click", () => search(state.searchCursor));
$("search-from").value = localInput(Date.now() - 3600000);
$("search-to").value = localInput(Date.now());

// A key given as ?key= is kept in this browser and taken out of the address, so that the
// address can be shared.
const givenKey = new URLSearchParams(location.search).get("key");
if (givenKey) {
  localStorage.setItem("tally-read-key", givenKey);
  history.replaceState(null, "", `${location.pathname}${location.hash}`);
}
$("key").value = givenKey || localStorage.getItem("tally-read-key") || "";
state.linked = loadFromLink();
start();
