//! What the index holds of an event: the schema's fields, and the document an event becomes
//! (its tenant, its key, each field as an exact `name=value` term, the same terms as the words
//! free text searches, its time, and its JSON for the hit).

use tally_model::Event;
use tally_model::time::HOUR_MS;
use tantivy::TantivyDocument;
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions,
};

/// The fields of the schema.
#[derive(Clone, Copy)]
pub(super) struct Fields {
    pub(super) tenant: Field,
    pub(super) key: Field,
    pub(super) fields: Field,
    pub(super) text: Field,
    pub(super) ts: Field,
    pub(super) event: Field,
}

impl Fields {
    /// The schema, and its fields.
    pub(super) fn schema() -> (Schema, Fields) {
        let mut schema = Schema::builder();
        let exact = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("raw")
                .set_index_option(IndexRecordOption::Basic),
        );
        let words = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("default")
                .set_index_option(IndexRecordOption::Basic),
        );
        let fields = Fields {
            tenant: schema.add_text_field("tenant", STRING),
            key: schema.add_text_field("key", STRING),
            fields: schema.add_text_field("fields", exact),
            text: schema.add_text_field("text", words),
            ts: schema.add_i64_field("ts", INDEXED | FAST),
            event: schema.add_bytes_field("event", STORED),
        };
        (schema.build(), fields)
    }

    /// The document `event` becomes, under its `key` ([`event_key`]).
    pub(super) fn document(&self, event: &Event, key: &str) -> TantivyDocument {
        let mut document = TantivyDocument::default();
        document.add_text(self.tenant, &event.tenant);
        document.add_text(self.key, key);
        // The exact terms, and the same joined as the words free text searches.
        let terms = event_terms(event);
        for term in &terms {
            document.add_text(self.fields, term);
        }
        document.add_text(self.text, terms.join(" "));
        document.add_i64(self.ts, event.ts);
        let json = serde_json::to_vec(event).expect("an event serializes");
        document.add_bytes(self.event, &json);
        document
    }
}

/// What makes an event the same event: its tenant, id and hour, as both layers dedupe.
pub(super) fn event_key(event: &Event) -> String {
    format!(
        "{}\u{1f}{}\u{1f}{}",
        event.tenant,
        event.event_id,
        event.ts.div_euclid(HOUR_MS)
    )
}

/// Every searchable field of an event with its value as text.
pub(super) fn event_fields(event: &Event) -> impl Iterator<Item = (&str, String)> + '_ {
    [
        ("event_type", event.event_type.clone()),
        ("user_id", event.user_id.clone()),
        ("source", event.source.clone()),
    ]
    .into_iter()
    .chain(
        event
            .tags
            .iter()
            .map(|(name, value)| (name.as_str(), value.to_string())),
    )
}

/// The term of `name=value` in the `fields` field.
pub(super) fn field_term(name: &str, value: &str) -> String {
    format!("{name}={value}")
}

/// Each field of an event as its `name=value` term; space-separated, they are the words
/// free text searches.
pub(super) fn event_terms(event: &Event) -> Vec<String> {
    (event_fields(event))
        .map(|(name, value)| field_term(name, &value))
        .collect()
}
