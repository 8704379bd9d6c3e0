// Drives Debian's chromium through the dashboard's governance console of a running
// `tally up`, printing one line per step for tests/dashboard.rs, and waiting for a line on
// stdin where the test checks the API in between:
// 1. with the admin key: a tag `plan` with the alias `plan_name`, and an event type `signup`
//    that may carry it (with an alias that is markup, shown as text), saved through the
//    forms: "TAGGED";
// 2. a tag `tier` claiming the same alias: the live check warns, and saving is refused with
//    the API's reason, still shown after the analytics' refresh: "REFUSED <reason>";
// 3. the demo write key rotated: the new secret shown once, "SECRET <secret>", then gone
//    from the page once the user says it is stored: "STORED";
// 4. the rejected events: counted per hour by reason code, and listed by code: "REJECTS";
// 5. who publishes `plan`, from the last hours' events: "PUBLISHERS <source> <events>";
// 6. with a read key: the page is read-only, its forms hidden: "READONLY".
// Each step saves a screenshot, governance-<step>.png, in the folder given.
// Usage: node governance.mjs <dashboard url with the admin key> <read key> <screenshot folder>
import { fail, launch, openPage, testLines } from "./browser.mjs";

const [url, readKey, folder] = process.argv.slice(2);
const browser = await launch();
const input = testLines();
try {
  const page = await openPage(browser, 1100);
  // The overview a change reloads arrives late: a saved message must not show before the
  // tables it speaks of are redrawn.
  await page.route("**/v1/governance", async (route) => {
    await new Promise((resolve) => setTimeout(resolve, 300));
    await route.continue();
  });
  const shot = (step) => page.screenshot({ path: `${folder}/governance-${step}.png`, fullPage: true });
  const saved = (text) => page.waitForFunction(
    (expected) => document.getElementById("governance-message").textContent.includes(expected), text, { timeout: 15000 });

  await page.goto(url);
  await page.click("nav button[data-tab=governance]");
  await page.waitForSelector("#tags tbody tr");

  // 1. A tag with an alias, and an event type that may carry it.
  await page.fill("#tag-name", "plan");
  await page.fill("#tag-aliases", "plan_name");
  await page.click("#tag-form button[type=submit]");
  await saved("tag 'plan' saved");
  await page.fill("#event-type-name", "signup");
  // Event-type aliases are free text: one that is markup must show as text, never run.
  const markup = "<img src=x onerror=\"window.injected=1\">";
  await page.fill("#event-type-aliases", markup);
  await page.fill("#event-type-optional", "plan");
  await page.click("#event-type-form button[type=submit]");
  await saved("event type 'signup' saved");
  const tags = await page.textContent("#tags");
  if (!tags.includes("plan_name")) fail("the new alias is not listed");
  if (!(await page.textContent("#event-types")).includes(markup)) fail("the markup alias is not shown as text");
  if (await page.locator("#event-types img").count()) fail("an alias became markup");
  if (await page.evaluate(() => window.injected)) fail("an alias ran as script");
  await shot("tag");
  console.log("TAGGED");
  await input.next();

  // 2. The same alias for another tag: warned while typing, refused when saved.
  await page.fill("#tag-name", "tier");
  await page.fill("#tag-aliases", "plan_name");
  await page.waitForFunction(() => document.getElementById("alias-check").textContent.includes("already names tag 'plan'"), null, { timeout: 15000 });
  await page.click("#tag-form button[type=submit]");
  await page.waitForFunction(() => document.getElementById("error").textContent.includes("plan_name"), null, { timeout: 15000 });
  if ((await page.textContent("#tags")).includes("tier")) fail("the colliding tag was saved");
  await shot("refused");
  // The analytics' periodic refresh (every 2 s, on every tab) leaves the refusal for the
  // user to read: it clears only an error of its own.
  await page.evaluate(() => refresh());
  console.log(`REFUSED ${await page.textContent("#error")}`);

  // 3. Rotate the demo write key: its new secret, shown once.
  const row = page.locator("#keys tbody tr", { hasText: "demo-web" });
  await row.getByRole("button", { name: "Rotate" }).click();
  await page.waitForSelector("#secret-box:not([hidden])");
  const secret = (await page.textContent("#secret")).trim();
  if (!secret.startsWith("tk_")) fail(`no secret shown: ${secret}`);
  await shot("rotated");
  console.log(`SECRET ${secret}`);
  await input.next();
  await page.click("#secret-done");
  if ((await page.content()).includes(secret)) fail("the secret stayed in the page");
  console.log("STORED");

  // 4. The test sent a misspelt tag: counted under its code, and listed when asked for it.
  await page.click("nav button[data-tab=analytics]");
  await page.click("nav button[data-tab=governance]");
  await page.waitForFunction(() => document.getElementById("reject-counts").textContent.includes("unknown_tag"), null, { timeout: 15000 });
  await page.fill("#reject-code", "unknown_tag");
  await page.click("#reject-form button[type=submit]");
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll("#rejected tbody tr")];
    return rows.length > 0 && rows.every((row) => row.textContent.includes("plan_nmae"));
  }, null, { timeout: 15000 });
  // 41 rejects of 3 KB payloads: the newest 20 listed, a payload cut short with the whole of it
  // on hover, so the panel stays a page tall.
  const listed = await page.evaluate(() => {
    const table = document.getElementById("rejected");
    const payloads = [...table.querySelectorAll("td.payload")];
    return { rows: table.tBodies[0].rows.length, height: table.getBoundingClientRect().height,
      cut: payloads.every((td) => td.textContent.length <= 121 && td.title.length >= td.textContent.length - 1) };
  });
  if (listed.rows !== 20 || listed.height > 1200 || !listed.cut) fail(`the rejected panel: ${JSON.stringify(listed)}`);
  await shot("rejects");
  console.log("REJECTS");

  // 5. Who publishes the tag: the events sent with its alias, once the index has them.
  const plan = page.locator("#tags tbody tr", { hasText: "plan_name" });
  const deadline = Date.now() + 15000;
  let publisher = null;
  while (!publisher) {
    await plan.getByRole("button", { name: "Publishers" }).click();
    await page.waitForFunction(() => document.getElementById("publishers-tag").textContent === "plan");
    publisher = await page.$$eval("#publishers-table tbody tr", (rows) => rows
      .map((row) => [...row.cells].map((c) => c.textContent))
      .find((cells) => Number(cells[1]) >= 3));
    if (!publisher && Date.now() > deadline) fail("no source publishes plan");
    if (!publisher) await page.waitForTimeout(250);
  }
  await shot("publishers");
  console.log(`PUBLISHERS ${publisher[0]} ${publisher[1]}`);

  // 6. A read key sees the registry, and no form to change it.
  await page.fill("#key", readKey);
  await page.dispatchEvent("#key", "change");
  await page.waitForFunction(() => !document.getElementById("read-only").hidden, null, { timeout: 15000 });
  if (await page.isVisible("#tag-form")) fail("a read key sees the forms");
  if (await page.locator("#keys tbody button").count()) fail("a read key sees key buttons");
  if (!(await page.locator("#tags tbody button", { hasText: "Publishers" }).count())) fail("a read key cannot see publishers");
  await shot("read-only");
  console.log("READONLY");
} finally {
  input.close();
  await browser.close();
}
