//! What every collector route does with a request before its events are read: refusing it
//! whole with a status and a reason, finding its write key, and reading its body within the
//! size and time limits, gzip or not.
// This module reads what callers send: its arithmetic is checked or saturating, never
// wrapping (docs/hardening.md).
#![deny(clippy::arithmetic_side_effects)]

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, ContentType};
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};
use base64::Engine;
use serde::Serialize;
use tally_connectors::log::LogError;
use tally_connectors::rate_limit::CallerLimits;
use tally_model::tenant::AuthError;
use tally_model::time::now_millis;
use tally_model::{ApiKey, Catalog, Scope};

use crate::Collector;

/// Why a request is refused as a whole: its status, a short reason for `/metrics` and the
/// trackers' `code`, and what to tell the caller.
pub(crate) struct Refusal {
    pub status: StatusCode,
    pub reason: &'static str,
    pub message: String,
    /// Seconds to wait before retrying, sent as `Retry-After`.
    pub retry_after_secs: Option<u64>,
}

/// A refusal's body on Tally's own routes.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct IngestError {
    /// Why, and what to do.
    error: String,
}

/// A refusal's body on the trackers' routes, as Segment's API answers: the SDKs read `code`
/// and `message`.
#[derive(Serialize)]
pub(crate) struct TrackerError<'a> {
    code: &'a str,
    message: &'a str,
}

impl Refusal {
    pub fn new(status: StatusCode, reason: &'static str, message: String) -> Self {
        Refusal {
            status,
            reason,
            message,
            retry_after_secs: None,
        }
    }

    /// The answer on Tally's own routes: `{"error": ...}`.
    pub fn into_response(self) -> HttpResponse {
        self.response_builder()
            .insert_header(ContentType::json())
            .json(IngestError {
                error: self.message,
            })
    }

    /// The answer on the trackers' routes: `{"code": ..., "message": ...}`.
    pub fn into_tracker_response(self) -> HttpResponse {
        self.response_builder().json(TrackerError {
            code: self.reason,
            message: &self.message,
        })
    }

    fn response_builder(&self) -> HttpResponseBuilder {
        let mut builder = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after_secs {
            builder.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        builder
    }
}

impl From<LogError> for Refusal {
    fn from(err: LogError) -> Self {
        tracing::error!(error = %err, "could not store events durably");
        Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_stored",
            format!("could not store events durably, nothing was acknowledged; retry: {err}"),
        )
    }
}

/// The request's write key from its `Authorization` header (`Bearer <key>`), and the catalog
/// it was checked against.
pub(crate) fn authorize(
    request: &HttpRequest,
    collector: &Collector,
) -> Result<(ApiKey, Arc<Catalog>), Refusal> {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let catalog = collector.catalog.current();
    match catalog.authorize(header, Scope::Write, now_millis()) {
        Ok(key) => Ok((key.clone(), catalog.clone())),
        Err(refused) => Err(Refusal::from(refused)),
    }
}

/// The write key whose secret is `secret`, found in the request's Basic header, path or
/// body, and the catalog it was checked against; `what` says where the secret came from, for
/// the refusal. The secret is charged to its key's rate limit first: the server's door sees
/// only a bearer token and the pixel's `k`.
pub(crate) fn write_key(
    request: &HttpRequest,
    secret: &str,
    what: &str,
    collector: &Collector,
) -> Result<(ApiKey, Arc<Catalog>), Refusal> {
    if let Some(limits) = request.app_data::<web::Data<CallerLimits>>() {
        limits
            .admit(None, Some(secret))
            .map_err(|refused| Refusal {
                status: StatusCode::TOO_MANY_REQUESTS,
                reason: "rate_limited",
                message: refused.message(),
                retry_after_secs: Some(refused.retry_after_secs()),
            })?;
    }
    let catalog = collector.catalog.current();
    match catalog.authorize_secret(secret, Scope::Write, now_millis()) {
        Ok(key) => Ok((key.clone(), catalog.clone())),
        Err(AuthError::Unknown) => Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!("{what} is not a known write key; use a key with the write scope"),
        )),
        Err(refused) => Err(Refusal::from(refused)),
    }
}

/// Reports a failed authentication that the server's door cannot see, since the pixel
/// answers its GIF whatever the key, to the failed-authentication limit of the caller's
/// address.
pub(crate) fn report_auth_failure(request: &HttpRequest) {
    if let Some(limits) = request.app_data::<web::Data<CallerLimits>>() {
        limits.auth_failed(request.peer_addr().map(|peer| peer.ip()));
    }
}

