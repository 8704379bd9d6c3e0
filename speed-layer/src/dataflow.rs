//! The speed layer's dataflow: from logged events to view states in the store.
//!
//! 1. [`deduplicate`] (differential): one copy per `(tenant, event_id)` within an event hour,
//!    the one with the smallest `(received_at, partition, offset)`: the batch layer's rule,
//!    which dedupes each hour partition, so a replayed or retried event changes nothing and
//!    both layers keep the same copy. Differential sees only a [`Sighting`] of each event:
//!    hashes and a log position, small and `Copy`; sorting whole events was most of the cost.
//!    When the horizon passes an hour, each worker reads that hour's sightings off its part
//!    of the dedupe's arrangement ([`HeldSightings::retire_before`]) and retracts them, so
//!    the dedupe holds only copies that can still count.
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
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};

use foldhash::fast::FixedState;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use differential_dataflow::operators::arrange::TraceAgent;
use differential_dataflow::trace::cursor::cursor_list;
use differential_dataflow::trace::implementations::ValSpine;
use differential_dataflow::trace::{Cursor, TraceReader};
use differential_dataflow::{AsCollection, VecCollection};
use tally_connectors::log::Offset;
use tally_connectors::view_store::live::LiveView;
use tally_connectors::view_store::{ViewKey, ViewStore, ViewStoreError};
use tally_model::time::HOUR_MS;
use tally_model::{AggregateState, EventFields, Granularity, Millis, ViewSpec, dimension_text};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::{Capability, CapabilitySet, InputCapability};
use timely::progress::frontier::AntichainRef;
use timely::progress::frontier::MutableAntichain;
use timely::progress::{Antichain, Timestamp};

use crate::record::{FieldAt, FieldSlots, FoundFields, LoggedEvent};
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
/// The events a worker read in its open epochs, until each closes.
pub type EpochEvents = Rc<RefCell<EpochBuffer>>;
/// A `HashMap` with foldhash: these maps are hot and their keys are not attacker-chosen.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type Partials = Vec<(ViewKey, AggregateState)>;

/// Every tenant's views, compiled for the fold: each view has a number the fold keys its
/// states by, and reads its fields by [`FieldSlots`] number.
pub struct CompiledViews {
    by_tenant: FastMap<String, Vec<CompiledView>>,
    /// `(tenant, view, the name its states are stored under)`, by view number.
    views: Vec<(String, ViewSpec, String)>,
    /// Every field a view reads.
    slots: FieldSlots,
}

/// A view with its fields as [`FieldSlots`] numbers.
struct CompiledView {
    number: usize,
    dimensions: Vec<usize>,
    /// In [`ViewSpec::measure_fields`] order.
    measures: Vec<usize>,
}

impl CompiledViews {
    /// The views of every tenant in `views`.
    pub fn new(views: &[LiveView]) -> Self {
        let mut compiled_views: Vec<(String, ViewSpec, String)> = Vec::new();
        let mut by_tenant: FastMap<String, Vec<CompiledView>> = FastMap::default();
        let mut slots = FieldSlots::default();
        for LiveView { tenant, spec } in views {
            by_tenant
                .entry(tenant.clone())
                .or_default()
                .push(CompiledView {
                    number: compiled_views.len(),
                    dimensions: spec.dimensions.iter().map(|d| slots.slot(d)).collect(),
                    measures: spec.measure_fields().map(|m| slots.slot(m)).collect(),
                });
            compiled_views.push((tenant.clone(), spec.clone(), spec.stored_name()));
        }
        CompiledViews {
            by_tenant,
            views: compiled_views,
            slots,
        }
    }

    /// Every tenant's view specs, as compiled.
    pub fn live_views(&self) -> Vec<LiveView> {
        self.views
            .iter()
            .map(|(tenant, spec, _)| LiveView {
                tenant: tenant.clone(),
                spec: spec.clone(),
            })
            .collect()
    }

    /// The fields the views read, to parse records with.
    pub fn field_slots(&self) -> &FieldSlots {
        &self.slots
    }

    /// Every (tenant, name its states are stored under) pair.
    pub fn stored_names(&self) -> impl Iterator<Item = (&str, &str)> {
        self.views
            .iter()
            .map(|(tenant, _, stored)| (tenant.as_str(), stored.as_str()))
    }
}

