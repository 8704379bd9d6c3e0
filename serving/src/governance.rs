//! The governance API (admin key, the key's tenant only): the tag registry (tags and their
//! aliases, event types with required and optional tags and retention, which sources may
//! publish what), view specs, and API keys; tag suggestions; recent rejected events.
//!
//! Every change is checked as a whole catalog ([`Catalog::new`]), saved through the
//! [`CatalogStore`] as a new generation and swapped into the shared [`CatalogHandle`], so a
//! collector in this process validates against it from the next request on, and collectors
//! elsewhere once they poll the store.

use std::collections::BTreeMap;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tally_connectors::catalog::{CatalogError, CatalogStore};
use tally_model::registry::{EventTypeSpec, SourcePolicy, TagSpec};
use tally_model::time::{HOUR_MS, format_rfc3339, now_millis};
use tally_model::{ApiKey, Catalog, Millis, RejectedEvent, Scope, Tenant, ViewSpec};

use crate::ErrorBody;

use crate::raw::RejectFilter;
use crate::{Refusal, Serving, bad, respond};

/// Most rejected events one request lists.
const MAX_REJECTED: usize = 500;
/// The largest body of a governance change.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest a governance change's body may take to arrive.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a rotated key's old secret keeps working unless the rotation says.
const DEFAULT_ROTATION_GRACE_SECS: u64 = 24 * 3600;
/// The longest grace a rotation may give the old secret.
const MAX_ROTATION_GRACE_SECS: u64 = 30 * 24 * 3600;

/// Mounts the governance routes.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/v1/governance", web::get().to(overview))
        .route("/v1/governance/suggest", web::get().to(suggest))
        .route("/v1/governance/rejected", web::get().to(rejected))
        .route(
            "/v1/governance/rejected/counts",
            web::get().to(rejected_counts),
        )
        .route("/v1/governance/tags/{name}", web::put().to(put_tag))
        .route("/v1/governance/tags/{name}", web::delete().to(delete_tag))
        .route(
            "/v1/governance/event-types/{name}",
            web::put().to(put_event_type),
        )
        .route(
            "/v1/governance/event-types/{name}",
            web::delete().to(delete_event_type),
        )
        .route("/v1/governance/sources/{name}", web::put().to(put_source))
        .route(
            "/v1/governance/sources/{name}",
            web::delete().to(delete_source),
        )
        .route("/v1/governance/views/{name}", web::put().to(put_view))
        .route("/v1/governance/views/{name}", web::delete().to(delete_view))
        .route("/v1/governance/keys", web::post().to(post_key))
        .route("/v1/governance/keys/{source}", web::delete().to(delete_key))
        .route(
            "/v1/governance/keys/{source}/rotate",
            web::post().to(rotate_key),
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct RejectedParams {
    /// How many to list [default: 50, at most 500].
    limit: Option<usize>,
    /// Only events with a reason of this code, e.g. `unknown_tag`.
    code: Option<String>,
    /// Only events from this source.
    source: Option<String>,
}

/// `GET /v1/governance/rejected?limit=N&code=C&source=S`: the tenant's most recent rejected
/// events with their reasons and codes, newest first; among the last 100,000 records of the
/// rejected stream.
#[utoipa::path(get, path = "/v1/governance/rejected", tag = "governance",
    params(RejectedParams),
    responses((status = 200, description = "Rejected events, newest first", body = [RejectedEvent])))]
