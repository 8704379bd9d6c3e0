//! `GET /v1/query`: one view over a time range, batch views before the horizon and real-time
//! views after it, rolled up to the asked granularity, grouped, filtered and measured.
//!
//! The seam is exact because every stored bucket lies wholly on one side of the hour-aligned
//! horizon (see [`ViewSpec::stored_granularity`]) and because the real-time store is read
//! *before* the manifest: the speed layer only drops buckets below a horizon that has been
//! published, so the horizon read afterwards is at or above the one the store reflected,
//! and the store still held every bucket from it on.
// This module reads what callers send: its arithmetic is checked or saturating, never
// wrapping (docs/hardening.md).
#![deny(clippy::arithmetic_side_effects)]

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tally_connectors::batch_views::StateRow;
use tally_model::measure::function_call;
use tally_model::state::MeasureSummary;
use tally_model::time::{DAY_MS, checked_range, format_rfc3339, parse_timestamp};
use tally_model::{AggregateState, Granularity, Measure, Millis, StateMerger, Tenant, ViewSpec};

/// Longest range one query may span.
const MAX_RANGE_MS: Millis = 366 * DAY_MS;
/// The range when the query names none: the last day.
const DEFAULT_RANGE_MS: Millis = DAY_MS;
/// Most measures one query may ask for.
const MAX_MEASURES: usize = 32;
/// Rows rendered between two checks of an answer's size.
const RENDER_CHUNK_ROWS: usize = 1024;

/// The query string of `GET /v1/query`.
#[derive(Debug, Default, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct QueryParams {
    /// The view's name.
    pub view: Option<String>,
    /// Start, inclusive: RFC 3339 or epoch ms [default: a day before `to`].
    pub from: Option<String>,
    /// End, exclusive: RFC 3339 or epoch ms [default: now].
    pub to: Option<String>,
    /// `minute`, `hour`, `day` or `all` [default: the view's granularity].
    pub granularity: Option<String>,
    /// Dimensions to group by, comma-separated [default: none, one row per bucket].
    pub group_by: Option<String>,
    /// `dimension=value` pairs, comma-separated; rows must match all.
    pub filter: Option<String>,
    /// Measures, comma-separated: `count`, `sum(t)`, `avg(t)`, `min(t)`, `max(t)`, `uniq(f)`,
    /// `pNN(t)` such as `p99(latency_ms)` [default: every measure of the view].
    pub measures: Option<String>,
}

/// How rows are bucketed in an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryGranularity {
    /// UTC buckets of this width.
    Bucketed(Granularity),
    /// One bucket for the whole range, labelled with its start.
    All,
}

impl QueryGranularity {
    fn parse(text: &str) -> Result<Self, QueryError> {
        match text {
            "all" => Ok(QueryGranularity::All),
            other => other
                .parse()
                .map(QueryGranularity::Bucketed)
                .map_err(|_| QueryError::UnknownGranularity(other.to_owned())),
        }
    }
}

impl fmt::Display for QueryGranularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueryGranularity::Bucketed(granularity) => granularity.name(),
            QueryGranularity::All => "all",
        })
    }
}

/// A measure as a query asks for it, read off a view measure's state.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryMeasure {
    /// `count`.
    Count,
    /// `sum(tag)`.
    Sum(String),
    /// `avg(tag)`: the sum over the events that carried the tag.
    Avg(String),
    /// `min(tag)`.
    Min(String),
    /// `max(tag)`.
    Max(String),
    /// `uniq(field)`.
    Uniq(String),
    /// `pNN(tag)`: the quantile at rank NN / 100, as written (e.g. `p99`, `p99.9`).
    Quantile {
        /// The tag.
        field: String,
        /// The normalized rank, in (0, 1).
        rank: f64,
        /// The function name as asked, e.g. `p99`.
        label: String,
    },
}

