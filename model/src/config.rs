//! Tally's configuration: one TOML file, every scalar field overridable by a `TALLY_*`
//! environment variable named after its path (`[ingest] listen` is `TALLY_INGEST_LISTEN`),
//! with defaults that run everything embedded under one data directory.
//!
//! Reading the file and the environment is the binary's job; this module only parses.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::key::ConfiguredKey;
use crate::tenant::Tenant;

/// Every environment variable that overrides a field starts with this.
pub const ENV_PREFIX: &str = "TALLY_";
/// Variables that set a librdkafka property in `kafka.client`.
const KAFKA_CLIENT_PREFIX: &str = "TALLY_KAFKA_CLIENT_";
/// Variables that set an object store setting in `objects.options`.
const OBJECTS_OPTIONS_PREFIX: &str = "TALLY_OBJECTS_OPTIONS_";

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory of every embedded store: the spool, the view store, the local object store.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The HTTP collector.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// The event log (the spool when embedded).
    #[serde(default)]
    pub log: LogConfig,
    /// Kafka, when `log.kind = "kafka"`.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// The object store: raw Parquet, batch views and the catalog.
    #[serde(default)]
    pub objects: ObjectsConfig,
    /// The real-time view store the speed layer writes and serving reads.
    #[serde(default)]
    pub views: ViewsConfig,
    /// The speed layer.
    #[serde(default)]
    pub speed: SpeedConfig,
    /// The batch layer: archiver, recompute and scheduler.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Serving: the query API, search and governance.
    #[serde(default)]
    pub serving: ServingConfig,
    /// How often one caller may call, per key and per client address.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The demo tenant created when no tenant is declared.
    #[serde(default)]
    pub demo: DemoConfig,
    /// Tenants, by name. None declared: `tally up` creates the demo tenant.
    #[serde(default, rename = "tenant")]
    pub tenants: BTreeMap<String, Tenant>,
    /// API keys of the declared tenants.
    #[serde(default, rename = "api_key")]
    pub api_keys: Vec<ConfiguredKey>,
}

/// The largest record the event log and the rejected stream take, in bytes (Kafka's own
/// limit is set to match).
pub const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

/// The largest `ingest.max_event_bytes` allowed: half a log record, so that an event's
/// record, or a reject's payload with its capped reasons, always fits in one.
pub const MAX_EVENT_BYTES_CEILING: usize = MAX_RECORD_BYTES / 2;

/// The HTTP collector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Address the HTTP server listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Largest request body accepted, in bytes; larger gets 413.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Largest single event accepted, in bytes of its JSON.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// How far in the future an event time may be, in seconds.
    #[serde(default = "default_max_future_secs")]
    pub max_future_secs: u64,
    /// How old an event time may be when it arrives (the allowed lateness), in seconds.
    #[serde(default = "default_max_lateness_secs")]
    pub max_lateness_secs: u64,
    /// HTTP worker threads; 0 means one per core.
    #[serde(default)]
    pub workers: usize,
    /// Longest a request body may take to arrive, in seconds; a slower one gets 408, so
    /// that trickling bodies cannot hold the collector's connections.
    #[serde(default = "default_body_timeout_secs")]
    pub body_timeout_secs: u64,
    /// Rejected events listed one by one in a reply; the rest are counted by reason.
    #[serde(default = "default_max_rejects_listed")]
    pub max_rejects_listed: usize,
    /// Rejected events one request may add to the rejected stream, payload and reasons;
    /// the rest are counted in `/metrics` (`tally_ingest_events_rejected`) but not kept, so
    /// that a flood of junk cannot push the real rejects out of view.
    #[serde(default = "default_max_rejects_kept")]
    pub max_rejects_kept: usize,
}

/// The event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Which log the layers read: the local spool, or Kafka, which the collector then feeds
    /// from its spool through the forwarder.
    #[serde(default)]
    pub kind: LogKind,
    /// Partitions of the event stream; a user's events stay in one.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Partitions of the rejected stream.
    #[serde(default = "default_rejected_partitions")]
    pub rejected_partitions: u32,
    /// A segment file rolls over past this size, in bytes.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// Sealed segments older than this are deleted once every registered consumer is past them.
    #[serde(default = "default_retention_hours")]
    pub retention_hours: u64,
}

/// Which event log the layers read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogKind {
    /// The collector's spool on local disk: everything in one data directory.
    #[default]
    Spool,
    /// Kafka topics, fed from the collector's spool by the forwarder.
    Kafka,
}

