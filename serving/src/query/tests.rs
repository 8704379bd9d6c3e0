//! The query's parsing, roll-up and rendering against small hand-made states.

use serde_json::{Value, json};
use tally_model::time::DAY_MS;
use tally_model::{AggregateState, Measure, Tenant};

use super::*;

fn params(pairs: &[(&str, &str)]) -> QueryParams {
    let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    QueryParams::from_query(&query.join("&")).unwrap()
}

#[test]
fn parses_measures_defaults_and_explains_mistakes() {
    let tenant = Tenant::demo();
    let many_quantiles: String = (1..=33)
        .map(|n| format!("p{n}(latency_ms)"))
        .collect::<Vec<_>>()
        .join(",");
    let query = Query::parse(
        &params(&[
            ("view", "revenue_by_country"),
            ("from", "0"),
            ("to", "3600000"),
            ("granularity", "hour"),
            ("group_by", "country"),
            ("measures", "count,avg(revenue),sum(revenue),uniq(user_id)"),
        ]),
        &tenant,
        0,
    )
    .unwrap();
    assert_eq!(
        query.sources,
        [
            Measure::Sum("revenue".into()),
            Measure::Uniq("user_id".into())
        ]
    );
    let defaults = Query::parse(&params(&[("view", "latency_by_type")]), &tenant, DAY_MS).unwrap();
    let names: Vec<String> = defaults.measures.iter().map(ToString::to_string).collect();
    assert_eq!(
        names,
        [
            "count",
            "p50(latency_ms)",
            "p90(latency_ms)",
            "p99(latency_ms)"
        ]
    );
    assert_eq!((defaults.from, defaults.to), (0, DAY_MS));

    for (pairs, expected) in [
        (
            vec![("view", "nope")],
            "no view 'nope'; the views are events_by_type",
        ),
        (
            vec![("view", "events_by_type"), ("group_by", "country")],
            "no dimension 'country'",
        ),
        (
            vec![("view", "events_by_type"), ("measures", "sum(revenue)")],
            "cannot answer sum(revenue)",
        ),
        (
            vec![("view", "events_by_type"), ("measures", "median(x)")],
            "is not one of count",
        ),
        (
            vec![("view", "events_by_type"), ("from", "2000"), ("to", "1000")],
            "is after the end",
        ),
        (
            vec![("view", "events_by_type"), ("measures", "count,count")],
            "measures names 'count' twice",
        ),
        (
            vec![
                ("view", "events_by_type"),
                ("group_by", "os_type,event_type,os_type"),
            ],
            "group_by names 'os_type' twice",
        ),
        (
            vec![
                ("view", "events_by_type"),
                ("filter", "os_type=ios,os_type=android"),
            ],
            "filter names 'os_type' twice",
        ),
        (
            vec![("view", "latency_by_type"), ("measures", &many_quantiles)],
            "one query may ask for at most 32",
        ),
        (
            vec![("view", "events_by_type"), ("granularity", "week")],
            "unknown granularity 'week'",
        ),
        (
            vec![("view", "events_by_type"), ("filter", "os_type")],
            "not of the form dimension=value",
        ),
        (
            vec![("view", "events_by_type"), ("from", "yesterday")],
            "from: 'yesterday'",
        ),
        (
            vec![
                ("view", "events_by_type"),
                ("from", "-9223372036854775808"),
                ("to", "9223372036854775807"),
            ],
            "outside the times Tally reads",
        ),
        (
            vec![
                ("view", "events_by_type"),
                ("from", "0"),
                ("to", "253402300799999"),
            ],
            "more than the 366.0 days allowed",
        ),
    ] {
        let err = Query::parse(&params(&pairs), &tenant, DAY_MS).unwrap_err();
        assert!(err.to_string().contains(expected), "{pairs:?}: {err}");
    }
}