impl QueryMeasure {
    /// A view measure's function (`sum`, `min`, `max`, `uniq`, read by the model's own
    /// grammar), or one a query derives from a view measure: `avg(f)` from `sum(f)`,
    /// `pNN(f)` from `quantiles(f)`.
    fn parse(text: &str) -> Result<Self, QueryError> {
        let unknown = || QueryError::UnknownMeasure(text.trim().to_owned());
        match text.parse::<Measure>() {
            Ok(Measure::Count) => return Ok(QueryMeasure::Count),
            Ok(Measure::Sum(field)) => return Ok(QueryMeasure::Sum(field)),
            Ok(Measure::Min(field)) => return Ok(QueryMeasure::Min(field)),
            Ok(Measure::Max(field)) => return Ok(QueryMeasure::Max(field)),
            Ok(Measure::Uniq(field)) => return Ok(QueryMeasure::Uniq(field)),
            // A sketch, not a number: a query asks for its quantiles by rank.
            Ok(Measure::Quantiles(_)) => return Err(unknown()),
            Err(_) => {}
        }
        let (function, field) = function_call(text).ok_or_else(unknown)?;
        let field = field.to_owned();
        if function == "avg" {
            return Ok(QueryMeasure::Avg(field));
        }
        let percent: f64 = function
            .strip_prefix('p')
            .and_then(|n| n.parse().ok())
            .filter(|n| *n > 0.0 && *n < 100.0)
            .ok_or_else(unknown)?;
        Ok(QueryMeasure::Quantile {
            field,
            rank: percent / 100.0,
            label: function.to_owned(),
        })
    }

    /// The view measure whose state answers it; none for `count`, which every state has.
    fn source(&self) -> Option<Measure> {
        Some(match self {
            QueryMeasure::Count => return None,
            QueryMeasure::Sum(f) | QueryMeasure::Avg(f) => Measure::Sum(f.clone()),
            QueryMeasure::Min(f) => Measure::Min(f.clone()),
            QueryMeasure::Max(f) => Measure::Max(f.clone()),
            QueryMeasure::Uniq(f) => Measure::Uniq(f.clone()),
            QueryMeasure::Quantile { field, .. } => Measure::Quantiles(field.clone()),
        })
    }

    /// The measures a view measure answers by default.
    fn defaults_of(measure: &Measure) -> Vec<QueryMeasure> {
        match measure {
            Measure::Count => vec![QueryMeasure::Count],
            Measure::Sum(f) => vec![QueryMeasure::Sum(f.clone()), QueryMeasure::Avg(f.clone())],
            Measure::Min(f) => vec![QueryMeasure::Min(f.clone())],
            Measure::Max(f) => vec![QueryMeasure::Max(f.clone())],
            Measure::Uniq(f) => vec![QueryMeasure::Uniq(f.clone())],
            Measure::Quantiles(f) => [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)]
                .map(|(label, rank)| QueryMeasure::Quantile {
                    field: f.clone(),
                    rank,
                    label: label.to_owned(),
                })
                .into(),
        }
    }

    fn value(&self, state: &AggregateState, sources: &[Measure]) -> Value {
        let Some(source) = self.source() else {
            return json!(state.count);
        };
        let measure = sources
            .iter()
            .position(|s| *s == source)
            .map(|index| &state.measures[index]);
        let Some(measure) = measure else {
            return Value::Null;
        };
        match (self, measure.summary()) {
            (QueryMeasure::Sum(_), MeasureSummary::Sum { sum, .. }) => json!(sum),
            (QueryMeasure::Avg(_), MeasureSummary::Sum { sum, n }) if n > 0 => {
                json!(sum / n as f64)
            }
            (QueryMeasure::Min(_), MeasureSummary::Min(value))
            | (QueryMeasure::Max(_), MeasureSummary::Max(value)) => json!(value),
            (QueryMeasure::Uniq(_), MeasureSummary::Uniq(estimate)) => json!(estimate.round()),
            (QueryMeasure::Quantile { rank, .. }, _) => json!(measure.quantile(*rank)),
            _ => Value::Null,
        }
    }
}

impl fmt::Display for QueryMeasure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryMeasure::Count => f.write_str("count"),
            QueryMeasure::Sum(x) => write!(f, "sum({x})"),
            QueryMeasure::Avg(x) => write!(f, "avg({x})"),
            QueryMeasure::Min(x) => write!(f, "min({x})"),
            QueryMeasure::Max(x) => write!(f, "max({x})"),
            QueryMeasure::Uniq(x) => write!(f, "uniq({x})"),
            QueryMeasure::Quantile { field, label, .. } => write!(f, "{label}({field})"),
        }
    }
}

