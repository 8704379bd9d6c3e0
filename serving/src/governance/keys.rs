//! API keys: created with a secret shown once, rotated with a grace period for the old
//! secret, deleted.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tally_model::registry::SourcePolicy;
use tally_model::time::{format_rfc3339, now_millis};
use tally_model::{ApiKey, Millis, Scope};

use super::{Message, change_catalog, parsed};
use crate::{ErrorBody, Serving, bad};

/// How long a rotated key's old secret keeps working unless the rotation says.
const DEFAULT_ROTATION_GRACE_SECS: u64 = 24 * 3600;
/// The longest grace a rotation may give the old secret.
const MAX_ROTATION_GRACE_SECS: u64 = 30 * 24 * 3600;

/// A key to create, for the admin key's own tenant.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewKey {
    /// The source name events sent with the key carry; unique per tenant.
    source: String,
    /// What the key may do.
    scopes: Vec<Scope>,
    /// With the write scope: the event types its source may publish (`"*"`: any), set in the
    /// registry with the key. A source with no permissions is refused every event.
    #[serde(default)]
    publishes: Option<Vec<String>>,
}

/// A created key.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct NewKeySecret {
    /// What happened.
    message: String,
    /// The secret, to send as `Authorization: Bearer <key>`; shown only in this answer.
    key: String,
    /// With the write scope: the event types its source may publish. Empty: none yet, and
    /// every event it sends is refused until `PUT /v1/governance/sources/{source}` allows some.
    #[serde(skip_serializing_if = "Option::is_none")]
    publishes: Option<Vec<String>>,
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
            let NewKey {
                source,
                scopes,
                publishes,
            } = parsed("key", body)?;
            if source.trim().is_empty() || scopes.is_empty() {
                return Err(bad(
                    "a key needs a source name and at least one scope".to_owned()
                ));
            }
            if let Some(twice) = scopes
                .iter()
                .enumerate()
                .find_map(|(at, scope)| scopes[..at].contains(scope).then_some(scope))
            {
                return Err(bad(format!(
                    "scope {} is given twice; list each scope once",
                    format!("{twice:?}").to_lowercase()
                )));
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
            let writes = scopes.contains(&Scope::Write);
            let sources = &mut catalog
                .tenants
                .get_mut(tenant)
                .expect("an admin key's tenant is in the catalog")
                .registry
                .sources;
            if let Some(event_types) = publishes.filter(|_| writes) {
                sources.insert(source.clone(), SourcePolicy { event_types });
            }
            let publishes = writes.then(|| {
                sources
                    .get(&source)
                    .map(|policy| policy.event_types.clone())
                    .unwrap_or_default()
            });
            let mut message = format!("key '{source}' created; its secret is shown only now");
            match &publishes {
                Some(types) if types.is_empty() => message.push_str(&format!(
                    ". Source '{source}' may not publish any event type yet, so every event sent with this key is refused: allow some with PUT /v1/governance/sources/{source} {{\"event_types\": [\"*\"]}} (or the types it sends), or create the key with \"publishes\""
                )),
                Some(types) => message.push_str(&format!(
                    "; source '{source}' may publish {}",
                    types.join(", ")
                )),
                None => {}
            }
            let key = ApiKey::new(&secret, tenant, &source, scopes);
            catalog.keys.insert(key.secret_sha256.clone(), key);
            Ok(json!(NewKeySecret {
                message,
                key: shown,
                publishes,
            }))
        },
    )
    .await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
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
            publishes: None,
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

/// A new random key secret: `tk_` and 32 hex digits.
pub fn new_secret() -> String {
    use rand::RngExt;
    let bytes: [u8; 16] = rand::rng().random();
    format!(
        "tk_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}
