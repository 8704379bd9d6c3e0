//! Stored states rolled up into an answer's rows: how a spec's states map onto a query
//! ([`Projection`]), and the rows as they merge ([`Rollup`]).
// This module reads what callers send: its arithmetic is checked or saturating, never
// wrapping (docs/hardening.md).
#![deny(clippy::arithmetic_side_effects)]

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ops::Range;
use std::sync::Arc;

use tally_connectors::batch_views::StateRow;
use tally_model::{AggregateState, Measure, Millis, StateMerger, ViewSpec};

use super::params::Condition;
use super::parse::{Query, QueryError};
use super::render::{RenderedHour, RenderedRows, RowWriter, separate};

/// Rows rendered between two checks of an answer's size.
const RENDER_CHUNK_ROWS: usize = 1024;
/// What an older spec of a view lacks that a query asks for.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Lacking {
    /// A dimension the query groups or filters by.
    #[error("dimension '{0}'")]
    Dimension(String),
    /// A measure the query reads.
    #[error("measure '{0}'")]
    Measure(Measure),
}

/// How the rows of one spec (one logic version of the view) map onto a query.
pub struct Projection {
    group: Vec<usize>,
    filter: Vec<Condition<usize>>,
    picked: Vec<usize>,
}

impl Projection {
    /// Maps `spec`'s dimensions and measures onto the query's; an error names what the spec
    /// lacks (an older logic version may not have a dimension or measure the current one has).
    pub fn new(spec: &ViewSpec, query: &Query) -> Result<Projection, Lacking> {
        let dimension = |name: &str| {
            spec.dimensions
                .iter()
                .position(|d| d == name)
                .ok_or_else(|| Lacking::Dimension(name.to_owned()))
        };
        let group = query
            .group_by
            .iter()
            .map(|name| dimension(name))
            .collect::<Result<_, _>>()?;
        let filter = query
            .filter
            .iter()
            .map(|condition| Ok(condition.on(dimension(&condition.dimension)?)))
            .collect::<Result<_, Lacking>>()?;
        let state_measures: Vec<&Measure> = spec
            .measures
            .iter()
            .filter(|m| m.field().is_some())
            .collect();
        let picked = query
            .sources
            .iter()
            .map(|source| {
                state_measures
                    .iter()
                    .position(|m| *m == source)
                    .ok_or_else(|| Lacking::Measure(source.clone()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Projection {
            group,
            filter,
            picked,
        })
    }

    /// The spec's dimensions grouped by, those filtered with their values, and the measures
    /// picked, by position: what the rows made for a query depend on besides the query's
    /// granularity and measure names.
    pub fn shape(&self) -> (&[usize], &[Condition<usize>], &[usize]) {
        (&self.group, &self.filter, &self.picked)
    }
}

/// An answer row's key: its bucket and group values.
pub type RowKey = (Millis, Vec<String>);

/// The rolled-up rows of one stored hour for one query shape, shared by the queries that
/// ask for it (see [`Rollup::add_rolled`]).
pub type RolledHour = Vec<(RowKey, AggregateState)>;

/// An answer row's state: being merged, or until a second state merges in, one of a shared
/// rolled hour's (no copy of its sketches).
enum RowState {
    Merging(StateMerger),
    Shared(Arc<RolledHour>, usize),
}

impl RowState {
    fn merging(&mut self) -> &mut StateMerger {
        if let RowState::Shared(hour, index) = self {
            *self = RowState::Merging(StateMerger::starting_with(&hour[*index].1));
        }
        match self {
            RowState::Merging(merger) => merger,
            RowState::Shared(..) => unreachable!("made merging above"),
        }
    }

    fn settle(self) -> SettledRow {
        match self {
            RowState::Merging(merger) => SettledRow::Owned(merger.finish()),
            RowState::Shared(hour, index) => SettledRow::Shared(hour, index),
        }
    }
}

/// An answer row's final state.
enum SettledRow {
    Owned(AggregateState),
    Shared(Arc<RolledHour>, usize),
}

impl SettledRow {
    fn get(&self) -> &AggregateState {
        match self {
            SettledRow::Owned(state) => state,
            SettledRow::Shared(hour, index) => &hour[*index].1,
        }
    }

    fn into_owned(self) -> AggregateState {
        match self {
            SettledRow::Owned(state) => state,
            SettledRow::Shared(hour, index) => hour[index].1.clone(),
        }
    }
}

/// The answer's rows as they are being merged: (answer bucket, group values) → state.
pub struct Rollup<'q> {
    query: &'q Query,
    rows: HashMap<RowKey, RowState, foldhash::fast::FixedState>,
    /// Whole hours rendered already, by their start.
    rendered: Vec<(Millis, Arc<RenderedHour>)>,
}

impl<'q> Rollup<'q> {
    /// An empty answer to `query`.
    pub fn new(query: &'q Query) -> Self {
        Rollup {
            query,
            rows: HashMap::default(),
            rendered: Vec::new(),
        }
    }

    /// Folds one stored state into its answer row, unless the filter excludes it.
    pub fn add(
        &mut self,
        projection: &Projection,
        bucket: Millis,
        dimensions: &[String],
        state: &AggregateState,
    ) -> Result<(), tally_model::state::MergeError> {
        let matches = projection
            .filter
            .iter()
            .all(|condition| condition.admits(dimensions.get(condition.dimension)));
        if !matches {
            return Ok(());
        }
        let group = projection
            .group
            .iter()
            .map(|&index| dimensions.get(index).cloned().unwrap_or_default())
            .collect();
        let key = (self.query.answer_bucket(bucket), group);
        let row = self
            .rows
            .entry(key)
            .or_insert_with(|| RowState::Merging(StateMerger::new(&self.query.sources)));
        row.merging().merge_projected(state, &projection.picked)
    }

    /// Folds the stored rows of one object whose bucket is in `buckets`.
    pub fn add_rows(
        &mut self,
        projection: &Projection,
        rows: &[StateRow],
        buckets: &Range<Millis>,
    ) -> Result<(), tally_model::state::MergeError> {
        for (bucket, dimensions, state) in rows {
            if buckets.contains(bucket) {
                self.add(projection, *bucket, dimensions, state)?;
            }
        }
        Ok(())
    }

    /// Merges rows already rolled up for this query's shape, sharing their states until
    /// another merges into the same row.
    pub fn add_rolled(
        &mut self,
        hour: &Arc<RolledHour>,
    ) -> Result<(), tally_model::state::MergeError> {
        for (index, (key, state)) in hour.iter().enumerate() {
            match self.rows.entry(key.clone()) {
                Entry::Vacant(vacant) => {
                    vacant.insert(RowState::Shared(hour.clone(), index));
                }
                Entry::Occupied(mut occupied) => occupied.get_mut().merging().merge(state)?,
            }
        }
        Ok(())
    }

    /// Adds the rows of a whole stored hour already rendered for this query (see
    /// [`render_fragment`](Self::render_fragment)). Only for answers bucketed by minute or
    /// hour, where no other hour shares its rows.
    pub fn add_rendered(&mut self, hour: Millis, rendered: Arc<RenderedHour>) {
        self.rendered.push((hour, rendered));
    }

    /// The rows rolled up so far, owned; for caching a rolled hour.
    pub fn into_rolled(self) -> RolledHour {
        self.rows
            .into_iter()
            .map(|(key, state)| (key, state.settle().into_owned()))
            .collect()
    }

    /// The rows rolled up so far as JSON objects, comma-separated, in answer order: an hour's
    /// part of an answer, to cache and [`add_rendered`](Self::add_rendered) to later ones.
    pub fn render_fragment(self) -> RenderedHour {
        let mut out = String::new();
        let query = self.query;
        let settled = self.into_sorted_rows();
        query.render_rows(&borrowed(&settled), &mut out);
        out
    }

    /// The answer's rows as a JSON array, ordered by bucket, then group values; refused once
    /// it grows past `max_bytes`, so that no answer costs more memory than that.
    pub fn into_json(mut self, max_bytes: usize) -> Result<String, QueryError> {
        let query = self.query;
        let mut rendered = std::mem::take(&mut self.rendered);
        rendered.sort_unstable_by_key(|(hour, _)| *hour);
        let settled = self.into_sorted_rows();
        let sorted = borrowed(&settled);
        let mut rows = sorted.as_slice();
        let mut out = String::from("[");
        let within = |out: &String| {
            if out.len() > max_bytes {
                Err(QueryError::AnswerTooLarge { max_bytes })
            } else {
                Ok(())
            }
        };
        let render = |rows: &[(&RowKey, &AggregateState)], out: &mut String| {
            for chunk in rows.chunks(RENDER_CHUNK_ROWS) {
                query.render_rows(chunk, out);
                within(out)?;
            }
            Ok::<_, QueryError>(())
        };
        // A rendered hour holds every row of its buckets: it goes whole where it starts.
        for (hour, fragment) in &rendered {
            let before = rows.partition_point(|((bucket, _), _)| bucket < hour);
            render(&rows[..before], &mut out)?;
            rows = &rows[before..];
            if !fragment.is_empty() {
                separate(&mut out);
                out.push_str(fragment);
                within(&out)?;
            }
        }
        render(rows, &mut out)?;
        out.push(']');
        Ok(out)
    }

    /// The rows rolled up so far, each rendered alone, in answer order; for answers by
    /// minute or hour, where no other source merges into them.
    pub fn into_rendered_rows(self) -> RenderedRows {
        let writer = RowWriter::new(self.query);
        let rows = self
            .into_sorted_rows()
            .into_iter()
            .map(|(key, row)| {
                let mut rendered = String::new();
                writer.write(&key, row.get(), &mut rendered);
                (key.0, rendered)
            })
            .collect();
        RenderedRows(rows)
    }

    fn into_sorted_rows(self) -> Vec<(RowKey, SettledRow)> {
        let mut rows: Vec<_> = self
            .rows
            .into_iter()
            .map(|(key, state)| (key, state.settle()))
            .collect();
        rows.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
        rows
    }
}

fn borrowed(rows: &[(RowKey, SettledRow)]) -> Vec<(&RowKey, &AggregateState)> {
    rows.iter().map(|(key, row)| (key, row.get())).collect()
}
