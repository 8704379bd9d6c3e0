//! The raw archive's Parquet schema: how logged events and rejected events are written as
//! Parquet (zstd) and read back. Every layer and every notebook reads the same columns.
//!
//! Accepted events (`raw/events/...`):
//!
//! | column | type | |
//! | --- | --- | --- |
//! | `event_id`, `tenant`, `event_type`, `user_id`, `source` | string | |
//! | `ts`, `received_at` | timestamp (ms, UTC) | event time, receive time |
//! | `log_partition`, `log_offset` | u32, u64 | where the event sits in the log |
//! | `tag_<name>` / `num_<name>` / `bool_<name>` | string / f64 / bool | one column per tag and kind present in the file, null where an event lacks it |
//!
//! A tag's kind is in its column's name, so two tenants declaring the same tag name with
//! different types never clash, and a file's schema depends only on the tags it holds.
//! Rejected events (`raw/rejected/...`): `tenant`, `source`, `received_at`, `request_index`,
//! `reasons` (list of strings), `codes` (their stable codes, a list of strings; absent from
//! files written before codes were kept), `payload` (the event as sent), `log_partition`,
//! `log_offset`.

use std::collections::BTreeMap;
use std::io::Cursor;

use polars::prelude::*;
use tally_model::registry::TagKind;
use tally_model::{Event, Millis, RejectedEvent, TagValue};
use thiserror::Error;

use crate::log::Offset;

/// Columns every raw event file has.
pub const EVENT_COLUMNS: [&str; 9] = [
    "event_id",
    "tenant",
    "event_type",
    "user_id",
    "source",
    "ts",
    "received_at",
    "log_partition",
    "log_offset",
];

/// A logged record and where it sits in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Logged<T> {
    /// The log partition.
    pub partition: u32,
    /// The offset in the partition.
    pub offset: Offset,
    /// The record.
    pub record: T,
}

