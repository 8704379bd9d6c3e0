//! The object store off the machine, on S3 (SeaweedFS) and HDFS (MiniDFSCluster): `tally up`,
//! `tally archive` and `tally batch run`, `reprocess` and `sweep` with `objects.url` there keep
//! the raw archive, the batch views and the catalog there, the views there count every logged
//! event once, and an outage of the store delays archiving without losing or doubling
//! anything.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use tally_connectors::batch_views::BatchViews;
use tally_connectors::testing::{Link, S3Bucket, hdfs_uri};

use crate::batch::{archived_positions, assert_batch_views_count, logged, runtime};
use crate::support::{Tally, failed_requests, keep_objects_at, run, tally};

/// `tally` set, through its environment, to keep its objects at `url`.
fn tally_on(url: &str, options: &BTreeMap<String, String>) -> Command {
    let mut command = tally();
    keep_objects_at(&mut command, url, options);
    command
}

#[test]
fn the_batch_layer_on_s3_archives_recomputes_reprocesses_and_sweeps() {
    let test = "objects::the_batch_layer_on_s3_archives_recomputes_reprocesses_and_sweeps";
    let Some(bucket) = S3Bucket::create(test) else {
        return;
    };
    batch_layer_round_trip(&bucket.url, &bucket.options);
}

#[test]
fn the_batch_layer_on_hdfs_archives_recomputes_reprocesses_and_sweeps() {
    let test = "objects::the_batch_layer_on_hdfs_archives_recomputes_reprocesses_and_sweeps";
    let Some(url) = hdfs_uri(test) else {
        return;
    };
    batch_layer_round_trip(&url, &BTreeMap::new());
}

/// `tally up`, `tally archive`, `tally batch run`, `reprocess` and `sweep` with their objects
/// at `url`: the published views count every logged event once after each step, the
/// reprocessed range is read at the new logic version, and the sweep deletes what the old
/// version left while the published views stay whole.
fn batch_layer_round_trip(url: &str, options: &BTreeMap<String, String>) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut command = tally_on(url, options);
    command.env("TALLY_BATCH_ROLL_EVENTS", "400");
    let up = Tally::up_with(&data_dir, command);
    let generated = up
        .generator()
        .args(["--events", "4000", "--late", "0.6", "--duplicates", "0.1"])
        .args(["--seed", "5", "--concurrency", "2"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(generated.status.success(), "{generated:?}");
    up.kill9();

    let batch = |args: &[&str]| {
        let output = run(tally_on(url, options)
            .args(args)
            .arg("--data-dir")
            .arg(&data_dir));
        String::from_utf8(output.stdout).unwrap()
    };
    batch(&["archive", "--once"]);
    batch(&["batch", "run"]);
    assert!(
        !data_dir.join("objects").exists(),
        "nothing may land in the local object folder"
    );
    let store = tally_connectors::object_store::open(url, options).unwrap();
    let views = BatchViews::new(store);
    assert_batch_views_count(&views, logged(&data_dir));

    batch(&["batch", "reprocess", "--logic-version", "2"]);
    let manifest = runtime().block_on(views.manifest()).unwrap().unwrap();
    for view in manifest.views.values() {
        assert_eq!(view.current_version, 2, "{}", view.view);
        assert!(
            view.hours.values().all(|hour| hour.logic_version == 2),
            "every computed hour of {} reprocessed",
            view.view
        );
    }
    assert_batch_views_count(&views, logged(&data_dir));

    // Two schedulers by mistake: two runs at once. Each publishes or is refused; the loser's
    // objects are named apart, so the published views stay whole either way.
    let racing: Vec<_> = (0..2)
        .map(|_| {
            tally_on(url, options)
                .args(["batch", "reprocess", "--logic-version", "3", "--data-dir"])
                .arg(&data_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for run in racing {
        let output = run.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() || said.contains("published by another batch run"),
            "{said}"
        );
    }
    assert_batch_views_count(&views, logged(&data_dir));

    // The shortest grace is a second: sweep until version 1's objects are past it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let swept = batch(&["batch", "sweep", "--grace", "1s"]);
        let deleted_objects: u64 = swept
            .split_once(" manifest(s) and ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|count| count.parse().ok())
            .unwrap_or_else(|| panic!("the sweep says what it deleted: {swept}"));
        if deleted_objects > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "version 1's objects never swept: {swept}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_batch_views_count(&views, logged(&data_dir));
}

#[test]
fn tally_up_archives_everything_once_across_an_object_store_outage() {
    let test = "objects::tally_up_archives_everything_once_across_an_object_store_outage";
    let Some(server) = S3Bucket::create(test) else {
        return;
    };
    let endpoint = server
        .options
        .get("aws_endpoint")
        .cloned()
        .or_else(|| std::env::var("AWS_ENDPOINT").ok())
        .expect("the S3 endpoint, to put a link before it");
    let link = Link::to(endpoint.trim_start_matches("http://"));
    let mut options = server.options.clone();
    options.insert("aws_endpoint".into(), format!("http://{}", link.address));
    // Fail fast while the link is cut, so the outage shows within seconds.
    options.insert("max_retries".into(), "1".into());
    options.insert("retry_timeout_secs".into(), "1".into());
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut command = tally_on(&server.url, &options);
    command
        .env("TALLY_BATCH_ROLL_EVENTS", "300")
        .env("TALLY_BATCH_ROLL_SECS", "1");
    let up = Tally::up_with(&data_dir, command);
    let archived = |up: &Tally| up.metric("tally_batch_events_archived_total{stream=\"events\"}");
    let send = |seed: &str| {
        let report = up
            .generator()
            .args(["--events", "1500", "--duplicates", "0.1", "--seed", seed])
            .output()
            .unwrap();
        assert!(report.status.success(), "{report:?}");
        assert_eq!(
            failed_requests(&report.stdout),
            0,
            "every request acknowledged"
        );
    };

    send("1");
    up.wait_for("the first events archived", Duration::from_secs(60), |up| {
        archived(up) > 0
    });
    link.cut();
    send("2");
    up.wait_for(
        "/readyz to report the archiver failing",
        Duration::from_secs(60),
        |up| {
            let body = up.readiness();
            body.contains("degraded") && body.contains("archiver events")
        },
    );
    link.mend();
    up.wait_for(
        "the archiver to recover and catch up",
        Duration::from_secs(90),
        |up| up.readiness().contains("\"ready\"") && archived(up) >= up.accepted(),
    );
    up.kill9();

    // What the killed process had open is redone from the durable progress, once.
    run(tally_on(&server.url, &server.options)
        .args(["archive", "--once", "--data-dir"])
        .arg(&data_dir));
    let store = tally_connectors::object_store::open(&server.url, &server.options).unwrap();
    let mut positions: Vec<(u32, u64)> =
        logged(&data_dir).iter().map(|(p, o, _)| (*p, *o)).collect();
    positions.sort_unstable();
    assert!(positions.len() >= 3000, "both loads logged");
    assert_eq!(
        archived_positions(&store),
        positions,
        "each logged event archived once"
    );
}
