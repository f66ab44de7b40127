//! The seed's other brokers in the collector: real RabbitMQ and NATS servers from Debian, started here on
//! 127.0.0.1, real clients (pika from PyPI for AMQP, async-nats for JetStream), backlogs built to known
//! sizes and asserted exactly at rest, ages against the messages' own timestamps, STOP and STALL, a
//! server killed and restarted.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::brokers::{pika, Moto, NatsServer, Rabbitmq};
use support::{now_ms, wait_for, Eventscope, Metrics};

const BACKLOG: &str = "eventscope_backlog_messages";
const AGE: &str = "eventscope_backlog_age_seconds";
const DRAIN: &str = "eventscope_backlog_drain_seconds";

/// The status whose `eventscope_backlog_status` sample is 1.
fn status(m: &Metrics, broker: &str, cluster: &str, destination: &str, consumer: &str) -> Option<String> {
    m.samples
        .iter()
        .find(|(n, l, v)| {
            n == "eventscope_backlog_status"
                && *v == 1.0
                && [
                    ("broker", broker),
                    ("cluster", cluster),
                    ("destination", destination),
                    ("consumer", consumer),
                ]
                .iter()
                .all(|(k, want)| l.get(*k).map(String::as_str) == Some(*want))
        })
        .map(|(_, l, _)| l["status"].clone())
}

