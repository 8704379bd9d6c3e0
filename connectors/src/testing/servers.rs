//! The real servers of the test bed (`testbed/run`) as tests use them: Apache Kafka, Apache
//! Cassandra for the ScyllaDB store, HDFS (MiniDFSCluster) and SeaweedFS for S3, all on
//! loopback.
//!
//! A test asks for a server in one of two ways:
//! - shared: the one named by its variable (`TALLY_KAFKA_URI`, `TALLY_SCYLLA_URI`,
//!   `TALLY_HDFS_URI`, `TALLY_S3_ENDPOINT`, which `.ci/run` sets after `testbed/run up`), or
//!   else one this test process starts on first use and keeps until it exits. Each test then
//!   takes a topic, keyspace, folder or bucket of its own ([`unique_name`]).
//! - dedicated ([`ServerProcess`]): its own server, for a test that kills and restarts it.
//!
//! Where a server cannot run (no Java, no Maven), its tests are skipped loudly: one line on
//! the terminal per backend, naming what is missing. A skip never passes where the server
//! must be there: `TALLY_REQUIRE_BACKENDS` (comma-separated backends, or `all`) turns it into
//! a failure, and `.ci/run` sets `all`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a server may take to answer after it starts (Cassandra takes the longest: about
/// 10 s alone, a minute on two busy cores).
const START_TIMEOUT: Duration = Duration::from_secs(300);

/// The fixed keys of the test bed's S3 server (`testbed/s3-identities.json`).
pub const S3_ACCESS_KEY: &str = "tally-testbed";
/// See [`S3_ACCESS_KEY`].
pub const S3_SECRET_KEY: &str = "tally-testbed-secret-key";

/// A server of the test bed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// Apache Kafka in KRaft mode.
    Kafka,
    /// Apache Cassandra, which speaks ScyllaDB's CQL protocol.
    Cassandra,
    /// HDFS: a namenode and a datanode (MiniDFSCluster).
    Hdfs,
    /// SeaweedFS's S3 gateway.
    S3,
}

impl Server {
    const ALL: [Server; 4] = [Server::Kafka, Server::Cassandra, Server::Hdfs, Server::S3];

    /// Its name for `testbed/run`.
    fn name(self) -> &'static str {
        match self {
            Server::Kafka => "kafka",
            Server::Cassandra => "cassandra",
            Server::Hdfs => "hdfs",
            Server::S3 => "s3",
        }
    }

    /// The Tally backend it tests, as `TALLY_REQUIRE_BACKENDS` and the skip summary name it.
    fn backend(self) -> &'static str {
        match self {
            Server::Cassandra => "scylla",
            other => other.name(),
        }
    }

    /// The variable that points tests at a running one.
    fn variable(self) -> &'static str {
        match self {
            Server::Kafka => "TALLY_KAFKA_URI",
            Server::Cassandra => "TALLY_SCYLLA_URI",
            Server::Hdfs => "TALLY_HDFS_URI",
            Server::S3 => "TALLY_S3_ENDPOINT",
        }
    }

    /// How clients reach a server listening on `address`.
    fn client_uri(self, address: &str) -> String {
        match self {
            Server::Kafka => address.to_owned(),
            Server::Cassandra => format!("scylla://{address}"),
            Server::Hdfs => format!("hdfs://{address}"),
            Server::S3 => format!("http://{address}"),
        }
    }
}

/// One server of the test bed that this process started: `testbed/run serve` in a temporary
/// folder, on a free port. Dropping it kills it; so does the end of the thread that started
/// it (`setpriv --pdeathsig`), so no server outlives its test process.
pub struct ServerProcess {
    server: Server,
    port: u16,
    dir: tempfile::TempDir,
    process: Option<Child>,
}

impl ServerProcess {
    /// Starts `server` and waits until it answers.
    pub fn start(server: Server) -> Result<ServerProcess, String> {
        resolve_testbed()?;
        let mut started = ServerProcess {
            server,
            port: free_port_pair(),
            dir: tempfile::tempdir().map_err(|err| format!("a folder for {server:?}: {err}"))?,
            process: None,
        };
        started.restart()?;
        Ok(started)
    }

    /// `127.0.0.1:<port>`, where its clients connect.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// How clients reach it: brokers, `scylla://`, `hdfs://` or `http://`.
    pub fn uri(&self) -> String {
        self.server.client_uri(&self.address())
    }

