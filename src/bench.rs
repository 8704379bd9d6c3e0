//! `tally bench`: the benchmarks behind every figure in the README.
//!
//! `tally bench ingest` measures, in one run on one machine: the disk's own fdatasync latency
//! (64 KiB appends), the collector's durable throughput over HTTP with batches, the ack
//! latency at half that rate and at a trickle of 20 requests/s (a request's cost without
//! queueing), and single-event requests. The generator runs in the same
//! process on the same cores, as a real load test on one box would.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tally_connectors::log::{AppendRecord, EventLog, Spool, SpoolOptions};
use tally_connectors::view_store::EmbeddedViewStore;
use tally_model::registry::ValidationContext;
use tally_model::tenant::{DEMO_SOURCE, DEMO_TENANT};
use tally_model::{Catalog, Config, Event};
use tally_speed_layer::{SpeedLayer, SpeedMetrics};

use crate::generator::{self, GenArgs, GenReport, Percentiles};
use crate::serve;

/// What to measure.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// Durable ingest over HTTP: throughput, ack latency, and the disk's fdatasync beside them.
    Ingest(IngestBenchArgs),
    /// The speed layer: replay throughput from log to view store, and freshness under load.
    Speed(SpeedBenchArgs),
    /// The batch layer: archive and recompute throughput, and DuckDB on the same Parquet.
    Batch(crate::batch_bench::BatchBenchArgs),
    /// Serving: query latency and throughput over batch history and a real-time window.
    Query(crate::query_bench::QueryBenchArgs),
    /// The Kafka forwarder beside a bare rdkafka producer loop, against a running broker.
    Kafka(crate::kafka_bench::KafkaBenchArgs),
}

/// Options of `tally bench speed`.
#[derive(Args)]
pub struct SpeedBenchArgs {
    /// Events in the log before the speed layer starts (the replay run).
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
    /// Events per second appended during the freshness run.
    #[arg(long, default_value_t = 100_000)]
    steady_rate: u64,
    /// Seconds of the freshness run.
    #[arg(long, default_value_t = 10)]
    steady_seconds: u64,
    /// Folder for the benchmark's data; removed afterwards.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

/// Options of `tally bench ingest`.
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
/// Turns the per-caller rate limits off: a benchmark's one client on loopback makes every
/// request, so they would measure the limiter, not the layer.
pub fn without_caller_limits(config: &mut Config) {
    config.limits.requests_per_second_per_key = 0;
    config.limits.requests_per_second_per_address = 0;
    config.limits.auth_failures_per_minute_per_address = 0;
}

pub const BENCH_WRITE_KEY: &str = "tk_bench0write0key0000000000000000";
pub const BENCH_READ_KEY: &str = "tk_bench0read0key00000000000000000";

/// Runs a benchmark and prints its figures.
pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Ingest(args) => ingest(args),
        BenchCommand::Speed(args) => speed(args),
        BenchCommand::Batch(args) => crate::batch_bench::run(args),
        BenchCommand::Query(args) => crate::query_bench::run(args),
        BenchCommand::Kafka(args) => crate::kafka_bench::run(args),
    }
}

