//! Events as stored in the log: validated, stamped with tenant, source and receive time.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

/// A validated tracking event, as ingest appends it to the log and every layer reads it.
/// Totally ordered (tags compare numbers by `f64::total_cmp`), so dataflows can sort it.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
pub struct Event {
    /// Unique per tenant: the client's id, or one ingest assigned before the spool write.
    pub event_id: String,
    /// One of the tenant's registered event types.
    pub event_type: String,
    /// Event time, as the client saw it (ms, UTC).
    #[schema(value_type = i64)]
    pub ts: Millis,
    /// The tenant, taken from the API key, never from the body.
    pub tenant: String,
    /// The user the event is about.
    pub user_id: String,
    /// Tags under their canonical names (aliases already resolved).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub tags: BTreeMap<String, TagValue>,
    /// When ingest received it (ms, UTC).
    #[schema(value_type = i64)]
    pub received_at: Millis,
    /// The source (API key name) that published it.
    pub source: String,
}

/// What a view reads of an event: its time, type and fields. The owned [`Event`] has it, and
/// so can a reading of a log record that leaves the strings in the record's bytes.
pub trait EventFields {
    /// Event time (ms, UTC).
    fn ts(&self) -> Millis;
    /// One of the tenant's registered event types.
    fn event_type(&self) -> &str;
    /// The value of a field by name: `event_type`, `user_id`, `source`, or a tag.
    fn field(&self, name: &str) -> Option<FieldValue<'_>>;
}

impl EventFields for Event {
    fn ts(&self) -> Millis {
        self.ts
    }

    fn event_type(&self) -> &str {
        &self.event_type
    }

    fn field(&self, name: &str) -> Option<FieldValue<'_>> {
        match name {
            "event_type" => Some(FieldValue::Str(&self.event_type)),
            "user_id" => Some(FieldValue::Str(&self.user_id)),
            "source" => Some(FieldValue::Str(&self.source)),
            tag => self.tags.get(tag).map(TagValue::as_field),
        }
    }
}

/// A borrowed field value of an event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldValue<'a> {
    /// A built-in field or a string tag.
    Str(&'a str),
    /// A number tag.
    Number(f64),
    /// A bool tag.
    Bool(bool),
}

impl<'a> FieldValue<'a> {
    /// The numeric value, if the field is a number tag.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            FieldValue::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// The value as a dimension string: numbers in their shortest form, bools as `true`/`false`.
    /// Borrowed for strings, so hot paths can look a key up without allocating.
    pub fn as_dimension(&self) -> std::borrow::Cow<'a, str> {
        match *self {
            FieldValue::Str(text) => text.into(),
            FieldValue::Number(n) => n.to_string().into(),
            FieldValue::Bool(b) => if b { "true" } else { "false" }.into(),
        }
    }
}

/// A tag value: a string, a number or a bool. Numbers are finite (validation rejects others),
/// so equality and order use `f64::total_cmp` and are total.
#[derive(Debug, Clone)]
pub enum TagValue {
    /// Text.
    String(String),
    /// A finite number.
    Number(f64),
    /// A flag.
    Bool(bool),
}

impl TagValue {
    /// The value as a field of an event.
    pub fn as_field(&self) -> FieldValue<'_> {
        match self {
            TagValue::String(text) => FieldValue::Str(text),
            TagValue::Number(n) => FieldValue::Number(*n),
            TagValue::Bool(b) => FieldValue::Bool(*b),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            TagValue::String(_) => 0,
            TagValue::Number(_) => 1,
            TagValue::Bool(_) => 2,
        }
    }
}

impl PartialEq for TagValue {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for TagValue {}

impl PartialOrd for TagValue {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for TagValue {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self, other) {
            (TagValue::String(a), TagValue::String(b)) => a.cmp(b),
            (TagValue::Number(a), TagValue::Number(b)) => a.total_cmp(b),
            (TagValue::Bool(a), TagValue::Bool(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl std::hash::Hash for TagValue {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.rank().hash(state);
        match self {
            TagValue::String(s) => s.hash(state),
            TagValue::Number(n) => n.to_bits().hash(state),
            TagValue::Bool(b) => b.hash(state),
        }
    }
}

impl fmt::Display for TagValue {
    /// The text it shows as a dimension.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_field().as_dimension())
    }
}

impl Serialize for TagValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            TagValue::String(s) => serializer.serialize_str(s),
            TagValue::Number(n) => serializer.serialize_f64(*n),
            TagValue::Bool(b) => serializer.serialize_bool(*b),
        }
    }
}

