//! The tag registry (governance): which event types a tenant accepts, which tags each carries
//! and of what type, known misspellings, which sources may publish what, and retention.
//!
//! [`TagRegistry::validate`] turns one submitted JSON object into an [`Event`] or into every
//! reason it is not one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::{Event, Millis, TagValue};
use crate::name::check_name;
use crate::problem::{CatalogProblem, CatalogProblems};
use crate::time::parse_timestamp;

/// The largest magnitude a number tag may have. Sums are kept exactly in millionths in an
/// `i128` (see [`MeasureState::Sum`](crate::state::MeasureState::Sum)): at this bound one
/// value is 10²¹ millionths, so a state would need 1.7 × 10¹⁷ such values before it could
/// overflow, and both layers add the same integers in any order to the same total.
pub const MAX_TAG_NUMBER: f64 = 1e15;
/// Longest accepted `event_id`.
pub const MAX_EVENT_ID_LEN: usize = 128;
/// Longest accepted `user_id`.
pub const MAX_USER_ID_LEN: usize = 256;
/// The event type that stands for every type, in a view's events and a source's policy.
pub const ANY_EVENT_TYPE: &str = "*";

/// A tenant's governance rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagRegistry {
    /// Canonical tag name → its type and known misspellings.
    #[serde(default)]
    pub tags: BTreeMap<String, TagSpec>,
    /// Event type name → the tags it requires and allows, and its retention.
    #[serde(default)]
    pub event_types: BTreeMap<String, EventTypeSpec>,
    /// Source (API key name) → the event types it may publish.
    #[serde(default)]
    pub sources: BTreeMap<String, SourcePolicy>,
}

/// One canonical tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagSpec {
    /// The value type every event must use for this tag.
    #[serde(rename = "type")]
    pub kind: TagKind,
    /// Known misspellings, silently renamed to the canonical name on ingest.
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// The value type of a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TagKind {
    /// Text.
    String,
    /// A finite number.
    Number,
    /// `true` or `false`.
    Bool,
}

impl TagKind {
    fn name(self) -> &'static str {
        match self {
            TagKind::String => "string",
            TagKind::Number => "number",
            TagKind::Bool => "bool",
        }
    }
}

/// One event type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventTypeSpec {
    /// Tags every event of this type must carry.
    #[serde(default)]
    pub required: Vec<String>,
    /// Tags an event of this type may carry.
    #[serde(default)]
    pub optional: Vec<String>,
    /// How long raw events of this type are kept.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
}

/// How long raw events of a type are kept when its spec does not say.
pub const DEFAULT_RETENTION_DAYS: u32 = 395;

const fn default_retention_days() -> u32 {
    DEFAULT_RETENTION_DAYS
}

/// What one source may publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourcePolicy {
    /// Event types it may publish; `"*"` allows all.
    pub event_types: Vec<String>,
}

/// Why an event was rejected: a stable code for metrics and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectReason {
    /// Short, stable, for counting: `unknown_tag`, `missing_field`, ...
    pub code: &'static str,
    /// What is wrong and, where it helps, what to do.
    pub message: String,
}

impl RejectReason {
    /// A reason with its code.
    pub fn new(code: &'static str, message: String) -> Self {
        RejectReason { code, message }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What validation needs to know besides the submitted object.
#[derive(Debug, Clone)]
pub struct ValidationContext<'a> {
    /// The tenant of the API key.
    pub tenant: &'a str,
    /// The source (API key name).
    pub source: &'a str,
    /// Receive time; also the event time when the client sent none.
    pub received_at: Millis,
    /// How far in the future an event time may be.
    pub max_future_ms: Millis,
    /// How far in the past an event time may be.
    pub max_age_ms: Millis,
    /// Accept tag values sent as text (the pixel's query string) when they parse as the
    /// declared type.
    pub tag_values_as_text: bool,
}

const EVENT_FIELDS: [&str; 5] = ["event_id", "event_type", "ts", "user_id", "tags"];
const SERVER_FIELDS: [&str; 3] = ["tenant", "received_at", "source"];

impl TagRegistry {
    /// The canonical name for `name`: itself, the tag an alias stands for, or none.
    pub fn canonical_tag(&self, name: &str) -> Option<&str> {
        if let Some((canonical, _)) = self.tags.get_key_value(name) {
            return Some(canonical);
        }
        self.tags
            .iter()
            .find(|(_, spec)| spec.aliases.iter().any(|alias| alias == name))
            .map(|(canonical, _)| canonical.as_str())
    }

