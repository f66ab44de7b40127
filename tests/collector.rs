//! The collector against a real Kafka-protocol broker (tansu) with real librdkafka producers and
//! consumer groups. Every expected value comes from the test's own counts, offsets and timestamps.

mod support;

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::ClientConfig;
use support::*;

const C: &str = "test";

/// Known lags built by real producers and commits, asserted exactly at rest; lag seconds against the
/// records' own timestamps; a group with no members keeps reporting; every exported metric is present.
#[test]
fn lag_offsets_and_lag_seconds_are_exact_at_rest() {
    let tansu = Tansu::start();
    tansu.create_topic("orders", 3);
    let now = now_ms();
    // Record i of partition p was created (100 − i) seconds ago.
    let ts = |n: usize| -> Vec<i64> { (0..n).map(|i| now - (100 - i as i64) * 1000).collect() };
    let p = producer(&tansu.bootstrap());
    produce(&p, "orders", 0, &ts(10));
    produce(&p, "orders", 1, &ts(20));
    produce(&p, "orders", 2, &ts(30));

    let c = committer(&tansu.bootstrap(), "billing");
    // Check the broker's own accounting against ours before trusting it.
    assert_eq!(high_watermark(&c, "orders", 0), 10);
    assert_eq!(high_watermark(&c, "orders", 1), 20);
    assert_eq!(high_watermark(&c, "orders", 2), 30);
    commit(&c, "orders", &[(0, 4), (1, 20), (2, 0)]);

    let es = Eventscope::collector(&collector_toml(&tansu.bootstrap(), ""));
    let m = es.wait_metrics("billing lag", |m| {
        m.get("kafka_consumergroup_lag_sum", &[("consumergroup", "billing")])
            .map(|_| m.samples.len())
    });
    assert!(m > 0);
    let m = es.scrape();
    let g = |name: &str, p: &str| {
        m.get(
            name,
            &[("cluster", C), ("consumergroup", "billing"), ("topic", "orders"), ("partition", p)],
        )
    };
    assert_eq!(g("kafka_consumergroup_lag", "0"), Some(6.0));
    assert_eq!(g("kafka_consumergroup_lag", "1"), Some(0.0));
    assert_eq!(g("kafka_consumergroup_lag", "2"), Some(30.0));
    assert_eq!(g("kafka_consumergroup_current_offset", "0"), Some(4.0));
    assert_eq!(g("kafka_consumergroup_current_offset", "2"), Some(0.0));
    assert_eq!(
        m.get("kafka_consumergroup_lag_sum", &[("consumergroup", "billing"), ("topic", "orders")]),
        Some(36.0)
    );
    assert_eq!(
        m.get(
            "kafka_consumergroup_current_offset_sum",
            &[("consumergroup", "billing"), ("topic", "orders")]
        ),
        Some(24.0)
    );
    assert_eq!(
        m.get("kafka_topic_partition_current_offset", &[("topic", "orders"), ("partition", "2")]),
        Some(30.0)
    );
    assert_eq!(
        m.get("kafka_topic_partition_oldest_offset", &[("topic", "orders"), ("partition", "2")]),
        Some(0.0)
    );
    assert_eq!(m.get("kafka_topic_partitions", &[("topic", "orders")]), Some(3.0));
    // No members (the committer never joined): the group is visible, and stopped.
    assert_eq!(m.get("kafka_consumergroup_members", &[("consumergroup", "billing")]), Some(0.0));
    assert_eq!(m.status(C, "billing", "orders").as_deref(), Some("STOP"));

    // Lag seconds: the age of the record at the committed offset. Partition 0 waits at record 4
    // (created 96 s ago), partition 2 at record 0 (100 s ago), partition 1 is caught up.
    let scraped = now_ms();
    let expect = |i: i64| (scraped - (now - (100 - i) * 1000)) as f64 / 1000.0;
    let l0 = g("kafka_consumergroup_lag_seconds", "0").unwrap();
    let l2 = g("kafka_consumergroup_lag_seconds", "2").unwrap();
    assert!((l0 - expect(4)).abs() < 1.5, "lag seconds p0 {l0} vs {}", expect(4));
    assert!((l2 - expect(0)).abs() < 1.5, "lag seconds p2 {l2} vs {}", expect(0));
    assert_eq!(g("kafka_consumergroup_lag_seconds", "1"), Some(0.0));

    // Every metric of the contract that this scenario can produce is exported (nothing is appended while
    // the collector watches, so there is no append-rate skew to report, and a backlog that does not
    // shrink has no drain time).
    let names: Vec<&str> = eventscope::telemetry::contract::collector_names()
        .into_iter()
        .filter(|n| !["kafka_topic_partition_skew_ratio", "eventscope_backlog_drain_seconds"].contains(n))
        .collect();
    m.assert_exports(&names, "the collector");
    assert_eq!(es.get("/readyz").map(|r| r.0), Some(200));

    // A rewind to offset 0: lag seconds is the true age of record 0 (about 100 s), not years.
    commit(&c, "orders", &[(1, 0)]);
    let l1 = es.wait_metrics("rewound lag", |m| {
        (m.get(
            "kafka_consumergroup_lag",
            &[("consumergroup", "billing"), ("partition", "1"), ("topic", "orders")],
        ) == Some(20.0))
        .then(|| {
            m.get(
                "kafka_consumergroup_lag_seconds",
                &[("consumergroup", "billing"), ("partition", "1"), ("topic", "orders")],
            )
            .unwrap()
        })
    });
    assert!(
        (l1 - (now_ms() - (now - 100_000)) as f64 / 1000.0).abs() < 1.5,
        "rewound lag seconds {l1}"
    );
    let text = es.raw_metrics();
    assert!(!text.contains("NaN"), "no NaN anywhere");
}

