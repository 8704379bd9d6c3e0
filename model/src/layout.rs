//! Where raw events live in object storage: hive partitions by event hour.
//!
//! `raw/events/dt=YYYY-MM-DD/hour=HH/part-<partition>-<first offset>-<last offset>.parquet`,
//! and the same under `raw/rejected/`. Object names derive from log offsets, so rewriting a
//! file after a crash replaces it instead of adding a duplicate.
//!
//! Batch views live beside them:
//! `views/<tenant>/<view>/v=<logic version>/dt=YYYY-MM-DD/hour=HH/states-<generation>-<run>.parquet`,
//! never overwritten (each recompute writes under its manifest generation), and the manifests
//! under `manifests/`.

use crate::event::Millis;
use crate::manifest::LogicVersion;
use crate::time::{Granularity, HOUR_MS, date_and_hour};

/// The archiver's consumer name in the event log: retention keeps what it has not archived,
/// and readers of raw events take the log from its committed offsets on.
pub const ARCHIVER_CONSUMER: &str = "archiver";

/// Every batch view state object lies under this prefix.
pub const VIEWS_PREFIX: &str = "views/";

/// Which raw stream an object belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RawStream {
    /// Accepted events.
    Events,
    /// Rejected events with their reasons.
    Rejected,
}

impl RawStream {
    /// The stream's short name: `events` or `rejected`.
    pub const fn name(self) -> &'static str {
        match self {
            RawStream::Events => "events",
            RawStream::Rejected => "rejected",
        }
    }

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

/// The start of the hour a raw object's path names (`.../dt=2026-11-22/hour=07/...`).
pub fn parse_hour_partition(path: &str) -> Option<Millis> {
    let date = path.split('/').find_map(|part| part.strip_prefix("dt="))?;
    let hour: i64 = path
        .split('/')
        .find_map(|part| part.strip_prefix("hour="))?
        .parse()
        .ok()
        .filter(|hour| (0..24).contains(hour))?;
    let day = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    let midnight = day.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis();
    Some(midnight + hour * HOUR_MS)
}

/// Where the archiver keeps its per-partition progress for a stream.
pub fn archive_progress_path(stream: RawStream, partition: u32) -> String {
    format!("archive/{}/partition-{partition:05}.json", stream.name())
}

/// The object holding one hour of a view's batch states, written for manifest `generation`
/// by the batch run `run` (a [`fresh_token`](crate::token::fresh_token)). Two runs that race
/// for one generation write apart, so the loser, refused when it publishes, never overwrites
/// what the winner published.
pub fn view_object_path(
    tenant: &str,
    view: &str,
    version: LogicVersion,
    hour_start: Millis,
    generation: u64,
    run: u64,
) -> String {
    let (date, hour) = date_and_hour(hour_start);
    format!(
        "{VIEWS_PREFIX}{tenant}/{view}/v={version}/dt={date}/hour={hour:02}/states-{generation:010}-{run:016x}.parquet"
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
        assert_eq!(
            view_object_path(
                "demo",
                "by_type",
                2,
                Granularity::Hour.bucket_start(ts),
                17,
                0xab
            ),
            "views/demo/by_type/v=2/dt=2026-11-22/hour=07/states-0000000017-00000000000000ab.parquet"
        );
        let object = raw_object_path(RawStream::Events, ts, 0, 1, 2);
        assert_eq!(
            parse_hour_partition(&object),
            Some(Granularity::Hour.bucket_start(ts))
        );
        assert_eq!(
            parse_hour_partition("raw/events/dt=2026-11-22/hour=24/x"),
            None
        );
        assert_eq!(
            archive_progress_path(RawStream::Events, 1),
            "archive/events/partition-00001.json"
        );
    }
}
