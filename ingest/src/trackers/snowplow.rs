//! Snowplow's tracker protocol: `POST /com.snowplowanalytics.snowplow/tp2` with a
//! `payload_data` 1-0-x body, `GET /i` with the event in the query string, and the CORS
//! preflight Snowplow's collector answers.
//!
//! Snowplow trackers send no key, so the tracker's app id (`aid`) is the write key; a
//! deployment that uses `aid` for something else puts the key in the path instead:
//! `/sp/<write key>/com.snowplowanalytics.snowplow/tp2` and `/sp/<write key>/i`, which a
//! tracker reaches by taking `https://collector/sp/<write key>` as its endpoint.
//!
//! An event becomes a Tally event: `eid` its id; `uid`, else `duid`, else the network user
//! id its user; `ttm`, else `dtm` corrected by `stm`, its time; `e` its type (`pv` is
//! `page_view`, `se` `structured_event`, `ue` the self-describing event's schema name) with
//! the self-describing data as tags; every other field, the structured event's fields and
//! the contexts (`co`/`cx`, as `context.<schema name>.<field>`) are offered.
// This module reads what callers send: its arithmetic is checked or saturating, never
// wrapping (docs/hardening.md).
#![deny(clippy::arithmetic_side_effects)]

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tally_model::registry::json_type;
use tally_model::time::now_millis;
use tally_model::{ApiKey, Catalog, Millis, RejectReason};

use super::{UnreadableBody, corrected_time, flatten_into, refused, store_and_answer, submission};
use crate::Collector;
use crate::intake::{Judge, Submission, invalid_json, query_is_utf8};
use crate::request::{Refusal, pixel_gif, read_body, tracker_json, write_key};
use crate::strict_json;

/// The schema every `POST` body declares, at any 1-0-x revision.
const PAYLOAD_DATA_SCHEMA: &str =
    "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-";

/// Fields read into the event itself, never offered as tags. `aid` is the write key.
const PROTOCOL_FIELDS: [&str; 15] = [
    "e", "eid", "aid", "uid", "duid", "tnuid", "nuid", "dtm", "stm", "ttm", "ue_pr", "ue_px", "co",
    "cx", "tv",
];

/// The structured event's fields, offered under the names of Snowplow's enriched events.
const STRUCTURED_FIELDS: [(&str, &str); 5] = [
    ("se_ca", "se_category"),
    ("se_ac", "se_action"),
    ("se_la", "se_label"),
    ("se_pr", "se_property"),
    ("se_va", "se_value"),
];

/// A `POST` body: the schema and the events, each a JSON object of strings.
#[derive(Deserialize)]
struct PayloadData<'a> {
    schema: String,
    #[serde(borrow)]
    data: Vec<&'a RawValue>,
}

/// An event's app id, read alone.
#[derive(Deserialize)]
struct AppId {
    aid: Option<String>,
}

/// `POST /com.snowplowanalytics.snowplow/tp2`: a `payload_data` batch. Answers `ok`.
#[utoipa::path(post, path = "/com.snowplowanalytics.snowplow/tp2", tag = "trackers",
    request_body(description = "A Snowplow payload_data 1-0-x body; `aid` is the write key", content((Object = "application/json"))),
    responses(
        (status = 200, description = "Some events are durable", content_type = "text/plain"),
        (status = 400, description = "No event was accepted: `code` is the first reason", body = Object),
        (status = 401, description = "The app id is not a write key", body = Object),
        (status = 413, description = "The body, decompressed, or every event is over the size limit", body = Object)))]
pub async fn post_events(
    request: HttpRequest,
    body: web::Payload,
    collector: web::Data<Collector>,
) -> HttpResponse {
    respond_post(request, body, &collector, None).await
}

/// `POST /sp/{key}/com.snowplowanalytics.snowplow/tp2`: as the route without the prefix,
/// with the write key in the path and `aid` left to the app.
#[utoipa::path(post, path = "/sp/{key}/com.snowplowanalytics.snowplow/tp2", tag = "trackers",
    params(("key" = String, Path, description = "A write key")),
    request_body(description = "A Snowplow payload_data 1-0-x body", content((Object = "application/json"))),
    responses(
        (status = 200, description = "Some events are durable", content_type = "text/plain"),
        (status = 400, description = "No event was accepted: `code` is the first reason", body = Object),
        (status = 401, description = "The path's key is not a write key", body = Object)))]
