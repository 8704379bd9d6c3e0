//! The event log on Kafka: one topic read as an [`EventLog`], so the speed layer and the
//! archiver follow Kafka exactly as they follow the spool.
//!
//! - Reads use explicit partition assignment, one consumer per partition, positioned by the
//!   reader (no group rebalances): the speed layer replays from where it chooses, the archiver
//!   from its committed position.
//! - Consumer positions are Kafka committed offsets, one consumer group per consumer name
//!   (`tally.<name>`), committed only when the consumer says so.
//! - [`EventLog::offset_for_time`] is Kafka's `offsets_for_times` over the record
//!   timestamps, which the forwarder sets to each event's receive time.
//! - Retention is the topic's own (`retention.ms`): registering a consumer does not hold it.
//!
//! A read at the end of a partition returns nothing at once; a read that neither gets a
//! record nor learns where the end is within [`READ_WAIT`] is [`LogError::Unavailable`], so a
//! broker outage is told apart from an idle topic.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset as KafkaOffset, TopicPartitionList};
use tally_model::{KafkaConfig, Millis};

use super::{AppendFuture, AppendRecord, EventLog, LogEntry, LogError, LogStats, Offset};
use super::{MAX_RECORD_BYTES, PartitionStats};

/// How long a read waits for its first record, or to learn it is at the end.
pub const READ_WAIT: Duration = Duration::from_secs(5);
/// How long a metadata, watermark or offset request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One topic of a Kafka cluster as an event log.
pub struct KafkaLog {
    topic: String,
    partitions: u32,
    client: ClientConfig,
    /// Answers metadata, watermark and timestamp lookups.
    admin: BaseConsumer,
    /// One reader per partition, opened at its first read.
    readers: Vec<Mutex<Option<PartitionReader>>>,
    /// Per consumer name, the client that commits and fetches its offsets.
    groups: Mutex<HashMap<String, BaseConsumer>>,
    /// Created at the first append: readers never need one.
    producer: OnceLock<FutureProducer>,
}

/// A consumer assigned to one partition, and what it knows of its position.
struct PartitionReader {
    consumer: BaseConsumer,
    /// The offset its next record will have.
    next: Offset,
    /// Set when Kafka said `next` is the partition's end.
    at_end: bool,
}

impl KafkaLog {
    /// Opens `topic` through a client configured by `client` (`bootstrap.servers` and any
    /// security settings). The topic must exist (`tally kafka init` creates it).
    pub fn open(client: &ClientConfig, topic: &str) -> Result<KafkaLog, LogError> {
        let admin: BaseConsumer = consumer_config(client)
            .create()
            .map_err(|err| kafka_error("creating a Kafka client", err))?;
        let metadata = admin
            .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
            .map_err(|err| unavailable(&format!("reading the metadata of topic {topic}"), err))?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len() as u32);
        if partitions == 0 {
            return Err(LogError::Backend(format!(
                "Kafka topic {topic} does not exist on {}; create it with `tally kafka init`",
                client.get("bootstrap.servers").unwrap_or("the brokers")
            )));
        }
        Ok(KafkaLog {
            topic: topic.to_owned(),
            partitions,
            client: client.clone(),
            admin,
            readers: (0..partitions).map(|_| Mutex::new(None)).collect(),
            groups: Mutex::new(HashMap::new()),
            producer: OnceLock::new(),
        })
    }

    /// The topic it reads.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn check_partition(&self, partition: u32) -> Result<(), LogError> {
        match partition < self.partitions {
            true => Ok(()),
            false => Err(LogError::NoSuchPartition {
                partition,
                partitions: self.partitions,
            }),
        }
    }

    fn one_partition(&self, partition: u32, offset: KafkaOffset) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.topic, partition as i32, offset)
            .expect("a valid offset");
        list
    }

    /// A consumer of `partition` alone, positioned at `offset`.
    fn consumer_at(&self, partition: u32, offset: Offset) -> Result<BaseConsumer, LogError> {
        let consumer: BaseConsumer = consumer_config(&self.client)
            .create()
            .map_err(|err| kafka_error("creating a Kafka consumer", err))?;
        consumer
            .assign(&self.one_partition(partition, KafkaOffset::Offset(offset as i64)))
            .map_err(|err| kafka_error("assigning a Kafka partition", err))?;
        Ok(consumer)
    }

    /// The first offset `partition` keeps and the offset its next record will get.
    fn watermarks(&self, partition: u32) -> Result<(Offset, Offset), LogError> {
        let (low, high) = self
            .admin
            .fetch_watermarks(&self.topic, partition as i32, REQUEST_TIMEOUT)
            .map_err(|err| unavailable("reading Kafka watermarks", err))?;
        Ok((low.max(0) as Offset, high.max(0) as Offset))
    }

    /// The timestamp of the record at `offset`, if it has one.
    fn timestamp_at(&self, partition: u32, offset: Offset) -> Result<Option<Millis>, LogError> {
        let consumer = self.consumer_at(partition, offset)?;
        let deadline = Instant::now() + READ_WAIT;
        while Instant::now() < deadline {
            match consumer.poll(deadline.saturating_duration_since(Instant::now())) {
                Some(Ok(message)) => return Ok(message.timestamp().to_millis()),
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(None),
                _ => {}
            }
        }
        Err(LogError::Unavailable(format!(
            "Kafka did not send record {offset} of partition {partition} within {} s",
            READ_WAIT.as_secs()
        )))
    }

    /// Runs `action` with the client of consumer group `tally.<consumer>`.
    fn with_group<T>(
        &self,
        consumer: &str,
        action: impl FnOnce(&BaseConsumer) -> Result<T, LogError>,
    ) -> Result<T, LogError> {
        super::check_consumer_name(consumer)?;
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        if !groups.contains_key(consumer) {
            let group: BaseConsumer = consumer_config(&self.client)
                .set("group.id", format!("tally.{consumer}"))
                .create()
                .map_err(|err| kafka_error("creating a Kafka consumer", err))?;
            groups.insert(consumer.to_owned(), group);
        }
        action(&groups[consumer])
    }
}

