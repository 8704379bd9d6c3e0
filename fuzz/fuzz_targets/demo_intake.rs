//! What the `intake` and `trackers` targets share: a judge of the demo tenant's events, and
//! the checks every verdict passes.

use std::sync::LazyLock;

use tally_ingest::intake::{Intake, Judge};
use tally_model::registry::ValidationContext;
use tally_model::{TagRegistry, Tenant};

/// Rejects kept in detail.
pub const MAX_DETAILED: usize = 100;
/// The per-event size limit judged against.
pub const MAX_EVENT_BYTES: usize = 32 * 1024;
/// When the events are received.
pub const RECEIVED_AT: i64 = 1_795_881_600_000;

/// The demo registry, built once: building it per input would be most of the work.
static REGISTRY: LazyLock<TagRegistry> = LazyLock::new(|| Tenant::demo().registry);

/// A judge of the demo tenant's events; bit 3 of `selector` reads tag values sent as text,
/// as query strings and Snowplow send them.
pub fn demo_judge(selector: u8) -> Judge<'static> {
    let context = ValidationContext {
        tenant: "demo",
        source: "demo-web",
        received_at: RECEIVED_AT,
        max_future_ms: 86_400_000,
        max_age_ms: 86_400_000,
        tag_values_as_text: selector & 8 != 0,
    };
    Judge::new(&REGISTRY, context, MAX_EVENT_BYTES, MAX_DETAILED)
}

/// What holds for every verdict: its rejects' details within their bound, every reject
/// counted by reason, and every accepted event the demo tenant's, with its ids.
pub fn check_verdict(verdict: &Intake) {
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
