//! A logged event read in place: the record's JSON parsed once, its strings left where they
//! are in the record's text. Decoding into an owned [`Event`](tally_model::Event) cost a dozen
//! allocations per event (its strings and tag map) and a fifth of the speed layer's time.

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};

use foldhash::fast::FixedState;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use tally_model::event::{TagValueBuilder, TagValueVisitor};
use tally_model::{EventFields, FieldValue, Millis};

/// Where a string sits in a [`LoggedEvent`]'s text.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// The string in `text`; spans come from slices of it, so they always fit.
    fn in_text(self, text: &str) -> &str {
        text.get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }
}

/// A tag's value, its text as a [`Span`].
#[derive(Debug, Clone, Copy)]
enum LoggedTag {
    Str(Span),
    Number(f64),
    Bool(bool),
}

/// A logged tag: its name, its value, and the [`FieldSlots`] number of its name if a view
/// reads it.
#[derive(Debug, Clone, Copy)]
struct Tag {
    name: Span,
    value: LoggedTag,
    slot: Option<u32>,
}

/// Every field a view reads, numbered. A record's tags are matched to their numbers as it is
/// parsed, so the fold finds an event's fields by number ([`FoundFields`]); looking each up
/// by name for every event was a twentieth of the speed layer's time.
#[derive(Debug, Default)]
pub struct FieldSlots {
    /// Tag names and their slots, which follow the built-in fields'.
    tags: HashMap<String, u32, FixedState>,
}

impl FieldSlots {
    /// The fields every event has, in slots 0, 1 and 2.
    const BUILT_IN: [(&str, FieldAt); 3] = [
        ("event_type", FieldAt::EventType),
        ("user_id", FieldAt::UserId),
        ("source", FieldAt::Source),
    ];

    /// The slot of the field `name`, numbering it if it has none yet.
    pub fn slot(&mut self, name: &str) -> usize {
        if let Some(slot) = Self::BUILT_IN.iter().position(|(field, _)| *field == name) {
            return slot;
        }
        let next = (Self::BUILT_IN.len() + self.tags.len()) as u32;
        *self.tags.entry(name.to_owned()).or_insert(next) as usize
    }

    /// Slots numbered so far.
    fn count(&self) -> usize {
        Self::BUILT_IN.len() + self.tags.len()
    }

    fn of_tag(&self, name: &str) -> Option<u32> {
        self.tags.get(name).copied()
    }
}

/// Where one event's fields are, by [`FieldSlots`] number: kept from event to event, so
/// finding them costs no allocation.
pub struct FoundFields {
    at: Vec<Option<FieldAt>>,
    /// The tag slots the last event filled.
    filled: Vec<u32>,
}

impl FoundFields {
    /// Room for every slot of `slots`.
    pub fn new(slots: &FieldSlots) -> Self {
        let mut at = vec![None; slots.count()];
        for (slot, (_, field)) in FieldSlots::BUILT_IN.iter().enumerate() {
            at[slot] = Some(*field);
        }
        FoundFields {
            at,
            filled: Vec::new(),
        }
    }

    /// Where `event`'s fields are, by slot; `None` where it lacks one. The event must have
    /// been parsed with the slots this was made for.
    pub fn find(&mut self, event: &LoggedEvent) -> &[Option<FieldAt>] {
        for slot in self.filled.drain(..) {
            self.at[slot as usize] = None;
        }
        for (index, tag) in event.tags.iter().enumerate() {
            if let Some(slot) = tag.slot {
                self.at[slot as usize] = Some(FieldAt::Tag(index));
                self.filled.push(slot);
            }
        }
        &self.at
    }
}

/// An event as the log holds it, with what views and the dedupe read of it.
#[derive(Debug)]
pub struct LoggedEvent {
    /// The record's text, then the strings that had escapes in it, unescaped.
    text: String,
    tenant: Span,
    event_id: Span,
    event_type: Span,
    user_id: Span,
    source: Span,
    ts: Millis,
    received_at: Millis,
    /// Sorted by name; a name logged twice keeps its last value, as a JSON map would.
    tags: Vec<Tag>,
}

