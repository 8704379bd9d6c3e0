//! The speed layer: real-time views from the event log, with timely and differential dataflow.
//!
//! [`SpeedLayer::start`] runs one timely worker per thread; worker `w` reads the log partitions
//! `p` with `p % workers == w`. Each epoch (at most `speed.epoch_ms`) it feeds the new records
//! at or after the horizon into the [`dataflow`], which deduplicates them, folds them into the
//! [`AggregateState`](tally_model::AggregateState)s of every view spec, and upserts the changed
//! keys' absolute states into the view store once the epoch closes.
//!
//! State is a function of the log since the horizon, so there is no checkpoint: a restart
//! replays the log and rewrites the same absolute states. Buckets before the horizon are
//! dropped from memory and from the store when it moves.
//!
//! ```no_run
//! # fn run(log: std::sync::Arc<dyn tally_connectors::log::EventLog>,
//! #        store: std::sync::Arc<dyn tally_connectors::view_store::ViewStore>,
//! #        catalog: std::sync::Arc<tally_model::Catalog>) -> Result<(), tally_speed_layer::SpeedError> {
//! use tally_speed_layer::{SpeedLayer, SpeedMetrics};
//! let metrics = SpeedMetrics::register(&mut Default::default());
//! let lead = std::time::Duration::from_secs(24 * 3600);
//! let speed = SpeedLayer { log, store, catalog, config: Default::default(), metrics, max_event_lead: lead, published_horizon: None }.start()?;
//! speed.stop()
//! # }
//! ```

mod cluster;
pub mod dataflow;
pub mod record;
mod telemetry;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use differential_dataflow::input::Input;
use serde::Serialize;
use tally_connectors::batch_views::{BatchViews, BatchViewsError};
use tally_connectors::log::{EventLog, LogError, Offset};
use tally_connectors::view_store::ViewStore;
use tally_model::config::SpeedConfig;
use tally_model::time::{HOUR_MS, now_millis};
use tally_model::{Catalog, EventFields, Granularity, Millis};
use thiserror::Error;
use timely::dataflow::operators::Probe;
use timely::worker::Worker;

pub use telemetry::SpeedMetrics;

use crate::dataflow::{CompiledViews, Epoch, EpochEvents, StateWriter, StoreFailure};
use crate::record::LoggedEvent;

/// Everything the speed layer reads and writes.
pub struct SpeedLayer {
    /// The event log it follows.
    pub log: Arc<dyn EventLog>,
    /// Where it writes view states.
    pub store: Arc<dyn ViewStore>,
    /// Tenants and their view specs.
    pub catalog: Arc<Catalog>,
    /// Workers, epoch length, horizon.
    pub config: SpeedConfig,
    /// Its metrics.
    pub metrics: Arc<SpeedMetrics>,
    /// How far after its receipt an event's time may be (ingest's `max_future_secs`): a
    /// restart replays from the first record received this long before the horizon.
    pub max_event_lead: Duration,
    /// The horizon the batch layer has published, if it has: the speed layer then keeps
    /// everything from it on and follows only what [`SpeedHandle::follow_published_horizon`]
    /// is told.
    /// Without one it trails `now − speed.horizon_hours`.
    pub published_horizon: Option<Millis>,
}

/// How often, at most, a worker records its progress in the view store while records arrive.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Receive times are stamped before the spool write, so neighbouring records can be out of
/// order by a little; replay starts this much earlier to cover it.
const REPLAY_MARGIN_MS: Millis = 60_000;

