//! `tally archive` and `tally batch run|reprocess|schedule`, and the batch services that
//! `tally up` runs beside the collector and the speed layer: the archivers of both streams and
//! the recompute scheduler; and the horizon follower of every running speed layer.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use object_store::ObjectStore;
use tally_batch_layer::retention::expire_raw_events;
use tally_batch_layer::telemetry::{BatchMetrics, RunSummary};
use tally_batch_layer::{
    Archiver, Recompute, RollPolicy, RunProgress, RunRequest, Scheduler, sweep,
};
use tally_connectors::catalog::CatalogHandle;
use tally_connectors::log::{EventLog, Spool, SpoolOptions};
use tally_model::time::{format_rfc3339, now_millis, parse_timestamp};
use tally_model::{Config, Event, LogKind, LogicVersion, Millis, RejectedEvent};
use tokio::sync::watch;

use crate::settings::ConfigArgs;
use crate::settings::{self, Stream};

/// The batch layer's jobs.
#[derive(Subcommand)]
pub enum BatchCommand {
    /// Recompute the closed hours that need it (new, or dirty with late events) and publish
    /// a manifest with the new horizon.
    Run(RunArgs),
    /// Recompute a range with the current view specs under a new logic version, beside the old
    /// one, then swap the manifest for that range in one step (or, with --review, stage it
    /// for review with `GET /v1/query?logic_version=N` until `tally batch promote`).
    Reprocess(ReprocessArgs),
    /// Make the hours a `reprocess --review` staged live, in one manifest swap.
    Promote(PromoteArgs),
    /// Run recompute every --every, never two at once, until Ctrl-C; each run is followed by
    /// a retention sweep and raw retention.
    Schedule(ScheduleArgs),
    /// Delete the manifests and view objects that superseded versions left behind (older
    /// than --grace and named by no manifest younger than it), and the raw events past their
    /// event type's retention_days.
    Sweep(SweepArgs),
}

/// Options of `tally batch sweep`.
#[derive(Args)]
pub struct SweepArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// How long superseded views stay readable, e.g. 1h, 15m, 0s [default: 1h].
    #[arg(long, value_parser = parse_period)]
    grace: Option<Duration>,
}

/// Options of `tally batch run`.
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    range: RangeArgs,
}

/// Options of `tally batch reprocess`.
#[derive(Args)]
pub struct ReprocessArgs {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    range: RangeArgs,
    /// The logic version to compute the range under (one more than the view's last, usually).
    #[arg(long)]
    logic_version: LogicVersion,
    /// Stage the recomputed hours for review instead of making them live.
    #[arg(long)]
    review: bool,
    /// Only the views of this tenant.
    #[arg(long)]
    tenant: Option<String>,
}

/// Options of `tally batch promote`.
#[derive(Args)]
pub struct PromoteArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The tenant owning the view.
    #[arg(long, default_value = tally_model::tenant::DEMO_TENANT)]
    tenant: String,
    /// The view.
    #[arg(long)]
    view: String,
    /// The reviewed logic version.
    #[arg(long)]
    logic_version: LogicVersion,
}

/// Options of `tally batch schedule`.
#[derive(Args)]
pub struct ScheduleArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Period between runs, e.g. 15m, 90s, 1h [default: batch.every_secs].
    #[arg(long, value_parser = parse_period)]
    every: Option<Duration>,
    /// Address to serve /metrics, /healthz and /readyz on [default: batch.listen].
    #[arg(long)]
    listen: Option<String>,
}

/// Which hours and views a job covers.
#[derive(Args)]
pub struct RangeArgs {
    /// First hour: RFC 3339 or epoch ms [default: the first archived hour].
    #[arg(long)]
    from: Option<String>,
    /// End, exclusive: RFC 3339 or epoch ms [default: the last closed hour].
    #[arg(long)]
    to: Option<String>,
    /// Only this view (of every tenant that has it).
    #[arg(long)]
    view: Option<String>,
}

/// Options of `tally archive`.
#[derive(Args)]
pub struct ArchiveArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Archive what the log holds now, close every file, and exit.
    #[arg(long)]
    once: bool,
    /// Archive only these partitions of each stream, comma-separated (e.g. 0,2), when
    /// several archivers split the Kafka topics; every partition must have one archiver
    /// [default: all].
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    partitions: Option<Vec<u32>>,
}

