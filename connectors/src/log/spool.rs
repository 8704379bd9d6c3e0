//! The spool: the embedded event log, on local disk.
//!
//! Each partition is a folder of segment files named by their first offset. One writer
//! thread per partition does group commit: it takes every append waiting in its queue,
//! writes them with one `write`, makes them durable with one `fdatasync`, and only then
//! publishes the new end offset to readers and answers the appenders. A crash can only tear
//! the unacknowledged tail of the last segment, which opening the spool cuts back to the last
//! whole record.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tally_model::config::LogConfig;
use tokio::sync::{mpsc, oneshot};

use super::segment::{self, Frame, SegmentReader};
use super::{
    AppendFuture, AppendRecord, EventLog, LogEntry, LogError, LogStats, MAX_RECORD_BYTES, Offset,
    PartitionStats,
};

/// Called with the duration of every `fdatasync` the spool makes.
pub type FsyncObserver = Arc<dyn Fn(Duration) + Send + Sync>;

/// How to open a spool for writing.
#[derive(Clone)]
pub struct SpoolOptions {
    /// Partitions; must match what is on disk.
    pub partitions: u32,
    /// A segment rolls over past this size.
    pub segment_bytes: u64,
    /// Sealed segments older than this may be deleted once every consumer is past them.
    pub retention: Duration,
    /// Told the duration of every fdatasync, for metrics.
    pub on_fsync: Option<FsyncObserver>,
}

impl SpoolOptions {
    /// The event stream's options from the `[log]` configuration.
    pub fn from_config(log: &LogConfig) -> Self {
        SpoolOptions {
            partitions: log.partitions,
            segment_bytes: log.segment_bytes,
            retention: Duration::from_secs(log.retention_hours.saturating_mul(3600)),
            on_fsync: None,
        }
    }
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions::from_config(&LogConfig::default())
    }
}

/// The embedded event log. See the module docs.
pub struct Spool {
    dir: PathBuf,
    partitions: Vec<Arc<Partition>>,
    writers: Vec<mpsc::UnboundedSender<AppendRequest>>,
    writer_threads: Vec<JoinHandle<()>>,
    consumers: Mutex<ConsumerPositions>,
    retention: Duration,
    read_only: bool,
    _lock: Option<File>,
}

struct Partition {
    id: u32,
    dir: PathBuf,
    state: Mutex<PartitionState>,
    cursors: Mutex<Vec<ReadCursor>>,
}

struct PartitionState {
    /// Sorted by base offset; never empty.
    segments: Vec<SegmentInfo>,
    /// The durable end: readers see offsets below it.
    next_offset: Offset,
}

#[derive(Clone, Copy)]
struct SegmentInfo {
    base: Offset,
    bytes: u64,
}

/// Where a sequential reader left off, so its next read seeks instead of scanning.
#[derive(Clone, Copy)]
struct ReadCursor {
    offset: Offset,
    segment_base: Offset,
    position: u64,
}

struct AppendRequest {
    payloads: Vec<Vec<u8>>,
    reply: oneshot::Sender<Result<Offset, LogError>>,
}

#[derive(Default, Serialize, Deserialize)]
struct ConsumerPositions(BTreeMap<String, BTreeMap<u32, Offset>>);

#[derive(Serialize, Deserialize)]
struct SpoolMeta {
    partitions: u32,
}

const META_FILE: &str = "meta.json";
const CONSUMERS_FILE: &str = "consumers.json";
const LOCK_FILE: &str = "LOCK";
const MAX_CURSORS: usize = 8;

