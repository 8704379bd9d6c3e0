//! The dashboard in a real browser: headless chromium (Debian's, driven by Playwright) loads
//! the page from a running `tally up`, `tally gen` sends events, and the chart's numbers
//! grow. The screenshot is kept in `test-artifacts/dashboard.png`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::{READ_KEY, Tally, run};

#[test]
fn the_dashboard_shows_new_events_within_seconds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let driver = root.join("tests/dashboard");
    let chromium = std::env::var("TALLY_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists() && driver.join("node_modules/playwright-core").exists(),
        "the browser test needs chromium ({chromium}; apt-get install chromium, or set TALLY_CHROMIUM) and Playwright (npm ci --prefix tests/dashboard); .ci/run installs both"
    );
    let artifacts = root.join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);

    let dir = tempfile::tempdir().unwrap();
    let server = Tally::up(dir.path());
    let url = format!("http://{}/?key={READ_KEY}", server.address);
    let mut browser = Command::new("node")
        .arg(driver.join("check.mjs"))
        .args([url.as_str(), screenshot.to_str().unwrap()])
        .env("TALLY_CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node runs (install Node.js)");
    let mut lines = BufReader::new(browser.stdout.take().unwrap()).lines();
    let mut next_number = |prefix: &str| -> u64 {
        let line = lines.next().expect("the browser driver answers").unwrap();
        line.strip_prefix(prefix)
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("expected {prefix}<n>, got {line:?}"))
    };
    let before = next_number("READY ");

    run(server.generator().args(["--events", "300", "--seed", "7"]));
    writeln!(browser.stdin.take().unwrap(), "sent").unwrap();
    let after = next_number("CHANGED ");
    assert!(
        browser.wait().unwrap().success(),
        "the browser driver failed"
    );
    assert!(after > before, "the chart's total grew: {before} → {after}");
    assert!(screenshot.exists(), "a screenshot was saved");
}
