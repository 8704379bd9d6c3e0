//! The speed layer's dataflow: from logged events to view states in the store.
//!
//! 1. [`deduplicate`] (differential): one copy per `(tenant, event_id)` within an event hour,
//!    the one with the smallest `(received_at, partition, offset)`: the batch layer's rule,
//!    which dedupes each hour partition, so a replayed or retried event changes nothing and
//!    both layers keep the same copy. Differential sees only a [`Sighting`] of each event:
//!    hashes and a log position, small and `Copy`; sorting whole events was most of the cost.
//!    Each worker keeps the sightings it fed in [`SightingsFed`] and retracts those of the
//!    hours the horizon passes, so the dedupe holds only copies that can still count.
//! 2. [`partial_states`] (on the worker that read the kept copy, which holds the event in its
//!    [`EpochEvents`]): each closed epoch's new events folded into one aggregate state per view
//!    key. Folding is O(1) per event; differential's `reduce` would re-read a bucket's every
//!    event whenever it changed.
//! 3. [`write_view_states`] (exchanged by view key, so one worker owns each key): merges the
//!    partials into the absolute states it owns and upserts the changed ones when the epoch
//!    closes. Upserts of absolute values: writing a state twice is harmless.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash, Hasher};

use foldhash::fast::FixedState;
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use differential_dataflow::VecCollection;
use tally_connectors::log::Offset;
use tally_connectors::view_store::{ViewKey, ViewStore};
use tally_model::time::HOUR_MS;
use tally_model::{AggregateState, Catalog, EventFields, Granularity, Millis, ViewSpec};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::{Capability, InputCapability};
use timely::progress::frontier::MutableAntichain;

use crate::record::LoggedEvent;
use crate::telemetry::SpeedMetrics;

/// Timely time: the epoch number.
pub type Epoch = u64;
/// The identity duplicates share: the event's hour (in hours since 1970) in the top 32 bits,
/// a 96-bit hash of `(tenant, event_id, event hour)` below. The hour says which sightings the
/// horizon retires without a field of its own, which kept every sighting 8 bytes larger.
pub type IdHash = u128;
/// A hash of what views read of an event (everything but `received_at`).
pub type ContentHash = u64;
/// `(received_at, partition, offset)` of a copy of an event. The smallest is the copy that
/// counts.
pub type CopyPosition = (Millis, u32, Offset);
/// What the dedupe sees of a logged event.
pub type Sighting = (IdHash, (CopyPosition, ContentHash));
/// The events a worker read in the current epoch, until it closes.
pub type EpochEvents = Rc<RefCell<EpochBuffer>>;
/// A `HashMap` with foldhash: these maps are hot and their keys are not attacker-chosen.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type Partials = Vec<(ViewKey, AggregateState)>;

/// Every tenant's views, looked up by tenant.
pub struct CompiledViews {
    by_tenant: FastMap<String, Vec<ViewSpec>>,
}

impl CompiledViews {
    /// The views of every tenant in the catalog.
    pub fn new(catalog: &Catalog) -> Self {
        let by_tenant = catalog
            .tenants
            .iter()
            .map(|(name, tenant)| (name.clone(), tenant.views.clone()))
            .collect();
        CompiledViews { by_tenant }
    }

    /// The views an event feeds.
    fn for_event<'a>(&'a self, event: &'a LoggedEvent) -> impl Iterator<Item = &'a ViewSpec> + 'a {
        self.by_tenant
            .get(event.tenant())
            .into_iter()
            .flatten()
            .filter(|view| view.covers(event.event_type()))
    }

    /// Every (tenant, view) pair.
    fn all(&self) -> impl Iterator<Item = (&str, &ViewSpec)> {
        self.by_tenant
            .iter()
            .flat_map(|(tenant, views)| views.iter().map(move |view| (tenant.as_str(), view)))
    }
}

