// The views part of the governance tab: define and change views, and review a change before
// it goes live. A change of a view's spec gives it a new logic version; the batch layer
// recomputes a chosen range under it, staged (POST …/reprocess, a batch job whose progress
// is drawn here); the staged numbers are put beside the live batch ones hour by hour
// (GET /v1/query with logic_version=N and logic_version=live); and only a promotion (POST …/promote,
// another job) makes them live, in one manifest swap.
"use strict";

const JOB_POLL_MS = 1000;
const review = { view: null, versions: null, job: null, shown: null };

function loadViews() {
  const body = $("views").tBodies[0];
  body.replaceChildren();
  const failing = state.overview.failing_views || {};
  for (const view of state.overview.views) {
    const row = body.insertRow();
    const name = failing[view.name] ? `${view.name} (failing: ${failing[view.name]})` : view.name;
    for (const value of [name, view.events.join(", "), view.dimensions.join(", "), view.measures.join(", "), view.granularity]) {
      cell(row, value);
    }
    if (failing[view.name]) row.classList.add("failing");
    // Looking at versions is for every key; changing is for an admin key.
    const buttons = [["Versions", () => openReview(view.name)]];
    if (isAdmin()) buttons.unshift(["Edit", () => editView(view)]);
    addButtons(row.insertCell(), buttons);
  }
  for (const button of document.querySelectorAll(".admin-action")) button.hidden = !isAdmin();
  if (review.view) openReview(review.view);
  loadJobs();
}

function editView(view) {
  $("view-name").value = view.name;
  $("view-events").value = view.events.join(", ");
  $("view-dimensions").value = view.dimensions.join(", ");
  $("view-measures").value = view.measures.join(", ");
  $("view-granularity").value = view.granularity;
}

/** Shows the logic versions of `name`, with their live and staged hours. */
async function openReview(name) {
  review.view = name;
  try {
    const versions = await api(`/v1/governance/views/${encodeURIComponent(name)}/versions`);
    review.versions = versions;
    $("review").hidden = false;
    $("review-view").textContent = name;
    const registered = versions.spec_registered ? "" : " (registered by the next batch run or reprocess)";
    const failing = versions.failing
      ? ` The batch layer cannot recompute it: ${versions.failing}. Fix its spec; queries reaching before the horizon are refused meanwhile.`
      : "";
    $("review-summary").textContent =
      `The view's spec now computes under logic version ${versions.spec_version}${registered}; ` +
      `new hours use version ${versions.current_version ?? "—"}. Batch horizon ${versions.horizon ? showTime(Date.parse(versions.horizon)) : "none yet"}.` +
      failing;
    fillWithActions("versions", versions.versions.map((v) => [
      [`${v.logic_version}${v.current ? " (current)" : ""}`, v.spec.dimensions.join(", "), v.spec.measures.join(", "), v.live_hours, v.staged_hours],
      [],
    ]));
    if (!$("reprocess-version").value || review.shown !== name) {
      $("reprocess-version").value = versions.spec_version;
      const computed = versions.computed;
      const from = computed ? Date.parse(computed.from) : Date.now() - 86400000;
      const to = computed ? Date.parse(computed.to) : Date.now();
      $("reprocess-from").value = timeInput(from);
      $("reprocess-to").value = timeInput(Math.max(to, from + 3600000));
      review.shown = name;
      $("comparison").tBodies[0].replaceChildren();
    }
    const staged = versions.versions.some((v) => v.staged_hours > 0);
    $("promote").disabled = !staged;
  } catch (err) {
    showError(err.message);
  }
}

function reviewRange() {
  return {
    from: new Date(inputTime($("reprocess-from").value)).toISOString(),
    to: new Date(inputTime($("reprocess-to").value)).toISOString(),
  };
}

/** Marks the job line as waiting for a job just asked for, before the request is sent. */
function asking() {
  review.job = null;
  $("job-line").hidden = false;
  $("job-line").dataset.state = "asking";
  $("job-status").textContent = "asking…";
}

/** Draws a job's progress until it ends, then reloads the versions and the jobs. */
async function followJob(id) {
  review.job = id;
  $("job-line").hidden = false;
  for (;;) {
    let job;
    try {
      job = await api(`/v1/governance/jobs/${encodeURIComponent(id)}`);
    } catch (err) {
      showError(err.message);
      return;
    }
    if (review.job !== id) return;
    const status = job.status;
    const progress = $("job-progress");
    if (status.state === "queued") {
      progress.removeAttribute("value");
      $("job-status").textContent = "waiting for the batch scheduler (tally up, or tally batch schedule, runs it)";
    } else if (status.state === "running") {
      const planned = status.hours_planned;
      progress.max = planned || 1;
      progress.value = planned ? status.hours_done : 0;
      const again = status.attempt > 1 ? ` (attempt ${status.attempt}: its first scheduler stopped)` : "";
      $("job-status").textContent = (planned === null
        ? "running: listing the archive"
        : `running: ${status.hours_done} of ${planned} hours, ${exact.format(status.raw_rows)} raw events read`) + again;
    } else {
      progress.max = 1;
      progress.value = 1;
      $("job-status").textContent = status.state === "done" ? `done: ${status.summary}` : `failed: ${status.error}`;
      await openReview(job.view);
      await loadJobs();
      // Last: what reads the page once the job ended finds the versions and jobs updated.
      $("job-line").dataset.state = status.state;
      return;
    }
    $("job-line").dataset.state = status.state;
    await new Promise((resolve) => setTimeout(resolve, JOB_POLL_MS));
  }
}

