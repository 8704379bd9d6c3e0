//! What the collector measures, in one place: every metric it exports to `/metrics`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tally_connectors::log::LogStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
    status: u16,
}

/// The label of a per-stream metric: `events` or `events.rejected`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StreamLabels {
    pub(crate) stream: &'static str,
}

/// The collector's metrics.
pub struct IngestMetrics {
    accepted: Counter,
    requests_refused: Family<ReasonLabels, Counter>,
    rejected: Family<ReasonLabels, Counter>,
    request_seconds: Family<RouteLabels, Histogram>,
    spool_bytes: Family<StreamLabels, Gauge>,
    fsync_seconds: Histogram,
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~3.3 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl IngestMetrics {
    /// Creates the metrics and registers them under `tally_ingest_*`.
    pub fn register(registry: &mut Registry) -> Arc<IngestMetrics> {
        let metrics = IngestMetrics {
            accepted: Counter::default(),
            requests_refused: Family::default(),
            rejected: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            spool_bytes: Family::default(),
            fsync_seconds: latency_histogram(),
        };
        let ingest = registry.sub_registry_with_prefix("tally_ingest");
        ingest.register(
            "events_accepted",
            "Events acknowledged durably",
            metrics.accepted.clone(),
        );
        ingest.register(
            "requests_refused",
            "Requests refused as a whole (no key, wrong type, too large, unreadable, slow, empty, not stored), by reason",
            metrics.requests_refused.clone(),
        );
        ingest.register(
            "events_rejected",
            "Events rejected, by reason code",
            metrics.rejected.clone(),
        );
        ingest.register(
            "request_seconds",
            "Request latency, by route and status",
            metrics.request_seconds.clone(),
        );
        ingest.register(
            "spool_bytes",
            "Bytes on disk in the spool, by stream",
            metrics.spool_bytes.clone(),
        );
        ingest.register(
            "fsync_seconds",
            "Duration of each spool fdatasync",
            metrics.fsync_seconds.clone(),
        );
        Arc::new(metrics)
    }

    /// A callback for the spool to report each fdatasync.
    pub fn fsync_observer(self: &Arc<Self>) -> Arc<dyn Fn(Duration) + Send + Sync> {
        let metrics = self.clone();
        Arc::new(move |elapsed| metrics.fsync_seconds.observe(elapsed.as_secs_f64()))
    }

    pub(crate) fn accepted(&self, events: usize) {
        self.accepted.inc_by(events as u64);
    }

    /// A request refused as a whole, before any of its events was judged.
    pub(crate) fn request_refused(&self, reason: &'static str) {
        self.requests_refused
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// `events` rejected; an event with several reasons counts once, under its first.
    pub(crate) fn rejected(&self, reason: &str, events: usize) {
        self.rejected
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc_by(events as u64);
    }

    /// A pixel with an unknown key: counted, not stored, so anonymous traffic cannot fill a
    /// tenant's rejected stream.
    pub(crate) fn unauthorized_pixel(&self) {
        self.rejected
            .get_or_create(&ReasonLabels {
                reason: "unauthorized".to_owned(),
            })
            .inc();
    }

    pub(crate) fn spool(&self, stream: &'static str, stats: &LogStats) {
        self.spool_bytes
            .get_or_create(&StreamLabels { stream })
            .set(stats.bytes as i64);
    }

    pub(crate) fn request(&self, route: &'static str, status: u16, started: Instant) {
        self.request_seconds
            .get_or_create(&RouteLabels { route, status })
            .observe(started.elapsed().as_secs_f64());
    }
}
