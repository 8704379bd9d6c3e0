//! `tally up`, `tally ingest` and `tally speed`: open the embedded stores, build the catalog,
//! start the layers the mode runs, and serve them with health and metrics on one port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use prometheus_client::registry::Registry;
use tally_batch_layer::telemetry::BatchMetrics;
use tally_connectors::batch_views::BatchViews;
use tally_connectors::catalog::{CatalogHandle, CatalogStore};
use tally_connectors::log::{EventLog, Spool, SpoolOptions, kafka};
use tally_connectors::rate_limit::{CallerLimits, ConnectionCount, RateLimitMetrics};
use tally_connectors::view_store::{Access, ViewStore};
use tally_ingest::forwarder::{Forwarder, ForwarderMetrics};
use tally_ingest::{Collector, IngestMetrics};
use tally_model::{Config, LogKind};
use tally_serving::raw::RawEvents;
use tally_serving::search::SearchIndex;
use tally_serving::search::indexer::SearchIndexer;
use tally_serving::{Serving, ServingMetrics};
use tally_speed_layer::{SpeedHandle, SpeedLayer, SpeedMetrics};

use crate::batch::BatchServices;
use crate::catalog::{self, DemoKeys};
use crate::guard;
use crate::operations::{Services, openapi_document, operations_routes};
use crate::settings::{self, Stream};
use crate::settings::{ServeArgs, SpeedArgs};

/// Which services to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every layer that exists, in one process.
    Up,
    /// The collector alone.
    Ingest,
    /// The speed layer alone, following the spool of a collector running beside it.
    Speed,
    /// The query API alone, reading the stores the other layers write.
    Serve,
}

impl Mode {
    fn runs_collector(self) -> bool {
        matches!(self, Mode::Up | Mode::Ingest)
    }

    fn runs_speed_layer(self) -> bool {
        matches!(self, Mode::Up | Mode::Speed)
    }

    fn runs_serving(self) -> bool {
        matches!(self, Mode::Up | Mode::Serve)
    }
}

/// Decoded batch-view objects serving keeps in memory.
const SERVING_CACHE_BYTES: usize = 512 << 20;
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);

/// Runs until SIGINT or SIGTERM.
pub fn run(args: ServeArgs, mode: Mode) -> anyhow::Result<()> {
    run_configured(settings::load_for_serving(&args)?, mode)
}

/// Runs `tally speed`, alone or as one process of a speed cluster, until SIGINT or SIGTERM,
/// or until the cluster loses a peer.
pub fn run_speed(args: SpeedArgs) -> anyhow::Result<()> {
    run_configured(settings::load_for_speed(&args)?, Mode::Speed)
}

fn run_configured(config: Config, mode: Mode) -> anyhow::Result<()> {
    if mode != Mode::Speed && !config.speed.peer_addresses().is_empty() {
        anyhow::bail!(
            "speed.peers names a speed cluster, which runs as `tally speed` processes; this command runs one process: leave speed.peers empty"
        );
    }
    serve(config.clone(), mode, |address, _, demo_keys| {
        announce(mode, &config, &address.to_string(), demo_keys)
    })?;
    match mode.runs_collector() {
        true => println!(
            "tally stopped; every acknowledged event is in {}",
            config.data_dir.join("log").display()
        ),
        false => println!("tally stopped"),
    }
    Ok(())
}

