//! Bad configuration: every problem reported at once with its key, exit code 64.

use std::io::Write;
use std::process::Command;

fn check(toml: &str, args: &[&str]) -> (i32, String, String) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(toml.as_bytes()).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_eventscope"));
    for a in args {
        cmd.arg(a);
    }
    let out = cmd.arg(f.path()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn every_problem_is_reported_and_exit_is_64() {
    let bad = r#"
[admin]
listen = "localhost"
[collector]
poll_interval = "fast"
pol_interval = "5s"
max_concurrency = 0
[[clusters]]
name = "a"
kafka = { "bootstrap.servers" = "broker-without-port", "security.protocol" = "SASL_SSL" }
topic_deny = ["[unclosed"]
[[clusters]]
name = "a"
[ui]
trace_url = "tempo.example/trace/{id}"
theme = "dark"
"#;
    for args in [&["check-config"][..], &["collector", "--config"][..]] {
        let (code, _, stderr) = check(bad, args);
        assert_eq!(code, 64, "{args:?}: {stderr}");
        for key in [
            "admin.listen",
            "collector.poll_interval",
            "collector.pol_interval",
            "collector.max_concurrency",
            "clusters[0].kafka.\"bootstrap.servers\"",
            "clusters[0].kafka.\"sasl.mechanism\"",
            "clusters[0].kafka.\"sasl.username\"",
            "clusters[0].kafka.\"sasl.password\"",
            "clusters[0].topic_deny[0]",
            "clusters[1].name",
            "clusters[1].kafka.\"bootstrap.servers\"",
            "ui.trace_url",
            "ui.theme",
        ] {
            assert!(stderr.contains(&format!("- {key}:")), "{key} missing from:\n{stderr}");
        }
    }
}

#[test]
fn not_toml_and_missing_file_are_64() {
    assert_eq!(check("[[clusters]\n", &["check-config"]).0, 64);
    let out = Command::new(env!("CARGO_BIN_EXE_eventscope"))
        .args(["check-config", "/nonexistent/eventscope.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn the_shipped_example_is_valid() {
    let out = Command::new(env!("CARGO_BIN_EXE_eventscope"))
        .args([
            "check-config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/eventscope.example.toml"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `[log] format = "json"`: every line on stderr is a JSON object with level, target and fields.
#[test]
fn json_logs() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut f = tempfile::NamedTempFile::new().unwrap();
    write!(
        f,
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[log]\nformat = \"json\"\nlevel = \"info\"\n[collector]\npoll_interval = \"200ms\"\n[[clusters]]\nname = \"nowhere\"\nkafka = {{ \"bootstrap.servers\" = \"127.0.0.1:{port}\" }}\n"
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_eventscope"))
        .args(["collector", "--config", f.path().to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "INFO" && l["fields"]["message"] == "collector running"),
        "{stderr}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "WARN" && l["fields"]["cluster"] == "nowhere" && l["fields"]["kind"] == "connect"),
        "the unreachable cluster is logged with its cluster and kind: {stderr}"
    );
}

/// The sidecar's keys and the standard OTEL_* export variables are checked together: every problem at
/// once, exit 64.
#[test]
fn sidecar_and_otel_problems_are_reported_together() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(b"[sidecar]\nkafka_bootstrap = \"kafka:9092\"\ntrace_mode = \"sometimes\"\nmax_batch_bytes = 10\n")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_eventscope"))
        .args(["sidecar", "--config"])
        .arg(f.path())
        .env("OTEL_BSP_MAX_QUEUE_SIZE", "0")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    for key in [
        "sidecar.trace_mode",
        "sidecar.max_batch_bytes",
        "OTEL_BSP_MAX_QUEUE_SIZE",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        assert!(stderr.contains(key), "{key} missing from: {stderr}");
    }
}

/// The HTTP side's keys are checked with the rest: every problem at once, exit 64.
#[test]
fn http_problems_are_reported_together() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(
        b"[sidecar.http]\nupstream = \"no-port\"\nlisten = \"nowhere\"\nroutes = [\"/ok/{id}\", \"orders\", \"/a/{b\"]\n\
          response_timeout = \"0s\"\nmax_header_bytes = 100\nmax_routes = 0\nretries = 3\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_eventscope"))
        .args(["sidecar", "--config"])
        .arg(f.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    for key in [
        "sidecar.http.retries",
        "sidecar.http.upstream",
        "sidecar.http.listen",
        "sidecar.http.routes[1]",
        "sidecar.http.routes[2]",
        "sidecar.http.response_timeout",
        "sidecar.http.max_header_bytes",
        "sidecar.http.max_routes",
    ] {
        assert!(stderr.contains(key), "{key} missing from:\n{stderr}");
    }
    assert!(!stderr.contains("routes[0]"), "{stderr}");
    // The HTTP side alone needs no Kafka bootstrap.
    let mut g = tempfile::NamedTempFile::new().unwrap();
    g.write_all(b"[sidecar.http]\nupstream = \"127.0.0.1:8080\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_eventscope"))
        .arg("check-config")
        .arg(g.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `[[sagas]]`: every problem at once with its key (unknown cluster, a type listed twice, a
/// compensation of a step that is not listed, a bad JSON pointer, a form a key does not take), exit 64.
#[test]
fn saga_problems_are_all_reported_with_their_keys() {
    let bad = r#"
[[clusters]]
name = "prod"
kafka = { "bootstrap.servers" = "127.0.0.1:9092" }
[[sagas]]
name = "order"
cluster = "staging"
topics = ["orders"]
correlation = "json:order/id"
event_type = "key"
start = ["OrderCreated"]
steps = ["InventoryReserved", "OrderCreated"]
complete = ["OrderCompleted"]
compensations = { InventoryReserved = "InventoryReleased", ShippingScheduled = "ShippingCancelled" }
timeout = "soon"
[[sagas]]
name = "refund"
cluster = "prod"
correlation = "json:/a~2b"
"#;
    let (code, _, stderr) = check(bad, &["check-config"]);
    assert_eq!(code, 64, "{stderr}");
    for (key, reason) in [
        ("sagas[0].cluster", "not a [[clusters]] name"),
        ("sagas[0].correlation", "not a JSON pointer"),
        ("sagas[0].event_type", "not allowed here"),
        ("sagas[0].steps[1]", "already listed as start[0]"),
        ("sagas[0].compensations.ShippingScheduled", "not one of the saga's steps"),
        ("sagas[0].timeout", "not a duration"),
        ("sagas[1].correlation", "~0"),
        ("sagas[1].topics", "required"),
        ("sagas[1].start", "required"),
        ("sagas[1].complete", "required"),
    ] {
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!("- {key}:")))
            .unwrap_or_else(|| panic!("{key} missing from:\n{stderr}"));
        assert!(line.contains(reason), "{key}: {line}");
    }
    // The example configuration's saga is valid.
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/eventscope.example.toml")).unwrap();
    assert!(example.contains("[[sagas]]"));
    let (code, _, stderr) = check(&example, &["check-config"]);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn broker_source_problems_are_all_reported_with_their_keys() {
    let bad = r#"
[[clusters]]
name = "prod"
kafka = { "bootstrap.servers" = "127.0.0.1:9092" }
[[rabbitmq]]
name = "prod"
url = "amqp://127.0.0.1:5672"
page_size = 1000
concurrency = 0
queue_allow = ["(unclosed"]
[[nats]]
name = "events"
servers = ["nats://nohost"]
user = "u"
token = "t"
creds_file = "/nonexistent/user.creds"
[[sqs]]
region = "eu west"
endpoint_url = "localhost:4566"
[[rabbitmq]]
name = "tasks"
url = "http://guest:guest@127.0.0.1:15672"
colour = "blue"
"#;
    let (code, _, stderr) = check(bad, &["check-config"]);
    assert_eq!(code, 64, "{stderr}");
    for (key, reason) in [
        ("rabbitmq[0].name", "used by another cluster or broker"),
        ("rabbitmq[0].url", "scheme must be http or https"),
        ("rabbitmq[0].page_size", "between 1 and 500"),
        ("rabbitmq[0].concurrency", "between 1 and 8"),
        ("rabbitmq[0].queue_allow", "regex"),
        ("nats[0].servers[0]", "not nats://host:port"),
        ("nats[0].user", "one of user/password, token"),
        ("sqs[0].name", "required"),
        ("sqs[0].region", "not a region name"),
        ("sqs[0].endpoint_url", ""),
        ("rabbitmq[1].url", "credentials in username/password"),
        ("rabbitmq[1].colour", "unknown field"),
    ] {
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!("- {key}")))
            .unwrap_or_else(|| panic!("{key} missing from:\n{stderr}"));
        assert!(line.contains(reason), "{key}: {line}");
    }
    // A collector that watches only other brokers is a valid collector.
    let (code, _, stderr) = check(
        "[[nats]]\nname = \"events\"\nservers = [\"nats://127.0.0.1:4222\"]\n",
        &["check-config"],
    );
    assert_eq!(code, 0, "{stderr}");
}