/// Why a query was refused: always the caller's to fix, answered with 400.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// No tenant of the key's name (the catalog changed under the key).
    #[error("no tenant '{0}'")]
    UnknownTenant(String),
    /// `view=` is missing.
    #[error("name a view with view=...; the views are {views}")]
    NoView {
        /// The tenant's views, comma-separated.
        views: String,
    },
    /// `view=` names no view of the tenant.
    #[error("no view '{view}'; the views are {views}")]
    UnknownView {
        /// The name asked.
        view: String,
        /// The tenant's views, comma-separated.
        views: String,
    },
    /// A time or range that cannot be read or is out of bounds.
    #[error("{parameter}: {reason}")]
    Time {
        /// `from`, `to`, or `from and to`.
        parameter: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// `granularity=` is none of minute, hour, day or all.
    #[error("unknown granularity '{0}'; use minute, hour, day or all")]
    UnknownGranularity(String),
    /// A granularity finer than the view keeps.
    #[error("view '{view}' is kept per {kept}; granularity {asked} is finer than that")]
    TooFine {
        /// The view.
        view: String,
        /// What it keeps.
        kept: Granularity,
        /// What was asked.
        asked: Granularity,
    },
    /// A dimension the view does not have.
    #[error("view '{view}' has no dimension '{dimension}'; its dimensions are {dimensions}")]
    UnknownDimension {
        /// The view.
        view: String,
        /// The dimension asked.
        dimension: String,
        /// The view's dimensions, comma-separated.
        dimensions: String,
    },
    /// A filter that is not `dimension=value`.
    #[error("filter '{0}' is not of the form dimension=value")]
    FilterForm(String),
    /// A list parameter that names an item twice.
    #[error("{parameter} names '{item}' twice; name each once")]
    Repeated {
        /// `group_by`, `filter` or `measures`.
        parameter: &'static str,
        /// The item named twice.
        item: String,
    },
    /// More measures than one query may ask for.
    #[error("{asked} measures asked; one query may ask for at most {MAX_MEASURES}")]
    TooManyMeasures {
        /// How many were asked.
        asked: usize,
    },
    /// A measure outside the grammar.
    #[error("measure '{0}' is not one of count, sum(f), avg(f), min(f), max(f), uniq(f), pNN(f)")]
    UnknownMeasure(String),
    /// A measure the view keeps no state for.
    #[error(
        "view '{view}' cannot answer {measure}: it needs the view measure {needs}, and the view keeps {kept}"
    )]
    CannotAnswer {
        /// The view.
        view: String,
        /// The measure asked.
        measure: String,
        /// The view measure it needs.
        needs: Measure,
        /// The view's measures, comma-separated.
        kept: String,
    },
    /// An answer larger than serving may build.
    #[error(
        "the answer is over {max_bytes} bytes, the most one answer may hold; narrow it: a shorter range, a coarser granularity, fewer group_by dimensions or measures, or a filter"
    )]
    AnswerTooLarge {
        /// `serving.max_answer_bytes`.
        max_bytes: usize,
    },
    /// Batch hours of an older logic version that lacks what the query asks for.
    #[error(
        "the batch views of '{view}' from {hour} were computed by logic version {version}, which has no {lacking}; reprocess them with the current spec (tally batch reprocess) or query a later range"
    )]
    OlderLogic {
        /// The view.
        view: String,
        /// The first hour of that version, RFC 3339.
        hour: String,
        /// The logic version.
        version: tally_model::LogicVersion,
        /// What it lacks.
        lacking: Lacking,
    },
}

/// A checked query against one tenant's view.
#[derive(Debug, Clone)]
pub struct Query {
    /// The view as the tenant declares it now.
    pub view: ViewSpec,
    /// Buckets starting at or after this instant.
    pub from: Millis,
    /// Buckets starting before this instant.
    pub to: Millis,
    /// How rows are bucketed.
    pub granularity: QueryGranularity,
    /// Dimensions kept in rows.
    pub group_by: Vec<String>,
    /// Dimension values rows must have.
    pub filter: Vec<(String, String)>,
    /// What each row reports.
    pub measures: Vec<QueryMeasure>,
    /// The view measures those need, in the order of the merged states' measures.
    sources: Vec<Measure>,
}

