//! The registry's rules, one reason at a time.

use super::*;
use crate::tenant::Catalog;
use serde_json::{Value, json};

const NOW: Millis = 1_795_881_600_000;

fn context() -> ValidationContext<'static> {
    ValidationContext {
        tenant: "demo",
        source: "demo-web",
        received_at: NOW,
        max_future_ms: 86_400_000,
        max_age_ms: 86_400_000,
        tag_values_as_text: false,
    }
}

fn registry() -> TagRegistry {
    Catalog::demo("w", "r").tenants["demo"].registry.clone()
}

fn reasons(event: Value) -> Vec<String> {
    let reasons = registry()
        .validate(&event, &context(), || "x".into())
        .unwrap_err();
    reasons
        .into_iter()
        .map(|r| format!("{}: {}", r.code, r.message))
        .collect()
}

#[test]
fn accepts_a_valid_event_and_resolves_aliases() {
    let event = registry()
        .validate(
            &json!({"event_type": "purchase", "user_id": "u1", "ts": NOW - 5,
                    "tags": {"revenue": 12.5, "os": "ios"}}),
            &context(),
            || "assigned".into(),
        )
        .unwrap();
    assert_eq!(event.event_id, "assigned");
    assert_eq!(event.tenant, "demo");
    assert_eq!(event.ts, NOW - 5);
    assert_eq!(event.tags["os_type"], TagValue::String("ios".into()));
    assert_eq!(event.tags["revenue"], TagValue::Number(12.5));
}

#[test]
fn numbers_beyond_what_sums_hold_exactly_are_rejected() {
    for (revenue, shown) in [
        (json!(1e32), "1e32"),
        (json!(-1e308), "-1e308"),
        (json!(1e15 + 2.0), "1.000000000000002e15"),
    ] {
        let found = reasons(
            json!({"event_type": "purchase", "user_id": "u", "tags": {"revenue": revenue}}),
        );
        assert!(
            found.iter().any(|r| r == &format!("number_out_of_range: tag 'revenue' is {shown}, outside ±1e15, the numbers Tally sums exactly")),
            "{found:?}"
        );
    }
    for edge in [1e15, -1e15, 1e-6] {
        let event = registry()
            .validate(
                &json!({"event_type": "purchase", "user_id": "u", "tags": {"revenue": edge}}),
                &context(),
                || "x".into(),
            )
            .unwrap();
        assert_eq!(event.tags["revenue"], TagValue::Number(edge));
    }
}

#[test]
fn keeps_the_clients_event_id_and_defaults_time_to_receipt() {
    let event = registry()
        .validate(
            &json!({"event_id": "c-1", "event_type": "click", "user_id": "u"}),
            &context(),
            || unreachable!("the client sent an id"),
        )
        .unwrap();
    assert_eq!((event.event_id.as_str(), event.ts), ("c-1", NOW));
}

#[test]
fn returns_every_reason_not_only_the_first() {
    let found = reasons(json!({
        "event_type": "purchase", "tenant": "other", "colour": 1,
        "tags": {"acount_number": "1", "os_type": 3}
    }));
    let expected = [
        "field 'tenant' is set by the server",
        "unknown field 'colour'",
        "missing \"user_id\"",
        "unknown tag 'acount_number' (did you mean account_number?)",
        "tag 'os_type' must be a string, got 3",
        "missing required tag 'revenue' for event type 'purchase'",
    ];
    for reason in expected {
        assert!(
            found.iter().any(|r| r.contains(reason)),
            "{reason:?} not in {found:#?}"
        );
    }
}

