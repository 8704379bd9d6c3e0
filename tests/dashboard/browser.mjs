// What every browser flow of tests/dashboard.rs shares: Debian's chromium, headless; a page
// that reports its script errors; a failure; and the lines the test writes on stdin when a
// step may go on.
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

/** Chromium as TALLY_CHROMIUM names it (Debian's by default). */
export function launch() {
  return chromium.launch({
    executablePath: process.env.TALLY_CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu"],
  });
}

/** A page of `browser` that prints its script errors and accepts its dialogs. */
export async function openPage(browser, height) {
  const page = await browser.newPage({ viewport: { width: 1280, height } });
  page.on("pageerror", (err) => console.error(`page error: ${err.message}`));
  page.on("dialog", (dialog) => dialog.accept());
  return page;
}

/** Ends the flow with `message`. */
export function fail(message) {
  throw new Error(message);
}

/** The lines the test writes: `next()` waits for one; `close()` stops reading. */
export function testLines() {
  const lines = createInterface({ input: process.stdin });
  const input = lines[Symbol.asyncIterator]();
  return { next: () => input.next(), close: () => lines.close() };
}
