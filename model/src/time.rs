//! UTC time buckets and timestamp parsing.
// This module reads what callers send: its arithmetic is checked or saturating, never
// wrapping (docs/hardening.md).
#![deny(clippy::arithmetic_side_effects)]

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::event::Millis;

/// Milliseconds in a minute.
pub const MINUTE_MS: Millis = 60_000;
/// Milliseconds in an hour.
pub const HOUR_MS: Millis = 3_600_000;
/// Milliseconds in a day.
pub const DAY_MS: Millis = 86_400_000;

/// The width of a view's time buckets, always aligned to UTC.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// One-minute buckets.
    Minute,
    /// One-hour buckets.
    Hour,
    /// One-day buckets (UTC midnight to midnight).
    Day,
}

impl Granularity {
    /// Every granularity, finest first.
    pub const ALL: [Granularity; 3] = [Granularity::Minute, Granularity::Hour, Granularity::Day];

    /// Its name, as configs and queries spell it: `minute`, `hour` or `day`.
    pub const fn name(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }

    /// The bucket width in milliseconds.
    pub const fn millis(self) -> Millis {
        match self {
            Granularity::Minute => MINUTE_MS,
            Granularity::Hour => HOUR_MS,
            Granularity::Day => DAY_MS,
        }
    }

    /// The start of the bucket holding `ts`; correct for times before 1970 too, and
    /// `Millis::MIN` ("nothing yet" in progress records) for the first bucket of time.
    pub const fn bucket_start(self, ts: Millis) -> Millis {
        ts.div_euclid(self.millis()).saturating_mul(self.millis())
    }
}

impl std::fmt::Display for Granularity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Granularity {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Granularity::ALL
            .into_iter()
            .find(|granularity| granularity.name() == text)
            .ok_or_else(|| format!("unknown granularity '{text}'; use minute, hour or day"))
    }
}

/// The wall clock in milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as Millis)
}

/// An RFC 3339 rendering of a timestamp, e.g. `2026-11-22T16:00:00.000Z`.
pub fn format_rfc3339(ts: Millis) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ts) {
        Some(time) => time.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => format!("{ts}ms"),
    }
}

/// The earliest instant Tally reads from a caller: 1970-01-01T00:00:00Z.
pub const EARLIEST: Millis = 0;
/// The latest instant Tally reads from a caller: 9999-12-31T23:59:59.999Z, the last one
/// RFC 3339 can write. With both bounds, the difference of any two instants, and any
/// instant plus a day, fits a [`Millis`] many times over.
pub const LATEST: Millis = 253_402_300_799_999;

/// Parses an RFC 3339 time (`2026-11-22T16:00:00Z`) or epoch milliseconds (`1795881600000`),
/// between [`EARLIEST`] and [`LATEST`].
pub fn parse_timestamp(text: &str) -> Result<Millis, String> {
    let text = text.trim();
    let ms = match text.parse::<i64>() {
        Ok(ms) => ms,
        Err(_) => DateTime::parse_from_rfc3339(text)
            .map(|time| time.timestamp_millis())
            .map_err(|err| {
                format!("'{text}' is neither RFC 3339 (2026-11-22T16:00:00Z) nor epoch ms: {err}")
            })?,
    };
    in_domain(ms).map_err(|err| format!("'{text}' {err}"))
}

/// `ms` if it lies between [`EARLIEST`] and [`LATEST`].
pub fn in_domain(ms: Millis) -> Result<Millis, String> {
    if (EARLIEST..=LATEST).contains(&ms) {
        Ok(ms)
    } else {
        Err(format!(
            "is outside the times Tally reads, {} to {}",
            format_rfc3339(EARLIEST),
            format_rfc3339(LATEST)
        ))
    }
}

/// Unix seconds as epoch milliseconds, between [`EARLIEST`] and [`LATEST`].
pub fn parse_unix_seconds(text: &str) -> Result<Millis, String> {
    let text = text.trim();
    let seconds: i64 = text
        .parse()
        .map_err(|_| format!("'{text}' is not unix seconds"))?;
    // Seconds whose milliseconds do not fit are as far outside the domain as Millis::MIN.
    in_domain(seconds.checked_mul(1000).unwrap_or(Millis::MIN)).map_err(|err| {
        let hint = match near_now(seconds) {
            true => "; this looks like epoch milliseconds, and the value is unix seconds",
            false => "",
        };
        format!("'{text}' {err}{hint}")
    })
}

/// How far from now a time read in the wrong unit still lands near now: a year.
const NEAR_NOW_MS: Millis = 366 * DAY_MS;

/// Whether `ms` lies within a year of now.
fn near_now(ms: Millis) -> bool {
    now_millis().abs_diff(ms) <= NEAR_NOW_MS.unsigned_abs()
}

/// Whether epoch milliseconds `ms` are more likely unix seconds: read as seconds they lie
/// within a year of now. A caller names the unit in its error, rather than a lateness or a
/// range span that a unit mistake only causes.
pub fn looks_like_seconds(ms: Millis) -> bool {
    near_now(ms.saturating_mul(1000))
}

