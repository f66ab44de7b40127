//! Sagas followed from their events on a real broker (tansu), produced by real clients (librdkafka
//! through rdkafka, and confluent-kafka from Python). Every expected count and id comes from the test's
//! own ground truth: the scenarios it produced.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use support::saga::*;
use support::*;

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
    let config = format!("{}{}", collector_toml(&tansu.bootstrap(), ""), order_saga("4s", "2s", ""));
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
        assert_eq!(
            s["missing_compensations"],
            serde_json::json!([]),
            "in flight: nothing to compensate yet"
        );
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

/// Runs `saga_events.py` (confluent-kafka) with the given events.
fn python_events(bootstrap: &str, events: &[serde_json::Value]) {
    use std::io::Write;
    let mut child = tool("python3")
        .args([concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/saga_events.py"), bootstrap])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    {
        let mut stdin = child.stdin.take().unwrap();
        for e in events {
            writeln!(stdin, "{e}").unwrap();
        }
    }
    let seen = client_json(child.wait_with_output().unwrap(), "confluent-kafka");
    assert_eq!(seen["delivered"], events.len(), "every event acknowledged");
}

/// Correlation by JSON pointer and by header, type by JSON pointer and by topic, events from Python's
/// confluent-kafka and rdkafka; hostile records (not JSON, a 10 MB value, missing fields and headers, a
/// type the saga does not list, a step before its start, a flood of starts that never end) are counted
/// by reason, memory stays bounded, and the collector carries on.
#[test]
fn json_header_and_topic_sources_and_hostile_events() {
    let tansu = Tansu::start();
    for (t, n) in [
        ("payments-json", 2),
        ("ShipmentRequested", 1),
        ("ShipmentDispatched", 1),
        ("ShipmentDelivered", 1),
        ("flood", 3),
    ] {
        tansu.create_topic(t, n);
    }
    let sagas = r#"
[[sagas]]
name = "payment"
cluster = "test"
topics = ["payments-json"]
correlation = "json:/payment/order_id"
event_type = "json:/type"
start = ["PaymentRequested"]
steps = ["PaymentAuthorized"]
complete = ["PaymentCaptured"]
fail = ["PaymentDeclined"]
compensations = { PaymentAuthorized = "AuthorizationVoided" }

[[sagas]]
name = "shipment"
cluster = "test"
topics = ["ShipmentRequested", "ShipmentDispatched", "ShipmentDelivered"]
correlation = "header:shipment-id"
event_type = "topic"
start = ["ShipmentRequested"]
steps = ["ShipmentDispatched"]
complete = ["ShipmentDelivered"]
timeout = "2s"

[[sagas]]
name = "flood"
cluster = "test"
topics = ["flood"]
start = ["FloodStarted"]
complete = ["FloodEnded"]
max_in_flight = 1000
"#;
    let es = Eventscope::collector(&format!("{}{sagas}", collector_toml(&tansu.bootstrap(), "")));

    let ev = |id: serde_json::Value, t: &str| serde_json::json!({"topic": "payments-json", "key": null, "value": serde_json::json!({"payment": {"order_id": id}, "type": t}).to_string()});
    let raw = |value: Option<String>| serde_json::json!({"topic": "payments-json", "key": "k", "value": value});
    let mut events = Vec::new();
    for t in ["PaymentRequested", "PaymentAuthorized", "PaymentCaptured"] {
        events.push(ev("p-1".into(), t));
    }
    for t in ["PaymentRequested", "PaymentAuthorized", "PaymentDeclined", "AuthorizationVoided"] {
        events.push(ev("p-2".into(), t));
    }
    for t in ["PaymentRequested", "PaymentDeclined"] {
        events.push(ev("p-3".into(), t));
    }
    // A number as the correlation id.
    for t in ["PaymentRequested", "PaymentAuthorized", "PaymentCaptured"] {
        events.push(ev(42.into(), t));
    }
    events.push(raw(Some("this is not JSON".into())));
    events.push(raw(None));
    events.push(raw(Some(format!("{{\"pad\": \"{}\"}}", "x".repeat(10 * 1024 * 1024)))));
    events.push(raw(Some(r#"{"type": "PaymentRequested"}"#.into())));
    events.push(raw(Some(r#"{"payment": {"order_id": "p-9"}}"#.into())));
    events.push(ev("p-1".into(), "RefundIssued"));
    events.push(ev("p-77".into(), "PaymentAuthorized"));
    python_events(&tansu.bootstrap(), &events);

    let p = producer(&tansu.bootstrap());
    let ship = |topic: &str, id: Option<&str>| {
        let mut headers = OwnedHeaders::new();
        if let Some(id) = id {
            headers = headers.insert(Header {
                key: "shipment-id",
                value: Some(id),
            });
        }
        p.send(BaseRecord::<(), _>::to(topic).payload("{}").headers(headers))
            .map_err(|(e, _)| e)
            .unwrap();
        p.flush(Duration::from_secs(10)).unwrap();
        std::thread::sleep(Duration::from_millis(3));
    };
    for t in ["ShipmentRequested", "ShipmentDispatched", "ShipmentDelivered"] {
        ship(t, Some("s-1"));
    }
    ship("ShipmentRequested", Some("s-2"));
    ship("ShipmentRequested", None);

    // The flood: 5,000 starts that never end, batched as a busy producer sends them.
    let flood: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", tansu.bootstrap())
        .set("linger.ms", "20")
        .create()
        .unwrap();
    for i in 0..5000 {
        let key = format!("f-{i}");
        let headers = OwnedHeaders::new().insert(Header {
            key: "ce_type",
            value: Some("FloodStarted"),
        });
        loop {
            match flood.send(BaseRecord::<_, str>::to("flood").key(&key).headers(headers.clone())) {
                Ok(()) => break,
                Err(_) => {
                    flood.poll(Duration::from_millis(10));
                }
            }
        }
    }
    flood.flush(Duration::from_secs(30)).unwrap();

    let get = |m: &Metrics, name: &str, saga: &str, extra: (&str, &str)| {
        let mut want = vec![("saga", saga)];
        if !extra.0.is_empty() {
            want.push(extra);
        }
        m.get(name, &want)
    };
    es.wait_metrics("the payment saga's outcomes and unmatched records", |m| {
        let got = [
            get(m, "eventscope_saga_started_total", "payment", ("", "")),
            get(m, "eventscope_saga_ended_total", "payment", ("outcome", "completed")),
            get(m, "eventscope_saga_ended_total", "payment", ("outcome", "compensated")),
            get(m, "eventscope_saga_unmatched_events_total", "payment", ("reason", "not_json")),
            get(m, "eventscope_saga_unmatched_events_total", "payment", ("reason", "too_large")),
            get(m, "eventscope_saga_unmatched_events_total", "payment", ("reason", "no_correlation")),
            get(m, "eventscope_saga_unmatched_events_total", "payment", ("reason", "no_type")),
            get(m, "eventscope_saga_unmatched_events_total", "payment", ("reason", "unknown_type")),
            get(m, "eventscope_saga_unmatched_events_total", "payment", ("reason", "before_start")),
            get(m, "eventscope_saga_in_flight", "payment", ("step", "PaymentRequested")),
        ];
        let want = [4.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0].map(Some);
        (got == want).then_some(())
    });
    es.wait_metrics("the shipment saga: one completed, one stuck at its start", |m| {
        let got = [
            get(m, "eventscope_saga_started_total", "shipment", ("", "")),
            get(m, "eventscope_saga_ended_total", "shipment", ("outcome", "completed")),
            get(m, "eventscope_saga_stuck", "shipment", ("step", "ShipmentRequested")),
            get(
                m,
                "eventscope_saga_unmatched_events_total",
                "shipment",
                ("reason", "no_correlation"),
            ),
            get(m, "eventscope_saga_events_total", "shipment", ("type", "ShipmentDispatched")),
        ];
        (got == [2.0, 1.0, 1.0, 1.0, 1.0].map(Some)).then_some(())
    });
    assert_eq!(ids(&es, "?saga=shipment"), ["s-2".to_string()].into());
    es.wait_metrics("the flood bounded by max_in_flight", |m| {
        let got = [
            get(m, "eventscope_saga_started_total", "flood", ("", "")),
            get(m, "eventscope_saga_evicted_total", "flood", ("", "")),
            get(m, "eventscope_saga_in_flight", "flood", ("step", "FloodStarted")),
        ];
        (got == [5000.0, 4000.0, 1000.0].map(Some)).then_some(())
    });
    // The 10 MB record was read (it is counted) without holding more than a bounded share of it.
    let rss = es.peak_rss();
    eprintln!("peak RSS with a 10 MB record and 1,000 instances held: {:.1} MB", rss / 1e6);
    assert!(rss < 100.0 * 1024.0 * 1024.0, "peak RSS {rss} bytes");
    assert_eq!(es.get("/healthz").map(|r| r.0), Some(200));
}

/// Two collector replicas share the saga's partitions through a consumer group (range assignment over
/// co-partitioned topics): each instance is counted by exactly one of them, and a replica that stops
/// hands its partitions to the other, which rebuilds their state and then reports every instance.
#[test]
fn two_replicas_share_the_partitions_and_hand_them_over() {
    let tansu = Tansu::start();
    for t in TOPICS {
        tansu.create_topic(t, 4);
    }
    let config = format!(
        "{}{}",
        collector_toml(&tansu.bootstrap(), ""),
        order_saga("4s", "2s", "group = \"eventscope-sagas\"")
    );
    let partitions = |es: &Eventscope| es.scrape().get("eventscope_saga_partitions", &[("saga", "order")]);
    let up = |es: &Eventscope| es.scrape().get("eventscope_saga_up", &[("saga", "order")]) == Some(1.0);
    let a = Eventscope::collector(&config);
    wait_for(Duration::from_secs(30), "replica a to read all 16 partitions", || {
        (partitions(&a) == Some(16.0)).then_some(())
    });
    let b = Eventscope::collector(&config);
    let (pa, pb) = wait_for(Duration::from_secs(60), "the partitions shared by both replicas", || {
        let (pa, pb) = (partitions(&a)?, partitions(&b)?);
        (pa + pb == 16.0 && pa > 0.0 && pb > 0.0 && up(&a) && up(&b)).then_some((pa, pb))
    });
    assert_eq!((pa, pb), (8.0, 8.0), "range assignment of 4 partitions × 4 topics over 2 members");

    let p = producer(&tansu.bootstrap());
    let mut truth = Truth::default();
    produce_orders(&p, "r", 4, &mut truth);
    let want = expected(&truth);
    let sum = |name: &str, extra: (&str, &str)| {
        let mut labels = vec![("saga", "order")];
        if !extra.0.is_empty() {
            labels.push(extra);
        }
        a.scrape().get(name, &labels).unwrap_or(0.0) + b.scrape().get(name, &labels).unwrap_or(0.0)
    };
    wait_for(Duration::from_secs(30), "every instance counted once across the replicas", || {
        let got = vec![
            sum("eventscope_saga_started_total", ("", "")),
            sum("eventscope_saga_ended_total", ("outcome", "completed")),
            sum("eventscope_saga_ended_total", ("outcome", "compensated")),
            sum("eventscope_saga_ended_total", ("outcome", "inconsistent")),
            sum("eventscope_saga_stuck", ("step", "InventoryReserved")),
        ];
        let want: Vec<f64> = [0, 1, 2, 3, 5].iter().map(|i| want[*i].unwrap()).collect();
        (got == want).then_some(())
    });
    let (stuck_a, stuck_b) = (ids(&a, "?state=stuck"), ids(&b, "?state=stuck"));
    assert!(
        stuck_a.is_disjoint(&stuck_b),
        "an instance on both replicas: {stuck_a:?} {stuck_b:?}"
    );
    assert_eq!(stuck_a.union(&stuck_b).cloned().collect::<BTreeSet<_>>(), set(&truth.stuck));
    assert!(!stuck_a.is_empty() && !stuck_b.is_empty(), "both replicas hold instances");

    // b stops (SIGTERM: it leaves the group); a takes its partitions and rebuilds them from the lookback.
    let (status, _) = b.terminate();
    assert!(status.success());
    wait_for(Duration::from_secs(60), "replica a to report every instance alone", || {
        let r = report(&a);
        (partitions(&a) == Some(16.0) && r.0 == want && r.1 == set(&truth.stuck) && r.2 == set(&truth.inconsistent)).then_some(())
    });
}
