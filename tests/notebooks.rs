//! The notebooks of `notebooks/`, run top to bottom as CI runs them, against data that `tally`
//! makes on embedded defaults, and once against the test bed's S3 server: `tally gen` with
//! resends, late and invalid events, `tally archive --once`, `tally batch run`, before and
//! after a reprocess of a changed view; and on the plainest data, one hour with nothing
//! rejected and no batch view yet. A failing cell fails the test, and so does an assertion
//! cell: the views must equal the raw events, within the sketches' stated error.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use tally_connectors::testing::S3Bucket;

use crate::support::{ADMIN_KEY, Tally, keep_objects_at, run, tally};

const NOTEBOOKS: [&str; 3] = [
    "01_raw_events.ipynb",
    "02_views_vs_raw.ipynb",
    "03_reprocessing.ipynb",
];

fn notebooks_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/notebooks"))
}

/// `tally` with its objects at `objects` (a URL and its options), or in the data directory.
fn tally_with(objects: Option<(&str, &BTreeMap<String, String>)>) -> Command {
    let mut command = tally();
    if let Some((url, options)) = objects {
        keep_objects_at(&mut command, url, options);
    }
    command
}

/// What the notebooks read: generated load with resends, late and invalid events, archived
/// and recomputed.
fn make_data(data_dir: &Path, objects: Option<(&str, &BTreeMap<String, String>)>) {
    let up = Tally::up_with(data_dir, tally_with(objects));
    run(up
        .generator()
        .args(["--events", "4000", "--duplicates", "0.1", "--late", "0.5"])
        .args(["--invalid", "0.05", "--seed", "9"]));
    up.kill9();
    archive_and_recompute(data_dir, objects);
}

/// `tally archive --once`, then `tally batch run`.
fn archive_and_recompute(data_dir: &Path, objects: Option<(&str, &BTreeMap<String, String>)>) {
    for args in [&["archive", "--once"][..], &["batch", "run"]] {
        run(tally_with(objects)
            .args(args)
            .arg("--data-dir")
            .arg(data_dir));
    }
}

/// `events_by_type` changed (sessions left out) through governance, and reprocessed as logic
/// version 2.
fn change_and_reprocess(data_dir: &Path, objects: Option<(&str, &BTreeMap<String, String>)>) {
    let changed = r#"{"name":"events_by_type","events":["page_view","click","purchase","link_clicked"],"dimensions":["event_type","os_type"],"measures":["count","uniq(user_id)"],"granularity":"minute"}"#;
    let authorization = format!("Bearer {ADMIN_KEY}");
    let up = Tally::up_with(data_dir, tally_with(objects));
    let (status, body) = up.http(
        "PUT",
        "/v1/governance/views/events_by_type",
        &[
            ("Authorization", &authorization),
            ("Content-Type", "application/json"),
        ],
        changed,
    );
    assert_eq!(status, 200, "{body}");
    drop(up);
    run(tally_with(objects)
        .args(["batch", "reprocess", "--logic-version", "2", "--view"])
        .args(["events_by_type", "--data-dir"])
        .arg(data_dir));
}

/// Runs every notebook with `environment`, top to bottom; returns each one's seconds.
fn run_notebooks(environment: &[(&str, String)]) -> Vec<(&'static str, f64)> {
    let python = std::env::var("TALLY_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let out = tempfile::tempdir().unwrap();
    NOTEBOOKS
        .iter()
        .map(|notebook| {
            let started = Instant::now();
            let output = Command::new(&python)
                .current_dir(notebooks_dir())
                .args(["-m", "nbconvert", "--to", "notebook", "--execute"])
                .arg("--output-dir")
                .arg(out.path())
                .arg(notebook)
                .envs(environment.iter().map(|(k, v)| (k, v)))
                .output()
                .expect("python3 runs (pip install -r notebooks/requirements.txt; .ci/run does)");
            assert!(
                output.status.success(),
                "{notebook} failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            (*notebook, started.elapsed().as_secs_f64())
        })
        .collect()
}

#[test]
fn the_notebooks_run_top_to_bottom_on_a_local_folder() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    make_data(&data_dir, None);
    let objects = data_dir.join("objects").display().to_string();
    // One logic version, before any reprocess.
    run_notebooks(&[("TALLY_DATA", objects.clone())]);
    change_and_reprocess(&data_dir, None);
    let timings = run_notebooks(&[("TALLY_DATA", objects)]);
    eprintln!("notebooks on a local folder, seconds each: {timings:?}");
}

/// The plainest data Tally writes: events of this hour only, none rejected, none resent, so
/// no batch view yet; the notebooks say so and run on, given the data directory itself.
#[test]
fn the_notebooks_run_on_one_hour_with_nothing_rejected_and_no_batch_view_yet() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let up = Tally::up(&data_dir);
    run(up
        .generator()
        .args(["--events", "300", "--late", "0", "--seed", "3"]));
    drop(up);
    archive_and_recompute(&data_dir, None);
    run_notebooks(&[("TALLY_DATA", data_dir.display().to_string())]);
}

#[test]
fn the_notebooks_run_top_to_bottom_on_s3() {
    let test = "notebooks::the_notebooks_run_top_to_bottom_on_s3";
    let Some(bucket) = S3Bucket::create(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let objects = Some((bucket.url.as_str(), &bucket.options));
    make_data(&dir.path().join("data"), objects);
    change_and_reprocess(&dir.path().join("data"), objects);
    let option = |name: &str| bucket.options.get(name).cloned().unwrap_or_default();
    let timings = run_notebooks(&[
        ("TALLY_DATA", bucket.url.clone()),
        ("AWS_ENDPOINT_URL", option("aws_endpoint")),
        ("AWS_ACCESS_KEY_ID", option("aws_access_key_id")),
        ("AWS_SECRET_ACCESS_KEY", option("aws_secret_access_key")),
        ("AWS_REGION", option("aws_region")),
    ]);
    eprintln!("notebooks on S3, seconds each: {timings:?}");
}

#[test]
fn the_notebooks_are_committed_without_outputs() {
    for notebook in NOTEBOOKS {
        let text = std::fs::read_to_string(notebooks_dir().join(notebook)).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        for cell in parsed["cells"].as_array().unwrap() {
            if cell["cell_type"] == "code" {
                assert_eq!(
                    (&cell["outputs"], &cell["execution_count"]),
                    (&serde_json::json!([]), &serde_json::Value::Null),
                    "{notebook} has outputs: run `jupyter nbconvert --clear-output --inplace notebooks/*.ipynb`"
                );
            }
        }
    }
}