/// `[start, end)` if both lie between [`EARLIEST`] and [`LATEST`], `start` is not after
/// `end`, and the range spans at most `max_span`. Every range a caller sends goes through
/// here, so that no later arithmetic on it can overflow and no loop over it is unbounded.
pub fn checked_range(
    start: Millis,
    end: Millis,
    max_span: Millis,
) -> Result<std::ops::Range<Millis>, String> {
    let start = in_domain(start).map_err(|err| format!("the start {err}"))?;
    let end = in_domain(end).map_err(|err| format!("the end {err}"))?;
    if start > end {
        return Err(format!(
            "the start ({}) is after the end ({})",
            format_rfc3339(start),
            format_rfc3339(end)
        ));
    }
    // Both in the domain: the difference cannot overflow. A negative allowance allows no
    // span at all (fuzzing found that its absolute value was taken instead).
    let span = end.abs_diff(start);
    let allowed = u64::try_from(max_span).unwrap_or(0);
    if span > allowed {
        return Err(format!(
            "the range spans {}, more than the {} allowed; ask for a shorter one",
            describe_span(span),
            describe_span(allowed)
        ));
    }
    Ok(start..end)
}

/// A span of milliseconds in days, hours or seconds, whichever reads best.
fn describe_span(ms: u64) -> String {
    const DAY: u64 = DAY_MS.unsigned_abs();
    const HOUR: u64 = HOUR_MS.unsigned_abs();
    if ms >= DAY {
        format!("{:.1} days", ms as f64 / DAY as f64)
    } else if ms >= HOUR {
        format!("{:.1} hours", ms as f64 / HOUR as f64)
    } else {
        format!("{:.3} s", ms as f64 / 1000.0)
    }
}

/// The UTC calendar date and hour of a timestamp, as `("YYYY-MM-DD", hour)`.
pub fn date_and_hour(ts: Millis) -> (String, u32) {
    let time = DateTime::<Utc>::from_timestamp_millis(ts).unwrap_or_default();
    (
        time.format("%Y-%m-%d").to_string(),
        chrono::Timelike::hour(&time),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_align_to_utc() {
        let ts = parse_timestamp("2026-11-22T16:42:17.250Z").unwrap();
        assert_eq!(
            format_rfc3339(Granularity::Minute.bucket_start(ts)),
            "2026-11-22T16:42:00.000Z"
        );
        assert_eq!(
            format_rfc3339(Granularity::Hour.bucket_start(ts)),
            "2026-11-22T16:00:00.000Z"
        );
        assert_eq!(
            format_rfc3339(Granularity::Day.bucket_start(ts)),
            "2026-11-22T00:00:00.000Z"
        );
        assert_eq!(Granularity::Minute.bucket_start(-1), -MINUTE_MS);
        assert_eq!(Granularity::Day.bucket_start(DAY_MS + 1), DAY_MS);
        assert_eq!(
            Granularity::Hour.bucket_start(Millis::MIN),
            Millis::MIN,
            "the first bucket of time saturates instead of overflowing"
        );
    }

    #[test]
    fn granularities_are_spelled_once() {
        for granularity in Granularity::ALL {
            let name = granularity.to_string();
            assert_eq!(name.parse::<Granularity>(), Ok(granularity));
            let quoted = serde_json::to_string(&granularity).unwrap();
            assert_eq!(quoted, format!("\"{name}\""), "serde spells it the same");
        }
        assert!(
            "week"
                .parse::<Granularity>()
                .unwrap_err()
                .contains("unknown granularity 'week'")
        );
    }

    #[test]
    fn parses_both_forms_and_explains_failures() {
        assert_eq!(parse_timestamp("1795881600000"), Ok(1_795_881_600_000));
        assert_eq!(
            parse_timestamp("2026-11-22T16:00:00+01:00"),
            parse_timestamp("2026-11-22T15:00:00Z")
        );
        assert!(
            parse_timestamp("yesterday")
                .unwrap_err()
                .contains("RFC 3339")
        );
        for outside in [
            "-1",
            "9223372036854775807",
            "-9223372036854775808",
            "1969-12-31T23:59:59Z",
        ] {
            let err = parse_timestamp(outside).unwrap_err();
            assert!(
                err.contains("outside the times Tally reads"),
                "{outside}: {err}"
            );
        }
        assert_eq!(parse_timestamp("9999-12-31T23:59:59.999Z"), Ok(LATEST));
    }

    #[test]
    fn unix_seconds_never_wrap() {
        assert_eq!(parse_unix_seconds("1795881600"), Ok(1_795_881_600_000));
        // 9223372036854775 s × 1000 fits an i64 but is far past year 9999; one more digit
        // does not fit at all. Both once wrapped past the range checks.
        for text in [
            "9223372036854775",
            "92233720368547758",
            "-9223372036854775808",
            "x",
        ] {
            assert!(parse_unix_seconds(text).is_err(), "{text}");
        }
    }

    #[test]
    fn ranges_are_checked_without_overflow() {
        assert_eq!(checked_range(0, DAY_MS, DAY_MS), Ok(0..DAY_MS));
        for (start, end, expected) in [
            (Millis::MIN, Millis::MAX, "outside the times"),
            (0, Millis::MAX, "outside the times"),
            (DAY_MS, 0, "is after the end"),
            (0, DAY_MS + 1, "more than the 1.0 days allowed"),
            (0, LATEST, "more than the 1.0 days allowed"),
        ] {
            let err = checked_range(start, end, DAY_MS).unwrap_err();
            assert!(err.contains(expected), "{start}..{end}: {err}");
        }
        // Found by the query_params fuzz target: a negative allowance is no allowance.
        let err = checked_range(0, 1, -5).unwrap_err();
        assert!(err.contains("more than the 0.000 s allowed"), "{err}");
    }
}
