//! The state encoding, merges and summaries, checked against plain folds of events.

use super::*;
use crate::event::{Event, TagValue};
use crate::time::{Granularity, MINUTE_MS};
use crate::view::ViewSpec;
use proptest::prelude::*;

fn view() -> ViewSpec {
    toml::from_str(
        r#"name = "all"
           events = ["*"]
           measures = ["count", "sum(revenue)", "min(revenue)", "max(revenue)", "uniq(user_id)", "quantiles(revenue)"]
           granularity = "minute""#,
    )
    .unwrap()
}

fn event(minute: i64, user: u32, revenue: Option<f64>) -> Event {
    Event {
        event_id: format!("{minute}-{user}"),
        event_type: "purchase".into(),
        ts: minute * MINUTE_MS,
        tenant: "t".into(),
        user_id: format!("user-{user}"),
        tags: revenue
            .map(|r| ("revenue".to_owned(), TagValue::Number(r)))
            .into_iter()
            .collect(),
        received_at: 0,
        source: "s".into(),
    }
}

fn state_of(events: &[Event]) -> AggregateState {
    let view = view();
    let mut state = view.empty_state();
    events.iter().for_each(|e| view.accumulate(&mut state, e));
    state
}

/// Equal as a reader sees them: exact count, sum, min, max; sketch estimates within their
/// error (KLL compaction is randomized, so its estimates may move by a rank error).
fn assert_equivalent(a: &AggregateState, b: &AggregateState) {
    assert_eq!(a.count, b.count);
    for (x, y) in a.measures.iter().zip(&b.measures) {
        match (x, y) {
            (MeasureState::Uniq(x), MeasureState::Uniq(y)) => {
                assert_eq!(x.composite_estimate(), y.composite_estimate())
            }
            (MeasureState::Quantiles(x), MeasureState::Quantiles(y)) => {
                assert_eq!(x.n(), y.n());
                assert_eq!(x.min_item(), y.min_item());
                assert_eq!(x.max_item(), y.max_item());
            }
            (x, y) => assert_eq!(x, y),
        }
    }
}

fn events_strategy() -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec(
        (0i64..180, 0u32..500, prop::option::of(-1e6f64..1e6)).prop_map(|(m, u, r)| event(m, u, r)),
        0..300,
    )
}

proptest! {
    #[test]
    fn merge_is_associative_and_commutative(a in events_strategy(), b in events_strategy(), c in events_strategy()) {
        let (sa, sb, sc) = (state_of(&a), state_of(&b), state_of(&c));
        let mut left = sa.clone();
        left.merge(&sb).unwrap();
        left.merge(&sc).unwrap();
        let mut bc = sb.clone();
        bc.merge(&sc).unwrap();
        let mut right = sa.clone();
        right.merge(&bc).unwrap();
        assert_equivalent(&left, &right);
        let mut ba = sb.clone();
        ba.merge(&sa).unwrap();
        let mut ab = sa.clone();
        ab.merge(&sb).unwrap();
        assert_equivalent(&ab, &ba);
    }

    #[test]
    fn minute_states_merged_equal_the_hour_state_built_directly(events in events_strategy()) {
        let view = view();
        let mut minutes = std::collections::BTreeMap::<i64, AggregateState>::new();
        let mut hours = std::collections::BTreeMap::<i64, AggregateState>::new();
        for event in &events {
            let minute = minutes.entry(Granularity::Minute.bucket_start(event.ts)).or_insert_with(|| view.empty_state());
            view.accumulate(minute, event);
            let hour = hours.entry(Granularity::Hour.bucket_start(event.ts)).or_insert_with(|| view.empty_state());
            view.accumulate(hour, event);
        }
        let mut rolled_up = std::collections::BTreeMap::<i64, AggregateState>::new();
        for (minute, state) in &minutes {
            rolled_up.entry(Granularity::Hour.bucket_start(*minute)).or_insert_with(|| view.empty_state()).merge(state).unwrap();
        }
        prop_assert_eq!(rolled_up.len(), hours.len());
        for (hour, state) in &hours {
            assert_equivalent(&rolled_up[hour], state);
        }
    }

    #[test]
    fn a_merger_reads_the_same_as_merging_pairwise(a in events_strategy(), b in events_strategy(), c in events_strategy()) {
        let states = [state_of(&a), state_of(&b), state_of(&c)];
        let mut pairwise = view().empty_state();
        let mut merger = StateMerger::new(&view().measures);
        for state in &states {
            pairwise.merge(state).unwrap();
            merger.merge(state).unwrap();
        }
        assert_equivalent(&merger.finish(), &pairwise);
        let mut from_first = StateMerger::starting_with(&states[0]);
        from_first.merge(&states[1]).unwrap();
        from_first.merge(&states[2]).unwrap();
        assert_equivalent(&from_first.finish(), &pairwise);
    }

    #[test]
    fn encoding_round_trips(events in events_strategy()) {
        let state = state_of(&events);
        let decoded = AggregateState::decode(&state.encode()).unwrap();
        assert_equivalent(&decoded, &state);
    }

    #[test]
    fn decoding_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = AggregateState::decode(&bytes);
    }
}

