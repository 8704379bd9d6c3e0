//! One timely worker of the speed layer: it reads its share of the log's partitions an
//! epoch at a time, feeds the dataflow, and once the view store reflects an epoch, publishes
//! the offsets it reached, records its progress and reports metrics.

use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use differential_dataflow::input::{Input, InputSession};
use serde::Serialize;
use tally_connectors::log::{EventLog, LogEntry, LogError, Offset};
use tally_connectors::view_store::live::{self, LiveView, LiveViews};
use tally_model::time::now_millis;
use tally_model::{EventFields, Millis};
use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::Probe;
use timely::worker::Worker;

use crate::control::{Control, ControlChannel, Round};
use crate::dataflow::{self, CompiledViews, Epoch, EpochEvents, StateWriter, WriteScope};
use crate::record::LoggedEvent;
use crate::telemetry::SpeedMetrics;
use crate::{Shared, SpeedError, SpeedLayer, live_views_of, trailing_horizon};

/// How often, at most, a worker records its progress in the view store while records arrive.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Receive times are stamped before the spool write, so neighbouring records can be out of
/// order by a little; replay starts this much earlier to cover it.
const REPLAY_MARGIN_MS: Millis = 60_000;

/// The first offset in `offsets` whose record was received at or after `floor`, by binary
/// search: receive times grow with offsets (up to [`REPLAY_MARGIN_MS`]).
pub(crate) fn replay_start(
    log: &dyn EventLog,
    partition: u32,
    offsets: std::ops::Range<Offset>,
    floor: Millis,
) -> Result<Offset, SpeedError> {
    #[derive(serde::Deserialize)]
    struct Received {
        received_at: Millis,
    }
    let (mut low, mut high) = (offsets.start, offsets.end);
    while low < high {
        let middle = low + (high - low) / 2;
        let received = log
            .read(partition, middle, 1)?
            .first()
            .and_then(|entry| serde_json::from_slice::<Received>(&entry.payload).ok());
        match received {
            Some(Received { received_at }) if received_at < floor => low = middle + 1,
            // Undecodable records move the start earlier, never later.
            _ => high = middle,
        }
    }
    Ok(low)
}

/// What a worker's states reflect, as recorded in the view store.
#[derive(Serialize)]
struct WorkerProgress {
    epoch: Epoch,
    horizon: Millis,
    /// Partition → next offset to read.
    offsets: Vec<(u32, Offset)>,
    recorded_at: Millis,
}

/// One dataflow of a worker, with what feeds it: the running one, or one that builds a
/// changed catalog's views beside it.
struct Pipeline {
    /// The catalog generation its views come from.
    generation: u64,
    views: Arc<CompiledViews>,
    input: InputSession<Epoch, dataflow::Sighting, isize>,
    probe: ProbeHandle<Epoch>,
    held: dataflow::HeldSightings,
    events: EpochEvents,
    scope: WriteScope,
    /// The partitions the worker reads.
    partitions: Vec<u32>,
    /// Per partition the worker reads: the next offset to feed.
    next: Vec<Offset>,
    /// Epochs fed, until the view store reflects them.
    open: VecDeque<OpenEpoch>,
}

impl Pipeline {
    /// Builds the dataflow for `views` on this worker; `scope` says which states it writes.
    fn build(
        worker: &mut Worker,
        shared: &Shared,
        (generation, views): (u64, Arc<CompiledViews>),
        scope: WriteScope,
    ) -> Pipeline {
        let layer = &shared.layer;
        let writer = StateWriter {
            worker: worker.index(),
            store: layer.store.clone(),
            views: views.clone(),
            horizon: shared.horizon.clone(),
            metrics: layer.metrics.clone(),
            failure: shared.failure.clone(),
            retrying: shared.retrying.clone(),
            stopping: shared.stop.clone(),
            scope: scope.clone(),
        };
        let events: EpochEvents = Default::default();
        let (input, probe, held) = worker.dataflow::<Epoch, _, _>(|scope| {
            let (input, sightings) = scope.new_collection();
            let (kept, held) = dataflow::deduplicate(sightings);
            let horizon = shared.horizon.clone();
            let metrics = layer.metrics.clone();
            let partials =
                dataflow::partial_states(kept, events.clone(), views.clone(), horizon, metrics);
            let (probe, _written) = dataflow::write_view_states(partials, writer).probe();
            (input, probe, held)
        });
        Pipeline {
            generation,
            views,
            input,
            probe,
            held,
            events,
            scope,
            partitions: Vec::new(),
            next: Vec::new(),
            open: VecDeque::new(),
        }
    }