pub async fn post_events_keyed(
    request: HttpRequest,
    body: web::Payload,
    collector: web::Data<Collector>,
    key: web::Path<String>,
) -> HttpResponse {
    respond_post(request, body, &collector, Some(&key)).await
}

async fn respond_post(
    request: HttpRequest,
    body: web::Payload,
    collector: &Collector,
    path_key: Option<&str>,
) -> HttpResponse {
    let started = Instant::now();
    let response = receive_post(&request, body, collector, path_key)
        .await
        .unwrap_or_else(|refusal| refused(collector, refusal));
    finish(&request, collector, "snowplow_post", started, response)
}

/// `GET /i` without Tally's `k`, or `GET /sp/{key}/i`: one event in the query string.
/// Answers the 1×1 GIF once it is durable.
pub async fn get_event(
    request: HttpRequest,
    collector: &Collector,
    key: Option<&str>,
) -> HttpResponse {
    let started = Instant::now();
    let response = receive_get(&request, collector, key)
        .await
        .unwrap_or_else(|refusal| refused(collector, refusal));
    finish(&request, collector, "snowplow_get", started, response)
}

/// `GET /sp/{key}/i`.
#[utoipa::path(get, path = "/sp/{key}/i", tag = "trackers",
    params(("key" = String, Path, description = "A write key")),
    responses(
        (status = 200, description = "The event is durable: a 1x1 GIF", content_type = "image/gif"),
        (status = 400, description = "The event was rejected: `code` is the first reason", body = Object)))]
pub async fn get_event_keyed(
    request: HttpRequest,
    collector: web::Data<Collector>,
    key: web::Path<String>,
) -> HttpResponse {
    get_event(request, &collector, Some(&key)).await
}

/// The CORS preflight, answered as Snowplow's collector does: the caller's origin, with
/// credentials, since browser trackers send cookies.
#[utoipa::path(options, path = "/com.snowplowanalytics.snowplow/tp2", tag = "trackers",
    responses((status = 200, description = "The CORS preflight")))]
pub async fn preflight(request: HttpRequest) -> HttpResponse {
    let mut response = HttpResponse::Ok()
        .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "POST, GET, OPTIONS"))
        .insert_header((
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            "Content-Type, SP-Anonymous",
        ))
        .insert_header((header::ACCESS_CONTROL_MAX_AGE, "3600"))
        .finish();
    allow_origin(&request, &mut response);
    response
}

/// Allows the caller's origin with credentials, as Snowplow's collector does: browser
/// trackers send cookies, and `*` is not allowed with credentials.
fn allow_origin(request: &HttpRequest, response: &mut HttpResponse) {
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .cloned()
        .unwrap_or(HeaderValue::from_static("*"));
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
}

fn finish(
    request: &HttpRequest,
    collector: &Collector,
    route: &'static str,
    started: Instant,
    mut response: HttpResponse,
) -> HttpResponse {
    allow_origin(request, &mut response);
    collector
        .metrics
        .request(route, response.status().as_u16(), started);
    response
}

async fn receive_post(
    request: &HttpRequest,
    body: web::Payload,
    collector: &Collector,
    path_key: Option<&str>,
) -> Result<HttpResponse, Refusal> {
    tracker_json(request)?;
    let bytes = read_body(request, body, collector).await?;
    let received_at = now_millis();
    let body = SnowplowBody::parse(&bytes)?;
    let (key, catalog) = tracker_key(request, path_key, body.app_key(), collector)?;
    let mut judge = collector.judge(&key, &catalog, received_at, true);
    body.judge(&mut judge, path_key.is_none());
    let verdict = judge.finish();
    store_and_answer(collector, &key, received_at, &verdict, |_| {
        HttpResponse::Ok().content_type("text/plain").body("ok")
    })
    .await
}

/// The write key of a Snowplow request: the path's, else the app id's.
fn tracker_key(
    request: &HttpRequest,
    path_key: Option<&str>,
    app_key: Option<&str>,
    collector: &Collector,
) -> Result<(ApiKey, Arc<Catalog>), Refusal> {
    match (path_key, app_key) {
        (Some(secret), _) => write_key(request, secret, "the path's key", collector),
        (None, Some(aid)) => write_key(request, aid, "the app id (aid)", collector),
        (None, None) => Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "no write key: set the tracker's app id (aid) to a write key, or send to /sp/<write key>/com.snowplowanalytics.snowplow/tp2 (POST) or /sp/<write key>/i (GET)".to_owned(),
        )),
    }
}

