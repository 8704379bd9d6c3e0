//! The real-time view store: absolute aggregate states per (tenant, view, bucket, dimension
//! values), written as upserts and read as ordered scans of a bucket range. The embedded
//! backend is [`EmbeddedViewStore`] (redb); [`ScyllaViewStore`] keeps them in ScyllaDB.
//! [`open`] picks one from the configured URL.

mod embedded;
mod key;
pub mod live;
pub mod scylla;

use std::ops::Range;

use tally_model::{AggregateState, Millis};
use thiserror::Error;

pub use embedded::EmbeddedViewStore;
pub use scylla::ScyllaViewStore;

/// How a process uses the view store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The speed layer: it writes.
    ReadWrite,
    /// A reader beside the writer (serving, `tally views get`). The embedded store opens
    /// read-only; ScyllaDB serves readers and writers alike.
    ReadOnly,
}

/// Opens the view store `url` names: empty for the embedded store at `embedded_path`, or
/// `scylla://host:port[,host:port...]/keyspace[?replication_factor=N]`.
pub fn open(
    url: &str,
    embedded_path: &std::path::Path,
    access: Access,
) -> Result<std::sync::Arc<dyn ViewStore>, ViewStoreError> {
    Ok(match (url, access) {
        ("", Access::ReadWrite) => std::sync::Arc::new(EmbeddedViewStore::open(embedded_path)?),
        ("", Access::ReadOnly) => {
            std::sync::Arc::new(EmbeddedViewStore::open_read_only(embedded_path)?)
        }
        (url, _) if url.starts_with(scylla::SCHEME) => {
            std::sync::Arc::new(ScyllaViewStore::connect(url)?)
        }
        (url, _) => {
            return Err(ViewStoreError::BadUri {
                uri: url.to_owned(),
                why: format!(
                    "leave it empty for the embedded store, or use {}host:9042/keyspace",
                    scylla::SCHEME
                ),
            });
        }
    })
}

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
    /// Writes absolute states, replacing what was there. The embedded store applies a call
    /// all or nothing; ScyllaDB applies each partition's share (one UTC day of one view) as
    /// one mutation. Either way a failed call may be repeated whole: states are absolute.
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

    /// A number that changes whenever `view`'s states for `tenant` change, so a reader may
    /// keep what it derived from a scan for as long as the number stays; `None` when the
    /// store keeps none, and every read must scan.
    fn generation(&self, tenant: &str, view: &str) -> Result<Option<u64>, ViewStoreError> {
        let _ = (tenant, view);
        Ok(None)
    }

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
    /// ScyllaDB failed or could not be reached.
    #[error("ScyllaDB view store, {operation}: {source}")]
    Scylla {
        /// What the store was doing.
        operation: String,
        /// The driver's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The view store URL cannot be used.
    #[error("view store URL {uri:?}: {why}")]
    BadUri {
        /// The URL as given.
        uri: String,
        /// What is wrong with it.
        why: String,
    },
    /// A stored key or state does not decode.
    #[error("view store holds a corrupt entry: {0}")]
    Corrupt(String),
}

impl ViewStoreError {
    /// Whether the same call may succeed later: ScyllaDB unreachable, timing out or
    /// overloaded, or the embedded database's disk failing an I/O. Writers retry these with
    /// backoff; the others (a read-only store, a bad URL, corruption) will not change.
    pub fn is_transient(&self) -> bool {
        match self {
            ViewStoreError::Scylla { .. } => true,
            ViewStoreError::Embedded { source, .. } => matches!(**source, redb::Error::Io(_)),
            ViewStoreError::ReadOnly(_)
            | ViewStoreError::BadUri { .. }
            | ViewStoreError::Corrupt(_) => false,
        }
    }
}

#[cfg(test)]
mod conformance;
