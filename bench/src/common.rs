//! What every benchmark shares: a scratch folder with an empty spool, the demo catalog and
//! the configuration, validated demo events, and the keys and limits a benchmark runs with.

use std::sync::Arc;

use anyhow::Context;
use tally::generator::{self, GenArgs, WireFormat};
use tally_connectors::log::{AppendRecord, EventLog, Spool, SpoolOptions};
use tally_model::registry::ValidationContext;
use tally_model::tenant::{DEMO_SOURCE, DEMO_TENANT};
use tally_model::{Catalog, Config, Event};

/// A collector on embedded defaults and `TALLY_*` overrides, with its data in `folder`,
/// listening on a free loopback port: its address, its server's handle, and the thread that
/// runs it until the handle stops it.
pub fn start_collector(
    folder: &std::path::Path,
) -> anyhow::Result<(
    std::net::SocketAddr,
    actix_web::dev::ServerHandle,
    std::thread::JoinHandle<anyhow::Result<()>>,
)> {
    // TALLY_* variables apply, so a setting can be compared by rerunning with it.
    let mut config =
        Config::parse("", std::env::vars()).context("in TALLY_* environment variables")?;
    config.data_dir = folder.join("data");
    config.ingest.listen = "127.0.0.1:0".to_owned();
    config.demo.write_key = BENCH_WRITE_KEY.to_owned();
    config.demo.read_key = BENCH_READ_KEY.to_owned();
    without_caller_limits(&mut config);
    let (bound, listening) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        tally::serve::serve(config, tally::serve::Mode::Ingest, |address, handle, _| {
            let _ = bound.send((address, handle));
        })
    });
    let (address, handle) = listening.recv().context("the collector did not start")?;
    Ok((address, handle, server))
}

/// Turns the per-caller rate limits off: a benchmark's one client on loopback makes every
/// request, so they would measure the limiter, not the layer.
pub fn without_caller_limits(config: &mut Config) {
    config.limits.requests_per_second_per_key = 0;
    config.limits.requests_per_second_per_address = 0;
    config.limits.auth_failures_per_minute_per_address = 0;
}

pub const BENCH_WRITE_KEY: &str = "tk_bench0write0key0000000000000000";

pub const BENCH_READ_KEY: &str = "tk_bench0read0key00000000000000000";

/// A fresh folder for one benchmark's data under `dir` (created if missing), removed when
/// dropped.
pub fn scratch_folder(dir: &std::path::Path) -> anyhow::Result<tempfile::TempDir> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    tempfile::Builder::new()
        .prefix("tally-bench-")
        .tempdir_in(dir)
        .with_context(|| format!("creating a scratch folder in {}", dir.display()))
}

/// A scratch folder with an empty spool, the demo catalog and the configuration from
/// `TALLY_*` variables: where the layer benchmarks start.
pub struct BenchLog {
    /// Removed when dropped.
    pub scratch: tempfile::TempDir,
    /// Defaults and `TALLY_*` overrides.
    pub config: Config,
    /// The demo tenant, with the bench keys.
    pub catalog: Arc<Catalog>,
    /// The empty spool.
    pub log: Arc<Spool>,
}

impl BenchLog {
    /// Creates it under `dir`.
    pub fn create(dir: &std::path::Path) -> anyhow::Result<BenchLog> {
        let scratch = scratch_folder(dir)?;
        let config =
            Config::parse("", std::env::vars()).context("in TALLY_* environment variables")?;
        let catalog = Arc::new(Catalog::demo(BENCH_WRITE_KEY, BENCH_READ_KEY));
        let log = Arc::new(Spool::open(
            &scratch.path().join("log"),
            SpoolOptions::from_config(&config.log),
        )?);
        Ok(BenchLog {
            scratch,
            config,
            catalog,
            log,
        })
    }

    /// Appends `events` to the spool, 100,000 at a time.
    pub fn append_all(
        &self,
        runtime: &tokio::runtime::Runtime,
        events: impl Iterator<Item = anyhow::Result<Event>>,
    ) -> anyhow::Result<()> {
        const CHUNK: usize = 100_000;
        let mut chunk = Vec::with_capacity(CHUNK);
        for event in events {
            chunk.push(AppendRecord::event(&event?, self.log.partitions()));
            if chunk.len() == CHUNK {
                runtime.block_on(
                    self.log
                        .append(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK))),
                )?;
            }
        }
        runtime.block_on(self.log.append(chunk))?;
        Ok(())
    }
}

/// `count` generated demo events (a `resent` share of them twice, 5 % late), validated as
/// ingest does, received now.
pub fn validated_events(
    catalog: &Catalog,
    count: u64,
    resent: f64,
) -> anyhow::Result<impl Iterator<Item = anyhow::Result<Event>> + '_> {
    let now = tally_model::time::now_millis();
    let registry = &catalog.tenants[DEMO_TENANT].registry;
    let context = ValidationContext {
        tenant: DEMO_TENANT,
        source: DEMO_SOURCE,
        received_at: now,
        max_future_ms: 86_400_000,
        max_age_ms: 86_400_000,
        tag_values_as_text: false,
    };
    let args = GenArgs {
        url: String::new(),
        key: String::new(),
        events: count,
        rate: None,
        batch: 1,
        users: 100_000,
        duplicates: resent,
        late: 0.05,
        invalid: 0.0,
        concurrency: 1,
        acked_ids: None,
        seed: Some(7),
        format: WireFormat::Tally,
        json: false,
    };
    Ok(generator::client_events(&args, now).map(move |json| {
        let submitted: serde_json::Value = serde_json::from_str(&json)?;
        registry
            .validate(&submitted, &context, || {
                unreachable!("generated events carry ids")
            })
            .map_err(|reasons| anyhow::anyhow!("generated an invalid event: {reasons:?}"))
    }))
}
