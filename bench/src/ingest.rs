//! `tally-bench ingest`: the disk's own fdatasync latency (64 KiB appends), the collector's
//! durable throughput over HTTP with batches, the ack latency at half that rate and at a
//! trickle of 20 requests/s (a request's cost without queueing), and single-event requests.
//! The generator runs in the same process on the same cores, as a real load test on one box
//! would.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use tally::generator::{self, GenArgs, GenReport, Percentiles, WireFormat};

use crate::common::{BENCH_WRITE_KEY, scratch_folder, start_collector};

/// Options of `tally-bench ingest`.
#[derive(Args)]
pub struct IngestBenchArgs {
    /// Events in the throughput run.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Events per request in the batch runs.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Requests in flight in the throughput run.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds of the half-rate latency run.
    #[arg(long, default_value_t = 20)]
    latency_seconds: u64,
    /// Events in the single-event run.
    #[arg(long, default_value_t = 20_000)]
    single_events: u64,
    /// fdatasync samples for the disk baseline.
    #[arg(long, default_value_t = 1_000)]
    fsync_samples: usize,
    /// Folder on the disk to measure; the benchmark's data goes in a temporary folder there.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct IngestBenchReport {
    fdatasync_64k_ms: Percentiles,
    batch_throughput: GenReport,
    half_rate_latency: GenReport,
    trickle_latency: GenReport,
    single_events: GenReport,
    goal_events_per_second: f64,
    goal_p99_ms: f64,
}

const GOAL_EVENTS_PER_SECOND: f64 = 200_000.0;

const GOAL_P99_OVER_FSYNC_P99: f64 = 1.5;

/// Requests a second of the run that measures a request's latency without queueing.
const TRICKLE_REQUESTS_PER_SECOND: f64 = 20.0;

pub fn run(args: IngestBenchArgs) -> anyhow::Result<()> {
    let scratch = scratch_folder(&args.dir)?;
    eprintln!(
        "bench: measuring fdatasync of 64 KiB appends in {} ...",
        scratch.path().display()
    );
    let fdatasync = fdatasync_latency(&scratch.path().join("fsync-probe"), args.fsync_samples)?;

    let (address, handle, server) = start_collector(scratch.path())?;
    let load = |events, batch, concurrency, rate| GenArgs {
        url: format!("http://{address}"),
        key: BENCH_WRITE_KEY.to_owned(),
        events,
        rate,
        batch,
        users: 100_000,
        duplicates: 0.0,
        late: 0.0,
        invalid: 0.0,
        concurrency,
        acked_ids: None,
        seed: Some(42),
        format: WireFormat::Tally,
        json: false,
    };
    let report = actix_web::rt::System::new().block_on(async {
        eprintln!("bench: warming up ...");
        generator::send(load(20_000, args.batch, args.concurrency, None)).await?;
        eprintln!(
            "bench: throughput, {} events in batches of {} ...",
            args.events, args.batch
        );
        let batch_throughput =
            generator::send(load(args.events, args.batch, args.concurrency, None)).await?;
        let half_rate = batch_throughput.accepted_per_second / 2.0;
        let half_rate_events = (half_rate * args.latency_seconds as f64) as u64;
        eprintln!(
            "bench: ack latency at half that rate ({half_rate:.0} events/s for {} s) ...",
            args.latency_seconds
        );
        let half_rate_latency = generator::send(load(
            half_rate_events,
            args.batch,
            args.concurrency * 4,
            Some(half_rate),
        ))
        .await?;
        // With no queueing: what one request costs, fdatasync included.
        let trickle_rate = TRICKLE_REQUESTS_PER_SECOND * args.batch as f64;
        let trickle_events = (trickle_rate * args.latency_seconds as f64 / 2.0) as u64;
        eprintln!(
            "bench: ack latency at a trickle ({TRICKLE_REQUESTS_PER_SECOND} requests/s for {} s) ...",
            args.latency_seconds / 2
        );
        let trickle_latency = generator::send(load(
            trickle_events,
            args.batch,
            args.concurrency,
            Some(trickle_rate),
        ))
        .await?;
        eprintln!("bench: {} single-event requests ...", args.single_events);
        let single_events =
            generator::send(load(args.single_events, 1, args.concurrency * 2, None)).await?;
        handle.stop(true).await;
        anyhow::Ok(IngestBenchReport {
            goal_p99_ms: fdatasync.p99 * GOAL_P99_OVER_FSYNC_P99,
            goal_events_per_second: GOAL_EVENTS_PER_SECOND,
            fdatasync_64k_ms: fdatasync,
            batch_throughput,
            half_rate_latency,
            trickle_latency,
            single_events,
        })
    })?;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the collector thread panicked"))??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_ingest_report(&report);
    }
    Ok(())
}

fn print_ingest_report(report: &IngestBenchReport) {
    let row = |name: &str, run: &GenReport| {
        println!(
            "{name:<34} {:>12.0} {:>9.2} {:>9.2} {:>9.2} {:>9}",
            run.accepted_per_second,
            run.latency_ms.p50,
            run.latency_ms.p99,
            run.latency_ms.max,
            run.failed_requests
        );
    };
    let fsync = report.fdatasync_64k_ms;
    println!(
        "disk fdatasync, 64 KiB appends:  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        fsync.p50, fsync.p99, fsync.max
    );
    println!(
        "{:<34} {:>12} {:>9} {:>9} {:>9} {:>9}",
        "run", "events/s", "p50 ms", "p99 ms", "max ms", "failed"
    );
    row("batches, max rate", &report.batch_throughput);
    row("batches, half rate (open loop)", &report.half_rate_latency);
    let trickle = format!("batches, {TRICKLE_REQUESTS_PER_SECOND} requests/s (open loop)");
    row(&trickle, &report.trickle_latency);
    row("single-event requests", &report.single_events);
    let throughput = report.batch_throughput.accepted_per_second;
    let p99 = report.half_rate_latency.latency_ms.p99;
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    println!(
        "goal: >= {:.0} events/s in batches: {} ({throughput:.0})",
        report.goal_events_per_second,
        verdict(throughput >= report.goal_events_per_second)
    );
    println!(
        "goal: half-rate p99 <= {GOAL_P99_OVER_FSYNC_P99} x fdatasync p99 = {:.2} ms: {} ({p99:.2} ms)",
        report.goal_p99_ms,
        verdict(p99 <= report.goal_p99_ms)
    );
}

/// Latency of appending 64 KiB and fdatasync-ing, as the spool does, on the same disk.
fn fdatasync_latency(path: &std::path::Path, samples: usize) -> anyhow::Result<Percentiles> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let block = vec![0x5au8; 64 * 1024];
    let mut latencies = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        latencies.push(started.elapsed());
    }
    std::fs::remove_file(path)?;
    Ok(Percentiles::of(latencies))
}