/// The sighting of the copy of each event that counts: per identity, the smallest sighting
/// with a positive count.
///
/// Modelled on differential's `threshold_total`: epochs are totally ordered, so each key's
/// change is its kept copy before a batch against after it, read off the sightings'
/// arrangement. `reduce` also kept an arrangement of its output and replayed every changed
/// key's history through it, twice the trace work.
///
/// Also returns the worker's part of the sightings' arrangement, for
/// [`HeldSightings::retire_before`].
pub fn deduplicate<'scope>(
    sightings: VecCollection<'scope, Epoch, Sighting>,
) -> (VecCollection<'scope, Epoch, Sighting>, HeldSightings) {
    let arranged = sightings.arrange_by_key_named("Arrange: Sightings");
    let held = HeldSightings {
        trace: arranged.trace.clone(),
    };
    let mut trace = arranged.trace.clone();
    let kept = arranged
        .stream
        .unary_frontier(Pipeline, "KeepFirstCopy", move |_, _| {
            // The batches received so far cover the epochs before `upper`.
            let mut lower = Antichain::from_elem(Epoch::minimum());
            let mut upper = Antichain::from_elem(Epoch::minimum());
            let mut copies = Vec::new();
            let mut changes = Vec::new();
            move |(input, _frontier), output| {
                lower.clone_from(&upper);
                let mut capabilities = CapabilitySet::new();
                let mut batches = Vec::new();
                input.for_each(|capability, received| {
                    for capability in capability.retain_stamp(0).iter() {
                        capabilities.insert(capability.clone());
                    }
                    for batch in received.drain(..) {
                        // Batches arrive in order.
                        upper.clone_from(batch.upper());
                        batches.extend(batch.inner);
                    }
                });
                if !capabilities.is_empty() {
                    let mut session = output.session(&capabilities);
                    let (mut batch_cursor, batches) = cursor_list(batches);
                    // Compaction stops at what this operator has read, so the history up to
                    // `lower` is always there; reading it as empty would count events twice.
                    let history = trace
                        .batches_through(lower.borrow())
                        .expect("the sightings are compacted only up to the batches read");
                    let (mut trace_cursor, history) = cursor_list(history);
                    while let Some(id) = batch_cursor.get_key(&batches) {
                        // The copies held before these batches, with their counts.
                        copies.clear();
                        trace_cursor.seek_key(&history, id);
                        if trace_cursor.get_key(&history) == Some(id) {
                            held_copies(&mut trace_cursor, &history, |copy, count| {
                                copies.push((copy, count))
                            });
                        }
                        // Then the batches' updates to them, epoch by epoch.
                        changes.clear();
                        while let Some(copy) = batch_cursor.get_val(&batches) {
                            batch_cursor.map_times(&batches, |epoch, diff| {
                                changes.push((*epoch, *copy, *diff))
                            });
                            batch_cursor.step_val(&batches);
                        }
                        changes.sort_unstable_by_key(|(epoch, ..)| *epoch);
                        let mut kept = first_copy(&copies);
                        for epoch_changes in changes.chunk_by(|(a, ..), (b, ..)| a == b) {
                            for &(_, copy, diff) in epoch_changes {
                                match copies.iter_mut().find(|(held, _)| *held == copy) {
                                    Some((_, count)) => *count += diff,
                                    None => copies.push((copy, diff)),
                                }
                            }
                            let now = first_copy(&copies);
                            if now != kept {
                                let epoch = epoch_changes[0].0;
                                kept.into_iter()
                                    .for_each(|old| session.give(((*id, old), epoch, -1)));
                                now.into_iter()
                                    .for_each(|new| session.give(((*id, new), epoch, 1)));
                                kept = now;
                            }
                        }
                        batch_cursor.step_key(&batches);
                    }
                }
                // Lets the arrangement merge and compact what no later batch reads apart.
                trace.advance_upper(&mut upper);
                trace.set_logical_compaction(upper.borrow());
                trace.set_physical_compaction(upper.borrow());
            }
        })
        .as_collection();
    (kept, held)
}

/// A worker's part of the dedupe's arrangement: the sightings whose identities hash to it,
/// whichever worker fed them.
pub struct HeldSightings {
    trace: TraceAgent<ValSpine<IdHash, (CopyPosition, ContentHash), Epoch, isize>>,
}

impl HeldSightings {
    /// Lets the arrangement compact the epochs before `epoch`: this handle reads only
    /// accumulated counts, and holding compaction back would keep every epoch apart.
    pub fn read_from(&mut self, epoch: Epoch) {
        self.trace
            .set_logical_compaction(AntichainRef::new(&[epoch]));
        self.trace
            .set_physical_compaction(AntichainRef::new(&[epoch]));
    }

