//! The full-text query language: any `q` is answered or refused, never a panic, over a small
//! index built once; every highlight's ranges lie inside its value, on character boundaries,
//! and a page holds at most what was asked.
#![no_main]

use std::collections::BTreeMap;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tally_model::{Event, TagValue};
use tally_serving::search::{Positions, SearchIndex, SearchRequest};

const NOW: i64 = 1_795_881_600_000;

/// The index and the folder that holds it, built once.
static INDEX: LazyLock<(tempfile::TempDir, SearchIndex)> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let (index, _) = SearchIndex::open(dir.path(), 86_400_000).expect("an index opens");
    let events: Vec<Event> = (0..50)
        .map(|i| Event {
            event_id: format!("e{i}"),
            event_type: ["page_view", "click", "purchase"][i % 3].to_owned(),
            ts: NOW - i as i64 * 1000,
            tenant: "t".to_owned(),
            user_id: format!("u{}", i % 7),
            tags: BTreeMap::from([
                (
                    "url".to_owned(),
                    TagValue::String(format!("/checkout/ü{i}/é")),
                ),
                (
                    "os_type".to_owned(),
                    TagValue::String(["ios", "android"][i % 2].to_owned()),
                ),
                ("revenue".to_owned(), TagValue::Number(i as f64 / 3.0)),
                ("vip".to_owned(), TagValue::Bool(i % 5 == 0)),
            ]),
            received_at: NOW,
            source: "web".to_owned(),
        })
        .collect();
    index.add(&events, NOW).expect("events index");
    index.commit(&Positions::new()).expect("the index commits");
    (dir, index)
});

fuzz_target!(|data: &[u8]| {
    let Ok(q) = std::str::from_utf8(data) else {
        return;
    };
    let request = SearchRequest {
        tenant: "t",
        q,
        event_type: None,
        user_id: None,
        range: NOW - 86_400_000..NOW + 1,
        offset: 0,
        limit: 10,
    };
    let canonical = |name: &str| name.to_owned();
    if let Ok(page) = INDEX.1.search(&request, &canonical) {
        assert!(page.hits.len() <= 10 && page.hits.len() <= page.total);
        for highlight in page.hits.iter().flat_map(|hit| &hit.highlights) {
            for [start, end] in &highlight.ranges {
                assert!(
                    start <= end && *end <= highlight.value.len(),
                    "{highlight:?}"
                );
                assert!(highlight.value.is_char_boundary(*start), "{highlight:?}");
                assert!(highlight.value.is_char_boundary(*end), "{highlight:?}");
            }
        }
    }
});
