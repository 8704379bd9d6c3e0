//! The collector's HTTP behaviour against real spools in a temporary folder.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{App, test, web};
use serde_json::{Value, json};
use tally_connectors::catalog::CatalogHandle;
use tally_connectors::log::{EventLog, Spool, SpoolOptions};
use tally_model::config::IngestConfig;
use tally_model::{Catalog, Event, RejectedEvent};

use super::{Collector, IngestMetrics};

pub(crate) struct Harness {
    _dir: tempfile::TempDir,
    events: Arc<Spool>,
    rejected: Arc<Spool>,
    collector: web::Data<Collector>,
}

pub(crate) fn harness(limits: IngestConfig) -> Harness {
    harness_with(limits, Catalog::demo("write-key", "read-key"))
}

/// A collector validating against `catalog`.
pub(crate) fn harness_with(limits: IngestConfig, catalog: Catalog) -> Harness {
    harness_of(limits, catalog, true)
}

/// A collector whose rejected stream takes appends only if `rejects_writable`.
fn harness_of(limits: IngestConfig, catalog: Catalog, rejects_writable: bool) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str, partitions| {
        Arc::new(
            Spool::open(
                &dir.path().join(name),
                SpoolOptions {
                    partitions,
                    ..SpoolOptions::default()
                },
            )
            .unwrap(),
        )
    };
    let (events, mut rejected) = (open("events", 2), open("rejected", 1));
    if !rejects_writable {
        drop(rejected);
        rejected = Arc::new(Spool::open_read_only(&dir.path().join("rejected")).unwrap());
    }
    let metrics = IngestMetrics::register(&mut prometheus_client::registry::Registry::default());
    let catalog = CatalogHandle::new(catalog, 0);
    let collector = web::Data::new(Collector::new(
        catalog,
        events.clone(),
        rejected.clone(),
        limits,
        metrics,
    ));
    Harness {
        _dir: dir,
        events,
        rejected,
        collector,
    }
}

impl Harness {
    pub(crate) fn stored_events(&self) -> Vec<Event> {
        (0..self.events.partitions())
            .flat_map(|p| self.events.read(p, 0, usize::MAX).unwrap())
            .map(|entry| serde_json::from_slice(&entry.payload).unwrap())
            .collect()
    }

    pub(crate) fn stored_rejects(&self) -> Vec<RejectedEvent> {
        self.rejected
            .read(0, 0, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|entry| serde_json::from_slice(&entry.payload).unwrap())
            .collect()
    }

    /// Sends `request` to the collector's routes: the status, headers and body.
    pub(crate) async fn send(
        &self,
        request: test::TestRequest,
    ) -> (StatusCode, actix_web::http::header::HeaderMap, Vec<u8>) {
        let app =
            test::init_service(App::new().configure(Collector::configure(self.collector.clone())))
                .await;
        let response = test::call_service(&app, request.to_request()).await;
        let status = response.status();
        let headers = response.headers().clone();
        (status, headers, test::read_body(response).await.to_vec())
    }

    async fn post(
        &self,
        content_type: &str,
        key: Option<&str>,
        body: impl Into<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let app =
            test::init_service(App::new().configure(Collector::configure(self.collector.clone())))
                .await;
        let mut request = test::TestRequest::post()
            .uri("/v1/events")
            .insert_header(("Content-Type", content_type));
        if let Some(key) = key {
            request = request.insert_header(("Authorization", format!("Bearer {key}")));
        }
        let response =
            test::call_service(&app, request.set_payload(body.into()).to_request()).await;
        let status = response.status();
        let body = test::read_body(response).await;
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn post_json(&self, body: Value) -> (StatusCode, Value) {
        self.post("application/json", Some("write-key"), body.to_string())
            .await
    }

    async fn pixel(&self, query: &str) -> (StatusCode, Vec<u8>) {
        let app =
            test::init_service(App::new().configure(Collector::configure(self.collector.clone())))
                .await;
        let response = test::call_service(
            &app,
            test::TestRequest::get()
                .uri(&format!("/i?{query}"))
                .to_request(),
        )
        .await;
        let status = response.status();
        (status, test::read_body(response).await.to_vec())
    }
}

fn click(user: &str) -> Value {
    json!({"event_type": "click", "user_id": user, "tags": {"os_type": "ios"}})
}

#[actix_web::test]
async fn a_request_that_cannot_be_stored_whole_leaves_no_accepted_event_behind() {
    let h = harness_of(
        IngestConfig::default(),
        Catalog::demo("write-key", "read-key"),
        false,
    );
    let (status, body) = h
        .post_json(json!([click("u1"), {"event_type": "click"}]))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].as_str().unwrap().contains("retry"), "{body}");
    assert!(
        h.stored_events().is_empty(),
        "the valid event was stored though the request was refused, and its retry would store it again"
    );
}

