//! `tally-bench trackers`: durable ingest through Segment's `POST /v1/batch` beside Tally's
//! own `POST /v1/events`, on one collector in one run: the same generated events, in batches
//! of the same size, in alternating rounds so that the machine's drift touches both alike.
//! The goal: the Segment route at 80 % or more of the native route's rate.

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use tally::generator::{self, GenArgs, GenReport, WireFormat};

use crate::common::{BENCH_WRITE_KEY, scratch_folder, start_collector};

/// Options of `tally-bench trackers`.
#[derive(Args)]
pub struct TrackersBenchArgs {
    /// Events per round and format.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Rounds; each sends both formats, in alternating order.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Events per request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Folder for the collector's spool.
    #[arg(long, default_value = ".")]
    dir: std::path::PathBuf,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Round {
    native: GenReport,
    segment: GenReport,
}

#[derive(Serialize)]
struct TrackersBenchReport {
    rounds: Vec<Round>,
    /// Segment's events/s over the native route's, summed over the rounds.
    segment_over_native: f64,
    goal_segment_over_native: f64,
}

const GOAL_SEGMENT_OVER_NATIVE: f64 = 0.8;

pub fn run(args: TrackersBenchArgs) -> anyhow::Result<()> {
    let scratch = scratch_folder(&args.dir)?;
    let (address, handle, server) = start_collector(scratch.path())?;
    let load = |events, format| GenArgs {
        url: format!("http://{address}"),
        key: BENCH_WRITE_KEY.to_owned(),
        events,
        rate: None,
        batch: args.batch,
        users: 100_000,
        duplicates: 0.0,
        late: 0.0,
        invalid: 0.0,
        concurrency: args.concurrency,
        acked_ids: None,
        seed: Some(42),
        format,
        json: false,
    };
    let rounds = actix_web::rt::System::new().block_on(async {
        eprintln!("bench: warming up both routes ...");
        generator::send(load(20_000, WireFormat::Tally)).await?;
        generator::send(load(20_000, WireFormat::Segment)).await?;
        let mut rounds = Vec::new();
        for round in 0..args.rounds {
            eprintln!(
                "bench: round {} of {}, {} events per route ...",
                round + 1,
                args.rounds,
                args.events
            );
            // Alternate which goes first, so neither always runs on a fuller spool.
            let (native, segment) = if round % 2 == 0 {
                let native = generator::send(load(args.events, WireFormat::Tally)).await?;
                (
                    native,
                    generator::send(load(args.events, WireFormat::Segment)).await?,
                )
            } else {
                let segment = generator::send(load(args.events, WireFormat::Segment)).await?;
                (
                    generator::send(load(args.events, WireFormat::Tally)).await?,
                    segment,
                )
            };
            anyhow::ensure!(
                native.failed_requests == 0 && segment.failed_requests == 0,
                "requests failed: native {}, segment {}",
                native.failed_requests,
                segment.failed_requests
            );
            anyhow::ensure!(
                native.accepted == args.events && segment.accepted == args.events,
                "not every event was accepted: native {}, segment {} of {}",
                native.accepted,
                segment.accepted,
                args.events
            );
            rounds.push(Round { native, segment });
        }
        handle.stop(true).await;
        anyhow::Ok(rounds)
    })?;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the collector thread panicked"))?
        .context("the collector failed")?;
    let rate = |pick: fn(&Round) -> &GenReport| {
        let (events, seconds) = rounds.iter().map(pick).fold((0.0, 0.0), |(e, s), run| {
            (e + run.accepted as f64, s + run.seconds)
        });
        events / seconds
    };
    let report = TrackersBenchReport {
        segment_over_native: rate(|round| &round.segment) / rate(|round| &round.native),
        goal_segment_over_native: GOAL_SEGMENT_OVER_NATIVE,
        rounds,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{:<8} {:>16} {:>16} {:>8} {:>12} {:>12}",
        "round", "native ev/s", "segment ev/s", "ratio", "native p99", "segment p99"
    );
    for (index, round) in report.rounds.iter().enumerate() {
        println!(
            "{:<8} {:>16.0} {:>16.0} {:>8.2} {:>9.1} ms {:>9.1} ms",
            index + 1,
            round.native.accepted_per_second,
            round.segment.accepted_per_second,
            round.segment.accepted_per_second / round.native.accepted_per_second,
            round.native.latency_ms.p99,
            round.segment.latency_ms.p99
        );
    }
    let met = report.segment_over_native >= GOAL_SEGMENT_OVER_NATIVE;
    println!(
        "goal: Segment's /v1/batch at >= {:.0} % of /v1/events: {} ({:.0} %)",
        GOAL_SEGMENT_OVER_NATIVE * 100.0,
        if met { "met" } else { "NOT met" },
        report.segment_over_native * 100.0
    );
    Ok(())
}
