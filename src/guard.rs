//! The door of the HTTP server: every request to a layer's route is admitted by the caller
//! limits ([`CallerLimits`]) before it reaches the layer, a 401 is reported back to them, a
//! request head that trickles in is cut off, `HEAD` is answered as `GET` without a body, and a
//! path no route takes gets a JSON 404.

use std::net::IpAddr;
use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode, header};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, web};
use tally_connectors::rate_limit::CallerLimits;
use tally_model::key::bearer_secret;

/// Operations routes, which probes and scrapers call often from one address.
const UNLIMITED: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// How long a client may take to send its request head; actix-web's default is 5 s.
pub const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Admits a request through the caller limits, or answers 429 with `Retry-After`.
pub async fn limit_callers(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let Some(limits) = request.app_data::<web::Data<CallerLimits>>().cloned() else {
        return Ok(next.call(request).await?.map_into_left_body());
    };
    if UNLIMITED.contains(&request.path()) {
        return Ok(next.call(request).await?.map_into_left_body());
    }
    let address = client_address(&request);
    let secret = key_secret(&request);
    if let Err(refused) = limits.admit(address, secret.as_deref()) {
        let response = HttpResponse::build(StatusCode::TOO_MANY_REQUESTS)
            .insert_header((header::RETRY_AFTER, refused.retry_after_secs().to_string()))
            .json(serde_json::json!({"error": refused.message()}));
        return Ok(request.into_response(response).map_into_right_body());
    }
    let response = next.call(request).await?;
    if response.status() == StatusCode::UNAUTHORIZED {
        limits.auth_failed(address);
    }
    Ok(response.map_into_left_body())
}

/// Answers `HEAD` as the `GET` of the same path would be answered, without its body
/// (RFC 9110, 9.3.2): the routes are declared for `GET` only.
pub async fn head_as_get(
    mut request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody, ()>>, actix_web::Error> {
    if request.method() != Method::HEAD {
        return Ok(next.call(request).await?.map_into_left_body());
    }
    request.head_mut().method = Method::GET;
    let response = next.call(request).await?;
    Ok(response.map_body(|_, _| EitherBody::right(())))
}

/// Answers a request no route takes, in JSON like every other refusal.
pub async fn no_such_route(request: actix_web::HttpRequest) -> HttpResponse {
    HttpResponse::NotFound().json(serde_json::json!({
        "error": format!(
            "no route {} {}; the routes are listed in /openapi.json",
            request.method(),
            request.path()
        )
    }))
}

/// The address the request came from: the peer's. Behind a proxy every caller shares the
/// proxy's; set the per-address limits for that, or to 0.
fn client_address(request: &ServiceRequest) -> Option<IpAddr> {
    request.peer_addr().map(|peer| peer.ip())
}

/// The key the request carries: `Authorization: Bearer <secret>`, or the pixel's `k=`.
fn key_secret(request: &ServiceRequest) -> Option<String> {
    if let Some(secret) = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_secret)
    {
        return Some(secret.to_owned());
    }
    web::Query::<Vec<(String, String)>>::from_query(request.query_string())
        .ok()?
        .into_inner()
        .into_iter()
        .find(|(name, _)| name == "k")
        .map(|(_, secret)| secret)
}
