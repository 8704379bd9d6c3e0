//! The HTTP collector: `POST /v1/events` (JSON array or NDJSON) and the `GET /i` image beacon.
//!
//! Each event is validated on its own against its tenant's tag registry ([`intake`]); valid
//! events are appended to the event log, invalid ones with their reasons to the rejected
//! stream, and the request is answered only once both are durable. [`Collector::configure`]
//! mounts the routes on an actix-web `App`; [`IngestMetrics`] are what it measures. When the
//! event log is Kafka, the [`forwarder`] ships the spools to it.
//!
//! ```no_run
//! # fn wire(collector: actix_web::web::Data<tally_ingest::Collector>) {
//! let app = actix_web::App::new().configure(tally_ingest::Collector::configure(collector));
//! # }
//! ```

pub mod forwarder;
pub mod intake;
mod request;
mod routes;
mod strict_json;
mod telemetry;
pub mod trackers;

use std::sync::Arc;

use actix_cors::Cors;
use actix_web::http::{Method, header};
use actix_web::web;
use tally_connectors::catalog::CatalogHandle;
use tally_connectors::log::{AppendRecord, EventLog, LogError};
use tally_model::config::IngestConfig;
use tally_model::registry::ValidationContext;
use tally_model::{ApiKey, Catalog, Millis, RejectedEvent, partition_of};

pub use telemetry::IngestMetrics;

/// The collector's routes as an OpenAPI document, from the handlers' annotations.
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;

    #[derive(OpenApi)]
    #[openapi(
        paths(routes::post_events, routes::pixel, trackers::segment::post_batch,
            trackers::segment::post_call, trackers::snowplow::post_events,
            trackers::snowplow::post_events_keyed, trackers::snowplow::get_event_keyed,
            trackers::snowplow::preflight),
        tags((name = "ingest", description = "Tracking events in: the batch API and the image beacon"),
            (name = "trackers", description = "Segment's, RudderStack's and Snowplow's SDKs, unchanged (docs/trackers.md)"))
    )]
    struct IngestApi;

    IngestApi::openapi()
}

use crate::intake::{Intake, Judge};

/// The collector's shared state.
pub struct Collector {
    catalog: CatalogHandle,
    events: Arc<dyn EventLog>,
    rejected: Arc<dyn EventLog>,
    limits: IngestConfig,
    metrics: Arc<IngestMetrics>,
    pixel_timing: routes::PixelTiming,
}

impl Collector {
    /// A collector validating against `catalog` (as governance changes it), appending to
    /// `events` and `rejected`.
    pub fn new(
        catalog: CatalogHandle,
        events: Arc<dyn EventLog>,
        rejected: Arc<dyn EventLog>,
        limits: IngestConfig,
        metrics: Arc<IngestMetrics>,
    ) -> Collector {
        Collector {
            catalog,
            events,
            rejected,
            limits,
            metrics,
            pixel_timing: routes::PixelTiming::default(),
        }
    }

    /// Mounts the collector's routes, with CORS for browser senders: Tally's own, and the
    /// trackers' (Segment's and Snowplow's).
    pub fn configure(collector: web::Data<Collector>) -> impl Fn(&mut web::ServiceConfig) + Clone {
        use trackers::{segment, snowplow};
        move |config| {
            let cors = || {
                Cors::default()
                    .allow_any_origin()
                    .allowed_methods(["GET", "POST"])
                    .allowed_headers([
                        header::AUTHORIZATION,
                        header::CONTENT_TYPE,
                        header::CONTENT_ENCODING,
                    ])
                    .max_age(86_400)
            };
            config
                .app_data(collector.clone())
                .service(
                    web::resource("/v1/events")
                        .wrap(cors())
                        .route(web::post().to(routes::post_events)),
                )
                .route("/i", web::get().to(routes::pixel))
                .service(
                    web::resource(["/v1/batch", "/v1/b"])
                        .wrap(cors())
                        .route(web::post().to(segment::post_batch)),
                );
            for (_, call) in segment::Call::ALL {
                config.service(
                    web::resource([format!("/v1/{call}"), format!("/v1/{}", &call[..1])])
                        .wrap(cors())
                        .route(web::post().to(segment::post_call)),
                );
            }
            config
                .service(
                    web::resource("/com.snowplowanalytics.snowplow/tp2")
                        .route(web::post().to(snowplow::post_events))
                        .route(web::method(Method::OPTIONS).to(snowplow::preflight)),
                )
                .service(
                    web::resource("/sp/{key}/com.snowplowanalytics.snowplow/tp2")
                        .route(web::post().to(snowplow::post_events_keyed))
                        .route(web::method(Method::OPTIONS).to(snowplow::preflight)),
                )
                .route("/sp/{key}/i", web::get().to(snowplow::get_event_keyed));
        }
    }

