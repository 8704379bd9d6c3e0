//! Segment's HTTP Tracking API, which RudderStack's SDKs speak as well: `POST /v1/batch`,
//! which every official server SDK sends, and the single calls `/v1/track`, `/v1/page`,
//! `/v1/screen`, `/v1/identify`, `/v1/group` and `/v1/alias`.
//!
//! The write key comes as HTTP Basic's user name (`writeKey:` base64), as a bearer token, or
//! as the body's `writeKey`. A call becomes a Tally event: `messageId` its id, `userId` (or
//! `anonymousId`) its user, `timestamp` (or `originalTimestamp` corrected by `sentAt`) its
//! time; `properties` and `traits` its tags, flattened with dots; `context` is offered as
//! `context.*`, kept only where the registry declares it.
// This module reads what callers send: its arithmetic is checked or saturating, never
// wrapping (docs/hardening.md).
#![deny(clippy::arithmetic_side_effects)]

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tally_model::time::{now_millis, parse_timestamp};
use tally_model::{Millis, RejectReason};

use super::{
    UnreadableBody, corrected_time, flatten, flatten_into, refused, store_and_answer, submission,
};
use crate::Collector;
use crate::intake::{Judge, Submission, invalid_json};
use crate::request::{Refusal, authorize, basic_user, read_body, tracker_json, write_key};
use crate::routes::{IngestReply, reply};
use crate::strict_json;

/// The largest batch-level `context`, in bytes of JSON: it is merged into each call.
const MAX_BATCH_CONTEXT_BYTES: usize = 1024;

/// A Segment call, and the Tally event type it becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `event` names the type.
    Track,
    /// `page_view`.
    Page,
    /// `screen_view`.
    Screen,
    /// `identify`, with the user's `traits` as tags.
    Identify,
    /// `group`, with the group's `traits` as tags and `groupId` offered.
    Group,
    /// `alias`, with `previousId` offered.
    Alias,
}

impl Call {
    /// Every call, with the name its `type` field and its route give it.
    pub const ALL: [(Call, &'static str); 6] = [
        (Call::Track, "track"),
        (Call::Page, "page"),
        (Call::Screen, "screen"),
        (Call::Identify, "identify"),
        (Call::Group, "group"),
        (Call::Alias, "alias"),
    ];

    fn named(name: &str) -> Option<Call> {
        Call::ALL
            .iter()
            .find(|(_, spelled)| *spelled == name)
            .map(|(call, _)| *call)
    }

    /// The call a route names: `/v1/track`, or `/v1/t` as analytics.js, Segment's browser
    /// SDK, shortens it (the first letter of each call is its own).
    fn routed(path: &str) -> Option<Call> {
        let name = path.strip_prefix("/v1/")?;
        Call::ALL
            .iter()
            .find(|(_, spelled)| *spelled == name || spelled.get(..1) == Some(name))
            .map(|(call, _)| *call)
    }

    /// The field whose object becomes the event's tags.
    fn tag_field(self) -> &'static str {
        match self {
            Call::Identify | Call::Group => "traits",
            Call::Track | Call::Page | Call::Screen | Call::Alias => "properties",
        }
    }

    /// Top-level fields of the call offered as tags under their own names.
    fn offered_fields(self) -> &'static [&'static str] {
        match self {
            Call::Page | Call::Screen => &["name", "category"],
            Call::Group => &["groupId"],
            Call::Alias => &["previousId"],
            Call::Track | Call::Identify => &[],
        }
    }
}

/// A body sent to a Segment route, read but not yet judged: its calls, and what the batch
/// gives them all.
pub struct SegmentBody<'a> {
    calls: Vec<&'a str>,
    /// The route's call, when the body is one call.
    call: Option<Call>,
    context: Option<Map<String, Value>>,
    sent_at: Option<Value>,
    write_key: Option<String>,
}

