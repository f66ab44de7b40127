//! The sidecar's Kafka proxy against direct, in the same run: librdkafka producing and consuming 1 KiB
//! records to librdkafka's mock broker (in-process, so the broker is not the bottleneck), direct and
//! through `eventscope sidecar`, uncompressed and lz4; the added latency of acknowledged produces (p50,
//! p99); the sidecar's CPU and RSS from its own /metrics.
//!
//! Run: `cargo bench --bench sidecar_throughput`. Results: docs/benchmarks.md. `BENCH_ROUNDS` (default 3),
//! `BENCH_RECORDS` (default 200,000), `BENCH_PASSES` (times each topic is consumed, default 5) and `BENCH_CODECS` (default `none,lz4`) narrow a run to one case.
//! Then `BENCH_CONSUMERS` (default 100; 0 for none) consumers read one topic at once through fresh
//! sidecars, for their peak RSS; and one Produce request of `BENCH_LARGE_REQUEST_MB` (default 48; 0 for
//! none) goes through fresh sidecars, for theirs.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use support::*;

const PARTITIONS: i32 = 64;

fn produce(bootstrap: &str, topic: &str, n: usize, codec: &str) -> f64 {
    let p: BaseProducer = client_config(
        bootstrap,
        &[
            ("linger.ms", "5"),
            ("compression.codec", codec),
            ("queue.buffering.max.messages", "1000000"),
        ],
    )
    .create()
    .unwrap();
    let payloads = payloads();
    let started = Instant::now();
    for i in 0..n {
        let key = (i % 1000).to_string();
        let mut rec = Some(BaseRecord::to(topic).key(&key).payload(&payloads[i % 1000]));
        while let Some(r) = rec.take() {
            if let Err((_, r)) = p.send(r) {
                p.poll(Duration::from_millis(1));
                rec = Some(r);
            }
        }
        if i % 1000 == 0 {
            p.poll(Duration::ZERO);
        }
    }
    p.flush(Duration::from_secs(120)).unwrap();
    n as f64 / started.elapsed().as_secs_f64()
}

/// Consumes the topic's `n` records `passes` times over, from the beginning each time, with one consumer
/// that has its partitions assigned (no group join between passes; auto-commit on, so the sidecar sees
/// OffsetCommit as with any consumer group). Timed from the first record to the last: one pass of the
/// mock's topic is only a few 50 MB Fetch responses, too few to time alone.
fn consume(bootstrap: &str, topic: &str, n: usize, passes: usize) -> f64 {
    use rdkafka::{Offset, TopicPartitionList};
    let c: BaseConsumer = client_config(
        bootstrap,
        &[
            ("group.id", &format!("bench-{}", now_ms())),
            // An empty fetch left outstanding at the end of a pass would hold the connection this long.
            ("fetch.wait.max.ms", "10"),
            // By default a consumer whose local queue is full (64 MB) stops fetching for a whole second:
            // on a run this short that second, not the path, decides the rate, and it falls on whichever
            // path is fastest. librdkafka's documentation suggests lowering it.
            ("fetch.queue.backoff.ms", "10"),
        ],
    )
    .create()
    .unwrap();
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    for _ in 0..passes {
        let mut from_start = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            from_start.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        }
        c.assign(&from_start).unwrap();
        let mut got = 0;
        while got < n && Instant::now() < deadline {
            if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
                started.get_or_insert_with(Instant::now);
                got += 1;
            }
        }
        if got != n {
            let mut total = 0;
            for p in 0..PARTITIONS {
                let (lo, hi) = c.fetch_watermarks(topic, p, Duration::from_secs(5)).unwrap();
                eprintln!("{topic}[{p}] watermarks {lo}..{hi}");
                total += hi - lo;
            }
            panic!("{topic}: consumed {got} of {n}; the log holds {total}");
        }
    }
    (n * passes) as f64 / started.unwrap().elapsed().as_secs_f64()
}

