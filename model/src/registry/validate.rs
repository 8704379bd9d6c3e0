//! Validation: one submitted object, and the tags a tracker offers with it, into an
//! [`Event`] or every reason it is not one.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::time::looks_like_seconds;

use super::*;

const EVENT_FIELDS: [&str; 5] = ["event_id", "event_type", "ts", "user_id", "tags"];
/// The most reasons an event's rejection lists; past them, one says how many more there are.
/// Each reason costs the reply and the rejected stream its bytes, whatever the request's size.
pub const MAX_REASONS: usize = 16;
/// The longest reason, in characters: a name in it is the sender's and may be any length.
pub const MAX_REASON_CHARS: usize = 300;
/// The unknown tags of one event that get a suggestion; the others are named only.
const MAX_SUGGESTIONS: usize = 8;
const SERVER_FIELDS: [&str; 3] = ["tenant", "received_at", "source"];

impl TagRegistry {
    /// Validates one submitted event. `new_event_id` is called only when the client sent none.
    /// Returns every reason the event is invalid, not only the first.
    pub fn validate(
        &self,
        submitted: &Value,
        context: &ValidationContext<'_>,
        new_event_id: impl FnOnce() -> String,
    ) -> Result<Event, Vec<RejectReason>> {
        self.validate_offered(submitted, &Map::new(), context, new_event_id)
    }

