//! The speed layer against a plain fold over the same events, on a real spool and view store.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tally_connectors::log::{AppendRecord, EventLog, Spool, SpoolOptions};
use tally_connectors::view_store::{EmbeddedViewStore, ViewKey, ViewStore};
use tally_model::config::SpeedConfig;
use tally_model::state::MeasureState;
use tally_model::time::{HOUR_MS, MINUTE_MS};
use tally_model::{AggregateState, Catalog, Event, Granularity, Millis, TagValue, partition_of};

use crate::dataflow::LogPosition;
use crate::{SpeedHandle, SpeedLayer, SpeedMetrics};

const USERS: u32 = 30;

struct Rig {
    _dir: tempfile::TempDir,
    log: Arc<Spool>,
    store: Arc<EmbeddedViewStore>,
    catalog: Arc<Catalog>,
    runtime: tokio::runtime::Runtime,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(
        Spool::open(
            &dir.path().join("log"),
            SpoolOptions {
                partitions: 3,
                ..SpoolOptions::default()
            },
        )
        .unwrap(),
    );
    let store = Arc::new(EmbeddedViewStore::open(&dir.path().join("views.redb")).unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    Rig {
        _dir: dir,
        log,
        store,
        catalog: Arc::new(Catalog::demo("w", "r")),
        runtime,
    }
}

impl Rig {
    fn append(&self, events: &[Event]) {
        let records = events
            .iter()
            .map(|e| AppendRecord {
                partition: partition_of(&e.tenant, &e.user_id, 3),
                payload: serde_json::to_vec(e).unwrap(),
            })
            .collect();
        self.runtime.block_on(self.log.append(records)).unwrap();
    }

    fn start(&self, workers: usize) -> SpeedHandle {
        let config = SpeedConfig {
            workers,
            epoch_ms: 10,
            ..SpeedConfig::default()
        };
        let metrics = SpeedMetrics::register(&mut Default::default());
        SpeedLayer {
            log: self.log.clone(),
            store: self.store.clone(),
            catalog: self.catalog.clone(),
            config,
            metrics,
            max_event_lead: Duration::from_secs(24 * 3600),
        }
        .start()
        .unwrap()
    }