impl From<AuthError> for Refusal {
    fn from(refused: AuthError) -> Self {
        let status = StatusCode::from_u16(refused.status()).expect("401 and 403 are statuses");
        match refused {
            AuthError::Lacks { key, .. } => Refusal::new(
                status,
                "forbidden",
                format!("API key '{key}' may not send events: it lacks the write scope"),
            ),
            other => Refusal::new(status, "unauthorized", other.to_string()),
        }
    }
}

/// The user name of an HTTP Basic `Authorization` header (RFC 7617), which is where
/// Segment's and RudderStack's SDKs put the write key.
pub(crate) fn basic_user(request: &HttpRequest) -> Option<String> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let credentials = String::from_utf8(decoded).ok()?;
    let user = credentials
        .split_once(':')
        .map_or(&*credentials, |(user, _)| user);
    (!user.is_empty()).then(|| user.to_owned())
}

/// The request's `Content-Type` as sent (empty when none), and its media type in lower case
/// without parameters: `application/json; charset=utf-8` is `application/json`.
pub(crate) fn media_type(request: &HttpRequest) -> (Option<String>, String) {
    let sent = request
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|value| value.to_str().unwrap_or("?").to_owned());
    let mime = (sent.as_deref().unwrap_or_default().split(';').next())
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    (sent, mime)
}

/// Refuses a tracker's body declared as anything but JSON: `application/json`, the
/// `text/plain` that `navigator.sendBeacon` sends, or no type at all, as some SDKs send.
pub(crate) fn tracker_json(request: &HttpRequest) -> Result<(), Refusal> {
    match media_type(request) {
        (None, _) => Ok(()),
        (_, mime) if matches!(mime.as_str(), "application/json" | "text/plain" | "") => Ok(()),
        (Some(sent), _) => Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Type '{sent}' is not accepted; send application/json"),
        )),
    }
}

/// The request body, within `ingest.max_request_bytes` and `ingest.body_timeout_secs`, and
/// decompressed when its `Content-Encoding` is gzip: the limit holds for the decompressed
/// bytes too, so a gzip bomb is refused once it has inflated that far.
pub(crate) async fn read_body(
    request: &HttpRequest,
    body: web::Payload,
    collector: &Collector,
) -> Result<Bytes, Refusal> {
    let limit = collector.limits.max_request_bytes;
    let too_large = |what: &str| {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body {what}over the limit of {limit} bytes; send smaller batches"),
        )
    };
    let gzip = match request
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(|value| value.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("" | "identity") => false,
        Some("gzip" | "x-gzip") => true,
        Some(other) => {
            return Err(Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                format!("Content-Encoding '{other}' is not accepted; send gzip or no encoding"),
            ));
        }
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large(""));
    }
    let patience = Duration::from_secs(collector.limits.body_timeout_secs);
    let bytes = match actix_web::rt::time::timeout(patience, body.to_bytes_limited(limit)).await {
        Ok(Ok(Ok(bytes))) => bytes,
        Ok(Ok(Err(err))) => {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "body_unreadable",
                format!("could not read the request body: {err}"),
            ));
        }
        Ok(Err(_)) => return Err(too_large("")),
        Err(_) => {
            return Err(Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body took over {} s to arrive; nothing was stored, send it again",
                    patience.as_secs()
                ),
            ));
        }
    };
    if !gzip {
        return Ok(bytes);
    }
    // One byte past the limit tells an inflated body over it from one exactly at it.
    let mut inflated = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    flate2::read::MultiGzDecoder::new(&bytes[..])
        .take(cap)
        .read_to_end(&mut inflated)
        .map_err(|err| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                "invalid_gzip",
                format!("the body is not valid gzip ({err}); send it compressed whole, or plain"),
            )
        })?;
    if inflated.len() > limit {
        return Err(too_large("once decompressed is "));
    }
    Ok(Bytes::from(inflated))
}

/// A transparent 1×1 GIF, never cached: how a beacon is answered.
pub(crate) fn pixel_gif() -> HttpResponse {
    const GIF: &[u8] = &[
        0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00,
        0x00, 0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00,
        0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
    ];
    HttpResponse::Ok()
        .content_type("image/gif")
        .insert_header((header::CACHE_CONTROL, "no-cache, no-store"))
        .body(GIF)
}
