//! Test support shared by the layers' tests (feature `testing`): random demo events with
//! resent copies, the plain reference computation of every view, the comparison of states
//! that the Lambda design promises, a Kafka-protocol [`Broker`], an [`S3Server`], a [`Link`] to
//! cut for outages, and the loud skip of tests whose server cannot run here ([`backend_uri`]).

use std::collections::{BTreeMap, HashMap};

use datasketches::common::SearchCriteria;
use datasketches::kll::{KllFloat, KllSketch};
use proptest::prelude::*;
use tally_model::registry::MAX_TAG_NUMBER;
use tally_model::state::MeasureState;
use tally_model::time::{HOUR_MS, MINUTE_MS};
use tally_model::{AggregateState, Catalog, Event, Granularity, Millis, TagValue};

use crate::log::Offset;
use crate::view_store::{ViewKey, ViewStore, ViewStoreError};

const USERS: u32 = 30;
const TYPES: [&str; 4] = ["page_view", "click", "purchase", "session_start"];
const OPERATING_SYSTEMS: [&str; 3] = ["ios", "android", "linux"];

/// Random demo-tenant events with event times over the three hours from `base`, received in
/// order after them, plus resent exact copies of some, received later still.
pub fn demo_events(base: Millis) -> impl Strategy<Value = Vec<Event>> {
    let event = (
        0..TYPES.len(),
        0u32..USERS,
        0i64..180,
        0..OPERATING_SYSTEMS.len(),
        1u32..5000,
        0u32..10_000,
    );
    (
        prop::collection::vec(event, 1..150),
        prop::collection::vec((any::<prop::sample::Index>(), 1i64..5000), 0..40),
    )
        .prop_map(move |(events, resends)| {
            let mut out: Vec<Event> = events
                .into_iter()
                .enumerate()
                .map(|(index, (kind, user, minute, os, latency, revenue))| {
                    let id = index as i64;
                    let event_type = TYPES[kind];
                    let mut tags = BTreeMap::from([
                        (
                            "os_type".to_owned(),
                            TagValue::String(OPERATING_SYSTEMS[os].into()),
                        ),
                        (
                            "latency_ms".to_owned(),
                            TagValue::Number(f64::from(latency) / 10.0),
                        ),
                    ]);
                    if event_type == "purchase" {
                        // A few at the edges of what ingest accepts, where an overflow or a
                        // rounding difference between the layers would show.
                        let revenue = match revenue % 50 {
                            0 => MAX_TAG_NUMBER,
                            1 => -MAX_TAG_NUMBER,
                            2 => 1e-6,
                            _ => f64::from(revenue) / 100.0,
                        };
                        tags.insert("revenue".into(), TagValue::Number(revenue));
                    }
                    Event {
                        event_id: format!("e{id}"),
                        event_type: event_type.into(),
                        ts: base + minute * MINUTE_MS + id,
                        tenant: "demo".into(),
                        user_id: format!("u{user}"),
                        tags,
                        received_at: base + 3 * HOUR_MS + id,
                        source: "demo-web".into(),
                    }
                })
                .collect();
            // Resends are exact copies of what the client sent, received later.
            for (pick, delay) in resends {
                let mut copy = out[pick.index(out.len())].clone();
                copy.received_at += delay;
                out.push(copy);
            }
            out
        })
}

/// One fixed sample of at least 100 events of [`demo_events`].
pub fn sample_demo_events(base: Millis) -> Vec<Event> {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut events = Vec::new();
    while events.len() < 100 {
        events = demo_events(base).new_tree(&mut runner).unwrap().current();
    }
    events
}

/// Each event once: the copy with the smallest `(received_at, partition, offset)` per
/// `(tenant, event_id, event hour)`, as both layers keep it.
pub fn deduplicated(logged: impl IntoIterator<Item = (u32, Offset, Event)>) -> Vec<Event> {
    type Identity = (String, String, Millis);
    type LogPosition = (Millis, u32, Offset);
    let mut kept: HashMap<Identity, (LogPosition, Event)> = HashMap::new();
    for (partition, offset, event) in logged {
        let position = (event.received_at, partition, offset);
        let hour = Granularity::Hour.bucket_start(event.ts);
        let id = (event.tenant.clone(), event.event_id.clone(), hour);
        if kept.get(&id).is_none_or(|(best, _)| position < *best) {
            kept.insert(id, (position, event));
        }
    }
    kept.into_values().map(|(_, event)| event).collect()
}

