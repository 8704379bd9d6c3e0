//! Guarantee 1: an acknowledged event is never lost, even to `kill -9` mid-load.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use crate::support::{Tally, acked_ids, failed_requests, log_stats, logged_event_ids, post_events};

#[test]
fn every_acknowledged_event_survives_kill_9_mid_load() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let acked_path = dir.path().join("acked-ids.txt");
    let server = Tally::up(&data_dir);
    let generator = server
        .generator()
        .args([
            "--events",
            "100000",
            "--batch",
            "100",
            "--concurrency",
            "8",
            "--invalid",
            "0.01",
            "--seed",
            "7",
        ])
        .arg("--acked-ids")
        .arg(&acked_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    server.wait_for(
        "20,000 acknowledged events",
        Duration::from_secs(120),
        |s| s.accepted() >= 20_000,
    );
    server.kill9();
    let report = generator.wait_with_output().unwrap();
    let failed = failed_requests(&report.stdout);
    let report = String::from_utf8_lossy(&report.stdout).into_owned();
    assert!(
        failed > 0,
        "the kill must land mid-load, yet every request succeeded: {report}"
    );

    let acked: HashSet<String> = acked_ids(&acked_path).into_iter().collect();
    assert!(acked.len() >= 20_000, "{} acked ids: {report}", acked.len());

    let restarted = Tally::up(&data_dir);
    let logged = logged_event_ids(&data_dir);
    let logged_set: HashSet<&String> = logged.iter().collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !logged_set.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost after kill -9, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert_eq!(
        logged_set.len(),
        logged.len(),
        "recovery must not duplicate records"
    );
    assert_eq!(
        log_stats(&data_dir)["events"]["records"],
        logged.len() as u64
    );

    let (status, _) = post_events(
        &restarted,
        r#"[{"event_type":"click","user_id":"after-restart"}]"#,
    );
    assert_eq!(status, 202, "the restarted collector accepts events");
    restarted.wait_for("the new event in the log", Duration::from_secs(10), |_| {
        log_stats(&data_dir)["events"]["records"] == logged.len() as u64 + 1
    });
}
