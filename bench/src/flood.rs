//! `tally-bench flood`: the memory of a `tally up` process through a bounded mixed flood and
//! after it. The process is the `tally` binary beside this one, started on its own, so that
//! its resident memory (`VmRSS`) is the product's alone. The flood is open-loop at a fixed
//! rate of mixed requests, as a busy site sends them: event batches, Segment batches, pixels,
//! queries, searches and junk. The report gives the resident memory before the flood, at its
//! peak, and after the process has been left idle; the goal is to be back within 1.5× of the
//! memory before.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use tally_model::time::now_millis;

use crate::common::{BENCH_READ_KEY, BENCH_WRITE_KEY, scratch_folder};

/// Options of `tally-bench flood`.
#[derive(Args)]
pub struct FloodBenchArgs {
    /// Requests a second, of every kind together.
    #[arg(long, default_value_t = 650)]
    rate: u64,
    /// Seconds of flood.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Events in each of Tally's batches; Segment's batches carry half as many calls.
    #[arg(long, default_value_t = 10)]
    batch: u64,
    /// Seconds the process is then left idle before its memory is read.
    #[arg(long, default_value_t = 60)]
    settle_seconds: u64,
    /// The `tally` binary to run [default: the one beside this benchmark].
    #[arg(long)]
    tally: Option<PathBuf>,
    /// Folder for the process's data (a temporary folder is made in it).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct FloodReport {
    rate: u64,
    seconds: u64,
    batch: u64,
    settle_seconds: u64,
    requests: u64,
    /// Requests that got no answer at all (a refused connection, a timeout).
    unanswered: u64,
    /// Answers by status class: 2xx, 4xx (refusals of the junk), 5xx.
    answered_2xx: u64,
    answered_4xx: u64,
    answered_5xx: u64,
    events_accepted: u64,
    rss_before_mb: f64,
    rss_peak_mb: f64,
    rss_after_mb: f64,
    /// The heap's part of the memory after.
    rss_anon_after_mb: f64,
    /// Mapped files' part of the memory after (the kernel may reclaim it).
    rss_file_after_mb: f64,
    after_over_before: f64,
    goal_after_over_before: f64,
}

const GOAL_AFTER_OVER_BEFORE: f64 = 1.5;
/// Requests in flight at most; past it, the flood waits (and says how often).
const MAX_IN_FLIGHT: usize = 256;

/// A running `tally up`, stopped when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The process's resident memory, in MiB.
fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    status_mb(pid, "VmRSS")
}

/// A memory line of `/proc/<pid>/status`, in MiB: `VmRSS`, or its parts `RssAnon` (the heap)
/// and `RssFile` (mapped files, such as the search index's, which the kernel may reclaim).
fn status_mb(pid: u32, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc/<pid>/status"))?;
    Ok(kib / 1024.0)
}

