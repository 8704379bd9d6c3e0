//! The archiver: consumes a log stream and writes its records as raw Parquet, one object per
//! (event hour, roll), through the object store.
//!
//! Each partition accumulates a *roll* of consecutive records until it is big or old enough.
//! Closing a roll first records it as pending in the partition's progress object, then writes
//! one object per event hour the roll touches, named by the roll's first and last offsets, and
//! only then commits the consumer position. A crash anywhere redoes the pending roll with the
//! same offsets, so its objects are replaced, never duplicated, and nothing acknowledged is
//! skipped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tally_connectors::archive::{self, ArchiveError, Logged};
use tally_connectors::log::{EventLog, Offset};
use tally_model::layout::{RawStream, archive_progress_path, raw_object_path};
use tally_model::time::HOUR_MS;
use tally_model::{BatchConfig, Event, Millis, RejectedEvent};

use crate::telemetry::{BatchJob, BatchMetrics};
use crate::{BatchError, now_millis};

pub use tally_model::layout::ARCHIVER_CONSUMER as CONSUMER;
/// Most records read from a partition at a time.
const READ_BATCH: usize = 10_000;
/// First wait before an archiver whose pass failed starts over; it doubles up to the max.
const RETRY_WAIT: Duration = Duration::from_secs(1);
/// Longest wait between retries: an attempt only opens the log and the store, and at 30 s an
/// archiver kept `/readyz` degraded for up to a minute after Kafka or S3 came back.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(5);

/// A record kind the archiver writes: accepted or rejected events.
pub trait Archivable: DeserializeOwned + Send + Sync + 'static {
    /// The raw stream it belongs to.
    const STREAM: RawStream;
    /// When ingest received it.
    fn received_at(&self) -> Millis;
    /// The time that picks its hour partition: when it was received, unless it says
    /// otherwise.
    fn partition_time(&self) -> Millis {
        self.received_at()
    }
    /// Rows of it as one Parquet object.
    fn to_parquet(rows: &[Logged<Self>]) -> Result<Vec<u8>, ArchiveError>;
}

impl Archivable for Event {
    const STREAM: RawStream = RawStream::Events;
    fn partition_time(&self) -> Millis {
        self.ts
    }
    fn received_at(&self) -> Millis {
        self.received_at
    }
    fn to_parquet(rows: &[Logged<Self>]) -> Result<Vec<u8>, ArchiveError> {
        archive::events_to_parquet(rows)
    }
}

impl Archivable for RejectedEvent {
    const STREAM: RawStream = RawStream::Rejected;
    fn received_at(&self) -> Millis {
        self.received_at
    }
    fn to_parquet(rows: &[Logged<Self>]) -> Result<Vec<u8>, ArchiveError> {
        archive::rejected_to_parquet(rows)
    }
}

/// When a roll closes.
#[derive(Debug, Clone, Copy)]
pub struct RollPolicy {
    /// At this many records.
    pub events: usize,
    /// At this many bytes of logged records.
    pub bytes: usize,
    /// When its first record has waited this long.
    pub age: Duration,
    /// The allowed disagreement of `received_at` clocks, subtracted from the archived-through
    /// time.
    pub clock_slack_ms: Millis,
}

impl RollPolicy {
    /// The policy configured in `[batch]`.
    pub fn from_config(batch: &BatchConfig) -> Self {
        RollPolicy {
            events: batch.roll_events,
            bytes: batch.roll_bytes,
            age: Duration::from_secs(batch.roll_secs),
            clock_slack_ms: batch.clock_slack_ms as Millis,
        }
    }
}

/// What the archiver has done for one partition, kept in the object store beside the data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionProgress {
    /// Partitions of the stream, so a reader knows when one has no progress yet.
    pub partitions: u32,
    /// The next offset to archive.
    pub next_offset: Offset,
    /// Every record of the partition received before this instant is archived.
    pub archived_through: Millis,
    /// A roll whose objects may be partly written: `(first, last)` offsets.
    pub pending: Option<(Offset, Offset)>,
}

