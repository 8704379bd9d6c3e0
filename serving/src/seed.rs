//! The seed dashboards' API, kept compatible: `GET /v1/events/count` and
//! `GET /v1/events/search`, times in unix seconds, answers wrapped as
//! `{"result": ..., "status": "SUCCESS", "timeStamp": <ms>}` and errors as
//! `{"status": "ERROR", "error": "..."}`.
//!
//! A count is read from a view when the tenant keeps one that covers every event type with
//! `event_type` as a dimension and the range falls on its buckets; otherwise it is counted
//! from the raw events, like search. Both count each event once.

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};
use tally_model::time::{DAY_MS, now_millis};
use tally_model::{ApiKey, Measure, Millis, Scope};

use crate::query::QueryParams;
use crate::raw::RawFilter;
use crate::{Refusal, Serving, bad};

/// Most events one search page holds.
const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 100;
/// Longest range a raw search or count may span.
const MAX_RAW_RANGE_MS: Millis = 31 * DAY_MS;

#[derive(Debug, Deserialize)]
struct SeedParams {
    event_type: Option<String>,
    start_time: Option<String>,
    end_time: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /v1/events/count?event_type=E&start_time=S&end_time=E`.
pub async fn count(request: HttpRequest, serving: web::Data<Serving>) -> HttpResponse {
    let started = Instant::now();
    let result = async {
        let (key, params) = checked(&request, &serving)?;
        let (start, end) = range(&params)?;
        count_events(&serving, &key, params.event_type.as_deref(), start, end).await
    }
    .await;
    respond(
        &serving,
        "events_count",
        started,
        result.map(|n| json!(n)),
        None,
    )
}

/// `GET /v1/events/search?event_type=E&start_time=S&end_time=E&limit=L&cursor=C`.
pub async fn search(request: HttpRequest, serving: web::Data<Serving>) -> HttpResponse {
    let started = Instant::now();
    let mut next_cursor = None;
    let result = async {
        let (key, params) = checked(&request, &serving)?;
        let (start, end) = range(&params)?;
        let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(bad(format!("limit must be 1 to {MAX_LIMIT}")));
        }
        let after = params.cursor.as_deref().map(parse_cursor).transpose()?;
        let filter = RawFilter {
            tenant: &key.tenant,
            event_type: params.event_type.as_deref(),
            range: start..end,
        };
        let events = serving.raw.scan(&filter).await.map_err(server_error)?;
        let page: Vec<_> = events
            .iter()
            .filter(|e| {
                after
                    .as_ref()
                    .is_none_or(|(ts, id)| (e.ts, &e.event_id) > (*ts, id))
            })
            .take(limit + 1)
            .collect();
        if page.len() > limit {
            let last = page[limit - 1];
            next_cursor = Some(format!("{}:{}", last.ts, last.event_id));
        }
        Ok(json!(page[..page.len().min(limit)]))
    }
    .await;
    respond(&serving, "events_search", started, result, next_cursor)
}

fn checked(request: &HttpRequest, serving: &Serving) -> Result<(ApiKey, SeedParams), Refusal> {
    let key = serving.authorize(request, Scope::Read)?;
    let params = web::Query::<SeedParams>::from_query(request.query_string())
        .map_err(|err| bad(format!("query string: {err}")))?
        .into_inner();
    Ok((key, params))
}

/// `[start_time, end_time)` in ms; both required, unix seconds.
fn range(params: &SeedParams) -> Result<(Millis, Millis), Refusal> {
    let seconds = |value: &Option<String>, name: &str| {
        let text = value
            .as_deref()
            .ok_or_else(|| bad(format!("{name} is required (unix seconds)")))?;
        text.trim()
            .parse::<i64>()
            .map(|s| s.saturating_mul(1000))
            .map_err(|_| bad(format!("{name} '{text}' is not unix seconds")))
    };
    let (start, end) = (
        seconds(&params.start_time, "start_time")?,
        seconds(&params.end_time, "end_time")?,
    );
    if start > end {
        return Err(bad("start_time is after end_time".to_owned()));
    }
    if end - start > MAX_RAW_RANGE_MS {
        return Err(bad(
            "the range spans more than 31 days; ask for a shorter one".to_owned(),
        ));
    }
    Ok((start, end))
}

async fn count_events(
    serving: &Serving,
    key: &ApiKey,
    event_type: Option<&str>,
    start: Millis,
    end: Millis,
) -> Result<u64, Refusal> {
    let catalog = serving.catalog.current();
    let view = catalog.tenants.get(&key.tenant).and_then(|tenant| {
        tenant.views.iter().find(|view| {
            let width = view.stored_granularity().millis();
            view.events.iter().any(|e| e == "*")
                && view.dimensions.iter().any(|d| d == "event_type")
                && view.measures.contains(&Measure::Count)
                && start % width == 0
                && end % width == 0
        })
    });
    let Some(view) = view else {
        let filter = RawFilter {
            tenant: &key.tenant,
            event_type,
            range: start..end,
        };
        let events = serving.raw.scan(&filter).await.map_err(server_error)?;
        return Ok(events.len() as u64);
    };
    let params = QueryParams {
        view: Some(view.name.clone()),
        from: Some(start.to_string()),
        to: Some(end.to_string()),
        granularity: Some("all".to_owned()),
        filter: event_type.map(|t| format!("event_type={t}")),
        measures: Some("count".to_owned()),
        group_by: None,
    };
    let answer = serving
        .query(&key.tenant, &params)
        .await
        .map_err(|err| (err.status(), err.to_string()))?;
    Ok(answer
        .rows
        .iter()
        .filter_map(|row| row["count"].as_u64())
        .sum())
}

fn parse_cursor(text: &str) -> Result<(Millis, String), Refusal> {
    text.split_once(':')
        .and_then(|(ts, id)| Some((ts.parse().ok()?, id.to_owned())))
        .ok_or_else(|| bad(format!("cursor '{text}' is not one this API returned")))
}

fn respond(
    serving: &Serving,
    route: &'static str,
    started: Instant,
    result: Result<Value, Refusal>,
    next_cursor: Option<String>,
) -> HttpResponse {
    let response = match result {
        Ok(result) => {
            let mut body =
                json!({"result": result, "status": "SUCCESS", "timeStamp": now_millis()});
            if route == "events_search" {
                body["nextCursor"] = json!(next_cursor);
            }
            HttpResponse::Ok().json(body)
        }
        Err((status, error)) => {
            HttpResponse::build(status).json(json!({"status": "ERROR", "error": error}))
        }
    };
    serving
        .metrics
        .request(route, response.status().as_u16(), started);
    response
}

fn server_error(err: impl std::fmt::Display) -> Refusal {
    tracing::error!(error = %err, "seed API read failed");
    (StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
}
