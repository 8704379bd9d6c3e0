//! Serving over real embedded stores: roll-ups against the direct computation, tenant
//! isolation, scopes, and the seed API's shapes; [`review`]: reviewing a view's fix.

mod review;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use actix_web::test as http;
use actix_web::{App, web};
use proptest::prelude::*;
use serde_json::Value;
use tally_connectors::batch_views::BatchViews;
use tally_connectors::catalog::{CatalogHandle, CatalogStore};
use tally_connectors::log::{AppendRecord, EventLog, Spool, SpoolOptions};
use tally_connectors::testing::{
    HookedViewStore, StoreCall, as_stored, deduplicated, demo_events, reference_states,
    sample_demo_events,
};
use tally_connectors::view_store::{EmbeddedViewStore, ViewStore};
use tally_model::config::ServingConfig;
use tally_model::tenant::DEMO_TENANT;
use tally_model::time::{DAY_MS, HOUR_MS};
use tally_model::{
    AggregateState, ApiKey, Catalog, Event, Granularity, Millis, RejectedEvent, Scope, Tenant,
};

use crate::query::{Projection, Query, QueryParams, Rollup};
use crate::raw::RawEvents;
use crate::{Serving, ServingMetrics};

/// 2026-11-22T00:00:00Z.
const BASE: Millis = 1_795_305_600_000;
const OTHER_TENANT: &str = "other";

fn logged(events: &[Event]) -> Vec<(u32, u64, Event)> {
    events
        .iter()
        .enumerate()
        .map(|(offset, event)| (0, offset as u64, event.clone()))
        .collect()
}

/// The name the demo view `events_by_type` keeps its real-time states under.
fn events_by_type_stored() -> String {
    Tenant::demo().views[0].stored_name()
}

fn params(pairs: &[(&str, &str)]) -> QueryParams {
    let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    QueryParams::from_query(&query.join("&")).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Minute states rolled up to hours, days and the whole range, directly or an hour at a
    /// time and then merged, give the same rows as folding the events straight into those
    /// buckets.
    #[test]
    fn roll_ups_equal_the_direct_computation(events in demo_events(BASE + 22 * HOUR_MS)) {
        let catalog = Catalog::demo("w", "r");
        let tenant = &catalog.tenants[DEMO_TENANT];
        let minute_states = reference_states(&catalog, logged(&events), Millis::MIN..Millis::MAX);
        let unique = deduplicated(logged(&events));
        let range = (BASE, BASE + 2 * DAY_MS);
        for view in &tenant.views {
            for granularity in ["minute", "hour", "day", "all"] {
                let group_by = view.dimensions.first().map_or("", String::as_str);
                let query = Query::parse(
                    &params(&[
                        ("view", &view.name),
                        ("from", &range.0.to_string()),
                        ("to", &range.1.to_string()),
                        ("granularity", granularity),
                        ("group_by", group_by),
                    ]),
                    tenant,
                    0,
                )
                .unwrap();
                let projection = Projection::new(view, &query).unwrap();
                let mut rollup = Rollup::new(&query);
                // The same states also rolled an hour at a time, then merged as serving
                // merges cached whole hours.
                let mut by_hour: BTreeMap<Millis, Rollup> = BTreeMap::new();
                for (key, state) in minute_states.iter().filter(|(k, _)| k.view == view.name) {
                    rollup.add(&projection, key.bucket, &key.dimensions, state).unwrap();
                    by_hour
                        .entry(Granularity::Hour.bucket_start(key.bucket))
                        .or_insert_with(|| Rollup::new(&query))
                        .add(&projection, key.bucket, &key.dimensions, state)
                        .unwrap();
                }
                let mut from_hours = Rollup::new(&query);
                let mut from_rendered = Rollup::new(&query);
                for (start, hour) in by_hour {
                    if granularity == "minute" || granularity == "hour" {
                        let mut rendered = Rollup::new(&query);
                        rendered.add_rolled(&Arc::new(hour.into_rolled())).unwrap();
                        from_rendered.add_rendered(start, Arc::new(rendered.render_fragment()));
                    } else {
                        from_hours.add_rolled(&Arc::new(hour.into_rolled())).unwrap();
                    }
                }
                let mut direct: HashMap<(Millis, Vec<String>), AggregateState> = HashMap::new();
                for event in unique.iter().filter(|e| view.covers(&e.event_type)) {
                    let bucket = match granularity {
                        "minute" => Granularity::Minute.bucket_start(event.ts),
                        "hour" => Granularity::Hour.bucket_start(event.ts),
                        "day" => Granularity::Day.bucket_start(event.ts),
                        _ => range.0,
                    };
                    let group = view.dimension_values(event).into_iter().take(1).collect();
                    let state = direct.entry((bucket, group)).or_insert_with(|| view.empty_state());
                    view.accumulate(state, event);
                }
                let mut expected = String::from("[");
                let mut direct: Vec<_> = direct.iter().collect();
                direct.sort_by_key(|(key, _)| *key);
                query.render_rows(&direct, &mut expected);
                expected.push(']');
                let parsed: Vec<serde_json::Value> = serde_json::from_str(&expected).unwrap();
                prop_assert_eq!(parsed.len(), direct.len());
                let from_hours = match granularity {
                    "minute" | "hour" => from_rendered.into_json(usize::MAX).unwrap(),
                    _ => from_hours.into_json(usize::MAX).unwrap(),
                };
                prop_assert_eq!(&from_hours, &expected);
                prop_assert_eq!(rollup.into_json(usize::MAX).unwrap(), expected);
            }
        }
    }
}