impl Spool {
    /// Opens (or creates) the spool in `dir` for writing: takes the folder's lock, cuts any
    /// torn tail back to the last whole record, and starts one writer thread per partition.
    pub fn open(dir: &Path, options: SpoolOptions) -> Result<Spool, LogError> {
        fs::create_dir_all(dir).map_err(io("create spool folder", dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("open", &lock_path))?;
        if lock.try_lock().is_err() {
            return Err(LogError::Locked(dir.to_owned()));
        }
        let partitions = match read_meta(dir)? {
            Some(meta) if meta.partitions != options.partitions => {
                return Err(LogError::PartitionCount {
                    path: dir.to_owned(),
                    found: meta.partitions,
                    configured: options.partitions,
                });
            }
            Some(meta) => meta.partitions,
            None => {
                write_json_atomically(
                    &dir.join(META_FILE),
                    &SpoolMeta {
                        partitions: options.partitions,
                    },
                )?;
                options.partitions
            }
        };
        let mut spool = Spool::load(dir, partitions, false, Some(lock))?;
        spool.retention = options.retention;
        for partition in &spool.partitions {
            let (sender, receiver) = mpsc::unbounded_channel();
            let writer = PartitionWriter::open(
                partition.clone(),
                options.segment_bytes,
                options.on_fsync.clone(),
            )?;
            let thread = std::thread::Builder::new()
                .name(format!("spool-writer-{}", partition.id))
                .spawn(move || writer.run(receiver))
                .map_err(io("start writer thread for", dir))?;
            spool.writers.push(sender);
            spool.writer_threads.push(thread);
        }
        Ok(spool)
    }

    /// Opens the spool in `dir` to read only, beside a running writer: no lock, no repair;
    /// a torn tail is simply not read. Sees what was durable when it opened.
    pub fn open_read_only(dir: &Path) -> Result<Spool, LogError> {
        let Some(meta) = read_meta(dir)? else {
            return Err(LogError::Io {
                action: "find a spool in",
                path: dir.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no meta.json: is --data-dir right?",
                ),
            });
        };
        Spool::load(dir, meta.partitions, true, None)
    }

