//! `tally-bench speed`: the speed layer's replay throughput from the log to the view store,
//! and its freshness under a steady load; from the spool or a Kafka topic, in one timely
//! process or a cluster of several (started in this process, exchanging over loopback TCP
//! as separate processes would).

use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::Instant;

use clap::Args;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tally::generator::Percentiles;
use tally_connectors::log::{AppendRecord, EventLog, KafkaLog, Spool, kafka};
use tally_connectors::view_store::EmbeddedViewStore;
use tally_model::config::SpeedConfig;
use tally_model::{Catalog, Config, KafkaConfig};
use tally_speed_layer::{SpeedHandle, SpeedLayer, SpeedMetrics};

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
    /// Read a scratch topic on this Kafka broker instead of the spool.
    #[arg(long)]
    brokers: Option<String>,
    /// Timely processes of the speed cluster, each with --workers threads.
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// Timely workers per process [default: speed.workers, one per core when 0].
    #[arg(long)]
    workers: Option<usize>,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct SpeedBenchReport {
    log: &'static str,
    processes: usize,
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
        mut config,
        catalog,
        log: spool,
    } = BenchLog::create(&args.dir)?;
    if let Some(workers) = args.workers {
        config.speed.workers = workers;
    }
    let runtime = actix_web::rt::System::new();
    let steady_events = args.steady_rate * args.steady_seconds;
    let source = LogSource::open(args.brokers.as_deref(), &spool, &runtime)?;
    let log = source.reader()?;
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
    let started = Instant::now();
    let speed = SpeedCluster::start(&args, &config, &source, store, &catalog)?;
    let workers = speed.workers;
    eprintln!(
        "bench: replaying {} events with {} process(es) of {workers} worker(s) ...",
        args.events, args.processes
    );
    let replayed = log.stats()?.next_offsets();
    speed.wait_to_reflect(&replayed, std::time::Duration::from_millis(1))?;
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
            let _ = appended.send((appended_at, appender_log.stats()?.next_offsets()));
        }
        Ok(())
    });
    let mut freshness = Vec::new();
    let steady_started = Instant::now();
    for (appended_at, batch_ends) in batches {
        speed.wait_to_reflect(&batch_ends, std::time::Duration::from_micros(200))?;
        freshness.push(appended_at.elapsed());
    }
    let steady_seconds = steady_started.elapsed().as_secs_f64();
    appender
        .join()
        .map_err(|_| anyhow::anyhow!("the appender panicked"))??;
    speed.stop()?;
    let report = SpeedBenchReport {
        log: source.name(),
        processes: args.processes,
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
            "replay: {} events from the {}, log to view store, in {:.2} s: {:.0} events/s ({} process(es) of {} worker(s))",
            report.replay_events,
            report.log,
            report.replay_seconds,
            report.replay_events_per_second,
            report.processes,
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

/// Where the benchmark's events are: the scratch spool, or a scratch topic on a broker.
enum LogSource {
    Spool(Arc<Spool>),
    Kafka { brokers: String, topic: String },
}

impl LogSource {
    fn open(
        brokers: Option<&str>,
        spool: &Arc<Spool>,
        runtime: &actix_web::rt::SystemRunner,
    ) -> anyhow::Result<LogSource> {
        let Some(brokers) = brokers else {
            return Ok(LogSource::Spool(spool.clone()));
        };
        let topic = format!("bench-speed-{}", tally_model::time::now_millis());
        let config = KafkaConfig {
            brokers: brokers.to_owned(),
            ..KafkaConfig::default()
        };
        runtime.block_on(kafka::create_topics(
            &config,
            &[(&topic, spool.partitions())],
        ))?;
        Ok(LogSource::Kafka {
            brokers: brokers.to_owned(),
            topic,
        })
    }

    fn name(&self) -> &'static str {
        match self {
            LogSource::Spool(_) => "spool",
            LogSource::Kafka { .. } => "Kafka topic",
        }
    }

    /// A reader of its own (a Kafka log positions its consumers per reader).
    fn reader(&self) -> anyhow::Result<Arc<dyn EventLog>> {
        Ok(match self {
            LogSource::Spool(spool) => spool.clone(),
            LogSource::Kafka { brokers, topic } => {
                let config = KafkaConfig {
                    brokers: brokers.clone(),
                    ..KafkaConfig::default()
                };
                Arc::new(KafkaLog::open(&kafka::client_config(&config), topic)?)
            }
        })
    }
}

/// The speed layer as `processes` timely processes, each started here on a thread, connected
/// over loopback TCP, sharing one view store.
struct SpeedCluster {
    members: Vec<SpeedHandle>,
    workers: usize,
}

impl SpeedCluster {
    fn start(
        args: &SpeedBenchArgs,
        config: &Config,
        source: &LogSource,
        store: Arc<EmbeddedViewStore>,
        catalog: &Arc<Catalog>,
    ) -> anyhow::Result<SpeedCluster> {
        let peers: Vec<String> = match args.processes {
            0 => anyhow::bail!("--processes must be at least 1"),
            1 => Vec::new(),
            n => (0..n)
                .map(|_| free_local_address())
                .collect::<anyhow::Result<_>>()?,
        };
        let starting: Vec<_> = (0..args.processes)
            .map(|index| {
                let layer = SpeedLayer {
                    log: source.reader()?,
                    store: store.clone(),
                    catalog: catalog.clone().into(),
                    config: SpeedConfig {
                        peers: peers.join(","),
                        process_index: index,
                        ..config.speed.clone()
                    },
                    metrics: SpeedMetrics::register(&mut Registry::default()),
                    max_event_lead: std::time::Duration::from_secs(config.ingest.max_future_secs),
                    published_horizon: None,
                };
                Ok(std::thread::spawn(move || layer.start()))
            })
            .collect::<anyhow::Result<_>>()?;
        let members = starting
            .into_iter()
            .map(|started| {
                started
                    .join()
                    .map_err(|_| anyhow::anyhow!("a speed process panicked"))?
                    .map_err(anyhow::Error::from)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let workers = members[0].workers();
        Ok(SpeedCluster { members, workers })
    }

    /// Waits until the view store reflects the log up to `ends` in every partition: each
    /// partition is read by one member, which reports it.
    fn wait_to_reflect(&self, ends: &[u64], poll: std::time::Duration) -> anyhow::Result<()> {
        loop {
            let mut reflected = vec![0; ends.len()];
            for member in &self.members {
                if let Some(failure) = member.failure() {
                    anyhow::bail!("speed layer failed: {failure}");
                }
                for (all, own) in reflected.iter_mut().zip(member.reflected_offsets()) {
                    *all = (*all).max(own);
                }
            }
            if reflects(&reflected, ends) {
                return Ok(());
            }
            std::thread::sleep(poll);
        }
    }

    /// Stops every member at once: a member's workers finish only when its peers' do.
    fn stop(self) -> anyhow::Result<()> {
        std::thread::scope(|scope| {
            let stopping: Vec<_> = self
                .members
                .iter()
                .map(|member| scope.spawn(|| member.stop()))
                .collect();
            for stopped in stopping {
                stopped
                    .join()
                    .map_err(|_| anyhow::anyhow!("stopping a speed process panicked"))??;
            }
            Ok(())
        })
    }
}

/// `127.0.0.1:<a port free just now>`.
fn free_local_address() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(format!("127.0.0.1:{}", listener.local_addr()?.port()))
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
