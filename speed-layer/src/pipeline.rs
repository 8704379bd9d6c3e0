//! One dataflow of a speed-layer worker and what feeds it: the running one, or one that
//! builds a changed catalog's views beside it, and where each starts reading the log.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use differential_dataflow::input::{Input, InputSession};
use tally_connectors::log::{EventLog, LogEntry, LogError, Offset};
use tally_model::{EventFields, Millis};
use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::Probe;
use timely::worker::Worker;

use crate::dataflow::{self, CompiledViews, Epoch, EpochEvents, StateWriter, WriteScope};
use crate::record::LoggedEvent;
use crate::telemetry::SpeedMetrics;
use crate::{Shared, SpeedError, SpeedLayer};

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

/// An epoch fed to the dataflow, until the view store reflects it.
pub(crate) struct OpenEpoch {
    pub(crate) epoch: Epoch,
    pub(crate) horizon: Millis,
    /// Per partition the worker reads: the next offset after the epoch's records.
    pub(crate) next: Vec<Offset>,
    /// Events it fed.
    pub(crate) read: u64,
    /// The earliest receive time among them.
    pub(crate) oldest_received: Option<Millis>,
    /// Whether the worker had read all the log held when the epoch started.
    pub(crate) caught_up: bool,
}

/// One dataflow of a worker, with what feeds it: the running one, or one that builds a
/// changed catalog's views beside it.
pub(crate) struct Pipeline {
    /// The catalog generation its views come from.
    pub(crate) generation: u64,
    pub(crate) views: Arc<CompiledViews>,
    pub(crate) input: InputSession<Epoch, dataflow::Sighting, isize>,
    pub(crate) probe: ProbeHandle<Epoch>,
    pub(crate) held: dataflow::HeldSightings,
    pub(crate) events: EpochEvents,
    pub(crate) scope: WriteScope,
    /// The partitions the worker reads.
    pub(crate) partitions: Vec<u32>,
    /// Per partition the worker reads: the next offset to feed.
    pub(crate) next: Vec<Offset>,
    /// Epochs fed, until the view store reflects them.
    pub(crate) open: VecDeque<OpenEpoch>,
}

impl Pipeline {
    /// Builds the dataflow for `views` on this worker, to be fed `partitions` from their
    /// replay starts for the current horizon; `scope` says which states it writes.
    pub(crate) fn build(
        worker: &mut Worker,
        shared: &Shared,
        (generation, views): (u64, Arc<CompiledViews>),
        (partitions, scope): (&[u32], WriteScope),
    ) -> Result<Pipeline, SpeedError> {
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
        let horizon = shared.horizon.load(Ordering::Acquire);
        Ok(Pipeline {
            generation,
            views,
            input,
            probe,
            held,
            events,
            scope,
            partitions: partitions.to_vec(),
            next: replay_starts(layer, partitions, horizon)?,
            open: VecDeque::new(),
        })
    }

    /// Feeds one partition's records; returns the events fed and the earliest receive time
    /// among them. With `metrics`, this dataflow reports undecodable records.
    pub(crate) fn feed(
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
    pub(crate) fn retire_before(&mut self, horizon: Millis) {
        let Pipeline { held, input, .. } = self;
        held.retire_before(horizon, |sighting, count| input.update(sighting, -count));
    }

    /// Ends the current epoch; returns it.
    pub(crate) fn advance(&mut self) -> Epoch {
        let epoch = *self.input.time();
        self.input.advance_to(epoch + 1);
        self.input.flush();
        epoch
    }

    /// Whether the epochs before `epoch` are not all reflected yet.
    pub(crate) fn pending_before(&self, epoch: Epoch) -> bool {
        self.probe.less_than(&epoch)
    }

    /// Waits until the store reflects every epoch fed, and returns them, oldest first (see
    /// [`take_closed`](Self::take_closed)).
    pub(crate) fn drain(&mut self, worker: &mut Worker) -> Vec<OpenEpoch> {
        let fed = *self.input.time();
        worker.step_or_park_while(None, || self.pending_before(fed));
        self.take_closed()
    }

    /// The open epochs the store now reflects, oldest first; each one's events and
    /// sightings are released.
    pub(crate) fn take_closed(&mut self) -> Vec<OpenEpoch> {
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

/// Feeds a build one partition's records: the running dataflow's own `entries` (read from
/// `from`) once the build has reached `from`, else the next records it lacks before `from`.
/// Returns whether it read records the running dataflow read before: the worker then goes
/// on at once rather than wait for new ones.
pub(crate) fn feed_build(
    built: &mut Pipeline,
    (slot, partition): (usize, u32),
    from: Offset,
    entries: &[LogEntry],
    (layer, horizon): (&SpeedLayer, Millis),
) -> Result<bool, SpeedError> {
    let behind = built.next[slot] < from;
    if behind {
        let lacking = usize::try_from(from - built.next[slot]).unwrap_or(usize::MAX);
        let max = lacking.min(layer.config.max_records_per_epoch);
        let earlier = match layer.log.read(partition, built.next[slot], max) {
            Err(LogError::Unavailable(_)) => return Ok(false),
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
            return Ok(true);
        }
        // Nothing more before `from`: the log holds no record between.
        built.next[slot] = from;
    }
    if built.next[slot] == from {
        let copies = entries.iter().map(|e| (e.offset, e.payload.clone()));
        built.feed(slot, partition, copies, horizon, None);
    }
    Ok(behind)
}
