//! Collection at scale on a real broker (tansu): G consumer groups, each committed on a topic of 10
//! partitions with a known lag. In the same run, on the same broker and groups:
//! - **eventscope** (the release binary as its own process, `poll_interval = 5s`): poll duration from its
//!   own histogram, `/metrics` render time (first scrape after a new snapshot) and cached scrape time,
//!   resident memory;
//! - **baseline**: what a team writes with librdkafka (rdkafka): per group, a consumer with that group id
//!   reading `committed_offsets`, and `fetch_watermarks` per partition: the approach of simple exporters.
//!   Peer tools cannot run here: Burrow needs ZooKeeper and `__consumer_offsets`, which tansu lacks.
//!
//! Run: `cargo bench --bench collector_scale` (BENCH_GROUPS=10000 for the large case). Results:
//! docs/benchmarks.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use eventscope::kafka::{Connection, Security};
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::{GroupId, OffsetCommitRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::TopicPartitionList;
use support::*;

const PARTITIONS: i32 = 10;
const RECORDS_PER_PARTITION: usize = 10;

fn main() {
    // `cargo test --all-targets` runs this without `--bench`: a small smoke run keeps it working.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let default_groups = if smoke { 20 } else { 1000 };
    let topics_count = if smoke { 2 } else { 20 };
    let groups: usize = std::env::var("BENCH_GROUPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_groups);
    let baseline_groups: usize = std::env::var("BENCH_BASELINE_GROUPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(groups.min(1000));
    if smoke {
        println!("(smoke run under cargo test; `cargo bench --bench collector_scale` for the real numbers)");
    }
    println!("collector_scale: {groups} groups x {PARTITIONS} partitions ({topics_count} topics), baseline on {baseline_groups} groups");

    let tansu = Tansu::start();
    let bootstrap = tansu.bootstrap();
    let topics: Vec<String> = (0..topics_count).map(|i| format!("events-{i:02}")).collect();
    for t in &topics {
        tansu.create_topic(t, PARTITIONS);
    }
    let p = producer(&bootstrap);
    let setup = Instant::now();
    for t in &topics {
        for part in 0..PARTITIONS {
            produce(&p, t, part, &[now_ms(); RECORDS_PER_PARTITION]);
        }
    }
    // Group g commits offset (g % RECORDS) on every partition of topic g % topics: a known lag.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = Connection::connect(&bootstrap, "bench-setup", Duration::from_secs(10), 64 << 20, &Security::default())
            .await
            .unwrap();
        let v = conn.require_version::<OffsetCommitRequest>(7).unwrap();
        for g in 0..groups {
            let topic = &topics[g % topics_count];
            let request = OffsetCommitRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(format!("group-{g:05}"))))
                .with_generation_id_or_member_epoch(-1)
                .with_retention_time_ms(-1)
                .with_topics(vec![OffsetCommitRequestTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.clone())))
                    .with_partitions(
                        (0..PARTITIONS)
                            .map(|p| {
                                OffsetCommitRequestPartition::default()
                                    .with_partition_index(p)
                                    .with_committed_offset((g % RECORDS_PER_PARTITION) as i64)
                                    .with_committed_leader_epoch(-1)
                            })
                            .collect(),
                    )]);
            let r = conn.send(&request, v).await.unwrap();
            assert!(r.topics.iter().flat_map(|t| &t.partitions).all(|p| p.error_code == 0));
        }
    });
    println!("setup: {:.1}s", setup.elapsed().as_secs_f64());

    // eventscope, as its own process.
    let es = Eventscope::collector(&format!(
        "[collector]\npoll_interval = \"{}\"\nrequest_timeout = \"30s\"\n[[clusters]]\nname = \"bench\"\nkafka = {{ \"bootstrap.servers\" = \"{bootstrap}\" }}\n",
        if smoke { "1s" } else { "5s" }
    ));
    let expected_series = groups * PARTITIONS as usize;
    let mut polls_seen = 0.0;
    let mut renders = Vec::new();
    let mut cached = Vec::new();
    let started = Instant::now();
    let wanted_renders = if smoke { 2 } else { 4 };
    while renders.len() < wanted_renders && started.elapsed() < Duration::from_secs(600) {
        let t0 = Instant::now();
        let body = es.raw_metrics();
        let took = t0.elapsed();
        let m = Metrics::parse(&body);
        let count = m
            .get("eventscope_collector_poll_duration_seconds_count", &[("cluster", "bench")])
            .unwrap_or(0.0);
        if count > polls_seen {
            polls_seen = count;
            if count > 1.0 {
                // A scrape that saw a new snapshot rendered it.
                renders.push(took);
                let series = m.count("kafka_consumergroup_lag", &[("cluster", "bench")]);
                assert_eq!(series, expected_series, "every group's partitions reported");
            }
        } else if polls_seen > 1.0 {
            cached.push(took);
        }
        std::thread::sleep(Duration::from_millis(if smoke { 150 } else { 700 }));
    }
    let m = es.scrape();
    let poll_sum = m
        .get("eventscope_collector_poll_duration_seconds_sum", &[("cluster", "bench")])
        .unwrap();
    let poll_count = m
        .get("eventscope_collector_poll_duration_seconds_count", &[("cluster", "bench")])
        .unwrap();
    let rss = m.get("process_resident_memory_bytes", &[]).unwrap();
    let render_own = m.get("eventscope_metrics_render_duration_seconds_sum", &[]).unwrap()
        / m.get("eventscope_metrics_render_duration_seconds_count", &[]).unwrap().max(1.0);
    let lag_total: f64 = m
        .samples
        .iter()
        .filter(|(n, _, _)| n == "kafka_consumergroup_lag")
        .map(|(_, _, v)| *v)
        .sum();
    let expected_lag: usize = (0..groups)
        .map(|g| (RECORDS_PER_PARTITION - g % RECORDS_PER_PARTITION) * PARTITIONS as usize)
        .sum();
    assert_eq!(lag_total as usize, expected_lag, "lag matches the setup");
    let body_len = es.raw_metrics().len();
    drop(es);
    let mean_poll = poll_sum / poll_count;
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default().as_secs_f64() * 1000.0
    };
    let render_ms = median(&mut renders);
    let cached_ms = median(&mut cached);

    // Baseline: rdkafka, a consumer per group.
    let t0 = Instant::now();
    let mut baseline_lag: i64 = 0;
    for g in 0..baseline_groups {
        let topic = &topics[g % topics_count];
        let c: BaseConsumer = client_config(
            &bootstrap,
            &[("group.id", &format!("group-{g:05}")), ("enable.auto.commit", "false")],
        )
        .create()
        .unwrap();
        let mut tpl = TopicPartitionList::new();
        for part in 0..PARTITIONS {
            tpl.add_partition(topic, part);
        }
        let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
        for e in committed.elements() {
            let (_, high) = c.fetch_watermarks(topic, e.partition(), Duration::from_secs(10)).unwrap();
            baseline_lag += high - e.offset().to_raw().unwrap_or(0);
        }
    }
    let baseline_s = t0.elapsed().as_secs_f64();
    let expected_baseline: usize = (0..baseline_groups)
        .map(|g| (RECORDS_PER_PARTITION - g % RECORDS_PER_PARTITION) * PARTITIONS as usize)
        .sum();
    assert_eq!(baseline_lag as usize, expected_baseline, "baseline lag matches the setup");
    let baseline_full = baseline_s * groups as f64 / baseline_groups as f64;

    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| groups x partitions | {groups} x {PARTITIONS} ({expected_series} lag series, /metrics {:.1} MB) |",
        body_len as f64 / 1e6
    );
    println!("| eventscope poll (mean of {poll_count} polls) | {:.3} s |", mean_poll);
    println!(
        "| eventscope render of the collection series (its own histogram, mean) | {:.1} ms |",
        render_own * 1000.0
    );
    println!("| eventscope /metrics, first scrape after a poll (render + transfer + client parse) | {render_ms:.1} ms |");
    println!("| eventscope /metrics, cached (transfer + client read) | {cached_ms:.1} ms |");
    println!("| eventscope RSS | {:.1} MB |", rss / 1e6);
    println!("| baseline (rdkafka, consumer per group), {baseline_groups} groups | {baseline_s:.2} s |");
    println!("| baseline scaled to {groups} groups | {baseline_full:.2} s |");
    println!(
        "| **ratio baseline / eventscope per poll** | **{:.1}x** |",
        baseline_full / mean_poll
    );
}