/// Why a log record is not an event.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Events are JSON text.
    #[error("the record is not UTF-8: {0}")]
    NotUtf8(#[from] std::string::FromUtf8Error),
    /// Not an event's JSON.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// Spans are 32-bit.
    #[error("the record is {0} bytes, more than an event can be")]
    TooLarge(usize),
}

impl LoggedEvent {
    /// Reads a record's bytes as an event, matching its tags to `slots`.
    pub fn parse(payload: Vec<u8>, slots: &FieldSlots) -> Result<LoggedEvent, RecordError> {
        let mut text = String::from_utf8(payload)?;
        // Unescaped strings are shorter than their escaped text, so all of it fits in 2 × len.
        if u32::try_from(text.len().saturating_mul(2)).is_err() {
            return Err(RecordError::TooLarge(text.len()));
        }
        let mut unescaped = String::new();
        let fields = {
            let mut json = serde_json::Deserializer::from_str(&text);
            let seed = RecordSeed {
                text: &text,
                unescaped: &mut unescaped,
                slots,
            };
            let fields = seed.deserialize(&mut json)?;
            json.end()?;
            fields
        };
        text.push_str(&unescaped);
        let mut event = LoggedEvent { text, ..fields };
        let text = &event.text;
        // Stable: of equal names the last logged stays last, and is the one kept.
        event
            .tags
            .sort_by(|a, b| a.name.in_text(text).cmp(b.name.in_text(text)));
        event.tags.reverse();
        event
            .tags
            .dedup_by(|a, b| a.name.in_text(text) == b.name.in_text(text));
        event.tags.reverse();
        Ok(event)
    }

    fn str(&self, span: Span) -> &str {
        span.in_text(&self.text)
    }

    /// The tenant.
    pub fn tenant(&self) -> &str {
        self.str(self.tenant)
    }

    /// The event's id, unique per tenant.
    pub fn event_id(&self) -> &str {
        self.str(self.event_id)
    }

    /// When ingest received it.
    pub fn received_at(&self) -> Millis {
        self.received_at
    }

    /// Feeds what views read of the event (everything but the receive time) to `state`.
    pub fn hash_content(&self, state: &mut impl Hasher) {
        self.str(self.event_type).hash(state);
        self.ts.hash(state);
        self.str(self.user_id).hash(state);
        self.str(self.source).hash(state);
        for tag in &self.tags {
            self.str(tag.name).hash(state);
            match self.tag_value(tag.value) {
                FieldValue::Str(text) => (0u8, text).hash(state),
                FieldValue::Number(n) => (1u8, n.to_bits()).hash(state),
                FieldValue::Bool(b) => (2u8, b).hash(state),
            }
        }
    }

    fn tag_value(&self, value: LoggedTag) -> FieldValue<'_> {
        match value {
            LoggedTag::Str(span) => FieldValue::Str(self.str(span)),
            LoggedTag::Number(n) => FieldValue::Number(n),
            LoggedTag::Bool(b) => FieldValue::Bool(b),
        }
    }
}

impl EventFields for LoggedEvent {
    fn ts(&self) -> Millis {
        self.ts
    }

    fn event_type(&self) -> &str {
        self.str(self.event_type)
    }

    fn field(&self, name: &str) -> Option<FieldValue<'_>> {
        self.find(name).map(|at| self.value_at(at))
    }
}

/// Where a field sits in a [`LoggedEvent`]: found once, read for every view the event feeds.
#[derive(Debug, Clone, Copy)]
pub enum FieldAt {
    /// The event type.
    EventType,
    /// The user.
    UserId,
    /// The source.
    Source,
    /// A tag, by its index among the event's tags.
    Tag(usize),
}

