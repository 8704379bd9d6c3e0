//! Governance through a running `tally up`: a registry change made with the admin key is
//! enforced by the collector from the next request on, without a restart; scopes hold;
//! suggestions and recent rejects answer.

use serde_json::Value;

use crate::support::{ADMIN_KEY, READ_KEY, Tally, post_events};

fn call(server: &Tally, method: &str, path: &str, key: &str, body: &str) -> (u16, Value) {
    let authorization = format!("Bearer {key}");
    let (status, text) = server.http(
        method,
        path,
        &[
            ("Authorization", &authorization),
            ("Content-Type", "application/json"),
        ],
        body,
    );
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[test]
fn a_registry_change_reaches_the_running_collector_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Tally::up(dir.path());
    let signup = r#"[{"event_type":"signup","user_id":"u1","tags":{"plan":"pro"}}]"#;
    let (status, body) = post_events(&server, signup);
    assert_eq!(status, 400, "signup is not registered yet: {body}");

    let event_type = r#"{"required":["plan"],"optional":[],"retention_days":30}"#;
    let tag = r#"{"type":"string","aliases":["plan_name"]}"#;
    for (path, body, key, expected) in [
        ("/v1/governance/tags/plan", tag, READ_KEY, 403),
        (
            "/v1/governance/event-types/signup",
            event_type,
            ADMIN_KEY,
            400,
        ),
        ("/v1/governance/tags/plan", tag, ADMIN_KEY, 200),
        (
            "/v1/governance/event-types/signup",
            event_type,
            ADMIN_KEY,
            200,
        ),
    ] {
        let (status, answer) = call(&server, "PUT", path, key, body);
        assert_eq!(status, expected, "{path} with {key}: {answer}");
    }
    let (status, body) = post_events(&server, signup);
    assert_eq!(
        status, 202,
        "the collector validates against the new registry: {body}"
    );

    let (status, overview) = call(&server, "GET", "/v1/governance", READ_KEY, "");
    assert_eq!(status, 200);
    assert_eq!(
        overview["registry"]["event_types"]["signup"]["retention_days"],
        30
    );
    let admin_id = &tally_model::key::secret_sha256(ADMIN_KEY)[..12];
    assert!(
        overview.to_string().contains(admin_id) && !overview.to_string().contains(&ADMIN_KEY[..8]),
        "keys are shown by an id that is no part of their secret: {overview}"
    );

    let (_, suggestion) = call(
        &server,
        "GET",
        "/v1/governance/suggest?tag=acct_num",
        READ_KEY,
        "",
    );
    assert_eq!(suggestion["canonical"], "account_number", "{suggestion}");
    assert_eq!(suggestion["match"], "alias");
    // An event-type alias belongs to one type: giving purchase's to click is refused.
    let (status, refused) = call(
        &server,
        "PUT",
        "/v1/governance/event-types/click",
        ADMIN_KEY,
        r#"{"aliases":["Order Completed"],"optional":["url"]}"#,
    );
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused
            .to_string()
            .contains("alias 'Order Completed' is claimed by event types 'click' and 'purchase'"),
        "{refused}"
    );
    for (spelled, canonical, how) in [
        ("Order%20Completed", "purchase", "alias"),
        ("Order%20Complete", "purchase", "similar"),
        ("purchase", "purchase", "canonical"),
    ] {
        let (_, suggestion) = call(
            &server,
            "GET",
            &format!("/v1/governance/suggest?event_type={spelled}"),
            READ_KEY,
            "",
        );
        assert_eq!(suggestion["canonical"], canonical, "{suggestion}");
        assert_eq!(suggestion["match"], how, "{suggestion}");
    }

    let (_, rejected) = call(
        &server,
        "GET",
        "/v1/governance/rejected?limit=5",
        READ_KEY,
        "",
    );
    let reasons = rejected[0]["reasons"].to_string();
    assert!(
        reasons.contains("signup"),
        "the first signup's reject is listed: {rejected}"
    );

    // A new write key works at once; deleting it revokes it at once.
    let (status, created) = call(
        &server,
        "POST",
        "/v1/governance/keys",
        ADMIN_KEY,
        r#"{"source":"app","scopes":["write"]}"#,
    );
    assert_eq!(status, 200, "{created}");
    let new_key = created["key"].as_str().unwrap().to_owned();
    let send = |key: &str| {
        call(
            &server,
            "POST",
            "/v1/events",
            key,
            r#"[{"event_type":"click","user_id":"u"}]"#,
        )
        .0
    };
    let (status, _) = call(
        &server,
        "PUT",
        "/v1/governance/sources/app",
        ADMIN_KEY,
        r#"{"event_types":["click"]}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(send(&new_key), 202);
    assert_eq!(
        call(&server, "DELETE", "/v1/governance/keys/app", ADMIN_KEY, "").0,
        200
    );
    assert_eq!(send(&new_key), 401);
}