impl EventLog for KafkaLog {
    fn partitions(&self) -> u32 {
        self.partitions
    }

    fn append(&self, records: Vec<AppendRecord>) -> AppendFuture {
        let checked = records.iter().try_for_each(|record| {
            self.check_partition(record.partition)?;
            match record.payload.len() > MAX_RECORD_BYTES {
                true => Err(LogError::RecordTooLarge(record.payload.len())),
                false => Ok(()),
            }
        });
        let producer = match &self.producer.get() {
            Some(producer) => Ok((*producer).clone()),
            None => producer_config(&self.client)
                .create::<FutureProducer>()
                .map(|producer| self.producer.get_or_init(|| producer).clone())
                .map_err(|err| kafka_error("creating a Kafka producer", err)),
        };
        let topic = self.topic.clone();
        Box::pin(async move {
            checked?;
            let producer = producer?;
            let sends = records.iter().map(|record| {
                let sent = FutureRecord::<(), _>::to(&topic)
                    .partition(record.partition as i32)
                    .payload(record.payload.as_slice());
                producer.send(sent, Timeout::After(REQUEST_TIMEOUT))
            });
            futures::future::join_all(sends)
                .await
                .into_iter()
                .map(|report| match report {
                    Ok(delivery) => Ok(delivery.offset as Offset),
                    Err((err, _)) => Err(unavailable("delivering to Kafka", err)),
                })
                .collect()
        })
    }