impl std::str::FromStr for LogKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "spool" => Ok(LogKind::Spool),
            "kafka" => Ok(LogKind::Kafka),
            other => Err(format!("unknown event log {other:?}: use spool or kafka")),
        }
    }
}

/// Kafka: brokers, topics, and the client settings passed to librdkafka.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, comma-separated `host:port`.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Topic of accepted events.
    #[serde(default = "default_events_topic")]
    pub events_topic: String,
    /// Topic of rejected events with their reasons.
    #[serde(default = "default_rejected_topic")]
    pub rejected_topic: String,
    /// Partitions `tally kafka init` gives the events topic.
    #[serde(default = "default_kafka_partitions")]
    pub partitions: u32,
    /// Partitions `tally kafka init` gives the rejected topic.
    #[serde(default = "default_rejected_partitions")]
    pub rejected_partitions: u32,
    /// Replicas of each partition.
    #[serde(default = "default_replication")]
    pub replication: u16,
    /// Retention `tally kafka init` sets (`retention.ms`), in hours. It must cover the speed
    /// layer's replay window: `speed.horizon_hours` plus `ingest.max_future_secs`.
    #[serde(default = "default_retention_hours")]
    pub retention_hours: u64,
    /// librdkafka properties for every client, e.g. `"security.protocol" = "SASL_SSL"`,
    /// `"sasl.mechanism" = "SCRAM-SHA-512"`, `"ssl.ca.location" = "/etc/ca.pem"`. A variable
    /// `TALLY_KAFKA_CLIENT_SASL_PASSWORD` sets `sasl.password` (underscores become dots).
    #[serde(default)]
    pub client: BTreeMap<String, String>,
}

/// The object store holding raw Parquet partitions, batch views and the catalog.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectsConfig {
    /// Where: empty for `<data_dir>/objects`; else a folder, `file:///path`,
    /// `s3://bucket/prefix` (S3 or an S3-compatible server) or `hdfs://namenode:port/prefix`.
    #[serde(default)]
    pub url: String,
    /// Settings of the store. S3 takes `object_store`'s names, e.g. `aws_endpoint`,
    /// `aws_region`, `aws_allow_http`, `aws_access_key_id`, and also reads the standard
    /// `AWS_*` variables; `TALLY_OBJECTS_OPTIONS_AWS_ENDPOINT` sets `aws_endpoint`. HDFS takes
    /// Hadoop properties, e.g. `"dfs.ha.namenodes.ns" = "nn1,nn2"`, over `HADOOP_CONF_DIR`'s.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// The real-time view store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewsConfig {
    /// Where: empty for the embedded store (`<data_dir>/views.redb`), or ScyllaDB as
    /// `scylla://host:9042[,host2:9042]/keyspace[?replication_factor=3]` (the keyspace and
    /// tables are created if missing; keyspace `tally` and factor 1 by default).
    #[serde(default)]
    pub url: String,
}

/// The speed layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeedConfig {
    /// Address `tally speed` serves `/metrics` and health on when it runs alone (under
    /// `tally up` they share the collector's port).
    #[serde(default = "default_speed_listen")]
    pub listen: String,
    /// Timely workers (threads) of this process; 0 means one per core. Across a cluster,
    /// worker `w` (its global index: `process_index * workers + thread`) reads partitions `p`
    /// with `p % all_workers == w`.
    #[serde(default)]
    pub workers: usize,
    /// The speed cluster: every process's `host:port`, comma-separated, the same list in
    /// the same order for each (timely's cluster mode). Empty: one process. Every process must
    /// run the same `workers`, read Kafka and write a ScyllaDB view store.
    #[serde(default)]
    pub peers: String,
    /// This process's place in `peers`, from 0.
    #[serde(default)]
    pub process_index: usize,
    /// Longest epoch, in milliseconds: views are written at the end of each.
    #[serde(default = "default_epoch_ms")]
    pub epoch_ms: u64,
    /// The speed layer keeps views for events at or after now minus this many hours, until the
    /// batch layer publishes a horizon.
    #[serde(default = "default_horizon_hours")]
    pub horizon_hours: u64,
    /// Most records read from one partition in one epoch.
    #[serde(default = "default_max_records_per_epoch")]
    pub max_records_per_epoch: usize,
}