    /// Waits until the store reflects every record in the log.
    fn wait_caught_up(&self, speed: &SpeedHandle) {
        let ends: Vec<u64> = self
            .log
            .stats()
            .unwrap()
            .partitions
            .iter()
            .map(|p| p.next_offset)
            .collect();
        let started = Instant::now();
        while speed.reflected_offsets() != ends {
            assert!(speed.failure().is_none(), "{:?}", speed.failure());
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "speed layer did not catch up: {:?} vs {ends:?}",
                speed.reflected_offsets()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stored(&self) -> BTreeMap<ViewKey, AggregateState> {
        let demo = &self.catalog.tenants["demo"];
        demo.views
            .iter()
            .flat_map(|view| {
                self.store
                    .scan("demo", &view.name, Millis::MIN..Millis::MAX)
                    .unwrap()
            })
            .collect()
    }

    /// The plain computation: keep the copy with the smallest (received_at, partition, offset)
    /// per event id, then fold every view.
    fn expected(&self, horizon: Millis) -> BTreeMap<ViewKey, AggregateState> {
        let mut kept: HashMap<(String, String), (LogPosition, Event)> = HashMap::new();
        for partition in 0..3 {
            for entry in self.log.read(partition, 0, usize::MAX).unwrap() {
                let event: Event = serde_json::from_slice(&entry.payload).unwrap();
                let position = (event.received_at, partition, entry.offset);
                let id = (event.tenant.clone(), event.event_id.clone());
                if kept.get(&id).is_none_or(|(best, _)| position < *best) {
                    kept.insert(id, (position, event));
                }
            }
        }
        let mut expected = BTreeMap::new();
        for (_, event) in kept.into_values().filter(|(_, e)| e.ts >= horizon) {
            for view in self.catalog.tenants["demo"]
                .views
                .iter()
                .filter(|v| v.covers(&event.event_type))
            {
                let key = ViewKey {
                    tenant: "demo".into(),
                    view: view.name.clone(),
                    bucket: view.granularity.bucket_start(event.ts),
                    dimensions: view.dimension_values(&event),
                };
                view.accumulate(
                    expected.entry(key).or_insert_with(|| view.empty_state()),
                    &event,
                );
            }
        }
        expected
    }
}

/// Exact on count, sum, min, max and the HLL composite estimate; KLL by its exact parts.
fn assert_same(
    stored: &BTreeMap<ViewKey, AggregateState>,
    expected: &BTreeMap<ViewKey, AggregateState>,
) {
    assert_eq!(
        stored.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (key, want) in expected {
        let got = &stored[key];
        assert_eq!(got.count, want.count, "{key:?}");
        for (g, w) in got.measures.iter().zip(&want.measures) {
            match (g, w) {
                (MeasureState::Uniq(g), MeasureState::Uniq(w)) => {
                    assert_eq!(g.composite_estimate(), w.composite_estimate(), "{key:?}")
                }
                (MeasureState::Quantiles(g), MeasureState::Quantiles(w)) => {
                    assert_eq!(
                        (g.n(), g.min_item(), g.max_item()),
                        (w.n(), w.min_item(), w.max_item()),
                        "{key:?}"
                    )
                }
                (g, w) => assert_eq!(g, w, "{key:?}"),
            }
        }
    }
}

fn now() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as Millis
}

const TYPES: [&str; 4] = ["page_view", "click", "purchase", "session_start"];
const OPERATING_SYSTEMS: [&str; 3] = ["ios", "android", "linux"];

/// Random demo events over the last few hours, some of them late, and resent copies of some.
fn events_strategy() -> impl Strategy<Value = Vec<Event>> {
    let event = (
        0..TYPES.len(),
        0u32..USERS,
        0i64..180,
        0..OPERATING_SYSTEMS.len(),
        1u32..5000,
        0u32..10_000,
    );
    (
        prop::collection::vec(event, 1..150),
        prop::collection::vec((any::<prop::sample::Index>(), 1i64..5000), 0..40),
    )
        .prop_map(|(events, resends)| {
            let base = now() - 3 * HOUR_MS;
            let mut out: Vec<Event> = events
                .into_iter()
                .enumerate()
                .map(|(index, (kind, user, minute, os, latency, revenue))| {
                    let id = index as i64;
                    let event_type = TYPES[kind];
                    let mut tags = BTreeMap::from([
                        (
                            "os_type".to_owned(),
                            TagValue::String(OPERATING_SYSTEMS[os].into()),
                        ),
                        (
                            "latency_ms".to_owned(),
                            TagValue::Number(f64::from(latency) / 10.0),
                        ),
                    ]);
                    if event_type == "purchase" {
                        tags.insert(
                            "revenue".into(),
                            TagValue::Number(f64::from(revenue) / 100.0),
                        );
                    }
                    Event {
                        event_id: format!("e{id}"),
                        event_type: event_type.into(),
                        ts: base + minute * MINUTE_MS + id,
                        tenant: "demo".into(),
                        user_id: format!("u{user}"),
                        tags,
                        received_at: base + 180 * MINUTE_MS + id,
                        source: "demo-web".into(),
                    }
                })
                .collect();
            // Resends are exact copies of what the client sent, received later. (A client that
            // reuses an id for other content is counted in `unretractable`, see `dataflow`.)
            for (pick, delay) in resends {
                let mut copy = out[pick.index(out.len())].clone();
                copy.received_at += delay;
                out.push(copy);
            }
            out
        })
}

/// One fixed sample of the strategy, for the example-based tests.
fn sample_events() -> Vec<Event> {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut events = Vec::new();
    while events.len() < 100 {
        events = events_strategy().new_tree(&mut runner).unwrap().current();
    }
    events
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn stored_states_equal_a_plain_fold_over_the_same_events(events in events_strategy(), split in any::<prop::sample::Index>()) {
        let rig = rig();
        // Half before the start (replayed), half while running (followed).
        let (early, late) = events.split_at(split.index(events.len() + 1));
        rig.append(early);
        let speed = rig.start(2);
        rig.append(late);
        rig.wait_caught_up(&speed);
        let horizon = speed.horizon();
        assert_same(&rig.stored(), &rig.expected(horizon));
        speed.stop().unwrap();
    }
}

#[test]
fn a_restart_replays_to_the_same_states_without_double_counting() {
    let rig = rig();
    let events = sample_events();
    rig.append(&events);
    let speed = rig.start(2);
    rig.wait_caught_up(&speed);
    let first = rig.stored();
    speed.stop().unwrap();
    let speed = rig.start(1);
    rig.wait_caught_up(&speed);
    assert_same(&rig.stored(), &first);
    assert_same(&rig.stored(), &rig.expected(speed.horizon()));
    speed.stop().unwrap();
}

#[test]
fn moving_the_horizon_retracts_older_buckets_from_memory_and_store() {
    let rig = rig();
    let events = sample_events();
    rig.append(&events);
    let speed = rig.start(2);
    rig.wait_caught_up(&speed);
    let horizon = Granularity::Hour.bucket_start(now() - HOUR_MS);
    let before = rig.stored();
    assert!(
        before.keys().any(|k| k.bucket < horizon) && before.keys().any(|k| k.bucket >= horizon),
        "the events straddle the new horizon"
    );
    speed.advance_horizon(horizon);
    let started = Instant::now();
    while rig.stored().keys().any(|k| k.bucket < horizon) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "older buckets still stored"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let kept: BTreeMap<ViewKey, AggregateState> = before
        .into_iter()
        .filter(|(k, _)| k.bucket >= horizon)
        .collect();
    assert_same(&rig.stored(), &kept);
    // New events below the horizon are ignored; at or after it they count.
    let mut old = events[0].clone();
    old.event_id = "below".into();
    old.ts = horizon - 1;
    let mut new = events[0].clone();
    new.event_id = "above".into();
    new.ts = horizon + 1;
    rig.append(&[old, new]);
    rig.wait_caught_up(&speed);
    assert_same(&rig.stored(), &rig.expected(horizon));
    speed.stop().unwrap();
}

#[test]
fn a_restart_replays_from_the_first_record_that_can_reach_the_horizon() {
    let rig = rig();
    let horizon = now() - 10 * HOUR_MS;
    let lead = 2 * HOUR_MS;
    // One user, so one partition; received times grow with offsets.
    let received: Vec<Millis> = (0..100)
        .map(|i| horizon - 5 * HOUR_MS + i * 6 * MINUTE_MS)
        .collect();
    let events: Vec<Event> = received
        .iter()
        .enumerate()
        .map(|(i, &received_at)| Event {
            event_id: format!("r{i}"),
            event_type: "click".into(),
            ts: received_at,
            tenant: "demo".into(),
            user_id: "one-user".into(),
            tags: BTreeMap::new(),
            received_at,
            source: "demo-web".into(),
        })
        .collect();
    rig.append(&events);
    let partition = partition_of("demo", "one-user", 3);
    let start = crate::replay_start(rig.log.as_ref(), partition, 0..100, horizon - lead).unwrap();
    let first_needed = received.iter().position(|&r| r >= horizon - lead).unwrap() as u64;
    assert_eq!(start, first_needed);
    assert_eq!(
        crate::replay_start(rig.log.as_ref(), partition, 0..100, Millis::MIN).unwrap(),
        0
    );
    assert_eq!(
        crate::replay_start(rig.log.as_ref(), partition, 0..100, Millis::MAX).unwrap(),
        100
    );
}