    /// Calls `retract` with each held sighting of an hour before `horizon` and its count.
    /// Identities start with their hour, so those are the arrangement's first keys.
    /// Differential forgets a sighting only once it is retracted: keeping a list of what was
    /// fed to retract later cost 48 bytes per event, and fresh memory is a replay's dearest
    /// input.
    pub fn retire_before(&mut self, horizon: Millis, mut retract: impl FnMut(Sighting, isize)) {
        let batches = self
            .trace
            .batches_through(Antichain::new().borrow())
            .expect("every batch of the sightings can be read");
        let (mut cursor, batches) = cursor_list(batches);
        while let Some(id) = cursor.get_key(&batches) {
            if hour_of(*id) >= horizon {
                break;
            }
            held_copies(&mut cursor, &batches, |copy, count| {
                if count != 0 {
                    retract((*id, copy), count);
                }
            });
            cursor.step_key(&batches);
        }
    }
}

/// Each copy held under the cursor's current key, with its count summed over all times.
fn held_copies<C>(
    cursor: &mut C,
    storage: &C::Storage,
    mut each: impl FnMut((CopyPosition, ContentHash), isize),
) where
    C: for<'a> Cursor<Val<'a> = &'a (CopyPosition, ContentHash), DiffGat<'a> = &'a isize>,
{
    while let Some(copy) = cursor.get_val(storage) {
        let mut count = 0;
        cursor.map_times(storage, |_, diff| count += *diff);
        each(*copy, count);
        cursor.step_val(storage);
    }
}

