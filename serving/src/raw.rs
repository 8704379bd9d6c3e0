//! Raw events for search: the archived Parquet partitions of the asked hours (pruned by the
//! hive layout) plus the tail of the event log the archiver has not committed yet, each event
//! once (by tenant, event id and event hour, as both layers dedupe).
// This module reads what callers send: its arithmetic is checked or saturating, never
// wrapping (docs/hardening.md).
#![deny(clippy::arithmetic_side_effects)]

use std::collections::{BTreeMap, HashSet};
use std::ops::ControlFlow;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tally_connectors::archive::{ArchiveError, events_from_parquet};
use tally_connectors::log::{EventLog, LogError, Offset, PartitionStats};
use tally_model::layout::{ARCHIVER_CONSUMER, RawStream, hour_partition};
use tally_model::time::HOUR_MS;
use tally_model::{Event, Granularity, Millis, RejectedEvent};
use thiserror::Error;

/// Records read from a log partition at a time.
const READ_BATCH: usize = 10_000;
/// The most records of the rejected stream one request reads.
pub const MAX_REJECTS_SCANNED: usize = 100_000;

/// What a walk through the rejected stream does after a record.
enum Walk {
    /// Goes on to the record before it.
    Continue,
    /// Leaves this partition for the next.
    NextPartition,
}

/// Which rejected events to list: all, or those of one reason code or one source.
#[derive(Debug, Clone, Default)]
pub struct RejectFilter {
    /// One of the event's reasons has this code.
    pub code: Option<String>,
    /// The event came from this source.
    pub source: Option<String>,
}

impl RejectFilter {
    fn admits(&self, rejected: &RejectedEvent) -> bool {
        self.code
            .as_ref()
            .is_none_or(|code| rejected.codes.contains(code))
            && self
                .source
                .as_ref()
                .is_none_or(|source| &rejected.source == source)
    }
}

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
    /// Only this user's events, if given.
    pub user_id: Option<&'a str>,
    /// Event times in this range.
    pub range: Range<Millis>,
}

impl RawFilter<'_> {
    fn matches(&self, event: &Event) -> bool {
        event.tenant == self.tenant
            && self.range.contains(&event.ts)
            && self.event_type.is_none_or(|t| t == event.event_type)
            && self.user_id.is_none_or(|u| u == event.user_id)
    }
}

/// The raw archive and the log tail beside it.
#[derive(Clone)]
pub struct RawEvents {
    objects: Arc<dyn ObjectStore>,
    log: Option<Arc<dyn EventLog>>,
    rejected: Option<Arc<dyn EventLog>>,
    log_reach: Arc<LogReach>,
}

/// Whether raw reads last reached the event log's tail. While the log is unreachable (a
/// broker outage), they answer from the archive alone and say so.
#[derive(Default)]
pub struct LogReach {
    /// Why the last read missed the log, and when.
    unreachable: Mutex<Option<(Instant, String)>>,
}

/// How long a read that missed the log keeps `/readyz` degraded, unless a later read reaches
/// it: reads are made on demand, so none may come to clear it.
const UNREACHABLE_REPORTED_FOR: Duration = Duration::from_secs(30);

impl LogReach {
    /// Why raw reads miss events, while the log cannot be reached.
    pub fn degraded(&self) -> Option<String> {
        let unreachable = self.unreachable.lock().expect("log reach lock");
        (unreachable.as_ref())
            .filter(|(when, _)| when.elapsed() < UNREACHABLE_REPORTED_FOR)
            .map(|(_, why)| why.clone())
    }

    fn record(&self, unreachable: Option<String>) {
        *self.unreachable.lock().expect("log reach lock") =
            unreachable.map(|why| (Instant::now(), why));
    }
}