#[test]
fn rolls_minutes_up_and_filters_and_groups() {
    let tenant = Tenant::demo();
    let query = Query::parse(
        &params(&[
            ("view", "events_by_type"),
            ("from", "0"),
            ("to", "7200000"),
            ("granularity", "hour"),
            ("group_by", "event_type"),
            ("filter", "os_type=ios"),
            ("measures", "count"),
        ]),
        &tenant,
        0,
    )
    .unwrap();
    let spec = &tenant.views[0];
    let projection = Projection::new(spec, &query).unwrap();
    let mut rollup = Rollup::new(&query);
    let state = |count| AggregateState {
        count,
        ..spec.empty_state()
    };
    let dims = |t: &str, os: &str| vec![t.to_owned(), os.to_owned()];
    for (bucket, dimensions, count) in [
        (0, dims("click", "ios"), 1),
        (60_000, dims("click", "ios"), 2),
        (60_000, dims("click", "android"), 100),
        (3_600_000, dims("click", "ios"), 4),
        (3_660_000, dims("view", "ios"), 8),
    ] {
        rollup
            .add(&projection, bucket, &dimensions, &state(count))
            .unwrap();
    }
    let rows: Vec<Value> = serde_json::from_str(&rollup.into_json(usize::MAX).unwrap()).unwrap();
    assert_eq!(
        rows,
        [
            json!({"bucket": "1970-01-01T00:00:00.000Z", "event_type": "click", "count": 3}),
            json!({"bucket": "1970-01-01T01:00:00.000Z", "event_type": "click", "count": 4}),
            json!({"bucket": "1970-01-01T01:00:00.000Z", "event_type": "view", "count": 8}),
        ]
    );
}

#[test]
fn filters_take_not_equal_value_lists_and_several_parameters() {
    let tenant = Tenant::demo();
    let spec = &tenant.views[0];
    let dims = |t: &str, os: &str| vec![t.to_owned(), os.to_owned()];
    let rows = [
        (dims("click", "ios"), 1),
        (dims("click", "android"), 2),
        (dims("click", "linux"), 4),
        (dims("view", "ios"), 8),
        (dims("view", "linux"), 16),
    ];
    let total = |filters: &[&str]| {
        let mut pairs = vec![
            ("view", "events_by_type"),
            ("from", "0"),
            ("to", "3600000"),
            ("granularity", "all"),
            ("measures", "count"),
        ];
        pairs.extend(filters.iter().map(|filter| ("filter", *filter)));
        let query = Query::parse(&params(&pairs), &tenant, 0).unwrap();
        let projection = Projection::new(spec, &query).unwrap();
        let mut rollup = Rollup::new(&query);
        for (dimensions, count) in &rows {
            let state = AggregateState {
                count: *count,
                ..spec.empty_state()
            };
            rollup.add(&projection, 0, dimensions, &state).unwrap();
        }
        let answer: Vec<Value> =
            serde_json::from_str(&rollup.into_json(usize::MAX).unwrap()).unwrap();
        answer
            .first()
            .map_or(0, |row| row["count"].as_u64().unwrap())
    };
    assert_eq!(total(&[]), 31);
    assert_eq!(total(&["os_type=ios"]), 9);
    assert_eq!(total(&["os_type!=ios"]), 22);
    assert_eq!(total(&["os_type=ios|android"]), 11, "any of");
    assert_eq!(total(&["os_type!=ios|android"]), 20, "none of");
    assert_eq!(
        total(&["os_type=ios|linux", "event_type!=view"]),
        5,
        "two parameters"
    );
    assert_eq!(
        total(&["os_type=ios|linux,event_type=view"]),
        24,
        "two in one"
    );
    assert_eq!(total(&["event_type=nothing"]), 0);
    for (query, expected) in [
        (
            "view=events_by_type&filter=os_type=ios&filter=os_type!=linux",
            "filter names 'os_type' twice",
        ),
        (
            "view=events_by_type&filter=!=ios",
            "not of the form dimension=value",
        ),
        (
            "view=events_by_type&filter=colour=red",
            "has no dimension 'colour'",
        ),
    ] {
        let err =
            Query::parse(&QueryParams::from_query(query).unwrap(), &tenant, DAY_MS).unwrap_err();
        assert!(err.to_string().contains(expected), "{query}: {err}");
    }
    for (query, expected) in [
        ("view=a&view=b", "duplicate field `view`"),
        ("view=a&colour=red", "unknown parameter `colour`"),
    ] {
        let err = QueryParams::from_query(query).unwrap_err();
        assert!(err.contains(expected), "{query}: {err}");
    }
}