/// Acknowledged-produce latencies (one record at a time, acks=all, awaiting each delivery), in
/// microseconds, sorted.
fn latencies(bootstrap: &str, topic: &str, n: usize) -> Vec<u64> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let p: FutureProducer = client_config(bootstrap, &[("linger.ms", "0"), ("acks", "all")]).create().unwrap();
    let payload = vec![0x5au8; 1024];
    rt.block_on(async {
        let send = || p.send(FutureRecord::<(), _>::to(topic).payload(&payload), Duration::from_secs(10));
        send().await.unwrap();
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            send().await.unwrap();
            out.push(t.elapsed().as_micros() as u64);
        }
        out.sort_unstable();
        out
    })
}

fn pct(v: &[u64], q: f64) -> f64 {
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)] as f64 / 1000.0
}

/// One round's broker and sidecars: a fresh mock broker (it slows down as it fills, so rounds must not
/// share one) and two sidecars in front of it: trace work off, and inject (every record gets a
/// traceparent) with 10% of the new traces sampled and exported over OTLP/gRPC to `receiver`.
struct Round {
    mock: MockCluster<'static, DefaultProducerContext>,
    off: (Eventscope, u16),
    inject: (Eventscope, u16),
}

impl Round {
    fn start(receiver: &support::otlp::OtlpReceiver) -> Round {
        let mock: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).unwrap();
        let off = Eventscope::sidecar_env(
            &mock.bootstrap_servers(),
            &[("OTEL_TRACES_EXPORTER", "none"), ("EVENTSCOPE_SIDECAR__TRACE_MODE", "off")],
        );
        let inject = Eventscope::sidecar_env(
            &mock.bootstrap_servers(),
            &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
                ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ],
        );
        // Optional: the sidecars at a higher CPU priority (`BENCH_SIDECAR_NICE=-15`, needs root), as a pod's
        // own container cgroup gives the sidecar its CPU share however busy the application is. On this
        // 2-core machine the clients, the broker and the sidecars contend for the same cores.
        if let Ok(nice) = std::env::var("BENCH_SIDECAR_NICE") {
            for pid in [off.0.pid(), inject.0.pid()] {
                let ok = std::process::Command::new("renice")
                    .args(["-n", &nice, "-p", &pid.to_string()])
                    .stdout(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "renice -n {nice} {pid} failed (needs root)");
            }
        }
        Round { mock, off, inject }
    }

    /// Bootstrap addresses: direct, through the sidecar with tracing off, with injection.
    fn paths(&self) -> [String; 3] {
        [
            self.mock.bootstrap_servers(),
            format!("127.0.0.1:{}", self.off.1),
            format!("127.0.0.1:{}", self.inject.1),
        ]
    }
}

/// `consumers` consumers at once, each reading a topic of `n` records whole (one consumer per
/// librdkafka instance, default `fetch.max.bytes` of 50 MB, so every connection streams large responses
/// at the same time), through fresh sidecars: their peak RSS, and the pieces left unobserved.
fn many_consumers(receiver: &support::otlp::OtlpReceiver, consumers: usize, n: usize) {
    let r = Round::start(receiver);
    let [direct, off, inject] = r.paths();
    r.mock.create_topic("many", PARTITIONS, 1).unwrap();
    produce(&direct, "many", n, "none");
    for (name, bootstrap, es) in [("tracing off", off, &r.off.0), ("inject + export", inject, &r.inject.0)] {
        let started = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..consumers {
                s.spawn(|| consume(&bootstrap, "many", n, 1));
            }
        });
        let before_scrape = es.peak_rss();
        let m = es.scrape();
        println!(
            "| {consumers} consumers at once, {n} records each, sidecar {name} | {:.1} s | peak RSS **{:.1} MB** ({:.1} before its scrape) | unobserved pieces {:.0} | untracked records {:.0} |",
            started.elapsed().as_secs_f64(),
            es.peak_rss() / 1e6,
            before_scrape / 1e6,
            m.get("eventscope_kafka_unobserved_responses_total", &[]).unwrap_or(0.0),
            m.get("eventscope_kafka_untracked_records_total", &[]).unwrap_or(0.0)
        );
    }
}