/// Status transitions of a live member: same offset re-committed while lagging → STALL; offset moved
/// back → REWIND; the consumer leaves → STOP.
#[test]
fn status_follows_the_consumer() {
    let tansu = Tansu::start();
    tansu.create_topic("events", 1);
    let p = producer(&tansu.bootstrap());
    let now = now_ms();
    produce(&p, "events", 0, &(0..50).map(|i| now - 50_000 + i * 1000).collect::<Vec<_>>());

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", tansu.bootstrap())
        .set("group.id", "projector")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    consumer.subscribe(&["events"]).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(10));
    let target = stop.clone();
    let handle = std::thread::spawn(move || {
        // Keep the membership alive and re-commit the offset the test chooses (-1 = leave).
        loop {
            let o = target.load(std::sync::atomic::Ordering::Relaxed);
            if o < 0 {
                break;
            }
            let _ = consumer.poll(Duration::from_millis(100));
            if consumer.assignment().map(|a| a.count() > 0).unwrap_or(false) {
                let mut tpl = rdkafka::TopicPartitionList::new();
                tpl.add_partition_offset("events", 0, rdkafka::Offset::Offset(o)).unwrap();
                let _ = consumer.commit(&tpl, CommitMode::Sync);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        consumer.unsubscribe();
        drop(consumer);
    });

    let es = Eventscope::collector(&collector_toml(&tansu.bootstrap(), "status_window = 4"));
    es.wait_metrics("a member", |m| {
        m.get("kafka_consumergroup_members", &[("consumergroup", "projector")])
            .filter(|v| *v >= 1.0)
    });
    es.wait_metrics("STALL", |m| {
        (m.status(C, "projector", "events").as_deref() == Some("STALL")).then_some(())
    });
    stop.store(5, std::sync::atomic::Ordering::Relaxed);
    es.wait_metrics("REWIND", |m| {
        (m.status(C, "projector", "events").as_deref() == Some("REWIND")).then_some(())
    });
    stop.store(-1, std::sync::atomic::Ordering::Relaxed);
    handle.join().unwrap();
    es.wait_metrics("STOP", |m| {
        (m.status(C, "projector", "events").as_deref() == Some("STOP")).then_some(())
    });
    // Stopped, the group still reports its lag.
    let m = es.scrape();
    assert_eq!(
        m.get("kafka_consumergroup_lag", &[("consumergroup", "projector"), ("partition", "0")]),
        Some(45.0)
    );
}

/// The consistency window: counts equal the records committed, values match the records' ages at commit.
#[test]
fn consistency_window_counts_and_values() {
    let tansu = Tansu::start();
    tansu.create_topic("payments", 1);
    let p = producer(&tansu.bootstrap());
    let now = now_ms();
    // Records 0..50 created 40 s ago, 50..100 created 10 s ago.
    let mut ts: Vec<i64> = vec![now - 40_000; 50];
    ts.extend(vec![now - 10_000; 50]);
    produce(&p, "payments", 0, &ts);
    let c = committer(&tansu.bootstrap(), "ledger");
    commit(&c, "payments", &[(0, 0)]);

    let es = Eventscope::collector(&collector_toml(&tansu.bootstrap(), ""));
    let at = |m: &Metrics, o: f64| (m.get("kafka_consumergroup_current_offset", &[("consumergroup", "ledger")]) == Some(o)).then_some(());
    es.wait_metrics("offset 0 seen", |m| at(m, 0.0));
    // Let a second poll see offset 0 too, so the next commit is measured from it.
    std::thread::sleep(Duration::from_millis(700));
    commit(&c, "payments", &[(0, 50)]);
    es.wait_metrics("offset 50 seen", |m| at(m, 50.0));
    commit(&c, "payments", &[(0, 100)]);
    es.wait_metrics("offset 100 seen", |m| at(m, 100.0));
    let m = es.scrape();
    let h = |le: &str| {
        m.get(
            "eventscope_consistency_window_seconds_bucket",
            &[("consumergroup", "ledger"), ("topic", "payments"), ("le", le)],
        )
        .unwrap()
    };
    let count = m
        .get("eventscope_consistency_window_seconds_count", &[("consumergroup", "ledger")])
        .unwrap();
    assert_eq!(count, 100.0, "one observation per committed record");
    // 50 records about 10 s old at commit, 50 about 40 s old (plus at most a poll interval and a bit).
    assert_eq!(h("10"), 0.0);
    assert_eq!(h("20"), 50.0);
    assert_eq!(h("30"), 50.0);
    assert_eq!(h("60"), 100.0);
    let sum = m
        .get("eventscope_consistency_window_seconds_sum", &[("consumergroup", "ledger")])
        .unwrap();
    let elapsed = (now_ms() - now) as f64 / 1000.0;
    // Each window is (commit observed − created); created ages are 40 s and 10 s at `now`.
    assert!(sum >= 50.0 * 40.0 + 50.0 * 10.0, "sum {sum}");
    assert!(sum <= 50.0 * (40.0 + elapsed) + 50.0 * (10.0 + elapsed), "sum {sum}");
}

/// A broker killed and restarted: lag is withdrawn (not served stale), errors are counted, up is 0; once
/// the broker is back, collection recovers by itself.
#[test]
fn broker_restart_recovers() {
    let mut tansu = Tansu::start();
    let port = tansu.port;
    tansu.create_topic("orders", 1);
    let p = producer(&tansu.bootstrap());
    produce(&p, "orders", 0, &[now_ms(); 5]);
    commit(&committer(&tansu.bootstrap(), "g"), "orders", &[(0, 2)]);
    drop(p);

    let es = Eventscope::collector(&collector_toml(&tansu.bootstrap(), ""));
    es.wait_metrics("lag 3", |m| {
        (m.get("kafka_consumergroup_lag", &[("consumergroup", "g")]) == Some(3.0)).then_some(())
    });
    tansu.kill();
    es.wait_metrics("up = 0", |m| {
        (m.get("eventscope_collector_up", &[("cluster", C)]) == Some(0.0)).then_some(())
    });
    let m = es.scrape();
    assert!(!m.has("kafka_consumergroup_lag"), "no stale lag while the cluster is unreachable");
    assert!(
        m.get("eventscope_collector_errors_total", &[("cluster", C), ("kind", "connect")])
            .unwrap()
            >= 1.0
    );
    assert!(
        m.get("eventscope_collector_last_success_timestamp_seconds", &[("cluster", C)])
            .unwrap()
            > 0.0
    );
    assert_eq!(es.get("/healthz").map(|r| r.0), Some(200));

    // Same address, empty storage: rebuild a known state.
    let tansu = Tansu::start_on(port);
    tansu.create_topic("orders", 1);
    let p = producer(&tansu.bootstrap());
    produce(&p, "orders", 0, &[now_ms(); 7]);
    commit(&committer(&tansu.bootstrap(), "g"), "orders", &[(0, 1)]);
    es.wait_metrics("recovered lag 6", |m| {
        (m.get("eventscope_collector_up", &[("cluster", C)]) == Some(1.0)
            && m.get("kafka_consumergroup_lag", &[("consumergroup", "g")]) == Some(6.0))
        .then_some(())
    });
}

/// Filters and group lifecycle: denied groups and topics are not reported, and a group that is deleted
/// loses its series (no series leak).
#[test]
fn filters_and_deleted_groups() {
    let tansu = Tansu::start();
    tansu.create_topic("orders", 1);
    tansu.create_topic("audit", 1);
    let p = producer(&tansu.bootstrap());
    produce(&p, "orders", 0, &[now_ms(); 3]);
    produce(&p, "audit", 0, &[now_ms(); 3]);
    commit(&committer(&tansu.bootstrap(), "keep"), "orders", &[(0, 1)]);
    commit(&committer(&tansu.bootstrap(), "keep"), "audit", &[(0, 1)]);
    commit(&committer(&tansu.bootstrap(), "drop-me"), "orders", &[(0, 1)]);
    commit(&committer(&tansu.bootstrap(), "gone"), "orders", &[(0, 2)]);
    let toml = format!(
        "[collector]\npoll_interval = \"500ms\"\n[[clusters]]\nname = \"test\"\nkafka = {{ \"bootstrap.servers\" = \"{}\" }}\ngroup_deny = [\"^drop-\"]\ntopic_deny = [\"^audit$\"]\n",
        tansu.bootstrap()
    );
    let es = Eventscope::collector(&toml);
    es.wait_metrics("gone", |m| m.get("kafka_consumergroup_lag", &[("consumergroup", "gone")]));
    let m = es.scrape();
    assert_eq!(
        m.get("kafka_consumergroup_lag", &[("consumergroup", "keep"), ("topic", "orders")]),
        Some(2.0)
    );
    assert_eq!(m.count("kafka_consumergroup_lag", &[("topic", "audit")]), 0);
    assert_eq!(m.count("kafka_topic_partitions", &[("topic", "audit")]), 0);
    assert_eq!(m.count("kafka_consumergroup_lag", &[("consumergroup", "drop-me")]), 0);
    assert_eq!(
        m.count("kafka_topic_partitions", &[("topic", "__consumer_offsets")]),
        0,
        "internal topics are excluded by default"
    );

    delete_group(&tansu.bootstrap(), "gone");
    es.wait_metrics("deleted group's series gone", |m| {
        (m.count("kafka_consumergroup_lag", &[("consumergroup", "gone")]) == 0
            && m.count("kafka_consumergroup_status", &[("consumergroup", "gone")]) == 0
            && m.count("eventscope_consistency_window_seconds_count", &[("consumergroup", "gone")]) == 0)
            .then_some(())
    });
}

/// Deletes a group with a raw DeleteGroups request through eventscope's own Kafka client.
fn delete_group(bootstrap: &str, group: &str) {
    use kafka_protocol::messages::{DeleteGroupsRequest, GroupId};
    use kafka_protocol::protocol::StrBytes;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = eventscope::kafka::Connection::connect(bootstrap, "test", Duration::from_secs(5), 1 << 20, &Default::default())
            .await
            .unwrap();
        let v = conn.require_version::<DeleteGroupsRequest>(2).expect("tansu supports DeleteGroups");
        let r = conn
            .send(
                &DeleteGroupsRequest::default().with_groups_names(vec![GroupId(StrBytes::from_string(group.into()))]),
                v,
            )
            .await
            .unwrap();
        assert_eq!(r.results[0].error_code, 0, "DeleteGroups {group}");
    });
}

