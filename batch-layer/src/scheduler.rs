//! The scheduler: runs recompute every few minutes, then the retention sweep and raw
//! retention, skipping a tick while a run is in flight; between runs it polls for the batch
//! jobs governance asks for ([`crate::jobs`]) and runs them, one at a time.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, watch};
use tokio::time::MissedTickBehavior;

use tally_model::time::now_millis;

use crate::jobs::JobRunner;
use crate::recompute::{Recompute, RunRequest};
use crate::retention::expire_raw_events;
use crate::sweep::{DEFAULT_GRACE, sweep};
use crate::telemetry::BatchMetrics;

/// Runs [`Recompute`] on a fixed period.
pub struct Scheduler {
    recompute: Arc<Recompute>,
    every: Duration,
    metrics: Arc<BatchMetrics>,
    in_flight: Arc<Mutex<()>>,
    jobs: Arc<JobRunner>,
}

/// How often the scheduler looks for a queued batch job: a console waits at most this long
/// for its job to start when nothing else runs.
const JOB_POLL: Duration = Duration::from_secs(2);

impl Scheduler {
    /// A scheduler running `recompute` every `every`, the first run at once.
    pub fn new(recompute: Arc<Recompute>, every: Duration, metrics: Arc<BatchMetrics>) -> Self {
        Scheduler {
            jobs: Arc::new(JobRunner::new(recompute.clone())),
            recompute,
            every,
            metrics,
            in_flight: Arc::new(Mutex::new(())),
        }
    }

    /// Ticks until `stop` turns true; a run in flight then finishes on its own task.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(self.every);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut job_polls = tokio::time::interval(JOB_POLL);
        job_polls.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = ticks.tick() => self.tick(),
                _ = job_polls.tick() => self.poll_jobs(),
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return;
            }
        }
    }

    /// Starts a run unless one is in flight.
    fn tick(&self) {
        let Ok(guard) = self.in_flight.clone().try_lock_owned() else {
            self.metrics.run_skipped();
            return;
        };
        let recompute = self.recompute.clone();
        tokio::spawn(async move {
            // Failures are logged and counted by the run itself; the next tick retries.
            if recompute.run(&RunRequest::default(), &|_| {}).await.is_ok() {
                if let Err(error) = sweep(recompute.store(), DEFAULT_GRACE).await {
                    tracing::warn!(%error, "the retention sweep failed; the next run retries it");
                }
                let catalog = recompute.catalog().current();
                let expired = expire_raw_events(recompute.store(), &catalog, now_millis()).await;
                if let Err(error) = expired {
                    tracing::warn!(%error, "raw retention failed; the next run retries it");
                }
            }
            drop(guard);
        });
    }

    /// Runs the oldest queued batch job, unless a run or a job is in flight.
    fn poll_jobs(&self) {
        let Ok(guard) = self.in_flight.clone().try_lock_owned() else {
            return;
        };
        let jobs = self.jobs.clone();
        tokio::spawn(async move {
            match jobs.next_queued().await {
                Ok(Some(job)) => jobs.run(job).await,
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "could not read the batch jobs; retrying"),
            }
            drop(guard);
        });
    }
}
