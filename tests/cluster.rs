//! Tally across processes on Apache Kafka, Cassandra (for the ScyllaDB store) and S3: a speed
//! cluster of two `tally speed` processes stores the same states as one process over the same
//! topic, also after one of them is killed and the cluster restarted.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_connectors::log::kafka::client_config;
use tally_connectors::log::{AppendRecord, EventLog, KafkaLog};
use tally_connectors::testing::{
    Kafka, as_named, assert_states_agree, free_local_address, reference_states, sample_demo_events,
    scylla_uri, unique_name,
};
use tally_connectors::view_store::{ScyllaViewStore, ViewKey, ViewStore};
use tally_model::time::{HOUR_MS, now_millis};
use tally_model::{AggregateState, Catalog, KafkaConfig, Millis};

use crate::kafka::topic_records;
use crate::support::{READ_KEY, Tally, WRITE_KEY, tally};

const PARTITIONS: u32 = 4;

/// A Kafka topic of the test's own and `tally` commands set to read it.
struct Topic {
    kafka: Kafka,
    name: String,
    log: Arc<KafkaLog>,
}

impl Topic {
    fn create(kafka: Kafka) -> Topic {
        let name = unique_name("events");
        kafka.create_topic(&name, PARTITIONS);
        kafka.create_topic(&format!("{name}.rejected"), 1);
        let config = KafkaConfig {
            brokers: kafka.address.clone(),
            ..KafkaConfig::default()
        };
        let log = Arc::new(KafkaLog::open(&client_config(&config), &name).unwrap());
        Topic { kafka, name, log }
    }

    /// Appends `events` (resends included) as ingest's forwarder would.
    fn append(&self, base: Millis) {
        let records: Vec<AppendRecord> = sample_demo_events(base)
            .iter()
            .map(|event| AppendRecord::event(event, PARTITIONS))
            .collect();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(self.log.append(records)).unwrap();
    }

    /// `tally` reading this topic and writing views to `views_url`.
    fn tally(&self, views_url: &str) -> Command {
        let mut command = tally();
        command
            .env("TALLY_LOG_KIND", "kafka")
            .env("TALLY_KAFKA_BROKERS", &self.kafka.address)
            .env("TALLY_KAFKA_EVENTS_TOPIC", &self.name)
            .env(
                "TALLY_KAFKA_REJECTED_TOPIC",
                format!("{}.rejected", self.name),
            )
            .env("TALLY_VIEWS_URL", views_url)
            .env("TALLY_SPEED_EPOCH_MS", "50");
        command
    }

    /// The states the speed layer must hold: every event of the topic once.
    fn reference(&self) -> BTreeMap<ViewKey, AggregateState> {
        let catalog = Catalog::demo(WRITE_KEY, READ_KEY);
        reference_states(
            &catalog,
            topic_records(self.log.as_ref()),
            Millis::MIN..Millis::MAX,
        )
    }
}

/// Every real-time state in the store at `views_url`, keyed by view name.
fn stored_states(views_url: &str) -> BTreeMap<ViewKey, AggregateState> {
    let store = ScyllaViewStore::connect(views_url).unwrap();
    let catalog = Catalog::demo(WRITE_KEY, READ_KEY);
    let mut states = BTreeMap::new();
    for view in &catalog.tenants["demo"].views {
        let scanned = store.scan("demo", &view.stored_name(), Millis::MIN..Millis::MAX);
        states.extend(as_named(scanned.unwrap()));
    }
    states
}

/// Waits until the store at `views_url` holds `expected`'s keys and counts, then checks every
/// measure.
fn wait_for_states(views_url: &str, expected: &BTreeMap<ViewKey, AggregateState>) {
    let counts = |states: &BTreeMap<ViewKey, AggregateState>| -> Vec<(ViewKey, u64)> {
        states.iter().map(|(k, s)| (k.clone(), s.count)).collect()
    };
    let started = Instant::now();
    let mut stored = stored_states(views_url);
    while counts(&stored) != counts(expected) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the speed layer never stored the reference: {} states of {}",
            stored.len(),
            expected.len()
        );
        std::thread::sleep(Duration::from_millis(250));
        stored = stored_states(views_url);
    }
    assert_states_agree(&stored, expected);
}

/// Starts `commands` together (a cluster's processes wait for each other before they listen).
fn start_together(commands: Vec<Command>) -> Vec<Tally> {
    let starting: Vec<_> = commands
        .into_iter()
        .map(|command| std::thread::spawn(move || Tally::start(command)))
        .collect();
    starting
        .into_iter()
        .map(|started| started.join().unwrap())
        .collect()
}

#[test]
fn a_speed_cluster_of_two_processes_stores_what_one_process_stores_also_after_kill_9() {
    let test = "cluster::a_speed_cluster_of_two_processes_stores_what_one_process_stores";
    let (Some(kafka), Some(alone_url), Some(cluster_url)) =
        (Kafka::shared(test), scylla_uri(test), scylla_uri(test))
    else {
        return;
    };
    let topic = Topic::create(kafka);
    let base = now_millis() - 6 * HOUR_MS;
    topic.append(base);
    let dir = tempfile::tempdir().unwrap();

    // One process of two workers, and a cluster of two processes of one worker each.
    let mut alone = topic.tally(&alone_url);
    alone
        .env("TALLY_SPEED_WORKERS", "2")
        .args(["speed", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("alone"));
    let peers = [free_local_address(), free_local_address()].join(",");
    let member = |index: usize| {
        let mut command = topic.tally(&cluster_url);
        command
            .env("TALLY_SPEED_WORKERS", "1")
            .args(["speed", "--listen", "127.0.0.1:0", "--peers", &peers])
            .args(["--process-index", &index.to_string(), "--data-dir"])
            .arg(dir.path().join(format!("member-{index}")));
        command
    };
    let _alone = Tally::start(alone);
    let first_log = dir.path().join("member-0.log");
    let mut first = member(0);
    first.stderr(std::fs::File::create(&first_log).unwrap());
    let mut cluster = start_together(vec![first, member(1)]);

    let expected = topic.reference();
    wait_for_states(&alone_url, &expected);
    wait_for_states(&cluster_url, &expected);
    assert_states_agree(&stored_states(&cluster_url), &stored_states(&alone_url));
    // Each member read its share of the partitions, not all of them.
    let read: Vec<u64> = cluster
        .iter()
        .map(|member| member.metric("tally_speed_events_in_total"))
        .collect();
    let records = topic_records(topic.log.as_ref()).len() as u64;
    assert_eq!(read.iter().sum::<u64>(), records, "{read:?}");
    assert!(read.iter().all(|&share| share > 0), "{read:?}");

    // Process 1 dies: process 0 cannot go on without it, and says which peer it lost.
    let (first, second) = (cluster.remove(0), cluster.remove(0));
    second.kill9();
    let status = first.wait_exit(Duration::from_secs(60));
    assert!(
        !status.success(),
        "a member that lost its peer exits non-zero"
    );
    let said = std::fs::read_to_string(&first_log).unwrap();
    let lost = peers.split(',').nth(1).unwrap();
    assert!(
        said.contains(&format!("lost peer 1 ({lost}) of the speed cluster")),
        "{said}"
    );

    // More events while the cluster is down; restarted, it replays and is exact again.
    topic.append(base + HOUR_MS);
    let _cluster = start_together(vec![member(0), member(1)]);
    let expected = topic.reference();
    wait_for_states(&cluster_url, &expected);
    wait_for_states(&alone_url, &expected);
}
