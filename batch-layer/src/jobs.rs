//! Runs the batch jobs the governance API records ([`tally_connectors::jobs`]): a reprocess
//! staged for review, or the promotion of a reviewed version. The scheduler runs them one at
//! a time, never beside a recompute, and records each job's progress as it goes, so a console
//! in another process can draw it.
//!
//! A runner claims each run of a job before it starts it (create-only, so two schedulers
//! started by mistake never run one job twice), and says it is alive every second while it
//! runs. A job whose runner has been silent for [`ABANDONED_AFTER`] (its scheduler stopped
//! mid-job) is run again, as the next attempt: nothing a stopped run did is live (a
//! reprocess stages, a promotion is one swap).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally_connectors::jobs::{JobError, JobStore};
use tally_model::job::{BatchJob, JobStatus, JobWork};
use tally_model::time::{format_rfc3339, now_millis};
use tally_model::{LogicVersion, Millis};

use crate::recompute::{Recompute, RunProgress, RunRequest};

/// How often a running job's progress (and that its runner is alive) is written.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How long a running job's runner may be silent before another scheduler takes the job over.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(30);

/// Finds queued jobs and runs them.
pub struct JobRunner {
    recompute: Arc<Recompute>,
    jobs: JobStore,
    /// Jobs seen finished, so a poll reads only the others.
    finished: Mutex<HashSet<String>>,
}

impl JobRunner {
    /// Runs the jobs kept beside `recompute`'s object store.
    pub fn new(recompute: Arc<Recompute>) -> Self {
        JobRunner {
            jobs: JobStore::new(recompute.store()),
            recompute,
            finished: Mutex::default(),
        }
    }

    /// The oldest job to run (queued, or abandoned by its runner), claimed for this runner
    /// and recorded as running; none when no job waits, or every waiting one is claimed.
    pub async fn claim_next(&self) -> Result<Option<BatchJob>, JobError> {
        for (job, attempt) in self.waiting().await? {
            if let Some(job) = self.claim(job, attempt).await? {
                return Ok(Some(job));
            }
        }
        Ok(None)
    }

    /// The jobs no runner is at, oldest first, each with the attempt its next run would be.
    pub(crate) async fn waiting(&self) -> Result<Vec<(BatchJob, u32)>, JobError> {
        let mut ids = self.jobs.ids().await?;
        ids.sort();
        let abandoned_before = now_millis().saturating_sub(ABANDONED_AFTER.as_millis() as Millis);
        let mut waiting = Vec::new();
        for id in ids {
            if self.finished.lock().expect("finished lock").contains(&id) {
                continue;
            }
            let Some(job) = self.jobs.get(&id).await? else {
                continue;
            };
            // When the job was last heard of: its last claim, or its runner's last word if
            // later (a runner that stopped between claiming and recording leaves only the
            // claim, and a new claim comes before the running job says so).
            let last_claim = self.jobs.last_claim(&id).await?;
            let claimed_at = last_claim.map(|(_, claimed_at)| claimed_at);
            let heard_at = match job.status {
                JobStatus::Queued => claimed_at,
                JobStatus::Running { alive_at, .. } => claimed_at.max(Some(alive_at)),
                _ => {
                    self.finished.lock().expect("finished lock").insert(id);
                    continue;
                }
            };
            if heard_at.is_none_or(|at| at < abandoned_before) {
                let attempt = last_claim.map_or(1, |(attempt, _)| attempt.saturating_add(1));
                waiting.push((job, attempt));
            }
        }
        Ok(waiting)
    }

    /// Claims run `attempt` of `job` and records it running; none when another runner
    /// claimed that run first.
    pub(crate) async fn claim(
        &self,
        mut job: BatchJob,
        attempt: u32,
    ) -> Result<Option<BatchJob>, JobError> {
        if !self.jobs.claim(&job.id, attempt).await? {
            return Ok(None);
        }
        job.status = JobStatus::Running {
            hours_planned: None,
            hours_done: 0,
            raw_rows: 0,
            attempt,
            alive_at: now_millis(),
        };
        self.jobs.update(&job).await?;
        Ok(Some(job))
    }

    /// Runs `job`, claimed by [`claim_next`](Self::claim_next), to its end, recording its
    /// progress and outcome; then prunes old jobs.
    pub async fn run(&self, mut job: BatchJob) {
        tracing::info!(job = %job.id, view = %job.view, work = ?job.work, status = ?job.status, "running a batch job");
        let outcome = match job.work.clone() {
            JobWork::Reprocess {
                from,
                to,
                logic_version,
            } => self.reprocess(&mut job, from..to, logic_version).await,
            JobWork::Promote { logic_version } => self
                .recompute
                .promote(&job.tenant, &job.view, logic_version)
                .await
                .map(|hours| {
                    format!(
                        "logic version {logic_version} is live for {hours} more hour(s); the old version's objects are swept after the grace period"
                    )
                })
                .map_err(|error| error.to_string()),
        };
        let finished_at = now_millis();
        job.status = match outcome {
            Ok(summary) => JobStatus::Done {
                summary,
                finished_at,
            },
            Err(error) => {
                tracing::warn!(job = %job.id, %error, "a batch job failed");
                JobStatus::Failed { error, finished_at }
            }
        };
        self.record(&job).await;
        self.finished.lock().expect("finished lock").insert(job.id);
        if let Err(error) = self.jobs.prune().await {
            tracing::warn!(%error, "pruning old batch jobs failed; the next job retries");
        }
    }

    /// A staged reprocess, writing its progress every [`PROGRESS_EVERY`] while it runs.
    async fn reprocess(
        &self,
        job: &mut BatchJob,
        hours: std::ops::Range<Millis>,
        version: LogicVersion,
    ) -> Result<String, String> {
        let request = RunRequest {
            hours: Some(hours),
            view: Some(job.view.clone()),
            tenant: Some(job.tenant.clone()),
            reprocess_as: Some(version),
            stage: true,
        };
        let progress = Mutex::new((None, 0, 0));
        let on_progress = |update| {
            let mut progress = progress.lock().expect("progress lock");
            match update {
                RunProgress::Planned { hours } => progress.0 = Some(hours as u64),
                RunProgress::HourDone { raw_rows } => {
                    progress.1 += 1;
                    progress.2 += raw_rows;
                }
            }
        };
        let run = self.recompute.run(&request, &on_progress);
        tokio::pin!(run);
        let attempt = match job.status {
            JobStatus::Running { attempt, .. } => attempt,
            _ => 1,
        };
        let mut ticks = tokio::time::interval(PROGRESS_EVERY);
        let result = loop {
            tokio::select! {
                result = &mut run => break result,
                _ = ticks.tick() => {
                    let (hours_planned, hours_done, raw_rows) = *progress.lock().expect("progress lock");
                    job.status = JobStatus::Running { hours_planned, hours_done, raw_rows, attempt, alive_at: now_millis() };
                    self.record(job).await;
                }
            }
        };
        let summary = result.map_err(|error| error.to_string())?;
        Ok(format!(
            "staged {} hour(s) of logic version {version} ({} rows from {} raw events); review them with logic_version={version}, then promote; the published horizon is {}",
            summary.hours,
            summary.rows,
            summary.raw_rows,
            format_rfc3339(summary.horizon)
        ))
    }

    async fn record(&self, job: &BatchJob) {
        if let Err(error) = self.jobs.update(job).await {
            tracing::warn!(job = %job.id, %error, "could not record a batch job's progress");
        }
    }
}