fn queue(d: &str) -> [(&'static str, &str); 3] {
    [("broker", "rabbitmq"), ("cluster", "tasks"), ("destination", d)]
}

#[test]
fn rabbitmq_queues_backlog_age_status_and_a_restart() {
    let mut rmq = Rabbitmq::start();
    let es = Eventscope::collector(&format!(
        r#"
[collector]
poll_interval = "1s"
status_window = 3
[[rabbitmq]]
name = "tasks"
url = "http://{0}"
queue_deny = ["^ignored"]
# The same node read a page per queue on three connections, and the first page then one unpaged answer.
[[rabbitmq]]
name = "tasks-pages"
url = "http://{0}"
queue_deny = ["^ignored"]
page_size = 1
max_unpaged_queues = 0
concurrency = 3
[[rabbitmq]]
name = "tasks-unpaged"
url = "http://{0}"
queue_deny = ["^ignored"]
page_size = 1
"#,
        rmq.management()
    ));
    let port = rmq.amqp_port.to_string();
    // Past the seed's 10,000, published two minutes ago by the AMQP timestamp property.
    let orders_published: i64 = pika(&["publish", &port, "orders", "12000", "120"]).parse().unwrap();
    pika(&["publish", &port, "ignored", "5"]);
    // No timestamps: the age is interpolated on the publish count. The queue is declared empty and seen
    // so by the collector first (a count of 0 to interpolate from), and the test watches the management
    // API itself for when the statistics count the 300: the age cannot be known before then.
    pika(&["publish", &port, "emails", "0"]);
    es.wait_metrics("the empty emails queue", |m| {
        (m.get(BACKLOG, &queue("emails")) == Some(0.0)).then_some(())
    });
    let emails_published: i64 = pika(&["publish", &port, "emails", "300"]).parse().unwrap();
    let emails_counted = wait_for(Duration::from_secs(30), "the statistics counting 300 emails", || {
        let (_, body) = rmq.api("/api/queues/%2F/emails?columns=message_stats.publish")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (v["message_stats"]["publish"].as_u64() == Some(300)).then(now_ms)
    });
    std::thread::sleep(Duration::from_secs(4));
    pika(&["publish", &port, "emails", "200"]);
    // A consumer that takes 10 and never acks: STALL.
    pika(&["publish", &port, "stalled", "100"]);
    let mut holder = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/rabbitmq_traffic.py"))
        .args(["hold", &port, "stalled", "10"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "held");

    let m = es.wait_metrics("the queues' backlogs at rest", |m| {
        let settled = m.get(BACKLOG, &queue("orders")) == Some(12000.0)
            && m.get(BACKLOG, &queue("emails")) == Some(500.0)
            && m.get(
                "eventscope_rabbitmq_queue_messages_unacked",
                &[("cluster", "tasks"), ("destination", "stalled")],
            ) == Some(10.0)
            && status(m, "rabbitmq", "tasks", "stalled", "").as_deref() == Some("STALL");
        settled.then(|| Metrics::parse(&es.raw_metrics()))
    });
    let scraped = now_ms();
    assert_eq!(m.get(BACKLOG, &queue("stalled")), Some(100.0));
    // The page's view has the same rows (rebuilt every 5 s from what /metrics serves).
    let row = wait_for(Duration::from_secs(20), "the queues in the page's view", || {
        let (_, body) = es.get("/api/v1/view")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let row = v["backlogs"]
            .as_array()?
            .iter()
            .find(|r| r["broker"] == "rabbitmq" && r["cluster"] == "tasks" && r["destination"] == "orders")?
            .clone();
        (row["messages"] == 12000.0).then_some(row)
    });
    assert_eq!(row["status"], "STOP", "{row}");
    assert!(row["age_seconds"].as_f64().unwrap() >= 120.0, "{row}");
    // Every way of reading the listing gives the same queues and backlogs.
    let backlogs = |m: &Metrics, cluster: &str| {
        let mut v: Vec<(String, u64)> = m
            .samples
            .iter()
            .filter(|(n, l, _)| n == BACKLOG && l.get("cluster").map(String::as_str) == Some(cluster))
            .map(|(_, l, v)| (l["destination"].clone(), *v as u64))
            .collect();
        v.sort();
        v
    };
    let want = backlogs(&m, "tasks");
    assert_eq!(want.len(), 3, "{want:?}");
    es.wait_metrics("the paged and unpaged readers agree", |m| {
        (backlogs(m, "tasks-pages") == want && backlogs(m, "tasks-unpaged") == want).then_some(())
    });
    let stalled = [("cluster", "tasks"), ("destination", "stalled")];
    assert_eq!(m.get("eventscope_rabbitmq_queue_messages_ready", &stalled), Some(90.0));
    assert_eq!(m.get("eventscope_rabbitmq_queue_consumers", &stalled), Some(1.0));
    // No consumer at all: STOP.
    assert_eq!(status(&m, "rabbitmq", "tasks", "orders", "").as_deref(), Some("STOP"));
    assert_eq!(m.count(BACKLOG, &[("destination", "ignored")]), 0, "queue_deny");
    // head_message_timestamp: whole seconds, taken at the poll (at most 1 s before the scrape).
    let orders_age = m.get(AGE, &queue("orders")).unwrap();
    let truth = 120.0 + (scraped - orders_published) as f64 / 1000.0;
    assert!((orders_age - truth).abs() <= 2.5, "orders age {orders_age}, truth {truth}");
    // Interpolated from the last poll that counted 0: never older than the truth by more than a poll
    // interval (1 s, and 0.5 s of scheduling), never younger than the time since the statistics counted
    // the 300 (less the poll interval between the age's poll and the scrape, and the same 0.5 s). The
    // statistics' own delay, which makes the difference, is measured, not assumed.
    let truth = (scraped - emails_published) as f64 / 1000.0;
    let counted = (scraped - emails_counted) as f64 / 1000.0;
    let emails_age = m.get(AGE, &queue("emails")).unwrap();
    assert!(
        emails_age <= truth + 1.5 && emails_age >= counted - 1.5,
        "emails age {emails_age}, truth {truth}, counted by the statistics {counted} s before the scrape"
    );
    assert_eq!(
        m.get(
            "eventscope_rabbitmq_queue_published_total",
            &[("cluster", "tasks"), ("destination", "emails")]
        ),
        Some(500.0)
    );
    assert!(
        m.get(DRAIN, &queue("orders")).is_none(),
        "a backlog that does not shrink has no drain time"
    );

    // Consumed to the end: 0, OK, drain 0, and every message counted as acked.
    pika(&["consume", &port, "orders", "12000"]);
    es.wait_metrics("orders consumed", |m| {
        (m.get(BACKLOG, &queue("orders")) == Some(0.0)
            && status(m, "rabbitmq", "tasks", "orders", "").as_deref() == Some("OK")
            && m.get(DRAIN, &queue("orders")) == Some(0.0)
            && m.get(
                "eventscope_rabbitmq_queue_acked_total",
                &[("cluster", "tasks"), ("destination", "orders")],
            ) == Some(12000.0))
        .then_some(())
    });
    drop(holder.stdin.take());
    let _ = holder.wait();

    // The node crashes: its series are withdrawn, not served stale; it comes back by itself.
    rmq.kill();
    let m = es.wait_metrics("the node's series withdrawn", |m| {
        (m.count(BACKLOG, &[("cluster", "tasks")]) == 0 && m.get("eventscope_collector_up", &[("cluster", "tasks")]) == Some(0.0))
            .then_some(m.samples.len())
    });
    assert!(m > 0);
    let errors = es
        .scrape()
        .get("eventscope_collector_errors_total", &[("cluster", "tasks"), ("kind", "connect")])
        .unwrap();
    assert!(errors >= 1.0);
    rmq.restart();
    // Durable queue, persistent messages: the same 500 after the restart.
    wait_for(Duration::from_secs(60), "collection back after the restart", || {
        let m = es.scrape();
        (m.get(BACKLOG, &queue("emails")) == Some(500.0) && m.get("eventscope_collector_up", &[("cluster", "tasks")]) == Some(1.0))
            .then_some(())
    });
    let (status, _) = es.terminate();
    assert!(status.success());
}

mod nats {
    use super::*;
    use async_nats::jetstream::{self, consumer::pull, stream};
    use futures::StreamExt;

    fn consumer(c: &str) -> [(&'static str, &str); 4] {
        [
            ("broker", "nats"),
            ("cluster", "events"),
            ("destination", "ORDERS"),
            ("consumer", c),
        ]
    }

    async fn publish(js: &jetstream::Context, n: usize) {
        for i in 0..n {
            js.publish(format!("orders.{}", i % 3), "order".into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    }

    /// Fetches `n` messages from a durable pull consumer and acks them (double ack: the floor has moved
    /// when it returns).
    async fn ack(c: &jetstream::consumer::Consumer<pull::Config>, n: usize) {
        let mut msgs = c.fetch().max_messages(n).expires(Duration::from_secs(5)).messages().await.unwrap();
        let mut done = 0;
        while let Some(m) = msgs.next().await {
            m.unwrap().double_ack().await.unwrap();
            done += 1;
        }
        assert_eq!(done, n);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jetstream_consumers_backlog_measured_age_consistency_and_a_restart() {
        let mut server = NatsServer::start();
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = jetstream::new(client.clone());
        let stream = js
            .create_stream(stream::Config {
                name: "ORDERS".into(),
                subjects: vec!["orders.*".into()],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .unwrap();
        let billing = stream
            .create_consumer(pull::Config {
                durable_name: Some("billing".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        stream
            .create_consumer(pull::Config {
                durable_name: Some("audit".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        publish(&js, 500).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        publish(&js, 1000).await;
        ack(&billing, 500).await;
        // The oldest message billing has not consumed is the 501st: its stored time is the truth.
        let truth_ts = stream.get_raw_message(501).await.unwrap().time.unix_timestamp_nanos() as i64 / 1_000_000;

        let url = server.url();
        let es = tokio::task::spawn_blocking(move || {
            Eventscope::collector(&format!(
                "[collector]\npoll_interval = \"1s\"\nstatus_window = 3\n[[nats]]\nname = \"events\"\nservers = [\"{url}\"]\n"
            ))
        })
        .await
        .unwrap();
        let es = std::sync::Arc::new(es);
        let scrape = |es: std::sync::Arc<Eventscope>| async move { tokio::task::spawn_blocking(move || es.scrape()).await.unwrap() };
        let until = |what: &'static str, es: std::sync::Arc<Eventscope>, f: fn(&Metrics) -> bool| async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let m = scrape(es.clone()).await;
                if f(&m) {
                    return m;
                }
                assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        let m = until("the consumers' backlogs", es.clone(), |m| {
            m.get(BACKLOG, &consumer("billing")) == Some(1000.0)
                && m.get(BACKLOG, &consumer("audit")) == Some(1500.0)
                && status(m, "nats", "events", "ORDERS", "audit").as_deref() == Some("STOP")
        })
        .await;
        let scraped = now_ms();
        let age = m.get(AGE, &consumer("billing")).unwrap();
        let truth = (scraped - truth_ts) as f64 / 1000.0;
        // Measured at the poll, at most one poll interval (1 s) before the scrape.
        assert!(age <= truth + 0.05 && age >= truth - 1.5, "billing age {age}, truth {truth}");
        // The stream's first message is 3 s older than the 501st: the age is not the stream's.
        let audit_age = m.get(AGE, &consumer("audit")).unwrap();
        assert!(audit_age >= age + 2.5, "audit {audit_age}, billing {age}");
        let labels = [("cluster", "events"), ("destination", "ORDERS"), ("consumer", "billing")];
        assert_eq!(m.get("eventscope_nats_consumer_pending_messages", &labels), Some(1000.0));
        assert_eq!(
            m.get("eventscope_nats_consumer_ack_pending_messages", &labels),
            Some(0.0),
            "{}",
            es.raw_metrics()
        );
        assert_eq!(
            m.get(
                "eventscope_nats_stream_messages",
                &[("cluster", "events"), ("destination", "ORDERS")]
            ),
            Some(1500.0)
        );
        assert_eq!(
            m.get(
                "eventscope_nats_stream_last_sequence",
                &[("cluster", "events"), ("destination", "ORDERS")]
            ),
            Some(1500.0)
        );

        // Consumption in steps: a drain time while it shrinks, and the floor's movement in the
        // consistency window: exactly the messages acked while the collector watched.
        let mut drains = Vec::new();
        for _ in 0..4 {
            ack(&billing, 200).await;
            tokio::time::sleep(Duration::from_millis(1100)).await;
            drains.extend(scrape(es.clone()).await.get(DRAIN, &consumer("billing")));
        }
        until("billing at 200", es.clone(), |m| {
            m.get(BACKLOG, &consumer("billing")) == Some(200.0)
                && m.get(
                    "eventscope_consistency_window_seconds_count",
                    &[
                        ("broker", "nats"),
                        ("cluster", "events"),
                        ("topic", "ORDERS"),
                        ("consumergroup", "billing"),
                    ],
                ) == Some(800.0)
        })
        .await;
        // 200 acked a second, 200 left: about a second to drain.
        assert!(drains.iter().any(|d| *d > 0.0 && *d < 10.0), "drain times seen {drains:?}");

        // The server crashes: withdrawn; restarted on the same store: back by itself, same backlog.
        server.kill();
        until("nats series withdrawn", es.clone(), |m| {
            m.count(BACKLOG, &[("cluster", "events")]) == 0 && m.get("eventscope_collector_up", &[("cluster", "events")]) == Some(0.0)
        })
        .await;
        server.restart();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let m = scrape(es.clone()).await;
            if m.get(BACKLOG, &consumer("audit")) == Some(1500.0) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "collection did not come back");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        drop(client);
        let es = std::sync::Arc::try_unwrap(es).ok().unwrap();
        let (status, _) = es.terminate();
        assert!(status.success());
    }
}

#[test]
fn sqs_queues_dead_letters_and_sns_subscriptions_on_moto() {
    let moto = Moto::start();
    moto.setup();
    let es = Eventscope::collector_env(
        &format!(
            "[collector]\npoll_interval = \"1s\"\nstatus_window = 3\n[[sqs]]\nname = \"edge\"\nregion = \"eu-west-1\"\nendpoint_url = \"{}\"\n",
            moto.endpoint()
        ),
        &[("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_EC2_METADATA_DISABLED", "true")],
    );
    let q = |d: &'static str| [("broker", "sqs"), ("cluster", "edge"), ("destination", d)];
    let m = es.wait_metrics("the SQS queues", |m| {
        (status(m, "sqs", "edge", "orders", "").as_deref() == Some("STALL")
            && status(m, "sqs", "edge", "idle", "").as_deref() == Some("STOP"))
        .then(|| Metrics::parse(&es.raw_metrics()))
    });
    // Visible + in flight, exactly; delayed messages are not a backlog yet.
    assert_eq!(m.get(BACKLOG, &q("orders")), Some(1200.0));
    let orders = [("cluster", "edge"), ("destination", "orders")];
    assert_eq!(m.get("eventscope_sqs_queue_visible_messages", &orders), Some(1000.0));
    assert_eq!(m.get("eventscope_sqs_queue_in_flight_messages", &orders), Some(200.0));
    assert_eq!(m.get(BACKLOG, &q("idle")), Some(50.0));
    assert_eq!(m.get(BACKLOG, &q("delayed")), Some(0.0));
    assert_eq!(
        m.get("eventscope_sqs_queue_delayed_messages", &[("destination", "delayed")]),
        Some(30.0)
    );
    // The dead-letter queue, reported as the payments queue's.
    assert_eq!(
        m.get(
            "eventscope_sqs_queue_dead_letter_messages",
            &[("destination", "payments"), ("dead_letter_queue", "payments-dlq")]
        ),
        Some(5.0)
    );
    // The SNS topic that feeds orders.
    assert_eq!(
        m.get(
            "eventscope_sqs_queue_sns_subscription_info",
            &[("destination", "orders"), ("sns_topic", "order-events")]
        ),
        Some(1.0)
    );
    assert_eq!(m.count("eventscope_sqs_queue_sns_subscription_info", &[("destination", "idle")]), 0);
    // No age for SQS: its API does not tell it.
    assert_eq!(m.count(AGE, &[("broker", "sqs")]), 0);
    let (status, _) = es.terminate();
    assert!(status.success());
}

/// A hostile management API: one listener per behaviour, each connection served on its own thread.
fn hostile_http(behaviour: &'static str) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf);
                match behaviour {
                    // Says 2 GB and streams until the client gives up.
                    "huge" => {
                        let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
                        let chunk = format!("10000\r\n{}\r\n", "[".repeat(0x10000));
                        while c.write_all(chunk.as_bytes()).is_ok() {}
                    }
                    "garbage" => {
                        let body = r#"{"items":[{"name":5,"vhost":"#;
                        let _ = write!(c, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                        std::thread::sleep(Duration::from_secs(5));
                    }
                    // Accepts, reads, never answers.
                    _ => std::thread::sleep(Duration::from_secs(120)),
                }
            });
        }
    });
    port
}

#[test]
fn hostile_management_api_answers_are_counted_and_the_other_sources_carry_on() {
    let nats = NatsServer::start();
    let mut toml = "[collector]\npoll_interval = \"1s\"\nrequest_timeout = \"1s\"\nmax_response_bytes = 1048576\n".to_string();
    for b in ["huge", "garbage", "slow"] {
        toml += &format!("[[rabbitmq]]\nname = \"{b}\"\nurl = \"http://127.0.0.1:{}\"\n", hostile_http(b));
    }
    toml += &format!("[[nats]]\nname = \"events\"\nservers = [\"{}\"]\n", nats.url());
    let es = Eventscope::collector(&toml);
    let errors = |m: &Metrics, cluster: &str, kind: &str| {
        m.get("eventscope_collector_errors_total", &[("cluster", cluster), ("kind", kind)])
            .unwrap_or(0.0)
    };
    let m = es.wait_metrics("every hostile answer counted", |m| {
        (errors(m, "huge", "protocol") >= 2.0 && errors(m, "garbage", "protocol") >= 2.0 && errors(m, "slow", "timeout") >= 2.0)
            .then(|| Metrics::parse(&es.raw_metrics()))
    });
    for b in ["huge", "garbage", "slow"] {
        assert_eq!(m.get("eventscope_collector_up", &[("cluster", b)]), Some(0.0), "{b}");
        assert_eq!(m.count(BACKLOG, &[("cluster", b)]), 0, "{b}: nothing served");
    }
    // The healthy source beside them is collected all along.
    assert_eq!(m.get("eventscope_collector_up", &[("cluster", "events")]), Some(1.0));
    // A 2 GB answer was cut at the limit, not buffered.
    let rss = es.peak_rss() / 1e6;
    assert!(rss < 100.0, "peak RSS {rss} MB");
    let (status, _) = es.terminate();
    assert!(status.success());
}

/// A hostile NATS server: speaks enough of the protocol for a client to connect (INFO, PONG), then answers
/// every request with `behaviour`: `garbage` (a JetStream answer that is not one) or `slow` (nothing).
fn hostile_nats(behaviour: &'static str) -> u16 {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(c) = conn else { continue };
            std::thread::spawn(move || {
                let mut w = c.try_clone().unwrap();
                let info = format!(
                    "INFO {{\"server_id\":\"hostile\",\"version\":\"2.9.10\",\"proto\":1,\"host\":\"127.0.0.1\",\"port\":{port},\"max_payload\":1048576,\"headers\":true,\"jetstream\":true}}\r\n"
                );
                if w.write_all(info.as_bytes()).is_err() {
                    return;
                }
                let mut r = BufReader::new(c);
                let mut sid = String::from("1");
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                    let parts: Vec<String> = line.split_whitespace().map(str::to_string).collect();
                    line.clear();
                    let Some(op) = parts.first() else { continue };
                    match op.as_str() {
                        "PING" => {
                            let _ = w.write_all(b"PONG\r\n");
                        }
                        "SUB" if parts.len() >= 3 => sid = parts[parts.len() - 1].clone(),
                        "PUB" | "HPUB" if parts.len() >= 4 => {
                            let total: usize = parts[parts.len() - 1].parse().unwrap_or(0);
                            let mut body = vec![0u8; total.min(1 << 20) + 2];
                            if r.read_exact(&mut body).is_err() {
                                return;
                            }
                            match behaviour {
                                "garbage" => {
                                    let payload =
                                        r#"{"type":"io.nats.jetstream.api.v1.stream_list_response","total":1,"streams":[{"config":5"#;
                                    let _ = write!(w, "MSG {} {sid} {}\r\n{payload}\r\n", parts[2], payload.len());
                                }
                                // An answer announced at 2 GB, streamed until the client hangs up; and a
                                // protocol line that never ends.
                                "huge" | "endless" => {
                                    if behaviour == "huge" {
                                        let _ = write!(w, "MSG {} {sid} 2000000000\r\n", parts[2]);
                                    }
                                    let chunk = vec![b'x'; 1 << 16];
                                    let mut sent = 0usize;
                                    while sent < 4_000_000_000 && w.write_all(&chunk).is_ok() {
                                        sent += chunk.len();
                                    }
                                    return;
                                }
                                _ => {}
                            }
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    port
}

#[test]
fn hostile_jetstream_answers_are_counted_and_the_other_sources_carry_on() {
    let nats = NatsServer::start();
    let mut toml = "[collector]\npoll_interval = \"1s\"\nrequest_timeout = \"1s\"\n".to_string();
    let hostile = ["garbage", "slow", "huge", "endless"];
    for b in hostile {
        toml += &format!("[[nats]]\nname = \"{b}\"\nservers = [\"nats://127.0.0.1:{}\"]\n", hostile_nats(b));
    }
    toml += &format!("[[nats]]\nname = \"events\"\nservers = [\"{}\"]\n", nats.url());
    let es = Eventscope::collector(&toml);
    let errors = |m: &Metrics, cluster: &str, kinds: &[&str]| -> f64 {
        kinds
            .iter()
            .map(|k| {
                m.get("eventscope_collector_errors_total", &[("cluster", cluster), ("kind", k)])
                    .unwrap_or(0.0)
            })
            .sum()
    };
    let any = ["protocol", "timeout", "connect"];
    let m = es.wait_metrics("every hostile answer counted", |m| {
        (errors(m, "garbage", &["protocol"]) >= 2.0
            && errors(m, "slow", &["timeout"]) >= 2.0
            && errors(m, "huge", &any) >= 2.0
            && errors(m, "endless", &any) >= 2.0)
            .then(|| Metrics::parse(&es.raw_metrics()))
    });
    // The 2 GB answer and the endless line were cut off (the client's buffer is bounded), not held.
    let rss = es.peak_rss() / 1e6;
    assert!(rss < 100.0, "peak RSS {rss} MB");
    for b in hostile {
        assert_eq!(m.get("eventscope_collector_up", &[("cluster", b)]), Some(0.0), "{b}");
        assert_eq!(m.count(BACKLOG, &[("cluster", b)]), 0, "{b}: nothing served");
    }
    assert_eq!(m.get("eventscope_collector_up", &[("cluster", "events")]), Some(1.0));
    let (status, _) = es.terminate();
    assert!(status.success());
}
