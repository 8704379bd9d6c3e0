//! The query string of `GET /v1/query`, checked against the tenant's view: what to read,
//! over which range, how finely, grouped, filtered and measured how.
// This module reads what callers send: its arithmetic is checked or saturating, never
// wrapping (docs/hardening.md).
#![deny(clippy::arithmetic_side_effects)]

use std::fmt;

use serde_json::{Value, json};
use tally_model::measure::function_call;
use tally_model::state::MeasureSummary;
use tally_model::time::{DAY_MS, checked_range, looks_like_seconds, parse_timestamp};
use tally_model::{AggregateState, Granularity, LogicVersion, Measure, Millis, Tenant, ViewSpec};

use super::params::{Condition, QueryParams};
use super::rollup::Lacking;

/// Longest range one query may span.
const MAX_RANGE_MS: Millis = 366 * DAY_MS;
/// The range when the query names none: the last day.
const DEFAULT_RANGE_MS: Millis = DAY_MS;
/// Most measures one query may ask for.
pub const MAX_MEASURES: usize = 32;

/// How rows are bucketed in an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

    pub(super) fn value(&self, state: &AggregateState, sources: &[Measure]) -> Value {
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
    /// A filter that is not `dimension=value`, `dimension!=value` or a value list.
    #[error(
        "filter '{0}' is not of the form dimension=value, dimension!=value, dimension=a|b (any of) or dimension!=a|b (none of)"
    )]
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
    /// `logic_version=` that is neither `live` nor a version number.
    #[error(
        "logic_version '{given}' is neither 'live' nor a version number; GET /v1/governance/views/{view}/versions lists the view's versions"
    )]
    LogicVersion {
        /// The view.
        view: String,
        /// What was sent.
        given: String,
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
    /// Conditions on dimension values rows must all meet.
    pub filter: Vec<Condition<String>>,
    /// What each row reports.
    pub measures: Vec<QueryMeasure>,
    /// The view measures those need, in the order of the merged states' measures.
    pub(super) sources: Vec<Measure>,
    /// Batch states alone, as live or as one logic version has them
    /// ([`QueryParams::logic_version`]); none for batch before the horizon and real-time after.
    pub batch_only: Option<BatchReading>,
}

/// Which batch states a batch-only query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchReading {
    /// The hours as they are live, whatever their versions.
    Live,
    /// The hours as this logic version has them, staged or live.
    Version(LogicVersion),
}

impl BatchReading {
    /// The version to read the hours as; none for live.
    pub fn version(self) -> Option<LogicVersion> {
        match self {
            BatchReading::Live => None,
            BatchReading::Version(version) => Some(version),
        }
    }
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
            Some(text) => match parse_timestamp(text) {
                Ok(ms) if looks_like_seconds(ms) => Err(QueryError::Time {
                    parameter,
                    reason: format!(
                        "'{text}' looks like unix seconds; it is in epoch milliseconds (or RFC 3339)"
                    ),
                }),
                read => read.map_err(|reason| QueryError::Time { parameter, reason }),
            },
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
        let group_by = list(params.group_by.as_deref().unwrap_or_default())
            .map(known_dimension)
            .collect::<Result<Vec<_>, _>>()?;
        once_each("group_by", group_by.iter())?;
        let filter = params
            .filter
            .iter()
            .flat_map(|parameter| list(parameter))
            .map(|text| {
                let condition = Condition::<String>::parse(text)?;
                known_dimension(&condition.dimension)?;
                Ok(condition)
            })
            .collect::<Result<Vec<_>, QueryError>>()?;
        once_each(
            "filter",
            filter.iter().map(|condition| &condition.dimension),
        )?;
        let measures_text = params.measures.as_deref().unwrap_or_default();
        let measures: Vec<QueryMeasure> = match list(measures_text).next() {
            None => view
                .measures
                .iter()
                .flat_map(QueryMeasure::defaults_of)
                .collect(),
            Some(_) => list(measures_text)
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
        let batch_only = match params.logic_version.as_deref() {
            None | Some("") => None,
            Some("live") => Some(BatchReading::Live),
            Some(text) => Some(BatchReading::Version(text.parse().map_err(|_| {
                QueryError::LogicVersion {
                    view: view.name.clone(),
                    given: text.to_owned(),
                }
            })?)),
        };
        Ok(Query {
            view: view.clone(),
            from,
            to,
            granularity,
            group_by,
            filter,
            measures,
            sources,
            batch_only,
        })
    }

    /// The bucket of the answer a stored bucket rolls up into.
    pub(super) fn answer_bucket(&self, stored_bucket: Millis) -> Millis {
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

fn list(text: &str) -> impl Iterator<Item = &str> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}
