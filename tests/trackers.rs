//! The trackers' official SDKs, unchanged, against a running `tally up`: Segment's Python and
//! Node SDKs, RudderStack's Python SDK (which gzips), and Snowplow's Python tracker by POST
//! and by GET (tests/trackers/). Each must report no failure, and Tally's read APIs (search,
//! count, query) must then show each event once, resends included, with the right type,
//! user and tags; the one call the registry does not know is in the rejected stream with
//! its reason, and did not make its SDK fail or retry.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use tally_model::time::now_millis;

use crate::support::{ADMIN_KEY, READ_KEY, Tally, WRITE_KEY};

fn sdk_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/trackers"))
}

/// What a registry needs for these SDKs beyond the demo's: the context fields the apps
/// send, kept by alias, and the event types of the calls other than track and page.
fn govern(up: &Tally) {
    let authorization = format!("Bearer {ADMIN_KEY}");
    let changes = [
        (
            "tags/os_type",
            json!({"type": "string", "aliases": ["os", "context.os.name", "context.device.os"]}),
        ),
        ("tags/se_category", json!({"type": "string"})),
        ("tags/se_action", json!({"type": "string"})),
        ("event-types/screen_view", json!({"optional": ["os_type"]})),
        ("event-types/identify", json!({"optional": ["country"]})),
        (
            "event-types/structured_event",
            json!({"required": ["se_category", "se_action"]}),
        ),
    ];
    for (path, body) in changes {
        let (status, reply) = up.http(
            "PUT",
            &format!("/v1/governance/{path}"),
            &[
                ("Authorization", &authorization),
                ("Content-Type", "application/json"),
            ],
            &body.to_string(),
        );
        assert_eq!(status, 200, "{path}: {reply}");
    }
}

/// Runs one SDK script against `up`; its JSON report, which must list no failure.
fn run_sdk(up: &Tally, program: &str, script: &str) -> Value {
    let output = Command::new(program)
        .arg(sdk_dir().join(script))
        .env("TALLY_URL", format!("http://{}", up.address))
        .env("TALLY_WRITE_KEY", WRITE_KEY)
        .current_dir(sdk_dir())
        .output()
        .unwrap_or_else(|err| {
            panic!("{program} {script} does not run ({err}); .ci/run installs it")
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} reported failures ({}): {stdout}\n{stderr}\nIf a module is missing: python3 -m pip install -r tests/trackers/requirements.txt && npm ci --prefix tests/trackers",
        output.status
    );
    let report: Value = serde_json::from_str(stdout.trim().lines().last().unwrap_or_default())
        .unwrap_or_else(|err| panic!("{script} printed no report ({err}): {stdout}"));
    assert_eq!(report["failures"], json!([]), "{script}");
    report
}

/// The events expected once each: id → (type, user, tags).
fn expected(snowplow: &Value) -> BTreeMap<String, (&'static str, &'static str, Value)> {
    let sp = |name: &str| snowplow[name].as_str().unwrap().to_owned();
    BTreeMap::from([
        (
            "seg-py-1".into(),
            (
                "purchase",
                "u-seg-py",
                json!({"revenue": 12.5, "os_type": "iOS"}),
            ),
        ),
        (
            "seg-py-2".into(),
            (
                "page_view",
                "u-seg-py",
                json!({"url": "https://shop.example/"}),
            ),
        ),
        ("seg-py-3".into(), ("screen_view", "anon-seg-py", json!({}))),
        (
            "seg-py-4".into(),
            ("identify", "u-seg-py", json!({"country": "FR"})),
        ),
        ("seg-py-5".into(), ("click", "u-mixed", json!({}))),
        ("seg-py-6".into(), ("click", "u-mixed", json!({}))),
        (
            "seg-node-1".into(),
            (
                "purchase",
                "u-seg-node",
                json!({"revenue": 20.0, "os_type": "macOS"}),
            ),
        ),
        (
            "seg-node-2".into(),
            (
                "page_view",
                "u-seg-node",
                json!({"url": "https://shop.example/node"}),
            ),
        ),
        (
            "seg-node-3".into(),
            ("identify", "u-seg-node", json!({"country": "DE"})),
        ),
        (
            "rs-py-1".into(),
            ("purchase", "u-rs-py", json!({"revenue": 7.0})),
        ),
        (
            "rs-py-2".into(),
            (
                "page_view",
                "u-rs-py",
                json!({"url": "https://shop.example/rs"}),
            ),
        ),
        (
            sp("page_view"),
            (
                "page_view",
                "u-sp",
                json!({"url": "https://shop.example/sp"}),
            ),
        ),
        (
            sp("purchase"),
            (
                "purchase",
                "u-sp",
                json!({"revenue": 30.0, "os_type": "android"}),
            ),
        ),
        (
            sp("structured_event"),
            (
                "structured_event",
                "u-sp",
                json!({"se_category": "shop", "se_action": "add"}),
            ),
        ),
        (
            sp("resent"),
            (
                "page_view",
                "u-sp",
                json!({"url": "https://shop.example/again"}),
            ),
        ),
        (
            sp("get"),
            (
                "page_view",
                "u-sp-get",
                json!({"url": "https://shop.example/get"}),
            ),
        ),
        (
            sp("get_aid"),
            (
                "page_view",
                "u-sp-get",
                json!({"url": "https://shop.example/aid"}),
            ),
        ),
    ])
}

