//! UTC time buckets and timestamp parsing.

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

/// Parses an RFC 3339 time (`2026-11-22T16:00:00Z`) or epoch milliseconds (`1795881600000`).
pub fn parse_timestamp(text: &str) -> Result<Millis, String> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.timestamp_millis())
        .map_err(|err| {
            format!("'{text}' is neither RFC 3339 (2026-11-22T16:00:00Z) nor epoch ms: {err}")
        })
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
    }
}
