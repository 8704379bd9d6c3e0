//! `tally-bench speed`: the speed layer's replay throughput from the log to the view store,
//! and its freshness under a steady load.

use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::Instant;

use clap::Args;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tally::generator::Percentiles;
use tally_connectors::log::{AppendRecord, EventLog, Spool};
use tally_connectors::view_store::EmbeddedViewStore;
use tally_model::Catalog;
use tally_speed_layer::{SpeedLayer, SpeedMetrics};

use crate::common::{BenchLog, validated_events};

/// Options of `tally-bench speed`.
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

#[derive(Serialize)]
struct SpeedBenchReport {
    workers: usize,
    replay_events: u64,
    replay_seconds: f64,
    replay_events_per_second: f64,
    steady_events_per_second: f64,
    freshness_ms: Percentiles,
}

/// Appended batches of the freshness run: when each was appended, and the log's ends after it.
type AppendedBatch = (Instant, Vec<u64>);

pub fn run(args: SpeedBenchArgs) -> anyhow::Result<()> {
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
pub fn log_records(
    catalog: &Catalog,
    count: u64,
    partitions: u32,
) -> anyhow::Result<Vec<AppendRecord>> {
    validated_events(catalog, count, 0.02)?
        .map(|event| Ok(AppendRecord::event(&event?, partitions)))
        .collect()
}
