//! `tally-bench`: the benchmarks behind every figure in docs/performance.md, each a
//! subcommand: `ingest`, `speed`, `batch`, `query`, `kafka`, `trackers`, `search`, `flood`.

mod batch;
mod common;
mod flood;
mod ingest;
mod kafka;
mod query;
mod search;
mod speed;
mod trackers;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc, as in `tally` itself: the benchmarks measure the allocator the product ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tally's benchmarks.
#[derive(Parser)]
#[command(name = "tally-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

/// What to measure.
#[derive(Subcommand)]
enum BenchCommand {
    /// Durable ingest over HTTP: throughput, ack latency, and the disk's fdatasync beside them.
    Ingest(ingest::IngestBenchArgs),
    /// The speed layer: replay throughput from log to view store, and freshness under load.
    Speed(speed::SpeedBenchArgs),
    /// The batch layer: archive and recompute throughput, and DuckDB on the same Parquet.
    Batch(batch::BatchBenchArgs),
    /// Serving: query latency and throughput over batch history and a real-time window.
    Query(query::QueryBenchArgs),
    /// The Kafka forwarder beside a bare rdkafka producer loop, against a running broker.
    Kafka(kafka::KafkaBenchArgs),
    /// Segment's /v1/batch beside Tally's /v1/events, on one collector in one run.
    Trackers(trackers::TrackersBenchArgs),
    /// The full-text search index: its rate beside ingest, its size, and query latency.
    Search(search::SearchBenchArgs),
    /// A `tally up` process's memory through a bounded mixed flood, and after it.
    Flood(flood::FloodBenchArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        BenchCommand::Ingest(args) => ingest::run(args),
        BenchCommand::Speed(args) => speed::run(args),
        BenchCommand::Batch(args) => batch::run(args),
        BenchCommand::Query(args) => query::run(args),
        BenchCommand::Kafka(args) => kafka::run(args),
        BenchCommand::Trackers(args) => trackers::run(args),
        BenchCommand::Search(args) => search::run(args),
        BenchCommand::Flood(args) => flood::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