/// The batch layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Address `tally batch schedule` serves `/metrics` and health on.
    #[serde(default = "default_batch_listen")]
    pub listen: String,
    /// The archiver closes a raw file once it holds this many events...
    #[serde(default = "default_roll_events")]
    pub roll_events: usize,
    /// ...or this many bytes of events (as logged)...
    #[serde(default = "default_roll_bytes")]
    pub roll_bytes: usize,
    /// ...or its first event has waited this many seconds.
    #[serde(default = "default_roll_secs")]
    pub roll_secs: u64,
    /// Seconds between scheduled recomputes under `tally up` and `tally batch schedule`.
    #[serde(default = "default_every_secs")]
    pub every_secs: u64,
    /// How far apart, in milliseconds, the clocks stamping `received_at` may be: an hour is
    /// closed only once the archiver is this far past its end.
    #[serde(default = "default_clock_slack_ms")]
    pub clock_slack_ms: u64,
}

const fn default_roll_events() -> usize {
    500_000
}
const fn default_roll_bytes() -> usize {
    128 * 1024 * 1024
}
const fn default_roll_secs() -> u64 {
    60
}
const fn default_every_secs() -> u64 {
    15 * 60
}
const fn default_clock_slack_ms() -> u64 {
    1_000
}

fn default_speed_listen() -> String {
    "127.0.0.1:8081".to_owned()
}
const fn default_epoch_ms() -> u64 {
    100
}
const fn default_horizon_hours() -> u64 {
    48
}
const fn default_max_records_per_epoch() -> usize {
    100_000
}

/// Serving: the query API, search and governance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServingConfig {
    /// Largest query answer serving builds, in bytes of JSON; a larger one is refused with a
    /// 400 that says how to narrow it.
    #[serde(default = "default_max_answer_bytes")]
    pub max_answer_bytes: usize,
    /// Days of raw events the full-text search index keeps (`q=` on `/v1/events/search`); 0
    /// keeps no index.
    #[serde(default = "default_search_days")]
    pub search_days: u32,
}

/// How often one caller may call: per API key (a write key is shared by every browser of a
/// site, so its limit is the site's), per client address, and failed authentications per
/// address. Past a limit the answer is 429 with `Retry-After`. 0 turns a limit off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests per second one API key may make, sustained.
    #[serde(default = "default_requests_per_second_per_key")]
    pub requests_per_second_per_key: u32,
    /// Requests per second one client address may make, sustained.
    #[serde(default = "default_requests_per_second_per_address")]
    pub requests_per_second_per_address: u32,
    /// Seconds of a rate a caller may spend at once (the burst), after being idle.
    #[serde(default = "default_burst_seconds")]
    pub burst_seconds: u32,
    /// Failed authentications (401) one client address may have per minute; past it, its
    /// every request is refused until the minute refills, so keys cannot be guessed.
    #[serde(default = "default_auth_failures_per_minute")]
    pub auth_failures_per_minute_per_address: u32,
    /// Connections one client address may hold open at once; a request on one more is
    /// answered 429 and its connection closed, so that one address cannot take every
    /// connection the server has. 0: no cap (behind a proxy, every caller shares its address).
    #[serde(default = "default_connections_per_address")]
    pub connections_per_address: u32,
}

/// The demo tenant's keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoConfig {
    /// Write key; empty: reuse `<data-dir>/demo-keys.txt` or generate one.
    #[serde(default)]
    pub write_key: String,
    /// Read key; empty: reuse `<data-dir>/demo-keys.txt` or generate one.
    #[serde(default)]
    pub read_key: String,
    /// Admin key (governance); empty: reuse `<data-dir>/demo-keys.txt` or generate one.
    #[serde(default)]
    pub admin_key: String,
}

