//! Where raw events live in object storage: hive partitions by event hour.
//!
//! `raw/events/dt=YYYY-MM-DD/hour=HH/part-<partition>-<first offset>-<last offset>.parquet`,
//! and the same under `raw/rejected/`. Object names derive from log offsets, so rewriting a
//! file after a crash replaces it instead of adding a duplicate.

use crate::event::Millis;
use crate::time::{Granularity, date_and_hour};

/// Which raw stream an object belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawStream {
    /// Accepted events.
    Events,
    /// Rejected events with their reasons.
    Rejected,
}

impl RawStream {
    /// The object-store prefix of the stream.
    pub const fn prefix(self) -> &'static str {
        match self {
            RawStream::Events => "raw/events",
            RawStream::Rejected => "raw/rejected",
        }
    }
}

/// The hive partition folder of the hour holding `ts`: `raw/events/dt=2026-11-22/hour=16`.
pub fn hour_partition(stream: RawStream, ts: Millis) -> String {
    let (date, hour) = date_and_hour(Granularity::Hour.bucket_start(ts));
    format!("{}/dt={date}/hour={hour:02}", stream.prefix())
}

/// The object holding log records `first..=last` of `partition` whose events fall in the
/// hour of `ts`.
pub fn raw_object_path(
    stream: RawStream,
    ts: Millis,
    partition: u32,
    first: u64,
    last: u64,
) -> String {
    format!(
        "{}/part-{partition:05}-{first:020}-{last:020}.parquet",
        hour_partition(stream, ts)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_timestamp;

    #[test]
    fn paths_follow_the_hive_layout() {
        let ts = parse_timestamp("2026-11-22T07:59:59.999Z").unwrap();
        assert_eq!(
            hour_partition(RawStream::Events, ts),
            "raw/events/dt=2026-11-22/hour=07"
        );
        assert_eq!(
            raw_object_path(RawStream::Rejected, ts, 3, 10, 99),
            "raw/rejected/dt=2026-11-22/hour=07/part-00003-00000000000000000010-00000000000000000099.parquet"
        );
    }
}
