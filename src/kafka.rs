//! `tally kafka init`: creates the events and rejected topics with the configured
//! partitions, replication and retention, and checks that the retention covers the speed
//! layer's replay window.

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use tally_connectors::log::kafka::{self, TopicOutcome};
use tally_model::Config;

use crate::settings::ConfigArgs;

#[derive(Subcommand)]
pub enum KafkaCommand {
    /// Create the topics (`kafka.events_topic`, `kafka.rejected_topic`) with
    /// `kafka.partitions`, `kafka.replication` and `kafka.retention_hours`; existing topics
    /// are left as they are, and their retention is checked.
    Init {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

pub fn run(command: KafkaCommand) -> anyhow::Result<()> {
    let KafkaCommand::Init { config } = command;
    let config = crate::settings::load(&config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    runtime.block_on(async {
        let topics = [
            (config.kafka.events_topic.as_str(), config.kafka.partitions),
            (
                config.kafka.rejected_topic.as_str(),
                config.kafka.rejected_partitions,
            ),
        ];
        let outcomes = kafka::create_topics(&config.kafka, &topics)
            .await
            .with_context(|| format!("creating the topics on {}", config.kafka.brokers))?;
        for (topic, outcome) in outcomes {
            match outcome {
                TopicOutcome::Created => println!("created topic {topic}"),
                TopicOutcome::Existed => println!("topic {topic} exists; left as it is"),
            }
        }
        for warning in retention_warnings(&config).await {
            println!("warning: {warning}");
        }
        anyhow::Ok(())
    })
}

/// How far back a restarted speed layer replays: its horizon plus the lead an event time
/// may have over its receipt.
pub fn replay_window(config: &Config) -> Duration {
    Duration::from_secs(config.speed.horizon_hours * 3600 + config.ingest.max_future_secs)
}

/// What is wrong with the retention of the events and rejected topics, if anything.
pub async fn retention_warnings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    for topic in [&config.kafka.events_topic, &config.kafka.rejected_topic] {
        warnings.extend(retention_warning(config, topic).await);
    }
    warnings
}

/// Why `topic`'s retention is a problem, if it is: shorter than the replay window, or not
/// readable from the broker.
async fn retention_warning(config: &Config, topic: &str) -> Option<String> {
    let window = replay_window(config);
    match kafka::topic_retention(&config.kafka, topic).await {
        Ok(Some(retention)) if retention < window => Some(format!(
            "topic {topic} keeps records {} h, less than the speed layer's replay window of {} h (speed.horizon_hours + ingest.max_future_secs): a restarted speed layer would miss events; raise the topic's retention.ms",
            retention.as_secs() / 3600,
            window.as_secs() / 3600
        )),
        Ok(_) => None,
        Err(err) => Some(format!(
            "could not read the retention of topic {topic} ({err}); make sure it covers {} h",
            window.as_secs() / 3600
        )),
    }
}
