// Drives Debian's chromium through the views part of the governance console of a running
// `tally up` whose batch layer has computed some hours, printing one line per step for
// tests/dashboard.rs, and waiting for a line on stdin where the test checks the API:
// 1. `latency_by_type` changed in the form (grouped by os_type as well): the review panel
//    names the new logic version: "CHANGED <version>";
// 2. the computed range reprocessed for review, its progress drawn to the end:
//    "REPROCESSED <summary>";
// 3. compared with live hour by hour: "COMPARED <from> <to> <live count> <reviewed count>
//    <differing pairs>", then waits;
// 4. promoted: the new version's hours are live: "PROMOTED <live hours of the version>".
// Each step saves a screenshot, views-<step>.png, in the folder given.
// Usage: node views.mjs <dashboard url with the admin key> <screenshot folder>
import { fail, launch, openPage, testLines } from "./browser.mjs";

const [url, folder] = process.argv.slice(2);
const browser = await launch();
const input = testLines();
try {
  const page = await openPage(browser, 1400);
  const shot = (step) => page.screenshot({ path: `${folder}/views-${step}.png`, fullPage: true });
  const jobEnded = async () => {
    await page.waitForSelector("#job-line[data-state=done], #job-line[data-state=failed]", { timeout: 120000 });
    const status = await page.textContent("#job-status");
    if ((await page.getAttribute("#job-line", "data-state")) !== "done") fail(`the job failed: ${status}`);
    return status;
  };

  await page.goto(url);
  await page.click("nav button[data-tab=governance]");
  await page.waitForSelector("#views tbody tr");

  // 1. Change the view.
  await page.locator("#views tbody tr", { hasText: "latency_by_type" }).getByRole("button", { name: "Edit" }).click();
  await page.fill("#view-dimensions", "event_type, os_type");
  await page.click("#view-form button[type=submit]");
  await page.waitForFunction(() => document.getElementById("governance-message").textContent.includes("view 'latency_by_type' changed"), null, { timeout: 15000 });
  await page.waitForFunction(() => document.getElementById("review-view").textContent === "latency_by_type" && !document.getElementById("review").hidden);
  const version = await page.inputValue("#reprocess-version");
  if (!(await page.textContent("#review-summary")).includes(`logic version ${version}`)) fail("the new logic version is not named");
  await shot("changed");
  console.log(`CHANGED ${version}`);

  // 2. Reprocess the computed range for review, following its progress.
  await page.click("#reprocess-form button[type=submit]");
  const summary = await jobEnded();
  await page.waitForFunction((v) => [...document.querySelectorAll("#versions tbody tr")]
    .some((row) => row.cells[0].textContent.startsWith(v) && Number(row.cells[4].textContent) > 0), version);
  await shot("reprocessed");
  console.log(`REPROCESSED ${summary}`);

  // 3. Side by side with live.
  await page.click("#compare");
  await page.waitForSelector("#comparison tbody tr");
  const pairs = await page.$$eval("#comparison tbody tr", (rows) => rows.map((row) => [...row.cells].map((c) => c.textContent)));
  const counts = pairs.filter((p) => p[1] === "count");
  const live = counts.reduce((sum, p) => sum + Number(p[2]), 0);
  const reviewed = counts.reduce((sum, p) => sum + Number(p[3]), 0);
  const differing = pairs.filter((p) => Number(p[4]) !== 0).length;
  const from = new Date(await page.inputValue("#reprocess-from")).getTime();
  const to = new Date(await page.inputValue("#reprocess-to")).getTime();
  await shot("compared");
  console.log(`COMPARED ${from} ${to} ${live} ${reviewed} ${differing}`);
  await input.next();

  // 4. Promote it.
  await page.click("#promote");
  await jobEnded();
  const liveHours = await page.$$eval("#versions tbody tr", (rows, v) => rows
    .filter((row) => row.cells[0].textContent.startsWith(v))
    .map((row) => Number(row.cells[3].textContent))[0], version);
  await shot("promoted");
  console.log(`PROMOTED ${liveHours}`);
} finally {
  await browser.close();
  input.close();
}