/// A busy, bursty topic with a consumer that keeps up: every sample of lag seconds is the age of the real
/// record at the committed offset (0 when caught up), never a bounce to the poll interval or beyond as
/// interpolating exporters do. Ground truth: the producer records each burst's offsets and timestamp.
#[test]
fn lag_seconds_on_a_bursty_topic_matches_ground_truth() {
    const BURST: i64 = 50;
    let tansu = Tansu::start();
    tansu.create_topic("clicks", 1);
    let bootstrap = tansu.bootstrap();
    let es = Eventscope::collector(&collector_toml(&bootstrap, ""));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bursts = std::sync::Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let (stop_p, bursts_p, b) = (stop.clone(), bursts.clone(), bootstrap.clone());
    let producer_thread = std::thread::spawn(move || {
        let p = producer(&b);
        while !stop_p.load(std::sync::atomic::Ordering::Relaxed) {
            // Burst k is offsets [50k, 50k + 50), all created at the same instant; then quiet.
            let ts = now_ms();
            bursts_p.lock().unwrap().push(ts);
            produce(&p, "clicks", 0, &[ts; BURST as usize]);
            std::thread::sleep(Duration::from_millis(700));
        }
    });
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "counter")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["clicks"]).unwrap();
    let mut samples = Vec::new();
    let started = std::time::Instant::now();
    let mut last_sample = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
            let mut tpl = rdkafka::TopicPartitionList::new();
            tpl.add_partition_offset("clicks", 0, rdkafka::Offset::Offset(rdkafka::Message::offset(&m) + 1))
                .unwrap();
            let _ = consumer.commit(&tpl, CommitMode::Async);
        }
        if started.elapsed() > Duration::from_secs(2) && last_sample.elapsed() > Duration::from_millis(250) {
            last_sample = std::time::Instant::now();
            let scraped_at = now_ms();
            let m = es.scrape();
            let want = [("consumergroup", "counter"), ("partition", "0")];
            if let (Some(c), Some(lag), Some(secs)) = (
                m.get("kafka_consumergroup_current_offset", &want),
                m.get("kafka_consumergroup_lag", &want),
                m.get("kafka_consumergroup_lag_seconds", &want),
            ) {
                samples.push((scraped_at, c as i64, lag, secs));
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    producer_thread.join().unwrap();
    let bursts = bursts.lock().unwrap().clone();
    assert!(samples.len() >= 15, "{samples:?}");
    assert!(
        samples.iter().filter(|s| s.2 > 0.0).count() >= 3,
        "samples taken mid-burst: {samples:?}"
    );
    for &(scraped_at, committed, lag, secs) in &samples {
        assert!(secs.is_finite() && secs >= 0.0, "{secs}");
        if lag == 0.0 {
            assert_eq!(secs, 0.0, "caught up means 0");
            continue;
        }
        // The snapshot was taken at most one poll (500 ms) plus its duration before the scrape.
        let age_at_scrape = (scraped_at - bursts[(committed / BURST) as usize]) as f64 / 1000.0;
        assert!(
            secs <= age_at_scrape + 0.05 && secs >= age_at_scrape - 1.5,
            "lag seconds {secs} for a record {age_at_scrape} s old at scrape"
        );
    }
}

/// `lag_seconds_method = "interpolate"` never reads records: append times come from log-end samples.
/// Records older than the first sample get a lower bound, never an extrapolation.
#[test]
fn interpolated_lag_seconds() {
    let tansu = Tansu::start();
    tansu.create_topic("orders", 1);
    let p = producer(&tansu.bootstrap());
    // Created 1 hour ago, but appended just now: interpolation can only know when the log end moved.
    produce(&p, "orders", 0, &[now_ms() - 3_600_000; 10]);
    let c = committer(&tansu.bootstrap(), "g");
    commit(&c, "orders", &[(0, 0)]);
    let es = Eventscope::collector(&collector_toml(&tansu.bootstrap(), "lag_seconds_method = \"interpolate\""));
    let first = es.wait_metrics("lag seconds", |m| {
        m.get("kafka_consumergroup_lag_seconds", &[("consumergroup", "g")])
    });
    assert!(
        first < 5.0,
        "a lower bound since the first sample, not the records' CreateTime: {first}"
    );
    std::thread::sleep(Duration::from_secs(2));
    // Ten new records appended at a known time; the group moves to the first of them.
    let appended = now_ms();
    produce(&p, "orders", 0, &[appended; 10]);
    commit(&c, "orders", &[(0, 10)]);
    std::thread::sleep(Duration::from_secs(3));
    let v = es.wait_metrics("offset 10", |m| {
        (m.get("kafka_consumergroup_current_offset", &[("consumergroup", "g")]) == Some(10.0))
            .then(|| m.get("kafka_consumergroup_lag_seconds", &[("consumergroup", "g")]).unwrap())
    });
    let truth = (now_ms() - appended) as f64 / 1000.0;
    // Interpolation between samples: off by at most one poll interval (500 ms) plus scrape delays.
    assert!((v - truth).abs() < 1.2, "interpolated {v} vs appended {truth} s ago");
}

/// SIGTERM on a healthy collector: it stops at once, cleanly.
#[test]
fn sigterm_stops_the_collector() {
    let tansu = Tansu::start();
    let es = Eventscope::collector(&collector_toml(&tansu.bootstrap(), ""));
    es.wait_metrics("a first collection", |m| {
        (m.get("eventscope_collector_up", &[("cluster", C)]) == Some(1.0)).then_some(())
    });
    let (status, took) = es.terminate();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(2), "stopped after {took:?}");
}

