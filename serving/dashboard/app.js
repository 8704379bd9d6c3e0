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
