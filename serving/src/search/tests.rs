//! The index against plain filters over the same events: exact fields, prefixes, aliases,
//! free text, boolean logic, tenant scope, the time range, newest-first paging, dedupe by
//! id, the window, and commits that survive a reopen.

use std::collections::BTreeMap;

use tally_model::time::HOUR_MS;
use tally_model::{Event, TagValue};

use super::*;

const NOW: Millis = 1_795_305_600_000;

fn event(id: usize, tenant: &str, url: &str, os: &str) -> Event {
    Event {
        event_id: format!("e{id}"),
        event_type: if id.is_multiple_of(2) {
            "page_view"
        } else {
            "click"
        }
        .to_owned(),
        ts: NOW - (id as Millis) * 60_000,
        tenant: tenant.to_owned(),
        user_id: format!("u{}", id % 3),
        tags: BTreeMap::from([
            ("url".to_owned(), TagValue::String(url.to_owned())),
            ("os_type".to_owned(), TagValue::String(os.to_owned())),
            ("latency_ms".to_owned(), TagValue::Number(id as f64)),
        ]),
        received_at: NOW,
        source: "web".to_owned(),
    }
}

fn events() -> Vec<Event> {
    let urls = ["/checkout/step-1", "/checkout", "/home", "/Checkout-Later"];
    let oses = ["ios", "android"];
    (0..40)
        .map(|i| {
            event(
                i,
                if i % 10 == 9 { "other" } else { "t" },
                urls[i % 4],
                oses[i % 2],
            )
        })
        .collect()
}

fn opened() -> (tempfile::TempDir, SearchIndex) {
    let dir = tempfile::tempdir().unwrap();
    let (index, positions) = SearchIndex::open(dir.path(), 7 * 24 * HOUR_MS).unwrap();
    assert_eq!(
        positions, None,
        "a new index has no positions: it is rebuilt"
    );
    index.add(&events(), NOW).unwrap();
    index.commit(&Positions::from([(0, 40)])).unwrap();
    (dir, index)
}

fn request(q: &str) -> SearchRequest<'_> {
    SearchRequest {
        tenant: "t",
        q,
        event_type: None,
        user_id: None,
        range: NOW - 24 * HOUR_MS..NOW + 1,
        offset: 0,
        limit: 100,
    }
}

fn canonical(name: &str) -> String {
    match name {
        "os" => "os_type".to_owned(),
        other => other.to_owned(),
    }
}

fn ids(index: &SearchIndex, request: &SearchRequest<'_>) -> Vec<String> {
    let page = index.search(request, &canonical).unwrap();
    page.hits
        .into_iter()
        .map(|hit| hit.event.event_id)
        .collect()
}

/// The ids of tenant t's events `keep` admits, newest first.
fn expected(keep: impl Fn(&Event) -> bool) -> Vec<String> {
    let mut kept: Vec<Event> = events()
        .into_iter()
        .filter(|e| e.tenant == "t" && keep(e))
        .collect();
    kept.sort_by_key(|e| std::cmp::Reverse(e.ts));
    kept.into_iter().map(|e| e.event_id).collect()
}

fn tag(event: &Event, name: &str) -> String {
    event.tags[name].to_string()
}

/// Which events a query should find.
type Keep = Box<dyn Fn(&Event) -> bool>;

