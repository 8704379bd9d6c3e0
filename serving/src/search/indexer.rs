//! Feeds the search index from the event log, on a thread of its own: every partition from
//! the positions of the index's last commit, committing about once a second (a search finds
//! an event about a second after it was acknowledged), and dropping events past the window or
//! their event type's retention at start and once a minute.
//!
//! An index with no positions (new, or moved aside as unreadable), or one behind what the log
//! still holds, is rebuilt first: the archiver's committed log positions are read, then the
//! archived hours of the window are indexed, then the log from those positions on. Whatever
//! the archive and the log both hold is indexed twice and replaces itself; nothing between
//! them is missed, because the archiver commits a position only once its objects are durable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use tally_connectors::catalog::CatalogHandle;
use tally_connectors::log::{EventLog, LogStats};
use tally_model::time::{HOUR_MS, now_millis};
use tally_model::{Event, Granularity};

use super::{Positions, SearchIndex};
use crate::raw::{RawEvents, unarchived_from};

/// Records read from a partition at a time.
const READ_BATCH: usize = 5_000;
/// How often what was indexed is committed, at most.
const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// How often events past the window are dropped.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);
/// How long the indexer waits when the log has nothing new.
const IDLE: Duration = Duration::from_millis(100);
/// How long it waits after a failure before it tries again.
const RETRY: Duration = Duration::from_secs(1);

/// The indexer's thread.
pub struct SearchIndexer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
    status: Arc<IndexerStatus>,
}

/// What the indexer is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexerState {
    /// Reading the log as it grows: a search finds an event about a second after its ack.
    Following,
    /// Indexing the archived hours of its window afresh; searches miss what it has not read.
    Rebuilding {
        /// Archived hours indexed so far.
        hours_read: i64,
        /// Hours in the window.
        hours: i64,
        /// Events indexed so far.
        events: usize,
    },
    /// Its last attempt failed, for this reason; it tries again every second.
    Failing(String),
}

/// The indexer's state and how far it trails the log, shared with whoever reports on them
/// (`/readyz`, `/metrics`).
#[derive(Debug)]
pub struct IndexerStatus {
    state: Mutex<IndexerState>,
    lag: Gauge,
}

impl IndexerStatus {
    /// Log records not yet indexed, across partitions, as a gauge to export; measured after
    /// each commit.
    pub fn lag(&self) -> Gauge {
        self.lag.clone()
    }

    /// What the indexer is doing now.
    pub fn state(&self) -> IndexerState {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Why searches may miss events now, for `/readyz`; none while the indexer follows the log.
    pub fn degraded(&self) -> Option<String> {
        match self.state() {
            IndexerState::Following => None,
            IndexerState::Rebuilding {
                hours_read,
                hours,
                events,
            } => Some(format!(
                "full-text search is rebuilding its index from the archive ({hours_read} of {hours} hours read, {events} events): searches with q= miss older events until it finishes"
            )),
            IndexerState::Failing(reason) => Some(format!(
                "full-text search: {reason}; the indexer tries again every second, and searches with q= miss what it has not indexed"
            )),
        }
    }

    fn set(&self, state: IndexerState) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
    }
}

impl SearchIndexer {
    /// Starts indexing `log` into `index`, from `positions` (the index's last commit; none to
    /// rebuild), rebuilding from `raw`'s archive when needed.
    pub fn start(
        index: Arc<SearchIndex>,
        positions: Option<Positions>,
        (log, raw): (Arc<dyn EventLog>, RawEvents),
        catalog: CatalogHandle,
    ) -> std::io::Result<SearchIndexer> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let status = Arc::new(IndexerStatus {
            state: Mutex::new(IndexerState::Following),
            lag: Gauge::default(),
        });
        let reporting = status.clone();
        let thread = std::thread::Builder::new()
            .name("tally-search-index".into())
            .spawn(move || {
                let indexer = Indexer {
                    index,
                    log,
                    raw,
                    catalog,
                    status: reporting,
                };
                indexer.run(positions, &stopping);
            })?;
        Ok(SearchIndexer {
            stop,
            thread,
            status,
        })
    }

    /// The indexer's state, to report on.
    pub fn status(&self) -> Arc<IndexerStatus> {
        self.status.clone()
    }

    /// Commits what was indexed and stops.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        if self.thread.join().is_err() {
            tracing::error!("the search indexer panicked");
        }
    }
}

struct Indexer {
    index: Arc<SearchIndex>,
    log: Arc<dyn EventLog>,
    raw: RawEvents,
    catalog: CatalogHandle,
    status: Arc<IndexerStatus>,
}

