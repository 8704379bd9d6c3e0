//! The seam test: queries answered while the batch horizon moves hour by hour (and the speed
//! layer drops what falls below it) count every event exactly once, none from both layers and
//! none from neither. Search over the archive plus the log tail finds each event once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tally_batch_layer::telemetry::BatchMetrics;
use tally_batch_layer::{Archiver, Recompute, RollPolicy, RunRequest};
use tally_connectors::batch_views::BatchViews;
use tally_connectors::catalog::CatalogHandle;
use tally_connectors::log::{AppendRecord, EventLog, Spool, SpoolOptions};
use tally_connectors::testing::{deduplicated, reference_states, sample_demo_events};
use tally_connectors::view_store::EmbeddedViewStore;
use tally_model::time::{HOUR_MS, MINUTE_MS, now_millis};
use tally_model::{Catalog, Event, Granularity, Millis};
use tally_serving::query::QueryParams;
use tally_serving::raw::{RawEvents, RawFilter};
use tally_serving::{Serving, ServingMetrics};

use crate::support::speed_caught_up;

const PARTITIONS: u32 = 3;
/// Hours of history the horizon walks across.
const HOURS: i64 = 6;

/// Demo events over the `HOURS` closed hours before the current one (with resent copies),
/// plus a few in the current hour that stay on the speed side of every horizon.
fn events(now: Millis) -> (Millis, Vec<Event>) {
    let base = Granularity::Hour.bucket_start(now) - HOURS * HOUR_MS;
    let mut events = Vec::new();
    for (part, start) in [base, base + 3 * HOUR_MS].into_iter().enumerate() {
        events.extend(sample_demo_events(start).into_iter().map(|mut event| {
            event.event_id = format!("p{part}-{}", event.event_id);
            event
        }));
    }
    let current: Vec<Event> = events
        .iter()
        .take(20)
        .map(|event| Event {
            event_id: format!("now-{}", event.event_id),
            ts: now - MINUTE_MS,
            received_at: now,
            ..event.clone()
        })
        .collect();
    events.extend(current);
    (base, events)
}

/// Per (hour, event type): events counted once.
fn expected_hourly(
    catalog: &Catalog,
    logged: &[(u32, u64, Event)],
) -> BTreeMap<(Millis, String), u64> {
    let mut expected = BTreeMap::new();
    for (key, state) in reference_states(catalog, logged.iter().cloned(), Millis::MIN..Millis::MAX)
    {
        if key.view == "events_by_type" {
            let hour = Granularity::Hour.bucket_start(key.bucket);
            *expected
                .entry((hour, key.dimensions[0].clone()))
                .or_default() += state.count;
        }
    }
    expected
}