async fn receive_get(
    request: &HttpRequest,
    collector: &Collector,
    path_key: Option<&str>,
) -> Result<HttpResponse, Refusal> {
    let query = request.query_string();
    let received_at = now_millis();
    let fields = query_fields(query)?;
    let app_key = fields.get("aid").map(String::as_str);
    let (key, catalog) = tracker_key(request, path_key, app_key, collector)?;
    let mut judge = collector.judge(&key, &catalog, received_at, true);
    judge.event(0, query, |_| read_event(&fields, received_at));
    let verdict = judge.finish();
    store_and_answer(collector, &key, received_at, &verdict, |_| pixel_gif()).await
}

/// A `POST` body, read but not yet judged: its events, each as sent and as fields.
pub struct SnowplowBody<'a> {
    events: Vec<(&'a str, Result<Fields, Vec<RejectReason>>)>,
    app_key: Option<String>,
}

impl<'a> SnowplowBody<'a> {
    /// Reads `bytes` as `payload_data` 1-0-x.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, UnreadableBody> {
        let payload: PayloadData = serde_json::from_slice(bytes).map_err(|err| {
            UnreadableBody::new(
                "invalid_json",
                format!("the body is not Snowplow payload_data ({err}); send {{\"schema\": ..., \"data\": [events...]}}"),
            )
        })?;
        if !payload.schema.starts_with(PAYLOAD_DATA_SCHEMA) {
            return Err(UnreadableBody::new(
                "unknown_schema",
                format!(
                    "the body's schema is '{}'; this collector reads {PAYLOAD_DATA_SCHEMA}x",
                    payload.schema.chars().take(200).collect::<String>()
                ),
            ));
        }
        if payload.data.is_empty() {
            return Err(UnreadableBody::new(
                "no_events",
                "the body's \"data\" holds no events".to_owned(),
            ));
        }
        // The first app id is the request's key, even when its event is invalid: its
        // reject is kept in that tenant's rejected stream.
        let app_key = payload
            .data
            .iter()
            .find_map(|raw| serde_json::from_str::<AppId>(raw.get()).ok()?.aid);
        let events = payload
            .data
            .iter()
            .map(|raw| (raw.get(), read_fields(raw.get())))
            .collect();
        Ok(SnowplowBody { events, app_key })
    }

    /// The first event's app id: the request's write key unless the path has one.
    pub fn app_key(&self) -> Option<&str> {
        self.app_key.as_deref()
    }

    /// Judges every event; with `app_is_key`, an event whose app id differs from the first
    /// one's is rejected.
    pub fn judge(self, judge: &mut Judge<'_>, app_is_key: bool) {
        let received_at = judge.received_at();
        let app_key = self.app_key;
        for (index, (raw, fields)) in self.events.into_iter().enumerate() {
            judge.event(index, raw, |_| {
                let fields = fields?;
                if app_is_key && fields.get("aid") != app_key.as_ref() {
                    return Err(vec![RejectReason::new(
                        "app_mismatch",
                        "every event of a request must have the same app id (aid), its write key"
                            .to_owned(),
                    )]);
                }
                read_event(&fields, received_at)
            });
        }
    }
}

/// The fields of a `GET` event: its query string, UTF-8 once decoded, each field once.
pub fn query_fields(query: &str) -> Result<Fields, UnreadableBody> {
    let bad_query = |message: String| UnreadableBody::new("invalid_query", message);
    if !query_is_utf8(query) {
        return Err(bad_query(
            "the query string is not UTF-8 once percent-decoded".to_owned(),
        ));
    }
    let pairs = web::Query::<Vec<(String, String)>>::from_query(query)
        .map_err(|err| bad_query(format!("the query string does not parse: {err}")))?
        .into_inner();
    let mut fields = Fields::new();
    for (name, value) in pairs {
        if fields.insert(name.clone(), value).is_some() {
            return Err(bad_query(format!(
                "field '{name}' is given twice; send it once"
            )));
        }
    }
    Ok(fields)
}

/// An event's fields: Snowplow sends every value as a string.
pub type Fields = std::collections::BTreeMap<String, String>;

