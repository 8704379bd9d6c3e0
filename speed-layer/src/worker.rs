//! One timely worker of the speed layer: it reads its share of the log's partitions an
//! epoch at a time, feeds the dataflow, and once the view store reflects an epoch, publishes
//! the offsets it reached, records its progress and reports metrics. When the views change, it
//! also feeds a second dataflow that builds them, and switches to it when told
//! ([`control`](crate::control)).

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use tally_connectors::log::{LogError, Offset};
use tally_connectors::view_store::live::LiveView;
use tally_model::Millis;
use tally_model::time::now_millis;
use timely::worker::Worker;

use crate::control::{ChangeLead, Control, ControlChannel, Round};
use crate::dataflow::{CompiledViews, Epoch, WriteScope};
use crate::pipeline::{OpenEpoch, Pipeline, feed_build};
use crate::{Shared, SpeedError, SpeedLayer, trailing_horizon};

/// How often, at most, a worker records its progress in the view store while records arrive.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

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
    // Built first, so every worker numbers its dataflows alike.
    let mut control = ControlChannel::new(worker);
    let mut running = Pipeline::build(
        worker,
        shared,
        (shared.generation, shared.views.clone()),
        (&partitions, WriteScope::default()),
    )?;
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
                    let mut built =
                        Pipeline::build(worker, shared, (generation, views), (&partitions, scope))?;
                    // Numbered as the running dataflow's epochs, which every worker advances
                    // once a round: workers that start their builds in different rounds still
                    // agree on which epochs the switch waits for.
                    built.input.advance_to(*running.input.time());
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
            for closed in running.drain(worker) {
                closer.close(closed)?;
            }
            built.drain(worker);
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
            // The sightings of open epochs are not in the arrangement yet.
            for closed in running.drain(worker) {
                closer.close(closed)?;
            }
            running.retire_before(horizon);
            if let Some(built) = &mut building {
                built.drain(worker);
                built.retire_before(horizon);
            }
            retired_below = horizon;
        }
        let mut read = 0u64;
        let mut oldest_received: Option<Millis> = None;
        let mut caught_up = true;
        // Whether a build read records the running dataflow read before.
        let mut build_behind = false;
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
                build_behind |=
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
        if read == 0 && !build_behind {
            std::thread::sleep(epoch_length.saturating_sub(started.elapsed()));
        }
    }
    Ok(())
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
