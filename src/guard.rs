//! The door of the HTTP server: every request to a layer's route is admitted by the caller
//! limits ([`CallerLimits`]) before it reaches the layer, a 401 is reported back to them, a
//! request head that trickles in is cut off, `HEAD` is answered as `GET` without a body, and a
//! path no route takes gets a JSON 404.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::HttpMessage;
use actix_web::body::{BodySize, BoxBody, EitherBody, MessageBody};
use actix_web::dev::{Extensions, Payload, ServiceRequest, ServiceResponse};
use actix_web::http::{ConnectionType, Method, StatusCode, header};
use actix_web::middleware::Next;
use actix_web::rt::net::TcpStream;
use actix_web::web::Bytes;
use actix_web::{HttpResponse, web};
use futures::StreamExt;
use tally_connectors::rate_limit::{CallerLimits, ConnectionCount, OpenConnection};
use tally_model::key::bearer_secret;

/// Operations routes, which probes and scrapers call often from one address.
const UNLIMITED: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// How long a client may take to send its request head; actix-web's default is 5 s.
pub const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Admits a request through the caller limits, or answers 429 with `Retry-After`: first the
/// cap on its address's connections (every route), then the rate limits (all but probes).
pub async fn limit_callers(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    // Before anything else, probes included: the cap is on descriptors, whatever the route.
    if let Some(connection) = request.conn_data::<OpenConnection>()
        && connection.over_cap
    {
        let message = format!(
            "this address holds more connections than the {} allowed; reuse the open ones (keep-alive) or close some",
            connection.cap()
        );
        let mut response = too_many_requests(1, message);
        response
            .head_mut()
            .set_connection_type(ConnectionType::Close);
        return Ok(request.into_response(response).map_into_right_body());
    }
    let Some(limits) = request.app_data::<web::Data<CallerLimits>>().cloned() else {
        return Ok(next.call(request).await?.map_into_left_body());
    };
    if UNLIMITED.contains(&request.path()) {
        return Ok(next.call(request).await?.map_into_left_body());
    }
    let address = client_address(&request);
    let secret = key_secret(&request);
    if let Err(refused) = limits.admit(address, secret.as_deref()) {
        let response = too_many_requests(refused.retry_after_secs(), refused.message());
        return Ok(request.into_response(response).map_into_right_body());
    }
    let response = next.call(request).await?;
    if response.status() == StatusCode::UNAUTHORIZED {
        limits.auth_failed(address);
    }
    Ok(response.map_into_left_body())
}

/// A 429 saying why and when to come back.
fn too_many_requests(retry_after_secs: u64, message: String) -> HttpResponse {
    HttpResponse::build(StatusCode::TOO_MANY_REQUESTS)
        .insert_header((header::RETRY_AFTER, retry_after_secs.to_string()))
        .json(serde_json::json!({ "error": message }))
}

/// File descriptors kept for the process's own work, whatever its clients hold: the spool's
/// segments, the view store, search commits, the object store's and Kafka's connections.
pub const RESERVED_DESCRIPTORS: u64 = 1024;

/// The connections each of `workers` HTTP workers may hold: the open-files limit, raised to
/// its hard maximum, less [`RESERVED_DESCRIPTORS`], shared between them. Connections past it
/// wait in the listen backlog, where they hold no descriptor of the process.
pub fn connections_per_worker(workers: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the one struct passed, which outlives
    // the calls.
    let known = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    if !known {
        return 256;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            ..limit
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    let for_clients = limit.rlim_cur.saturating_sub(RESERVED_DESCRIPTORS).max(64);
    let per_worker = for_clients / u64::try_from(workers.max(1)).unwrap_or(1);
    usize::try_from(per_worker)
        .unwrap_or(usize::MAX)
        .clamp(16, MAX_CONNECTIONS_PER_WORKER)
}

/// actix-web's own default, kept when the open-files limit allows more.
const MAX_CONNECTIONS_PER_WORKER: usize = 25_000;

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

/// Closes the connection after answering a request whose chunked body was not read to its
/// end. Left open, the server would drain the rest of the body for as long as the client
/// trickles it, whatever the route: a `/healthz`, a 404 or a 401 would hold a connection (and
/// a file descriptor) for good.
pub async fn close_unread_bodies(
    mut request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if !request.headers().contains_key(header::TRANSFER_ENCODING) {
        return Ok(next.call(request).await?.map_into_boxed_body());
    }
    let read_to_end = Rc::new(Cell::new(false));
    let seen_end = read_to_end.clone();
    // The route reads the body through this handle; the middleware keeps the body itself, so
    // that the server sees it still wanted, rather than dropped and to be drained.
    let body = Rc::new(RefCell::new(request.take_payload()));
    let reader = body.clone();
    let read = futures::stream::poll_fn(move |cx| {
        let polled = reader.borrow_mut().poll_next_unpin(cx);
        if let Poll::Ready(None) = polled {
            seen_end.set(true);
        }
        polled
    });
    request.set_payload(Payload::Stream {
        payload: Box::pin(read),
    });
    let mut response = next.call(request).await?;
    if read_to_end.get() {
        return Ok(response.map_into_boxed_body());
    }
    response
        .response_mut()
        .head_mut()
        .set_connection_type(ConnectionType::Close);
    Ok(response.map_body(|_, answer| {
        BoxBody::new(HoldingUnreadBody {
            answer: answer.boxed(),
            _unread: body,
        })
    }))
}

/// An answer that holds the request body no route read to its end until the answer is
/// written: the server then closes the connection, where it would drain a body it saw
/// dropped.
struct HoldingUnreadBody {
    answer: BoxBody,
    _unread: Rc<RefCell<Payload>>,
}

impl MessageBody for HoldingUnreadBody {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.answer.size()
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.answer).poll_next(cx)
    }
}

/// Counts a new connection against its address's cap, for the connection's lifetime
/// ([`limit_callers`] refuses the requests of one over the cap).
pub fn count_connection(
    connections: &Arc<ConnectionCount>,
    connection: &dyn Any,
    data: &mut Extensions,
) {
    let peer = connection
        .downcast_ref::<TcpStream>()
        .and_then(|stream| stream.peer_addr().ok());
    if let Some(peer) = peer {
        data.insert(connections.opened(peer.ip()));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workers_connections_leave_descriptors_for_the_process() {
        for workers in [1, 2, 7] {
            let per_worker = connections_per_worker(workers);
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: reads into the one struct passed.
            assert_eq!(
                unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
                0
            );
            let clients = u64::try_from(per_worker * workers).unwrap();
            assert!(
                clients + RESERVED_DESCRIPTORS <= limit.rlim_cur,
                "{workers} workers of {per_worker} connections against {} descriptors",
                limit.rlim_cur
            );
        }
    }
}
