//! Tally's batch layer: the master dataset and the views recomputed from it.
//!
//! - [`archiver`]: the [`Archiver`] consumes a log stream and writes raw Parquet objects,
//!   hive-partitioned by event hour and named by log offsets, committing its log position
//!   only once they are durable.
//! - [`recompute`]: [`Recompute`] reads closed raw hours, dedupes, builds every view spec's
//!   aggregate states with a Polars plan ([`plan`]) and publishes a manifest with the horizon.
//!   Reprocessing is the same job under a new logic version over a chosen range.
//! - [`scheduler`]: runs recompute every few minutes, never two at once, and the batch jobs
//!   governance asks for ([`jobs`]): a reprocess staged for review, a promotion.
//!
//! ```no_run
//! # async fn demo(store: std::sync::Arc<dyn object_store::ObjectStore>, catalog: std::sync::Arc<tally_model::Catalog>) -> Result<(), tally_batch_layer::BatchError> {
//! use tally_batch_layer::{Recompute, RunRequest, telemetry::BatchMetrics};
//!
//! let metrics = BatchMetrics::register(&mut Default::default());
//! let recompute = Recompute::new(store, catalog, 24 * 3_600_000, metrics);
//! let summary = recompute.run(&RunRequest::default(), &|_progress| {}).await?;
//! println!("horizon {}", summary.horizon);
//! # Ok(()) }
//! ```

pub mod archiver;
pub mod jobs;
pub mod plan;
pub mod recompute;
pub mod retention;
pub mod scheduler;
pub mod sweep;
pub mod telemetry;

#[cfg(test)]
mod tests;

use polars::prelude::PolarsError;
use tally_connectors::archive::ArchiveError;
use tally_connectors::batch_views::BatchViewsError;
use tally_connectors::log::LogError;
use tally_model::LogicVersion;
use thiserror::Error;

pub use archiver::{Archivable, Archiver, RollPolicy};
pub use recompute::{Recompute, RunProgress, RunRequest};
pub use scheduler::Scheduler;
pub(crate) use tally_model::time::now_millis;

/// Why a batch job failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The object store failed.
    #[error("object store, at {path}: {source}")]
    Store {
        /// The object or prefix.
        path: String,
        /// The cause.
        source: object_store::Error,
    },
    /// The event log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Raw Parquet could not be written.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// Batch views or the manifest could not be read or published.
    #[error(transparent)]
    BatchViews(#[from] BatchViewsError),
    /// Something stored does not decode.
    #[error("{what} is corrupt: {reason}")]
    Corrupt {
        /// What was read.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// A view's plan failed.
    #[error("computing view {view} for the hour of {hour}: {source}")]
    Plan {
        /// The view (`tenant/view`).
        view: String,
        /// The hour.
        hour: String,
        /// The cause.
        source: PolarsError,
    },
    /// Polars failed outside a view's plan.
    #[error("polars: {0}")]
    Polars(#[from] PolarsError),
    /// A promotion named a version with no staged hour.
    #[error(
        "logic version {version} of {view} has no staged hour to promote; reprocess a range under it for review first"
    )]
    NothingStaged {
        /// The view (`tenant/view`).
        view: String,
        /// The version asked for.
        version: LogicVersion,
    },
    /// A reprocess asked for a logic version already computed from another spec.
    #[error(
        "logic version {version} of {view} was computed from a different spec; reprocess with --logic-version {next}"
    )]
    VersionTaken {
        /// The view (`tenant/view`).
        view: String,
        /// The version asked for.
        version: LogicVersion,
        /// The next free version.
        next: LogicVersion,
    },
    /// A reprocess asked for a logic version that is neither registered nor the next one.
    #[error(
        "{view} has no logic version {version}; reprocess as an existing version of the same spec, or as the next one, {next}"
    )]
    VersionUnknown {
        /// The view (`tenant/view`).
        view: String,
        /// The version asked for.
        version: LogicVersion,
        /// The next free version.
        next: LogicVersion,
    },
}

impl BatchError {
    pub(crate) fn store(path: &str, source: object_store::Error) -> Self {
        BatchError::Store {
            path: path.to_owned(),
            source,
        }
    }
}
