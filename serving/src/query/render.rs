//! An answer's rows written as JSON text, straight from the states, and where the answer's
//! numbers came from ([`Sources`]).
// This module reads what callers send: its arithmetic is checked or saturating, never
// wrapping (docs/hardening.md).
#![deny(clippy::arithmetic_side_effects)]

use std::ops::Range;

use serde::Serialize;
use serde_json::Value;
use tally_model::time::format_rfc3339;
use tally_model::{AggregateState, Millis};

use super::parse::Query;
use super::rollup::RowKey;

/// Starts a new element of a JSON array being written: a comma unless it is the first.
pub(super) fn separate(out: &mut String) {
    if !(out.is_empty() || out.ends_with('[')) {
        out.push(',');
    }
}

/// The rows of one stored hour rendered for one query: JSON objects, comma-separated.
pub type RenderedHour = String;

/// Answer rows rendered one by one, in answer order, with their buckets.
pub struct RenderedRows(pub(super) Vec<(Millis, String)>);

impl RenderedRows {
    /// The rows from bucket `start` on, comma-separated.
    pub fn from_bucket(&self, start: Millis) -> RenderedHour {
        let first = self.0.partition_point(|(bucket, _)| *bucket < start);
        let rows: Vec<&str> = self.0[first..]
            .iter()
            .map(|(_, row)| row.as_str())
            .collect();
        rows.join(",")
    }

    /// Bytes held, for a cache's budget.
    pub fn size(&self) -> usize {
        self.0
            .iter()
            .map(|(_, row)| row.len().saturating_add(8))
            .sum()
    }
}

impl Query {
    /// Appends rows, in the order given, to a JSON array being written; see `RowWriter`.
    pub fn render_rows(&self, rows: &[(&RowKey, &AggregateState)], out: &mut String) {
        if rows.is_empty() {
            return;
        }
        let writer = RowWriter::new(self);
        for (key, state) in rows {
            writer.write(key, state, out);
        }
    }
}

/// Writes answer rows as JSON objects with the bucket, the group values and the measures,
/// read off states shaped like the view's measures the query reads; the names are escaped
/// once per writer.
pub(super) struct RowWriter<'q> {
    query: &'q Query,
    dimensions: Vec<String>,
    measures: Vec<String>,
}

impl<'q> RowWriter<'q> {
    pub(super) fn new(query: &'q Query) -> Self {
        RowWriter {
            query,
            dimensions: query.group_by.iter().map(|d| json_string(d)).collect(),
            measures: query
                .measures
                .iter()
                .map(|m| json_string(&m.to_string()))
                .collect(),
        }
    }

    /// Appends one row to a JSON array being written.
    pub(super) fn write(&self, (bucket, group): &RowKey, state: &AggregateState, out: &mut String) {
        separate(out);
        out.push_str("{\"bucket\":\"");
        out.push_str(&format_rfc3339(*bucket));
        out.push('"');
        for (name, value) in self.dimensions.iter().zip(group) {
            out.push(',');
            out.push_str(name);
            out.push(':');
            out.push_str(&json_string(value));
        }
        for (name, measure) in self.measures.iter().zip(&self.query.measures) {
            out.push(',');
            out.push_str(name);
            out.push(':');
            out.push_str(&measure.value(state, &self.query.sources).to_string());
        }
        out.push('}');
    }
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    Value::from(text).to_string()
}

/// Where the answer's numbers came from.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Sources {
    /// Batch views answered for `[from, horizon)` (clamped to the range).
    pub batch: [String; 2],
    /// Real-time views answered for `[horizon, to)`.
    pub speed: [String; 2],
}

impl Sources {
    /// The split of `range` at `seam`.
    pub fn split(range: &Range<Millis>, seam: Millis) -> Sources {
        Sources {
            batch: [format_rfc3339(range.start), format_rfc3339(seam)],
            speed: [format_rfc3339(seam), format_rfc3339(range.end)],
        }
    }
}
