//! `tally-bench batch`: the archiver's and recompute's throughput over generated events, and
//! DuckDB running the same dedupe and aggregation over the same raw Parquet in the same run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tally_batch_layer::telemetry::BatchMetrics;
use tally_batch_layer::{Archiver, Recompute, RollPolicy, RunRequest};
use tally_model::time::HOUR_MS;
use tally_model::view::BUILT_IN_FIELDS;
use tally_model::{Event, Measure, ViewSpec};

use crate::common::{BenchLog, validated_events};

/// Options of `tally-bench batch`.
#[derive(Args)]
pub struct BatchBenchArgs {
    /// Events to generate, archive and recompute.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Hours the event times spread over (all closed: they end an hour ago).
    #[arg(long, default_value_t = 10)]
    hours: i64,
    /// Folder for the benchmark's data; removed afterwards.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Python with the `duckdb` module (`pip install duckdb`) for the comparison.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct BatchBenchReport {
    events: u64,
    archive_seconds: f64,
    archive_events_per_second: f64,
    recompute_seconds: f64,
    recompute_rows_per_second: f64,
    view_rows: u64,
    duckdb_seconds: Option<f64>,
    duckdb_version: Option<String>,
    /// DuckDB's time over Tally's: above 1, Tally's recompute is faster.
    speedup_over_duckdb: Option<f64>,
}

/// Runs the benchmark.
pub fn run(args: BatchBenchArgs) -> anyhow::Result<()> {
    let bench_log = BenchLog::create(&args.dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    eprintln!(
        "bench: logging {} events over {} closed hours ...",
        args.events, args.hours
    );
    let hours = args.hours.max(1);
    let events = validated_events(&bench_log.catalog, args.events, 0.02)?;
    bench_log.append_all(
        &runtime,
        events.enumerate().map(|(index, event)| {
            let mut event: Event = event?;
            // Spread event times over the hours ending an hour ago, so every hour is closed.
            event.ts -= HOUR_MS * (1 + index as i64 % hours);
            Ok(event)
        }),
    )?;
    let BenchLog {
        scratch,
        config,
        catalog,
        log,
    } = bench_log;

    let objects = scratch.path().join("objects");
    let store = tally_connectors::object_store::open_local(&objects)?;
    let metrics = BatchMetrics::register(&mut Registry::default());
    eprintln!("bench: archiving ...");
    let started = Instant::now();
    runtime.block_on(async {
        let policy = RollPolicy::from_config(&config.batch);
        let mut archiver =
            Archiver::<Event>::open(log.clone(), store.clone(), policy, metrics.clone()).await?;
        while archiver.pass(true).await?.read > 0 {}
        anyhow::Ok(())
    })?;
    let archive_seconds = started.elapsed().as_secs_f64();

    eprintln!("bench: recomputing ...");
    let lateness = config.ingest.max_lateness_secs as i64 * 1000;
    let recompute = Recompute::new(store, catalog.clone(), lateness, metrics);
    let started = Instant::now();
    let summary = runtime.block_on(recompute.run(&RunRequest::default(), &|_| {}))?;
    let recompute_seconds = started.elapsed().as_secs_f64();

    eprintln!("bench: the same dedupe and aggregation in DuckDB ...");
    let views = &catalog.tenants[tally_model::tenant::DEMO_TENANT].views;
    let duckdb = duckdb_seconds(&args.python, &objects, views);
    if let Err(err) = &duckdb {
        eprintln!("bench: skipping the DuckDB comparison: {err:#}");
    }
    let duckdb = duckdb.ok();
    let report = BatchBenchReport {
        events: args.events,
        archive_seconds,
        archive_events_per_second: args.events as f64 / archive_seconds,
        recompute_seconds,
        recompute_rows_per_second: summary.raw_rows as f64 / recompute_seconds,
        view_rows: summary.rows,
        duckdb_seconds: duckdb.as_ref().map(|(seconds, _)| *seconds),
        duckdb_version: duckdb.as_ref().map(|(_, version)| version.clone()),
        speedup_over_duckdb: duckdb
            .as_ref()
            .map(|(seconds, _)| seconds / recompute_seconds),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "archive    {} events in {:.2} s: {:.0} events/s",
            report.events, report.archive_seconds, report.archive_events_per_second
        );
        println!(
            "recompute  {} raw rows in {:.2} s: {:.0} rows/s ({} view rows)",
            summary.raw_rows,
            report.recompute_seconds,
            report.recompute_rows_per_second,
            report.view_rows
        );
        if let (Some(seconds), Some(version), Some(speedup)) = (
            report.duckdb_seconds,
            &report.duckdb_version,
            report.speedup_over_duckdb,
        ) {
            println!(
                "duckdb {version} the same dedupe and aggregation in {seconds:.2} s: Tally's recompute is {speedup:.2}x DuckDB's speed"
            );
        }
    }
    Ok(())
}

