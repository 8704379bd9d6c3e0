//! Raw events for search: the archived Parquet partitions of the asked hours (pruned by the
//! hive layout) plus the tail of the event log the archiver has not committed yet, each event
//! once (by tenant, event id and event hour, as both layers dedupe).
// This module reads what callers send: its arithmetic is checked or saturating, never
// wrapping (docs/hardening.md).
#![deny(clippy::arithmetic_side_effects)]

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tally_connectors::archive::{ArchiveError, events_from_parquet};
use tally_connectors::log::{EventLog, LogError};
use tally_model::layout::{ARCHIVER_CONSUMER, RawStream, hour_partition};
use tally_model::time::HOUR_MS;
use tally_model::{Event, Granularity, Millis, RejectedEvent};
use thiserror::Error;

/// Records read from a log partition at a time.
const READ_BATCH: usize = 10_000;

/// Why raw events could not be read.
#[derive(Debug, Error)]
pub enum RawError {
    /// Listing or reading an object failed.
    #[error("object store, at {path}: {source}")]
    Store {
        /// The object or prefix.
        path: String,
        /// The cause.
        source: object_store::Error,
    },
    /// An archived object does not decode.
    #[error("raw object {path}: {source}")]
    Parquet {
        /// The object.
        path: String,
        /// The cause.
        source: ArchiveError,
    },
    /// Reading the log tail failed.
    #[error("event log: {0}")]
    Log(#[from] LogError),
}

/// What to look for.
pub struct RawFilter<'a> {
    /// The tenant whose events these are.
    pub tenant: &'a str,
    /// Only this event type, if given.
    pub event_type: Option<&'a str>,
    /// Event times in this range.
    pub range: Range<Millis>,
}

impl RawFilter<'_> {
    fn matches(&self, event: &Event) -> bool {
        event.tenant == self.tenant
            && self.range.contains(&event.ts)
            && self.event_type.is_none_or(|t| t == event.event_type)
    }
}

/// The raw archive and the log tail beside it.
#[derive(Clone)]
pub struct RawEvents {
    objects: Arc<dyn ObjectStore>,
    log: Option<Arc<dyn EventLog>>,
    rejected: Option<Arc<dyn EventLog>>,
}

impl RawEvents {
    /// Raw events archived in `objects`, plus the unarchived tail of `log` when given, and
    /// the `rejected` stream for recent rejects.
    pub fn new(
        objects: Arc<dyn ObjectStore>,
        log: Option<Arc<dyn EventLog>>,
        rejected: Option<Arc<dyn EventLog>>,
    ) -> Self {
        RawEvents {
            objects,
            log,
            rejected,
        }
    }

    /// Up to `limit` of the tenant's most recently received rejected events, newest first,
    /// from the end of the rejected stream.
    pub async fn recent_rejected(
        &self,
        tenant: &str,
        limit: usize,
    ) -> Result<Vec<RejectedEvent>, RawError> {
        let Some(log) = self.rejected.clone() else {
            return Ok(Vec::new());
        };
        let tenant = tenant.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            for partition in log.stats()?.partitions {
                // Walk back from the end of each partition until `limit` of the tenant's
                // are found or the partition is exhausted.
                let mut end = partition.next_offset;
                let mut kept = 0;
                while end > partition.first_offset && kept < limit {
                    let start = end
                        .saturating_sub(READ_BATCH as u64)
                        .max(partition.first_offset);
                    let count = usize::try_from(end.saturating_sub(start)).unwrap_or(usize::MAX);
                    let entries = log.read(partition.partition, start, count)?;
                    for entry in entries.iter().rev() {
                        let Ok(rejected) = serde_json::from_slice::<RejectedEvent>(&entry.payload)
                        else {
                            continue;
                        };
                        if rejected.tenant == tenant && kept < limit {
                            kept = kept.saturating_add(1);
                            found.push(rejected);
                        }
                    }
                    end = start;
                }
            }
            found.sort_by_key(|r| std::cmp::Reverse(r.received_at));
            found.truncate(limit);
            Ok(found)
        })
        .await
        .expect("reading the rejected stream does not panic")
    }

    /// Every event matching `filter`, each once, ordered by event time, then event id.
    pub async fn scan(&self, filter: &RawFilter<'_>) -> Result<Vec<Event>, RawError> {
        let mut seen = HashSet::new();
        let mut events = Vec::new();
        let mut keep = |event: Event| {
            if filter.matches(&event)
                && seen.insert((event.event_id.clone(), event.ts.div_euclid(HOUR_MS)))
            {
                events.push(event);
            }
        };
        for event in self.archived(filter).await? {
            keep(event);
        }
        if let Some(log) = &self.log {
            let log = log.clone();
            let tail = tokio::task::spawn_blocking(move || unarchived_tail(log.as_ref()))
                .await
                .expect("reading the log tail does not panic")?;
            for event in tail {
                keep(event);
            }
        }
        events.sort_by(|a, b| (a.ts, &a.event_id).cmp(&(b.ts, &b.event_id)));
        Ok(events)
    }

    async fn archived(&self, filter: &RawFilter<'_>) -> Result<Vec<Event>, RawError> {
        let first_hour = Granularity::Hour.bucket_start(filter.range.start);
        let mut events = Vec::new();
        let mut hour = first_hour;
        while hour < filter.range.end {
            let prefix = ObjectPath::from(hour_partition(RawStream::Events, hour));
            let listed: Vec<_> = self
                .objects
                .list(Some(&prefix))
                .try_collect()
                .await
                .map_err(|source| RawError::Store {
                    path: prefix.to_string(),
                    source,
                })?;
            for object in listed {
                let path = object.location.to_string();
                let store_error = |source| RawError::Store {
                    path: path.clone(),
                    source,
                };
                let bytes = match self.objects.get(&object.location).await {
                    Ok(found) => found.bytes().await.map_err(store_error)?,
                    // Replaced by a redo of its roll between listing and reading.
                    Err(object_store::Error::NotFound { .. }) => continue,
                    Err(source) => return Err(store_error(source)),
                };
                let decoded = tokio::task::spawn_blocking(move || events_from_parquet(&bytes))
                    .await
                    .expect("decoding Parquet does not panic")
                    .map_err(|source| RawError::Parquet { path, source })?;
                events.extend(decoded.into_iter().map(|logged| logged.record));
            }
            hour = hour.saturating_add(HOUR_MS);
        }
        Ok(events)
    }
}

/// The events the archiver has not committed, per partition from its position on.
fn unarchived_tail(log: &dyn EventLog) -> Result<Vec<Event>, LogError> {
    let stats = log.stats()?;
    let mut events = Vec::new();
    for partition in stats.partitions {
        let committed = log.committed(ARCHIVER_CONSUMER, partition.partition)?;
        let mut next = committed.map_or(partition.first_offset, |c| c.max(partition.first_offset));
        loop {
            let entries = log.read(partition.partition, next, READ_BATCH)?;
            let Some(last) = entries.last() else {
                break;
            };
            next = last.offset.saturating_add(1);
            events.extend(
                entries
                    .iter()
                    .filter_map(|entry| serde_json::from_slice::<Event>(&entry.payload).ok()),
            );
        }
    }
    Ok(events)
}
