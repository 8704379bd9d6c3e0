//! Test support shared by the layers' tests (feature `testing`): random demo events with
//! resent copies, the plain reference computation of every view, the comparison of states
//! that the Lambda design promises, a view store with a hook before each call, the test
//! bed's real servers ([`servers`]) and a [`Link`] to cut for outages.

mod link;
pub mod servers;

pub use link::Link;
pub use servers::{
    Kafka, RealBackends, S3Bucket, free_local_address, hdfs_uri, scylla_uri, unique_name,
};

use std::collections::{BTreeMap, HashMap};

use datasketches::common::SearchCriteria;
use datasketches::kll::{KllFloat, KllSketch};
use proptest::prelude::*;
use tally_model::registry::MAX_TAG_NUMBER;
use tally_model::state::MeasureState;
use tally_model::time::{HOUR_MS, MINUTE_MS};
use tally_model::{AggregateState, Catalog, Event, Granularity, Millis, TagValue};

use crate::log::Offset;
use crate::view_store::{ViewKey, ViewStore, ViewStoreError};

const USERS: u32 = 30;
const TYPES: [&str; 4] = ["page_view", "click", "purchase", "session_start"];
const OPERATING_SYSTEMS: [&str; 3] = ["ios", "android", "linux"];

/// Random demo-tenant events with event times over the three hours from `base`, received in
/// order after them, plus resent exact copies of some, received later still.
pub fn demo_events(base: Millis) -> impl Strategy<Value = Vec<Event>> {
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
        .prop_map(move |(events, resends)| {
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
                        // A few at the edges of what ingest accepts, where an overflow or a
                        // rounding difference between the layers would show.
                        let revenue = match revenue % 50 {
                            0 => MAX_TAG_NUMBER,
                            1 => -MAX_TAG_NUMBER,
                            2 => 1e-6,
                            _ => f64::from(revenue) / 100.0,
                        };
                        tags.insert("revenue".into(), TagValue::Number(revenue));
                    }
                    Event {
                        event_id: format!("e{id}"),
                        event_type: event_type.into(),
                        ts: base + minute * MINUTE_MS + id,
                        tenant: "demo".into(),
                        user_id: format!("u{user}"),
                        tags,
                        received_at: base + 3 * HOUR_MS + id,
                        source: "demo-web".into(),
                    }
                })
                .collect();
            // Resends are exact copies of what the client sent, received later.
            for (pick, delay) in resends {
                let mut copy = out[pick.index(out.len())].clone();
                copy.received_at += delay;
                out.push(copy);
            }
            out
        })
}

/// One fixed sample of at least 100 events of [`demo_events`].
pub fn sample_demo_events(base: Millis) -> Vec<Event> {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut events = Vec::new();
    while events.len() < 100 {
        events = demo_events(base).new_tree(&mut runner).unwrap().current();
    }
    events
}

/// Each event once: the copy with the smallest `(received_at, partition, offset)` per
/// `(tenant, event_id, event hour)`, as both layers keep it.
pub fn deduplicated(logged: impl IntoIterator<Item = (u32, Offset, Event)>) -> Vec<Event> {
    type Identity = (String, String, Millis);
    type LogPosition = (Millis, u32, Offset);
    let mut kept: HashMap<Identity, (LogPosition, Event)> = HashMap::new();
    for (partition, offset, event) in logged {
        let position = (event.received_at, partition, offset);
        let hour = Granularity::Hour.bucket_start(event.ts);
        let id = (event.tenant.clone(), event.event_id.clone(), hour);
        if kept.get(&id).is_none_or(|(best, _)| position < *best) {
            kept.insert(id, (position, event));
        }
    }
    kept.into_values().map(|(_, event)| event).collect()
}

