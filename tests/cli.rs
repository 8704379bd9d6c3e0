//! The CLI as a user meets it: help, config errors, demo keys, log stats.

use crate::support::{READ_KEY, Tally, log_stats, post_events, run, tally};

#[test]
fn help_names_every_command() {
    let output = run(tally().arg("--help"));
    let help = String::from_utf8(output.stdout).unwrap();
    for command in ["up", "ingest", "log", "gen", "views"] {
        assert!(help.contains(command), "{command} missing from:\n{help}");
    }
    let up_help = String::from_utf8(run(tally().args(["up", "--help"])).stdout).unwrap();
    assert!(
        up_help.contains("--data-dir")
            && up_help.contains("--listen")
            && up_help.contains("--config")
    );
}

#[test]
fn bad_configuration_names_the_setting_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let output = tally()
        .args(["up", "--data-dir"])
        .arg(dir.path())
        .env("TALLY_LOG_PARTITIONS", "many")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("TALLY_LOG_PARTITIONS=\"many\" must be an integer"),
        "{stderr}"
    );

    let config = dir.path().join("tally.toml");
    std::fs::write(&config, "[ingest]\nlisen = \"x\"\n").unwrap();
    let output = tally()
        .args(["up", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("lisen") && stderr.contains("tally.toml"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("lisen").count(), 1, "said once: {stderr}");
}

#[test]
fn a_batch_command_may_be_the_first_to_use_a_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("new");
    // Objects elsewhere, as on S3: nothing else makes the data directory.
    let output = run(tally()
        .env("TALLY_OBJECTS_URL", dir.path().join("objects"))
        .args(["batch", "run", "--data-dir"])
        .arg(&data_dir));
    assert!(output.status.success());
    assert!(data_dir.join("demo-keys.txt").is_file());
}

#[test]
fn the_spool_refuses_a_changed_partition_count() {
    let dir = tempfile::tempdir().unwrap();
    Tally::up(dir.path()).kill9();
    let output = tally()
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("TALLY_LOG_PARTITIONS", "9")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("set log.partitions = 2"),
        "{stderr}"
    );
}

#[test]
fn demo_keys_are_generated_once_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let without_keys = || {
        let mut command = tally();
        command
            .env_remove("TALLY_DEMO_WRITE_KEY")
            .env_remove("TALLY_DEMO_READ_KEY");
        command
    };
    Tally::up_with(dir.path(), without_keys()).kill9();
    let saved = std::fs::read_to_string(dir.path().join("demo-keys.txt")).unwrap();
    let write_key = saved
        .lines()
        .find_map(|l| l.strip_prefix("write_key="))
        .unwrap()
        .to_owned();
    assert!(
        write_key.starts_with("tk_") && write_key.len() > 20,
        "{saved}"
    );
    let server = Tally::up_with(dir.path(), without_keys());
    let authorization = format!("Bearer {write_key}");
    let (status, _) = server.http(
        "POST",
        "/v1/events",
        &[
            ("Authorization", &authorization),
            ("Content-Type", "application/json"),
        ],
        r#"[{"event_type":"click","user_id":"u"}]"#,
    );
    assert_eq!(status, 202, "the saved key still works after a restart");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("demo-keys.txt")).unwrap(),
        saved
    );
}

#[test]
fn log_stats_counts_events_and_rejects_and_health_answers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Tally::up(dir.path());
    let (status, body) = post_events(
        &server,
        r#"[{"event_type":"click","user_id":"a"},{"event_type":"click","user_id":"b"},{"event_type":"clik","user_id":"c"}]"#,
    );
    assert_eq!(status, 202, "{body}");
    assert!(body.contains("did you mean click?"), "{body}");
    let (status, _) = server.http(
        "POST",
        "/v1/events",
        &[
            ("Authorization", &format!("Bearer {READ_KEY}")),
            ("Content-Type", "application/json"),
        ],
        "[]",
    );
    assert_eq!(status, 403, "a read key may not send events");
    assert_eq!(server.http("GET", "/healthz", &[], "").0, 200);
    assert_eq!(server.http("GET", "/readyz", &[], "").0, 200);
    let stats = log_stats(dir.path());
    assert_eq!(stats["events"]["records"], 2);
    assert_eq!(stats["rejected"]["records"], 1);
    assert_eq!(stats["events"]["partitions"].as_array().unwrap().len(), 2);
    let (_, metrics) = server.http("GET", "/metrics", &[], "");
    assert!(
        metrics.contains("tally_ingest_events_rejected_total{reason=\"unknown_event_type\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tally_ingest_fsync_seconds_count"),
        "{metrics}"
    );
}

#[test]
fn a_spool_partition_that_cannot_write_makes_the_collector_unready() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = tally();
    command
        .env("TALLY_LOG_PARTITIONS", "1")
        .env("TALLY_LOG_SEGMENT_BYTES", "4096");
    let server = Tally::up_with(dir.path(), command);
    assert_eq!(server.http("GET", "/readyz", &[], "").0, 200);
    // Folders wherever the next segment could go: rolling to one fails, as a full disk
    // would fail it.
    let partition = dir.path().join("log/events/partition-0000");
    for offset in 1..=400u64 {
        std::fs::create_dir(partition.join(format!("{offset:020}.log"))).unwrap();
    }
    let mut statuses = Vec::new();
    for user in 0..400 {
        let body = format!(r#"[{{"event_type":"click","user_id":"u{user}"}}]"#);
        let (status, _) = post_events(&server, &body);
        statuses.push(status);
        if status != 202 {
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&503), "{statuses:?}");
    assert!(
        statuses.len() > 1,
        "the first segment took events: {statuses:?}"
    );
    let (status, body) = server.http("GET", "/readyz", &[], "");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("partition 0"), "{body}");
}