#[actix_web::test]
async fn a_valid_batch_is_acknowledged_once_stored() {
    let h = harness(IngestConfig::default());
    let (status, body) = h.post_json(json!([click("u1"), {"event_id": "mine", "event_type": "purchase", "user_id": "u2", "tags": {"revenue": 3.5}}])).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        body,
        json!({"accepted": 2, "rejected": [], "rejected_count": 0, "rejected_by_reason": {}})
    );
    let mut events = h.stored_events();
    events.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    assert_eq!(events.len(), 2);
    assert_eq!(
        (events[0].tenant.as_str(), events[0].source.as_str()),
        ("demo", "demo-web")
    );
    assert_eq!(
        events[0].event_id.len(),
        36,
        "ingest assigns a UUID when the client sent no id"
    );
    assert_eq!(events[1].event_id, "mine");
    assert!(h.stored_rejects().is_empty());
}

#[actix_web::test]
async fn a_mixed_batch_keeps_the_valid_and_records_the_invalid() {
    let h = harness(IngestConfig::default());
    let bad = json!({"event_type": "click", "user_id": "u", "tags": {"acount_number": "1"}});
    let (status, body) = h.post_json(json!([click("u1"), bad, click("u3")])).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["rejected"][0]["index"], 1);
    let reason = body["rejected"][0]["reasons"][0].as_str().unwrap();
    assert_eq!(
        reason,
        "unknown tag 'acount_number' (did you mean account_number?)"
    );
    let rejects = h.stored_rejects();
    assert_eq!(rejects.len(), 1);
    assert_eq!(rejects[0].reasons, [reason]);
    assert_eq!(rejects[0].tenant, "demo");
    assert!(rejects[0].payload.contains("acount_number"));
    assert_eq!(h.stored_events().len(), 2);
}

#[actix_web::test]
async fn a_batch_with_nothing_valid_is_a_400_with_every_reason() {
    let h = harness(IngestConfig::default());
    let (status, body) = h
        .post_json(json!([{"event_type": "nope", "user_id": 5}]))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["accepted"], 0);
    let reasons: Vec<&str> = body["rejected"][0]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert_eq!(h.stored_rejects().len(), 1);
    assert!(h.stored_events().is_empty());
}

