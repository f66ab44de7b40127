//! The alerting path end to end, every part real: tansu; the eventscope collector; an eventscope sidecar
//! (Kafka side in front of librdkafka's mock cluster, HTTP side in front of Python's HTTP server, spans
//! to an OTLP receiver); Debian's Prometheus scraping both with the shipped rules (`alerts/`, with `for:`
//! shortened in this test's copy; the shipped durations are covered by the promtool tests); Debian's
//! Alertmanager with the shipped routing (`deploy/alertmanager/alertmanager.yml`, receivers pointed at
//! this test's webhook).
//! - A slow consumer builds lag past the seed's 10,000 messages: `KafkaConsumerLagHigh` reaches the
//!   webhook firing with the right cluster, group and topic, then resolved once the consumer catches up.
//! - The seed's order saga on tansu: an inconsistent order (a compensation missing) fires
//!   `SagaCompensationMissing` to the sagas receiver, a stuck one `SagaStuck`.
//! - The seed's other brokers beside Kafka: a JetStream consumer past 10,000 messages fires
//!   `EventBacklogHigh` to the event-backlog receiver, with `broker="nats"`; RabbitMQ (Debian's server,
//!   pika) and SQS (moto's server, boto3) feed the backlog dashboard.
//! - Every panel query of every dashboard in `dashboards/` returns data from that Prometheus.

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{Offset, TopicPartitionList};
use support::prom::*;
use support::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped rule files with every `for:` shortened to 2 s.
fn rule_files() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let for_clause = regex::Regex::new(r"(?m)^(\s+)for: \S+$").unwrap();
    for e in std::fs::read_dir(root().join("alerts")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".rules.yml") {
            let text = std::fs::read_to_string(&p).unwrap();
            out.push((name, for_clause.replace_all(&text, "${1}for: 2s").to_string()));
        }
    }
    out.sort();
    out
}

fn alert_named<'a>(n: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    n["alerts"].as_array()?.iter().find(|a| a["labels"]["alertname"] == name)
}

/// Every panel target of every dashboard: (dashboard file, panel title, PromQL) with the dashboard
/// variables set to match everything, as Grafana's "All" does.
fn panel_queries() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for f in files {
        let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = support::grafana::grafana_expr(t["expr"].as_str().unwrap(), "1m", "15s", ".*");
                out.push((
                    f.file_name().unwrap().to_string_lossy().to_string(),
                    p["title"].as_str().unwrap().to_string(),
                    expr,
                ));
            }
        }
    }
    out
}

/// Traffic through the sidecar that every panel of its dashboards shows: produced records (some
/// answered with an error, retried), a consumer group fetching and committing, spans exported;
/// HTTP requests with 2xx and 5xx answers and trace context.
fn sidecar_traffic(kafka: &str, http: &str, mock: &MockCluster<'static, DefaultProducerContext>) {
    let p = producer(kafka);
    produce(&p, "payments", 0, &vec![now_ms(); 50]);
    mock.request_errors(
        rdkafka::types::RDKafkaApiKey::Produce,
        &[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS],
    );
    produce(&p, "payments", 1, &vec![now_ms(); 50]);
    let c: BaseConsumer = client_config(kafka, &[("group.id", "payments-read-model"), ("enable.auto.commit", "false")])
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition_offset("payments", p, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut n = 0;
    // Commit 90 of the 100: the group keeps a lag and a first uncommitted record (lag seconds).
    while n < 90 {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            c.commit_message(&m, CommitMode::Sync).unwrap();
            n += 1;
        }
    }
    for i in 0..40 {
        let path = if i % 10 == 9 {
            "/status/500".to_string()
        } else {
            format!("/orders/{i}")
        };
        assert!(http_get(http, &path).is_some());
    }
}