impl<'a> SegmentBody<'a> {
    /// Reads `bytes` as a batch (`call` none) or as one call of the route's kind.
    pub fn parse(bytes: &'a [u8], call: Option<Call>) -> Result<Self, UnreadableBody> {
        let text = std::str::from_utf8(bytes).map_err(|err| {
            UnreadableBody::new("invalid_json", format!("the body is not UTF-8: {err}"))
        })?;
        if call.is_some() {
            // One call: only its writeKey matters here; its context and sentAt are its own.
            let envelope = serde_json::from_str::<Envelope>(text).unwrap_or_default();
            return Ok(SegmentBody {
                calls: vec![text],
                call,
                context: None,
                sent_at: None,
                write_key: envelope
                    .write_key
                    .and_then(|key| key.as_str().map(str::to_owned)),
            });
        }
        let envelope: Envelope = serde_json::from_str(text).map_err(|err| {
            UnreadableBody::new(
                "invalid_json",
                format!("the body is not a Segment batch ({err}); send {{\"batch\": [calls...]}}"),
            )
        })?;
        let Some(batch) = envelope.batch else {
            return Err(UnreadableBody::new(
                "no_events",
                "the body has no \"batch\"; send {\"batch\": [calls...]}".to_owned(),
            ));
        };
        // The batch's context is merged into every call: bounded, so that it cannot multiply
        // a body's cost by its number of calls.
        let context = match envelope.context {
            Some(raw) if raw.get().len() > MAX_BATCH_CONTEXT_BYTES => {
                return Err(UnreadableBody::new(
                    "batch_context_too_large",
                    format!(
                        "the batch's context is {} bytes, over the limit of {MAX_BATCH_CONTEXT_BYTES}; put context in each call",
                        raw.get().len()
                    ),
                ));
            }
            Some(raw) => {
                serde_json::from_str::<Option<Map<String, Value>>>(raw.get()).map_err(|err| {
                    UnreadableBody::new(
                        "invalid_json",
                        format!("the batch's \"context\" must be an object: {err}"),
                    )
                })?
            }
            None => None,
        };
        Ok(SegmentBody {
            calls: batch.iter().map(|raw| raw.get()).collect(),
            call: None,
            context,
            sent_at: envelope.sent_at,
            write_key: envelope
                .write_key
                .and_then(|key| key.as_str().map(str::to_owned)),
        })
    }

    /// The body's `writeKey`, if it has one.
    pub fn write_key(&self) -> Option<&str> {
        self.write_key.as_deref()
    }

    /// Judges every call.
    pub fn judge(&self, judge: &mut Judge<'_>) {
        let received_at = judge.received_at();
        for (index, raw) in self.calls.iter().enumerate() {
            judge.event(index, raw, |raw| {
                read_call(
                    raw,
                    self.call,
                    self.context.as_ref(),
                    self.sent_at.as_ref(),
                    received_at,
                )
            });
        }
    }
}

/// What a batch carries besides its calls; `context` is merged into each call's.
#[derive(Deserialize, Default)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    batch: Option<Vec<&'a RawValue>>,
    #[serde(rename = "sentAt", default)]
    sent_at: Option<Value>,
    #[serde(borrow, default)]
    context: Option<&'a RawValue>,
    #[serde(rename = "writeKey", default)]
    write_key: Option<Value>,
}

/// The answer to a Segment request in which an event was accepted: Segment's `success`, and
/// Tally's account of the batch.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct SegmentReply {
    /// Always true: some events are durable.
    success: bool,
    #[serde(flatten)]
    batch: IngestReply,
}

/// `POST /v1/batch` (and `/v1/b`, analytics.js's spelling): a Segment batch,
/// `{"batch": [calls...], "sentAt", "context", "writeKey"}`.
#[utoipa::path(post, path = "/v1/batch", tag = "trackers",
    request_body(description = "A Segment batch (gzip allowed). The write key is the HTTP Basic user name with an empty password, a bearer token, or the body's writeKey", content((Object = "application/json"))),
    responses(
        (status = 200, description = "Some events are durable; the others are listed", body = SegmentReply),
        (status = 400, description = "No event was accepted: `code` is the first reason", body = Object),
        (status = 401, description = "No write key, or an unknown one", body = Object),
        (status = 413, description = "The body, decompressed, or every event is over the size limit", body = Object)),
    security(("api_key" = [])))]
pub async fn post_batch(
    request: HttpRequest,
    body: web::Payload,
    collector: web::Data<Collector>,
) -> HttpResponse {
    respond(request, body, collector, None).await
}

