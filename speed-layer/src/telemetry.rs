//! What the speed layer measures, in one place: every metric it exports to `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    partition: u32,
}

/// The speed layer's metrics.
pub struct SpeedMetrics {
    events_in: Counter,
    events_counted: Counter,
    duplicates_dropped: Gauge,
    undecodable: Counter,
    pub(crate) unretractable: Counter,
    epochs: Counter,
    lag_records: Family<PartitionLabels, Gauge>,
    state_keys: Gauge,
    pub(crate) deduplicated_events: Gauge,
    seam_gap_seconds: Gauge,
    freshness_seconds: Histogram,
    views_building: Gauge,
}

impl SpeedMetrics {
    /// Creates the metrics and registers them under `tally_speed_*`.
    pub fn register(registry: &mut Registry) -> std::sync::Arc<SpeedMetrics> {
        let metrics = SpeedMetrics {
            events_in: Counter::default(),
            events_counted: Counter::default(),
            duplicates_dropped: Gauge::default(),
            undecodable: Counter::default(),
            unretractable: Counter::default(),
            epochs: Counter::default(),
            lag_records: Family::default(),
            state_keys: Gauge::default(),
            deduplicated_events: Gauge::default(),
            seam_gap_seconds: Gauge::default(),
            // 1 ms to ~65 s.
            freshness_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            views_building: Gauge::default(),
        };
        let speed = registry.sub_registry_with_prefix("tally_speed");
        speed.register(
            "events_in",
            "Events read from the log at or after the horizon",
            metrics.events_in.clone(),
        );
        speed.register(
            "events_counted",
            "Events counted in the views: first copies of their event_id",
            metrics.events_counted.clone(),
        );
        speed.register(
            "duplicates_dropped",
            "Events read but not counted, as copies of an earlier event_id",
            metrics.duplicates_dropped.clone(),
        );
        speed.register(
            "undecodable",
            "Log records that are not events",
            metrics.undecodable.clone(),
        );
        speed.register(
            "unretractable",
            "Events whose dedupe choice changed after they were counted, with different content",
            metrics.unretractable.clone(),
        );
        speed.register("epochs", "Epochs closed", metrics.epochs.clone());
        speed.register(
            "lag_records",
            "Records in the log not yet in the views, by partition",
            metrics.lag_records.clone(),
        );
        speed.register(
            "state_keys",
            "View keys held in memory",
            metrics.state_keys.clone(),
        );
        speed.register(
            "deduplicated_events",
            "Distinct events the dedupe holds: those of hours at or after the horizon",
            metrics.deduplicated_events.clone(),
        );
        speed.register(
            "seam_gap_seconds",
            "Width of the buckets in neither layer, when the batch layer published a horizon behind the speed layer's (0 normally)",
            metrics.seam_gap_seconds.clone(),
        );
        speed.register(
            "freshness_seconds",
            "Received to visible in the view store, for the oldest event of each caught-up epoch",
            metrics.freshness_seconds.clone(),
        );
        speed.register(
            "views_building",
            "Workers building a changed catalog's views beside the running ones",
            metrics.views_building.clone(),
        );
        std::sync::Arc::new(metrics)
    }

    /// A worker started (`true`) or finished a build of changed views.
    pub(crate) fn building(&self, started: bool) {
        self.views_building.inc_by(if started { 1 } else { -1 });
    }

    pub(crate) fn events_in(&self, events: u64) {
        self.events_in.inc_by(events);
    }

    pub(crate) fn events_counted(&self, events: u64) {
        self.events_counted.inc_by(events);
    }

    pub(crate) fn undecodable(&self) {
        self.undecodable.inc();
    }

    pub(crate) fn unretractable(&self) {
        self.unretractable.inc();
    }

    pub(crate) fn epoch_closed(&self, lag: &[(u32, u64)], freshness: Option<Duration>) {
        self.epochs.inc();
        let duplicates = self
            .events_in
            .get()
            .saturating_sub(self.events_counted.get());
        self.duplicates_dropped.set(duplicates as i64);
        for (partition, records) in lag {
            self.lag_records
                .get_or_create(&PartitionLabels {
                    partition: *partition,
                })
                .set(*records as i64);
        }
        if let Some(freshness) = freshness {
            self.freshness_seconds.observe(freshness.as_secs_f64());
        }
    }

    pub(crate) fn seam_gap(&self, seconds: i64) {
        self.seam_gap_seconds.set(seconds);
    }

    pub(crate) fn deduplicated_events_changed(&self, delta: i64) {
        self.deduplicated_events.inc_by(delta);
    }

    pub(crate) fn state_keys_changed(&self, delta: i64) {
        self.state_keys.inc_by(delta);
    }
}
