//! Reviewing a view's fix before it goes live (admin key to act, read key to look): the
//! view's logic versions as the batch manifest has them, a reprocess of a range staged under
//! a version, the promotion of a reviewed version, and the batch jobs that do both.
//!
//! Serving only records a job ([`JobStore`]); the batch scheduler, the one writer of the
//! manifest, runs it and records its progress, so any serving replica can show it. A staged
//! version is read with `GET /v1/query?logic_version=N` until it is promoted.

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};
use tally_connectors::jobs::{JobError, JobStore};
use tally_model::job::{BatchJob, JobWork};
use tally_model::time::{DAY_MS, checked_range, format_rfc3339, now_millis, parse_timestamp};
use tally_model::{LogicVersion, Manifest, Scope, ViewManifest, ViewSpec};

use crate::governance::{answer, parsed, read_body};
use crate::{Refusal, Serving, bad};

/// The longest range one reprocess may cover.
const MAX_REPROCESS_MS: i64 = 366 * DAY_MS;
/// Most jobs one listing shows, newest first.
const MAX_JOBS_LISTED: usize = 50;

/// Mounts the review routes.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route(
            "/v1/governance/views/{name}/versions",
            web::get().to(versions),
        )
        .route(
            "/v1/governance/views/{name}/reprocess",
            web::post().to(reprocess),
        )
        .route(
            "/v1/governance/views/{name}/promote",
            web::post().to(promote),
        )
        .route("/v1/governance/jobs", web::get().to(jobs))
        .route("/v1/governance/jobs/{id}", web::get().to(job));
}

/// `GET /v1/governance/views/{name}/versions`: the view's spec now, the logic version it
/// computes under (`spec_version`), and every version the batch layer has, with its live and
/// staged hours.
#[utoipa::path(get, path = "/v1/governance/views/{name}/versions", tag = "governance",
    params(("name" = String, Path, description = "The view")),
    responses((status = 200, description = "The view's logic versions", body = Object),
        (status = 404, description = "No such view", body = crate::ErrorBody)))]
pub(crate) async fn versions(
    request: HttpRequest,
    name: web::Path<String>,
    serving: web::Data<Serving>,
) -> HttpResponse {
    answer(&serving, "governance_versions", Instant::now(), async {
        let key = serving.authorize(&request, Scope::Read)?;
        let spec = view_spec(&serving, &key.tenant, &name)?;
        let manifest = manifest(&serving).await?;
        let entry = manifest.view(&key.tenant, &name);
        let versions: Vec<Value> = entry
            .iter()
            .flat_map(|entry| {
                let (live, staged) = (entry.live_versions(), entry.staged_versions());
                entry.versions.iter().map(move |(version, spec)| {
                    json!({
                        "logic_version": version,
                        "spec": spec,
                        "current": *version == entry.current_version,
                        "live_hours": live.get(version).copied().unwrap_or(0),
                        "staged_hours": staged.get(version).copied().unwrap_or(0),
                    })
                })
            })
            .collect();
        let live = entry.map(|entry| &entry.hours);
        let first = live.and_then(|hours| hours.keys().next().copied());
        let last = live.and_then(|hours| hours.keys().next_back().copied());
        let (spec_version, registered) = spec_version(entry, &spec);
        Ok(json!({
            "view": spec.name,
            "spec": spec,
            "spec_version": spec_version,
            "spec_registered": registered,
            "current_version": entry.map(|entry| entry.current_version),
            "horizon": format_rfc3339(manifest.horizon),
            "failing": entry.and_then(|entry| entry.failing.clone()),
            "computed": first.zip(last).map(|(first, last)| json!({
                "from": format_rfc3339(first),
                "to": format_rfc3339(last.saturating_add(tally_model::time::HOUR_MS)),
            })),
            "versions": versions,
        }))
    })
    .await
}

/// What to reprocess.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReprocessRequest {
    /// First hour: RFC 3339 or epoch ms.
    from: TimeValue,
    /// End, exclusive: RFC 3339 or epoch ms.
    to: TimeValue,
    /// The version to compute under [default: the version of the view's spec now].
    logic_version: Option<LogicVersion>,
}