/// The plain computation of every view of `catalog` over logged events whose buckets fall in
/// `buckets`: each event once ([`deduplicated`]), folded into each view it feeds.
pub fn reference_states(
    catalog: &Catalog,
    logged: impl IntoIterator<Item = (u32, Offset, Event)>,
    buckets: std::ops::Range<Millis>,
) -> BTreeMap<ViewKey, AggregateState> {
    let mut expected = BTreeMap::new();
    for event in deduplicated(logged) {
        let Some(tenant) = catalog.tenants.get(&event.tenant) else {
            continue;
        };
        for view in tenant.views.iter().filter(|v| v.covers(&event.event_type)) {
            let bucket = view.bucket_of(event.ts);
            if !buckets.contains(&bucket) {
                continue;
            }
            let key = ViewKey {
                tenant: event.tenant.clone(),
                view: view.name.clone(),
                bucket,
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

/// `states` keyed as the real-time view store keeps them: under each view's
/// [`stored_name`](tally_model::ViewSpec::stored_name) in `catalog`.
pub fn as_stored(
    catalog: &Catalog,
    states: impl IntoIterator<Item = (ViewKey, AggregateState)>,
) -> Vec<(ViewKey, AggregateState)> {
    states
        .into_iter()
        .map(|(mut key, state)| {
            let spec = catalog.tenants[&key.tenant]
                .views
                .iter()
                .find(|view| view.name == key.view)
                .expect("the state's view is in the catalog");
            key.view = spec.stored_name();
            (key, state)
        })
        .collect()
}

/// `states` read from the real-time view store, keyed by view name as
/// [`reference_states`] keys them.
pub fn as_named(
    states: impl IntoIterator<Item = (ViewKey, AggregateState)>,
) -> impl Iterator<Item = (ViewKey, AggregateState)> {
    states.into_iter().map(|(mut key, state)| {
        if let Some((name, _fingerprint)) = key.view.split_once('@') {
            key.view = name.to_owned();
        }
        (key, state)
    })
}

/// Asserts two sets of states agree: the same keys; count, sum, min and max exactly; `uniq`
/// by the HLL composite estimate (the registers are order-independent, the HIP estimate and a
/// list's order are not); `quantiles` by item count, min and max exactly, and quantiles exactly
/// while the sketch holds every item (beyond, KLL compaction flips random coins, so two
/// sketches of the same items agree only within the rank error).
pub fn assert_states_agree(
    got: &BTreeMap<ViewKey, AggregateState>,
    want: &BTreeMap<ViewKey, AggregateState>,
) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (key, want) in want {
        let got = &got[key];
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
                    );
                    // Below the first compaction a KLL sketch keeps every item: its quantiles
                    // are exact, whatever order the items came in.
                    if g.n() <= u64::from(tally_model::state::KLL_K) {
                        for rank in [0.1, 0.5, 0.9, 0.99] {
                            let quantile = |sketch: &KllSketch<KllFloat<f64>>| {
                                sketch
                                    .quantile(rank, SearchCriteria::Inclusive)
                                    .ok()
                                    .flatten()
                            };
                            assert_eq!(quantile(g), quantile(w), "{key:?} at rank {rank}");
                        }
                    }
                }
                (g, w) => assert_eq!(g, w, "{key:?}"),
            }
        }
    }
}

/// Which call of a [`ViewStore`] a [`HookedViewStore`] is about to forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreCall {
    /// `upsert`.
    Upsert,
    /// `scan`.
    Scan,
    /// `delete_before`.
    DeleteBefore,
    /// `generation`.
    Generation,
    /// `record_progress` or `progress`.
    Progress,
}

/// What a [`HookedViewStore`] runs before each call: an error ends the call with it.
pub type StoreHook =
    Box<dyn Fn(StoreCall, &dyn ViewStore) -> Result<(), ViewStoreError> + Send + Sync>;

/// A real view store behind a hook that runs before each call, for tests that put an outage
/// or an interleaving of the layers at a chosen call.
pub struct HookedViewStore {
    /// The store the calls go to.
    pub inner: std::sync::Arc<dyn ViewStore>,
    /// Run before each call.
    pub hook: StoreHook,
}

impl ViewStore for HookedViewStore {
    fn upsert(&self, rows: &[(ViewKey, AggregateState)]) -> Result<(), ViewStoreError> {
        (self.hook)(StoreCall::Upsert, self.inner.as_ref())?;
        self.inner.upsert(rows)
    }

    fn scan(
        &self,
        tenant: &str,
        view: &str,
        buckets: std::ops::Range<Millis>,
    ) -> Result<Vec<(ViewKey, AggregateState)>, ViewStoreError> {
        (self.hook)(StoreCall::Scan, self.inner.as_ref())?;
        self.inner.scan(tenant, view, buckets)
    }

    fn delete_before(
        &self,
        tenant: &str,
        view: &str,
        bucket: Millis,
    ) -> Result<u64, ViewStoreError> {
        (self.hook)(StoreCall::DeleteBefore, self.inner.as_ref())?;
        self.inner.delete_before(tenant, view, bucket)
    }

    fn generation(&self, tenant: &str, view: &str) -> Result<Option<u64>, ViewStoreError> {
        (self.hook)(StoreCall::Generation, self.inner.as_ref())?;
        self.inner.generation(tenant, view)
    }

    fn record_progress(&self, writer: &str, progress: &[u8]) -> Result<(), ViewStoreError> {
        (self.hook)(StoreCall::Progress, self.inner.as_ref())?;
        self.inner.record_progress(writer, progress)
    }

    fn progress(&self, writer: &str) -> Result<Option<Vec<u8>>, ViewStoreError> {
        (self.hook)(StoreCall::Progress, self.inner.as_ref())?;
        self.inner.progress(writer)
    }
}