    fn read(&self, partition: u32, from: Offset, max: usize) -> Result<Vec<LogEntry>, LogError> {
        self.check_partition(partition)?;
        let mut slot = self.readers[partition as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let reader = match slot.as_mut() {
            Some(reader) if reader.next == from => reader,
            _ => slot.insert(PartitionReader {
                consumer: self.consumer_at(partition, from)?,
                next: from,
                at_end: false,
            }),
        };
        reader.read(partition, max).map_err(|err| match err {
            // The reader knows the offset was deleted, not which is the oldest kept.
            LogError::OffsetDeleted {
                partition, offset, ..
            } => match self.watermarks(partition) {
                Ok((first, _)) => LogError::OffsetDeleted {
                    partition,
                    offset,
                    first,
                },
                Err(unavailable) => unavailable,
            },
            other => other,
        })
    }

    fn register_consumer(&self, consumer: &str) -> Result<(), LogError> {
        // Kafka keeps records for the topic's retention, whoever has read them.
        super::check_consumer_name(consumer)
    }

    fn commit(&self, consumer: &str, partition: u32, next: Offset) -> Result<(), LogError> {
        self.check_partition(partition)?;
        let offsets = self.one_partition(partition, KafkaOffset::Offset(next as i64));
        self.with_group(consumer, |group| {
            group
                .commit(&offsets, CommitMode::Sync)
                .map_err(|err| unavailable("committing a Kafka offset", err))
        })
    }

    fn committed(&self, consumer: &str, partition: u32) -> Result<Option<Offset>, LogError> {
        self.check_partition(partition)?;
        let asked = self.one_partition(partition, KafkaOffset::Invalid);
        let answer = self.with_group(consumer, |group| {
            group
                .committed_offsets(asked, REQUEST_TIMEOUT)
                .map_err(|err| unavailable("reading a committed Kafka offset", err))
        })?;
        Ok(answer
            .find_partition(&self.topic, partition as i32)
            .and_then(|entry| match entry.offset() {
                KafkaOffset::Offset(offset) if offset >= 0 => Some(offset as Offset),
                _ => None,
            }))
    }

    fn stats(&self) -> Result<LogStats, LogError> {
        let mut stats = LogStats::default();
        for partition in 0..self.partitions {
            let (first, next) = self.watermarks(partition)?;
            stats.records += next.saturating_sub(first);
            stats.partitions.push(PartitionStats {
                partition,
                first_offset: first,
                next_offset: next,
                records: next.saturating_sub(first),
                ..PartitionStats::default()
            });
        }
        Ok(stats)
    }

    fn offset_for_time(&self, partition: u32, time: Millis) -> Result<Option<Offset>, LogError> {
        self.check_partition(partition)?;
        // Brokers differ on a time after the last record (Apache Kafka answers "end", some
        // Kafka-compatible brokers 0), so
        // that case is settled here from the last record's own timestamp.
        let (first, end) = self.watermarks(partition)?;
        // Kafka reads negative times as "earliest" and "latest" markers.
        if time <= 0 {
            return Ok(Some(first));
        }
        let last = match end.checked_sub(1) {
            Some(last) => self.timestamp_at(partition, last)?,
            None => return Ok(Some(end)),
        };
        if last.is_some_and(|last| last < time) {
            return Ok(Some(end));
        }
        let asked = self.one_partition(partition, KafkaOffset::Offset(time));
        let answer = self
            .admin
            .offsets_for_times(asked, REQUEST_TIMEOUT)
            .map_err(|err| unavailable("looking up Kafka offsets by time", err))?;
        Ok(answer
            .find_partition(&self.topic, partition as i32)
            .and_then(|entry| match entry.offset() {
                KafkaOffset::Offset(offset) if offset >= 0 => Some(offset as Offset),
                KafkaOffset::End => Some(end),
                _ => None,
            }))
    }
}

impl PartitionReader {
    /// Up to `max` records from `next` on: waits for the first one only while the end of the
    /// partition is not known to be here.
    fn read(&mut self, partition: u32, max: usize) -> Result<Vec<LogEntry>, LogError> {
        let deadline = Instant::now() + READ_WAIT;
        let mut entries = Vec::new();
        while entries.len() < max {
            let wait = match entries.is_empty() && !self.at_end {
                true => deadline.saturating_duration_since(Instant::now()),
                false => Duration::ZERO,
            };
            match self.consumer.poll(wait) {
                Some(Ok(message)) => {
                    let offset = message.offset() as Offset;
                    entries.push(LogEntry {
                        offset,
                        payload: message.payload().unwrap_or_default().to_vec(),
                    });
                    self.next = offset + 1;
                    self.at_end = false;
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    self.at_end = true;
                    break;
                }
                Some(Err(KafkaError::MessageConsumption(
                    RDKafkaErrorCode::OffsetOutOfRange | RDKafkaErrorCode::AutoOffsetReset,
                ))) => {
                    // `first` is filled in by `KafkaLog::read`.
                    return Err(LogError::OffsetDeleted {
                        partition,
                        offset: self.next,
                        first: 0,
                    });
                }
                Some(Err(err)) => {
                    tracing::debug!(partition, error = %err, "Kafka consumer error; retrying");
                    if Instant::now() >= deadline {
                        return Err(unavailable("reading Kafka", err));
                    }
                }
                None if !entries.is_empty() || self.at_end => break,
                None if Instant::now() >= deadline => {
                    return Err(LogError::Unavailable(format!(
                        "Kafka sent neither a record nor the end of partition {partition} within {} s; is the broker up?",
                        READ_WAIT.as_secs()
                    )));
                }
                None => {}
            }
        }
        Ok(entries)
    }
}

/// The settings of every Tally Kafka client: the brokers, then the operator's `kafka.client`
/// properties (security and tuning), passed to librdkafka as they are. OpenSSL is built into
/// the binary, so its default certificate folder is not the system's: unless the operator
/// names one, librdkafka probes the usual places of the system's CA certificates.
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.brokers);
    client.set("ssl.ca.location", "probe");
    for (name, value) in &config.client {
        client.set(name, value);
    }
    client
}