/// One `POST` event's fields. Values must be strings; numbers, which some trackers send for
/// `ttm`, are read as their text.
fn read_fields(raw: &str) -> Result<Fields, Vec<RejectReason>> {
    let Value::Object(object) = strict_json::parse(raw).map_err(invalid_json)? else {
        return Err(vec![RejectReason::new(
            "not_an_object",
            "a Snowplow event must be a JSON object of strings".to_owned(),
        )]);
    };
    let mut reasons = Vec::new();
    let mut fields = Fields::new();
    for (name, value) in object {
        match value {
            Value::String(text) => {
                fields.insert(name, text);
            }
            Value::Number(number) => {
                fields.insert(name, number.to_string());
            }
            other => reasons.push(RejectReason::new(
                "wrong_type",
                format!(
                    "field '{name}' must be a string, as the tracker protocol sends every value, got {}",
                    json_type(&other)
                ),
            )),
        }
    }
    if reasons.is_empty() {
        Ok(fields)
    } else {
        Err(reasons)
    }
}

/// Reads one Snowplow event into a submission.
pub fn read_event(fields: &Fields, received_at: Millis) -> Result<Submission, Vec<RejectReason>> {
    let mut reasons = Vec::new();
    let mut event = Map::new();
    let mut tags = Map::new();
    let mut offered = Map::new();
    let event_type = match fields.get("e").map(String::as_str) {
        Some("pv") => Some("page_view".to_owned()),
        Some("se") => Some("structured_event".to_owned()),
        Some("pp") => Some("page_ping".to_owned()),
        Some("tr") => Some("transaction".to_owned()),
        Some("ti") => Some("transaction_item".to_owned()),
        Some("ue") => match self_describing(fields) {
            Ok((name, data)) => {
                for (field, value) in data {
                    flatten_into(field, value, &mut tags);
                }
                Some(name)
            }
            Err(reason) => {
                reasons.push(reason);
                None
            }
        },
        Some(other) => {
            reasons.push(RejectReason::new(
                "unknown_event_kind",
                format!(
                    "unknown Snowplow event kind e={}; this collector reads pv, se, ue, pp, tr and ti",
                    other.chars().take(32).collect::<String>()
                ),
            ));
            None
        }
        None => {
            reasons.push(RejectReason::new(
                "missing_field",
                "missing \"e\", the event kind".to_owned(),
            ));
            None
        }
    };
    if let Some(event_type) = event_type {
        event.insert("event_type".to_owned(), Value::String(event_type));
    }
    if let Some(id) = fields.get("eid") {
        event.insert("event_id".to_owned(), Value::String(id.clone()));
    }
    match ["uid", "duid", "tnuid", "nuid"]
        .iter()
        .find_map(|field| fields.get(*field).filter(|id| !id.is_empty()))
    {
        Some(user) => {
            event.insert("user_id".to_owned(), Value::String(user.clone()));
        }
        None => reasons.push(RejectReason::new(
            "missing_field",
            "a Snowplow event needs a user: \"uid\", \"duid\" or a network user id".to_owned(),
        )),
    }
    match event_time(fields, received_at) {
        Ok(Some(ts)) => {
            event.insert("ts".to_owned(), Value::from(ts));
        }
        Ok(None) => {}
        Err(reason) => reasons.push(reason),
    }
    for (field, value) in ["co", "cx"]
        .into_iter()
        .filter_map(|field| Some((field, fields.get(field)?)))
    {
        match contexts_of(field, value) {
            Ok(entities) => {
                for (name, data) in entities {
                    flatten_into(format!("context.{name}"), Value::Object(data), &mut offered);
                }
            }
            Err(reason) => reasons.push(reason),
        }
    }
    for (field, value) in fields {
        if PROTOCOL_FIELDS.contains(&field.as_str()) {
            continue;
        }
        let name = STRUCTURED_FIELDS
            .iter()
            .find(|(sent, _)| sent == field)
            .map_or(field.as_str(), |(_, enriched)| enriched);
        offered.insert(name.to_owned(), Value::String(value.clone()));
    }
    if !tags.is_empty() {
        event.insert("tags".to_owned(), Value::Object(tags));
    }
    submission(event, offered, reasons)
}

