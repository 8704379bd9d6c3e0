//! `/openapi.json` of a running `tally up`: generated from the code, it documents the routes
//! the process really serves, each keyed route names the key scheme, and the query
//! parameters it lists are the ones the query API reads.

use serde_json::Value;

use crate::support::{ADMIN_KEY, Tally};

#[test]
fn every_documented_route_is_served_and_keyed_routes_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = Tally::up(dir.path());
    let (status, text) = server.http("GET", "/openapi.json", &[], "");
    assert_eq!(status, 200, "{text}");
    let document: Value = serde_json::from_str(&text).expect("the document is JSON");
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(schemes["api_key"]["scheme"], "bearer", "{schemes}");

    let paths = document["paths"].as_object().expect("paths");
    let mut operations = 0;
    let authorization = format!("Bearer {ADMIN_KEY}");
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            operations += 1;
            // Path parameters get a name no catalog holds, and no body is sent, so changes
            // are refused (404 or 400) and nothing is altered; an unrouted request would be
            // actix's bare 404 with an empty body.
            let concrete = path
                .replace("{name}", "openapi-probe")
                .replace("{source}", "openapi-probe")
                .replace("{key}", "openapi-probe")
                .replace("{call}", "track");
            let (status, body) = server.http(
                &method.to_uppercase(),
                &concrete,
                &[("Authorization", &authorization)],
                "",
            );
            assert!(
                !(status == 404 && body.is_empty()),
                "{method} {path} is documented but not served"
            );
            // Snowplow's trackers send no Authorization: their key is the app id or the path's.
            let snowplow = path.contains("snowplow") || path.starts_with("/sp/");
            let keyed = operation["tags"][0] != "operations" && path != "/i" && !snowplow;
            assert_eq!(
                operation["security"][0].get("api_key").is_some(),
                keyed,
                "{method} {path}: security {}",
                operation["security"]
            );
        }
    }
    assert!(operations >= 20, "only {operations} operations documented");

    let query_parameters: Vec<&str> = paths["/v1/query"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        query_parameters,
        [
            "view",
            "from",
            "to",
            "granularity",
            "group_by",
            "filter",
            "measures",
            "logic_version"
        ]
    );
    for schema in [
        "QueryAnswer",
        "ViewSpec",
        "TagSpec",
        "IngestReply",
        "ErrorBody",
    ] {
        assert!(
            document["components"]["schemas"].get(schema).is_some(),
            "no schema {schema}"
        );
    }
}
