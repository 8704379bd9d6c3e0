//! The Kafka forwarder: ships a spool (the events stream, or the rejected one) to a Kafka
//! topic with an idempotent `acks=all` producer, each record keyed by tenant and user (or
//! source, for rejects) so one user's events stay ordered in one Kafka partition.
//!
//! The spool position of [`FORWARDER`] advances only past records whose delivery Kafka
//! confirmed, so spool retention frees a segment only once it is forwarded, and a broker
//! outage only grows the backlog: the collector keeps acknowledging from the spool, and when
//! the broker returns the backlog drains in order. A record may reach Kafka twice (a resend
//! after a crash between delivery and commit); the layers downstream dedupe by event id.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde::Deserialize;
use tally_connectors::log::kafka::producer_config;
use tally_connectors::log::{EventLog, LogError, Offset};
use thiserror::Error;
use tokio::sync::watch;

/// The forwarder's consumer name in the spool.
pub const FORWARDER: &str = "kafka-forwarder";

/// Records sent per partition before their deliveries are awaited and committed.
const BATCH: usize = 10_000;
/// How long an idle forwarder waits before looking at the spool again.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// How long it waits after a failed pass before retrying.
const RETRY_WAIT: Duration = Duration::from_secs(1);

/// Why forwarding stopped short.
#[derive(Debug, Error)]
pub enum ForwardError {
    /// The spool could not be read or its position not committed.
    #[error("spool: {0}")]
    Log(#[from] LogError),
    /// Kafka did not confirm a delivery.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
}

/// What the forwarder reports to `/readyz` and `/metrics`.
pub struct ForwarderStatus {
    spool: Arc<dyn EventLog>,
    forwarded: Counter,
    backlog: Gauge,
    failing: Gauge,
    failure: Mutex<Option<String>>,
}

impl ForwarderStatus {
    /// Records delivered since start.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.get()
    }

    /// Records in the spool not yet delivered, read from the spool now (also while a pass
    /// waits on an unreachable broker); the backlog metric is updated with it.
    pub fn backlog(&self) -> Result<u64, LogError> {
        let backlog = positions(self.spool.as_ref())?
            .into_iter()
            .map(|(_, from, end)| end - from)
            .sum();
        self.backlog.set(backlog as i64);
        Ok(backlog)
    }

    /// Why the last pass failed, while deliveries keep failing.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_failure(&self, failure: Option<String>) {
        self.failing.set(i64::from(failure.is_some()));
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = failure;
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    stream: &'static str,
}

/// The forwarders' metrics, `tally_forwarder_*{stream}`: one family per metric, a label per
/// forwarded stream.
#[derive(Debug, Default)]
pub struct ForwarderMetrics {
    forwarded: Family<StreamLabels, Counter>,
    backlog: Family<StreamLabels, Gauge>,
    failing: Family<StreamLabels, Gauge>,
}

impl ForwarderMetrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> ForwarderMetrics {
        let metrics = ForwarderMetrics::default();
        let forwarder = registry.sub_registry_with_prefix("tally_forwarder");
        forwarder.register(
            "records_forwarded",
            "Spool records whose delivery Kafka confirmed",
            metrics.forwarded.clone(),
        );
        forwarder.register(
            "backlog_records",
            "Spool records not yet delivered to Kafka",
            metrics.backlog.clone(),
        );
        forwarder.register(
            "failing",
            "1 while deliveries to Kafka fail (the spool keeps the backlog)",
            metrics.failing.clone(),
        );
        metrics
    }

    /// The status of the forwarder of `spool`, exported under the label `stream`.
    fn status(&self, stream: &'static str, spool: Arc<dyn EventLog>) -> Arc<ForwarderStatus> {
        let labels = StreamLabels { stream };
        Arc::new(ForwarderStatus {
            spool,
            forwarded: self.forwarded.get_or_create(&labels).clone(),
            backlog: self.backlog.get_or_create(&labels).clone(),
            failing: self.failing.get_or_create(&labels).clone(),
            failure: Mutex::default(),
        })
    }
}

/// Ships one spool to one topic.
pub struct Forwarder {
    spool: Arc<dyn EventLog>,
    config: ClientConfig,
    /// Replaced after a failed delivery (see [`Forwarder::pass`]).
    producer: Mutex<FutureProducer>,
    topic: String,
    status: Arc<ForwarderStatus>,
}

impl Forwarder {
    /// A forwarder of `spool` to `topic`, with `client` (brokers, security) and the producer
    /// settings Tally needs ([`producer_config`]), reporting under `metrics` as `stream`.
    pub fn new(
        spool: Arc<dyn EventLog>,
        client: &ClientConfig,
        topic: &str,
        metrics: &ForwarderMetrics,
        stream: &'static str,
    ) -> Result<Forwarder, ForwardError> {
        let config = producer_config(client);
        spool.register_consumer(FORWARDER)?;
        Ok(Forwarder {
            status: metrics.status(stream, spool.clone()),
            spool,
            producer: Mutex::new(config.create()?),
            config,
            topic: topic.to_owned(),
        })
    }

