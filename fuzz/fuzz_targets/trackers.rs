//! The trackers' decoders: any body as a Segment batch or call, or as Snowplow's
//! payload_data, and any Snowplow query string. Whatever comes in, each event is accepted or
//! rejected without panicking; a reject's reasons stay within their cap (count and bytes, so a
//! request's reply and rejected stream stay bounded by its size); its payload is cut to the
//! event limit; and an accepted event's record is no larger than the event sent allows.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tally_ingest::intake::{Intake, Judge};
use tally_ingest::trackers::segment::{Call, SegmentBody};
use tally_ingest::trackers::snowplow::{SnowplowBody, query_fields, read_event};
use tally_model::registry::{MAX_REASON_CHARS, MAX_REASONS, ValidationContext};
use tally_model::{TagRegistry, Tenant};

const MAX_DETAILED: usize = 100;
const MAX_EVENT_BYTES: usize = 32 * 1024;
const RECEIVED_AT: i64 = 1_795_881_600_000;
/// What a tracker adds to an event beyond the bytes of its own call: the batch's context
/// (at most 1 KB), the ids, the time and the JSON around them.
const RECORD_OVERHEAD: usize = 4 * 1024;

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
    let mut judge = Judge::new(&REGISTRY, context, MAX_EVENT_BYTES, MAX_DETAILED);
    match selector & 3 {
        0 | 1 => {
            let call = (selector & 1 == 1).then_some(Call::Track);
            if let Ok(segment) = SegmentBody::parse(body, call) {
                segment.judge(&mut judge);
            }
        }
        2 => {
            if let Ok(snowplow) = SnowplowBody::parse(body) {
                snowplow.judge(&mut judge, selector & 4 != 0);
            }
        }
        _ => {
            if let Ok(query) = std::str::from_utf8(body)
                && let Ok(fields) = query_fields(query)
            {
                judge.event(0, query, |_| read_event(&fields, RECEIVED_AT));
            }
        }
    }
    check(&judge.finish());
});

fn check(verdict: &Intake) {
    assert!(verdict.rejected.len() <= MAX_DETAILED);
    assert_eq!(
        verdict.rejected_by_reason.values().sum::<usize>(),
        verdict.rejected_count
    );
    for rejection in &verdict.rejected {
        assert!(!rejection.reasons.is_empty());
        assert!(
            rejection.reasons.len() <= MAX_REASONS,
            "{} reasons",
            rejection.reasons.len()
        );
        for reason in &rejection.reasons {
            // The cut ends with an ellipsis.
            let chars = reason.to_string().chars().count();
            assert!(
                chars <= MAX_REASON_CHARS + 1,
                "a reason of {chars} characters"
            );
        }
        assert!(rejection.payload.len() <= MAX_EVENT_BYTES);
    }
    for event in &verdict.accepted {
        assert_eq!(event.tenant, "demo");
        assert!(!event.event_id.is_empty() && !event.user_id.is_empty());
        let record = serde_json::to_vec(event).expect("an event serializes");
        assert!(
            record.len() <= MAX_EVENT_BYTES + RECORD_OVERHEAD,
            "an accepted event's record is {} bytes",
            record.len()
        );
    }
}
