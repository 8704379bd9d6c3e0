//! The batch jobs the governance API asks for, kept in the object store as
//! `jobs/<id>.json`: serving creates a job (create-only), a batch scheduler claims it and
//! records its progress, and the console reads it back from any serving replica. A claim is
//! an object of its own, `job-claims/<id>/<attempt>`, written create-only, so of two
//! schedulers that want the same run of a job exactly one gets it.
//!
//! Ids start with the request time, so listing the folder yields jobs oldest first. Finished
//! jobs beyond the newest [`KEEP_FINISHED`] are deleted by the scheduler. Unfinished jobs are
//! bounded by [`MAX_UNFINISHED`] per tenant: a job is submitted only once it holds one of the
//! tenant's slots, `job-slots/<tenant>/<slot>/<turn>`, each turn written create-only, so that
//! of concurrent submitters (on any number of serving replicas) at most that many succeed.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutPayload};
use tally_model::Millis;
use tally_model::job::{BatchJob, JobStatus, JobWork};
use thiserror::Error;

use crate::object_store::get_optional;

/// Where jobs are kept.
const PREFIX: &str = "jobs";
/// Where the claims on their runs are kept.
const CLAIMS: &str = "job-claims";
/// Where each tenant's slots for unfinished jobs are kept.
const SLOTS: &str = "job-slots";
/// Longer than a submission takes from taking its slot to writing its job.
const SUBMISSION_MS: Millis = 60_000;
/// Finished jobs kept for the console's history.
pub const KEEP_FINISHED: usize = 100;
/// Jobs of one tenant that may wait or run at once; more are refused.
pub const MAX_UNFINISHED: usize = 8;

/// Why a job could not be kept or read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum JobError {
    /// The object store failed.
    #[error("object store, at {path}: {source}")]
    Store {
        /// The object.
        path: String,
        /// The cause.
        source: object_store::Error,
    },
    /// A stored job does not parse.
    #[error("job {path} is corrupt: {source}")]
    Corrupt {
        /// The object.
        path: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// The tenant has too many jobs waiting or running.
    #[error(
        "{0} jobs of this tenant are waiting or running, the most allowed; wait for one to finish (is a batch scheduler running?)"
    )]
    TooMany(usize),
}

/// The jobs in an object store.
#[derive(Clone)]
pub struct JobStore {
    store: Arc<dyn ObjectStore>,
}

