//! A view spec compiled into a Polars lazy plan over one hour of raw events.
//!
//! [`dedupe`] keeps one copy per `(tenant, event_id)`: the one with the smallest
//! `(received_at, log_partition, log_offset)`, the speed layer's rule. [`view_states`] filters
//! the view's tenant and event types, groups by bucket and dimension values, and gathers each
//! measure's values per group; the states are then folded from those values by the model's own
//! [`MeasureState::add`], the function the speed layer folds with, so the two layers cannot
//! disagree on what a measure means.

use polars::prelude::*;
use tally_connectors::archive::tag_column;
use tally_connectors::batch_views::StateRow;
use tally_model::event::FieldValue;
use tally_model::registry::TagKind;
use tally_model::state::MeasureState;
use tally_model::view::BUILT_IN_FIELDS;
use tally_model::{AggregateState, ViewSpec};

/// Raw columns every plan reads.
const BASE_COLUMNS: [&str; 7] = [
    "event_id",
    "tenant",
    "event_type",
    "ts",
    "received_at",
    "log_partition",
    "log_offset",
];

/// The states of one view for one hour.
pub struct BuiltStates {
    /// One row per (bucket, dimension values), ordered.
    pub rows: Vec<StateRow>,
    /// Distinct events counted.
    pub events: u64,
}

/// The raw columns a view may read: the base columns, and every kind of column its fields
/// can be stored in.
pub fn raw_columns(spec: &ViewSpec) -> impl Iterator<Item = String> + '_ {
    let fields = spec
        .dimensions
        .iter()
        .map(String::as_str)
        .chain(spec.measure_fields());
    BASE_COLUMNS
        .into_iter()
        .map(str::to_owned)
        .chain(fields.flat_map(field_columns))
}

/// The columns a field may be stored in: itself for a built-in, one per tag kind otherwise.
fn field_columns(field: &str) -> Vec<String> {
    if BUILT_IN_FIELDS.contains(&field) {
        return vec![field.to_owned()];
    }
    [TagKind::String, TagKind::Number, TagKind::Bool]
        .into_iter()
        .map(|kind| tag_column(kind, field))
        .collect()
}

/// The field's columns present in this hour.
fn present_columns(field: &str, available: &Schema) -> Vec<String> {
    field_columns(field)
        .into_iter()
        .filter(|column| available.contains(column))
        .collect()
}

/// One copy per `(tenant, event_id)`: the earliest received, ties broken by log position.
pub fn dedupe(frame: DataFrame) -> PolarsResult<LazyFrame> {
    let by_log_position = [col("received_at"), col("log_partition"), col("log_offset")];
    Ok(frame
        .lazy()
        .sort_by_exprs(by_log_position, SortMultipleOptions::default())
        .unique_stable_generic(
            Some(vec![col("tenant"), col("event_id")]),
            UniqueKeepStrategy::First,
        ))
}