#[test]
fn output_piped_into_a_reader_that_stops_ends_quietly() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;

    let dir = tempfile::tempdir().unwrap();
    let server = Tally::up(dir.path());
    let events: Vec<String> = (0..3000)
        .map(|i| format!(r#"{{"event_type":"click","user_id":"u{i}"}}"#))
        .collect();
    let (status, body) = post_events(&server, &format!("[{}]", events.join(",")));
    assert_eq!(status, 202, "{body}");
    // `tally log tail | head -1`: the reader takes one line and goes.
    let mut tail = tally()
        .args(["log", "tail", "-n", "3000", "--data-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(tail.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("click"), "{first}");
    let output = tail.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        output.status.success() || output.status.signal() == Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        output.status
    );
}

/// `tally gen` says why nothing was accepted, and fails: with no server, with a read key, and
/// with a key the server does not know. A run with accepted events succeeds.
#[test]
fn gen_shows_the_first_refusals_and_fails_when_nothing_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let server = Tally::up(dir.path());
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let served = format!("http://{}", server.address);
    let unknown_key = "tk_not0a0key0this0server0knows00000";
    for (url, key, reason) in [
        (nowhere.as_str(), READ_KEY, "no answer from"),
        (served.as_str(), READ_KEY, "HTTP 403"),
        (served.as_str(), unknown_key, "HTTP 401"),
    ] {
        let output = tally()
            .args(["gen", "--events", "20", "--url", url, "--key", key])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{url} {key}: {stderr}");
        assert!(
            stderr.contains("accepted none of the 20 events sent") && stderr.contains(reason),
            "{url} {key}: {stderr}"
        );
    }
    run(server.generator().args(["--events", "20"]));
}

/// `tally batch run` on fresh data says why the horizon trails the clock and how to see batch
/// results sooner; with a short lateness there is nothing to explain.
#[test]
fn batch_run_says_why_the_horizon_trails_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    let batch_run = |lateness: &str| {
        let output = run(tally()
            .args(["batch", "run", "--data-dir"])
            .arg(dir.path())
            .env("TALLY_INGEST_MAX_LATENESS_SECS", lateness));
        String::from_utf8(output.stdout).unwrap()
    };
    let explained = batch_run("86400");
    assert!(
        explained.contains("ingest.max_lateness_secs (86400 s)")
            && explained.contains("TALLY_INGEST_MAX_LATENESS_SECS=300"),
        "{explained}"
    );
    let short = batch_run("300");
    assert!(!short.contains("max_lateness_secs"), "{short}");
}

/// What `tally up` and `tally serve` print: up names all three demo keys and how to send an
/// event; a serve replica, which takes no events, does not suggest sending one, and says
/// nothing of acknowledged events when it stops.
#[test]
fn each_banner_offers_only_what_its_process_does() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let banner = |role: &str| {
        let mut child = tally()
            .args([role, "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            // The search index has one writer, `tally up`'s here.
            .env(
                "TALLY_SERVING_SEARCH_DAYS",
                if role == "serve" { "0" } else { "7" },
            )
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut banner = String::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            banner.push_str(&line);
            banner.push('\n');
            // Up's banner ends with how to send an event, serve's with its data directory.
            let last = if role == "up" { "try" } else { "data" };
            if line.trim_start().starts_with(last) {
                break;
            }
        }
        (child, lines, banner)
    };
    let (mut up, _, printed) = banner("up");
    assert!(
        printed.contains("write key")
            && printed.contains("read key")
            && printed.contains("admin key")
            && printed.contains("curl -X POST"),
        "{printed}"
    );
    let (serve, lines, printed) = banner("serve");
    assert!(!printed.contains("POST"), "{printed}");
    let address = printed
        .lines()
        .find_map(|line| line.trim().strip_prefix("listening on http://"))
        .unwrap();
    // Stopped once it serves, as an operator would stop it.
    let (status, _) = crate::support::http(address, "GET", "/healthz", &[], "");
    assert_eq!(status, 200);
    run(std::process::Command::new("kill").args(["-TERM", &serve.id().to_string()]));
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(
        rest.iter().any(|line| line == "tally stopped")
            && !rest.iter().any(|line| line.contains("acknowledged")),
        "{rest:?}"
    );
    up.kill().unwrap();
    up.wait().unwrap();
}

/// Reading views where no data directory is makes none (it made ./tally-data with new demo
/// keys) and says where to point.
#[test]
fn views_get_without_a_data_directory_says_where_to_point_and_makes_none() {
    let cwd = tempfile::tempdir().unwrap();
    let output = tally()
        .args(["views", "get", "--view", "events_by_type"])
        .env_remove("TALLY_DATA_DIR")
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("pass --data-dir"),
        "{stderr}"
    );
    assert!(!cwd.path().join("tally-data").exists());
}
