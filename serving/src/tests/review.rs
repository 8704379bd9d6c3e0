//! Reviewing a view's fix through the API: `logic_version=` on queries reads staged or live
//! batch hours alone; the versions, reprocess, promote and jobs routes check what they are
//! asked, queue bounded jobs, and show each tenant only its own.

use actix_web::App;
use actix_web::test as http;
use serde_json::{Value, json};
use tally_connectors::batch_views::BatchViews;
use tally_connectors::jobs::MAX_UNFINISHED;
use tally_connectors::testing::reference_states;
use tally_model::manifest::view_id;
use tally_model::tenant::DEMO_TENANT;
use tally_model::time::HOUR_MS;
use tally_model::{Millis, Tenant};

use super::{BASE, Rig, get, logged, publish_batch_hours, send};
use crate::Serving;

/// Publishes two live hours of `events_by_type` (version 1) and the second hour staged again
/// as version 2, the same spec; version 3 is registered with another spec.
async fn staged_manifest(rig: &Rig) -> BatchViews {
    let objects = tally_connectors::object_store::open_local(&rig._dir.path().join("objects"));
    let views = BatchViews::new(objects.unwrap());
    let catalog = rig.serving.catalog.current();
    let events = &rig.events[DEMO_TENANT];
    let states = reference_states(&catalog, logged(events), Millis::MIN..Millis::MAX);
    publish_batch_hours(&views, &states, 2).await;
    let mut manifest = views.manifest().await.unwrap().unwrap();
    let spec = Tenant::demo().views[0].clone();
    let entry = manifest
        .views
        .get_mut(&view_id(DEMO_TENANT, &spec.name))
        .unwrap();
    let mut staged = entry.hours[&(BASE + HOUR_MS)].clone();
    staged.logic_version = 2;
    entry.staged.insert(BASE + HOUR_MS, staged);
    entry.versions.insert(2, spec.clone());
    let mut other = spec;
    other.dimensions.pop();
    entry.versions.insert(3, other);
    manifest.generation += 1;
    views.publish(&manifest).await.unwrap();
    views
}

#[actix_web::test]
async fn a_query_reads_a_staged_version_or_the_live_hours_alone() {
    let rig = Rig::new().await;
    staged_manifest(&rig).await;
    let app =
        http::init_service(App::new().configure(Serving::configure(rig.serving.clone()))).await;
    let count = |answer: &Value| answer["rows"][0]["count"].as_u64().unwrap_or(0);
    let uri = |version: &str| {
        format!(
            "/v1/query?view=events_by_type&from={BASE}&to={}&granularity=all&measures=count&logic_version={version}",
            BASE + 2 * HOUR_MS
        )
    };
    let (status, live) = get(&app, &uri("live"), Some("demo-read")).await;
    assert_eq!(status, 200, "{live}");
    assert_eq!(
        live["review"],
        json!({"logic_version": null, "hours_without_it": 0})
    );
    let (_, first_hour) = get(
        &app,
        &format!(
            "/v1/query?view=events_by_type&from={BASE}&to={}&granularity=all&measures=count&logic_version=live",
            BASE + HOUR_MS
        ),
        Some("demo-read"),
    )
    .await;
    let (status, staged) = get(&app, &uri("2"), Some("demo-read")).await;
    assert_eq!(status, 200, "{staged}");
    assert_eq!(staged["review"]["hours_without_it"], 1, "{staged}");
    assert_eq!(count(&staged), count(&live) - count(&first_hour));
    assert!(count(&staged) > 0);
    // Batch alone: the answer names no real-time part.
    assert_eq!(staged["sources"]["speed"][0], staged["sources"]["speed"][1]);

    let (status, none) = get(&app, &uri("9"), Some("demo-read")).await;
    assert_eq!((status, count(&none)), (200, 0), "{none}");
    assert_eq!(none["review"]["hours_without_it"], 2);
    let (status, refused) = get(&app, &uri("v2"), Some("demo-read")).await;
    assert_eq!(status, 400);
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("neither 'live' nor a version number"),
        "{refused}"
    );
}

