//! The wire protocols of the trackers people already run, so that their SDKs only need to be
//! pointed at Tally: Segment's HTTP Tracking API, which RudderStack's SDKs speak too
//! ([`segment`]), and Snowplow's tracker protocol ([`snowplow`]).
//!
//! Each protocol reads its events into [`Submission`]s, Tally's event shape plus the context
//! it offers; from there on they go the way of `POST /v1/events`: the tenant's registry,
//! the rejected stream with every reason, durability before the answer, dedupe by id
//! downstream. docs/trackers.md has the mapping tables.
// This module reads what callers send: its arithmetic is checked or saturating, never
// wrapping (docs/hardening.md).
#![deny(clippy::arithmetic_side_effects)]

pub mod segment;
pub mod snowplow;

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use serde_json::{Map, Value};
use tally_model::{ApiKey, Millis, RejectReason};

use crate::Collector;
use crate::intake::{Intake, Submission};
use crate::request::Refusal;

/// Why a body is not a tracker's request at all, before any event could be read: a reason
/// code and what to do. Answered 400.
#[derive(Debug)]
pub struct UnreadableBody {
    /// Short, stable: the answer's `code`.
    pub code: &'static str,
    /// What is wrong and what to send instead.
    pub message: String,
}

impl UnreadableBody {
    fn new(code: &'static str, message: String) -> Self {
        UnreadableBody { code, message }
    }
}

impl From<UnreadableBody> for Refusal {
    fn from(unreadable: UnreadableBody) -> Self {
        Refusal::new(StatusCode::BAD_REQUEST, unreadable.code, unreadable.message)
    }
}

/// The answer to a tracker's request refused whole, `{"code", "message"}`, counted by reason.
fn refused(collector: &Collector, refusal: Refusal) -> HttpResponse {
    collector.metrics.request_refused(refusal.reason);
    refusal.into_tracker_response()
}

/// The longest dotted name flattening makes; an object under a longer one stays whole, so
/// that it is refused once, not once per leaf.
const MAX_FLATTENED_NAME: usize = 256;

/// Adds `value` to `out` under `name`, and each field of an object under `name.field`, at
/// any depth: `{"a":{"b":1}}` under `p` is `p.a.b`. Arrays and other leaves stay whole, and so
/// does an object whose name is over [`MAX_FLATTENED_NAME`].
fn flatten_into(name: String, value: Value, out: &mut Map<String, Value>) {
    match value {
        Value::Object(fields) if !fields.is_empty() && name.len() <= MAX_FLATTENED_NAME => {
            for (field, inner) in fields {
                flatten_into(format!("{name}.{field}"), inner, out);
            }
        }
        leaf => {
            out.insert(name, leaf);
        }
    }
}

/// Every field of `fields` flattened, at the top level: `{"a":{"b":1}}` is `a.b`.
fn flatten(fields: Map<String, Value>) -> Map<String, Value> {
    let nested = |value: &Value| matches!(value, Value::Object(inner) if !inner.is_empty());
    if !fields.values().any(nested) {
        // Flat already, as most properties are: kept as they are.
        return fields;
    }
    let mut out = Map::new();
    for (field, value) in fields {
        flatten_into(field, value, &mut out);
    }
    out
}

/// The submission of a tracker's event read into `event` and `offered`, unless reading it
/// found `reasons` to reject it.
fn submission(
    event: Map<String, Value>,
    offered: Map<String, Value>,
    reasons: Vec<RejectReason>,
) -> Result<Submission, Vec<RejectReason>> {
    if reasons.is_empty() {
        Ok(Submission {
            event: Value::Object(event),
            offered,
        })
    } else {
        Err(reasons)
    }
}

/// The event time of a device clock corrected by the collector's: the device created the
/// event at `created` and sent it at `sent` by its own clock, so it happened `sent - created`
/// before `received`. This is how Segment derives `timestamp` and Snowplow
/// `derived_tstamp`. None when the arithmetic overflows, which only nonsense clocks do.
fn corrected_time(created: Millis, sent: Millis, received: Millis) -> Option<Millis> {
    received.checked_sub(sent.checked_sub(created)?)
}

/// Stores a tracker request's verdict and answers it: `accepted` once every accepted event
/// is durable, or a refusal when none was accepted, whose `code` is the first reject's
/// reason and whose message lists it, so that an SDK logs why and does not retry.
async fn store_and_answer(
    collector: &Collector,
    key: &ApiKey,
    received_at: Millis,
    verdict: &Intake,
    accepted: impl FnOnce(&Intake) -> HttpResponse,
) -> Result<HttpResponse, Refusal> {
    if verdict.accepted.is_empty() && verdict.rejected_count == 0 {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "no_events",
            "the request holds no events".to_owned(),
        ));
    }
    collector.store(key, received_at, verdict).await?;
    if !verdict.accepted.is_empty() {
        return Ok(accepted(verdict));
    }
    let first = verdict.rejected.first();
    let code = first
        .and_then(|rejection| rejection.reasons.first())
        .map_or("rejected", |reason| reason.code);
    let reasons = first.map_or_else(String::new, |rejection| {
        let listed = rejection
            .reasons
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>();
        format!("; event {}: {}", rejection.index, listed.join("; "))
    });
    let status = if verdict.any_too_large {
        StatusCode::PAYLOAD_TOO_LARGE
    } else {
        StatusCode::BAD_REQUEST
    };
    Err(Refusal::new(
        status,
        code,
        format!(
            "no event was accepted ({} rejected, kept in the rejected stream with their reasons){reasons}",
            verdict.rejected_count
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_fields_flatten_with_dots() {
        let nested = json!({"a": {"b": 1, "c": {"d": "x"}}, "e": [1, {"f": 2}], "g": {}});
        let flat = flatten(nested.as_object().unwrap().clone());
        assert_eq!(
            Value::Object(flat),
            json!({"a.b": 1, "a.c.d": "x", "e": [1, {"f": 2}], "g": {}})
        );
    }

    /// Properties nesting 2,600 leaves under a 6,000-character key stay one tag, refused once,
    /// rather than 2,600 tags each refused with its whole path.
    #[test]
    fn an_object_under_an_over_long_name_stays_one_tag() {
        let leaves: Map<String, Value> = (0..2_600).map(|i| (i.to_string(), json!(i))).collect();
        let long = "k".repeat(6_000);
        let nested = json!({ long.clone(): leaves, "short": {"a": 1} });
        let flat = flatten(nested.as_object().unwrap().clone());
        assert_eq!(flat.len(), 2, "{:?}", flat.keys().collect::<Vec<_>>());
        assert!(flat.contains_key(&long) && flat.contains_key("short.a"));
    }

    #[test]
    fn device_clocks_are_corrected_by_the_receive_time() {
        // Created at 1 000 and sent at 1 500 by a clock 10 s slow: received at 11 600.
        assert_eq!(corrected_time(1_000, 1_500, 11_600), Some(11_100));
        assert_eq!(corrected_time(Millis::MIN, Millis::MAX, 0), None);
        assert_eq!(corrected_time(0, Millis::MIN, Millis::MAX), None);
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod http_tests;