/// The plain computation of every view of `catalog` over logged events whose buckets fall in
/// `buckets`: each event once ([`deduplicated`]), folded into each view it feeds.
pub fn reference_states(
    catalog: &Catalog,
    logged: impl IntoIterator<Item = (u32, Offset, Event)>,
    buckets: std::ops::Range<Millis>,
) -> BTreeMap<ViewKey, AggregateState> {
    let mut expected = BTreeMap::new();
    for event in deduplicated(logged) {
        let Some(tenant) = catalog.tenants.get(&event.tenant) else {
            continue;
        };
        for view in tenant.views.iter().filter(|v| v.covers(&event.event_type)) {
            let bucket = view.bucket_of(event.ts);
            if !buckets.contains(&bucket) {
                continue;
            }
            let key = ViewKey {
                tenant: event.tenant.clone(),
                view: view.name.clone(),
                bucket,
                dimensions: view.dimension_values(&event),
            };
            view.accumulate(
                expected.entry(key).or_insert_with(|| view.empty_state()),
                &event,
            );
        }
    }
    expected
}

/// `states` keyed as the real-time view store keeps them: under each view's
/// [`stored_name`](tally_model::ViewSpec::stored_name) in `catalog`.
pub fn as_stored(
    catalog: &Catalog,
    states: impl IntoIterator<Item = (ViewKey, AggregateState)>,
) -> Vec<(ViewKey, AggregateState)> {
    states
        .into_iter()
        .map(|(mut key, state)| {
            let spec = catalog.tenants[&key.tenant]
                .views
                .iter()
                .find(|view| view.name == key.view)
                .expect("the state's view is in the catalog");
            key.view = spec.stored_name();
            (key, state)
        })
        .collect()
}

/// `states` read from the real-time view store, keyed by view name as
/// [`reference_states`] keys them.
pub fn as_named(
    states: impl IntoIterator<Item = (ViewKey, AggregateState)>,
) -> impl Iterator<Item = (ViewKey, AggregateState)> {
    states.into_iter().map(|(mut key, state)| {
        if let Some((name, _fingerprint)) = key.view.split_once('@') {
            key.view = name.to_owned();
        }
        (key, state)
    })
}

/// Asserts two sets of states agree: the same keys; count, sum, min and max exactly; `uniq`
/// by the HLL composite estimate (the registers are order-independent, the HIP estimate and a
/// list's order are not); `quantiles` by item count, min and max exactly, and quantiles exactly
/// while the sketch holds every item (beyond, KLL compaction flips random coins, so two
/// sketches of the same items agree only within the rank error).
pub fn assert_states_agree(
    got: &BTreeMap<ViewKey, AggregateState>,
    want: &BTreeMap<ViewKey, AggregateState>,
) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (key, want) in want {
        let got = &got[key];
        assert_eq!(got.count, want.count, "{key:?}");
        for (g, w) in got.measures.iter().zip(&want.measures) {
            match (g, w) {
                (MeasureState::Uniq(g), MeasureState::Uniq(w)) => {
                    assert_eq!(g.composite_estimate(), w.composite_estimate(), "{key:?}")
                }
                (MeasureState::Quantiles(g), MeasureState::Quantiles(w)) => {
                    assert_eq!(
                        (g.n(), g.min_item(), g.max_item()),
                        (w.n(), w.min_item(), w.max_item()),
                        "{key:?}"
                    );
                    // Below the first compaction a KLL sketch keeps every item: its quantiles
                    // are exact, whatever order the items came in.
                    if g.n() <= u64::from(tally_model::state::KLL_K) {
                        for rank in [0.1, 0.5, 0.9, 0.99] {
                            let quantile = |sketch: &KllSketch<KllFloat<f64>>| {
                                sketch
                                    .quantile(rank, SearchCriteria::Inclusive)
                                    .ok()
                                    .flatten()
                            };
                            assert_eq!(quantile(g), quantile(w), "{key:?} at rank {rank}");
                        }
                    }
                }
                (g, w) => assert_eq!(g, w, "{key:?}"),
            }
        }
    }
}

