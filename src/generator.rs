//! `tally gen`: realistic load for a collector. Zipf-distributed users, a mix of event types
//! and tags, and chosen shares of duplicates (resent event ids), late events and invalid
//! events, in Tally's format or as a Segment SDK sends them. Reports what was accepted and
//! rejected, and the ack latency.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

/// Options of `tally gen`.
#[derive(Args, Clone, Debug)]
pub struct GenArgs {
    /// Base URL of the collector.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Write key to send with (printed by `tally up`, saved in `<data-dir>/demo-keys.txt`).
    #[arg(long)]
    pub key: String,
    /// Events to send.
    #[arg(long, default_value_t = 10_000)]
    pub events: u64,
    /// Target rate in events per second; unlimited when absent.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Events per request.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Distinct users (Zipf-distributed: a few are very active).
    #[arg(long, default_value_t = 10_000)]
    pub users: u32,
    /// Share of events that resend an earlier event id (0..1).
    #[arg(long, default_value_t = 0.0)]
    pub duplicates: f64,
    /// Share of events whose time is minutes to hours in the past (0..1).
    #[arg(long, default_value_t = 0.0)]
    pub late: f64,
    /// Share of events that break a registry rule (0..1).
    #[arg(long, default_value_t = 0.0)]
    pub invalid: f64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Append the id of every event acknowledged with 202 to this file, one per line.
    #[arg(long, value_name = "FILE")]
    pub acked_ids: Option<PathBuf>,
    /// Random seed, for a repeatable event stream.
    #[arg(long)]
    pub seed: Option<u64>,
    /// The wire format: Tally's `POST /v1/events`, or Segment's `POST /v1/batch`.
    #[arg(long, value_enum, default_value_t = WireFormat::Tally)]
    pub format: WireFormat,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// How the generator sends its events.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WireFormat {
    /// A JSON array of Tally events to `/v1/events`, with a bearer key.
    #[default]
    Tally,
    /// A Segment batch to `/v1/batch`, with the key as HTTP Basic's user, as the SDKs send:
    /// `page` calls for page views, `track` calls for the rest.
    Segment,
}

impl WireFormat {
    fn path(self) -> &'static str {
        match self {
            WireFormat::Tally => "/v1/events",
            WireFormat::Segment => "/v1/batch",
        }
    }

    fn authorization(self, key: &str) -> String {
        match self {
            WireFormat::Tally => format!("Bearer {key}"),
            WireFormat::Segment => {
                use base64::Engine;
                let credentials =
                    base64::engine::general_purpose::STANDARD.encode(format!("{key}:"));
                format!("Basic {credentials}")
            }
        }
    }

    /// The body of a batch of events rendered by [`EventFactory::event`].
    fn body(self, events: &[String]) -> String {
        let joined = events.join(",");
        match self {
            WireFormat::Tally => format!("[{joined}]"),
            WireFormat::Segment => format!(
                r#"{{"batch":[{joined}],"sentAt":"{}"}}"#,
                tally_model::time::format_rfc3339(tally_model::time::now_millis())
            ),
        }
    }
}

/// What a run sent and what came back.
#[derive(Debug, Default, Serialize)]
pub struct GenReport {
    /// Events sent, including failed requests.
    pub sent: u64,
    /// Requests sent.
    pub requests: u64,
    /// Events the collector acknowledged.
    pub accepted: u64,
    /// Events the collector rejected.
    pub rejected: u64,
    /// Events sent that resent an earlier id.
    pub duplicates: u64,
    /// Requests that got no answer or a 5xx.
    pub failed_requests: u64,
    /// Times the collector answered 429 and the batch was sent again after `Retry-After`.
    pub rate_limited: u64,
    /// Wall time of the run, seconds.
    pub seconds: f64,
    /// Acknowledged events per second.
    pub accepted_per_second: f64,
    /// Ack latency percentiles, milliseconds (from the scheduled send time when rate-limited).
    pub latency_ms: Percentiles,
    /// The first refusals, each once: a failed request's status and reason, or a rejected
    /// event's reasons.
    pub refusals: Vec<String>,
}

