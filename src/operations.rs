//! Every process's own routes: `/healthz`, `/readyz` (what each layer in the process says
//! of itself), `/metrics` and `/openapi.json`, for `tally up` and the single-role processes
//! alike, and alone for a batch job.

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context;
use prometheus_client::registry::Registry;
use tally_batch_layer::telemetry::BatchMetrics;
use tally_ingest::Collector;
use tally_ingest::forwarder::ForwarderStatus;
use tally_model::time::format_rfc3339;
use tally_serving::raw::LogReach;
use tally_serving::search::indexer::IndexerStatus;
use tally_speed_layer::SpeedHandle;

/// What the HTTP handlers of health and metrics look at.
pub struct Services {
    /// Every layer's metrics.
    pub registry: Registry,
    /// The collector, when this process runs one.
    pub collector: Option<web::Data<Collector>>,
    /// The Kafka forwarders' statuses, when the log is Kafka.
    pub forwarders: Vec<Arc<ForwarderStatus>>,
    /// The speed layer, when this process runs it.
    pub speed: Option<Arc<SpeedHandle>>,
    /// The batch jobs' health, when this process runs them.
    pub batch: Option<Arc<BatchMetrics>>,
    /// The full-text search indexer's state, when this process runs it.
    pub search: Option<Arc<IndexerStatus>>,
    /// Whether serving's raw reads reach the event log, when this process serves.
    pub raw_reads: Option<Arc<LogReach>>,
    /// `/openapi.json`, rendered once.
    pub openapi: String,
}

/// Every process's own routes: health, readiness, `/metrics` and `/openapi.json`.
pub fn operations_routes(routes: &mut web::ServiceConfig) {
    routes
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics_text))
        .route("/openapi.json", web::get().to(openapi_json));
}

/// Health, readiness, `/metrics` and `/openapi.json` alone, for a batch job running as its own
/// process: bound to `listen`, to be awaited (or stopped through its handle).
pub fn operations_server(
    listen: &str,
    registry: Registry,
    batch: Arc<BatchMetrics>,
) -> anyhow::Result<(SocketAddr, actix_web::dev::Server)> {
    let services = web::Data::new(Services {
        registry,
        collector: None,
        forwarders: Vec::new(),
        speed: None,
        batch: Some(batch),
        search: None,
        raw_reads: None,
        openapi: openapi_document(false, false),
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(services.clone())
            .configure(operations_routes)
    })
    .workers(1)
    .disable_signals()
    .bind(listen)
    .with_context(|| format!("listening on {listen} (set --listen)"))?;
    let address = *server
        .addrs()
        .first()
        .context("the server bound no address")?;
    Ok((address, server.run()))
}

/// One OpenAPI document for the routes this process serves: its own, and the collector's and
/// serving's when it runs them, with the bearer key scheme they refer to.
pub fn openapi_document(collector: bool, serving: bool) -> String {
    use utoipa::OpenApi;
    use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

    #[derive(OpenApi)]
    #[openapi(
        info(title = "Tally", description = "Event analytics: collect every tracking event, query fresh and recomputable views"),
        paths(healthz, readyz, metrics_text, openapi_json),
        tags((name = "operations", description = "Health, readiness, metrics and this document"))
    )]
    struct ProcessApi;

    let mut document = ProcessApi::openapi();
    if collector {
        document.merge(tally_ingest::openapi());
    }
    if serving {
        document.merge(tally_serving::openapi::openapi());
    }
    document
        .components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
        tally_serving::openapi::SECURITY_SCHEME,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API key: write for ingest, read for queries, admin for governance changes",
                ))
                .build(),
        ),
    );
    document
        .to_pretty_json()
        .expect("an OpenAPI document serializes")
}

/// `GET /openapi.json`: this document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document of this process's routes", content_type = "application/json")))]
async fn openapi_json(services: web::Data<Services>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(services.openapi.clone())
}

/// `GET /healthz`: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Up", body = Object)))]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// `GET /readyz`: every layer in this process can do its work.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready, or degraded, with every reason in `error` (Kafka or the object store unreachable: events are kept in the log and forwarded or archived when it returns, and raw reads answer from the archive alone meanwhile; or a gap at the seam between the layers; or the search index rebuilding or failing: searches with q= miss events meanwhile)", body = Object),
        (status = 503, description = "A layer failed; `error` says which and why", body = Object)))]
async fn readyz(services: web::Data<Services>) -> HttpResponse {
    let collector = services
        .collector
        .as_ref()
        .map(|c| c.readiness().map_err(|e| e.to_string()));
    let speed = services
        .speed
        .as_ref()
        .and_then(|s| s.failure())
        .map(Err::<(), String>);
    if let Some(error) = collector.into_iter().chain(speed).find_map(Result::err) {
        return HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"status": "unavailable", "error": error}));
    }
    // Ingest still acknowledges while Kafka or the object store is away, and the log keeps
    // what is not yet forwarded or archived: degraded, not down.
    let forwarding = services
        .forwarders
        .iter()
        .find_map(|f| f.failure())
        .map(|error| format!("forwarding to Kafka: {error}; the spool keeps the backlog"));
    let batch = services
        .batch
        .as_ref()
        .and_then(|b| b.failure())
        .map(|error| {
            format!("batch layer: {error}; it retries, and the log keeps what is not archived")
        });
    let seam = services
        .speed
        .as_ref()
        .and_then(|s| s.seam_gap())
        .map(|gap| {
            format!(
                "buckets from {} to {} are in neither layer: the batch layer published a horizon behind the speed layer's; they return when it catches up, or now if the speed layer restarts while the log still holds them",
                format_rfc3339(gap.start),
                format_rfc3339(gap.end)
            )
        });
    let views = services
        .speed
        .as_ref()
        .and_then(|s| s.retrying())
        .map(|error| format!("the speed layer waits for the view store: {error}"));
    let search = services.search.as_ref().and_then(|s| s.degraded());
    let raw_reads = services
        .raw_reads
        .as_ref()
        .and_then(|reach| reach.degraded())
        .map(|error| format!("raw reads: {error}"));
    let degraded: Vec<String> = [forwarding, batch, views, seam, search, raw_reads]
        .into_iter()
        .flatten()
        .collect();
    match degraded.is_empty() {
        true => HttpResponse::Ok().json(serde_json::json!({"status": "ready"})),
        false => HttpResponse::Ok().json(serde_json::json!({
            "status": "degraded",
            "error": degraded.join("; "),
        })),
    }
}

/// `GET /metrics`: Prometheus metrics (OpenMetrics text) of every layer in this process.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text")))]
async fn metrics_text(services: web::Data<Services>) -> HttpResponse {
    if let Some(Err(err)) = services.collector.as_ref().map(|c| c.refresh_metrics()) {
        tracing::warn!(error = %err, "could not read spool sizes for /metrics");
    }
    for forwarder in &services.forwarders {
        if let Err(err) = forwarder.backlog() {
            tracing::warn!(error = %err, "could not read the forwarder's backlog for /metrics");
        }
    }
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &services.registry) {
        Ok(()) => HttpResponse::Ok()
            .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(text),
        Err(err) => HttpResponse::InternalServerError().body(err.to_string()),
    }
}