    /// Whether the collector can acknowledge events: both streams take appends. Also
    /// refreshes the spool gauges.
    pub fn readiness(&self) -> Result<(), LogError> {
        self.events.appendable()?;
        self.rejected.appendable()?;
        self.refresh_metrics()
    }

    /// Updates the spool-size gauges; call before exporting metrics.
    pub fn refresh_metrics(&self) -> Result<(), LogError> {
        self.metrics.spool("events", &self.events.stats()?);
        self.metrics.spool("rejected", &self.rejected.stats()?);
        Ok(())
    }

    /// Appends the first `max_rejects_kept` rejects, then the accepted events, and waits
    /// until both are durable. The rejects go first, so that a request that could not be
    /// stored whole left no accepted event behind: the client's retry is the only copy.
    async fn store(
        &self,
        key: &ApiKey,
        received_at: Millis,
        verdict: &Intake,
    ) -> Result<(), LogError> {
        let partitions = self.events.partitions();
        let accepted = verdict
            .accepted
            .iter()
            .map(|event| AppendRecord::event(event, partitions))
            .collect::<Vec<_>>();
        let rejected_partition = partition_of(&key.tenant, &key.source, self.rejected.partitions());
        let rejected = verdict
            .rejected
            .iter()
            .take(self.limits.max_rejects_kept)
            .map(|rejection| {
                let record = RejectedEvent {
                    tenant: key.tenant.clone(),
                    source: key.source.clone(),
                    received_at,
                    index: rejection.index,
                    reasons: rejection.reasons.iter().map(ToString::to_string).collect(),
                    codes: rejection
                        .reasons
                        .iter()
                        .map(|r| r.code.to_owned())
                        .collect(),
                    payload: rejection.payload.clone(),
                };
                AppendRecord {
                    partition: rejected_partition,
                    payload: serde_json::to_vec(&record).expect("rejects serialize"),
                }
            })
            .collect::<Vec<_>>();
        if !rejected.is_empty() {
            self.rejected.append(rejected).await?;
        }
        if !accepted.is_empty() {
            self.events.append(accepted).await?;
        }
        self.metrics.accepted(verdict.accepted.len());
        for (reason, events) in &verdict.rejected_by_reason {
            self.metrics.rejected(reason, *events);
        }
        Ok(())
    }

    /// A judge of events against the key's tenant's registry, keeping the details of as many
    /// rejects as a reply lists or the rejected stream keeps. `tag_values_as_text` accepts
    /// numbers and bools sent as text, as query strings and Snowplow send them.
    fn judge<'a>(
        &self,
        key: &'a ApiKey,
        catalog: &'a Catalog,
        received_at: Millis,
        tag_values_as_text: bool,
    ) -> Judge<'a> {
        let context = ValidationContext {
            tenant: &key.tenant,
            source: &key.source,
            received_at,
            max_future_ms: self.limits.max_future_secs.saturating_mul(1000) as Millis,
            max_age_ms: self.limits.max_lateness_secs.saturating_mul(1000) as Millis,
            tag_values_as_text,
        };
        let detailed = self
            .limits
            .max_rejects_listed
            .max(self.limits.max_rejects_kept);
        Judge::new(
            &catalog.tenants[&key.tenant].registry,
            context,
            self.limits.max_event_bytes,
            detailed,
        )
    }
}

#[cfg(test)]
mod tests;
