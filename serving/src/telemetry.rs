//! What serving measures: request latency per route, exported to `/metrics`.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
    status: u16,
}

/// Serving's metrics.
pub struct ServingMetrics {
    request_seconds: Family<RouteLabels, Histogram>,
}

impl ServingMetrics {
    /// Creates the metrics and registers them under `tally_serving_*`.
    pub fn register(registry: &mut Registry) -> Arc<ServingMetrics> {
        let metrics = ServingMetrics {
            // 50 µs to ~1.6 s.
            request_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.00005, 2.0, 16))
            }),
        };
        registry.sub_registry_with_prefix("tally_serving").register(
            "request_seconds",
            "Request latency, by route and status",
            metrics.request_seconds.clone(),
        );
        Arc::new(metrics)
    }

    /// Records one answered request.
    pub fn request(&self, route: &'static str, status: u16, started: Instant) {
        self.request_seconds
            .get_or_create(&RouteLabels { route, status })
            .observe(started.elapsed().as_secs_f64());
    }
}