    /// Validates one submitted event with the tags a tracker `offered` besides it (its
    /// context, by dotted name). An offered tag is kept where the event's type declares it,
    /// by name or alias, and the event did not send it itself; it is dropped silently
    /// otherwise, so an SDK's own context is never a reason to reject. A declared one of the
    /// wrong type is a reason.
    pub fn validate_offered(
        &self,
        submitted: &Value,
        offered: &Map<String, Value>,
        context: &ValidationContext<'_>,
        new_event_id: impl FnOnce() -> String,
    ) -> Result<Event, Vec<RejectReason>> {
        let Value::Object(fields) = submitted else {
            return Err(vec![RejectReason::new(
                "not_an_object",
                format!(
                    "an event must be a JSON object, got {}",
                    json_type(submitted)
                ),
            )]);
        };
        let mut reasons = Vec::new();
        for name in fields.keys() {
            if SERVER_FIELDS.contains(&name.as_str()) {
                reasons.push(RejectReason::new("server_field", format!(
                    "field '{name}' is set by the server (from the API key and receive time); remove it"
                )));
            } else if !EVENT_FIELDS.contains(&name.as_str()) {
                reasons.push(RejectReason::new(
                    "unknown_field",
                    format!(
                        "unknown field '{name}'; the fields are {}, and tags go under \"tags\"",
                        EVENT_FIELDS.join(", ")
                    ),
                ));
            }
        }
        let event_id = optional_text(fields, "event_id", MAX_EVENT_ID_LEN, &mut reasons);
        let user_id = required_text(fields, "user_id", MAX_USER_ID_LEN, &mut reasons);
        let ts = self.event_time(fields.get("ts"), context, &mut reasons);
        let sent_type = required_text(fields, "event_type", usize::MAX, &mut reasons);
        let event_type = sent_type.and_then(|sent| {
            let canonical = self.canonical_event_type(sent);
            if canonical.is_none() {
                let hint = self
                    .suggest_event_type(sent)
                    .map(|name| format!(" (did you mean {name}?)"))
                    .unwrap_or_default();
                reasons.push(RejectReason::new(
                    "unknown_event_type",
                    format!("unknown event type '{sent}'{hint}"),
                ));
            }
            canonical
        });
        let event_spec = event_type.map(|event_type| {
            if !self.may_publish(context.source, event_type) {
                reasons.push(RejectReason::new(
                    "source_not_allowed",
                    format!(
                        "source '{}' may not publish event type '{event_type}'",
                        context.source
                    ),
                ));
            }
            &self.event_types[event_type]
        });
        let mut tags = match fields.get("tags") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::Object(tags)) => self.validate_tags(tags, context, &mut reasons),
            Some(other) => {
                reasons.push(RejectReason::new(
                    "invalid_tags",
                    format!("\"tags\" must be an object, got {}", json_type(other)),
                ));
                BTreeMap::new()
            }
        };
        if let Some(spec) = event_spec {
            self.keep_offered(offered, spec, &mut tags, context, &mut reasons);
        }
        if let (Some(event_type), Some(spec)) = (event_type, event_spec) {
            // A required tag sent with a wrong value has its own reason already.
            let sent = |required: &str| {
                (fields.get("tags").and_then(Value::as_object)).is_some_and(|submitted| {
                    (submitted.keys()).any(|name| self.canonical_tag(name) == Some(required))
                })
            };
            for required in &spec.required {
                if !tags.contains_key(required) && !sent(required) {
                    reasons.push(RejectReason::new(
                        "missing_tag",
                        format!("missing required tag '{required}' for event type '{event_type}'"),
                    ));
                }
            }
            for tag in tags.keys() {
                if !spec.declares(tag) {
                    reasons.push(RejectReason::new(
                        "undeclared_tag",
                        format!("tag '{tag}' is not declared for event type '{event_type}'"),
                    ));
                }
            }
        }
        match (event_type, user_id, ts) {
            (Some(event_type), Some(user_id), Some(ts)) if reasons.is_empty() => Ok(Event {
                event_id: event_id.map_or_else(new_event_id, str::to_owned),
                event_type: event_type.to_owned(),
                ts,
                tenant: context.tenant.to_owned(),
                user_id: user_id.to_owned(),
                tags,
                received_at: context.received_at,
                source: context.source.to_owned(),
            }),
            _ => Err(bounded(reasons)),
        }
    }

    fn event_time(
        &self,
        value: Option<&Value>,
        context: &ValidationContext<'_>,
        reasons: &mut Vec<RejectReason>,
    ) -> Option<Millis> {
        let ts = match value {
            None | Some(Value::Null) => return Some(context.received_at),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(ms) => ms,
                None => {
                    reasons.push(RejectReason::new(
                        "invalid_time",
                        format!("\"ts\" must be whole epoch milliseconds, got {n}"),
                    ));
                    return None;
                }
            },
            Some(Value::String(text)) => match parse_timestamp(text) {
                Ok(ms) => ms,
                Err(err) => {
                    reasons.push(RejectReason::new("invalid_time", format!("\"ts\": {err}")));
                    return None;
                }
            },
            Some(other) => {
                reasons.push(RejectReason::new(
                    "invalid_time",
                    format!(
                        "\"ts\" must be an RFC 3339 string or epoch milliseconds, got {}",
                        json_type(other)
                    ),
                ));
                return None;
            }
        };
        if ts > context.received_at.saturating_add(context.max_future_ms) {
            reasons.push(RejectReason::new(
                "future_time",
                format!(
                    "event time is more than {} in the future",
                    describe_duration(context.max_future_ms)
                ),
            ));
            None
        } else if looks_like_seconds(ts) {
            reasons.push(RejectReason::new(
                "invalid_time",
                format!(
                    "\"ts\" {ts} looks like unix seconds; it is in epoch milliseconds (or RFC 3339)"
                ),
            ));
            None
        } else if ts < context.received_at.saturating_sub(context.max_age_ms) {
            reasons.push(RejectReason::new(
                "late_time",
                format!(
                    "event time is older than the allowed lateness of {}",
                    describe_duration(context.max_age_ms)
                ),
            ));
            None
        } else {
            Some(ts)
        }
    }

    fn validate_tags(
        &self,
        submitted: &Map<String, Value>,
        context: &ValidationContext<'_>,
        reasons: &mut Vec<RejectReason>,
    ) -> BTreeMap<String, TagValue> {
        let mut tags = BTreeMap::new();
        let mut seen_as: BTreeMap<&str, &str> = BTreeMap::new();
        let mut suggested = 0;
        for (name, value) in submitted {
            let Some(canonical) = self.canonical_tag(name) else {
                suggested += 1;
                let hint = (suggested <= MAX_SUGGESTIONS)
                    .then(|| self.suggest_tag(name))
                    .flatten()
                    .map(|tag| format!(" (did you mean {tag}?)"))
                    .unwrap_or_default();
                reasons.push(RejectReason::new(
                    "unknown_tag",
                    format!("unknown tag '{name}'{hint}"),
                ));
                continue;
            };
            if let Some(first) = seen_as.insert(canonical, name) {
                reasons.push(RejectReason::new(
                    "duplicate_tag",
                    format!("tags '{first}' and '{name}' are both '{canonical}'; send it once"),
                ));
                continue;
            }
            match typed_value(name, value, self.tags[canonical].kind, context) {
                Ok(tag) => {
                    tags.insert(canonical.to_owned(), tag);
                }
                Err(reason) => reasons.push(reason),
            }
        }
        tags
    }

    /// Adds to `tags` the offered ones `spec` declares and the event did not send.
    fn keep_offered(
        &self,
        offered: &Map<String, Value>,
        spec: &EventTypeSpec,
        tags: &mut BTreeMap<String, TagValue>,
        context: &ValidationContext<'_>,
        reasons: &mut Vec<RejectReason>,
    ) {
        for (name, value) in offered {
            let Some(canonical) = self.canonical_tag(name) else {
                continue;
            };
            if tags.contains_key(canonical) || !spec.declares(canonical) {
                continue;
            }
            match typed_value(name, value, self.tags[canonical].kind, context) {
                Ok(tag) => {
                    tags.insert(canonical.to_owned(), tag);
                }
                Err(reason) => reasons.push(reason),
            }
        }
    }
}

