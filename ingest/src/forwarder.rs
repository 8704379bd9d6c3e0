//! The Kafka forwarder: ships a spool (the events stream, or the rejected one) to a Kafka
//! topic with an idempotent `acks=all` producer, each record keyed by tenant and user (or
//! source, for rejects) so one user's events stay ordered in one Kafka partition.
//!
//! The spool position of [`FORWARDER`] advances only past records whose delivery Kafka
//! confirmed, so spool retention frees a segment only once it is forwarded, and a broker
//! outage only grows the backlog: the collector keeps acknowledging from the spool, and when
//! the broker returns the backlog drains in order. A record may reach Kafka twice (a resend
//! after a crash between delivery and commit); the layers downstream dedupe by event id.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};
use serde::Deserialize;
use tally_connectors::log::kafka::producer_config;
use tally_connectors::log::{EventLog, LogError, Offset};
use thiserror::Error;

use crate::telemetry::StreamLabels;

/// The forwarder's consumer name in the spool.
pub const FORWARDER: &str = "kafka-forwarder";

/// Records sent per partition in one pass, before their reports are awaited.
const BATCH: usize = 100_000;
/// How long a send waits for room when the producer's queue is full.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(1);
/// How long one poll for delivery reports blocks (rdkafka's `poll` always takes all of it).
const REPORT_WAIT: Duration = Duration::from_millis(1);
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

/// Ships one spool to one topic, on a thread of its own ([`Forwarder::run`]).
pub struct Forwarder {
    spool: Arc<dyn EventLog>,
    config: ClientConfig,
    /// Replaced after a failed delivery (see [`Forwarder::pass`]).
    producer: BaseProducer<Deliveries>,
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
            producer: config.create_with_context(Deliveries::default())?,
            config,
            topic: topic.to_owned(),
        })
    }

    /// What it reports.
    pub fn status(&self) -> Arc<ForwarderStatus> {
        self.status.clone()
    }

    /// Forwards, retrying failed passes, until `stop` receives or its sender is dropped.
    /// It blocks: run it on a thread of its own.
    pub fn run(mut self, stop: mpsc::Receiver<()>) {
        loop {
            let wait = match self.pass() {
                Ok(0) => IDLE_WAIT,
                Ok(_) => Duration::ZERO,
                Err(err) => {
                    tracing::warn!(topic = %self.topic, error = %err, "forwarding to Kafka failed; the spool keeps the backlog");
                    RETRY_WAIT
                }
            };
            match stop.recv_timeout(wait) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Sends up to a batch of each partition's unforwarded records, waits for their delivery
    /// reports and commits the spool position past the confirmed ones. Returns how many were
    /// delivered; a failure is also kept in the status until a pass succeeds.
    ///
    /// After a failed delivery the producer is replaced, so the next pass resends from the
    /// spool position under a new idempotent producer id: a broker that no longer knows the
    /// old producer's sequence state (Apache Kafka expires an idle producer id after
    /// `producer.id.expiration.ms`; some Kafka-compatible brokers lose it on a restart)
    /// accepts it again.
    pub fn pass(&mut self) -> Result<usize, ForwardError> {
        let result = self.forward();
        // Reads the spool: what it holds now, records appended during the pass included.
        if let Err(err) = self.status.backlog() {
            tracing::warn!(error = %err, "could not measure the forwarder's backlog");
        }
        if let Err(ForwardError::Kafka(_)) = &result {
            match self.config.create_with_context(Deliveries::default()) {
                Ok(fresh) => self.producer = fresh,
                Err(err) => tracing::warn!(error = %err, "could not create a new Kafka producer"),
            }
        }
        let failure = result.as_ref().err().map(ToString::to_string);
        self.status.set_failure(failure);
        result
    }

    fn forward(&self) -> Result<usize, ForwardError> {
        let mut batches = Vec::new();
        for (partition, from, end) in positions(self.spool.as_ref())? {
            if from < end {
                batches.push((partition, self.spool.read(partition, from, BATCH)?));
            }
        }
        let queued: usize = batches.iter().map(|(_, entries)| entries.len()).sum();
        let deliveries = self.producer.context();
        deliveries.expect(queued);
        // Every partition's batch is queued before any report is awaited, so all are in
        // flight together; each record's index in the pass is its delivery opaque.
        let mut index = 0;
        for (_, entries) in &batches {
            for entry in entries {
                let head = record_head(&entry.payload);
                let mut record = BaseRecord::with_opaque_to(&self.topic, index)
                    .key(head.key.as_slice())
                    .payload(entry.payload.as_slice());
                record.timestamp = head.received_at;
                loop {
                    match self.producer.send(record) {
                        Ok(()) => break,
                        // Retrying the same record before the next keeps the order.
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            record = back;
                            self.producer.poll(QUEUE_FULL_WAIT);
                        }
                        Err((err, _)) => return Err(err.into()),
                    }
                }
                self.producer.poll(Duration::ZERO);
                index += 1;
            }
        }
        // librdkafka reports every record within `message.timeout.ms`, delivered or not.
        while deliveries.pending() > 0 {
            self.producer.poll(REPORT_WAIT);
        }
        let outcomes = deliveries.take();
        let mut first = 0;
        let mut delivered_total = 0;
        for (partition, entries) in &batches {
            let outcomes = &outcomes[first..first + entries.len()];
            first += entries.len();
            let delivered = outcomes.iter().take_while(|o| o.is_none()).count();
            if delivered > 0 {
                let next = entries[delivered - 1].offset + 1;
                self.spool.commit(FORWARDER, *partition, next)?;
                self.status.forwarded.inc_by(delivered as u64);
                delivered_total += delivered;
            }
            if let Some(Some(err)) = outcomes.get(delivered) {
                return Err(err.clone().into());
            }
        }
        Ok(delivered_total)
    }
}