/// The sighting of the copy of each event that counts.
pub fn deduplicate<'scope>(
    sightings: VecCollection<'scope, Epoch, Sighting>,
) -> VecCollection<'scope, Epoch, Sighting> {
    // Copies arrive sorted by value, so the first has the smallest log position.
    sightings.reduce(|_id, copies, kept| kept.push((*copies[0].0, 1)))
}

/// Fixed-seed hashing: every worker and process hashes alike.
fn hash_with(seed: u64, value: impl Hash) -> u64 {
    FixedState::with_seed(seed).hash_one(value)
}

/// The start of the event hour of an identity.
pub fn hour_of(id: IdHash) -> Millis {
    Millis::from((id >> 96) as u32) * HOUR_MS
}

/// The sighting of an event.
pub fn sighting(event: &LoggedEvent, partition: u32, offset: Offset) -> Sighting {
    let hour = Granularity::Hour.bucket_start(event.ts());
    let identity = (event.tenant(), event.event_id(), hour);
    // Event times are at or after the horizon, so the hour is positive and fits 32 bits.
    let hours = u32::try_from(hour / HOUR_MS).unwrap_or(0);
    let hash = (u128::from(hash_with(1, identity)) << 32) ^ u128::from(hash_with(2, identity));
    let id = (u128::from(hours) << 96) | (hash & ((1 << 96) - 1));
    let mut content = FixedState::with_seed(3).build_hasher();
    identity.hash(&mut content);
    event.hash_content(&mut content);
    (
        id,
        ((event.received_at(), partition, offset), content.finish()),
    )
}

/// The sightings a worker fed the dedupe, by event hour, to retract once the horizon passes
/// their hour: below it nothing counts, and differential forgets only what is retracted.
/// Each hour's sightings sit in fixed-size chunks: one growing vector per hour was copied
/// whole on every doubling, a tenth of a replay's time.
#[derive(Default)]
pub struct SightingsFed {
    by_hour: BTreeMap<Millis, Vec<Vec<Sighting>>>,
}

/// Sightings per chunk of [`SightingsFed`]: 512 KiB.
const SIGHTINGS_PER_CHUNK: usize = 8192;

impl SightingsFed {
    /// Notes a sighting fed to the dedupe.
    pub fn record(&mut self, sighting: Sighting) {
        let (id, _) = sighting;
        let chunks = self.by_hour.entry(hour_of(id)).or_default();
        match chunks.last_mut() {
            Some(chunk) if chunk.len() < SIGHTINGS_PER_CHUNK => chunk.push(sighting),
            _ => {
                let mut chunk = Vec::with_capacity(SIGHTINGS_PER_CHUNK);
                chunk.push(sighting);
                chunks.push(chunk);
            }
        }
    }

    /// Takes the sightings of the hours before `horizon`.
    pub fn take_before(&mut self, horizon: Millis) -> impl Iterator<Item = Sighting> {
        let kept = self.by_hour.split_off(&horizon);
        let expired = std::mem::replace(&mut self.by_hour, kept);
        expired.into_values().flatten().flatten()
    }
}

/// The events a worker read in one epoch, by log position. Reads move forward through each
/// partition, so a partition's events sit in a vector indexed from its first offset.
#[derive(Default)]
pub struct EpochBuffer {
    partitions: Vec<PartitionEvents>,
}

struct PartitionEvents {
    partition: u32,
    first: Offset,
    events: Vec<Option<LoggedEvent>>,
}

impl EpochBuffer {
    /// Holds an event read at `offset`, past every offset held for its partition.
    pub fn insert(&mut self, partition: u32, offset: Offset, event: LoggedEvent) {
        let slot = match self
            .partitions
            .iter()
            .position(|p| p.partition == partition)
        {
            Some(index) => &mut self.partitions[index],
            None => {
                self.partitions.push(PartitionEvents {
                    partition,
                    first: offset,
                    events: Vec::new(),
                });
                self.partitions.last_mut().expect("just pushed")
            }
        };
        if slot.events.is_empty() {
            slot.first = offset;
        }
        let Some(index) = offset.checked_sub(slot.first).map(|i| i as usize) else {
            tracing::error!(
                partition,
                offset,
                "log offsets went backwards within an epoch"
            );
            return;
        };
        if index >= slot.events.len() {
            slot.events.resize_with(index + 1, || None);
        }
        slot.events[index] = Some(event);
    }

