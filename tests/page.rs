//! The admin page in a real browser: `eventscope demo` runs (the collector, and the services' embedded
//! sidecar), Debian's chromium loads `/` headless through playwright-core (`tests/clients/page.cjs`), and
//! what it shows is checked against the JSON endpoints the page reads (`/api/v1/view`, `/sagas`) at the
//! same sample: groups, lag, status, stuck sagas and their trace links. The screenshot is kept in
//! `target/tmp/artifacts/admin-page.png`.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

/// Stops the demo however the test ends.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        for _ in 0..100 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `tests/clients/page.cjs` with `args`: Debian's chromium driven by playwright-core (both installed by
/// `.ci/install-test-deps`, playwright-core in `~/.cache/eventscope/playwright`).
fn browser(args: &[String]) -> std::process::Output {
    let playwright = PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/eventscope/playwright");
    Command::new("node")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/page.cjs"))
        .args(args)
        .env("PLAYWRIGHT_DIR", &playwright)
        .output()
        .expect("node runs (installed by .ci/install-test-deps)")
}

fn view(admin: &str) -> Option<serde_json::Value> {
    let (status, body) = http_get(admin, "/api/v1/view")?;
    (status == 200).then(|| serde_json::from_str(&body).ok())?
}

#[test]
fn the_page_shows_what_the_endpoints_report_in_a_real_browser() {
    let admin = format!("127.0.0.1:{}", free_port());
    let trace_url = "https://tempo.example/trace/{trace_id}";
    let mut child = Command::new(env!("CARGO_BIN_EXE_eventscope"))
        .args(["demo", "--duration", "300", "--admin-listen", &admin, "--trace-url", trace_url])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let demo = Demo(child);
    // The banner names the sidecar's admin address; the rest of the output is drained so the demo never
    // blocks on a full pipe.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let sidecar = loop {
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("the demo's banner");
        if let Some(rest) = line.strip_prefix("metrics: the collector's on http://") {
            let side = rest.split("the sidecar's on http://").nth(1).unwrap();
            break side.trim_end_matches("/metrics").to_string();
        }
    };

    // Until the collector has groups and the saga has a stuck or inconsistent order to list.
    wait_for(Duration::from_secs(120), "groups and stuck sagas in the view", || {
        let v = view(&admin)?;
        let groups = v["kafka"].as_array()?.len();
        let listed = v["sagas"][0]["stuck"].as_f64()? + v["sagas"][0]["ended"]["inconsistent"].as_f64().unwrap_or(0.0);
        (groups >= 6 && listed > 0.0).then_some(())
    });
    let v = view(&admin).unwrap();
    assert_eq!(v["role"], "demo");
    // Viewers share one document per sample: 200 requests in a row get at most two distinct bodies (a
    // sample may fall between them), never one built per request.
    let mut bodies: Vec<String> = (0..200).map(|_| http_get(&admin, "/api/v1/view").unwrap().1).collect();
    bodies.dedup();
    assert!(bodies.len() <= 2, "{} distinct documents in 200 requests", bodies.len());
    assert_eq!(v["trace_url"], trace_url);

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("artifacts/admin-page.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&shot);
    let out = browser(&[format!("http://{admin}/"), format!("http://{sidecar}/"), shot.display().to_string()]);
    let printed = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value = printed
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no summary: {printed}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "the page disagrees with its endpoints: {summary:#}");
    assert_eq!(summary["problems"].as_array().map(Vec::len), Some(0));

    // What was compared is what the demo is for: both views of the slow read model, stuck orders linked.
    let groups = summary["groups"].as_array().unwrap();
    for source in ["collector", "sidecar"] {
        let readmodel = groups
            .iter()
            .find(|g| g["key"] == format!("{source}/demo/order-readmodel/orders"))
            .unwrap_or_else(|| panic!("{source}'s order-readmodel not shown: {groups:?}"));
        assert!(readmodel["lag"].as_f64().unwrap() > 0.0, "{readmodel}");
    }
    assert!(summary["instances_compared"].as_u64().unwrap() > 0);
    let link = summary["trace_links"][0].as_str().expect("a trace link");
    let id = link.strip_prefix("https://tempo.example/trace/").expect(link);
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{link}");
    assert!(summary["sidecar_topics"].as_array().unwrap().iter().any(|t| t == "orders"));

    // The screenshot, kept: a PNG of the whole page.
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000, "{} bytes", png.len());
    eprintln!("screenshot: {}", shot.display());

    // The sidecar's own /metrics carries its measurements of the same groups.
    let (status, body) = http_get(&sidecar, "/metrics").unwrap();
    assert_eq!(status, 200);
    let m = Metrics::parse(&body);
    assert!(
        m.count(
            "kafka_consumergroup_lag",
            &[("consumergroup", "order-readmodel"), ("source", "sidecar")]
        ) > 0
    );
    assert!(m.count("eventscope_kafka_produced_records_total", &[("topic", "orders")]) == 1);
    drop(demo);
}

