//! Governance specs: any body as a view, a tag, an event type or a source policy, put into
//! the demo tenant as the governance API puts it. The catalog accepts it or refuses it with
//! reasons, without panicking; and what it accepts is whole: a view names each dimension and
//! measure once, within their caps, over at least one event type; the tenant stays within its
//! size; the catalog reads back as written; and every view folds events without panicking.
#![no_main]

use std::collections::BTreeSet;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tally_connectors::testing::{reference_states, sample_demo_events};
use tally_model::registry::{EventTypeSpec, SourcePolicy, TagSpec};
use tally_model::tenant::MAX_TENANT_BYTES;
use tally_model::view::{MAX_DIMENSIONS, MAX_MEASURES};
use tally_model::{Catalog, Event, Tenant, ViewSpec};

/// Events to fold into an accepted catalog's views, made once.
static EVENTS: LazyLock<Vec<(u32, u64, Event)>> = LazyLock::new(|| {
    (sample_demo_events(1_795_881_600_000)
        .into_iter()
        .enumerate())
    .map(|(offset, event)| (0, offset as u64, event))
    .collect()
});

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let mut tenant = Tenant::demo();
    let name = "fuzzed".to_owned();
    let parsed = match selector & 3 {
        0 => serde_json::from_slice::<ViewSpec>(body).map(|view| {
            match tenant.views.iter_mut().find(|v| v.name == view.name) {
                Some(existing) => *existing = view,
                None => tenant.views.push(view),
            }
        }),
        1 => serde_json::from_slice::<TagSpec>(body).map(|tag| {
            tenant.registry.tags.insert(name, tag);
        }),
        2 => serde_json::from_slice::<EventTypeSpec>(body).map(|spec| {
            tenant.registry.event_types.insert(name, spec);
        }),
        _ => serde_json::from_slice::<SourcePolicy>(body).map(|policy| {
            tenant.registry.sources.insert(name, policy);
        }),
    };
    if parsed.is_err() {
        return;
    }
    let tenants = [("demo".to_owned(), tenant)].into();
    let Ok(catalog) = Catalog::new(tenants, Vec::new()) else {
        return;
    };
    let tenant = &catalog.tenants["demo"];
    for view in &tenant.views {
        assert!(!view.events.is_empty(), "{}: no events", view.name);
        assert!(view.dimensions.len() <= MAX_DIMENSIONS, "{}", view.name);
        assert!(
            (1..=MAX_MEASURES).contains(&view.measures.len()),
            "{}",
            view.name
        );
        let dimensions: BTreeSet<&String> = view.dimensions.iter().collect();
        assert_eq!(
            dimensions.len(),
            view.dimensions.len(),
            "{}: a dimension twice",
            view.name
        );
        let measures: BTreeSet<String> = view.measures.iter().map(ToString::to_string).collect();
        assert_eq!(
            measures.len(),
            view.measures.len(),
            "{}: a measure twice",
            view.name
        );
    }
    let json = serde_json::to_vec(tenant).expect("a tenant serializes");
    assert!(json.len() <= MAX_TENANT_BYTES);
    let read_back: Tenant = serde_json::from_slice(&json).expect("a tenant reads back");
    assert_eq!(&read_back, tenant);
    let _ = reference_states(&catalog, EVENTS.iter().cloned(), i64::MIN..i64::MAX);
});