/// One Produce request of `mb` MB of 1 KiB records through fresh sidecars (librdkafka's one partition's
/// batch, with `batch.size` and `message.max.bytes` raised as a Java client's `max.request.size` may be):
/// their peak RSS before and after. Tracing off, it streams through; with injection it is over
/// `max_batch_bytes` (1 MiB), so it streams through unchanged too, its records counted `skipped`.
fn large_request(receiver: &support::otlp::OtlpReceiver, mb: usize) {
    let r = Round::start(receiver);
    let [_, off, inject] = r.paths();
    let records = mb * 1000;
    for (name, bootstrap, es) in [("tracing off", off, &r.off.0), ("inject + export", inject, &r.inject.0)] {
        let topic = format!("large-{}", name.len());
        r.mock.create_topic(&topic, 1, 1).unwrap();
        let before = es.peak_rss();
        let bytes = (records * 1100).to_string();
        let p: BaseProducer = client_config(
            &bootstrap,
            &[
                ("linger.ms", "3000"),
                ("batch.size", &bytes),
                ("batch.num.messages", "1000000"),
                ("message.max.bytes", &bytes),
                ("queue.buffering.max.messages", "1000000"),
            ],
        )
        .create()
        .unwrap();
        let payloads = payloads();
        for i in 0..records {
            p.send(BaseRecord::<(), _>::to(&topic).partition(0).payload(&payloads[i % 1000]))
                .unwrap();
        }
        p.flush(Duration::from_secs(120)).unwrap();
        let m = es.scrape();
        let produced = m
            .get("eventscope_kafka_produced_records_total", &[("topic", &topic)])
            .unwrap_or(0.0);
        assert_eq!(produced, records as f64, "every record of the request counted");
        println!(
            "| one Produce request of {mb} MB, sidecar {name} | {:.0} requests | peak RSS before {:.1} MB | after **{:.1} MB** |",
            m.get("eventscope_kafka_requests_total", &[("api", "Produce")]).unwrap_or(0.0),
            before / 1e6,
            es.peak_rss() / 1e6
        );
    }
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let n = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 2_000 } else { 200_000 });
    let lat_n = if smoke { 100 } else { 3_000 };
    // Each consume case reads its topic this many times (`BENCH_PASSES`).
    let passes: usize = std::env::var("BENCH_PASSES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 1 } else { 5 })
        .max(1);
    let receiver = support::otlp::OtlpReceiver::grpc();
    println!(
        "sidecar_throughput: {n} records of 1 KiB per case, consumed {passes} times{}{}",
        if smoke { " (smoke run under cargo test)" } else { "" },
        std::env::var("BENCH_SIDECAR_NICE")
            .map(|n| format!(", sidecars at nice {n}"))
            .unwrap_or_default()
    );
    println!();
    println!("| case | direct | sidecar, tracing off | ratio | sidecar, inject + export | ratio |");
    println!("|---|---|---|---|---|---|");
    // Rounds (three by default), each on a fresh broker and fresh sidecars, the three paths in rotating
    // order; the median of each case is reported.
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
    let codecs: Vec<String> = std::env::var("BENCH_CODECS")
        .unwrap_or_else(|_| "none,lz4".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    const NAMES: [&str; 3] = ["direct", "off", "inject"];
    // (codec, produce or consume, path) → records/s of each round.
    let mut results: std::collections::BTreeMap<(usize, usize, usize), Vec<f64>> = Default::default();
    let (mut cpu_off, mut cpu_inject, mut secs) = (0.0, 0.0, 0.0);
    let mut last = None;
    for round in 0..rounds {
        let r = Round::start(&receiver);
        let paths = r.paths();
        let (c_off, c_inject, wall) = (r.off.0.cpu_seconds(), r.inject.0.cpu_seconds(), Instant::now());
        let order: Vec<usize> = (0..3).map(|k| (k + round) % 3).collect();
        for (c, codec) in codecs.iter().enumerate() {
            for &i in &order {
                // The mock keeps at most 5 MB per partition: 64 partitions hold every record of a case.
                let topic = format!("bench-{codec}-{}", NAMES[i]);
                r.mock.create_topic(&topic, PARTITIONS, 1).unwrap();
                results.entry((c, 0, i)).or_default().push(produce(&paths[i], &topic, n, codec));
            }
            for &i in &order {
                let rate = consume(&paths[i], &format!("bench-{codec}-{}", NAMES[i]), n, passes);
                results.entry((c, 1, i)).or_default().push(rate);
            }
        }
        cpu_off += r.off.0.cpu_seconds() - c_off;
        cpu_inject += r.inject.0.cpu_seconds() - c_inject;
        secs += wall.elapsed().as_secs_f64();
        last = Some(r);
    }
    for (c, codec) in codecs.iter().enumerate() {
        for (w, what) in ["produce", "consume"].iter().enumerate() {
            let m: Vec<f64> = (0..3).map(|i| median(results[&(c, w, i)].clone())).collect();
            println!(
                "| {what}, {codec} (records/s, median of {rounds}) | {:.0} | {:.0} | **{:.3}** | {:.0} | **{:.3}** |",
                m[0],
                m[1],
                m[1] / m[0],
                m[2],
                m[2] / m[0]
            );
        }
    }
    // Latency on the last round's broker and sidecars, once the span queue has drained.
    let r = last.unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let paths = r.paths();
    r.mock.create_topic("latency", 1, 1).unwrap();
    let ld = latencies(&paths[0], "latency", lat_n);
    let lo = latencies(&paths[1], "latency", lat_n);
    let lv = latencies(&paths[2], "latency", lat_n);
    for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
        println!(
            "| acked produce {name} (ms) | {:.3} | {:.3} | **+{:.3} ms** | {:.3} | **+{:.3} ms** |",
            pct(&ld, q),
            pct(&lo, q),
            pct(&lo, q) - pct(&ld, q),
            pct(&lv, q),
            pct(&lv, q) - pct(&ld, q)
        );
    }
    let m = r.inject.0.scrape();
    let m_off = r.off.0.scrape();
    // The traffic of the sidecar cases really went through the proxies, and spans were exported.
    for m in [&m, &m_off] {
        let produced = m
            .get("eventscope_kafka_bytes_total", &[("api", "Produce"), ("direction", "request")])
            .unwrap();
        let fetched = m
            .get("eventscope_kafka_bytes_total", &[("api", "Fetch"), ("direction", "response")])
            .unwrap();
        assert!(
            produced > n as f64 * 1024.0 && fetched > n as f64 * 1024.0,
            "proxy relayed {produced} / {fetched} bytes"
        );
    }
    let spans = |o: &str| m.get("eventscope_trace_spans_total", &[("outcome", o)]).unwrap_or(0.0);
    assert!(spans("exported") > 0.0, "spans exported");
    println!(
        "| sidecar CPU over the throughput runs ({secs:.0} s) | | {cpu_off:.2} s ({:.1}% of a core) | | {cpu_inject:.2} s ({:.1}% of a core) | |",
        100.0 * cpu_off / secs,
        100.0 * cpu_inject / secs
    );
    println!(
        "| sidecar RSS at the end (last round) | | {:.1} MB | | {:.1} MB | |",
        m_off.get("process_resident_memory_bytes", &[]).unwrap() / 1e6,
        m.get("process_resident_memory_bytes", &[]).unwrap() / 1e6
    );
    println!(
        "| sidecar peak RSS (last round) | | {:.1} MB | | {:.1} MB | |",
        r.off.0.peak_rss() / 1e6,
        r.inject.0.peak_rss() / 1e6
    );
    println!(
        "| spans exported / dropped / failed (last round) | | | | {:.0} / {:.0} / {:.0} | |",
        spans("exported"),
        spans("dropped"),
        spans("failed")
    );
    println!(
        "| untracked records / unobserved responses (last round, off / inject) | | {:.0} / {:.0} | | {:.0} / {:.0} | |",
        m_off.get("eventscope_kafka_untracked_records_total", &[]).unwrap_or(0.0),
        m_off.get("eventscope_kafka_unobserved_responses_total", &[]).unwrap_or(0.0),
        m.get("eventscope_kafka_untracked_records_total", &[]).unwrap_or(0.0),
        m.get("eventscope_kafka_unobserved_responses_total", &[]).unwrap_or(0.0)
    );
    drop(r);
    // Many consumers on one sidecar (`BENCH_CONSUMERS`, default 100).
    let consumers = std::env::var("BENCH_CONSUMERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 3 } else { 100 });
    if consumers > 0 {
        println!();
        many_consumers(&receiver, consumers, if smoke { 500 } else { 10_000 });
    }
    let large_mb = std::env::var("BENCH_LARGE_REQUEST_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 2 } else { 48 });
    if large_mb > 0 {
        println!();
        large_request(&receiver, large_mb);
    }
}
