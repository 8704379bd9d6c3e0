//! The dashboard in a real browser: headless chromium (Debian's, driven by Playwright) loads
//! the page from a running `tally up` (tests/dashboard/check.mjs). Before any event it shows
//! how to send one; `tally gen` sends events and the chart's numbers grow; filtered with
//! `!=` and grouped by two dimensions, every row meets the filter, the newest bucket comes
//! first, and the total of distinct users is the API's own `granularity=all` answer, not a
//! sum of buckets; a failed query leaves nothing stale on screen; the link to the query
//! holds no key. Each step's screenshot is kept in `test-artifacts/`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use tally_model::time::now_millis;

use crate::support::{ADMIN_KEY, READ_KEY, Tally, WRITE_KEY, run};

#[test]
fn the_dashboard_shows_new_events_filters_them_and_never_shows_stale_numbers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let driver = root.join("tests/dashboard");
    let chromium = std::env::var("TALLY_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists() && driver.join("node_modules/playwright-core").exists(),
        "the browser test needs chromium ({chromium}; apt-get install chromium, or set TALLY_CHROMIUM) and Playwright (npm ci --prefix tests/dashboard); .ci/run installs both"
    );
    let artifacts = root.join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    for step in ["empty", "events", "filtered", "error"] {
        let _ = std::fs::remove_file(artifacts.join(format!("dashboard-{step}.png")));
    }

    let dir = tempfile::tempdir().unwrap();
    let server = Tally::up(dir.path());
    let url = format!("http://{}/?key={READ_KEY}", server.address);
    let mut browser = Command::new("node")
        .arg(driver.join("check.mjs"))
        .args([url.as_str(), artifacts.to_str().unwrap()])
        .env("TALLY_CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node runs (install Node.js)");
    let mut lines = BufReader::new(browser.stdout.take().unwrap()).lines();
    let mut next = |prefix: &str| -> String {
        let line = lines.next().expect("the browser driver answers").unwrap();
        line.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected {prefix}…, got {line:?}"))
            .trim()
            .to_owned()
    };
    let number = |text: String| -> f64 { text.parse().unwrap() };
    let before = number(next("READY "));
    assert_eq!(before, 0.0, "nothing sent yet");

    let sent_from = now_millis() - 60_000;
    run(server.generator().args(["--events", "300", "--seed", "7"]));
    writeln!(browser.stdin.take().unwrap(), "sent").unwrap();
    let after = number(next("CHANGED "));
    assert!(after > before, "the chart's total grew: {before} → {after}");

    let shown = number(next("TOTAL "));
    let link = next("LINK ");
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

    next("CLEARED");
    assert!(
        browser.wait().unwrap().success(),
        "the browser driver failed"
    );
    for step in ["empty", "events", "filtered", "error"] {
        assert!(
            artifacts.join(format!("dashboard-{step}.png")).exists(),
            "{step}'s screenshot"
        );
    }
}

/// The governance console, changing the registry and the keys through the governance API:
/// a tag with an alias saved in the page makes an event that uses the alias accepted; an
/// alias another tag owns is refused with the API's reason; a rotated key's new secret is
/// shown once and works at once, the old one through its grace; a read key sees no form.
#[test]
fn the_governance_console_changes_tags_and_keys_through_the_api() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let driver = root.join("tests/dashboard");
    let chromium = std::env::var("TALLY_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists() && driver.join("node_modules/playwright-core").exists(),
        "the browser test needs chromium and Playwright; .ci/run installs both"
    );
    let artifacts = root.join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let server = Tally::up(dir.path());
    let url = format!("http://{}/?key={ADMIN_KEY}", server.address);
    let mut browser = Command::new("node")
        .arg(driver.join("governance.mjs"))
        .args([url.as_str(), READ_KEY, artifacts.to_str().unwrap()])
        .env("TALLY_CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node runs (install Node.js)");
    let mut stdin = browser.stdin.take().unwrap();
    let mut lines = BufReader::new(browser.stdout.take().unwrap()).lines();
    let mut next = |prefix: &str| -> String {
        let line = lines.next().expect("the browser driver answers").unwrap();
        line.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected {prefix}…, got {line:?}"))
            .trim()
            .to_owned()
    };
    let send = |key: &str, id: &str| {
        let body = format!(
            r#"[{{"event_id":"{id}","event_type":"signup","user_id":"u","tags":{{"plan_name":"pro"}}}}]"#
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

    next("TAGGED");
    let (status, body) = send(WRITE_KEY, "console-1");
    assert_eq!(
        status, 202,
        "the alias saved in the console is accepted: {body}"
    );
    writeln!(stdin, "next").unwrap();

    let refused = next("REFUSED ");
    assert!(
        refused.contains("alias 'plan_name' is claimed by tags 'plan' and 'tier'"),
        "{refused}"
    );

    let secret = next("SECRET ");
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
    writeln!(stdin, "next").unwrap();
    next("STORED");
    next("READONLY");
    drop(stdin);
    assert!(
        browser.wait().unwrap().success(),
        "the browser driver failed"
    );
    for step in ["tag", "refused", "rotated", "read-only"] {
        assert!(
            artifacts.join(format!("governance-{step}.png")).exists(),
            "{step}'s screenshot"
        );
    }
}
