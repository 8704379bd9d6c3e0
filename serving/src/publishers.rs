//! `GET /v1/governance/tags/{name}/publishers`: which sources publish a tag and how often,
//! from the last hours' raw events in the search index: the components publishing a tag, as
//! a data steward asks before changing or retiring it.

use std::collections::BTreeSet;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;
use tally_model::Scope;
use tally_model::time::{HOUR_MS, format_rfc3339, now_millis};

use crate::governance::answer;
use crate::{Serving, bad};

/// The hours looked at when none are asked.
const DEFAULT_HOURS: i64 = 24;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PublishersParams {
    /// Hours back from now, 1 up to the search index's window [default: 24].
    hours: Option<i64>,
}

/// `GET /v1/governance/tags/{name}/publishers?hours=24`: per source of the tenant (its keys'
/// and its publishing permissions'), the events of the last hours that carry the tag, and the
/// newest one's time.
#[utoipa::path(get, path = "/v1/governance/tags/{name}/publishers", tag = "governance",
    params(("name" = String, Path, description = "The tag, or one of its aliases"), PublishersParams),
    responses((status = 200, description = "`sources`: `[{source, events, last_seen}]`, most events first", body = Object),
        (status = 404, description = "No such tag", body = crate::ErrorBody),
        (status = 503, description = "This process keeps no search index", body = crate::ErrorBody)))]
pub(crate) async fn publishers(
    request: HttpRequest,
    name: web::Path<String>,
    serving: web::Data<Serving>,
) -> HttpResponse {
    answer(&serving, "governance_publishers", Instant::now(), async {
        let key = serving.authorize(&request, Scope::Read)?;
        let Some(index) = serving.search.clone() else {
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "publishers are counted from the search index, which this process does not keep (serving.search_days = 0)".to_owned(),
            ));
        };
        let params = web::Query::<PublishersParams>::from_query(request.query_string())
            .map_err(|err| bad(format!("query string: {err}")))?
            .into_inner();
        let most = index.window_ms() / HOUR_MS;
        let hours = params.hours.unwrap_or(DEFAULT_HOURS.min(most));
        if !(1..=most).contains(&hours) {
            return Err(bad(format!("hours must be 1 to {most}, the search index's window")));
        }
        let catalog = serving.catalog.current();
        let tenant = &catalog.tenants[&key.tenant];
        let Some(tag) = tenant.registry.canonical_tag(&name).map(str::to_owned) else {
            return Err((StatusCode::NOT_FOUND, format!("no tag '{name}'")));
        };
        let sources: Vec<String> = (catalog.keys.values())
            .filter(|k| k.tenant == key.tenant)
            .map(|k| k.source.clone())
            .chain(tenant.registry.sources.keys().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let now = now_millis();
        let since = now.saturating_sub(hours.saturating_mul(HOUR_MS));
        let tenant_name = key.tenant.clone();
        let field = tag.clone();
        let mut found = tokio::task::spawn_blocking(move || {
            index.publishers(&tenant_name, &field, &sources, since..now.saturating_add(1))
        })
        .await
        .expect("counting publishers does not panic")
        .map_err(|error| (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))?;
        found.sort_by(|a, b| b.events.cmp(&a.events).then(a.source.cmp(&b.source)));
        let sources: Vec<_> = (found.iter())
            .map(|p| json!({"source": p.source, "events": p.events, "last_seen": p.last_seen.map(format_rfc3339)}))
            .collect();
        Ok(json!({"tag": tag, "hours": hours, "since": format_rfc3339(since), "sources": sources}))
    })
    .await
}