#[test]
fn queries_count_each_event_once_while_the_horizon_moves() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_millis();
    let (base, events) = events(now);
    let options = SpoolOptions {
        partitions: PARTITIONS,
        ..SpoolOptions::default()
    };
    let log = Arc::new(Spool::open(&dir.path().join("log"), options).unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let records = events
        .iter()
        .map(|e| AppendRecord::event(e, PARTITIONS))
        .collect();
    let offsets = runtime.block_on(log.append(records)).unwrap();
    let logged: Vec<(u32, u64, Event)> = events
        .iter()
        .zip(offsets)
        .map(|(event, offset)| {
            (
                AppendRecord::event(event, PARTITIONS).partition,
                offset,
                event.clone(),
            )
        })
        .collect();
    let catalog = Arc::new(Catalog::demo("w", "r"));
    let expected = expected_hourly(&catalog, &logged);

    let views = Arc::new(EmbeddedViewStore::open(&dir.path().join("views.redb")).unwrap());
    let speed = speed_caught_up(log.clone(), views.clone(), catalog.clone(), None);

    let objects = tally_connectors::object_store::open_local(&dir.path().join("objects")).unwrap();
    let metrics = BatchMetrics::register(&mut Default::default());
    runtime.block_on(async {
        let policy = RollPolicy {
            events: 40,
            bytes: usize::MAX,
            age: Duration::from_secs(3600),
            clock_slack_ms: 1000,
        };
        let mut archiver =
            Archiver::<Event>::open(log.clone(), objects.clone(), policy, metrics.clone())
                .await
                .unwrap();
        while archiver.pass(true).await.unwrap().read > 0 {}
    });

    let serving = Arc::new(Serving::new(
        CatalogHandle::from(catalog.clone()),
        None,
        views,
        BatchViews::with_cache(objects.clone(), 64 << 20),
        RawEvents::new(objects.clone(), Some(log.clone()), None),
        ServingMetrics::register(&mut Default::default()),
        Default::default(),
    ));
    let params = QueryParams {
        view: Some("events_by_type".into()),
        from: Some((base - HOUR_MS).to_string()),
        to: Some((now + HOUR_MS).to_string()),
        granularity: Some("hour".into()),
        group_by: Some("event_type".into()),
        ..QueryParams::default()
    };

    // Query without pause while the horizon moves; every answer must be exact.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let querying = {
        let (serving, stop, answered, expected) = (
            serving.clone(),
            stop.clone(),
            answered.clone(),
            expected.clone(),
        );
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let mut seams = Vec::new();
            while !stop.load(Ordering::Acquire) {
                let answer = runtime.block_on(serving.query("demo", &params)).unwrap();
                let got: BTreeMap<(Millis, String), u64> = answer
                    .rows
                    .values()
                    .iter()
                    .map(|row| {
                        let hour =
                            tally_model::time::parse_timestamp(row["bucket"].as_str().unwrap())
                                .unwrap();
                        (
                            (hour, row["event_type"].as_str().unwrap().to_owned()),
                            row["count"].as_u64().unwrap(),
                        )
                    })
                    .collect();
                assert_eq!(got, expected, "answer with sources {:?}", answer.sources);
                if seams.last() != Some(&answer.sources.batch[1]) {
                    seams.push(answer.sources.batch[1].clone());
                }
                answered.fetch_add(1, Ordering::AcqRel);
            }
            seams
        })
    };
    let wait_for_answers = |more: usize| {
        let target = answered.load(Ordering::Acquire) + more;
        let started = Instant::now();
        while answered.load(Ordering::Acquire) < target {
            assert!(!querying.is_finished(), "the querying thread failed");
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "queries stalled"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    wait_for_answers(3);
    let recompute = Recompute::new(objects.clone(), catalog.clone(), 0, metrics);
    for hour in 1..=HOURS {
        let request = RunRequest {
            hours: Some(base..base + hour * HOUR_MS),
            ..RunRequest::default()
        };
        let summary = runtime.block_on(recompute.run(&request, &|_| {})).unwrap();
        assert_eq!(summary.horizon, base + hour * HOUR_MS);
        wait_for_answers(2);
        speed.follow_published_horizon(summary.horizon);
        // Answers while the speed layer drops the hour that fell below the horizon.
        wait_for_answers(5);
    }
    stop.store(true, Ordering::Release);
    let seams = querying
        .join()
        .expect("every answer during the horizon moves was exact");
    speed.stop().unwrap();
    assert!(
        seams.len() > HOURS as usize,
        "the horizon moved under the queries: {seams:?}"
    );

    // Search: the archive and the log tail, each event once.
    let mut found = Vec::new();
    let filter = RawFilter {
        tenant: "demo",
        event_type: None,
        user_id: None,
        range: base..now + HOUR_MS,
    };
    let scanning = serving.raw().scan_hours(&filter, |events| {
        found.extend(events);
        std::ops::ControlFlow::Continue(())
    });
    runtime.block_on(scanning).unwrap();
    let mut unique: Vec<String> = deduplicated(logged)
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    let mut found: Vec<String> = found.into_iter().map(|e| e.event_id).collect();
    unique.sort();
    found.sort();
    assert_eq!(found, unique);
}
