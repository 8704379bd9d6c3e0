//! From a request to accepted events and rejects: the per-event size limit, reading each
//! event (Tally's JSON or NDJSON here, the trackers' formats in [`crate::trackers`]) and
//! validation against the tenant's registry. No I/O.
// This module reads what callers send: its arithmetic is checked or saturating, never
// wrapping (docs/hardening.md).
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;

use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tally_model::registry::{ValidationContext, bounded_reasons};
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

    fn reject(&mut self, mut rejection: Rejection) {
        // However an event was refused, its reasons cost the reply and the rejected stream
        // no more than their cap: a name quoted in one is the sender's, of any length.
        rejection.reasons = bounded_reasons(std::mem::take(&mut rejection.reasons));
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

/// What a tracker's event becomes before validation: an object in Tally's event shape, and
/// the tags offered besides it (a tracker's context), kept only where the registry declares
/// them ([`TagRegistry::validate_offered`]).
#[derive(Debug, Default, PartialEq)]
pub struct Submission {
    /// `event_type`, `user_id`, `event_id`, `ts` and `tags`, as `POST /v1/events` takes them.
    pub event: Value,
    /// Dotted names to values.
    pub offered: Map<String, Value>,
}

/// Judges the events of one request one by one, against the tenant's registry, into an
/// [`Intake`]: a native body, a tracker's batch, or a pixel's query.
pub struct Judge<'a> {
    registry: &'a TagRegistry,
    context: ValidationContext<'a>,
    max_event_bytes: usize,
    verdict: Intake,
}

impl<'a> Judge<'a> {
    /// A judge keeping the details of the first `max_rejects_detailed` rejects.
    pub fn new(
        registry: &'a TagRegistry,
        context: ValidationContext<'a>,
        max_event_bytes: usize,
        max_rejects_detailed: usize,
    ) -> Self {
        Judge {
            registry,
            context,
            max_event_bytes,
            verdict: Intake {
                max_rejects_detailed,
                ..Intake::default()
            },
        }
    }

    /// When the events were received.
    pub fn received_at(&self) -> tally_model::Millis {
        self.context.received_at
    }

    /// Judges the event sent as `raw` (kept as the reject's payload), once `read` has made it
    /// a submission. An event over the size limit is rejected before it is read.
    pub fn event(
        &mut self,
        index: usize,
        raw: &str,
        read: impl FnOnce(&str) -> Result<Submission, Vec<RejectReason>>,
    ) {
        if raw.len() > self.max_event_bytes {
            let message = format!(
                "event is {} bytes, over the limit of {} bytes per event",
                raw.len(),
                self.max_event_bytes
            );
            self.reject(index, EVENT_TOO_LARGE, message, raw);
            return;
        }
        let judged = read(raw).and_then(|submission| {
            self.registry.validate_offered(
                &submission.event,
                &submission.offered,
                &self.context,
                new_event_id,
            )
        });
        match judged {
            Ok(event) => self.verdict.accepted.push(event),
            Err(reasons) => self.verdict.reject(Rejection {
                index,
                reasons,
                payload: truncate(raw, self.max_event_bytes),
            }),
        }
    }

    /// Rejects an event or a body that could not be read at all, keeping `payload`.
    pub fn reject(&mut self, index: usize, code: &'static str, message: String, payload: &str) {
        let rejection = Rejection::new(index, code, message, payload, self.max_event_bytes);
        self.verdict.reject(rejection);
    }

    /// Judges every event of a body in Tally's own format. A body that is not JSON at all
    /// becomes one rejection at index 0.
    pub fn native_body(mut self, body: &[u8], format: BodyFormat) -> Intake {
        match format {
            BodyFormat::Json => match split_json(body) {
                Ok(events) => {
                    for (index, raw) in events.iter().enumerate() {
                        self.event(index, raw.get(), native);
                    }
                }
                Err(message) => {
                    self.reject(0, INVALID_JSON, message, &String::from_utf8_lossy(body));
                }
            },
            BodyFormat::NdJson => {
                let lines = body
                    .split(|byte| *byte == b'\n')
                    .map(|line| line.trim_ascii())
                    .filter(|line| !line.is_empty());
                for (index, line) in lines.enumerate() {
                    match std::str::from_utf8(line) {
                        Ok(text) => self.event(index, text, native),
                        Err(err) => self.reject(
                            index,
                            INVALID_JSON,
                            format!("line is not UTF-8: {err}"),
                            &String::from_utf8_lossy(line),
                        ),
                    }
                }
            }
        }
        self.finish()
    }

    /// The verdict on every event judged.
    pub fn finish(self) -> Intake {
        self.verdict
    }
}

/// Reads one event of Tally's own format: strict JSON, nothing offered besides it.
pub fn native(raw: &str) -> Result<Submission, Vec<RejectReason>> {
    let event = strict_json::parse(raw).map_err(invalid_json)?;
    Ok(Submission {
        event,
        offered: Map::new(),
    })
}

/// The reason for a text that is not JSON.
pub fn invalid_json(err: serde_json::Error) -> Vec<RejectReason> {
    vec![RejectReason::new(
        INVALID_JSON,
        format!("invalid JSON: {err}"),
    )]
}

/// Splits, sizes and validates every event of a native `body`, keeping the details of the
/// first `max_rejects_detailed` rejects. A body that is not JSON at all becomes one rejection
/// at index 0.
pub fn intake(
    body: &[u8],
    format: BodyFormat,
    registry: &TagRegistry,
    context: &ValidationContext<'_>,
    max_event_bytes: usize,
    max_rejects_detailed: usize,
) -> Intake {
    Judge::new(
        registry,
        context.clone(),
        max_event_bytes,
        max_rejects_detailed,
    )
    .native_body(body, format)
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
