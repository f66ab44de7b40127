//! The sidecar's HTTP side against real peers: curl (HTTP/1.1 and HTTP/2 prior knowledge), hey (load),
//! raw sockets for hostile input, Python's HTTP server as the application, and the OTLP receiver of
//! `tests/support/otlp.rs` for the SERVER spans.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::otlp::{ids, OtlpReceiver};
use support::*;

const KIND_SERVER: i32 = 2;

fn echo_header(body: &str, name: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["headers"][name].as_str().map(String::from)
}

#[test]
fn trace_context_spans_and_slis_over_http1_and_h2() {
    let receiver = OtlpReceiver::http();
    let app = HttpApp::start();
    let (es, addr) = Eventscope::http_sidecar(
        &app.addr,
        &["--service", "orders"],
        &[
            ("EVENTSCOPE_SIDECAR__HTTP__ROUTES__0", "/orders/{id}"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_SERVICE_NAME", "orders-sidecar"),
        ],
    );
    let url = |p: &str| format!("http://{addr}{p}");

    // A valid parent with vendor state, over HTTP/1.1.
    let parent_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_span = "00f067aa0ba902b7";
    let (status, body, version) = curl(&[
        "-H",
        &format!("traceparent: 00-{parent_trace}-{parent_span}-01"),
        "-H",
        "tracestate: vendor=abc",
        &url("/orders/42?expand=items"),
    ]);
    assert_eq!((status, version.as_str()), (200, "1.1"), "{body}");
    let forwarded = echo_header(&body, "traceparent").expect("traceparent reaches the application");
    let (t1, s1) = ids(&forwarded);
    assert_eq!(t1, parent_trace, "the trace id is kept");
    assert_ne!(s1, parent_span, "the application's parent is the sidecar's span");
    assert_eq!(echo_header(&body, "tracestate").as_deref(), Some("vendor=abc"));
    assert_eq!(echo_header(&body, "x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(echo_header(&body, "host").as_deref(), Some(addr.as_str()));
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["path"], "/orders/42?expand=items");

    // No context, over HTTP/2 (h2c prior knowledge): a new trace, forwarded to the application as HTTP/1.1.
    let (status, body, version) = curl(&["--http2-prior-knowledge", &url("/orders/7")]);
    assert_eq!((status, version.as_str()), (200, "2"), "{body}");
    let (t2, s2) = ids(&echo_header(&body, "traceparent").unwrap());
    assert_ne!(t2, parent_trace);
    assert_eq!(echo_header(&body, "host").as_deref(), Some(addr.as_str()), "Host from :authority");

    // An invalid traceparent: a new trace, and its tracestate is not carried over.
    let (status, body, _) = curl(&["-H", "traceparent: 00-zzzz-1234-01", "-H", "tracestate: a=b", &url("/orders/8")]);
    assert_eq!(status, 200);
    let (t3, s3) = ids(&echo_header(&body, "traceparent").unwrap());
    assert_eq!(t3.len(), 32);
    assert_eq!(echo_header(&body, "tracestate"), None);

    // Errors of the application and unknown routes.
    assert_eq!(curl(&[&url("/status/500")]).0, 500);
    assert_eq!(curl(&[&url("/status/404")]).0, 404);
    assert_eq!(curl(&["--http2-prior-knowledge", &url("/status/503")]).0, 503);

    es.wait_metrics("request counts", |m| m.get("http_requests_total", &[("status", "503")]));
    let m = es.scrape();
    let requests = |route: &str, status: &str| {
        m.get(
            "http_requests_total",
            &[("service", "orders"), ("method", "GET"), ("route", route), ("status", status)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(requests("/orders/{id}", "200"), 3.0);
    assert_eq!(requests("/status/{id}", "500"), 1.0);
    assert_eq!(requests("/status/{id}", "404"), 1.0);
    assert_eq!(requests("/status/{id}", "503"), 1.0);
    assert_eq!(
        m.get(
            "http_request_duration_seconds_count",
            &[("service", "orders"), ("method", "GET"), ("route", "/orders/{id}")]
        ),
        Some(3.0)
    );
    // The seed's availability SLI on these counters: every request not answered 5xx (a 404 is available).
    let total: f64 = m.samples.iter().filter(|(n, _, _)| n == "http_requests_total").map(|s| s.2).sum();
    let good: f64 = m
        .samples
        .iter()
        .filter(|(n, l, _)| n == "http_requests_total" && !l["status"].starts_with('5'))
        .map(|s| s.2)
        .sum();
    assert_eq!((good, total), (4.0, 6.0));
    let context = |c: &str| {
        m.get(
            "eventscope_http_trace_context_requests_total",
            &[("service", "orders"), ("context", c)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!((context("continued"), context("invalid"), context("absent")), (1.0, 1.0, 4.0));

    // SERVER spans: one per request, the forwarded traceparent is the span, parents and attributes right.
    let spans = receiver.wait_for(6, "server spans", |s| s.kind == KIND_SERVER);
    let span = |sid: &str| {
        spans
            .iter()
            .find(|s| s.span_id == sid)
            .unwrap_or_else(|| panic!("no span {sid}: {spans:#?}"))
    };
    let a = span(&s1);
    assert_eq!((a.trace_id.as_str(), a.parent_span_id.as_str()), (parent_trace, parent_span));
    assert_eq!(a.name, "GET /orders/{id}");
    assert_eq!(a.attributes["http.request.method"], "GET");
    assert_eq!(a.attributes["http.route"], "/orders/{id}");
    assert_eq!(a.attributes["url.path"], "/orders/42");
    assert_eq!(a.attributes["url.query"], "expand=items");
    assert_eq!(a.attributes["http.response.status_code"], "200");
    assert_eq!(a.attributes["network.protocol.version"], "1.1");
    assert_eq!(a.resource["service.name"], "orders-sidecar");
    assert!(a.end_ns > a.start_ns);
    let b = span(&s2);
    assert_eq!((b.trace_id.as_str(), b.parent_span_id.as_str()), (t2.as_str(), ""));
    assert_eq!(b.attributes["network.protocol.version"], "2");
    let c = span(&s3);
    assert_eq!((c.trace_id.as_str(), c.parent_span_id.as_str()), (t3.as_str(), ""));
    let failed = spans
        .iter()
        .find(|s| s.attributes.get("http.response.status_code").map(String::as_str) == Some("500"))
        .unwrap();
    assert_eq!(failed.status_code, 2, "5xx is an error on a server span");
    assert_eq!(failed.attributes["error.type"], "500");
    let not_found = spans
        .iter()
        .find(|s| s.attributes.get("http.response.status_code").map(String::as_str) == Some("404"))
        .unwrap();
    assert_ne!(not_found.status_code, 2, "4xx is the client's error, not the server's");
}

#[test]
fn application_down_or_slow_gets_502_and_504_and_the_sidecar_stays_ready() {
    let port = free_port();
    let app_addr = format!("127.0.0.1:{port}");
    let (es, addr) = Eventscope::http_sidecar(
        &app_addr,
        &["--service", "payments"],
        &[
            ("OTEL_TRACES_EXPORTER", "none"),
            ("EVENTSCOPE_SIDECAR__HTTP__RESPONSE_TIMEOUT", "1s"),
        ],
    );
    // Nothing listens yet: 502, and the sidecar is ready all the same.
    let (status, body, _) = curl(&[&format!("http://{addr}/pay/1")]);
    assert_eq!(status, 502, "{body}");
    assert_eq!(es.get("/readyz").map(|r| r.0), Some(200));

    let _app = HttpApp::start_on(port);
    assert_eq!(curl(&[&format!("http://{addr}/pay/1")]).0, 200);
    let started = Instant::now();
    let (status, _, _) = curl(&[&format!("http://{addr}/slow/4000")]);
    assert_eq!(status, 504);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "504 after the 1 s response timeout, not the app's 4 s"
    );
    assert_eq!(es.get("/healthz").map(|r| r.0), Some(200));

    let m = es.scrape();
    let count = |status: &str| m.get("http_requests_total", &[("service", "payments"), ("status", status)]);
    assert_eq!(count("502"), Some(1.0));
    assert_eq!(count("504"), Some(1.0));
    assert_eq!(count("200"), Some(1.0));
    let errors = |kind: &str| m.get("eventscope_http_proxy_errors_total", &[("kind", kind)]);
    assert_eq!(errors("upstream_unavailable"), Some(1.0));
    assert_eq!(errors("upstream_timeout"), Some(1.0));
}

#[test]
fn hostile_clients_get_clear_answers_with_bounded_memory_and_labels() {
    let app = HttpApp::start();
    let (es, addr) = Eventscope::http_sidecar(
        &app.addr,
        &[],
        &[
            ("OTEL_TRACES_EXPORTER", "none"),
            ("EVENTSCOPE_SIDECAR__HTTP__HEADER_READ_TIMEOUT", "1s"),
            ("EVENTSCOPE_SIDECAR__HTTP__MAX_ROUTES", "20"),
        ],
    );
    // A request head over the 64 KiB limit: 431.
    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(100 * 1024));
    let answer = raw(&addr, big.as_bytes(), Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.80}");
    // Garbage: 400.
    let answer = raw(&addr, b"\x16\x03\x01 GARBAGE \x00\xff\r\n\r\n", Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:.80}");
    // A slow client that never finishes its head is closed after the header read timeout.
    let started = Instant::now();
    let answer = raw(&addr, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ", Duration::from_secs(10));
    assert!(started.elapsed() < Duration::from_secs(5), "closed in {:?}", started.elapsed());
    assert!(!answer.contains("200"), "{answer}");
    // HTTP/2 garbage after the preface.
    let _ = raw(
        &addr,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x99\x00\x00\x00\x00\x00garbage-frame",
        Duration::from_secs(3),
    );

    // Hostile paths: at most max_routes fallback routes, then `_other`.
    for i in 0..300 {
        let answer = raw(
            &addr,
            format!("GET /w{i}q/deeper/and/deeper/still HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(5),
        );
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:.80}");
    }
    // A 64 MiB upload streams through (echoed back whole) without the sidecar holding it.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), vec![b'x'; 64 << 20]).unwrap();
    let out = tool("curl")
        .args(["-sS", "--max-time", "60", "-o", "/dev/null", "-w", "%{http_code} %{size_download}"])
        .args(["--data-binary", &format!("@{}", file.path().display())])
        .args(["-H", "Content-Type: application/octet-stream"])
        .arg(format!("http://{addr}/echo"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("200 {}", 64 << 20));

    // Everything still works, and the damage is counted.
    assert_eq!(curl(&[&format!("http://{addr}/orders/1")]).0, 200);
    let m = es.scrape();
    let routes: std::collections::BTreeSet<String> = m
        .samples
        .iter()
        .filter(|(n, _, _)| n == "http_requests_total")
        .map(|(_, l, _)| l["route"].clone())
        .collect();
    assert!(routes.len() <= 21, "{} routes: {routes:?}", routes.len());
    assert!(routes.contains("_other"), "{routes:?}");
    let errors = |kind: &str| m.get("eventscope_http_proxy_errors_total", &[("kind", kind)]).unwrap_or(0.0);
    assert!(
        errors("malformed_request") >= 2.0,
        "431 and 400 counted: {}",
        errors("malformed_request")
    );
    assert!(errors("client_timeout") >= 1.0, "slow client counted");
    let rss = m.get("process_resident_memory_bytes", &[]).unwrap();
    assert!(rss < 48e6, "RSS {rss} after a 64 MiB upload: the body was buffered");
}

#[test]
fn responses_stream_and_upgrades_tunnel() {
    let app = HttpApp::start();
    let (es, addr) = Eventscope::http_sidecar(&app.addr, &["--service", "ws"], &[("OTEL_TRACES_EXPORTER", "none")]);
    // Five chunks 200 ms apart arrive as they are written, not at the end.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /stream/5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let (mut seen, mut first, mut buf) = (String::new(), None, [0u8; 4096]);
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        if first.is_none() && seen.contains("chunk 0") {
            first = Some(started.elapsed());
        }
    }
    let total = started.elapsed();
    assert!(seen.contains("chunk 4"), "{seen}");
    let first = first.unwrap();
    assert!(
        total - first >= Duration::from_millis(600),
        "first chunk at {first:?}, last at {total:?}: buffered"
    );

    // An upgrade: 101 from the application, then raw bytes both ways.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).unwrap(), 1, "{}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("upgrade: echo"), "{head}");
    for msg in ["hello", "through the tunnel"] {
        s.write_all(msg.as_bytes()).unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, msg.as_bytes());
    }
    drop(s);
    let m = es.wait_metrics("the upgrade counted", |m| {
        m.get("http_requests_total", &[("service", "ws"), ("status", "101")])
    });
    assert_eq!(m, 1.0);
}

/// The port of the connection to the application that carried a request (from the echo).
fn peer_port(answer: &str) -> u64 {
    let body = &answer[answer.find("\r\n\r\n").expect("a response head") + 4..];
    let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {answer}"));
    v["peer_port"].as_u64().unwrap()
}

#[test]
fn http1_is_relayed_by_its_framing_pipelined_and_over_reused_connections() {
    let app = HttpApp::start();
    let (es, addr) = Eventscope::http_sidecar(&app.addr, &[], &[("OTEL_TRACES_EXPORTER", "none")]);
    let wait = Duration::from_secs(10);

    // Pipelined: three requests in one write, answered in order on one connection; the last closes it.
    let answer = raw(
        &addr,
        b"GET /orders/1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello worldGET /orders/3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        wait,
    );
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 3, "{answer}");
    let (first, echo, third) = (
        answer.find("/orders/1").unwrap(),
        answer.find("hello world").unwrap(),
        answer.find("/orders/3").unwrap(),
    );
    assert!(first < echo && echo < third, "{answer}");

    // HEAD: the Content-Length is the GET's, no body follows and none is waited for.
    let started = Instant::now();
    let answer = raw(&addr, b"HEAD /orders/1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", wait);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("content-length: "), "{answer}");
    assert!(answer.ends_with("\r\n\r\n"), "no body after a HEAD response: {answer}");
    assert!(started.elapsed() < Duration::from_secs(5), "HEAD took {:?}", started.elapsed());

    // A body that ends when the application closes: relayed whole, then the client's connection closes.
    let answer = raw(&addr, b"GET /unframed/3 HTTP/1.1\r\nHost: a\r\n\r\n", wait);
    assert!(answer.ends_with("unframed 0\nunframed 1\nunframed 2\n"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");

    // 103 Early Hints go to the client before the final response.
    let answer = raw(&addr, b"GET /early-hints HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", wait);
    assert!(answer.starts_with("HTTP/1.1 103"), "{answer}");
    assert!(answer.contains("rel=preload") && answer.contains("HTTP/1.1 200"), "{answer}");

    // An application that answers garbage: 502, and the sidecar carries on.
    let answer = raw(&addr, b"GET /garbage HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", wait);
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");

    // Ambiguous framing (request smuggling's raw material) never takes the fast path: hyper refuses it.
    let answer = raw(
        &addr,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 7\r\n\r\nokGET /x HTTP/1.1\r\n\r\n",
        wait,
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    // HTTP/1.0 and requests without Host take hyper's path; still answered.
    let answer = raw(&addr, b"GET /orders/10 HTTP/1.0\r\n\r\n", wait);
    assert!(answer.starts_with("HTTP/1.") && answer.contains(" 200 OK"), "{answer}");

    // Connections to the application are reused across client connections...
    let get = |path: &str| {
        raw(
            &addr,
            format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
            wait,
        )
    };
    let a = peer_port(&get("/orders/20"));
    let b = peer_port(&get("/orders/21"));
    assert_eq!(a, b, "the idle connection to the application was reused");
    // ...until the application closes one while it is idle: the next requests (a GET and a POST, which is
    // never retried) go over a fresh connection and succeed.
    let c = peer_port(&get("/closes-later"));
    std::thread::sleep(Duration::from_millis(600));
    let d = peer_port(&get("/orders/22"));
    assert_ne!(c, d, "a connection the application closed is not reused");
    peer_port(&get("/closes-later"));
    std::thread::sleep(Duration::from_millis(600));
    let answer = raw(
        &addr,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        wait,
    );
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"), "{answer}");

    let m = es.scrape();
    let errors = |kind: &str| m.get("eventscope_http_proxy_errors_total", &[("kind", kind)]).unwrap_or(0.0);
    assert_eq!(errors("upstream_failed"), 1.0, "the garbage answer, and nothing else");
    assert_eq!(errors("response_aborted"), 0.0);
    let requests = |method: &str, route: &str, status: &str| {
        m.get("http_requests_total", &[("method", method), ("route", route), ("status", status)])
            .unwrap_or(0.0)
    };
    assert_eq!(
        requests("GET", "/orders/{id}", "200"),
        6.0,
        "pipelined, HTTP/1.0 and pooled requests"
    );
    assert_eq!(requests("HEAD", "/orders/{id}", "200"), 1.0);
    assert_eq!(requests("POST", "/echo", "200"), 2.0);
    assert_eq!(requests("GET", "/garbage", "502"), 1.0);
    assert_eq!(requests("GET", "/unframed/{id}", "200"), 1.0);
}

#[test]
fn load_from_hey_is_counted_exactly() {
    let app = HttpApp::start();
    let (es, addr) = Eventscope::http_sidecar(
        &app.addr,
        &["--service", "inventory"],
        &[
            ("OTEL_TRACES_EXPORTER", "none"),
            ("EVENTSCOPE_SIDECAR__HTTP__ROUTES__0", "/items/{sku}"),
        ],
    );
    let out = tool("hey")
        .args(["-n", "2000", "-c", "20", &format!("http://{addr}/items/123")])
        .output()
        .expect("hey (Debian package hey)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[200]\t2000 responses"), "{text}");
    let m = es.scrape();
    assert_eq!(
        m.get(
            "http_requests_total",
            &[
                ("service", "inventory"),
                ("method", "GET"),
                ("route", "/items/{sku}"),
                ("status", "200")
            ]
        ),
        Some(2000.0)
    );
    assert_eq!(
        m.get(
            "http_request_duration_seconds_count",
            &[("service", "inventory"), ("route", "/items/{sku}")]
        ),
        Some(2000.0)
    );
    assert_eq!(m.get("eventscope_http_connections", &[]), Some(0.0));
    // The contract: every HTTP metric that dashboards and alerts may use is exported.
    m.assert_exports(&eventscope::telemetry::contract::http_names(), "the HTTP sidecar");
}

const KIND_CLIENT: i32 = 3;

#[test]
fn outbound_calls_through_http_proxy_carry_a_client_span() {
    let receiver = OtlpReceiver::http();
    let app = HttpApp::start();
    let outbound = format!("127.0.0.1:{}", free_port());
    let (es, _addr) = Eventscope::http_sidecar(
        &app.addr,
        &["--service", "orders", "--http-outbound-listen", &outbound],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let proxy = format!("http://{outbound}");
    // The application calls another service through HTTP_PROXY, with its own context.
    let parent_trace = "0af7651916cd43dd8448eb211c80319c";
    let parent_span = "b7ad6b7169203331";
    let (status, body, _) = curl(&[
        "-x",
        &proxy,
        "-H",
        &format!("traceparent: 00-{parent_trace}-{parent_span}-01"),
        &format!("http://{}/orders/5", app.addr),
    ]);
    assert_eq!(status, 200, "{body}");
    let (trace, span_id) = ids(&echo_header(&body, "traceparent").unwrap());
    assert_eq!(trace, parent_trace);
    assert_ne!(span_id, parent_span);
    assert_eq!(echo_header(&body, "host").as_deref(), Some(app.addr.as_str()));
    assert_eq!(echo_header(&body, "proxy-connection"), None);
    // HTTPS-style tunnelling with CONNECT passes bytes unchanged (no header can be added).
    let (status, body, _) = curl(&["-p", "-x", &proxy, &format!("http://{}/orders/6", app.addr)]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(echo_header(&body, "traceparent"), None);
    // A destination that does not answer: 502 from the sidecar.
    let dead = format!("127.0.0.1:{}", free_port());
    assert_eq!(curl(&["-x", &proxy, &format!("http://{dead}/x")]).0, 502);

    let spans = receiver.wait_for(1, "client span", |s| s.kind == KIND_CLIENT && s.span_id == span_id);
    let s = &spans[0];
    assert_eq!((s.trace_id.as_str(), s.parent_span_id.as_str()), (parent_trace, parent_span));
    assert_eq!(s.name, "GET");
    assert_eq!(s.attributes["url.full"], format!("http://{}/orders/5", app.addr));
    assert_eq!(s.attributes["http.response.status_code"], "200");
    let m = es.scrape();
    let count = |method: &str, dest: &str, status: &str| {
        m.get(
            "eventscope_http_client_requests_total",
            &[("service", "orders"), ("method", method), ("destination", dest), ("status", status)],
        )
    };
    assert_eq!(count("GET", &app.addr, "200"), Some(1.0));
    assert_eq!(count("CONNECT", &app.addr, "200"), Some(1.0));
    assert_eq!(count("GET", &dead, "502"), Some(1.0));
    // Outbound calls are not the service's own SLIs.
    assert_eq!(m.get("http_requests_total", &[("service", "orders")]), None);
    m.assert_exports(&eventscope::telemetry::contract::http_outbound_names(), "the outbound proxy");
}

/// `upstream_protocol = "http2"`: requests reach an HTTP/2-only application (nginx, h2c prior knowledge,
/// as a gRPC service listens) over HTTP/2 whatever the client spoke, with `te: trailers` (gRPC needs it)
/// and `traceparent`.
#[test]
fn http2_to_an_h2c_application() {
    let port = free_port();
    let _app = Nginx::start(
        &format!(
            "  server {{ listen 127.0.0.1:{port} http2;\n    location / {{ add_header x-app-protocol $server_protocol; \
             return 200 \"protocol=$server_protocol te=$http_te traceparent=$http_traceparent\\n\"; }} }}"
        ),
        port,
    );
    let (es, addr) = Eventscope::http_sidecar(
        &format!("127.0.0.1:{port}"),
        &["--service", "grpc-like"],
        &[
            ("OTEL_TRACES_EXPORTER", "none"),
            ("EVENTSCOPE_SIDECAR__HTTP__UPSTREAM_PROTOCOL", "http2"),
        ],
    );
    for client_protocol in ["--http1.1", "--http2-prior-knowledge"] {
        let (status, body, _) = curl(&[client_protocol, "-H", "te: trailers", &format!("http://{addr}/svc.Orders/Get")]);
        assert_eq!(status, 200, "{client_protocol}: {body}");
        assert!(
            body.starts_with("protocol=HTTP/2.0 te=trailers traceparent=00-"),
            "{client_protocol}: {body}"
        );
    }
    let m = es.scrape();
    assert_eq!(
        m.get("http_requests_total", &[("service", "grpc-like"), ("status", "200")]),
        Some(2.0)
    );
}

/// The HTTP side's header policy is written once (`sidecar::http::headers`) and used by both paths: one
/// table of conformance cases, run through the fast path (`h1.rs`) and with `sidecar.http.fast_path =
/// false` through hyper's server and client. Each case: request headers sent, then what the application
/// must see (`Some(value)`) or not see (`None`).
#[test]
fn one_header_policy_on_both_paths() {
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<(&'a str, Option<&'a str>)>);
    let cases: Vec<Case> = vec![
        (
            "hop-by-hop and Connection-named headers do not cross",
            vec![
                ("Connection", "keep-alive, x-secret"),
                ("X-Secret", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Connection", "x"),
                ("X-Kept", "yes"),
            ],
            vec![
                ("x-secret", None),
                ("keep-alive", None),
                ("proxy-connection", None),
                ("connection", None),
                ("x-kept", Some("yes")),
            ],
        ),
        (
            "TE: trailers is the one TE kept",
            vec![("TE", "trailers")],
            vec![("te", Some("trailers"))],
        ),
        ("other TE values go", vec![("TE", "gzip")], vec![("te", None)]),
        (
            "X-Forwarded-For appended, X-Forwarded-Proto added",
            vec![("X-Forwarded-For", "203.0.113.9")],
            vec![
                ("x-forwarded-for", Some("203.0.113.9, 127.0.0.1")),
                ("x-forwarded-proto", Some("http")),
            ],
        ),
        (
            "X-Forwarded-Proto kept when sent",
            vec![("X-Forwarded-Proto", "https")],
            vec![("x-forwarded-for", Some("127.0.0.1")), ("x-forwarded-proto", Some("https"))],
        ),
        (
            "a continued trace keeps its tracestate",
            vec![("traceparent", tp), ("tracestate", "congo=t61rcWkgMzE")],
            vec![("tracestate", Some("congo=t61rcWkgMzE"))],
        ),
        (
            "a new trace owns no tracestate",
            vec![("traceparent", "00-garbage"), ("tracestate", "congo=t61rcWkgMzE")],
            vec![("tracestate", None)],
        ),
    ];
    let app = HttpApp::start();
    let (fast, fast_addr) = Eventscope::http_sidecar(&app.addr, &["--service", "policy"], &[("OTEL_TRACES_EXPORTER", "none")]);
    let (hyper, hyper_addr) = Eventscope::http_sidecar(
        &app.addr,
        &["--service", "policy"],
        &[("OTEL_TRACES_EXPORTER", "none"), ("EVENTSCOPE_SIDECAR__HTTP__FAST_PATH", "false")],
    );
    for (path, addr) in [("fast path", &fast_addr), ("hyper", &hyper_addr)] {
        for (what, sent, expected) in &cases {
            let mut request = String::from("GET /anything HTTP/1.1\r\nHost: x\r\n");
            for (k, v) in sent {
                request.push_str(&format!("{k}: {v}\r\n"));
            }
            if !sent.iter().any(|(k, _)| k.eq_ignore_ascii_case("connection")) {
                request.push_str("Connection: close\r\n");
            }
            request.push_str("\r\n");
            let mut s = TcpStream::connect(addr.as_str()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            let mut answer = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the head and a Content-Length body (the keep-alive case does not close).
            let body = loop {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "{path}, {what}: closed early: {}", String::from_utf8_lossy(&answer));
                answer.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&answer).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap();
                    if body.len() >= len {
                        break body[..len].to_string();
                    }
                }
            };
            let context = echo_header(&body, "traceparent").unwrap_or_default();
            assert!(context.starts_with("00-"), "{path}, {what}: traceparent {context:?}");
            for (name, want) in expected {
                assert_eq!(echo_header(&body, name).as_deref(), *want, "{path}, {what}: {name} in {body}");
            }
        }
    }
    drop((fast, hyper));
}
