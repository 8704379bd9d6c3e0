//! `tally-bench query`: latency and throughput of `GET /v1/query` on a real `tally serve`, for
//! the last 24 hours at minute granularity grouped by one dimension, over batch views built
//! from `--events` events of history and a real-time window since the horizon.
//!
//! The history is folded event by event into the demo views' states, an hour at a time, and
//! written as batch-view objects with a published manifest, as recompute leaves them; the
//! window since the horizon is folded into the real-time view store, as the speed layer
//! leaves it. Then `tally serve` runs over that data directory and a load generator in the
//! same process, on the same cores, sends the query with `--concurrency` requests in flight,
//! while a writer rewrites the live window's latest state once per speed-layer epoch, as the
//! speed layer does under live traffic. Before measuring, the answer's total count is checked
//! against the events in range.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use tally_connectors::batch_views::BatchViews;
use tally_connectors::log::{Spool, SpoolOptions};
use tally_connectors::view_store::{Access, ScyllaViewStore, ViewKey, ViewStore};
use tally_model::manifest::{HourEntry, Manifest, RawInputs, ViewManifest, view_id};
use tally_model::tenant::DEMO_TENANT;
use tally_model::time::{DAY_MS, HOUR_MS, now_millis};
use tally_model::{AggregateState, Catalog, Config, Event, Granularity, Millis, ViewSpec};

use crate::common::{BENCH_READ_KEY, BenchLog, validated_events};
use tally::generator::Percentiles;
use tally::serve;
use tally::settings::{self, Stream};