    fn take(&mut self, partition: u32, offset: Offset) -> Option<LoggedEvent> {
        let slot = self
            .partitions
            .iter_mut()
            .find(|p| p.partition == partition)?;
        let index = usize::try_from(offset.checked_sub(slot.first)?).ok()?;
        slot.events.get_mut(index)?.take()
    }

    /// Drops what the epoch did not count (duplicates), keeping the memory for the next.
    pub fn clear(&mut self) {
        for slot in &mut self.partitions {
            slot.events.clear();
        }
    }
}

/// Each closed epoch's events, folded into one partial state per view key.
pub fn partial_states<'scope>(
    kept: VecCollection<'scope, Epoch, Sighting>,
    events: EpochEvents,
    views: Arc<CompiledViews>,
    horizon: Arc<AtomicI64>,
    metrics: Arc<SpeedMetrics>,
) -> Stream<'scope, Epoch, Partials> {
    // To the worker that read the copy: worker `w` reads partitions `p % workers == w`.
    let to_reader = Exchange::new(
        |((_, ((_, partition, _), _)), _, _): &(Sighting, Epoch, isize)| u64::from(*partition),
    );
    kept.inner
        .unary_frontier::<CapacityContainerBuilder<Partials>, _, _, _>(
            to_reader,
            "PartialStates",
            move |_, _| {
                let mut stash = EpochStash::default();
                move |(input, frontier), output| {
                    let port = output.output_index();
                    input.for_each(|capability, updates| {
                        stash.hold(
                            capability,
                            port,
                            updates
                                .drain(..)
                                .map(|(sighting, _epoch, diff)| (sighting, diff)),
                        );
                    });
                    while let Some((capability, updates)) = stash.next_closed(frontier) {
                        let horizon = horizon.load(Ordering::Acquire);
                        let epoch = &mut events.borrow_mut();
                        let partials = fold_epoch(updates, epoch, &views, horizon, &metrics);
                        output
                            .session(&capability)
                            .give_iterator(partials.into_iter());
                    }
                }
            },
        )
}

/// Folds one epoch's deduplicated updates into partial states per view key.
fn fold_epoch(
    mut updates: Vec<(Sighting, isize)>,
    events: &mut EpochBuffer,
    views: &CompiledViews,
    horizon: Millis,
    metrics: &SpeedMetrics,
) -> Partials {
    // When the dedupe swaps one copy for an earlier one, the -old and +new arrive together;
    // with equal content they cancel, and the count stays.
    updates.sort_unstable_by_key(|((id, (_, content)), diff)| (*id, *content, -*diff));
    let mut to_count = Vec::new();
    let mut held_change = 0;
    for group in updates.chunk_by(|((a, (_, x)), _), ((b, (_, y)), _)| (a, x) == (b, y)) {
        let net: isize = group.iter().map(|(_, diff)| diff).sum();
        held_change += net as i64;
        let (id, ((_, partition, offset), _)) = group[0].0;
        if net < 0 && hour_of(id) >= horizon {
            // Sketches cannot subtract. This needs an earlier copy with different content to
            // arrive after a later one was counted: a client reusing an event_id. (Below the
            // horizon, retractions are the dedupe forgetting hours that no longer count.)
            metrics.unretractable();
            tracing::warn!(
                "an event_id's dedupe choice changed after it was counted; its numbers keep the first copy"
            );
        }
        if net > 0 {
            to_count.push((partition, offset));
        }
    }
    // In log order, the order the events were buffered in.
    to_count.sort_unstable();
    let mut partials = PartialTable::default();
    let mut counted = 0;
    for (partition, offset) in to_count {
        let Some(event) = events.take(partition, offset) else {
            tracing::error!(
                partition,
                offset,
                "the kept copy of an event is not among this epoch's events"
            );
            continue;
        };
        counted += 1;
        for view in views.for_event(&event) {
            partials.accumulate(view, &event);
        }
    }
    metrics.events_counted(counted);
    metrics.deduplicated_events_changed(held_change);
    partials.into_partials()
}