/// The smallest copy with a positive count.
fn first_copy(
    copies: &[((CopyPosition, ContentHash), isize)],
) -> Option<(CopyPosition, ContentHash)> {
    copies
        .iter()
        .filter(|(_, count)| *count > 0)
        .map(|(copy, _)| *copy)
        .min()
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

/// The events of a worker's open epochs, by log position. Reads move forward through each
/// partition, so a partition's events sit in a queue indexed from its first offset.
#[derive(Default)]
pub struct EpochBuffer {
    partitions: Vec<PartitionEvents>,
}

struct PartitionEvents {
    partition: u32,
    first: Offset,
    events: VecDeque<Option<LoggedEvent>>,
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
                    events: VecDeque::new(),
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

    /// Drops a partition's events before `offset`: their epochs closed, and what they did
    /// not count were duplicates.
    pub fn drop_before(&mut self, partition: u32, offset: Offset) {
        let Some(slot) = self
            .partitions
            .iter_mut()
            .find(|p| p.partition == partition)
        else {
            return;
        };
        let closed = usize::try_from(offset.saturating_sub(slot.first))
            .unwrap_or(usize::MAX)
            .min(slot.events.len());
        slot.events.drain(..closed);
        slot.first += closed as Offset;
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
                    while let Some((capability, mut updates)) = stash.next_closed(frontier) {
                        let horizon = horizon.load(Ordering::Acquire);
                        let epoch = &mut events.borrow_mut();
                        let partials = fold_epoch(&mut updates, epoch, &views, horizon, &metrics);
                        stash.recycle(updates);
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
    updates: &mut [(Sighting, isize)],
    events: &mut EpochBuffer,
    views: &CompiledViews,
    horizon: Millis,
    metrics: &SpeedMetrics,
) -> Partials {
    // When the dedupe swaps one copy for an earlier one, the -old and +new arrive together;
    // with equal content they cancel, and the count stays. Without retractions there is
    // nothing to pair: the dedupe changes an identity once per epoch, so each is new.
    if updates.iter().any(|(_, diff)| *diff < 0) {
        updates.sort_unstable_by_key(|((id, (_, content)), diff)| (*id, *content, -*diff));
    }
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
    let mut found = FoundFields::new(&views.slots);
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
        let Some(tenant_views) = views.by_tenant.get(event.tenant()) else {
            continue;
        };
        let fields = found.find(&event);
        for view in tenant_views {
            let spec = &views.views[view.number].1;
            if spec.covers(event.event_type()) {
                partials.accumulate(view, spec, &event, fields);
            }
        }
    }
    metrics.events_counted(counted);
    metrics.deduplicated_events_changed(held_change);
    partials.into_partials(views)
}

/// One epoch's partial states by view key. A key is the view's number, the bucket and the
/// dimension values, which an event's lookup reads borrowed from the event: comparing and
/// hashing the tenant and view names per event and view, or building an owned [`ViewKey`],
/// cost more than the rest of the fold.
#[derive(Default)]
struct PartialTable {
    table: hashbrown::HashTable<PartialState>,
}

struct PartialState {
    view: usize,
    bucket: Millis,
    dimensions: Vec<String>,
    state: AggregateState,
}

impl PartialTable {
    /// Adds `event` to its state of `view`; `fields` are where the event's fields are, by
    /// slot.
    fn accumulate(
        &mut self,
        view: &CompiledView,
        spec: &ViewSpec,
        event: &LoggedEvent,
        fields: &[Option<FieldAt>],
    ) {
        let value = |slot: usize| fields[slot].map(|at| event.value_at(at));
        let bucket = spec.bucket_of(event.ts());
        // Read twice rather than collected: a lookup costs less than a vector per event.
        let dimensions = || {
            view.dimensions
                .iter()
                .map(|&slot| dimension_text(value(slot)))
        };
        let hash = partial_hash(view.number, bucket, dimensions());
        let is_key = |partial: &PartialState| {
            partial.view == view.number
                && partial.bucket == bucket
                && partial
                    .dimensions
                    .iter()
                    .map(String::as_str)
                    .eq(dimensions())
        };
        let partial = self
            .table
            .entry(hash, is_key, |partial| {
                partial_hash(partial.view, partial.bucket, partial.dimensions.iter())
            })
            .or_insert_with(|| PartialState {
                view: view.number,
                bucket,
                dimensions: dimensions().map(Cow::into_owned).collect(),
                state: spec.empty_state(),
            })
            .into_mut();
        let measures = view.measures.iter().map(|&slot| value(slot));
        spec.accumulate_values(&mut partial.state, measures);
    }

    fn into_partials(self, views: &CompiledViews) -> Partials {
        self.table
            .into_iter()
            .map(|partial| {
                let (tenant, _, stored_name) = &views.views[partial.view];
                let key = ViewKey {
                    tenant: tenant.clone(),
                    view: stored_name.clone(),
                    bucket: partial.bucket,
                    dimensions: partial.dimensions,
                };
                (key, partial.state)
            })
            .collect()
    }
}

fn partial_hash(
    view_number: usize,
    bucket: Millis,
    dimensions: impl Iterator<Item = impl AsRef<str>>,
) -> u64 {
    let mut hasher = FixedState::with_seed(0).build_hasher();
    (view_number, bucket).hash(&mut hasher);
    for dimension in dimensions {
        dimension.as_ref().hash(&mut hasher);
    }
    hasher.finish()
}

/// Why the speed layer could not keep the view store up to date: what it was doing, and
/// the store's (or the state merge's) error. Cloned to every worker that reports it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what}: {source}")]
pub struct StoreFailure {
    /// What the layer was doing, e.g. "writing 12 view states".
    pub what: String,
    /// The cause.
    pub source: Arc<dyn std::error::Error + Send + Sync>,
}

impl StoreFailure {
    /// `source` met while doing `what`.
    pub fn new(what: String, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreFailure {
            what,
            source: Arc::new(source),
        }
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
    /// The first permanent store error, for the worker loop to report.
    pub failure: Arc<Mutex<Option<StoreFailure>>>,
    /// The transient store error being retried, if any, for `/readyz`.
    pub retrying: Arc<Mutex<Option<String>>>,
    /// Set when the layer stops: a retry gives up then.
    pub stopping: Arc<AtomicBool>,
    /// Which states it may write.
    pub scope: WriteScope,
}

/// The states a worker's dataflow writes: all of them, or, while it builds a changed
/// catalog's views beside the running dataflow, only the `(tenant, stored name)`s the running
/// one does not hold. Its states of the others are partial until the build catches up, and the
/// running dataflow writes them meanwhile. Shared by the worker and its operators.
pub type WriteScope = Rc<RefCell<Option<std::collections::HashSet<(String, String)>>>>;

/// The first wait after a transient store error; it doubles up to [`MAX_STORE_RETRY_WAIT`].
const FIRST_STORE_RETRY_WAIT: Duration = Duration::from_millis(100);
/// The longest wait between two tries of a store call.
const MAX_STORE_RETRY_WAIT: Duration = Duration::from_secs(5);

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
                while let Some((_capability, mut partials)) = stash.next_closed(frontier) {
                    owned.apply(partials.drain(..));
                    stash.recycle(partials);
                }
                owned.sweep_if_the_horizon_moved();
            }
        },
    )
}

