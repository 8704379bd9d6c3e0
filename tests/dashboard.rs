//! The dashboard in a real browser: headless chromium (Debian's, driven by Playwright) loads
//! the page from a running `tally up` (tests/dashboard/check.mjs). Before any event it shows
//! how to send one; `tally gen` sends events and the chart's numbers grow; filtered with
//! `!=` and grouped by two dimensions, every row meets the filter, the newest bucket comes
//! first, and the total of distinct users is the API's own `granularity=all` answer, not a
//! sum of buckets; a failed query leaves nothing stale on screen; the link to the query
//! holds no key. The governance console (tests/dashboard/governance.mjs) saves a tag with an
//! alias, refuses an alias another tag owns, rotates a key, counts and lists rejected events
//! by reason code, and is read-only with a read key. A view changed in the console
//! (tests/dashboard/views.mjs) is reprocessed for review, compared with live and promoted.
//! Full-text search (tests/dashboard/search.mjs) finds an event sent seconds earlier.
//! Each step's screenshot is kept in `test-artifacts/`. The chart library the binary embeds
//! is checked against its pinned npm package.

use std::io::{BufRead, BufReader, Lines, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use tally_model::time::now_millis;

use crate::support::{ADMIN_KEY, READ_KEY, Tally, WRITE_KEY, run};

/// A browser flow: a script of tests/dashboard/ run by node against Debian's chromium, which
/// prints one line per step and waits for a line on its stdin where the test checks the API.
struct BrowserFlow {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    artifacts: PathBuf,
}

impl BrowserFlow {
    /// Starts `script` with `args`, then the screenshot folder; its old `screenshots` go.
    fn start(script: &str, args: &[&str], screenshots: &[String]) -> BrowserFlow {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let driver = root.join("tests/dashboard");
        let chromium =
            std::env::var("TALLY_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            Path::new(&chromium).exists() && driver.join("node_modules/playwright-core").exists(),
            "the browser test needs chromium ({chromium}; apt-get install chromium, or set TALLY_CHROMIUM) and Playwright (npm ci --prefix tests/dashboard); .ci/run installs both"
        );
        let artifacts = root.join("test-artifacts");
        std::fs::create_dir_all(&artifacts).unwrap();
        for screenshot in screenshots {
            let _ = std::fs::remove_file(artifacts.join(screenshot));
        }
        let mut child = Command::new("node")
            .arg(driver.join(script))
            .args(args)
            .arg(&artifacts)
            .env("TALLY_CHROMIUM", &chromium)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node runs (install Node.js)");
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        BrowserFlow {
            child,
            stdin,
            lines,
            artifacts,
        }
    }

    /// The next step's line, which must start with `prefix`: the rest of it.
    fn next(&mut self, prefix: &str) -> String {
        let line = self
            .lines
            .next()
            .expect("the browser driver answers")
            .unwrap();
        line.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected {prefix}…, got {line:?}"))
            .trim()
            .to_owned()
    }

    /// Lets the flow go on past a step that waits for the test.
    fn go_on(&mut self) {
        writeln!(self.stdin.as_mut().unwrap(), "go on").unwrap();
    }

    /// Waits for the flow to end well, with each of its `screenshots` saved.
    fn finish(mut self, screenshots: &[String]) {
        drop(self.stdin.take());
        assert!(
            self.child.wait().unwrap().success(),
            "the browser driver failed"
        );
        for screenshot in screenshots {
            assert!(
                self.artifacts.join(screenshot).exists(),
                "{screenshot} saved"
            );
        }
    }
}

fn screenshots(flow: &str, steps: &[&str]) -> Vec<String> {
    steps
        .iter()
        .map(|step| format!("{flow}-{step}.png"))
        .collect()
}

#[test]
fn the_dashboard_shows_new_events_filters_them_and_never_shows_stale_numbers() {
    let shots = screenshots("dashboard", &["empty", "events", "filtered", "error"]);
    let dir = tempfile::tempdir().unwrap();
    let server = Tally::up(dir.path());
    let url = format!("http://{}/?key={READ_KEY}", server.address);
    let mut browser = BrowserFlow::start("check.mjs", &[&url], &shots);
    let number = |text: String| -> f64 { text.parse().unwrap() };
    let before = number(browser.next("READY "));
    assert_eq!(before, 0.0, "nothing sent yet");

    let sent_from = now_millis() - 60_000;
    run(server.generator().args(["--events", "300", "--seed", "7"]));
    browser.go_on();
    let after = number(browser.next("CHANGED "));
    assert!(after > before, "the chart's total grew: {before} → {after}");

    let shown = number(browser.next("TOTAL "));
    let link = browser.next("LINK ");
    let authorization = format!("Bearer {READ_KEY}");
    let path = format!(
        "/v1/query?view=events_by_type&from={sent_from}&to={}&granularity=all&filter=os_type!=ios&measures=uniq(user_id)",
        now_millis() + 60_000
    );
    let (status, body) = server.http("GET", &path, &[("Authorization", &authorization)], "");
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let api_total = answer["rows"][0]["uniq(user_id)"].as_f64().unwrap();
    assert_eq!(
        shown, api_total,
        "the page's total is the API's granularity=all answer"
    );
    assert!(!link.contains(READ_KEY) && !link.contains("key="), "{link}");
    assert!(
        link.contains("filter=os_type%21%3Dios") && link.contains("group_by=event_type%2Cos_type"),
        "{link}"
    );

    browser.next("CLEARED");
    browser.finish(&shots);
}

/// The governance console, changing the registry and the keys through the governance API:
/// a tag with an alias saved in the page makes an event that uses the alias accepted; an
/// alias another tag owns is refused with the API's reason; a rotated key's new secret is
/// shown once and works at once, the old one through its grace; the tag's publishers are
/// counted from the events sent; a read key sees no form.
#[test]
fn the_governance_console_changes_tags_and_keys_through_the_api() {
    let shots = screenshots(
        "governance",
        &[
            "tag",
            "refused",
            "rotated",
            "rejects",
            "publishers",
            "read-only",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Tally::up(dir.path());
    let url = format!("http://{}/?key={ADMIN_KEY}", server.address);
    let mut browser = BrowserFlow::start("governance.mjs", &[&url, READ_KEY], &shots);
    let send_tagged = |key: &str, id: &str, tag: &str| {
        let body = format!(
            r#"[{{"event_id":"{id}","event_type":"signup","user_id":"u","tags":{{"{tag}":"pro"}}}}]"#
        );
        server.http(
            "POST",
            "/v1/events",
            &[
                ("Authorization", &format!("Bearer {key}")),
                ("Content-Type", "application/json"),
            ],
            &body,
        )
    };

    let send = |key: &str, id: &str| send_tagged(key, id, "plan_name");
    browser.next("TAGGED");
    let (status, body) = send(WRITE_KEY, "console-1");
    assert_eq!(
        status, 202,
        "the alias saved in the console is accepted: {body}"
    );
    browser.go_on();

    let refused = browser.next("REFUSED ");
    assert!(
        refused.contains("alias 'plan_name' is claimed by tags 'plan' and 'tier'"),
        "{refused}"
    );

    let secret = browser.next("SECRET ");
    assert_ne!(secret, WRITE_KEY);
    assert_eq!(
        send(&secret, "console-2").0,
        202,
        "the new secret works at once"
    );
    assert_eq!(
        send(WRITE_KEY, "console-3").0,
        202,
        "the old one through its grace"
    );
    let (status, body) = send_tagged(WRITE_KEY, "console-4", "plan_nmae");
    assert_eq!(status, 400, "a misspelt tag is rejected: {body}");
    // Many more, each with a long payload: the panel must stay a page, not thousands of pixels.
    let long = "x".repeat(3000);
    for index in 0..40 {
        let body = format!(
            r#"[{{"event_id":"long-{index}","event_type":"signup","user_id":"u","tags":{{"plan_nmae":"{long}"}}}}]"#
        );
        let authorization = format!("Bearer {WRITE_KEY}");
        let headers = [
            ("Authorization", authorization.as_str()),
            ("Content-Type", "application/json"),
        ];
        assert_eq!(server.http("POST", "/v1/events", &headers, &body).0, 400);
    }
    browser.go_on();
    browser.next("STORED");
    browser.next("REJECTS");
    // console-1 to -3 carried the tag by its alias, all from the demo write key's source.
    assert_eq!(browser.next("PUBLISHERS "), "demo-web 3");
    browser.next("READONLY");
    browser.finish(&shots);
}

/// Full-text search in the console finds an event sent seconds earlier by a prefix of one
/// tag and the value of another, with the matched part marked; a query that is not one is
/// refused with the API's reason and clears the rows.
#[test]
fn the_search_page_finds_an_event_sent_seconds_earlier() {
    let shots = screenshots("search", &["found", "refused"]);
    let dir = tempfile::tempdir().unwrap();
    let server = Tally::up(dir.path());
    run(server.generator().args(["--events", "500", "--seed", "5"]));
    let body = r#"[{"event_id":"needle-1","event_type":"page_view","user_id":"u-needle","tags":{"url":"/checkout/pay","os_type":"ios"}}]"#;
    let (status, reply) = crate::support::post_events(&server, body);
    assert_eq!(status, 202, "{reply}");
    let url = format!("http://{}/?key={READ_KEY}", server.address);
    let query = "url:/checkout/p* AND os:ios";
    let mut browser = BrowserFlow::start("search.mjs", &[&url, query, "needle-1"], &shots);
    let found = browser.next("FOUND ");
    let parts: Vec<&str> = found.split(' ').collect();
    assert_eq!(parts[0], "needle-1", "{found}");
    assert_eq!(parts[1], "1", "one event matches: {found}");
    let mut marks: Vec<&str> = parts[2].split('|').collect();
    marks.sort_unstable();
    assert_eq!(
        marks,
        ["/checkout/p", "ios"],
        "the prefix and the alias's value are marked"
    );
    let refused = browser.next("REFUSED ");
    assert!(refused.contains("ranges are not supported"), "{refused}");
    browser.finish(&shots);
}

/// Events over the last hours, archived and computed by the batch layer, in `data_dir`.
fn computed_hours(data_dir: &Path) {
    let up = Tally::up(data_dir);
    run(up
        .generator()
        .args(["--events", "3000", "--late", "0.6", "--seed", "11"]));
    up.kill9();
    for args in [&["archive", "--once"][..], &["batch", "run"]] {
        run(crate::support::tally()
            .args(args)
            .arg("--data-dir")
            .arg(data_dir));
    }
}

/// A view changed in the console, a range reprocessed for review with its progress drawn,
/// compared with the live batch hours hour by hour, then promoted: before the promotion the
/// live hours (`logic_version=live`) are the old logic's, the reviewed ones equal
/// `logic_version=N` of the API; after it, the live hours are the new logic's.
#[test]
fn a_view_change_is_reprocessed_reviewed_and_promoted_from_the_console() {
    let shots = screenshots("views", &["changed", "reprocessed", "compared", "promoted"]);
    let dir = tempfile::tempdir().unwrap();
    computed_hours(dir.path());
    let server = Tally::up(dir.path());
    let url = format!("http://{}/?key={ADMIN_KEY}", server.address);
    let mut browser = BrowserFlow::start("views.mjs", &[&url], &shots);
    let authorization = format!("Bearer {READ_KEY}");
    let query = |params: &str| -> (u16, serde_json::Value) {
        let path = format!("/v1/query?view=latency_by_type&{params}");
        let (status, body) = server.http("GET", &path, &[("Authorization", &authorization)], "");
        (status, serde_json::from_str(&body).unwrap())
    };

    let version = browser.next("CHANGED ");
    assert_eq!(
        version, "2",
        "the changed spec is the view's second logic version"
    );
    let summary = browser.next("REPROCESSED ");
    assert!(
        summary.contains("staged") && summary.contains("logic version 2"),
        "{summary}"
    );

    let compared = browser.next("COMPARED ");
    let numbers: Vec<i64> = compared.split(' ').map(|n| n.parse().unwrap()).collect();
    let [from, to, live, reviewed, differing] = numbers[..] else {
        panic!("{compared}");
    };
    assert!(reviewed > 0, "the reviewed hours hold events: {compared}");
    // One more dimension splits rows; it adds or drops no event.
    assert_eq!((live, differing), (reviewed, 0), "{compared}");
    let range = format!("from={from}&to={to}&granularity=all&measures=count");
    let (status, answer) = query(&format!("{range}&logic_version=2"));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["rows"][0]["count"], reviewed,
        "the page shows the API's review"
    );
    let (status, refused) = query(&format!("{range}&group_by=os_type&logic_version=live"));
    assert_eq!(status, 400, "live is still the old logic: {refused}");
    browser.go_on();

    let live_hours: u64 = browser.next("PROMOTED ").parse().unwrap();
    assert!(live_hours > 0);
    let (status, answer) = query(&format!("{range}&group_by=os_type&logic_version=live"));
    assert_eq!(status, 200, "live is the new logic: {answer}");
    let by_os: i64 = (answer["rows"].as_array().unwrap().iter())
        .map(|row| row["count"].as_i64().unwrap())
        .sum();
    assert_eq!(by_os, reviewed, "the promoted hours answer as reviewed");
    browser.finish(&shots);
}

/// The chart library the binary embeds (`serving/dashboard/vendor/`, committed so that
/// building needs no JavaScript toolchain) is byte for byte the npm package the dashboard's
/// `package.json` and lock file pin, as `npm ci --prefix serving/dashboard` installs it.
#[test]
fn the_vendored_chart_library_is_the_pinned_npm_package() {
    let dashboard = Path::new(env!("CARGO_MANIFEST_DIR")).join("serving/dashboard");
    let installed = dashboard.join("node_modules/uplot");
    assert!(
        installed.join("package.json").exists(),
        "npm ci --no-audit --no-fund --prefix serving/dashboard installs the pinned uPlot; .ci/run does"
    );
    let read = |path: PathBuf| {
        std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
    };
    let pinned: serde_json::Value =
        serde_json::from_slice(&read(dashboard.join("package.json"))).unwrap();
    let package: serde_json::Value =
        serde_json::from_slice(&read(installed.join("package.json"))).unwrap();
    assert_eq!(package["version"], pinned["dependencies"]["uplot"]);
    for (vendored, published) in [
        ("uPlot.iife.min.js", "dist/uPlot.iife.min.js"),
        ("uPlot.min.css", "dist/uPlot.min.css"),
        ("uPlot.LICENSE", "LICENSE"),
    ] {
        assert!(
            read(dashboard.join("vendor").join(vendored)) == read(installed.join(published)),
            "serving/dashboard/vendor/{vendored} is not the pinned package's {published}: copy it from node_modules/uplot"
        );
    }
}