    /// Feeds one partition's records; returns the events fed and the earliest receive time
    /// among them. `report` says whether this dataflow reports undecodable records.
    fn feed(
        &mut self,
        slot: usize,
        partition: u32,
        entries: impl IntoIterator<Item = (Offset, Vec<u8>)>,
        horizon: Millis,
        metrics: Option<&SpeedMetrics>,
    ) -> (u64, Option<Millis>) {
        let (mut read, mut oldest) = (0u64, None::<Millis>);
        for (offset, payload) in entries {
            self.next[slot] = offset + 1;
            let event = match LoggedEvent::parse(payload, self.views.field_slots()) {
                Ok(event) => event,
                Err(err) => {
                    if let Some(metrics) = metrics {
                        metrics.undecodable();
                        tracing::warn!(partition, offset, error = %err, "skipping a log record that is not an event");
                    }
                    continue;
                }
            };
            if event.ts() < horizon {
                continue;
            }
            read += 1;
            let received_at = event.received_at();
            oldest = Some(oldest.map_or(received_at, |o| o.min(received_at)));
            self.input
                .insert(dataflow::sighting(&event, partition, offset));
            self.events.borrow_mut().insert(partition, offset, event);
        }
        (read, oldest)
    }

    /// Retracts the sightings of hours before `horizon`: they no longer count.
    fn retire_before(&mut self, horizon: Millis) {
        let Pipeline { held, input, .. } = self;
        held.retire_before(horizon, |sighting, count| input.update(sighting, -count));
    }

    /// Ends the current epoch; returns it.
    fn advance(&mut self) -> Epoch {
        let epoch = *self.input.time();
        self.input.advance_to(epoch + 1);
        self.input.flush();
        epoch
    }

    /// Whether the epochs before `epoch` are not all reflected yet.
    fn pending_before(&self, epoch: Epoch) -> bool {
        self.probe.less_than(&epoch)
    }

    /// The open epochs the store now reflects, oldest first; each one's events and
    /// sightings are released.
    fn take_closed(&mut self) -> Vec<OpenEpoch> {
        let mut closed = Vec::new();
        while let Some(epoch) = self
            .open
            .pop_front_if(|open| !self.probe.less_than(&(open.epoch + 1)))
        {
            self.held.read_from(epoch.epoch + 1);
            for (&partition, &next) in self.partitions.iter().zip(&epoch.next) {
                // What the epoch did not count were duplicates.
                self.events.borrow_mut().drop_before(partition, next);
            }
            closed.push(epoch);
        }
        closed
    }
}

/// The replay start of each of `partitions` for `horizon`: the first record that can hold
/// an event at or after it.
fn replay_starts(
    layer: &SpeedLayer,
    partitions: &[u32],
    horizon: Millis,
) -> Result<Vec<Offset>, SpeedError> {
    let stats = layer.log.stats()?;
    // An event time is at most `max_event_lead` after its receipt, so records received
    // earlier than that before the horizon cannot hold an event the views keep.
    let lead = Millis::try_from(layer.max_event_lead.as_millis()).unwrap_or(Millis::MAX);
    let received_floor = horizon
        .saturating_sub(lead)
        .saturating_sub(REPLAY_MARGIN_MS);
    let mut starts = Vec::with_capacity(partitions.len());
    for &partition in partitions {
        let kept = &stats.partitions[partition as usize];
        let start = match layer.log.offset_for_time(partition, received_floor)? {
            Some(indexed) => indexed.clamp(kept.first_offset, kept.next_offset),
            None => replay_start(
                layer.log.as_ref(),
                partition,
                kept.first_offset..kept.next_offset,
                received_floor,
            )?,
        };
        starts.push(start);
    }
    Ok(starts)
}