    fn load(
        dir: &Path,
        partitions: u32,
        read_only: bool,
        lock: Option<File>,
    ) -> Result<Spool, LogError> {
        let partitions = (0..partitions)
            .map(|id| {
                Partition::load(id, &dir.join(format!("partition-{id:04}")), read_only)
                    .map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let consumers_path = dir.join(CONSUMERS_FILE);
        let consumers = match fs::read(&consumers_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| LogError::Corrupt {
                path: consumers_path.clone(),
                offset: 0,
                reason: err.to_string(),
            })?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => ConsumerPositions::default(),
            Err(source) => {
                return Err(LogError::Io {
                    action: "read",
                    path: consumers_path,
                    source,
                });
            }
        };
        Ok(Spool {
            dir: dir.to_owned(),
            partitions,
            writers: Vec::new(),
            writer_threads: Vec::new(),
            consumers: Mutex::new(consumers),
            retention: SpoolOptions::default().retention,
            read_only,
            _lock: lock,
        })
    }

    /// The spool's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Deletes sealed segments older than the retention period that every registered
    /// consumer has read past, oldest first. Returns how many segments it deleted.
    pub fn enforce_retention(&self, now: SystemTime) -> Result<usize, LogError> {
        if self.read_only {
            return Err(LogError::ReadOnly(self.dir.clone()));
        }
        let mut deleted = 0;
        for partition in &self.partitions {
            let consumed = {
                let consumers = lock(&self.consumers);
                consumers
                    .0
                    .values()
                    .map(|positions| positions.get(&partition.id).copied().unwrap_or(0))
                    .min()
            };
            let mut state = lock(&partition.state);
            while state.segments.len() > 1 {
                let sealed_end = state.segments[1].base;
                if consumed.is_some_and(|position| position < sealed_end) {
                    break;
                }
                let path = partition
                    .dir
                    .join(segment::segment_name(state.segments[0].base));
                let modified = fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .map_err(io("stat", &path))?;
                if now.duration_since(modified).unwrap_or_default() < self.retention {
                    break;
                }
                fs::remove_file(&path).map_err(io("delete expired segment", &path))?;
                state.segments.remove(0);
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    fn partition(&self, partition: u32) -> Result<&Arc<Partition>, LogError> {
        self.partitions
            .get(partition as usize)
            .ok_or(LogError::NoSuchPartition {
                partition,
                partitions: self.partitions.len() as u32,
            })
    }

    fn save_consumers(&self, consumers: &ConsumerPositions) -> Result<(), LogError> {
        if self.read_only {
            return Err(LogError::ReadOnly(self.dir.clone()));
        }
        write_json_atomically(&self.dir.join(CONSUMERS_FILE), consumers)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        // Closing the queues lets each writer finish what it holds and stop.
        self.writers.clear();
        for thread in self.writer_threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl EventLog for Spool {
    fn partitions(&self) -> u32 {
        self.partitions.len() as u32
    }

    fn appendable(&self) -> Result<(), LogError> {
        match self.writers.iter().position(|writer| writer.is_closed()) {
            Some(stopped) => Err(LogError::WriterStopped(stopped as u32)),
            None => Ok(()),
        }
    }

    fn append(&self, records: Vec<AppendRecord>) -> AppendFuture {
        if self.read_only {
            return Box::pin(std::future::ready(Err(LogError::ReadOnly(
                self.dir.clone(),
            ))));
        }
        let mut groups: BTreeMap<u32, (Vec<usize>, Vec<Vec<u8>>)> = BTreeMap::new();
        for (index, record) in records.into_iter().enumerate() {
            if record.payload.len() > MAX_RECORD_BYTES {
                return Box::pin(std::future::ready(Err(LogError::RecordTooLarge(
                    record.payload.len(),
                ))));
            }
            if let Err(err) = self.partition(record.partition) {
                return Box::pin(std::future::ready(Err(err)));
            }
            let (indices, payloads) = groups.entry(record.partition).or_default();
            indices.push(index);
            payloads.push(record.payload);
        }
        let total = groups.values().map(|(indices, _)| indices.len()).sum();
        let mut pending = Vec::with_capacity(groups.len());
        for (partition, (indices, payloads)) in groups {
            let (reply, receiver) = oneshot::channel();
            // A send fails only if the writer stopped; the dropped reply then reports it.
            let _ = self.writers[partition as usize].send(AppendRequest { payloads, reply });
            pending.push((partition, indices, receiver));
        }
        Box::pin(async move {
            let mut offsets = vec![0; total];
            for (partition, indices, receiver) in pending {
                let first = receiver
                    .await
                    .map_err(|_| LogError::WriterStopped(partition))??;
                for (index, offset) in indices.into_iter().zip(first..) {
                    offsets[index] = offset;
                }
            }
            Ok(offsets)
        })
    }

    fn read(&self, partition: u32, from: Offset, max: usize) -> Result<Vec<LogEntry>, LogError> {
        let partition = self.partition(partition)?;
        if self.read_only && from >= lock(&partition.state).next_offset {
            partition.follow()?;
        }
        partition.read(from, max)
    }

    fn register_consumer(&self, consumer: &str) -> Result<(), LogError> {
        super::check_consumer_name(consumer)?;
        let mut consumers = lock(&self.consumers);
        if consumers.0.contains_key(consumer) {
            return Ok(());
        }
        consumers.0.insert(consumer.to_owned(), BTreeMap::new());
        self.save_consumers(&consumers)
    }

    fn commit(&self, consumer: &str, partition: u32, next: Offset) -> Result<(), LogError> {
        super::check_consumer_name(consumer)?;
        self.partition(partition)?;
        let mut consumers = lock(&self.consumers);
        consumers
            .0
            .entry(consumer.to_owned())
            .or_default()
            .insert(partition, next);
        self.save_consumers(&consumers)
    }

    fn committed(&self, consumer: &str, partition: u32) -> Result<Option<Offset>, LogError> {
        self.partition(partition)?;
        Ok(lock(&self.consumers)
            .0
            .get(consumer)
            .and_then(|positions| positions.get(&partition).copied()))
    }

    fn stats(&self) -> Result<LogStats, LogError> {
        let partitions: Vec<PartitionStats> = self
            .partitions
            .iter()
            .map(|partition| {
                let state = lock(&partition.state);
                let first_offset = state.segments[0].base;
                PartitionStats {
                    partition: partition.id,
                    first_offset,
                    next_offset: state.next_offset,
                    records: state.next_offset - first_offset,
                    bytes: state.segments.iter().map(|s| s.bytes).sum(),
                    segments: state.segments.len(),
                }
            })
            .collect();
        Ok(LogStats {
            records: partitions.iter().map(|p| p.records).sum(),
            bytes: partitions.iter().map(|p| p.bytes).sum(),
            partitions,
        })
    }
}

impl Partition {
    fn load(id: u32, dir: &Path, read_only: bool) -> Result<Partition, LogError> {
        let mut bases = Vec::new();
        match fs::read_dir(dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(io("list", dir))?;
                    if let Some(base) = entry
                        .file_name()
                        .to_str()
                        .and_then(segment::parse_segment_name)
                    {
                        bases.push(base);
                    }
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !read_only => {
                fs::create_dir_all(dir).map_err(io("create partition folder", dir))?;
                sync_dir(dir.parent().unwrap_or(dir))?;
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(LogError::Io {
                    action: "list",
                    path: dir.to_owned(),
                    source,
                });
            }
        }
        bases.sort_unstable();
        if bases.is_empty() && !read_only {
            create_segment(dir, 0)?;
            bases.push(0);
        }
        let mut segments = Vec::with_capacity(bases.len());
        for &base in &bases {
            let path = dir.join(segment::segment_name(base));
            let bytes = fs::metadata(&path).map_err(io("stat", &path))?.len();
            segments.push(SegmentInfo { base, bytes });
        }
        let next_offset = match segments.last_mut() {
            Some(last) => {
                // Only the last segment can hold an unacknowledged, torn tail.
                let path = dir.join(segment::segment_name(last.base));
                let end = segment::scan(&path)?;
                last.bytes = end.valid_bytes;
                if end.valid_bytes < end.file_bytes && !read_only {
                    tracing::warn!(
                        path = %path.display(),
                        kept_records = end.records,
                        cut_bytes = end.file_bytes - end.valid_bytes,
                        "cutting a torn tail left by a crash; every acknowledged record is before it"
                    );
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io("open", &path))?;
                    file.set_len(end.valid_bytes)
                        .map_err(io("truncate torn tail of", &path))?;
                    file.sync_all().map_err(io("fsync", &path))?;
                }
                last.base + end.records
            }
            None => {
                segments.push(SegmentInfo { base: 0, bytes: 0 });
                0
            }
        };
        Ok(Partition {
            id,
            dir: dir.to_owned(),
            state: Mutex::new(PartitionState {
                segments,
                next_offset,
            }),
            cursors: Mutex::new(Vec::new()),
        })
    }

    /// For a read-only spool beside a live writer in another process: takes in the whole
    /// records written since it last looked. Such a reader may see records that are written
    /// but not yet fsynced, which a crash of the writer could still lose; in one process the
    /// spool's own readers see only durable records.
    fn follow(&self) -> Result<(), LogError> {
        let mut state = lock(&self.state);
        loop {
            let last = *state.segments.last().expect("never empty");
            let path = self.segment_path(last.base);
            if !path.exists() {
                return Ok(());
            }
            let mut reader = SegmentReader::open(&path, last.bytes)?;
            while let Frame::Record(_) = reader.next_frame()? {
                state.next_offset += 1;
            }
            state.segments.last_mut().expect("never empty").bytes = reader.position();
            // A segment named by the next offset means the writer sealed this one.
            let next_base = state.next_offset;
            if next_base == last.base || !self.segment_path(next_base).exists() {
                return Ok(());
            }
            state.segments.push(SegmentInfo {
                base: next_base,
                bytes: 0,
            });
        }
    }

    fn read(&self, from: Offset, max: usize) -> Result<Vec<LogEntry>, LogError> {
        let (segments, next_offset) = {
            let state = lock(&self.state);
            (state.segments.clone(), state.next_offset)
        };
        let first = segments[0].base;
        if from < first {
            return Err(LogError::OffsetDeleted {
                partition: self.id,
                offset: from,
                first,
            });
        }
        let end = next_offset.min(from.saturating_add(max as u64));
        if from >= end {
            return Ok(Vec::new());
        }
        let mut index = segments.partition_point(|s| s.base <= from) - 1;
        let cursor = lock(&self.cursors)
            .iter()
            .find(|c| c.offset == from && c.segment_base == segments[index].base)
            .copied();
        let mut reader = match cursor {
            Some(cursor) => {
                SegmentReader::open(&self.segment_path(segments[index].base), cursor.position)?
            }
            None => {
                let mut reader = SegmentReader::open(&self.segment_path(segments[index].base), 0)?;
                reader.skip(from - segments[index].base)?;
                reader
            }
        };
        let mut entries = Vec::with_capacity((end - from) as usize);
        let mut offset = from;
        while offset < end {
            match reader.next_frame()? {
                Frame::Record(payload) => {
                    entries.push(LogEntry { offset, payload });
                    offset += 1;
                }
                Frame::End
                    if segments
                        .get(index + 1)
                        .is_some_and(|next| next.base == offset) =>
                {
                    index += 1;
                    reader = SegmentReader::open(&self.segment_path(segments[index].base), 0)?;
                }
                Frame::End => {
                    return Err(self.corrupt(
                        segments[index].base,
                        offset,
                        "segment ends before the log's end offset",
                    ));
                }
                Frame::Torn(reason) => {
                    return Err(self.corrupt(segments[index].base, offset, &reason));
                }
            }
        }
        let mut cursors = lock(&self.cursors);
        cursors.retain(|c| c.offset != from);
        if cursors.len() >= MAX_CURSORS {
            cursors.remove(0);
        }
        cursors.push(ReadCursor {
            offset,
            segment_base: segments[index].base,
            position: reader.position(),
        });
        Ok(entries)
    }

    fn segment_path(&self, base: Offset) -> PathBuf {
        self.dir.join(segment::segment_name(base))
    }

    fn corrupt(&self, base: Offset, offset: Offset, reason: &str) -> LogError {
        LogError::Corrupt {
            path: self.segment_path(base),
            offset,
            reason: reason.to_owned(),
        }
    }
}

/// The thread that owns a partition's last segment and group-commits appends to it.
struct PartitionWriter {
    partition: Arc<Partition>,
    file: File,
    segment_bytes: u64,
    on_fsync: Option<FsyncObserver>,
    buffer: Vec<u8>,
}

/// Appends taken in one group before writing, so one fdatasync never waits on an unbounded batch.
const MAX_GROUP: usize = 4096;

impl PartitionWriter {
    fn open(
        partition: Arc<Partition>,
        segment_bytes: u64,
        on_fsync: Option<FsyncObserver>,
    ) -> Result<Self, LogError> {
        let base = lock(&partition.state)
            .segments
            .last()
            .expect("never empty")
            .base;
        let path = partition.segment_path(base);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io("open for append", &path))?;
        Ok(PartitionWriter {
            partition,
            file,
            segment_bytes,
            on_fsync,
            buffer: Vec::with_capacity(1 << 20),
        })
    }

    fn run(mut self, mut queue: mpsc::UnboundedReceiver<AppendRequest>) {
        let mut group = Vec::new();
        while let Some(first) = queue.blocking_recv() {
            group.push(first);
            while group.len() < MAX_GROUP {
                match queue.try_recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
            match self.write_group(&group) {
                Ok(first_offsets) => {
                    for (request, first) in group.drain(..).zip(first_offsets) {
                        let _ = request.reply.send(Ok(first));
                    }
                }
                Err(err) => {
                    // After a failed write or fdatasync the file's durable state is unknown:
                    // stop, and let a restart recover from what is really on disk.
                    tracing::error!(partition = self.partition.id, error = %err, "spool write failed; this partition stops accepting appends");
                    // Closed before anyone hears of the failure, so `appendable` reports it
                    // by then.
                    queue.close();
                    for request in group.drain(..) {
                        let _ = request
                            .reply
                            .send(Err(LogError::WriterStopped(self.partition.id)));
                    }
                    return;
                }
            }
        }
    }

    /// Writes and syncs a group; returns each request's first offset.
    fn write_group(&mut self, group: &[AppendRequest]) -> Result<Vec<Offset>, LogError> {
        let (mut next, mut segment) = {
            let state = lock(&self.partition.state);
            (
                state.next_offset,
                *state.segments.last().expect("never empty"),
            )
        };
        let mut first_offsets = Vec::with_capacity(group.len());
        self.buffer.clear();
        for request in group {
            first_offsets.push(next);
            for payload in &request.payloads {
                let frame_bytes = segment::HEADER_BYTES + payload.len() as u64;
                let pending = self.buffer.len() as u64;
                if segment.bytes + pending > 0
                    && segment.bytes + pending + frame_bytes > self.segment_bytes
                {
                    self.flush_and_sync()?;
                    segment.bytes += pending;
                    self.publish(next, segment);
                    segment = self.roll(next)?;
                }
                segment::frame(&mut self.buffer, payload);
                next += 1;
            }
        }
        segment.bytes += self.buffer.len() as u64;
        self.flush_and_sync()?;
        self.publish(next, segment);
        Ok(first_offsets)
    }

    fn flush_and_sync(&mut self) -> Result<(), LogError> {
        let path = || self.partition.dir.clone();
        self.file
            .write_all(&self.buffer)
            .map_err(|source| LogError::Io {
                action: "append to segment in",
                path: path(),
                source,
            })?;
        self.buffer.clear();
        let started = Instant::now();
        self.file.sync_data().map_err(|source| LogError::Io {
            action: "fdatasync segment in",
            path: path(),
            source,
        })?;
        if let Some(observe) = &self.on_fsync {
            observe(started.elapsed());
        }
        Ok(())
    }

    /// Makes offsets below `next` visible to readers; `segment` is the last one's new size.
    fn publish(&self, next: Offset, segment: SegmentInfo) {
        let mut state = lock(&self.partition.state);
        state.next_offset = next;
        *state.segments.last_mut().expect("never empty") = segment;
    }

    fn roll(&mut self, base: Offset) -> Result<SegmentInfo, LogError> {
        self.file = create_segment(&self.partition.dir, base)?;
        let segment = SegmentInfo { base, bytes: 0 };
        lock(&self.partition.state).segments.push(segment);
        Ok(segment)
    }
}

/// Creates an empty segment and makes its name durable.
fn create_segment(dir: &Path, base: Offset) -> Result<File, LogError> {
    let path = dir.join(segment::segment_name(base));
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io("create segment", &path))?;
    sync_dir(dir)?;
    Ok(file)
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync folder", dir))
}

fn read_meta(dir: &Path) -> Result<Option<SpoolMeta>, LogError> {
    let path = dir.join(META_FILE);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|err| LogError::Corrupt {
                path,
                offset: 0,
                reason: err.to_string(),
            }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LogError::Io {
            action: "read",
            path,
            source,
        }),
    }
}

/// Writes a small JSON file so that a crash leaves either the old or the new one.
fn write_json_atomically(path: &Path, value: &impl Serialize) -> Result<(), LogError> {
    let temporary = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(value).expect("plain data serializes");
    let mut file = File::create(&temporary).map_err(io("create", &temporary))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(io("write", &temporary))?;
    fs::rename(&temporary, path).map_err(io("replace", path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LogError {
    let path = path.to_owned();
    move |source| LogError::Io {
        action,
        path,
        source,
    }
}

/// Locks a mutex; a writer that panicked mid-update cannot leave these states half-changed
/// (they are replaced whole), so a poisoned lock is still safe to use.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::super::conformance;
    use super::*;
    use proptest::prelude::*;

    fn options(partitions: u32) -> SpoolOptions {
        SpoolOptions {
            partitions,
            ..SpoolOptions::default()
        }
    }

    fn open(dir: &Path) -> Spool {
        Spool::open(dir, options(2)).unwrap()
    }

    fn record(partition: u32, payload: Vec<u8>) -> AppendRecord {
        AppendRecord { partition, payload }
    }

    fn all(spool: &Spool, partition: u32) -> Vec<Vec<u8>> {
        spool
            .read(partition, 0, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|e| e.payload)
            .collect()
    }

    fn last_segment(dir: &Path, partition: u32) -> PathBuf {
        let folder = dir.join(format!("partition-{partition:04}"));
        let mut segments: Vec<PathBuf> = fs::read_dir(folder)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        segments.sort();
        segments.pop().unwrap()
    }

    #[tokio::test]
    async fn passes_the_log_conformance_suite() {
        for check in 0..4 {
            let dir = tempfile::tempdir().unwrap();
            let spool = open(dir.path());
            match check {
                0 => conformance::appends_read_back_in_order(&spool).await,
                1 => conformance::sequential_reads_resume_where_they_stopped(&spool).await,
                2 => conformance::consumer_positions_are_kept(&spool).await,
                _ => conformance::unknown_partitions_are_errors(&spool).await,
            }
        }
    }

    #[tokio::test]
    async fn a_restart_keeps_every_acknowledged_record_and_consumer_position() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = open(dir.path());
            spool
                .append((0..100).map(|i| record(i % 2, vec![i as u8; 10])).collect())
                .await
                .unwrap();
            spool.commit("archiver", 1, 20).unwrap();
        }
        let spool = open(dir.path());
        assert_eq!(all(&spool, 0).len(), 50);
        assert_eq!(all(&spool, 1)[49], vec![99u8; 10]);
        assert_eq!(spool.committed("archiver", 1).unwrap(), Some(20));
        assert_eq!(
            spool
                .append(vec![record(0, b"next".to_vec())])
                .await
                .unwrap(),
            [50]
        );
    }

    #[tokio::test]
    async fn a_writer_stopped_by_an_io_error_makes_the_spool_unappendable() {
        let dir = tempfile::tempdir().unwrap();
        let tiny_segments = SpoolOptions {
            partitions: 1,
            segment_bytes: 1,
            ..SpoolOptions::default()
        };
        let spool = Spool::open(dir.path(), tiny_segments).unwrap();
        spool
            .append(vec![record(0, b"first".to_vec())])
            .await
            .unwrap();
        assert!(spool.appendable().is_ok());
        // The next record rolls to a segment starting at offset 1: a folder in its place
        // makes creating it fail.
        let next_segment = dir
            .path()
            .join("partition-0000")
            .join(segment::segment_name(1));
        fs::create_dir(next_segment).unwrap();
        let refused = spool.append(vec![record(0, b"second".to_vec())]).await;
        assert!(
            matches!(refused, Err(LogError::WriterStopped(0))),
            "{refused:?}"
        );
        assert!(matches!(
            spool.appendable(),
            Err(LogError::WriterStopped(0))
        ));
        assert_eq!(
            all(&spool, 0),
            [b"first".to_vec()],
            "what was acknowledged stays"
        );
    }

    #[tokio::test]
    async fn a_record_cut_mid_write_is_dropped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = open(dir.path());
            spool
                .append((0..10).map(|i| record(0, vec![i; 100])).collect())
                .await
                .unwrap();
        }
        let segment = last_segment(dir.path(), 0);
        let length = fs::metadata(&segment).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap()
            .set_len(length - 50)
            .unwrap();
        let spool = open(dir.path());
        let records = all(&spool, 0);
        assert_eq!(records.len(), 9);
        assert_eq!(records[8], vec![8u8; 100]);
        assert_eq!(
            fs::metadata(&segment).unwrap().len(),
            9 * 108,
            "the torn tail is cut off"
        );
        assert_eq!(
            spool
                .append(vec![record(0, b"after".to_vec())])
                .await
                .unwrap(),
            [9]
        );
        assert_eq!(all(&spool, 0)[9], b"after");
    }