/// Builds one view's states from an hour's deduplicated events.
pub fn view_states(
    deduped: LazyFrame,
    available: &Schema,
    tenant: &str,
    spec: &ViewSpec,
) -> PolarsResult<BuiltStates> {
    let mut plan = deduped.filter(col("tenant").eq(lit(tenant)));
    if !spec.covers_every_event_type() {
        let covered = spec
            .events
            .iter()
            .map(|event_type| col("event_type").eq(lit(event_type.as_str())))
            .reduce(|either, or| either.or(or))
            .unwrap_or(lit(false));
        plan = plan.filter(covered);
    }
    let width = spec.stored_granularity().millis();
    let bucket =
        (col("ts").cast(DataType::Int64).floor_div(lit(width)) * lit(width)).alias("bucket");

    // Group keys: the bucket, then each dimension's columns (a tag may be stored under
    // several kinds); measures: each measure field's columns, gathered as lists.
    let mut keys = vec![bucket];
    let mut dimension_keys: Vec<Vec<String>> = Vec::new();
    for (index, dimension) in spec.dimensions.iter().enumerate() {
        let mut names = Vec::new();
        for (kind, column) in present_columns(dimension, available)
            .into_iter()
            .enumerate()
        {
            let alias = format!("d{index}_{kind}");
            keys.push(col(column).alias(alias.as_str()));
            names.push(alias);
        }
        dimension_keys.push(names);
    }
    let mut aggregates = vec![len().alias("count")];
    let mut measure_values: Vec<Vec<String>> = Vec::new();
    for (index, field) in spec.measure_fields().enumerate() {
        let mut names = Vec::new();
        for (kind, column) in present_columns(field, available).into_iter().enumerate() {
            let alias = format!("m{index}_{kind}");
            aggregates.push(col(column).drop_nulls().alias(alias.as_str()));
            names.push(alias);
        }
        measure_values.push(names);
    }
    let grouped = plan.group_by(keys).agg(aggregates).collect()?;

    let buckets = grouped.column("bucket")?.i64()?.clone();
    let counts = grouped.column("count")?.cast(&DataType::UInt64)?;
    let counts = counts.u64()?;
    let dimension_columns = columns_of(&grouped, &dimension_keys)?;
    let measure_columns = columns_of(&grouped, &measure_values)?;
    let mut states: Vec<AggregateState> = (0..grouped.height())
        .map(|row| {
            let mut state = spec.empty_state();
            state.count = counts.get(row).unwrap_or_default();
            state
        })
        .collect();
    // One pass per gathered column, reusing one series for every group's values.
    for (measure, stored_as) in measure_columns.iter().enumerate() {
        for column in stored_as {
            for (row, values) in column.list()?.amortized_iter().enumerate() {
                if let Some(values) = values {
                    add_values(&mut states[row].measures[measure], values.as_ref())?;
                }
            }
        }
    }
    let events = states.iter().map(|state| state.count).sum();
    let mut rows = Vec::with_capacity(states.len());
    for (row, state) in states.into_iter().enumerate() {
        let bucket = buckets.get(row).unwrap_or_default();
        let dimensions = dimension_columns
            .iter()
            .map(|stored_as| dimension_value(stored_as, row))
            .collect::<PolarsResult<Vec<_>>>()?;
        rows.push((bucket, dimensions, state));
    }
    rows.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    Ok(BuiltStates { rows, events })
}

fn columns_of(frame: &DataFrame, names: &[Vec<String>]) -> PolarsResult<Vec<Vec<Column>>> {
    names
        .iter()
        .map(|group| {
            group
                .iter()
                .map(|name| frame.column(name).cloned())
                .collect()
        })
        .collect()
}

/// A dimension's value as the speed layer renders it: the first kind present, or "".
fn dimension_value(stored_as: &[Column], row: usize) -> PolarsResult<String> {
    for column in stored_as {
        let value = match column.dtype() {
            DataType::String => column.str()?.get(row).map(str::to_owned),
            DataType::Float64 => column
                .f64()?
                .get(row)
                .map(|n| FieldValue::Number(n).as_dimension().into_owned()),
            DataType::Boolean => column
                .bool()?
                .get(row)
                .map(|b| FieldValue::Bool(b).as_dimension().into_owned()),
            other => polars_bail!(SchemaMismatch: "dimension column of type {other}"),
        };
        if let Some(value) = value {
            return Ok(value);
        }
    }
    Ok(String::new())
}

/// Adds a group's values of one stored kind to a measure, through the model's fold.
fn add_values(measure: &mut MeasureState, values: &Series) -> PolarsResult<()> {
    match values.dtype() {
        DataType::String => values
            .str()?
            .iter()
            .flatten()
            .for_each(|text| measure.add(FieldValue::Str(text))),
        DataType::Float64 => values
            .f64()?
            .iter()
            .flatten()
            .for_each(|n| measure.add(FieldValue::Number(n))),
        DataType::Boolean => values
            .bool()?
            .iter()
            .flatten()
            .for_each(|b| measure.add(FieldValue::Bool(b))),
        other => polars_bail!(SchemaMismatch: "measure column of type {other}"),
    }
    Ok(())
}
