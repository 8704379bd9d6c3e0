//! Event intake: any body as Tally's JSON or NDJSON, and the pixel's UTF-8 check of any query
//! string (the trackers' formats, Snowplow's query string included, have a target of their
//! own, `trackers`). Whatever comes in, intake
//! answers without panicking, every event is accepted or rejected, and the rejects' details
//! stay within their bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_ingest::intake::{BodyFormat, query_is_utf8};

#[path = "demo_intake.rs"]
mod demo_intake;

use demo_intake::{check_verdict, demo_judge};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let format = match selector & 1 {
        0 => BodyFormat::Json,
        _ => BodyFormat::NdJson,
    };
    let verdict = demo_judge(selector).native_body(body, format);
    // The pixel's check of its query string, which refuses what does not decode to UTF-8.
    if let Ok(query) = std::str::from_utf8(body) {
        let _ = query_is_utf8(query);
    }
    check_verdict(&verdict);
});