impl Query {
    /// Checks `params` against the tenant's views; `now` fills the default range.
    pub fn parse(params: &QueryParams, tenant: &Tenant, now: Millis) -> Result<Query, QueryError> {
        let names = || {
            let names: Vec<&str> = tenant.views.iter().map(|v| v.name.as_str()).collect();
            names.join(", ")
        };
        let Some(name) = params.view.as_deref().filter(|v| !v.is_empty()) else {
            return Err(QueryError::NoView { views: names() });
        };
        let Some(view) = tenant.views.iter().find(|v| v.name == name) else {
            return Err(QueryError::UnknownView {
                view: name.to_owned(),
                views: names(),
            });
        };
        let time = |given: &Option<String>, parameter, default| match given.as_deref() {
            None | Some("") => Ok(default),
            Some(text) => {
                parse_timestamp(text).map_err(|reason| QueryError::Time { parameter, reason })
            }
        };
        let to = time(&params.to, "to", now)?;
        let from = time(&params.from, "from", to.saturating_sub(DEFAULT_RANGE_MS))?;
        checked_range(from, to, MAX_RANGE_MS).map_err(|reason| QueryError::Time {
            parameter: "from and to",
            reason,
        })?;
        let granularity = match params.granularity.as_deref() {
            None | Some("") => QueryGranularity::Bucketed(view.granularity),
            Some(text) => QueryGranularity::parse(text)?,
        };
        if let QueryGranularity::Bucketed(asked) = granularity
            && asked < view.granularity
        {
            return Err(QueryError::TooFine {
                view: view.name.clone(),
                kept: view.granularity,
                asked,
            });
        }
        let known_dimension = |dimension: &str| {
            if view.dimensions.iter().any(|d| d == dimension) {
                Ok(dimension.to_owned())
            } else {
                Err(QueryError::UnknownDimension {
                    view: view.name.clone(),
                    dimension: dimension.to_owned(),
                    dimensions: view.dimensions.join(", "),
                })
            }
        };
        let group_by = list(&params.group_by)
            .map(known_dimension)
            .collect::<Result<Vec<_>, _>>()?;
        once_each("group_by", group_by.iter())?;
        let filter = list(&params.filter)
            .map(|pair| {
                let (dimension, value) = pair
                    .split_once('=')
                    .ok_or_else(|| QueryError::FilterForm(pair.to_owned()))?;
                Ok((known_dimension(dimension.trim())?, value.to_owned()))
            })
            .collect::<Result<Vec<_>, QueryError>>()?;
        once_each("filter", filter.iter().map(|(dimension, _)| dimension))?;
        let measures: Vec<QueryMeasure> = match list(&params.measures).next() {
            None => view
                .measures
                .iter()
                .flat_map(QueryMeasure::defaults_of)
                .collect(),
            Some(_) => list(&params.measures)
                .map(QueryMeasure::parse)
                .collect::<Result<_, _>>()?,
        };
        if measures.len() > MAX_MEASURES {
            return Err(QueryError::TooManyMeasures {
                asked: measures.len(),
            });
        }
        once_each("measures", measures.iter())?;
        let mut sources: Vec<Measure> = Vec::new();
        for measure in &measures {
            let Some(source) = measure.source() else {
                continue;
            };
            if !view.measures.contains(&source) {
                let kept: Vec<String> = view.measures.iter().map(ToString::to_string).collect();
                return Err(QueryError::CannotAnswer {
                    view: view.name.clone(),
                    measure: measure.to_string(),
                    needs: source,
                    kept: kept.join(", "),
                });
            }
            if !sources.contains(&source) {
                sources.push(source);
            }
        }
        Ok(Query {
            view: view.clone(),
            from,
            to,
            granularity,
            group_by,
            filter,
            measures,
            sources,
        })
    }