/// Serves until stopped; `on_listening` is told the bound address, a handle to stop the
/// server, and the demo keys if the demo tenant was created.
pub fn serve(
    config: Config,
    mode: Mode,
    on_listening: impl FnOnce(SocketAddr, ServerHandle, Option<&DemoKeys>),
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let (catalog_handle, catalog_store, demo_keys) = catalog::load(&config)?;
    let mut registry = Registry::default();
    let collector = match mode.runs_collector() {
        true => Some(CollectorPart::start(
            &config,
            &catalog_handle,
            &mut registry,
        )?),
        false => None,
    };
    let logs = LayerLogs {
        config: &config,
        spools: collector.as_ref().map(|part| &part.logs),
    };
    let speed_views = match mode {
        Mode::Up | Mode::Speed => Some(settings::view_store(
            &config,
            Access::ReadWrite,
            "is another `tally up` or `tally speed` running on it?",
        )?),
        Mode::Serve => Some(settings::view_store(
            &config,
            Access::ReadOnly,
            "start `tally speed` (or `tally up`) first",
        )?),
        Mode::Ingest => None,
    };
    let (serving, search_indexer) = match (mode.runs_serving(), &speed_views) {
        (true, Some(speed_views)) => {
            let (serving, indexer) = start_serving(
                &config,
                (&catalog_handle, &catalog_store),
                speed_views.clone(),
                &logs,
                &mut registry,
            )?;
            (Some(serving), indexer)
        }
        _ => (None, None),
    };
    // The speed layer, and the batch views whose published horizons it follows.
    let (speed, horizon_views) = match (mode.runs_speed_layer(), speed_views) {
        (true, Some(speed_views)) => {
            let (speed, views) = start_speed_layer(
                &config,
                catalog_handle.clone(),
                speed_views,
                &logs,
                &mut registry,
            )?;
            (Some(speed), Some(views))
        }
        _ => (None, None),
    };
    // `tally up` archives both streams and recomputes on a schedule, in the background.
    let (batch, batch_metrics) = match mode {
        Mode::Up => {
            let events = logs
                .open(Stream::Events)?
                .context("the archiver reads the events")?;
            let rejected = logs
                .open(Stream::Rejected)?
                .context("the archiver reads the rejected events")?;
            let metrics = BatchMetrics::register(&mut registry);
            let services = BatchServices::start(
                &config,
                catalog_handle.clone(),
                events,
                rejected,
                metrics.clone(),
            )?;
            (Some(services), Some(metrics))
        }
        _ => (None, None),
    };
    let (collector, spools, forwarders) = match collector {
        Some(part) => (Some(part.collector), part.spools, part.forwarders),
        None => (None, Vec::new(), Vec::new()),
    };
    let caller_limits = web::Data::new(CallerLimits::new(
        &config.limits,
        RateLimitMetrics::register(&mut registry),
    ));
    let connections = ConnectionCount::new(config.limits.connections_per_address);
    let services = web::Data::new(Services {
        registry,
        collector: collector.clone(),
        forwarders: forwarders.iter().map(Forwarder::status).collect(),
        speed: speed.clone(),
        batch: batch_metrics,
        search: search_indexer.as_ref().map(SearchIndexer::status),
        raw_reads: serving.as_ref().map(|serving| serving.raw().log_reach()),
        openapi: openapi_document(mode.runs_collector(), mode.runs_serving()),
    });
    let listen = match mode {
        Mode::Up | Mode::Ingest | Mode::Serve => &config.ingest.listen,
        Mode::Speed => &config.speed.listen,
    };
    let following = horizon_views.zip(speed.clone());
    let cluster_member = speed
        .clone()
        .filter(|_| !config.speed.peer_addresses().is_empty());
    // Why the process must stop, when something other than a signal stops it.
    let stopped_by: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let stop_reason = stopped_by.clone();
    // The speed layer replays the topic from its horizon: say so if it keeps less.
    let retention_check =
        (config.log.kind == LogKind::Kafka && mode.runs_speed_layer()).then(|| config.clone());
    let served = actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(move || {
            let app = App::new()
                .app_data(services.clone())
                .app_data(caller_limits.clone())
                .wrap(actix_web::middleware::from_fn(guard::limit_callers))
                .wrap(actix_web::middleware::from_fn(guard::head_as_get))
                .wrap(actix_web::middleware::from_fn(guard::close_unread_bodies))
                .configure(operations_routes);
            let app = match &collector {
                Some(collector) => app.configure(Collector::configure(collector.clone())),
                None => app,
            };
            let app = match &serving {
                Some(serving) => app.configure(Serving::configure(serving.clone())),
                None => app,
            };
            app.default_service(web::route().to(guard::no_such_route))
        });
        let workers = match config.ingest.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            workers => workers,
        };
        let server = server
            .on_connect(move |connection, data| {
                guard::count_connection(&connections, connection, data)
            })
            .workers(workers)
            .max_connections(guard::connections_per_worker(workers))
            .client_request_timeout(guard::REQUEST_HEAD_TIMEOUT);
        let server = server
            .bind(listen)
            .with_context(|| format!("listening on {listen} (set --listen)"))?;
        let address = server
            .addrs()
            .first()
            .copied()
            .context("the server bound no address")?;
        let server = server.run();
        on_listening(address, server.handle(), demo_keys.as_ref());
        let cluster_watch = cluster_member.map(|speed| {
            actix_web::rt::spawn(leave_a_broken_cluster(speed, server.handle(), stop_reason))
        });
        let retention = actix_web::rt::spawn(enforce_retention(spools));
        let forwarding = forwarders
            .into_iter()
            .map(|forwarder| {
                let (stop, stopped) = std::sync::mpsc::channel();
                std::thread::Builder::new()
                    .name("tally-forwarder".into())
                    .spawn(move || forwarder.run(stopped))
                    .map(|thread| (stop, thread))
            })
            .collect::<Result<Vec<_>, _>>()
            .context("starting the forwarder threads")?;
        if let Some(config) = retention_check {
            actix_web::rt::spawn(warn_on_short_retention(config));
        }
        let catalog_changes = actix_web::rt::spawn(catalog::follow(catalog_store, catalog_handle));
        let horizon = following
            .map(|(views, speed)| actix_web::rt::spawn(speed.follow_batch_horizons(views)));
        server.await.context("running the HTTP server")?;
        for (stop, thread) in forwarding {
            drop(stop);
            if thread.join().is_err() {
                anyhow::bail!("the Kafka forwarder panicked");
            }
        }
        retention.abort();
        catalog_changes.abort();
        if let Some(watch) = cluster_watch {
            watch.abort();
        }
        if let Some(horizon) = horizon {
            horizon.abort();
        }
        anyhow::Ok(())
    });
    let stopped_by = stopped_by
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    if let Some(reason) = stopped_by {
        // The workers cannot finish their dataflow without the lost peer, and joining them
        // would wait forever: the process exits with them still running.
        std::mem::forget(speed);
        anyhow::bail!(reason);
    }
    if let Some(indexer) = search_indexer {
        indexer.stop();
    }
    if let Some(batch) = batch {
        batch.stop().context("stopping the batch services")?;
    }
    if let Some(speed) = speed {
        speed.stop().context("stopping the speed layer")?;
    }
    served
}