/// An instant as JSON: epoch ms as a number, or text (RFC 3339 or epoch ms).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(crate) enum TimeValue {
    /// Epoch ms.
    Millis(i64),
    /// RFC 3339 or epoch ms.
    Text(String),
}

impl TimeValue {
    fn millis(&self, what: &str) -> Result<i64, Refusal> {
        match self {
            TimeValue::Millis(ms) => Ok(*ms),
            TimeValue::Text(text) => {
                parse_timestamp(text).map_err(|reason| bad(format!("{what}: {reason}")))
            }
        }
    }
}

/// `POST /v1/governance/views/{name}/reprocess {"from": T, "to": T}`: asks the batch layer to
/// recompute the closed hours of the range with the view's spec now, staged under its logic
/// version for review; answers the job to follow.
#[utoipa::path(post, path = "/v1/governance/views/{name}/reprocess", tag = "governance",
    params(("name" = String, Path, description = "The view")), request_body = ReprocessRequest,
    responses((status = 200, description = "Queued; follow it at /v1/governance/jobs/{id}", body = BatchJob),
        (status = 400, description = "A bad range or a version of another spec", body = crate::ErrorBody)))]
pub(crate) async fn reprocess(
    request: HttpRequest,
    name: web::Path<String>,
    body: web::Payload,
    serving: web::Data<Serving>,
) -> HttpResponse {
    answer(&serving, "governance_reprocess", Instant::now(), async {
        let key = serving.authorize(&request, Scope::Admin)?;
        let asked: ReprocessRequest = parsed("reprocess request", &read_body(body).await?)?;
        let spec = view_spec(&serving, &key.tenant, &name)?;
        let (from, to) = (asked.from.millis("from")?, asked.to.millis("to")?);
        checked_range(from, to, MAX_REPROCESS_MS)
            .map_err(|reason| bad(format!("from and to: {reason}")))?;
        let manifest = manifest(&serving).await?;
        let entry = manifest.view(&key.tenant, &name);
        let (ours, _) = spec_version(entry, &spec);
        let version = asked.logic_version.unwrap_or(ours);
        let taken = entry.and_then(|entry| entry.versions.get(&version));
        if taken.is_some_and(|taken| *taken != spec) {
            return Err(bad(format!(
                "logic version {version} of view '{name}' was computed from a different spec; the spec now is version {ours}"
            )));
        }
        if taken.is_none() && version != ours {
            return Err(bad(format!(
                "view '{name}' has no logic version {version}; the spec now is version {ours}: reprocess as {ours} (or leave logic_version out)"
            )));
        }
        let work = JobWork::Reprocess {
            from,
            to,
            logic_version: version,
        };
        submit(&serving, &key.tenant, &name, work).await
    })
    .await
}

/// Which version to promote.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PromoteRequest {
    /// The reviewed logic version.
    logic_version: LogicVersion,
}

/// `POST /v1/governance/views/{name}/promote {"logic_version": N}`: asks the batch layer to
/// make the staged hours of version N live, in one manifest swap; answers the job.
#[utoipa::path(post, path = "/v1/governance/views/{name}/promote", tag = "governance",
    params(("name" = String, Path, description = "The view")), request_body = PromoteRequest,
    responses((status = 200, description = "Queued; follow it at /v1/governance/jobs/{id}", body = BatchJob),
        (status = 400, description = "Nothing of that version is staged", body = crate::ErrorBody)))]
pub(crate) async fn promote(
    request: HttpRequest,
    name: web::Path<String>,
    body: web::Payload,
    serving: web::Data<Serving>,
) -> HttpResponse {
    answer(&serving, "governance_promote", Instant::now(), async {
        let key = serving.authorize(&request, Scope::Admin)?;
        let asked: PromoteRequest = parsed("promotion", &read_body(body).await?)?;
        view_spec(&serving, &key.tenant, &name)?;
        let manifest = manifest(&serving).await?;
        let staged = (manifest.view(&key.tenant, &name))
            .map(ViewManifest::staged_versions)
            .unwrap_or_default();
        let version = asked.logic_version;
        if !staged.contains_key(&version) {
            let staged: Vec<String> = staged.keys().map(ToString::to_string).collect();
            return Err(bad(format!(
                "view '{name}' has no staged hour of logic version {version} (staged versions: {}); reprocess a range under it first",
                if staged.is_empty() { "none".to_owned() } else { staged.join(", ") }
            )));
        }
        submit(&serving, &key.tenant, &name, JobWork::Promote { logic_version: version }).await
    })
    .await
}