    #[tokio::test]
    async fn segments_roll_and_reads_cross_them() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(
            dir.path(),
            SpoolOptions {
                segment_bytes: 4096,
                ..options(1)
            },
        )
        .unwrap();
        for batch in 0..20u32 {
            let records = (0..10)
                .map(|i| record(0, format!("{batch}-{i}-{}", "x".repeat(100)).into_bytes()))
                .collect();
            spool.append(records).await.unwrap();
        }
        let stats = spool.stats().unwrap();
        assert!(stats.partitions[0].segments > 5, "{stats:?}");
        assert_eq!(stats.records, 200);
        let records = all(&spool, 0);
        assert_eq!(records.len(), 200);
        assert!(records[199].starts_with(b"19-9-"));
        assert_eq!(spool.read(0, 123, 1).unwrap()[0].offset, 123);
        drop(spool);
        let reopened = Spool::open(
            dir.path(),
            SpoolOptions {
                segment_bytes: 4096,
                ..options(1)
            },
        )
        .unwrap();
        assert_eq!(reopened.stats().unwrap(), stats);
    }

    #[tokio::test]
    async fn retention_deletes_old_segments_only_behind_every_consumer() {
        let dir = tempfile::tempdir().unwrap();
        let options = SpoolOptions {
            segment_bytes: 4096,
            retention: Duration::from_secs(3600),
            ..options(1)
        };
        let spool = Spool::open(dir.path(), options).unwrap();
        spool.register_consumer("archiver").unwrap();
        spool.register_consumer("speed").unwrap();
        for _ in 0..10 {
            spool
                .append((0..10).map(|_| record(0, vec![7; 200])).collect())
                .await
                .unwrap();
        }
        let segments = spool.stats().unwrap().partitions[0].segments;
        let later = SystemTime::now() + Duration::from_secs(7200);
        assert_eq!(
            spool.enforce_retention(SystemTime::now()).unwrap(),
            0,
            "too young"
        );
        assert_eq!(
            spool.enforce_retention(later).unwrap(),
            0,
            "no consumer has read anything"
        );
        spool.commit("archiver", 0, 100).unwrap();
        assert_eq!(
            spool.enforce_retention(later).unwrap(),
            0,
            "speed still needs everything"
        );
        spool.commit("speed", 0, 40).unwrap();
        let deleted = spool.enforce_retention(later).unwrap();
        assert!(deleted > 0);
        let stats = spool.stats().unwrap().partitions[0].clone();
        assert_eq!(stats.segments, segments - deleted);
        assert!(
            stats.first_offset <= 40,
            "nothing speed has not read is gone: {stats:?}"
        );
        assert!(matches!(
            spool.read(0, 0, 1),
            Err(LogError::OffsetDeleted { .. })
        ));
        assert_eq!(spool.read(0, 40, 1).unwrap()[0].offset, 40);
    }

    #[tokio::test]
    async fn a_second_writer_is_refused_and_readers_see_durable_records() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(dir.path());
        spool
            .append(vec![record(1, b"one".to_vec())])
            .await
            .unwrap();
        assert!(matches!(
            Spool::open(dir.path(), options(2)),
            Err(LogError::Locked(_))
        ));
        let reader = Spool::open_read_only(dir.path()).unwrap();
        assert_eq!(all(&reader, 1), [b"one".to_vec()]);
        assert!(matches!(
            reader.append(vec![record(0, vec![])]).await,
            Err(LogError::ReadOnly(_))
        ));
        drop(spool);
        let err = Spool::open(dir.path(), options(3)).err().unwrap();
        assert!(err.to_string().contains("set log.partitions = 2"), "{err}");
    }

    #[tokio::test]
    async fn a_read_only_spool_follows_the_writer_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let options = SpoolOptions {
            segment_bytes: 4096,
            ..options(1)
        };
        let writer = Spool::open(dir.path(), options).unwrap();
        let follower = Spool::open_read_only(dir.path()).unwrap();
        assert!(follower.read(0, 0, 10).unwrap().is_empty());
        for batch in 0..10u8 {
            writer
                .append((0..10).map(|_| record(0, vec![batch; 100])).collect())
                .await
                .unwrap();
        }
        assert!(writer.stats().unwrap().partitions[0].segments > 2);
        let mut seen = Vec::new();
        loop {
            let entries = follower.read(0, seen.len() as u64, 7).unwrap();
            if entries.is_empty() {
                break;
            }
            assert_eq!(entries[0].offset as usize, seen.len());
            seen.extend(entries);
        }
        assert_eq!(seen.len(), 100);
        assert_eq!(seen[99].payload, vec![9u8; 100]);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Recovery fuzz: write records, then damage the tail (cut it anywhere, or flip a byte
        /// in the last record, or add garbage); reopening keeps exactly the whole records
        /// before the damage and accepts new appends after them.
        #[test]
        fn recovery_keeps_exactly_the_whole_records_before_any_damage(
            sizes in prop::collection::vec(0usize..300, 1..40),
            damage in 0u8..3,
            where_ in any::<prop::sample::Index>(),
            garbage in prop::collection::vec(any::<u8>(), 1..64),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let payloads: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, n)| vec![i as u8; *n]).collect();
            {
                let spool = Spool::open(dir.path(), options(1)).unwrap();
                runtime.block_on(spool.append(payloads.iter().map(|p| record(0, p.clone())).collect())).unwrap();
            }
            let segment = last_segment(dir.path(), 0);
            let mut bytes = fs::read(&segment).unwrap();
            let frame_ends: Vec<usize> = payloads.iter().scan(0, |end, p| { *end += 8 + p.len(); Some(*end) }).collect();
            let intact = match damage {
                0 => {
                    let cut = where_.index(bytes.len() + 1);
                    bytes.truncate(cut);
                    frame_ends.iter().take_while(|end| **end <= cut).count()
                }
                1 => {
                    let last_start = frame_ends.len().checked_sub(2).map_or(0, |i| frame_ends[i]);
                    let at = last_start + where_.index(bytes.len() - last_start);
                    bytes[at] ^= 0x5a;
                    payloads.len() - 1
                }
                _ => {
                    bytes.extend_from_slice(&garbage);
                    payloads.len()
                }
            };
            fs::write(&segment, &bytes).unwrap();
            let spool = Spool::open(dir.path(), options(1)).unwrap();
            prop_assert_eq!(all(&spool, 0), payloads[..intact].to_vec());
            let offsets = runtime.block_on(spool.append(vec![record(0, b"new".to_vec())])).unwrap();
            prop_assert_eq!(offsets, vec![intact as u64]);
            drop(spool);
            let reopened = Spool::open(dir.path(), options(1)).unwrap();
            prop_assert_eq!(all(&reopened, 0).last().cloned(), Some(b"new".to_vec()));
        }
    }
}
