//! The object store off the machine: `tally up`, `tally archive` and `tally batch run` with
//! `objects.url` on an S3-compatible server keep the raw archive, the batch views and the
//! catalog there, the views there count every logged event once, and an outage of the store
//! delays archiving without losing or doubling anything.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::ObjectStore;
use tally_connectors::archive::events_from_parquet;
use tally_connectors::batch_views::BatchViews;
use tally_connectors::testing::{Link, S3Server, assert_states_agree, reference_states};
use tally_model::time::HOUR_MS;
use tally_model::{Catalog, Millis};

use crate::batch::logged;
use crate::support::{READ_KEY, Tally, WRITE_KEY, failed_requests, run, tally};

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

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Every (partition, offset) in the raw events archive of `store`, sorted, with repeats.
fn archived_positions(store: &Arc<dyn ObjectStore>) -> Vec<(u32, u64)> {
    runtime().block_on(async {
        let prefix = object_store::path::Path::from("raw/events");
        let objects: Vec<_> = store.list(Some(&prefix)).try_collect().await.unwrap();
        let mut positions = Vec::new();
        for object in objects {
            let get = object_store::ObjectStoreExt::get(store.as_ref(), &object.location);
            let bytes = get.await.unwrap().bytes().await.unwrap();
            let logged = events_from_parquet(&bytes).unwrap();
            positions.extend(logged.iter().map(|l| (l.partition, l.offset)));
        }
        positions.sort_unstable();
        positions
    })
}

#[test]
fn the_batch_layer_on_s3_archives_and_counts_every_logged_event_once() {
    let server = S3Server::start();
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

    let runtime = runtime();
    let store = tally_connectors::object_store::open(&server.url, &server.options).unwrap();
    let views = BatchViews::new(store);
    let manifest = runtime
        .block_on(views.manifest())
        .unwrap()
        .expect("a manifest published on S3");
    let computed_end = manifest
        .views
        .values()
        .flat_map(|view| view.hours.keys())
        .max()
        .map_or(Millis::MIN, |last| last + HOUR_MS);
    let catalog = Catalog::demo(WRITE_KEY, READ_KEY);
    let mut batch = BTreeMap::new();
    for view in &catalog.tenants["demo"].views {
        let read = views.read(&manifest, "demo", &view.name, Millis::MIN..computed_end);
        batch.extend(runtime.block_on(read).unwrap());
    }
    let expected = reference_states(&catalog, logged(&data_dir), Millis::MIN..computed_end);
    assert!(!expected.is_empty(), "late events closed some hours");
    assert_states_agree(&batch, &expected);
}

#[test]
fn tally_up_archives_everything_once_across_an_object_store_outage() {
    let server = S3Server::start();
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
    let readiness = |up: &Tally| up.http("GET", "/readyz", &[], "").1;
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
            let body = readiness(up);
            body.contains("degraded") && body.contains("archiver events")
        },
    );
    link.mend();
    up.wait_for(
        "the archiver to recover and catch up",
        Duration::from_secs(90),
        |up| readiness(up).contains("\"ready\"") && archived(up) >= up.accepted(),
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