/// `POST /v1/{call}`: one Segment call (`track`, `page`, `screen`, `identify`, `group` or
/// `alias`, or their first letter, as analytics.js posts them); its `type` is the route's.
#[utoipa::path(post, path = "/v1/{call}", tag = "trackers",
    params(("call" = String, Path, description = "track, page, screen, identify, group or alias")),
    request_body(description = "One Segment call (gzip allowed)", content((Object = "application/json"))),
    responses(
        (status = 200, description = "The event is durable", body = SegmentReply),
        (status = 400, description = "The event was rejected: `code` is the first reason", body = Object),
        (status = 401, description = "No write key, or an unknown one", body = Object),
        (status = 413, description = "The body, decompressed, is over the size limit", body = Object)),
    security(("api_key" = [])))]
pub async fn post_call(
    request: HttpRequest,
    body: web::Payload,
    collector: web::Data<Collector>,
) -> HttpResponse {
    let call = Call::routed(request.path());
    respond(request, body, collector, call).await
}

async fn respond(
    request: HttpRequest,
    body: web::Payload,
    collector: web::Data<Collector>,
    call: Option<Call>,
) -> HttpResponse {
    let started = Instant::now();
    let response = receive(&request, body, &collector, call)
        .await
        .unwrap_or_else(|refusal| refused(&collector, refusal));
    collector
        .metrics
        .request("segment", response.status().as_u16(), started);
    response
}

async fn receive(
    request: &HttpRequest,
    body: web::Payload,
    collector: &Collector,
    call: Option<Call>,
) -> Result<HttpResponse, Refusal> {
    let basic = basic_user(request);
    tracker_json(request)?;
    let bytes = read_body(request, body, collector).await?;
    let received_at = now_millis();
    let body = SegmentBody::parse(&bytes, call)?;
    let (key, catalog) = match (&basic, body.write_key()) {
        (Some(user), _) => write_key(request, user, "the Basic user name", collector)?,
        (None, Some(secret)) => write_key(request, secret, "the body's writeKey", collector)?,
        (None, None) => authorize(request, collector).map_err(|refusal| {
            if refusal.status == StatusCode::UNAUTHORIZED {
                Refusal::new(refusal.status, refusal.reason, "no write key: send it as the HTTP Basic user name with an empty password, as Segment's SDKs do, or as the body's writeKey".to_owned())
            } else {
                refusal
            }
        })?,
    };
    let mut judge = collector.judge(&key, &catalog, received_at, false);
    body.judge(&mut judge);
    let verdict = judge.finish();
    let listed = collector.limits.max_rejects_listed;
    store_and_answer(collector, &key, received_at, &verdict, |verdict| {
        HttpResponse::Ok().json(SegmentReply {
            success: true,
            batch: reply(verdict, listed),
        })
    })
    .await
}

