//! Event intake: any body as Tally's JSON or NDJSON, and the pixel's UTF-8 check of any query
//! string (the trackers' formats, Snowplow's query string included, have a target of their
//! own, `trackers`). Whatever comes in, intake
//! answers without panicking, every event is accepted or rejected, and the rejects' details
//! stay within their bound.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tally_ingest::intake::{BodyFormat, Intake, Judge, query_is_utf8};
use tally_model::registry::ValidationContext;
use tally_model::{TagRegistry, Tenant};

const MAX_DETAILED: usize = 100;
const RECEIVED_AT: i64 = 1_795_881_600_000;

/// The demo registry, built once: building it per input would be most of the work.
static REGISTRY: LazyLock<TagRegistry> = LazyLock::new(|| Tenant::demo().registry);

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let context = ValidationContext {
        tenant: "demo",
        source: "demo-web",
        received_at: RECEIVED_AT,
        max_future_ms: 86_400_000,
        max_age_ms: 86_400_000,
        tag_values_as_text: selector & 8 != 0,
    };
    let format = match selector & 1 {
        0 => BodyFormat::Json,
        _ => BodyFormat::NdJson,
    };
    let verdict = Judge::new(&REGISTRY, context, 32 * 1024, MAX_DETAILED).native_body(body, format);
    // The pixel's check of its query string, which refuses what does not decode to UTF-8.
    if let Ok(query) = std::str::from_utf8(body) {
        let _ = query_is_utf8(query);
    }
    check(&verdict);
});

fn check(verdict: &Intake) {
    assert!(verdict.rejected.len() <= MAX_DETAILED);
    assert_eq!(
        verdict.rejected_by_reason.values().sum::<usize>(),
        verdict.rejected_count
    );
    for event in &verdict.accepted {
        assert_eq!(event.tenant, "demo");
        assert!(!event.event_id.is_empty() && !event.user_id.is_empty());
    }
}
