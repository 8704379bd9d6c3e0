// The analytics tab.
//
// Every refresh asks two questions of the query API: the rows for the chart and the table,
// and the chosen measure over the whole range (granularity=all), which is the total. A
// total is never added up from buckets: uniq and quantiles do not add, and the API merges
// their states instead. An answer that fails clears what was shown, and an answer that
// arrives after a newer question was asked is dropped.
"use strict";

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
    return [inputTime($("range-from").value), inputTime($("range-to").value)];
  }
  return recentRange(Number($("range").value));
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
    clearError("analytics");
  } catch (err) {
    if (asked !== state.asked) return;
    clearAnalytics();
    $("refreshed").textContent = `failed at ${showTime(Date.now())}`;
    showError(err.message, "analytics");
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
  $("horizon").textContent = answer.horizon ? showTime(Date.parse(answer.horizon)) : "none yet";
  $("refreshed").textContent = showTime(Date.now());
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
  const shown = (name, row) => (name === "bucket" ? showTime(Date.parse(row.bucket)) : formatted(row[name]));
  fill("rows", newestFirst, columns.map((name) => ({ value: (row) => shown(name, row) })));
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
    // The axis in the zone shown: uPlot draws local time unless told otherwise.
    tzDate: (ts) => (inUtc() ? uPlot.tzDate(new Date(ts * 1000), "Etc/UTC") : new Date(ts * 1000)),
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
    $("range-from").value = timeInput(Date.now() - 3600000);
    $("range-to").value = timeInput(Date.now() + 60000);
  }
  if (andRefresh) refresh();
}