    /// Kills it at once (SIGKILL): an outage, or a crash.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts it again on the same port and state, and waits until it answers.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        let (name, dir, port) = (self.server.name(), self.dir.path(), self.port.to_string());
        let log_path = dir.join("server.log");
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|err| format!("opening {}: {err}", log_path.display()))?;
        let mut process = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--"])
            .arg(testbed_script())
            .args(["serve", name])
            .arg(dir)
            .arg(&port)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|err| err.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|err| format!("starting {name} with testbed/run: {err}"))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if is_ready(self.server, dir, &port) {
                self.process = Some(process);
                return Ok(());
            }
            let exited = matches!(process.try_wait(), Ok(Some(_)));
            if exited || Instant::now() > deadline {
                let _ = process.kill();
                let _ = process.wait();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                let why = if exited {
                    "exited"
                } else {
                    "did not answer in time"
                };
                return Err(format!(
                    "{name} {why}; the end of {}:\n{}",
                    log_path.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The SeaweedFS master's address, for bucket administration (S3 only).
    fn s3_master(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("master.address"))
            .ok()
            .map(|address| address.trim().to_owned())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether the server answers, by the checks of `testbed/run ready`, made here rather than by
/// running the script: a test process that spawned a child every poll would lend each child,
/// between its fork and its exec, a copy of every file it holds, the spool's lock included,
/// and a spool reopened in that moment would find itself locked.
fn is_ready(server: Server, dir: &Path, port: &str) -> bool {
    use std::io::{Read, Write};
    let address = format!("127.0.0.1:{port}");
    match server {
        Server::Hdfs => dir.join("ready").is_file(),
        Server::Kafka | Server::Cassandra => std::net::TcpStream::connect(&address).is_ok(),
        // SeaweedFS's gateway listens before its volume server has registered: ready once an
        // unsigned request is refused for its signature.
        Server::S3 => {
            let Ok(mut stream) = std::net::TcpStream::connect(&address) else {
                return false;
            };
            let request = format!("GET / HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
            let mut answer = String::new();
            stream.write_all(request.as_bytes()).is_ok()
                && stream.read_to_string(&mut answer).is_ok()
                && answer.split_whitespace().nth(1) == Some("403")
        }
    }
}

fn testbed_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testbed/run")
}

/// Resolves the servers into the cache once per process (`testbed/run resolve`; seconds
/// when already done on this machine).
fn resolve_testbed() -> Result<(), String> {
    static RESOLVED: OnceLock<Result<(), String>> = OnceLock::new();
    RESOLVED
        .get_or_init(|| {
            let output = Command::new(testbed_script())
                .arg("resolve")
                .stdin(Stdio::null())
                .output()
                .map_err(|err| format!("running testbed/run resolve: {err}"))?;
            if output.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "testbed/run resolve failed: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ))
            }
        })
        .clone()
}

/// A running server shared by the tests of this process.
#[derive(Debug, Clone)]
struct Shared {
    /// How clients reach it.
    uri: String,
    /// SeaweedFS's master, for S3.
    s3_master: Option<String>,
}

/// The shared `server`: the one its variable names, else one started on first use, on a
/// thread that lives as long as the process (the server dies with it). `None` after a loud
/// skip of `test` when it cannot run here; a panic instead when the backend is required.
fn shared(server: Server, test: &str) -> Option<Shared> {
    static SHARED: [OnceLock<Result<Shared, String>>; 4] = [const { OnceLock::new() }; 4];
    if let Ok(uri) = std::env::var(server.variable())
        && !uri.is_empty()
    {
        let s3_master = std::env::var("TALLY_S3_MASTER").ok();
        return Some(Shared { uri, s3_master });
    }
    let slot = Server::ALL
        .iter()
        .position(|&s| s == server)
        .expect("every server has a slot");
    let outcome = SHARED[slot].get_or_init(|| {
        let (reply, answer) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("testbed-{}", server.name()))
            .spawn(move || match ServerProcess::start(server) {
                Ok(process) => {
                    let shared = Shared {
                        uri: process.uri(),
                        s3_master: process.s3_master(),
                    };
                    let _ = reply.send(Ok(shared));
                    // The server lives while this thread does: until the process exits.
                    loop {
                        std::thread::park();
                    }
                }
                Err(why) => {
                    let _ = reply.send(Err(why));
                }
            })
            .map_err(|err| format!("a thread to keep {}: {err}", server.name()))?;
        answer
            .recv()
            .map_err(|_| format!("starting {} failed", server.name()))?
    });
    match outcome {
        Ok(shared) => Some(shared.clone()),
        Err(why) => {
            skip(server, test, why);
            None
        }
    }
}

/// Skips `test`: tells the terminal, past the harness's capture, once per backend and
/// process, which server is missing and how to get it; panics instead where
/// `TALLY_REQUIRE_BACKENDS` names the backend.
fn skip(server: Server, test: &str, why: &str) {
    use std::io::Write;
    static TOLD: std::sync::Mutex<Vec<&str>> = std::sync::Mutex::new(Vec::new());
    let backend = server.backend();
    let required = std::env::var("TALLY_REQUIRE_BACKENDS").unwrap_or_default();
    if required
        .split(',')
        .map(str::trim)
        .any(|name| name == backend || name == "all")
    {
        panic!("{test} needs {backend}, which TALLY_REQUIRE_BACKENDS requires: {why}");
    }
    let mut told = TOLD.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !told.contains(&backend) {
        told.push(backend);
        let first_line = why.lines().next().unwrap_or_default();
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED the {backend} tests: no {} server ({first_line}); run `testbed/run \
             resolve`, or set {} to a running one",
            server.name(),
            server.variable()
        );
    }
}