#[test]
fn the_official_sdks_send_to_tally_unchanged_and_each_event_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    let up = Tally::up(dir.path());
    govern(&up);
    let started = now_millis();
    let python = std::env::var("TALLY_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let report = run_sdk(&up, &python, "python_sdks.py");
    run_sdk(&up, "node", "segment_node.mjs");
    let expected = expected(&report["snowplow"]);
    let authorization = format!("Bearer {READ_KEY}");
    let get = |path: &str| {
        let (status, body) = up.http("GET", path, &[("Authorization", &authorization)], "");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str::<Value>(&body).unwrap()
    };
    let (from, to) = (started / 1000 - 3600, now_millis() / 1000 + 60);

    // Search: every event once, with its type, user and tags.
    let mut found: BTreeMap<String, (String, String, Value)> = BTreeMap::new();
    for event_type in [
        "purchase",
        "page_view",
        "screen_view",
        "identify",
        "structured_event",
        "click",
    ] {
        let page = get(&format!(
            "/v1/events/search?event_type={event_type}&start_time={from}&end_time={to}&limit=1000"
        ));
        for event in page["result"].as_array().unwrap() {
            let id = event["event_id"].as_str().unwrap().to_owned();
            let seen = (
                event["event_type"].as_str().unwrap().to_owned(),
                event["user_id"].as_str().unwrap().to_owned(),
                event["tags"].clone(),
            );
            assert!(found.insert(id.clone(), seen).is_none(), "{id} found twice");
        }
    }
    let wanted: BTreeMap<String, (String, String, Value)> = expected
        .iter()
        .map(|(id, (kind, user, tags))| {
            (
                id.clone(),
                ((*kind).to_owned(), (*user).to_owned(), tags.clone()),
            )
        })
        .collect();
    assert_eq!(found, wanted);

    // Count: the four purchases, each SDK's resend counted once.
    let count = get(&format!(
        "/v1/events/count?event_type=purchase&start_time={from}&end_time={to}"
    ));
    assert_eq!(count["result"], 4, "{count}");

    // Query: the real-time view counts each event once, by type.
    let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
    for (kind, _, _) in expected.values() {
        *by_type.entry((*kind).to_owned()).or_default() += 1;
    }
    let view_counts = || {
        let answer = get(&format!(
            "/v1/query?view=events_by_type&from={}&to={}&granularity=hour&group_by=event_type&measures=count",
            from * 1000,
            to * 1000
        ));
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for row in answer["rows"].as_array().unwrap() {
            *counts
                .entry(row["event_type"].as_str().unwrap().to_owned())
                .or_default() += row["count"].as_u64().unwrap();
        }
        counts
    };
    up.wait_for(
        "the view to count every event",
        Duration::from_secs(30),
        |_| view_counts() == by_type,
    );

    // The mixed batch's unknown call: in the rejected stream, with its reason.
    let admin = format!("Bearer {ADMIN_KEY}");
    let (status, rejected) = up.http(
        "GET",
        "/v1/governance/rejected",
        &[("Authorization", &admin)],
        "",
    );
    assert_eq!(status, 200);
    let rejected: Value = serde_json::from_str(&rejected).unwrap();
    let rejects = rejected.as_array().unwrap();
    assert_eq!(rejects.len(), 1, "{rejected}");
    assert!(
        rejects[0]["payload"]
            .as_str()
            .unwrap()
            .contains("seg-py-bad")
    );
    assert_eq!(
        rejects[0]["reasons"],
        json!(["unknown event type 'Refund Issued'"])
    );
}

/// The registry docs/trackers.md gives for a Segment tracking plan is a valid configuration,
/// and says what the page says: `Order Completed` is a purchase, `context.os.name` the OS.
#[test]
fn the_tracking_plan_registry_in_the_docs_is_valid_and_maps_as_it_says() {
    let page =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/trackers.md")).unwrap();
    let toml = page
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/trackers.md has a TOML registry");
    let config = tally_model::Config::parse(toml, std::iter::empty()).expect("it parses");
    let registry = &config.tenants["shop"].registry;
    registry.check().expect("it is consistent");
    assert_eq!(
        registry.canonical_event_type("Order Completed"),
        Some("purchase")
    );
    assert_eq!(registry.canonical_tag("context.os.name"), Some("os_type"));
}

/// `tally gen --format segment` sends what Segment's SDKs send, to `/v1/batch`: every valid
/// event is accepted, and the invalid share is rejected (the benchmark of docs/performance.md
/// drives the same load).
#[test]
fn the_generator_speaks_segment() {
    let dir = tempfile::tempdir().unwrap();
    let up = Tally::up(dir.path());
    let output = crate::support::run(up.generator().args([
        "--events",
        "1000",
        "--format",
        "segment",
        "--invalid",
        "0.1",
        "--seed",
        "3",
        "--json",
    ]));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let (accepted, rejected) = (
        report["accepted"].as_u64().unwrap(),
        report["rejected"].as_u64().unwrap(),
    );
    assert_eq!(accepted + rejected, 1000, "{report}");
    assert!(
        (50..150).contains(&rejected),
        "about a tenth rejected: {report}"
    );
    assert_eq!(up.accepted(), accepted, "as the collector counts them");
}
