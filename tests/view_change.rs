//! A view changed and a view added through governance while events arrive, with no restart:
//! every answer before, during and after counts each acknowledged event at most once and is
//! never blank; a query that only the new spec can answer gets a 503 that says why until the
//! speed layer has built it, then the new spec counts every acknowledged event once. In
//! `tally up`; the speed cluster's run is in `cluster.rs`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_model::Millis;

use crate::support::{ADMIN_KEY, READ_KEY, Tally, post_events};

/// Events of the batch whose acknowledgement the loader may not have counted yet.
const IN_FLIGHT: u64 = 50;

/// The countries the load's events come from, one per batch in turn: no other events have
/// them.
const COUNTRIES: [&str; 2] = ["load-a", "load-b"];

/// Sends click events in batches of 50, each from one of [`COUNTRIES`], until `stop`; counts
/// the acknowledged ones per country.
pub fn load(server: &Tally, stop: &AtomicBool, acked: &[AtomicU64; 2]) {
    let mut batch = 0u64;
    while !stop.load(Ordering::Acquire) {
        let country = COUNTRIES[(batch % 2) as usize];
        let events: Vec<String> = (0..50)
            .map(|i| {
                format!(
                    r#"{{"event_type":"click","user_id":"u{i}","tags":{{"country":"{country}"}}}}"#
                )
            })
            .collect();
        let (status, body) = post_events(server, &format!("[{}]", events.join(",")));
        assert_eq!(status, 202, "{body}");
        acked[(batch % 2) as usize].fetch_add(50, Ordering::AcqRel);
        batch += 1;
    }
}

/// `GET /v1/query` from `from` to an hour from now with the read key: the status, and the
/// count per group (the rows' `group` dimension, or "" without one).
pub fn query_counts(
    address: &str,
    query: &str,
    (from, group): (Millis, &str),
) -> (u16, Value, Vec<(String, u64)>) {
    let path = format!(
        "/v1/query?{query}&from={from}&to={}&granularity=all&measures=count",
        tally_model::time::now_millis() + 3_600_000
    );
    let authorization = format!("Bearer {READ_KEY}");
    let (status, body) = crate::support::http(
        address,
        "GET",
        &path,
        &[("Authorization", &authorization)],
        "",
    );
    let answer: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    let rows = match status {
        200 => answer["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                let name = row[group].as_str().unwrap_or_default().to_owned();
                (name, row["count"].as_u64().unwrap())
            })
            .collect(),
        _ => Vec::new(),
    };
    (status, answer, rows)
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

fn total(rows: &[(String, u64)]) -> u64 {
    rows.iter().map(|(_, count)| count).sum()
}

/// PUTs a view spec with the admin key.
pub fn put_view(address: &str, name: &str, spec: &str) {
    let authorization = format!("Bearer {ADMIN_KEY}");
    let (status, body) = crate::support::http(
        address,
        "PUT",
        &format!("/v1/governance/views/{name}"),
        &[
            ("Authorization", &authorization),
            ("Content-Type", "application/json"),
        ],
        spec,
    );
    assert_eq!(status, 200, "{body}");
}

/// The changed `events_by_type` (it gains `country`) and the added `clicks_by_country`.
pub const CHANGED: &str = r#"{"name":"events_by_type","events":["*"],"dimensions":["event_type","os_type","country"],"measures":["count","uniq(user_id)"],"granularity":"minute"}"#;
pub const ADDED: &str = r#"{"name":"clicks_by_country","events":["click"],"dimensions":["country"],"measures":["count"],"granularity":"minute"}"#;

/// Checks answers while the views change under load sent to `collector` and queried at
/// `query_at` (a process serving the query API), then that the new specs count every
/// acknowledged event once. Every event sent before is counted already.
pub fn change_views_under_load(collector: &Tally, query_at: &str) {
    // From a minute ago: every hour the batch layer holds is before (it closes an hour only
    // once the lateness is past), so no batch hour of the old spec is read for the new one.
    let from = tally_model::time::now_millis() - 60_000;
    let counts = |query: &str, group: &str| query_counts(query_at, query, (from, group));
    let stop = AtomicBool::new(false);
    let acked = [AtomicU64::new(0), AtomicU64::new(0)];
    let (status, answer, rows) = counts("view=events_by_type", "");
    assert_eq!(status, 200, "{answer}");
    let before = total(&rows);
    std::thread::scope(|scope| {
        scope.spawn(|| load(collector, &stop, &acked));
        // The load stops when this closure ends, also when an assertion fails in it.
        let _stop_the_load = StopOnDrop(&stop);
        let acknowledged = || before + acked.iter().map(|a| a.load(Ordering::Acquire)).sum::<u64>();
        // The plain total answers, only grows, and never counts more than was acknowledged.
        let mut last = before;
        let mut plain_total = || {
            let (status, answer, rows) = counts("view=events_by_type", "");
            assert_eq!(status, 200, "{answer}");
            let seen = total(&rows);
            assert!(
                seen >= last && seen <= acknowledged() + IN_FLIGHT,
                "{seen} after {last}: {answer}"
            );
            last = seen;
            seen
        };
        // Before: the old spec counts.
        let started = Instant::now();
        while plain_total() < before + 2_000 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no events counted"
            );
        }
        put_view(query_at, "events_by_type", CHANGED);
        put_view(query_at, "clicks_by_country", ADDED);
        // During: the plain total keeps answering and growing; what needs the new specs is
        // refused with the reason until they are built, never answered blank.
        let started = Instant::now();
        let (mut by_country, mut added) = (false, false);
        let mut refusals = 0;
        while !(by_country && added) {
            plain_total();
            for (query, done) in [
                ("view=events_by_type&group_by=country", &mut by_country),
                ("view=clicks_by_country", &mut added),
            ] {
                let (status, answer, rows) = counts(query, "country");
                match status {
                    200 => {
                        assert!(total(&rows) > 0, "{query} answered blank: {answer}");
                        *done = true;
                    }
                    503 => {
                        assert!(answer.to_string().contains("retry"), "{answer}");
                        refusals += 1;
                    }
                    _ => panic!("{query}: {status} {answer}"),
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the changed views never went live"
            );
        }
        eprintln!("view change: {refusals} queries refused while the new specs were built");
    });
    // After: each acknowledged event counted once, per country, by both new specs.
    let expected = [
        (COUNTRIES[0].to_owned(), acked[0].load(Ordering::Acquire)),
        (COUNTRIES[1].to_owned(), acked[1].load(Ordering::Acquire)),
    ];
    let started = Instant::now();
    loop {
        let (_, _, changed) = counts("view=events_by_type&group_by=country", "country");
        let (_, _, added) = counts("view=clicks_by_country&group_by=country", "country");
        let sorted = |mut rows: Vec<(String, u64)>| {
            rows.retain(|(country, _)| COUNTRIES.contains(&country.as_str()));
            rows.sort();
            rows
        };
        if sorted(changed.clone()) == expected && sorted(added.clone()) == expected {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "acknowledged {expected:?}; the changed view counts {changed:?}, the added one {added:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_view_changed_and_one_added_under_load_answer_throughout_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Tally::up(dir.path());
    change_views_under_load(&server, &server.address);
}
