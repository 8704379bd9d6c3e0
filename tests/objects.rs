//! The object store off the machine: `tally up`, `tally archive` and `tally batch run` with
//! `objects.url` on an S3-compatible server keep the raw archive, the batch views and the
//! catalog there, the views there count every logged event once, and an outage of the store
//! delays archiving without losing or doubling anything.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use tally_connectors::batch_views::BatchViews;
use tally_connectors::testing::{Link, S3Bucket};

use crate::batch::{archived_positions, assert_batch_views_count, logged};
use crate::support::{Tally, failed_requests, run, tally};

/// `tally` set, through its environment, to keep its objects at `url`.
fn tally_on(url: &str, options: &BTreeMap<String, String>) -> Command {
    let mut command = tally();
    command.env("TALLY_OBJECTS_URL", url);
    for (setting, value) in options {
        let var = format!("TALLY_OBJECTS_OPTIONS_{}", setting.to_uppercase());
        command.env(var, value);
    }
    command
}

#[test]
fn the_batch_layer_on_s3_archives_and_counts_every_logged_event_once() {
    let test = "objects::the_batch_layer_on_s3_archives_and_counts_every_logged_event_once";
    let Some(server) = S3Bucket::create(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut command = tally_on(&server.url, &server.options);
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

    run(tally_on(&server.url, &server.options)
        .args(["archive", "--once", "--data-dir"])
        .arg(&data_dir));
    run(tally_on(&server.url, &server.options)
        .args(["batch", "run", "--data-dir"])
        .arg(&data_dir));
    assert!(
        !data_dir.join("objects").exists(),
        "nothing may land in the local object folder"
    );

    let store = tally_connectors::object_store::open(&server.url, &server.options).unwrap();
    assert_batch_views_count(&BatchViews::new(store), logged(&data_dir));
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
