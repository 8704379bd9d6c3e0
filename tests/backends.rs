//! Every real backend at once: `tally up` with its log on Apache Kafka, its real-time views
//! in the ScyllaDB store on Apache Cassandra and its objects on S3 (SeaweedFS) counts each
//! acknowledged event once, in the views it serves and in the batch views it recomputes.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use tally_connectors::batch_views::BatchViews;
use tally_connectors::log::KafkaLog;
use tally_connectors::log::kafka::client_config;
use tally_connectors::testing::{RealBackends, unique_name};
use tally_model::KafkaConfig;

use crate::batch::assert_batch_views_count;
use crate::kafka::{topic_records, viewed_count, wait_until_forwarded};
use crate::support::{
    Tally, acked_ids, failed_requests, keep_objects_at, log_to_kafka, run, tally,
};

#[test]
fn tally_up_on_kafka_cassandra_and_s3_counts_each_event_once() {
    let test = "backends::tally_up_on_kafka_cassandra_and_s3_counts_each_event_once";
    let Some(backends) = RealBackends::get(test) else {
        return;
    };
    let (kafka, views_url, bucket) = (backends.kafka, backends.views_url, backends.bucket);
    let events_topic = unique_name("events");
    let on_backends = || -> Command {
        let mut command = tally();
        log_to_kafka(&mut command, &kafka.address, &events_topic)
            .env("TALLY_VIEWS_URL", &views_url)
            .env("TALLY_BATCH_ROLL_EVENTS", "400");
        keep_objects_at(&mut command, &bucket.url, &bucket.options);
        command
    };
    run(on_backends().args(["kafka", "init"]));
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let up = Tally::up_with(&data_dir, on_backends());

    // Resent and late events included: each must count once whatever copy arrives.
    let acked = dir.path().join("acked-ids.txt");
    let report = run(up
        .generator()
        .args(["--events", "3000", "--duplicates", "0.1", "--late", "0.3"])
        .args(["--seed", "21", "--concurrency", "2", "--acked-ids"])
        .arg(&acked));
    assert_eq!(failed_requests(&report.stdout), 0);
    let distinct: BTreeSet<String> = acked_ids(&acked).into_iter().collect();
    wait_until_forwarded(&up, 3000);
    up.wait_for(
        "the views on Cassandra to count every event once",
        Duration::from_secs(120),
        |up| viewed_count(up) == distinct.len() as u64,
    );
    up.kill9();

    // The batch layer, from the topic to S3, counts each logged event once too.
    run(on_backends()
        .args(["archive", "--once", "--data-dir"])
        .arg(&data_dir));
    run(on_backends()
        .args(["batch", "run", "--data-dir"])
        .arg(&data_dir));
    let config = KafkaConfig {
        brokers: kafka.address.clone(),
        ..KafkaConfig::default()
    };
    let topic = KafkaLog::open(&client_config(&config), &events_topic).unwrap();
    let logged = topic_records(&topic);
    let logged_ids: BTreeSet<&str> = logged.iter().map(|(_, _, e)| e.event_id.as_str()).collect();
    assert_eq!(
        logged_ids.len(),
        distinct.len(),
        "every acknowledged event logged"
    );
    let store = tally_connectors::object_store::open(&bucket.url, &bucket.options).unwrap();
    assert_batch_views_count(&BatchViews::new(store), logged);
}