/// Options of `tally-bench query`.
#[derive(Args)]
pub struct QueryBenchArgs {
    /// Events of history in the batch views.
    #[arg(long, default_value_t = 100_000_000)]
    events: u64,
    /// Days the history spreads over, ending at the horizon (the current hour's start).
    #[arg(long, default_value_t = 7)]
    days: i64,
    /// Events in the real-time window, from the horizon to now.
    #[arg(long, default_value_t = 1_000_000)]
    live_events: u64,
    /// The view queried.
    #[arg(long, default_value = "events_by_type")]
    view: String,
    /// The dimension grouped by.
    #[arg(long, default_value = "event_type")]
    group_by: String,
    /// The measures asked [default: every measure of the view].
    #[arg(long)]
    measures: Option<String>,
    /// Requests in flight.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds of measured load (after one second of warm-up).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Folder for the benchmark's data; removed afterwards.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Keep the real-time views in this ScyllaDB or Cassandra cluster (`scylla://host:port`;
    /// a scratch keyspace is created and dropped) instead of the embedded store.
    #[arg(long)]
    views_url: Option<String>,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct QueryBenchReport {
    view_store: String,
    history_events: u64,
    live_events: u64,
    query: String,
    answer_rows: usize,
    answer_bytes: usize,
    concurrency: usize,
    queries: usize,
    queries_per_second: f64,
    latency_ms: Percentiles,
    /// Upserts of the live window's latest state made while the queries ran.
    realtime_writes: u64,
    goal_p99_ms: f64,
    goal_queries_per_second: f64,
}

const GOAL_P99_MS: f64 = 10.0;
const GOAL_QUERIES_PER_SECOND: f64 = 20_000.0;

/// Runs the benchmark.
pub fn run(args: QueryBenchArgs) -> anyhow::Result<()> {
    let BenchLog {
        scratch,
        mut config,
        catalog,
        log,
    } = BenchLog::create(&args.dir)?;
    drop(log);
    config.data_dir = scratch.path().join("data");
    config.ingest.listen = "127.0.0.1:0".to_owned();
    config.demo.read_key = BENCH_READ_KEY.to_owned();
    crate::common::without_caller_limits(&mut config);
    if let Some(url) = &args.views_url {
        let nodes = url.trim_end_matches('/');
        config.views.url = format!("{nodes}/tally_bench_{}", now_millis());
    }
    let tenant = &catalog.tenants[DEMO_TENANT];
    anyhow::ensure!(
        tenant.views.iter().any(|v| v.name == args.view),
        "no demo view '{}'; the demo views are events_by_type, revenue_by_country and latency_by_type",
        args.view
    );

    let now = now_millis();
    let horizon = Granularity::Hour.bucket_start(now);
    let history_start = horizon - args.days.max(1) * DAY_MS;
    let query_from = Granularity::Minute.bucket_start(now - DAY_MS);
    let view = tenant
        .views
        .iter()
        .find(|v| v.name == args.view)
        .expect("checked");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    eprintln!(
        "bench: folding {} events over {} days into batch views ...",
        args.events, args.days
    );
    let started = Instant::now();
    let history = timed_events(&catalog, args.events, history_start..horizon)?;
    let counted = (view, query_from);
    let mut in_range = fold_history(&config, &catalog, history, horizon, counted, &runtime)?;
    eprintln!(
        "bench: history built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    eprintln!(
        "bench: folding {} events since the horizon into the real-time views ...",
        args.live_events
    );
    let live = timed_events(&catalog, args.live_events, horizon..now)?;
    std::fs::create_dir_all(&config.data_dir)?;
    let store = settings::view_store(&config, Access::ReadWrite, "is the server up?")?;
    in_range += fold_live(store.as_ref(), &catalog, live, view)?;
    Spool::open(
        &settings::spool_dir(&config.data_dir, Stream::Events),
        SpoolOptions::from_config(&config.log),
    )?;

    let view_store = settings::views_location(&config);
    let epoch = Duration::from_millis(config.speed.epoch_ms);
    let (bound, listening) = mpsc::channel();
    let server = std::thread::spawn(move || {
        serve::serve(config, serve::Mode::Serve, |address, handle, _| {
            let _ = bound.send((address, handle));
        })
    });
    let (address, handle) = listening.recv().context("tally serve did not start")?;
    let mut query = format!(
        "/v1/query?view={}&from={query_from}&to={now}&granularity=minute&group_by={}",
        args.view, args.group_by
    );
    if let Some(measures) = &args.measures {
        query.push_str(&format!("&measures={measures}"));
    }
    let url = format!("http://{address}{query}");
    let writing = LiveWriter::start(store.clone(), &view.stored_name(), horizon, epoch)?;
    let outcome = actix_web::rt::System::new().block_on(load(&url, &args, in_range));
    let realtime_writes = writing.stop()?;
    actix_web::rt::System::new().block_on(handle.stop(true));
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the server thread panicked"))??;
    let (answer_rows, answer_bytes, latencies) = outcome?;
    let queries = latencies.len();
    if let Some(scylla) = &args.views_url {
        let keyspace = ScyllaViewStore::connect(&view_store)
            .with_context(|| format!("dropping the scratch keyspace on {scylla}"))?;
        keyspace.drop_keyspace()?;
    }
    let report = QueryBenchReport {
        view_store,
        history_events: args.events,
        live_events: args.live_events,
        query,
        answer_rows,
        answer_bytes,
        concurrency: args.concurrency,
        queries,
        queries_per_second: queries as f64 / args.seconds as f64,
        latency_ms: Percentiles::of(latencies),
        realtime_writes,
        goal_p99_ms: GOAL_P99_MS,
        goal_queries_per_second: GOAL_QUERIES_PER_SECOND,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let l = report.latency_ms;
        println!(
            "query {} ({} rows, {} bytes) over {} events of batch history and {} live events in {}",
            report.query,
            report.answer_rows,
            report.answer_bytes,
            report.history_events,
            report.live_events,
            report.view_store
        );
        println!(
            "{} requests in flight: {:.0} queries/s, latency p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms (goal: p99 < {GOAL_P99_MS} ms, >= {GOAL_QUERIES_PER_SECOND} queries/s)",
            report.concurrency, report.queries_per_second, l.p50, l.p99, l.max
        );
        println!(
            "meanwhile the real-time view was written {} times, once per speed-layer epoch",
            report.realtime_writes
        );
    }
    Ok(())
}

/// `count` valid demo events with event times spread evenly over `span`, in time order.
fn timed_events(
    catalog: &Catalog,
    count: u64,
    span: std::ops::Range<Millis>,
) -> anyhow::Result<impl Iterator<Item = anyhow::Result<Event>> + '_> {
    let width = (span.end - span.start).max(1) as i128;
    let events = validated_events(catalog, count, 0.0)?;
    Ok(events.enumerate().map(move |(index, event)| {
        let mut event = event?;
        event.ts = span.start + (index as i128 * width / count.max(1) as i128) as Millis;
        Ok(event)
    }))
}