    /// The canonical tag a user most likely meant by `name`: an alias match, or the closest
    /// canonical name or alias by edit distance.
    pub fn suggest_tag(&self, name: &str) -> Option<&str> {
        self.canonical_tag(name).or_else(|| {
            let candidates = self.tags.iter().flat_map(|(canonical, spec)| {
                std::iter::once((canonical.as_str(), canonical.as_str())).chain(
                    spec.aliases
                        .iter()
                        .map(move |alias| (alias.as_str(), canonical.as_str())),
                )
            });
            closest(name, candidates)
        })
    }

    /// Whether `source` may publish `event_type`.
    pub fn may_publish(&self, source: &str, event_type: &str) -> bool {
        self.sources.get(source).is_some_and(|policy| {
            policy
                .event_types
                .iter()
                .any(|allowed| allowed == ANY_EVENT_TYPE || allowed == event_type)
        })
    }

    /// Checks the registry itself: every name is plain ([`check_name`]), each alias belongs
    /// to one tag, and every tag an event type names is declared.
    pub fn check(&self) -> Result<(), CatalogProblems> {
        let mut problems = CatalogProblems::default();
        let names = self.tags.keys().map(|tag| ("tag", tag));
        let aliases = self
            .tags
            .values()
            .flat_map(|spec| spec.aliases.iter().map(|alias| ("alias", alias)));
        let event_types = self.event_types.keys().map(|name| ("event type", name));
        let sources = self.sources.keys().map(|name| ("source", name));
        for (what, name) in names.chain(aliases).chain(event_types).chain(sources) {
            if let Err(err) = check_name(what, name) {
                problems.push(err);
            }
        }
        // Each spelling names one tag: an alias that another tag owns, or that is another
        // tag's name, would silently move events from one tag to another.
        let mut owners: BTreeMap<&str, &str> = BTreeMap::new();
        for (tag, spec) in &self.tags {
            for alias in &spec.aliases {
                if alias != tag && self.tags.contains_key(alias) {
                    problems.push(CatalogProblem::AliasIsATag {
                        alias: alias.clone(),
                        tag: tag.clone(),
                    });
                } else if let Some(owner) = owners.insert(alias, tag)
                    && owner != tag
                {
                    problems.push(CatalogProblem::AliasClaimed {
                        alias: alias.clone(),
                        first: owner.to_owned(),
                        second: tag.clone(),
                    });
                }
            }
        }
        for (event_type, spec) in &self.event_types {
            for tag in spec.required.iter().chain(&spec.optional) {
                if !self.tags.contains_key(tag) {
                    problems.push(CatalogProblem::UndeclaredTag {
                        event_type: event_type.clone(),
                        tag: tag.clone(),
                    });
                }
            }
        }
        problems.into_result()
    }