    /// What it reports.
    pub fn status(&self) -> Arc<ForwarderStatus> {
        self.status.clone()
    }

    /// Forwards until `stop` turns true, retrying failed passes.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            let wait = match self.pass().await {
                Ok(0) => IDLE_WAIT,
                Ok(_) => Duration::ZERO,
                Err(err) => {
                    tracing::warn!(topic = %self.topic, error = %err, "forwarding to Kafka failed; the spool keeps the backlog");
                    RETRY_WAIT
                }
            };
            if !wait.is_zero() {
                let _ = tokio::time::timeout(wait, stop.changed()).await;
            }
        }
    }

    /// Sends up to a batch of each partition's unforwarded records, awaits their delivery
    /// reports and commits the spool position past the delivered ones. Returns how many
    /// were delivered; a failure is also kept in the status until a pass succeeds.
    ///
    /// After a failed delivery the producer is replaced, so the next pass resends from the
    /// spool position under a new idempotent producer id: a broker that lost the old
    /// producer's sequence state (as tansu does across a restart) accepts it again.
    pub async fn pass(&self) -> Result<usize, ForwardError> {
        let producer = self
            .producer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let result = self.forward(&producer).await;
        // Reads the spool: what it holds now, records appended during the pass included.
        if let Err(err) = self.status.backlog() {
            tracing::warn!(error = %err, "could not measure the forwarder's backlog");
        }
        if let Err(ForwardError::Kafka(_)) = &result {
            match self.config.create() {
                Ok(fresh) => {
                    *self.producer.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
                }
                Err(err) => tracing::warn!(error = %err, "could not create a new Kafka producer"),
            }
        }
        let failure = result.as_ref().err().map(ToString::to_string);
        self.status.set_failure(failure);
        result
    }

    async fn forward(&self, producer: &FutureProducer) -> Result<usize, ForwardError> {
        let mut delivered_total = 0;
        for (partition, from, _) in positions(self.spool.as_ref())? {
            let entries = self.spool.read(partition, from, BATCH)?;
            if entries.is_empty() {
                continue;
            }
            let heads: Vec<RecordHead> = entries.iter().map(|e| record_head(&e.payload)).collect();
            let sends = entries.iter().zip(&heads).map(|(entry, head)| {
                let mut record = FutureRecord::to(&self.topic)
                    .key(head.key.as_slice())
                    .payload(entry.payload.as_slice());
                record.timestamp = head.received_at;
                producer.send(record, Timeout::Never)
            });
            let reports = futures::future::join_all(sends).await;
            let delivered = reports.iter().take_while(|r| r.is_ok()).count();
            if delivered > 0 {
                let next = entries[delivered - 1].offset + 1;
                self.spool.commit(FORWARDER, partition, next)?;
                self.status.forwarded.inc_by(delivered as u64);
                delivered_total += delivered;
            }
            if let Some(Err((err, _))) = reports.into_iter().nth(delivered) {
                return Err(err.into());
            }
        }
        Ok(delivered_total)
    }
}

/// Per spool partition: the partition, the first record not yet forwarded, and the end.
fn positions(spool: &dyn EventLog) -> Result<Vec<(u32, Offset, Offset)>, LogError> {
    let stats = spool.stats()?;
    let mut positions = Vec::with_capacity(stats.partitions.len());
    for partition in &stats.partitions {
        let from = spool
            .committed(FORWARDER, partition.partition)?
            .unwrap_or(partition.first_offset)
            .clamp(partition.first_offset, partition.next_offset);
        positions.push((partition.partition, from, partition.next_offset));
    }
    Ok(positions)
}

/// What the forwarder takes from a spool record for its Kafka record.
struct RecordHead {
    /// `tenant/user_id` for events, `tenant/source` for rejects, so one user's (or source's)
    /// records stay in order in one Kafka partition.
    key: Vec<u8>,
    /// The record's timestamp: when ingest received it, so a replay can start by time
    /// (Kafka's `offsets_for_times`).
    received_at: Option<i64>,
}