/// A busy site's whole traffic through one write key, with room.
const fn default_requests_per_second_per_key() -> u32 {
    5_000
}
/// Generous for one browser or server, and for a small office behind one NAT address.
const fn default_requests_per_second_per_address() -> u32 {
    500
}
/// Far more than a browser opens (six) or a server's connection pool, far fewer than the
/// connections the server can hold.
const fn default_connections_per_address() -> u32 {
    512
}
const fn default_burst_seconds() -> u32 {
    2
}
const fn default_auth_failures_per_minute() -> u32 {
    30
}
/// 32 MiB: a day by minute of a dozen groups is under 2 MB.
const fn default_max_answer_bytes() -> usize {
    32 << 20
}
const fn default_search_days() -> u32 {
    7
}
const fn default_body_timeout_secs() -> u64 {
    10
}
const fn default_max_rejects_listed() -> usize {
    100
}
const fn default_max_rejects_kept() -> usize {
    100
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("tally-data")
}
fn default_listen() -> String {
    "127.0.0.1:8080".to_owned()
}
const fn default_max_request_bytes() -> usize {
    500 * 1024
}
const fn default_max_event_bytes() -> usize {
    32 * 1024
}
const fn default_max_future_secs() -> u64 {
    24 * 3600
}
const fn default_max_lateness_secs() -> u64 {
    24 * 3600
}
/// Two, the cores of the reference machine: each partition's writer makes its own fdatasync
/// per group commit, and `tally-bench ingest` measured two faster than four, at a lower
/// latency (docs/performance.md).
const fn default_partitions() -> u32 {
    2
}
const fn default_rejected_partitions() -> u32 {
    1
}
fn default_batch_listen() -> String {
    "127.0.0.1:8082".to_owned()
}
fn default_brokers() -> String {
    "127.0.0.1:9092".to_owned()
}
fn default_events_topic() -> String {
    "events".to_owned()
}
fn default_rejected_topic() -> String {
    "events.rejected".to_owned()
}
const fn default_kafka_partitions() -> u32 {
    4
}
const fn default_replication() -> u16 {
    1
}
const fn default_segment_bytes() -> u64 {
    128 * 1024 * 1024
}
const fn default_retention_hours() -> u64 {
    7 * 24
}

impl Default for Config {
    fn default() -> Self {
        toml::from_str("").expect("every field has a default")
    }
}
impl Default for IngestConfig {
    fn default() -> Self {
        Config::default_section()
    }
}
impl Default for LogConfig {
    fn default() -> Self {
        Config::default_section()
    }
}
impl Default for KafkaConfig {
    fn default() -> Self {
        Config::default_section()
    }
}
impl Default for SpeedConfig {
    fn default() -> Self {
        Config::default_section()
    }
}
impl Default for LimitsConfig {
    fn default() -> Self {
        Config::default_section()
    }
}
impl Default for ServingConfig {
    fn default() -> Self {
        Config::default_section()
    }
}
impl Default for BatchConfig {
    fn default() -> Self {
        Config::default_section()
    }
}

/// Why a configuration could not be read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The TOML is malformed or names unknown fields. Not a `source`: the message holds it
    /// already, and an error chain would print it twice.
    #[error("invalid configuration: {0}")]
    Toml(toml::de::Error),
    /// An environment variable does not parse as its field's type.
    #[error("environment variable {var}={value:?} must be {expected}")]
    Env {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
        /// The type it must have.
        expected: &'static str,
    },
    /// A value is out of its allowed range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl From<toml::de::Error> for ConfigError {
    fn from(error: toml::de::Error) -> Self {
        ConfigError::Toml(error)
    }
}

impl Config {
    fn default_section<T: serde::de::DeserializeOwned>() -> T {
        toml::from_str("").expect("every field has a default")
    }

    /// Parses a TOML document, then applies `TALLY_*` overrides from `env`
    /// (pass `std::env::vars()`). Variables that name no field are ignored, so other
    /// `TALLY_*` settings (test hooks, backend URIs) can share the prefix.
    pub fn parse(
        toml_text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut document: toml::Table = toml::from_str(toml_text)?;
        // Merge the document over the defaults so every scalar path exists to be overridden.
        let defaults =
            toml::Table::try_from(Config::default()).expect("Config serializes to a table");
        let mut merged = defaults;
        merge_tables(&mut merged, std::mem::take(&mut document));
        let env: BTreeMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        apply_env(&mut merged, ENV_PREFIX.trim_end_matches('_'), &env)?;
        let mut config: Config = merged.try_into()?;
        for (var, value) in &env {
            if let Some(property) = var.strip_prefix(KAFKA_CLIENT_PREFIX) {
                let property = property.to_lowercase().replace('_', ".");
                config.kafka.client.insert(property, value.clone());
            }
            if let Some(setting) = var.strip_prefix(OBJECTS_OPTIONS_PREFIX) {
                config
                    .objects
                    .options
                    .insert(setting.to_lowercase(), value.clone());
            }
        }
        config.check()?;
        Ok(config)
    }

