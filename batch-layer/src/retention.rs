//! Raw retention: raw events are kept as long as their event type's `retention_days` in the
//! tenant's registry says (395 days unless set), then dropped from the raw Parquet.
//!
//! A raw object mixes tenants and event types, so an hour object whose events have all
//! expired is deleted, and one where only some have is rewritten in place without them (an
//! object store `put` replaces an object whole: a reader sees the old object or the new one).
//! An event expires once its whole event-time hour is older than its retention. Batch views
//! are not touched: the numbers stay, only the raw events behind them go. So that a
//! rewritten hour does not look dirty to recompute, the hours a view's raw events may have
//! left are frozen for it ([`frozen_before`]): recompute neither redoes nor reprocesses them.
//! Rejected events are archived by receive hour and not expired here.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tally_connectors::archive::{events_from_parquet, events_to_parquet};
use tally_model::layout::{RawStream, parse_hour_partition};
use tally_model::registry::{DEFAULT_RETENTION_DAYS, EventTypeSpec};
use tally_model::time::{DAY_MS, HOUR_MS};
use tally_model::{Catalog, Event, Millis, ViewSpec};

use crate::BatchError;
use crate::sweep::delete;

/// What a retention pass dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Raw objects deleted: every event in them had expired.
    pub deleted: usize,
    /// Raw objects rewritten without their expired events.
    pub rewritten: usize,
    /// Events dropped in all.
    pub events: u64,
}

fn retention_ms(days: u32) -> Millis {
    Millis::from(days) * DAY_MS
}

/// How long the catalog keeps raw events of each tenant and event type.
struct Retention<'a> {
    catalog: &'a Catalog,
    default_ms: Millis,
    shortest_ms: Millis,
}

impl<'a> Retention<'a> {
    fn new(catalog: &'a Catalog) -> Self {
        let default_ms = retention_ms(DEFAULT_RETENTION_DAYS);
        let shortest_ms = catalog
            .tenants
            .values()
            .flat_map(|tenant| tenant.registry.event_types.values())
            .map(Self::days)
            .fold(default_ms, Millis::min);
        Retention {
            catalog,
            default_ms,
            shortest_ms,
        }
    }

    fn days(spec: &EventTypeSpec) -> Millis {
        retention_ms(spec.retention_days)
    }

    /// An event type no longer registered keeps the default retention.
    fn of(&self, event: &Event) -> Millis {
        self.catalog
            .tenants
            .get(&event.tenant)
            .and_then(|tenant| tenant.registry.event_types.get(&event.event_type))
            .map_or(self.default_ms, Self::days)
    }
}

/// The end of the hours that are frozen for `spec` of `tenant` at `now`: hours ending at or
/// before it may have lost raw events of a type the view covers, so their computed states
/// are final.
pub fn frozen_before(catalog: &Catalog, tenant: &str, spec: &ViewSpec, now: Millis) -> Millis {
    let event_types = catalog
        .tenants
        .get(tenant)
        .map(|tenant| &tenant.registry.event_types);
    let shortest = event_types
        .into_iter()
        .flatten()
        .filter(|(name, _)| spec.covers(name))
        .map(|(_, event_type)| Retention::days(event_type))
        .fold(retention_ms(DEFAULT_RETENTION_DAYS), Millis::min);
    now.saturating_sub(shortest)
}

/// Drops the raw events whose retention has passed by `now` (ms).
pub async fn expire_raw_events(
    store: Arc<dyn ObjectStore>,
    catalog: &Catalog,
    now: Millis,
) -> Result<RetentionReport, BatchError> {
    let retention = Retention::new(catalog);
    let prefix = RawStream::Events.prefix();
    let objects: Vec<_> = store
        .list(Some(&ObjectPath::from(prefix)))
        .try_collect()
        .await
        .map_err(|source| BatchError::store(prefix, source))?;
    let mut report = RetentionReport::default();
    for meta in objects {
        let path = meta.location.to_string();
        let Some(hour) = parse_hour_partition(&path) else {
            continue;
        };
        let hour_end = hour + HOUR_MS;
        // Nothing here can have expired: skip without reading.
        if hour_end.saturating_add(retention.shortest_ms) > now {
            continue;
        }
        let bytes = store
            .get(&meta.location)
            .await
            .map_err(|source| BatchError::store(&path, source))?
            .bytes()
            .await
            .map_err(|source| BatchError::store(&path, source))?;
        let logged = events_from_parquet(&bytes)?;
        let before = logged.len();
        let kept: Vec<_> = logged
            .into_iter()
            .filter(|logged| hour_end.saturating_add(retention.of(&logged.record)) > now)
            .collect();
        if kept.len() == before {
            continue;
        }
        report.events += (before - kept.len()) as u64;
        if kept.is_empty() {
            delete(&store, &meta.location).await?;
            report.deleted += 1;
        } else {
            let bytes = events_to_parquet(&kept)?;
            store
                .put(&meta.location, PutPayload::from(bytes))
                .await
                .map_err(|source| BatchError::store(&path, source))?;
            report.rewritten += 1;
        }
    }
    if report != RetentionReport::default() {
        tracing::info!(
            deleted = report.deleted,
            rewritten = report.rewritten,
            events = report.events,
            "dropped raw events past their retention"
        );
    }
    Ok(report)
}