/// The seed's "monitor partition skew to avoid hotspots": 30, 10 and 10 records appended to three
/// partitions within the status window give an append-rate skew of 30 / (50 / 3) = 1.8; a group committed
/// at 0 lags 30, 10 and 10, the same skew; the cross-broker view shows the group's 50.
#[test]
fn partition_skew_of_appends_and_of_lag() {
    let tansu = Tansu::start();
    tansu.create_topic("hot", 3);
    let c = committer(&tansu.bootstrap(), "reader");
    commit(&c, "hot", &[(0, 0), (1, 0), (2, 0)]);
    let es = Eventscope::collector(&collector_toml(&tansu.bootstrap(), "status_window = 20\n"));
    es.wait_metrics("the group seen", |m| {
        m.get("kafka_consumergroup_lag_sum", &[("consumergroup", "reader")])
    });
    // Nothing appended yet: no skew to report.
    assert_eq!(es.scrape().count("kafka_topic_partition_skew_ratio", &[("topic", "hot")]), 0);
    let p = producer(&tansu.bootstrap());
    let now = now_ms();
    for (partition, n) in [(0, 30), (1, 10), (2, 10)] {
        produce(&p, "hot", partition, &vec![now; n]);
    }
    let m = es.wait_metrics("the appends' skew", |m| {
        (m.get("kafka_consumergroup_lag_sum", &[("consumergroup", "reader")]) == Some(50.0)
            && m.get("kafka_topic_partition_skew_ratio", &[("topic", "hot")]).is_some())
        .then(|| Metrics::parse(&es.raw_metrics()))
    });
    let skew = m.get("kafka_topic_partition_skew_ratio", &[("topic", "hot")]).unwrap();
    assert!((skew - 1.8).abs() < 1e-9, "append skew {skew}");
    let lag_skew = m
        .get(
            "kafka_consumergroup_lag_skew_ratio",
            &[("consumergroup", "reader"), ("topic", "hot")],
        )
        .unwrap();
    assert!((lag_skew - 1.8).abs() < 1e-9, "lag skew {lag_skew}");
    assert_eq!(
        m.get(
            "eventscope_backlog_messages",
            &[("broker", "kafka"), ("cluster", C), ("destination", "hot"), ("consumer", "reader")]
        ),
        Some(50.0)
    );
}
