// The dashboard's wiring: the key, the tabs, the controls, and the first load.
"use strict";

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
// Search offers the ranges analytics does.
$("search-range").replaceChildren(...[...$("range").options].map((o) => new Option(o.text, o.value, o.defaultSelected, o.defaultSelected)));
$("search-range").addEventListener("change", () => {
  const custom = $("search-range").value === "custom";
  for (const label of document.querySelectorAll(".search-custom")) label.hidden = !custom;
  if (custom && !$("search-from").value) {
    $("search-from").value = timeInput(Date.now() - 3600000);
    $("search-to").value = timeInput(Date.now() + 60000);
  }
});

// One zone for every time shown and picked; a switch keeps the picked instants.
$("time-zone").value = localStorage.getItem("tally-time-zone") || "utc";
let zoneShown = $("time-zone").value;
$("time-zone").addEventListener("change", () => {
  const pickers = [...document.querySelectorAll("input[type=datetime-local]")].filter((input) => input.value);
  const chosen = $("time-zone").value;
  $("time-zone").value = zoneShown;
  const instants = pickers.map((input) => inputTime(input.value));
  $("time-zone").value = chosen;
  pickers.forEach((input, i) => { input.value = timeInput(instants[i]); });
  zoneShown = chosen;
  localStorage.setItem("tally-time-zone", chosen);
  // The chart's axis is set when it is made.
  state.chart?.destroy();
  state.chart = null;
  if (state.overview) {
    refresh();
    if (!$("governance").hidden) loadGovernance();
  }
});

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
