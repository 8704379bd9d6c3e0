//! The collector's HTTP routes: the batch endpoint and the image beacon.
// This module reads what callers send: its arithmetic is checked or saturating, never
// wrapping (docs/hardening.md).
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use serde_json::{Map, Value};
use tally_model::Scope;
use tally_model::time::now_millis;

use crate::Collector;
use crate::intake::{BodyFormat, Intake, query_is_utf8};
use crate::request::{
    IngestError, Refusal, authorize, media_type, pixel_gif, read_body, report_auth_failure,
};

/// The answer to a batch: how many events were kept, and why the others were not.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct IngestReply {
    /// Events appended to the log, durable before this answer.
    accepted: usize,
    /// The first rejected events with their reasons (at most `ingest.max_rejects_listed`).
    rejected: Vec<RejectedReply>,
    /// Every rejected event, listed or not.
    rejected_count: usize,
    /// Rejected events by their first reason's code, listed or not.
    rejected_by_reason: BTreeMap<&'static str, usize>,
}

/// One event that was not accepted.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct RejectedReply {
    /// Its position in the request.
    index: usize,
    /// Every reason, e.g. "unknown tag 'acount_number': did you mean account_number?".
    reasons: Vec<String>,
}

/// `POST /v1/events`: a JSON array (or NDJSON) of events, answered once the valid ones are durable.
///
/// Each event is an object with `event_type`, `user_id`, optional `event_id` (assigned when
/// missing), optional `ts` (RFC 3339 or epoch ms; the receive time when missing) and `tags`
/// (name to string, number or bool), checked against the tenant's tag registry.
#[utoipa::path(post, path = "/v1/events", tag = "ingest",
    request_body(description = "Events: a JSON array, or one JSON object per line", content(
        (Vec<Object> = "application/json", example = json!([{"event_id": "e-1", "event_type": "purchase", "user_id": "u-42", "ts": "2026-11-22T10:00:00Z", "tags": {"revenue": 12.5, "country": "FR"}}])),
        (String = "application/x-ndjson"))),
    responses(
        (status = 202, description = "The valid events are durable; the others are listed", body = IngestReply),
        (status = 400, description = "No event was valid, or the body is not JSON", body = IngestReply),
        (status = 401, description = "No key, or an unknown one", body = IngestError),
        (status = 403, description = "The key may not write", body = IngestError),
        (status = 408, description = "The body took longer than ingest.body_timeout_secs to arrive", body = IngestError),
        (status = 413, description = "The body or every event is over the size limit", body = IngestError),
        (status = 415, description = "Neither JSON nor NDJSON", body = IngestError),
        (status = 503, description = "The log could not store the events; nothing was acknowledged, retry", body = IngestError)),
    security(("api_key" = [])))]
pub async fn post_events(
    request: HttpRequest,
    body: web::Payload,
    collector: web::Data<Collector>,
) -> HttpResponse {
    let started = Instant::now();
    let response = receive_batch(&request, body, &collector)
        .await
        .unwrap_or_else(|refusal| {
            collector.metrics.request_refused(refusal.reason);
            refusal.into_response()
        });
    collector
        .metrics
        .request("post_events", response.status().as_u16(), started);
    response
}

async fn receive_batch(
    request: &HttpRequest,
    body: web::Payload,
    collector: &Collector,
) -> Result<HttpResponse, Refusal> {
    let (key, catalog) = authorize(request, collector)?;
    let format = body_format(request)?;
    let bytes = read_body(request, body, collector).await?;
    let received_at = now_millis();
    let verdict = collector
        .judge(&key, &catalog, received_at, false)
        .native_body(&bytes, format);
    if verdict.accepted.is_empty() && verdict.rejected_count == 0 {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "no_events",
            "the request holds no events; send a JSON array of events".to_owned(),
        ));
    }
    collector.store(&key, received_at, &verdict).await?;
    let status = match (verdict.accepted.len(), verdict.any_too_large) {
        (0, true) => StatusCode::PAYLOAD_TOO_LARGE,
        (0, false) => StatusCode::BAD_REQUEST,
        _ => StatusCode::ACCEPTED,
    };
    Ok(HttpResponse::build(status).json(reply(&verdict, collector.limits.max_rejects_listed)))
}

/// `GET /i?k=<write key>&e=<event type>&uid=<user>&<tag>=<value>...`: the image beacon.
/// Always answers the GIF; rejects are recorded like any other. Without `k`, the request is
/// Snowplow's GET form (docs/trackers.md).
#[utoipa::path(get, path = "/i", tag = "ingest",
    params(("k" = String, Query, description = "A write key"),
        ("e" = String, Query, description = "The event type"),
        ("uid" = String, Query, description = "The user id"),
        ("eid" = Option<String>, Query, description = "The event id [default: assigned]"),
        ("ts" = Option<String>, Query, description = "Event time, RFC 3339 or epoch ms [default: now]")),
    responses((status = 200, description = "A 1x1 GIF, whatever happened", content_type = "image/gif")))]