/// Runs a `tally batch` command.
pub fn run(command: BatchCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the batch runtime")?;
    runtime.block_on(async {
        match command {
            BatchCommand::Run(args) => {
                let request = args.range.request(None)?;
                let summary = recompute_once(&args.config, &request).await?;
                print_published(&summary);
                let config = settings::load(&args.config)?;
                explain_the_horizon(summary.horizon, lateness_ms(&config));
                failed_views(&summary)
            }
            BatchCommand::Reprocess(args) => {
                let request = RunRequest {
                    tenant: args.tenant,
                    stage: args.review,
                    ..args.range.request(Some(args.logic_version))?
                };
                let summary = recompute_once(&args.config, &request).await?;
                print_published(&summary);
                failed_views(&summary)
            }
            BatchCommand::Promote(args) => {
                let recompute = recompute_for(&args.config).await?;
                let hours = (recompute)
                    .promote(&args.tenant, &args.view, args.logic_version)
                    .await?;
                println!(
                    "logic version {} of {}/{} is live for {hours} more hour(s)",
                    args.logic_version, args.tenant, args.view
                );
                Ok(())
            }
            BatchCommand::Schedule(args) => schedule(&args).await,
            BatchCommand::Sweep(args) => {
                let config = settings::load(&args.config)?;
                let grace = args.grace.unwrap_or(sweep::DEFAULT_GRACE);
                let store = settings::objects(&config)?;
                let report = sweep::sweep(store.clone(), grace).await?;
                println!(
                    "deleted {} manifest(s) and {} view object(s), {} bytes",
                    report.manifests, report.objects, report.bytes
                );
                let (catalog, _, _) = crate::catalog::load_async(&config).await?;
                let expired = expire_raw_events(store, &catalog.current(), now_millis()).await?;
                println!(
                    "dropped {} raw event(s) past their retention: {} raw object(s) deleted, {} rewritten",
                    expired.events, expired.deleted, expired.rewritten
                );
                Ok(())
            }
        }
    })
}