async function loadJobs() {
  try {
    const jobs = await api("/v1/governance/jobs");
    fill("jobs", jobs, [
      { value: (j) => showTime(j.requested_at) },
      { value: (j) => j.view },
      { value: (j) => j.work.kind === "reprocess"
        ? `reprocess ${showTime(j.work.from)} – ${showTime(j.work.to)} as version ${j.work.logic_version}`
        : `promote version ${j.work.logic_version}` },
      { value: (j) => j.status.state },
      { value: (j) => j.status.summary || j.status.error || (j.status.state === "running" ? `${j.status.hours_done} of ${j.status.hours_planned ?? "?"} hours` : "") },
    ]);
  } catch (err) {
    showError(err.message);
  }
}

/**
 * Puts the live numbers of the range beside those of the reviewed version, hour by hour, for
 * the measures every version involved keeps; the hours that differ are marked.
 */
async function compare() {
  const version = Number($("reprocess-version").value);
  const versions = review.versions.versions;
  const involved = versions.filter((v) => v.live_hours > 0 || v.logic_version === version);
  const measures = involved
    .map((v) => v.spec.measures)
    .reduce((common, next) => common.filter((m) => next.includes(m)))
    .filter((m) => !m.startsWith("quantiles("));
  const { from, to } = reviewRange();
  const params = new URLSearchParams({ view: review.view, from, to, granularity: "hour", measures: measures.join(",") });
  try {
    const [live, reviewed] = await Promise.all([
      api(`/v1/query?${params}&logic_version=live`),
      api(`/v1/query?${params}&logic_version=${version}`),
    ]);
    const liveByHour = new Map(live.rows.map((row) => [row.bucket, row]));
    const rows = [];
    for (const row of [...reviewed.rows].reverse()) {
      for (const measure of measures) {
        const before = liveByHour.get(row.bucket)?.[measure] ?? 0;
        const after = row[measure] ?? 0;
        rows.push({ hour: row.bucket, measure, before, after });
      }
    }
    const body = $("comparison").tBodies[0];
    body.replaceChildren();
    for (const r of rows) {
      const tr = body.insertRow();
      cell(tr, showTime(Date.parse(r.hour)));
      cell(tr, r.measure);
      cell(tr, r.before);
      cell(tr, r.after);
      cell(tr, r.after - r.before, r.after !== r.before ? "changed" : "");
    }
    const lacking = reviewed.review?.hours_without_it ?? 0;
    $("job-status").textContent = `${rows.length} hour × measure pairs compared, ${rows.filter((r) => r.after !== r.before).length} differ` +
      (lacking ? `; ${lacking} live hour(s) of the range have no version ${version} yet` : "");
    $("job-line").hidden = false;
    showError("");
  } catch (err) {
    showError(err.message);
  }
}

$("view-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const name = $("view-name").value.trim();
  const answer = await governed(() => change("PUT", `/v1/governance/views/${encodeURIComponent(name)}`, {
    name,
    events: list($("view-events").value),
    dimensions: list($("view-dimensions").value),
    measures: list($("view-measures").value),
    granularity: $("view-granularity").value,
  }));
  if (answer) {
    review.shown = null;
    await openReview(name);
  }
});
$("reprocess-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const body = { ...reviewRange(), logic_version: Number($("reprocess-version").value) };
  asking();
  try {
    const job = await change("POST", `/v1/governance/views/${encodeURIComponent(review.view)}/reprocess`, body);
    showError("");
    await followJob(job.id);
  } catch (err) {
    showError(err.message);
  }
});
$("compare").addEventListener("click", compare);
$("promote").addEventListener("click", async () => {
  const version = Number($("reprocess-version").value);
  if (!confirm(`Make the staged hours of logic version ${version} of '${review.view}' live?`)) return;
  asking();
  try {
    const job = await change("POST", `/v1/governance/views/${encodeURIComponent(review.view)}/promote`, { logic_version: version });
    showError("");
    await followJob(job.id);
  } catch (err) {
    showError(err.message);
  }
});
