//! What one relay costs on this machine, whoever does it: eventscope's Kafka proxy against two peers
//! that only move bytes, HAProxy (TCP mode, one thread) and socat, and against direct, in the same run.
//!
//! One client connection, closed loop: a Produce request (acks=1, `BENCH_FLOOR_RECORDS` records of 1 KiB
//! in one batch, 5 by default: a request at 5,000 records/s with `linger.ms` 1), then a Fetch of what it
//! wrote, answered at once; the pair's round trip is a record's way from producer to consumer without
//! the broker's long poll, so the differences between paths are what a relay adds to end-to-end latency
//! at low rates, where the goals are hardest. Per path: p50 / p90 / p99 of the pair's round trip,
//! and the relay process's CPU (user and kernel) and context switches per pair. Paths rotate each round
//! so that drifts of the machine fall on all alike. Every fetched batch is checked: byte-identical
//! through the relays that do not change records, the same records through the injecting sidecar.
//!
//! Run: `cargo bench --bench relay_floor`. Results: docs/benchmarks.md. `BENCH_FLOOR_PAIRS` (per path
//! and round, default 5,000), `BENCH_FLOOR_ROUNDS` (default 4), `BENCH_FLOOR_RECORDS`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, FetchResponse, ProduceRequest, ProduceResponse, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::records::{Record, TimestampType};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use support::*;

const TOPIC: &str = "floor";
const PRODUCE_VERSION: i16 = 7;
const FETCH_VERSION: i16 = 11;

/// A relay in its own process: HAProxy or socat, stopped when dropped.
struct Peer {
    child: Child,
    /// HAProxy's configuration.
    _dir: Option<tempfile::TempDir>,
}

impl Peer {
    /// Debian's HAProxy in the foreground, one thread, TCP mode, from `port` to `upstream`.
    fn haproxy(port: u16, upstream: &str) -> Peer {
        let dir = tempfile::tempdir().unwrap();
        let conf = format!(
            "global\n  nbthread 1\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 120s\n  \
             timeout server 120s\nlisten kafka\n  bind 127.0.0.1:{port}\n  server broker {upstream}\n"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("/usr/sbin/haproxy")
            .args(["-db", "-f", path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("haproxy (Debian package haproxy)");
        Peer::ready(child, Some(dir), port)
    }

    /// Debian's socat for one connection, with `TCP_NODELAY` both ways as the other relays set it.
    fn socat(port: u16, upstream: &str) -> Peer {
        let child = Command::new("socat")
            .args([
                &format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,nodelay"),
                &format!("TCP:{upstream},nodelay"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("socat (Debian package socat)");
        Peer::ready(child, None, port)
    }

    fn ready(child: Child, dir: Option<tempfile::TempDir>, port: u16) -> Peer {
        // socat serves one connection: wait for the port without connecting to it.
        wait_for(Duration::from_secs(10), "relay listening", || {
            std::net::TcpListener::bind(("127.0.0.1", port)).is_err().then_some(())
        });
        Peer { child, _dir: dir }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One batch of `n` records of 1 KiB.
fn batch(n: usize) -> Bytes {
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: 1_700_000_000_000,
            key: Some(Bytes::from(format!("key-{i}"))),
            value: Some(Bytes::from(vec![b'x'; 1024])),
            headers: Default::default(),
            delete_horizon: false,
        })
        .collect();
    encode_batch(&records)
}

fn produce(correlation: i32, records: &Bytes) -> Vec<u8> {
    let request = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records.clone()))])]);
    request_frame(ApiKey::Produce, PRODUCE_VERSION, correlation, "relay-floor", &request)
}

fn fetch(correlation: i32, offset: i64) -> Vec<u8> {
    fetch_frame(FETCH_VERSION, correlation, "relay-floor", TOPIC, offset, 0)
}

/// One response's body after its header, checked to answer `correlation`.
fn response(conn: &mut TcpStream, key: ApiKey, version: i16, correlation: i32) -> Bytes {
    let mut body = Bytes::from(read_frame(conn).unwrap());
    let header = ResponseHeader::decode(&mut body, key.response_header_version(version)).unwrap();
    assert_eq!(header.correlation_id, correlation);
    body
}

/// A path's measurements over its rounds.
#[derive(Default)]
struct Path {
    rtt_us: Vec<u64>,
    cpu: (f64, f64),
    switches: f64,
    pairs: u64,
}

/// `pairs` Produce-then-Fetch round trips on `conn`; the fetched batch must be `records` (or, with
/// `identical` false, hold as many records).
fn run(conn: &mut TcpStream, pairs: u64, records: &Bytes, identical: bool, correlation: &mut i32, out: &mut Path) {
    let count = i32::from_be_bytes(records[57..61].try_into().unwrap());
    for _ in 0..pairs {
        let started = Instant::now();
        *correlation += 1;
        conn.write_all(&produce(*correlation, records)).unwrap();
        let mut body = response(conn, ApiKey::Produce, PRODUCE_VERSION, *correlation);
        let produced = ProduceResponse::decode(&mut body, PRODUCE_VERSION).unwrap();
        let p = &produced.responses[0].partition_responses[0];
        assert_eq!(p.error_code, 0, "produce error");
        *correlation += 1;
        conn.write_all(&fetch(*correlation, p.base_offset)).unwrap();
        let mut body = response(conn, ApiKey::Fetch, FETCH_VERSION, *correlation);
        out.rtt_us.push(started.elapsed().as_micros() as u64);
        let fetched = FetchResponse::decode(&mut body, FETCH_VERSION).unwrap();
        let got = fetched.responses[0].partitions[0].records.clone().unwrap_or_default();
        if identical {
            assert_eq!(got.len(), records.len(), "the fetched batch is the produced one");
            // The base offset and leader epoch are the broker's; from the magic byte on, as sent.
            assert_eq!(got[16..], records[16..], "the fetched batch is the produced one, byte for byte");
        } else {
            assert_eq!(i32::from_be_bytes(got[57..61].try_into().unwrap()), count, "records fetched");
        }
    }
}