fn record_head(payload: &[u8]) -> RecordHead {
    #[derive(Deserialize)]
    struct Head<'a> {
        #[serde(borrow)]
        tenant: std::borrow::Cow<'a, str>,
        #[serde(borrow, default)]
        user_id: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow, default)]
        source: Option<std::borrow::Cow<'a, str>>,
        #[serde(default)]
        received_at: Option<i64>,
    }
    match serde_json::from_slice::<Head>(payload) {
        Ok(head) => {
            let who = head.user_id.or(head.source).unwrap_or_default();
            RecordHead {
                key: format!("{}/{who}", head.tenant).into_bytes(),
                received_at: head.received_at,
            }
        }
        Err(_) => RecordHead {
            key: Vec::new(),
            received_at: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    use tally_connectors::log::{AppendRecord, Spool, SpoolOptions};
    use tally_connectors::testing::{Broker, sample_demo_events};
    use tally_model::Event;

    use super::*;

    const PARTITIONS: u32 = 4;

    /// Events with distinct ids, `batch` of them, ids from `first`.
    fn events(first: usize, batch: usize) -> Vec<Event> {
        let sample = sample_demo_events(1_795_305_600_000);
        (first..first + batch)
            .map(|index| {
                let mut event = sample[index % sample.len()].clone();
                event.event_id = format!("e{index}");
                event
            })
            .collect()
    }

    async fn append(spool: &Spool, events: &[Event]) {
        let records = events
            .iter()
            .map(|event| AppendRecord::event(event, spool.partitions()))
            .collect();
        spool.append(records).await.unwrap();
    }

    /// Passes until nothing is left to forward, retrying failed passes as `run` does (a
    /// restarted broker takes a moment to be reachable again).
    async fn drain(forwarder: &Forwarder) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match forwarder.pass().await {
                Ok(0) if forwarder.status().backlog().unwrap() == 0 => return,
                Ok(_) => {}
                Err(err) => assert!(Instant::now() < deadline, "still failing: {err}"),
            }
        }
    }

    /// Every message of `topic`, as (Kafka partition, key, event), in each partition's order.
    fn consume(broker: &Broker, topic: &str, expected: usize) -> Vec<(i32, String, Event)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &broker.address)
            .set("group.id", "forwarder-test")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        for partition in 0..PARTITIONS as i32 {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();
        let mut messages = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while messages.len() < expected && Instant::now() < deadline {
            if let Some(message) = consumer.poll(Duration::from_millis(200)) {
                let message = message.unwrap();
                let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
                let event: Event = serde_json::from_slice(message.payload().unwrap()).unwrap();
                let stamped = message.timestamp().to_millis();
                assert_eq!(
                    stamped,
                    Some(event.received_at),
                    "stamped with the receive time"
                );
                messages.push((message.partition(), key, event));
            }
        }
        // Anything past the expected count would be a duplicate: give it a moment to show.
        while let Some(message) = consumer.poll(Duration::from_millis(500)) {
            let message = message.unwrap();
            let event: Event = serde_json::from_slice(message.payload().unwrap()).unwrap();
            messages.push((message.partition(), String::new(), event));
        }
        messages
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn every_record_reaches_the_topic_once_keyed_and_in_order_even_across_an_outage() {
        let mut broker = Broker::start();
        broker.create_topic("events", PARTITIONS);
        let dir = tempfile::tempdir().unwrap();
        let options = SpoolOptions {
            partitions: PARTITIONS,
            ..SpoolOptions::default()
        };
        let spool = Arc::new(Spool::open(&dir.path().join("log"), options).unwrap());
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &broker.address)
            .set("message.timeout.ms", "3000");
        let metrics = ForwarderMetrics::default();
        let forwarder =
            Forwarder::new(spool.clone(), &client, "events", &metrics, "events").unwrap();

        let before = events(0, 1500);
        append(&spool, &before).await;
        drain(&forwarder).await;
        for partition in spool.stats().unwrap().partitions {
            assert_eq!(
                spool.committed(FORWARDER, partition.partition).unwrap(),
                Some(partition.next_offset),
                "the spool position is past every delivered record"
            );
        }

        // An outage: the spool keeps what arrives, the forwarder fails without losing it.
        broker.stop();
        let during = events(1500, 500);
        append(&spool, &during).await;
        assert!(forwarder.pass().await.is_err(), "no broker, no delivery");
        assert_eq!(forwarder.status().backlog().unwrap(), 500);
        assert!(forwarder.status().failure().is_some());
        broker.restart();
        drain(&forwarder).await;
        assert_eq!(forwarder.status().failure(), None);

        let messages = consume(&broker, "events", 2000);
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (_, _, event) in &messages {
            *seen.entry(event.event_id.clone()).or_default() += 1;
        }
        let sent: Vec<&Event> = before.iter().chain(&during).collect();
        assert_eq!(seen.len(), sent.len(), "every record arrived");
        assert!(
            seen.values().all(|&copies| copies == 1),
            "no record arrived twice: {:?}",
            seen.iter().filter(|(_, c)| **c > 1).collect::<Vec<_>>()
        );
        // One user's events share a key and a Kafka partition, in the order they were sent.
        let mut partition_of_key: BTreeMap<&str, i32> = BTreeMap::new();
        let mut order_of_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (partition, key, event) in &messages {
            assert_eq!(*key, format!("{}/{}", event.tenant, event.user_id));
            assert_eq!(
                *partition_of_key.entry(key).or_insert(*partition),
                *partition
            );
            order_of_key.entry(key).or_default().push(&event.event_id);
        }
        for (key, ids) in order_of_key {
            let expected: Vec<&str> = sent
                .iter()
                .filter(|e| format!("{}/{}", e.tenant, e.user_id) == key)
                .map(|e| e.event_id.as_str())
                .collect();
            assert_eq!(ids, expected, "the order of {key}'s events");
        }
    }
}