/// What a scan of raw events read.
#[derive(Debug)]
pub struct Scanned {
    /// The hours read.
    pub hours: usize,
    /// Why events may be missing: the log's tail could not be read, so events not yet
    /// archived are not in it.
    pub incomplete: Option<String>,
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
            log_reach: Arc::default(),
        }
    }

    /// Whether raw reads reach the event log, for `/readyz`.
    pub fn log_reach(&self) -> Arc<LogReach> {
        self.log_reach.clone()
    }

    /// Up to `limit` of the tenant's most recently received rejected events that `wanted`
    /// admits, newest first, from the end of the rejected stream.
    pub async fn recent_rejected(
        &self,
        tenant: &str,
        wanted: RejectFilter,
        limit: usize,
    ) -> Result<Vec<RejectedEvent>, RawError> {
        // Up to `limit` from each partition, newest first in each: the newest `limit` overall
        // are among them.
        let found = (Vec::new(), None, 0_usize);
        let ((mut found, _, _), _) = self
            .walk_rejected(
                tenant,
                found,
                move |(found, partition, taken), at, rejected| {
                    if *partition != Some(at) {
                        (*partition, *taken) = (Some(at), 0);
                    }
                    if *taken >= limit {
                        return Walk::NextPartition;
                    }
                    if wanted.admits(&rejected) {
                        *taken = taken.saturating_add(1);
                        found.push(rejected);
                    }
                    Walk::Continue
                },
            )
            .await?;
        found.sort_by_key(|r: &RejectedEvent| std::cmp::Reverse(r.received_at));
        found.truncate(limit);
        Ok(found)
    }

    /// The tenant's rejected events received at or after `since`, counted by hour, first
    /// reason's code and source; and whether every one was counted (the walk stops after
    /// [`MAX_REJECTS_SCANNED`] records).
    pub async fn rejected_counts(
        &self,
        tenant: &str,
        since: Millis,
    ) -> Result<(BTreeMap<(Millis, String, String), u64>, bool), RawError> {
        self.walk_rejected(tenant, BTreeMap::new(), move |counts, _, rejected| {
            if rejected.received_at < since {
                return Walk::NextPartition;
            }
            let hour = rejected
                .received_at
                .div_euclid(HOUR_MS)
                .saturating_mul(HOUR_MS);
            let code = rejected.codes.first().cloned().unwrap_or_default();
            let count: &mut u64 = counts.entry((hour, code, rejected.source)).or_default();
            *count = count.saturating_add(1);
            Walk::Continue
        })
        .await
    }

    /// Walks back from the end of each partition of the rejected stream over the tenant's
    /// records, handing each to `visit` with its partition, until `visit` moves on or the
    /// partition's start; at most [`MAX_REJECTS_SCANNED`] records in all, so that no request
    /// reads the whole stream. Returns what `visit` gathered, and whether the walk ended
    /// by `visit`'s choice or the streams' starts rather than the bound.
    async fn walk_rejected<A: Send + 'static>(
        &self,
        tenant: &str,
        gathered: A,
        mut visit: impl FnMut(&mut A, u32, RejectedEvent) -> Walk + Send + 'static,
    ) -> Result<(A, bool), RawError> {
        let Some(log) = self.rejected.clone() else {
            return Ok((gathered, true));
        };
        let tenant = tenant.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut gathered = gathered;
            let mut budget = MAX_REJECTS_SCANNED;
            for partition in log.stats()?.partitions {
                let mut end = partition.next_offset;
                'partition: while end > partition.first_offset {
                    if budget == 0 {
                        return Ok((gathered, false));
                    }
                    let start = end
                        .saturating_sub(READ_BATCH.min(budget) as u64)
                        .max(partition.first_offset);
                    let count = usize::try_from(end.saturating_sub(start)).unwrap_or(usize::MAX);
                    budget = budget.saturating_sub(count);
                    let entries = log.read(partition.partition, start, count)?;
                    for entry in entries.into_iter().rev() {
                        let Ok(rejected) = serde_json::from_slice::<RejectedEvent>(&entry.payload)
                        else {
                            continue;
                        };
                        if rejected.tenant != tenant {
                            continue;
                        }
                        if let Walk::NextPartition =
                            visit(&mut gathered, partition.partition, rejected)
                        {
                            break 'partition;
                        }
                    }
                    end = start;
                }
            }
            Ok((gathered, true))
        })
        .await
        .expect("reading the rejected stream does not panic")
    }

    /// Every event matching `filter`, each once, an hour at a time from the range's first
    /// hour, each hour's events ordered by event time, then event id; `visit` gets each
    /// hour's and says whether to go on. Only one hour of the archive (and the log tail the
    /// archiver has not committed) is held at once, so a page of a month-long range costs
    /// the hours it reads, not the month. Returns how many hours were read.
    pub async fn scan_hours(
        &self,
        filter: &RawFilter<'_>,
        mut visit: impl FnMut(Vec<Event>) -> ControlFlow<()>,
    ) -> Result<Scanned, RawError> {
        let mut tail: BTreeMap<Millis, Vec<Event>> = BTreeMap::new();
        let mut incomplete = None;
        if let Some(log) = &self.log {
            let log = log.clone();
            let unarchived = tokio::task::spawn_blocking(move || unarchived_tail(log.as_ref()))
                .await
                .expect("reading the log tail does not panic");
            let unarchived = match unarchived {
                Err(LogError::Unavailable(cause)) => {
                    incomplete = Some(format!(
                        "the event log cannot be reached ({cause}): events not yet archived are missing until it returns"
                    ));
                    Vec::new()
                }
                read => read?,
            };
            self.log_reach.record(incomplete.clone());
            for event in unarchived.into_iter().filter(|event| filter.matches(event)) {
                let hour = Granularity::Hour.bucket_start(event.ts);
                tail.entry(hour).or_default().push(event);
            }
        }
        let mut hour = Granularity::Hour.bucket_start(filter.range.start);
        let mut read: usize = 0;
        while hour < filter.range.end {
            let archived = self.archived_hour(hour).await?;
            read = read.saturating_add(1);
            let mut seen = HashSet::new();
            let mut events: Vec<Event> = (archived.into_iter())
                .filter(|event| filter.matches(event))
                .chain(tail.remove(&hour).unwrap_or_default())
                .filter(|event| seen.insert(event.event_id.clone()))
                .collect();
            events.sort_by(|a, b| (a.ts, &a.event_id).cmp(&(b.ts, &b.event_id)));
            if visit(events).is_break() {
                break;
            }
            hour = hour.saturating_add(HOUR_MS);
        }
        Ok(Scanned {
            hours: read,
            incomplete,
        })
    }

    /// Every archived event of the hour starting at `hour`, of every tenant, as archived
    /// (a resent event may be there twice).
    pub async fn archived_hour(&self, hour: Millis) -> Result<Vec<Event>, RawError> {
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
        let mut events = Vec::new();
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
        Ok(events)
    }
}