#[actix_web::test]
async fn keys_are_checked_before_anything_is_read() {
    let h = harness(IngestConfig::default());
    let body = json!([click("u")]).to_string();
    let (status, reply) = h.post("application/json", None, body.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(reply["error"].as_str().unwrap().contains("Bearer"));
    assert_eq!(
        h.post("application/json", Some("guess"), body.clone())
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let (status, reply) = h.post("application/json", Some("read-key"), body).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(reply["error"].as_str().unwrap().contains("write scope"));
    assert!(h.stored_events().is_empty() && h.stored_rejects().is_empty());
}

#[actix_web::test]
async fn a_body_of_junk_costs_no_more_than_its_size_in_the_reply_and_the_rejected_stream() {
    let h = harness(IngestConfig::default());
    // 480 KB of `1,`: 240,000 events that are not objects, plus one valid click.
    let mut junk = vec![json!(1); 240_000];
    junk.push(click("u"));
    let body = Value::Array(junk).to_string();
    let (status, reply) = h
        .post("application/json", Some("write-key"), body.clone())
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(reply["accepted"], 1);
    assert_eq!(reply["rejected_count"], 240_000);
    assert_eq!(
        reply["rejected_by_reason"],
        json!({"not_an_object": 240_000})
    );
    let listed = reply["rejected"].as_array().unwrap();
    assert_eq!(listed.len(), 100, "only the first rejects are listed");
    assert_eq!(listed[99]["index"], 99);
    let reply_bytes = reply.to_string().len();
    assert!(
        reply_bytes < 20_000,
        "the reply is {reply_bytes} bytes for a {} byte body",
        body.len()
    );
    let kept = h.stored_rejects();
    assert_eq!(kept.len(), 100, "only the first rejects are kept");
    let kept_bytes: usize = kept
        .iter()
        .map(|r| serde_json::to_vec(r).unwrap().len())
        .sum();
    assert!(kept_bytes < 30_000, "{kept_bytes} bytes kept");
    assert_eq!(h.stored_events().len(), 1);
}

#[actix_web::test]
async fn size_limits_answer_413() {
    let limits = IngestConfig {
        max_request_bytes: 2_000,
        max_event_bytes: 300,
        ..IngestConfig::default()
    };
    let h = harness(limits);
    let big = json!({"event_type": "page_view", "user_id": "u", "tags": {"url": "x".repeat(400)}});
    let (status, body) = h.post_json(json!([big])).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        body["rejected"][0]["reasons"][0]
            .as_str()
            .unwrap()
            .contains("over the limit of 300 bytes per event")
    );
    let (status, body) = h.post_json(json!([click("u"), big])).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "one oversized event does not sink its neighbours"
    );
    assert_eq!(body["rejected"][0]["index"], 1);
    let (status, body) = h
        .post_json(json!(
            (0..40).map(|i| click(&i.to_string())).collect::<Vec<_>>()
        ))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("over the limit of 2000 bytes")
    );
    assert_eq!(h.stored_events().len(), 1);
    assert_eq!(h.stored_rejects().len(), 2);
}

#[actix_web::test]
async fn only_json_and_ndjson_are_accepted() {
    let h = harness(IngestConfig::default());
    let (status, body) = h
        .post("application/xml", Some("write-key"), "<event/>")
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("application/x-ndjson")
    );
    let ndjson = format!("{}\n\n{}\nnot json\n", click("a"), click("b"));
    let (status, body) = h
        .post("application/x-ndjson", Some("write-key"), ndjson)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["rejected"][0]["index"], 2);
    assert!(
        body["rejected"][0]["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("invalid JSON")
    );
}

