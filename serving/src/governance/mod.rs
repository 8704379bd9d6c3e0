//! The governance API (admin key, the key's tenant only): the tag registry (tags and their
//! aliases, event types with required and optional tags and retention, which sources may
//! publish what), view specs, and API keys; tag suggestions; recent rejected events.
//!
//! Every change is checked as a whole catalog ([`Catalog::new`]), saved through the
//! [`CatalogStore`] as a new generation and swapped into the shared [`CatalogHandle`](tally_connectors::catalog::CatalogHandle), so a
//! collector in this process validates against it from the next request on, and collectors
//! elsewhere once they poll the store.
//!
//! Its parts: `registry` (tags, event types, sources and views), `keys` (create, rotate,
//! delete) and `rejected` (recent rejected events and their counts); this module mounts
//! them, answers the overview and suggestions, and applies every change.

pub(crate) mod keys;
pub(crate) mod registry;
pub(crate) mod rejected;

use std::collections::BTreeMap;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tally_connectors::catalog::{CatalogError, CatalogStore};
use tally_connectors::rate_limit::GOVERNANCE_CHANGES_PER_MINUTE;
use tally_model::time::{format_rfc3339, now_millis};
use tally_model::{Catalog, Scope, Tenant};

use crate::{Refusal, Serving, bad, respond};

pub use keys::new_secret;

/// The largest body of a governance change.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest a governance change's body may take to arrive.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Mounts the governance routes.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/v1/governance", web::get().to(overview))
        .route("/v1/governance/suggest", web::get().to(suggest))
        .route("/v1/governance/rejected", web::get().to(rejected::rejected))
        .route(
            "/v1/governance/rejected/counts",
            web::get().to(rejected::rejected_counts),
        )
        .route(
            "/v1/governance/tags/{name}",
            web::put().to(registry::put_tag),
        )
        .route(
            "/v1/governance/tags/{name}",
            web::delete().to(registry::delete_tag),
        )
        .route(
            "/v1/governance/event-types/{name}",
            web::put().to(registry::put_event_type),
        )
        .route(
            "/v1/governance/event-types/{name}",
            web::delete().to(registry::delete_event_type),
        )
        .route(
            "/v1/governance/sources/{name}",
            web::put().to(registry::put_source),
        )
        .route(
            "/v1/governance/sources/{name}",
            web::delete().to(registry::delete_source),
        )
        .route(
            "/v1/governance/views/{name}",
            web::put().to(registry::put_view),
        )
        .route(
            "/v1/governance/views/{name}",
            web::delete().to(registry::delete_view),
        )
        .route("/v1/governance/keys", web::post().to(keys::post_key))
        .route(
            "/v1/governance/keys/{source}",
            web::delete().to(keys::delete_key),
        )
        .route(
            "/v1/governance/keys/{source}/rotate",
            web::post().to(keys::rotate_key),
        );
}

/// `GET /v1/governance`: the tenant's registry, views and keys (each by an id that is no part
/// of its secret: Tally keeps only the secrets' hashes). Read keys may look; changes need an
/// admin key.
#[utoipa::path(get, path = "/v1/governance", tag = "governance",
    responses((status = 200, description = "The tenant's registry, views and keys (by id, never a secret)", body = Object)))]