/// The first offset of `partition` the archiver has not committed: where the archive ends
/// in the log (its first kept offset when the archiver has committed nothing there yet).
pub(crate) fn unarchived_from(
    log: &dyn EventLog,
    partition: &PartitionStats,
) -> Result<Offset, LogError> {
    let committed = log.committed(ARCHIVER_CONSUMER, partition.partition)?;
    Ok(committed.map_or(partition.first_offset, |c| c.max(partition.first_offset)))
}

/// The events the archiver has not committed, per partition from its position on.
fn unarchived_tail(log: &dyn EventLog) -> Result<Vec<Event>, LogError> {
    let stats = log.stats()?;
    let mut events = Vec::new();
    for partition in stats.partitions {
        let mut next = unarchived_from(log, &partition)?;
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

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use tally_connectors::log::{AppendRecord, Spool, SpoolOptions};

    use super::*;

    fn reject(tenant: &str, source: &str, received_at: Millis, codes: &[&str]) -> AppendRecord {
        let record = RejectedEvent {
            tenant: tenant.to_owned(),
            source: source.to_owned(),
            received_at,
            index: 0,
            reasons: codes.iter().map(|code| format!("{code}: why")).collect(),
            codes: codes.iter().map(|code| (*code).to_owned()).collect(),
            payload: "{}".to_owned(),
        };
        AppendRecord {
            partition: 0,
            payload: serde_json::to_vec(&record).unwrap(),
        }
    }

    #[tokio::test]
    async fn rejects_are_listed_by_code_and_source_and_counted_by_hour() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("rejected"), SpoolOptions::default()).unwrap();
        const HOUR: Millis = 1_795_881_600_000;
        spool
            .append(vec![
                reject("demo", "web", HOUR - HOUR_MS, &["unknown_tag"]),
                reject("demo", "web", HOUR + 1, &["unknown_tag", "missing_tag"]),
                reject("demo", "app", HOUR + 2, &["wrong_tag_type"]),
                reject("other", "web", HOUR + 3, &["unknown_tag"]),
                reject("demo", "web", HOUR + HOUR_MS, &["missing_tag"]),
            ])
            .await
            .unwrap();
        let objects = tally_connectors::object_store::open_local(&dir.path().join("o")).unwrap();
        let raw = RawEvents::new(objects, None, Some(Arc::new(spool)));
        let listed = |code: Option<&str>, source: Option<&str>, limit| {
            let wanted = RejectFilter {
                code: code.map(str::to_owned),
                source: source.map(str::to_owned),
            };
            let raw = &raw;
            async move {
                let found = raw.recent_rejected("demo", wanted, limit).await.unwrap();
                found.iter().map(|r| r.received_at).collect::<Vec<_>>()
            }
        };
        assert_eq!(
            listed(None, None, 10).await,
            [HOUR + HOUR_MS, HOUR + 2, HOUR + 1, HOUR - HOUR_MS],
            "newest first, the tenant's only"
        );
        assert_eq!(listed(None, None, 2).await, [HOUR + HOUR_MS, HOUR + 2]);
        assert_eq!(
            listed(Some("missing_tag"), None, 10).await,
            [HOUR + HOUR_MS, HOUR + 1],
            "any of the reasons"
        );
        assert_eq!(listed(None, Some("app"), 10).await, [HOUR + 2]);
        assert_eq!(
            listed(Some("missing_tag"), Some("app"), 10).await,
            [] as [Millis; 0]
        );

        let (counts, complete) = raw.rejected_counts("demo", HOUR).await.unwrap();
        assert!(complete);
        let expected = BTreeMap::from([
            ((HOUR, "unknown_tag".to_owned(), "web".to_owned()), 1),
            ((HOUR, "wrong_tag_type".to_owned(), "app".to_owned()), 1),
            (
                (HOUR + HOUR_MS, "missing_tag".to_owned(), "web".to_owned()),
                1,
            ),
        ]);
        assert_eq!(counts, expected, "by first code, from `since` on");
    }
}
