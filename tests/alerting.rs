//! The alerting path end to end, every part real: tansu; the eventscope collector; Debian's Prometheus
//! scraping it with the shipped rules (`alerts/`, with `for:` shortened in this test's copy; the shipped
//! durations are covered by the promtool tests); Debian's Alertmanager with the shipped routing
//! (`deploy/alertmanager/alertmanager.yml`, receivers pointed at this test's webhook). A slow consumer
//! builds lag past the seed's 10,000 messages: `KafkaConsumerLagHigh` reaches the webhook firing with
//! the right cluster, group and topic, then resolved once the consumer catches up.

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
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

#[test]
fn consumer_lag_over_10000_fires_in_alertmanager_then_resolves() {
    let tansu = Tansu::start();
    tansu.create_topic("orders", 3);
    let es = Eventscope::collector(&collector_toml(&tansu.bootstrap(), ""));

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
    let prom_config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{}\
         alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{}']\n\
         scrape_configs:\n  - job_name: eventscope-collector\n    static_configs:\n      - targets: ['{}']\n",
        names.concat(),
        am.addr,
        es.admin
    );
    let rules_ref: Vec<(&str, String)> = rules.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let prom = prometheus(&prom_config, &rules_ref);

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
}
