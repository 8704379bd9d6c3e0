//! The trackers' routes against real spools: what Segment's and Snowplow's SDKs send, as
//! they send it, and what hostile senders send instead.
// Test arithmetic is on known, small clock values.
#![allow(clippy::arithmetic_side_effects)]

use std::io::Write;

use actix_web::http::{Method, StatusCode};
use actix_web::test::TestRequest;
use base64::Engine;
use serde_json::{Value, json};
use tally_model::config::IngestConfig;
use tally_model::time::{format_rfc3339, now_millis};
use tally_model::{Catalog, Event, RejectedEvent, TagValue};

use crate::tests::{Harness, harness, harness_with};

const KEY: &str = "write-key";

/// A collector on the demo catalog, with `alias` added to `tag`.
fn harness_with_alias(tag: &str, alias: &str) -> Harness {
    let mut catalog = Catalog::demo(KEY, "read-key");
    let registry = &mut catalog.tenants.get_mut("demo").unwrap().registry;
    registry
        .tags
        .get_mut(tag)
        .unwrap()
        .aliases
        .push(alias.into());
    harness_with(IngestConfig::default(), catalog)
}

fn basic(key: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{key}:"));
    format!("Basic {encoded}")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

async fn segment(h: &Harness, path: &str, body: &Value) -> (StatusCode, Value) {
    let request = TestRequest::post()
        .uri(path)
        .insert_header(("Authorization", basic(KEY)))
        .insert_header(("Content-Type", "application/json"))
        .set_payload(body.to_string());
    let (status, _, body) = h.send(request).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Every reason of the reject at `index` of its request, joined.
fn reasons_at(rejects: &[RejectedEvent], index: usize) -> String {
    rejects
        .iter()
        .find(|reject| reject.index == index)
        .unwrap_or_else(|| panic!("no reject at {index}"))
        .reasons
        .join("; ")
}

fn by_id(events: Vec<Event>, id: &str) -> Event {
    events
        .into_iter()
        .find(|event| event.event_id == id)
        .unwrap_or_else(|| panic!("no event {id}"))
}

#[actix_web::test]
async fn a_segment_batch_maps_every_call_and_keeps_the_rejects_with_reasons() {
    // account.number is declared under its dotted name for this test.
    let h = harness_with_alias("account_number", "account.number");
    let now = now_millis();
    let minute_ago = format_rfc3339(now - 60_000);
    let batch = json!({
        "batch": [
            {"type": "track", "event": "Order Completed", "messageId": "m-1", "userId": "u1",
             "anonymousId": "anon", "timestamp": minute_ago,
             "properties": {"revenue": 42.5, "account": {"number": "A-1"}},
             "context": {"os": {"name": "iOS"}, "library": {"name": "analytics-python"}}},
            {"type": "page", "name": "Home", "messageId": "m-2", "anonymousId": "anon-2",
             "properties": {"url": "https://shop.example/"}},
            {"type": "track", "event": "Ordr Completed", "messageId": "m-3", "userId": "u3"},
            {"type": "screen", "messageId": "m-4", "userId": "u4"},
            {"type": "flush", "messageId": "m-5", "userId": "u5"},
        ],
        "sentAt": format_rfc3339(now),
        "context": {"os": {"name": "batch-level"}},
    });
    let (status, reply) = segment(&h, "/v1/batch", &batch).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["success"], true);
    assert_eq!(reply["accepted"], 2);
    assert_eq!(reply["rejected_count"], 3);
    let events = h.stored_events();
    let purchase = by_id(events.clone(), "m-1");
    assert_eq!(purchase.event_type, "purchase", "the event-type alias");
    assert_eq!(purchase.user_id, "u1", "userId before anonymousId");
    assert_eq!(purchase.ts, now - 60_000);
    assert_eq!(purchase.tags["revenue"], TagValue::Number(42.5));
    assert_eq!(
        purchase.tags["account_number"],
        TagValue::String("A-1".into())
    );
    assert_eq!(
        purchase.tags["os_type"],
        TagValue::String("iOS".into()),
        "the call's context over the batch's, by the alias context.os.name"
    );
    let page = by_id(events, "m-2");
    assert_eq!(
        (page.event_type.as_str(), page.user_id.as_str()),
        ("page_view", "anon-2")
    );
    assert_eq!(page.tags["os_type"], TagValue::String("batch-level".into()));
    let rejects = h.stored_rejects();
    let reasons = |index| reasons_at(&rejects, index);
    assert!(
        reasons(2).contains("unknown event type 'Ordr Completed' (did you mean purchase?)"),
        "{}",
        reasons(2)
    );
    assert!(reasons(3).contains("unknown event type 'screen_view'"));
    assert!(reasons(4).contains("unknown Segment call type 'flush'"));
    assert!(rejects[0].payload.contains("messageId"), "the call as sent");
}

#[actix_web::test]
async fn original_timestamps_are_corrected_by_sent_at() {
    let h = harness(IngestConfig::default());
    let now = now_millis();
    // The device clock is an hour fast: created 2 s before it was sent, by that clock.
    let fast = now + 3_600_000;
    let call = json!({"event": "click", "userId": "u", "messageId": "skewed",
        "originalTimestamp": format_rfc3339(fast - 2_000), "sentAt": format_rfc3339(fast)});
    let (status, reply) = segment(&h, "/v1/track", &call).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let event = by_id(h.stored_events(), "skewed");
    let lag = event.received_at - event.ts;
    assert!((2_000..3_000).contains(&lag), "{lag} ms before receipt");
}

#[actix_web::test]
async fn analytics_js_short_routes_carry_the_key_in_the_body() {
    let h = harness(IngestConfig::default());
    // As Segment's browser SDK posts: text/plain (no CORS preflight), the writeKey in the
    // body, one call per request to /v1/<first letter>, or batches to /v1/b.
    let page = json!({"type": "page", "messageId": "js-1", "anonymousId": "a", "writeKey": KEY,
        "properties": {"url": "/home"}, "sentAt": format_rfc3339(now_millis())});
    let track = json!({"type": "track", "event": "click", "messageId": "js-2", "anonymousId": "a"});
    let batch = json!({"writeKey": KEY, "batch": [track], "sentAt": format_rfc3339(now_millis())});
    for (path, body) in [("/v1/p", page), ("/v1/b", batch)] {
        let request = TestRequest::post()
            .uri(path)
            .insert_header(("Content-Type", "text/plain"))
            .insert_header(("Origin", "https://shop.example"))
            .set_payload(body.to_string());
        let (status, headers, body) = h.send(request).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{path}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(
            headers.get("access-control-allow-origin").unwrap(),
            "https://shop.example"
        );
    }
    let mut types: Vec<String> = h
        .stored_events()
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    types.sort();
    assert_eq!(types, ["click", "page_view"]);
}

#[actix_web::test]
async fn the_write_key_may_come_as_basic_bearer_or_in_the_body() {
    let h = harness(IngestConfig::default());
    let track =
        |id: &str| json!({"type": "track", "event": "click", "userId": "u", "messageId": id});
    let mut keyed = json!({"batch": [track("body-key")], "writeKey": KEY});
    let request = TestRequest::post()
        .uri("/v1/batch")
        .set_payload(keyed.to_string());
    assert_eq!(h.send(request).await.0, StatusCode::OK);
    let request = TestRequest::post()
        .uri("/v1/batch")
        .insert_header(("Authorization", format!("Bearer {KEY}")))
        .set_payload(json!({"batch": [track("bearer")]}).to_string());
    assert_eq!(h.send(request).await.0, StatusCode::OK);
    keyed["writeKey"] = json!("not-a-key");
    let request = TestRequest::post()
        .uri("/v1/batch")
        .set_payload(keyed.to_string());
    let (status, _, body) = h.send(request).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["code"], "unauthorized", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("writeKey"),
        "{body}"
    );
    let request = TestRequest::post()
        .uri("/v1/batch")
        .insert_header(("Authorization", basic("read-key")))
        .set_payload(json!({"batch": [track("read")]}).to_string());
    assert_eq!(h.send(request).await.0, StatusCode::FORBIDDEN);
    let ids: Vec<String> = h.stored_events().into_iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
}