/// Stops the server when this process's speed cluster breaks (a peer was lost), noting why
/// in `reason`: timely clusters are static, so the process exits for a supervisor to restart
/// the whole cluster.
async fn leave_a_broken_cluster(
    speed: Arc<SpeedHandle>,
    server: actix_web::dev::ServerHandle,
    reason: Arc<std::sync::Mutex<Option<String>>>,
) {
    let mut ticks = tokio::time::interval(Duration::from_millis(200));
    loop {
        ticks.tick().await;
        if let Some(failure) = speed.cluster_failure() {
            tracing::error!(%failure, "leaving the speed cluster");
            *reason
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(failure);
            server.stop(false).await;
            return;
        }
    }
}

/// The events and the rejected stream, as the layers of this process read them.
type StreamLogs = (Arc<dyn EventLog>, Arc<dyn EventLog>);

/// The collector of this process: its spools, and their forwarders when the log is Kafka.
struct CollectorPart {
    collector: web::Data<Collector>,
    /// The events and rejected spools, as the layers of this process read them.
    logs: StreamLogs,
    spools: Vec<Arc<Spool>>,
    forwarders: Vec<Forwarder>,
}

impl CollectorPart {
    fn start(
        config: &Config,
        catalog: &CatalogHandle,
        registry: &mut Registry,
    ) -> anyhow::Result<CollectorPart> {
        let metrics = IngestMetrics::register(registry);
        let open_spool = |stream, partitions| {
            let options = SpoolOptions {
                partitions,
                on_fsync: Some(metrics.fsync_observer()),
                ..SpoolOptions::from_config(&config.log)
            };
            let dir = settings::spool_dir(&config.data_dir, stream);
            Spool::open(&dir, options)
                .map(Arc::new)
                .with_context(|| format!("opening the {} spool", Stream::name(stream)))
        };
        let events = open_spool(Stream::Events, config.log.partitions)?;
        let rejected = open_spool(Stream::Rejected, config.log.rejected_partitions)?;
        let mut forwarders = Vec::new();
        if config.log.kind == LogKind::Kafka {
            let client = kafka::client_config(&config.kafka);
            let metrics = ForwarderMetrics::register(registry);
            for (stream, spool) in [(Stream::Events, &events), (Stream::Rejected, &rejected)] {
                let topic = stream.topic(config);
                let forwarder =
                    Forwarder::new(spool.clone(), &client, topic, &metrics, stream.name())
                        .context("starting the Kafka forwarder")?;
                forwarders.push(forwarder);
            }
        }
        let collector = Collector::new(
            catalog.clone(),
            events.clone(),
            rejected.clone(),
            config.ingest.clone(),
            metrics,
        );
        Ok(CollectorPart {
            collector: web::Data::new(collector),
            logs: (events.clone(), rejected.clone()),
            spools: vec![events, rejected],
            forwarders,
        })
    }
}

