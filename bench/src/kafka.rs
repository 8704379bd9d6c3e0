//! `tally-bench kafka`: the forwarder's throughput (spool to broker, every delivery
//! confirmed) beside a bare rdkafka `BaseProducer` loop sending the same records with the same
//! producer settings to the same broker in the same run: the client's own ceiling.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use serde::Serialize;
use tally_connectors::log::kafka::{self, producer_config};
use tally_connectors::log::{EventLog, LogEntry};
use tally_ingest::forwarder::{Forwarder, ForwarderMetrics, record_head};
use tally_model::KafkaConfig;

use crate::common::{BenchLog, validated_events};

/// Options of `tally-bench kafka`.
#[derive(Args)]
pub struct KafkaBenchArgs {
    /// Events to forward, and to send again in the bare producer loop.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// The broker to measure against (for example the test bed's Apache Kafka, see docs/performance.md).
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Partitions of each of the two scratch topics the runs create.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Folder for the spool; removed afterwards.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct KafkaBenchReport {
    events: u64,
    payload_bytes: u64,
    bare_seconds: f64,
    bare_events_per_second: f64,
    forwarder_seconds: f64,
    forwarder_events_per_second: f64,
    /// The forwarder's rate over the bare loop's (the goal is at least 0.7).
    forwarder_share_of_bare: f64,
}

/// Runs the benchmark.
pub fn run(args: KafkaBenchArgs) -> anyhow::Result<()> {
    let bench_log = BenchLog::create(&args.dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    eprintln!("bench: spooling {} events ...", args.events);
    let events = validated_events(&bench_log.catalog, args.events, 0.0)?;
    bench_log.append_all(&runtime, events)?;
    let BenchLog {
        scratch,
        config,
        log,
        ..
    } = bench_log;
    let records = spooled(log.as_ref())?;
    let payload_bytes = records.iter().map(|r| r.payload.len() as u64).sum();

    let kafka_config = KafkaConfig {
        brokers: args.brokers.clone(),
        ..config.kafka.clone()
    };
    let client = kafka::client_config(&kafka_config);
    let run_id = tally_model::time::now_millis();
    let bare_topic = format!("bench-bare-{run_id}");
    let forwarder_topic = format!("bench-forwarder-{run_id}");
    let topics = [
        (bare_topic.as_str(), args.partitions),
        (forwarder_topic.as_str(), args.partitions),
    ];
    runtime
        .block_on(kafka::create_topics(&kafka_config, &topics))
        .with_context(|| format!("creating scratch topics on {}", args.brokers))?;

    eprintln!("bench: bare BaseProducer loop to {bare_topic} ...");
    let bare = bare_producer_loop(&client, &bare_topic, &records)?;
    drop(records);

    eprintln!("bench: forwarder from the spool to {forwarder_topic} ...");
    let mut forwarder = Forwarder::new(
        log.clone(),
        &client,
        &forwarder_topic,
        &ForwarderMetrics::default(),
        "events",
    )?;
    let started = Instant::now();
    while forwarder.pass()? > 0 || forwarder.status().backlog()? > 0 {}
    let forwarded = started.elapsed();
    anyhow::ensure!(
        forwarder.status().forwarded() == args.events,
        "the forwarder confirmed {} of {} records",
        forwarder.status().forwarded(),
        args.events
    );

    let rate = |elapsed: Duration| args.events as f64 / elapsed.as_secs_f64();
    let report = KafkaBenchReport {
        events: args.events,
        payload_bytes,
        bare_seconds: bare.as_secs_f64(),
        bare_events_per_second: rate(bare),
        forwarder_seconds: forwarded.as_secs_f64(),
        forwarder_events_per_second: rate(forwarded),
        forwarder_share_of_bare: rate(forwarded) / rate(bare),
    };
    drop(scratch);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} events, {:.0} bytes each, {} partitions, broker {}",
            report.events,
            report.payload_bytes as f64 / report.events.max(1) as f64,
            args.partitions,
            args.brokers
        );
        println!(
            "bare BaseProducer  {:>10.0} events/s  ({:.2} s)",
            report.bare_events_per_second, report.bare_seconds
        );
        println!(
            "forwarder          {:>10.0} events/s  ({:.2} s)  {:.0} % of the bare loop",
            report.forwarder_events_per_second,
            report.forwarder_seconds,
            report.forwarder_share_of_bare * 100.0
        );
    }
    Ok(())
}

/// Every record of the spool, partition by partition.
fn spooled(log: &dyn EventLog) -> anyhow::Result<Vec<LogEntry>> {
    let mut records = Vec::new();
    for partition in 0..log.partitions() {
        let mut next = 0;
        loop {
            let entries = log.read(partition, next, 100_000)?;
            let Some(last) = entries.last() else { break };
            next = last.offset + 1;
            records.extend(entries);
        }
    }
    Ok(records)
}

/// Counts delivery reports.
#[derive(Default)]
struct Deliveries {
    confirmed: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.confirmed.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Sends every record as the forwarder would (key, timestamp, producer settings) and waits
/// until each is confirmed; returns how long that took.
fn bare_producer_loop(
    client: &rdkafka::ClientConfig,
    topic: &str,
    records: &[LogEntry],
) -> anyhow::Result<Duration> {
    let producer: BaseProducer<Deliveries> =
        producer_config(client).create_with_context(Deliveries::default())?;
    let started = Instant::now();
    for entry in records {
        let head = record_head(&entry.payload);
        let mut record = BaseRecord::to(topic)
            .key(head.key.as_slice())
            .payload(entry.payload.as_slice());
        record.timestamp = head.received_at;
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(1));
                }
                Err((err, _)) => return Err(err).context("sending to Kafka"),
            }
        }
        producer.poll(Duration::ZERO);
    }
    // Short polls, as the forwarder's: rdkafka's `flush` polls 100 ms at a time.
    let context = producer.context();
    let reported =
        || context.confirmed.load(Ordering::Relaxed) + context.failed.load(Ordering::Relaxed);
    while reported() < records.len() as u64 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "deliveries still missing after 300 s"
        );
        producer.poll(Duration::from_millis(1));
    }
    let elapsed = started.elapsed();
    let (confirmed, failed) = (
        context.confirmed.load(Ordering::Relaxed),
        context.failed.load(Ordering::Relaxed),
    );
    anyhow::ensure!(
        confirmed == records.len() as u64 && failed == 0,
        "the bare loop had {confirmed} confirmed and {failed} failed deliveries of {}",
        records.len()
    );
    Ok(elapsed)
}
