//! What a view measures: [`Measure`], the grammar `count`, `sum(tag)`, `min(tag)`,
//! `max(tag)`, `uniq(field)` and `quantiles(tag)`, shared by view specs and the states they
//! build.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One measure of a view. `count` lives in every state; the others read one field.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Measure {
    /// Number of events.
    Count,
    /// Sum of a number tag (exact to 6 decimal places).
    Sum(String),
    /// Smallest value of a number tag.
    Min(String),
    /// Largest value of a number tag.
    Max(String),
    /// Distinct values of a field, estimated by an HLL sketch.
    Uniq(String),
    /// Distribution of a number tag, kept as a KLL sketch.
    Quantiles(String),
}

impl Measure {
    /// The field the measure reads, none for `count`.
    pub fn field(&self) -> Option<&str> {
        match self {
            Measure::Count => None,
            Measure::Sum(f)
            | Measure::Min(f)
            | Measure::Max(f)
            | Measure::Uniq(f)
            | Measure::Quantiles(f) => Some(f),
        }
    }
}

impl fmt::Display for Measure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (function, field) = match self {
            Measure::Count => return f.write_str("count"),
            Measure::Sum(field) => ("sum", field),
            Measure::Min(field) => ("min", field),
            Measure::Max(field) => ("max", field),
            Measure::Uniq(field) => ("uniq", field),
            Measure::Quantiles(field) => ("quantiles", field),
        };
        write!(f, "{function}({field})")
    }
}

impl FromStr for Measure {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "count" {
            return Ok(Measure::Count);
        }
        let Some((function, field)) = function_call(text) else {
            return Err(format!(
                "measure '{text}' is not of the form count or function(field), e.g. sum(revenue)"
            ));
        };
        let field = field.to_owned();
        match function {
            "sum" => Ok(Measure::Sum(field)),
            "min" => Ok(Measure::Min(field)),
            "max" => Ok(Measure::Max(field)),
            "uniq" => Ok(Measure::Uniq(field)),
            "quantiles" => Ok(Measure::Quantiles(field)),
            other => Err(format!(
                "unknown measure function '{other}'; use count, sum, min, max, uniq or quantiles"
            )),
        }
    }
}

/// `function(field)` as its two parts, trimmed, when `text` has that form and a field: the
/// grammar of view measures, and of the measures a query asks for (`avg(revenue)`,
/// `p99(latency_ms)`).
pub fn function_call(text: &str) -> Option<(&str, &str)> {
    let (function, field) = text.trim().strip_suffix(')')?.split_once('(')?;
    let field = field.trim();
    (!field.is_empty()).then(|| (function.trim(), field))
}

impl TryFrom<String> for Measure {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<Measure> for String {
    fn from(measure: Measure) -> String {
        measure.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_parse_and_print_back() {
        for text in [
            "count",
            "sum(revenue)",
            "min(latency_ms)",
            "max(x)",
            "uniq(user_id)",
            "quantiles(latency_ms)",
        ] {
            assert_eq!(text.parse::<Measure>().unwrap().to_string(), text);
        }
        assert!(
            "avg(revenue)"
                .parse::<Measure>()
                .unwrap_err()
                .contains("unknown measure function 'avg'")
        );
        assert!("sum()".parse::<Measure>().is_err());
        assert!("revenue".parse::<Measure>().is_err());
    }
}