/// `GET /v1/governance/jobs`: the tenant's batch jobs, newest first.
#[utoipa::path(get, path = "/v1/governance/jobs", tag = "governance",
    responses((status = 200, description = "The tenant's batch jobs, newest first (at most 50)", body = Vec<BatchJob>)))]
pub(crate) async fn jobs(request: HttpRequest, serving: web::Data<Serving>) -> HttpResponse {
    answer(&serving, "governance_jobs", Instant::now(), async {
        let key = serving.authorize(&request, Scope::Read)?;
        let all = job_store(&serving).list().await.map_err(server_error)?;
        let ours: Vec<BatchJob> = (all.into_iter().rev())
            .filter(|job| job.tenant == key.tenant)
            .take(MAX_JOBS_LISTED)
            .collect();
        Ok(json!(ours))
    })
    .await
}

/// `GET /v1/governance/jobs/{id}`: one job, with its progress.
#[utoipa::path(get, path = "/v1/governance/jobs/{id}", tag = "governance",
    params(("id" = String, Path, description = "The job")),
    responses((status = 200, description = "The job", body = BatchJob),
        (status = 404, description = "No such job", body = crate::ErrorBody)))]
pub(crate) async fn job(
    request: HttpRequest,
    id: web::Path<String>,
    serving: web::Data<Serving>,
) -> HttpResponse {
    answer(&serving, "governance_job", Instant::now(), async {
        let key = serving.authorize(&request, Scope::Read)?;
        let job = job_store(&serving).get(&id).await.map_err(server_error)?;
        match job.filter(|job| job.tenant == key.tenant) {
            Some(job) => Ok(json!(job)),
            None => Err((StatusCode::NOT_FOUND, format!("no job '{id}'"))),
        }
    })
    .await
}

/// Records a job; answers the job, to follow.
async fn submit(
    serving: &Serving,
    tenant: &str,
    view: &str,
    work: JobWork,
) -> Result<Value, Refusal> {
    let job = (job_store(serving)
        .submit(tenant, view, work, now_millis())
        .await)
        .map_err(|error| match error {
            JobError::TooMany(_) => (StatusCode::TOO_MANY_REQUESTS, error.to_string()),
            error => server_error(error),
        })?;
    tracing::info!(job = %job.id, view, work = ?job.work, "batch job queued");
    Ok(json!(job))
}

/// The tenant's view as declared now; 404 when there is none.
fn view_spec(serving: &Serving, tenant: &str, name: &str) -> Result<ViewSpec, Refusal> {
    let catalog = serving.catalog.current();
    let views = &catalog.tenants[tenant].views;
    views
        .iter()
        .find(|v| v.name == name)
        .cloned()
        .ok_or_else(|| {
            let names: Vec<&str> = views.iter().map(|v| v.name.as_str()).collect();
            (
                StatusCode::NOT_FOUND,
                format!("no view '{name}'; the views are {}", names.join(", ")),
            )
        })
}

/// The logic version `spec` computes under: the newest registered with that very spec, else
/// the next free one (registered by the next run or reprocess); and whether it is registered.
fn spec_version(entry: Option<&ViewManifest>, spec: &ViewSpec) -> (LogicVersion, bool) {
    let Some(entry) = entry else {
        return (1, false);
    };
    match entry.versions.iter().rev().find(|(_, s)| *s == spec) {
        Some((version, _)) => (*version, true),
        None => (entry.next_version(), false),
    }
}

async fn manifest(serving: &Serving) -> Result<Manifest, Refusal> {
    let manifest = serving.batch_views.manifest().await.map_err(server_error)?;
    Ok(manifest.unwrap_or_default())
}

fn job_store(serving: &Serving) -> JobStore {
    JobStore::new(serving.batch_views.store())
}

fn server_error(error: impl std::fmt::Display) -> Refusal {
    tracing::error!(%error, "a batch job request failed");
    (StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
}