pub(crate) async fn rejected(request: HttpRequest, serving: web::Data<Serving>) -> HttpResponse {
    answer(&serving, "governance_rejected", Instant::now(), async {
        let key = serving.authorize(&request, Scope::Read)?;
        let params = web::Query::<RejectedParams>::from_query(request.query_string())
            .map_err(|err| bad(format!("query string: {err}")))?
            .into_inner();
        let limit = params.limit.unwrap_or(50).min(MAX_REJECTED);
        let wanted = RejectFilter {
            code: params.code,
            source: params.source,
        };
        let rejected = serving
            .raw
            .recent_rejected(&key.tenant, wanted, limit)
            .await
            .map_err(|err| (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?;
        Ok(json!(rejected))
    })
    .await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct RejectedCountsParams {
    /// How many hours back [default: 24, at most 168].
    hours: Option<u32>,
}

/// The longest a rejected-events count looks back.
const MAX_COUNT_HOURS: u32 = 168;

/// `GET /v1/governance/rejected/counts?hours=24`: the tenant's rejected events per hour,
/// by their first reason's code and their source.
#[utoipa::path(get, path = "/v1/governance/rejected/counts", tag = "governance",
    params(RejectedCountsParams),
    responses((status = 200, description = "`counts`: hour, code, source and count, oldest hour first; `complete`: false when the stream held more than 100,000 records to read", body = Object)))]
pub(crate) async fn rejected_counts(
    request: HttpRequest,
    serving: web::Data<Serving>,
) -> HttpResponse {
    answer(&serving, "governance_rejected_counts", Instant::now(), async {
        let key = serving.authorize(&request, Scope::Read)?;
        let params = web::Query::<RejectedCountsParams>::from_query(request.query_string())
            .map_err(|err| bad(format!("query string: {err}")))?;
        let hours = params.hours.unwrap_or(24).clamp(1, MAX_COUNT_HOURS);
        let now = now_millis();
        let since = (now - i64::from(hours) * HOUR_MS).div_euclid(HOUR_MS) * HOUR_MS;
        let (counts, complete) = serving
            .raw
            .rejected_counts(&key.tenant, since)
            .await
            .map_err(|err| (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?;
        let counts: Vec<Value> = counts
            .into_iter()
            .map(|((hour, code, source), count)| {
                json!({"hour": format_rfc3339(hour), "code": code, "source": source, "count": count})
            })
            .collect();
        Ok(json!({"since": format_rfc3339(since), "counts": counts, "complete": complete}))
    })
    .await
}

#[utoipa::path(put, path = "/v1/governance/tags/{name}", tag = "governance",
    params(("name" = String, Path, description = "The canonical tag name")), request_body = TagSpec,
    responses((status = 200, description = "Saved", body = Message)))]
pub(crate) async fn put_tag(
    request: HttpRequest,
    name: web::Path<String>,
    body: web::Payload,
    serving: web::Data<Serving>,
) -> HttpResponse {
    let entry = RegistryEntry::new("tag", "tag", |tenant| &mut tenant.registry.tags);
    put_entry(&request, &serving, entry, name.into_inner(), body).await
}

#[utoipa::path(delete, path = "/v1/governance/tags/{name}", tag = "governance",
    params(("name" = String, Path, description = "The canonical tag name")),
    responses((status = 200, description = "Deleted", body = Message), (status = 404, description = "No such tag", body = ErrorBody)))]
pub(crate) async fn delete_tag(
    request: HttpRequest,
    name: web::Path<String>,
    serving: web::Data<Serving>,
) -> HttpResponse {
    let entry = RegistryEntry::new("tag", "tag", |tenant| &mut tenant.registry.tags);
    delete_entry(&request, &serving, entry, name.into_inner()).await
}

#[utoipa::path(put, path = "/v1/governance/event-types/{name}", tag = "governance",
    params(("name" = String, Path, description = "The event type")), request_body = EventTypeSpec,
    responses((status = 200, description = "Saved", body = Message)))]
pub(crate) async fn put_event_type(
    request: HttpRequest,
    name: web::Path<String>,
    body: web::Payload,
    serving: web::Data<Serving>,
) -> HttpResponse {
    let entry = RegistryEntry::new("event_type", "event type", |tenant| {
        &mut tenant.registry.event_types
    });
    put_entry(&request, &serving, entry, name.into_inner(), body).await
}