#[test]
fn every_reject_reason_reads_well() {
    let cases = [
        (json!([1]), "an event must be a JSON object, got an array"),
        (
            json!({"event_type": "pageview", "user_id": "u"}),
            "unknown event type 'pageview' (did you mean page_view?)",
        ),
        (
            json!({"event_type": "click", "user_id": ""}),
            "\"user_id\" must not be empty",
        ),
        (
            json!({"event_type": "click", "user_id": 7}),
            "\"user_id\" must be a string, got a number",
        ),
        (
            json!({"event_type": "click", "user_id": "u", "event_id": "x".repeat(200)}),
            "\"event_id\" is 200 bytes",
        ),
        (
            json!({"event_type": "click", "user_id": "u", "ts": NOW + 86_400_001}),
            "more than 24 h in the future",
        ),
        (
            json!({"event_type": "click", "user_id": "u", "ts": NOW - 86_400_001}),
            "older than the allowed lateness of 24 h",
        ),
        (
            json!({"event_type": "click", "user_id": "u", "ts": crate::time::now_millis() / 1000}),
            "looks like unix seconds; it is in epoch milliseconds",
        ),
        (
            json!({"event_type": "click", "user_id": "u", "ts": "soon"}),
            "neither RFC 3339",
        ),
        (
            json!({"event_type": "click", "user_id": "u", "ts": 1.5}),
            "whole epoch milliseconds",
        ),
        (
            json!({"event_type": "click", "user_id": "u", "tags": [1]}),
            "\"tags\" must be an object",
        ),
        (
            json!({"event_type": "click", "user_id": "u", "tags": {"url": {"a": 1}}}),
            "tag 'url' must be a string, got an object",
        ),
        (
            json!({"event_type": "click", "user_id": "u", "tags": {"revenue": 1}}),
            "tag 'revenue' is not declared for event type 'click'",
        ),
        (
            json!({"event_type": "click", "user_id": "u", "tags": {"os": "a", "os_type": "b"}}),
            "are both 'os_type'",
        ),
        (
            json!({"event_type": "page_view", "user_id": "u"}),
            "missing required tag 'url'",
        ),
        (json!({"user_id": "u"}), "missing \"event_type\""),
    ];
    for (event, expected) in cases {
        let found = reasons(event.clone());
        assert!(
            found.iter().any(|r| r.contains(expected)),
            "{event}: {expected:?} not in {found:?}"
        );
    }
}

#[test]
fn enforces_source_permissions() {
    let mut registry = registry();
    registry.sources.insert(
        "kiosk".into(),
        SourcePolicy {
            event_types: vec!["click".into()],
        },
    );
    let kiosk = ValidationContext {
        source: "kiosk",
        ..context()
    };
    let event = json!({"event_type": "session_start", "user_id": "u"});
    let found = registry
        .validate(&event, &kiosk, || "x".into())
        .unwrap_err();
    assert_eq!(found[0].code, "source_not_allowed");
    assert_eq!(
        found[0].to_string(),
        "source 'kiosk' may not publish event type 'session_start'"
    );
    let unknown = ValidationContext {
        source: "nobody",
        ..context()
    };
    assert!(registry.validate(&event, &unknown, || "x".into()).is_err());
    let click = json!({"event_type": "click", "user_id": "u"});
    assert!(registry.validate(&click, &kiosk, || "x".into()).is_ok());
}

#[test]
fn pixel_text_values_parse_as_declared_types() {
    let pixel = ValidationContext {
        tag_values_as_text: true,
        ..context()
    };
    let event = registry()
        .validate(
            &json!({"event_type": "purchase", "user_id": "u", "tags": {"revenue": "9.99"}}),
            &pixel,
            || "x".into(),
        )
        .unwrap();
    assert_eq!(event.tags["revenue"], TagValue::Number(9.99));
    let bad = json!({"event_type": "purchase", "user_id": "u", "tags": {"revenue": "lots"}});
    assert!(registry().validate(&bad, &pixel, || "x".into()).is_err());
}

#[test]
fn an_alias_belongs_to_one_tag_and_every_name_is_plain() {
    let spec = |aliases: &[&str]| TagSpec {
        kind: TagKind::String,
        aliases: aliases.iter().map(|a| (*a).to_owned()).collect(),
    };
    let mut hijacked = registry();
    hijacked.tags.insert("aaa_hijack".into(), spec(&["os"]));
    let problems = hijacked.check().unwrap_err().messages();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("alias 'os' is claimed by tags 'aaa_hijack' and 'os_type'")),
        "{problems:?}"
    );
    let mut shadowing = registry();
    shadowing.tags.insert("shadow".into(), spec(&["country"]));
    let problems = shadowing.check().unwrap_err().messages();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("alias 'country' of tag 'shadow' is the name of tag 'country'")),
        "{problems:?}"
    );
    for bad in ["../../etc", "a/b", " ", "<script>"] {
        let mut named = registry();
        named.tags.insert(bad.into(), spec(&[]));
        let no_tags = EventTypeSpec {
            aliases: Vec::new(),
            required: Vec::new(),
            optional: Vec::new(),
            retention_days: DEFAULT_RETENTION_DAYS,
        };
        named.event_types.insert(bad.into(), no_tags);
        let problems = named.check().unwrap_err().messages();
        assert!(
            problems.iter().any(|p| p.starts_with("tag name")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.starts_with("event type name")),
            "{problems:?}"
        );
    }
    assert_eq!(registry().check(), Ok(()));
}

#[test]
fn suggests_canonical_names_from_aliases_and_typos() {
    let registry = registry();
    assert_eq!(registry.suggest_tag("acct_num"), Some("account_number"));
    assert_eq!(registry.suggest_tag("acount_numbr"), Some("account_number"));
    assert_eq!(registry.suggest_tag("os_typ"), Some("os_type"));
    assert_eq!(registry.suggest_tag("zzzzzz"), None);
    assert!(registry.check().is_ok());
}