    /// Checks the whole configuration: [`parse`](Self::parse) does, and a command checks
    /// again after its flags changed it.
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |message: &str| Err(ConfigError::Invalid(message.to_owned()));
        if self.log.partitions == 0 || self.log.rejected_partitions == 0 {
            return invalid("log.partitions and log.rejected_partitions must be at least 1");
        }
        if self.log.segment_bytes < 4096 {
            return invalid("log.segment_bytes must be at least 4096");
        }
        if self.speed.epoch_ms == 0 || self.speed.max_records_per_epoch == 0 {
            return invalid("speed.epoch_ms and speed.max_records_per_epoch must be at least 1");
        }
        let replay_hours = self.speed.horizon_hours + self.ingest.max_future_secs.div_ceil(3600);
        if self.log.retention_hours < replay_hours {
            return Err(ConfigError::Invalid(format!(
                "log.retention_hours ({}) must cover speed.horizon_hours plus ingest.max_future_secs ({replay_hours} h): a restarted speed layer replays that far",
                self.log.retention_hours
            )));
        }
        if self.log.kind == LogKind::Kafka && self.kafka.retention_hours < replay_hours {
            return Err(ConfigError::Invalid(format!(
                "kafka.retention_hours ({}) must cover speed.horizon_hours plus ingest.max_future_secs ({replay_hours} h): a restarted speed layer replays that far",
                self.kafka.retention_hours
            )));
        }
        if self.kafka.partitions == 0 || self.kafka.rejected_partitions == 0 {
            return invalid("kafka.partitions and kafka.rejected_partitions must be at least 1");
        }
        if self.batch.roll_events == 0 || self.batch.roll_bytes == 0 || self.batch.every_secs == 0 {
            return invalid(
                "batch.roll_events, batch.roll_bytes and batch.every_secs must be at least 1",
            );
        }
        // The batch horizon trails the archive by the allowed lateness; the speed layer must
        // keep at least that much before a horizon is published, or a gap opens between them.
        if self.speed.horizon_hours.saturating_mul(3600) < self.ingest.max_lateness_secs + 3600 {
            return Err(ConfigError::Invalid(format!(
                "speed.horizon_hours ({}) must exceed ingest.max_lateness_secs ({} s) by an hour: the batch horizon trails the archive by the lateness",
                self.speed.horizon_hours, self.ingest.max_lateness_secs
            )));
        }
        if self.ingest.max_event_bytes > self.ingest.max_request_bytes {
            return invalid("ingest.max_event_bytes must not exceed ingest.max_request_bytes");
        }
        if self.ingest.max_event_bytes > MAX_EVENT_BYTES_CEILING {
            return Err(ConfigError::Invalid(format!(
                "ingest.max_event_bytes ({}) is over {MAX_EVENT_BYTES_CEILING}: an event and a reject must fit in one log record of {MAX_RECORD_BYTES} bytes",
                self.ingest.max_event_bytes
            )));
        }
        self.check_speed_cluster()
    }

    /// A speed cluster needs a log and a view store that every process shares.
    fn check_speed_cluster(&self) -> Result<(), ConfigError> {
        let peers = self.speed.peer_addresses();
        if peers.is_empty() {
            return Ok(());
        }
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        if self.speed.process_index >= peers.len() {
            return invalid(format!(
                "speed.process_index ({}) must name one of the {} speed.peers, from 0",
                self.speed.process_index,
                peers.len()
            ));
        }
        if self.log.kind != LogKind::Kafka {
            return invalid(
                "a speed cluster (speed.peers) reads Kafka: set log.kind = \"kafka\" (--log kafka)"
                    .to_owned(),
            );
        }
        if self.views.url.is_empty() {
            return invalid(
                "a speed cluster (speed.peers) writes a shared view store: set views.url to scylla://host:9042/keyspace"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

impl SpeedConfig {
    /// The addresses in `peers`: empty for one process.
    pub fn peer_addresses(&self) -> Vec<String> {
        self.peers
            .split(',')
            .map(str::trim)
            .filter(|peer| !peer.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

fn merge_tables(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base_table)), toml::Value::Table(overlay_table)) => {
                merge_tables(base_table, overlay_table)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Whether the environment variable `var` sets a setting: a field's path in capitals
/// (`TALLY_INGEST_LISTEN` for `[ingest] listen`), or an entry of `[kafka.client]`
/// (`TALLY_KAFKA_CLIENT_*`) or `[objects.options]` (`TALLY_OBJECTS_OPTIONS_*`). Deployment
/// files are checked against it, since [`Config::parse`] ignores the `TALLY_*` variables that
/// name no field.
pub fn is_setting_variable(var: &str) -> bool {
    sets_one_of(var, &setting_variables())
}

/// Whether `var` is one of `settings` (see [`setting_variables`]) or an entry of
/// `[kafka.client]` or `[objects.options]`.
fn sets_one_of(var: &str, settings: &[String]) -> bool {
    var.starts_with(KAFKA_CLIENT_PREFIX)
        || var.starts_with(OBJECTS_OPTIONS_PREFIX)
        || settings.iter().any(|name| name == var)
}

/// The variable of every scalar setting: its path in capitals after `TALLY`.
fn setting_variables() -> Vec<String> {
    fn paths(table: &toml::Table, path: &str, out: &mut Vec<String>) {
        for (key, value) in table {
            let var = format!("{path}_{}", key.to_uppercase());
            match value {
                toml::Value::Table(inner) => paths(inner, &var, out),
                _ => out.push(var),
            }
        }
    }
    let defaults = toml::Table::try_from(Config::default()).expect("Config serializes to a table");
    let mut variables = Vec::new();
    paths(&defaults, ENV_PREFIX.trim_end_matches('_'), &mut variables);
    variables
}

/// `TALLY_*` variables Tally's commands, tests and test bed read that are not settings.
const OTHER_VARIABLES: [&str; 17] = [
    "TALLY_DEMO_WRITE_KEY",
    "TALLY_DEMO_READ_KEY",
    "TALLY_DEMO_ADMIN_KEY",
    "TALLY_LOG",
    "TALLY_DATA",
    "TALLY_KAFKA_URI",
    "TALLY_SCYLLA_URI",
    "TALLY_HDFS_URI",
    "TALLY_S3_ENDPOINT",
    "TALLY_S3_MASTER",
    "TALLY_REQUIRE_BACKENDS",
    "TALLY_CHROMIUM",
    "TALLY_PYTHON",
    "TALLY_CLUSTER_EVENTS",
    "TALLY_TESTBED_CACHE",
    "TALLY_URL",
    "TALLY_WRITE_KEY",
];

/// A warning for each `TALLY_*` variable in `env` that Tally does not read (a misspelled
/// setting is otherwise ignored without a word), with the closest setting's name.
pub fn unknown_variables(env: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    let settings = setting_variables();
    env.into_iter()
        .map(|(var, _)| var)
        .filter(|var| var.starts_with(ENV_PREFIX))
        .filter(|var| !sets_one_of(var, &settings) && !OTHER_VARIABLES.contains(&var.as_str()))
        .map(|var| {
            let closest = (settings.iter().map(String::as_str))
                .chain(OTHER_VARIABLES)
                .map(|known| (strsim::damerau_levenshtein(&var, known), known))
                .min()
                .filter(|(distance, _)| *distance <= 3);
            match closest {
                Some((_, known)) => {
                    format!("{var} is not a Tally setting and is ignored; did you mean {known}?")
                }
                None => format!("{var} is not a Tally setting and is ignored"),
            }
        })
        .collect()
}

fn apply_env(
    table: &mut toml::Table,
    path: &str,
    env: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    for (key, value) in table.iter_mut() {
        let var = format!("{path}_{}", key.to_uppercase());
        match value {
            toml::Value::Table(inner) => apply_env(inner, &var, env)?,
            scalar => {
                if let Some(text) = env.get(&var) {
                    *scalar = parse_like(scalar, &var, text)?;
                }
            }
        }
    }
    Ok(())
}

fn parse_like(current: &toml::Value, var: &str, text: &str) -> Result<toml::Value, ConfigError> {
    let error = |expected| ConfigError::Env {
        var: var.to_owned(),
        value: text.to_owned(),
        expected,
    };
    Ok(match current {
        toml::Value::Integer(_) => {
            toml::Value::Integer(text.trim().parse().map_err(|_| error("an integer"))?)
        }
        toml::Value::Float(_) => {
            toml::Value::Float(text.trim().parse().map_err(|_| error("a number"))?)
        }
        toml::Value::Boolean(_) => {
            toml::Value::Boolean(text.trim().parse().map_err(|_| error("true or false"))?)
        }
        _ => toml::Value::String(text.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn default_config_round_trips_and_runs_embedded() {
        let config = Config::default();
        assert_eq!(config.ingest.listen, "127.0.0.1:8080");
        assert_eq!(config.data_dir, PathBuf::from("tally-data"));
        let text = toml::to_string(&config).unwrap();
        assert_eq!(Config::parse(&text, []).unwrap(), config);
    }

    #[test]
    fn environment_overrides_every_scalar_path() {
        let config = Config::parse(
            "[ingest]\nlisten = \"0.0.0.0:1\"\n",
            env(&[
                ("TALLY_INGEST_LISTEN", "127.0.0.1:9999"),
                ("TALLY_LOG_PARTITIONS", "16"),
                ("TALLY_DATA_DIR", "/tmp/x"),
                ("TALLY_DEMO_WRITE_KEY", "secret"),
                ("TALLY_SCYLLA_URI", "ignored: names no field"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(config.ingest.listen, "127.0.0.1:9999");
        assert_eq!(config.log.partitions, 16);
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.demo.write_key, "secret");
    }

    #[test]
    fn errors_name_the_variable_or_field() {
        let err = Config::parse("", env(&[("TALLY_LOG_PARTITIONS", "many")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable TALLY_LOG_PARTITIONS=\"many\" must be an integer"
        );
        let err = Config::parse("[log]\npartitons = 3\n", []).unwrap_err();
        assert!(err.to_string().contains("partitons"), "{err}");
        let err = Config::parse("[log]\nretention_hours = 24\n", []).unwrap_err();
        assert!(err.to_string().contains("speed.horizon_hours"), "{err}");
        let err = Config::parse("[speed]\nhorizon_hours = 24\n", []).unwrap_err();
        assert!(
            err.to_string().contains("ingest.max_lateness_secs"),
            "{err}"
        );
        let err = Config::parse("[log]\npartitions = 0\n", []).unwrap_err();
        assert!(err.to_string().contains("log.partitions"), "{err}");
        // An event over half a log record could be acknowledged by validation and then be
        // refused by the log: a 5xx for a size the client chose.
        let err = Config::parse(
            "[ingest]\nmax_request_bytes = 20000000\nmax_event_bytes = 9000000\n",
            [],
        )
        .unwrap_err();
        assert!(err.to_string().contains("one log record"), "{err}");
    }

    #[test]
    fn kafka_is_chosen_and_its_client_set_from_the_environment() {
        let config = Config::parse(
            "[log]\nkind = \"kafka\"\n[kafka.client]\n\"security.protocol\" = \"SASL_SSL\"\n",
            env(&[
                ("TALLY_KAFKA_BROKERS", "b1:9092,b2:9092"),
                ("TALLY_KAFKA_CLIENT_SASL_PASSWORD", "hunter2"),
            ]),
        )
        .unwrap();
        assert_eq!(config.log.kind, LogKind::Kafka);
        assert_eq!(config.kafka.brokers, "b1:9092,b2:9092");
        assert_eq!(config.kafka.client["security.protocol"], "SASL_SSL");
        assert_eq!(config.kafka.client["sasl.password"], "hunter2");
        let err = Config::parse(
            "[log]\nkind = \"kafka\"\n[kafka]\nretention_hours = 24\n",
            [],
        )
        .unwrap_err();
        assert!(err.to_string().contains("kafka.retention_hours"), "{err}");
        let err = Config::parse("[log]\nkind = \"zookeeper\"\n", []).unwrap_err();
        assert!(err.to_string().contains("kafka"), "{err}");
    }

    #[test]
    fn the_object_store_is_set_from_the_file_and_the_environment() {
        assert_eq!(Config::default().objects, ObjectsConfig::default());
        let config = Config::parse(
            "[objects]\nurl = \"s3://events/tally\"\n[objects.options]\naws_region = \"eu-west-1\"\n",
            env(&[
                ("TALLY_OBJECTS_URL", "s3://archive/prod"),
                ("TALLY_OBJECTS_OPTIONS_AWS_ENDPOINT", "http://127.0.0.1:9000"),
            ]),
        )
        .unwrap();
        assert_eq!(config.objects.url, "s3://archive/prod");
        assert_eq!(config.objects.options["aws_region"], "eu-west-1");
        assert_eq!(
            config.objects.options["aws_endpoint"],
            "http://127.0.0.1:9000"
        );
    }

    #[test]
    fn a_misspelled_variable_is_named_with_the_setting_it_resembles() {
        let warnings = unknown_variables(env(&[
            ("TALLY_INGEST_MAX_LATENES_SECS", "300"),
            ("TALLY_NOTHING_LIKE_ANY", "1"),
            ("TALLY_INGEST_LISTEN", "127.0.0.1:1"),
            ("TALLY_KAFKA_CLIENT_SASL_PASSWORD", "x"),
            ("TALLY_DEMO_WRITE_KEY", "k"),
            ("HOME", "/root"),
        ]));
        assert_eq!(
            warnings,
            [
                "TALLY_INGEST_MAX_LATENES_SECS is not a Tally setting and is ignored; did you mean TALLY_INGEST_MAX_LATENESS_SECS?",
                "TALLY_NOTHING_LIKE_ANY is not a Tally setting and is ignored",
            ]
        );
    }

    #[test]
    fn the_view_store_is_embedded_unless_a_url_is_set() {
        assert_eq!(Config::default().views.url, "");
        let config = Config::parse(
            "[views]\nurl = \"scylla://db1:9042/tally\"\n",
            env(&[("TALLY_VIEWS_URL", "scylla://db2:9042/tally")]),
        )
        .unwrap();
        assert_eq!(config.views.url, "scylla://db2:9042/tally");
    }

    #[test]
    fn setting_variables_are_the_fields_and_the_map_families() {
        for var in [
            "TALLY_INGEST_LISTEN",
            "TALLY_DATA_DIR",
            "TALLY_DEMO_WRITE_KEY",
            "TALLY_SPEED_PEERS",
            "TALLY_KAFKA_CLIENT_SASL_PASSWORD",
            "TALLY_OBJECTS_OPTIONS_AWS_ENDPOINT",
        ] {
            assert!(is_setting_variable(var), "{var}");
        }
        for var in [
            "TALLY_INGEST_LISTENS",
            "TALLY_SCYLLA_URI",
            "INGEST_LISTEN",
            "TALLY_SPEED",
        ] {
            assert!(!is_setting_variable(var), "{var}");
        }
    }

    #[test]
    fn a_speed_cluster_needs_kafka_a_shared_view_store_and_its_place_in_the_peers() {
        let cluster = [
            ("TALLY_SPEED_PEERS", "10.0.0.1:2101, 10.0.0.2:2101"),
            ("TALLY_SPEED_PROCESS_INDEX", "1"),
            ("TALLY_LOG_KIND", "kafka"),
            ("TALLY_VIEWS_URL", "scylla://db:9042/tally"),
        ];
        let config = Config::parse("", env(&cluster)).unwrap();
        assert_eq!(
            config.speed.peer_addresses(),
            ["10.0.0.1:2101", "10.0.0.2:2101"]
        );
        assert!(Config::default().speed.peer_addresses().is_empty());
        for (left_out, says) in [
            ("TALLY_LOG_KIND", "reads Kafka"),
            ("TALLY_VIEWS_URL", "shared view store"),
        ] {
            let vars: Vec<_> = cluster
                .iter()
                .filter(|(var, _)| *var != left_out)
                .copied()
                .collect();
            let err = Config::parse("", env(&vars)).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
        let mut outside = cluster;
        outside[1].1 = "2";
        let err = Config::parse("", env(&outside)).unwrap_err().to_string();
        assert!(
            err.contains("speed.process_index (2) must name one of the 2"),
            "{err}"
        );
    }

    #[test]
    fn tenants_and_keys_are_declared_in_the_file() {
        let config = Config::parse(
            r#"
            [tenant.acme.registry.tags.plan]
            type = "string"
            [tenant.acme.registry.event_types.signup]
            optional = ["plan"]
            [tenant.acme.registry.sources.web]
            event_types = ["*"]
            [[tenant.acme.view]]
            name = "signups"
            events = ["signup"]
            dimensions = ["plan"]
            measures = ["count"]
            granularity = "hour"
            [[api_key]]
            key = "0123456789abcdef0123456789abcdef"
            tenant = "acme"
            source = "web"
            scopes = ["write"]
            "#,
            [],
        )
        .unwrap();
        let keys = config
            .api_keys
            .iter()
            .map(|k| k.to_api_key().unwrap())
            .collect();
        let catalog = crate::Catalog::new(config.tenants, keys).unwrap();
        assert_eq!(
            catalog
                .key("0123456789abcdef0123456789abcdef", 0)
                .unwrap()
                .tenant,
            "acme"
        );
        assert_eq!(catalog.tenants["acme"].views[0].name, "signups");
    }
}