/// What [`create_topics`] found for one topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicOutcome {
    /// Created with the configured partitions, replication and retention.
    Created,
    /// It was there already and is left as it is.
    Existed,
}

/// Creates `topics` (name, partitions) with the configured replication and retention;
/// topics that exist are left alone.
pub async fn create_topics(
    config: &KafkaConfig,
    topics: &[(&str, u32)],
) -> Result<Vec<(String, TopicOutcome)>, LogError> {
    let admin: AdminClient<DefaultClientContext> = client_config(config)
        .create()
        .map_err(|err| kafka_error("creating a Kafka admin client", err))?;
    let retention_ms = (config.retention_hours * 3_600_000).to_string();
    let new_topics: Vec<NewTopic> = topics
        .iter()
        .map(|(name, partitions)| {
            NewTopic::new(
                name,
                *partitions as i32,
                TopicReplication::Fixed(i32::from(config.replication)),
            )
            .set("retention.ms", &retention_ms)
        })
        .collect();
    let options = AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(|err| unavailable("creating Kafka topics", err))?;
    results
        .into_iter()
        .map(|result| match result {
            Ok(name) => Ok((name, TopicOutcome::Created)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => Ok((name, TopicOutcome::Existed)),
            Err((name, code)) => Err(LogError::Backend(format!(
                "creating Kafka topic {name}: {code}"
            ))),
        })
        .collect()
}

/// The `retention.ms` the broker reports for `topic`: `Ok(None)` when it keeps records
/// forever, an error when it cannot say (not every Kafka-protocol broker answers).
pub async fn topic_retention(
    config: &KafkaConfig,
    topic: &str,
) -> Result<Option<Duration>, LogError> {
    let admin: AdminClient<DefaultClientContext> = client_config(config)
        .create()
        .map_err(|err| kafka_error("creating a Kafka admin client", err))?;
    let options = AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT));
    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &options)
        .await
        .map_err(|err| unavailable("describing a Kafka topic", err))?;
    let resource = described
        .into_iter()
        .next()
        .ok_or_else(|| LogError::Backend(format!("Kafka described nothing for topic {topic}")))?
        .map_err(|code| LogError::Backend(format!("describing Kafka topic {topic}: {code}")))?;
    let value = resource
        .get("retention.ms")
        .and_then(|entry| entry.value.clone())
        .ok_or_else(|| LogError::Backend(format!("Kafka topic {topic} reports no retention.ms")))?;
    match value.parse::<i64>() {
        Ok(ms) if ms < 0 => Ok(None),
        Ok(ms) => Ok(Some(Duration::from_millis(ms as u64))),
        Err(_) => Err(LogError::Backend(format!(
            "Kafka topic {topic} has retention.ms = {value:?}"
        ))),
    }
}

/// What every Tally Kafka consumer needs, under the operator's `client` settings.
fn consumer_config(client: &ClientConfig) -> ClientConfig {
    let mut config = client.clone();
    for (name, value) in [
        // Readers assign partitions themselves; librdkafka still wants a group to name.
        ("group.id", "tally.reader"),
        ("enable.auto.commit", "false"),
        ("enable.partition.eof", "true"),
        ("auto.offset.reset", "error"),
        ("fetch.wait.max.ms", "100"),
        ("queued.max.messages.kbytes", "16384"),
    ] {
        config.set(name, value);
    }
    config
}

