//! `tally-bench search`: the full-text search index's figures.
//!
//! 1. Beside ingest, in one run: `tally up` on embedded defaults takes generated events over
//!    HTTP as fast as they come, and its indexer follows the log; the report puts the
//!    accepted events/s beside the indexed events/s (from the first send to the last event
//!    indexed), and how long the index trailed after the last acknowledgement.
//! 2. At scale: `--indexed` events (10 million by default) indexed in-process into one index:
//!    its rate, its size on disk per million events, and the latency of a set of queries,
//!    p50 and p99, beside a bare loop that finds the same newest hits by scanning the same
//!    events in memory (what answering without an index costs).

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use tally::generator::{self, GenArgs, WireFormat};
use tally_model::tenant::DEMO_TENANT;
use tally_model::time::{DAY_MS, now_millis};
use tally_model::{Catalog, Event};
use tally_serving::search::{Positions, SearchIndex, SearchRequest};

use crate::common::{BENCH_WRITE_KEY, scratch_folder, validated_events, without_caller_limits};

/// Options of `tally-bench search`.
#[derive(Args)]
pub struct SearchBenchArgs {
    /// Events sent to `tally up` for the rate beside ingest.
    #[arg(long, default_value_t = 300_000)]
    events: u64,
    /// Events indexed in-process for size and query latency.
    #[arg(long, default_value_t = 10_000_000)]
    indexed: u64,
    /// Times each query runs on the index.
    #[arg(long, default_value_t = 50)]
    repeats: usize,
    /// Times each query runs as a scan (it is slow).
    #[arg(long, default_value_t = 3)]
    scan_repeats: usize,
    /// Folder for the data.
    #[arg(long, default_value = ".")]
    dir: std::path::PathBuf,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct BesideIngest {
    events: u64,
    accepted_per_second: f64,
    indexed_per_second: f64,
    /// Seconds from the last acknowledgement to the last event searchable.
    trailing_seconds: f64,
}

#[derive(Serialize)]
struct QueryFigures {
    q: &'static str,
    hits: usize,
    index_p50_ms: f64,
    index_p99_ms: f64,
    scan_p50_ms: f64,
}

#[derive(Serialize)]
struct SearchBenchReport {
    beside_ingest: BesideIngest,
    indexed: u64,
    indexed_per_second: f64,
    bytes_per_million_events: u64,
    queries: Vec<QueryFigures>,
}

/// Which events a query admits, as a plain predicate.
type Admits = fn(&Event) -> bool;

/// The queries measured, each with the same condition as a plain predicate for the scan.
const QUERIES: [(&str, Admits); 5] = [
    ("user_id:user-4242", |e| e.user_id == "user-4242"),
    ("os_type:ios", |e| tag(e, "os_type") == "ios"),
    ("url:/page/1*", |e| tag(e, "url").starts_with("/page/1")),
    ("os_type:ios AND country:fr AND event_type:purchase", |e| {
        tag(e, "os_type") == "ios" && tag(e, "country") == "fr" && e.event_type == "purchase"
    }),
    ("purchase", |e| e.event_type == "purchase"),
];

fn tag(event: &Event, name: &str) -> String {
    event
        .tags
        .get(name)
        .map(ToString::to_string)
        .unwrap_or_default()
}

pub fn run(args: SearchBenchArgs) -> anyhow::Result<()> {
    let scratch = scratch_folder(&args.dir)?;
    eprintln!(
        "bench: {} events to tally up, indexed as they come ...",
        args.events
    );
    let beside_ingest = beside_ingest(scratch.path(), args.events)?;
    eprintln!("bench: indexing {} events in-process ...", args.indexed);
    let catalog = Catalog::demo("w", "r");
    let index_dir = scratch.path().join("index");
    let (index, _) = SearchIndex::open(&index_dir, 7 * DAY_MS)?;
    let mut events = Vec::with_capacity(args.indexed as usize);
    let mut indexing = std::time::Duration::ZERO;
    let mut batch = Vec::with_capacity(10_000);
    let now = now_millis();
    for event in validated_events(&catalog, args.indexed, 0.0)? {
        batch.push(event?);
        if batch.len() == batch.capacity() {
            let started = Instant::now();
            index.add(&batch, now)?;
            indexing += started.elapsed();
            events.append(&mut batch);
            if events.len() % 1_000_000 == 0 {
                let started = Instant::now();
                index.commit(&Positions::new())?;
                indexing += started.elapsed();
                eprintln!("bench:   {} indexed", events.len());
            }
        }
    }
    let started = Instant::now();
    index.add(&batch, now)?;
    index.commit(&Positions::new())?;
    indexing += started.elapsed();
    events.append(&mut batch);
    let bytes = folder_bytes(&index_dir)?;

    eprintln!("bench: querying ...");
    let canonical = |name: &str| name.to_owned();
    let mut queries = Vec::new();
    for (q, predicate) in QUERIES {
        let request = SearchRequest {
            tenant: DEMO_TENANT,
            q,
            event_type: None,
            user_id: None,
            range: now - 2 * DAY_MS..now + DAY_MS,
            offset: 0,
            limit: 100,
        };
        let mut timings = Vec::with_capacity(args.repeats);
        let mut hits = 0;
        for _ in 0..args.repeats {
            let started = Instant::now();
            let page = index.search(&request, &canonical)?;
            timings.push(started.elapsed().as_secs_f64() * 1000.0);
            hits = page.total;
        }
        let mut scans = Vec::with_capacity(args.scan_repeats);
        for _ in 0..args.scan_repeats {
            let started = Instant::now();
            let newest = newest_matching(&events, predicate, 100);
            scans.push(started.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(
                newest.1 == hits,
                "{q}: the index found {hits}, the scan {}",
                newest.1
            );
        }
        queries.push(QueryFigures {
            q,
            hits,
            index_p50_ms: percentile(&mut timings, 0.5),
            index_p99_ms: percentile(&mut timings, 0.99),
            scan_p50_ms: percentile(&mut scans, 0.5),
        });
    }
    let report = SearchBenchReport {
        beside_ingest,
        indexed: args.indexed,
        indexed_per_second: args.indexed as f64 / indexing.as_secs_f64(),
        bytes_per_million_events: (bytes as f64 / (args.indexed as f64 / 1e6)) as u64,
        queries,
    };
    print_report(&report, args.json)
}

/// `tally up` in a thread: events sent over HTTP, and the indexer's count polled until it
/// has every accepted event.
fn beside_ingest(folder: &std::path::Path, events: u64) -> anyhow::Result<BesideIngest> {
    let mut config = tally_model::Config::parse("", std::env::vars())
        .context("in TALLY_* environment variables")?;
    config.data_dir = folder.join("up");
    config.ingest.listen = "127.0.0.1:0".to_owned();
    config.demo.write_key = BENCH_WRITE_KEY.to_owned();
    without_caller_limits(&mut config);
    let (bound, listening) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        tally::serve::serve(config, tally::serve::Mode::Up, |address, handle, _| {
            let _ = bound.send((address, handle));
        })
    });
    let (address, handle) = listening.recv().context("tally up did not start")?;
    let load = GenArgs {
        url: format!("http://{address}"),
        key: BENCH_WRITE_KEY.to_owned(),
        events,
        rate: None,
        batch: 100,
        users: 100_000,
        duplicates: 0.0,
        late: 0.0,
        invalid: 0.0,
        concurrency: 32,
        acked_ids: None,
        seed: Some(42),
        format: WireFormat::Tally,
        json: false,
    };
    let figures = actix_web::rt::System::new().block_on(async {
        let started = Instant::now();
        let sent = generator::send(load).await?;
        anyhow::ensure!(
            sent.accepted == events,
            "{} of {events} accepted",
            sent.accepted
        );
        let acknowledged = started.elapsed();
        let client = awc::Client::default();
        loop {
            let mut response = (client.get(format!("http://{address}/metrics")).send().await)
                .map_err(|err| anyhow::anyhow!("reading /metrics: {err}"))?;
            let body = response.body().limit(16 << 20).await?;
            let metrics = String::from_utf8_lossy(&body);
            let indexed: u64 = metrics
                .lines()
                .find_map(|line| {
                    line.strip_prefix("tally_search_indexed_events_total ")?
                        .parse()
                        .ok()
                })
                .unwrap_or(0);
            if indexed >= events {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let all_indexed = started.elapsed();
        handle.stop(true).await;
        anyhow::Ok(BesideIngest {
            events,
            accepted_per_second: sent.accepted_per_second,
            indexed_per_second: events as f64 / all_indexed.as_secs_f64(),
            trailing_seconds: (all_indexed - acknowledged).as_secs_f64(),
        })
    })?;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the tally up thread panicked"))?
        .context("tally up failed")?;
    Ok(figures)
}

/// The newest `limit` events `predicate` admits, and how many it admits: a scan.
fn newest_matching(
    events: &[Event],
    predicate: fn(&Event) -> bool,
    limit: usize,
) -> (Vec<&Event>, usize) {
    let mut newest: BTreeMap<(i64, usize), &Event> = BTreeMap::new();
    let mut count = 0;
    for (i, event) in events.iter().enumerate() {
        if predicate(event) {
            count += 1;
            newest.insert((event.ts, i), event);
            if newest.len() > limit {
                newest.pop_first();
            }
        }
    }
    (newest.into_values().rev().collect(), count)
}

fn percentile(values: &mut [f64], rank: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let at = ((values.len() as f64 - 1.0) * rank).round() as usize;
    values.get(at).copied().unwrap_or(f64::NAN)
}

fn folder_bytes(dir: &std::path::Path) -> anyhow::Result<u64> {
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        bytes += match entry.file_type()?.is_dir() {
            true => folder_bytes(&entry.path())?,
            false => entry.metadata()?.len(),
        };
    }
    Ok(bytes)
}

fn print_report(report: &SearchBenchReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    let ingest = &report.beside_ingest;
    println!(
        "beside ingest ({} events): {:.0} accepted/s, {:.0} indexed/s ({:.2}x), the index trailed the last ack by {:.2} s",
        ingest.events,
        ingest.accepted_per_second,
        ingest.indexed_per_second,
        ingest.indexed_per_second / ingest.accepted_per_second,
        ingest.trailing_seconds
    );
    println!(
        "in-process: {} events indexed at {:.0}/s; {:.1} MB per million events",
        report.indexed,
        report.indexed_per_second,
        report.bytes_per_million_events as f64 / 1e6
    );
    println!(
        "{:<52} {:>10} {:>10} {:>10} {:>12}",
        "q", "hits", "p50 ms", "p99 ms", "scan p50 ms"
    );
    for query in &report.queries {
        println!(
            "{:<52} {:>10} {:>10.2} {:>10.2} {:>12.1}",
            query.q, query.hits, query.index_p50_ms, query.index_p99_ms, query.scan_p50_ms
        );
    }
    Ok(())
}
