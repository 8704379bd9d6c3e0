//! The seed dashboards' API, kept compatible: `GET /v1/events/count` and
//! `GET /v1/events/search`, times in unix seconds, answers wrapped as
//! `{"result": ..., "status": "SUCCESS", "timeStamp": <ms>}` and errors as
//! `{"status": "ERROR", "error": "..."}`.
//!
//! A count is read from a view when the tenant keeps one that covers every event type with
//! `event_type` as a dimension and the range falls on its buckets; otherwise it is counted
//! from the raw events, like search. Both count each event once.
// This module reads what callers send: its arithmetic is checked or saturating, never
// wrapping (docs/hardening.md).
#![deny(clippy::arithmetic_side_effects)]

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use tally_model::time::{DAY_MS, checked_range, now_millis, parse_unix_seconds};
use tally_model::{ApiKey, Event, Measure, Millis, Scope};

use crate::query::QueryParams;
use crate::raw::{RawEvents, RawFilter, Scanned};
use crate::search::{MAX_RESULT_WINDOW, SearchError, SearchRequest};
use crate::{Refusal, Serving, bad};

/// Most events one search page holds.
const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 100;
/// Longest range a raw search or count may span.
const MAX_RAW_RANGE_MS: Millis = 31 * DAY_MS;

/// The query string of both seed routes. An unknown parameter is refused: a misspelled
/// `evnt_type` ignored would count every event.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct SeedParams {
    /// Only events of this type [default: every type].
    event_type: Option<String>,
    /// Start, inclusive, unix seconds.
    start_time: Option<String>,
    /// End, exclusive, unix seconds; at most 31 days after the start.
    end_time: Option<String>,
    /// Events per page, 1 to 1000 (search only) [default: 100].
    limit: Option<usize>,
    /// `nextCursor` of the previous page (search only).
    cursor: Option<String>,
    /// Full-text query over the recent events the search index keeps (search only): Lucene
    /// syntax, e.g. `url:/checkout* AND os_type:ios`; hits come newest first, with highlights.
    q: Option<String>,
    /// Only this user's events (search only).
    user_id: Option<String>,
}

/// A seed API answer.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct SeedAnswer<T> {
    /// The count, or a page of events.
    result: T,
    /// `SUCCESS`.
    status: &'static str,
    /// When the answer was made (epoch ms).
    #[serde(rename = "timeStamp")]
    #[schema(value_type = i64)]
    time_stamp: Millis,
    /// Search only: the cursor of the next page, null on the last one.
    #[serde(rename = "nextCursor", skip_serializing_if = "Option::is_none")]
    next_cursor: Option<Option<String>>,
    /// Search with `q` only: how many events match, on every page.
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<usize>,
    /// Only while the answer may miss events: why (the search index is rebuilding or
    /// failing, or the event log cannot be reached and events not yet archived are missing).
    #[serde(skip_serializing_if = "Option::is_none")]
    incomplete: Option<String>,
}

/// What a search answer tells beside its events.
#[derive(Default)]
struct PageNotes {
    next_cursor: Option<Option<String>>,
    total: Option<usize>,
    incomplete: Option<String>,
}

/// A seed API error.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct SeedError {
    /// `ERROR`.
    status: &'static str,
    /// What went wrong.
    error: String,
}

/// `GET /v1/events/count?event_type=E&start_time=S&end_time=E`: how many events in the
/// range, each counted once.
#[utoipa::path(get, path = "/v1/events/count", tag = "seed", params(SeedParams),
    responses((status = 200, description = "The count", body = SeedAnswer<u64>),
        (status = 400, description = "A parameter is missing or wrong", body = SeedError),
        (status = 401, description = "No key, or an unknown one", body = SeedError),
        (status = 403, description = "The key may not read", body = SeedError),
        (status = 500, description = "A store failed", body = SeedError)))]
pub(crate) async fn count(request: HttpRequest, serving: web::Data<Serving>) -> HttpResponse {
    let started = Instant::now();
    let result = async {
        let (key, params) = checked(&request, &serving)?;
        let (start, end) = range(&params)?;
        let serving = serving.clone().into_inner();
        count_events(&serving, &key, params.event_type.as_deref(), start, end).await
    }
    .await;
    let (result, notes) = match result {
        Ok((count, incomplete)) => (
            Ok(count),
            PageNotes {
                incomplete,
                ..PageNotes::default()
            },
        ),
        Err(refused) => (Err(refused), PageNotes::default()),
    };
    respond(&serving, "events_count", started, result, notes)
}