pub(crate) async fn overview(request: HttpRequest, serving: web::Data<Serving>) -> HttpResponse {
    answer(&serving, "governance", Instant::now(), async {
        let key = serving.authorize(&request, Scope::Read)?;
        let catalog = serving.catalog.current();
        let tenant = &catalog.tenants[&key.tenant];
        // Views the batch layer cannot recompute, with why: the console marks them.
        let manifest = serving.batch_views.manifest().await.map_err(|error| {
            tracing::error!(%error, "reading the batch manifest for the governance overview");
            (StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
        })?;
        let failing_views: BTreeMap<&str, &str> = (manifest.iter())
            .flat_map(|manifest| manifest.views.values())
            .filter(|entry| entry.tenant == key.tenant)
            .filter_map(|entry| Some((entry.view.as_str(), entry.failing.as_deref()?)))
            .collect();
        let keys: Vec<Value> = catalog
            .keys
            .values()
            .filter(|k| k.tenant == key.tenant)
            .map(|k| {
                let expires_at = k.expires_at.map(format_rfc3339);
                json!({"id": k.id(), "source": k.source, "scopes": k.scopes, "expires_at": expires_at})
            })
            .collect();
        Ok(json!({
            "tenant": key.tenant,
            // The caller's own key: the console offers changes only to an admin key.
            "you": {"id": key.id(), "source": key.source, "scopes": key.scopes},
            "registry": tenant.registry,
            "views": tenant.views,
            "failing_views": failing_views,
            "keys": keys,
        }))
    })
    .await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SuggestParams {
    /// A tag name as a client might spell it.
    tag: Option<String>,
    /// Or an event type as a client might spell it (`Order Complete`).
    event_type: Option<String>,
}

/// `GET /v1/governance/suggest?tag=acct_num` (or `?event_type=Order%20Complete`): the
/// canonical tag or event type meant.
#[utoipa::path(get, path = "/v1/governance/suggest", tag = "governance",
    params(SuggestParams),
    responses((status = 200, description = "`canonical`: the tag or event type meant, or null; `match`: canonical, alias, similar or unknown", body = Object)))]
pub(crate) async fn suggest(request: HttpRequest, serving: web::Data<Serving>) -> HttpResponse {
    answer(&serving, "governance_suggest", Instant::now(), async {
        let key = serving.authorize(&request, Scope::Read)?;
        let params =
            web::Query::<SuggestParams>::from_query(request.query_string()).map_err(|err| {
                bad(format!(
                    "query string: {err} (ask ?tag=<name> or ?event_type=<name>)"
                ))
            })?;
        let catalog = serving.catalog.current();
        let registry = &catalog.tenants[&key.tenant].registry;
        let (what, name, canonical, suggested) = match (&params.tag, &params.event_type) {
            (Some(tag), None) => (
                "tag",
                tag,
                registry.canonical_tag(tag),
                registry.suggest_tag(tag),
            ),
            (None, Some(event_type)) => (
                "event_type",
                event_type,
                registry.canonical_event_type(event_type),
                registry.suggest_event_type(event_type),
            ),
            _ => {
                return Err(bad(
                    "ask ?tag=<name> or ?event_type=<name>, one of them".to_owned()
                ));
            }
        };
        // A declared name is its own canonical name; an alias stands for another.
        let how = match canonical {
            Some(canonical) if canonical == name => "canonical",
            Some(_) => "alias",
            None if suggested.is_some() => "similar",
            None => "unknown",
        };
        Ok(json!({what: name, "canonical": suggested, "match": how}))
    })
    .await
}

/// What a change did.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Message {
    /// For people: what changed and what to do next.
    pub(crate) message: String,
}

/// Applies a change to the admin's tenant; `edit` gets the request body.
async fn change(
    request: &HttpRequest,
    serving: &Serving,
    what: &'static str,
    body: Option<web::Payload>,
    edit: impl FnOnce(&mut Tenant, &[u8]) -> Result<String, Refusal>,
) -> HttpResponse {
    change_catalog(
        request,
        serving,
        what,
        body,
        move |catalog, tenant, body| {
            let tenant = catalog
                .tenants
                .get_mut(tenant)
                .expect("an authorized key's tenant exists");
            edit(tenant, body).map(|message| json!(Message { message }))
        },
    )
    .await
}

