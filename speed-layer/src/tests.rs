//! The speed layer against a plain fold over the same events, on a real spool and view store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tally_connectors::catalog::{CatalogHandle, StoredCatalog};
use tally_connectors::log::{AppendRecord, EventLog, Spool, SpoolOptions};
use tally_connectors::testing::{
    HookedViewStore, StoreCall, as_named, assert_states_agree, demo_events, reference_states,
    sample_demo_events,
};
use tally_connectors::view_store::live;
use tally_connectors::view_store::{EmbeddedViewStore, ViewKey, ViewStore, ViewStoreError};
use tally_model::config::SpeedConfig;
use tally_model::time::{HOUR_MS, MINUTE_MS};
use tally_model::{AggregateState, Catalog, Event, Granularity, Millis, partition_of};

use crate::{SpeedHandle, SpeedLayer, SpeedMetrics};

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
        let records = events.iter().map(|e| AppendRecord::event(e, 3)).collect();
        self.runtime.block_on(self.log.append(records)).unwrap();
    }

    fn start(&self, workers: usize) -> SpeedHandle {
        self.start_on(workers, self.store.clone())
    }

    /// Starts the speed layer writing to `store` (a wrapper of the rig's, say).
    fn start_on(&self, workers: usize, store: Arc<dyn ViewStore>) -> SpeedHandle {
        self.start_following(workers, store, self.catalog.clone().into())
    }

    /// Starts the speed layer following `catalog`'s changes.
    fn start_following(
        &self,
        workers: usize,
        store: Arc<dyn ViewStore>,
        catalog: CatalogHandle,
    ) -> SpeedHandle {
        let config = SpeedConfig {
            workers,
            epoch_ms: 10,
            ..SpeedConfig::default()
        };
        let metrics = SpeedMetrics::register(&mut Default::default());
        SpeedLayer {
            log: self.log.clone(),
            store,
            catalog,
            config,
            metrics,
            max_event_lead: Duration::from_secs(24 * 3600),
            published_horizon: None,
        }
        .start()
        .unwrap()
    }

    /// Waits until the store reflects every record in the log.
    fn wait_caught_up(&self, speed: &SpeedHandle) {
        let ends = self.log.stats().unwrap().next_offsets();
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
                as_named(
                    self.store
                        .scan("demo", &view.stored_name(), Millis::MIN..Millis::MAX)
                        .unwrap(),
                )
            })
            .collect()
    }

    /// The plain computation over everything in the log, from the horizon on.
    fn expected(&self, horizon: Millis) -> BTreeMap<ViewKey, AggregateState> {
        let logged = (0..3).flat_map(|partition| {
            let entries = self.log.read(partition, 0, usize::MAX).unwrap();
            entries.into_iter().map(move |entry| {
                let event: Event = serde_json::from_slice(&entry.payload).unwrap();
                (partition, entry.offset, event)
            })
        });
        reference_states(&self.catalog, logged, horizon..Millis::MAX)
    }
}

fn now() -> Millis {
    tally_model::time::now_millis()
}

fn events_strategy() -> impl Strategy<Value = Vec<Event>> {
    demo_events(now() - 3 * HOUR_MS)
}

fn sample_events() -> Vec<Event> {
    sample_demo_events(now() - 3 * HOUR_MS)
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
        assert_states_agree(&rig.stored(), &rig.expected(horizon));
        speed.stop().unwrap();
    }
}