/// `reasons` cut to [`MAX_REASONS`], each to [`MAX_REASON_CHARS`], with a last one saying how
/// many were left out.
pub fn bounded(mut reasons: Vec<RejectReason>) -> Vec<RejectReason> {
    for reason in &mut reasons {
        if let Some((cut, _)) = reason.message.char_indices().nth(MAX_REASON_CHARS) {
            reason.message.truncate(cut);
            reason.message.push('…');
        }
    }
    if reasons.len() > MAX_REASONS {
        let left_out = reasons.len() - (MAX_REASONS - 1);
        reasons.truncate(MAX_REASONS - 1);
        reasons.push(RejectReason::new(
            "more_reasons",
            format!("and {left_out} more problems with this event"),
        ));
    }
    reasons
}

/// `value` as a tag of `kind`, or why not.
fn typed_value(
    name: &str,
    value: &Value,
    kind: TagKind,
    context: &ValidationContext<'_>,
) -> Result<TagValue, RejectReason> {
    match typed_tag(value, kind, context.tag_values_as_text) {
        Some(TagValue::Number(number)) if number.abs() > MAX_TAG_NUMBER => Err(RejectReason::new(
            "number_out_of_range",
            format!(
                "tag '{name}' is {number:e}, outside ±{MAX_TAG_NUMBER:e}, the numbers Tally sums exactly"
            ),
        )),
        Some(tag) => Ok(tag),
        None => Err(RejectReason::new(
            "wrong_tag_type",
            format!(
                "tag '{name}' must be a {}, got {}",
                kind.name(),
                describe_value(value)
            ),
        )),
    }
}

fn typed_tag(value: &Value, kind: TagKind, accept_text: bool) -> Option<TagValue> {
    match (kind, value) {
        (TagKind::String, Value::String(s)) => Some(TagValue::String(s.clone())),
        (TagKind::Number, Value::Number(n)) => {
            n.as_f64().filter(|n| n.is_finite()).map(TagValue::Number)
        }
        (TagKind::Bool, Value::Bool(b)) => Some(TagValue::Bool(*b)),
        (TagKind::Number, Value::String(s)) if accept_text => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .map(TagValue::Number),
        (TagKind::Bool, Value::String(s)) if accept_text => match s.as_str() {
            "true" | "1" => Some(TagValue::Bool(true)),
            "false" | "0" => Some(TagValue::Bool(false)),
            _ => None,
        },
        _ => None,
    }
}

fn required_text<'a>(
    fields: &'a Map<String, Value>,
    name: &str,
    max_len: usize,
    reasons: &mut Vec<RejectReason>,
) -> Option<&'a str> {
    if fields.get(name).is_none_or(Value::is_null) {
        reasons.push(RejectReason::new(
            "missing_field",
            format!("missing \"{name}\""),
        ));
        return None;
    }
    optional_text(fields, name, max_len, reasons)
}

fn optional_text<'a>(
    fields: &'a Map<String, Value>,
    name: &str,
    max_len: usize,
    reasons: &mut Vec<RejectReason>,
) -> Option<&'a str> {
    match fields.get(name)? {
        Value::Null => None,
        Value::String(text) if text.is_empty() => {
            reasons.push(RejectReason::new(
                "invalid_field",
                format!("\"{name}\" must not be empty"),
            ));
            None
        }
        Value::String(text) if text.len() > max_len => {
            reasons.push(RejectReason::new(
                "invalid_field",
                format!(
                    "\"{name}\" is {} bytes, over the limit of {max_len}",
                    text.len()
                ),
            ));
            None
        }
        Value::String(text) => Some(text),
        other => {
            reasons.push(RejectReason::new(
                "invalid_field",
                format!("\"{name}\" must be a string, got {}", json_type(other)),
            ));
            None
        }
    }
}

/// What kind of JSON value `value` is, as a reason says it: "a string", "an object"...
pub fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn describe_value(value: &Value) -> String {
    match value {
        Value::String(s) if s.len() <= 40 => format!("\"{s}\""),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => json_type(other).to_owned(),
    }
}

fn describe_duration(ms: Millis) -> String {
    match ms {
        ms if ms % 3_600_000 == 0 => format!("{} h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{} min", ms / 60_000),
        ms => format!("{} s", ms / 1000),
    }
}
