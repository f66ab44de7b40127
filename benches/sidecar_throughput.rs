//! The sidecar's Kafka proxy against direct, in the same run: librdkafka producing and consuming 1 KiB
//! records to librdkafka's mock broker (in-process, so the broker is not the bottleneck), direct and
//! through `eventscope sidecar`, uncompressed and lz4; the added latency of acknowledged produces (p50,
//! p99); the sidecar's CPU and RSS from its own /metrics.
//!
//! Run: `cargo bench --bench sidecar_throughput`. Results: docs/benchmarks.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use support::*;

const PARTITIONS: i32 = 64;

/// 1,000 different 1 KiB payloads: half random bytes, half repeated text, so lz4 has something to do
/// without turning each record into a few bytes.
fn payloads() -> Vec<Vec<u8>> {
    let mut x = 0x1234_5678_9abc_def0u64;
    (0..1000)
        .map(|i| {
            let mut v: Vec<u8> = (0..512)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            v.extend(
                format!("{{\"order\":{i},\"event\":\"OrderCreated\",\"status\":\"NEW\"}}")
                    .bytes()
                    .cycle()
                    .take(512),
            );
            v
        })
        .collect()
}

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

fn consume(bootstrap: &str, topic: &str, n: usize) -> f64 {
    let c: BaseConsumer = client_config(
        bootstrap,
        &[("group.id", &format!("bench-{}", now_ms())), ("auto.offset.reset", "earliest")],
    )
    .create()
    .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut got = 0;
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(120);
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
    n as f64 / started.unwrap().elapsed().as_secs_f64()
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

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let n = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 2_000 } else { 200_000 });
    let lat_n = if smoke { 100 } else { 3_000 };
    let mock: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).unwrap();
    let direct = mock.bootstrap_servers();
    // Two sidecars: trace work off, and inject (every record gets a traceparent) with 10% of the new
    // traces sampled and exported over OTLP/gRPC to a receiver in this process, default queue.
    let (es_off, port_off) = Eventscope::sidecar_env(
        &direct,
        &[("OTEL_TRACES_EXPORTER", "none"), ("EVENTSCOPE_SIDECAR__TRACE_MODE", "off")],
    );
    let receiver = support::otlp::OtlpReceiver::grpc();
    let (es, port) = Eventscope::sidecar_env(
        &direct,
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    );
    let via_off = format!("127.0.0.1:{port_off}");
    let via = format!("127.0.0.1:{port}");
    println!(
        "sidecar_throughput: {n} records of 1 KiB per case{}",
        if smoke { " (smoke run under cargo test)" } else { "" }
    );
    println!();
    println!("| case | direct | sidecar, tracing off | ratio | sidecar, inject + export | ratio |");
    println!("|---|---|---|---|---|---|");
    let (cpu_before, cpu_off_before) = (es.cpu_seconds(), es_off.cpu_seconds());
    let wall = Instant::now();
    // Three rounds per case, the three paths in rotating order; the median of each is reported.
    const ROUNDS: usize = 3;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let paths = [("direct", direct.as_str()), ("off", via_off.as_str()), ("inject", via.as_str())];
    for codec in ["none", "lz4"] {
        let mut produced = vec![Vec::new(); 3];
        let mut consumed = vec![Vec::new(); 3];
        for round in 0..ROUNDS {
            // The order rotates each round, so no path always runs first (on a fresher mock broker).
            let order: Vec<usize> = (0..paths.len()).map(|k| (k + round) % paths.len()).collect();
            for &i in &order {
                let (name, addr) = paths[i];
                // The mock keeps at most 5 MB per partition: 64 partitions hold every record of a case.
                let topic = format!("bench-{codec}-{name}-{round}");
                mock.create_topic(&topic, PARTITIONS, 1).unwrap();
                produced[i].push(produce(addr, &topic, n, codec));
            }
            for &i in &order {
                let (name, addr) = paths[i];
                consumed[i].push(consume(addr, &format!("bench-{codec}-{name}-{round}"), n));
            }
        }
        for (what, v) in [("produce", produced), ("consume", consumed)] {
            let m: Vec<f64> = v.into_iter().map(median).collect();
            println!(
                "| {what}, {codec} (records/s, median of {ROUNDS}) | {:.0} | {:.0} | **{:.3}** | {:.0} | **{:.3}** |",
                m[0],
                m[1],
                m[1] / m[0],
                m[2],
                m[2] / m[0]
            );
        }
    }
    mock.create_topic("latency", 1, 1).unwrap();
    let ld = latencies(&direct, "latency", lat_n);
    let lo = latencies(&via_off, "latency", lat_n);
    let lv = latencies(&via, "latency", lat_n);
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
    let m = es.scrape();
    let m_off = es_off.scrape();
    // The traffic of the sidecar cases really went through the proxies, and spans were exported.
    for m in [&m, &m_off] {
        let produced = m
            .get("eventscope_kafka_bytes_total", &[("api", "Produce"), ("direction", "request")])
            .unwrap();
        let fetched = m
            .get("eventscope_kafka_bytes_total", &[("api", "Fetch"), ("direction", "response")])
            .unwrap();
        assert!(
            produced > n as f64 * 1024.0 * 2.0 && fetched > n as f64 * 1024.0 * 2.0,
            "proxy relayed {produced} / {fetched} bytes"
        );
    }
    let spans = |o: &str| m.get("eventscope_trace_spans_total", &[("outcome", o)]).unwrap_or(0.0);
    assert!(spans("exported") > 0.0, "spans exported");
    let secs = wall.elapsed().as_secs_f64();
    let (cpu, cpu_off) = (es.cpu_seconds() - cpu_before, es_off.cpu_seconds() - cpu_off_before);
    println!(
        "| sidecar CPU over the run ({secs:.0} s) | | {cpu_off:.2} s ({:.1}% of a core) | | {cpu:.2} s ({:.1}% of a core) | |",
        100.0 * cpu_off / secs,
        100.0 * cpu / secs
    );
    println!(
        "| sidecar RSS at the end | | {:.1} MB | | {:.1} MB | |",
        m_off.get("process_resident_memory_bytes", &[]).unwrap() / 1e6,
        m.get("process_resident_memory_bytes", &[]).unwrap() / 1e6
    );
    println!(
        "| spans exported / dropped / failed | | | | {:.0} / {:.0} / {:.0} | |",
        spans("exported"),
        spans("dropped"),
        spans("failed")
    );
}
