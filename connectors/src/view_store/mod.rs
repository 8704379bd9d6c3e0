//! The real-time view store: absolute aggregate states per (tenant, view, bucket, dimension
//! values), written as upserts and read as ordered scans of a bucket range. The embedded
//! backend is [`EmbeddedViewStore`] (redb); ScyllaDB implements the same trait.

mod embedded;
mod key;

use std::ops::Range;

use tally_model::{AggregateState, Millis};
use thiserror::Error;

pub use embedded::EmbeddedViewStore;

/// Where one state lives.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct ViewKey {
    /// The tenant.
    pub tenant: String,
    /// The view's name.
    pub view: String,
    /// The bucket's start (ms, UTC).
    pub bucket: Millis,
    /// The values of the view's dimensions, in the view's order.
    pub dimensions: Vec<String>,
}

/// A store of view states.
pub trait ViewStore: Send + Sync + 'static {
    /// Writes absolute states, replacing what was there, all or nothing.
    fn upsert(&self, rows: &[(ViewKey, AggregateState)]) -> Result<(), ViewStoreError>;

    /// Every state of `view` for `tenant` with a bucket in `buckets`, ordered by bucket, then
    /// dimension values.
    fn scan(
        &self,
        tenant: &str,
        view: &str,
        buckets: Range<Millis>,
    ) -> Result<Vec<(ViewKey, AggregateState)>, ViewStoreError>;

    /// Deletes every state of `view` for `tenant` with a bucket before `bucket`; returns how many.
    fn delete_before(
        &self,
        tenant: &str,
        view: &str,
        bucket: Millis,
    ) -> Result<u64, ViewStoreError>;

    /// Records what a writer's states reflect (its epoch and log offsets), opaque to the store.
    fn record_progress(&self, writer: &str, progress: &[u8]) -> Result<(), ViewStoreError>;

    /// What `writer` last recorded.
    fn progress(&self, writer: &str) -> Result<Option<Vec<u8>>, ViewStoreError>;
}

/// Why a view-store operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ViewStoreError {
    /// The embedded database failed.
    #[error("embedded view store at {path}: {source}")]
    Embedded {
        /// The database file.
        path: std::path::PathBuf,
        /// The cause.
        source: Box<redb::Error>,
    },
    /// The store was opened read-only.
    #[error("the view store at {0} is open read-only; writes need the process that owns it")]
    ReadOnly(std::path::PathBuf),
    /// A stored key or state does not decode.
    #[error("view store holds a corrupt entry: {0}")]
    Corrupt(String),
}

#[cfg(test)]
mod conformance;
