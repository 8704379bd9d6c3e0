//! The tenant's recent rejected events, with their reasons, and their counts per hour.

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};
use tally_model::time::{HOUR_MS, format_rfc3339, now_millis};
use tally_model::{RejectedEvent, Scope};

use super::answer;
use crate::raw::RejectFilter;
use crate::{Serving, bad};

/// Most rejected events one request lists.
const MAX_REJECTED: usize = 500;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct RejectedParams {
    /// How many to list [default: 50, at most 500].
    limit: Option<usize>,
    /// Only events with a reason of this code, e.g. `unknown_tag`.
    code: Option<String>,
    /// Only events from this source.
    source: Option<String>,
}

/// `GET /v1/governance/rejected?limit=N&code=C&source=S`: the tenant's most recent rejected
/// events with their reasons and codes, newest first; among the last 100,000 records of the
/// rejected stream.
#[utoipa::path(get, path = "/v1/governance/rejected", tag = "governance",
    params(RejectedParams),
    responses((status = 200, description = "Rejected events, newest first", body = [RejectedEvent])))]
pub(crate) async fn rejected(request: HttpRequest, serving: web::Data<Serving>) -> HttpResponse {
    answer(&serving, "governance_rejected", Instant::now(), async {
        let key = serving.authorize(&request, Scope::Read)?;
        let params = web::Query::<RejectedParams>::from_query(request.query_string())
            .map_err(|err| bad(format!("query string: {err}")))?
            .into_inner();
        let limit = params.limit.unwrap_or(50).min(MAX_REJECTED);
        let wanted = RejectFilter {
            code: params.code,
            source: params.source,
        };
        let rejected = serving
            .raw
            .recent_rejected(&key.tenant, wanted, limit)
            .await
            .map_err(|err| (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?;
        Ok(json!(rejected))
    })
    .await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct RejectedCountsParams {
    /// How many hours back [default: 24, at most 168].
    hours: Option<u32>,
}

/// The longest a rejected-events count looks back.
const MAX_COUNT_HOURS: u32 = 168;

/// `GET /v1/governance/rejected/counts?hours=24`: the tenant's rejected events per hour,
/// by their first reason's code and their source.
#[utoipa::path(get, path = "/v1/governance/rejected/counts", tag = "governance",
    params(RejectedCountsParams),
    responses((status = 200, description = "`counts`: hour, code, source and count, oldest hour first; `complete`: false when the stream held more than 100,000 records to read", body = Object)))]
pub(crate) async fn rejected_counts(
    request: HttpRequest,
    serving: web::Data<Serving>,
) -> HttpResponse {
    answer(&serving, "governance_rejected_counts", Instant::now(), async {
        let key = serving.authorize(&request, Scope::Read)?;
        let params = web::Query::<RejectedCountsParams>::from_query(request.query_string())
            .map_err(|err| bad(format!("query string: {err}")))?;
        let hours = params.hours.unwrap_or(24).clamp(1, MAX_COUNT_HOURS);
        let now = now_millis();
        let since = (now - i64::from(hours) * HOUR_MS).div_euclid(HOUR_MS) * HOUR_MS;
        let (counts, complete) = serving
            .raw
            .rejected_counts(&key.tenant, since)
            .await
            .map_err(|err| (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?;
        let counts: Vec<Value> = counts
            .into_iter()
            .map(|((hour, code, source), count)| {
                json!({"hour": format_rfc3339(hour), "code": code, "source": source, "count": count})
            })
            .collect();
        Ok(json!({"since": format_rfc3339(since), "counts": counts, "complete": complete}))
    })
    .await
}
