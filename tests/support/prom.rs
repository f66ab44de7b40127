//! Debian's real Prometheus and Alertmanager on 127.0.0.1 for end-to-end tests, each in a temporary
//! directory and stopped when dropped, and a webhook receiver that keeps what Alertmanager posts.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{free_port, http_get, wait_for};

/// A running server process; killed when dropped.
pub struct Server {
    pub addr: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ready(addr: &str, what: &str) {
    wait_for(Duration::from_secs(30), what, || {
        http_get(addr, "/-/ready").filter(|(s, _)| *s == 200)
    });
}

/// Prometheus with `config` (YAML, may name `rules.yml`) and the given rule files written beside it.
pub fn prometheus(config: &str, rules: &[(&str, String)]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in rules {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(&cfg, config).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let child = super::tool("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus is installed (Debian package prometheus)");
    ready(&addr, "prometheus ready");
    Server { addr, child, _dir: dir }
}

/// Alertmanager with `config` (YAML), gossip off.
pub fn alertmanager(config: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("alertmanager.yml");
    std::fs::write(&cfg, config).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let child = super::tool("prometheus-alertmanager")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.path={}", dir.path().display()))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("alertmanager is installed (Debian package prometheus-alertmanager)");
    ready(&addr, "alertmanager ready");
    Server { addr, child, _dir: dir }
}

/// Runs an instant PromQL query; returns the result vector as (labels, value).
pub fn query(prometheus: &str, promql: &str) -> Vec<(serde_json::Map<String, serde_json::Value>, f64)> {
    let url = format!("http://{prometheus}/api/v1/query");
    let text = ureq::get(&url)
        .query("query", promql)
        .call()
        .unwrap_or_else(|e| panic!("{promql}: {e}"))
        .into_string()
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["status"], "success", "{promql}: {body}");
    match body["data"]["resultType"].as_str() {
        Some("vector") => body["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let v = r["value"][1].as_str().unwrap().parse::<f64>().unwrap_or(f64::NAN);
                (r["metric"].as_object().unwrap().clone(), v)
            })
            .collect(),
        Some("scalar") => {
            let v = body["data"]["result"][1].as_str().unwrap().parse::<f64>().unwrap_or(f64::NAN);
            vec![(Default::default(), v)]
        }
        other => panic!("{promql}: result type {other:?}"),
    }
}

/// A webhook receiver: every JSON body POSTed to it, in order.
pub struct Webhook {
    pub url: String,
    pub received: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Webhook {
    pub fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let received: Arc<Mutex<Vec<serde_json::Value>>> = Default::default();
        let store = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let store = store.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    loop {
                        // One request per loop (Alertmanager keeps connections alive).
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut length = 0usize;
                        loop {
                            let mut h = String::new();
                            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                                return;
                            }
                            let h = h.trim_end();
                            if h.is_empty() {
                                break;
                            }
                            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                                length = v.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0u8; length.min(1 << 20)];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        if let Ok(v) = serde_json::from_slice(&body) {
                            store.lock().unwrap().push(v);
                        }
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
                    }
                });
            }
        });
        Webhook { url, received }
    }

    /// Waits until a notification satisfies `f`; returns it.
    pub fn wait_for(&self, timeout: Duration, what: &str, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        wait_for(timeout, what, || self.received.lock().unwrap().iter().find(|n| f(n)).cloned())
    }
}
