//! Sagas followed from their events on a real broker (tansu), produced by real clients (librdkafka
//! through rdkafka, and confluent-kafka from Python). Every expected count and id comes from the test's
//! own ground truth: the scenarios it produced.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use support::*;

const TOPICS: [&str; 4] = ["orders", "inventory-events", "payment-events", "shipping-events"];

/// The topic each type of the seed's order saga is on (choreographed: each service writes its own).
fn topic_of(event_type: &str) -> &'static str {
    match event_type {
        "OrderCreated" | "OrderCompleted" | "OrderFailed" => "orders",
        "InventoryReserved" | "InventoryReleased" => "inventory-events",
        "PaymentProcessed" | "PaymentRefunded" => "payment-events",
        _ => "shipping-events",
    }
}

/// The order saga's `[[sagas]]` entry (correlation by key, type by CloudEvents' `ce_type` header).
fn order_saga(extra: &str) -> String {
    format!(
        r#"
[[sagas]]
name = "order"
cluster = "test"
topics = ["orders", "inventory-events", "payment-events", "shipping-events"]
correlation = "key"
start = ["OrderCreated"]
steps = ["InventoryReserved", "PaymentProcessed", "ShippingScheduled"]
complete = ["OrderCompleted"]
fail = ["OrderFailed"]
compensations = {{ InventoryReserved = "InventoryReleased", PaymentProcessed = "PaymentRefunded" }}
timeout = "4s"
compensation_grace = "2s"
{extra}
"#
    )
}

/// Sends one event as the services would: keyed by the order id, with CloudEvents headers and, when
/// given, a `traceparent`; waits for its acknowledgement so that events are appended in order.
fn emit(p: &BaseProducer, id: &str, event_type: &str, traceparent: Option<&str>) {
    let ce_id = format!("{id}-{event_type}");
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: "ce_type",
            value: Some(event_type),
        })
        .insert(Header {
            key: "ce_id",
            value: Some(&ce_id),
        })
        .insert(Header {
            key: "ce_source",
            value: Some("/orders"),
        });
    if let Some(tp) = traceparent {
        headers = headers.insert(Header {
            key: "traceparent",
            value: Some(tp),
        });
    }
    let payload = format!("{{\"order_id\":\"{id}\",\"type\":\"{event_type}\"}}");
    let record = BaseRecord::to(topic_of(event_type)).key(id).payload(&payload).headers(headers);
    p.send(record).map_err(|(e, _)| e).expect("queued");
    p.flush(Duration::from_secs(10)).expect("acknowledged");
    std::thread::sleep(Duration::from_millis(3));
}

/// The scenarios the test produces, by what they must end as.
#[derive(Default)]
struct Truth {
    completed: Vec<String>,
    compensated: Vec<String>,
    inconsistent: Vec<String>,
    stuck: Vec<String>,
    /// Inconsistent first, compensated late.
    late: Vec<String>,
}

fn trace_of(i: usize) -> String {
    format!("00-{:032x}-{:016x}-01", 0xabc0_0000u64 + i as u64, 7)
}

/// Produces `n` orders of each kind, ids prefixed with `prefix`.
fn produce_orders(p: &BaseProducer, prefix: &str, n: usize, truth: &mut Truth) {
    for i in 0..n {
        let id = format!("{prefix}-done-{i}");
        for t in [
            "OrderCreated",
            "InventoryReserved",
            "PaymentProcessed",
            "ShippingScheduled",
            "OrderCompleted",
        ] {
            emit(p, &id, t, None);
        }
        truth.completed.push(id);
        // Payment declined: the reservation is released.
        let id = format!("{prefix}-declined-{i}");
        for t in ["OrderCreated", "InventoryReserved", "OrderFailed", "InventoryReleased"] {
            emit(p, &id, t, None);
        }
        truth.compensated.push(id);
        // The August incident: shipping fails, the refund is made, but the inventory service is offline
        // and the reservation is never released.
        let id = format!("{prefix}-incident-{i}");
        let tp = trace_of(i);
        for t in [
            "OrderCreated",
            "InventoryReserved",
            "PaymentProcessed",
            "OrderFailed",
            "PaymentRefunded",
        ] {
            emit(p, &id, t, Some(&tp));
        }
        truth.inconsistent.push(id);
        // Stopped midway: reserved, never paid.
        let id = format!("{prefix}-stuck-{i}");
        for t in ["OrderCreated", "InventoryReserved"] {
            emit(p, &id, t, Some(&tp));
        }
        truth.stuck.push(id);
    }
}

