//! The query string of `GET /v1/query` as sent: its parameters, and the filter conditions
//! in them, read before they are checked against a view ([`super::parse`]).
// This module reads what callers send: its arithmetic is checked or saturating, never
// wrapping (docs/hardening.md).
#![deny(clippy::arithmetic_side_effects)]

use super::parse::QueryError;

/// The query string of `GET /v1/query`.
#[derive(Debug, Default, Clone, PartialEq, utoipa::IntoParams)]
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
    /// Conditions rows must all meet: `dimension=value`, `dimension!=value`, and value lists
    /// `dimension=a|b` (any of) or `dimension!=a|b` (none of); several per parameter,
    /// comma-separated, and the parameter may be given more than once.
    pub filter: Vec<String>,
    /// Measures, comma-separated: `count`, `sum(t)`, `avg(t)`, `min(t)`, `max(t)`, `uniq(f)`,
    /// `pNN(t)` such as `p99(latency_ms)` [default: every measure of the view].
    pub measures: Option<String>,
    /// Read batch states alone, over the whole range: `live` for the hours as they are live,
    /// or a logic version N for the hours as N has them, staged for review or live (hours
    /// without N are left out): how a view's fix is reviewed before it is promoted.
    pub logic_version: Option<String>,
}

impl QueryParams {
    /// Reads a query string. Every parameter is named once, except `filter`, whose
    /// occurrences add up; an unknown parameter is refused, with the known ones.
    pub fn from_query(text: &str) -> Result<QueryParams, String> {
        let pairs = actix_web::web::Query::<Vec<(String, String)>>::from_query(text)
            .map_err(|err| err.to_string())?
            .into_inner();
        let mut params = QueryParams::default();
        for (name, value) in pairs {
            let slot = match name.as_str() {
                "filter" => {
                    params.filter.push(value);
                    continue;
                }
                "view" => &mut params.view,
                "from" => &mut params.from,
                "to" => &mut params.to,
                "granularity" => &mut params.granularity,
                "group_by" => &mut params.group_by,
                "measures" => &mut params.measures,
                "logic_version" => &mut params.logic_version,
                other => {
                    return Err(format!(
                        "unknown parameter `{other}`; the parameters are view, from, to, granularity, group_by, filter, measures and logic_version"
                    ));
                }
            };
            if slot.replace(value).is_some() {
                return Err(format!("duplicate field `{name}`: give it once"));
            }
        }
        Ok(params)
    }
}

/// A condition a query's rows meet: the dimension's value is one of `values`, or with
/// `negated` none of them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Condition<D> {
    /// The dimension: its name in a query, its position in a stored spec's rows.
    pub dimension: D,
    /// `!=`.
    pub negated: bool,
    /// The values, at least one, sorted and each once: a row is looked up, not scanned for,
    /// so a long list costs its logarithm per row.
    pub values: Vec<String>,
}

impl<D> Condition<D> {
    /// Whether a row whose dimension has `value` meets it.
    pub fn admits(&self, value: Option<&String>) -> bool {
        value.is_some_and(|value| self.values.binary_search(value).is_ok()) != self.negated
    }

    /// The same condition on another spelling of the dimension.
    pub fn on<E>(&self, dimension: E) -> Condition<E> {
        Condition {
            dimension,
            negated: self.negated,
            values: self.values.clone(),
        }
    }

    /// Reads `dimension=a|b` or `dimension!=a|b`.
    pub(super) fn parse(text: &str) -> Result<Condition<String>, QueryError> {
        let form = || QueryError::FilterForm(text.to_owned());
        let (dimension, values, negated) = match text.split_once("!=") {
            Some((dimension, values)) => (dimension, values, true),
            None => {
                let (dimension, values) = text.split_once('=').ok_or_else(form)?;
                (dimension, values, false)
            }
        };
        let dimension = dimension.trim();
        if dimension.is_empty() {
            return Err(form());
        }
        let mut values: Vec<String> = values.split('|').map(str::to_owned).collect();
        values.sort_unstable();
        values.dedup();
        Ok(Condition {
            dimension: dimension.to_owned(),
            negated,
            values,
        })
    }
}
