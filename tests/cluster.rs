//! Tally across processes on Apache Kafka, Cassandra (for the ScyllaDB store) and S3: a speed
//! cluster of two `tally speed` processes stores the same states as one process over the same
//! topic, also after one of them is killed and the cluster restarted; and the whole scaled-out
//! topology (two collectors, a speed cluster, two archivers, a scheduler, two serve replicas)
//! answers exactly from both replicas, and again after `kill -9` of one process of each kind.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_connectors::log::kafka::client_config;
use tally_connectors::log::{AppendRecord, EventLog, KafkaLog};
use tally_connectors::testing::{
    Kafka, RealBackends, S3Bucket, as_named, assert_states_agree, free_local_address,
    reference_states, sample_demo_events, scylla_uri, unique_name,
};
use tally_connectors::view_store::{ScyllaViewStore, ViewKey, ViewStore};
use tally_model::time::{HOUR_MS, now_millis};
use tally_model::{AggregateState, Catalog, KafkaConfig, Millis};

use crate::kafka::topic_records;
use crate::support::{READ_KEY, Tally, WRITE_KEY, keep_objects_at, log_to_kafka, tally};

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
        log_to_kafka(&mut command, &self.kafka.address, &self.name)
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

/// Every process of the scaled-out topology (docs/cluster.md), on one set of servers: each
/// a plain `tally` process with a data directory of its own.
struct Topology {
    topic: Topic,
    views_url: String,
    bucket: S3Bucket,
    dir: tempfile::TempDir,
    peers: String,
}