#[utoipa::path(delete, path = "/v1/governance/event-types/{name}", tag = "governance",
    params(("name" = String, Path, description = "The event type")),
    responses((status = 200, description = "Deleted", body = Message), (status = 404, description = "No such event type", body = ErrorBody)))]
pub(crate) async fn delete_event_type(
    request: HttpRequest,
    name: web::Path<String>,
    serving: web::Data<Serving>,
) -> HttpResponse {
    let entry = RegistryEntry::new("event_type", "event type", |tenant| {
        &mut tenant.registry.event_types
    });
    delete_entry(&request, &serving, entry, name.into_inner()).await
}

#[utoipa::path(put, path = "/v1/governance/sources/{name}", tag = "governance",
    params(("name" = String, Path, description = "The source (API key name)")), request_body = SourcePolicy,
    responses((status = 200, description = "Saved", body = Message)))]
pub(crate) async fn put_source(
    request: HttpRequest,
    name: web::Path<String>,
    body: web::Payload,
    serving: web::Data<Serving>,
) -> HttpResponse {
    let entry = RegistryEntry::new("source", "source policy", |tenant| {
        &mut tenant.registry.sources
    });
    put_entry(&request, &serving, entry, name.into_inner(), body).await
}

#[utoipa::path(delete, path = "/v1/governance/sources/{name}", tag = "governance",
    params(("name" = String, Path, description = "The source (API key name)")),
    responses((status = 200, description = "Deleted", body = Message), (status = 404, description = "No such source", body = ErrorBody)))]
pub(crate) async fn delete_source(
    request: HttpRequest,
    name: web::Path<String>,
    serving: web::Data<Serving>,
) -> HttpResponse {
    let entry = RegistryEntry::new("source", "source policy", |tenant| {
        &mut tenant.registry.sources
    });
    delete_entry(&request, &serving, entry, name.into_inner()).await
}

#[utoipa::path(put, path = "/v1/governance/views/{name}", tag = "governance",
    params(("name" = String, Path, description = "The view")), request_body = ViewSpec,
    responses((status = 200, description = "Saved; the message says what to reprocess or restart", body = Message)))]
pub(crate) async fn put_view(
    request: HttpRequest,
    name: web::Path<String>,
    body: web::Payload,
    serving: web::Data<Serving>,
) -> HttpResponse {
    let name = name.into_inner();
    change(&request, &serving, "view", Some(body), move |tenant, body| {
        let spec: ViewSpec = parsed("view", body)?;
        if spec.name != name {
            return Err(bad(format!(
                "the body names view '{}' but the path '{name}'",
                spec.name
            )));
        }
        let message = match tenant.views.iter_mut().find(|v| v.name == name) {
            Some(existing) if *existing == spec => return Ok(format!("view '{name}' is unchanged")),
            Some(existing) => {
                *existing = spec;
                format!(
                    "view '{name}' changed: the batch layer computes new hours under a new logic version; to recompute history with it, POST /v1/governance/views/{name}/reprocess a range, review it with logic_version=N, then promote it (GET /v1/governance/views/{name}/versions names N). Restart the speed layer so it compiles the new spec: its states of the old spec are never counted under the new one, so until then the view has no real-time part"
                )
            }
            None => {
                tenant.views.push(spec);
                format!(
                    "view '{name}' added: the batch layer computes it from the next run; restart the speed layer so it compiles the new spec"
                )
            }
        };
        Ok(message)
    })
    .await
}

#[utoipa::path(delete, path = "/v1/governance/views/{name}", tag = "governance",
    params(("name" = String, Path, description = "The view")),
    responses((status = 200, description = "Deleted", body = Message), (status = 404, description = "No such view", body = ErrorBody)))]
pub(crate) async fn delete_view(
    request: HttpRequest,
    name: web::Path<String>,
    serving: web::Data<Serving>,
) -> HttpResponse {
    change(&request, &serving, "view", None, move |tenant, _| {
        let position = tenant.views.iter().position(|v| v.name == *name);
        removed(position.map(|at| tenant.views.remove(at)), "view", &name)
    })
    .await
}

