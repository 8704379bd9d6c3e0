//! The OpenAPI document of serving's routes, generated from the handlers' `#[utoipa::path]`
//! annotations and the request and answer types. Every route needs a key
//! (`Authorization: Bearer`), so every operation lists the `api_key` scheme and the
//! refusals any route can give.

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::{Content, OpenApi as Document, Ref, RefOr, Response};
use utoipa::{Modify, OpenApi};

use crate::ErrorBody;

/// The name of the bearer-key security scheme the operations refer to.
pub const SECURITY_SCHEME: &str = "api_key";

#[derive(OpenApi)]
#[openapi(
    paths(
        crate::get_query,
        crate::seed::count,
        crate::seed::search,
        crate::governance::overview,
        crate::governance::suggest,
        crate::governance::rejected::rejected,
        crate::governance::rejected::rejected_counts,
        crate::governance::registry::put_tag,
        crate::governance::registry::delete_tag,
        crate::governance::registry::put_event_type,
        crate::governance::registry::delete_event_type,
        crate::governance::registry::put_source,
        crate::governance::registry::delete_source,
        crate::governance::registry::put_view,
        crate::governance::registry::delete_view,
        crate::governance::keys::post_key,
        crate::governance::keys::delete_key,
        crate::governance::keys::rotate_key,
        crate::publishers::publishers,
        crate::review::versions,
        crate::review::reprocess,
        crate::review::promote,
        crate::review::jobs,
        crate::review::job,
    ),
    components(schemas(ErrorBody)),
    modifiers(&KeyedRoutes),
    tags(
        (name = "query", description = "Views over time: batch before the horizon, real-time after it"),
        (name = "seed", description = "The seed dashboards' API, kept compatible"),
        (name = "governance", description = "Tag registry, views and keys of the key's tenant; changes need an admin key"),
    )
)]
struct ServingApi;

/// Adds the key requirement and the refusals every keyed route can give.
struct KeyedRoutes;

impl Modify for KeyedRoutes {
    fn modify(&self, document: &mut Document) {
        let refusal = |description: &str| {
            RefOr::T(
                Response::builder()
                    .description(description)
                    .content(
                        "application/json",
                        Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                    )
                    .build(),
            )
        };
        let common = [
            ("400", "The request is wrong; the error says how"),
            ("401", "No key, or an unknown one"),
            ("403", "The key lacks the route's scope"),
            ("500", "A store failed; the error says which"),
        ];
        for item in document.paths.paths.values_mut() {
            let operations: [&mut Option<Operation>; 4] = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                operation.security = Some(vec![SecurityRequirement::new(
                    SECURITY_SCHEME,
                    Vec::<String>::new(),
                )]);
                for (status, description) in common {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| refusal(description));
                }
            }
        }
    }
}

/// Serving's routes as an OpenAPI document.
pub fn openapi() -> Document {
    ServingApi::openapi()
}
