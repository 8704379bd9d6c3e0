//! The event log: partitioned, append-only, readable by (partition, offset), with consumer
//! positions. The embedded backend is the [`Spool`]; [`KafkaLog`] reads and writes a Kafka
//! topic through the same trait.

pub mod kafka;
mod segment;
mod spool;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use serde::Serialize;
use tally_model::Millis;
use thiserror::Error;

pub use kafka::KafkaLog;
pub use spool::{Spool, SpoolOptions};

/// A record's position in its partition: 0, 1, 2, ... with no gaps.
pub type Offset = u64;

pub use tally_model::config::MAX_RECORD_BYTES;

/// One record to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendRecord {
    /// The partition it goes to (see [`tally_model::partition_of`]).
    pub partition: u32,
    /// Its bytes.
    pub payload: Vec<u8>,
}

impl AppendRecord {
    /// An event's record: its JSON, in the partition of its tenant and user.
    pub fn event(event: &tally_model::Event, partitions: u32) -> Self {
        AppendRecord {
            partition: tally_model::partition_of(&event.tenant, &event.user_id, partitions),
            payload: serde_json::to_vec(event).expect("an event serializes to JSON"),
        }
    }
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Its offset in the partition.
    pub offset: Offset,
    /// Its bytes.
    pub payload: Vec<u8>,
}

impl LogEntry {
    /// Decodes the JSON payload. It checks UTF-8 once for the whole record, then parses text:
    /// faster than parsing bytes, which checks each string on its own.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        match std::str::from_utf8(&self.payload) {
            Ok(text) => serde_json::from_str(text),
            // Parsing the bytes reports where the bad byte is.
            Err(_) => serde_json::from_slice(&self.payload),
        }
    }
}

/// Resolves once every appended record is durable, to their offsets in input order.
pub type AppendFuture = Pin<Box<dyn Future<Output = Result<Vec<Offset>, LogError>> + Send>>;

/// A partitioned, durable, replayable log of records.
pub trait EventLog: Send + Sync + 'static {
    /// Number of partitions.
    fn partitions(&self) -> u32;

    /// Appends records; the future resolves only once all of them are durable.
    fn append(&self, records: Vec<AppendRecord>) -> AppendFuture;

    /// Reads up to `max` durable records of `partition` from offset `from` on. Fewer (or none)
    /// at the end of the partition.
    fn read(&self, partition: u32, from: Offset, max: usize) -> Result<Vec<LogEntry>, LogError>;

    /// Registers a consumer: from now on, retention keeps what it has not consumed.
    fn register_consumer(&self, consumer: &str) -> Result<(), LogError>;

    /// Records that `consumer` has processed `partition` up to (not including) `next`.
    fn commit(&self, consumer: &str, partition: u32, next: Offset) -> Result<(), LogError>;

    /// Where `consumer` is in `partition`, if it ever committed there.
    fn committed(&self, consumer: &str, partition: u32) -> Result<Option<Offset>, LogError>;

    /// Offsets, record counts and sizes per partition.
    fn stats(&self) -> Result<LogStats, LogError>;

    /// Whether appends can succeed; an error says why not (a spool partition whose writer
    /// stopped after an I/O error refuses every append until a restart). Reads may still.
    fn appendable(&self) -> Result<(), LogError> {
        Ok(())
    }

    /// The first offset of `partition` whose record was received at or after `time`, when
    /// the log indexes receive times (Kafka's record timestamps); `None` when it does not,
    /// and the caller searches the records themselves.
    fn offset_for_time(&self, partition: u32, time: Millis) -> Result<Option<Offset>, LogError> {
        let _ = (partition, time);
        Ok(None)
    }
}

/// Consumer names are letters, digits, `-`, `_` and `.`: they name files and Kafka groups.
fn check_consumer_name(name: &str) -> Result<(), LogError> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if valid {
        Ok(())
    } else {
        Err(LogError::ConsumerName(name.to_owned()))
    }
}

