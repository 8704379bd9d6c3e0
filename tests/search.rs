//! The full-text search index of `tally up` against the raw events: with resent and late
//! events, `q=*` finds every accepted event once (its total is the raw count of the range);
//! after the index is lost (its folder deleted while tally is down, the log archived), the
//! next start rebuilds it from the archive and the log, and it finds the same events again.

use std::time::Duration;

use serde_json::Value;
use tally_model::time::now_millis;

use crate::support::{READ_KEY, Tally, run, tally};

/// `(total of q=*, raw count)` over the last 7 hours, from the API.
fn totals(server: &Tally) -> (u64, u64) {
    let authorization = format!("Bearer {READ_KEY}");
    // Not on a minute: the count is taken from the raw events, not from a view.
    let end = now_millis() / 1000 + 61;
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

#[test]
fn the_search_index_finds_every_event_once_and_is_rebuilt_after_a_loss() {
    let dir = tempfile::tempdir().unwrap();
    let up = Tally::up(dir.path());
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
        .arg(dir.path()));
    std::fs::remove_dir_all(dir.path().join("search")).unwrap();
    let again = Tally::up(dir.path());
    again.wait_for(
        "the rebuilt index to hold every event",
        Duration::from_secs(60),
        |up| totals(up) == (raw, raw),
    );
    assert!(again.metric("tally_search_indexed_events_total") >= raw);
}