/// The other brokers of the test, with traffic: a NATS stream of 10,500 messages that consumer `audit`
/// never reads and `billing` partly acks; a RabbitMQ queue with messages published and some consumed;
/// moto's SQS queues, SNS topic and dead letters.
fn other_brokers() -> (support::brokers::NatsServer, support::brokers::Rabbitmq, support::brokers::Moto) {
    use support::brokers::{pika, Moto, NatsServer, Rabbitmq};
    let rabbit = std::thread::spawn(|| {
        let r = Rabbitmq::start();
        let port = r.amqp_port.to_string();
        pika(&["publish", &port, "emails", "300"]);
        pika(&["consume", &port, "emails", "100"]);
        r
    });
    let moto = std::thread::spawn(|| {
        let m = Moto::start();
        m.setup();
        m
    });
    let nats = NatsServer::start();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use async_nats::jetstream::{self, consumer::pull, stream};
        use futures::StreamExt;
        let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        let s = js
            .create_stream(stream::Config {
                name: "ORDERS".into(),
                subjects: vec!["orders.*".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        for name in ["audit", "billing"] {
            s.create_consumer(pull::Config {
                durable_name: Some(name.into()),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        // Acks awaited in batches: the client limits the publishes awaiting their ack.
        for batch in 0..21 {
            let mut acks = Vec::new();
            for i in 0..500 {
                acks.push(
                    js.publish(format!("orders.{}", (batch * 500 + i) % 3), "order".into())
                        .await
                        .unwrap(),
                );
            }
            for a in acks {
                a.await.unwrap();
            }
        }
        let billing: jetstream::consumer::Consumer<pull::Config> = s.get_consumer("billing").await.unwrap();
        let mut msgs = billing.fetch().max_messages(100).messages().await.unwrap();
        while let Some(m) = msgs.next().await {
            m.unwrap().double_ack().await.unwrap();
        }
    });
    (nats, rabbit.join().unwrap(), moto.join().unwrap())
}

#[test]
fn lag_alert_fires_and_resolves_and_every_dashboard_panel_has_data() {
    let (nats, rabbit, moto) = other_brokers();
    let tansu = Tansu::start();
    tansu.create_topic("orders", 3);
    for t in &support::saga::TOPICS[1..] {
        tansu.create_topic(t, 1);
    }
    let saga = support::saga::order_saga("1s", "1s", "");
    let brokers = format!(
        "[[rabbitmq]]\nname = \"tasks\"\nurl = \"http://{}\"\n[[nats]]\nname = \"events\"\nservers = [\"{}\"]\n\
         [[sqs]]\nname = \"edge\"\nregion = \"eu-west-1\"\nendpoint_url = \"{}\"\n",
        rabbit.management(),
        nats.url(),
        moto.endpoint()
    );
    let es = Eventscope::collector_env(
        &format!("{}{saga}{brokers}", collector_toml(&tansu.bootstrap(), "")),
        &[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    let otlp = support::otlp::OtlpReceiver::grpc();
    let app = HttpApp::start();
    let mock: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).unwrap();
    mock.create_topic("payments", 2, 1).unwrap();
    let http_port = free_port();
    let (sidecar, kafka_port) = Eventscope::sidecar_env(
        &mock.bootstrap_servers(),
        &[
            ("EVENTSCOPE_HTTP_UPSTREAM", &app.addr),
            ("EVENTSCOPE_HTTP_LISTEN", &format!("127.0.0.1:{http_port}")),
            ("EVENTSCOPE_SERVICE", "orders"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    );

    let hook = Webhook::start();
    let am_config = std::fs::read_to_string(root().join("deploy/alertmanager/alertmanager.yml"))
        .unwrap()
        .replace("http://alert-router.observability.svc:8080/", &format!("{}/", hook.url))
        .replace("group_wait: 30s", "group_wait: 1s")
        .replace("group_wait: 10s", "group_wait: 1s")
        .replace("group_interval: 5m", "group_interval: 1s");
    let am = alertmanager(&am_config);
    let rules = rule_files();
    let names: Vec<String> = rules.iter().map(|(n, _)| format!("  - {n}\n")).collect();
    let prom_config = [
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n".to_string(),
        format!("rule_files:\n{}", names.concat()),
        format!(
            "alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{}']\n",
            am.addr
        ),
        "scrape_configs:\n".to_string(),
        format!(
            "  - job_name: eventscope-collector\n    static_configs:\n      - targets: ['{}']\n",
            es.admin
        ),
        format!(
            "  - job_name: eventscope-sidecar\n    static_configs:\n      - targets: ['{}']\n",
            sidecar.admin
        ),
    ]
    .concat();
    let rules_ref: Vec<(&str, String)> = rules.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let prom = prometheus(&prom_config, &rules_ref);
    sidecar_traffic(&format!("127.0.0.1:{kafka_port}"), &format!("127.0.0.1:{http_port}"), &mock);

    // A slow consumer: 20 ms per record, committing each, while 12,000 records arrive at once.
    let consumer: BaseConsumer = client_config(
        &tansu.bootstrap(),
        &[("group.id", "orders-read-model"), ("enable.auto.commit", "false")],
    )
    .create()
    .unwrap();
    // The read model was caught up (committed at 0 on every partition) before the burst.
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset("orders", p, Offset::Offset(0)).unwrap();
    }
    consumer.commit(&tpl, CommitMode::Sync).unwrap();
    consumer.assign(&tpl).unwrap();
    let hurry = Arc::new(AtomicBool::new(false));
    let consumed = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (hurry, consumed, stop) = (hurry.clone(), consumed.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                    if !hurry.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let _ = consumer.commit_message(&m, CommitMode::Async);
                    consumed.fetch_add(1, Ordering::Relaxed);
                }
            }
            consumer.commit_consumer_state(CommitMode::Sync).ok();
        })
    };
    let p = producer(&tansu.bootstrap());
    let now = now_ms();
    for partition in 0..3 {
        produce(&p, "orders", partition, &vec![now; 4000]);
    }

    // Prometheus sees the lag past 10,000 through the collector ...
    wait_for(Duration::from_secs(60), "lag over 10,000 in Prometheus", || {
        query(
            &prom.addr,
            "sum by (cluster, consumergroup, topic) (kafka_consumergroup_lag{consumergroup=\"orders-read-model\"}) > 10000",
        )
        .first()
        .map(|(_, v)| *v)
    });
    // ... and Alertmanager routes the alert to the consumer-lag receiver, with the group's labels.
    let firing = hook.wait_for(Duration::from_secs(60), "KafkaConsumerLagHigh firing", |n| {
        n["status"] == "firing" && alert_named(n, "KafkaConsumerLagHigh").is_some()
    });
    assert_eq!(firing["receiver"], "kafka-consumer-lag", "{firing:#}");
    let alert = alert_named(&firing, "KafkaConsumerLagHigh").unwrap();
    assert_eq!(alert["status"], "firing");
    let labels = &alert["labels"];
    assert_eq!(
        (&labels["cluster"], &labels["consumergroup"], &labels["topic"], &labels["severity"]),
        (&"test".into(), &"orders-read-model".into(), &"orders".into(), &"warning".into()),
        "{alert:#}"
    );
    let summary = alert["annotations"]["summary"].as_str().unwrap();
    let behind: f64 = summary
        .split(" is ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(behind > 10_000.0 && behind <= 12_000.0, "{summary}");
    assert!(consumed.load(Ordering::Relaxed) < 2_000, "the consumer was slow");

    // The consumer catches up: the alert resolves.
    hurry.store(true, Ordering::Relaxed);
    wait_for(Duration::from_secs(60), "the consumer caught up", || {
        (consumed.load(Ordering::Relaxed) >= 12_000).then_some(())
    });
    let resolved = hook.wait_for(Duration::from_secs(90), "KafkaConsumerLagHigh resolved", |n| {
        n["status"] == "resolved"
            && alert_named(n, "KafkaConsumerLagHigh").is_some_and(|a| a["labels"]["consumergroup"] == "orders-read-model")
    });
    assert_eq!(resolved["receiver"], "kafka-consumer-lag");
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();

    // The seed's order saga: completed, compensated, one inconsistent (the inventory service offline: its
    // reservation is never released) and one stuck. SagaCompensationMissing reaches the sagas receiver.
    use support::saga::emit;
    for i in 0..3 {
        let id = format!("done-{i}");
        for t in [
            "OrderCreated",
            "InventoryReserved",
            "PaymentProcessed",
            "ShippingScheduled",
            "OrderCompleted",
        ] {
            emit(&p, &id, t, None);
        }
    }
    for t in ["OrderCreated", "InventoryReserved", "OrderFailed", "InventoryReleased"] {
        emit(&p, "declined-1", t, None);
    }
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    for t in [
        "OrderCreated",
        "InventoryReserved",
        "PaymentProcessed",
        "OrderFailed",
        "PaymentRefunded",
    ] {
        emit(&p, "incident-1", t, Some(tp));
    }
    for t in ["OrderCreated", "InventoryReserved"] {
        emit(&p, "stuck-1", t, None);
    }
    let firing = hook.wait_for(Duration::from_secs(60), "SagaCompensationMissing firing", |n| {
        n["status"] == "firing" && alert_named(n, "SagaCompensationMissing").is_some()
    });
    assert_eq!(firing["receiver"], "sagas", "{firing:#}");
    let alert = alert_named(&firing, "SagaCompensationMissing").unwrap();
    assert_eq!(
        (&alert["labels"]["saga"], &alert["labels"]["cluster"]),
        (&"order".into(), &"test".into())
    );
    let stuck = hook.wait_for(Duration::from_secs(60), "SagaStuck firing", |n| {
        n["status"] == "firing" && alert_named(n, "SagaStuck").is_some()
    });
    assert_eq!(alert_named(&stuck, "SagaStuck").unwrap()["labels"]["step"], "InventoryReserved");
    let listed: serde_json::Value = serde_json::from_str(&es.get("/sagas?state=inconsistent").unwrap().1).unwrap();
    assert_eq!(listed["sagas"][0]["id"], "incident-1");
    assert_eq!(listed["sagas"][0]["trace_id"], "0af7651916cd43dd8448eb211c80319c");

    // A JetStream consumer past 10,000: EventBacklogHigh, any broker, to the event-backlog receiver.
    let audit = |n: &serde_json::Value| {
        alert_named(n, "EventBacklogHigh")
            .filter(|a| a["labels"]["broker"] == "nats" && a["labels"]["consumer"] == "audit")
            .is_some()
    };
    let firing = hook.wait_for(Duration::from_secs(60), "EventBacklogHigh firing for NATS", |n| {
        n["status"] == "firing" && audit(n)
    });
    assert_eq!(firing["receiver"], "event-backlog", "{firing:#}");
    let alert = alert_named(&firing, "EventBacklogHigh").unwrap();
    assert_eq!(
        (
            &alert["labels"]["cluster"],
            &alert["labels"]["destination"],
            &alert["labels"]["consumer"]
        ),
        (&"events".into(), &"ORDERS".into(), &"audit".into()),
        "{alert:#}"
    );
    assert_eq!(alert["annotations"]["summary"], "10500 messages wait on nats ORDERS");
    // Every broker-specific series is exported (RabbitMQ's redelivered count exists once a message was
    // redelivered, which this traffic does not do).
    let names: Vec<&str> = eventscope::telemetry::contract::broker_names()
        .into_iter()
        .filter(|n| *n != "eventscope_rabbitmq_queue_redelivered_total")
        .collect();
    es.scrape().assert_exports(&names, "the collector's broker sources");

    // Every panel of every dashboard has data in this Prometheus.
    let queries = panel_queries();
    assert!(queries.len() > 50, "{} panel queries", queries.len());
    // The check can fail: a query for a group that does not exist is empty.
    assert!(query(&prom.addr, "kafka_consumergroup_lag{consumergroup=\"no-such-group\"}").is_empty());
    let empty = || -> Vec<String> {
        queries
            .iter()
            .filter(|(_, _, q)| query(&prom.addr, q).is_empty())
            .map(|(f, t, q)| format!("{f}: {t}: {q}"))
            .collect()
    };
    let last = std::cell::RefCell::new(Vec::new());
    let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(Duration::from_secs(30), "every dashboard panel has data", || {
            let e = empty();
            let done = e.is_empty();
            *last.borrow_mut() = e;
            done.then_some(())
        })
    }));
    assert!(ok.is_ok(), "panels without data:\n{}", last.borrow().join("\n"));
}