/// The delivery reports of one pass: per record (by its index in the pass), `None` until
/// and unless it failed. Reports arrive only inside `poll`, on the forwarder's thread.
#[derive(Default)]
struct Deliveries {
    outcomes: Mutex<Vec<Option<KafkaError>>>,
    pending: AtomicUsize,
}

impl Deliveries {
    fn expect(&self, records: usize) {
        *self.outcomes.lock().unwrap_or_else(PoisonError::into_inner) = vec![None; records];
        self.pending.store(records, Ordering::Release);
    }

    fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    fn take(&self) -> Vec<Option<KafkaError>> {
        std::mem::take(&mut *self.outcomes.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        if let Err((err, _)) = result
            && let Some(outcome) = self
                .outcomes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_mut(index)
        {
            *outcome = Some(err.clone());
        }
        self.pending.fetch_sub(1, Ordering::AcqRel);
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
pub struct RecordHead {
    /// `tenant/user_id` for events, `tenant/source` for rejects, so one user's (or source's)
    /// records stay in order in one Kafka partition.
    pub key: Vec<u8>,
    /// The record's timestamp: when ingest received it, so a replay can start by time
    /// (Kafka's `offsets_for_times`).
    pub received_at: Option<i64>,
}

/// The Kafka key and timestamp of a spool record (an event's or a reject's JSON).
pub fn record_head(payload: &[u8]) -> RecordHead {
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
    use tally_connectors::testing::{Kafka, sample_demo_events};
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
    fn drain(forwarder: &mut Forwarder) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match forwarder.pass() {
                Ok(0) if forwarder.status().backlog().unwrap() == 0 => return,
                Ok(_) => {}
                Err(err) => assert!(Instant::now() < deadline, "still failing: {err}"),
            }
        }
    }

    /// Every message of `topic`, as (Kafka partition, key, event), in each partition's order.
    fn consume(broker: &Kafka, topic: &str, expected: usize) -> Vec<(i32, String, Event)> {
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
        let test = "ingest::forwarder::every_record_reaches_the_topic_once_keyed_and_in_order";
        let Some(mut broker) = Kafka::dedicated(test) else {
            return;
        };
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
        let mut forwarder =
            Forwarder::new(spool.clone(), &client, "events", &metrics, "events").unwrap();

        let before = events(0, 1500);
        append(&spool, &before).await;
        drain(&mut forwarder);
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
        assert!(forwarder.pass().is_err(), "no broker, no delivery");
        assert_eq!(forwarder.status().backlog().unwrap(), 500);
        assert!(forwarder.status().failure().is_some());
        broker.restart();
        drain(&mut forwarder);
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