/// What the speed layer, the archiver and raw search read: the collector's spools, a
/// read-only follower of the events spool when no collector runs here, or each its own
/// reader of the Kafka topics.
struct LayerLogs<'a> {
    config: &'a Config,
    spools: Option<&'a StreamLogs>,
}

impl LayerLogs<'_> {
    fn open(&self, stream: Stream) -> anyhow::Result<Option<Arc<dyn EventLog>>> {
        let kafka = self.config.log.kind == LogKind::Kafka;
        Ok(match (kafka, self.spools, stream) {
            (true, _, stream) => Some(settings::kafka_log(self.config, stream)?),
            (false, Some((events, _)), Stream::Events) => Some(events.clone()),
            (false, Some((_, rejected)), Stream::Rejected) => Some(rejected.clone()),
            (false, None, Stream::Events) => {
                let dir = settings::spool_dir(&self.config.data_dir, Stream::Events);
                let events = Spool::open_read_only(&dir).with_context(|| {
                    format!(
                        "following the events spool in {}; start `tally ingest` first",
                        dir.display()
                    )
                })?;
                Some(Arc::new(events))
            }
            (false, None, Stream::Rejected) => None,
        })
    }
}

/// Serving over the view store, the batch views and the raw events, and the indexer of its
/// full-text search index (in `<data_dir>/search`) unless `serving.search_days` is 0.
fn start_serving(
    config: &Config,
    (catalog, governance): (&CatalogHandle, &CatalogStore),
    speed_views: Arc<dyn ViewStore>,
    logs: &LayerLogs<'_>,
    registry: &mut Registry,
) -> anyhow::Result<(web::Data<Serving>, Option<SearchIndexer>)> {
    let objects = settings::objects(config)?;
    let events = logs.open(Stream::Events)?;
    let raw = RawEvents::new(
        objects.clone(),
        events.clone(),
        logs.open(Stream::Rejected)?,
    );
    let serving = Serving::new(
        catalog.clone(),
        Some(governance.clone()),
        speed_views,
        BatchViews::with_cache(objects, SERVING_CACHE_BYTES),
        raw.clone(),
        ServingMetrics::register(registry),
        config.serving.clone(),
    );
    let (serving, indexer) = match (config.serving.search_days, events) {
        (0, _) | (_, None) => (serving, None),
        (days, Some(events)) => {
            let dir = config.data_dir.join("search");
            let window = i64::from(days).saturating_mul(tally_model::time::DAY_MS);
            let (index, positions) = SearchIndex::open(&dir, window).with_context(|| {
                format!("opening the search index in {} (is another tally serve or tally up using this data directory?)", dir.display())
            })?;
            let index = Arc::new(index);
            registry.register(
                "tally_search_indexed_events",
                "Events the full-text search index took in since start",
                index.indexed(),
            );
            let indexer =
                SearchIndexer::start(index.clone(), positions, (events, raw), catalog.clone())
                    .context("starting the search indexer")?;
            registry.register(
                "tally_search_lag_records",
                "Log records the full-text search index has not taken in yet",
                indexer.status().lag(),
            );
            (serving.with_search(index, indexer.status()), Some(indexer))
        }
    };
    Ok((web::Data::new(serving), indexer))
}

/// The speed layer, from the published batch horizon if there is one, and the batch views it
/// read that horizon from (to follow the next ones).
fn start_speed_layer(
    config: &Config,
    catalog: CatalogHandle,
    speed_views: Arc<dyn ViewStore>,
    logs: &LayerLogs<'_>,
    registry: &mut Registry,
) -> anyhow::Result<(Arc<SpeedHandle>, BatchViews)> {
    let views = BatchViews::new(settings::objects(config)?);
    let published_horizon = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime to read the manifest")?
        .block_on(tally_speed_layer::published_horizon(&views))
        .context("reading the batch manifest")?;
    let layer = SpeedLayer {
        log: logs
            .open(Stream::Events)?
            .context("the speed layer reads the events log")?,
        store: speed_views,
        catalog,
        config: config.speed.clone(),
        metrics: SpeedMetrics::register(registry),
        max_event_lead: Duration::from_secs(config.ingest.max_future_secs),
        published_horizon,
    };
    let speed = Arc::new(layer.start().context("starting the speed layer")?);
    Ok((speed, views))
}

