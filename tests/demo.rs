//! The README's first command: `eventscope demo` on librdkafka's embedded mock cluster. It serves
//! /metrics, prints its table, and ends by itself when asked to.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

#[test]
fn demo_runs_serves_metrics_and_stops() {
    let admin = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_eventscope"))
        .args(["demo", "--duration", "14", "--every", "4", "--admin-listen", &admin])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(11));
    let (status, body) = http_get(&admin, "/metrics").expect("demo serves /metrics");
    assert_eq!(status, 200);
    let m = Metrics::parse(&body);
    let lag = |g: &str| {
        m.get("kafka_consumergroup_lag_sum", &[("cluster", "demo"), ("consumergroup", g)])
            .unwrap_or_else(|| panic!("{g} missing"))
    };
    assert!(lag("order-readmodel") > lag("inventory-service"), "the slow read model lags more");
    assert!(m
        .get("kafka_consumergroup_lag_sum", &[("consumergroup", "payment-notifier")])
        .is_some());
    assert_eq!(m.status("demo", "inventory-service", "orders").as_deref(), Some("OK"));
    assert!(
        m.get(
            "eventscope_consistency_window_seconds_count",
            &[("consumergroup", "inventory-service")]
        )
        .unwrap()
            > 0.0
    );
    // The order saga: followed from its events, listed by /sagas.
    let saga = |name: &str, extra: &[(&str, &str)]| {
        let mut want = vec![("cluster", "demo"), ("saga", "order")];
        want.extend_from_slice(extra);
        m.get(name, &want).unwrap_or_else(|| panic!("{name} {extra:?} missing"))
    };
    assert!(saga("eventscope_saga_started_total", &[]) > 50.0);
    assert!(saga("eventscope_saga_ended_total", &[("outcome", "completed")]) > 0.0);
    assert!(saga("eventscope_saga_ended_total", &[("outcome", "compensated")]) > 0.0);
    // Each family once in the collector's exposition (the embedded sidecar's series are on its own port).
    let mut types: Vec<&str> = body.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    let all = types.len();
    types.sort();
    types.dedup();
    assert_eq!(types.len(), all, "a family is declared twice in /metrics");
    assert!(m.count("kafka_consumergroup_lag", &[("source", "sidecar")]) == 0);
    let (status, body) = http_get(&admin, "/sagas").unwrap();
    assert_eq!(status, 200);
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(listed["sagas"].is_array(), "{body}");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "demo did not stop");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success());
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert!(
        out.contains("GROUP") && out.contains("CW_P99") && out.contains("order-readmodel") && out.contains("INCONSISTENT"),
        "{out}"
    );
    // The README's first command ends by printing the page's address.
    assert!(out.contains(&format!("the page (both views, live): http://{admin}/")), "{out}");
    assert!(out.trim_end().ends_with(&format!("page: http://{admin}/")), "{out}");
}