#[test]
fn event_type_aliases_rename_and_suggest() {
    let event = registry()
        .validate(
            &json!({"event_type": "Order Completed", "user_id": "u", "tags": {"revenue": 3}}),
            &context(),
            || "x".into(),
        )
        .unwrap();
    assert_eq!(event.event_type, "purchase");
    assert_eq!(
        event.tags["revenue"],
        TagValue::Number(3.0),
        "declared types hold"
    );
    let found = reasons(json!({"event_type": "Order Complete", "user_id": "u"}));
    assert!(
        found.contains(
            &"unknown_event_type: unknown event type 'Order Complete' (did you mean purchase?)"
                .to_owned()
        ),
        "{found:?}"
    );
    assert_eq!(
        registry().suggest_event_type("Order Completed"),
        Some("purchase")
    );
    assert_eq!(registry().suggest_event_type("pageview"), Some("page_view"));
}

#[test]
fn an_event_type_alias_belongs_to_one_type_and_is_text() {
    let mut registry = registry();
    let click = registry.event_types.get_mut("click").unwrap();
    click.aliases = vec![
        "Order Completed".into(),
        "page_view".into(),
        "bad\talias".into(),
    ];
    let problems = registry.check().unwrap_err().messages();
    for expected in [
        "alias 'Order Completed' is claimed by event types 'click' and 'purchase'",
        "alias 'page_view' of event type 'click' is the name of event type 'page_view'",
        "event type alias \"bad\\talias\" is not allowed",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{expected:?} not in {problems:?}"
        );
    }
}

#[test]
fn offered_tags_are_kept_where_declared_and_dropped_elsewhere() {
    let offered = json!({
        "context.os.name": "iOS",
        "context.library.name": "analytics-python",
        "context.page.url": "https://shop.example/cart",
        "revenue": 99,
    });
    let offered = offered.as_object().unwrap();
    let validate =
        |event: Value| registry().validate_offered(&event, offered, &context(), || "x".into());
    let event = validate(json!({"event_type": "purchase", "user_id": "u", "tags": {"revenue": 5}}))
        .unwrap();
    assert_eq!(
        event.tags["os_type"],
        TagValue::String("iOS".into()),
        "an alias"
    );
    assert_eq!(
        event.tags["revenue"],
        TagValue::Number(5.0),
        "what was sent wins"
    );
    assert_eq!(
        event.tags.len(),
        2,
        "the SDK's own context is dropped: {:?}",
        event.tags
    );
    // session_start declares no url: offered or not, it is not kept, and not a reject.
    let event = validate(json!({"event_type": "session_start", "user_id": "u"})).unwrap();
    assert_eq!(event.tags.keys().collect::<Vec<_>>(), ["os_type"]);
    let wrong = json!({"context.os.name": 7});
    let found = registry()
        .validate_offered(
            &json!({"event_type": "click", "user_id": "u"}),
            wrong.as_object().unwrap(),
            &context(),
            || "x".into(),
        )
        .unwrap_err();
    assert_eq!(
        found[0].to_string(),
        "tag 'context.os.name' must be a string, got 7"
    );
}

/// A required tag sent with a value of the wrong type is one mistake, told once: not also as
/// missing.
#[test]
fn a_required_tag_of_the_wrong_type_is_not_also_missing() {
    let found = reasons(json!({
        "event_type": "purchase", "user_id": "u1", "tags": {"revenue": "12"}
    }));
    assert_eq!(
        found,
        ["wrong_tag_type: tag 'revenue' must be a number, got \"12\""]
    );
}

/// A rejection's reasons are bounded whatever the event holds: 2,600 unknown tags under
/// 6,000-character names give 16 reasons of at most 300 characters, the last counting the
/// rest (each leaf had its own reason, path and suggestion: megabytes per event).
#[test]
fn an_event_with_thousands_of_bad_tags_gets_a_bounded_rejection() {
    let long = "p".repeat(6_000);
    let tags: serde_json::Map<String, Value> = (0..2_600)
        .map(|i| (format!("{long}.{i}"), json!(i)))
        .collect();
    let found = reasons(json!({"event_type": "click", "user_id": "u", "tags": tags}));
    assert_eq!(
        found.len(),
        crate::registry::validate::MAX_REASONS,
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .all(|r| r.chars().count() <= 20 + crate::registry::validate::MAX_REASON_CHARS + 1)
    );
    assert!(
        found
            .last()
            .unwrap()
            .contains("and 2585 more problems with this event"),
        "{found:?}"
    );
}