/// Runs the views' dedupe and aggregation in DuckDB over the raw Parquet; returns the seconds
/// it took and DuckDB's version.
fn duckdb_seconds(
    python: &str,
    objects: &Path,
    views: &[ViewSpec],
) -> anyhow::Result<(f64, String)> {
    let raw = objects.join("raw/events/**/*.parquet");
    let mut sql = vec![format!(
        "CREATE TEMP TABLE deduped AS SELECT * FROM read_parquet('{}', union_by_name = true) \
         QUALIFY row_number() OVER (PARTITION BY tenant, event_id, date_trunc('hour', ts) \
         ORDER BY received_at, log_partition, log_offset) = 1",
        raw.display()
    )];
    sql.extend(views.iter().map(view_sql));
    let script = "import duckdb, sys, time\n\
         con = duckdb.connect()\n\
         con.execute('SET enable_progress_bar = false')\n\
         started = time.perf_counter()\n\
         for statement in sys.argv[1:]:\n    con.execute(statement)\n\
         print('duckdb-seconds', time.perf_counter() - started, duckdb.__version__)\n";
    let output = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .args(&sql)
        .output()
        .with_context(|| format!("running {python}"))?;
    anyhow::ensure!(
        output.status.success(),
        "{python} with duckdb failed (pip install duckdb): {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let stdout = String::from_utf8(output.stdout)?;
    let timing = stdout
        .lines()
        .find_map(|line| line.strip_prefix("duckdb-seconds "))
        .with_context(|| format!("no timing in DuckDB's output: {stdout}"))?;
    let mut words = timing.split_whitespace();
    let seconds = words.next().unwrap_or_default().parse()?;
    Ok((seconds, words.next().unwrap_or_default().to_owned()))
}

/// A view spec as a DuckDB aggregation over the deduplicated raw events, materialized.
fn view_sql(view: &ViewSpec) -> String {
    let column = |field: &str, kind: &str| match BUILT_IN_FIELDS.contains(&field) {
        true => field.to_owned(),
        false => format!("{kind}_{field}"),
    };
    let mut select = vec![format!(
        "time_bucket(INTERVAL '{} milliseconds', ts) AS bucket",
        view.stored_granularity().millis()
    )];
    select.extend(
        view.dimensions
            .iter()
            .map(|dimension| format!("{} AS d_{dimension}", column(dimension, "tag"))),
    );
    select.extend(view.measures.iter().map(|measure| match measure {
        Measure::Count => "count(*)".to_owned(),
        Measure::Sum(field) => format!("sum({0}), count({0})", column(field, "num")),
        Measure::Min(field) => format!("min({})", column(field, "num")),
        Measure::Max(field) => format!("max({})", column(field, "num")),
        Measure::Uniq(field) => format!("approx_count_distinct({})", column(field, "tag")),
        Measure::Quantiles(field) => {
            format!(
                "approx_quantile({}, [0.5, 0.9, 0.99])",
                column(field, "num")
            )
        }
    }));
    let covered = match view.covers_every_event_type() {
        true => "true".to_owned(),
        false => {
            let types: Vec<String> = view.events.iter().map(|t| format!("'{t}'")).collect();
            format!("event_type IN ({})", types.join(", "))
        }
    };
    format!(
        "CREATE TEMP TABLE view_{} AS SELECT {} FROM deduped WHERE tenant = 'demo' AND {covered} GROUP BY ALL",
        view.name,
        select.join(", ")
    )
}