#[test]
fn summary_reads_the_numbers() {
    let state = state_of(&[
        event(0, 1, Some(2.5)),
        event(0, 2, Some(0.1)),
        event(0, 1, None),
    ]);
    let summary = state.summary();
    assert_eq!(summary.count, 3);
    assert_eq!(summary.measures[0], MeasureSummary::Sum { sum: 2.6, n: 2 });
    assert_eq!(summary.measures[1], MeasureSummary::Min(Some(0.1)));
    assert_eq!(summary.measures[2], MeasureSummary::Max(Some(2.5)));
    let MeasureSummary::Uniq(users) = summary.measures[3] else {
        panic!("uniq")
    };
    assert!((users - 2.0).abs() < 0.01, "{users}");
}

#[test]
fn sums_are_exact_whatever_the_order() {
    let values = [0.1, 0.2, 0.3, 1e9, -1e9, 0.7];
    let forward = state_of(&values.map(|v| event(0, 0, Some(v))));
    let backward = state_of(
        &values
            .map(|v| event(0, 0, Some(v)))
            .into_iter()
            .rev()
            .collect::<Vec<_>>(),
    );
    assert_eq!(forward.measures[0], backward.measures[0]);
    assert_eq!(
        forward.summary().measures[0],
        MeasureSummary::Sum { sum: 1.3, n: 6 }
    );
}

#[test]
fn a_merger_reads_the_same_as_merging_pairwise_with_full_sketches() {
    // Thousands of users put the HLL sketches in their array mode.
    let users = |range: std::ops::Range<u32>| -> Vec<Event> {
        range
            .map(|user| event(0, user, Some(f64::from(user))))
            .collect()
    };
    let states = [
        state_of(&users(0..3_000)),
        state_of(&users(2_000..6_000)),
        state_of(&users(5_000..9_000)),
    ];
    let mut pairwise = view().empty_state();
    let mut merger = StateMerger::new(&view().measures);
    for state in &states {
        pairwise.merge(state).unwrap();
        merger.merge(state).unwrap();
    }
    let merged = merger.finish();
    assert_equivalent(&merged, &pairwise);
    let MeasureSummary::Uniq(estimate) = merged.summary().measures[3] else {
        panic!("the fourth measure is uniq");
    };
    assert!((estimate - 9_000.0).abs() < 9_000.0 * 0.05, "{estimate}");
}

#[test]
fn merging_different_shapes_is_an_error_not_a_panic() {
    let mut a = AggregateState::for_measures(&[Measure::Count, Measure::Sum("x".into())]);
    let b = AggregateState::for_measures(&[Measure::Count, Measure::Max("x".into())]);
    assert!(matches!(a.merge(&b), Err(MergeError::ShapeMismatch { .. })));
    let mut merger = StateMerger::starting_with(&a);
    assert!(matches!(
        merger.merge(&b),
        Err(MergeError::ShapeMismatch { .. })
    ));
    let uniq = AggregateState::for_measures(&[Measure::Uniq("x".into())]);
    assert!(matches!(
        merger.merge(&uniq),
        Err(MergeError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        StateMerger::starting_with(&uniq).merge(&a),
        Err(MergeError::ShapeMismatch { .. })
    ));
    assert_eq!(
        AggregateState::decode(&[9]),
        Err(StateDecodeError::Version(9))
    );
}

/// Found by the `aggregate_state` fuzz target in CI on 2026-12-07: an HLL image whose
/// registers make the library's estimate assert, so that summing the state up panicked.
#[test]
fn a_sketch_that_gives_no_estimate_is_refused_rather_than_panicking_a_query() {
    let crash = include_bytes!("../../../fuzz/seeds/aggregate_state/hll-without-an-estimate");
    match AggregateState::decode(crash) {
        Err(StateDecodeError::Sketch(reason)) => {
            assert!(reason.contains("no estimate"), "{reason}")
        }
        other => panic!("expected a refused sketch, got {other:?}"),
    }
}

/// Found by the `aggregate_state` fuzz target: a LIST-mode HLL image whose coupon
/// count exceeds its filled slots decoded, then encoded into bytes that did not.
#[test]
fn an_inconsistent_sketch_is_refused_rather_than_stored_unreadable() {
    let crash = [
        0x01, 0x03, 0x01, 0x04, 0x6e, 0x02, 0x01, 0x07, 0x09, 0x03, 0x40, 0x07, 0x00, 0x00, 0xd4,
        0x01, 0x11, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc,
        0xcc, 0x24, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc,
        0xcc, 0xcc, 0x01, 0x05, 0x03, 0x05, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc,
        0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc,
        0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0x26, 0xcc, 0x3f, 0xcc, 0xcc, 0xcc, 0xcc,
        0x01, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc,
        0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0x06,
    ];
    match AggregateState::decode(&crash) {
        Err(StateDecodeError::Sketch(reason)) => {
            assert!(reason.contains("inconsistent"), "{reason}")
        }
        other => panic!("expected a refused sketch, got {other:?}"),
    }
    // Every state Tally writes still decodes, sketches included.
    let mut state = AggregateState::for_measures(&[
        Measure::Uniq("user_id".into()),
        Measure::Quantiles("latency_ms".into()),
    ]);
    for (filled, n) in [(0, 0), (1, 3), (2, 5_000)] {
        for i in 0..n {
            state.measures[0].add(FieldValue::Str(&format!("user-{i}")));
            state.measures[1].add(FieldValue::Number(f64::from(i)));
        }
        let bytes = state.encode();
        let decoded = AggregateState::decode(&bytes).expect("a written state decodes");
        assert_eq!(decoded.encode(), bytes, "round {filled}");
    }
}