/// `GET /v1/events/search?event_type=E&start_time=S&end_time=E&limit=L&cursor=C`: raw events
/// in the range, ordered by time and id, a page at a time. With `q=`, the events of the
/// search index that the query admits, newest first, each with its `highlights`.
#[utoipa::path(get, path = "/v1/events/search", tag = "seed", params(SeedParams),
    responses((status = 200, description = "A page of events", body = SeedAnswer<Vec<Event>>),
        (status = 400, description = "A parameter is missing or wrong", body = SeedError),
        (status = 401, description = "No key, or an unknown one", body = SeedError),
        (status = 403, description = "The key may not read", body = SeedError),
        (status = 500, description = "A store failed", body = SeedError)))]
pub(crate) async fn search(request: HttpRequest, serving: web::Data<Serving>) -> HttpResponse {
    let started = Instant::now();
    let mut notes = PageNotes::default();
    let result = async {
        let (key, params) = checked(&request, &serving)?;
        let (start, end) = range(&params)?;
        let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(bad(format!("limit must be 1 to {MAX_LIMIT}")));
        }
        if let Some(q) = params.q.as_deref() {
            let serving = serving.clone().into_inner();
            let page = full_text(&serving, &key, &params, q, start..end, limit).await?;
            notes.next_cursor = Some(page.next_cursor);
            notes.total = Some(page.total);
            notes.incomplete = (serving.search_status.as_ref()).and_then(|s| s.degraded());
            return Ok(serde_json::to_value(page.hits).expect("hits serialize"));
        }
        let after = params.cursor.as_deref().map(parse_cursor).transpose()?;
        let filter = RawFilter {
            tenant: &key.tenant,
            event_type: params.event_type.as_deref(),
            user_id: params.user_id.as_deref(),
            range: start..end,
        };
        let (page, next, scanned) = raw_page(&serving.raw, filter, after, limit).await?;
        tracing::debug!(
            hours = scanned.hours,
            events = page.len(),
            "a raw search page"
        );
        notes.next_cursor = Some(next);
        notes.incomplete = scanned.incomplete;
        Ok(serde_json::to_value(page).expect("events serialize"))
    }
    .await;
    respond(&serving, "events_search", started, result, notes)
}

/// A page of the raw events `filter` admits after the cursor `after`, in time and id order,
/// the cursor of the next page, and the hours read: from the cursor's hour on, an hour at a
/// time, until the page is full.
pub(crate) async fn raw_page(
    raw: &RawEvents,
    mut filter: RawFilter<'_>,
    after: Option<(Millis, String)>,
    limit: usize,
) -> Result<(Vec<Event>, Option<String>, Scanned), Refusal> {
    if let Some((ts, _)) = &after {
        filter.range.start = filter.range.start.max(*ts);
    }
    let mut page: Vec<Event> = Vec::new();
    let scanned = raw
        .scan_hours(&filter, |events| {
            let later = events.into_iter().filter(|e| {
                (after.as_ref()).is_none_or(|(ts, id)| (e.ts, &e.event_id) > (*ts, id))
            });
            page.extend(later.take(limit.saturating_add(1).saturating_sub(page.len())));
            match page.len() > limit {
                true => ControlFlow::Break(()),
                false => ControlFlow::Continue(()),
            }
        })
        .await
        .map_err(server_error)?;
    let next = (page.len() > limit).then(|| {
        let last = &page[limit.saturating_sub(1)];
        format!("{}:{}", last.ts, last.event_id)
    });
    page.truncate(limit);
    Ok((page, next, scanned))
}

/// A page of full-text hits.
struct FullTextPage {
    hits: Vec<crate::search::Hit>,
    total: usize,
    next_cursor: Option<String>,
}

/// A `q=` search of the index; its cursor is `o:<hits to skip>`.
async fn full_text(
    serving: &Arc<Serving>,
    key: &ApiKey,
    params: &SeedParams,
    q: &str,
    range: std::ops::Range<Millis>,
    limit: usize,
) -> Result<FullTextPage, Refusal> {
    let Some(index) = serving.search.clone() else {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "full-text search is off in this process (serving.search_days = 0); search without q, or enable it".to_owned(),
        ));
    };
    let offset = match params.cursor.as_deref() {
        None => 0,
        Some(cursor) => cursor
            .strip_prefix("o:")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| bad(format!("cursor '{cursor}' is not one this API returned")))?,
    };
    if offset.saturating_add(limit) > MAX_RESULT_WINDOW {
        return Err(bad(format!(
            "a search pages through at most {MAX_RESULT_WINDOW} hits; narrow q or the time range"
        )));
    }
    let catalog = serving.catalog.current();
    let (tenant, q) = (key.tenant.clone(), q.to_owned());
    let (event_type, user_id) = (params.event_type.clone(), params.user_id.clone());
    let page = tokio::task::spawn_blocking(move || {
        let registry = &catalog.tenants[&tenant].registry;
        let canonical = |name: &str| registry.canonical_tag(name).unwrap_or(name).to_owned();
        let request = SearchRequest {
            tenant: &tenant,
            q: &q,
            event_type: event_type.as_deref(),
            user_id: user_id.as_deref(),
            range,
            offset,
            limit,
        };
        index.search(&request, &canonical)
    })
    .await
    .expect("searching does not panic")
    .map_err(|error| match error {
        SearchError::Query(error) => bad(error.to_string()),
        error => server_error(error),
    })?;
    let shown = offset.saturating_add(page.hits.len());
    Ok(FullTextPage {
        next_cursor: (shown < page.total).then(|| format!("o:{shown}")),
        total: page.total,
        hits: page.hits,
    })
}