/// `ttm`, else `dtm` corrected by `stm` against the receive time, else `dtm`; none (the
/// receive time) without any. Each is epoch milliseconds as text.
fn event_time(fields: &Fields, received_at: Millis) -> Result<Option<Millis>, RejectReason> {
    let time = |field: &str| -> Result<Option<Millis>, RejectReason> {
        fields
            .get(field)
            .map(|text| {
                text.trim().parse::<Millis>().map_err(|_| {
                    RejectReason::new(
                        "invalid_time",
                        format!("\"{field}\" must be epoch milliseconds"),
                    )
                })
            })
            .transpose()
    };
    if let Some(ttm) = time("ttm")? {
        return Ok(Some(ttm));
    }
    let Some(created) = time("dtm")? else {
        return Ok(None);
    };
    match time("stm")? {
        None => Ok(Some(created)),
        Some(sent) => corrected_time(created, sent, received_at)
            .map(Some)
            .ok_or_else(|| {
                RejectReason::new(
                    "invalid_time",
                    "\"dtm\" and \"stm\" are too far apart".to_owned(),
                )
            }),
    }
}

/// A self-describing JSON's schema name and data: what a self-describing event and each
/// context entity are.
type Entity = (String, Map<String, Value>);

/// The self-describing event of `ue_pr` (JSON) or `ue_px` (base64url).
fn self_describing(fields: &Fields) -> Result<Entity, RejectReason> {
    let json = json_field(fields, "ue_pr", "ue_px")?.ok_or_else(|| {
        RejectReason::new(
            "missing_field",
            "a self-describing event (e=ue) needs \"ue_pr\" or \"ue_px\"".to_owned(),
        )
    })?;
    // The event is wrapped: {"schema": ".../unstruct_event/...", "data": {the event}}.
    entity(
        &json["data"],
        "invalid_self_describing",
        "the self-describing event",
    )
}

/// The entities of a contexts field: `co` (JSON) or `cx` (base64url).
fn contexts_of(field: &str, value: &str) -> Result<Vec<Entity>, RejectReason> {
    let invalid = |message: String| RejectReason::new("invalid_contexts", message);
    let json = if field == "co" {
        strict_json::parse(value).map_err(|err| invalid(format!("\"co\" is not JSON: {err}")))?
    } else {
        decode_json("cx", value)?
    };
    let entities = json
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid(format!("\"{field}\" has no \"data\" array of entities")))?;
    entities
        .iter()
        .map(|json| entity(json, "invalid_contexts", "a context"))
        .collect()
}

/// `json` as `{"schema": "iglu:...", "data": {...}}`; `code` and `what` say, in a reason, which
/// part of the event it is.
fn entity(json: &Value, code: &'static str, what: &str) -> Result<Entity, RejectReason> {
    let schema = json
        .get("schema")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name = schema_name(schema).ok_or_else(|| {
        RejectReason::new(
            code,
            format!(
                "{what}'s schema '{}' is not an iglu: URI",
                schema.chars().take(200).collect::<String>()
            ),
        )
    })?;
    match json.get("data") {
        Some(Value::Object(data)) => Ok((name.to_owned(), data.clone())),
        _ => Err(RejectReason::new(
            code,
            format!("{what}'s \"data\" must be an object"),
        )),
    }
}

/// The JSON of `plain` or, base64url-encoded, of `encoded`, whichever the event has.
fn json_field(fields: &Fields, plain: &str, encoded: &str) -> Result<Option<Value>, RejectReason> {
    if let Some(text) = fields.get(plain) {
        return strict_json::parse(text).map(Some).map_err(|err| {
            RejectReason::new("invalid_json", format!("\"{plain}\" is not JSON: {err}"))
        });
    }
    fields
        .get(encoded)
        .map(|text| decode_json(encoded, text))
        .transpose()
}

/// Base64url JSON, with or without padding; the standard alphabet is read too.
fn decode_json(field: &str, text: &str) -> Result<Value, RejectReason> {
    let normalized: String = text
        .trim()
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            other => other,
        })
        .collect();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(normalized)
        .map_err(|err| {
            RejectReason::new(
                "invalid_base64",
                format!("\"{field}\" is not base64url: {err}"),
            )
        })?;
    let text = String::from_utf8(bytes).map_err(|_| {
        RejectReason::new(
            "invalid_base64",
            format!("\"{field}\" does not decode to UTF-8 text"),
        )
    })?;
    strict_json::parse(&text).map_err(|err| {
        RejectReason::new(
            "invalid_json",
            format!("\"{field}\" does not decode to JSON: {err}"),
        )
    })
}

/// The name in an iglu schema URI: `iglu:com.acme/purchase/jsonschema/1-0-0` is `purchase`.
fn schema_name(uri: &str) -> Option<&str> {
    let path = uri.strip_prefix("iglu:")?;
    let mut parts = path.split('/');
    let (_vendor, name, _format, _version) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    (parts.next().is_none() && !name.is_empty()).then_some(name)
}