impl Indexer {
    fn run(&self, positions: Option<Positions>, stop: &AtomicBool) {
        // The rebuild's reads of the archive open connections that the process's object
        // store client pools and serving reuses. A connection's IO runs on the runtime that
        // opened it: a current-thread runtime would drive it only inside this thread's
        // `block_on`, so a query handed such a connection afterwards would wait on it. One
        // worker thread keeps this runtime's connections served for the indexer's life.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tally-search-io")
            .enable_all()
            .build()
            .expect("the search indexer's runtime starts");
        let mut positions = loop {
            if stop.load(Ordering::Acquire) {
                return;
            }
            let result = match positions.as_ref().filter(|p| !self.behind(p)) {
                Some(positions) => Ok(positions.clone()),
                None => self.rebuild(&runtime),
            };
            match result {
                Ok(positions) => break positions,
                Err(error) => {
                    tracing::warn!(%error, "rebuilding the search index failed; retrying");
                    let reason = format!("rebuilding its index from the archive failed: {error}");
                    self.status.set(IndexerState::Failing(reason));
                    std::thread::sleep(RETRY);
                }
            }
        };
        let mut last_commit = Instant::now();
        // Expired at once: the window or a retention may have passed while it was down.
        let mut last_expire: Option<Instant> = None;
        let mut dirty = false;
        while !stop.load(Ordering::Acquire) {
            let read = match self.pass(&mut positions) {
                Ok(read) => read,
                Err(error) => {
                    tracing::warn!(%error, "indexing the event log failed; retrying");
                    let reason = format!("indexing the event log failed: {error}");
                    self.status.set(IndexerState::Failing(reason));
                    std::thread::sleep(RETRY);
                    continue;
                }
            };
            self.status.set(IndexerState::Following);
            dirty |= read > 0;
            if last_expire.is_none_or(|at| at.elapsed() >= EXPIRE_EVERY) {
                last_expire = Some(Instant::now());
                match self.index.expire(now_millis(), &self.catalog.current()) {
                    Ok(()) => dirty = true,
                    Err(error) => {
                        tracing::warn!(%error, "expiring old events from the search index failed")
                    }
                }
            }
            if dirty && (read == 0 || last_commit.elapsed() >= COMMIT_EVERY) {
                match self.index.commit(&positions) {
                    Ok(()) => dirty = false,
                    Err(error) => tracing::warn!(%error, "committing the search index failed"),
                }
                last_commit = Instant::now();
                if let Ok(stats) = self.log.stats() {
                    self.status.lag.set(lag(&stats, &positions));
                }
            }
            if read == 0 {
                std::thread::sleep(IDLE);
            }
        }
        if dirty && let Err(error) = self.index.commit(&positions) {
            tracing::warn!(%error, "the last commit of the search index failed");
        }
    }

    /// Indexes one batch of every partition; returns the records read.
    fn pass(&self, positions: &mut Positions) -> Result<usize, Box<dyn std::error::Error>> {
        let mut read = 0;
        for partition in 0..self.log.partitions() {
            let from = positions.get(&partition).copied().unwrap_or(0);
            let entries = self.log.read(partition, from, READ_BATCH)?;
            let Some(last) = entries.last() else {
                continue;
            };
            let next = last.offset.saturating_add(1);
            let events: Vec<Event> = (entries.iter())
                .filter_map(|entry| serde_json::from_slice(&entry.payload).ok())
                .collect();
            self.index.add(&events, now_millis())?;
            read += entries.len();
            positions.insert(partition, next);
        }
        Ok(read)
    }

    /// Whether the log no longer holds records the index has not read.
    fn behind(&self, positions: &Positions) -> bool {
        let Ok(stats) = self.log.stats() else {
            return false;
        };
        let behind = (stats.partitions.iter()).any(|partition| {
            positions.get(&partition.partition).copied().unwrap_or(0) < partition.first_offset
        });
        if behind {
            tracing::warn!(
                "the event log dropped records the search index had not read; rebuilding it from the archive"
            );
        }
        behind
    }

    /// Indexes the archived hours of the window afresh; returns the log positions to go on
    /// from: where the archiver had committed before the archive was read.
    fn rebuild(
        &self,
        runtime: &tokio::runtime::Runtime,
    ) -> Result<Positions, Box<dyn std::error::Error>> {
        let started = Instant::now();
        let stats = self.log.stats()?;
        let mut positions = Positions::new();
        for partition in &stats.partitions {
            let from = unarchived_from(self.log.as_ref(), partition)?;
            positions.insert(partition.partition, from);
        }
        self.status.lag.set(lag(&stats, &positions));
        self.index.clear()?;
        let now = now_millis();
        let first = Granularity::Hour.bucket_start(now.saturating_sub(self.index.window_ms()));
        let hours = (now - first) / HOUR_MS + 1;
        tracing::info!(
            hours,
            "rebuilding the search index from the archived hours of its window, then the log"
        );
        let mut hour = first;
        let mut events = 0;
        while hour <= now {
            let hours_read = (hour - first) / HOUR_MS;
            self.status.set(IndexerState::Rebuilding {
                hours_read,
                hours,
                events,
            });
            if hours_read % 24 == 0 && hours_read > 0 {
                tracing::info!(hours_read, hours, events, "rebuilding the search index");
            }
            let archived = runtime.block_on(self.raw.archived_hour(hour))?;
            events += archived.len();
            self.index.add(&archived, now)?;
            hour = hour.saturating_add(HOUR_MS);
        }
        self.index.commit(&positions)?;
        tracing::info!(
            events,
            seconds = started.elapsed().as_secs_f64(),
            "rebuilt the search index from the archive"
        );
        Ok(positions)
    }
}

/// Records of `stats`' partitions past `positions`, the next offsets indexed.
fn lag(stats: &LogStats, positions: &Positions) -> i64 {
    let behind = (stats.partitions.iter()).map(|partition| {
        let indexed = positions.get(&partition.partition).copied().unwrap_or(0);
        partition
            .next_offset
            .saturating_sub(indexed.max(partition.first_offset))
    });
    i64::try_from(behind.fold(0u64, u64::saturating_add)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
