//! The sidecar's HTTP proxy against direct and against nginx as a reverse proxy, in the same run.
//!
//! The application is nginx itself (one worker, `return 200`), so that it is never the bottleneck. Three
//! paths to it: direct, through `eventscope sidecar --http-upstream` (span export off, as nginx has
//! none), and through a second nginx (one worker, `proxy_pass` with upstream keepalive). For each:
//! - throughput: wrk, 2 threads, 50 connections, keep-alive, for `BENCH_SECONDS` (10 s);
//! - latency at a fixed 1,000 requests/s: 10 keep-alive connections at 100 requests/s each, on a
//!   schedule, each request timed in microseconds; p50 and p99;
//! - RSS of the proxy at the end (eventscope: its /metrics; nginx: master + worker from /proc).
//!
//! The paths run in rotating order over three rounds (`BENCH_ROUNDS`); medians are reported.
//!
//! Run: `cargo bench --bench http_proxy`. Results: docs/benchmarks.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

/// Requests/s from wrk (keep-alive, 2 threads, 50 connections) and the number of non-2xx answers.
fn throughput(addr: &str, seconds: u64) -> f64 {
    let out = Command::new("wrk")
        .args(["-t2", "-c50", &format!("-d{seconds}s"), &format!("http://{addr}/orders/1")])
        .output()
        .expect("wrk (Debian package wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("Non-2xx"), "wrk through {addr}: {text}");
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("wrk output: {text}"))
}

/// One keep-alive HTTP/1.1 GET on `s`; the response is read whole (Content-Length).
fn get(s: &mut std::net::TcpStream, buf: &mut Vec<u8>) {
    use std::io::{Read, Write};
    s.write_all(b"GET /orders/1 HTTP/1.1\r\nHost: bench\r\n\r\n").unwrap();
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed mid-response");
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no content-length: {head}"));
        if buf.len() >= end + 4 + len {
            return;
        }
    }
}

/// p50 and p99 in milliseconds at a fixed 1,000 requests/s: 10 keep-alive connections, each sending one
/// request every 10 ms on a schedule (open loop: a late response does not delay the next send), each
/// request timed in microseconds from its write to its last byte.
fn latency(addr: &str, seconds: u64) -> (f64, f64) {
    let threads: Vec<_> = (0..10)
        .map(|k| {
            let addr = addr.to_string();
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(&addr).unwrap();
                s.set_nodelay(true).unwrap();
                let mut buf = Vec::with_capacity(4096);
                get(&mut s, &mut buf);
                let period = Duration::from_millis(10);
                let start = std::time::Instant::now() + Duration::from_micros(1000 * k);
                let mut out = Vec::with_capacity(seconds as usize * 100);
                for i in 0..seconds * 100 {
                    let due = start + period * i as u32;
                    if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let t = std::time::Instant::now();
                    get(&mut s, &mut buf);
                    out.push(t.elapsed().as_micros() as u64);
                }
                out
            })
        })
        .collect();
    let mut all: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    all.sort_unstable();
    let pct = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)] as f64 / 1000.0;
    (pct(0.5), pct(0.99))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 1 } else { 10 });
    let rounds = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 1 } else { 3 });
    let (app_port, nginx_port) = (free_port(), free_port());
    let _app = Nginx::start(
        &format!("  server {{ listen 127.0.0.1:{app_port}; location / {{ return 200 \"ok\\n\"; }} }}"),
        app_port,
    );
    let proxy = Nginx::start(
        &format!(
            "  upstream app {{ server 127.0.0.1:{app_port}; keepalive 64; }}\n  server {{ listen 127.0.0.1:{nginx_port};\n    \
             location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}"
        ),
        nginx_port,
    );
    let app = format!("127.0.0.1:{app_port}");
    let (es, es_addr) = Eventscope::http_sidecar(
        &app,
        &["--service", "bench"],
        &[
            ("OTEL_TRACES_EXPORTER", "none"),
            ("EVENTSCOPE_SIDECAR__HTTP__ROUTES__0", "/orders/{id}"),
        ],
    );
    let paths = [app.clone(), es_addr, format!("127.0.0.1:{nginx_port}")];
    const NAMES: [&str; 3] = ["direct", "eventscope", "nginx"];
    println!(
        "http_proxy: {seconds} s per run, {rounds} round(s){}",
        if smoke { " (smoke run under cargo test)" } else { "" }
    );
    let mut rps = [vec![], vec![], vec![]];
    let mut p50 = [vec![], vec![], vec![]];
    let mut p99 = [vec![], vec![], vec![]];
    for round in 0..rounds {
        for k in 0..3 {
            let i = (k + round) % 3;
            rps[i].push(throughput(&paths[i], seconds));
        }
        for k in 0..3 {
            let i = (k + round) % 3;
            let (a, b) = latency(&paths[i], seconds);
            p50[i].push(a);
            p99[i].push(b);
        }
    }
    let r: Vec<f64> = rps.iter().map(|v| median(v.clone())).collect();
    let l50: Vec<f64> = p50.iter().map(|v| median(v.clone())).collect();
    let l99: Vec<f64> = p99.iter().map(|v| median(v.clone())).collect();
    println!();
    println!("| measure | {} | {} | {} |", NAMES[0], NAMES[1], NAMES[2]);
    println!("|---|---|---|---|");
    println!(
        "| requests/s (wrk, 50 connections, median) | {:.0} | {:.0} (**{:.2}× direct, {:.2}× nginx**) | {:.0} ({:.2}× direct) |",
        r[0],
        r[1],
        r[1] / r[0],
        r[1] / r[2],
        r[2],
        r[2] / r[0]
    );
    for (name, l, mark) in [("p50", &l50, ""), ("p99", &l99, "**")] {
        println!(
            "| {name} at 1,000 requests/s | {:.3} ms | {:.3} ms ({mark}+{:.3} ms{mark}) | {:.3} ms (+{:.3} ms) |",
            l[0],
            l[1],
            l[1] - l[0],
            l[2],
            l[2] - l[0]
        );
    }
    let m = es.scrape();
    println!(
        "| proxy RSS at the end | | {:.1} MB | {:.1} MB (master + worker) |",
        m.get("process_resident_memory_bytes", &[]).unwrap() / 1e6,
        proxy.rss() / 1e6
    );
    // The eventscope path really went through the proxy and was measured.
    let counted = m
        .get(
            "http_requests_total",
            &[("service", "bench"), ("route", "/orders/{id}"), ("status", "200")],
        )
        .unwrap_or(0.0);
    assert!(counted > 100.0 * seconds as f64, "eventscope counted {counted} requests");
    println!("| requests eventscope counted | | {counted:.0} | |");
}
