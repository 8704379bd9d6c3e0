//! One timely worker of the speed layer: it reads its share of the log's partitions an
//! epoch at a time, feeds the dataflow, and once the view store reflects an epoch, publishes
//! the offsets it reached, records its progress and reports metrics.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use differential_dataflow::input::Input;
use serde::Serialize;
use tally_connectors::log::{EventLog, LogError, Offset};
use tally_model::time::now_millis;
use tally_model::{EventFields, Millis};
use timely::dataflow::operators::Probe;
use timely::worker::Worker;

use crate::dataflow::{self, Epoch, EpochEvents, StateWriter};
use crate::record::LoggedEvent;
use crate::{Shared, SpeedError, SpeedLayer, trailing_horizon};

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

pub(crate) fn run_worker(worker: &mut Worker, shared: &Shared) -> Result<(), SpeedError> {
    let (index, peers) = (worker.index(), worker.peers());
    let layer = &shared.layer;
    let partitions: Vec<u32> = (0..layer.log.partitions())
        .filter(|p| *p as usize % peers == index)
        .collect();
    let writer = StateWriter {
        worker: index,
        store: layer.store.clone(),
        views: shared.views.clone(),
        horizon: shared.horizon.clone(),
        metrics: layer.metrics.clone(),
        failure: shared.failure.clone(),
        retrying: shared.retrying.clone(),
        stopping: shared.stop.clone(),
    };
    let (views, metrics) = (shared.views.clone(), layer.metrics.clone());
    let epoch_events: EpochEvents = Default::default();
    let (mut input, probe, mut held) = worker.dataflow::<Epoch, _, _>(|scope| {
        let (input, sightings) = scope.new_collection();
        let (kept, held) = dataflow::deduplicate(sightings);
        let horizon = shared.horizon.clone();
        let partials =
            dataflow::partial_states(kept, epoch_events.clone(), views, horizon, metrics);
        let (probe, _written) = dataflow::write_view_states(partials, writer).probe();
        (input, probe, held)
    });
    let stats = layer.log.stats()?;
    // An event time is at most `max_event_lead` after its receipt, so records received
    // earlier than that before the horizon cannot hold an event the views keep.
    let lead = Millis::try_from(layer.max_event_lead.as_millis()).unwrap_or(Millis::MAX);
    let received_floor = shared
        .horizon
        .load(Ordering::Acquire)
        .saturating_sub(lead)
        .saturating_sub(REPLAY_MARGIN_MS);
    let mut next = Vec::with_capacity(partitions.len());
    for &partition in &partitions {
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
        next.push(start);
    }
    let epoch_length = Duration::from_millis(layer.config.epoch_ms);
    let max_records = layer.config.max_records_per_epoch;
    let mut closer = EpochCloser {
        layer,
        shared,
        worker: index,
        partitions: &partitions,
        last_recorded: None,
    };
    let mut open: VecDeque<OpenEpoch> = VecDeque::new();
    let mut retired_below = Millis::MIN;
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
            // The sightings of open epochs are not in the arrangement yet.
            worker.step_or_park_while(None, || probe.less_than(input.time()));
            for closed in open.drain(..) {
                closer.close(closed, &epoch_events, &mut held)?;
            }
            held.retire_before(horizon, |sighting, count| input.update(sighting, -count));
            retired_below = horizon;
        }
        let mut read = 0u64;
        let mut oldest_received: Option<Millis> = None;
        let mut caught_up = true;
        for (slot, &partition) in partitions.iter().enumerate() {
            let entries = match layer.log.read(partition, next[slot], max_records) {
                Err(LogError::Unavailable(reason)) => {
                    tracing::warn!(partition, %reason, "the event log is unavailable; retrying");
                    caught_up = false;
                    continue;
                }
                read => read?,
            };
            caught_up &= entries.len() < max_records;
            for entry in entries {
                next[slot] = entry.offset + 1;
                let event = match LoggedEvent::parse(entry.payload, shared.views.field_slots()) {
                    Ok(event) => event,
                    Err(err) => {
                        layer.metrics.undecodable();
                        tracing::warn!(partition, offset = entry.offset, error = %err, "skipping a log record that is not an event");
                        continue;
                    }
                };
                if event.ts() < horizon {
                    continue;
                }
                read += 1;
                let received_at = event.received_at();
                oldest_received =
                    Some(oldest_received.map_or(received_at, |oldest| oldest.min(received_at)));
                let sighting = dataflow::sighting(&event, partition, entry.offset);
                input.insert(sighting);
                epoch_events
                    .borrow_mut()
                    .insert(partition, entry.offset, event);
            }
        }
        layer.metrics.events_in(read);
        let epoch = *input.time();
        input.advance_to(epoch + 1);
        input.flush();
        open.push_back(OpenEpoch {
            epoch,
            horizon,
            next: next.clone(),
            read,
            oldest_received,
            caught_up,
        });
        // While catching up, a worker reads its next epoch while this one is open and waits
        // only for the one before: waiting for each epoch to close had every worker wait for
        // the slowest at every epoch. Caught up, it waits for all, so views
        // are fresh when it next reads. It parks while it waits (the other workers wake it)
        // rather than spinning.
        let closed_before = if caught_up { epoch + 1 } else { epoch };
        worker.step_or_park_while(None, || probe.less_than(&closed_before));
        while let Some(closed) = open.pop_front_if(|open| !probe.less_than(&(open.epoch + 1))) {
            closer.close(closed, &epoch_events, &mut held)?;
        }
        if read == 0 {
            std::thread::sleep(epoch_length.saturating_sub(started.elapsed()));
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
    fn close(
        &mut self,
        closed: OpenEpoch,
        events: &EpochEvents,
        held: &mut dataflow::HeldSightings,
    ) -> Result<(), SpeedError> {
        let (layer, partitions) = (self.layer, self.partitions);
        held.read_from(closed.epoch + 1);
        for (&partition, &next) in partitions.iter().zip(&closed.next) {
            // What the epoch did not count were duplicates.
            events.borrow_mut().drop_before(partition, next);
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
