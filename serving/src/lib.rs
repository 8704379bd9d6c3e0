//! Serving: the read side of Tally over HTTP (actix-web).
//!
//! - [`query`]: `GET /v1/query`, one view over a range, batch views before the published
//!   horizon and real-time views after it, rolled up, grouped, filtered and measured.
//! - `seed`: the seed dashboards' API, `GET /v1/events/count` and `GET /v1/events/search`.
//! - [`governance`]: the tag registry, views and keys of a tenant (admin key), suggestions,
//!   recent rejected events; [`review`]: a view's logic versions, a reprocess staged for
//!   review and its promotion, as batch jobs the batch scheduler runs; `publishers`: which
//!   sources publish a tag, from the search index.
//! - [`raw`]: raw events for search, from the archive and the log tail; [`search`]: the
//!   full-text index of recent raw events behind `q=`, fed from the log.
//! - `cache`: what serving keeps between queries, under one typed key.
//! - the dashboard at `/`: analytics, governance and search pages over the same API.
//! - [`openapi`]: the OpenAPI document of these routes.
//!
//! Every route needs a key of the right scope and sees only the key's tenant.
//! [`Serving::configure`] mounts the routes on an actix-web `App`.

mod cache;
mod dashboard;
pub mod governance;
mod live;
pub mod openapi;
mod publishers;
pub mod query;
pub mod raw;
pub mod review;
pub mod search;
mod seed;
mod telemetry;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use tally_connectors::batch_views::{BatchHour, BatchViews, BatchViewsError, FifoCache, row_bytes};
use tally_connectors::catalog::{CatalogHandle, CatalogStore};
use tally_connectors::rate_limit::ChangeBudget;
use tally_connectors::view_store::{ViewKey, ViewStore, ViewStoreError};
use tally_model::config::ServingConfig;
use tally_model::time::{HOUR_MS, format_rfc3339, now_millis};
use tally_model::{AggregateState, ApiKey, Granularity, Millis, Scope};
use thiserror::Error;

pub use telemetry::ServingMetrics;

use crate::cache::{RowsCache, RowsKey, RowsSource, cached};
use crate::live::LiveSpecs;
use crate::query::{
    BatchReading, Projection, Query, QueryError, QueryGranularity, QueryParams, RenderedHour,
    RenderedRows, RolledHour, Rollup, Sources,
};
use crate::raw::{RawError, RawEvents};
use crate::search::SearchIndex;
use crate::search::indexer::IndexerStatus;

/// Serving's shared state.
pub struct Serving {
    catalog: CatalogHandle,
    governance: Option<CatalogStore>,
    speed_views: Arc<dyn ViewStore>,
    batch_views: BatchViews,
    raw: RawEvents,
    search: Option<Arc<SearchIndex>>,
    /// What the search index's indexer is doing: a `q=` answer says when hits may be missing.
    search_status: Option<Arc<IndexerStatus>>,
    metrics: Arc<ServingMetrics>,
    limits: ServingConfig,
    /// Whole batch hours rolled up per query shape, for answers by day or the whole range,
    /// whose rows merge several hours: dashboards repeat their queries.
    rolled_hours: RowsCache<RolledHour>,
    /// Whole batch hours rendered per query, for answers by minute or hour, where an hour's
    /// rows are its own.
    rendered_hours: RowsCache<RenderedHour>,
    /// The real-time rows of recent answers by minute or hour, per view generation.
    realtime_rows: RowsCache<RenderedRows>,
    /// Real-time rows being built, by their cache key.
    realtime_builds: Mutex<HashMap<RowsKey, Arc<RealtimeBuild>>>,
    /// Which spec's real-time states answer each view.
    live_specs: LiveSpecs,
    /// Each tenant's governance changes a minute.
    governance_changes: ChangeBudget,
}

/// One build of real-time rows that the queries missing its key share: `None` once it
/// failed.
type RealtimeBuild = OnceLock<Option<Arc<RenderedRows>>>;