/// Per-partition figures of a log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LogStats {
    /// Records across partitions.
    pub records: u64,
    /// Bytes on disk across partitions.
    pub bytes: u64,
    /// One entry per partition.
    pub partitions: Vec<PartitionStats>,
}

impl LogStats {
    /// The offset the next record of each partition will get, in partition order: the log's
    /// end, which a consumer has caught up with once it reflects these.
    pub fn next_offsets(&self) -> Vec<Offset> {
        self.partitions.iter().map(|p| p.next_offset).collect()
    }
}

/// Figures of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PartitionStats {
    /// The partition.
    pub partition: u32,
    /// Oldest offset still kept.
    pub first_offset: Offset,
    /// Offset the next record will get.
    pub next_offset: Offset,
    /// Records kept (`next_offset - first_offset`).
    pub records: u64,
    /// Bytes on disk.
    pub bytes: u64,
    /// Segment files.
    pub segments: usize,
}

/// Why a log operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LogError {
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Another process holds the spool.
    #[error("the spool at {0} is in use by another process; stop it or use another --data-dir")]
    Locked(PathBuf),
    /// The spool was opened read-only.
    #[error("the spool at {0} is open read-only; appends need the process that owns it")]
    ReadOnly(PathBuf),
    /// The spool on disk has another partition count than configured.
    #[error(
        "the spool at {path} has {found} partitions but the configuration says {configured}; set log.partitions = {found} (repartitioning is not supported)"
    )]
    PartitionCount {
        /// The spool folder.
        path: PathBuf,
        /// Partitions on disk.
        found: u32,
        /// Partitions configured.
        configured: u32,
    },
    /// No such partition.
    #[error("partition {partition} does not exist; the log has {partitions}")]
    NoSuchPartition {
        /// The partition asked for.
        partition: u32,
        /// How many there are.
        partitions: u32,
    },
    /// The offset was deleted by retention.
    #[error(
        "offset {offset} of partition {partition} was deleted by retention; the oldest kept is {first}"
    )]
    OffsetDeleted {
        /// The partition.
        partition: u32,
        /// The offset asked for.
        offset: Offset,
        /// The oldest offset kept.
        first: Offset,
    },
    /// A record is over [`MAX_RECORD_BYTES`].
    #[error("record of {0} bytes is over the log's limit of {MAX_RECORD_BYTES}")]
    RecordTooLarge(usize),
    /// A sealed segment fails its checksum.
    #[error("corrupt record at offset {offset} in {path}: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// The record's offset.
        offset: Offset,
        /// What is wrong.
        reason: String,
    },
    /// The partition's writer stopped after an unrecoverable I/O error.
    #[error(
        "partition {0}'s writer has stopped after an I/O error; restart the process (see the log for the cause)"
    )]
    WriterStopped(u32),
    /// The log's server did not answer (a broker outage): retry later.
    #[error("the event log is unavailable: {0}")]
    Unavailable(String),
    /// The log's server refused a request or is misconfigured.
    #[error("the event log: {0}")]
    Backend(String),
    /// A consumer name is unusable.
    #[error("invalid consumer name {0:?}: use letters, digits, '-', '_' or '.'")]
    ConsumerName(String),
}

#[cfg(test)]
mod conformance;

#[cfg(test)]
mod tests {
    use super::LogEntry;

    #[test]
    fn entries_decode_from_text_and_say_where_bytes_are_bad() {
        let entry = |payload: &[u8]| LogEntry {
            offset: 0,
            payload: payload.to_vec(),
        };
        let decoded: serde_json::Value = entry(b"{\"tag\":\"caf\\u00e9 \xc3\xa9\"}")
            .decode()
            .unwrap();
        assert_eq!(decoded["tag"], "café é");
        let error = entry(b"{\"tag\":\"\xff\"}")
            .decode::<serde_json::Value>()
            .unwrap_err()
            .to_string();
        assert!(error.contains("column"), "{error}");
    }
}