impl<'de> Deserialize<'de> for TagValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A hand-written visitor: `#[serde(untagged)]` would buffer every value first.
        struct Owned;
        impl TagValueBuilder for Owned {
            type Value = TagValue;
            fn string(self, text: &str) -> TagValue {
                TagValue::String(text.to_owned())
            }
            fn number(self, value: f64) -> TagValue {
                TagValue::Number(value)
            }
            fn flag(self, value: bool) -> TagValue {
                TagValue::Bool(value)
            }
        }
        deserializer.deserialize_any(TagValueVisitor(Owned))
    }
}

/// What to build from each kind of tag value, for [`TagValueVisitor`]: [`TagValue`] owns its
/// string, the speed layer notes where the string sits in the log record.
pub trait TagValueBuilder {
    /// What it builds.
    type Value;
    /// From a string tag.
    fn string(self, text: &str) -> Self::Value;
    /// From a number tag (integers too).
    fn number(self, value: f64) -> Self::Value;
    /// From a bool tag.
    fn flag(self, value: bool) -> Self::Value;
}

/// Reads a tag value as the log holds it: a string, a number or a bool; nothing else.
pub struct TagValueVisitor<B>(pub B);

impl<B: TagValueBuilder> Visitor<'_> for TagValueVisitor<B> {
    type Value = B::Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, number or bool")
    }
    fn visit_str<E: de::Error>(self, value: &str) -> Result<B::Value, E> {
        Ok(self.0.string(value))
    }
    fn visit_bool<E: de::Error>(self, value: bool) -> Result<B::Value, E> {
        Ok(self.0.flag(value))
    }
    fn visit_f64<E: de::Error>(self, value: f64) -> Result<B::Value, E> {
        Ok(self.0.number(value))
    }
    fn visit_i64<E: de::Error>(self, value: i64) -> Result<B::Value, E> {
        Ok(self.0.number(value as f64))
    }
    fn visit_u64<E: de::Error>(self, value: u64) -> Result<B::Value, E> {
        Ok(self.0.number(value as f64))
    }
}

/// An event ingest could not accept, kept in the rejected stream with every reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RejectedEvent {
    /// The tenant of the key that sent it.
    pub tenant: String,
    /// The source (API key name) that sent it.
    pub source: String,
    /// When ingest received it (ms, UTC).
    #[schema(value_type = i64)]
    pub received_at: Millis,
    /// Its position in the request (0 for the pixel).
    pub index: usize,
    /// Why it was rejected, every reason.
    pub reasons: Vec<String>,
    /// The reasons' stable codes (`unknown_tag`, ...), in the same order; empty in records
    /// kept before codes were.
    #[serde(default)]
    pub codes: Vec<String>,
    /// The event as sent, cut to the per-event size limit.
    pub payload: String,
}

/// The log partition of a user's events: stable across processes, versions and machines,
/// so one user's events stay in order in one partition.
pub fn partition_of(tenant: &str, user_id: &str, partitions: u32) -> u32 {
    let key = tenant
        .as_bytes()
        .iter()
        .chain([&0xff])
        .chain(user_id.as_bytes());
    (stable_hash(key.copied()) % u64::from(partitions.max(1))) as u32
}

/// FNV-1a over bytes: tiny, and the same in every process, version and machine (`std`'s
/// hasher is seeded per process), for anything that must hash alike everywhere.
pub fn stable_hash(bytes: impl IntoIterator<Item = u8>) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    bytes.into_iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_round_trips_through_json_with_typed_tags() {
        let event = Event {
            event_id: "e1".into(),
            event_type: "purchase".into(),
            ts: 1_700_000_000_000,
            tenant: "demo".into(),
            user_id: "u1".into(),
            tags: BTreeMap::from([
                ("revenue".into(), TagValue::Number(9.5)),
                ("os_type".into(), TagValue::String("ios".into())),
                ("beta".into(), TagValue::Bool(true)),
            ]),
            received_at: 1_700_000_000_001,
            source: "web".into(),
        };
        let json = serde_json::to_string(&event).unwrap();
        assert!(json.contains(r#""revenue":9.5"#), "{json}");
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), event);
    }

    #[test]
    fn partition_is_stable_and_in_range() {
        assert_eq!(partition_of("demo", "u1", 8), partition_of("demo", "u1", 8));
        for user in 0..1000 {
            assert!(partition_of("demo", &user.to_string(), 4) < 4);
        }
        let spread: std::collections::BTreeSet<u32> = (0..100)
            .map(|u| partition_of("demo", &u.to_string(), 4))
            .collect();
        assert_eq!(spread.len(), 4);
    }
}