fn ids(es: &Eventscope, query: &str) -> BTreeSet<String> {
    let (status, body) = es.get(&format!("/sagas{query}")).expect("/sagas");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["sagas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

fn sagas_json(es: &Eventscope, query: &str) -> serde_json::Value {
    serde_json::from_str(&es.get(&format!("/sagas{query}")).unwrap().1).unwrap()
}

fn set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

/// What a collector reports of the order saga, in one comparable value.
fn report(es: &Eventscope) -> (Vec<Option<f64>>, BTreeSet<String>, BTreeSet<String>) {
    let m = es.scrape();
    fn l<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut want = vec![("cluster", "test"), ("saga", "order")];
        want.extend_from_slice(extra);
        want
    }
    let counts = vec![
        m.get("eventscope_saga_started_total", &l(&[])),
        m.get("eventscope_saga_ended_total", &l(&[("outcome", "completed")])),
        m.get("eventscope_saga_ended_total", &l(&[("outcome", "compensated")])),
        m.get("eventscope_saga_ended_total", &l(&[("outcome", "inconsistent")])),
        m.get("eventscope_saga_late_compensations_total", &l(&[])),
        m.get("eventscope_saga_stuck", &l(&[("step", "InventoryReserved")])),
        m.get("eventscope_saga_in_flight", &l(&[("step", "InventoryReserved")])),
        m.get("eventscope_saga_events_total", &l(&[("type", "OrderCreated")])),
    ];
    (counts, ids(es, "?state=stuck"), ids(es, "?state=inconsistent"))
}

fn expected(truth: &Truth) -> Vec<Option<f64>> {
    let all = truth.completed.len() + truth.compensated.len() + truth.inconsistent.len() + truth.stuck.len() + truth.late.len();
    vec![
        Some(all as f64),
        Some(truth.completed.len() as f64),
        Some(truth.compensated.len() as f64),
        Some((truth.inconsistent.len() + truth.late.len()) as f64),
        Some(truth.late.len() as f64),
        Some(truth.stuck.len() as f64),
        Some(truth.stuck.len() as f64),
        Some(all as f64),
    ]
}

/// Every outcome of the seed's order saga, decided exactly; a late compensation; the stuck and
/// inconsistent orders by id with their trace ids; and a collector restarted in the middle reports the
/// same instances and counts as before, then follows the rest.
#[test]
fn order_saga_outcomes_are_exact_and_survive_a_restart() {
    let tansu = Tansu::start();
    for t in TOPICS {
        tansu.create_topic(t, 2);
    }
    let p = producer(&tansu.bootstrap());
    let config = format!("{}{}", collector_toml(&tansu.bootstrap(), ""), order_saga(""));
    let es = Eventscope::collector(&config);
    let mut truth = Truth::default();
    produce_orders(&p, "a", 3, &mut truth);
    // A late compensation: inconsistent after the grace, compensated when the release finally comes.
    for t in ["OrderCreated", "InventoryReserved", "OrderFailed"] {
        emit(&p, "late-1", t, None);
    }
    truth.late.push("late-1".into());
    std::thread::sleep(Duration::from_secs(3));
    wait_for(Duration::from_secs(30), "the late order to be inconsistent", || {
        ids(&es, "?state=inconsistent").contains("late-1").then_some(())
    });
    emit(&p, "late-1", "InventoryReleased", None);

    let want = expected(&truth);
    let settled = wait_for(Duration::from_secs(30), "every outcome", || {
        let r = report(&es);
        (r.0 == want && r.1 == set(&truth.stuck) && r.2 == set(&truth.inconsistent)).then_some(r)
    });
    // Each listed instance says what is missing, and carries the trace of its events.
    let listed = sagas_json(&es, "?state=inconsistent&limit=1");
    assert_eq!(listed["sagas"].as_array().unwrap().len(), 1);
    let item = &listed["sagas"][0];
    assert_eq!(item["missing_compensations"], serde_json::json!(["InventoryReleased"]));
    assert_eq!(item["last_event"], "PaymentRefunded");
    let i: usize = item["id"].as_str().unwrap().rsplit('-').next().unwrap().parse().unwrap();
    assert_eq!(item["trace_id"], trace_of(i)[3..35]);
    assert_eq!(item["saga"], "order");
    let stuck = sagas_json(&es, "?state=stuck");
    for s in stuck["sagas"].as_array().unwrap() {
        assert_eq!(s["last_event"], "InventoryReserved");
        assert!(s["age_seconds"].as_f64().unwrap() >= 4.0, "{s}");
    }
    let m = es.scrape();
    assert_eq!(m.get("eventscope_saga_up", &[("saga", "order")]), Some(1.0));
    assert_eq!(m.get("eventscope_saga_partitions", &[("saga", "order")]), Some(8.0));
    assert_eq!(
        m.get(
            "eventscope_saga_duration_seconds_count",
            &[("saga", "order"), ("outcome", "completed")]
        ),
        Some(3.0)
    );
    assert_eq!(
        m.get(
            "eventscope_saga_step_seconds_count",
            &[("saga", "order"), ("step", "ShippingScheduled")]
        ),
        Some(3.0)
    );
    assert_eq!(
        sagas_json(&es, "?state=nope")["error"].as_str().map(|s| s.contains("stuck")),
        Some(true)
    );

    // Restart: the state is rebuilt from the topics (lookback 1h) and the same is reported.
    let (status, _) = es.terminate();
    assert!(status.success());
    let es = Eventscope::collector(&config);
    let again = wait_for(Duration::from_secs(30), "the same report after the restart", || {
        let r = report(&es);
        (r == settled).then_some(r)
    });
    assert_eq!(again, settled);

    // The rest of the traffic, followed by the restarted collector.
    produce_orders(&p, "b", 2, &mut truth);
    let want = expected(&truth);
    wait_for(Duration::from_secs(30), "the second half's outcomes", || {
        let r = report(&es);
        (r.0 == want && r.1 == set(&truth.stuck) && r.2 == set(&truth.inconsistent)).then_some(())
    });
}