/// Worker 0's part in a view change: it follows the catalog, asks for a build when the
/// views change, and names the round to switch in once every worker has caught up.
struct ChangeLead {
    /// The catalog generation last looked at.
    seen: u64,
    /// The generation being built, and the workers whose build has caught up.
    building: Option<(u64, Vec<usize>)>,
    /// The stored names the last switch retired, and when they may be deleted: serving
    /// replicas may read them until they see the new record.
    retiring: Option<(Instant, Vec<(String, String)>)>,
}

/// How long the states of a spec replaced at a switch stay, for queries already reading them.
const RETIRE_AFTER: Duration = Duration::from_secs(60);

impl ChangeLead {
    /// Asks for a build when the catalog's views differ from the running ones.
    fn follow_catalog(
        &mut self,
        shared: &Shared,
        running: &Pipeline,
        control: &mut ControlChannel,
    ) {
        if self.building.is_some() {
            return;
        }
        let (generation, catalog) = shared.layer.catalog.current_with_generation();
        if generation == self.seen {
            return;
        }
        self.seen = generation;
        let views = live_views_of(&catalog);
        if views == running.views.live_views() {
            return;
        }
        tracing::info!(
            generation,
            "the catalog's views changed: building their real-time states beside the running ones"
        );
        let views = serde_json::to_string(&views).expect("view specs serialize");
        control.send(Control::Build { generation, views });
        self.building = Some((generation, Vec::new()));
    }

    /// Notes a worker's caught-up build; once all `peers` have, sends the switch for
    /// `round + 2`.
    fn caught_up(
        &mut self,
        (generation, worker): (u64, usize),
        peers: usize,
        round: Round,
        control: &mut ControlChannel,
    ) {
        let Some((building, caught)) = &mut self.building else {
            return;
        };
        if *building != generation || caught.contains(&worker) {
            return;
        }
        caught.push(worker);
        if caught.len() == peers {
            control.send(Control::Switch {
                generation,
                round: round + 2,
            });
        }
    }

    /// After a switch: records the new views as live and retires the old ones' states later.
    fn switched(&mut self, layer: &SpeedLayer, before: &CompiledViews, after: &CompiledViews) {
        self.building = None;
        let live = LiveViews {
            generation: self.seen,
            views: after.live_views(),
        };
        let current: Vec<(String, String)> = live.stored_names();
        if let Err(err) = live::write(layer.store.as_ref(), &live) {
            tracing::error!(error = %err, "could not record the views the real-time states answer for");
        }
        let retired: Vec<(String, String)> = before
            .stored_names()
            .map(|(tenant, view)| (tenant.to_owned(), view.to_owned()))
            .filter(|named| !current.contains(named))
            .collect();
        tracing::info!(
            generation = live.generation,
            retired = retired.len(),
            "the views of the changed catalog are live"
        );
        self.retiring = Some((Instant::now() + RETIRE_AFTER, retired));
    }

    /// Deletes the states retired at the last switch, once their grace is over.
    fn retire_when_due(&mut self, layer: &SpeedLayer) {
        let Some((_, names)) = self.retiring.take_if(|(due, _)| Instant::now() >= *due) else {
            return;
        };
        for (tenant, view) in names {
            match layer.store.delete_before(&tenant, &view, Millis::MAX) {
                Ok(deleted) => {
                    tracing::info!(%tenant, %view, deleted, "retired the real-time states of an earlier view spec")
                }
                Err(err) => {
                    tracing::warn!(%tenant, %view, error = %err, "could not retire the states of an earlier view spec; the next start retires them")
                }
            }
        }
    }
}