#[actix_web::test]
async fn hostile_input_gets_a_4xx_with_a_reason_and_never_stops_the_service() {
    let h = harness(IngestConfig::default());
    let deep = format!("[{}{}]", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object = format!(
        "[{{\"event_type\": \"click\", \"user_id\": \"u\", \"tags\": {}{}}}]",
        "{\"a\":".repeat(5_000),
        "}".repeat(5_000)
    );
    let bodies: Vec<Vec<u8>> = vec![
        b"{not json".to_vec(),
        b"[\xff\xfe]".to_vec(),
        b"[\"\xc3\x28\"]".to_vec(),
        deep.into_bytes(),
        deep_object.into_bytes(),
        b"[{\"event_type\": \"purchase\", \"user_id\": \"u\", \"tags\": {\"revenue\": 1e400}}]".to_vec(),
        b"[{\"event_type\": \"click\", \"user_id\": \"u\", \"ts\": 123456789012345678901234567890}]".to_vec(),
        b"[]".to_vec(),
        b"".to_vec(),
        b"\"just a string\"".to_vec(),
        b"[null, 1, \"x\"]".to_vec(),
    ];
    for body in bodies {
        let (status, reply) = h
            .post("application/json", Some("write-key"), body.clone())
            .await;
        assert!(
            status.is_client_error(),
            "{status} for {:?}",
            String::from_utf8_lossy(&body[..body.len().min(60)])
        );
        assert!(
            reply.is_object(),
            "a JSON reason for {:?}",
            String::from_utf8_lossy(&body[..body.len().min(60)])
        );
    }
    let (status, _) = h.post_json(json!([click("still-here")])).await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[actix_web::test]
async fn the_pixel_always_answers_a_gif_and_records_like_the_api() {
    let h = harness(IngestConfig::default());
    let (status, gif) = h
        .pixel("k=write-key&e=purchase&uid=u9&revenue=9.99&os=android")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(gif.starts_with(b"GIF89a"));
    let events = h.stored_events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].tags["revenue"],
        tally_model::TagValue::Number(9.99)
    );
    assert_eq!(
        events[0].tags["os_type"],
        tally_model::TagValue::String("android".into())
    );
    let (status, _) = h.pixel("k=write-key&e=purchase&uid=u9&revenue=lots").await;
    assert_eq!(status, StatusCode::OK);
    assert!(h.stored_rejects()[0].reasons[0].contains("tag 'revenue' must be a number"));
    for query in ["k=wrong&e=click&uid=u", "k=", "k=write-key&%zz=%ff"] {
        assert_eq!(h.pixel(query).await.0, StatusCode::OK);
    }
    // Without `k` it is Snowplow's GET form, whose key is the app id.
    assert_eq!(h.pixel("e=pv&uid=u").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(h.stored_events().len(), 1);
}

#[actix_web::test]
async fn a_pixel_with_an_unknown_key_answers_no_sooner_than_a_stored_one() {
    let h = harness(IngestConfig::default());
    h.collector
        .pixel_timing
        .stored(std::time::Duration::from_millis(40));
    let started = std::time::Instant::now();
    let (status, gif) = h.pixel("k=a-guess&e=click&uid=u").await;
    assert_eq!(status, StatusCode::OK);
    assert!(gif.starts_with(b"GIF89a"));
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(40),
        "a guessed key was answered in {:?}, sooner than a stored pixel: the time tells a valid key",
        started.elapsed()
    );
}

#[actix_web::test]
async fn ambiguous_input_is_refused_not_guessed() {
    let h = harness(IngestConfig::default());
    // Invalid UTF-8 in the pixel's query: kept as a reject, not decoded lossily.
    let (status, _) = h.pixel("k=write-key&e=click&uid=%C3%28").await;
    assert_eq!(status, StatusCode::OK);
    assert!(h.stored_events().is_empty());
    let rejects = h.stored_rejects();
    assert_eq!(rejects.len(), 1);
    assert_eq!(
        rejects[0].reasons,
        ["the query string is not UTF-8 once percent-decoded"]
    );
    assert!(rejects[0].payload.contains("uid=%C3%28"));
    // A key twice in one event, at the top or in its tags: refused, not last-wins.
    for event in [
        r#"{"event_type":"click","user_id":"a","user_id":"b"}"#,
        r#"{"event_type":"click","user_id":"a","tags":{"os_type":"ios","os_type":"android"}}"#,
    ] {
        let (status, reply) = h
            .post("application/json", Some("write-key"), format!("[{event}]"))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{event}");
        let reason = reply["rejected"][0]["reasons"][0].as_str().unwrap();
        assert!(reason.contains("appears twice in one object"), "{reason}");
    }
    assert!(h.stored_events().is_empty());
}

#[actix_web::test]
async fn browsers_may_send_from_any_origin() {
    let h = harness(IngestConfig::default());
    let app =
        test::init_service(App::new().configure(Collector::configure(h.collector.clone()))).await;
    let preflight = test::TestRequest::default()
        .method(actix_web::http::Method::OPTIONS)
        .uri("/v1/events")
        .insert_header(("Origin", "https://shop.example"))
        .insert_header(("Access-Control-Request-Method", "POST"))
        .insert_header((
            "Access-Control-Request-Headers",
            "authorization, content-type",
        ))
        .to_request();
    let response = test::call_service(&app, preflight).await;
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(
        response
            .headers()
            .get("access-control-allow-origin")
            .unwrap(),
        "https://shop.example"
    );
}