fn announce(mode: Mode, config: &Config, address: &str, demo: Option<&DemoKeys>) {
    let what = match mode {
        Mode::Up => "tally is up: every layer in one process, embedded",
        Mode::Ingest => "tally ingest is up: the collector alone",
        Mode::Speed if config.speed.peer_addresses().is_empty() => {
            "tally speed is up: the speed layer alone"
        }
        Mode::Speed => "tally speed is up: one process of a speed cluster, every peer connected",
        Mode::Serve => {
            "tally serve is up: the query API alone, over the stores in the data directory"
        }
    };
    println!("{what}");
    println!("  listening on http://{address}");
    if mode.runs_collector() {
        println!("  collector   POST http://{address}/v1/events   (JSON array or NDJSON)");
        println!(
            "              GET  http://{address}/i?k=<write key>&e=<event type>&uid=<user>&<tag>=<value>"
        );
    }
    if mode.runs_speed_layer() {
        println!(
            "  speed layer real-time views in {}; read them with `tally views get --view events_by_type`",
            settings::views_location(config)
        );
    }
    if mode.runs_serving() {
        println!(
            "  query       GET  http://{address}/v1/query?view=events_by_type&granularity=minute&group_by=event_type   (read key)"
        );
        if config.serving.search_days > 0 {
            println!(
                "  search      GET  http://{address}/v1/events/search?q=os_type:ios&start_time=<unix s>&end_time=<unix s>   (read key; the last {} days, index in {})",
                config.serving.search_days,
                config.data_dir.join("search").display()
            );
        }
    }
    if mode == Mode::Up {
        println!(
            "  batch layer raw Parquet and batch views in {}; recompute every {} s (or now: `tally batch run`)",
            tally_connectors::object_store::local_dir(&config.data_dir).display(),
            config.batch.every_secs
        );
    }
    println!(
        "  health      http://{address}/healthz   http://{address}/readyz   http://{address}/metrics"
    );
    println!(
        "  data        {} (spool in {})",
        config.data_dir.display(),
        config.data_dir.join("log").display()
    );
    if config.log.kind == LogKind::Kafka {
        println!(
            "  event log   Kafka topics {} and {} on {}{}",
            config.kafka.events_topic,
            config.kafka.rejected_topic,
            config.kafka.brokers,
            match mode.runs_collector() {
                true => ", fed from the spool by the forwarder",
                false => "",
            }
        );
    }
    if let (Some(keys), true) = (demo, mode.runs_collector() || mode.runs_serving()) {
        println!(
            "  demo tenant write key {}   read key {}   admin key {}   (saved in {})",
            keys.write,
            keys.read,
            keys.admin,
            keys.saved_in.display()
        );
    }
    // Only a collector takes events: a serve replica answers POST /v1/events with 404.
    if let (Some(keys), true) = (demo, mode.runs_collector()) {
        println!(
            "  try         curl -X POST http://{address}/v1/events -H 'Authorization: Bearer {}' -H 'Content-Type: application/json' \\\n                -d '[{{\"event_type\":\"page_view\",\"user_id\":\"u1\",\"tags\":{{\"url\":\"/home\",\"os_type\":\"ios\"}}}}]'",
            keys.write
        );
    }
}

/// Warns, at start, when a topic does not keep records as long as a restarted speed layer
/// replays.
async fn warn_on_short_retention(config: Config) {
    for warning in crate::kafka::retention_warnings(&config).await {
        tracing::warn!("{warning}");
    }
}

async fn enforce_retention(spools: Vec<Arc<Spool>>) {
    let mut interval = actix_web::rt::time::interval(RETENTION_INTERVAL);
    loop {
        interval.tick().await;
        for spool in &spools {
            match spool.enforce_retention(SystemTime::now()) {
                Ok(0) => {}
                Ok(deleted) => {
                    tracing::info!(spool = %spool.dir().display(), deleted, "deleted expired segments")
                }
                Err(err) => tracing::warn!(error = %err, "retention sweep failed"),
            }
        }
    }
}