impl LoggedEvent {
    /// Where the field `name` is, if the event has it: `event_type`, `user_id`, `source`, or
    /// a tag.
    fn find(&self, name: &str) -> Option<FieldAt> {
        match name {
            "event_type" => Some(FieldAt::EventType),
            "user_id" => Some(FieldAt::UserId),
            "source" => Some(FieldAt::Source),
            tag => self
                .tags
                .binary_search_by(|logged| self.str(logged.name).cmp(tag))
                .ok()
                .map(FieldAt::Tag),
        }
    }

    /// The value of a field `find` found on this event.
    pub fn value_at(&self, at: FieldAt) -> FieldValue<'_> {
        match at {
            FieldAt::EventType => FieldValue::Str(self.str(self.event_type)),
            FieldAt::UserId => FieldValue::Str(self.str(self.user_id)),
            FieldAt::Source => FieldValue::Str(self.str(self.source)),
            FieldAt::Tag(index) => self.tag_value(self.tags[index].value),
        }
    }
}

/// Spans of strings read from `text`; strings with escapes are unescaped into `unescaped`,
/// which will follow `text`.
struct RecordSeed<'t, 'u> {
    text: &'t str,
    unescaped: &'u mut String,
    slots: &'t FieldSlots,
}

impl RecordSeed<'_, '_> {
    fn span_of(&mut self, value: &str) -> Span {
        let offset = (value.as_ptr() as usize).wrapping_sub(self.text.as_ptr() as usize);
        let (start, end) = match offset.checked_add(value.len()) {
            // A slice of the record's text: a string without escapes.
            Some(end) if end <= self.text.len() && offset < self.text.len() => (offset, end),
            _ => {
                let start = self.text.len() + self.unescaped.len();
                self.unescaped.push_str(value);
                (start, start + value.len())
            }
        };
        // `parse` checked that twice the text's length fits.
        Span {
            start: start as u32,
            end: end as u32,
        }
    }
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_, '_> {
    type Value = LoggedEvent;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<LoggedEvent, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_, '_> {
    type Value = LoggedEvent;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<LoggedEvent, A::Error> {
        let mut strings: [Option<Span>; 5] = [None; 5];
        let (mut ts, mut received_at, mut tags) = (None, None, Vec::new());
        while let Some(key) = map.next_key::<RecordKey>()? {
            match key {
                RecordKey::String(index) => {
                    strings[index] = Some(map.next_value_seed(SpanSeed(&mut self))?)
                }
                RecordKey::Ts => ts = Some(map.next_value()?),
                RecordKey::ReceivedAt => received_at = Some(map.next_value()?),
                RecordKey::Tags => tags = map.next_value_seed(TagsSeed(&mut self))?,
                RecordKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let [tenant, event_id, event_type, user_id, source] = strings;
        Ok(LoggedEvent {
            text: String::new(),
            tenant: tenant.ok_or_else(|| de::Error::missing_field("tenant"))?,
            event_id: event_id.ok_or_else(|| de::Error::missing_field("event_id"))?,
            event_type: event_type.ok_or_else(|| de::Error::missing_field("event_type"))?,
            user_id: user_id.ok_or_else(|| de::Error::missing_field("user_id"))?,
            source: source.ok_or_else(|| de::Error::missing_field("source"))?,
            ts: ts.ok_or_else(|| de::Error::missing_field("ts"))?,
            received_at: received_at.ok_or_else(|| de::Error::missing_field("received_at"))?,
            tags,
        })
    }
}

/// A key of an event's JSON object.
enum RecordKey {
    /// A string field: its index in `[tenant, event_id, event_type, user_id, source]`.
    String(usize),
    Ts,
    ReceivedAt,
    Tags,
    Other,
}

impl<'de> de::Deserialize<'de> for RecordKey {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = RecordKey;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<RecordKey, E> {
                Ok(match key {
                    "tenant" => RecordKey::String(0),
                    "event_id" => RecordKey::String(1),
                    "event_type" => RecordKey::String(2),
                    "user_id" => RecordKey::String(3),
                    "source" => RecordKey::String(4),
                    "ts" => RecordKey::Ts,
                    "received_at" => RecordKey::ReceivedAt,
                    "tags" => RecordKey::Tags,
                    _ => RecordKey::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// A string, read as its span.
struct SpanSeed<'s, 't, 'u>(&'s mut RecordSeed<'t, 'u>);

impl<'de> DeserializeSeed<'de> for SpanSeed<'_, '_, '_> {
    type Value = Span;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Span, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for SpanSeed<'_, '_, '_> {
    type Value = Span;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Span, E> {
        Ok(self.0.span_of(value))
    }
}

/// The tags object, read as spans.
struct TagsSeed<'s, 't, 'u>(&'s mut RecordSeed<'t, 'u>);

impl<'de> DeserializeSeed<'de> for TagsSeed<'_, '_, '_> {
    type Value = Vec<Tag>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TagsSeed<'_, '_, '_> {
    type Value = Vec<Tag>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of tags")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut tags = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some((name, slot)) = map.next_key_seed(TagNameSeed(self.0))? {
            let value = map.next_value_seed(TagSeed(self.0))?;
            tags.push(Tag { name, value, slot });
        }
        Ok(tags)
    }
}