#[test]
fn each_worker_records_the_offsets_the_store_reflects_after_catching_up() {
    let rig = rig();
    let events = sample_events();
    let (first, second) = events.split_at(events.len() / 2);
    rig.append(first);
    let speed = rig.start(2);
    rig.wait_caught_up(&speed);
    rig.append(second);
    rig.wait_caught_up(&speed);
    let ends = rig.log.stats().unwrap().next_offsets();
    let recorded = || {
        let mut offsets = vec![None; ends.len()];
        for worker in 0..2 {
            let Some(progress) = rig
                .store
                .progress(&format!("speed-worker-{worker}"))
                .unwrap()
            else {
                continue;
            };
            let progress: serde_json::Value = serde_json::from_slice(&progress).unwrap();
            for pair in progress["offsets"].as_array().unwrap() {
                let partition = pair[0].as_u64().unwrap() as usize;
                offsets[partition] = pair[1].as_u64();
            }
        }
        offsets
    };
    let expected: Vec<Option<u64>> = ends.iter().copied().map(Some).collect();
    let started = Instant::now();
    while recorded() != expected {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "recorded {:?}, the log ends at {ends:?}",
            recorded()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    speed.stop().unwrap();
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
    assert_states_agree(&rig.stored(), &first);
    assert_states_agree(&rig.stored(), &rig.expected(speed.horizon()));
    speed.stop().unwrap();
}

#[test]
fn a_changed_view_spec_starts_afresh_and_never_counts_an_event_twice() {
    let mut rig = rig();
    rig.append(&sample_events());
    let speed = rig.start(2);
    rig.wait_caught_up(&speed);
    speed.stop().unwrap();
    let before = rig.catalog.tenants["demo"].views[0].clone();
    let mut changed = (*rig.catalog).clone();
    let view = &mut changed.tenants.get_mut("demo").unwrap().views[0];
    view.dimensions.push("country".into());
    view.measures
        .push(tally_model::Measure::Uniq("user_id".into()));
    rig.catalog = Arc::new(changed);

    let speed = rig.start(2);
    rig.wait_caught_up(&speed);
    // Exactly the new spec's states: no state of the old one beside them.
    assert_states_agree(&rig.stored(), &rig.expected(speed.horizon()));
    let old = rig
        .store
        .scan("demo", &before.stored_name(), Millis::MIN..Millis::MAX)
        .unwrap();
    assert!(old.is_empty(), "{} states of the old spec kept", old.len());
    speed.stop().unwrap();
}

/// A view changed and a view added while the layer runs, with events arriving meanwhile:
/// the new specs' states are built beside the running ones and named live only once they hold
/// every event, and the old spec's states stay for queries already reading them.
#[test]
fn a_view_changed_or_added_while_running_goes_live_complete_without_a_restart() {
    for workers in [1, 2] {
        let mut rig = rig();
        let events = sample_events();
        let (early, late) = events.split_at(events.len() / 2);
        rig.append(early);
        let catalog = CatalogHandle::from(rig.catalog.clone());
        let speed = rig.start_following(workers, rig.store.clone(), catalog.clone());
        rig.wait_caught_up(&speed);
        let live_before = live::read(rig.store.as_ref()).unwrap().unwrap();
        let old = rig.catalog.tenants["demo"].views[0].clone();
        assert_eq!(live_before.view("demo", &old.name), Some(&old));

        let mut changed = (*rig.catalog).clone();
        let views = &mut changed.tenants.get_mut("demo").unwrap().views;
        views[0].dimensions.push("country".into());
        let mut added = views[0].clone();
        added.name = "by_country".into();
        added.dimensions = vec!["country".into()];
        views.push(added);
        assert!(catalog.offer(StoredCatalog {
            generation: 1,
            catalog: changed.clone(),
        }));
        rig.append(late);
        let started = Instant::now();
        let live_after = loop {
            let live = live::read(rig.store.as_ref()).unwrap().unwrap();
            if live.generation == 1 {
                break live;
            }
            assert!(speed.failure().is_none(), "{:?}", speed.failure());
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{workers} workers: the changed views never went live"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        for view in &changed.tenants["demo"].views {
            assert_eq!(live_after.view("demo", &view.name), Some(view));
        }
        rig.wait_caught_up(&speed);
        rig.catalog = Arc::new(changed);
        assert_states_agree(&rig.stored(), &rig.expected(speed.horizon()));
        let kept = rig
            .store
            .scan("demo", &old.stored_name(), Millis::MIN..Millis::MAX)
            .unwrap();
        assert!(!kept.is_empty(), "the old spec's states went at the switch");
        speed.stop().unwrap();
    }
}

#[test]
fn a_view_store_outage_is_waited_out_and_the_views_end_exact() {
    let rig = rig();
    rig.append(&sample_events());
    // The first four writes fail as an unreachable ScyllaDB's do.
    let failing_writes = Arc::new(std::sync::atomic::AtomicU32::new(4));
    let failing = failing_writes.clone();
    let store = Arc::new(HookedViewStore {
        inner: rig.store.clone(),
        hook: Box::new(move |call, _| {
            let fails = call == StoreCall::Upsert
                && failing
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                    .is_ok();
            match fails {
                true => Err(ViewStoreError::Scylla {
                    operation: "writing states".into(),
                    source: "no node answered within the timeout".into(),
                }),
                false => Ok(()),
            }
        }),
    });
    let speed = rig.start_on(2, store);
    rig.wait_caught_up(&speed);
    assert_eq!(
        failing_writes.load(Ordering::Acquire),
        0,
        "the outage happened"
    );
    assert_eq!(speed.failure(), None, "an outage is not a failure");
    assert_eq!(speed.retrying(), None, "the store answers again");
    assert_states_agree(&rig.stored(), &rig.expected(speed.horizon()));
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
    // The dedupe's own output: one kept copy per distinct event.
    let distinct_from = |horizon: Millis| {
        let identities = events.iter().filter(|e| e.ts >= horizon).map(|e| {
            let hour = Granularity::Hour.bucket_start(e.ts);
            (&e.tenant, &e.event_id, hour)
        });
        identities.collect::<std::collections::HashSet<_>>().len() as i64
    };
    let held = &speed.shared.layer.metrics.deduplicated_events;
    assert_eq!(held.get(), distinct_from(Millis::MIN));
    speed.follow_published_horizon(horizon);
    let started = Instant::now();
    while rig.stored().keys().any(|k| k.bucket < horizon) || held.get() != distinct_from(horizon) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "older buckets still stored, or their events still in the dedupe ({} held)",
            held.get()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    rig.wait_caught_up(&speed);
    assert_eq!(
        speed.shared.layer.metrics.unretractable.get(),
        0,
        "forgetting expired hours is not a changed dedupe choice"
    );
    let kept: BTreeMap<ViewKey, AggregateState> = before
        .into_iter()
        .filter(|(k, _)| k.bucket >= horizon)
        .collect();
    assert_states_agree(&rig.stored(), &kept);
    // New events below the horizon are ignored; at or after it they count.
    let mut old = events[0].clone();
    old.event_id = "below".into();
    old.ts = horizon - 1;
    let mut new = events[0].clone();
    new.event_id = "above".into();
    new.ts = horizon + 1;
    rig.append(&[old, new]);
    rig.wait_caught_up(&speed);
    assert_states_agree(&rig.stored(), &rig.expected(horizon));
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
    let start =
        crate::pipeline::replay_start(rig.log.as_ref(), partition, 0..100, horizon - lead).unwrap();
    let first_needed = received.iter().position(|&r| r >= horizon - lead).unwrap() as u64;
    assert_eq!(start, first_needed);
    assert_eq!(
        crate::pipeline::replay_start(rig.log.as_ref(), partition, 0..100, Millis::MIN).unwrap(),
        0
    );
    assert_eq!(
        crate::pipeline::replay_start(rig.log.as_ref(), partition, 0..100, Millis::MAX).unwrap(),
        100
    );
}

#[test]
fn a_published_horizon_behind_the_trailing_one_is_reported_as_a_gap_until_it_catches_up() {
    let rig = rig();
    let speed = rig.start(1);
    assert_eq!(speed.seam_gap(), None);
    let trailing = speed.horizon();
    let behind = trailing - 2 * HOUR_MS;
    speed.follow_published_horizon(behind);
    let gap = speed
        .seam_gap()
        .expect("a gap below the speed layer's horizon");
    assert_eq!(gap.start, behind);
    assert!(
        gap.end >= trailing,
        "up to the speed layer's own horizon: {gap:?}"
    );
    assert!(speed.horizon() >= trailing, "a horizon never moves back");

    let ahead = trailing + HOUR_MS;
    speed.follow_published_horizon(ahead);
    assert_eq!(speed.seam_gap(), None, "the batch layer caught up");
    assert_eq!(speed.horizon(), ahead);
    speed.stop().unwrap();
}
