//! The sidecar's Kafka proxy at the rates a pod carries, open loop, against direct in the same run:
//! a librdkafka producer sends 1 KiB records on a fixed schedule (5k, 20k, 50k and 100k records/s,
//! (and on to 200k, for the saturation point), uncompressed and lz4; each record carries the time it was due, so a producer held back still counts
//! the delay), and a librdkafka consumer with a group reads them as they come, through librdkafka's mock
//! broker (in-process), direct and through two sidecars: tracing off, and injection with every trace
//! sampled and exported over OTLP/gRPC. Per rate and path: the achieved rate, end-to-end latency (due
//! to consumed) p50 / p99 / p99.9, the sidecar's CPU in millicores per MB/s of records and its RSS, and
//! spans exported and dropped; then each path's saturation point (the first rate achieved below 95%).
//!
//! Run: `cargo bench --bench sidecar_rates`. Results: docs/benchmarks.md. `BENCH_RATES` (records/s,
//! comma-separated), `BENCH_CODECS` (`none,lz4`), `BENCH_SECONDS` (per step, default 10),
//! `BENCH_SAMPLER_ARG` (the injecting sidecar samples this share of traces instead of all: `0.1`),
//! `BENCH_FETCH_WAIT_MS` (the consumer's `fetch.wait.max.ms`, default 2).
//! A soak instead: `BENCH_SOAK_SECONDS=1800` runs the injecting sidecar alone at `BENCH_SOAK_RATE`
//! (20,000 records/s, lz4) and samples its RSS and CPU every 10 s.
//!
//! The mock broker answers a Fetch that finds no data after the consumer's whole `fetch.wait.max.ms` (it
//! does not wake the fetch when records arrive, as Kafka does): the consumer waits 2 ms, so end-to-end
//! figures include up to 2 ms of it on every path alike. What the sidecar costs is the difference.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use support::*;

/// The mock keeps 5 MB per partition: 32 hold 1.6 s of records at 100k/s, for a consumer that falls behind.
const PARTITIONS: i32 = 32;
const WARM_UP: u64 = u64::MAX;

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// End-to-end latencies in microseconds: exact below 1 s, one bucket above.
struct Hist {
    us: Vec<u64>,
    over: u64,
    n: u64,
}

impl Hist {
    fn new() -> Hist {
        Hist {
            us: vec![0; 1_000_000],
            over: 0,
            n: 0,
        }
    }
    fn add(&mut self, us: u64) {
        self.n += 1;
        match self.us.get_mut(us as usize) {
            Some(c) => *c += 1,
            None => self.over += 1,
        }
    }
    /// The `q` quantile in milliseconds (infinite when it falls past 1 s).
    fn ms(&self, q: f64) -> f64 {
        let want = ((self.n as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (us, c) in self.us.iter().enumerate() {
            seen += c;
            if seen >= want {
                return us as f64 / 1000.0;
            }
        }
        f64::INFINITY
    }
}

fn send(p: &BaseProducer, topic: &str, payload: &[u8]) {
    let mut rec = Some(BaseRecord::<(), [u8]>::to(topic).payload(payload));
    while let Some(r) = rec.take() {
        if let Err((_, r)) = p.send(r) {
            p.poll(Duration::from_millis(1));
            rec = Some(r);
        }
    }
}

/// Sends `rate` records a second for `secs`, each stamped with the time it was due; returns how many, and
/// when the schedule started. Waits for `ready` (the consumer has the warm-up record) before it starts.
fn produce(bootstrap: &str, topic: &str, codec: &str, rate: u64, secs: f64, ready: &AtomicBool) -> (u64, Instant) {
    let p: BaseProducer = client_config(
        bootstrap,
        &[
            // OpenMessaging Benchmark's Kafka driver settings.
            ("linger.ms", "1"),
            ("batch.size", "1048576"),
            ("compression.codec", codec),
            ("queue.buffering.max.messages", "2000000"),
            ("queue.buffering.max.kbytes", "2097151"),
        ],
    )
    .create()
    .unwrap();
    let payloads = payloads();
    let mut buf = payloads[0].clone();
    buf[..8].copy_from_slice(&WARM_UP.to_le_bytes());
    send(&p, topic, &buf);
    p.flush(Duration::from_secs(30)).unwrap();
    while !ready.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let total = (rate as f64 * secs) as u64;
    let start = Instant::now();
    let mut i = 0u64;
    while i < total {
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64 + 1).min(total);
        while i < due {
            let at = start + Duration::from_secs_f64(i as f64 / rate as f64);
            buf.copy_from_slice(&payloads[(i % 1000) as usize]);
            buf[..8].copy_from_slice(&(at.duration_since(origin()).as_micros() as u64).to_le_bytes());
            send(&p, topic, &buf);
            i += 1;
        }
        p.poll(Duration::ZERO);
        let next = start + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d.min(Duration::from_millis(1)));
        }
    }
    p.flush(Duration::from_secs(60)).unwrap();
    (total, start)
}

