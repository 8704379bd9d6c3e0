//! Query parameter parsing: any query string to `/v1/query` and the seed API's times. A
//! query is refused or checked; a checked one spans at most 366 days of the times Tally
//! reads, so nothing after it can overflow.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tally_model::Tenant;
use tally_model::time::{
    DAY_MS, EARLIEST, LATEST, checked_range, parse_timestamp, parse_unix_seconds,
};
use tally_serving::query::{Query, QueryParams};

/// The demo tenant, built once: building it per input would be most of the work.
static TENANT: LazyLock<Tenant> = LazyLock::new(Tenant::demo);

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(params) = QueryParams::from_query(text) {
        if let Ok(query) = Query::parse(&params, &TENANT, 1_795_881_600_000) {
            assert!(query.from <= query.to);
            assert!(query.to - query.from <= 366 * DAY_MS);
            assert!(query.measures.len() <= 32);
        }
    }
    for parsed in [parse_timestamp(text), parse_unix_seconds(text)] {
        if let Ok(ms) = parsed {
            assert!((EARLIEST..=LATEST).contains(&ms));
        }
    }
    let numbers: Vec<i64> = text.split(',').filter_map(|n| n.parse().ok()).collect();
    if let [start, end, span, ..] = numbers[..] {
        if let Ok(range) = checked_range(start, end, span) {
            assert!(range.start <= range.end && range.end - range.start <= span.max(0));
        }
    }
});
