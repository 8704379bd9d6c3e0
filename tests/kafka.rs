//! Kafka as the event log, against Apache Kafka (the test bed's): the layers build the same
//! views from a topic as from the spool, and `tally up --log kafka` keeps acknowledging
//! through a broker outage and counts every acknowledged event once.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tally_connectors::log::kafka::client_config;
use tally_connectors::log::{AppendRecord, EventLog, KafkaLog, Spool, SpoolOptions};
use tally_connectors::testing::{Kafka, assert_states_agree, sample_demo_events, unique_name};
use tally_connectors::view_store::EmbeddedViewStore;
use tally_model::time::{HOUR_MS, now_millis};
use tally_model::{Catalog, Event, KafkaConfig};

use crate::lambda::{batch_states, speed_states};
use crate::support::{READ_KEY, Tally, acked_ids, failed_requests, run, tally};

const PARTITIONS: u32 = 3;

fn kafka_log(broker: &Kafka, topic: &str) -> Arc<KafkaLog> {
    let config = KafkaConfig {
        brokers: broker.address.clone(),
        ..KafkaConfig::default()
    };
    Arc::new(KafkaLog::open(&client_config(&config), topic).unwrap())
}

#[test]
fn the_layers_build_the_same_views_from_a_topic_as_from_the_spool() {
    let test = "kafka::the_layers_build_the_same_views_from_a_topic_as_from_the_spool";
    let Some(broker) = Kafka::shared(test) else {
        return;
    };
    let events_topic = unique_name("events");
    broker.create_topic(&events_topic, PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let options = SpoolOptions {
        partitions: PARTITIONS,
        ..SpoolOptions::default()
    };
    let spool = Arc::new(Spool::open(&dir.path().join("log"), options).unwrap());
    let topic = kafka_log(&broker, &events_topic);
    // Resent copies included: both layers must drop them, whichever log they read.
    let records: Vec<AppendRecord> = sample_demo_events(now_millis() - 6 * HOUR_MS)
        .iter()
        .map(|event| AppendRecord::event(event, PARTITIONS))
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(spool.append(records.clone())).unwrap();
    runtime.block_on(topic.append(records)).unwrap();

    let catalog = Arc::new(Catalog::demo("w", "r"));
    let store = |name: &str| Arc::new(EmbeddedViewStore::open(&dir.path().join(name)).unwrap());
    let speed_from_spool = speed_states(spool.clone(), store("spool.redb"), &catalog);
    let speed_from_kafka = speed_states(topic.clone(), store("kafka.redb"), &catalog);
    let batch_from_spool = batch_states(spool, &dir.path().join("spool-objects"), &catalog);
    let batch_from_kafka = batch_states(topic, &dir.path().join("kafka-objects"), &catalog);
    assert!(!speed_from_kafka.is_empty());
    assert_states_agree(&speed_from_kafka, &speed_from_spool);
    assert_states_agree(&batch_from_kafka, &batch_from_spool);
    assert_states_agree(&speed_from_kafka, &batch_from_kafka);
}

#[test]
fn tally_up_on_kafka_acknowledges_through_a_broker_outage_and_counts_every_event_once() {
    let test = "kafka::tally_up_on_kafka_acknowledges_through_a_broker_outage";
    let Some(mut broker) = Kafka::dedicated(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let kafka_flags = ["--log", "kafka", "--brokers", broker.address.as_str()];
    let init = run(tally().args(["kafka", "init"]).args(kafka_flags));
    let init = String::from_utf8_lossy(&init.stdout).into_owned();
    assert!(init.contains("created topic events\n"), "{init}");
    assert!(init.contains("created topic events.rejected\n"), "{init}");
    let server = Tally::up_with_args(&data_dir, tally(), &kafka_flags);

    // Forwarded as posted: every acknowledged record once in the topic, a resent event id
    // as often as it was acknowledged (the layers downstream drop the copies).
    let steady = dir.path().join("steady-ids.txt");
    let report = run(server
        .generator()
        .args(["--events", "3000", "--duplicates", "0.1", "--seed", "3"])
        .arg("--acked-ids")
        .arg(&steady));
    assert_eq!(failed_requests(&report.stdout), 0);
    let steady = acked_ids(&steady);
    assert_eq!(steady.len(), 3000);
    wait_until_forwarded(&server, 3000);
    let topic = kafka_log(&broker, "events");
    assert_eq!(topic_ids(topic.as_ref()), counted(steady.iter()));

    // An outage under load: the collector keeps answering 202 from its spool.
    let during = dir.path().join("outage-ids.txt");
    let load = server
        .generator()
        .args(["--events", "6000", "--rate", "1500", "--seed", "4"])
        .arg("--acked-ids")
        .arg(&during)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    server.wait_for("load to start", Duration::from_secs(30), |s| {
        s.accepted() >= 4000
    });
    broker.stop();
    server.wait_for("/readyz to say degraded", Duration::from_secs(60), |s| {
        s.readiness().contains("\"degraded\"")
    });
    // Reads do not depend on the log: a raw count (its range fits no view's buckets) answers
    // from the archive alone and says what it misses, and /readyz names it.
    let now_secs = now_millis() / 1000;
    let count = format!(
        "/v1/events/count?start_time={}&end_time={}",
        now_secs - 3600 + 7,
        now_secs + 60
    );
    let authorization = format!("Bearer {READ_KEY}");
    let (status, answer) = server.http(
        "GET",
        &count,
        &[("Authorization", authorization.as_str())],
        "",
    );
    assert_eq!(status, 200, "a count while Kafka is away: {answer}");
    assert!(answer.contains("\"incomplete\""), "{answer}");
    assert!(answer.contains("not yet archived"), "{answer}");
    assert!(
        server.readiness().contains("raw reads"),
        "{}",
        server.readiness()
    );
    let report = load.wait_with_output().unwrap();
    assert_eq!(
        failed_requests(&report.stdout),
        0,
        "every request acknowledged"
    );
    let during = acked_ids(&during);
    assert_eq!(during.len(), 6000);
    assert!(
        forwarder_metric(&server, "backlog_records") > 0,
        "the spool holds what Kafka could not take"
    );

    // The broker returns: the backlog drains, and every acknowledged event is in the topic
    // (a delivery cut by the outage may arrive twice) and counted once in the views.
    broker.restart();
    wait_until_forwarded(&server, 9000);
    server.wait_for("/readyz to say ready", Duration::from_secs(60), |s| {
        s.readiness().contains("\"ready\"")
    });
    let (status, answer) = server.http(
        "GET",
        &count,
        &[("Authorization", authorization.as_str())],
        "",
    );
    assert_eq!(status, 200, "{answer}");
    assert!(
        !answer.contains("\"incomplete\""),
        "Kafka is back: {answer}"
    );
    let in_topic = topic_ids(kafka_log(&broker, "events").as_ref());
    let missing: Vec<&String> = steady
        .iter()
        .chain(&during)
        .filter(|id| !in_topic.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not in Kafka: {missing:?}"
    );
    let distinct: BTreeSet<&String> = steady.iter().chain(&during).collect();
    server.wait_for(
        "the views to count every event once",
        Duration::from_secs(60),
        |s| viewed_count(s) == distinct.len() as u64,
    );
}

fn counted<'a>(ids: impl Iterator<Item = &'a String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for id in ids {
        *counts.entry(id.clone()).or_default() += 1;
    }
    counts
}

/// How often each event id is in the topic.
fn topic_ids(topic: &dyn EventLog) -> BTreeMap<String, usize> {
    let records = topic_records(topic);
    counted(records.iter().map(|(_, _, event)| &event.event_id))
}

/// Every record of `topic`: partition, offset, event.
pub fn topic_records(topic: &dyn EventLog) -> Vec<(u32, u64, Event)> {
    let mut records = Vec::new();
    for partition in topic.stats().unwrap().partitions {
        let mut next = partition.first_offset;
        loop {
            let entries = topic.read(partition.partition, next, 10_000).unwrap();
            let Some(last) = entries.last() else { break };
            next = last.offset + 1;
            for entry in entries {
                let event: Event = serde_json::from_slice(&entry.payload).unwrap();
                records.push((partition.partition, entry.offset, event));
            }
        }
    }
    records
}

/// A `tally_forwarder_<name>{stream="events"}` value from `/metrics`.
fn forwarder_metric(server: &Tally, name: &str) -> u64 {
    server.metric(&format!("tally_forwarder_{name}{{stream=\"events\"}}"))
}

pub fn wait_until_forwarded(server: &Tally, records: u64) {
    server.wait_for(
        "the forwarder to drain the spool",
        Duration::from_secs(120),
        |s| {
            forwarder_metric(s, "records_forwarded_total") >= records
                && forwarder_metric(s, "backlog_records") == 0
        },
    );
}

/// Events in the real-time views over the last day, summed over `events_by_type`.
pub fn viewed_count(server: &Tally) -> u64 {
    let authorization = format!("Bearer {READ_KEY}");
    let (status, body) = server.http(
        "GET",
        "/v1/query?view=events_by_type&granularity=all&measures=count",
        &[("Authorization", &authorization)],
        "",
    );
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    answer["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["count"].as_u64().unwrap())
        .sum()
}