/// Runs `tally archive`: the process must own the spool, so no `tally up` may run beside it.
pub fn archive(args: ArchiveArgs) -> anyhow::Result<()> {
    let config = settings::load(&args.config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the archive runtime")?;
    let open = |stream, partitions| -> anyhow::Result<Arc<dyn EventLog>> {
        if config.log.kind == LogKind::Kafka {
            return settings::kafka_log(&config, stream);
        }
        let dir = settings::spool_dir(&config.data_dir, stream);
        let options = SpoolOptions {
            partitions,
            ..SpoolOptions::from_config(&config.log)
        };
        let spool = Spool::open(&dir, options).with_context(|| {
            format!("opening the {} spool (is `tally up` running on this data directory? it archives by itself)", Stream::name(stream))
        })?;
        Ok(Arc::new(spool))
    };
    let events = open(Stream::Events, config.log.partitions)?;
    let rejected = open(Stream::Rejected, config.log.rejected_partitions)?;
    let owned: Option<Arc<[u32]>> = args.partitions.as_deref().map(Into::into);
    if let Some(beyond) = owned
        .iter()
        .flat_map(|owned| owned.iter())
        .find(|p| **p >= events.partitions())
    {
        anyhow::bail!(
            "--partitions names partition {beyond}, but the events stream has {} (0 to {})",
            events.partitions(),
            events.partitions() - 1
        );
    }
    let store = settings::objects(&config)?;
    let metrics = BatchMetrics::register(&mut Default::default());
    let policy = RollPolicy::from_config(&config.batch);
    let archivers = Archivers {
        events,
        rejected,
        store,
        policy,
        metrics,
        owned,
    };
    runtime.block_on(async {
        if args.once {
            let (mut events, mut rejected) = archivers.open().await?;
            let mut archived = 0;
            loop {
                let (a, b) = (events.pass(true).await?, rejected.pass(true).await?);
                archived += a.archived + b.archived;
                if a.read + b.read == 0 {
                    break;
                }
            }
            println!("archived {archived} records; the log is caught up");
            return anyhow::Ok(());
        }
        let (stop, stopped) = watch::channel(false);
        let tasks = archivers.spawn(stopped).await?;
        println!("tally archive is running; Ctrl-C closes the open files and stops");
        tokio::signal::ctrl_c().await.ok();
        stop.send_replace(true);
        for task in tasks {
            task.await.context("the archiver task panicked")??;
        }
        Ok(())
    })
}

/// The batch services of `tally up`, on their own thread and runtime.
pub struct BatchServices {
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl BatchServices {
    /// Starts the archivers of both streams and the scheduler.
    pub fn start(
        config: &Config,
        catalog: CatalogHandle,
        events: Arc<dyn EventLog>,
        rejected: Arc<dyn EventLog>,
        metrics: Arc<BatchMetrics>,
    ) -> anyhow::Result<Self> {
        let store = settings::objects(config)?;
        let policy = RollPolicy::from_config(&config.batch);
        let every = Duration::from_secs(config.batch.every_secs);
        let lateness = lateness_ms(config);
        let (stop, stopped) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("tally-batch".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("starting the batch runtime")?;
                runtime.block_on(async move {
                    let archivers = Archivers {
                        events,
                        rejected,
                        store: store.clone(),
                        policy,
                        metrics: metrics.clone(),
                        owned: None,
                    };
                    let archivers = archivers.spawn(stopped.clone()).await?;
                    let recompute =
                        Recompute::new(store.clone(), catalog, lateness, metrics.clone());
                    let scheduler = Scheduler::new(Arc::new(recompute), every, metrics);
                    let scheduled = tokio::spawn(scheduler.run(stopped));
                    for archiver in archivers {
                        archiver.await.context("the archiver task panicked")??;
                    }
                    scheduled.await.context("the scheduler panicked")?;
                    anyhow::Ok(())
                })
            })
            .context("starting the batch thread")?;
        Ok(BatchServices { stop, thread })
    }

    /// Closes the open raw files and stops.
    pub fn stop(self) -> anyhow::Result<()> {
        self.stop.send_replace(true);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the batch thread panicked"))?
    }
}

/// The archivers of both streams, of every partition or of the `owned` ones.
struct Archivers {
    events: Arc<dyn EventLog>,
    rejected: Arc<dyn EventLog>,
    store: Arc<dyn ObjectStore>,
    policy: RollPolicy,
    metrics: Arc<BatchMetrics>,
    owned: Option<Arc<[u32]>>,
}

impl Archivers {
    async fn open(self) -> anyhow::Result<(Archiver<Event>, Archiver<RejectedEvent>)> {
        let (store, metrics, owned) = (self.store, self.metrics, self.owned);
        let events = Archiver::open_owned(
            self.events,
            store.clone(),
            self.policy,
            metrics.clone(),
            owned.clone(),
        )
        .await
        .context("starting the events archiver")?;
        let rejected = Archiver::open_owned(self.rejected, store, self.policy, metrics, owned)
            .await
            .context("starting the rejected-events archiver")?;
        Ok((events, rejected))
    }

    async fn spawn(
        self,
        stopped: watch::Receiver<bool>,
    ) -> anyhow::Result<Vec<tokio::task::JoinHandle<Result<(), tally_batch_layer::BatchError>>>>
    {
        let (events, rejected) = self.open().await?;
        Ok(vec![
            tokio::spawn(events.run(stopped.clone())),
            tokio::spawn(rejected.run(stopped)),
        ])
    }
}

/// A recompute over the configured stores and catalog.
async fn recompute_for(args: &ConfigArgs) -> anyhow::Result<Recompute> {
    let config = settings::load(args)?;
    let (catalog, _, _) = crate::catalog::load_async(&config).await?;
    let metrics = BatchMetrics::register(&mut Default::default());
    Ok(Recompute::new(
        settings::objects(&config)?,
        catalog,
        lateness_ms(&config),
        metrics,
    ))
}

async fn recompute_once(args: &ConfigArgs, request: &RunRequest) -> anyhow::Result<RunSummary> {
    let recompute = recompute_for(args).await?;
    let progress = std::sync::Mutex::new(Progress::default());
    let summary = recompute
        .run(request, &|update| {
            progress
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .show(update)
        })
        .await?;
    Ok(summary)
}

/// Progress on stderr: hours done, raw rows read, rows/s and time left; a bar (indicatif)
/// on a terminal, a line per hour otherwise (logs, CI).
#[derive(Default)]
struct Progress {
    bar: Option<ProgressBar>,
    hours: usize,
    done: usize,
    rows: u64,
    started: Option<std::time::Instant>,
}

impl Progress {
    fn show(&mut self, update: RunProgress) {
        match update {
            RunProgress::Planned { hours } => {
                self.hours = hours;
                self.started = Some(std::time::Instant::now());
                eprintln!("recomputing {hours} hour(s)");
                if std::io::stderr().is_terminal() && hours > 0 {
                    let bar = ProgressBar::new(hours as u64);
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{bar:30} {pos}/{len} hours  {msg}  {elapsed} elapsed, about {eta} left",
                        )
                        .expect("a valid progress template"),
                    );
                    self.bar = Some(bar);
                }
            }
            RunProgress::HourDone { raw_rows } => {
                self.done += 1;
                self.rows += raw_rows;
                let elapsed = self.started.map_or(Duration::ZERO, |at| at.elapsed());
                let rate = self.rows as f64 / elapsed.as_secs_f64().max(1e-9);
                let Some(bar) = &self.bar else {
                    let left = elapsed.mul_f64((self.hours - self.done) as f64 / self.done as f64);
                    eprintln!(
                        "  [{}/{}] {} raw rows, {rate:.0} rows/s, about {left:.0?} left",
                        self.done, self.hours, self.rows
                    );
                    return;
                };
                bar.set_message(format!("{} raw rows, {rate:.0} rows/s", self.rows));
                bar.inc(1);
                if self.done == self.hours {
                    bar.finish();
                }
            }
        }
    }
}

