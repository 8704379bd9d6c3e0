// Drives Debian's chromium through the dashboard's search page of a running `tally up`,
// printing one line for tests/dashboard.rs: the query given, searched again until the event
// sent seconds earlier shows (the index commits about once a second), with the matched parts
// of its fields marked: "FOUND <event id> <total> <marked texts, |-separated>". A query that is not one
// shows the API's reason and no stale rows: "REFUSED <reason>". Screenshots search-found.png
// and search-refused.png go in the folder given.
// Usage: node search.mjs <dashboard url with a read key> <query> <event id> <screenshot folder>
import { fail, launch, openPage } from "./browser.mjs";

const [url, query, eventId, folder] = process.argv.slice(2);
const browser = await launch();
try {
  const page = await openPage(browser, 900);
  await page.goto(url);
  await page.click("nav button[data-tab=search]");
  await page.fill("#search-q", query);
  const deadline = Date.now() + 20000;
  for (;;) {
    await page.click("#search-form button[type=submit]");
    await page.waitForFunction(() => document.getElementById("search-summary").textContent !== "" || document.getElementById("error").textContent !== "");
    if ((await page.textContent("#events")).includes(eventId)) break;
    if (Date.now() > deadline) fail(`the event ${eventId} was not found: ${await page.textContent("#search-summary")} ${await page.textContent("#error")}`);
    await page.evaluate(() => { document.getElementById("search-summary").textContent = ""; });
    await page.waitForTimeout(250);
  }
  const row = page.locator("#events tbody tr", { hasText: eventId });
  const marks = (await row.locator("mark").allTextContents()).join("|");
  const total = (await page.textContent("#search-summary")).split(" ")[0];
  await page.screenshot({ path: `${folder}/search-found.png`, fullPage: true });
  console.log(`FOUND ${eventId} ${total} ${marks}`);

  await page.fill("#search-q", "latency_ms:[1 TO 5]");
  await page.click("#search-form button[type=submit]");
  await page.waitForFunction(() => document.getElementById("error").textContent !== "");
  if (await page.locator("#events tbody tr").count()) fail("rows of the last search stayed on screen");
  await page.screenshot({ path: `${folder}/search-refused.png`, fullPage: true });
  console.log(`REFUSED ${await page.textContent("#error")}`);
} finally {
  await browser.close();
}