#[actix_web::test]
async fn reprocess_and_promote_are_checked_queued_and_shown_per_tenant() {
    let rig = Rig::new().await;
    staged_manifest(&rig).await;
    let app =
        http::init_service(App::new().configure(Serving::configure(rig.serving.clone()))).await;
    let post = |path: &str, body: Value| {
        http::TestRequest::post()
            .uri(path)
            .insert_header(("Content-Type", "application/json"))
            .set_payload(body.to_string())
    };
    let error = |answer: &Value| answer["error"].as_str().unwrap_or_default().to_owned();

    let (status, versions) = get(
        &app,
        "/v1/governance/views/events_by_type/versions",
        Some("demo-read"),
    )
    .await;
    assert_eq!(status, 200, "{versions}");
    assert_eq!(
        versions["spec_version"], 2,
        "the newest version of the spec now"
    );
    let staged: Vec<(u64, u64)> = (versions["versions"].as_array().unwrap().iter())
        .map(|v| {
            (
                v["live_hours"].as_u64().unwrap(),
                v["staged_hours"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(staged, [(2, 0), (0, 1), (0, 0)]);

    let promote = "/v1/governance/views/events_by_type/promote";
    let (status, _) = send(
        &app,
        post(promote, json!({"logic_version": 2})),
        Some("demo-read"),
    )
    .await;
    assert_eq!(status, 403, "a read key may look, not act");
    let (status, refused) = send(
        &app,
        post(promote, json!({"logic_version": 5})),
        Some("demo-admin"),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        error(&refused).contains("no staged hour of logic version 5 (staged versions: 2)"),
        "{refused}"
    );
    let (status, job) = send(
        &app,
        post(promote, json!({"logic_version": 2})),
        Some("demo-admin"),
    )
    .await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["status"]["state"], "queued");
    assert_eq!(job["work"], json!({"kind": "promote", "logic_version": 2}));
    let id = job["id"].as_str().unwrap();
    let (status, read) = get(
        &app,
        &format!("/v1/governance/jobs/{id}"),
        Some("demo-read"),
    )
    .await;
    assert_eq!((status, &read), (200, &job));
    let (status, _) = get(
        &app,
        &format!("/v1/governance/jobs/{id}"),
        Some("other-read"),
    )
    .await;
    assert_eq!(status, 404, "another tenant's job is not there");
    let (_, theirs) = get(&app, "/v1/governance/jobs", Some("other-read")).await;
    assert_eq!(theirs, json!([]));

    let reprocess = "/v1/governance/views/events_by_type/reprocess";
    for (body, reason) in [
        (json!({"from": BASE + HOUR_MS, "to": BASE}), "from and to"),
        (json!({"from": "yesterday", "to": BASE}), "from:"),
        (
            json!({"from": BASE, "to": BASE + HOUR_MS, "logic_version": 3}),
            "different spec",
        ),
        (
            json!({"from": BASE, "to": BASE + HOUR_MS, "hours": 3}),
            "unknown field",
        ),
        (
            json!({"from": BASE, "to": BASE + HOUR_MS, "logic_version": 4294967295u32}),
            "has no logic version 4294967295",
        ),
    ] {
        let (status, refused) = send(&app, post(reprocess, body.clone()), Some("demo-admin")).await;
        assert_eq!(status, 400, "{body}: {refused}");
        assert!(error(&refused).contains(reason), "{body}: {refused}");
    }
    let range = json!({"from": BASE.to_string(), "to": (BASE + 2 * HOUR_MS).to_string()});
    let (status, job) = send(&app, post(reprocess, range.clone()), Some("demo-admin")).await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["work"]["logic_version"], 2, "the spec's own version");
    // One promotion and one reprocess wait: the rest up to the bound, then 429.
    for _ in 2..MAX_UNFINISHED {
        let (status, _) = send(&app, post(reprocess, range.clone()), Some("demo-admin")).await;
        assert_eq!(status, 200);
    }
    let (status, refused) = send(&app, post(reprocess, range.clone()), Some("demo-admin")).await;
    assert_eq!(status, 429, "{refused}");
    assert!(
        error(&refused).contains("is a batch scheduler running?"),
        "{refused}"
    );
    let (_, ours) = get(&app, "/v1/governance/jobs", Some("demo-read")).await;
    assert_eq!(ours.as_array().unwrap().len(), MAX_UNFINISHED);
}