/// A key to create.
#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct NewKey {
    /// The source name events sent with the key carry; unique per tenant.
    source: String,
    /// What the key may do.
    scopes: Vec<Scope>,
}

/// A created key.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct NewKeySecret {
    /// What happened.
    message: String,
    /// The secret, to send as `Authorization: Bearer <key>`; shown only in this answer.
    key: String,
}

/// What a change did.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Message {
    /// For people: what changed and what to do next.
    message: String,
}

/// `POST /v1/governance/keys {"source": "...", "scopes": ["write"]}`: a new key for the
/// tenant; its secret is shown once, in the answer.
#[utoipa::path(post, path = "/v1/governance/keys", tag = "governance", request_body = NewKey,
    responses((status = 200, description = "Created; `key` holds the secret, shown only now", body = NewKeySecret),
        (status = 409, description = "The tenant already has a key of that name", body = ErrorBody)))]
pub(crate) async fn post_key(
    request: HttpRequest,
    body: web::Payload,
    serving: web::Data<Serving>,
) -> HttpResponse {
    let secret = new_secret();
    let shown = secret.clone();
    change_catalog(
        &request,
        &serving,
        "key",
        Some(body),
        move |catalog, tenant, body| {
            let NewKey { source, scopes } = parsed("key", body)?;
            if source.trim().is_empty() || scopes.is_empty() {
                return Err(bad(
                    "a key needs a source name and at least one scope".to_owned()
                ));
            }
            if catalog
                .keys
                .values()
                .any(|k| k.tenant == tenant && k.source == source)
            {
                return Err((
                    StatusCode::CONFLICT,
                    format!(
                        "tenant '{tenant}' already has a key named '{source}'; delete it first"
                    ),
                ));
            }
            let key = ApiKey::new(&secret, tenant, &source, scopes);
            catalog.keys.insert(key.secret_sha256.clone(), key);
            Ok(json!(NewKeySecret {
                message: format!("key '{source}' created; its secret is shown only now"),
                key: shown,
            }))
        },
    )
    .await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RotateParams {
    /// How long the old secret keeps working, in seconds [default: 86400, at most 30 days].
    grace_secs: Option<u64>,
}

/// `POST /v1/governance/keys/{source}/rotate?grace_secs=N`: a new secret for the key, with
/// the same source and scopes; the old secret keeps working for the grace period, so that
/// clients can move over without downtime.
#[utoipa::path(post, path = "/v1/governance/keys/{source}/rotate", tag = "governance",
    params(("source" = String, Path, description = "The key's source name"), RotateParams),
    responses((status = 200, description = "Rotated; `key` holds the new secret, shown only now", body = NewKeySecret),
        (status = 404, description = "No such key", body = ErrorBody),
        (status = 409, description = "The key is already being rotated", body = ErrorBody)))]
pub(crate) async fn rotate_key(
    request: HttpRequest,
    source: web::Path<String>,
    serving: web::Data<Serving>,
) -> HttpResponse {
    let secret = new_secret();
    let shown = secret.clone();
    let grace = web::Query::<RotateParams>::from_query(request.query_string())
        .map(|params| params.grace_secs.unwrap_or(DEFAULT_ROTATION_GRACE_SECS));
    change_catalog(&request, &serving, "key", None, move |catalog, tenant, _| {
        let grace = grace.map_err(|err| bad(format!("query string: {err}")))?;
        if grace > MAX_ROTATION_GRACE_SECS {
            return Err(bad(format!(
                "grace_secs may be at most {MAX_ROTATION_GRACE_SECS} (30 days)"
            )));
        }
        let now = now_millis();
        let mut named = catalog
            .keys
            .values_mut()
            .filter(|key| key.tenant == tenant && key.source == *source);
        let Some(old) = named.next() else {
            return Err((StatusCode::NOT_FOUND, format!("no key named '{source}'")));
        };
        if old.expires_at.is_some() || named.next().is_some() {
            return Err((
                StatusCode::CONFLICT,
                format!("key '{source}' is being rotated already; wait for the old secret to expire, or delete the key and create it anew"),
            ));
        }
        let grace_ms = Millis::try_from(grace.saturating_mul(1000)).unwrap_or(Millis::MAX);
        old.expires_at = Some(now.saturating_add(grace_ms));
        let expires = format_rfc3339(now.saturating_add(grace_ms));
        let new = ApiKey::new(&secret, tenant, &source, old.scopes.clone());
        catalog.keys.insert(new.secret_sha256.clone(), new);
        Ok(json!(NewKeySecret {
            message: format!(
                "key '{source}' rotated: the new secret is shown only now; the old one works until {expires}"
            ),
            key: shown,
        }))
    })
    .await
}