/// Two tenants with the demo registry and views; keys of each scope.
fn two_tenant_catalog() -> Catalog {
    let key = |key: &str, tenant: &str, scopes: Vec<Scope>| {
        ApiKey::new(key, tenant, &format!("{key}-source"), scopes)
    };
    Catalog::new(
        BTreeMap::from([
            (DEMO_TENANT.to_owned(), Tenant::demo()),
            (OTHER_TENANT.to_owned(), Tenant::demo()),
        ]),
        vec![
            key("demo-read", DEMO_TENANT, vec![Scope::Read]),
            key("demo-write", DEMO_TENANT, vec![Scope::Write]),
            key("other-read", OTHER_TENANT, vec![Scope::Read]),
            key("demo-admin", DEMO_TENANT, vec![Scope::Read, Scope::Admin]),
            key("other-admin", OTHER_TENANT, vec![Scope::Read, Scope::Admin]),
        ],
    )
    .unwrap()
}

/// Serving over a real view store, object store and spool holding both tenants' events: the
/// real-time store has their states, the log their raw events (nothing archived yet), the
/// rejected stream one reject of each, and governance saves to the object store.
struct Rig {
    _dir: tempfile::TempDir,
    serving: web::Data<Serving>,
    /// The real-time view store serving reads.
    store: Arc<EmbeddedViewStore>,
    events: BTreeMap<String, Vec<Event>>,
}

impl Rig {
    async fn new() -> Rig {
        Rig::with_limits(ServingConfig::default()).await
    }

    async fn with_limits(limits: ServingConfig) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let catalog = two_tenant_catalog();
        let demo = sample_demo_events(BASE);
        let other: Vec<Event> = sample_demo_events(BASE + HOUR_MS)
            .into_iter()
            .map(|mut event| {
                event.tenant = OTHER_TENANT.into();
                event
            })
            .collect();
        let spool = Spool::open(&dir.path().join("log"), SpoolOptions::default()).unwrap();
        let records = demo
            .iter()
            .chain(&other)
            .map(|e| AppendRecord::event(e, spool.partitions()))
            .collect();
        spool.append(records).await.unwrap();
        let store = Arc::new(EmbeddedViewStore::open(&dir.path().join("views.redb")).unwrap());
        let all: Vec<Event> = demo.iter().chain(&other).cloned().collect();
        let states = as_stored(
            &catalog,
            reference_states(&catalog, logged(&all), Millis::MIN..Millis::MAX),
        );
        store.upsert(&states).unwrap();
        let rejected = Spool::open(&dir.path().join("rejected"), SpoolOptions::default()).unwrap();
        let rejects = [DEMO_TENANT, OTHER_TENANT]
            .into_iter()
            .map(|tenant| AppendRecord {
                partition: 0,
                payload: serde_json::to_vec(&RejectedEvent {
                    tenant: tenant.to_owned(),
                    source: "web".to_owned(),
                    received_at: BASE,
                    index: 0,
                    reasons: vec![format!("a reject of {tenant}")],
                    codes: vec!["unknown_tag".to_owned()],
                    payload: "{}".to_owned(),
                })
                .unwrap(),
            })
            .collect();
        rejected.append(rejects).await.unwrap();
        let objects =
            tally_connectors::object_store::open_local(&dir.path().join("objects")).unwrap();
        let serving = Serving::new(
            CatalogHandle::new(catalog, 0),
            Some(CatalogStore::new(objects.clone())),
            store.clone(),
            BatchViews::with_cache(objects.clone(), 1 << 20),
            RawEvents::new(objects, Some(Arc::new(spool)), Some(Arc::new(rejected))),
            ServingMetrics::register(&mut Default::default()),
            limits,
        );
        Rig {
            _dir: dir,
            serving: web::Data::new(serving),
            store,
            events: BTreeMap::from([
                (DEMO_TENANT.to_owned(), demo),
                (OTHER_TENANT.to_owned(), other),
            ]),
        }
    }

    fn unique(&self, tenant: &str) -> Vec<Event> {
        let mut unique = deduplicated(logged(&self.events[tenant]));
        unique.sort_by(|a, b| (a.ts, &a.event_id).cmp(&(b.ts, &b.event_id)));
        unique
    }
}

async fn get(
    app: &impl actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse,
        Error = actix_web::Error,
    >,
    uri: &str,
    key: Option<&str>,
) -> (u16, Value) {
    send(app, http::TestRequest::get().uri(uri), key).await
}