pub(crate) fn run_worker(worker: &mut Worker, shared: &Shared) -> Result<(), SpeedError> {
    let (index, peers) = (worker.index(), worker.peers());
    let layer = &shared.layer;
    let partitions: Vec<u32> = (0..layer.log.partitions())
        .filter(|p| *p as usize % peers == index)
        .collect();
    // Built first, so every worker numbers its dataflows alike.
    let mut control = ControlChannel::new(worker);
    let mut running = Pipeline::build(
        worker,
        shared,
        (shared.generation, shared.views.clone()),
        WriteScope::default(),
    );
    running.partitions = partitions.clone();
    running.next = replay_starts(layer, &partitions, shared.horizon.load(Ordering::Acquire))?;
    let mut building: Option<Pipeline> = None;
    let mut caught_up_sent = false;
    let mut lead = (index == 0).then_some(ChangeLead {
        seen: shared.generation,
        building: None,
        retiring: None,
    });
    let mut switch_at: Option<Round> = None;
    let epoch_length = Duration::from_millis(layer.config.epoch_ms);
    let max_records = layer.config.max_records_per_epoch;
    let mut closer = EpochCloser {
        layer,
        shared,
        worker: index,
        partitions: &partitions,
        last_recorded: None,
    };
    let mut retired_below = Millis::MIN;
    let mut round: Round = 0;
    while !shared.stop.load(Ordering::Acquire) {
        if let Some(failure) = shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Err(SpeedError::Store(failure));
        }
        let started = Instant::now();
        // Every message sent before the last round is here: a switch is never missed.
        if let Some(before_last) = round.checked_sub(2) {
            worker.step_or_park_while(None, || control.may_be_sending(before_last));
        }
        for message in control.take() {
            match message {
                Control::Build { generation, views } => {
                    let views: Vec<LiveView> =
                        serde_json::from_str(&views).expect("worker 0 sends view specs");
                    let views = Arc::new(CompiledViews::new(&views));
                    let running_names: HashSet<(&str, &str)> =
                        running.views.stored_names().collect();
                    let new_names = views
                        .stored_names()
                        .filter(|named| !running_names.contains(named))
                        .map(|(tenant, view)| (tenant.to_owned(), view.to_owned()))
                        .collect();
                    let scope = Rc::new(RefCell::new(Some(new_names)));
                    let mut built = Pipeline::build(worker, shared, (generation, views), scope);
                    built.partitions = partitions.clone();
                    built.next =
                        replay_starts(layer, &partitions, shared.horizon.load(Ordering::Acquire))?;
                    building = Some(built);
                    caught_up_sent = false;
                    layer.metrics.building(true);
                }
                Control::CaughtUp { generation, worker } => {
                    if let Some(lead) = &mut lead {
                        lead.caught_up((generation, worker), peers, round, &mut control);
                    }
                }
                Control::Switch { round: at, .. } => switch_at = Some(at),
            }
        }
        if switch_at == Some(round)
            && let Some(mut built) = building.take()
        {
            // Both dataflows hold the same records: once the store reflects every epoch of
            // both, the built one takes over between the same two epochs on every worker.
            let fed = *running.input.time();
            worker.step_or_park_while(None, || running.pending_before(fed));
            for closed in running.take_closed() {
                closer.close(closed)?;
            }
            let fed = *built.input.time();
            worker.step_or_park_while(None, || built.pending_before(fed));
            built.take_closed();
            built.scope.borrow_mut().take();
            let before = std::mem::replace(&mut running, built);
            if let Some(lead) = &mut lead {
                lead.switched(layer, &before.views, &running.views);
            }
            layer.metrics.building(false);
            switch_at = None;
        }
        // The horizon only moves forward: trailing the clock until the batch layer publishes
        // one, then as published.
        let horizon = match shared.trailing.load(Ordering::Acquire) {
            true => {
                let trailing = trailing_horizon(&layer.config);
                shared
                    .horizon
                    .fetch_max(trailing, Ordering::AcqRel)
                    .max(trailing)
            }
            false => shared.horizon.load(Ordering::Acquire),
        };
        if horizon > retired_below {
            let fed = *running.input.time();
            worker.step_or_park_while(None, || running.pending_before(fed));
            for closed in running.take_closed() {
                closer.close(closed)?;
            }
            running.retire_before(horizon);
            if let Some(built) = &mut building {
                let fed = *built.input.time();
                worker.step_or_park_while(None, || built.pending_before(fed));
                built.take_closed();
                built.retire_before(horizon);
            }
            retired_below = horizon;
        }
        let mut read = 0u64;
        let mut oldest_received: Option<Millis> = None;
        let mut caught_up = true;
        for (slot, &partition) in partitions.iter().enumerate() {
            let from = running.next[slot];
            let entries = match layer.log.read(partition, from, max_records) {
                Err(LogError::Unavailable(reason)) => {
                    tracing::warn!(partition, %reason, "the event log is unavailable; retrying");
                    caught_up = false;
                    continue;
                }
                read => read?,
            };
            caught_up &= entries.len() < max_records;
            if let Some(built) = &mut building {
                feed_build(built, (slot, partition), from, &entries, (layer, horizon))?;
            }
            let (count, oldest) = running.feed(
                slot,
                partition,
                entries
                    .into_iter()
                    .map(|entry| (entry.offset, entry.payload)),
                horizon,
                Some(&layer.metrics),
            );
            read += count;
            oldest_received = match (oldest_received, oldest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        layer.metrics.events_in(read);
        if let Some(built) = &mut building
            && !caught_up_sent
            && built.next == running.next
        {
            control.send(Control::CaughtUp {
                generation: built.generation,
                worker: index,
            });
            caught_up_sent = true;
        }
        if let Some(lead) = &mut lead {
            lead.follow_catalog(shared, &running, &mut control);
            lead.retire_when_due(layer);
        }
        round += 1;
        control.advance_to(round);
        let epoch = running.advance();
        running.open.push_back(OpenEpoch {
            epoch,
            horizon,
            next: running.next.clone(),
            read,
            oldest_received,
            caught_up,
        });
        if let Some(built) = &mut building {
            let epoch = built.advance();
            built.open.push_back(OpenEpoch {
                epoch,
                horizon,
                next: built.next.clone(),
                read: 0,
                oldest_received: None,
                caught_up: false,
            });
        }
        // While catching up, a worker reads its next epoch while this one is open and waits
        // only for the one before: waiting for each epoch to close had every worker wait for
        // the slowest at every epoch. Caught up, it waits for all, so views
        // are fresh when it next reads. It parks while it waits (the other workers wake it)
        // rather than spinning. A build is waited for one epoch behind.
        let closed_before = if caught_up { epoch + 1 } else { epoch };
        let build_before = building.as_ref().map(|built| *built.input.time() - 1);
        worker.step_or_park_while(None, || {
            running.pending_before(closed_before)
                || building
                    .as_ref()
                    .zip(build_before)
                    .is_some_and(|(built, before)| built.pending_before(before))
        });
        for closed in running.take_closed() {
            closer.close(closed)?;
        }
        if let Some(built) = &mut building {
            built.take_closed();
        }
        if read == 0 {
            std::thread::sleep(epoch_length.saturating_sub(started.elapsed()));
        }
    }
    Ok(())
}

/// Feeds a build one partition's records: the running dataflow's own `entries` (read from
/// `from`) once the build has reached `from`, else the next records it lacks before `from`.
fn feed_build(
    built: &mut Pipeline,
    (slot, partition): (usize, u32),
    from: Offset,
    entries: &[LogEntry],
    (layer, horizon): (&SpeedLayer, Millis),
) -> Result<(), SpeedError> {
    let copies = |entries: &[LogEntry]| {
        entries
            .iter()
            .map(|entry| (entry.offset, entry.payload.clone()))
            .collect::<Vec<_>>()
    };
    if built.next[slot] < from {
        let lacking = usize::try_from(from - built.next[slot]).unwrap_or(usize::MAX);
        let max = lacking.min(layer.config.max_records_per_epoch);
        let earlier = match layer.log.read(partition, built.next[slot], max) {
            Err(LogError::Unavailable(_)) => return Ok(()),
            read => read?,
        };
        let before: Vec<&LogEntry> = earlier.iter().filter(|e| e.offset < from).collect();
        let reached = before.len() < max || before.last().is_some_and(|e| e.offset + 1 >= from);
        built.feed(
            slot,
            partition,
            before.into_iter().map(|e| (e.offset, e.payload.clone())),
            horizon,
            None,
        );
        if !reached {
            return Ok(());
        }
        // Nothing more before `from`: the log holds no record between.
        built.next[slot] = from;
    }
    if built.next[slot] == from {
        built.feed(slot, partition, copies(entries), horizon, None);
        if entries.is_empty() {
            built.next[slot] = from;
        }
    }
    Ok(())
}

/// An epoch fed to the dataflow, until the view store reflects it.
struct OpenEpoch {
    epoch: Epoch,
    horizon: Millis,
    /// Per partition the worker reads: the next offset after the epoch's records.
    next: Vec<Offset>,
    /// Events it fed.
    read: u64,
    /// The earliest receive time among them.
    oldest_received: Option<Millis>,
    /// Whether the worker had read all the log held when the epoch started.
    caught_up: bool,
}

/// What a worker does as each epoch closes: drops its events, publishes what the store
/// reflects, records progress and reports metrics.
struct EpochCloser<'w> {
    layer: &'w SpeedLayer,
    shared: &'w Shared,
    worker: usize,
    partitions: &'w [u32],
    last_recorded: Option<(Instant, (Millis, Vec<Offset>))>,
}