/// One epoch's partial states by view key. An event finds its state through its key's parts
/// borrowed from the event, so only a key new in the epoch builds an owned [`ViewKey`] (a few
/// strings: building one per event and view was the largest cost of the fold).
#[derive(Default)]
struct PartialTable {
    table: hashbrown::HashTable<(ViewKey, AggregateState)>,
}

impl PartialTable {
    fn accumulate(&mut self, view: &ViewSpec, event: &LoggedEvent) {
        let bucket = view.bucket_of(event.ts());
        let tenant = event.tenant();
        // Read twice rather than collected: a lookup costs less than a vector per event.
        let dimensions = || view.borrowed_dimension_values(event);
        let hash = key_hash_of_parts(tenant, &view.name, bucket, dimensions());
        let is_key = |(key, _): &(ViewKey, AggregateState)| {
            key.bucket == bucket
                && key.view == view.name
                && key.tenant == tenant
                && key.dimensions.iter().map(String::as_str).eq(dimensions())
        };
        let (_, state) = self
            .table
            .entry(hash, is_key, |(key, _)| key_hash(key))
            .or_insert_with(|| {
                let key = ViewKey {
                    tenant: tenant.to_owned(),
                    view: view.name.clone(),
                    bucket,
                    dimensions: dimensions().map(Cow::into_owned).collect(),
                };
                (key, view.empty_state())
            })
            .into_mut();
        view.accumulate(state, event);
    }

    fn into_partials(self) -> Partials {
        self.table.into_iter().collect()
    }
}

/// Where a worker's owned states go, and what it needs to keep them.
pub struct StateWriter {
    /// The worker's index; worker 0 also deletes expired keys from the store.
    pub worker: usize,
    /// The view store.
    pub store: Arc<dyn ViewStore>,
    /// The views, to delete expired buckets of each.
    pub views: Arc<CompiledViews>,
    /// The current horizon.
    pub horizon: Arc<AtomicI64>,
    /// Metrics.
    pub metrics: Arc<SpeedMetrics>,
    /// The first store error, for the worker loop to report.
    pub failure: Arc<Mutex<Option<String>>>,
}

/// Merges partials into the states this worker owns and writes the changed ones per epoch.
pub fn write_view_states<'scope>(
    partials: Stream<'scope, Epoch, Partials>,
    writer: StateWriter,
) -> Stream<'scope, Epoch, Vec<()>> {
    let by_key = Exchange::new(|(key, _): &(ViewKey, AggregateState)| key_hash(key));
    partials.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
        by_key,
        "ViewStates",
        move |_, _| {
            let mut stash = EpochStash::default();
            let mut owned = OwnedStates {
                writer,
                states: FastMap::default(),
                swept_below: Millis::MIN,
            };
            move |(input, frontier), output| {
                let port = output.output_index();
                input.for_each(|capability, updates| {
                    stash.hold(capability, port, updates.drain(..))
                });
                // The capability is held until the states are written, so a probe downstream
                // passes the epoch only once the store reflects it.
                while let Some((_capability, partials)) = stash.next_closed(frontier) {
                    owned.apply(partials);
                }
                owned.sweep_if_the_horizon_moved();
            }
        },
    )
}

/// Updates held per epoch, with a capability for it, until the input frontier passes it.
struct EpochStash<D> {
    pending: BTreeMap<Epoch, (Capability<Epoch>, Vec<D>)>,
}

impl<D> Default for EpochStash<D> {
    fn default() -> Self {
        EpochStash {
            pending: BTreeMap::new(),
        }
    }
}