/// The key and the parameters, with `event_type` as the registry names it: an alias (such as
/// a tracker's `Order Completed`) read as its type, an unknown type refused with the closest
/// one, rather than counted as nothing.
fn checked(request: &HttpRequest, serving: &Serving) -> Result<(ApiKey, SeedParams), Refusal> {
    let key = serving.authorize(request, Scope::Read)?;
    let mut params = web::Query::<SeedParams>::from_query(request.query_string())
        .map_err(|err| bad(format!("query string: {err}")))?
        .into_inner();
    if let Some(named) = &params.event_type {
        let catalog = serving.catalog.current();
        let registry = &catalog.tenants[&key.tenant].registry;
        match registry.canonical_event_type(named) {
            Some(canonical) => params.event_type = Some(canonical.to_owned()),
            None => {
                let hint = registry
                    .suggest_event_type(named)
                    .map(|likely| format!("; did you mean '{likely}'?"))
                    .unwrap_or_default();
                return Err(bad(format!(
                    "event_type '{named}' is not in the registry{hint} (GET /v1/governance lists the event types)"
                )));
            }
        }
    }
    Ok((key, params))
}

/// `[start_time, end_time)` in ms; both required, unix seconds, at most 31 days apart.
fn range(params: &SeedParams) -> Result<(Millis, Millis), Refusal> {
    let seconds = |value: &Option<String>, name: &str| {
        let text = value
            .as_deref()
            .ok_or_else(|| bad(format!("{name} is required (unix seconds)")))?;
        parse_unix_seconds(text).map_err(|err| bad(format!("{name}: {err}")))
    };
    let (start, end) = (
        seconds(&params.start_time, "start_time")?,
        seconds(&params.end_time, "end_time")?,
    );
    let range = checked_range(start, end, MAX_RAW_RANGE_MS)
        .map_err(|err| bad(format!("start_time to end_time: {err}")))?;
    Ok((range.start, range.end))
}

async fn count_events(
    serving: &Arc<Serving>,
    key: &ApiKey,
    event_type: Option<&str>,
    start: Millis,
    end: Millis,
) -> Result<(u64, Option<String>), Refusal> {
    let catalog = serving.catalog.current();
    let view = catalog.tenants.get(&key.tenant).and_then(|tenant| {
        tenant.views.iter().find(|view| {
            let width = view.stored_granularity().millis();
            view.covers_every_event_type()
                && view.dimensions.iter().any(|d| d == "event_type")
                && view.measures.contains(&Measure::Count)
                && start.checked_rem(width) == Some(0)
                && end.checked_rem(width) == Some(0)
        })
    });
    let Some(view) = view else {
        let filter = RawFilter {
            tenant: &key.tenant,
            event_type,
            user_id: None,
            range: start..end,
        };
        let mut counted: u64 = 0;
        let counting = serving.raw.scan_hours(&filter, |events| {
            counted = counted.saturating_add(events.len() as u64);
            ControlFlow::Continue(())
        });
        let scanned = counting.await.map_err(server_error)?;
        return Ok((counted, scanned.incomplete));
    };
    let params = QueryParams {
        view: Some(view.name.clone()),
        from: Some(start.to_string()),
        to: Some(end.to_string()),
        granularity: Some("all".to_owned()),
        filter: event_type
            .map(|t| format!("event_type={t}"))
            .into_iter()
            .collect(),
        measures: Some("count".to_owned()),
        ..QueryParams::default()
    };
    let answer = serving
        .query(&key.tenant, &params)
        .await
        .map_err(|err| (err.status(), err.to_string()))?;
    let count = answer
        .rows
        .values()
        .iter()
        .filter_map(|row| row["count"].as_u64())
        .sum();
    Ok((count, None))
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
    result: Result<impl Serialize, Refusal>,
    notes: PageNotes,
) -> HttpResponse {
    let response = match result {
        Ok(result) => HttpResponse::Ok().json(SeedAnswer {
            result,
            status: "SUCCESS",
            time_stamp: now_millis(),
            next_cursor: notes.next_cursor,
            total: notes.total,
            incomplete: notes.incomplete,
        }),
        Err((status, error)) => HttpResponse::build(status).json(SeedError {
            status: "ERROR",
            error,
        }),
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
