//! The Lambda consistency test, guarantee 3: the same random events (with resent copies and
//! late arrivals) through the speed layer and through archive + recompute give equal states
//! for every view, bucket and dimension values.
//!
//! Count, sum, min and max are compared exactly; `uniq` by the HLL composite estimate (the
//! registers are order-independent, the HIP accumulator and a coupon list's order are not);
//! `quantiles` by n, min, max exactly and by every quantile while the KLL sketch holds all its
//! items (past that, KLL compaction flips random coins, so equal inputs give estimates equal
//! only within the rank error). See `tally_connectors::testing::assert_states_agree`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tally_batch_layer::telemetry::BatchMetrics;
use tally_batch_layer::{Archiver, Recompute, RollPolicy, RunRequest};
use tally_connectors::batch_views::BatchViews;
use tally_connectors::log::{AppendRecord, EventLog, Spool, SpoolOptions};
use tally_connectors::testing::{as_named, assert_states_agree, demo_events};
use tally_connectors::view_store::{EmbeddedViewStore, ViewKey, ViewStore};
use tally_model::time::{HOUR_MS, now_millis};
use tally_model::{AggregateState, Catalog, Event, Millis};

use crate::support::speed_caught_up;

const PARTITIONS: u32 = 3;

/// Every view state a speed layer over `log` builds, from the first record on.
pub fn speed_states(
    log: Arc<dyn EventLog>,
    store: Arc<EmbeddedViewStore>,
    catalog: &Arc<Catalog>,
) -> BTreeMap<ViewKey, AggregateState> {
    // Keep everything: this test compares the layers over the same hours.
    let speed = speed_caught_up(log, store.clone(), catalog.clone(), Some(Millis::MIN));
    speed.stop().unwrap();
    catalog.tenants["demo"]
        .views
        .iter()
        .flat_map(|view| {
            as_named(
                store
                    .scan("demo", &view.stored_name(), Millis::MIN..Millis::MAX)
                    .unwrap(),
            )
        })
        .collect()
}

/// Every batch view state the archiver and recompute build from `log`.
pub fn batch_states(
    log: Arc<dyn EventLog>,
    objects: &std::path::Path,
    catalog: &Arc<Catalog>,
) -> BTreeMap<ViewKey, AggregateState> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = tally_connectors::object_store::open_local(objects).unwrap();
        let metrics = BatchMetrics::register(&mut Default::default());
        let policy = RollPolicy {
            events: 50,
            bytes: usize::MAX,
            age: Duration::from_secs(3600),
            clock_slack_ms: 1000,
        };
        let mut archiver = Archiver::<Event>::open(log, store.clone(), policy, metrics.clone())
            .await
            .unwrap();
        while archiver.pass(true).await.unwrap().read > 0 {}
        let recompute = Recompute::new(store.clone(), catalog.clone(), 0, metrics);
        recompute
            .run(&RunRequest::default(), &|_| {})
            .await
            .unwrap();
        let views = BatchViews::new(store);
        let manifest = views.manifest().await.unwrap().unwrap();
        let mut states = BTreeMap::new();
        for view in &catalog.tenants["demo"].views {
            let read = views.read(&manifest, "demo", &view.name, Millis::MIN..Millis::MAX);
            states.extend(read.await.unwrap());
        }
        states
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn speed_and_batch_layers_build_equal_states_from_the_same_events(
        events in demo_events(now_millis() - 6 * HOUR_MS),
        late in prop::collection::vec((any::<prop::sample::Index>(), 1i64..120), 0..20),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let options = SpoolOptions { partitions: PARTITIONS, ..SpoolOptions::default() };
        let log = Arc::new(Spool::open(&dir.path().join("log"), options).unwrap());
        // Late arrivals: events whose time is minutes before others already logged.
        let mut events = events;
        for (pick, minutes_late) in late {
            let mut event = events[pick.index(events.len())].clone();
            event.event_id = format!("late-{}", events.len());
            event.ts -= minutes_late * 60_000;
            event.received_at += 10 * 60_000;
            events.push(event);
        }
        let records = events
            .iter()
            .map(|e| AppendRecord::event(e, PARTITIONS))
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(log.append(records)).unwrap();

        let catalog = Arc::new(Catalog::demo("w", "r"));
        let store = Arc::new(EmbeddedViewStore::open(&dir.path().join("views.redb")).unwrap());
        let speed = speed_states(log.clone(), store, &catalog);
        let batch = batch_states(log, &dir.path().join("objects"), &catalog);
        prop_assert!(!batch.is_empty());
        assert_states_agree(&speed, &batch);
    }
}