pub fn run(args: FloodBenchArgs) -> anyhow::Result<()> {
    let scratch = scratch_folder(&args.dir)?;
    let tally = match &args.tally {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the benchmark's folder")?
            .join("tally"),
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let address = format!("127.0.0.1:{port}");
    let child = Command::new(&tally)
        .args(["up", "--listen", &address, "--data-dir"])
        .arg(scratch.path().join("data"))
        .env("TALLY_DEMO_WRITE_KEY", BENCH_WRITE_KEY)
        .env("TALLY_DEMO_READ_KEY", BENCH_READ_KEY)
        .env("TALLY_LIMITS_REQUESTS_PER_SECOND_PER_KEY", "0")
        .env("TALLY_LIMITS_REQUESTS_PER_SECOND_PER_ADDRESS", "0")
        .env("TALLY_LIMITS_AUTH_FAILURES_PER_MINUTE_PER_ADDRESS", "0")
        .env("TALLY_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build it with cargo build --release)",
                tally.display()
            )
        })?;
    let process = Process(child);
    let pid = process.0.id();
    let report = actix_web::rt::System::new().block_on(async {
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(10))
            .finish();
        let started = Instant::now();
        loop {
            let ready = client.get(format!("http://{address}/healthz")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "tally up did not start"
            );
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("bench: tally up is listening; idle 5 s before the flood ...");
        actix_web::rt::time::sleep(Duration::from_secs(5)).await;
        let before = rss_mb(pid)?;
        let peak = Arc::new(Mutex::new(before));
        let sampling = sample_peak(pid, peak.clone());
        eprintln!(
            "bench: {} requests/s for {} s ({:.0} MiB resident before) ...",
            args.rate, args.seconds, before
        );
        let counts = flood(&client, &address, (args.rate, args.seconds, args.batch)).await;
        let events_accepted = accepted_events(&client, &address).await?;
        eprintln!(
            "bench: left idle for {} s ({:.0} MiB resident at the end of the flood) ...",
            args.settle_seconds,
            rss_mb(pid)?
        );
        actix_web::rt::time::sleep(Duration::from_secs(args.settle_seconds)).await;
        let after = rss_mb(pid)?;
        let (anon_after, file_after) = (status_mb(pid, "RssAnon")?, status_mb(pid, "RssFile")?);
        sampling.abort();
        let peak = *peak.lock().expect("peak lock");
        anyhow::Ok(FloodReport {
            rate: args.rate,
            seconds: args.seconds,
            batch: args.batch,
            settle_seconds: args.settle_seconds,
            requests: counts.sent.load(Ordering::Relaxed),
            unanswered: counts.unanswered.load(Ordering::Relaxed),
            answered_2xx: counts.ok.load(Ordering::Relaxed),
            answered_4xx: counts.refused.load(Ordering::Relaxed),
            answered_5xx: counts.failed.load(Ordering::Relaxed),
            events_accepted,
            rss_before_mb: before,
            rss_peak_mb: peak.max(after),
            rss_after_mb: after,
            rss_anon_after_mb: anon_after,
            rss_file_after_mb: file_after,
            after_over_before: after / before,
            goal_after_over_before: GOAL_AFTER_OVER_BEFORE,
        })
    })?;
    drop(process);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "flood: {} requests at {}/s for {} s ({} answered 2xx, {} 4xx, {} 5xx, {} unanswered; {} events accepted)",
            report.requests,
            report.rate,
            report.seconds,
            report.answered_2xx,
            report.answered_4xx,
            report.answered_5xx,
            report.unanswered,
            report.events_accepted
        );
        println!(
            "resident memory: {:.0} MiB before, {:.0} MiB at the peak, {:.0} MiB after {} s idle ({:.0} MiB heap, {:.0} MiB mapped files): {:.2}x before (goal: within {GOAL_AFTER_OVER_BEFORE}x)",
            report.rss_before_mb,
            report.rss_peak_mb,
            report.rss_after_mb,
            report.settle_seconds,
            report.rss_anon_after_mb,
            report.rss_file_after_mb,
            report.after_over_before
        );
    }
    Ok(())
}

/// The events the process acknowledged, from its `/metrics`.
async fn accepted_events(client: &awc::Client, address: &str) -> anyhow::Result<u64> {
    let mut response = (client.get(format!("http://{address}/metrics")).send().await)
        .map_err(|err| anyhow::anyhow!("reading /metrics: {err}"))?;
    let body = response.body().limit(16 << 20).await?;
    let metrics = String::from_utf8_lossy(&body);
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix("tally_ingest_events_accepted_total ")?
                .parse()
                .ok()
        })
        .context("no tally_ingest_events_accepted_total in /metrics")
}

