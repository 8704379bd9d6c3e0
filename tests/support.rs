//! Running the real `tally` binary: start `tally up` on a free port, talk HTTP to it, kill it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_connectors::log::EventLog;
use tally_connectors::view_store::EmbeddedViewStore;
use tally_model::config::SpeedConfig;
use tally_model::{Catalog, Millis};
use tally_speed_layer::{SpeedHandle, SpeedLayer, SpeedMetrics};

pub const WRITE_KEY: &str = "tk_test0write0key00000000000000000";
pub const READ_KEY: &str = "tk_test0read0key000000000000000000";
pub const ADMIN_KEY: &str = "tk_test0admin0key00000000000000000";

/// A `tally` command with quiet logs and the demo keys fixed.
pub fn tally() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
    command
        .env("TALLY_LOG", "warn")
        .env("TALLY_DEMO_WRITE_KEY", WRITE_KEY)
        .env("TALLY_DEMO_READ_KEY", READ_KEY)
        .env("TALLY_DEMO_ADMIN_KEY", ADMIN_KEY);
    command
}

/// Sets `command`'s object store, through its environment, to `url` with `options`.
pub fn keep_objects_at<'a>(
    command: &'a mut Command,
    url: &str,
    options: &std::collections::BTreeMap<String, String>,
) -> &'a mut Command {
    command.env("TALLY_OBJECTS_URL", url);
    for (setting, value) in options {
        let var = format!("TALLY_OBJECTS_OPTIONS_{}", setting.to_uppercase());
        command.env(var, value);
    }
    command
}

/// Sets `command`, through its environment, to log to Kafka at `brokers`, in the topic
/// `events` and its rejected stream `<events>.rejected`.
pub fn log_to_kafka<'a>(command: &'a mut Command, brokers: &str, events: &str) -> &'a mut Command {
    command
        .env("TALLY_LOG_KIND", "kafka")
        .env("TALLY_KAFKA_BROKERS", brokers)
        .env("TALLY_KAFKA_EVENTS_TOPIC", events)
        .env("TALLY_KAFKA_REJECTED_TOPIC", format!("{events}.rejected"))
}

