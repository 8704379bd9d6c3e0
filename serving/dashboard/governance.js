// The governance tab.
//
// The registry, permissions and keys, changed through the governance API only: with an admin
// key the forms save, with a read key the page is read-only. Every answer of a change is
// shown as the API words it (a refused alias says which tag owns it), and a new secret is
// shown once, until the user says it is stored.
"use strict";

function isAdmin() { return state.overview?.you?.scopes.includes("admin") ?? false; }

/** Runs a change, redraws what it changed, then shows what the API answered. */
async function governed(run) {
  let answer;
  try {
    answer = await run();
  } catch (err) {
    $("governance-message").textContent = "";
    showError(err.message);
    return null;
  }
  showError("");
  try {
    state.overview = await api("/v1/governance");
    await loadGovernance();
  } catch (err) {
    showError(`saved, but the page could not be redrawn: ${err.message}`);
  }
  // Last: whoever reads the message finds the tables already showing the change.
  $("governance-message").textContent = answer.message || "";
  return answer;
}

function actions(row, buttons) {
  const td = row.insertCell();
  if (isAdmin()) addButtons(td, buttons);
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
    // Who publishes a tag is for every key to see.
    for (const row of $("tags").tBodies[0].rows) {
      const tag = row.cells[0].textContent;
      addButtons(row.cells[row.cells.length - 1], [["Publishers", () => showPublishers(tag)]]);
    }
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
    loadViews();
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
      { value: (c) => showTime(Date.parse(c.hour)) },
      { value: (c) => c.code || "(before codes were kept)" },
      { value: (c) => c.source },
      { value: (c) => c.count },
    ]);
    $("reject-codes").replaceChildren(...[...new Set(counts.counts.map((c) => c.code).filter(Boolean))].map((code) => new Option(code)));
    // The newest 20: each on one line, its payload cut short (the whole of it on hover).
    const filter = new URLSearchParams({ limit: "20" });
    if ($("reject-code").value.trim()) filter.set("code", $("reject-code").value.trim());
    if ($("reject-source").value.trim()) filter.set("source", $("reject-source").value.trim());
    const rejected = await api(`/v1/governance/rejected?${filter}`);
    fill("rejected", rejected, [
      { value: (r) => showTime(r.received_at) },
      { value: (r) => r.source },
      { value: (r) => r.reasons.join("; ") },
      { value: (r) => clipped(r.payload, 120), className: "payload", title: (r) => r.payload },
    ]);
  } catch (err) {
    showError(err.message);
  }
}

/** Which sources published `tag` in the last 24 hours, and how often. */
async function showPublishers(tag) {
  try {
    const answer = await api(`/v1/governance/tags/${encodeURIComponent(tag)}/publishers?hours=24`);
    $("publishers").hidden = false;
    $("publishers-tag").textContent = answer.tag;
    fill("publishers-table", answer.sources, [
      { value: (s) => s.source },
      { value: (s) => s.events },
      { value: (s) => s.last_seen || "—" },
    ]);
    showError("");
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
  // A write key's source needs publishing permissions, or every event it sends is refused.
  const publishes = scopes.includes("write") ? list($("key-publishes").value) : undefined;
  showSecret(await governed(() => change("POST", "/v1/governance/keys", { source: $("key-source").value.trim(), scopes, publishes })));
});
$("reject-form").addEventListener("submit", (e) => { e.preventDefault(); loadRejected(); });
$("secret-done").addEventListener("click", () => {
  // Shown once: gone from the page as soon as the user has it.
  $("secret").textContent = "";
  $("secret-box").hidden = true;
});