    /// Validates one submitted event. `new_event_id` is called only when the client sent none.
    /// Returns every reason the event is invalid, not only the first.
    pub fn validate(
        &self,
        submitted: &Value,
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
        let event_type = required_text(fields, "event_type", usize::MAX, &mut reasons);
        let event_spec = event_type.and_then(|event_type| {
            let spec = self.event_types.get(event_type);
            if spec.is_none() {
                let hint = closest(
                    event_type,
                    self.event_types.keys().map(|k| (k.as_str(), k.as_str())),
                )
                .map(|name| format!(" (did you mean {name}?)"))
                .unwrap_or_default();
                reasons.push(RejectReason::new(
                    "unknown_event_type",
                    format!("unknown event type '{event_type}'{hint}"),
                ));
            } else if !self.may_publish(context.source, event_type) {
                reasons.push(RejectReason::new(
                    "source_not_allowed",
                    format!(
                        "source '{}' may not publish event type '{event_type}'",
                        context.source
                    ),
                ));
            }
            spec
        });
        let tags = match fields.get("tags") {
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
        if let (Some(event_type), Some(spec)) = (event_type, event_spec) {
            for required in &spec.required {
                if !tags.contains_key(required) {
                    reasons.push(RejectReason::new(
                        "missing_tag",
                        format!("missing required tag '{required}' for event type '{event_type}'"),
                    ));
                }
            }
            for tag in tags.keys() {
                if !spec.required.contains(tag) && !spec.optional.contains(tag) {
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
            _ => Err(reasons),
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
        for (name, value) in submitted {
            let Some(canonical) = self.canonical_tag(name) else {
                let hint = self
                    .suggest_tag(name)
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
            let kind = self.tags[canonical].kind;
            match typed_tag(value, kind, context.tag_values_as_text) {
                Some(TagValue::Number(number)) if number.abs() > MAX_TAG_NUMBER => {
                    reasons.push(RejectReason::new(
                        "number_out_of_range",
                        format!(
                            "tag '{name}' is {number:e}, outside ±{MAX_TAG_NUMBER:e}, the numbers Tally sums exactly"
                        ),
                    ))
                }
                Some(tag) => {
                    tags.insert(canonical.to_owned(), tag);
                }
                None => reasons.push(RejectReason::new(
                    "wrong_tag_type",
                    format!(
                        "tag '{name}' must be a {}, got {}",
                        kind.name(),
                        describe_value(value)
                    ),
                )),
            }
        }
        tags
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

/// The candidate closest to `name` by edit distance, if close enough to be a likely typo.
/// Candidates are `(spelling, what to suggest for it)`.
fn closest<'a>(
    name: &str,
    candidates: impl Iterator<Item = (&'a str, &'a str)>,
) -> Option<&'a str> {
    let allowed = (name.chars().count() / 3).max(1);
    candidates
        .map(|(spelling, suggestion)| (strsim::damerau_levenshtein(name, spelling), suggestion))
        .filter(|(distance, _)| *distance <= allowed)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, suggestion)| suggestion)
}

fn json_type(value: &Value) -> &'static str {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::Catalog;
    use serde_json::json;

    const NOW: Millis = 1_795_881_600_000;

    fn context() -> ValidationContext<'static> {
        ValidationContext {
            tenant: "demo",
            source: "demo-web",
            received_at: NOW,
            max_future_ms: 86_400_000,
            max_age_ms: 86_400_000,
            tag_values_as_text: false,
        }
    }

    fn registry() -> TagRegistry {
        Catalog::demo("w", "r").tenants["demo"].registry.clone()
    }

    fn reasons(event: Value) -> Vec<String> {
        let reasons = registry()
            .validate(&event, &context(), || "x".into())
            .unwrap_err();
        reasons
            .into_iter()
            .map(|r| format!("{}: {}", r.code, r.message))
            .collect()
    }

    #[test]
    fn accepts_a_valid_event_and_resolves_aliases() {
        let event = registry()
            .validate(
                &json!({"event_type": "purchase", "user_id": "u1", "ts": NOW - 5,
                        "tags": {"revenue": 12.5, "os": "ios"}}),
                &context(),
                || "assigned".into(),
            )
            .unwrap();
        assert_eq!(event.event_id, "assigned");
        assert_eq!(event.tenant, "demo");
        assert_eq!(event.ts, NOW - 5);
        assert_eq!(event.tags["os_type"], TagValue::String("ios".into()));
        assert_eq!(event.tags["revenue"], TagValue::Number(12.5));
    }

    #[test]
    fn numbers_beyond_what_sums_hold_exactly_are_rejected() {
        for (revenue, shown) in [
            (json!(1e32), "1e32"),
            (json!(-1e308), "-1e308"),
            (json!(1e15 + 2.0), "1.000000000000002e15"),
        ] {
            let found = reasons(
                json!({"event_type": "purchase", "user_id": "u", "tags": {"revenue": revenue}}),
            );
            assert!(
                found.iter().any(|r| r == &format!("number_out_of_range: tag 'revenue' is {shown}, outside ±1e15, the numbers Tally sums exactly")),
                "{found:?}"
            );
        }
        for edge in [1e15, -1e15, 1e-6] {
            let event = registry()
                .validate(
                    &json!({"event_type": "purchase", "user_id": "u", "tags": {"revenue": edge}}),
                    &context(),
                    || "x".into(),
                )
                .unwrap();
            assert_eq!(event.tags["revenue"], TagValue::Number(edge));
        }
    }

    #[test]
    fn keeps_the_clients_event_id_and_defaults_time_to_receipt() {
        let event = registry()
            .validate(
                &json!({"event_id": "c-1", "event_type": "click", "user_id": "u"}),
                &context(),
                || unreachable!("the client sent an id"),
            )
            .unwrap();
        assert_eq!((event.event_id.as_str(), event.ts), ("c-1", NOW));
    }

    #[test]
    fn returns_every_reason_not_only_the_first() {
        let found = reasons(json!({
            "event_type": "purchase", "tenant": "other", "colour": 1,
            "tags": {"acount_number": "1", "os_type": 3}
        }));
        let expected = [
            "field 'tenant' is set by the server",
            "unknown field 'colour'",
            "missing \"user_id\"",
            "unknown tag 'acount_number' (did you mean account_number?)",
            "tag 'os_type' must be a string, got 3",
            "missing required tag 'revenue' for event type 'purchase'",
        ];
        for reason in expected {
            assert!(
                found.iter().any(|r| r.contains(reason)),
                "{reason:?} not in {found:#?}"
            );
        }
    }

    #[test]
    fn every_reject_reason_reads_well() {
        let cases = [
            (json!([1]), "an event must be a JSON object, got an array"),
            (
                json!({"event_type": "pageview", "user_id": "u"}),
                "unknown event type 'pageview' (did you mean page_view?)",
            ),
            (
                json!({"event_type": "click", "user_id": ""}),
                "\"user_id\" must not be empty",
            ),
            (
                json!({"event_type": "click", "user_id": 7}),
                "\"user_id\" must be a string, got a number",
            ),
            (
                json!({"event_type": "click", "user_id": "u", "event_id": "x".repeat(200)}),
                "\"event_id\" is 200 bytes",
            ),
            (
                json!({"event_type": "click", "user_id": "u", "ts": NOW + 86_400_001}),
                "more than 24 h in the future",
            ),
            (
                json!({"event_type": "click", "user_id": "u", "ts": NOW - 86_400_001}),
                "older than the allowed lateness of 24 h",
            ),
            (
                json!({"event_type": "click", "user_id": "u", "ts": "soon"}),
                "neither RFC 3339",
            ),
            (
                json!({"event_type": "click", "user_id": "u", "ts": 1.5}),
                "whole epoch milliseconds",
            ),
            (
                json!({"event_type": "click", "user_id": "u", "tags": [1]}),
                "\"tags\" must be an object",
            ),
            (
                json!({"event_type": "click", "user_id": "u", "tags": {"url": {"a": 1}}}),
                "tag 'url' must be a string, got an object",
            ),
            (
                json!({"event_type": "click", "user_id": "u", "tags": {"revenue": 1}}),
                "tag 'revenue' is not declared for event type 'click'",
            ),
            (
                json!({"event_type": "click", "user_id": "u", "tags": {"os": "a", "os_type": "b"}}),
                "are both 'os_type'",
            ),
            (
                json!({"event_type": "page_view", "user_id": "u"}),
                "missing required tag 'url'",
            ),
            (json!({"user_id": "u"}), "missing \"event_type\""),
        ];
        for (event, expected) in cases {
            let found = reasons(event.clone());
            assert!(
                found.iter().any(|r| r.contains(expected)),
                "{event}: {expected:?} not in {found:?}"
            );
        }
    }

    #[test]
    fn enforces_source_permissions() {
        let mut registry = registry();
        registry.sources.insert(
            "kiosk".into(),
            SourcePolicy {
                event_types: vec!["click".into()],
            },
        );
        let kiosk = ValidationContext {
            source: "kiosk",
            ..context()
        };
        let event = json!({"event_type": "session_start", "user_id": "u"});
        let found = registry
            .validate(&event, &kiosk, || "x".into())
            .unwrap_err();
        assert_eq!(found[0].code, "source_not_allowed");
        assert_eq!(
            found[0].to_string(),
            "source 'kiosk' may not publish event type 'session_start'"
        );
        let unknown = ValidationContext {
            source: "nobody",
            ..context()
        };
        assert!(registry.validate(&event, &unknown, || "x".into()).is_err());
        let click = json!({"event_type": "click", "user_id": "u"});
        assert!(registry.validate(&click, &kiosk, || "x".into()).is_ok());
    }

    #[test]
    fn pixel_text_values_parse_as_declared_types() {
        let pixel = ValidationContext {
            tag_values_as_text: true,
            ..context()
        };
        let event = registry()
            .validate(
                &json!({"event_type": "purchase", "user_id": "u", "tags": {"revenue": "9.99"}}),
                &pixel,
                || "x".into(),
            )
            .unwrap();
        assert_eq!(event.tags["revenue"], TagValue::Number(9.99));
        let bad = json!({"event_type": "purchase", "user_id": "u", "tags": {"revenue": "lots"}});
        assert!(registry().validate(&bad, &pixel, || "x".into()).is_err());
    }

    #[test]
    fn an_alias_belongs_to_one_tag_and_every_name_is_plain() {
        let spec = |aliases: &[&str]| TagSpec {
            kind: TagKind::String,
            aliases: aliases.iter().map(|a| (*a).to_owned()).collect(),
        };
        let mut hijacked = registry();
        hijacked.tags.insert("aaa_hijack".into(), spec(&["os"]));
        let problems = hijacked.check().unwrap_err().messages();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("alias 'os' is claimed by tags 'aaa_hijack' and 'os_type'")),
            "{problems:?}"
        );
        let mut shadowing = registry();
        shadowing.tags.insert("shadow".into(), spec(&["country"]));
        let problems = shadowing.check().unwrap_err().messages();
        assert!(
            problems.iter().any(|p| p.contains("alias 'country' of tag 'shadow' is the name of tag 'country'")),
            "{problems:?}"
        );
        for bad in ["../../etc", "a/b", " ", "<script>"] {
            let mut named = registry();
            named.tags.insert(bad.into(), spec(&[]));
            let no_tags = EventTypeSpec {
                required: Vec::new(),
                optional: Vec::new(),
                retention_days: DEFAULT_RETENTION_DAYS,
            };
            named.event_types.insert(bad.into(), no_tags);
            let problems = named.check().unwrap_err().messages();
            assert!(
                problems.iter().any(|p| p.starts_with("tag name")),
                "{problems:?}"
            );
            assert!(
                problems.iter().any(|p| p.starts_with("event type name")),
                "{problems:?}"
            );
        }
        assert_eq!(registry().check(), Ok(()));
    }

    #[test]
    fn suggests_canonical_names_from_aliases_and_typos() {
        let registry = registry();
        assert_eq!(registry.suggest_tag("acct_num"), Some("account_number"));
        assert_eq!(registry.suggest_tag("acount_numbr"), Some("account_number"));
        assert_eq!(registry.suggest_tag("os_typ"), Some("os_type"));
        assert_eq!(registry.suggest_tag("zzzzzz"), None);
        assert!(registry.check().is_ok());
    }
}