/// A Kafka-protocol broker (tansu) for the tests, on a free local port, in its own folder.
/// `TALLY_TANSU` names the binary (`.ci/run` builds it into `~/.cache/tally/tansu`).
pub struct Broker {
    /// `127.0.0.1:<port>`.
    pub address: String,
    dir: tempfile::TempDir,
    process: Option<std::process::Child>,
}

impl Broker {
    /// Starts a broker keeping topics in SQLite, so a restart keeps what it stored.
    pub fn start() -> Broker {
        let mut broker = Broker {
            address: free_local_address(),
            dir: tempfile::tempdir().expect("a folder for the broker"),
            process: None,
        };
        broker.restart();
        broker
    }

    /// Kills the broker (an outage); [`restart`](Self::restart) brings it back.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts the broker again on the same port and storage, and waits until it listens.
    pub fn restart(&mut self) {
        self.stop();
        let binary = tansu_binary();
        let url = format!("tcp://{}", self.address);
        let mut command = std::process::Command::new(&binary);
        command
            .current_dir(self.dir.path())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"]);
        let started = start_listening(command, &self.address, &self.dir.path().join("broker.log"))
            .unwrap_or_else(|err| {
                panic!(
                    "the Kafka-protocol broker {binary}: {err}; run `bash .ci/run` (it builds \
                     tansu into ~/.cache/tally/tansu) or set TALLY_TANSU"
                )
            });
        self.process = Some(started);
    }