/// Reads one Segment call, sent as `raw`, into a submission; `call` is the route's when the
/// call came alone. `batch_context` and `batch_sent_at` are the batch's, which a call's own
/// fields override.
fn read_call(
    raw: &str,
    call: Option<Call>,
    batch_context: Option<&Map<String, Value>>,
    batch_sent_at: Option<&Value>,
    received_at: Millis,
) -> Result<Submission, Vec<RejectReason>> {
    let Value::Object(mut message) = strict_json::parse(raw).map_err(invalid_json)? else {
        return Err(vec![RejectReason::new(
            "not_an_object",
            "a Segment call must be a JSON object".to_owned(),
        )]);
    };
    let mut reasons = Vec::new();
    let call = call.or_else(|| {
        let named = message.get("type").and_then(Value::as_str);
        let call = named.and_then(Call::named);
        if call.is_none() {
            let kinds = Call::ALL.map(|(_, name)| name).join(", ");
            reasons.push(RejectReason::new(
                "unknown_call",
                match named {
                    Some(name) => format!("unknown Segment call type '{name}'; use one of {kinds}"),
                    None => format!("missing \"type\": one of {kinds}"),
                },
            ));
        }
        call
    });
    let mut event = Map::new();
    let event_type = match call {
        Some(Call::Track) => match message.remove("event") {
            Some(Value::String(name)) if !name.is_empty() => Some(Value::String(name)),
            _ => {
                reasons.push(RejectReason::new(
                    "missing_field",
                    "a track call needs its \"event\" name".to_owned(),
                ));
                None
            }
        },
        Some(Call::Page) => Some("page_view".into()),
        Some(Call::Screen) => Some("screen_view".into()),
        Some(Call::Identify) => Some("identify".into()),
        Some(Call::Group) => Some("group".into()),
        Some(Call::Alias) => Some("alias".into()),
        None => None,
    };
    if let Some(event_type) = event_type {
        event.insert("event_type".to_owned(), event_type);
    }
    if let Some(id) = message.remove("messageId") {
        match id_text("messageId", id) {
            Ok(id) => {
                event.insert("event_id".to_owned(), id);
            }
            Err(reason) => reasons.push(reason),
        }
    }
    let user = ["userId", "anonymousId"]
        .iter()
        .filter_map(|field| Some((*field, message.remove(*field)?)))
        .find(|(_, id)| !matches!(id, Value::Null) && id.as_str() != Some(""));
    match user.map(|(field, user)| id_text(field, user)) {
        Some(Ok(user)) => {
            event.insert("user_id".to_owned(), user);
        }
        Some(Err(reason)) => reasons.push(reason),
        None => reasons.push(RejectReason::new(
            "missing_field",
            "a Segment call needs a \"userId\" or an \"anonymousId\"".to_owned(),
        )),
    }
    let sent_at = message.get("sentAt").or(batch_sent_at);
    match event_time(&message, sent_at, received_at) {
        Ok(Some(ts)) => {
            event.insert("ts".to_owned(), ts);
        }
        Ok(None) => {}
        Err(reason) => reasons.push(reason),
    }
    let tag_field = call.map_or("properties", Call::tag_field);
    match message.remove(tag_field) {
        None | Some(Value::Null) => {}
        Some(Value::Object(tags)) => {
            event.insert("tags".to_owned(), Value::Object(flatten(tags)));
        }
        Some(_) => reasons.push(RejectReason::new(
            "invalid_tags",
            format!("\"{tag_field}\" must be an object"),
        )),
    }
    // The call's own context replaces the batch's, field by field.
    let own_context = match message.remove("context") {
        Some(Value::Object(context)) => context,
        _ => Map::new(),
    };
    let mut offered = Map::new();
    for (field, value) in batch_context.into_iter().flatten() {
        if !own_context.contains_key(field) {
            flatten_into(format!("context.{field}"), value.clone(), &mut offered);
        }
    }
    for (field, value) in own_context {
        flatten_into(format!("context.{field}"), value, &mut offered);
    }
    for field in call.map_or(&[][..], Call::offered_fields) {
        if let Some(value) = message.remove(*field) {
            offered.insert((*field).to_owned(), value);
        }
    }
    submission(event, offered, reasons)
}

/// An id as text: the SDKs send strings, some send whole numbers. A number that is not
/// whole, or too large to have been read exactly, is refused: its text would not be the one
/// sent, and two ids could become one.
fn id_text(field: &str, id: Value) -> Result<Value, RejectReason> {
    match id {
        Value::Number(number) if number.is_i64() || number.is_u64() => {
            Ok(Value::String(number.to_string()))
        }
        Value::Number(number) => Err(RejectReason::new(
            "invalid_id",
            format!(
                "\"{field}\" is the number {number}, which is not whole or too large to keep exactly; send it as a string"
            ),
        )),
        other => Ok(other),
    }
}

/// The call's time: its `timestamp`, else its `originalTimestamp` corrected by `sentAt`
/// against the receive time, as Segment does; none (the receive time) without either.
fn event_time(
    message: &Map<String, Value>,
    sent_at: Option<&Value>,
    received_at: Millis,
) -> Result<Option<Value>, RejectReason> {
    if let Some(timestamp) = message.get("timestamp").filter(|ts| !ts.is_null()) {
        return Ok(Some(timestamp.clone()));
    }
    let Some(original) = message.get("originalTimestamp").filter(|ts| !ts.is_null()) else {
        return Ok(None);
    };
    let time = |field: &str, value: &Value| {
        let text = value.as_str().ok_or_else(|| {
            RejectReason::new(
                "invalid_time",
                format!("\"{field}\" must be an ISO 8601 string"),
            )
        })?;
        parse_timestamp(text)
            .map_err(|err| RejectReason::new("invalid_time", format!("\"{field}\": {err}")))
    };
    let created = time("originalTimestamp", original)?;
    let Some(sent) = sent_at.filter(|ts| !ts.is_null()) else {
        return Ok(Some(Value::from(created)));
    };
    let sent = time("sentAt", sent)?;
    corrected_time(created, sent, received_at)
        .map(|ts| Some(Value::from(ts)))
        .ok_or_else(|| {
            RejectReason::new(
                "invalid_time",
                "\"originalTimestamp\" and \"sentAt\" are too far apart".to_owned(),
            )
        })
}