fn quantile(sorted: &[u64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1] as f64
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let pairs: u64 = env_or("BENCH_FLOOR_PAIRS", if smoke { 200 } else { 5_000 });
    let rounds: usize = env_or("BENCH_FLOOR_ROUNDS", if smoke { 1 } else { 4 });
    let n: usize = env_or("BENCH_FLOOR_RECORDS", 5);
    let mock: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).unwrap();
    mock.create_topic(TOPIC, 1, 1).unwrap();
    let broker = mock.bootstrap_servers();
    let receiver = support::otlp::OtlpReceiver::grpc().count_only();
    let (off, off_port) = Eventscope::sidecar_env(
        &broker,
        &[("OTEL_TRACES_EXPORTER", "none"), ("EVENTSCOPE_SIDECAR__TRACE_MODE", "off")],
    );
    let (inject, inject_port) = Eventscope::sidecar_env(
        &broker,
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
        ],
    );
    let (haproxy_port, socat_port) = (free_port(), free_port());
    let haproxy = Peer::haproxy(haproxy_port, &broker);
    let socat = Peer::socat(socat_port, &broker);
    // (name, port, relay's pid, whether records pass unchanged)
    let paths: [(&str, String, Option<u32>, bool); 5] = [
        ("direct", broker.clone(), None, true),
        ("socat", format!("127.0.0.1:{socat_port}"), Some(socat.child.id()), true),
        ("HAProxy", format!("127.0.0.1:{haproxy_port}"), Some(haproxy.child.id()), true),
        ("eventscope, tracing off", format!("127.0.0.1:{off_port}"), Some(off.pid()), true),
        (
            "eventscope, inject (10% sampled)",
            format!("127.0.0.1:{inject_port}"),
            Some(inject.pid()),
            false,
        ),
    ];
    let mut conns: Vec<TcpStream> = paths
        .iter()
        .map(|(_, addr, _, _)| {
            let c = TcpStream::connect(addr).unwrap();
            c.set_nodelay(true).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c
        })
        .collect();
    let records = batch(n);
    let mut correlation = 0;
    // Warm-up: connections, the relays' buffers and the broker's partition.
    for (i, (_, _, _, identical)) in paths.iter().enumerate() {
        run(
            &mut conns[i],
            pairs.min(500),
            &records,
            *identical,
            &mut correlation,
            &mut Path::default(),
        );
    }
    let mut results: Vec<Path> = paths.iter().map(|_| Path::default()).collect();
    for round in 0..rounds {
        for k in 0..paths.len() {
            let i = (k + round) % paths.len();
            let pid = paths[i].2;
            let (cpu, switches) = (pid.map(cpu_split), pid.map(context_switches));
            run(&mut conns[i], pairs, &records, paths[i].3, &mut correlation, &mut results[i]);
            if let (Some(pid), Some(before), Some(sw)) = (pid, cpu, switches) {
                let after = cpu_split(pid);
                results[i].cpu.0 += after.0 - before.0;
                results[i].cpu.1 += after.1 - before.1;
                results[i].switches += context_switches(pid) - sw;
            }
            results[i].pairs += pairs;
        }
    }
    println!(
        "# What one relay costs: Produce ({n} × 1 KiB) then Fetch of it, one connection, {pairs} pairs × {rounds} rounds per path{}",
        if smoke { " (smoke run under cargo test)" } else { "" }
    );
    println!();
    // Millicores per MB/s: CPU seconds per MB of records (each record crosses the relay twice, in the
    // Produce request and in the Fetch response), as `sidecar_rates` reports it.
    let mb_per_pair = records.len() as f64 / 1e6;
    println!("| path | pair p50 µs | p90 | p99 | p50 added | p99 added | relay CPU µs per pair (kernel share) | millicores per MB/s | context switches per pair |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut direct = (0.0, 0.0);
    for (i, (name, _, pid, _)) in paths.iter().enumerate() {
        let r = &mut results[i];
        r.rtt_us.sort_unstable();
        let (p50, p90, p99) = (quantile(&r.rtt_us, 0.5), quantile(&r.rtt_us, 0.9), quantile(&r.rtt_us, 0.99));
        if pid.is_none() {
            direct = (p50, p99);
        }
        let cpu = r.cpu.0 + r.cpu.1;
        let relay = |text: String| if pid.is_some() { text } else { String::new() };
        println!(
            "| {name} | {p50:.0} | {p90:.0} | {p99:.0} | {:+.0} | {:+.0} | {} | {} | {} |",
            p50 - direct.0,
            p99 - direct.1,
            relay(format!(
                "{:.1} ({:.0}%)",
                cpu * 1e6 / r.pairs as f64,
                100.0 * r.cpu.1 / cpu.max(1e-9)
            )),
            relay(format!("{:.1}", cpu * 1e3 / (r.pairs as f64 * mb_per_pair))),
            relay(format!("{:.2}", r.switches / r.pairs as f64)),
        );
        assert_eq!(r.rtt_us.len() as u64, pairs * rounds as u64, "{name}: every pair measured");
    }
    drop((off, inject));
}