impl JobStore {
    /// The jobs kept in `store`.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        JobStore { store }
    }

    /// Records a new queued job, unless the tenant has [`MAX_UNFINISHED`] already.
    pub async fn submit(
        &self,
        tenant: &str,
        view: &str,
        work: JobWork,
        now: Millis,
    ) -> Result<BatchJob, JobError> {
        let job = BatchJob {
            id: format!(
                "{:013}-{:016x}",
                now.max(0),
                tally_model::token::fresh_token()
            ),
            tenant: tenant.to_owned(),
            view: view.to_owned(),
            work,
            requested_at: now,
            status: JobStatus::Queued,
        };
        self.take_slot(tenant, &job.id, now).await?;
        let path = path_of(&job.id);
        (self.store)
            .put_opts(
                &ObjectPath::from(path.as_str()),
                to_payload(&job),
                PutMode::Create.into(),
            )
            .await
            .map_err(|source| JobError::Store { path, source })?;
        Ok(job)
    }

    /// Takes one of the tenant's [`MAX_UNFINISHED`] slots for job `id`, at `now`. A slot is
    /// free when it was never taken, or its latest turn's job is finished, or gone for longer
    /// than a submission takes; it is taken by writing its next turn create-only, which
    /// exactly one of several submitters manages.
    async fn take_slot(&self, tenant: &str, id: &str, now: Millis) -> Result<(), JobError> {
        for slot in 0..MAX_UNFINISHED {
            let turns = self.listed(&format!("{SLOTS}/{tenant}/{slot}")).await?;
            let latest = turns
                .iter()
                .filter_map(|meta| {
                    let turn = meta.location.filename()?.parse::<u64>().ok()?;
                    Some((turn, meta.last_modified.timestamp_millis()))
                })
                .max();
            let next = match latest {
                None => 0,
                Some((turn, taken_at)) => {
                    let holder = match self.slot_holder(tenant, slot, turn).await? {
                        Some(holder) => self.get(&holder).await?,
                        None => None,
                    };
                    let busy = match holder {
                        Some(job) => !job.status.is_finished(),
                        // Its job is being written, or its submission failed long ago.
                        None => now.saturating_sub(taken_at) < SUBMISSION_MS,
                    };
                    if busy {
                        continue;
                    }
                    turn.saturating_add(1)
                }
            };
            let path = slot_path(tenant, slot, next);
            let taken = (self.store)
                .put_opts(
                    &ObjectPath::from(path.as_str()),
                    PutPayload::from(id.to_owned()),
                    PutMode::Create.into(),
                )
                .await;
            match taken {
                Ok(_) => return Ok(()),
                Err(object_store::Error::AlreadyExists { .. }) => continue,
                Err(source) => return Err(JobError::Store { path, source }),
            }
        }
        Err(JobError::TooMany(MAX_UNFINISHED))
    }

    /// The job that took `turn` of a tenant's `slot`.
    async fn slot_holder(
        &self,
        tenant: &str,
        slot: usize,
        turn: u64,
    ) -> Result<Option<String>, JobError> {
        let path = slot_path(tenant, slot, turn);
        let bytes = get_optional(self.store.as_ref(), &path)
            .await
            .map_err(|source| JobError::Store { path, source })?;
        Ok(bytes.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// The job `id`, if there is one.
    pub async fn get(&self, id: &str) -> Result<Option<BatchJob>, JobError> {
        // Ids are ours: anything else names no job (and no other object).
        if !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            return Ok(None);
        }
        let path = path_of(id);
        let bytes = get_optional(self.store.as_ref(), &path)
            .await
            .map_err(|source| JobError::Store {
                path: path.clone(),
                source,
            })?;
        bytes
            .map(|bytes| serde_json::from_slice(&bytes))
            .transpose()
            .map_err(|source| JobError::Corrupt { path, source })
    }

    /// Every job, oldest first.
    pub async fn list(&self) -> Result<Vec<BatchJob>, JobError> {
        let mut ids = self.ids().await?;
        ids.sort();
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            // Pruned meanwhile: gone is gone.
            if let Some(job) = self.get(&id).await? {
                jobs.push(job);
            }
        }
        Ok(jobs)
    }

    /// The ids of every job, in no order.
    pub async fn ids(&self) -> Result<Vec<String>, JobError> {
        let listed = self.listed(PREFIX).await?;
        Ok(listed
            .into_iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?.strip_suffix(".json")?.to_owned();
                Some(name)
            })
            .collect())
    }

    /// Claims run `attempt` of job `id` for the caller: false when another claimed it first.
    pub async fn claim(&self, id: &str, attempt: u32) -> Result<bool, JobError> {
        let path = format!("{CLAIMS}/{id}/{attempt}");
        let claimed = (self.store)
            .put_opts(
                &ObjectPath::from(path.as_str()),
                PutPayload::new(),
                PutMode::Create.into(),
            )
            .await;
        match claimed {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(source) => Err(JobError::Store { path, source }),
        }
    }

    /// The latest claim on job `id`: its attempt, and when it was made (ms, UTC, by the
    /// store's clock).
    pub async fn last_claim(&self, id: &str) -> Result<Option<(u32, Millis)>, JobError> {
        let claims = self.listed(&format!("{CLAIMS}/{id}")).await?;
        Ok(claims
            .into_iter()
            .filter_map(|meta| {
                let attempt = meta.location.filename()?.parse::<u32>().ok()?;
                Some((attempt, meta.last_modified.timestamp_millis()))
            })
            .max())
    }

    /// Records `job` as it now stands.
    pub async fn update(&self, job: &BatchJob) -> Result<(), JobError> {
        let path = path_of(&job.id);
        (self.store)
            .put(&ObjectPath::from(path.as_str()), to_payload(job))
            .await
            .map(drop)
            .map_err(|source| JobError::Store { path, source })
    }

    /// Deletes the finished jobs older than the newest [`KEEP_FINISHED`]; returns how many.
    pub async fn prune(&self) -> Result<usize, JobError> {
        let finished: Vec<BatchJob> = (self.list().await?.into_iter())
            .filter(|job| job.status.is_finished())
            .collect();
        let excess = finished.len().saturating_sub(KEEP_FINISHED);
        for job in &finished[..excess] {
            let claims = self.listed(&format!("{CLAIMS}/{}", job.id)).await?;
            let paths = claims.into_iter().map(|meta| meta.location.to_string());
            for path in paths.chain([path_of(&job.id)]) {
                match self.store.delete(&ObjectPath::from(path.as_str())).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(source) => return Err(JobError::Store { path, source }),
                }
            }
        }
        self.prune_slot_turns().await?;
        Ok(excess)
    }

    /// Deletes every turn of a slot but its latest, which says whether the slot is free.
    async fn prune_slot_turns(&self) -> Result<(), JobError> {
        let mut turns: Vec<String> = (self.listed(SLOTS).await?.into_iter())
            .map(|meta| meta.location.to_string())
            .collect();
        // Turns are zero-padded: sorted, each slot's latest comes last among its own.
        turns.sort();
        let slot_of = |path: &str| path.rsplit_once('/').map(|(slot, _)| slot.to_owned());
        for (at, path) in turns.iter().enumerate() {
            let later = turns.get(at.saturating_add(1));
            if later.is_some_and(|later| slot_of(later) == slot_of(path)) {
                match self.store.delete(&ObjectPath::from(path.as_str())).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(source) => {
                        return Err(JobError::Store {
                            path: path.clone(),
                            source,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The objects under `prefix`.
    async fn listed(&self, prefix: &str) -> Result<Vec<ObjectMeta>, JobError> {
        (self.store.list(Some(&ObjectPath::from(prefix))))
            .try_collect()
            .await
            .map_err(|source| JobError::Store {
                path: prefix.to_owned(),
                source,
            })
    }
}

/// Where `turn` of a tenant's `slot` is kept; turns are zero-padded, so they sort in order.
fn slot_path(tenant: &str, slot: usize, turn: u64) -> String {
    format!("{SLOTS}/{tenant}/{slot}/{turn:020}")
}

fn path_of(id: &str) -> String {
    format!("{PREFIX}/{id}.json")
}

fn to_payload(job: &BatchJob) -> PutPayload {
    PutPayload::from(serde_json::to_vec_pretty(job).expect("a job serializes to JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, JobStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::object_store::open_local(dir.path()).unwrap();
        (dir, JobStore::new(store))
    }

    fn promote() -> JobWork {
        JobWork::Promote { logic_version: 2 }
    }

    #[tokio::test]
    async fn jobs_list_oldest_first_and_read_back_as_updated() {
        let (_dir, jobs) = store();
        let first = jobs.submit("t", "v", promote(), 1_000).await.unwrap();
        let second = jobs.submit("t", "v", promote(), 2_000).await.unwrap();
        let listed = jobs.list().await.unwrap();
        assert_eq!(listed, vec![first.clone(), second]);

        let mut running = first.clone();
        running.status = JobStatus::Running {
            hours_planned: Some(2),
            hours_done: 1,
            raw_rows: 7,
            attempt: 1,
            alive_at: 1_500,
        };
        jobs.update(&running).await.unwrap();
        assert_eq!(jobs.get(&first.id).await.unwrap(), Some(running));
        assert_eq!(jobs.get("../governance/CURRENT").await.unwrap(), None);
        assert_eq!(jobs.get("0-0").await.unwrap(), None);
    }

    #[tokio::test]
    async fn each_run_of_a_job_is_claimed_once() {
        let (_dir, jobs) = store();
        let job = jobs.submit("t", "v", promote(), 1_000).await.unwrap();
        assert!(jobs.claim(&job.id, 1).await.unwrap());
        assert!(!jobs.claim(&job.id, 1).await.unwrap(), "claimed twice");
        assert!(
            jobs.claim(&job.id, 2).await.unwrap(),
            "a later run is its own"
        );
        let (attempt, claimed_at) = jobs.last_claim(&job.id).await.unwrap().unwrap();
        assert_eq!(attempt, 2);
        assert!((claimed_at - tally_model::time::now_millis()).abs() < 60_000);
        assert_eq!(jobs.ids().await.unwrap(), [job.id], "claims are no jobs");
    }

    #[tokio::test]
    async fn a_tenant_cannot_queue_jobs_without_bound() {
        let (_dir, jobs) = store();
        for i in 0..MAX_UNFINISHED {
            jobs.submit("t", "v", promote(), i as Millis).await.unwrap();
        }
        let refused = jobs.submit("t", "v", promote(), 99).await.unwrap_err();
        assert!(matches!(refused, JobError::TooMany(n) if n == MAX_UNFINISHED));
        // Another tenant is not held up by this one.
        jobs.submit("u", "v", promote(), 100).await.unwrap();
        // A finished job frees its slot for the next.
        let mut finished = jobs.list().await.unwrap()[0].clone();
        finished.status = JobStatus::Done {
            summary: String::new(),
            finished_at: 0,
        };
        jobs.update(&finished).await.unwrap();
        jobs.submit("t", "v", promote(), 101).await.unwrap();
        assert!(jobs.submit("t", "v", promote(), 102).await.is_err());
    }

    #[tokio::test]
    async fn concurrent_submissions_never_pass_the_cap() {
        let (_dir, jobs) = store();
        let submissions = (0..40).map(|i| {
            let jobs = jobs.clone();
            tokio::spawn(async move { jobs.submit("t", "v", promote(), i).await })
        });
        let results = futures::future::join_all(submissions).await;
        let accepted = results
            .into_iter()
            .filter(|result| result.as_ref().unwrap().is_ok())
            .count();
        assert_eq!(
            accepted, MAX_UNFINISHED,
            "40 at once against a cap of {MAX_UNFINISHED}"
        );
        let unfinished = jobs.list().await.unwrap().len();
        assert_eq!(unfinished, MAX_UNFINISHED);
    }

    #[tokio::test]
    async fn pruning_keeps_the_newest_finished_jobs_and_every_unfinished_one() {
        let (_dir, jobs) = store();
        let queued = jobs.submit("t", "v", promote(), 0).await.unwrap();
        for i in 0..KEEP_FINISHED + 3 {
            let mut job = jobs
                .submit("t", "v", promote(), 10 + i as Millis)
                .await
                .unwrap();
            job.status = JobStatus::Done {
                summary: String::new(),
                finished_at: 0,
            };
            jobs.update(&job).await.unwrap();
        }
        let oldest_finished = jobs.list().await.unwrap()[1].id.clone();
        assert!(jobs.claim(&oldest_finished, 1).await.unwrap());
        assert_eq!(jobs.prune().await.unwrap(), 3);
        assert!(
            jobs.claim(&oldest_finished, 1).await.unwrap(),
            "a pruned job's claims went with it"
        );
        let left = jobs.list().await.unwrap();
        assert_eq!(left.len(), KEEP_FINISHED + 1);
        assert_eq!(left[0], queued);
        assert_eq!(left[1].requested_at, 13, "the oldest finished ones went");
    }
}