/// A name no other test uses: `prefix`, this process, a count and the clock, in lowercase
/// letters, digits and `_` (fit for a topic, keyspace, folder or bucket).
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .subsec_nanos();
    let count = COUNT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}_{}_{count}_{nanos}", std::process::id())
}

/// An Apache Kafka broker for a test: the shared one, or one of its own to stop and restart.
pub struct Kafka {
    /// `127.0.0.1:<port>`, the bootstrap servers.
    pub address: String,
    own: Option<ServerProcess>,
}

impl Kafka {
    /// The broker shared by this process's tests; each test creates topics of its own names.
    pub fn shared(test: &str) -> Option<Kafka> {
        shared(Server::Kafka, test).map(|shared| Kafka {
            address: shared.uri,
            own: None,
        })
    }

    /// A broker of this test's own, which it may [`stop`](Self::stop) and
    /// [`restart`](Self::restart).
    pub fn dedicated(test: &str) -> Option<Kafka> {
        match ServerProcess::start(Server::Kafka) {
            Ok(process) => Some(Kafka {
                address: process.address(),
                own: Some(process),
            }),
            Err(why) => {
                skip(Server::Kafka, test, &why);
                None
            }
        }
    }

    /// Kills the broker (an outage).
    pub fn stop(&mut self) {
        self.own_process().kill();
    }

    /// Starts the broker again with what it stored, and waits until it listens.
    pub fn restart(&mut self) {
        self.own_process()
            .restart()
            .unwrap_or_else(|why| panic!("restarting Kafka: {why}"));
    }

    fn own_process(&mut self) -> &mut ServerProcess {
        self.own
            .as_mut()
            .expect("only a dedicated broker stops: use Kafka::dedicated")
    }

    /// Creates `topic` with `partitions`, one replica each.
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let config = tally_model::KafkaConfig {
            brokers: self.address.clone(),
            replication: 1,
            ..tally_model::KafkaConfig::default()
        };
        futures::executor::block_on(crate::log::kafka::create_topics(
            &config,
            &[(topic, partitions)],
        ))
        .unwrap_or_else(|err| panic!("creating topic {topic}: {err}"));
    }
}

/// Every real backend at once, each a test's own: a Kafka broker (for topics of the test's own
/// names), a ScyllaDB keyspace and an S3 bucket.
pub struct RealBackends {
    /// The shared broker.
    pub kafka: Kafka,
    /// `scylla://…/<keyspace>`, see [`scylla_uri`].
    pub views_url: String,
    /// A new bucket.
    pub bucket: S3Bucket,
}

impl RealBackends {
    /// All three, or `None` after a loud skip of `test` for each one missing.
    pub fn get(test: &str) -> Option<RealBackends> {
        let (kafka, views_url, bucket) = (
            Kafka::shared(test),
            scylla_uri(test),
            S3Bucket::create(test),
        );
        Some(RealBackends {
            kafka: kafka?,
            views_url: views_url?,
            bucket: bucket?,
        })
    }
}