fn ingest(args: IngestBenchArgs) -> anyhow::Result<()> {
    let scratch = scratch_folder(&args.dir)?;
    eprintln!(
        "bench: measuring fdatasync of 64 KiB appends in {} ...",
        scratch.path().display()
    );
    let fdatasync = fdatasync_latency(&scratch.path().join("fsync-probe"), args.fsync_samples)?;

    // TALLY_* variables apply, so a setting can be compared by rerunning with it.
    let mut config =
        Config::parse("", std::env::vars()).context("in TALLY_* environment variables")?;
    config.data_dir = scratch.path().join("data");
    config.ingest.listen = "127.0.0.1:0".to_owned();
    config.demo.write_key = BENCH_WRITE_KEY.to_owned();
    config.demo.read_key = BENCH_READ_KEY.to_owned();
    without_caller_limits(&mut config);
    let (bound, listening) = mpsc::channel();
    let server = std::thread::spawn(move || {
        serve::serve(config, serve::Mode::Ingest, |address, handle, _| {
            let _ = bound.send((address, handle));
        })
    });
    let (address, handle) = listening.recv().context("the collector did not start")?;
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

/// A fresh folder for one benchmark's data under `dir` (created if missing), removed when
/// dropped.
fn scratch_folder(dir: &std::path::Path) -> anyhow::Result<tempfile::TempDir> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    tempfile::Builder::new()
        .prefix("tally-bench-")
        .tempdir_in(dir)
        .with_context(|| format!("creating a scratch folder in {}", dir.display()))
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

#[derive(Serialize)]
struct SpeedBenchReport {
    workers: usize,
    replay_events: u64,
    replay_seconds: f64,
    replay_events_per_second: f64,
    steady_events_per_second: f64,
    freshness_ms: Percentiles,
}

/// A scratch folder with an empty spool, the demo catalog and the configuration from
/// `TALLY_*` variables: where the layer benchmarks start.
pub struct BenchLog {
    /// Removed when dropped.
    pub scratch: tempfile::TempDir,
    /// Defaults and `TALLY_*` overrides.
    pub config: Config,
    /// The demo tenant, with the bench keys.
    pub catalog: Arc<Catalog>,
    /// The empty spool.
    pub log: Arc<Spool>,
}

impl BenchLog {
    /// Creates it under `dir`.
    pub fn create(dir: &std::path::Path) -> anyhow::Result<BenchLog> {
        let scratch = scratch_folder(dir)?;
        let config =
            Config::parse("", std::env::vars()).context("in TALLY_* environment variables")?;
        let catalog = Arc::new(Catalog::demo(BENCH_WRITE_KEY, BENCH_READ_KEY));
        let log = Arc::new(Spool::open(
            &scratch.path().join("log"),
            SpoolOptions::from_config(&config.log),
        )?);
        Ok(BenchLog {
            scratch,
            config,
            catalog,
            log,
        })
    }

    /// Appends `events` to the spool, 100,000 at a time.
    pub fn append_all(
        &self,
        runtime: &tokio::runtime::Runtime,
        events: impl Iterator<Item = anyhow::Result<Event>>,
    ) -> anyhow::Result<()> {
        const CHUNK: usize = 100_000;
        let mut chunk = Vec::with_capacity(CHUNK);
        for event in events {
            chunk.push(AppendRecord::event(&event?, self.log.partitions()));
            if chunk.len() == CHUNK {
                runtime.block_on(
                    self.log
                        .append(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK))),
                )?;
            }
        }
        runtime.block_on(self.log.append(chunk))?;
        Ok(())
    }
}

/// Appended batches of the freshness run: when each was appended, and the log's ends after it.
type AppendedBatch = (Instant, Vec<u64>);