pub async fn pixel(request: HttpRequest, collector: web::Data<Collector>) -> HttpResponse {
    let tally_pixel = request
        .query_string()
        .split('&')
        .any(|pair| pair == "k" || pair.starts_with("k="));
    if !tally_pixel {
        // Snowplow's GET form shares the path; it never sends `k`.
        return crate::trackers::snowplow::get_event(request, &collector, None).await;
    }
    let started = Instant::now();
    match record_pixel(&request, &collector).await {
        Ok(()) => collector.pixel_timing.stored(started.elapsed()),
        Err(PixelError::UnknownKey) => {
            // Answered no sooner than a stored pixel usually is, so that the time taken does
            // not tell a valid key from a guess.
            report_auth_failure(&request);
            actix_web::rt::time::sleep(collector.pixel_timing.typical()).await;
        }
        Err(PixelError::NotRecorded(err)) => tracing::debug!(error = %err, "pixel not recorded"),
    }
    collector.metrics.request("pixel", 200, started);
    pixel_gif()
}

/// How long a stored pixel takes: a moving average that an unknown key's answer waits out.
#[derive(Default)]
pub(crate) struct PixelTiming {
    micros: AtomicU64,
}

/// The longest an unknown key's answer waits, whatever the store takes.
const MAX_PIXEL_WAIT: Duration = Duration::from_millis(50);

impl PixelTiming {
    /// Folds in one stored pixel's time, with a weight of 1/8.
    pub(crate) fn stored(&self, took: Duration) {
        let took = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let _ = self
            .micros
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |average| {
                Some(match average {
                    0 => took,
                    _ => average.saturating_sub(average / 8).saturating_add(took / 8),
                })
            });
    }

    /// The typical time of a stored pixel, at most [`MAX_PIXEL_WAIT`].
    pub(crate) fn typical(&self) -> Duration {
        Duration::from_micros(self.micros.load(Ordering::Relaxed)).min(MAX_PIXEL_WAIT)
    }
}

/// Why a pixel was not recorded.
enum PixelError {
    UnknownKey,
    NotRecorded(String),
}

async fn record_pixel(request: &HttpRequest, collector: &Collector) -> Result<(), PixelError> {
    let not_recorded = |err: &dyn std::fmt::Display| PixelError::NotRecorded(err.to_string());
    let pairs = web::Query::<Vec<(String, String)>>::from_query(request.query_string())
        .map_err(|err| not_recorded(&err))?
        .into_inner();
    let key_secret = pairs
        .iter()
        .find(|(name, _)| name == "k")
        .map(|(_, value)| value.as_str())
        .unwrap_or_default();
    let catalog = collector.catalog.current();
    let Ok(key) = catalog
        .authorize_secret(key_secret, Scope::Write, now_millis())
        .cloned()
    else {
        collector.metrics.unauthorized_pixel();
        return Err(PixelError::UnknownKey);
    };
    let received_at = now_millis();
    if !query_is_utf8(request.query_string()) {
        let verdict = Intake::refused_whole(
            "invalid_utf8",
            "the query string is not UTF-8 once percent-decoded".to_owned(),
            request.query_string(),
            collector.limits.max_event_bytes,
        );
        collector
            .store(&key, received_at, &verdict)
            .await
            .map_err(|err| not_recorded(&err))?;
        return Err(not_recorded(&"the query string is not UTF-8"));
    }
    let mut event = Map::new();
    let mut tags = Map::new();
    for (name, value) in pairs {
        let field = match name.as_str() {
            "k" => continue,
            "e" => "event_type",
            "uid" => "user_id",
            "eid" => "event_id",
            "ts" => "ts",
            _ => {
                tags.insert(name, Value::String(value));
                continue;
            }
        };
        event.insert(field.to_owned(), Value::String(value));
    }
    if !tags.is_empty() {
        event.insert("tags".to_owned(), Value::Object(tags));
    }
    let body = serde_json::to_vec(&Value::Object(event)).expect("a JSON map serializes");
    let verdict = collector
        .judge(&key, &catalog, received_at, true)
        .native_body(&body, BodyFormat::Json);
    collector
        .store(&key, received_at, &verdict)
        .await
        .map_err(|err| not_recorded(&err))
}

fn body_format(request: &HttpRequest) -> Result<BodyFormat, Refusal> {
    let (sent, mime) = media_type(request);
    let content_type = sent.unwrap_or_default();
    match mime.as_str() {
        // text/plain is what navigator.sendBeacon sends without a CORS preflight.
        "application/json" | "text/plain" => Ok(BodyFormat::Json),
        "application/x-ndjson" => Ok(BodyFormat::NdJson),
        _ => Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Content-Type '{content_type}' is not accepted; use application/json (an array of events) or application/x-ndjson"
            ),
        )),
    }
}

/// The reply to a batch: its size is bounded by `max_listed`, however many events failed.
pub(crate) fn reply(verdict: &Intake, max_listed: usize) -> IngestReply {
    IngestReply {
        accepted: verdict.accepted.len(),
        rejected: verdict
            .rejected
            .iter()
            .take(max_listed)
            .map(|r| RejectedReply {
                index: r.index,
                reasons: r.reasons.iter().map(ToString::to_string).collect(),
            })
            .collect(),
        rejected_count: verdict.rejected_count,
        rejected_by_reason: verdict.rejected_by_reason.clone(),
    }
}