/// Why raw Parquet could not be written or read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// Polars failed to build, write or read a frame.
    #[error("Parquet: {0}")]
    Parquet(#[from] PolarsError),
    /// A row misses a value every row must have.
    #[error("raw Parquet: column '{0}' has a null where every row needs a value")]
    MissingValue(&'static str),
}

/// The column holding a tag of `kind`: `tag_<name>`, `num_<name>` or `bool_<name>`.
pub fn tag_column(kind: TagKind, name: &str) -> String {
    let prefix = match kind {
        TagKind::String => "tag_",
        TagKind::Number => "num_",
        TagKind::Bool => "bool_",
    };
    format!("{prefix}{name}")
}

/// The kind and tag name a column holds, for tag columns.
pub fn parse_tag_column(column: &str) -> Option<(TagKind, &str)> {
    [
        ("tag_", TagKind::String),
        ("num_", TagKind::Number),
        ("bool_", TagKind::Bool),
    ]
    .into_iter()
    .find_map(|(prefix, kind)| Some((kind, column.strip_prefix(prefix)?)))
}

/// Accepted events as one zstd Parquet object.
pub fn events_to_parquet(events: &[Logged<Event>]) -> Result<Vec<u8>, ArchiveError> {
    let text = |field: fn(&Event) -> &str| -> Vec<&str> {
        events.iter().map(|logged| field(&logged.record)).collect()
    };
    let mut columns = vec![
        Column::new("event_id".into(), text(|e| &e.event_id)),
        Column::new("tenant".into(), text(|e| &e.tenant)),
        Column::new("event_type".into(), text(|e| &e.event_type)),
        Column::new("user_id".into(), text(|e| &e.user_id)),
        Column::new("source".into(), text(|e| &e.source)),
        timestamps("ts", events.iter().map(|logged| logged.record.ts))?,
        timestamps(
            "received_at",
            events.iter().map(|logged| logged.record.received_at),
        )?,
    ];
    columns.extend(log_positions(events));
    columns.extend(tag_columns(events));
    write_parquet(DataFrame::new(events.len(), columns)?)
}

/// Rejected events as one zstd Parquet object.
pub fn rejected_to_parquet(rejected: &[Logged<RejectedEvent>]) -> Result<Vec<u8>, ArchiveError> {
    let records = || rejected.iter().map(|logged| &logged.record);
    let reasons: Vec<Series> = records()
        .map(|r| Series::new(PlSmallStr::EMPTY, r.reasons.as_slice()))
        .collect();
    let codes: Vec<Series> = records()
        .map(|r| Series::new(PlSmallStr::EMPTY, r.codes.as_slice()))
        .collect();
    let mut columns = vec![
        Column::new(
            "tenant".into(),
            records().map(|r| r.tenant.as_str()).collect::<Vec<_>>(),
        ),
        Column::new(
            "source".into(),
            records().map(|r| r.source.as_str()).collect::<Vec<_>>(),
        ),
        timestamps("received_at", records().map(|r| r.received_at))?,
        Column::new(
            "request_index".into(),
            records().map(|r| r.index as u64).collect::<Vec<_>>(),
        ),
        Column::new("reasons".into(), reasons),
        Column::new("codes".into(), codes),
        Column::new(
            "payload".into(),
            records().map(|r| r.payload.as_str()).collect::<Vec<_>>(),
        ),
    ];
    columns.extend(log_positions(rejected));
    write_parquet(DataFrame::new(rejected.len(), columns)?)
}

/// Reads back a raw events object written by [`events_to_parquet`].
pub fn events_from_parquet(bytes: &[u8]) -> Result<Vec<Logged<Event>>, ArchiveError> {
    let frame = ParquetReader::new(Cursor::new(bytes)).finish()?;
    let text = |name: &'static str| -> Result<Vec<String>, ArchiveError> {
        frame
            .column(name)?
            .str()?
            .iter()
            .map(|value| {
                value
                    .map(str::to_owned)
                    .ok_or(ArchiveError::MissingValue(name))
            })
            .collect()
    };
    let integers = |name: &'static str| -> Result<Vec<i64>, ArchiveError> {
        frame
            .column(name)?
            .cast(&DataType::Int64)?
            .i64()?
            .iter()
            .map(|value| value.ok_or(ArchiveError::MissingValue(name)))
            .collect()
    };
    let mut tags: Vec<BTreeMap<String, TagValue>> = vec![BTreeMap::new(); frame.height()];
    for column in frame.columns() {
        let Some((kind, name)) = parse_tag_column(column.name()) else {
            continue;
        };
        let mut put = |row: usize, value: TagValue| {
            tags[row].insert(name.to_owned(), value);
        };
        match kind {
            TagKind::String => column.str()?.iter().enumerate().for_each(|(row, v)| {
                if let Some(v) = v {
                    put(row, TagValue::String(v.to_owned()));
                }
            }),
            TagKind::Number => column.f64()?.iter().enumerate().for_each(|(row, v)| {
                if let Some(v) = v {
                    put(row, TagValue::Number(v));
                }
            }),
            TagKind::Bool => column.bool()?.iter().enumerate().for_each(|(row, v)| {
                if let Some(v) = v {
                    put(row, TagValue::Bool(v));
                }
            }),
        }
    }
    let (ids, tenants, types) = (text("event_id")?, text("tenant")?, text("event_type")?);
    let (users, sources) = (text("user_id")?, text("source")?);
    let (ts, received) = (integers("ts")?, integers("received_at")?);
    let (partitions, offsets) = (integers("log_partition")?, integers("log_offset")?);
    let rows = ids
        .into_iter()
        .zip(tenants)
        .zip(types)
        .zip(users)
        .zip(sources);
    Ok(rows
        .zip(tags)
        .enumerate()
        .map(
            |(row, (((((event_id, tenant), event_type), user_id), source), tags))| Logged {
                partition: partitions[row] as u32,
                offset: offsets[row] as Offset,
                record: Event {
                    event_id,
                    event_type,
                    ts: ts[row],
                    tenant,
                    user_id,
                    tags,
                    received_at: received[row],
                    source,
                },
            },
        )
        .collect())
}

/// Instants as UTC timestamps: Parquet marks them `isAdjustedToUTC`, so Polars, DuckDB,
/// Spark and pandas read them as instants, not as local wall times.
fn timestamps(name: &str, values: impl Iterator<Item = Millis>) -> PolarsResult<Column> {
    let millis = Int64Chunked::from_vec(name.into(), values.collect());
    Ok(millis
        .into_datetime(TimeUnit::Milliseconds, Some(TimeZone::UTC))
        .into_column())
}

fn log_positions<T>(rows: &[Logged<T>]) -> [Column; 2] {
    [
        Column::new(
            "log_partition".into(),
            rows.iter().map(|r| r.partition).collect::<Vec<_>>(),
        ),
        Column::new(
            "log_offset".into(),
            rows.iter().map(|r| r.offset).collect::<Vec<_>>(),
        ),
    ]
}