#[test]
fn queries_find_what_a_plain_filter_finds_newest_first() {
    let (_dir, index) = opened();
    let cases: Vec<(&str, Keep)> = vec![
        ("os_type:ios", Box::new(|e| tag(e, "os_type") == "ios")),
        ("os:ios", Box::new(|e| tag(e, "os_type") == "ios")),
        (
            "url:/checkout*",
            Box::new(|e| tag(e, "url").starts_with("/checkout")),
        ),
        (
            "url:/checkout* AND os_type:ios",
            Box::new(|e| tag(e, "url").starts_with("/checkout") && tag(e, "os_type") == "ios"),
        ),
        (
            "url:/home OR event_type:click",
            Box::new(|e| tag(e, "url") == "/home" || e.event_type == "click"),
        ),
        (
            "url:* -os_type:ios",
            Box::new(|e| tag(e, "os_type") != "ios"),
        ),
        ("user_id:IN [u0 u2]", Box::new(|e| e.user_id != "u1")),
        ("latency_ms:7", Box::new(|e| tag(e, "latency_ms") == "7")),
        // Free text: words of any field, any case.
        (
            "checkout",
            Box::new(|e| tag(e, "url").to_lowercase().contains("checkout")),
        ),
        (
            "CHECK*",
            Box::new(|e| tag(e, "url").to_lowercase().contains("checkout")),
        ),
        (
            "\"checkout later\"",
            Box::new(|e| tag(e, "url") == "/Checkout-Later"),
        ),
        ("*", Box::new(|_| true)),
    ];
    for (q, keep) in cases {
        assert_eq!(ids(&index, &request(q)), expected(keep), "q={q}");
    }
}

#[test]
fn filters_scope_and_paging_hold() {
    let (_dir, index) = opened();
    let narrowed = SearchRequest {
        event_type: Some("page_view"),
        user_id: Some("u0"),
        range: NOW - 20 * 60_000..NOW + 1,
        ..request("*")
    };
    let wanted =
        expected(|e| e.event_type == "page_view" && e.user_id == "u0" && e.ts >= NOW - 20 * 60_000);
    assert_eq!(ids(&index, &narrowed), wanted);
    assert!(!wanted.is_empty());
    let theirs = SearchRequest {
        tenant: "other",
        ..request("*")
    };
    let other = index.search(&theirs, &canonical).unwrap();
    assert!(other.hits.iter().all(|hit| hit.event.tenant == "other"));
    assert_eq!(other.total, 4);
    // Pages of 7, newest first, cover every hit once.
    let all = expected(|_| true);
    let mut paged = Vec::new();
    for offset in (0..all.len()).step_by(7) {
        let page = index
            .search(
                &SearchRequest {
                    offset,
                    limit: 7,
                    ..request("*")
                },
                &canonical,
            )
            .unwrap();
        assert_eq!(page.total, all.len());
        paged.extend(page.hits.into_iter().map(|hit| hit.event.event_id));
    }
    assert_eq!(paged, all);
}

#[test]
fn highlights_name_the_matched_fields_and_words() {
    let (_dir, index) = opened();
    let page = index
        .search(&request("url:/checkout* AND os:ios"), &canonical)
        .unwrap();
    let hit = &page.hits[0];
    let url = hit.highlights.iter().find(|h| h.field == "url").unwrap();
    assert_eq!(&url.value[url.ranges[0][0]..url.ranges[0][1]], "/checkout");
    assert!(
        hit.highlights
            .iter()
            .any(|h| h.field == "os_type" && h.value == "ios")
    );

    let page = index.search(&request("home"), &canonical).unwrap();
    let text = page.hits[0]
        .highlights
        .iter()
        .find(|h| h.field == "text")
        .unwrap();
    let [start, end] = text.ranges[0];
    assert_eq!(&text.value[start..end], "home", "{text:?}");
}

#[test]
fn a_resent_event_is_one_hit_and_old_events_leave_with_the_window() {
    let (dir, index) = opened();
    let mut resent = events()[0].clone();
    resent.received_at += 1;
    index.add([&resent], NOW).unwrap();
    index.commit(&Positions::from([(0, 41)])).unwrap();
    assert_eq!(index.search(&request("*"), &canonical).unwrap().total, 36);

    // The window passes the oldest events: they go at the next commit.
    let catalog = Catalog::default();
    index
        .expire(NOW + 7 * 24 * HOUR_MS - 10 * 60_000, &catalog)
        .unwrap();
    index.commit(&Positions::from([(0, 41)])).unwrap();
    let wide = SearchRequest {
        range: NOW - 48 * HOUR_MS..NOW + 1,
        ..request("*")
    };
    let left = index.search(&wide, &canonical).unwrap();
    assert!(
        left.hits
            .iter()
            .all(|hit| hit.event.ts >= NOW - 10 * 60_000)
    );
    assert_eq!(left.total, expected(|e| e.ts >= NOW - 10 * 60_000).len());
    drop(index);

    // What was committed, positions included, is there after a reopen.
    let (reopened, positions) = SearchIndex::open(dir.path(), 7 * 24 * HOUR_MS).unwrap();
    assert_eq!(positions, Some(Positions::from([(0, 41)])));
    assert_eq!(
        reopened.search(&wide, &canonical).unwrap().total,
        left.total
    );

    // A reopened index still knows what it holds: a resend replaces the earlier copy, as do
    // two copies of a new event in one batch.
    let mut again = events()[0].clone();
    again.received_at += 2;
    let mut new = events()[0].clone();
    new.event_id = "e-new".to_owned();
    let mut new_again = new.clone();
    new_again.received_at += 1;
    reopened.add([&again, &new, &new_again], NOW).unwrap();
    reopened.commit(&Positions::from([(0, 44)])).unwrap();
    assert_eq!(
        reopened.search(&wide, &canonical).unwrap().total,
        left.total + 1
    );
}

