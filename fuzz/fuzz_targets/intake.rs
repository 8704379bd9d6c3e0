//! Event intake: any body as Tally's JSON or NDJSON, as a Segment batch or call, or as
//! Snowplow's payload_data, and any pixel or Snowplow query string. Whatever comes in, intake
//! answers without panicking, every event is accepted or rejected, and the rejects' details
//! stay within their bound.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tally_ingest::intake::{BodyFormat, Intake, Judge, query_is_utf8};
use tally_ingest::trackers::segment::{Call, SegmentBody};
use tally_ingest::trackers::snowplow::{SnowplowBody, query_fields, read_event};
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
    let judge = || Judge::new(&REGISTRY, context.clone(), 32 * 1024, MAX_DETAILED);
    let verdict = match selector & 7 {
        0 => judge().native_body(body, BodyFormat::Json),
        1 => judge().native_body(body, BodyFormat::NdJson),
        2 | 3 => {
            let call = (selector & 1 == 1).then_some(Call::Track);
            let mut judge = judge();
            if let Ok(segment) = SegmentBody::parse(body, call) {
                segment.judge(&mut judge);
            }
            judge.finish()
        }
        4 | 5 => {
            let mut judge = judge();
            if let Ok(snowplow) = SnowplowBody::parse(body) {
                snowplow.judge(&mut judge, selector & 1 == 1);
            }
            judge.finish()
        }
        _ => {
            let mut judge = judge();
            if let Ok(query) = std::str::from_utf8(body) {
                let _ = query_is_utf8(query);
                if let Ok(fields) = query_fields(query) {
                    judge.event(0, query, |_| read_event(&fields, RECEIVED_AT));
                }
            }
            judge.finish()
        }
    };
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