#[actix_web::test]
async fn nothing_accepted_is_a_400_with_segments_code_and_message() {
    let h = harness(IngestConfig::default());
    let (status, reply) = segment(
        &h,
        "/v1/batch",
        &json!({"batch": [{"type": "track", "event": "click"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(reply["code"], "missing_field", "{reply}");
    let message = reply["message"].as_str().unwrap();
    assert!(
        message.contains("\"userId\" or an \"anonymousId\""),
        "{message}"
    );
    assert_eq!(h.stored_rejects().len(), 1);
}

#[actix_web::test]
async fn gzip_bodies_are_read_and_bombs_refused_at_the_limit() {
    let h = harness(IngestConfig::default());
    let batch =
        json!({"batch": [{"type": "track", "event": "click", "userId": "u", "messageId": "gz"}]});
    let request = TestRequest::post()
        .uri("/v1/batch")
        .insert_header(("Authorization", basic(KEY)))
        .insert_header(("Content-Encoding", "gzip"))
        .set_payload(gzip(batch.to_string().as_bytes()));
    let (status, _, body) = h.send(request).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    // 64 MB of spaces compress to about 64 KB: refused once 500 KB have inflated.
    let bomb = gzip(&vec![b' '; 64 << 20]);
    assert!(bomb.len() < 500 * 1024);
    for (path, authorization) in [
        ("/v1/batch", basic(KEY)),
        ("/v1/events", format!("Bearer {KEY}")),
        ("/com.snowplowanalytics.snowplow/tp2", String::new()),
    ] {
        let request = TestRequest::post()
            .uri(path)
            .insert_header(("Authorization", authorization))
            .insert_header(("Content-Type", "application/json"))
            .insert_header(("Content-Encoding", "gzip"))
            .set_payload(bomb.clone());
        let (status, _, body) = h.send(request).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("once decompressed"), "{path}: {body}");
    }
    let request = TestRequest::post()
        .uri("/v1/batch")
        .insert_header(("Authorization", basic(KEY)))
        .insert_header(("Content-Encoding", "gzip"))
        .set_payload(b"\x1f\x8b not gzip at all".to_vec());
    let (status, _, body) = h.send(request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("invalid_gzip"));
    assert_eq!(h.stored_events().len(), 1);
}

#[actix_web::test]
async fn ten_thousand_calls_cost_a_bounded_reply_and_rejected_stream() {
    let h = harness(IngestConfig::default());
    let junk = vec![json!({"type": "track", "userId": "u"}); 10_000];
    let (status, reply) = segment(&h, "/v1/batch", &json!({"batch": junk})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(reply.to_string().len() < 2_000, "{reply}");
    assert_eq!(h.stored_rejects().len(), 100, "ingest.max_rejects_kept");
    // 10 000 of the smallest valid calls fit in the 500 KB limit.
    let valid = vec![json!({"type": "track", "event": "click", "userId": "u"}); 10_000];
    let (status, reply) = segment(&h, "/v1/batch", &json!({"batch": valid})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply["accepted"], 10_000);
    let context = json!({"batch": [], "context": {"padding": "x".repeat(2_000)}});
    let (status, reply) = segment(&h, "/v1/batch", &context).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(reply["code"], "batch_context_too_large");
}

fn snowplow_body(events: Value) -> String {
    json!({"schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4", "data": events}).to_string()
}

async fn snowplow_post(h: &Harness, path: &str, events: Value) -> (StatusCode, String) {
    let request = TestRequest::post()
        .uri(path)
        .insert_header(("Content-Type", "application/json; charset=utf-8"))
        .insert_header(("Origin", "https://shop.example"))
        .set_payload(snowplow_body(events));
    let (status, headers, body) = h.send(request).await;
    assert_eq!(
        headers.get("access-control-allow-origin").unwrap(),
        "https://shop.example"
    );
    (status, String::from_utf8(body).unwrap())
}

fn base64url(value: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

#[actix_web::test]
async fn snowplow_events_map_by_kind_with_contexts_offered() {
    // The device context's os is declared as an alias for this test.
    let h = harness_with_alias("os_type", "context.device.os");
    let now = now_millis();
    let purchase = json!({"schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
        "data": {"schema": "iglu:com.acme/purchase/jsonschema/1-0-0", "data": {"revenue": 12.5}}});
    let contexts = json!({"schema": "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0",
        "data": [{"schema": "iglu:com.acme/device/jsonschema/1-0-0", "data": {"os": "android"}}]});
    let padded = base64::engine::general_purpose::URL_SAFE.encode(contexts.to_string());
    let events = json!([
        {"e": "pv", "eid": "sp-1", "aid": KEY, "duid": "d-1", "url": "https://shop.example/a",
         "page": "A", "refr": "https://search.example/", "dtm": (now - 1_000).to_string(),
         "stm": now.to_string(), "tv": "py-1.1.0", "p": "web"},
        {"e": "ue", "eid": "sp-2", "aid": KEY, "uid": "u-2", "duid": "d-2",
         "ue_px": base64url(&purchase), "cx": padded, "ttm": now - 5_000},
        {"e": "se", "eid": "sp-3", "aid": KEY, "uid": "u-3", "se_ca": "shop", "se_ac": "add"},
        {"e": "pv", "eid": "sp-4", "aid": KEY, "uid": "u-4", "url": {"not": "a string"}},
        {"e": "ue", "eid": "sp-5", "aid": KEY, "uid": "u-5", "ue_px": "%%%not base64"},
        {"e": "pv", "eid": "sp-6", "aid": "another-app", "uid": "u-6", "url": "x"},
    ]);
    let (status, body) = snowplow_post(&h, "/com.snowplowanalytics.snowplow/tp2", events).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    let events = h.stored_events();
    assert_eq!(events.len(), 2, "{events:?}");
    let page = by_id(events.clone(), "sp-1");
    assert_eq!(page.event_type, "page_view");
    assert_eq!(page.user_id, "d-1", "duid when there is no uid");
    assert_eq!(
        page.tags["url"],
        TagValue::String("https://shop.example/a".into())
    );
    assert!((page.received_at - page.ts) < 2_000, "dtm corrected by stm");
    let purchase = by_id(events, "sp-2");
    assert_eq!(purchase.event_type, "purchase", "the schema's name");
    assert_eq!(purchase.ts, now - 5_000, "ttm, even sent as a number");
    assert_eq!(purchase.tags["revenue"], TagValue::Number(12.5));
    assert_eq!(purchase.tags["os_type"], TagValue::String("android".into()));
    let rejects = h.stored_rejects();
    let reasons = |index| reasons_at(&rejects, index);
    assert!(
        reasons(2).contains("unknown event type 'structured_event'"),
        "{}",
        reasons(2)
    );
    assert!(
        reasons(3).contains("field 'url' must be a string"),
        "{}",
        reasons(3)
    );
    assert!(
        reasons(4).contains("\"ue_px\" is not base64url"),
        "{}",
        reasons(4)
    );
    assert!(reasons(5).contains("same app id"), "{}", reasons(5));
}

#[actix_web::test]
async fn snowplow_gets_answer_the_gif_and_tell_the_tally_pixel_apart() {
    let h = harness(IngestConfig::default());
    let get = |uri: String| TestRequest::get().uri(&uri);
    let (status, headers, gif) = h
        .send(get(format!(
            "/i?e=pv&aid={KEY}&uid=u&eid=g-1&url=https%3A%2F%2Fa.example%2F&tv=js-3"
        )))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(gif.starts_with(b"GIF89a"));
    assert_eq!(headers.get("cache-control").unwrap(), "no-cache, no-store");
    let (status, _, _) = h
        .send(get(
            "/sp/write-key/i?e=pv&aid=my-app&uid=u&eid=g-2&url=x".to_owned()
        ))
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the key in the path, aid left to the app"
    );
    let (status, _, body) = h.send(get("/i?e=pv&aid=nobody&uid=u".to_owned())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(String::from_utf8_lossy(&body).contains("app id (aid)"));
    let (status, _, body) = h
        .send(get(format!("/i?e=ue&aid={KEY}&uid=u&ue_px=!!")))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("invalid_base64"));
    // With `k` it is Tally's pixel, whose `e` is the event type.
    let (status, _, _) = h
        .send(get("/i?k=write-key&e=click&uid=u&eid=t-1".to_owned()))
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut ids: Vec<String> = h.stored_events().into_iter().map(|e| e.event_id).collect();
    ids.sort();
    assert_eq!(ids, ["g-1", "g-2", "t-1"]);
}

#[actix_web::test]
async fn snowplow_bodies_that_are_not_payload_data_are_400s() {
    let h = harness(IngestConfig::default());
    for (body, code) in [
        ("{}".to_owned(), "invalid_json"),
        (
            json!({"schema": "iglu:com.acme/other/jsonschema/1-0-0", "data": []}).to_string(),
            "unknown_schema",
        ),
        (
            snowplow_body(json!([{"e": "pv", "aid": KEY, "uid": "u", "url": ["x"]}])),
            "wrong_type",
        ),
        (
            snowplow_body(json!([{"e": "pv", "uid": "u"}])),
            "unauthorized",
        ),
        (snowplow_body(json!([])), "no_events"),
    ] {
        let request = TestRequest::post()
            .uri("/com.snowplowanalytics.snowplow/tp2")
            .set_payload(body.clone());
        let (status, _, reply) = h.send(request).await;
        assert!(status.is_client_error(), "{status} for {body}");
        let reply: Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(reply["code"], code, "{body}: {reply}");
    }
}

#[actix_web::test]
async fn the_snowplow_preflight_allows_the_origin_with_credentials() {
    let h = harness(IngestConfig::default());
    let request = TestRequest::default()
        .method(Method::OPTIONS)
        .uri("/com.snowplowanalytics.snowplow/tp2")
        .insert_header(("Origin", "https://shop.example"))
        .insert_header(("Access-Control-Request-Method", "POST"))
        .insert_header((
            "Access-Control-Request-Headers",
            "content-type, sp-anonymous",
        ));
    let (status, headers, _) = h.send(request).await;
    assert_eq!(status, StatusCode::OK);
    let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
    assert_eq!(
        header("access-control-allow-origin"),
        "https://shop.example"
    );
    assert_eq!(header("access-control-allow-credentials"), "true");
    assert!(header("access-control-allow-headers").contains("SP-Anonymous"));
}

#[actix_web::test]
async fn a_numeric_message_id_is_kept_exactly_or_refused() {
    let h = harness(IngestConfig::default());
    // Sent as text, since a JSON value here would round the numbers before the collector.
    let body = r#"{"batch":[
        {"type":"track","event":"click","userId":"u","messageId":123456789012345678901234567890},
        {"type":"track","event":"click","userId":"u","messageId":123456789012345678901234567891},
        {"type":"track","event":"click","userId":"u","messageId":12.5},
        {"type":"track","event":"click","userId":"u","messageId":9007199254740993}]}"#;
    let request = TestRequest::post()
        .uri("/v1/batch")
        .insert_header(("Authorization", basic(KEY)))
        .insert_header(("Content-Type", "application/json"))
        .set_payload(body);
    let (status, _, reply) = h.send(request).await;
    let reply: Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["accepted"], 1, "{reply}");
    assert_eq!(reply["rejected_by_reason"]["invalid_id"], 3, "{reply}");
    let reason = reply["rejected"][0]["reasons"][0].as_str().unwrap();
    assert!(reason.contains("send it as a string"), "{reason}");
    let ids: Vec<String> = h.stored_events().into_iter().map(|e| e.event_id).collect();
    assert_eq!(ids, ["9007199254740993"]);
}
