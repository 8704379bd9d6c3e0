//! Guarantees 1 and 2 through the batch layer: `kill -9` of `tally up` while the archiver is
//! mid-file, then of `tally batch run` mid-publish; afterwards every logged event is in the
//! raw archive exactly once, every published manifest points at complete objects, and the
//! batch views count each event once.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::ObjectStore;

use tally_connectors::archive::events_from_parquet;
use tally_connectors::batch_views::BatchViews;
use tally_connectors::log::{EventLog, Spool};
use tally_connectors::testing::{assert_states_agree, reference_states};
use tally_model::time::HOUR_MS;
use tally_model::{Catalog, Event, Millis};

use crate::support::{READ_KEY, Tally, WRITE_KEY, run, tally};

/// Every (partition, offset) in the raw events archive of `store`, sorted, with repeats.
pub fn archived_positions(store: &Arc<dyn ObjectStore>) -> Vec<(u32, u64)> {
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

/// Checks that the views the published manifest of `views` names count each of `logged` once,
/// over the hours it computed (some must be).
pub fn assert_batch_views_count(views: &BatchViews, logged: Vec<(u32, u64, Event)>) {
    let runtime = runtime();
    let manifest = runtime
        .block_on(views.manifest())
        .unwrap()
        .expect("a published manifest");
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
    let expected = reference_states(&catalog, logged, Millis::MIN..computed_end);
    assert!(!expected.is_empty(), "some hours are closed and computed");
    assert_states_agree(&batch, &expected);
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub fn logged(data_dir: &Path) -> Vec<(u32, u64, Event)> {
    let spool = Spool::open_read_only(&data_dir.join("log/events")).unwrap();
    (0..spool.partitions())
        .flat_map(|partition| {
            let entries = spool.read(partition, 0, usize::MAX).unwrap();
            entries.into_iter().map(move |entry| {
                let event: Event = serde_json::from_slice(&entry.payload).unwrap();
                (partition, entry.offset, event)
            })
        })
        .collect()
}

#[test]
fn kill_9_mid_archive_and_mid_publish_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let objects = data_dir.join("objects");
    let mut command = tally();
    command
        .env("TALLY_BATCH_ROLL_EVENTS", "500")
        .env("TALLY_BATCH_EVERY_SECS", "3600");
    let server = Tally::up_with(&data_dir, command);
    let generator = server
        .generator()
        .args(["--events", "60000", "--late", "0.6", "--duplicates", "0.1"])
        .args(["--seed", "11", "--concurrency", "4"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    server.wait_for("raw objects being written", Duration::from_secs(120), |s| {
        s.accepted() >= 20_000 && objects.join("raw/events").is_dir()
    });
    server.kill9();
    let _ = generator.wait_with_output();

    // The restarted archiver redoes the interrupted roll into the same objects.
    run(tally()
        .args(["archive", "--once", "--data-dir"])
        .arg(&data_dir));
    let log = logged(&data_dir);
    let mut positions: Vec<(u32, u64)> = log.iter().map(|(p, o, _)| (*p, *o)).collect();
    positions.sort_unstable();
    let store = tally_connectors::object_store::open_local(&objects).unwrap();
    assert_eq!(
        archived_positions(&store),
        positions,
        "each logged event archived once"
    );

    // Recompute killed at several points: a published manifest is always complete.
    let runtime = runtime();
    let views = BatchViews::new(store);
    let check_manifest = || {
        let Some(manifest) = runtime.block_on(views.manifest()).unwrap() else {
            return;
        };
        for view in manifest.views.values() {
            for object in view.hours.values().filter_map(|hour| hour.object.as_ref()) {
                runtime.block_on(views.read_states(object)).unwrap();
            }
        }
    };
    for delay_ms in [50, 150, 300, 600] {
        let mut child = tally()
            .args(["batch", "run", "--data-dir"])
            .arg(&data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        check_manifest();
    }
    run(tally().args(["batch", "run", "--data-dir"]).arg(&data_dir));
    check_manifest();

    assert_batch_views_count(&views, log);
}

#[test]
fn batch_schedule_runs_on_its_period_and_reports_on_its_own_port() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let up = Tally::up(&data_dir);
    let generated = up
        .generator()
        .args(["--events", "2000", "--late", "0.5", "--seed", "3"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(generated.status.success(), "{generated:?}");
    up.kill9();
    run(tally()
        .args(["archive", "--once", "--data-dir"])
        .arg(&data_dir));

    let mut command = tally();
    command
        .args([
            "batch",
            "schedule",
            "--every",
            "1s",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(&data_dir);
    let schedule = Tally::start(command);
    schedule.wait_for("two scheduled runs", Duration::from_secs(60), |s| {
        s.metric("tally_batch_runs_total") >= 2
    });
    assert!(
        schedule.metric("tally_batch_horizon_ms") > 0,
        "a horizon published"
    );
    assert_eq!(schedule.metric("tally_batch_run_failures_total"), 0);
    let (status, body) = schedule.http("GET", "/readyz", &[], "");
    assert_eq!((status, body.contains("\"ready\"")), (200, true), "{body}");
}