#[test]
fn mistakes_and_costly_queries_are_refused_with_what_to_write() {
    let (_dir, index) = opened();
    for (q, says) in [
        ("url:(", "is not a query"),
        (
            "latency_ms:[1 TO 5]",
            "ranges are not supported in q; a tag's values are matched as text",
        ),
        (
            "ts:[1 TO 5]",
            "give the time range with start_time and end_time",
        ),
        ("url:/che.*/", "regular expressions are not supported"),
    ] {
        let error = index.search(&request(q), &canonical).unwrap_err();
        assert!(error.to_string().contains(says), "q={q}: {error}");
    }
    let long: Vec<String> = (0..=query::MAX_TERMS).map(|i| format!("w{i}")).collect();
    let long = long.join(" ");
    let error = index.search(&request(&long), &canonical).unwrap_err();
    assert!(
        matches!(error, SearchError::Query(SearchQueryError::TooLarge)),
        "{error}"
    );
}

#[test]
fn publishers_count_each_sources_events_that_carry_a_tag() {
    let (_dir, index) = opened();
    let mut app = event(100, "t", "/app", "ios");
    app.source = "app".into();
    app.tags.remove("url");
    let mut newest = event(101, "t", "/app/home", "ios");
    newest.source = "app".into();
    newest.ts = NOW;
    index.add([&app, &newest], NOW).unwrap();
    index.commit(&Positions::new()).unwrap();
    let sources = ["app".to_owned(), "web".to_owned(), "none".to_owned()];
    let found = index
        .publishers("t", "url", &sources, NOW - 24 * HOUR_MS..NOW + 1)
        .unwrap();
    let web = expected(|_| true).len();
    let counts: Vec<(&str, usize, Option<Millis>)> = (found.iter())
        .map(|p| (p.source.as_str(), p.events, p.last_seen))
        .collect();
    assert_eq!(
        counts,
        [
            ("app", 1, Some(NOW)),
            ("web", web, Some(NOW)),
            ("none", 0, None)
        ]
    );
}

#[test]
fn an_event_type_kept_for_less_than_the_window_leaves_the_index_with_its_retention() {
    let (_dir, index) = opened();
    let mut catalog = Catalog::demo("w", "r");
    catalog
        .tenants
        .insert("t".to_owned(), tally_model::Tenant::demo());
    let clicks = catalog.tenants.get_mut("t").unwrap();
    clicks
        .registry
        .event_types
        .get_mut("click")
        .unwrap()
        .retention_days = 1;
    // A day and 15 minutes on: clicks older than a day go, page views stay for the window.
    let later = NOW + 24 * HOUR_MS + 15 * 60_000;
    index.expire(later, &catalog).unwrap();
    index.commit(&Positions::new()).unwrap();
    let wide = SearchRequest {
        range: NOW - 48 * HOUR_MS..later,
        ..request("*")
    };
    let left = ids(&index, &wide);
    let kept = expected(|e| e.event_type != "click" || e.ts >= later - 24 * HOUR_MS);
    assert_eq!(left, kept);
    assert!(kept.len() < expected(|_| true).len(), "some clicks went");
}
