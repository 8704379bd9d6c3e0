// Drives Debian's chromium through the dashboard of a running `tally up`, printing one line
// per step for tests/dashboard.rs:
// 1. before any event: the empty state with its snippet, "READY <total>";
// 2. after a line on stdin (events sent): the total grows, "CHANGED <total>";
// 3. a filter (!=) and two group-by dimensions: every row meets the filter, the newest bucket
//    is first, "TOTAL <uniq users over the range>" and "LINK <the shareable link>";
// 4. a filter the view cannot answer: the error shows and nothing stale stays, "CLEARED".
// Each step saves a screenshot, dashboard-<step>.png, in the folder given.
// Usage: node check.mjs <dashboard url> <screenshot folder>
import { fail, launch, openPage, testLines } from "./browser.mjs";

const [url, folder] = process.argv.slice(2);
const browser = await launch();
const lines = testLines();
try {
  const page = await openPage(browser, 900);
  const notFound = [];
  page.on("response", (response) => { if (response.status() === 404) notFound.push(response.url()); });
  await page.goto(url);
  const total = async () => Number(await page.getAttribute("#total", "data-value"));
  const shot = (step) => page.screenshot({ path: `${folder}/dashboard-${step}.png`, fullPage: true });

  // 1. Nothing sent yet.
  await page.waitForFunction(() => /^\d+$/.test(document.getElementById("total").dataset.value || ""), null, { timeout: 30000 });
  if (await page.isHidden("#empty")) fail("no empty state before any event");
  if (!(await page.textContent("#empty-snippet")).includes("/v1/events")) fail("the empty state has no snippet");
  if (page.url().includes("key=")) fail(`the key stayed in the address: ${page.url()}`);
  if (notFound.length) fail(`the page asked for what is not there: ${notFound}`);
  // Every time in one zone, UTC unless switched: the horizon and "refreshed" say which.
  const zoneOf = async (id) => (await page.textContent(id)).split(" ").pop();
  const horizon = await page.textContent("#horizon");
  if ((await zoneOf("#refreshed")) !== "UTC" || (horizon !== "none yet" && !horizon.endsWith("UTC"))) fail(`not in UTC: ${await page.textContent(".summary")}`);
  await shot("empty");
  const before = await total();
  console.log(`READY ${before}`);
  await lines.next();

  // 2. Events arrive.
  await page.waitForFunction((seen) => Number(document.getElementById("total").dataset.value) > seen, before, { timeout: 30000 });
  if (!(await page.$("#chart canvas"))) fail("the chart did not draw");
  if (await page.isVisible("#empty")) fail("the empty state stayed");
  await shot("events");
  await page.selectOption("#time-zone", "local");
  await page.waitForFunction(() => {
    const horizon = document.getElementById("horizon").textContent;
    return document.getElementById("refreshed").textContent.endsWith("local")
      && (horizon === "none yet" || horizon.endsWith("local"));
  }, null, { timeout: 30000 });
  await page.selectOption("#time-zone", "utc");
  await page.waitForFunction(() => document.getElementById("refreshed").textContent.endsWith("UTC"), null, { timeout: 30000 });
  console.log(`CHANGED ${await total()}`);

  // 3. Filtered and grouped by two dimensions, charting distinct users.
  await page.selectOption("#group-by", ["event_type", "os_type"]);
  await page.fill("#filter", "os_type!=ios");
  await page.selectOption("#chart-measure", "uniq(user_id)");
  await page.dispatchEvent("#filter", "change");
  await page.waitForFunction(() => {
    const heads = [...document.querySelectorAll("#rows thead th")].map((th) => th.textContent);
    const rows = document.querySelectorAll("#rows tbody tr");
    return heads.includes("os_type") && heads.includes("event_type") && rows.length > 0
      && document.getElementById("chart-measure-name").textContent === "uniq(user_id)"
      && location.hash.includes("filter=");
  }, null, { timeout: 30000 });
  const table = await page.evaluate(() => {
    const heads = [...document.querySelectorAll("#rows thead th")].map((th) => th.textContent);
    return [...document.querySelectorAll("#rows tbody tr")].map((tr) =>
      Object.fromEntries([...tr.cells].map((td, i) => [heads[i], td.textContent])));
  });
  if (table.some((row) => row.os_type === "ios")) fail("a row the filter excludes is shown");
  const buckets = table.map((row) => row.bucket);
  if (buckets.join() !== [...buckets].sort().reverse().join()) fail(`not newest first: ${buckets}`);
  await shot("filtered");
  console.log(`TOTAL ${await total()}`);
  console.log(`LINK ${await page.getAttribute("#share", "href")}`);

  // 4. A query the view cannot answer: nothing of the last answer may stay on screen.
  await page.fill("#filter", "colour=red");
  await page.dispatchEvent("#filter", "change");
  await page.waitForFunction(() => document.getElementById("error").textContent.includes("colour"), null, { timeout: 30000 });
  if ((await page.$$("#rows tbody tr")).length > 0) fail("stale rows stayed after a failed query");
  if (await page.$("#chart canvas")) fail("a stale chart stayed after a failed query");
  if ((await page.textContent("#total")) !== "—") fail("a stale total stayed after a failed query");
  await shot("error");
  console.log("CLEARED");
} finally {
  lines.close();
  await browser.close();
}
