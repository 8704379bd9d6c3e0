//! The full-text search index of `tally up` against the raw events: with resent and late
//! events, `q=*` finds every accepted event once (its total is the raw count of the range);
//! after the index is lost (its folder deleted while tally is down, the log archived), the
//! next start rebuilds it from the archive and the log, and it finds the same events again.
//! Once on a local folder, once on the test bed's S3 server, where the rebuild's reads of the
//! archive and serving's share one connection pool. And `/readyz` while a rebuild fails.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tally_connectors::testing::S3Bucket;
use tally_model::layout::{RawStream, raw_object_path};
use tally_model::time::now_millis;

use crate::support::{READ_KEY, Tally, keep_objects_at, run, tally};

/// `(total of q=*, raw count)` over the last 7 hours, from the API.
fn totals(server: &Tally) -> (u64, u64) {
    let authorization = format!("Bearer {READ_KEY}");
    // Never on a minute: the count is taken from the raw events, not from a view.
    let end = (now_millis() / 1000 + 61) / 60 * 60 + 31;
    let range = format!("start_time={}&end_time={end}", end - 7 * 3600);
    let get = |path: String| -> Value {
        let (status, body) = server.http("GET", &path, &[("Authorization", &authorization)], "");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    };
    let found = get(format!("/v1/events/search?q=*&limit=1&{range}"));
    let counted = get(format!("/v1/events/count?{range}"));
    (
        found["total"].as_u64().unwrap(),
        counted["result"].as_u64().unwrap(),
    )
}

/// Loads events, then loses the index and has it rebuilt; `tally()` is the command of each
/// step, with its objects where the test keeps them.
fn finds_every_event_once_and_again_after_a_rebuild(data_dir: &Path, tally: impl Fn() -> Command) {
    let up = Tally::up_with(data_dir, tally());
    run(up.generator().args([
        "--events",
        "3000",
        "--duplicates",
        "0.1",
        "--late",
        "0.3",
        "--seed",
        "3",
    ]));
    let (_, raw) = totals(&up);
    assert!(raw > 2000, "{raw} events counted");
    up.wait_for(
        "the index to hold every event",
        Duration::from_secs(60),
        |up| totals(up) == (raw, raw),
    );
    up.kill9();

    run(tally()
        .args(["archive", "--once", "--data-dir"])
        .arg(data_dir));
    std::fs::remove_dir_all(data_dir.join("search")).unwrap();
    let again = Tally::up_with(data_dir, tally());
    again.wait_for(
        "the rebuilt index to hold every event",
        Duration::from_secs(60),
        |up| totals(up) == (raw, raw),
    );
    assert!(again.metric("tally_search_indexed_events_total") >= raw);
    // Reads of the archive after the rebuild answer as before it, without waiting on a
    // connection the rebuild opened (the object store client's timeout is 30 s).
    for _ in 0..5 {
        let asked = std::time::Instant::now();
        assert_eq!(totals(&again), (raw, raw));
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "a search and a count took {:?}: a request waited on a stalled connection",
            asked.elapsed()
        );
    }
}

#[test]
fn the_search_index_finds_every_event_once_and_is_rebuilt_after_a_loss() {
    let dir = tempfile::tempdir().unwrap();
    finds_every_event_once_and_again_after_a_rebuild(dir.path(), tally);
}

#[test]
fn the_search_index_is_rebuilt_from_an_archive_on_s3_and_serving_goes_on_answering() {
    let test = "search::the_search_index_is_rebuilt_from_an_archive_on_s3";
    let Some(bucket) = S3Bucket::create(test) else {
        return;
    };
    let (url, options): (&str, &BTreeMap<String, String>) = (&bucket.url, &bucket.options);
    let dir = tempfile::tempdir().unwrap();
    finds_every_event_once_and_again_after_a_rebuild(dir.path(), || {
        let mut command = tally();
        keep_objects_at(&mut command, url, options);
        command
    });
}

/// `/readyz`, and each `q=` answer, say when searches miss events: an archived hour the rebuild
/// cannot read keeps the new index failing (degraded, retried every second); once the hour
/// reads, ready again, and answers are whole.
#[test]
fn readiness_says_while_the_search_index_cannot_be_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let damaged =
        dir.path()
            .join("objects")
            .join(raw_object_path(RawStream::Events, now_millis(), 99, 0, 0));
    std::fs::create_dir_all(damaged.parent().unwrap()).unwrap();
    std::fs::write(&damaged, "not Parquet").unwrap();
    let up = Tally::up_with(dir.path(), tally());
    up.wait_for(
        "readiness to name the failing rebuild",
        Duration::from_secs(60),
        |up| {
            let readiness = up.readiness();
            readiness.contains("\"degraded\"")
                && readiness.contains("rebuilding its index from the archive failed")
        },
    );
    // A search answers meanwhile, and says its hits may be incomplete, and why.
    let authorization = format!("Bearer {READ_KEY}");
    let now = now_millis() / 1000;
    let search = format!(
        "/v1/events/search?q=*&start_time={}&end_time={}",
        now - 3600,
        now + 3600
    );
    let incomplete = |up: &Tally| -> Option<String> {
        let (status, body) = up.http("GET", &search, &[("Authorization", &authorization)], "");
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        answer["incomplete"].as_str().map(str::to_owned)
    };
    let why = incomplete(&up).expect("an answer that says it is incomplete");
    assert!(
        why.contains("rebuilding its index from the archive failed"),
        "{why}"
    );
    std::fs::remove_file(&damaged).unwrap();
    up.wait_for("readiness", Duration::from_secs(60), |up| {
        up.readiness().contains("\"ready\"")
    });
    assert_eq!(incomplete(&up), None);
}