/// The real-time part of an answer.
enum Realtime {
    /// States to merge with the batch rows of their buckets (answers by day or over the
    /// whole range), and how they map onto the query.
    States(Vec<(ViewKey, AggregateState)>, Projection),
    /// Rows that no batch row merges into (answers by minute or hour), rendered.
    Rendered(Arc<RenderedRows>),
}

/// Bytes of rolled batch hours serving keeps.
const ROLLED_HOURS_CACHE_BYTES: usize = 256 << 20;
/// Bytes of rendered batch hours serving keeps.
const RENDERED_HOURS_CACHE_BYTES: usize = 128 << 20;
/// Bytes of rendered real-time rows serving keeps.
const REALTIME_ROWS_CACHE_BYTES: usize = 32 << 20;

/// Why a read failed on the server's side.
#[derive(Debug, Error)]
pub enum ServingError {
    /// The request is the caller's to fix.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// The real-time view store failed.
    #[error("real-time views: {0}")]
    SpeedViews(#[from] ViewStoreError),
    /// The batch views failed.
    #[error("batch views: {0}")]
    BatchViews(#[from] BatchViewsError),
    /// Raw events could not be read.
    #[error("raw events: {0}")]
    Raw(#[from] RawError),
    /// Two states of one row could not merge: a store holds a state of another view version.
    #[error("merging states: {0}")]
    Merge(#[from] tally_model::state::MergeError),
    /// The view changed, and the real-time states that answer the query are still being built.
    #[error("{0}")]
    Building(String),
    /// The batch layer cannot recompute the view, so part of the range is in neither layer.
    #[error(
        "view '{view}' cannot be recomputed by the batch layer ({reason}), so its hours from {from} on are missing before the batch horizon; fix its spec (PUT /v1/governance/views/{view}), or query from the horizon on ({horizon})"
    )]
    ViewFailing {
        /// The view.
        view: String,
        /// Why its recompute fails.
        reason: String,
        /// Where its own batch hours stop.
        from: String,
        /// The batch horizon, from which the speed layer answers.
        horizon: String,
    },
}

impl ServingError {
    fn status(&self) -> StatusCode {
        match self {
            ServingError::Query(_) => StatusCode::BAD_REQUEST,
            ServingError::Building(_) | ServingError::ViewFailing { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An answer to `GET /v1/query`.
#[derive(Debug, utoipa::ToSchema)]
pub struct QueryAnswer {
    /// The view queried.
    pub view: String,
    /// The answer's bucket width.
    pub granularity: String,
    /// The published batch horizon, if any.
    pub horizon: Option<String>,
    /// Which layer answered which part of the range.
    pub sources: Sources,
    /// With `logic_version=`: what was read, and how many live hours of the range the version
    /// lacks (those hours are left out of the answer).
    pub review: Option<Review>,
    /// One object per bucket and group values: `bucket`, the group-by dimensions, the measures.
    #[schema(value_type = Vec<Object>, example = json!([{"bucket": "2026-11-22T10:00:00Z", "country": "FR", "count": 42, "sum(revenue)": 310.5}]))]
    pub rows: AnswerRows,
}

/// What a review of a logic version read ([`QueryAnswer::review`]).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Review {
    /// The logic version read; none for the live hours.
    pub logic_version: Option<tally_model::LogicVersion>,
    /// Live hours in the range with no state of that version, staged or live.
    pub hours_without_it: usize,
}

/// An answer's rows as the text of a JSON array: written once, mostly from cached rendered
/// hours, and sent as it is.
#[derive(Debug)]
pub struct AnswerRows(String);

impl AnswerRows {
    /// The rows as JSON values.
    pub fn values(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.0).expect("answer rows are written as a JSON array")
    }
}

impl QueryAnswer {
    /// The answer as the JSON object `GET /v1/query` sends.
    pub fn to_json(&self) -> String {
        #[derive(serde::Serialize)]
        struct Head<'a> {
            view: &'a str,
            granularity: &'a str,
            horizon: &'a Option<String>,
            sources: &'a Sources,
            #[serde(skip_serializing_if = "Option::is_none")]
            review: &'a Option<Review>,
        }
        let head = Head {
            view: &self.view,
            granularity: &self.granularity,
            horizon: &self.horizon,
            sources: &self.sources,
            review: &self.review,
        };
        let mut out = serde_json::to_string(&head).expect("strings serialize");
        out.pop(); // The closing brace: the rows go last.
        out.push_str(",\"rows\":");
        out.push_str(&self.rows.0);
        out.push('}');
        out
    }
}

impl Serving {
    /// Serving over these stores; `raw` is what search reads. Governance saves changes to
    /// `governance`; without one the catalog is read-only here.
    pub fn new(
        catalog: CatalogHandle,
        governance: Option<CatalogStore>,
        speed_views: Arc<dyn ViewStore>,
        batch_views: BatchViews,
        raw: RawEvents,
        metrics: Arc<ServingMetrics>,
        limits: ServingConfig,
    ) -> Serving {
        Serving {
            catalog,
            governance,
            speed_views,
            batch_views,
            raw,
            search: None,
            search_status: None,
            metrics,
            limits,
            rolled_hours: Mutex::new(FifoCache::new(ROLLED_HOURS_CACHE_BYTES)),
            rendered_hours: Mutex::new(FifoCache::new(RENDERED_HOURS_CACHE_BYTES)),
            realtime_rows: Mutex::new(FifoCache::new(REALTIME_ROWS_CACHE_BYTES)),
            realtime_builds: Mutex::default(),
            live_specs: LiveSpecs::default(),
            governance_changes: ChangeBudget::default(),
        }
    }

    /// The raw events search reads.
    pub fn raw(&self) -> &RawEvents {
        &self.raw
    }

    /// The same serving, answering `q=` searches from `index`, which the indexer of `status`
    /// feeds.
    pub fn with_search(self, index: Arc<SearchIndex>, status: Arc<IndexerStatus>) -> Serving {
        Serving {
            search: Some(index),
            search_status: Some(status),
            ..self
        }
    }

    /// Mounts the read routes.
    pub fn configure(serving: web::Data<Serving>) -> impl Fn(&mut web::ServiceConfig) + Clone {
        move |config| {
            config
                .app_data(serving.clone())
                .route("/v1/query", web::get().to(get_query))
                .route("/v1/events/count", web::get().to(seed::count))
                .route("/v1/events/search", web::get().to(seed::search))
                .configure(governance::routes)
                .configure(review::routes)
                .route(
                    "/v1/governance/tags/{name}/publishers",
                    web::get().to(publishers::publishers),
                )
                .configure(dashboard::routes);
        }
    }

    /// Answers a query for `tenant`. The real-time view store is read on a blocking thread,
    /// as the raw events are: a store call (a ScyllaDB round trip, say) never holds up the
    /// HTTP worker's other requests.
    pub async fn query(
        self: &Arc<Self>,
        tenant: &str,
        params: &QueryParams,
    ) -> Result<QueryAnswer, ServingError> {
        let catalog = self.catalog.current();
        let Some(tenant_spec) = catalog.tenants.get(tenant) else {
            return Err(QueryError::UnknownTenant(tenant.to_owned()).into());
        };
        let query = Query::parse(params, tenant_spec, now_millis())?;
        let view = &query.view;
        let range = query.from..query.to;
        // Real-time states first, then the manifest: see the module doc of `query`. A review
        // of a logic version reads that version's batch states alone, over the whole range.
        let realtime = match query.batch_only {
            Some(_) => None,
            None => {
                let (serving, tenant, query) = (self.clone(), tenant.to_owned(), query.clone());
                let read = tokio::task::spawn_blocking(move || serving.realtime(&tenant, &query));
                Some(
                    read.await
                        .expect("reading the real-time views does not panic")?,
                )
            }
        };
        let manifest = self.batch_views.manifest().await?;
        let horizon = manifest.as_ref().map(|m| m.horizon);
        if query.batch_only.is_none()
            && let Some(manifest) = &manifest
            && let Some(entry) = manifest.view(tenant, &view.name)
            && let Some(reason) = &entry.failing
            && range.start < manifest.horizon
            && range.end > entry.horizon
        {
            return Err(ServingError::ViewFailing {
                view: view.name.clone(),
                reason: reason.clone(),
                from: format_rfc3339(entry.horizon.max(range.start)),
                horizon: format_rfc3339(manifest.horizon),
            });
        }
        let seam = match query.batch_only {
            Some(_) => range.end,
            None => horizon.unwrap_or(Millis::MIN).clamp(range.start, range.end),
        };
        let review = query.batch_only.map(|reading| Review {
            logic_version: reading.version(),
            hours_without_it: (manifest.as_ref())
                .and_then(|manifest| manifest.view(tenant, &view.name))
                .zip(reading.version())
                .map_or(0, |(entry, version)| {
                    entry.hours_lacking(version, range.clone())
                }),
        });

        let mut rollup = Rollup::new(&query);
        if let Some(manifest) = &manifest {
            let batch_range = range.start..seam;
            let hours = self
                .batch_views
                .read_hours(
                    manifest,
                    tenant,
                    &view.name,
                    batch_range.clone(),
                    query.batch_only.and_then(BatchReading::version),
                )
                .await?;
            let entry = manifest.view(tenant, &view.name);
            for hour in hours {
                let spec = entry
                    .and_then(|entry| entry.versions.get(&hour.logic_version))
                    .ok_or_else(|| BatchViewsError::Corrupt {
                        path: "manifests/CURRENT".to_owned(),
                        reason: format!(
                            "view '{}' has no spec for logic version {}",
                            view.name, hour.logic_version
                        ),
                    })?;
                let projection =
                    Projection::new(spec, &query).map_err(|lacking| QueryError::OlderLogic {
                        view: view.name.clone(),
                        hour: tally_model::time::format_rfc3339(hour.hour),
                        version: hour.logic_version,
                        lacking,
                    })?;
                let whole =
                    batch_range.start <= hour.hour && hour.hour + HOUR_MS <= batch_range.end;
                match (query.granularity, whole) {
                    // A whole hour answers the same for every query of this shape: rendered
                    // once when its rows are its own, rolled up once when they merge on.
                    (QueryGranularity::Bucketed(Granularity::Day), true) => {
                        let source = RowsSource::BatchObject(hour.object.clone());
                        let key = RowsKey::rolled(source, &projection, &query);
                        let rolled = whole_hour(
                            &self.rolled_hours,
                            key,
                            &query,
                            &projection,
                            &hour,
                            |rollup| {
                                let rolled = rollup.into_rolled();
                                let size = rolled
                                    .iter()
                                    .map(|((_, group), state)| row_bytes(group, state))
                                    .sum();
                                (rolled, size)
                            },
                        )?;
                        rollup.add_rolled(&rolled)?;
                    }
                    (QueryGranularity::Bucketed(_), true) => {
                        let source = RowsSource::BatchObject(hour.object.clone());
                        let key = RowsKey::rendered(source, &projection, &query);
                        let rendered = whole_hour(
                            &self.rendered_hours,
                            key,
                            &query,
                            &projection,
                            &hour,
                            |rollup| {
                                let rendered = rollup.render_fragment();
                                let size = rendered.len();
                                (rendered, size)
                            },
                        )?;
                        rollup.add_rendered(hour.hour, rendered);
                    }
                    _ => rollup.add_rows(&projection, &hour.rows, &batch_range)?,
                }
            }
        }
        match realtime {
            None => {}
            Some(Realtime::States(states, projection)) => {
                for (key, state) in &states {
                    if key.bucket >= seam {
                        rollup.add(&projection, key.bucket, &key.dimensions, state)?;
                    }
                }
            }
            Some(Realtime::Rendered(rows)) => {
                rollup.add_rendered(seam, Arc::new(rows.from_bucket(seam)))
            }
        }
        Ok(QueryAnswer {
            view: view.name.clone(),
            granularity: query.granularity.to_string(),
            horizon: horizon.map(tally_model::time::format_rfc3339),
            sources: Sources::split(&range, seam),
            review,
            rows: AnswerRows(rollup.into_json(self.limits.max_answer_bytes)?),
        })
    }

    /// The real-time part of an answer over the query's whole range; the caller keeps what
    /// is at or after the seam. Answers by minute or hour take their real-time rows alone,
    /// so those are rendered and kept while the store's generation for the view stays.
    fn realtime(&self, tenant: &str, query: &Query) -> Result<Realtime, ServingError> {
        // The states of the spec the speed layer has complete: the current one, or while a
        // change is being built, the one before it.
        let spec = (self.live_specs).spec_for(self.speed_views.as_ref(), tenant, &query.view)?;
        let projection = Projection::new(&spec, query).map_err(|lacking| {
            ServingError::Building(format!(
                "view '{}' changed: the speed layer is building the new spec's real-time states from the events since the horizon, and the spec it answers with until then has no {lacking}; retry in a few seconds",
                spec.name
            ))
        })?;
        let view = &spec.stored_name();
        let range = query.from..query.to;
        if !matches!(
            query.granularity,
            QueryGranularity::Bucketed(Granularity::Minute | Granularity::Hour)
        ) {
            return Ok(Realtime::States(
                self.speed_views.scan(tenant, view, range)?,
                projection,
            ));
        }
        let generation = self.speed_views.generation(tenant, view)?;
        let Some(kept_at) = generation else {
            let rows = self.render_realtime(tenant, view, query, &projection)?;
            return Ok(Realtime::Rendered(rows));
        };
        let source = RowsSource::Realtime {
            tenant: tenant.to_owned(),
            view: view.clone(),
            generation: kept_at,
            from: query.from,
            to: query.to,
        };
        let key = RowsKey::rendered(source, &projection, query);
        if let Some(rows) = self.realtime_rows.lock().expect("cache lock").get(&key) {
            return Ok(Realtime::Rendered(rows));
        }
        // Queries that miss the same key wait for one build instead of each making its own.
        let build = self
            .realtime_builds
            .lock()
            .expect("builds lock")
            .entry(key.clone())
            .or_default()
            .clone();
        let built = build.get_or_init(|| {
            let rows = self
                .render_realtime(tenant, view, query, &projection)
                .ok()?;
            // Kept only if nothing was written while it was read.
            if self.speed_views.generation(tenant, view).ok()? == generation {
                let size = rows.size();
                let mut cache = self.realtime_rows.lock().expect("cache lock");
                cache.insert(key.clone(), rows.clone(), size);
            }
            Some(rows)
        });
        self.realtime_builds
            .lock()
            .expect("builds lock")
            .remove(&key);
        match built {
            Some(rows) => Ok(Realtime::Rendered(rows.clone())),
            // The build failed: again, to report why.
            None => Ok(Realtime::Rendered(self.render_realtime(
                tenant,
                view,
                query,
                &projection,
            )?)),
        }
    }

    /// The real-time rows of the query's whole range, read from the states stored under
    /// `view` (the spec's stored name) and rendered now.
    fn render_realtime(
        &self,
        tenant: &str,
        view: &str,
        query: &Query,
        projection: &Projection,
    ) -> Result<Arc<RenderedRows>, ServingError> {
        let mut rollup = Rollup::new(query);
        let range = query.from..query.to;
        for (key, state) in self.speed_views.scan(tenant, view, range)? {
            rollup.add(projection, key.bucket, &key.dimensions, &state)?;
        }
        Ok(Arc::new(rollup.into_rendered_rows()))
    }

    /// The key of the request, if it carries `scope`.
    fn authorize(&self, request: &HttpRequest, scope: Scope) -> Result<ApiKey, Refusal> {
        let header = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        self.catalog
            .current()
            .authorize(header, scope, now_millis())
            .cloned()
            .map_err(|refused| {
                let status =
                    StatusCode::from_u16(refused.status()).expect("401 and 403 are statuses");
                (status, refused.to_string())
            })
    }
}

/// A whole batch hour's rows for a query, from `cache`, or rolled up now, finished into
/// what the cache keeps (with its size) and cached: a whole hour answers the same for every
/// query of one shape, rendered once when its rows are its own (answers by minute or hour),
/// rolled up once when they merge on (answers by day).
fn whole_hour<V>(
    cache: &RowsCache<V>,
    key: RowsKey,
    query: &Query,
    projection: &Projection,
    hour: &BatchHour,
    finish: impl FnOnce(Rollup<'_>) -> (V, usize),
) -> Result<Arc<V>, ServingError> {
    cached(cache, key, || {
        let mut rollup = Rollup::new(query);
        rollup.add_rows(projection, &hour.rows, &(Millis::MIN..Millis::MAX))?;
        Ok(finish(rollup))
    })
}

/// A refused or failed request: its status and what to tell the caller.
pub(crate) type Refusal = (StatusCode, String);

/// A refusal's body.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    /// What went wrong and, where it can, what to do instead.
    error: String,
}

/// A 400: the caller's to fix.
pub(crate) fn bad(message: String) -> Refusal {
    (StatusCode::BAD_REQUEST, message)
}

/// Answers `result` as JSON (a refusal as `{"error": ...}`) and records its latency.
pub(crate) fn respond(
    serving: &Serving,
    route: &'static str,
    started: Instant,
    result: Result<impl serde::Serialize, Refusal>,
) -> HttpResponse {
    let response = result.map(|body| HttpResponse::Ok().json(body));
    respond_with(serving, route, started, response)
}

/// Answers `response` (a refusal as `{"error": ...}`) and records its latency.
fn respond_with(
    serving: &Serving,
    route: &'static str,
    started: Instant,
    response: Result<HttpResponse, Refusal>,
) -> HttpResponse {
    let response = response
        .unwrap_or_else(|(status, error)| HttpResponse::build(status).json(ErrorBody { error }));
    serving
        .metrics
        .request(route, response.status().as_u16(), started);
    response
}

/// `GET /v1/query`: one view over `[from, to)`, batch views before the published horizon and
/// real-time views after it.
#[utoipa::path(get, path = "/v1/query", tag = "query", params(QueryParams),
    responses((status = 200, description = "Rows per bucket and group", body = QueryAnswer)))]
pub(crate) async fn get_query(request: HttpRequest, serving: web::Data<Serving>) -> HttpResponse {
    let started = Instant::now();
    let response = answer_query(&request, &serving.clone().into_inner())
        .await
        .map(|answer| {
            HttpResponse::Ok()
                .content_type(header::ContentType::json())
                .body(answer.to_json())
        });
    respond_with(&serving, "query", started, response)
}

async fn answer_query(
    request: &HttpRequest,
    serving: &Arc<Serving>,
) -> Result<QueryAnswer, Refusal> {
    let key = serving.authorize(request, Scope::Read)?;
    let params = QueryParams::from_query(request.query_string())
        .map_err(|err| bad(format!("query string: {err}")))?;
    serving.query(&key.tenant, &params).await.map_err(|err| {
        if err.status().is_server_error() && !matches!(err, ServingError::Building(_)) {
            tracing::error!(error = %err, "query failed");
        }
        (err.status(), err.to_string())
    })
}