/// `scylla://…/<keyspace>` on the shared Cassandra (or the ScyllaDB `TALLY_SCYLLA_URI`
/// names), with a keyspace no other test uses; `None` after a loud skip.
pub fn scylla_uri(test: &str) -> Option<String> {
    let shared = shared(Server::Cassandra, test)?;
    let nodes = shared.uri.trim_end_matches('/');
    let nodes = nodes
        .split_once("://")
        .map_or(nodes, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    Some(format!("scylla://{nodes}/{}", unique_name("tally_test")))
}

/// `hdfs://…/<folder>` on the shared HDFS, with a folder no other test uses; `None` after a
/// loud skip.
pub fn hdfs_uri(test: &str) -> Option<String> {
    let shared = shared(Server::Hdfs, test)?;
    let root = shared.uri.trim_end_matches('/');
    Some(format!("{root}/{}", unique_name("tally-test")))
}

/// A bucket of a test's own: on the test bed's SeaweedFS, or, when `TALLY_S3_URI` names
/// a bucket (with the `AWS_*` variables for its endpoint and keys), a prefix of its own there.
pub struct S3Bucket {
    /// `s3://bucket[/prefix]` for `object_store::open`.
    pub url: String,
    /// Settings reaching the server: endpoint, region, keys.
    pub options: BTreeMap<String, String>,
    /// The test bed's SeaweedFS master and the bucket's name, to delete it when dropped.
    created: Option<(String, String)>,
}

impl S3Bucket {
    /// A new, empty bucket; `None` after a loud skip of `test`.
    pub fn create(test: &str) -> Option<S3Bucket> {
        if let Ok(uri) = std::env::var("TALLY_S3_URI")
            && !uri.is_empty()
        {
            let url = format!("{}/{}", uri.trim_end_matches('/'), unique_name("test"));
            return Some(S3Bucket {
                url,
                options: BTreeMap::new(),
                created: None,
            });
        }
        let shared = shared(Server::S3, test)?;
        let bucket = unique_name("tally").replace('_', "-");
        let master = shared
            .s3_master
            .unwrap_or_else(|| panic!("TALLY_S3_MASTER must be set with TALLY_S3_ENDPOINT"));
        seaweedfs_shell(&master, &format!("s3.bucket.create -name {bucket}"))
            .unwrap_or_else(|why| panic!("creating bucket {bucket}: {why}"));
        let options = [
            ("aws_endpoint", shared.uri),
            ("aws_allow_http", "true".to_owned()),
            ("aws_region", "us-east-1".to_owned()),
            ("aws_access_key_id", S3_ACCESS_KEY.to_owned()),
            ("aws_secret_access_key", S3_SECRET_KEY.to_owned()),
        ];
        Some(S3Bucket {
            url: format!("s3://{bucket}"),
            options: options.map(|(k, v)| (k.to_owned(), v)).into(),
            created: Some((master, bucket)),
        })
    }
}

impl Drop for S3Bucket {
    /// Deletes the bucket, and with it the volumes SeaweedFS gave it (a few per bucket, of a
    /// limited number per server).
    fn drop(&mut self) {
        if let Some((master, bucket)) = self.created.take()
            && let Err(why) = seaweedfs_shell(&master, &format!("s3.bucket.delete -name {bucket}"))
        {
            tracing::warn!(%bucket, %why, "could not delete a test bucket");
        }
    }
}

/// Runs one command of SeaweedFS's admin shell (buckets are made and removed there: S3 itself
/// would need a signed request); an error holds what the shell said.
fn seaweedfs_shell(master: &str, command: &str) -> Result<(), String> {
    use std::io::Write;
    let mut shell = Command::new("weed")
        .args(["shell", &format!("-master={master}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("running weed shell: {err}"))?;
    let mut stdin = shell.stdin.take().expect("piped");
    writeln!(stdin, "{command}").map_err(|err| err.to_string())?;
    drop(stdin);
    let output = shell.wait_with_output().map_err(|err| err.to_string())?;
    let said = String::from_utf8_lossy(&output.stdout);
    let failed = !output.status.success() || said.to_lowercase().contains("error");
    match failed {
        false => Ok(()),
        true => Err(format!(
            "weed shell said: {said} {}",
            String::from_utf8_lossy(&output.stderr)
        )),
    }
}

/// A port P free just now on 127.0.0.1, with P + 10000 free too (SeaweedFS serves gRPC
/// there), below 55536 so that both exist.
fn free_port_pair() -> u16 {
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new();
    (0u64..)
        .map(|attempt| 20_000 + (random.hash_one(attempt) % 35_000) as u16)
        .find(|&port| {
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        })
        .expect("a free pair of ports")
}

/// `127.0.0.1:<a port free just now>`, for a server a test starts later (a speed cluster's
/// peer). The port is below Linux's ephemeral range (32768 and up), so that the client
/// sockets the tests open meanwhile cannot take it before the server binds it: a port the
/// kernel had handed out itself did, and the peer failed with "Address already in use".
pub fn free_local_address() -> String {
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new();
    let port = (0u64..)
        .map(|attempt| 20_000 + (random.hash_one(attempt) % 12_000) as u16)
        .find(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free port");
    format!("127.0.0.1:{port}")
}