#[test]
fn an_older_spec_without_a_dimension_says_so() {
    let tenant = Tenant::demo();
    let query = Query::parse(
        &params(&[("view", "events_by_type"), ("group_by", "os_type")]),
        &tenant,
        DAY_MS,
    )
    .unwrap();
    let mut older = tenant.views[0].clone();
    older.dimensions.retain(|d| d != "os_type");
    let lacking = Projection::new(&older, &query).err().unwrap();
    assert_eq!(lacking, Lacking::Dimension("os_type".into()));
    assert_eq!(lacking.to_string(), "dimension 'os_type'");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

    /// The rows serving writes by hand are the JSON serde_json would write for the same
    /// rows: any group values (quotes, escapes, any Unicode) and measures, sums and
    /// quantiles included.
    #[test]
    fn hand_written_rows_are_the_json_serde_writes(
        groups in proptest::collection::btree_map("\\PC{0,12}", (-1e6f64..1e6, 0u32..1000), 1..20),
    ) {
        let tenant = Tenant::demo();
        let query = Query::parse(
            &params(&[
                ("view", "revenue_by_country"),
                ("from", "0"),
                ("to", "3600000"),
                ("granularity", "hour"),
                ("group_by", "country"),
                ("measures", "count,sum(revenue),avg(revenue),max(revenue),uniq(user_id)"),
            ]),
            &tenant,
            0,
        )
        .unwrap();
        let spec = &tenant.views[1];
        let projection = Projection::new(spec, &query).unwrap();
        let mut rollup = Rollup::new(&query);
        let mut expected = std::collections::BTreeMap::new();
        for (country, (revenue, users)) in &groups {
            let mut state = spec.empty_state();
            for user in 0..=*users {
                let event = tally_model::Event {
                    event_id: format!("e{user}"),
                    event_type: "purchase".into(),
                    ts: 0,
                    tenant: "demo".into(),
                    user_id: format!("u{user}"),
                    tags: [("revenue".to_owned(), tally_model::TagValue::Number(*revenue))].into(),
                    received_at: 0,
                    source: "s".into(),
                };
                spec.accumulate(&mut state, &event);
            }
            rollup.add(&projection, 0, std::slice::from_ref(country), &state).unwrap();
            // The row's state: the view measures the query reads, as the roll-up keeps them.
            let mut projected = tally_model::StateMerger::new(&query.sources);
            projected.merge_projected(&state, projection.shape().2).unwrap();
            expected.insert(country.clone(), projected.finish());
        }
        let written = rollup.into_json(usize::MAX).unwrap();
        // serde_json writes the same rows, keys in the same order (a map serialized from
        // pairs); texts are compared, as parsing back may round a float by one ulp.
        struct InOrder(Vec<(String, Value)>);
        impl serde::Serialize for InOrder {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_map(self.0.iter().map(|(key, value)| (key, value)))
            }
        }
        let by_serde: Vec<InOrder> = expected
            .iter()
            .map(|(country, state)| {
                let mut row = vec![
                    ("bucket".to_owned(), json!("1970-01-01T00:00:00.000Z")),
                    ("country".to_owned(), json!(country)),
                ];
                for measure in &query.measures {
                    row.push((measure.to_string(), measure.value(state, &query.sources)));
                }
                InOrder(row)
            })
            .collect();
        proptest::prop_assert_eq!(written, serde_json::to_string(&by_serde).unwrap());
    }
}