impl<D> EpochStash<D> {
    fn hold(
        &mut self,
        capability: InputCapability<Epoch>,
        port: usize,
        updates: impl Iterator<Item = D>,
    ) {
        let Some(&epoch) = capability.least() else {
            return;
        };
        let slot = match self.pending.entry(epoch) {
            Entry::Occupied(slot) => slot.into_mut(),
            Entry::Vacant(slot) => match capability.retain_least(port) {
                Some(capability) => slot.insert((capability, Vec::new())),
                None => return,
            },
        };
        slot.1.extend(updates);
    }

    /// The oldest epoch the frontier has passed, with its updates.
    fn next_closed(
        &mut self,
        frontier: &MutableAntichain<Epoch>,
    ) -> Option<(Capability<Epoch>, Vec<D>)> {
        let entry = self.pending.first_entry()?;
        if frontier.frontier().less_equal(entry.key()) {
            return None;
        }
        Some(entry.remove())
    }
}

struct OwnedStates {
    writer: StateWriter,
    states: FastMap<ViewKey, AggregateState>,
    swept_below: Millis,
}

impl OwnedStates {
    fn apply(&mut self, partials: Partials) {
        self.sweep_if_the_horizon_moved();
        let before = self.states.len();
        let mut changed = Vec::with_capacity(partials.len());
        for (key, partial) in partials {
            match self.states.get_mut(&key) {
                Some(state) => {
                    if let Err(err) = state.merge(&partial) {
                        self.fail(format!("merging {key:?}: {err}"));
                        continue;
                    }
                }
                None => {
                    self.states.insert(key.clone(), partial);
                }
            }
            changed.push(key);
        }
        changed.sort_unstable();
        changed.dedup();
        let rows: Vec<(ViewKey, AggregateState)> = changed
            .into_iter()
            .map(|key| {
                let state = self.states[&key].clone();
                (key, state)
            })
            .collect();
        if !rows.is_empty()
            && let Err(err) = self.writer.store.upsert(&rows)
        {
            self.fail(format!("writing {} view states: {err}", rows.len()));
        }
        self.writer
            .metrics
            .state_keys_changed(self.states.len() as i64 - before as i64);
    }

    /// Drops states of buckets before the horizon: below it the batch layer answers.
    fn sweep_if_the_horizon_moved(&mut self) {
        let horizon = self.writer.horizon.load(Ordering::Acquire);
        if horizon <= self.swept_below {
            return;
        }
        let before = self.states.len();
        self.states.retain(|key, _| key.bucket >= horizon);
        self.writer
            .metrics
            .state_keys_changed(self.states.len() as i64 - before as i64);
        if self.writer.worker == 0 {
            for (tenant, view) in self.writer.views.all() {
                if let Err(err) = self.writer.store.delete_before(tenant, &view.name, horizon) {
                    self.fail(format!(
                        "deleting {tenant}/{} below the horizon: {err}",
                        view.name
                    ));
                }
            }
        }
        self.swept_below = horizon;
    }

    fn fail(&self, message: String) {
        tracing::error!(%message, "speed layer could not update the view store");
        let mut failure = self
            .writer
            .failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        failure.get_or_insert(message);
    }
}

fn key_hash(key: &ViewKey) -> u64 {
    let dimensions = key.dimensions.iter().map(String::as_str);
    key_hash_of_parts(&key.tenant, &key.view, key.bucket, dimensions)
}

/// [`key_hash`] of a key given by parts, none of which need be owned.
fn key_hash_of_parts(
    tenant: &str,
    view: &str,
    bucket: Millis,
    dimensions: impl Iterator<Item = impl AsRef<str>>,
) -> u64 {
    let mut hasher = FixedState::with_seed(0).build_hasher();
    (tenant, view, bucket).hash(&mut hasher);
    for dimension in dimensions {
        dimension.as_ref().hash(&mut hasher);
    }
    hasher.finish()
}
