//! From a request body to accepted events and rejects: JSON or NDJSON parsing, the per-event
//! size limit, and validation against the tenant's registry. No I/O.
// This module reads what callers send: its arithmetic is checked or saturating, never
// wrapping (docs/hardening.md).
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;

use serde_json::value::RawValue;
use tally_model::registry::ValidationContext;
use tally_model::{Event, RejectReason, TagRegistry};

use crate::strict_json;

/// How the events in a body are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// A JSON array of events, or one event object.
    Json,
    /// One JSON event per line.
    NdJson,
}

/// The verdict on one request.
#[derive(Debug, Default)]
pub struct Intake {
    /// Valid events, ready for the log.
    pub accepted: Vec<Event>,
    /// The first invalid events, with every reason; at most the `max_rejects_detailed`
    /// given to [`intake`], so that a body of junk costs no more than its size.
    pub rejected: Vec<Rejection>,
    /// Every invalid event, detailed or not.
    pub rejected_count: usize,
    /// Invalid events by their first reason's code, detailed or not.
    pub rejected_by_reason: BTreeMap<&'static str, usize>,
    /// Whether an event was rejected for its size.
    pub any_too_large: bool,
    max_rejects_detailed: usize,
}

impl Intake {
    /// The verdict on a request refused whole, before its events could be read: one
    /// rejection at index 0 with `payload` cut to `max_event_bytes`.
    pub fn refused_whole(
        code: &'static str,
        message: String,
        payload: &str,
        max_event_bytes: usize,
    ) -> Intake {
        let mut verdict = Intake {
            max_rejects_detailed: 1,
            ..Intake::default()
        };
        verdict.reject(Rejection::new(0, code, message, payload, max_event_bytes));
        verdict
    }

    fn reject(&mut self, rejection: Rejection) {
        self.rejected_count = self.rejected_count.saturating_add(1);
        if let Some(first) = rejection.reasons.first() {
            let count = self.rejected_by_reason.entry(first.code).or_default();
            *count = count.saturating_add(1);
        }
        self.any_too_large |= rejection.too_large();
        if self.rejected.len() < self.max_rejects_detailed {
            self.rejected.push(rejection);
        }
    }
}

/// One event that could not be accepted.
#[derive(Debug)]
pub struct Rejection {
    /// Its position in the request.
    pub index: usize,
    /// Every reason.
    pub reasons: Vec<RejectReason>,
    /// The event as sent, cut to the per-event limit.
    pub payload: String,
}

impl Rejection {
    fn new(
        index: usize,
        code: &'static str,
        message: String,
        payload: &str,
        max_bytes: usize,
    ) -> Self {
        Rejection {
            index,
            reasons: vec![RejectReason::new(code, message)],
            payload: truncate(payload, max_bytes),
        }
    }

    /// Whether the event was rejected for its size.
    fn too_large(&self) -> bool {
        self.reasons.iter().any(|r| r.code == EVENT_TOO_LARGE)
    }
}

const EVENT_TOO_LARGE: &str = "event_too_large";
const INVALID_JSON: &str = "invalid_json";

/// Splits, sizes and validates every event in `body`, keeping the details of the first
/// `max_rejects_detailed` rejects. A body that is not JSON at all becomes one rejection at
/// index 0.
pub fn intake(
    body: &[u8],
    format: BodyFormat,
    registry: &TagRegistry,
    context: &ValidationContext<'_>,
    max_event_bytes: usize,
    max_rejects_detailed: usize,
) -> Intake {
    let mut verdict = Intake {
        max_rejects_detailed,
        ..Intake::default()
    };
    // `raw` is the event's text, or why it is not text or JSON, with the bytes to keep.
    let judge = |index: usize, raw: Result<&str, (String, &[u8])>, verdict: &mut Intake| {
        let raw = match raw {
            Ok(raw) => raw,
            Err((message, bytes)) => {
                let payload = String::from_utf8_lossy(bytes);
                verdict.reject(Rejection::new(
                    index,
                    INVALID_JSON,
                    message,
                    &payload,
                    max_event_bytes,
                ));
                return;
            }
        };
        if raw.len() > max_event_bytes {
            let message = format!(
                "event is {} bytes, over the limit of {max_event_bytes} bytes per event",
                raw.len()
            );
            verdict.reject(Rejection::new(
                index,
                EVENT_TOO_LARGE,
                message,
                raw,
                max_event_bytes,
            ));
            return;
        }
        let parsed = strict_json::parse(raw).map_err(|err| {
            vec![RejectReason::new(
                INVALID_JSON,
                format!("invalid JSON: {err}"),
            )]
        });
        match parsed.and_then(|value| registry.validate(&value, context, new_event_id)) {
            Ok(event) => verdict.accepted.push(event),
            Err(reasons) => verdict.reject(Rejection {
                index,
                reasons,
                payload: truncate(raw, max_event_bytes),
            }),
        }
    };
    match format {
        BodyFormat::Json => match split_json(body) {
            Ok(events) => {
                for (index, raw) in events.iter().enumerate() {
                    judge(index, Ok(raw.get()), &mut verdict);
                }
            }
            Err(message) => judge(0, Err((message, body)), &mut verdict),
        },
        BodyFormat::NdJson => {
            let lines = body
                .split(|byte| *byte == b'\n')
                .map(|line| line.trim_ascii())
                .filter(|line| !line.is_empty());
            for (index, line) in lines.enumerate() {
                let text = std::str::from_utf8(line)
                    .map_err(|err| (format!("line is not UTF-8: {err}"), line));
                judge(index, text, &mut verdict);
            }
        }
    }
    verdict
}

/// The events of a JSON body, each as its raw text: an array of events or one event.
fn split_json(body: &[u8]) -> Result<Vec<&RawValue>, String> {
    let first = body.iter().find(|byte| !byte.is_ascii_whitespace());
    let parsed = match first {
        None => return Err("the body is empty; send a JSON array of events".to_owned()),
        Some(b'[') => serde_json::from_slice::<Vec<&RawValue>>(body),
        Some(_) => serde_json::from_slice::<&RawValue>(body).map(|one| vec![one]),
    };
    parsed.map_err(|err| format!("invalid JSON: {err}"))
}

/// Whether a URL query string is UTF-8 once its `%XX` escapes are decoded. Decoders replace
/// what is not, silently; the pixel refuses it instead, as the JSON API refuses a body
/// that is not UTF-8.
pub fn query_is_utf8(query: &str) -> bool {
    let mut decoded = Vec::with_capacity(query.len());
    let mut rest = query.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        let escaped = (first == b'%')
            .then(|| tail.get(..2))
            .flatten()
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match (escaped, tail.get(2..)) {
            (Some(byte), Some(after)) => {
                decoded.push(byte);
                rest = after;
            }
            _ => {
                decoded.push(first);
                rest = tail;
            }
        }
    }
    std::str::from_utf8(&decoded).is_ok()
}

fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn truncate(text: &str, max_bytes: usize) -> String {
    let mut end = text.len().min(max_bytes);
    while !text.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    text[..end].to_owned()
}