/// What a consumer saw: latencies, records, and when the last arrived.
struct Consumed {
    hist: Hist,
    records: u64,
    last: Instant,
}

/// Reads the topic with a group (auto-commit on, so the sidecar sees commits) until `sent` records
/// (known once the producer is done) have arrived or none has for 5 s; counts into `progress`.
fn consume(bootstrap: &str, topic: &str, ready: &AtomicBool, sent: &AtomicU64, progress: &AtomicU64) -> Consumed {
    use rdkafka::{Offset, TopicPartitionList};
    let wait = env_or("BENCH_FETCH_WAIT_MS", 2u32).to_string();
    let c: BaseConsumer = client_config(
        bootstrap,
        &[
            ("group.id", &format!("rates-{topic}")),
            ("fetch.wait.max.ms", &wait),
            ("fetch.queue.backoff.ms", "10"),
        ],
    )
    .create()
    .unwrap();
    let mut all = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        all.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    c.assign(&all).unwrap();
    let mut out = Consumed {
        hist: Hist::new(),
        records: 0,
        last: Instant::now(),
    };
    let mut idle_since = Instant::now();
    loop {
        match c.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                let now = Instant::now();
                idle_since = now;
                let stamp = m
                    .payload()
                    .and_then(|p| p.get(..8))
                    .map(|b| u64::from_le_bytes(b.try_into().unwrap()));
                match stamp {
                    Some(WARM_UP) => ready.store(true, Ordering::Release),
                    Some(due) => {
                        let at = now.duration_since(origin()).as_micros() as u64;
                        out.hist.add(at.saturating_sub(due));
                        out.records += 1;
                        out.last = now;
                        progress.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {}
                }
            }
            Some(Err(e)) => eprintln!("{topic}: {e}"),
            None => {}
        }
        let sent = sent.load(Ordering::Acquire);
        if out.records >= sent || (idle_since.elapsed() > Duration::from_secs(5) && (sent != u64::MAX || !ready.load(Ordering::Acquire))) {
            return out;
        }
    }
}

/// One step: `rate` records/s for `secs` on a new topic of `mock`, through `bootstrap`.
struct Step {
    sent: u64,
    consumed: Consumed,
    /// Achieved records/s: what arrived over the time it took (at least the schedule's length).
    achieved: f64,
}

fn step(
    mock: &MockCluster<'static, DefaultProducerContext>,
    bootstrap: &str,
    topic: &str,
    codec: &str,
    rate: u64,
    secs: f64,
    progress: &AtomicU64,
) -> Step {
    mock.create_topic(topic, PARTITIONS, 1).unwrap();
    let ready = AtomicBool::new(false);
    let sent = AtomicU64::new(u64::MAX);
    let (n, consumed, start) = std::thread::scope(|s| {
        let c = s.spawn(|| consume(bootstrap, topic, &ready, &sent, progress));
        let (n, start) = produce(bootstrap, topic, codec, rate, secs, &ready);
        sent.store(n, Ordering::Release);
        (n, c.join().unwrap(), start)
    });
    let span = consumed.last.saturating_duration_since(start).as_secs_f64().max(secs);
    Step {
        sent: n,
        achieved: consumed.records as f64 / span,
        consumed,
    }
}

