//! The tag registry's entries (tags, event types, source policies) and the views, saved
//! and deleted by name.

use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse, web};
use tally_model::name::ANY_EVENT_TYPE;
use tally_model::registry::{EventTypeSpec, SourcePolicy, TagSpec};
use tally_model::{Tenant, ViewSpec};

use super::{Message, change, parsed, removed};
use crate::{ErrorBody, Serving, bad};

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
    })
    .checked_by(|tenant, policy: &SourcePolicy| {
        let registry = &tenant.registry;
        match policy
            .event_types
            .iter()
            .find(|name| *name != ANY_EVENT_TYPE && !registry.event_types.contains_key(*name))
        {
            Some(unknown) => Err(format!(
                "event type '{unknown}' is not registered; register it first (PUT /v1/governance/event-types/{unknown}), or allow \"*\""
            )),
            None => Ok(()),
        }
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
    responses((status = 200, description = "Saved; the message says what to reprocess", body = Message)))]
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
                    "view '{name}' changed: the batch layer computes new hours under a new logic version; to recompute history with it, POST /v1/governance/views/{name}/reprocess a range, review it with logic_version=N, then promote it (GET /v1/governance/views/{name}/versions names N). The speed layer builds the new spec's real-time states from the events since the horizon, without a restart; queries answer from the old spec's until they are complete (a query that needs what only the new spec has gets 503 meanwhile)"
                )
            }
            None => {
                tenant.views.push(spec);
                format!(
                    "view '{name}' added: the speed layer builds its real-time states from the events since the horizon, without a restart (queries get 503 until they are complete, usually seconds), and the batch layer computes it from its next run"
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

/// One of the registry's maps that governance edits by name: tags, event types, sources.
struct RegistryEntry<T> {
    /// The route's name in metrics: `tag`, `event_type`, `source`.
    route: &'static str,
    /// What an entry is, for people: `tag`, `event type`, `source policy`.
    label: &'static str,
    map: fn(&mut Tenant) -> &mut BTreeMap<String, T>,
    /// What an entry must satisfy besides the catalog's own checks, and what to do if not.
    check: fn(&Tenant, &T) -> Result<(), String>,
}

impl<T> RegistryEntry<T> {
    fn new(
        route: &'static str,
        label: &'static str,
        map: fn(&mut Tenant) -> &mut BTreeMap<String, T>,
    ) -> Self {
        RegistryEntry {
            route,
            label,
            map,
            check: |_, _| Ok(()),
        }
    }

    fn checked_by(self, check: fn(&Tenant, &T) -> Result<(), String>) -> Self {
        RegistryEntry { check, ..self }
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
            (entry.check)(tenant, &value)
                .map_err(|problem| bad(format!("{} '{name}': {problem}", entry.label)))?;
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