/// A `tally` process that answers no HTTP (an archiver), killed when dropped.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Topology {
    /// `tally` on the shared log, view store and object store.
    fn tally(&self, role: &str) -> Command {
        let mut command = self.topic.tally(&self.views_url);
        command
            // Late events up to an hour: older hours close and the batch layer publishes them.
            .env("TALLY_INGEST_MAX_LATENESS_SECS", "3600")
            .env("TALLY_BATCH_ROLL_EVENTS", "300")
            .env("TALLY_BATCH_ROLL_SECS", "1");
        keep_objects_at(&mut command, &self.bucket.url, &self.bucket.options);
        command.arg(role);
        command
    }

    fn data_dir(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// `tally <role> --listen 127.0.0.1:0 --data-dir <dir>/<name>`, once it listens.
    fn serving(&self, role: &str, name: &str) -> Tally {
        let mut command = self.tally(role);
        command
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(self.data_dir(name));
        Tally::start(command)
    }

    fn ingest(&self, index: usize) -> Tally {
        self.serving("ingest", &format!("ingest-{index}"))
    }

    fn serve(&self, index: usize) -> Tally {
        self.serving("serve", &format!("serve-{index}"))
    }

    fn scheduler(&self) -> Tally {
        let mut command = self.tally("batch");
        command
            .args(["schedule", "--every", "1s", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(self.data_dir("scheduler"));
        Tally::start(command)
    }

    /// Both members of the speed cluster, one worker each.
    fn speed_cluster(&self) -> Vec<Tally> {
        let member = |index: usize| {
            let mut command = self.tally("speed");
            command
                .env("TALLY_SPEED_WORKERS", "1")
                .args(["--listen", "127.0.0.1:0", "--peers", &self.peers])
                .args(["--process-index", &index.to_string(), "--data-dir"])
                .arg(self.data_dir(&format!("speed-{index}")));
            command
        };
        start_together(vec![member(0), member(1)])
    }

    /// Archiver `index` of two, each with half the partitions.
    fn archiver(&self, index: usize) -> Running {
        let mut command = self.tally("archive");
        let partitions = if index == 0 { "0,2" } else { "1,3" };
        command
            .args(["--partitions", partitions, "--data-dir"])
            .arg(self.data_dir(&format!("archiver-{index}")))
            .stdout(std::process::Stdio::null());
        Running(command.spawn().unwrap())
    }
}

/// Sends `events` through each collector at once, with resends and late events; every
/// request must be acknowledged.
fn load(ingests: &[&Tally], events: usize, seed: u64) {
    std::thread::scope(|scope| {
        for (index, ingest) in ingests.iter().enumerate() {
            let seed = (seed * 10 + index as u64).to_string();
            scope.spawn(move || {
                let report = crate::support::run(
                    ingest
                        .generator()
                        .args(["--events", &events.to_string(), "--duplicates", "0.1"])
                        .args(["--late", "0.3", "--seed", &seed, "--concurrency", "2"]),
                );
                assert_eq!(crate::support::failed_requests(&report.stdout), 0);
            });
        }
    });
}

/// What every serve replica must answer, from the topic: each event once.
struct Expected {
    /// `events_by_type` counts by (hour, event type).
    hourly: BTreeMap<(Millis, String), u64>,
    /// Purchases: event id and time, each once (an id may recur in another hour).
    purchases: std::collections::BTreeSet<(String, Millis)>,
}

impl Expected {
    fn of(topic: &Topic) -> Expected {
        let catalog = Catalog::demo(WRITE_KEY, READ_KEY);
        let view = &catalog.tenants["demo"].views[0];
        assert_eq!(view.name, "events_by_type");
        let events = tally_connectors::testing::deduplicated(topic_records(topic.log.as_ref()));
        let mut hourly = BTreeMap::new();
        for event in events.iter().filter(|event| view.covers(&event.event_type)) {
            let hour = event.ts.div_euclid(HOUR_MS) * HOUR_MS;
            *hourly.entry((hour, event.event_type.clone())).or_default() += 1;
        }
        let purchases = events
            .into_iter()
            .filter(|event| event.event_type == "purchase")
            .map(|event| (event.event_id, event.ts))
            .collect();
        Expected { hourly, purchases }
    }
}

/// Whether `serve` answers `expected` now: the query API hour by hour, the seed API's count
/// and, `with_search`, its search, over the last eight hours.
fn answers(serve: &Tally, expected: &Expected, with_search: bool) -> Result<(), String> {
    let authorization = format!("Bearer {READ_KEY}");
    let get = |path: &str| -> serde_json::Value {
        let (status, body) = serve.http("GET", path, &[("Authorization", &authorization)], "");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    };
    let end = (now_millis() / HOUR_MS + 1) * HOUR_MS;
    let start = end - 8 * HOUR_MS;
    let query = get(&format!(
        "/v1/query?view=events_by_type&from={start}&to={end}&granularity=hour&group_by=event_type&measures=count"
    ));
    let hourly: BTreeMap<(Millis, String), u64> = query["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let hour = tally_model::time::parse_timestamp(row["bucket"].as_str().unwrap()).unwrap();
            let event_type = row["event_type"].as_str().unwrap().to_owned();
            ((hour, event_type), row["count"].as_u64().unwrap())
        })
        .collect();
    if hourly != expected.hourly {
        return Err(format!("query: {hourly:?}\nexpected {:?}", expected.hourly));
    }
    let (from, to) = (start / 1000, end / 1000);
    let count = get(&format!(
        "/v1/events/count?event_type=purchase&start_time={from}&end_time={to}"
    ));
    if count["result"].as_u64() != Some(expected.purchases.len() as u64) {
        return Err(format!(
            "count: {count}, expected {}",
            expected.purchases.len()
        ));
    }
    if !with_search {
        return Ok(());
    }
    let mut found = std::collections::BTreeSet::new();
    let mut cursor = String::new();
    loop {
        let page = get(&format!(
            "/v1/events/search?event_type=purchase&start_time={from}&end_time={to}&limit=1000{cursor}"
        ));
        for event in page["result"].as_array().unwrap() {
            let id = event["event_id"].as_str().unwrap().to_owned();
            found.insert((id, event["ts"].as_i64().unwrap()));
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    if found != expected.purchases {
        return Err(format!(
            "search found {} purchases of {}",
            found.len(),
            expected.purchases.len()
        ));
    }
    Ok(())
}

/// Waits until every replica of `serves` answers what the topic holds.
fn wait_for_exact_answers(serves: &[&Tally], topic: &Topic, with_search: bool) {
    let expected = Expected::of(topic);
    let started = Instant::now();
    for serve in serves {
        while let Err(wrong) = answers(serve, &expected, with_search) {
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "serve at {} never answered exactly: {wrong}",
                serve.address
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

#[test]
fn a_loopback_cluster_answers_exactly_and_again_after_kill_9_of_each_kind_of_process() {
    let test = "cluster::a_loopback_cluster_answers_exactly";
    let Some(backends) = RealBackends::get(test) else {
        return;
    };
    let (kafka, views_url, bucket) = (backends.kafka, backends.views_url, backends.bucket);
    // `TALLY_CLUSTER_EVENTS=100000` is the long form (docs/cluster.md).
    let events: usize = std::env::var("TALLY_CLUSTER_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1500);
    let topology = Topology {
        topic: Topic::create(kafka),
        views_url,
        bucket,
        dir: tempfile::tempdir().unwrap(),
        peers: [free_local_address(), free_local_address()].join(","),
    };
    // The first process seeds the catalog into the shared object store; the others read it.
    let ingest_0 = topology.ingest(0);
    let ingest_1 = topology.ingest(1);
    let mut speed = topology.speed_cluster();
    let archivers = [topology.archiver(0), topology.archiver(1)];
    let scheduler = topology.scheduler();
    let serves = [topology.serve(0), topology.serve(1)];

    // Live load through both collectors, and older events straight into the topic, as a
    // collector's forwarder would deliver a backlog: the batch layer closes their hours.
    load(&[&ingest_0, &ingest_1], events, 1);
    topology.topic.append(now_millis() - 6 * HOUR_MS);
    scheduler.wait_for("a published batch horizon", Duration::from_secs(120), |s| {
        s.metric("tally_batch_horizon_ms") > 0
    });
    wait_for_exact_answers(&[&serves[0], &serves[1]], &topology.topic, true);

    // kill -9 one process of each kind; the speed member that loses its peer exits too.
    let [serve_0, serve_1] = serves;
    let [archiver_0, archiver_1] = archivers;
    ingest_1.kill9();
    speed.remove(1).kill9();
    assert!(!speed.remove(0).wait_exit(Duration::from_secs(60)).success());
    drop(archiver_1);
    scheduler.kill9();
    serve_1.kill9();

    let ingest_1 = topology.ingest(1);
    let _speed = topology.speed_cluster();
    let _archivers = [archiver_0, topology.archiver(1)];
    let _scheduler = topology.scheduler();
    let serve_1 = topology.serve(1);
    load(&[&ingest_0, &ingest_1], events, 2);
    topology.topic.append(now_millis() - 5 * HOUR_MS);
    wait_for_exact_answers(&[&serve_0, &serve_1], &topology.topic, true);

    // A view changed and one added through a serve replica, under load: the speed cluster
    // builds them while it runs, and the replicas answer throughout.
    crate::view_change::change_views_under_load(&ingest_0, &serve_0.address);

    // One `tally up` over the same topic, on its own embedded stores, answers the same
    // queries and counts. (Its archiver shares the archivers' Kafka positions, so it starts
    // once they are gone, and finds the topic archived: its search, which reads its own
    // archive and the log past those positions, has nothing to compare.)
    drop((_archivers, _scheduler, _speed));
    let mut up = topology.topic.tally("");
    up.arg("up")
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(topology.data_dir("up"));
    let up = Tally::start(up);
    wait_for_exact_answers(&[&up], &topology.topic, false);
}