/// The sidecar's HTTP side in the view and on its page: the seed's SLIs per route from real requests
/// (curl through the sidecar to Python's HTTP server), and trace-context coverage.
#[test]
fn the_sidecars_view_reports_the_http_slis_per_route() {
    let app = HttpApp::start();
    let (es, addr) = Eventscope::http_sidecar(
        &app.addr,
        &["--service", "orders"],
        &[
            ("EVENTSCOPE_SIDECAR__HTTP__ROUTES__0", "/orders/{id}"),
            ("EVENTSCOPE_SIDECAR__HTTP__ROUTES__1", "/status/{code}"),
            ("EVENTSCOPE_SIDECAR__HTTP__ROUTES__2", "/slow/{ms}"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ],
    );
    let admin = es.admin.clone();
    // The view's first sample comes first, so that every request below falls inside its window.
    wait_for(Duration::from_secs(20), "the first view", || {
        view(&admin).filter(|v| v["version"] == 1)
    });
    let url = |p: &str| format!("http://{addr}{p}");
    let traceparent = "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for i in 0..12 {
        let mut args = vec![];
        if i % 3 == 0 {
            args.extend(["-H", traceparent]);
        }
        let u = url(&format!("/orders/{i}"));
        args.push(&u);
        assert_eq!(curl(&args).0, 200);
    }
    for _ in 0..4 {
        assert_eq!(curl(&[&url("/status/503")]).0, 503);
    }
    assert_eq!(curl(&[&url("/status/200")]).0, 200);
    for _ in 0..3 {
        assert_eq!(curl(&[&url("/slow/700")]).0, 200);
    }
    let v = wait_for(Duration::from_secs(30), "the requests in the view", || {
        let v = view(&admin)?;
        let total: f64 = v["routes"].as_array()?.iter().filter_map(|r| r["requests"].as_f64()).sum();
        (total == 20.0).then_some(v)
    });
    assert_eq!(v["role"], "sidecar");
    let route = |r: &str| v["routes"].as_array().unwrap().iter().find(|x| x["route"] == r).unwrap().clone();
    let orders = route("/orders/{id}");
    assert_eq!((orders["requests"].as_f64(), orders["errors"].as_f64()), (Some(12.0), Some(0.0)));
    assert_eq!(orders["availability"], 1.0);
    assert!(orders["p99_seconds"].as_f64().unwrap() < 0.5, "{orders}");
    let status = route("/status/{code}");
    assert_eq!((status["requests"].as_f64(), status["errors"].as_f64()), (Some(5.0), Some(4.0)));
    assert_eq!(status["error_rate"], 0.8);
    let slow = route("/slow/{ms}");
    assert!(slow["p99_seconds"].as_f64().unwrap() > 0.5, "{slow}");
    assert_eq!(slow["within_target"], 0.0);
    let tc = &v["http_trace_context"][0];
    assert_eq!(tc["service"], "orders");
    assert_eq!(tc["requests"]["continued"], 4.0);
    assert_eq!(tc["requests"]["absent"], 16.0);
    assert_eq!(tc["coverage"], 0.2);
    // Its page says the same, in a real browser.
    let out = browser(&["routes".to_string(), format!("http://{admin}/")]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, _) = es.terminate();
    assert!(status.success());
}