/// Updates held per epoch, with a capability for it, until the input frontier passes it.
struct EpochStash<D> {
    pending: BTreeMap<Epoch, (Capability<Epoch>, Vec<D>)>,
    /// An emptied vector for the next epoch's updates: a new one every epoch faulted in fresh
    /// pages as it grew, which a replay paid for.
    spare: Vec<D>,
}

impl<D> Default for EpochStash<D> {
    fn default() -> Self {
        EpochStash {
            pending: BTreeMap::new(),
            spare: Vec::new(),
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
                Some(capability) => slot.insert((capability, std::mem::take(&mut self.spare))),
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

    /// Takes back a closed epoch's vector, once its updates are used, for a later epoch.
    fn recycle(&mut self, mut updates: Vec<D>) {
        updates.clear();
        if updates.capacity() > self.spare.capacity() {
            self.spare = updates;
        }
    }
}

struct OwnedStates {
    writer: StateWriter,
    states: FastMap<ViewKey, AggregateState>,
    swept_below: Millis,
}

impl OwnedStates {
    fn apply(&mut self, partials: impl ExactSizeIterator<Item = (ViewKey, AggregateState)>) {
        self.sweep_if_the_horizon_moved();
        let before = self.states.len();
        let mut changed = Vec::with_capacity(partials.len());
        for (key, partial) in partials {
            match self.states.get_mut(&key) {
                Some(state) => {
                    if let Err(err) = state.merge(&partial) {
                        self.fail(StoreFailure::new(format!("merging {key:?}"), err));
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
        let scope = self.writer.scope.borrow();
        let rows: Vec<(ViewKey, AggregateState)> = changed
            .into_iter()
            .filter(|key| {
                scope
                    .as_ref()
                    .is_none_or(|only| only.contains(&(key.tenant.clone(), key.view.clone())))
            })
            .map(|key| {
                let state = self.states[&key].clone();
                (key, state)
            })
            .collect();
        drop(scope);
        if !rows.is_empty() {
            let what = || format!("writing {} view states", rows.len());
            self.with_retries(what, || self.writer.store.upsert(&rows));
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
            for (tenant, view) in self.writer.views.stored_names() {
                let what = || format!("deleting {tenant}/{view} below the horizon");
                self.with_retries(what, || {
                    self.writer.store.delete_before(tenant, view, horizon)
                });
            }
        }
        self.swept_below = horizon;
    }

    /// Runs a store call until it succeeds. A transient error (an unreachable or overloaded
    /// ScyllaDB) is retried, 100 ms doubling to 5 s apart, while `/readyz` says degraded:
    /// the epoch stays open meanwhile, so nothing after it is reported written, and the views
    /// catch up once the store is back. A permanent error, or a stop, ends the layer.
    fn with_retries<T>(
        &self,
        what: impl Fn() -> String,
        mut call: impl FnMut() -> Result<T, ViewStoreError>,
    ) {
        let mut wait = FIRST_STORE_RETRY_WAIT;
        loop {
            match call() {
                Ok(_) => {
                    self.set_retrying(None);
                    return;
                }
                Err(err) if err.is_transient() && !self.writer.stopping.load(Ordering::Acquire) => {
                    let message = format!("{}: {err}; retrying in {wait:?}", what());
                    tracing::warn!(%message, "speed layer waits for the view store");
                    self.set_retrying(Some(message));
                    std::thread::sleep(wait);
                    wait = wait.saturating_mul(2).min(MAX_STORE_RETRY_WAIT);
                }
                Err(err) => {
                    self.set_retrying(None);
                    self.fail(StoreFailure::new(what(), err));
                    return;
                }
            }
        }
    }

    fn set_retrying(&self, message: Option<String>) {
        *self
            .writer
            .retrying
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = message;
    }

    fn fail(&self, failure: StoreFailure) {
        tracing::error!(%failure, "speed layer could not update the view store");
        self.writer
            .failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get_or_insert(failure);
    }
}

/// Routes a view key to the worker that owns it: the same hash on every worker.
fn key_hash(key: &ViewKey) -> u64 {
    hash_with(0, key)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use differential_dataflow::input::Input;
    use timely::dataflow::operators::Probe;

    use super::*;

    /// What one epoch feeds [`deduplicate`].
    enum Step {
        /// Sighting changes.
        Feed(Vec<(Sighting, isize)>),
        /// The retractions [`HeldSightings::retire_before`] makes.
        RetireBefore(Millis),
    }

    /// Runs one step per epoch through [`deduplicate`] and returns what it output at each
    /// epoch, consolidated and sorted.
    fn kept_per_epoch(epochs: Vec<Step>) -> Vec<Vec<(Sighting, isize)>> {
        timely::execute_directly(move |worker| {
            let output = Rc::new(RefCell::new(BTreeMap::<Epoch, Vec<_>>::new()));
            let sink = output.clone();
            let (mut input, probe, mut held) = worker.dataflow::<Epoch, _, _>(|scope| {
                let (input, sightings) = scope.new_collection();
                let (kept, held) = deduplicate(sightings);
                let (probe, _) = kept
                    .consolidate()
                    .inspect(move |&(sighting, epoch, diff)| {
                        sink.borrow_mut()
                            .entry(epoch)
                            .or_default()
                            .push((sighting, diff))
                    })
                    .inner
                    .probe();
                (input, probe, held)
            });
            let count = epochs.len();
            for step in epochs {
                match step {
                    Step::Feed(changes) => {
                        for (sighting, diff) in changes {
                            input.update(sighting, diff);
                        }
                    }
                    Step::RetireBefore(horizon) => {
                        held.retire_before(horizon, |sighting, count| {
                            input.update(sighting, -count)
                        });
                    }
                }
                let epoch = *input.time();
                input.advance_to(epoch + 1);
                input.flush();
                worker.step_while(|| probe.less_than(input.time()));
                held.read_from(*input.time());
            }
            let mut output = output.borrow_mut();
            (0..count as Epoch)
                .map(|epoch| {
                    let mut changes = output.remove(&epoch).unwrap_or_default();
                    changes.sort();
                    changes
                })
                .collect()
        })
    }

    fn copy(event: u128, received_at: Millis, offset: Offset) -> Sighting {
        copy_in_hour(1, event, received_at, offset)
    }

    fn copy_in_hour(hour: u128, event: u128, received_at: Millis, offset: Offset) -> Sighting {
        let id = (hour << 96) | event;
        (id, ((received_at, 0, offset), 7))
    }

    #[test]
    fn the_dedupe_keeps_the_smallest_copy_held_and_moves_when_copies_come_and_go() {
        let (a0, a1, a2, a3) = (copy(1, 1, 0), copy(1, 5, 1), copy(1, 10, 2), copy(1, 20, 3));
        let b = copy(2, 30, 4);
        let kept = kept_per_epoch(vec![
            // Two copies at once: the smaller counts.
            Step::Feed(vec![(a2, 1), (a1, 1)]),
            // A later copy changes nothing; a new event counts.
            Step::Feed(vec![(a3, 1), (b, 1)]),
            // An earlier copy read later replaces the kept one.
            Step::Feed(vec![(a0, 1)]),
            // Retracting the kept copy falls back to the next one held.
            Step::Feed(vec![(a0, -1)]),
            // Retracting every copy retracts the kept one.
            Step::Feed(vec![(a1, -1), (a2, -1), (a3, -1), (b, -1)]),
        ]);
        assert_eq!(
            kept,
            [
                vec![(a1, 1)],
                vec![(b, 1)],
                vec![(a0, 1), (a1, -1)],
                vec![(a0, -1), (a1, 1)],
                vec![(a1, -1), (b, -1)],
            ]
        );
    }

    #[test]
    fn retiring_an_hour_forgets_its_copies_and_only_its_copies() {
        let (early, early_resent) = (copy_in_hour(1, 1, 10, 0), copy_in_hour(1, 1, 20, 1));
        let second_hour = copy_in_hour(2, 2, 30, 2);
        let third_hour = copy_in_hour(3, 3, 40, 3);
        let kept = kept_per_epoch(vec![
            Step::Feed(vec![(early, 1), (second_hour, 1), (third_hour, 1)]),
            Step::Feed(vec![(early_resent, 1)]),
            // Hours 1 and 2 end before hour 3 starts.
            Step::RetireBefore(3 * HOUR_MS),
            // Nothing of them is held: retiring again retracts nothing.
            Step::RetireBefore(3 * HOUR_MS),
            // A resend of a forgotten event is new to the dedupe.
            Step::Feed(vec![(early_resent, 1)]),
        ]);
        assert_eq!(
            kept,
            [
                vec![(early, 1), (second_hour, 1), (third_hour, 1)],
                vec![],
                vec![(early, -1), (second_hour, -1)],
                vec![],
                vec![(early_resent, 1)],
            ]
        );
    }
}
