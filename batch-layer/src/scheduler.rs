//! The scheduler: runs recompute every few minutes, then the retention sweep and raw
//! retention, skipping a tick while a run is in flight; between runs it polls for the batch
//! jobs governance asks for ([`crate::jobs`]) and runs them, one at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, OwnedMutexGuard, watch};
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
    /// Whether the holder of `in_flight` is a recompute run.
    running: Arc<AtomicBool>,
    /// A tick found a job holding `in_flight`: its run starts at the next poll.
    pending: AtomicBool,
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
            running: Arc::default(),
            pending: AtomicBool::new(false),
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

    /// Starts a run unless one is in flight. A run the tick finds a batch job (or the look
    /// for one) holding the scheduler for is not skipped but left pending: the next poll
    /// starts it, so a long period (a day) never loses a run to a job.
    fn tick(&self) {
        let Ok(guard) = self.in_flight.clone().try_lock_owned() else {
            if self.running.load(Ordering::Acquire) {
                self.metrics.run_skipped();
            } else {
                self.pending.store(true, Ordering::Release);
            }
            return;
        };
        self.start_run(guard);
    }

    /// Runs recompute, then the sweep and raw retention, holding `guard` throughout.
    fn start_run(&self, guard: OwnedMutexGuard<()>) {
        let recompute = self.recompute.clone();
        let running = self.running.clone();
        running.store(true, Ordering::Release);
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
            running.store(false, Ordering::Release);
            drop(guard);
        });
    }

    /// Starts a pending run, or else runs the oldest queued batch job, unless a run or a job
    /// is in flight.
    fn poll_jobs(&self) {
        let Ok(guard) = self.in_flight.clone().try_lock_owned() else {
            return;
        };
        if self.pending.swap(false, Ordering::AcqRel) {
            self.start_run(guard);
            return;
        }
        let jobs = self.jobs.clone();
        tokio::spawn(async move {
            match jobs.claim_next().await {
                Ok(Some(job)) => jobs.run(job).await,
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "could not read the batch jobs; retrying"),
            }
            drop(guard);
        });
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;
    use tally_model::Catalog;

    use super::*;

    /// The runs the scheduler finished, from its metrics.
    fn runs(registry: &Registry) -> u64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix("tally_batch_runs_total ")?.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn a_tick_that_finds_a_job_running_is_run_at_the_next_poll_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let store = tally_connectors::object_store::open_local(dir.path()).unwrap();
        let mut registry = Registry::default();
        let metrics = BatchMetrics::register(&mut registry);
        let catalog = Arc::new(Catalog::demo("w", "r"));
        let recompute = Arc::new(Recompute::new(store, catalog, 0, metrics.clone()));
        // A day between runs: a lost tick would be a lost day.
        let scheduler = Scheduler::new(recompute, Duration::from_secs(86_400), metrics);
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let job = scheduler.in_flight.clone().try_lock_owned().unwrap();
            scheduler.tick();
            drop(job);
            scheduler.poll_jobs();
            let started = std::time::Instant::now();
            while runs(&registry) == 0 {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "the run never came"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        assert_eq!(runs(&registry), 1);
    }
}