/// Runs a `tally` command to completion.
pub fn run(command: &mut Command) -> Output {
    let output = command.output().expect("tally runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A running `tally up`.
pub struct Tally {
    child: Child,
    pub address: String,
}

impl Tally {
    /// CPU time the process's HTTP workers have spent (actix's `actix-rt|system…` threads,
    /// where requests are read and judged), from `/proc`, at its clock tick's resolution.
    /// Work a handler moves to a blocking thread is not in it.
    pub fn http_workers_cpu(&self) -> Duration {
        let tasks = format!("/proc/{}/task", self.child.id());
        let ticks: u64 = std::fs::read_dir(tasks)
            .expect("the process's threads")
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("stat")).ok())
            .filter_map(|stat| {
                // `pid (comm) state ...`: the command name may hold spaces, so split after it.
                let (comm, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
                let fields: Vec<&str> = rest.split(' ').collect();
                let (user, system) = (fields.get(11)?, fields.get(12)?);
                comm.starts_with("actix-rt")
                    .then(|| Some(user.parse::<u64>().ok()? + system.parse::<u64>().ok()?))?
            })
            .sum();
        // SAFETY: sysconf reads a constant of the system.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis(ticks * 1000 / per_second)
    }

    /// Starts `tally up` on a free port and waits until it listens.
    pub fn up(data_dir: &Path) -> Tally {
        Tally::up_with(data_dir, tally())
    }

    /// Starts `tally up` from a prepared command (for extra environment).
    pub fn up_with(data_dir: &Path, command: Command) -> Tally {
        Tally::up_with_args(data_dir, command, &[])
    }

    /// Starts `tally up <args>` from a prepared command.
    pub fn up_with_args(data_dir: &Path, mut command: Command, args: &[&str]) -> Tally {
        command
            .arg("up")
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir);
        Tally::start(command)
    }

    /// Starts a complete `tally` command that serves HTTP and says where, and waits until it
    /// listens.
    pub fn start(mut command: Command) -> Tally {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .expect("tally starts");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut address = None;
        let mut line = String::new();
        while stdout.read_line(&mut line).unwrap_or(0) > 0 {
            if let Some(rest) = line.trim().strip_prefix("listening on http://") {
                address = Some(rest.to_owned());
                break;
            }
            line.clear();
        }
        let address =
            address.unwrap_or_else(|| panic!("tally exited before listening: {:?}", child.wait()));
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        Tally { child, address }
    }

    /// Waits up to `limit` for the process to exit on its own; its exit status.
    pub fn wait_exit(mut self, limit: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < limit, "still running after {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9`.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL delivered");
        self.child.wait().unwrap();
    }

    /// An HTTP request; returns the status and body.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        http(&self.address, method, path, headers, body)
    }

    /// `tally gen` sending to this server with the demo write key; add the load's flags.
    pub fn generator(&self) -> Command {
        let mut command = tally();
        command.args([
            "gen",
            "--url",
            &format!("http://{}", self.address),
            "--key",
            WRITE_KEY,
        ]);
        command
    }

    /// The body of `GET /readyz`.
    pub fn readiness(&self) -> String {
        self.http("GET", "/readyz", &[], "").1
    }

    /// Events acknowledged so far, from `/metrics`.
    pub fn accepted(&self) -> u64 {
        self.metric("tally_ingest_events_accepted_total")
    }

    /// The value of the `/metrics` series `name` (with its labels, if any); 0 when absent.
    pub fn metric(&self, name: &str) -> u64 {
        let (_, metrics) = self.http("GET", "/metrics", &[], "");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    }

    /// Polls until `condition` holds, failing the test after `limit`.
    pub fn wait_for(&self, what: &str, limit: Duration, condition: impl Fn(&Tally) -> bool) {
        let started = Instant::now();
        while !condition(self) {
            assert!(
                started.elapsed() < limit,
                "gave up waiting for {what} after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 client: one request, `Connection: close`.
pub fn http(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    let reply = send_raw(address, request.as_bytes());
    assert_ne!(
        reply.status, 0,
        "an HTTP status line from {method} {path} at {address}, none after {:?} (a timeout at 30 s, else the connection closed)",
        reply.elapsed
    );
    (reply.status, reply.body)
}

/// What came back from [`send_raw`]: the status (0 without a status line), the head in
/// lower case, the body (chunk framing included) and the time taken.
pub struct RawReply {
    pub status: u16,
    pub head: String,
    pub body: String,
    pub elapsed: Duration,
}

/// Sends raw bytes and reads the answer until the server closes. A server that answers
/// before reading the whole body may close while the rest is still being written; that is
/// not an error here.
pub fn send_raw(address: &str, request: &[u8]) -> RawReply {
    let started = Instant::now();
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    RawReply {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
        elapsed,
    }
}

/// `failed requests N` from a `tally gen` report.
pub fn failed_requests(report: &[u8]) -> u64 {
    let report = String::from_utf8_lossy(report);
    report
        .split("failed requests ")
        .nth(1)
        .and_then(|rest| rest.split([' ', ',']).next()?.parse().ok())
        .unwrap_or_else(|| panic!("no failed-requests count in {report}"))
}

/// The ids `tally gen --acked-ids FILE` wrote, one per acknowledgement.
pub fn acked_ids(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Posts a JSON body of events with the demo write key.
pub fn post_events(tally: &Tally, body: &str) -> (u16, String) {
    let authorization = format!("Bearer {WRITE_KEY}");
    tally.http(
        "POST",
        "/v1/events",
        &[
            ("Authorization", &authorization),
            ("Content-Type", "application/json"),
        ],
        body,
    )
}

/// The event ids in the log, from `tally log tail`.
pub fn logged_event_ids(data_dir: &Path) -> Vec<String> {
    let output = run(tally().args(["log", "tail", "--data-dir"]).arg(data_dir));
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// `tally log stats --json`.
pub fn log_stats(data_dir: &Path) -> serde_json::Value {
    let output = run(tally()
        .args(["log", "stats", "--json", "--data-dir"])
        .arg(data_dir));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Starts a speed layer over `log` (two workers, 10 ms epochs) and returns once it reflects
/// every record logged so far.
pub fn speed_caught_up(
    log: Arc<dyn EventLog>,
    store: Arc<EmbeddedViewStore>,
    catalog: Arc<Catalog>,
    published_horizon: Option<Millis>,
) -> SpeedHandle {
    let speed = SpeedLayer {
        log: log.clone(),
        store,
        catalog: catalog.into(),
        config: SpeedConfig {
            workers: 2,
            epoch_ms: 10,
            ..SpeedConfig::default()
        },
        metrics: SpeedMetrics::register(&mut Default::default()),
        max_event_lead: Duration::from_secs(24 * 3600),
        published_horizon,
    }
    .start()
    .unwrap();
    let ends = log.stats().unwrap().next_offsets();
    let started = Instant::now();
    while speed.reflected_offsets() != ends {
        assert!(speed.failure().is_none(), "{:?}", speed.failure());
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "speed layer did not catch up"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    speed
}