/// Why the horizon trails the clock, when it does by more than a few minutes: an hour is
/// recomputed once no event can arrive late for it any more (`ingest.max_lateness_secs` after
/// its end), so on fresh data a run finds nothing to do for up to a day, and the speed layer
/// answers after the horizon meanwhile.
fn explain_the_horizon(horizon: Millis, lateness: Millis) {
    let behind = tally_model::time::now_millis().saturating_sub(horizon.max(0));
    if lateness <= 10 * 60_000 || behind < 10 * 60_000 {
        return;
    }
    println!(
        "  the batch layer recomputes an hour once ingest.max_lateness_secs ({} s) has passed after it, so the horizon trails the clock by about that much; queries read the speed layer after it. To see batch results on fresh data sooner (a demo, say), run with a shorter lateness: TALLY_INGEST_MAX_LATENESS_SECS=300 (events older than that are then refused)",
        lateness / 1000
    );
}

/// Fails when a view could not be recomputed (the others were), saying which and why.
fn failed_views(summary: &RunSummary) -> anyhow::Result<()> {
    if summary.failed_views.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "{} view(s) could not be recomputed; the other views were published, and serving refuses these views' queries until a run computes them: {}. Fix the view's spec (PUT /v1/governance/views/<name>) and run again",
        summary.failed_views.len(),
        summary.failed_views.join("; ")
    )
}

fn print_published(summary: &RunSummary) {
    match summary.generation {
        Some(generation) => println!(
            "published manifest generation {generation}: {} view-hours, {} rows from {} raw rows; horizon {}",
            summary.hours,
            summary.rows,
            summary.raw_rows,
            format_rfc3339(summary.horizon)
        ),
        None => println!(
            "nothing to recompute; horizon {}",
            format_rfc3339(summary.horizon)
        ),
    }
}

async fn schedule(args: &ScheduleArgs) -> anyhow::Result<()> {
    let config = settings::load(&args.config)?;
    let (catalog, catalog_store, _) = crate::catalog::load_async(&config).await?;
    tokio::spawn(crate::catalog::follow(catalog_store, catalog.clone()));
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = BatchMetrics::register(&mut registry);
    let listen = args.listen.as_ref().unwrap_or(&config.batch.listen);
    let (address, server) =
        crate::operations::operations_server(listen, registry, metrics.clone())?;
    let operations = server.handle();
    tokio::spawn(server);
    let every = args
        .every
        .unwrap_or(Duration::from_secs(config.batch.every_secs));
    let recompute = Recompute::new(
        settings::objects(&config)?,
        catalog,
        lateness_ms(&config),
        metrics.clone(),
    );
    let (stop, stopped) = watch::channel(false);
    let scheduler = tokio::spawn(Scheduler::new(Arc::new(recompute), every, metrics).run(stopped));
    println!("tally batch schedule: recomputing every {every:?}; Ctrl-C stops");
    println!("  listening on http://{address}");
    println!(
        "  health      http://{address}/healthz   http://{address}/readyz   http://{address}/metrics"
    );
    tokio::signal::ctrl_c().await.ok();
    stop.send_replace(true);
    operations.stop(true).await;
    scheduler.await.context("the scheduler panicked")
}

impl RangeArgs {
    fn request(&self, reprocess_as: Option<LogicVersion>) -> anyhow::Result<RunRequest> {
        let parse = |text: &Option<String>, default| -> anyhow::Result<Millis> {
            text.as_deref()
                .map(parse_timestamp)
                .transpose()
                .map_err(anyhow::Error::msg)
                .map(|time| time.unwrap_or(default))
        };
        let (from, to) = (
            parse(&self.from, Millis::MIN)?,
            parse(&self.to, Millis::MAX)?,
        );
        anyhow::ensure!(from < to, "--from must be before --to");
        Ok(RunRequest {
            hours: Some(from..to),
            view: self.view.clone(),
            reprocess_as,
            ..RunRequest::default()
        })
    }
}

/// How late an event may arrive: ingest rejects later ones, so older hours are final.
fn lateness_ms(config: &Config) -> Millis {
    Millis::try_from(config.ingest.max_lateness_secs.saturating_mul(1000)).unwrap_or(Millis::MAX)
}

/// `90s`, `15m`, `1h` or plain seconds.
fn parse_period(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a period like 90s, 15m or 1h"))?;
    let seconds = match unit {
        "" | "s" => number,
        "m" => number * 60,
        "h" => number * 3600,
        _ => return Err(format!("'{text}' is not a period like 90s, 15m or 1h")),
    };
    match seconds {
        0 => Err("the period must be at least 1s".to_owned()),
        seconds => Ok(Duration::from_secs(seconds)),
    }
}
