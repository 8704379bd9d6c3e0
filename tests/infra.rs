//! infra/ in step with the code: every `tally …` command line there (compose `command:`,
//! Kubernetes `args:`, the Dockerfile's `CMD`) parses with the binary's own command line,
//! every configuration file and `TALLY_*` variable names real settings, and the Grafana
//! dashboard names only metrics a running `tally up` registers. Renaming a flag, a setting or
//! a metric fails here. (`infra/check` validates the same files against their schemas.)

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;
use tally_connectors::testing::{Kafka, unique_name};
use tally_model::Config;
use tally_model::config::is_setting_variable;

use crate::support::{Tally, log_to_kafka, tally};

fn infra(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn yaml_documents(path: &str) -> Vec<Value> {
    let text = infra(path);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| {
            let mut value = Value::deserialize(document).unwrap();
            value.apply_merge().unwrap();
            value
        })
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| {
            items
                .iter()
                .map(|item| match item {
                    Value::String(text) => text.clone(),
                    other => serde_yaml_ng::to_string(other).unwrap().trim().to_owned(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every `tally` command line of infra/, as (where, arguments after `tally`).
fn tally_command_lines() -> Vec<(String, Vec<String>)> {
    let mut lines = Vec::new();
    let compose = &yaml_documents("infra/compose.yaml")[0];
    for (name, service) in compose["services"].as_mapping().unwrap() {
        let name = name.as_str().unwrap();
        if service["image"].as_str() != Some("tally:latest") {
            continue;
        }
        let command = strings(&service["command"]);
        let args = match strings(&service["entrypoint"]).first().map(String::as_str) {
            // `sh -c "tally …"`: the script's words after `tally`.
            Some("/bin/sh") => command[0]
                .split_whitespace()
                .skip_while(|word| *word != "tally")
                .skip(1)
                .map(str::to_owned)
                .collect(),
            _ => command,
        };
        lines.push((format!("compose service {name}"), args));
    }
    for file in [
        "ingest.yaml",
        "speed.yaml",
        "archivers.yaml",
        "scheduler.yaml",
        "serve.yaml",
    ] {
        for document in yaml_documents(&format!("infra/k8s/{file}")) {
            let containers = &document["spec"]["template"]["spec"]["containers"];
            for container in containers.as_sequence().into_iter().flatten() {
                if container["image"].as_str() == Some("tally") {
                    // Kubernetes expands $(VAR) from the container's environment.
                    let args = strings(&container["args"])
                        .into_iter()
                        .map(|arg| arg.replace("$(POD_INDEX)", "0"))
                        .collect();
                    let name = document["metadata"]["name"].as_str().unwrap();
                    lines.push((format!("k8s {file} {name}"), args));
                }
            }
        }
    }
    let dockerfile = infra("Dockerfile");
    let cmd = dockerfile
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("CMD "))
        .expect("the Dockerfile has a CMD");
    lines.push((
        "Dockerfile CMD".to_owned(),
        serde_json::from_str(cmd).unwrap(),
    ));
    lines
}

#[test]
fn every_tally_command_line_in_infra_parses_with_the_binarys_own_flags() {
    let lines = tally_command_lines();
    let roles: BTreeSet<&str> = lines
        .iter()
        .filter_map(|(_, args)| args.first().map(String::as_str))
        .collect();
    for role in [
        "ingest", "speed", "archive", "batch", "serve", "kafka", "up",
    ] {
        assert!(
            roles.contains(role),
            "no {role} command line found: {lines:?}"
        );
    }
    for (place, args) in &lines {
        // With --help last, clap checks every subcommand, flag and value before it, then
        // prints the help instead of running.
        let output = tally().args(args).arg("--help").output().unwrap();
        assert!(
            output.status.success(),
            "{place}: `tally {}` does not parse: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn every_config_file_and_tally_variable_in_infra_names_real_settings() {
    let configmap = &yaml_documents("infra/k8s/config.yaml")[0];
    for (place, text) in [
        ("infra/tally.toml", infra("infra/tally.toml")),
        (
            "infra/k8s/config.yaml",
            configmap["data"]["tally.toml"].as_str().unwrap().to_owned(),
        ),
    ] {
        if let Err(err) = Config::parse(&text, []) {
            panic!("{place}: {err}");
        }
    }
    let mut variables = Vec::new();
    for line in infra("infra/.env.example").lines() {
        if let Some((name, _)) = line.split_once('=') {
            variables.push(("infra/.env.example", name.trim().to_owned()));
        }
    }
    let secret = &yaml_documents("infra/k8s/secret.example.yaml")[0];
    for name in secret["stringData"].as_mapping().unwrap().keys() {
        variables.push((
            "infra/k8s/secret.example.yaml",
            name.as_str().unwrap().to_owned(),
        ));
    }
    for line in infra("Dockerfile").lines() {
        if let Some(assignments) = line.strip_prefix("ENV ") {
            for assignment in assignments.split_whitespace() {
                let name = assignment.split('=').next().unwrap();
                variables.push(("Dockerfile", name.to_owned()));
            }
        }
    }
    let tally_variables: Vec<_> = variables
        .iter()
        .filter(|(_, name)| name.starts_with("TALLY_"))
        .collect();
    assert!(tally_variables.len() >= 5, "{variables:?}");
    for (place, name) in tally_variables {
        assert!(is_setting_variable(name), "{place}: {name} sets nothing");
    }
}

#[test]
fn the_grafana_dashboard_names_only_metrics_that_tally_registers() {
    let test = "infra::the_grafana_dashboard_names_only_metrics_that_tally_registers";
    let Some(kafka) = Kafka::shared(test) else {
        return;
    };
    let dashboard: serde_json::Value =
        serde_json::from_str(&infra("infra/grafana/tally.json")).unwrap();
    let mut named = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expression = target["expr"].as_str().unwrap();
            let words = expression.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
            for word in words.filter(|word| word.starts_with("tally_")) {
                let family = ["_total", "_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| word.strip_suffix(suffix))
                    .unwrap_or(word);
                named.insert(family.to_owned());
            }
        }
    }
    assert!(named.len() >= 10, "{named:?}");

    // Every part running, the forwarder included: `tally up` on Kafka, with load and rejects.
    let topic = unique_name("events");
    let on_topic = || {
        let mut command = tally();
        log_to_kafka(&mut command, &kafka.address, &topic);
        command
    };
    crate::support::run(on_topic().args(["kafka", "init"]));
    let mut command = on_topic();
    command.env("TALLY_BATCH_ROLL_SECS", "1");
    let dir = tempfile::tempdir().unwrap();
    let up = Tally::up_with(&dir.path().join("data"), command);
    crate::support::run(up.generator().args([
        "--events",
        "300",
        "--invalid",
        "0.2",
        "--seed",
        "1",
    ]));
    up.wait_for("an archived event", Duration::from_secs(60), |up| {
        up.metric("tally_batch_events_archived_total{stream=\"events\"}") > 0
    });
    let authorization = format!("Bearer {}", crate::support::READ_KEY);
    up.http(
        "GET",
        "/v1/query?view=events_by_type",
        &[("Authorization", &authorization)],
        "",
    );
    let (_, metrics) = up.http("GET", "/metrics", &[], "");
    let registered: BTreeSet<&str> = metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    let unknown: Vec<&String> = named
        .iter()
        .filter(|name| !registered.contains(name.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "the dashboard names metrics no process registers: {unknown:?}; registered: {registered:?}"
    );
}

/// Every route the collector serves, concrete: its OpenAPI paths with `{call}` spelled each
/// way (long and analytics.js's first letter) and `{key}` as a sample key.
fn collector_paths() -> BTreeSet<String> {
    let document = serde_json::to_value(tally_ingest::openapi()).unwrap();
    let mut paths = BTreeSet::new();
    for path in document["paths"].as_object().unwrap().keys() {
        let path = path.replace("{key}", "sample-key");
        if path.contains("{call}") {
            for (_, call) in tally_ingest::trackers::segment::Call::ALL {
                paths.insert(path.replace("{call}", call));
                paths.insert(path.replace("{call}", &call[..1]));
            }
        } else {
            paths.insert(path);
        }
    }
    paths.insert("/v1/b".to_owned());
    paths
}

#[test]
fn the_load_balancer_and_the_ingress_send_every_collector_route_to_the_collectors() {
    let paths = collector_paths();
    assert!(paths.len() >= 18, "{paths:?}");
    // HAProxy: `acl collector path ...` (exact) and `acl collector path_beg ...` (prefix).
    let haproxy = infra("infra/haproxy.cfg");
    let (mut exact, mut prefixes) = (BTreeSet::new(), Vec::new());
    for line in haproxy.lines() {
        let mut words = line.split_whitespace();
        if (words.next(), words.next()) != (Some("acl"), Some("collector")) {
            continue;
        }
        match words.next() {
            Some("path") => exact.extend(words.map(str::to_owned)),
            Some("path_beg") => prefixes.extend(words.map(str::to_owned)),
            other => panic!("an acl collector of kind {other:?}"),
        }
    }
    for path in &paths {
        assert!(
            exact.contains(path) || prefixes.iter().any(|prefix| path.starts_with(prefix)),
            "infra/haproxy.cfg does not send {path} to the collectors"
        );
    }
    // The Ingress: an Exact or Prefix rule other than `/` whose backend is the collector.
    let ingress = &yaml_documents("infra/k8s/ingress.yaml")[0];
    let rules = ingress["spec"]["rules"][0]["http"]["paths"]
        .as_sequence()
        .unwrap();
    for path in &paths {
        let routed = rules.iter().any(|rule| {
            let to_collector = rule["backend"]["service"]["name"] == "collector";
            let at = rule["path"].as_str().unwrap();
            let matches = match rule["pathType"].as_str().unwrap() {
                "Exact" => at == path,
                _ => at != "/" && path.starts_with(at),
            };
            to_collector && matches
        });
        assert!(
            routed,
            "infra/k8s/ingress.yaml does not send {path} to the collectors"
        );
    }
}
