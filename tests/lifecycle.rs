//! Lifecycle cases: SIGTERM with requests in flight on both sides of the sidecar (none lost within the
//! grace period), and an upgraded HTTP connection that keeps its place under `max_connections`.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use support::*;

/// Sends `request` raw and reads the whole answer until the server closes.
fn raw_exchange(addr: &str, request: &[u8]) -> String {
    raw(addr, request, Duration::from_secs(15))
}

/// Defect 1 (HTTP): connection tasks were detached and only the accept loop was awaited, so SIGTERM cut
/// the requests in flight. Both the fast path (HTTP/1.1) and hyper's (HTTP/1.0) finish within the grace.
#[test]
fn sigterm_lets_in_flight_http_requests_finish() {
    let app = HttpApp::start();
    let (es, addr) = Eventscope::http_sidecar(&app.addr, &["--service", "drain"], &[("OTEL_TRACES_EXPORTER", "none")]);
    let fast = {
        let addr = addr.clone();
        std::thread::spawn(move || raw_exchange(&addr, b"GET /slow/1500 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    };
    let hyper = {
        let addr = addr.clone();
        std::thread::spawn(move || raw_exchange(&addr, b"GET /slow/1500 HTTP/1.0\r\nHost: x\r\n\r\n"))
    };
    std::thread::sleep(Duration::from_millis(400));
    let (status, took) = es.terminate();
    for (path, answer) in [("fast path", fast.join().unwrap()), ("hyper", hyper.join().unwrap())] {
        assert!(answer.contains(" 200 ") && answer.ends_with("slow\n"), "{path}: {answer:?}");
    }
    assert!(status.success(), "{status:?}");
    assert!(
        took >= Duration::from_millis(800),
        "stopped after {took:?}, before the requests ended"
    );
}

/// A Fetch request (v12) that the broker holds for up to `max_wait_ms` on an empty partition.
fn long_fetch(correlation: i32, topic: &'static str, max_wait_ms: i32) -> Vec<u8> {
    fetch_frame(12, correlation, "drain-test", topic, 0, max_wait_ms)
}

/// Defect 1 (Kafka): the relays were dropped at once on SIGTERM. A Fetch the broker holds (long poll)
/// when SIGTERM arrives still gets its response, then the connection closes.
#[test]
fn sigterm_lets_in_flight_kafka_requests_finish() {
    let mock: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).unwrap();
    mock.create_topic("quiet", 1, 1).unwrap();
    let (es, port) = Eventscope::sidecar(&mock.bootstrap_servers());
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    // A first, answered at once: the upstream connection is up before the long poll.
    let sent = Instant::now();
    s.write_all(&long_fetch(1, "quiet", 0)).unwrap();
    let first = read_response(&mut s);
    assert_eq!(first, 1, "correlation id");
    let quick = sent.elapsed();
    let sent = Instant::now();
    s.write_all(&long_fetch(2, "quiet", 2000)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let terminate = std::thread::spawn(move || es.terminate());
    assert_eq!(read_response(&mut s), 2, "the long poll's response, after SIGTERM");
    let held = sent.elapsed();
    let mut rest = Vec::new();
    // Then the sidecar closes the connection.
    assert_eq!(s.read_to_end(&mut rest).unwrap_or(0), 0);
    let (status, _) = terminate.join().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        held > quick + Duration::from_millis(300),
        "the broker did not hold the fetch ({held:?} against {quick:?}): nothing was in flight at SIGTERM"
    );
}

/// Reads one response frame; its correlation id.
fn read_response(s: &mut TcpStream) -> i32 {
    let body = read_frame(s).expect("a response");
    i32::from_be_bytes([body[0], body[1], body[2], body[3]])
}

/// Defect 9: an upgraded connection (WebSocket) left `max_connections` and the connections gauge at the
/// upgrade, while its tunnel went on.
#[test]
fn an_upgraded_connection_keeps_its_place_until_its_tunnel_closes() {
    let app = HttpApp::start();
    let (es, addr) = Eventscope::http_sidecar(
        &app.addr,
        &["--service", "ws"],
        &[("OTEL_TRACES_EXPORTER", "none"), ("EVENTSCOPE_SIDECAR__HTTP__MAX_CONNECTIONS", "1")],
    );
    // The readiness probe's connection has gone before the only place is taken.
    es.wait_metrics("no connection open", |m| {
        (m.get("eventscope_http_connections", &[]) == Some(0.0)).then_some(())
    });
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).unwrap(), 1);
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    s.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    // The tunnel is open: one connection, and no room for another.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(es.scrape().get("eventscope_http_connections", &[]), Some(1.0));
    let refused = raw_exchange(&addr, b"GET /orders/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(refused, "", "a second connection was served while the tunnel held the only place");
    // The tunnel still works, and once it closes the place is free again.
    s.write_all(b"pong").unwrap();
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
    drop(s);
    es.wait_metrics("the tunnel's place released", |m| {
        (m.get("eventscope_http_connections", &[]) == Some(0.0)).then_some(())
    });
    let answer = raw_exchange(&addr, b"GET /orders/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// The collector's errors of every kind, summed.
fn errors_of_every_kind(m: &Metrics) -> f64 {
    ["connect", "timeout", "protocol", "broker", "authorization", "unsupported"]
        .iter()
        .map(|k| m.get("eventscope_collector_errors_total", &[("kind", k)]).unwrap_or(0.0))
        .sum()
}

/// Defect 11: when ListGroups failed on every broker, the failure was counted once per broker and again
/// as the `metadata` step. librdkafka's mock has no ListGroups: each of its 3 brokers fails it each poll.
#[test]
fn a_list_groups_failure_on_every_broker_is_counted_once_per_broker() {
    let mock: MockCluster<'static, DefaultProducerContext> = MockCluster::new(3).unwrap();
    mock.create_topic("orders", 3, 1).unwrap();
    let es = Eventscope::collector(&format!(
        "[collector]\npoll_interval = \"200ms\"\n[[clusters]]\nname = \"mock\"\nkafka = {{ \"bootstrap.servers\" = \"{}\" }}\n",
        mock.bootstrap_servers()
    ));
    let (errors, polls) = es.wait_metrics("four polls", |m| {
        let polls = m.get("eventscope_collector_poll_duration_seconds_count", &[("cluster", "mock")])?;
        (polls >= 4.0).then(|| (errors_of_every_kind(m), polls))
    });
    // Errors are counted during a poll, its duration at its end: at most one poll's errors ahead.
    assert!(
        errors >= 3.0 * polls && errors <= 3.0 * (polls + 1.0),
        "{errors} errors in {polls} polls of 3 brokers"
    );
}

/// Defect 5: the collector's connection map was locked across dial, TLS, ApiVersions and SASL, so one
/// broker that does not answer made every request of the poll wait. Broker 2 of three answers after 10 s
/// (request_timeout 1 s): the partitions led by brokers 1 and 3 are collected in every poll, and a poll
/// takes about one request_timeout, not one per request to broker 2.
#[test]
fn a_dead_broker_stalls_only_its_own_partitions() {
    use rdkafka::mocking::MockCoordinator;
    let mock: MockCluster<'static, DefaultProducerContext> = MockCluster::new(3).unwrap();
    mock.create_topic("orders", 3, 1).unwrap();
    for p in 0..3 {
        mock.partition_leader("orders", p, Some(p + 1)).unwrap();
    }
    mock.coordinator(MockCoordinator::Group("readmodel".into()), 1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let producer = producer_with(&bootstrap, &[("linger.ms", "0")]);
    for p in 0..3 {
        for _ in 0..10 {
            producer
                .send(rdkafka::producer::BaseRecord::<(), str>::to("orders").partition(p).payload("x"))
                .unwrap();
        }
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10)).unwrap();
    commit(&committer(&bootstrap, "readmodel"), "orders", &[(0, 4), (1, 4), (2, 4)]);
    mock.broker_round_trip_time(2, Duration::from_secs(10)).unwrap();
    let es = Eventscope::collector(&format!(
        "[collector]\npoll_interval = \"500ms\"\nrequest_timeout = \"1s\"\n[[clusters]]\nname = \"mock\"\ngroups = [\"readmodel\"]\nkafka = {{ \"bootstrap.servers\" = \"{bootstrap}\" }}\n"
    ));
    let lag = |m: &Metrics, p: &str| m.get("kafka_consumergroup_lag", &[("consumergroup", "readmodel"), ("partition", p)]);
    es.wait_metrics("lag of the partitions on brokers 1 and 3", |m| {
        (lag(m, "0") == Some(6.0) && lag(m, "2") == Some(6.0)).then_some(())
    });
    let (sum, count) = es.wait_metrics("three polls", |m| {
        let count = m.get("eventscope_collector_poll_duration_seconds_count", &[("cluster", "mock")])?;
        let sum = m.get("eventscope_collector_poll_duration_seconds_sum", &[("cluster", "mock")])?;
        (count >= 3.0).then_some((sum, count))
    });
    let mean = sum / count;
    assert!(
        mean < 2.5,
        "a poll takes {mean:.2} s on average with one broker silent (request_timeout 1 s)"
    );
}

/// Defect 7: the admin accept loop retried at once on errors such as EMFILE, spinning a core while the
/// process had no file descriptor left. Out of descriptors, with connections waiting, it now backs off.
#[test]
fn the_admin_server_backs_off_when_out_of_file_descriptors() {
    // A cluster nobody listens on: the collector runs, its polls fail.
    let es = Eventscope::collector(&format!(
        "[collector]\npoll_interval = \"10s\"\n[[clusters]]\nname = \"gone\"\nkafka = {{ \"bootstrap.servers\" = \"127.0.0.1:{}\" }}\n",
        free_port()
    ));
    let pid = es.pid();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let limit = format!("--nofile={}:{}", open + 2, open + 2);
    let status = tool("prlimit").args(["--pid", &pid.to_string(), &limit]).status().unwrap();
    assert!(status.success());
    // More connections than descriptors left: the rest wait in the backlog, and accept fails.
    let admin = es.admin.clone();
    let held: Vec<TcpStream> = (0..10).filter_map(|_| TcpStream::connect(&admin).ok()).collect();
    assert!(held.len() >= 5, "connections queue in the backlog");
    std::thread::sleep(Duration::from_millis(300));
    let before = es.cpu_seconds();
    std::thread::sleep(Duration::from_millis(1500));
    let spent = es.cpu_seconds() - before;
    assert!(
        spent < 0.5,
        "{spent:.2} s of CPU in 1.5 s while out of descriptors: the accept loop spins"
    );
    drop(held);
}
