//! The object store off the machine: `tally up`, `tally archive` and `tally batch run` with
//! `objects.url` on an S3-compatible server keep the raw archive, the batch views and the
//! catalog there, and the views there count every logged event once.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use tally_connectors::batch_views::BatchViews;
use tally_connectors::testing::{S3Server, assert_states_agree, reference_states};
use tally_model::time::HOUR_MS;
use tally_model::{Catalog, Millis};

use crate::batch::logged;
use crate::support::{READ_KEY, Tally, WRITE_KEY, run, tally};

/// `tally` set, through its environment, to keep its objects on `server`.
fn tally_on(server: &S3Server) -> Command {
    let mut command = tally();
    command.env("TALLY_OBJECTS_URL", &server.url);
    for (setting, value) in &server.options {
        let var = format!("TALLY_OBJECTS_OPTIONS_{}", setting.to_uppercase());
        command.env(var, value);
    }
    command
}

#[test]
fn the_batch_layer_on_s3_archives_and_counts_every_logged_event_once() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut command = tally_on(&server);
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

    run(tally_on(&server)
        .args(["archive", "--once", "--data-dir"])
        .arg(&data_dir));
    run(tally_on(&server)
        .args(["batch", "run", "--data-dir"])
        .arg(&data_dir));
    assert!(
        !data_dir.join("objects").exists(),
        "nothing may land in the local object folder"
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
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