/// Reads a partition's progress object.
pub async fn read_progress(
    store: &dyn ObjectStore,
    stream: RawStream,
    partition: u32,
) -> Result<Option<PartitionProgress>, BatchError> {
    let path = archive_progress_path(stream, partition);
    let bytes = match store.get(&ObjectPath::from(path.as_str())).await {
        Ok(object) => object.bytes().await,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(err) => Err(err),
    }
    .map_err(|source| BatchError::store(&path, source))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|err| BatchError::Corrupt {
            what: path,
            reason: err.to_string(),
        })
}

/// The instant before which every partition of `stream` is archived, or none while some
/// partition has no progress yet.
pub async fn archived_through(
    store: &dyn ObjectStore,
    stream: RawStream,
) -> Result<Option<Millis>, BatchError> {
    let Some(first) = read_progress(store, stream, 0).await? else {
        return Ok(None);
    };
    let mut through = first.archived_through;
    for partition in 1..first.partitions {
        match read_progress(store, stream, partition).await? {
            Some(progress) => through = through.min(progress.archived_through),
            None => return Ok(None),
        }
    }
    Ok(Some(through))
}

/// Archives one log stream.
pub struct Archiver<T: Archivable> {
    log: Arc<dyn EventLog>,
    store: Arc<dyn ObjectStore>,
    policy: RollPolicy,
    metrics: Arc<BatchMetrics>,
    /// The partitions this archiver owns: all, or a share when several processes split them.
    owned: Option<Arc<[u32]>>,
    partitions: Vec<PartitionArchive<T>>,
}

struct PartitionArchive<T> {
    partition: u32,
    progress: PartitionProgress,
    /// Records read but not yet archived, from `progress.next_offset` on.
    roll: Vec<Logged<T>>,
    roll_bytes: usize,
    roll_opened: Option<Instant>,
    /// A pending roll found on start ends exactly here, so its objects are replaced.
    redo_until: Option<Offset>,
    /// Where reading continues.
    read_from: Offset,
    last_progress_write: Option<Instant>,
}

/// What one pass over the partitions did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Records read from the log.
    pub read: usize,
    /// Records written to raw objects.
    pub archived: usize,
}

impl<T: Archivable> Archiver<T> {
    /// An archiver of every partition of `log`, resuming where the last one stopped (redoing
    /// its pending roll).
    pub async fn open(
        log: Arc<dyn EventLog>,
        store: Arc<dyn ObjectStore>,
        policy: RollPolicy,
        metrics: Arc<BatchMetrics>,
    ) -> Result<Self, BatchError> {
        Self::open_owned(log, store, policy, metrics, None).await
    }

    /// An archiver of the partitions `owned` of `log` (all when `None`), for processes that
    /// split a stream between them: each partition's position, progress object and raw
    /// objects are its own, so archivers of disjoint partitions never meet. Partitions past
    /// the log's are left out.
    pub async fn open_owned(
        log: Arc<dyn EventLog>,
        store: Arc<dyn ObjectStore>,
        policy: RollPolicy,
        metrics: Arc<BatchMetrics>,
        owned: Option<Arc<[u32]>>,
    ) -> Result<Self, BatchError> {
        log.register_consumer(CONSUMER)?;
        let count = log.partitions();
        let first_offsets = log.stats()?.partitions;
        let mut partitions = Vec::with_capacity(count as usize);
        let archived = (0..count).filter(|p| owned.as_ref().is_none_or(|owned| owned.contains(p)));
        for partition in archived {
            let committed = log.committed(CONSUMER, partition)?;
            let first_kept = first_offsets
                .get(partition as usize)
                .map_or(0, |stats| stats.first_offset);
            let next_offset = committed.unwrap_or(first_kept);
            let stored = read_progress(store.as_ref(), T::STREAM, partition).await?;
            let redo_until = stored
                .as_ref()
                .and_then(|progress| progress.pending)
                .filter(|(first, _)| *first == next_offset)
                .map(|(_, last)| last);
            if let Some(last) = redo_until {
                tracing::info!(
                    stream = T::STREAM.name(),
                    partition,
                    first = next_offset,
                    last,
                    "redoing a roll interrupted before its commit"
                );
            }
            let progress = PartitionProgress {
                partitions: count,
                next_offset,
                archived_through: stored.map_or(Millis::MIN, |p| p.archived_through),
                pending: None,
            };
            partitions.push(PartitionArchive {
                partition,
                progress,
                roll: Vec::new(),
                roll_bytes: 0,
                roll_opened: None,
                redo_until,
                read_from: next_offset,
                last_progress_write: None,
            });
        }
        Ok(Archiver {
            log,
            store,
            policy,
            metrics,
            owned,
            partitions,
        })
    }