    /// Creates `topic` with `partitions`.
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let status = std::process::Command::new(tansu_binary())
            .args([
                "topic",
                "create",
                "--broker",
                &format!("tcp://{}", self.address),
            ])
            .args(["--partitions", &partitions.to_string(), topic])
            .status()
            .expect("running tansu topic create");
        assert!(status.success(), "creating topic {topic}");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The tansu binary: `TALLY_TANSU`, or where `.ci/run` installs it.
/// An S3-compatible server for the tests: the bucket and prefix named by `TALLY_S3_URI` when
/// set (with the `AWS_*` variables for its endpoint and keys), else a `moto_server` (PyPI
/// `moto[server]`, which `.ci/run` installs) started on a free local port with one bucket.
/// Each value gets a prefix of its own, so tests sharing a bucket never see each other.
pub struct S3Server {
    /// `s3://bucket/prefix` for `object_store::open`.
    pub url: String,
    /// Settings reaching this server: endpoint, region, keys.
    pub options: BTreeMap<String, String>,
    process: Option<std::process::Child>,
    _dir: Option<tempfile::TempDir>,
}

impl S3Server {
    /// Connects to `TALLY_S3_URI` or starts a local server; panics saying what to install.
    pub fn start() -> S3Server {
        let unique = format!(
            "test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("a clock after 1970")
                .as_nanos()
        );
        if let Ok(uri) = std::env::var("TALLY_S3_URI") {
            return S3Server {
                url: format!("{}/{unique}", uri.trim_end_matches('/')),
                options: BTreeMap::new(),
                process: None,
                _dir: None,
            };
        }
        let address = free_local_address();
        let dir = tempfile::tempdir().expect("a folder for the S3 server");
        let binary = std::env::var("TALLY_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let (host, port) = address.split_once(':').expect("host:port");
        let mut command = std::process::Command::new(&binary);
        command.args(["-H", host, "-p", port]);
        let process = start_listening(command, &address, &dir.path().join("s3.log"))
            .unwrap_or_else(|err| {
                panic!(
                    "the S3 server {binary}: {err}; run `bash .ci/run` (it installs it with \
                     `pip install 'moto[server]'`), set TALLY_MOTO_SERVER, or point \
                     TALLY_S3_URI at a bucket"
                )
            });
        const BUCKET: &str = "tally-test";
        http_put(&address, &format!("/{BUCKET}")).expect("creating the test bucket");
        let options = [
            ("aws_endpoint", format!("http://{address}")),
            ("aws_allow_http", "true".to_owned()),
            ("aws_region", "us-east-1".to_owned()),
            ("aws_access_key_id", "tally".to_owned()),
            ("aws_secret_access_key", "tally-secret".to_owned()),
        ];
        S3Server {
            url: format!("s3://{BUCKET}/{unique}"),
            options: options.map(|(k, v)| (k.to_owned(), v)).into(),
            process: Some(process),
            _dir: Some(dir),
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

/// The URI in the variable `var` (`TALLY_<BACKEND>_URI`), naming a server this machine cannot
/// run (HDFS, ScyllaDB); `None` after telling the terminal, past the test harness's capture,
/// that `test` was skipped and how to run it, and after adding a line to the file
/// `TALLY_SKIP_LOG` names, if any, for a summary at the end of the run (`.ci/run` prints one).
///
/// A skip must never pass where the backend should be there: when `TALLY_REQUIRE_BACKENDS`
/// (comma-separated, or `all`) names the backend, a missing URI fails the test instead.
pub fn backend_uri(var: &str, test: &str, example: &str) -> Option<String> {
    use std::io::Write;
    if let Ok(uri) = std::env::var(var)
        && !uri.is_empty()
    {
        return Some(uri);
    }
    let backend = var
        .trim_start_matches("TALLY_")
        .trim_end_matches("_URI")
        .to_ascii_lowercase();
    let required = std::env::var("TALLY_REQUIRE_BACKENDS").unwrap_or_default();
    if required
        .split(',')
        .map(str::trim)
        .any(|name| name == backend || name == "all")
    {
        panic!(
            "{test} needs {backend}, which TALLY_REQUIRE_BACKENDS requires, but {var} is unset (e.g. {var}={example})"
        );
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {var} is unset; set it (e.g. {var}={example}) to run it"
    );
    if let Ok(log) = std::env::var("TALLY_SKIP_LOG")
        && let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
    {
        let _ = writeln!(file, "{backend}\t{test}\t{var} is unset");
    }
    None
}

/// A TCP link to a server that a test can cut and mend: the server stays up, the network
/// between fails (connections refused, open ones reset), as in an outage of a remote store.
pub struct Link {
    /// `127.0.0.1:<port>` to connect to instead of the server.
    pub address: String,
    target: String,
    state: std::sync::Arc<LinkState>,
}

#[derive(Default)]
struct LinkState {
    up: std::sync::atomic::AtomicBool,
    open: std::sync::Mutex<Vec<std::net::TcpStream>>,
}

impl Link {
    /// A link to `target` (`host:port`), up.
    pub fn to(target: &str) -> Link {
        let link = Link {
            address: free_local_address(),
            target: target.to_owned(),
            state: Default::default(),
        };
        link.mend();
        link
    }

    /// Refuses new connections and resets the open ones.
    pub fn cut(&self) {
        use std::sync::atomic::Ordering;
        self.state.up.store(false, Ordering::SeqCst);
        // Wake the accept loop so it drops the listener.
        let _ = std::net::TcpStream::connect(&self.address);
        let mut open = self.state.open.lock().unwrap_or_else(|p| p.into_inner());
        for stream in open.drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Accepts and forwards connections again, on the same address.
    pub fn mend(&self) {
        use std::sync::atomic::Ordering;
        let listener = loop {
            match std::net::TcpListener::bind(&self.address) {
                Ok(listener) => break listener,
                // The previous accept loop may still hold the port for a moment.
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        };
        self.state.up.store(true, Ordering::SeqCst);
        let (state, target) = (self.state.clone(), self.target.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if !state.up.load(Ordering::SeqCst) {
                    return;
                }
                let (Ok(client), Ok(server)) = (client, std::net::TcpStream::connect(&target))
                else {
                    continue;
                };
                let mut open = state.open.lock().unwrap_or_else(|p| p.into_inner());
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
                open.extend([client, server]);
            }
        });
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.cut();
    }
}

/// `127.0.0.1:<a port free just now>`.
pub fn free_local_address() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    format!("127.0.0.1:{port}")
}

/// Spawns `command` with its output in `log` and waits up to 30 s for `address` to accept
/// connections.
fn start_listening(
    mut command: std::process::Command,
    address: &str,
    log: &std::path::Path,
) -> Result<std::process::Child, String> {
    let file =
        std::fs::File::create(log).map_err(|err| format!("creating {}: {err}", log.display()))?;
    let mut process = command
        .stdout(file.try_clone().map_err(|err| err.to_string())?)
        .stderr(file)
        .spawn()
        .map_err(|err| format!("starting it: {err}"))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(address).is_err() {
        if std::time::Instant::now() > deadline || matches!(process.try_wait(), Ok(Some(_))) {
            let _ = process.kill();
            return Err(format!(
                "it did not listen on {address} within 30 s; see {}",
                log.display()
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(process)
}

/// A bodiless `PUT path` over plain HTTP; `Err` unless the answer is 200.
fn http_put(address: &str, path: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).map_err(|err| err.to_string())?;
    write!(
        stream,
        "PUT {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|err| err.to_string())?;
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    match answer.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        _ => Err(format!("PUT {path} answered {answer:?}")),
    }
}

fn tansu_binary() -> String {
    std::env::var("TALLY_TANSU").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/tally/tansu/bin/tansu")
    })
}

/// Which call of a [`ViewStore`] a [`HookedViewStore`] is about to forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreCall {
    /// `upsert`.
    Upsert,
    /// `scan`.
    Scan,
    /// `delete_before`.
    DeleteBefore,
    /// `generation`.
    Generation,
    /// `record_progress` or `progress`.
    Progress,
}

/// What a [`HookedViewStore`] runs before each call: an error ends the call with it.
pub type StoreHook =
    Box<dyn Fn(StoreCall, &dyn ViewStore) -> Result<(), ViewStoreError> + Send + Sync>;

/// A real view store behind a hook that runs before each call, for tests that put an outage
/// or an interleaving of the layers at a chosen call.
pub struct HookedViewStore {
    /// The store the calls go to.
    pub inner: std::sync::Arc<dyn ViewStore>,
    /// Run before each call.
    pub hook: StoreHook,
}

impl ViewStore for HookedViewStore {
    fn upsert(&self, rows: &[(ViewKey, AggregateState)]) -> Result<(), ViewStoreError> {
        (self.hook)(StoreCall::Upsert, self.inner.as_ref())?;
        self.inner.upsert(rows)
    }

    fn scan(
        &self,
        tenant: &str,
        view: &str,
        buckets: std::ops::Range<Millis>,
    ) -> Result<Vec<(ViewKey, AggregateState)>, ViewStoreError> {
        (self.hook)(StoreCall::Scan, self.inner.as_ref())?;
        self.inner.scan(tenant, view, buckets)
    }

    fn delete_before(
        &self,
        tenant: &str,
        view: &str,
        bucket: Millis,
    ) -> Result<u64, ViewStoreError> {
        (self.hook)(StoreCall::DeleteBefore, self.inner.as_ref())?;
        self.inner.delete_before(tenant, view, bucket)
    }

    fn generation(&self, tenant: &str, view: &str) -> Result<Option<u64>, ViewStoreError> {
        (self.hook)(StoreCall::Generation, self.inner.as_ref())?;
        self.inner.generation(tenant, view)
    }

    fn record_progress(&self, writer: &str, progress: &[u8]) -> Result<(), ViewStoreError> {
        (self.hook)(StoreCall::Progress, self.inner.as_ref())?;
        self.inner.record_progress(writer, progress)
    }

    fn progress(&self, writer: &str) -> Result<Option<Vec<u8>>, ViewStoreError> {
        (self.hook)(StoreCall::Progress, self.inner.as_ref())?;
        self.inner.progress(writer)
    }
}
