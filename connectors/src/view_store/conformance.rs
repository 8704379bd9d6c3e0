//! The conformance suite every [`ViewStore`] backend passes: the embedded store always,
//! ScyllaDB when `TALLY_SCYLLA_URI` is set.

use tally_model::{AggregateState, Measure};

use super::{ViewKey, ViewStore};

fn key(tenant: &str, view: &str, bucket: i64, dimension: &str) -> ViewKey {
    ViewKey {
        tenant: tenant.into(),
        view: view.into(),
        bucket,
        dimensions: vec![dimension.into()],
    }
}

fn state(count: u64) -> AggregateState {
    let mut state = AggregateState::for_measures(&[Measure::Count, Measure::Sum("revenue".into())]);
    state.count = count;
    state
}

/// Upserts replace, scans are ordered and bounded to one tenant's view, deletes cut below a bucket.
pub fn run(store: &dyn ViewStore) {
    let rows = [
        (key("t1", "v", 120_000, "b"), state(3)),
        (key("t1", "v", 60_000, "a"), state(1)),
        (key("t1", "v", 60_000, "b"), state(2)),
        (key("t1", "v", -60_000, "a"), state(9)),
        (key("t1", "v2", 60_000, "a"), state(4)),
        (key("t2", "v", 60_000, "a"), state(5)),
    ];
    store.upsert(&rows).unwrap();
    let counts = |from, to| -> Vec<(i64, String, u64)> {
        store
            .scan("t1", "v", from..to)
            .unwrap()
            .into_iter()
            .map(|(k, s)| (k.bucket, k.dimensions[0].clone(), s.count))
            .collect()
    };
    assert_eq!(
        counts(0, 180_000),
        [
            (60_000, "a".into(), 1),
            (60_000, "b".into(), 2),
            (120_000, "b".into(), 3)
        ]
    );
    assert_eq!(counts(i64::MIN, 60_000), [(-60_000, "a".into(), 9)]);
    assert_eq!(
        counts(60_000, 120_000).len(),
        2,
        "the range end is exclusive"
    );
    store
        .upsert(&[(key("t1", "v", 60_000, "a"), state(10))])
        .unwrap();
    assert_eq!(
        counts(60_000, 60_001)[0].2,
        10,
        "an upsert replaces, never adds"
    );
    assert_eq!(store.delete_before("t1", "v", 120_000).unwrap(), 3);
    assert_eq!(counts(i64::MIN, i64::MAX), [(120_000, "b".into(), 3)]);
    assert_eq!(
        store.scan("t2", "v", 0..i64::MAX).unwrap().len(),
        1,
        "other tenants untouched"
    );
    assert_eq!(
        store.scan("t1", "v2", 0..i64::MAX).unwrap().len(),
        1,
        "other views untouched"
    );
    generations_follow_writes(store);
}

/// Every store keeps generations, so serving may keep what it derived from a view: a view's
/// generation changes on every write to its states, and only then.
fn generations_follow_writes(store: &dyn ViewStore) {
    let generation = |view: &str| store.generation("t1", view).unwrap();
    let before = generation("v").expect("the store keeps generations");
    let other_view = generation("v2");
    store
        .upsert(&[(key("t1", "v", 180_000, "c"), state(1))])
        .unwrap();
    let upserted = generation("v").expect("kept before, kept now");
    assert_ne!(upserted, before, "an upsert changes the view's generation");
    store.scan("t1", "v", 0..i64::MAX).unwrap();
    assert_eq!(generation("v"), Some(upserted), "reads leave it");
    assert_eq!(generation("v2"), other_view, "other views keep theirs");
    assert_eq!(store.delete_before("t1", "v", 150_000).unwrap(), 1);
    assert_ne!(generation("v"), Some(upserted), "a delete changes it");
}

/// States spread over days and big enough that a backend must split its writes; deletes
/// that cut whole days and part of one; progress that round-trips.
pub fn spans_days_and_large_upserts(store: &dyn ViewStore) {
    use tally_model::time::{DAY_MS as DAY, HOUR_MS as HOUR};
    let mut rows = Vec::new();
    for hour in 0..72 {
        for user in 0..20 {
            let mut state = AggregateState::for_measures(&[Measure::Uniq("user_id".into())]);
            for n in 0..200 {
                state.measures[0].add(tally_model::event::FieldValue::Str(&format!(
                    "u{hour}-{user}-{n}"
                )));
            }
            state.count = (hour * 100 + user) as u64;
            rows.push((key("t", "v", hour * HOUR, &format!("d{user:02}")), state));
        }
    }
    let bytes: usize = rows.iter().map(|(_, state)| state.encode().len()).sum();
    assert!(
        bytes > 1 << 20,
        "{bytes} bytes: enough to need several batches"
    );
    store.upsert(&rows).unwrap();
    let scanned = store.scan("t", "v", i64::MIN..i64::MAX).unwrap();
    assert_eq!(
        scanned, rows,
        "every state back, ordered by bucket then dimensions"
    );
    let second_day = store.scan("t", "v", DAY - HOUR..DAY + HOUR).unwrap();
    assert_eq!(
        second_day,
        rows[23 * 20..25 * 20],
        "a range across a day boundary"
    );

    let cut = DAY + 6 * HOUR;
    assert_eq!(store.delete_before("t", "v", cut).unwrap(), 30 * 20);
    assert_eq!(
        store.scan("t", "v", i64::MIN..i64::MAX).unwrap(),
        rows[30 * 20..]
    );
    assert_eq!(
        store.delete_before("t", "v", cut).unwrap(),
        0,
        "nothing left to delete"
    );

    assert_eq!(store.progress("worker-0").unwrap(), None);
    store.record_progress("worker-0", b"epoch 1").unwrap();
    store.record_progress("worker-0", b"epoch 2").unwrap();
    assert_eq!(
        store.progress("worker-0").unwrap().as_deref(),
        Some(&b"epoch 2"[..])
    );
}