    /// Reads what is new in every partition and closes the rolls that are due. With `flush`,
    /// closes every non-empty roll (used before a clean stop and by `tally archive --once`).
    pub async fn pass(&mut self, flush: bool) -> Result<PassReport, BatchError> {
        let mut report = PassReport::default();
        for index in 0..self.partitions.len() {
            let read = self.read_partition(index)?;
            report.read += read;
            let caught_up = read < READ_BATCH;
            let part = &self.partitions[index];
            let due = part.redo_until.is_some_and(|last| part.read_from > last)
                || part.roll.len() >= self.policy.events
                || part.roll_bytes >= self.policy.bytes
                || part
                    .roll_opened
                    .is_some_and(|at| at.elapsed() >= self.policy.age)
                || (flush && !part.roll.is_empty());
            if due {
                report.archived += self.close_roll(index, caught_up).await?;
            } else if caught_up && part.roll.is_empty() {
                self.note_idle(index).await?;
            }
        }
        Ok(report)
    }

    /// Reads into the partition's roll, stopping at a pending roll's end.
    fn read_partition(&mut self, index: usize) -> Result<usize, BatchError> {
        let part = &mut self.partitions[index];
        // Rolls hold at most `events` records, so a roll's offsets do not depend on how the
        // log was read, and a redone roll ends where the interrupted one did.
        let mut max = READ_BATCH.min(self.policy.events.saturating_sub(part.roll.len()));
        if let Some(last) = part.redo_until {
            max = max.min((last + 1).saturating_sub(part.read_from) as usize);
        }
        if max == 0 {
            return Ok(0);
        }
        let entries = self.log.read(part.partition, part.read_from, max)?;
        for entry in &entries {
            match entry.decode::<T>() {
                Ok(record) => {
                    part.roll.push(Logged {
                        partition: part.partition,
                        offset: entry.offset,
                        record,
                    });
                    part.roll_bytes += entry.payload.len();
                }
                Err(err) => {
                    // Ingest writes only records it serialized itself; this is damage, and
                    // keeping the archive moving matters more than one unreadable record.
                    self.metrics.undecodable_record();
                    tracing::error!(
                        stream = T::STREAM.name(),
                        partition = part.partition,
                        offset = entry.offset,
                        %err,
                        "skipping a log record that does not decode"
                    );
                }
            }
            part.read_from = entry.offset + 1;
        }
        if !entries.is_empty() && part.roll_opened.is_none() {
            part.roll_opened = Some(Instant::now());
        }
        Ok(entries.len())
    }

    /// Writes the roll's objects, then commits the log position. Returns records written.
    async fn close_roll(&mut self, index: usize, caught_up: bool) -> Result<usize, BatchError> {
        let part = &mut self.partitions[index];
        let first = part.progress.next_offset;
        let Some(last) = part.read_from.checked_sub(1).filter(|last| *last >= first) else {
            return Ok(0);
        };
        let roll = std::mem::take(&mut part.roll);
        part.progress.pending = Some((first, last));
        self.write_progress(index).await?;
        let part = &mut self.partitions[index];

        let mut by_hour: BTreeMap<Millis, Vec<Logged<T>>> = BTreeMap::new();
        for logged in roll {
            let hour = logged.record.partition_time().div_euclid(HOUR_MS) * HOUR_MS;
            by_hour.entry(hour).or_default().push(logged);
        }
        let mut written = 0;
        let mut latest_received = Millis::MIN;
        let encoded = tokio::task::spawn_blocking(move || {
            by_hour
                .into_iter()
                .map(|(hour, rows)| {
                    let received = rows.iter().map(|logged| logged.record.received_at()).max();
                    Ok((hour, rows.len(), received, T::to_parquet(&rows)?))
                })
                .collect::<Result<Vec<_>, ArchiveError>>()
        })
        .await
        .expect("encoding Parquet does not panic")?;
        for (hour, rows, received, bytes) in encoded {
            let path = raw_object_path(T::STREAM, hour, part.partition, first, last);
            self.metrics.raw_object_written(bytes.len());
            self.store
                .put(&ObjectPath::from(path.as_str()), PutPayload::from(bytes))
                .await
                .map_err(|source| BatchError::store(&path, source))?;
            written += rows;
            latest_received = latest_received.max(received.unwrap_or(Millis::MIN));
        }
        self.log.commit(CONSUMER, part.partition, last + 1)?;
        // Archived for good once the position is committed: a failure of the progress write
        // below no longer redoes the roll, so counting after it would miss these events.
        self.metrics.events_archived(T::STREAM, written);

        part.progress.next_offset = last + 1;
        part.progress.pending = None;
        // Caught up: everything received until a moment ago is archived. Otherwise, up to the
        // newest record written (receive times are ordered in the log up to the clock slack).
        let through = if caught_up {
            now_millis()
        } else {
            latest_received
        };
        self.advance_progress(index, through).await?;
        let part = &mut self.partitions[index];
        part.roll_bytes = 0;
        part.roll_opened = None;
        part.redo_until = None;
        Ok(written)
    }