impl EpochCloser<'_> {
    fn close(&mut self, closed: OpenEpoch) -> Result<(), SpeedError> {
        let (layer, partitions) = (self.layer, self.partitions);
        for (&partition, &next) in partitions.iter().zip(&closed.next) {
            self.shared.reflected[partition as usize].store(next, Ordering::Release);
        }
        // What the store reflects only grows, so an older record stays true: recorded when it
        // changed, at most once per `PROGRESS_EVERY` while records arrive and at once when they
        // stop: a durable commit per epoch slowed a replay measurably.
        let reflects = (closed.horizon, closed.next);
        let recorded = self.last_recorded.as_ref();
        let changed = recorded.is_none_or(|(_, held)| *held != reflects);
        let due = recorded.is_none_or(|(at, _)| at.elapsed() >= PROGRESS_EVERY) || closed.read == 0;
        if changed && due {
            let (horizon, next) = &reflects;
            record_progress(layer, self.worker, closed.epoch, *horizon, partitions, next);
            self.last_recorded = Some((Instant::now(), reflects.clone()));
        }
        let ends = match layer.log.stats() {
            Err(LogError::Unavailable(_)) => None,
            stats => Some(stats?),
        };
        let lag: Vec<(u32, u64)> = ends
            .iter()
            .flat_map(|ends| {
                partitions.iter().zip(&reflects.1).map(|(p, n)| {
                    let end = ends.partitions[*p as usize].next_offset;
                    (*p, end.saturating_sub(*n))
                })
            })
            .collect();
        let freshness = closed
            .oldest_received
            .filter(|_| closed.caught_up)
            .map(|oldest| Duration::from_millis((now_millis() - oldest).max(0) as u64));
        layer.metrics.epoch_closed(&lag, freshness);
        Ok(())
    }
}

fn record_progress(
    layer: &SpeedLayer,
    worker: usize,
    epoch: Epoch,
    horizon: Millis,
    partitions: &[u32],
    next: &[Offset],
) {
    let progress = WorkerProgress {
        epoch,
        horizon,
        offsets: partitions
            .iter()
            .copied()
            .zip(next.iter().copied())
            .collect(),
        recorded_at: now_millis(),
    };
    let bytes = serde_json::to_vec(&progress).expect("progress serializes");
    if let Err(err) = layer
        .store
        .record_progress(&format!("speed-worker-{worker}"), &bytes)
    {
        tracing::warn!(error = %err, "could not record speed layer progress");
    }
}
