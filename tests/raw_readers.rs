//! The recipe docs/architecture.md gives for reading the raw archive with Polars, run as
//! written against what `tally up` archives: files whose tag columns differ, read whole, with
//! event times as UTC instants.

use std::process::Command;
use std::time::Duration;

use crate::support::{Tally, post_events, tally};

/// The Python block of docs/architecture.md, reading `dir` instead of the example day.
fn documented_recipe(dir: &str) -> String {
    let doc = include_str!("../docs/architecture.md");
    let block = doc
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/architecture.md has a Python block");
    block.replace(
        "tally-data/objects/raw/events/dt=2026-11-22",
        &format!("{dir}/objects/raw/events"),
    )
}

#[test]
fn the_documented_polars_recipe_reads_files_with_different_tags_as_utc() {
    let python = std::env::var("TALLY_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let probe = Command::new(&python)
        .args(["-c", "import polars"])
        .output()
        .expect("python3 runs");
    assert!(
        probe.status.success(),
        "this test reads the archive with Polars: pip install polars (.ci/run does), or set TALLY_PYTHON"
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut command = tally();
    command
        .env("TALLY_BATCH_ROLL_EVENTS", "2")
        .env("TALLY_BATCH_ROLL_SECS", "1");
    let up = Tally::up_with(&data, command);
    let archived = |up: &Tally| up.metric("tally_batch_events_archived_total{stream=\"events\"}");
    // First a file without tags, then one with: a folder scan would take the first file's
    // columns and fail on the second.
    let (status, body) = post_events(
        &up,
        r#"[{"event_type":"session_start","user_id":"u1"},{"event_type":"session_start","user_id":"u2"}]"#,
    );
    assert_eq!(status, 202, "{body}");
    up.wait_for("the first file", Duration::from_secs(60), |up| {
        archived(up) >= 2
    });
    let (status, body) = post_events(
        &up,
        r#"[{"event_type":"click","user_id":"u1","tags":{"os":"ios","url":"/a"}},{"event_type":"click","user_id":"u1","tags":{"os":"ios","url":"/b"}}]"#,
    );
    assert_eq!(status, 202, "{body}");
    up.wait_for("the second file", Duration::from_secs(60), |up| {
        archived(up) >= 4
    });

    let recipe = documented_recipe(&data.display().to_string());
    let script = format!(
        "{recipe}\nprint(events.height, events.schema['ts'].time_zone, sorted(events['tag_url'].drop_nulls().to_list()))"
    );
    let output = Command::new(&python)
        .args(["-c", &script])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(printed.trim(), "4 UTC ['/a', '/b']", "{script}");
}