/// One view's states by bucket and dimension values.
type Folded = BTreeMap<(Millis, Vec<String>), AggregateState>;

/// Folds `event` into the states of every view covering it; `states` holds one map per view,
/// in the views' order.
fn fold(views: &[ViewSpec], states: &mut [Folded], event: &Event) {
    for (view, states) in views.iter().zip(states) {
        if view.covers(&event.event_type) {
            let key = (view.bucket_of(event.ts), view.dimension_values(event));
            view.accumulate(
                states.entry(key).or_insert_with(|| view.empty_state()),
                event,
            );
        }
    }
}

/// Folds the history an hour at a time on a second thread, writes each hour's states as batch
/// view objects and publishes a manifest with its horizon at `horizon`. Returns how many
/// events of the `counted` view fall at or after its time.
fn fold_history(
    config: &Config,
    catalog: &Catalog,
    events: impl Iterator<Item = anyhow::Result<Event>>,
    horizon: Millis,
    counted: (&ViewSpec, Millis),
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<u64> {
    let views = catalog.tenants[DEMO_TENANT].views.clone();
    let batch_views = BatchViews::new(settings::objects(config)?);
    let writer_views = batch_views.clone();
    let (hours, folder) = mpsc::sync_channel::<(Millis, Vec<Event>)>(2);
    let handle = runtime.handle().clone();
    let writer = std::thread::spawn(move || -> anyhow::Result<Vec<ViewManifest>> {
        let mut entries: Vec<ViewManifest> = views
            .iter()
            .map(|view| ViewManifest::new(DEMO_TENANT, view))
            .collect();
        for (hour, events) in folder {
            let mut states = vec![Folded::new(); views.len()];
            for event in &events {
                fold(&views, &mut states, event);
            }
            for ((view, entry), states) in views.iter().zip(&mut entries).zip(states) {
                let rows: Vec<_> = states
                    .into_iter()
                    .map(|((bucket, values), state)| (bucket, values, state))
                    .collect();
                let object =
                    tally_model::layout::view_object_path(DEMO_TENANT, &view.name, 1, hour, 1, 0);
                handle.block_on(writer_views.write_states(&object, &view.dimensions, &rows))?;
                entry.hours.insert(
                    hour,
                    HourEntry {
                        logic_version: 1,
                        object: Some(object),
                        rows: rows.len() as u64,
                        events: events.iter().filter(|e| view.covers(&e.event_type)).count() as u64,
                        inputs: RawInputs::default(),
                    },
                );
                entry.horizon = hour + HOUR_MS;
            }
        }
        Ok(entries)
    });
    let mut in_range = 0;
    let mut hour_events = Vec::new();
    let mut current_hour = None;
    for (index, event) in events.enumerate() {
        let event = event?;
        if index > 0 && index % 10_000_000 == 0 {
            eprintln!("bench: {index} events folded ...");
        }
        let hour = Granularity::Hour.bucket_start(event.ts);
        if current_hour.is_some_and(|current| current != hour) {
            let full = std::mem::take(&mut hour_events);
            if hours.send((current_hour.unwrap(), full)).is_err() {
                break;
            }
        }
        current_hour = Some(hour);
        in_range += u64::from(event.ts >= counted.1 && counted.0.covers(&event.event_type));
        hour_events.push(event);
    }
    if let Some(hour) = current_hour {
        let _ = hours.send((hour, hour_events));
    }
    drop(hours);
    let entries = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the folding thread panicked"))??;
    let manifest = Manifest {
        generation: 1,
        published_at: now_millis(),
        horizon,
        views: entries
            .into_iter()
            .map(|entry| (view_id(DEMO_TENANT, &entry.view), entry))
            .collect(),
    };
    runtime.block_on(batch_views.publish(&manifest))?;
    Ok(in_range)
}

/// Folds the events since the horizon into the real-time view store; returns how many feed
/// `spec`.
fn fold_live(
    store: &dyn ViewStore,
    catalog: &Catalog,
    events: impl Iterator<Item = anyhow::Result<Event>>,
    spec: &ViewSpec,
) -> anyhow::Result<u64> {
    let views = &catalog.tenants[DEMO_TENANT].views;
    let mut states = vec![Folded::new(); views.len()];
    let mut feeding = 0;
    for event in events {
        let event = event?;
        feeding += u64::from(spec.covers(&event.event_type));
        fold(views, &mut states, &event);
    }
    let rows: Vec<_> = views
        .iter()
        .zip(states)
        .flat_map(|(view, states)| {
            states.into_iter().map(|((bucket, dimensions), state)| {
                let key = ViewKey {
                    tenant: DEMO_TENANT.to_owned(),
                    view: view.stored_name(),
                    bucket,
                    dimensions,
                };
                (key, state)
            })
        })
        .collect();
    store.upsert(&rows)?;
    Ok(feeding)
}

/// Writes the real-time view store once per speed-layer epoch while the queries run, as the
/// speed layer does under live traffic, so that what serving derives from the real-time
/// views is as stale as it would be in production: every write changes the view's
/// generation.
struct LiveWriter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<u64>>,
}

