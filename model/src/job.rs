//! Batch jobs asked for through the governance API: reprocess a view's range under a logic
//! version for review, or promote a reviewed version. Serving records the request; the batch
//! scheduler, the only writer of the manifest, runs it and records its progress, so the
//! console can follow a job that runs in another process.

use serde::{Deserialize, Serialize};

use crate::event::Millis;
use crate::manifest::LogicVersion;

/// One job, as stored and as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchJob {
    /// Unique, and ordered by when it was asked for.
    pub id: String,
    /// The tenant whose view it works on.
    pub tenant: String,
    /// The view.
    pub view: String,
    /// What to do.
    pub work: JobWork,
    /// When it was asked for (ms, UTC).
    pub requested_at: Millis,
    /// Where it stands.
    pub status: JobStatus,
}

/// What a job does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum JobWork {
    /// Recompute the closed hours in `[from, to)` with the view's current spec under
    /// `logic_version`, staged: queries see them only with `logic_version=N` until promoted.
    Reprocess {
        /// First hour (ms, UTC).
        from: Millis,
        /// End, exclusive (ms, UTC).
        to: Millis,
        /// The version to compute under.
        logic_version: LogicVersion,
    },
    /// Make the staged hours of `logic_version` live, in one manifest swap.
    Promote {
        /// The reviewed version.
        logic_version: LogicVersion,
    },
}

/// Where a job stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum JobStatus {
    /// Waiting for the batch scheduler.
    Queued,
    /// Running: hours done of hours planned (none planned yet while it lists the archive).
    Running {
        /// Hours to compute; none until planned.
        hours_planned: Option<u64>,
        /// Hours computed.
        hours_done: u64,
        /// Raw events read.
        raw_rows: u64,
        /// Which run of the job this is: 1, and one more each time a scheduler takes over a
        /// job whose runner stopped.
        #[serde(default = "first_attempt")]
        attempt: u32,
        /// When its runner last said it was at work (ms, UTC); a job silent for long is taken
        /// over.
        #[serde(default)]
        alive_at: Millis,
    },
    /// Finished.
    Done {
        /// What it did, for a person.
        summary: String,
        /// When it finished (ms, UTC).
        finished_at: Millis,
    },
    /// Failed; nothing it did is live.
    Failed {
        /// Why, and what to do.
        error: String,
        /// When it failed (ms, UTC).
        finished_at: Millis,
    },
}

fn first_attempt() -> u32 {
    1
}

impl JobStatus {
    /// Whether the job has finished, well or not.
    pub fn is_finished(&self) -> bool {
        matches!(self, JobStatus::Done { .. } | JobStatus::Failed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_reads_back_as_written() {
        let job = BatchJob {
            id: "0001".into(),
            tenant: "t".into(),
            view: "v".into(),
            work: JobWork::Reprocess {
                from: 0,
                to: 3_600_000,
                logic_version: 2,
            },
            requested_at: 5,
            status: JobStatus::Running {
                hours_planned: Some(3),
                hours_done: 1,
                raw_rows: 10,
                attempt: 2,
                alive_at: 7,
            },
        };
        let json = serde_json::to_string(&job).unwrap();
        assert!(json.contains(r#""kind":"reprocess""#), "{json}");
        assert!(json.contains(r#""state":"running""#), "{json}");
        assert_eq!(serde_json::from_str::<BatchJob>(&json).unwrap(), job);
        assert!(!job.status.is_finished());
        // Kept before runs were claimed: the first attempt, never heard from.
        let older = r#"{"state":"running","hours_planned":null,"hours_done":0,"raw_rows":0}"#;
        assert_eq!(
            serde_json::from_str::<JobStatus>(older).unwrap(),
            JobStatus::Running {
                hours_planned: None,
                hours_done: 0,
                raw_rows: 0,
                attempt: 1,
                alive_at: 0
            }
        );
    }
}
