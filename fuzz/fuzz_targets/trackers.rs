//! The trackers' decoders: any body as a Segment batch or call, or as Snowplow's
//! payload_data, and any Snowplow query string. Whatever comes in, each event is accepted or
//! rejected without panicking; a reject's reasons stay within their cap (count and bytes, so a
//! request's reply and rejected stream stay bounded by its size); its payload is cut to the
//! event limit; and an accepted event's record is no larger than the event sent allows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_ingest::intake::Intake;
use tally_ingest::trackers::segment::{Call, SegmentBody};
use tally_ingest::trackers::snowplow::{SnowplowBody, query_fields, read_event};
use tally_model::registry::{MAX_REASON_CHARS, MAX_REASONS};

#[path = "demo_intake.rs"]
mod demo_intake;

use demo_intake::{MAX_EVENT_BYTES, RECEIVED_AT, check_verdict, demo_judge};

/// What a tracker adds to an event beyond the bytes of its own call: the batch's context
/// (at most 1 KB), the ids, the time and the JSON around them.
const RECORD_OVERHEAD: usize = 4 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let mut judge = demo_judge(selector);
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
    check_verdict(verdict);
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
        let record = serde_json::to_vec(event).expect("an event serializes");
        assert!(
            record.len() <= MAX_EVENT_BYTES + RECORD_OVERHEAD,
            "an accepted event's record is {} bytes",
            record.len()
        );
    }
}
