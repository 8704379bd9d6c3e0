//! Tally's outside world, behind traits, each with an embedded default that needs no server:
//!
//! - [`log`]: the event log. [`log::Spool`] is the embedded, durable, partitioned log on
//!   local disk; Kafka implements the same [`log::EventLog`] trait.
//! - [`view_store`]: real-time view states. [`view_store::EmbeddedViewStore`] keeps them in
//!   a redb file; ScyllaDB implements the same [`view_store::ViewStore`] trait.
//! - [`object_store`]: raw Parquet partitions and batch views, through the `object_store`
//!   crate: a local folder by default, S3 or HDFS in production.
//! - [`archive`]: the raw archive's Parquet schema, written by the archiver and read by
//!   recompute, search and notebooks.
//! - [`batch_views`]: batch view states and the manifest that publishes them atomically.
//! - [`catalog`]: the tenants, registries, views and keys every service reads, swappable.
//! - [`jobs`]: the batch jobs governance asks for and the batch scheduler runs.
//! - [`rate_limit`]: how often one caller (an API key, a client address) may call.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tally_connectors::log::LogError> {
//! use tally_connectors::log::{AppendRecord, EventLog, Spool, SpoolOptions};
//!
//! let spool = Spool::open("tally-data/log/events".as_ref(), SpoolOptions::default())?;
//! let offsets = spool.append(vec![AppendRecord { partition: 0, payload: b"{}".to_vec() }]).await?;
//! assert_eq!(spool.read(0, offsets[0], 1)?[0].payload, b"{}");
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod archive;
pub mod batch_views;
pub mod catalog;
pub mod jobs;
pub mod log;
pub mod object_store;
pub mod rate_limit;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod view_store;