/// The producer settings Tally needs (idempotent, `acks=all`, lz4 batches) under which the
/// operator's `client` settings win, so linger and batch size can be tuned.
pub fn producer_config(client: &ClientConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (name, value) in [
        ("enable.idempotence", "true"),
        ("acks", "all"),
        ("compression.type", "lz4"),
        ("linger.ms", "5"),
        ("batch.size", "1000000"),
        // Room for the forwarder's batches of every spool partition at once.
        ("queue.buffering.max.messages", "1000000"),
        ("message.timeout.ms", "10000"),
    ] {
        config.set(name, value);
    }
    for (name, value) in client.config_map() {
        config.set(name, value);
    }
    config
}

fn kafka_error(action: &str, err: KafkaError) -> LogError {
    LogError::Backend(format!("{action}: {err}"))
}

fn unavailable(action: &str, err: KafkaError) -> LogError {
    LogError::Unavailable(format!("{action}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::conformance;
    use crate::testing::{Kafka, unique_name};

    fn client(broker: &Kafka) -> ClientConfig {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &broker.address);
        client
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_the_log_conformance_suite() {
        let Some(broker) =
            Kafka::shared("connectors::log::kafka::passes_the_log_conformance_suite")
        else {
            return;
        };
        for check in 0..4 {
            let topic = unique_name(&format!("conformance-{check}"));
            broker.create_topic(&topic, 2);
            let log = KafkaLog::open(&client(&broker), &topic).unwrap();
            match check {
                0 => conformance::appends_read_back_in_order(&log).await,
                1 => conformance::sequential_reads_resume_where_they_stopped(&log).await,
                2 => conformance::consumer_positions_are_kept(&log).await,
                _ => conformance::unknown_partitions_are_errors(&log).await,
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn creates_the_topics_once_with_their_retention() {
        let test = "connectors::log::kafka::creates_the_topics_once_with_their_retention";
        let Some(broker) = Kafka::shared(test) else {
            return;
        };
        let config = KafkaConfig {
            brokers: broker.address.clone(),
            retention_hours: 100,
            replication: 1,
            ..KafkaConfig::default()
        };
        let events = unique_name("events");
        let rejected = format!("{events}.rejected");
        let topics = [(events.as_str(), 3), (rejected.as_str(), 1)];
        let created = create_topics(&config, &topics).await.unwrap();
        assert_eq!(
            created,
            [
                (events.clone(), TopicOutcome::Created),
                (rejected.clone(), TopicOutcome::Created)
            ]
        );
        let again = create_topics(&config, &topics).await.unwrap();
        assert!(
            again
                .iter()
                .all(|(_, outcome)| *outcome == TopicOutcome::Existed)
        );
        let client = client_config(&config);
        assert_eq!(KafkaLog::open(&client, &events).unwrap().partitions(), 3);
        assert_eq!(KafkaLog::open(&client, &rejected).unwrap().partitions(), 1);
        let retention = topic_retention(&config, &events).await;
        assert_eq!(retention.unwrap(), Some(Duration::from_secs(100 * 3600)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn finds_offsets_by_time_and_tells_an_outage_from_the_end() {
        let test = "connectors::log::kafka::finds_offsets_by_time_and_tells_an_outage_from_the_end";
        let Some(mut broker) = Kafka::dedicated(test) else {
            return;
        };
        broker.create_topic("timed", 1);
        let log = KafkaLog::open(&client(&broker), "timed").unwrap();
        let producer: FutureProducer = producer_config(&client(&broker)).create().unwrap();
        for (index, time) in [1_000, 2_000, 3_000].into_iter().enumerate() {
            let payload = format!("r{index}");
            let record = FutureRecord::<(), _>::to("timed")
                .partition(0)
                .timestamp(time)
                .payload(&payload);
            producer.send(record, Timeout::Never).await.unwrap();
        }
        assert_eq!(log.offset_for_time(0, 1_500).unwrap(), Some(1));
        assert_eq!(log.offset_for_time(0, 3_000).unwrap(), Some(2));
        assert_eq!(log.offset_for_time(0, 9_000).unwrap(), Some(3));
        assert_eq!(
            log.read(0, 3, 10).unwrap(),
            [],
            "at the end: nothing, at once"
        );

        broker.stop();
        let log_during_outage = KafkaLog::open(&client(&broker), "timed");
        assert!(matches!(log_during_outage, Err(LogError::Unavailable(_))));
        assert!(matches!(log.read(0, 0, 10), Err(LogError::Unavailable(_))));
    }
}