/// One column per (kind, tag name) present, null where an event lacks the tag.
fn tag_columns(events: &[Logged<Event>]) -> Vec<Column> {
    let mut strings: BTreeMap<&str, Vec<Option<&str>>> = BTreeMap::new();
    let mut numbers: BTreeMap<&str, Vec<Option<f64>>> = BTreeMap::new();
    let mut bools: BTreeMap<&str, Vec<Option<bool>>> = BTreeMap::new();
    let rows = events.len();
    for (row, logged) in events.iter().enumerate() {
        for (name, value) in &logged.record.tags {
            match value {
                TagValue::String(s) => {
                    strings.entry(name).or_insert_with(|| vec![None; rows])[row] = Some(s)
                }
                TagValue::Number(n) => {
                    numbers.entry(name).or_insert_with(|| vec![None; rows])[row] = Some(*n)
                }
                TagValue::Bool(b) => {
                    bools.entry(name).or_insert_with(|| vec![None; rows])[row] = Some(*b)
                }
            }
        }
    }
    let named = |kind, name: &str| PlSmallStr::from(tag_column(kind, name));
    let strings = strings
        .into_iter()
        .map(|(name, values)| Column::new(named(TagKind::String, name), values));
    let numbers = numbers
        .into_iter()
        .map(|(name, values)| Column::new(named(TagKind::Number, name), values));
    let bools = bools
        .into_iter()
        .map(|(name, values)| Column::new(named(TagKind::Bool, name), values));
    strings.chain(numbers).chain(bools).collect()
}

/// A frame as one zstd Parquet object.
pub fn write_parquet(mut frame: DataFrame) -> Result<Vec<u8>, ArchiveError> {
    let mut bytes = Vec::new();
    ParquetWriter::new(&mut bytes)
        .with_compression(ParquetCompression::Zstd(None))
        .finish(&mut frame)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, tags: &[(&str, TagValue)]) -> Event {
        Event {
            event_id: id.into(),
            event_type: "purchase".into(),
            ts: 1_795_881_600_123,
            tenant: "demo".into(),
            user_id: "u1".into(),
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            received_at: 1_795_881_600_456,
            source: "web".into(),
        }
    }

    #[test]
    fn events_round_trip_with_typed_tag_columns() {
        let events = vec![
            Logged {
                partition: 1,
                offset: 7,
                record: event(
                    "a",
                    &[
                        ("country", TagValue::String("FR".into())),
                        ("revenue", TagValue::Number(12.5)),
                    ],
                ),
            },
            Logged {
                partition: 1,
                offset: 8,
                record: event(
                    "b",
                    &[
                        ("beta", TagValue::Bool(true)),
                        ("country", TagValue::Number(33.0)),
                    ],
                ),
            },
        ];
        let bytes = events_to_parquet(&events).unwrap();
        assert_eq!(events_from_parquet(&bytes).unwrap(), events);
        let frame = ParquetReader::new(Cursor::new(&bytes)).finish().unwrap();
        let names: Vec<&str> = frame
            .get_column_names()
            .iter()
            .map(|n| n.as_str())
            .collect();
        assert_eq!(&names[..9], EVENT_COLUMNS);
        assert_eq!(
            &names[9..],
            ["tag_country", "num_country", "num_revenue", "bool_beta"]
        );
        assert_eq!(
            frame.column("ts").unwrap().dtype(),
            &DataType::Datetime(TimeUnit::Milliseconds, Some(TimeZone::UTC)),
            "timestamps are UTC instants (isAdjustedToUTC)"
        );
    }

    #[test]
    fn rejected_events_keep_their_reasons() {
        let rejected = vec![Logged {
            partition: 0,
            offset: 3,
            record: RejectedEvent {
                tenant: "demo".into(),
                source: "web".into(),
                received_at: 5,
                index: 2,
                reasons: vec!["unknown_tag: x".into(), "missing_field: ts".into()],
                codes: vec!["unknown_tag".into(), "missing_field".into()],
                payload: "{}".into(),
            },
        }];
        let bytes = rejected_to_parquet(&rejected).unwrap();
        let frame = ParquetReader::new(Cursor::new(&bytes)).finish().unwrap();
        let reasons = frame
            .column("reasons")
            .unwrap()
            .list()
            .unwrap()
            .get_as_series(0);
        assert_eq!(reasons.unwrap().len(), 2);
        let codes = frame
            .column("codes")
            .unwrap()
            .list()
            .unwrap()
            .get_as_series(0);
        assert_eq!(codes.unwrap().str().unwrap().get(0), Some("unknown_tag"));
        assert_eq!(frame.height(), 1);
    }

    #[test]
    fn tag_columns_name_their_kind() {
        assert_eq!(tag_column(TagKind::Number, "revenue"), "num_revenue");
        assert_eq!(parse_tag_column("bool_beta"), Some((TagKind::Bool, "beta")));
        assert_eq!(parse_tag_column("event_id"), None);
    }
}
