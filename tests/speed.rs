//! Guarantee 2 through the speed layer: after `kill -9` mid-stream and a restart, the views
//! count every logged event once: no double count, nothing missing. On the embedded view
//! store always, and on ScyllaDB when `TALLY_SCYLLA_URI` is set.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_model::time::parse_timestamp;

use tally_connectors::testing::scylla_uri;
use tally_connectors::view_store::ScyllaViewStore;

use crate::support::{Tally, run, tally};

const MINUTE_MS: i64 = 60_000;

/// (minute bucket, event_type, os_type) → count, from the log: one per event id.
fn expected_counts(data_dir: &Path) -> BTreeMap<(i64, String, String), u64> {
    let output = run(tally().args(["log", "tail", "--data-dir"]).arg(data_dir));
    let mut seen = HashSet::new();
    let mut counts = BTreeMap::new();
    for line in String::from_utf8(output.stdout).unwrap().lines() {
        let event: Value = serde_json::from_str(line).unwrap();
        if !seen.insert(event["event_id"].as_str().unwrap().to_owned()) {
            continue;
        }
        let bucket = event["ts"].as_i64().unwrap().div_euclid(MINUTE_MS) * MINUTE_MS;
        let os = event["tags"]["os_type"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        *counts
            .entry((bucket, event["event_type"].as_str().unwrap().to_owned(), os))
            .or_default() += 1;
    }
    counts
}

/// `tally` on the view store `views_url` (empty: embedded).
fn tally_on(views_url: &str) -> std::process::Command {
    let mut command = tally();
    command.env("TALLY_VIEWS_URL", views_url);
    command
}

/// The same, from `tally views get --json`.
fn stored_counts(data_dir: &Path, views_url: &str) -> BTreeMap<(i64, String, String), u64> {
    let output = run(tally_on(views_url)
        .args([
            "views",
            "get",
            "--view",
            "events_by_type",
            "--json",
            "--from",
            "0",
            "--to",
            "9999999999999",
            "--data-dir",
        ])
        .arg(data_dir));
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let row: Value = serde_json::from_str(line).unwrap();
            let bucket = parse_timestamp(row["bucket"].as_str().unwrap()).unwrap();
            (
                (
                    bucket,
                    row["event_type"].as_str().unwrap().to_owned(),
                    row["os_type"].as_str().unwrap().to_owned(),
                ),
                row["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn views_count_each_event_once_after_kill_9_mid_stream() {
    views_count_each_event_once_after_kill_9_on("");
}

#[test]
fn scylla_views_count_each_event_once_after_kill_9_mid_stream() {
    let test = "speed::scylla_views_count_each_event_once_after_kill_9_mid_stream";
    let Some(views_url) = scylla_uri(test) else {
        return;
    };
    views_count_each_event_once_after_kill_9_on(&views_url);
    ScyllaViewStore::connect(&views_url)
        .unwrap()
        .drop_keyspace()
        .unwrap();
}

fn views_count_each_event_once_after_kill_9_on(views_url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = Tally::up_with(&data_dir, tally_on(views_url));
    let generator = server
        .generator()
        .args([
            "--events",
            "60000",
            "--concurrency",
            "4",
            "--duplicates",
            "0.05",
            "--late",
            "0.1",
            "--users",
            "500",
            "--seed",
            "11",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let speed_events = |tally: &Tally| {
        let (_, metrics) = tally.http("GET", "/metrics", &[], "");
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix("tally_speed_events_in_total ")?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
    };
    server.wait_for(
        "the speed layer to be mid-stream",
        Duration::from_secs(120),
        |s| speed_events(s) >= 10_000,
    );
    server.kill9();
    generator.wait_with_output().unwrap();

    let restarted = Tally::up_with(&data_dir, tally_on(views_url));
    let expected = expected_counts(&data_dir);
    // The speed layer had read 10,000 records, resends (5 %) included: the log holds them all,
    // though fewer distinct events.
    let logged = crate::support::log_stats(&data_dir)["events"]["records"]
        .as_u64()
        .unwrap();
    assert!(logged >= 10_000, "{logged} records in the log");
    let started = Instant::now();
    loop {
        let stored = stored_counts(&data_dir, views_url);
        if stored == expected {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let differing: Vec<_> = expected
                .iter()
                .filter(|(k, v)| stored.get(k) != Some(v))
                .take(5)
                .collect();
            panic!(
                "views never matched the log: e.g. {differing:?} ({} stored rows, {} expected)",
                stored.len(),
                expected.len()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(restarted);
}

/// A batch horizon published behind the speed layer's trailing one leaves buckets in neither
/// layer: `/readyz` says so, and stops once a horizon at or after the speed layer's arrives.
#[test]
fn a_batch_horizon_behind_the_speed_layer_shows_as_a_gap_until_it_catches_up() {
    use tally_connectors::batch_views::BatchViews;
    use tally_model::time::{HOUR_MS, now_millis};

    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut command = tally();
    command.env("TALLY_BATCH_EVERY_SECS", "86400");
    let server = Tally::up_with(&data_dir, command);
    // The scheduler's first run (at start) must not race the manifests published below.
    server.wait_for("the first batch run", Duration::from_secs(60), |s| {
        s.metric("tally_batch_runs_total") >= 1 && s.readiness().contains("\"ready\"")
    });

    let runtime = crate::batch::runtime();
    let objects = tally_connectors::object_store::open_local(&data_dir.join("objects")).unwrap();
    let views = BatchViews::new(objects);
    let publish = |horizon: i64| {
        runtime.block_on(async {
            let mut manifest = views.manifest().await.unwrap().unwrap_or_default();
            manifest.generation += 1;
            manifest.horizon = horizon;
            views.publish(&manifest).await.unwrap();
        })
    };
    let hour = now_millis().div_euclid(HOUR_MS) * HOUR_MS;
    publish(hour - 72 * HOUR_MS);
    server.wait_for("the gap to show", Duration::from_secs(30), |s| {
        s.readiness().contains("are in neither layer")
    });
    let report = server.readiness();
    assert!(report.contains("\"degraded\""), "{report}");
    assert!(server.metric("tally_speed_seam_gap_seconds") >= 23 * 3600);

    publish(hour);
    server.wait_for("the gap to close", Duration::from_secs(30), |s| {
        s.readiness().contains("\"ready\"")
    });
    assert_eq!(server.metric("tally_speed_seam_gap_seconds"), 0);
}
