//! Event intake: any body as JSON or NDJSON, and any pixel query string. Whatever comes in,
//! intake answers without panicking, every event is accepted or rejected, and the rejects'
//! details stay within their bound.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tally_ingest::intake::{BodyFormat, intake, query_is_utf8};
use tally_model::registry::ValidationContext;
use tally_model::{TagRegistry, Tenant};

const MAX_DETAILED: usize = 100;

/// The demo registry, built once: building it per input would be most of the work.
static REGISTRY: LazyLock<TagRegistry> = LazyLock::new(|| Tenant::demo().registry);

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let registry = &*REGISTRY;
    let context = ValidationContext {
        tenant: "demo",
        source: "demo-web",
        received_at: 1_795_881_600_000,
        max_future_ms: 86_400_000,
        max_age_ms: 86_400_000,
        tag_values_as_text: selector & 4 != 0,
    };
    let format = if selector & 1 == 0 {
        BodyFormat::Json
    } else {
        BodyFormat::NdJson
    };
    let verdict = intake(body, format, registry, &context, 32 * 1024, MAX_DETAILED);
    assert!(verdict.rejected.len() <= MAX_DETAILED);
    assert_eq!(
        verdict.rejected_by_reason.values().sum::<usize>(),
        verdict.rejected_count
    );
    for event in &verdict.accepted {
        assert_eq!(event.tenant, "demo");
        assert!(!event.event_id.is_empty() && !event.user_id.is_empty());
    }
    if let Ok(query) = std::str::from_utf8(body) {
        let _ = query_is_utf8(query);
        let _ = actix_web::web::Query::<Vec<(String, String)>>::from_query(query);
    }
});