async fn send(
    app: &impl actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse,
        Error = actix_web::Error,
    >,
    mut request: http::TestRequest,
    key: Option<&str>,
) -> (u16, Value) {
    if let Some(key) = key {
        request = request.insert_header(("Authorization", format!("Bearer {key}")));
    }
    let response = http::call_service(app, request.to_request()).await;
    let status = response.status().as_u16();
    let body = http::read_body(response).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn range_query(from: Millis, to: Millis) -> String {
    format!("start_time={}&end_time={}", from / 1000, to / 1000)
}

#[actix_web::test]
async fn a_read_key_sees_only_its_tenant_through_every_endpoint() {
    let rig = Rig::new().await;
    let app =
        http::init_service(App::new().configure(Serving::configure(rig.serving.clone()))).await;
    let whole = range_query(BASE - DAY_MS, BASE + DAY_MS);
    for (tenant, key) in [(DEMO_TENANT, "demo-read"), (OTHER_TENANT, "other-read")] {
        let unique = rig.unique(tenant);
        let uri = format!(
            "/v1/query?view=events_by_type&from={}&to={}&granularity=all",
            BASE - DAY_MS,
            BASE + DAY_MS
        );
        let (status, answer) = get(&app, &uri, Some(key)).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(
            answer["rows"][0]["count"],
            unique.len(),
            "{tenant}: {answer}"
        );

        let (status, count) = get(&app, &format!("/v1/events/count?{whole}"), Some(key)).await;
        assert_eq!(
            (status, &count["result"]),
            (200, &Value::from(unique.len())),
            "{count}"
        );

        let (_, found) = get(
            &app,
            &format!("/v1/events/search?{whole}&limit=1000"),
            Some(key),
        )
        .await;
        let found = found["result"].as_array().unwrap().clone();
        assert_eq!(found.len(), unique.len());
        assert!(
            found.iter().all(|event| event["tenant"] == tenant),
            "{tenant} saw another tenant's events"
        );
    }
}

#[actix_web::test]
async fn governance_shows_and_changes_only_the_keys_tenant() {
    let rig = Rig::new().await;
    let app =
        http::init_service(App::new().configure(Serving::configure(rig.serving.clone()))).await;
    for (tenant, key, other) in [
        (DEMO_TENANT, "demo-admin", OTHER_TENANT),
        (OTHER_TENANT, "other-admin", DEMO_TENANT),
    ] {
        let (status, overview) = get(&app, "/v1/governance", Some(key)).await;
        assert_eq!((status, &overview["tenant"]), (200, &Value::from(tenant)));
        let sources: Vec<&str> = overview["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["source"].as_str().unwrap())
            .collect();
        assert!(
            sources.iter().all(|s| s.starts_with(tenant)),
            "{tenant} sees keys {sources:?}"
        );
        let (_, rejected) = get(&app, "/v1/governance/rejected", Some(key)).await;
        assert_eq!(
            rejected,
            serde_json::json!([{"tenant": tenant, "source": "web", "received_at": BASE,
                "index": 0, "reasons": [format!("a reject of {tenant}")], "codes": ["unknown_tag"],
                "payload": "{}"}])
        );
        let (_, by_code) = get(&app, "/v1/governance/rejected?code=unknown_tag", Some(key)).await;
        assert_eq!(by_code, rejected);
        let (_, none) = get(&app, "/v1/governance/rejected?source=app", Some(key)).await;
        assert_eq!(none, serde_json::json!([]));
        let (status, _) = get(&app, "/v1/governance/rejected?colour=red", Some(key)).await;
        assert_eq!(status, 400, "an unknown parameter is refused");
        // The other tenant's key is not this admin's to delete, and stays valid.
        let (status, body) = send(
            &app,
            http::TestRequest::delete().uri(&format!("/v1/governance/keys/{other}-read-source")),
            Some(key),
        )
        .await;
        assert_eq!(status, 404, "{body}");
        let other_read = format!("{other}-read");
        assert_eq!(get(&app, "/v1/governance", Some(&other_read)).await.0, 200);
    }

    // A tag one admin adds is in that tenant's registry only.
    let (status, body) = send(
        &app,
        http::TestRequest::put()
            .uri("/v1/governance/tags/plan")
            .set_json(serde_json::json!({"type": "string"})),
        Some("other-admin"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, other) = get(&app, "/v1/governance", Some("other-admin")).await;
    let (_, demo) = get(&app, "/v1/governance", Some("demo-admin")).await;
    assert!(other["registry"]["tags"].get("plan").is_some(), "{other}");
    assert!(demo["registry"]["tags"].get("plan").is_none(), "{demo}");
    let (status, _) = send(
        &app,
        http::TestRequest::delete().uri("/v1/governance/tags/plan"),
        Some("demo-admin"),
    )
    .await;
    assert_eq!(
        status, 404,
        "the demo admin cannot delete the other tenant's tag"
    );
}

#[actix_web::test]
async fn governance_refuses_changes_that_would_break_ingestion_and_checks_the_key_first() {
    let rig = Rig::new().await;
    let app =
        http::init_service(App::new().configure(Serving::configure(rig.serving.clone()))).await;
    let put = |uri: &str, body: &str| {
        http::TestRequest::put()
            .uri(uri)
            .insert_header(("Content-Type", "application/json"))
            .set_payload(body.to_owned())
    };
    for (uri, body, reason) in [
        (
            "/v1/governance/tags/aaa_hijack",
            r#"{"type":"string","aliases":["os"]}"#,
            "alias 'os' is claimed by tags 'aaa_hijack' and 'os_type'",
        ),
        (
            "/v1/governance/tags/..%2F..%2Fetc",
            r#"{"type":"string"}"#,
            "tag name \"../../etc\" is not allowed",
        ),
        (
            "/v1/governance/tags/%3Cb%3Ex",
            r#"{"type":"string"}"#,
            "tag name \"<b>x\" is not allowed",
        ),
        (
            "/v1/governance/event-types/%20",
            r#"{}"#,
            "event type name \" \" is not allowed",
        ),
        (
            "/v1/governance/sources/a%2Fb",
            r#"{"event_types":["*"]}"#,
            "source name \"a/b\" is not allowed",
        ),
        (
            "/v1/governance/sources/web",
            r#"{"event_types":["purchase","purchace"]}"#,
            "event type 'purchace' is not registered",
        ),
        (
            "/v1/governance/views/counts_nothing",
            r#"{"name":"counts_nothing","events":[],"measures":["count"],"granularity":"hour"}"#,
            "lists no events",
        ),
        (
            "/v1/governance/views/answers_nothing",
            r#"{"name":"answers_nothing","events":["*"],"measures":[],"granularity":"hour"}"#,
            "lists no measures",
        ),
        (
            "/v1/governance/tags/fine",
            r#"{"type":"string","colour":1}"#,
            "the body is not a valid tag (JSON): unknown field `colour`",
        ),
        (
            "/v1/governance/tags/fine",
            r#"{"type":"#,
            "the body is not a valid tag (JSON)",
        ),
    ] {
        let (status, answer) = send(&app, put(uri, body), Some("demo-admin")).await;
        assert_eq!(status, 400, "{uri} {body}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(reason), "{uri} {body}: {answer}");
        // Without a key the same request learns only that it needs one.
        let (status, answer) = send(&app, put(uri, body), None).await;
        assert_eq!(status, 401, "{uri} {body} without a key: {answer}");
    }
    // Nothing was saved: `os` still means os_type.
    let (_, overview) = get(&app, "/v1/governance", Some("demo-admin")).await;
    assert!(overview["registry"]["tags"].get("aaa_hijack").is_none());
}

#[actix_web::test]
async fn keys_are_kept_as_hashes_shown_by_id_and_rotated_without_downtime() {
    let rig = Rig::new().await;
    let app =
        http::init_service(App::new().configure(Serving::configure(rig.serving.clone()))).await;
    let admin = |request: http::TestRequest| send(&app, request, Some("demo-admin"));
    let create_dash = || {
        admin(
            http::TestRequest::post()
                .uri("/v1/governance/keys")
                .set_json(serde_json::json!({"source": "dash", "scopes": ["read"]})),
        )
    };
    let rotate_dash = |query: &str| {
        admin(http::TestRequest::post().uri(&format!("/v1/governance/keys/dash/rotate{query}")))
    };
    let (status, created) = create_dash().await;
    assert_eq!(status, 200, "{created}");
    let old = created["key"].as_str().unwrap().to_owned();
    assert!(old.len() >= 32, "a generated secret has 128 bits: {old}");
    assert_eq!(get(&app, "/v1/governance", Some(&old)).await.0, 200);

    // Rotation: the new secret works at once, and so does the old one during the grace.
    let (status, rotated) = rotate_dash("?grace_secs=3600").await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["key"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(get(&app, "/v1/governance", Some(&new)).await.0, 200);
    assert_eq!(get(&app, "/v1/governance", Some(&old)).await.0, 200);
    let (_, overview) = get(&app, "/v1/governance", Some(&new)).await;
    let dash: Vec<&Value> = overview["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["source"] == "dash")
        .collect();
    assert_eq!(dash.len(), 2, "{overview}");
    assert_eq!(dash.iter().filter(|k| k["expires_at"].is_null()).count(), 1);
    let (status, again) = rotate_dash("").await;
    assert_eq!(status, 409, "{again}");
    // A rotation with no grace ends the old secret at once.
    let (status, _) = admin(http::TestRequest::delete().uri("/v1/governance/keys/dash")).await;
    assert_eq!(status, 200);
    let (_, recreated) = create_dash().await;
    let first = recreated["key"].as_str().unwrap().to_owned();
    let (_, rotated) = rotate_dash("?grace_secs=0").await;
    assert_eq!(get(&app, "/v1/governance", Some(&first)).await.0, 401);
    let last = rotated["key"].as_str().unwrap().to_owned();
    assert_eq!(get(&app, "/v1/governance", Some(&last)).await.0, 200);
    // Its grace over, the next rotation goes ahead at once: the expired secret is pruned
    // before the check, not by some later change.
    let (status, again) = rotate_dash("?grace_secs=0").await;
    assert_eq!(status, 200, "{again}");
    let last = again["key"].as_str().unwrap().to_owned();
    // A misspelt parameter is refused, not ignored with the default grace of a day.
    let (status, typo) = rotate_dash("?grace=5").await;
    assert_eq!(status, 400, "{typo}");
    assert!(typo["error"].as_str().unwrap().contains("grace"), "{typo}");
    // Keys are made for the admin key's own tenant, and each scope is listed once.
    for (body, reason) in [
        (
            serde_json::json!({"source": "x", "scopes": ["read"], "tenant": "other"}),
            "tenant",
        ),
        (
            serde_json::json!({"source": "x", "scopes": ["read", "read"]}),
            "given twice",
        ),
    ] {
        let (status, refused) = admin(
            http::TestRequest::post()
                .uri("/v1/governance/keys")
                .set_json(&body),
        )
        .await;
        assert_eq!(status, 400, "{body}: {refused}");
        assert!(
            refused["error"].as_str().unwrap().contains(reason),
            "{body}: {refused}"
        );
    }

    // Nothing Tally shows or keeps holds a secret, whole or in part.
    let (_, overview) = get(&app, "/v1/governance", Some("demo-admin")).await;
    let shown = overview.to_string();
    let mut kept = String::new();
    for entry in walk(rig._dir.path()) {
        kept.push_str(&String::from_utf8_lossy(&std::fs::read(entry).unwrap()));
    }
    assert!(kept.contains("secret_sha256"), "the catalog was saved");
    for secret in [&old, &new, &first, &last] {
        let head = &secret[..10];
        assert!(!shown.contains(head), "{head} shown in {shown}");
        assert!(!kept.contains(head), "{head} kept in the data directory");
    }
    for secret in ["demo-admin", "demo-read"] {
        assert!(!shown.contains(&format!("\"{secret}\"")), "{shown}");
    }
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[actix_web::test]
async fn scopes_are_enforced() {
    let rig = Rig::new().await;
    let app =
        http::init_service(App::new().configure(Serving::configure(rig.serving.clone()))).await;
    let whole = range_query(BASE, BASE + DAY_MS);
    for uri in [
        "/v1/query?view=events_by_type".to_owned(),
        format!("/v1/events/count?{whole}"),
        format!("/v1/events/search?{whole}"),
    ] {
        assert_eq!(get(&app, &uri, None).await.0, 401, "{uri} without a key");
        assert_eq!(
            get(&app, &uri, Some("made-up")).await.0,
            401,
            "{uri} with an unknown key"
        );
        let (status, body) = get(&app, &uri, Some("demo-write")).await;
        assert_eq!(status, 403, "{uri} with a write key");
        assert!(body.to_string().contains("lacks the read scope"), "{body}");
    }
}

#[actix_web::test]
async fn the_seed_api_keeps_its_shapes_and_pages_through_every_event_once() {
    let rig = Rig::new().await;
    let app =
        http::init_service(App::new().configure(Serving::configure(rig.serving.clone()))).await;
    let unique = rig.unique(DEMO_TENANT);
    let clicks = unique.iter().filter(|e| e.event_type == "click").count();

    // Aligned to minutes: answered from the view; unaligned: counted from raw events.
    for (from, to) in [(BASE, BASE + DAY_MS), (BASE + 1000, BASE + DAY_MS - 1000)] {
        let uri = format!(
            "/v1/events/count?event_type=click&{}",
            range_query(from, to)
        );
        let (status, body) = get(&app, &uri, Some("demo-read")).await;
        assert_eq!(status, 200);
        assert_eq!(body["result"], clicks, "{body}");
        assert_eq!(body["status"], "SUCCESS");
        assert!(body["timeStamp"].as_i64().unwrap() > 0);
    }

    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let uri = format!(
            "/v1/events/search?{}&limit=7{cursor}",
            range_query(BASE, BASE + DAY_MS)
        );
        let (status, body) = get(&app, &uri, Some("demo-read")).await;
        assert_eq!(
            (status, &body["status"]),
            (200, &Value::from("SUCCESS")),
            "{body}"
        );
        let page = body["result"].as_array().unwrap();
        assert!(page.len() <= 7);
        seen.extend(
            page.iter()
                .map(|e| e["event_id"].as_str().unwrap().to_owned()),
        );
        match body["nextCursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    let expected: Vec<String> = unique.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(seen, expected);

    for (uri, reason) in [
        (
            "/v1/events/count?start_time=10".to_owned(),
            "end_time is required",
        ),
        (
            "/v1/events/count?start_time=x&end_time=10".to_owned(),
            "not unix seconds",
        ),
        (
            "/v1/events/search?start_time=20&end_time=10".to_owned(),
            "is after the end",
        ),
        (
            "/v1/events/search?start_time=9223372036854775&end_time=9223372036854775".to_owned(),
            "outside the times Tally reads",
        ),
        (
            "/v1/events/count?start_time=-9223372036854775808&end_time=9223372036854775807"
                .to_owned(),
            "outside the times Tally reads",
        ),
        (
            "/v1/events/count?start_time=0&end_time=2678401".to_owned(),
            "more than the 31.0 days allowed",
        ),
        (
            format!(
                "/v1/events/search?{}&limit=0",
                range_query(BASE, BASE + HOUR_MS)
            ),
            "limit must be",
        ),
        (
            format!(
                "/v1/events/search?{}&cursor=zzz",
                range_query(BASE, BASE + HOUR_MS)
            ),
            "cursor 'zzz'",
        ),
    ] {
        let (status, body) = get(&app, &uri, Some("demo-read")).await;
        assert_eq!(
            (status, &body["status"]),
            (400, &Value::from("ERROR")),
            "{uri}: {body}"
        );
        assert!(
            body["error"].as_str().unwrap().contains(reason),
            "{uri}: {body}"
        );
    }
}

#[actix_web::test]
async fn an_answer_over_the_configured_size_is_refused_with_how_to_narrow_it() {
    let rig = Rig::with_limits(ServingConfig {
        max_answer_bytes: 2_000,
        ..ServingConfig::default()
    })
    .await;
    let app =
        http::init_service(App::new().configure(Serving::configure(rig.serving.clone()))).await;
    let range = format!("from={BASE}&to={}", BASE + DAY_MS);
    let (status, body) = get(
        &app,
        &format!("/v1/query?view=events_by_type&{range}&group_by=event_type,os_type"),
        Some("demo-read"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("over 2000 bytes") && error.contains("narrow it"),
        "{error}"
    );
    let (status, body) = get(
        &app,
        &format!("/v1/query?view=events_by_type&{range}&granularity=all&measures=count"),
        Some("demo-read"),
    )
    .await;
    assert_eq!(
        status, 200,
        "a narrower query of the same data fits: {body}"
    );
}

#[actix_web::test]
async fn queries_answer_per_minute_from_the_speed_views_and_refuse_mistakes_with_400() {
    let rig = Rig::new().await;
    let app =
        http::init_service(App::new().configure(Serving::configure(rig.serving.clone()))).await;
    let uri = format!(
        "/v1/query?view=revenue_by_country&from={BASE}&to={}&measures=count,avg(revenue),max(revenue)",
        BASE + DAY_MS
    );
    let (status, answer) = get(&app, &uri, Some("demo-read")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["granularity"], "minute");
    assert_eq!(
        answer["horizon"],
        Value::Null,
        "no batch run has published a horizon"
    );
    assert_eq!(answer["sources"]["speed"][0], "2026-11-22T00:00:00.000Z");
    let purchases = rig
        .unique(DEMO_TENANT)
        .into_iter()
        .filter(|e| e.event_type == "purchase")
        .count();
    let rows = answer["rows"].as_array().unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| r["count"].as_u64().unwrap())
            .sum::<u64>(),
        purchases as u64
    );
    assert!(
        rows.iter()
            .all(|r| r["bucket"].as_str().unwrap().ends_with(":00.000Z")
                && r["avg(revenue)"].is_f64())
    );

    for (query, reason) in [
        ("view=nope", "no view 'nope'"),
        (
            "view=events_by_type&measures=p99(latency_ms)",
            "cannot answer p99(latency_ms)",
        ),
        (
            "view=events_by_type&group_by=colour",
            "no dimension 'colour'",
        ),
        ("view=events_by_type&from=2000&to=1000", "is after the end"),
        (
            "view=events_by_type&from=-9223372036854775808&to=9223372036854775807",
            "outside the times Tally reads",
        ),
        (
            "view=events_by_type&measures=count,count,count",
            "measures names 'count' twice",
        ),
    ] {
        let (status, body) = get(&app, &format!("/v1/query?{query}"), Some("demo-read")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(reason),
            "{query}: {body}"
        );
    }
}

#[actix_web::test]
async fn an_answer_shows_the_real_time_writes_made_since_the_last_one() {
    let rig = Rig::new().await;
    let app =
        http::init_service(App::new().configure(Serving::configure(rig.serving.clone()))).await;
    let uri = format!(
        "/v1/query?view=events_by_type&from={BASE}&to={}&measures=count",
        BASE + DAY_MS
    );
    let total = |answer: &Value| -> u64 {
        let rows = answer["rows"].as_array().unwrap();
        rows.iter().map(|r| r["count"].as_u64().unwrap()).sum()
    };
    let (_, first) = get(&app, &uri, Some("demo-read")).await;
    let (_, again) = get(&app, &uri, Some("demo-read")).await;
    assert_eq!(again, first, "nothing written, the same answer");
    // The speed layer rewrites a state with one more event in it.
    let mut states = rig
        .store
        .scan(DEMO_TENANT, &events_by_type_stored(), BASE..BASE + DAY_MS)
        .unwrap();
    let (key, mut state) = states.remove(0);
    state.count += 1;
    rig.store.upsert(&[(key, state)]).unwrap();
    let (_, after) = get(&app, &uri, Some("demo-read")).await;
    assert_eq!(total(&after), total(&first) + 1);
}

/// A manifest of `events_by_type` whose hours `[BASE, BASE + hours h)` hold `states`.
async fn publish_batch_hours(
    views: &BatchViews,
    states: &BTreeMap<tally_connectors::view_store::ViewKey, AggregateState>,
    hours: i64,
) {
    use tally_model::manifest::{HourEntry, Manifest, RawInputs, ViewManifest, view_id};
    let spec = Tenant::demo().views[0].clone();
    let mut entry = ViewManifest::new(DEMO_TENANT, &spec);
    for hour in (0..hours).map(|h| BASE + h * HOUR_MS) {
        let rows: Vec<_> = states
            .iter()
            .filter(|(key, _)| {
                key.view == spec.name && (hour..hour + HOUR_MS).contains(&key.bucket)
            })
            .map(|(key, state)| (key.bucket, key.dimensions.clone(), state.clone()))
            .collect();
        let path = tally_model::layout::view_object_path(
            DEMO_TENANT,
            &spec.name,
            1,
            hour,
            hours as u64,
            0,
        );
        views
            .write_states(&path, &spec.dimensions, &rows)
            .await
            .unwrap();
        let hour_entry = HourEntry {
            logic_version: 1,
            object: Some(path),
            rows: rows.len() as u64,
            events: 0,
            inputs: RawInputs::default(),
        };
        entry.hours.insert(hour, hour_entry);
    }
    entry.horizon = BASE + hours * HOUR_MS;
    let manifest = Manifest {
        generation: hours as u64,
        published_at: 0,
        horizon: entry.horizon,
        views: BTreeMap::from([(view_id(DEMO_TENANT, &spec.name), entry)]),
    };
    views.publish(&manifest).await.unwrap();
}

#[actix_web::test]
async fn a_horizon_move_between_the_reads_of_a_query_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::demo("w", "demo-read");
    let events = sample_demo_events(BASE);
    let states = reference_states(&catalog, logged(&events), Millis::MIN..Millis::MAX);
    let objects = tally_connectors::object_store::open_local(dir.path()).unwrap();
    let views = BatchViews::new(objects.clone());
    publish_batch_hours(&views, &states, 1).await;
    let store = EmbeddedViewStore::open(&dir.path().join("views.redb")).unwrap();
    let speed_states = as_stored(
        &catalog,
        states
            .iter()
            .filter(|(key, _)| key.bucket >= BASE + HOUR_MS)
            .map(|(key, state)| (key.clone(), state.clone())),
    );
    store.upsert(&speed_states).unwrap();
    let (moved_views, moved_states) = (views.clone(), states.clone());
    // The first scan is preceded by the batch layer publishing a later horizon and the speed
    // layer dropping what fell below it: the interleaving the order of reads in
    // `Serving::query` must survive.
    type HorizonMove = Box<dyn FnOnce(&dyn ViewStore) + Send>;
    let on_first_scan: std::sync::Mutex<Option<HorizonMove>> =
        std::sync::Mutex::new(Some(Box::new(move |store: &dyn ViewStore| {
            // The batch layer publishes horizon BASE + 2 h, then the speed layer drops below it.
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(publish_batch_hours(&moved_views, &moved_states, 2));
            })
            .join()
            .unwrap();
            store
                .delete_before(DEMO_TENANT, &events_by_type_stored(), BASE + 2 * HOUR_MS)
                .unwrap();
        })));
    let store = HookedViewStore {
        inner: Arc::new(store),
        hook: Box::new(move |call, inner| {
            if call == StoreCall::Scan
                && let Some(move_horizon) = on_first_scan.lock().unwrap().take()
            {
                move_horizon(inner);
            }
            Ok(())
        }),
    };
    let serving = Arc::new(Serving::new(
        CatalogHandle::new(catalog, 0),
        None,
        Arc::new(store),
        views,
        RawEvents::new(objects, None, None),
        ServingMetrics::register(&mut Default::default()),
        Default::default(),
    ));
    let params = params(&[
        ("view", "events_by_type"),
        ("from", &BASE.to_string()),
        ("to", &(BASE + 4 * HOUR_MS).to_string()),
        ("granularity", "all"),
        ("measures", "count"),
    ]);
    let answer = serving.query(DEMO_TENANT, &params).await.unwrap();
    assert_eq!(
        answer.sources.batch[1], "2026-11-22T02:00:00.000Z",
        "the later horizon is used"
    );
    assert_eq!(
        answer.rows.values()[0]["count"],
        deduplicated(logged(&events)).len()
    );
}

/// A raw search page reads from the cursor's hour until the page is full, not the whole
/// range: a month-long range costs the hours a page spans.
#[actix_web::test]
async fn a_raw_search_page_reads_only_the_hours_it_needs() {
    let rig = Rig::new().await;
    let unique = rig.unique(DEMO_TENANT);
    let first_hour = Granularity::Hour.bucket_start(unique[0].ts);
    let last_hour = Granularity::Hour.bucket_start(unique.last().unwrap().ts);
    assert!(last_hour > first_hour, "the sample spans hours");
    let filter = |start| crate::raw::RawFilter {
        tenant: DEMO_TENANT,
        event_type: None,
        user_id: None,
        range: start..BASE + 30 * DAY_MS,
    };
    let raw = rig.serving.raw();
    let (page, next, scanned) = crate::seed::raw_page(raw, filter(BASE), None, 1)
        .await
        .unwrap();
    assert_eq!(page[0].event_id, unique[0].event_id);
    assert!(next.is_some());
    let before_first = usize::try_from((first_hour - BASE) / HOUR_MS).unwrap();
    assert_eq!(
        scanned.hours,
        before_first + 1,
        "the empty hours before it, then its own"
    );

    // From a cursor in the last hour, the page starts there.
    let last = &unique[unique.len() - 2];
    let after = Some((last.ts, last.event_id.clone()));
    let (page, next, scanned) = crate::seed::raw_page(raw, filter(BASE), after, 5)
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].event_id, unique.last().unwrap().event_id);
    assert_eq!(next, None);
    // The rest of the 30 days are read to find there is nothing more.
    let to_the_end =
        usize::try_from((BASE + 30 * DAY_MS - Granularity::Hour.bucket_start(last.ts)) / HOUR_MS)
            .unwrap();
    assert_eq!(scanned.hours, to_the_end);
}

/// While the speed layer builds a changed view's states, queries answer from the spec it
/// records as live; what only the new spec has gets a 503 that says why, never an empty
/// answer; once the record names the new spec, its states answer.
#[actix_web::test]
async fn a_changed_view_answers_from_the_live_spec_until_the_new_one_is_built() {
    use tally_connectors::view_store::live::{self, LiveViews};
    let rig = Rig::new().await;
    let app =
        http::init_service(App::new().configure(Serving::configure(rig.serving.clone()))).await;
    live::write(rig.store.as_ref(), &LiveViews::of(&two_tenant_catalog(), 0)).unwrap();
    let mut changed = Tenant::demo().views[0].clone();
    changed.dimensions.push("country".into());
    let mut added = changed.clone();
    added.name = "clicks_by_country".into();
    added.dimensions = vec!["country".into()];
    for spec in [&changed, &added] {
        let request = http::TestRequest::put()
            .uri(&format!("/v1/governance/views/{}", spec.name))
            .set_payload(serde_json::to_vec(spec).unwrap());
        let (status, body) = send(&app, request, Some("demo-admin")).await;
        assert_eq!(status, 200, "{body}");
    }
    let range = format!("from={BASE}&to={}&granularity=all", BASE + DAY_MS);
    let total = |answer: &Value| -> u64 {
        let rows = answer["rows"].as_array().unwrap();
        rows.iter().map(|r| r["count"].as_u64().unwrap()).sum()
    };
    let events = rig.unique(DEMO_TENANT).len() as u64;
    let by_type = format!("/v1/query?view=events_by_type&{range}&measures=count");
    let (status, answer) = get(&app, &by_type, Some("demo-read")).await;
    assert_eq!((status, total(&answer)), (200, events), "{answer}");
    let by_country = format!("{by_type}&group_by=country");
    let new_view = format!("/v1/query?view=clicks_by_country&{range}");
    for (uri, reason) in [
        (&by_country, "has no dimension 'country'"),
        (&new_view, "view 'clicks_by_country' is new"),
    ] {
        let (status, answer) = get(&app, uri, Some("demo-read")).await;
        assert_eq!(status, 503, "{uri}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(reason),
            "{uri}: {answer}"
        );
    }

    // The speed layer has built the new specs: their states, then the record.
    let catalog = rig.serving.catalog.current();
    let mut demo_only = (*catalog).clone();
    demo_only.tenants.retain(|tenant, _| tenant == DEMO_TENANT);
    let states = as_stored(
        &demo_only,
        reference_states(
            &demo_only,
            logged(&rig.events[DEMO_TENANT]),
            Millis::MIN..Millis::MAX,
        ),
    );
    rig.store.upsert(&states).unwrap();
    live::write(rig.store.as_ref(), &LiveViews::of(&catalog, 1)).unwrap();
    let started = std::time::Instant::now();
    let answer = loop {
        let (status, answer) = get(&app, &by_country, Some("demo-read")).await;
        if status == 200 {
            break answer;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "the new spec never answered: {answer}"
        );
        tokio::task::yield_now().await;
    };
    assert_eq!(total(&answer), events, "{answer}");
    let (status, answer) = get(&app, &new_view, Some("demo-read")).await;
    assert_eq!(status, 200, "{answer}");
}

/// The seed API refuses what it cannot answer rightly: a misspelled parameter (ignored, it
/// counted every event) and an unknown event type (it counted 0) get a 400 that says what
/// to send; an event type's alias counts the type.
#[actix_web::test]
async fn the_seed_api_refuses_unknown_parameters_and_event_types_and_reads_aliases() {
    let rig = Rig::new().await;
    let app =
        http::init_service(App::new().configure(Serving::configure(rig.serving.clone()))).await;
    let purchases = rig
        .unique(DEMO_TENANT)
        .iter()
        .filter(|e| e.event_type == "purchase")
        .count();
    let range = range_query(BASE, BASE + DAY_MS);
    for route in ["count", "search"] {
        for (query, reason) in [
            ("evnt_type=purchase", "unknown field `evnt_type`"),
            ("event_type=purchse", "did you mean 'purchase'?"),
        ] {
            let uri = format!("/v1/events/{route}?{query}&{range}");
            let (status, body) = get(&app, &uri, Some("demo-read")).await;
            assert_eq!(status, 400, "{uri}: {body}");
            assert!(
                body["error"].as_str().unwrap().contains(reason),
                "{uri}: {body}"
            );
        }
    }
    let uri = format!("/v1/events/count?event_type=Order%20Completed&{range}");
    let (status, body) = get(&app, &uri, Some("demo-read")).await;
    assert_eq!(
        (status, &body["result"]),
        (200, &Value::from(purchases)),
        "{body}"
    );
}

/// A write key whose source may publish nothing is refused every event: its creation says so
/// and how to allow some, or sets the permissions it is given with it.
#[actix_web::test]
async fn a_new_write_key_says_what_its_source_may_publish_or_sets_it() {
    let rig = Rig::new().await;
    let app =
        http::init_service(App::new().configure(Serving::configure(rig.serving.clone()))).await;
    let create = |body: Value| {
        http::TestRequest::post()
            .uri("/v1/governance/keys")
            .set_payload(body.to_string())
    };
    let (status, answer) = send(
        &app,
        create(serde_json::json!({"source": "ios-app", "scopes": ["write"]})),
        Some("demo-admin"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["publishes"], serde_json::json!([]), "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("may not publish any event type yet")
            && message.contains("PUT /v1/governance/sources/ios-app"),
        "{message}"
    );
    let (status, answer) = send(
        &app,
        create(
            serde_json::json!({"source": "android-app", "scopes": ["write"], "publishes": ["*"]}),
        ),
        Some("demo-admin"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["publishes"], serde_json::json!(["*"]), "{answer}");
    let registry = &rig.serving.catalog.current().tenants[DEMO_TENANT].registry;
    assert!(registry.may_publish("android-app", "click"));
    assert!(!registry.may_publish("ios-app", "click"));
}

/// A time in the wrong unit is named as such: seconds where the query API reads
/// milliseconds (it read a range in January 1970, or one of 20,000 days), milliseconds where
/// the seed API reads seconds.
#[actix_web::test]
async fn a_time_in_the_wrong_unit_is_refused_naming_the_unit() {
    let rig = Rig::new().await;
    let app =
        http::init_service(App::new().configure(Serving::configure(rig.serving.clone()))).await;
    let now = tally_model::time::now_millis();
    let seconds = now / 1000;
    for (uri, reason) in [
        (
            format!("/v1/query?view=events_by_type&from={seconds}"),
            "looks like unix seconds; it is in epoch milliseconds",
        ),
        (
            format!(
                "/v1/query?view=events_by_type&from={}&to={seconds}",
                seconds - 60
            ),
            "looks like unix seconds; it is in epoch milliseconds",
        ),
        (
            format!(
                "/v1/events/count?start_time={}&end_time={now}",
                now - 60_000
            ),
            "looks like epoch milliseconds, and the value is unix seconds",
        ),
    ] {
        let (status, body) = get(&app, &uri, Some("demo-read")).await;
        assert_eq!(status, 400, "{uri}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(reason),
            "{uri}: {body}"
        );
    }
}

#[actix_web::test]
async fn a_tenant_may_change_its_governance_only_so_often() {
    let rig = Rig::new().await;
    let app =
        http::init_service(App::new().configure(Serving::configure(rig.serving.clone()))).await;
    let change = |n: u32| {
        http::TestRequest::put()
            .uri(&format!("/v1/governance/tags/tag_{n}"))
            .set_json(serde_json::json!({"type": "string"}))
    };
    let limit = tally_connectors::rate_limit::GOVERNANCE_CHANGES_PER_MINUTE;
    for n in 0..limit {
        let (status, answer) = send(&app, change(n), Some("demo-admin")).await;
        assert_eq!(status, 200, "change {n}: {answer}");
    }
    // Each change writes a whole catalog generation: past the budget, the tenant waits.
    let (status, refused) = send(&app, change(limit), Some("demo-admin")).await;
    assert_eq!(status, 429, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("retry after"),
        "{refused}"
    );
}

#[actix_web::test]
async fn a_view_the_batch_layer_cannot_recompute_is_refused_where_its_hours_are_missing() {
    use tally_model::manifest::{Manifest, ViewManifest, view_id};
    let rig = Rig::new().await;
    let app =
        http::init_service(App::new().configure(Serving::configure(rig.serving.clone()))).await;
    // The batch layer moved the horizon on without this view: its hours stop an hour in.
    let spec = Tenant::demo().views[0].clone();
    let mut entry = ViewManifest::new(DEMO_TENANT, &spec);
    entry.horizon = BASE + HOUR_MS;
    entry.failing = Some("a plan error".to_owned());
    let manifest = Manifest {
        generation: 1,
        published_at: 0,
        horizon: BASE + 3 * HOUR_MS,
        views: BTreeMap::from([(view_id(DEMO_TENANT, &spec.name), entry)]),
    };
    rig.serving.batch_views.publish(&manifest).await.unwrap();
    let query = |from: Millis, to: Millis| {
        format!(
            "/v1/query?view={}&from={from}&to={to}&granularity=all",
            spec.name
        )
    };
    let (status, refused) = get(&app, &query(BASE, BASE + 4 * HOUR_MS), Some("demo-read")).await;
    assert_eq!(status, 503, "{refused}");
    let error = refused["error"].as_str().unwrap();
    assert!(
        error.contains("cannot be recomputed by the batch layer (a plan error)"),
        "{error}"
    );
    // From the horizon on, the speed layer answers it whole.
    let (status, answer) = get(
        &app,
        &query(BASE + 3 * HOUR_MS, BASE + 4 * HOUR_MS),
        Some("demo-read"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    // The console is told which view fails, and why.
    let (_, overview) = get(&app, "/v1/governance", Some("demo-read")).await;
    assert_eq!(
        overview["failing_views"][&spec.name], "a plan error",
        "{overview}"
    );
}