/// Distinct refusals a report keeps.
const REFUSALS_KEPT: usize = 5;

impl GenReport {
    /// Keeps `refusal` if it is new and there is room.
    fn refused(&mut self, refusal: String) {
        if self.refusals.len() < REFUSALS_KEPT && !self.refusals.contains(&refusal) {
            self.refusals.push(refusal);
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
}

impl Percentiles {
    /// Percentiles of a sample.
    pub fn of(mut sample: Vec<Duration>) -> Percentiles {
        if sample.is_empty() {
            return Percentiles::default();
        }
        sample.sort_unstable();
        let at = |q: f64| {
            sample[((sample.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0
        };
        Percentiles {
            p50: at(0.5),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

#[derive(Deserialize)]
struct IngestReply {
    accepted: u64,
    /// The first rejects, by index.
    rejected: Vec<RejectedIndex>,
    /// Every reject, listed or not.
    rejected_count: u64,
}

#[derive(Deserialize)]
struct RejectedIndex {
    index: usize,
    #[serde(default)]
    reasons: Vec<String>,
}

/// Runs `tally gen` and prints its report; fails, with the first refusals, when events were
/// sent and none was accepted.
pub fn run(args: GenArgs) -> anyhow::Result<()> {
    let report = actix_web::rt::System::new().block_on(send(args.clone()))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "sent {} events in {} requests over {:.1} s: accepted {}, rejected {}, duplicates sent {}, failed requests {}, rate-limited retries {}",
            report.sent,
            report.requests,
            report.seconds,
            report.accepted,
            report.rejected,
            report.duplicates,
            report.failed_requests,
            report.rate_limited
        );
        println!(
            "{:.0} accepted events/s; ack latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            report.accepted_per_second,
            report.latency_ms.p50,
            report.latency_ms.p99,
            report.latency_ms.max
        );
    }
    let refusals: String = report
        .refusals
        .iter()
        .map(|refusal| format!("\n  {refusal}"))
        .collect();
    anyhow::ensure!(
        report.accepted > 0 || report.sent == 0,
        "the collector at {} accepted none of the {} events sent; the first refusals:{refusals}",
        args.url,
        report.sent,
    );
    if !refusals.is_empty() {
        eprintln!("the first refusals:{refusals}");
    }
    Ok(())
}

struct Shared {
    factory: RefCell<EventFactory>,
    next_batch: Cell<u64>,
    report: RefCell<GenReport>,
    latencies: RefCell<Vec<Duration>>,
    acked_ids: RefCell<Option<std::io::BufWriter<std::fs::File>>>,
}

/// Sends the load described by `args`; call inside an actix system.
pub async fn send(args: GenArgs) -> anyhow::Result<GenReport> {
    anyhow::ensure!(
        args.batch > 0 && args.concurrency > 0,
        "--batch and --concurrency must be at least 1"
    );
    anyhow::ensure!(
        args.rate.is_none_or(|rate| rate > 0.0),
        "--rate must be positive"
    );
    let acked_ids = match &args.acked_ids {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?,
        )),
        None => None,
    };
    let url = format!("{}{}", args.url.trim_end_matches('/'), args.format.path());
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .connector(awc::Connector::new().limit(args.concurrency))
        .finish();
    let shared = Rc::new(Shared {
        factory: RefCell::new(EventFactory::new(&args)),
        next_batch: Cell::new(0),
        report: RefCell::new(GenReport::default()),
        latencies: RefCell::new(Vec::new()),
        acked_ids: RefCell::new(acked_ids),
    });
    let batches = args.events.div_ceil(args.batch as u64);
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            actix_web::rt::spawn(worker(
                shared.clone(),
                client.clone(),
                url.clone(),
                args.clone(),
                batches,
                started,
            ))
        })
        .collect();
    let progress = actix_web::rt::spawn(report_progress(shared.clone(), args.events, started));
    for worker in workers {
        worker.await.context("a sender task failed")?;
    }
    progress.abort();
    if let Some(file) = shared.acked_ids.borrow_mut().as_mut() {
        file.flush().context("writing acked ids")?;
    }
    let mut report = std::mem::take(&mut *shared.report.borrow_mut());
    report.seconds = started.elapsed().as_secs_f64();
    report.accepted_per_second = report.accepted as f64 / report.seconds.max(1e-9);
    report.duplicates = shared.factory.borrow().duplicates;
    report.latency_ms = Percentiles::of(std::mem::take(&mut *shared.latencies.borrow_mut()));
    Ok(report)
}

async fn worker(
    shared: Rc<Shared>,
    client: awc::Client,
    url: String,
    args: GenArgs,
    batches: u64,
    started: Instant,
) {
    let authorization = args.format.authorization(&args.key);
    loop {
        let batch = shared.next_batch.get();
        if batch >= batches {
            return;
        }
        shared.next_batch.set(batch + 1);
        let size = (args.events - batch * args.batch as u64).min(args.batch as u64) as usize;
        // Rate-limited runs are open-loop: latency counts from when the batch was due, so a
        // slow collector cannot hide its queueing by slowing the sender down.
        let due = match args.rate {
            Some(rate) => {
                let due =
                    started + Duration::from_secs_f64((batch * args.batch as u64) as f64 / rate);
                actix_web::rt::time::sleep_until(due.into()).await;
                due
            }
            None => Instant::now(),
        };
        let (body, ids) = shared.factory.borrow_mut().batch(size);
        // A polite client: past a rate limit, the same batch again once the server says.
        let response = loop {
            let response = client
                .post(&url)
                .insert_header(("Authorization", authorization.as_str()))
                .insert_header(("Content-Type", "application/json"))
                .send_body(body.clone())
                .await;
            let retry_after = response.as_ref().ok().and_then(|response| {
                (response.status() == 429)
                    .then(|| {
                        response
                            .headers()
                            .get("retry-after")?
                            .to_str()
                            .ok()?
                            .parse()
                            .ok()
                    })
                    .flatten()
            });
            match retry_after {
                Some(seconds) => {
                    shared.report.borrow_mut().rate_limited += 1;
                    actix_web::rt::time::sleep(Duration::from_secs(seconds)).await;
                }
                None => break response,
            }
        };
        let latency = due.elapsed();
        let reply = match response {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let body = response.body().limit(1 << 24).await;
                match body {
                    Ok(body) => match serde_json::from_slice::<IngestReply>(&body) {
                        Ok(reply) if status < 500 => Ok((status, reply)),
                        _ => Err(format!("HTTP {status}: {}", reason_in(&body))),
                    },
                    Err(err) => Err(format!("HTTP {status}, its body unread: {err}")),
                }
            }
            Err(err) => Err(format!("no answer from {url}: {err}")),
        };
        let mut report = shared.report.borrow_mut();
        report.sent += size as u64;
        report.requests += 1;
        match reply {
            Ok((status, reply)) => {
                report.accepted += reply.accepted;
                report.rejected += reply.rejected_count;
                shared.latencies.borrow_mut().push(latency);
                for rejected in &reply.rejected {
                    report.refused(format!(
                        "HTTP {status}, event rejected: {}",
                        rejected.reasons.join("; ")
                    ));
                }
                // Past the listed rejects, which of the others were accepted is unknown:
                // record none of the batch rather than a wrong one.
                let acknowledged = (200..300).contains(&status);
                if acknowledged && reply.rejected_count == reply.rejected.len() as u64 {
                    record_acked(&shared, ids, &reply.rejected);
                }
            }
            Err(refusal) => {
                report.failed_requests += 1;
                report.refused(refusal);
            }
        }
    }
}

/// What a refusal's body says: its `error`, or the start of its text.
fn reason_in(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Refusal {
        error: String,
    }
    match serde_json::from_slice::<Refusal>(body) {
        Ok(refusal) => refusal.error,
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
    }
}

fn record_acked(shared: &Shared, ids: Vec<String>, rejected: &[RejectedIndex]) {
    let mut acked_ids = shared.acked_ids.borrow_mut();
    let Some(file) = acked_ids.as_mut() else {
        return;
    };
    let mut rejected_indices: Vec<usize> = rejected.iter().map(|r| r.index).collect();
    rejected_indices.sort_unstable();
    for (index, id) in ids.iter().enumerate() {
        if rejected_indices.binary_search(&index).is_err() {
            let _ = writeln!(file, "{id}");
        }
    }
}

async fn report_progress(shared: Rc<Shared>, total: u64, started: Instant) {
    let mut interval = actix_web::rt::time::interval(Duration::from_secs(5));
    interval.tick().await;
    loop {
        interval.tick().await;
        let sent = shared.report.borrow().sent;
        let rate = sent as f64 / started.elapsed().as_secs_f64();
        eprintln!("gen: {sent}/{total} events sent, {rate:.0}/s");
    }
}

/// Events as `tally gen` makes them (one client JSON object each), for benchmarks that feed
/// the log without HTTP.
pub fn client_events(args: &GenArgs, now: i64) -> impl Iterator<Item = String> + use<> {
    let mut factory = EventFactory::new(args);
    std::iter::repeat_with(move || factory.event(now).1).take(args.events as usize)
}

const EVENT_TYPES: [(&str, u32); 6] = [
    ("page_view", 50),
    ("click", 25),
    ("session_start", 8),
    ("session_end", 7),
    ("purchase", 5),
    ("link_clicked", 5),
];
const OPERATING_SYSTEMS: [&str; 5] = ["ios", "android", "windows", "macos", "linux"];
const COUNTRIES: [&str; 12] = [
    "us", "de", "fr", "gb", "in", "br", "jp", "ca", "es", "it", "nl", "se",
];
const DUPLICATE_MEMORY: usize = 4096;

/// Makes events: valid ones of the demo registry, and chosen shares of duplicates, late and
/// invalid ones.
struct EventFactory {
    rng: StdRng,
    user_weights: Vec<f64>,
    recent: Vec<(String, String)>,
    duplicates: u64,
    duplicate_share: f64,
    late_share: f64,
    invalid_share: f64,
    format: WireFormat,
    last_timestamp: Option<(i64, String)>,
}

impl EventFactory {
    fn new(args: &GenArgs) -> Self {
        let rng = match args.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => rand::make_rng(),
        };
        // Zipf with s = 1.1: cumulative weights, sampled by binary search.
        let mut total = 0.0;
        let user_weights = (1..=args.users.max(1))
            .map(|rank| {
                total += 1.0 / f64::from(rank).powf(1.1);
                total
            })
            .collect();
        EventFactory {
            rng,
            user_weights,
            recent: Vec::with_capacity(DUPLICATE_MEMORY),
            duplicates: 0,
            duplicate_share: args.duplicates,
            late_share: args.late,
            invalid_share: args.invalid,
            format: args.format,
            last_timestamp: None,
        }
    }