/// A tag's name, read as its span and its slot.
struct TagNameSeed<'s, 't, 'u>(&'s mut RecordSeed<'t, 'u>);

impl<'de> DeserializeSeed<'de> for TagNameSeed<'_, '_, '_> {
    type Value = (Span, Option<u32>);

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for TagNameSeed<'_, '_, '_> {
    type Value = (Span, Option<u32>);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a tag name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
        let slot = self.0.slots.of_tag(name);
        Ok((self.0.span_of(name), slot))
    }
}

/// A tag's value, read by the same rules as a [`TagValue`](tally_model::TagValue).
struct TagSeed<'s, 't, 'u>(&'s mut RecordSeed<'t, 'u>);

impl<'de> DeserializeSeed<'de> for TagSeed<'_, '_, '_> {
    type Value = LoggedTag;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<LoggedTag, D::Error> {
        deserializer.deserialize_any(TagValueVisitor(self))
    }
}

impl TagValueBuilder for TagSeed<'_, '_, '_> {
    type Value = LoggedTag;

    fn string(self, text: &str) -> LoggedTag {
        LoggedTag::Str(self.0.span_of(text))
    }

    fn number(self, value: f64) -> LoggedTag {
        LoggedTag::Number(value)
    }

    fn flag(self, value: bool) -> LoggedTag {
        LoggedTag::Bool(value)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tally_model::{Event, TagValue};

    use super::*;

    fn text() -> impl Strategy<Value = String> {
        // Quotes, backslashes, control characters and non-ASCII: strings with escapes.
        prop_oneof!["[a-z0-9_]{0,12}", "[a-z\"\\\\\n\t/é😀\u{1}]{0,8}",]
    }

    fn tag_value() -> impl Strategy<Value = TagValue> {
        prop_oneof![
            text().prop_map(TagValue::String),
            (-1e12..1e12f64).prop_map(TagValue::Number),
            (-1000i64..1000).prop_map(|n| TagValue::Number(n as f64)),
            any::<bool>().prop_map(TagValue::Bool),
        ]
    }

    fn event() -> impl Strategy<Value = Event> {
        (
            (text(), text(), any::<i64>(), text()),
            (
                text(),
                proptest::collection::btree_map(text(), tag_value(), 0..6),
            ),
            (any::<i64>(), text()),
        )
            .prop_map(
                |((event_id, event_type, ts, tenant), (user_id, tags), (received_at, source))| {
                    Event {
                        event_id,
                        event_type,
                        ts,
                        tenant,
                        user_id,
                        tags,
                        received_at,
                        source,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn a_logged_event_reads_as_the_event_decoder_reads_it(event in event()) {
            let record = serde_json::to_vec(&event).unwrap();
            let event: Event = serde_json::from_slice(&record).unwrap();
            let names: Vec<&str> = ["event_type", "user_id", "source", "absent"]
                .into_iter()
                .chain(event.tags.keys().map(String::as_str))
                .collect();
            let mut slots = FieldSlots::default();
            let numbered: Vec<usize> = names.iter().map(|name| slots.slot(name)).collect();
            let logged = LoggedEvent::parse(record, &slots).unwrap();
            let mut found = FoundFields::new(&slots);
            let found = found.find(&logged);
            prop_assert_eq!(logged.tenant(), &event.tenant);
            prop_assert_eq!(logged.event_id(), &event.event_id);
            prop_assert_eq!(logged.received_at(), event.received_at);
            prop_assert_eq!(logged.ts(), event.ts);
            prop_assert_eq!(EventFields::event_type(&logged), &event.event_type);
            for (name, slot) in names.into_iter().zip(numbered) {
                prop_assert_eq!(logged.field(name), event.field(name), "field {}", name);
                let by_slot = found[slot].map(|at| logged.value_at(at));
                prop_assert_eq!(by_slot, event.field(name), "field {} by slot", name);
            }
        }

        #[test]
        fn any_bytes_parse_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = LoggedEvent::parse(bytes, &FieldSlots::default());
        }
    }

    #[test]
    fn a_tag_logged_twice_keeps_its_last_value_and_unknown_fields_are_ignored() {
        let record = r#"{"event_id":"e","event_type":"click","ts":1,"tenant":"t","user_id":"u","tags":{"b":1,"a":"x","b":2},"received_at":2,"source":"s","extra":[1,{"a":null}]}"#;
        let logged = LoggedEvent::parse(record.into(), &FieldSlots::default()).unwrap();
        assert_eq!(logged.field("b"), Some(FieldValue::Number(2.0)));
        assert_eq!(logged.field("a"), Some(FieldValue::Str("x")));
    }

    #[test]
    fn what_is_not_an_event_is_refused_with_the_reason() {
        let missing = r#"{"event_id":"e","event_type":"click","ts":1,"user_id":"u","received_at":2,"source":"s"}"#;
        let cases = [
            (missing.as_bytes(), "missing field `tenant`"),
            (br#"[1,2]"#.as_slice(), "expected an event object"),
            (
                br#"{"tags":{"a":null}}"#.as_slice(),
                "expected a string, number or bool",
            ),
            (b"{\"event_id\":\"\xff\"}".as_slice(), "not UTF-8"),
        ];
        for (record, reason) in cases {
            let err = LoggedEvent::parse(record.to_vec(), &FieldSlots::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(reason), "{err} should say {reason}");
        }
    }

    #[test]
    fn content_hashes_differ_only_with_what_views_read() {
        let hash = |record: &str| {
            let mut hasher = std::hash::DefaultHasher::new();
            LoggedEvent::parse(record.into(), &FieldSlots::default())
                .unwrap()
                .hash_content(&mut hasher);
            hasher.finish()
        };
        let base = r#"{"event_id":"e","event_type":"click","ts":1,"tenant":"t","user_id":"u","tags":{"a":1,"b":"x"},"received_at":2,"source":"s"}"#;
        let resent = base.replace(r#""received_at":2"#, r#""received_at":9"#);
        let reordered = base.replace(r#"{"a":1,"b":"x"}"#, r#"{"b":"x","a":1}"#);
        let changed = base.replace(r#""a":1"#, r#""a":2"#);
        assert_eq!(hash(base), hash(&resent));
        assert_eq!(hash(base), hash(&reordered));
        assert_ne!(hash(base), hash(&changed));
    }
}