#[utoipa::path(delete, path = "/v1/governance/keys/{source}", tag = "governance",
    params(("source" = String, Path, description = "The key's source name")),
    responses((status = 200, description = "Deleted", body = Message), (status = 404, description = "No such key", body = ErrorBody)))]
pub(crate) async fn delete_key(
    request: HttpRequest,
    source: web::Path<String>,
    serving: web::Data<Serving>,
) -> HttpResponse {
    change_catalog(
        &request,
        &serving,
        "key",
        None,
        move |catalog, tenant, _| {
            let before = catalog.keys.len();
            catalog
                .keys
                .retain(|_, key| !(key.tenant == tenant && key.source == *source));
            if catalog.keys.len() == before {
                return Err((StatusCode::NOT_FOUND, format!("no key named '{source}'")));
            }
            Ok(json!(Message {
                message: format!("key '{source}' deleted")
            }))
        },
    )
    .await
}

/// One of the registry's maps that governance edits by name: tags, event types, sources.
struct RegistryEntry<T> {
    /// The route's name in metrics: `tag`, `event_type`, `source`.
    route: &'static str,
    /// What an entry is, for people: `tag`, `event type`, `source policy`.
    label: &'static str,
    map: fn(&mut Tenant) -> &mut BTreeMap<String, T>,
}

impl<T> RegistryEntry<T> {
    fn new(
        route: &'static str,
        label: &'static str,
        map: fn(&mut Tenant) -> &mut BTreeMap<String, T>,
    ) -> Self {
        RegistryEntry { route, label, map }
    }
}

/// Saves the entry `name` from the request body.
async fn put_entry<T: serde::de::DeserializeOwned>(
    request: &HttpRequest,
    serving: &Serving,
    entry: RegistryEntry<T>,
    name: String,
    body: web::Payload,
) -> HttpResponse {
    change(
        request,
        serving,
        entry.route,
        Some(body),
        move |tenant, body| {
            let value: T = parsed(entry.label, body)?;
            (entry.map)(tenant).insert(name.clone(), value);
            Ok(format!("{} '{name}' saved", entry.label))
        },
    )
    .await
}

/// Deletes the entry `name`; 404 when there is none.
async fn delete_entry<T>(
    request: &HttpRequest,
    serving: &Serving,
    entry: RegistryEntry<T>,
    name: String,
) -> HttpResponse {
    change(request, serving, entry.route, None, move |tenant, _| {
        removed((entry.map)(tenant).remove(&name), entry.label, &name)
    })
    .await
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
        let (generation, current) = serving.catalog.current_with_generation();
        let mut catalog = (*current).clone();
        let reply = edit(&mut catalog, &key.tenant, &body)?;
        // Secrets whose rotation grace is over leave with the next change.
        let now = now_millis();
        let keys = catalog
            .keys
            .values()
            .filter(|key| key.live_at(now))
            .cloned()
            .collect();
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

/// A new random key secret: `tk_` and 32 hex digits.
pub fn new_secret() -> String {
    use rand::RngExt;
    let bytes: [u8; 16] = rand::rng().random();
    format!(
        "tk_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}