/// Reads the process's resident memory every 100 ms into `peak`.
fn sample_peak(pid: u32, peak: Arc<Mutex<f64>>) -> actix_web::rt::task::JoinHandle<()> {
    actix_web::rt::spawn(async move {
        loop {
            if let Ok(now) = rss_mb(pid) {
                let mut peak = peak.lock().expect("peak lock");
                *peak = peak.max(now);
            }
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    unanswered: AtomicU64,
    ok: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

/// One request of the mix.
struct Shot {
    method: actix_web::http::Method,
    path: String,
    key: Option<&'static str>,
    content_type: &'static str,
    body: Vec<u8>,
}

/// The `n`th request of the mix: in 20, nine batches of `batch` events, three Segment batches
/// of half as many calls, two pixels, two queries, two searches, one batch of invalid events
/// and one 64 KB body that is not JSON.
fn shot(n: u64, batch: u64, now: i64) -> Shot {
    use actix_web::http::Method;
    let user = |i: u64| format!("user-{}", (n * 131 + i * 7) % 50_000);
    let get = |path: String, key| Shot {
        method: Method::GET,
        path,
        key,
        content_type: "",
        body: Vec::new(),
    };
    let post = |path: &str, body: String| Shot {
        method: Method::POST,
        path: path.to_owned(),
        key: Some(BENCH_WRITE_KEY),
        content_type: "application/json",
        body: body.into_bytes(),
    };
    match n % 20 {
        0..=8 => {
            let events: Vec<String> = (0..batch)
                .map(|i| {
                    format!(
                        r#"{{"event_id":"flood-{n}-{i}","event_type":"page_view","user_id":"{}","tags":{{"url":"/page/{}","os_type":"ios","country":"fr"}}}}"#,
                        user(i),
                        i % 40
                    )
                })
                .collect();
            post("/v1/events", format!("[{}]", events.join(",")))
        }
        9..=11 => {
            let calls: Vec<String> = (0..(batch / 2).max(1))
                .map(|i| {
                    format!(
                        r#"{{"type":"track","event":"click","userId":"{}","messageId":"flood-seg-{n}-{i}","properties":{{"url":"/p/{i}"}}}}"#,
                        user(i)
                    )
                })
                .collect();
            post("/v1/batch", format!(r#"{{"batch":[{}]}}"#, calls.join(",")))
        }
        12 | 13 => get(
            format!(
                "/i?k={BENCH_WRITE_KEY}&e=click&uid={}&eid=flood-px-{n}&url=/pixel",
                user(0)
            ),
            None,
        ),
        14 | 15 => get(
            "/v1/query?view=events_by_type&granularity=minute&group_by=event_type".to_owned(),
            Some(BENCH_READ_KEY),
        ),
        16 | 17 => get(
            format!(
                "/v1/events/search?q=os_type:ios&start_time={}&end_time={}&limit=20",
                now / 1000 - 3600,
                now / 1000 + 60
            ),
            Some(BENCH_READ_KEY),
        ),
        18 => {
            let junk: Vec<&str> =
                vec![r#"{"event_type":"click","tags":{"nope":1}}"#; batch as usize];
            post("/v1/events", format!("[{}]", junk.join(",")))
        }
        _ => post("/v1/events", "x".repeat(64 * 1024)),
    }
}

/// Sends the mix at `rate` a second for `seconds`, open-loop: each request leaves at its time
/// whatever the others do, up to [`MAX_IN_FLIGHT`] at once.
async fn flood(
    client: &awc::Client,
    address: &str,
    (rate, seconds, batch): (u64, u64, u64),
) -> Arc<Counts> {
    let counts = Arc::new(Counts::default());
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let started = Instant::now();
    let total = rate * seconds;
    let mut waited = 0u64;
    for n in 0..total {
        let due = started + Duration::from_secs_f64(n as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            actix_web::rt::time::sleep(wait).await;
        }
        let permit = match in_flight.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                waited += 1;
                in_flight
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is open")
            }
        };
        let shot = shot(n, batch, now_millis());
        let mut request = client.request(shot.method, format!("http://{address}{}", shot.path));
        if let Some(key) = shot.key {
            request = request.insert_header(("Authorization", format!("Bearer {key}")));
        }
        if !shot.content_type.is_empty() {
            request = request.insert_header(("Content-Type", shot.content_type));
        }
        let counts = counts.clone();
        counts.sent.fetch_add(1, Ordering::Relaxed);
        actix_web::rt::spawn(async move {
            let _permit = permit;
            match request.send_body(shot.body).await {
                Ok(mut response) => {
                    let _ = response.body().limit(64 << 20).await;
                    let status = response.status();
                    let class = match status.as_u16() {
                        200..=299 => &counts.ok,
                        400..=499 => &counts.refused,
                        _ => &counts.failed,
                    };
                    class.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    counts.unanswered.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let _ = in_flight.acquire_many(MAX_IN_FLIGHT as u32).await;
    if waited > 0 {
        eprintln!("bench: {waited} requests waited for one of {MAX_IN_FLIGHT} in flight to end");
    }
    counts
}