    /// The bucket of the answer a stored bucket rolls up into.
    fn answer_bucket(&self, stored_bucket: Millis) -> Millis {
        match self.granularity {
            QueryGranularity::Bucketed(granularity) => granularity.bucket_start(stored_bucket),
            QueryGranularity::All => self.from,
        }
    }
}

/// Refuses a list parameter that names an item twice: a repeat would only repeat columns
/// of the answer.
fn once_each<T: fmt::Display + PartialEq>(
    parameter: &'static str,
    items: impl Iterator<Item = T>,
) -> Result<(), QueryError> {
    let mut seen: Vec<T> = Vec::new();
    for item in items {
        if seen.contains(&item) {
            return Err(QueryError::Repeated {
                parameter,
                item: item.to_string(),
            });
        }
        seen.push(item);
    }
    Ok(())
}

fn list(text: &Option<String>) -> impl Iterator<Item = &str> {
    text.as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

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
    filter: Vec<(usize, String)>,
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
            .map(|(name, value)| Ok((dimension(name)?, value.clone())))
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

    /// What identifies the rows this projection rolls up from one object for `query`: the
    /// answer granularity, the groups, the filter and the measures picked.
    pub fn rolled_key(&self, query: &Query) -> String {
        format!(
            "{}|{:?}|{:?}|{:?}",
            query.granularity, self.group, self.filter, self.picked
        )
    }

    /// What identifies the rows this projection renders from one object for `query`: its
    /// [`rolled_key`](Self::rolled_key) and the measures as the query names them.
    pub fn rendered_key(&self, query: &Query) -> String {
        let measures: Vec<String> = query.measures.iter().map(ToString::to_string).collect();
        format!("{}|{}", self.rolled_key(query), measures.join(","))
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
            .all(|(index, value)| dimensions.get(*index) == Some(value));
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

/// Starts a new element of a JSON array being written: a comma unless it is the first.
fn separate(out: &mut String) {
    if !(out.is_empty() || out.ends_with('[')) {
        out.push(',');
    }
}

/// The rows of one stored hour rendered for one query: JSON objects, comma-separated.
pub type RenderedHour = String;

/// Answer rows rendered one by one, in answer order, with their buckets.
pub struct RenderedRows(Vec<(Millis, String)>);

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
    /// Appends rows, in the order given, to a JSON array being written; see [`RowWriter`].
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
struct RowWriter<'q> {
    query: &'q Query,
    dimensions: Vec<String>,
    measures: Vec<String>,
}

impl<'q> RowWriter<'q> {
    fn new(query: &'q Query) -> Self {
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
    fn write(&self, (bucket, group): &RowKey, state: &AggregateState, out: &mut String) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> QueryParams {
        let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        actix_web::web::Query::<QueryParams>::from_query(&query.join("&"))
            .unwrap()
            .into_inner()
    }

    #[test]
    fn parses_measures_defaults_and_explains_mistakes() {
        let tenant = Tenant::demo();
        let many_quantiles: String = (1..=33)
            .map(|n| format!("p{n}(latency_ms)"))
            .collect::<Vec<_>>()
            .join(",");
        let query = Query::parse(
            &params(&[
                ("view", "revenue_by_country"),
                ("from", "0"),
                ("to", "3600000"),
                ("granularity", "hour"),
                ("group_by", "country"),
                ("measures", "count,avg(revenue),sum(revenue),uniq(user_id)"),
            ]),
            &tenant,
            0,
        )
        .unwrap();
        assert_eq!(
            query.sources,
            [
                Measure::Sum("revenue".into()),
                Measure::Uniq("user_id".into())
            ]
        );
        let defaults =
            Query::parse(&params(&[("view", "latency_by_type")]), &tenant, DAY_MS).unwrap();
        let names: Vec<String> = defaults.measures.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "count",
                "p50(latency_ms)",
                "p90(latency_ms)",
                "p99(latency_ms)"
            ]
        );
        assert_eq!((defaults.from, defaults.to), (0, DAY_MS));

        for (pairs, expected) in [
            (
                vec![("view", "nope")],
                "no view 'nope'; the views are events_by_type",
            ),
            (
                vec![("view", "events_by_type"), ("group_by", "country")],
                "no dimension 'country'",
            ),
            (
                vec![("view", "events_by_type"), ("measures", "sum(revenue)")],
                "cannot answer sum(revenue)",
            ),
            (
                vec![("view", "events_by_type"), ("measures", "median(x)")],
                "is not one of count",
            ),
            (
                vec![("view", "events_by_type"), ("from", "2000"), ("to", "1000")],
                "is after the end",
            ),
            (
                vec![("view", "events_by_type"), ("measures", "count,count")],
                "measures names 'count' twice",
            ),
            (
                vec![
                    ("view", "events_by_type"),
                    ("group_by", "os_type,event_type,os_type"),
                ],
                "group_by names 'os_type' twice",
            ),
            (
                vec![
                    ("view", "events_by_type"),
                    ("filter", "os_type=ios,os_type=android"),
                ],
                "filter names 'os_type' twice",
            ),
            (
                vec![("view", "latency_by_type"), ("measures", &many_quantiles)],
                "one query may ask for at most 32",
            ),
            (
                vec![("view", "events_by_type"), ("granularity", "week")],
                "unknown granularity 'week'",
            ),
            (
                vec![("view", "events_by_type"), ("filter", "os_type")],
                "not of the form dimension=value",
            ),
            (
                vec![("view", "events_by_type"), ("from", "yesterday")],
                "from: 'yesterday'",
            ),
            (
                vec![
                    ("view", "events_by_type"),
                    ("from", "-9223372036854775808"),
                    ("to", "9223372036854775807"),
                ],
                "outside the times Tally reads",
            ),
            (
                vec![
                    ("view", "events_by_type"),
                    ("from", "0"),
                    ("to", "253402300799999"),
                ],
                "more than the 366.0 days allowed",
            ),
        ] {
            let err = Query::parse(&params(&pairs), &tenant, DAY_MS).unwrap_err();
            assert!(err.to_string().contains(expected), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn rolls_minutes_up_and_filters_and_groups() {
        let tenant = Tenant::demo();
        let query = Query::parse(
            &params(&[
                ("view", "events_by_type"),
                ("from", "0"),
                ("to", "7200000"),
                ("granularity", "hour"),
                ("group_by", "event_type"),
                ("filter", "os_type=ios"),
                ("measures", "count"),
            ]),
            &tenant,
            0,
        )
        .unwrap();
        let spec = &tenant.views[0];
        let projection = Projection::new(spec, &query).unwrap();
        let mut rollup = Rollup::new(&query);
        let state = |count| AggregateState {
            count,
            ..spec.empty_state()
        };
        let dims = |t: &str, os: &str| vec![t.to_owned(), os.to_owned()];
        for (bucket, dimensions, count) in [
            (0, dims("click", "ios"), 1),
            (60_000, dims("click", "ios"), 2),
            (60_000, dims("click", "android"), 100),
            (3_600_000, dims("click", "ios"), 4),
            (3_660_000, dims("view", "ios"), 8),
        ] {
            rollup
                .add(&projection, bucket, &dimensions, &state(count))
                .unwrap();
        }
        let rows: Vec<Value> =
            serde_json::from_str(&rollup.into_json(usize::MAX).unwrap()).unwrap();
        assert_eq!(
            rows,
            [
                json!({"bucket": "1970-01-01T00:00:00.000Z", "event_type": "click", "count": 3}),
                json!({"bucket": "1970-01-01T01:00:00.000Z", "event_type": "click", "count": 4}),
                json!({"bucket": "1970-01-01T01:00:00.000Z", "event_type": "view", "count": 8}),
            ]
        );
    }

    #[test]
    fn an_older_spec_without_a_dimension_says_so() {
        let tenant = Tenant::demo();
        let query = Query::parse(
            &params(&[("view", "events_by_type"), ("group_by", "os_type")]),
            &tenant,
            DAY_MS,
        )
        .unwrap();
        let mut older = tenant.views[0].clone();
        older.dimensions.retain(|d| d != "os_type");
        let lacking = Projection::new(&older, &query).err().unwrap();
        assert_eq!(lacking, Lacking::Dimension("os_type".into()));
        assert_eq!(lacking.to_string(), "dimension 'os_type'");
    }
}