/// Applies a change to the catalog as the admin's tenant, checks the whole catalog, saves it
/// as the next generation and makes it current. The key is checked before the body is
/// read, so a caller without one learns nothing from how its body is judged.
async fn change_catalog(
    request: &HttpRequest,
    serving: &Serving,
    what: &'static str,
    body: Option<web::Payload>,
    edit: impl FnOnce(&mut Catalog, &str, &[u8]) -> Result<Value, Refusal>,
) -> HttpResponse {
    let route = match what {
        "tag" => "governance_tag",
        "event_type" => "governance_event_type",
        "source" => "governance_source",
        "view" => "governance_view",
        _ => "governance_key",
    };
    answer(serving, route, Instant::now(), async {
        let key = serving.authorize(request, Scope::Admin)?;
        let body = match body {
            Some(body) => read_body(body).await?,
            None => Default::default(),
        };
        let Some(store) = &serving.governance else {
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "this process serves a read-only catalog; change it where tally up or tally serve runs".to_owned(),
            ));
        };
        if let Err(wait) = serving.governance_changes.charge(&key.tenant) {
            return Err((
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "this tenant made {GOVERNANCE_CHANGES_PER_MINUTE} governance changes in the last minute, the most allowed (each writes the whole catalog); retry after {} s",
                    wait.as_secs().max(1)
                ),
            ));
        }
        let (generation, current) = serving.catalog.current_with_generation();
        let mut catalog = (*current).clone();
        // Secrets whose rotation grace is over leave before the change is made, so that it
        // sees only the keys that still work.
        let now = now_millis();
        catalog.keys.retain(|_, key| key.live_at(now));
        let reply = edit(&mut catalog, &key.tenant, &body)?;
        let keys = catalog.keys.values().cloned().collect();
        let checked = Catalog::new(catalog.tenants, keys).map_err(|problems| {
            bad(format!("the change leaves the catalog inconsistent: {problems}"))
        })?;
        save(serving, store, &checked, generation).await?;
        Ok(reply)
    })
    .await
}

/// A governance change's body, within [`MAX_BODY_BYTES`] and [`BODY_TIMEOUT`].
pub(crate) async fn read_body(body: web::Payload) -> Result<actix_web::web::Bytes, Refusal> {
    actix_web::rt::time::timeout(BODY_TIMEOUT, body.to_bytes_limited(MAX_BODY_BYTES))
        .await
        .map_err(|_| {
            (
                StatusCode::REQUEST_TIMEOUT,
                format!("the body took over {} s to arrive", BODY_TIMEOUT.as_secs()),
            )
        })?
        .map_err(|_| {
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a governance change is at most {MAX_BODY_BYTES} bytes"),
            )
        })?
        .map_err(|err| bad(format!("could not read the request body: {err}")))
}

/// A request body as a `T`; a mistake is a 400 that says what was expected.
pub(crate) fn parsed<T: serde::de::DeserializeOwned>(
    what: &str,
    body: &[u8],
) -> Result<T, Refusal> {
    serde_json::from_slice(body)
        .map_err(|err| bad(format!("the body is not a valid {what} (JSON): {err}")))
}

async fn save(
    serving: &Serving,
    store: &CatalogStore,
    catalog: &Catalog,
    generation: u64,
) -> Result<(), Refusal> {
    match store.save(catalog, generation).await {
        Ok(stored) => {
            tracing::info!(generation = stored.generation, "catalog changed");
            serving.catalog.offer(stored);
            Ok(())
        }
        Err(err @ CatalogError::Conflict(_)) => Err((StatusCode::CONFLICT, err.to_string())),
        Err(err) => {
            tracing::error!(error = %err, "could not save the catalog");
            Err((StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))
        }
    }
}

fn removed<T>(found: Option<T>, what: &str, name: &str) -> Result<String, Refusal> {
    match found {
        Some(_) => Ok(format!("{what} '{name}' deleted")),
        None => Err((StatusCode::NOT_FOUND, format!("no {what} '{name}'"))),
    }
}

pub(crate) async fn answer(
    serving: &Serving,
    route: &'static str,
    started: Instant,
    result: impl Future<Output = Result<Value, Refusal>>,
) -> HttpResponse {
    respond(serving, route, started, result.await)
}
