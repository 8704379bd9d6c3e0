//! Loading the configuration: the file, then `TALLY_*` variables, then command-line flags.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use object_store::ObjectStore;
use tally_connectors::log::{EventLog, KafkaLog, kafka};
use tally_connectors::view_store::{self, ViewStore};
use tally_model::{Config, LogKind};

/// Where the configuration comes from; flags win over `TALLY_*` variables, which win over the file.
#[derive(Args, Clone)]
pub struct ConfigArgs {
    /// TOML configuration file (see README); without it every default is embedded.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory of the spool and every embedded store [default: tally-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The event log the layers read: the local spool, or Kafka fed by the collector's
    /// forwarder [default: spool].
    #[arg(long, value_name = "KIND")]
    pub log: Option<LogKind>,
    /// Kafka bootstrap brokers, comma-separated host:port [default: 127.0.0.1:9092].
    #[arg(long, value_name = "HOSTS")]
    pub brokers: Option<String>,
}

/// The flags of the commands that serve: the config's, and where to listen.
#[derive(Args, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Address to listen on [default: ingest.listen, 127.0.0.1:8080; for `tally speed`,
    /// speed.listen, 127.0.0.1:8081]; port 0 picks a free one.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
}

/// The flags of `tally speed`: the serving ones, and its place in a speed cluster.
#[derive(Args, Clone)]
pub struct SpeedArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Every process of the speed cluster, comma-separated host:port, the same list in the
    /// same order for each [default: speed.peers; empty: this process alone].
    #[arg(long, value_name = "HOSTS")]
    pub peers: Option<String>,
    /// This process's place in --peers, from 0 [default: speed.process_index].
    #[arg(long, value_name = "N")]
    pub process_index: Option<usize>,
}

/// The configuration for a command with only config flags.
pub fn load(args: &ConfigArgs) -> anyhow::Result<Config> {
    let text = match &args.config {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?,
        None => String::new(),
    };
    for warning in tally_model::config::unknown_variables(std::env::vars()) {
        tracing::warn!("{warning}");
    }
    let mut config =
        Config::parse(&text, std::env::vars()).with_context(|| match &args.config {
            Some(path) => format!("in config file {}", path.display()),
            None => "in TALLY_* environment variables".to_owned(),
        })?;
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(kind) = args.log {
        config.log.kind = kind;
    }
    if let Some(brokers) = &args.brokers {
        config.kafka.brokers = brokers.clone();
    }
    config.check().context("with the command-line flags")?;
    Ok(config)
}

/// Opens a stream's Kafka topic as an event log: one per reader, since each positions its
/// own partition consumers.
pub fn kafka_log(config: &Config, stream: Stream) -> anyhow::Result<Arc<dyn EventLog>> {
    let topic = stream.topic(config);
    let client = kafka::client_config(&config.kafka);
    let log = KafkaLog::open(&client, topic).with_context(|| {
        format!(
            "opening Kafka topic {topic} on {} (is the broker up? `tally kafka init` creates the topics)",
            config.kafka.brokers
        )
    })?;
    Ok(Arc::new(log))
}

/// The configuration for a serving command.
pub fn load_for_serving(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = load(&args.config)?;
    if let Some(listen) = &args.listen {
        config.ingest.listen = listen.clone();
    }
    Ok(config)
}

/// The configuration for `tally speed`: `--listen` is where it serves its metrics.
pub fn load_for_speed(args: &SpeedArgs) -> anyhow::Result<Config> {
    let mut config = load(&args.serve.config)?;
    if let Some(listen) = &args.serve.listen {
        config.speed.listen = listen.clone();
    }
    if let Some(peers) = &args.peers {
        config.speed.peers = peers.clone();
    }
    if let Some(index) = args.process_index {
        config.speed.process_index = index;
    }
    config.check().context("with the command-line flags")?;
    Ok(config)
}

/// The embedded view store's file.
pub fn views_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("views.redb")
}

/// Where the real-time views are, for messages: the ScyllaDB URL or the embedded file.
pub fn views_location(config: &Config) -> String {
    match config.views.url.as_str() {
        "" => views_path(&config.data_dir).display().to_string(),
        url => url.to_owned(),
    }
}

/// Opens the configured view store; `hint` says what to do if it cannot be opened.
pub fn view_store(
    config: &Config,
    access: view_store::Access,
    hint: &str,
) -> anyhow::Result<Arc<dyn ViewStore>> {
    let path = views_path(&config.data_dir);
    view_store::open(&config.views.url, &path, access)
        .with_context(|| format!("opening the view store {}; {hint}", views_location(config)))
}

/// The object store the config names: raw Parquet, batch views, manifests, the catalog.
pub fn objects(config: &Config) -> anyhow::Result<Arc<dyn ObjectStore>> {
    let store = tally_connectors::object_store::open_configured(&config.objects, &config.data_dir)?;
    Ok(store)
}

/// The spool folder of a stream.
pub fn spool_dir(data_dir: &Path, stream: Stream) -> std::path::PathBuf {
    data_dir.join("log").join(stream.name())
}

/// The two streams of the event log.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    /// Accepted events.
    Events,
    /// Rejected events with their reasons.
    Rejected,
}

impl Stream {
    /// The stream's name (and its spool folder's).
    pub fn name(self) -> &'static str {
        match self {
            Stream::Events => "events",
            Stream::Rejected => "events.rejected",
        }
    }

    /// The stream's Kafka topic.
    pub fn topic(self, config: &Config) -> &str {
        match self {
            Stream::Events => &config.kafka.events_topic,
            Stream::Rejected => &config.kafka.rejected_topic,
        }
    }
}
