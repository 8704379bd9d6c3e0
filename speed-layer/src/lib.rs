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
//! #        catalog: tally_connectors::catalog::CatalogHandle) -> Result<(), tally_speed_layer::SpeedError> {
//! use tally_speed_layer::{SpeedLayer, SpeedMetrics};
//! let metrics = SpeedMetrics::register(&mut Default::default());
//! let lead = std::time::Duration::from_secs(24 * 3600);
//! let speed = SpeedLayer { log, store, catalog, config: Default::default(), metrics, max_event_lead: lead, published_horizon: None }.start()?;
//! speed.stop()
//! # }
//! ```

mod cluster;
mod control;
pub mod dataflow;
mod pipeline;
pub mod record;
mod telemetry;
#[cfg(test)]
mod tests;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally_connectors::batch_views::{BatchViews, BatchViewsError};
use tally_connectors::catalog::CatalogHandle;
use tally_connectors::log::{EventLog, LogError, Offset};
use tally_connectors::view_store::live::LiveViews;
use tally_connectors::view_store::{self, ViewStore};
use tally_model::config::SpeedConfig;
use tally_model::time::{HOUR_MS, now_millis};
use tally_model::{Granularity, Millis};
use thiserror::Error;

pub use telemetry::SpeedMetrics;

use crate::dataflow::{CompiledViews, StoreFailure};

/// Everything the speed layer reads and writes.
pub struct SpeedLayer {
    /// The event log it follows.
    pub log: Arc<dyn EventLog>,
    /// Where it writes view states.
    pub store: Arc<dyn ViewStore>,
    /// Tenants and their view specs, followed while the layer runs: a changed view's states
    /// are built beside the running ones and take over once complete.
    pub catalog: CatalogHandle,
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
    /// The catalog generation the layer started with.
    generation: u64,
    /// The views the workers start with.
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
        let (generation, catalog) = self.catalog.current_with_generation();
        let live = LiveViews::of(&catalog, generation);
        retire_earlier_specs(self.store.as_ref(), &live)?;
        let shared = Arc::new(Shared {
            generation,
            views: Arc::new(CompiledViews::new(&live.views)),
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
            worker::run_worker(worker, &for_workers)
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

/// Deletes the states of views whose spec changed or that were removed since the speed
/// layer last ran, then records `live` as the views the store answers for. A starting layer
/// replays every view from the horizon, as it always has; states of an earlier spec are never
/// read again (serving asks for the recorded specs' [`ViewSpec::stored_name`]s), so this frees
/// their room. A crash between the two steps repeats the first.
///
/// [`ViewSpec::stored_name`]: tally_model::ViewSpec::stored_name
fn retire_earlier_specs(store: &dyn ViewStore, live: &LiveViews) -> Result<(), SpeedError> {
    let store_error = |err: tally_connectors::view_store::ViewStoreError| {
        SpeedError::Store(StoreFailure::new(
            "retiring the states of earlier view specs".to_owned(),
            err,
        ))
    };
    let current = live.stored_names();
    let recorded = view_store::live::recorded_names(store).map_err(store_error)?;
    for (tenant, view) in recorded.iter().filter(|named| !current.contains(named)) {
        let deleted = store
            .delete_before(tenant, view, Millis::MAX)
            .map_err(store_error)?;
        tracing::info!(%tenant, %view, deleted, "retired the real-time states of an earlier view spec");
    }
    view_store::live::write(store, live).map_err(store_error)
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