/// The first offset in `offsets` whose record was received at or after `floor`, by binary
/// search: receive times grow with offsets (up to [`REPLAY_MARGIN_MS`]).
fn replay_start(
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

/// Why the speed layer stopped.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SpeedError {
    /// Reading the log failed.
    #[error("reading the event log: {0}")]
    Log(#[from] LogError),
    /// Writing the view store failed for good.
    #[error("writing the view store: {0}")]
    Store(#[from] StoreFailure),
    /// The timely workers could not start or panicked.
    #[error("speed layer workers: {0}")]
    Workers(String),
}

/// A running speed layer.
pub struct SpeedHandle {
    shared: Arc<Shared>,
    /// `None` once `stop` has joined them.
    guards: Mutex<Option<timely::communication::WorkerGuards<Result<(), SpeedError>>>>,
}

struct Shared {
    layer: SpeedLayer,
    /// Timely workers running.
    workers: usize,
    views: Arc<CompiledViews>,
    horizon: Arc<AtomicI64>,
    /// Until the batch layer publishes a horizon, it trails the clock.
    trailing: AtomicBool,
    /// The last horizon the batch layer published, while it is before the speed layer's.
    published_below: Mutex<Option<Millis>>,
    stop: Arc<AtomicBool>,
    /// The transient view-store error a worker is retrying, if any.
    retrying: Arc<Mutex<Option<String>>>,
    failure: Arc<Mutex<Option<StoreFailure>>>,
    /// Per partition: the offset up to which the view store reflects the log.
    reflected: Vec<AtomicU64>,
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

impl SpeedLayer {
    /// Starts the workers; they run until [`SpeedHandle::stop`].
    pub fn start(self) -> Result<SpeedHandle, SpeedError> {
        let workers = match self.config.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let trailing = self.published_horizon.is_none();
        let start = self
            .published_horizon
            .unwrap_or_else(|| trailing_horizon(&self.config));
        let horizon = Arc::new(AtomicI64::new(start));
        let views = Arc::new(CompiledViews::new(&self.catalog));
        retire_earlier_specs(self.store.as_ref(), &views)?;
        let shared = Arc::new(Shared {
            views,
            reflected: (0..self.log.partitions())
                .map(|_| AtomicU64::new(0))
                .collect(),
            layer: self,
            workers,
            horizon,
            trailing: AtomicBool::new(trailing),
            published_below: Mutex::new(None),
            stop: Arc::new(AtomicBool::new(false)),
            retrying: Arc::default(),
            failure: Arc::new(Mutex::new(None)),
        });
        let for_workers = shared.clone();
        let config = &shared.layer.config;
        let peers = config.peer_addresses();
        if !peers.is_empty() {
            cluster::watch_for_lost_peers(peers.clone());
            tracing::info!(
                process = config.process_index,
                peers = %peers.join(","),
                "joining the speed cluster: waiting until every peer is connected"
            );
        }
        let guards = timely::execute(cluster::timely_config(config, workers), move |worker| {
            run_worker(worker, &for_workers)
        })
        .map_err(SpeedError::Workers)?;
        if !peers.is_empty() {
            tracing::info!(
                processes = peers.len(),
                workers_each = workers,
                "the speed cluster is complete"
            );
        }
        Ok(SpeedHandle {
            shared,
            guards: Mutex::new(Some(guards)),
        })
    }
}

/// The view store's record of the names the speed layer's states are stored under.
const STORED_VIEWS_RECORD: &str = "speed-stored-views";

/// Deletes the states of views whose spec changed or that were removed since the speed
/// layer last started, then records the names it writes now. States of an earlier spec are
/// never read (serving asks for [`ViewSpec::stored_name`](tally_model::ViewSpec) of the
/// current one); this frees their room. A crash between the two steps repeats the first.
fn retire_earlier_specs(store: &dyn ViewStore, views: &CompiledViews) -> Result<(), SpeedError> {
    let store_error = |err: tally_connectors::view_store::ViewStoreError| {
        SpeedError::Store(StoreFailure::new(
            "retiring the states of earlier view specs".to_owned(),
            err,
        ))
    };
    let current: Vec<(String, String)> = views
        .stored_names()
        .map(|(tenant, view)| (tenant.to_owned(), view.to_owned()))
        .collect();
    let recorded: Vec<(String, String)> = store
        .progress(STORED_VIEWS_RECORD)
        .map_err(store_error)?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    for (tenant, view) in recorded.iter().filter(|named| !current.contains(named)) {
        let deleted = store
            .delete_before(tenant, view, Millis::MAX)
            .map_err(store_error)?;
        tracing::info!(%tenant, %view, deleted, "retired the real-time states of an earlier view spec");
    }
    let names = serde_json::to_vec(&current).expect("names serialize");
    store
        .record_progress(STORED_VIEWS_RECORD, &names)
        .map_err(store_error)
}

/// How often a running speed layer looks for a newly published batch horizon.
pub const HORIZON_POLL: Duration = Duration::from_secs(5);

/// The horizon the batch layer has published in `views`' manifest, if any: where a
/// starting speed layer begins.
pub async fn published_horizon(views: &BatchViews) -> Result<Option<Millis>, BatchViewsError> {
    Ok(views.manifest().await?.map(|manifest| manifest.horizon))
}

impl SpeedHandle {
    /// Moves the horizon to each one the batch layer publishes in `views`' manifest, every
    /// [`HORIZON_POLL`], until the task is dropped or aborted. Runs wherever a speed layer
    /// runs: under `tally up` and `tally speed` alike.
    pub async fn follow_batch_horizons(self: Arc<Self>, views: BatchViews) {
        let mut ticks = tokio::time::interval(HORIZON_POLL);
        loop {
            ticks.tick().await;
            match published_horizon(&views).await {
                Ok(Some(horizon)) => self.follow_published_horizon(horizon),
                Ok(None) => {}
                Err(err) => tracing::warn!(error = %err, "could not read the batch manifest"),
            }
        }
    }

    /// Per partition, the offset up to which the view store reflects the log.
    pub fn reflected_offsets(&self) -> Vec<Offset> {
        self.shared
            .reflected
            .iter()
            .map(|offset| offset.load(Ordering::Acquire))
            .collect()
    }

    /// Timely workers running (`speed.workers`, or one per core when that is 0).
    pub fn workers(&self) -> usize {
        self.shared.workers
    }

    /// The current horizon: views hold buckets at or after it.
    pub fn horizon(&self) -> Millis {
        self.shared.horizon.load(Ordering::Acquire)
    }

    /// Follows a horizon the batch layer published. At or after the speed layer's own, the
    /// horizon moves there and no longer trails the clock. Before it, nothing moves: the
    /// buckets between the two were dropped here and are not yet in the batch views, which
    /// [`seam_gap`](Self::seam_gap) reports until the published horizon catches up (a
    /// restart closes the gap at once while the log still holds it: it replays from the
    /// published horizon).
    pub fn follow_published_horizon(&self, published: Millis) {
        let own = self.horizon();
        let mut gap = self
            .shared
            .published_below
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if published >= own {
            self.shared.trailing.store(false, Ordering::Release);
            self.shared.horizon.fetch_max(published, Ordering::AcqRel);
            *gap = None;
        } else {
            *gap = Some(published);
        }
        let seconds = gap.map_or(0, |published| (own - published) / 1000);
        self.shared.layer.metrics.seam_gap(seconds);
    }

    /// Buckets in neither layer: from a published batch horizon up to the speed layer's own,
    /// when the batch layer published one behind it. See
    /// [`follow_published_horizon`](Self::follow_published_horizon).
    pub fn seam_gap(&self) -> Option<std::ops::Range<Millis>> {
        let published = *self
            .shared
            .published_below
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        published.map(|published| published..self.horizon())
    }

    /// The transient view-store error a worker is retrying, if any: the views lag until the
    /// store answers again.
    pub fn retrying(&self) -> Option<String> {
        self.shared
            .retrying
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Why this process left its speed cluster, if it did: a peer was lost. The process
    /// must then exit, and every process of the cluster be restarted.
    pub fn cluster_failure(&self) -> Option<String> {
        cluster::lost_peer()
    }

    /// The first permanent error a worker met, if any; the workers stop after one.
    pub fn failure(&self) -> Option<String> {
        self.shared
            .failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .map(ToString::to_string)
    }

    /// Stops the workers after their current epoch and waits for them; later calls do nothing.
    pub fn stop(&self) -> Result<(), SpeedError> {
        self.shared.stop.store(true, Ordering::Release);
        let Some(guards) = self.guards.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Ok(());
        };
        for result in guards.join() {
            result.map_err(SpeedError::Workers)??;
        }
        Ok(())
    }
}

impl Drop for SpeedHandle {
    /// Dropping the handle stops the workers (the guards then join them), also on unwinding.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
    }
}

/// `now − horizon_hours`, at the start of its hour.
fn trailing_horizon(config: &SpeedConfig) -> Millis {
    let horizon = now_millis() - (config.horizon_hours as Millis).saturating_mul(HOUR_MS);
    Granularity::Hour.bucket_start(horizon)
}

fn run_worker(worker: &mut Worker, shared: &Shared) -> Result<(), SpeedError> {
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