    /// An idle, caught-up partition: everything received until now is archived. Recorded at
    /// most once a second, so an idle archive costs one small write per partition per second.
    async fn note_idle(&mut self, index: usize) -> Result<(), BatchError> {
        let part = &mut self.partitions[index];
        if part
            .last_progress_write
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return Ok(());
        }
        self.advance_progress(index, now_millis()).await
    }

    /// Records that what was received until `through`, less the clock slack, is archived,
    /// and writes the partition's progress.
    async fn advance_progress(&mut self, index: usize, through: Millis) -> Result<(), BatchError> {
        let part = &mut self.partitions[index];
        part.progress.archived_through = part
            .progress
            .archived_through
            .max(through.saturating_sub(self.policy.clock_slack_ms));
        self.write_progress(index).await?;
        self.partitions[index].last_progress_write = Some(Instant::now());
        Ok(())
    }

    /// Writes a partition's progress object.
    async fn write_progress(&self, index: usize) -> Result<(), BatchError> {
        let part = &self.partitions[index];
        let path = archive_progress_path(T::STREAM, part.partition);
        let body = serde_json::to_vec(&part.progress).expect("progress serializes");
        self.store
            .put(&ObjectPath::from(path.as_str()), PutPayload::from(body))
            .await
            .map(drop)
            .map_err(|source| BatchError::store(&path, source))
    }

    /// The archiver as [`Archiver::open`] makes it, once the log and the store answer again;
    /// the last error once `stop` is set.
    async fn reopen(
        self,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<Self, BatchError> {
        let Archiver {
            log,
            store,
            policy,
            metrics,
            owned,
            ..
        } = self;
        let mut wait = RETRY_WAIT;
        loop {
            let _ = tokio::time::timeout(wait, stop.changed()).await;
            let reopening = Archiver::open_owned(
                log.clone(),
                store.clone(),
                policy,
                metrics.clone(),
                owned.clone(),
            );
            match reopening.await {
                Err(err) if !*stop.borrow() => {
                    metrics.job_failed(BatchJob::Archiver(T::STREAM), &err);
                    wait = (wait * 2).min(MAX_RETRY_WAIT);
                }
                reopened => return reopened,
            }
        }
    }

    /// Runs passes until `stop` resolves, then flushes every open roll. When a pass fails (the
    /// log or the object store is unavailable) it reports the job failing, waits, and starts
    /// over from what is durable, as after a restart, so a roll cut short is redone, not
    /// half-kept.
    pub async fn run(
        mut self,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), BatchError> {
        let job = BatchJob::Archiver(T::STREAM);
        loop {
            let report = match self.pass(false).await {
                Ok(report) => {
                    self.metrics.job_succeeded(job);
                    report
                }
                Err(err) => {
                    tracing::warn!(stream = T::STREAM.name(), error = %err, "archiving failed; the archiver retries from what is durable");
                    self.metrics.job_failed(job, &err);
                    self = self.reopen(&mut stop).await?;
                    continue;
                }
            };
            if *stop.borrow() {
                self.pass(true).await?;
                return Ok(());
            }
            if report.read == 0 {
                let idle = tokio::time::sleep(Duration::from_millis(100));
                tokio::select! {
                    _ = idle => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}