fn sidecars(mock: &MockCluster<'static, DefaultProducerContext>, receiver: &support::otlp::OtlpReceiver) -> [(Eventscope, u16); 2] {
    let off = Eventscope::sidecar_env(
        &mock.bootstrap_servers(),
        &[("OTEL_TRACES_EXPORTER", "none"), ("EVENTSCOPE_SIDECAR__TRACE_MODE", "off")],
    );
    // Every trace sampled (or the share `BENCH_SAMPLER_ARG` says, as `traceidratio`); the export queue
    // and batch as shipped.
    let ratio = std::env::var("BENCH_SAMPLER_ARG").ok();
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
    ];
    match &ratio {
        Some(r) => env.extend([("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", r.as_str())]),
        None => env.push(("OTEL_TRACES_SAMPLER", "always_on")),
    }
    let inject = Eventscope::sidecar_env(&mock.bootstrap_servers(), &env);
    [off, inject]
}

fn spans(m: &Metrics, outcome: &str) -> f64 {
    m.get("eventscope_trace_spans_total", &[("outcome", outcome)]).unwrap_or(0.0)
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    origin();
    let receiver = support::otlp::OtlpReceiver::grpc().count_only();
    let mock: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).unwrap();
    let [off, inject] = sidecars(&mock, &receiver);
    if let Ok(soak) = std::env::var("BENCH_SOAK_SECONDS") {
        return run_soak(
            &mock,
            &inject,
            soak.parse().expect("BENCH_SOAK_SECONDS"),
            env_or("BENCH_SOAK_RATE", 20_000),
        );
    }
    let rates: Vec<u64> = std::env::var("BENCH_RATES")
        .unwrap_or_else(|_| {
            if smoke {
                "2000".into()
            } else {
                "5000,20000,50000,100000,150000,200000".into()
            }
        })
        .split(',')
        .map(|r| r.trim().parse().expect("BENCH_RATES"))
        .collect();
    let codecs: Vec<String> = std::env::var("BENCH_CODECS")
        .unwrap_or_else(|_| if smoke { "lz4".into() } else { "none,lz4".into() })
        .split(',')
        .map(str::to_string)
        .collect();
    let secs: f64 = env_or("BENCH_SECONDS", if smoke { 1.5 } else { 10.0 });
    let paths = [
        ("direct", mock.bootstrap_servers(), None),
        ("sidecar, tracing off", format!("127.0.0.1:{}", off.1), Some(&off.0)),
        ("sidecar, inject + export", format!("127.0.0.1:{}", inject.1), Some(&inject.0)),
    ];
    println!(
        "sidecar_rates: 1 KiB records, {secs} s per step, {PARTITIONS} partitions{}",
        if smoke { " (smoke run under cargo test)" } else { "" }
    );
    println!();
    println!("| codec | target rec/s | path | achieved rec/s | e2e p50 ms | p99 ms | p99.9 ms | sidecar millicores per MB/s (kernel share, context switches per request) | sidecar RSS MB | spans exported / dropped, records untracked |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let progress = AtomicU64::new(0);
    // (path, codec) → the first rate achieved below 95%.
    let mut saturated: std::collections::BTreeMap<(usize, usize), u64> = Default::default();
    let mut rounds = 0;
    for (c, codec) in codecs.iter().enumerate() {
        for &rate in &rates {
            let mut p50 = [0.0; 3];
            let mut p99 = [0.0; 3];
            for k in 0..3 {
                // A rotating order, so that no path always comes first after a pause.
                let i = (k + rounds) % 3;
                let (name, bootstrap, sidecar) = &paths[i];
                let before = sidecar.map(|s| (s.cpu_split(), s.scrape(), s.context_switches()));
                let topic = format!("rates-{codec}-{rate}-{i}");
                let s = step(&mock, bootstrap, &topic, codec, rate, secs, &progress);
                // CPU seconds per MB of records is millicores per MB/s (each record crosses twice: in a
                // Produce request and in a Fetch response).
                let mb = s.consumed.records as f64 * 1024.0 / 1e6;
                let (cpu, rss, spans_cell) = match (sidecar, &before) {
                    (Some(es), Some(((user0, system0), m0, calls0))) => {
                        let m = es.scrape();
                        let (user, system) = es.cpu_split();
                        let (user, system) = (user - user0, system - system0);
                        let millicores_per_mb_s = (user + system) * 1000.0 / mb.max(1e-9);
                        // The kernel's share (system calls, the TCP stack, wake-ups) and the threads'
                        // context switches per Kafka request relayed: what no user-space change removes.
                        let requests = |m: &Metrics| {
                            m.samples
                                .iter()
                                .filter(|(n, _, _)| n == "eventscope_kafka_requests_total")
                                .map(|(_, _, v)| v)
                                .sum::<f64>()
                        };
                        let per_request = (es.context_switches() - calls0) / (requests(&m) - requests(m0)).max(1.0);
                        let kernel = 100.0 * system / (user + system).max(1e-9);
                        let spans_cell = if i == 2 {
                            let untracked = |m: &Metrics| m.get("eventscope_kafka_untracked_records_total", &[]).unwrap_or(0.0);
                            format!(
                                "{:.0} / {:.0} / {:.0}",
                                spans(&m, "exported") - spans(m0, "exported"),
                                spans(&m, "dropped") - spans(m0, "dropped"),
                                untracked(&m) - untracked(m0)
                            )
                        } else {
                            let untracked = |m: &Metrics| m.get("eventscope_kafka_untracked_records_total", &[]).unwrap_or(0.0);
                            format!("untracked {:.0}", untracked(&m) - untracked(m0))
                        };
                        (
                            format!("{millicores_per_mb_s:.2} ({kernel:.0}% kernel, {per_request:.1} switches/request)"),
                            format!("{:.1}", es.rss() / 1e6),
                            spans_cell,
                        )
                    }
                    _ => (String::new(), String::new(), String::new()),
                };
                let h = &s.consumed.hist;
                println!(
                    "| {codec} | {rate} | {name} | {:.0} | {:.2} | {:.2} | {:.2} | {cpu} | {rss} | {spans_cell} |",
                    s.achieved,
                    h.ms(0.5),
                    h.ms(0.99),
                    h.ms(0.999)
                );
                // The next step starts once the injecting sidecar has exported what it queued (at most
                // 60 s): a backlog drained meanwhile would take the 2 cores from the next path.
                if let (2, Some(es)) = (i, sidecar) {
                    let until = Instant::now() + Duration::from_secs(60);
                    while Instant::now() < until && es.scrape().get("eventscope_trace_queue_spans", &[]).unwrap_or(0.0) > 0.0 {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
                if s.achieved < 0.95 * rate as f64 {
                    saturated.entry((i, c)).or_insert(rate);
                }
                p50[i] = h.ms(0.5);
                p99[i] = h.ms(0.99);
                if smoke {
                    assert_eq!(s.consumed.records, s.sent, "{name}: every record sent arrives");
                }
            }
            rounds += 1;
            println!(
                "| {codec} | {rate} | added by the sidecar (off / inject) | | **+{:.2} / +{:.2}** | **+{:.2} / +{:.2}** | | | | |",
                p50[1] - p50[0],
                p50[2] - p50[0],
                p99[1] - p99[0],
                p99[2] - p99[0]
            );
        }
    }
    println!();
    for (c, codec) in codecs.iter().enumerate() {
        for (i, (name, _, _)) in paths.iter().enumerate() {
            match saturated.get(&(i, c)) {
                Some(rate) => println!("saturation, {codec}, {name}: {rate} records/s (first rate achieved below 95%)"),
                None => println!(
                    "saturation, {codec}, {name}: above {} records/s (every rate achieved)",
                    rates.iter().max().unwrap()
                ),
            }
        }
    }
    let m = inject.0.scrape();
    println!(
        "peak RSS: tracing off {:.1} MB, inject {:.1} MB; spans exported {:.0}, dropped {:.0}, failed {:.0}; received {}",
        off.0.peak_rss() / 1e6,
        inject.0.peak_rss() / 1e6,
        spans(&m, "exported"),
        spans(&m, "dropped"),
        spans(&m, "failed"),
        receiver.received()
    );
    if smoke {
        assert!(spans(&m, "exported") > 0.0, "spans exported");
    }
}

/// A soak sample: seconds since the start, RSS MB, CPU % of a core, records/s, spans dropped so far.
type Sample = (f64, f64, f64, f64, f64);

/// The injecting sidecar alone at `rate` for `secs`, its RSS and CPU sampled every 10 s.
fn run_soak(mock: &MockCluster<'static, DefaultProducerContext>, inject: &(Eventscope, u16), secs: f64, rate: u64) {
    let bootstrap = format!("127.0.0.1:{}", inject.1);
    let progress = Arc::new(AtomicU64::new(0));
    let done = AtomicBool::new(false);
    println!("soak: {rate} records/s of 1 KiB, lz4, through the sidecar with injection (every trace sampled), {secs} s");
    println!();
    println!("| t (s) | RSS MB | CPU (% of a core) | consumed rec/s | spans dropped |");
    println!("|---|---|---|---|---|");
    let es = &inject.0;
    let (samples, step) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut out = Vec::new();
            let (mut cpu, mut n, mut at) = (es.cpu_seconds(), 0u64, Instant::now());
            let start = at;
            while !done.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(200));
                if at.elapsed() < Duration::from_secs(10) {
                    continue;
                }
                let (cpu2, n2, at2) = (es.cpu_seconds(), progress.load(Ordering::Relaxed), Instant::now());
                let dt = at2.duration_since(at).as_secs_f64();
                let row = (
                    at2.duration_since(start).as_secs_f64(),
                    es.rss() / 1e6,
                    100.0 * (cpu2 - cpu) / dt,
                    (n2 - n) as f64 / dt,
                    spans(&es.scrape(), "dropped"),
                );
                println!("| {:.0} | {:.1} | {:.1} | {:.0} | {:.0} |", row.0, row.1, row.2, row.3, row.4);
                out.push(row);
                (cpu, n, at) = (cpu2, n2, at2);
            }
            out
        });
        let step = step(mock, &bootstrap, "soak", "lz4", rate, secs, &progress);
        done.store(true, Ordering::Release);
        (sampler.join().unwrap(), step)
    });
    // The first minute is warm-up; then the RSS trend by least squares, and each tenth's means.
    let steady: Vec<_> = samples.iter().filter(|r| r.0 > 60.0).collect();
    let n = steady.len().max(1) as f64;
    let (mt, mr) = (
        steady.iter().map(|r| r.0).sum::<f64>() / n,
        steady.iter().map(|r| r.1).sum::<f64>() / n,
    );
    let slope =
        steady.iter().map(|r| (r.0 - mt) * (r.1 - mr)).sum::<f64>() / steady.iter().map(|r| (r.0 - mt).powi(2)).sum::<f64>().max(1e-9);
    let stat = |f: &dyn Fn(&&Sample) -> f64| {
        let v: Vec<f64> = steady.iter().map(f).collect();
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (min, v.iter().sum::<f64>() / n, max)
    };
    let (rss_min, rss_mean, rss_max) = stat(&|r| r.1);
    let (cpu_min, cpu_mean, cpu_max) = stat(&|r| r.2);
    println!();
    println!(
        "soak summary after the first minute ({} samples): RSS min / mean / max {rss_min:.1} / {rss_mean:.1} / {rss_max:.1} MB, trend {:+.2} MB per hour; CPU min / mean / max {cpu_min:.1} / {cpu_mean:.1} / {cpu_max:.1}% of a core; {} of {} records consumed, achieved {:.0} records/s, e2e p50 / p99 / p99.9 {:.2} / {:.2} / {:.2} ms; peak RSS {:.1} MB",
        steady.len(),
        slope * 3600.0,
        step.consumed.records,
        step.sent,
        step.achieved,
        step.consumed.hist.ms(0.5),
        step.consumed.hist.ms(0.99),
        step.consumed.hist.ms(0.999),
        es.peak_rss() / 1e6
    );
}