impl LiveWriter {
    /// Rewrites the latest state of `view` since `horizon` every `epoch`.
    fn start(
        store: std::sync::Arc<dyn ViewStore>,
        view: &str,
        horizon: Millis,
        epoch: Duration,
    ) -> anyhow::Result<LiveWriter> {
        let latest: Vec<_> = store
            .scan(DEMO_TENANT, view, horizon..Millis::MAX)?
            .pop()
            .into_iter()
            .collect();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut writes = 0;
            while !stopping.load(std::sync::atomic::Ordering::Acquire) {
                store.upsert(&latest)?;
                writes += 1;
                std::thread::sleep(epoch);
            }
            Ok(writes)
        });
        Ok(LiveWriter { stop, thread })
    }

    /// Stops writing; returns how many writes it made.
    fn stop(self) -> anyhow::Result<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the live writer panicked"))?
    }
}

/// Checks the answer once, then keeps `concurrency` queries in flight: a second of warm-up,
/// then `seconds` measured. Returns the answer's rows and bytes and every measured latency.
async fn load(
    url: &str,
    args: &QueryBenchArgs,
    expected_count: u64,
) -> anyhow::Result<(usize, usize, Vec<Duration>)> {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .connector(awc::Connector::new().limit(args.concurrency))
        .finish();
    let authorization = format!("Bearer {BENCH_READ_KEY}");
    let fetch = |client: awc::Client, authorization: String, url: String| async move {
        let mut response = client
            .get(&url)
            .insert_header(("Authorization", authorization))
            .send()
            .await
            .map_err(|err| anyhow::anyhow!("querying {url}: {err}"))?;
        let body = response.body().limit(256 << 20).await?;
        anyhow::ensure!(
            response.status().is_success(),
            "{}: {}",
            response.status(),
            String::from_utf8_lossy(&body)
        );
        anyhow::Ok(body)
    };
    let body = fetch(client.clone(), authorization.clone(), url.to_owned()).await?;
    let answer: serde_json::Value = serde_json::from_slice(&body)?;
    let rows = answer["rows"].as_array().context("no rows in the answer")?;
    if args.measures.is_none() || args.measures.as_deref() == Some("count") {
        let counted: u64 = rows.iter().filter_map(|row| row["count"].as_u64()).sum();
        anyhow::ensure!(
            counted == expected_count,
            "the answer counts {counted} events, {expected_count} are in range: {answer}"
        );
    }
    let (answer_rows, answer_bytes) = (rows.len(), body.len());

    let warm_up_until = Instant::now() + Duration::from_secs(1);
    let deadline = warm_up_until + Duration::from_secs(args.seconds);
    let latencies = Rc::new(RefCell::new(Vec::new()));
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (client, authorization, url) =
                (client.clone(), authorization.clone(), url.to_owned());
            let latencies = latencies.clone();
            actix_web::rt::spawn(async move {
                loop {
                    let started = Instant::now();
                    if started >= deadline {
                        return anyhow::Ok(());
                    }
                    fetch(client.clone(), authorization.clone(), url.clone()).await?;
                    if started >= warm_up_until {
                        latencies.borrow_mut().push(started.elapsed());
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    let latencies = latencies.take();
    Ok((answer_rows, answer_bytes, latencies))
}