fn speed(args: SpeedBenchArgs) -> anyhow::Result<()> {
    let BenchLog {
        scratch,
        config,
        catalog,
        log,
    } = BenchLog::create(&args.dir)?;
    let runtime = actix_web::rt::System::new();
    let steady_events = args.steady_rate * args.steady_seconds;
    eprintln!(
        "bench: encoding {} events for the log ...",
        args.events + steady_events
    );
    let records = log_records(&catalog, args.events + steady_events, log.partitions())?;
    let (replay, steady) = records.split_at(args.events as usize);
    for chunk in replay.chunks(100_000) {
        runtime.block_on(log.append(chunk.to_vec()))?;
    }
    let store = Arc::new(EmbeddedViewStore::open(&scratch.path().join("views.redb"))?);
    let metrics = SpeedMetrics::register(&mut Registry::default());
    let layer = SpeedLayer {
        log: log.clone(),
        store,
        catalog,
        config: config.speed.clone(),
        metrics,
        max_event_lead: std::time::Duration::from_secs(config.ingest.max_future_secs),
        published_horizon: None,
    };
    let started = Instant::now();
    let speed = layer.start()?;
    let workers = speed.workers();
    eprintln!(
        "bench: replaying {} events with {workers} workers ...",
        args.events
    );
    let ends = |log: &Spool| -> anyhow::Result<Vec<u64>> { Ok(log.stats()?.next_offsets()) };
    let replayed = ends(&log)?;
    while !reflects(&speed.reflected_offsets(), &replayed) {
        anyhow::ensure!(
            speed.failure().is_none(),
            "speed layer failed: {:?}",
            speed.failure()
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let replay_seconds = started.elapsed().as_secs_f64();

    eprintln!(
        "bench: freshness at {} events/s for {} s ...",
        args.steady_rate, args.steady_seconds
    );
    let (appended, batches) = mpsc::channel::<AppendedBatch>();
    let batch_size = (args.steady_rate / 10).max(1) as usize;
    let steady = steady.to_vec();
    let appender_log = log.clone();
    let appender = std::thread::spawn(move || -> anyhow::Result<()> {
        let runtime = actix_web::rt::System::new();
        let started = Instant::now();
        for (index, batch) in steady.chunks(batch_size).enumerate() {
            let due = started + std::time::Duration::from_millis(100 * index as u64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let appended_at = Instant::now();
            runtime.block_on(appender_log.append(batch.to_vec()))?;
            let _ = appended.send((appended_at, ends(&appender_log)?));
        }
        Ok(())
    });
    let mut freshness = Vec::new();
    let steady_started = Instant::now();
    for (appended_at, batch_ends) in batches {
        while !reflects(&speed.reflected_offsets(), &batch_ends) {
            anyhow::ensure!(
                speed.failure().is_none(),
                "speed layer failed: {:?}",
                speed.failure()
            );
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        freshness.push(appended_at.elapsed());
    }
    let steady_seconds = steady_started.elapsed().as_secs_f64();
    appender
        .join()
        .map_err(|_| anyhow::anyhow!("the appender panicked"))??;
    speed.stop()?;
    let report = SpeedBenchReport {
        workers,
        replay_events: args.events,
        replay_seconds,
        replay_events_per_second: args.events as f64 / replay_seconds,
        steady_events_per_second: steady_events as f64 / steady_seconds,
        freshness_ms: Percentiles::of(freshness),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "replay: {} events, log to view store, in {:.2} s: {:.0} events/s ({} workers)",
            report.replay_events,
            report.replay_seconds,
            report.replay_events_per_second,
            report.workers
        );
        let f = report.freshness_ms;
        println!(
            "freshness at {:.0} events/s (appended to visible in the store, per 100 ms batch): p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
            report.steady_events_per_second, f.p50, f.p99, f.max
        );
    }
    Ok(())
}

fn reflects(reflected: &[u64], ends: &[u64]) -> bool {
    reflected
        .iter()
        .zip(ends)
        .all(|(reflected, end)| reflected >= end)
}

/// Log records of `count` valid demo events, validated as ingest does, received now.
fn log_records(
    catalog: &Catalog,
    count: u64,
    partitions: u32,
) -> anyhow::Result<Vec<AppendRecord>> {
    validated_events(catalog, count, 0.02)?
        .map(|event| Ok(AppendRecord::event(&event?, partitions)))
        .collect()
}

/// `count` generated demo events (a `resent` share of them twice, 5 % late), validated as
/// ingest does, received now.
pub fn validated_events(
    catalog: &Catalog,
    count: u64,
    resent: f64,
) -> anyhow::Result<impl Iterator<Item = anyhow::Result<Event>> + '_> {
    let now = tally_model::time::now_millis();
    let registry = &catalog.tenants[DEMO_TENANT].registry;
    let context = ValidationContext {
        tenant: DEMO_TENANT,
        source: DEMO_SOURCE,
        received_at: now,
        max_future_ms: 86_400_000,
        max_age_ms: 86_400_000,
        tag_values_as_text: false,
    };
    let args = GenArgs {
        url: String::new(),
        key: String::new(),
        events: count,
        rate: None,
        batch: 1,
        users: 100_000,
        duplicates: resent,
        late: 0.05,
        invalid: 0.0,
        concurrency: 1,
        acked_ids: None,
        seed: Some(7),
        json: false,
    };
    Ok(generator::client_events(&args, now).map(move |json| {
        let submitted: serde_json::Value = serde_json::from_str(&json)?;
        registry
            .validate(&submitted, &context, || {
                unreachable!("generated events carry ids")
            })
            .map_err(|reasons| anyhow::anyhow!("generated an invalid event: {reasons:?}"))
    }))
}
