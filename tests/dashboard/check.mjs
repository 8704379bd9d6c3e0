// Drives Debian's chromium through the dashboard of a running `tally up`: waits for the
// analytics total to show, prints "READY <total>", waits for a line on stdin (events sent),
// then waits for the total to grow, saves a screenshot and prints "CHANGED <total>".
// Usage: node check.mjs <dashboard url> <screenshot path>
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const [url, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.TALLY_CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("pageerror", (err) => console.error(`page error: ${err.message}`));
  await page.goto(url);
  const total = async () => Number(await page.textContent("#total"));
  await page.waitForFunction(() => /^\d+$/.test(document.getElementById("total").textContent), null, { timeout: 30000 });
  const before = await total();
  console.log(`READY ${before}`);
  await new Promise((resolve) => createInterface({ input: process.stdin }).once("line", resolve));
  await page.waitForFunction(
    (seen) => Number(document.getElementById("total").textContent) > seen,
    before,
    { timeout: 30000 },
  );
  if (!(await page.$("#chart canvas"))) throw new Error("the chart did not draw");
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`CHANGED ${await total()}`);
} finally {
  await browser.close();
}