    /// The body of a batch of `size` events, and their ids.
    fn batch(&mut self, size: usize) -> (String, Vec<String>) {
        let now = tally_model::time::now_millis();
        let (ids, events): (Vec<String>, Vec<String>) = (0..size).map(|_| self.event(now)).unzip();
        (self.format.body(&events), ids)
    }

    fn event(&mut self, now: i64) -> (String, String) {
        if !self.recent.is_empty() && self.rng.random_bool(self.duplicate_share) {
            self.duplicates += 1;
            let pick = self.rng.random_range(0..self.recent.len());
            return self.recent[pick].clone();
        }
        let id = format!("{:032x}", self.rng.random::<u128>());
        let ts = if self.rng.random_bool(self.late_share) {
            now - self.rng.random_range(120_000..6 * 3_600_000)
        } else {
            now
        };
        let user = self.user();
        let event_type = self.event_type();
        let mut json = String::with_capacity(256);
        let _ = match (self.format, event_type) {
            (WireFormat::Tally, _) => write!(
                json,
                r#"{{"event_id":"{id}","event_type":"{event_type}","user_id":"user-{user}","ts":{ts},"tags":{{"#
            ),
            (WireFormat::Segment, "page_view") => write!(
                json,
                r#"{{"type":"page","messageId":"{id}","userId":"user-{user}","timestamp":"{}","properties":{{"#,
                self.rfc3339(ts)
            ),
            (WireFormat::Segment, _) => write!(
                json,
                r#"{{"type":"track","event":"{event_type}","messageId":"{id}","userId":"user-{user}","timestamp":"{}","properties":{{"#,
                self.rfc3339(ts)
            ),
        };
        let os = OPERATING_SYSTEMS[self.rng.random_range(0..OPERATING_SYSTEMS.len())];
        let country = COUNTRIES[self.rng.random_range(0..COUNTRIES.len())];
        let latency = 5.0 + 2000.0 * self.rng.random::<f64>().powi(4);
        let _ = write!(
            json,
            r#""os_type":"{os}","country":"{country}","latency_ms":{latency:.1}"#
        );
        match event_type {
            "page_view" | "link_clicked" | "click" => {
                let _ = write!(json, r#","url":"/page/{}""#, self.rng.random_range(0..50));
            }
            "purchase" => {
                let _ = write!(
                    json,
                    r#","revenue":{:.2}"#,
                    self.rng.random_range(1.0..200.0)
                );
            }
            _ => {}
        }
        json.push_str("}}");
        if self.rng.random_bool(self.invalid_share) {
            return (id, self.spoil(json));
        }
        if self.recent.len() < DUPLICATE_MEMORY {
            self.recent.push((id.clone(), json.clone()));
        } else {
            let slot = self.rng.random_range(0..DUPLICATE_MEMORY);
            self.recent[slot] = (id.clone(), json.clone());
        }
        (id, json)
    }

    /// `ts` in RFC 3339, as Segment's SDKs send times; a batch's events share one `now`, so
    /// it is formatted once per batch, not per event (the sender shares the collector's
    /// cores in the benchmarks).
    fn rfc3339(&mut self, ts: i64) -> &str {
        if self
            .last_timestamp
            .as_ref()
            .is_none_or(|(last, _)| *last != ts)
        {
            self.last_timestamp = Some((ts, tally_model::time::format_rfc3339(ts)));
        }
        self.last_timestamp.as_ref().map_or("", |(_, text)| text)
    }

    /// Breaks one registry rule: a misspelt tag, a wrong type, an unknown event type or a
    /// missing user.
    fn spoil(&mut self, json: String) -> String {
        let (event_type, user) = match self.format {
            WireFormat::Tally => ("\"event_type\":\"", "\"user_id\""),
            WireFormat::Segment => ("\"type\":\"", "\"userId\""),
        };
        match self.rng.random_range(0..4) {
            0 => json.replacen("\"os_type\"", "\"os_typ\"", 1),
            1 => json.replacen(
                "\"latency_ms\":",
                "\"latency_ms\":\"slow\",\"x_latency\":",
                1,
            ),
            2 => json.replacen(event_type, &format!("{event_type}unknown_"), 1),
            _ => json.replacen(user, "\"user\"", 1),
        }
    }

    fn user(&mut self) -> usize {
        let total = *self.user_weights.last().expect("at least one user");
        let draw = self.rng.random::<f64>() * total;
        self.user_weights.partition_point(|weight| *weight < draw)
    }

    fn event_type(&mut self) -> &'static str {
        let total: u32 = EVENT_TYPES.iter().map(|(_, weight)| weight).sum();
        let mut draw = self.rng.random_range(0..total);
        for (name, weight) in EVENT_TYPES {
            if draw < weight {
                return name;
            }
            draw -= weight;
        }
        unreachable!("draw is below the total weight")
    }
}
