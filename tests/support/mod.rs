//! Shared helpers of the integration tests: a real tansu broker and a real eventscope process, both on
//! 127.0.0.1 with fresh ports, stopped when dropped; scraping and parsing `/metrics`; producing and
//! committing with librdkafka (rdkafka).
#![allow(dead_code)]

pub mod brokers;
pub mod grafana;
pub mod otlp;
pub mod prom;
pub mod saga;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// A benchmark's setting from the environment variable `name`, or `default` when unset or unparsable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A free port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Where each external tool of the tests comes from: `bash .ci/install-test-deps` installs them all.
const TOOLS: &[(&str, &str)] = &[
    ("promtool", "Debian's prometheus package"),
    ("prometheus", "Debian's prometheus package"),
    ("prometheus-alertmanager", "Debian's prometheus-alertmanager package"),
    ("amtool", "Debian's prometheus-alertmanager package"),
    ("kcat", "Debian's kcat package"),
    ("stunnel4", "Debian's stunnel4 package"),
    ("openssl", "Debian's openssl package"),
    ("curl", "Debian's curl package"),
    ("hey", "Debian's hey package"),
    ("wrk", "Debian's wrk package"),
    ("nginx", "Debian's nginx package"),
    (
        "python3",
        "the machine's Python (with confluent-kafka, kubernetes-validate and jsonschema from PyPI)",
    ),
    ("tansu", "crates.io: cargo install --locked tansu@0.6.0 --features dynostore"),
    ("nats-server", "Debian's nats-server package"),
    ("moto_server", "PyPI: moto[server]"),
];

/// A command for an external tool of the tests; if the tool is missing, the test fails saying which
/// tool, where it comes from, and how to install it, rather than with a bare "No such file" panic.
pub fn tool(name: &str) -> Command {
    let path = if name == "tansu" { tansu_bin() } else { PathBuf::from(name) };
    let found = path.is_absolute() && path.exists()
        || std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(&path).is_file()));
    if !found {
        let from = TOOLS.iter().find(|(t, _)| *t == name).map_or("", |(_, from)| *from);
        panic!("the tests need `{name}` ({from}), which is not installed: run `bash .ci/install-test-deps` (CI's .ci/run does)");
    }
    Command::new(path)
}

/// The one JSON line a Python client of `tests/clients` printed, once it is checked to have succeeded
/// (`needs`: the PyPI package it uses, named in the failure).
pub fn client_json(out: std::process::Output, needs: &str) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{needs} (pip install {needs}; .ci/run installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = out
        .stdout
        .split(|b| *b == b'\n')
        .find(|l| l.starts_with(b"{"))
        .expect("a JSON line");
    serde_json::from_slice(line).expect("JSON")
}

fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cargo_bin = PathBuf::from(home).join(".cargo/bin/tansu");
    if cargo_bin.exists() {
        cargo_bin
    } else {
        PathBuf::from("tansu")
    }
}

/// A tansu broker (Apache-Kafka-compatible, in-memory storage) on a fresh port.
pub struct Tansu {
    pub port: u16,
    child: Child,
}

impl Tansu {
    pub fn start() -> Tansu {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Tansu {
        Self::start_with(port, port, false)
    }

    /// A broker on `port` that tells clients to use `advertised` (e.g. a TLS terminator in front of it),
    /// requiring SASL when `authentication` is set.
    pub fn start_with(port: u16, advertised: u16, authentication: bool) -> Tansu {
        let mut args = vec![
            "broker".to_string(),
            "--storage-engine=memory://tansu/".to_string(),
            format!("--listener-url=tcp://127.0.0.1:{port}"),
            format!("--advertised-listener-url=tcp://127.0.0.1:{advertised}"),
        ];
        if authentication {
            args.push("--authentication".into());
        }
        let child = tool("tansu")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu is installed (cargo install --locked tansu@0.6.0 --features dynostore; .ci/run does it)");
        wait_for(Duration::from_secs(20), "tansu to listen", || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Tansu { port, child }
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn create_topic(&self, name: &str, partitions: i32) {
        let out = Command::new(tansu_bin())
            .args([
                "topic",
                "create",
                name,
                "--partitions",
                &partitions.to_string(),
                "--broker",
                &format!("tcp://127.0.0.1:{}", self.port),
            ])
            .output()
            .expect("tansu topic create");
        assert!(
            out.status.success(),
            "tansu topic create {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Kills the broker (SIGKILL: a crash, not a clean stop).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An eventscope process running a role, with its admin address.
pub struct Eventscope {
    pub admin: String,
    child: Child,
    pub config: tempfile::NamedTempFile,
}

impl Eventscope {
    /// Starts `eventscope collector` with `[admin] listen` set to a fresh port and the given TOML appended.
    pub fn collector(toml: &str) -> Eventscope {
        Self::collector_env(toml, &[])
    }

    /// The same, with environment variables (`AWS_*` for the SQS source).
    pub fn collector_env(toml: &str, env: &[(&str, &str)]) -> Eventscope {
        let admin = format!("127.0.0.1:{}", free_port());
        let mut config = tempfile::NamedTempFile::new().unwrap();
        write!(config, "[admin]\nlisten = \"{admin}\"\nshutdown_grace = \"2s\"\n{toml}").unwrap();
        let path = config.path().to_str().unwrap().to_string();
        Self::spawn_env(&["collector", "--config", &path], admin, config, env)
    }

    /// Runs the binary with `args` and waits until its admin server answers /healthz.
    fn spawn_env(args: &[&str], admin: String, config: tempfile::NamedTempFile, env: &[(&str, &str)]) -> Eventscope {
        // `BENCH_EVENTSCOPE_BIN`: another build under test (benchmarks: the container image's, built
        // `--no-default-features` as the Dockerfile does).
        let bin = std::env::var("BENCH_EVENTSCOPE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_eventscope").to_string());
        let child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", std::env::var("ES_LOG").unwrap_or_else(|_| "warn".into()))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let es = Eventscope { admin, child, config };
        wait_for(Duration::from_secs(20), "eventscope /healthz", || {
            http_get(&es.admin, "/healthz").filter(|(s, _)| *s == 200)
        });
        es
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU seconds of the process, from /proc (clock ticks of 1/100 s).
    pub fn cpu_seconds(&self) -> f64 {
        let (user, system) = self.cpu_split();
        user + system
    }

    /// User and system (kernel: system calls, the TCP stack, wake-ups) CPU seconds of the process.
    pub fn cpu_split(&self) -> (f64, f64) {
        cpu_split(self.child.id())
    }

    /// Context switches of all the process's threads so far (voluntary and not, /proc/PID/task/*/status):
    /// each time a thread sleeps and is woken, the cost a proxy pays per request at low rates.
    pub fn context_switches(&self) -> f64 {
        context_switches(self.child.id())
    }

    /// The process's resident memory now (VmRSS), in bytes.
    pub fn rss(&self) -> f64 {
        proc_status_bytes(&self.child.id().to_string(), "VmRSS:").unwrap_or(0.0)
    }

    /// The process's peak resident memory so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> f64 {
        proc_status_bytes(&self.child.id().to_string(), "VmHWM:").unwrap_or(0.0)
    }

    pub fn scrape(&self) -> Metrics {
        let (status, body) = http_get(&self.admin, "/metrics").expect("scrape");
        assert_eq!(status, 200);
        Metrics::parse(&body)
    }

    pub fn raw_metrics(&self) -> String {
        http_get(&self.admin, "/metrics").expect("scrape").1
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&self.admin, path)
    }

    /// Scrapes until `f` is satisfied.
    pub fn wait_metrics<T>(&self, what: &str, mut f: impl FnMut(&Metrics) -> Option<T>) -> T {
        wait_for(Duration::from_secs(30), what, || f(&self.scrape()))
    }

    /// Sends SIGTERM and returns the exit status and how long the process took to stop.
    pub fn terminate(mut self) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        unsafe_free_sigterm(self.child.id());
        let status = self.child.wait().unwrap();
        (status, started.elapsed())
    }
}

impl Eventscope {
    /// Starts `eventscope sidecar` in front of `upstream`, with a fresh Kafka port and admin port, and no
    /// span export.
    pub fn sidecar(upstream: &str) -> (Eventscope, u16) {
        Self::sidecar_env(upstream, &[("OTEL_TRACES_EXPORTER", "none")])
    }

    /// The same, with environment variables (`OTEL_*`, `EVENTSCOPE_*`).
    pub fn sidecar_env(upstream: &str, env: &[(&str, &str)]) -> (Eventscope, u16) {
        let admin = format!("127.0.0.1:{}", free_port());
        // Broker listeners take the ports after the Kafka port: leave room.
        let kafka_port = loop {
            let p = free_port();
            if (1..=8).all(|i| TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
                break p;
            }
        };
        let listen = format!("127.0.0.1:{kafka_port}");
        let args = [
            "sidecar",
            "--kafka-bootstrap",
            upstream,
            "--kafka-listen",
            &listen,
            "--admin-listen",
            &admin,
        ];
        let es = Self::spawn_env(&args, admin.clone(), tempfile::NamedTempFile::new().unwrap(), env);
        wait_for(Duration::from_secs(20), "sidecar kafka listener", || {
            TcpStream::connect(("127.0.0.1", kafka_port)).ok()
        });
        (es, kafka_port)
    }
}

impl Eventscope {
    /// Starts `eventscope sidecar` as an HTTP proxy only (no Kafka) in front of `app` (`host:port`), with
    /// fresh HTTP and admin ports and extra arguments and environment; returns it and the HTTP address.
    pub fn http_sidecar(app: &str, args: &[&str], env: &[(&str, &str)]) -> (Eventscope, String) {
        let admin = format!("127.0.0.1:{}", free_port());
        let listen = format!("127.0.0.1:{}", free_port());
        let mut all = vec![
            "sidecar",
            "--http-upstream",
            app,
            "--http-listen",
            &listen,
            "--admin-listen",
            &admin,
        ];
        all.extend_from_slice(args);
        let es = Self::spawn_env(&all, admin.clone(), tempfile::NamedTempFile::new().unwrap(), env);
        wait_for(Duration::from_secs(20), "sidecar http listener", || {
            TcpStream::connect(&listen).ok()
        });
        (es, listen)
    }
}

/// A real HTTP application for the HTTP proxy tests: Python's threading HTTP server running
/// `tests/clients/http_upstream.py` on a fresh port; killed when dropped.
pub struct HttpApp {
    pub addr: String,
    child: Child,
}

impl HttpApp {
    pub fn start() -> HttpApp {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> HttpApp {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/http_upstream.py");
        let child = tool("python3")
            .arg(script)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let addr = format!("127.0.0.1:{port}");
        wait_for(Duration::from_secs(20), "http app", || TcpStream::connect(&addr).ok());
        HttpApp { addr, child }
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HttpApp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends raw bytes and returns what the server answered before closing (or within `wait`).
pub fn raw(addr: &str, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

/// Runs curl with `args` (HTTP/1.1 unless told otherwise); returns (status, body, HTTP version).
pub fn curl(args: &[&str]) -> (u16, String, String) {
    let out = tool("curl")
        .args(["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code} %{http_version}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut tail = tail.split_whitespace();
    let status = tail.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let version = tail.next().unwrap_or("").to_string();
    (status, body.to_string(), version)
}

/// Debian's nginx in the foreground with one worker, as an application or a reverse proxy in tests and
/// benchmarks; stopped when dropped.
pub struct Nginx {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// nginx in the foreground with one worker and the given `server` blocks, logs off.
    pub fn start(servers: &str, port: u16) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().display();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\nmaster_process on;\nuser root;\npid {p}/nginx.pid;\nerror_log {p}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n  fastcgi_temp_path {p}/fcgi;\n  \
             uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n  keepalive_requests 1000000;\n{servers}\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|b| std::path::Path::new(b).exists())
            .unwrap_or("nginx");
        let child = Command::new(bin)
            .args(["-p", &p.to_string(), "-c", &format!("{p}/nginx.conf")])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx (Debian package nginx)");
        wait_for(Duration::from_secs(10), "nginx", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Nginx { child, _dir: dir }
    }

    /// Resident memory of the master and its workers, in bytes.
    pub fn rss(&self) -> f64 {
        let mut pids = vec![self.child.id().to_string()];
        if let Ok(out) = Command::new("pgrep").args(["-P", &self.child.id().to_string()]).output() {
            pids.extend(String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from));
        }
        pids.iter().filter_map(|pid| proc_status_bytes(pid, "VmRSS:")).sum()
    }
}

/// User and system CPU seconds of process `pid` so far, from /proc (clock ticks of 1/100 s).
pub fn cpu_split(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    (f.get(11).copied().unwrap_or(0.0) / 100.0, f.get(12).copied().unwrap_or(0.0) / 100.0)
}

/// Context switches of all of process `pid`'s threads so far (voluntary and not).
pub fn context_switches(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// A memory field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`; given there in kB), in bytes.
fn proc_status_bytes(pid: &str, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status.lines().find_map(|l| l.strip_prefix(field))?.split_whitespace().next()?;
    kb.parse::<f64>().ok().map(|kb| kb * 1024.0)
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-QUIT", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

/// SIGTERM through the `kill` command (no `unsafe` libc call needed in tests).
fn unsafe_free_sigterm(pid: u32) {
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
}

impl Drop for Eventscope {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET with basic authentication (`user:password`); `None` if the server is unreachable.
pub fn http_get_auth(addr: &str, path: &str, user_password: &str) -> Option<(u16, String)> {
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(user_password);
    let r = ureq::get(&format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(10))
        .set("Authorization", &format!("Basic {token}"))
        .call();
    match r {
        Ok(resp) => Some((resp.status(), resp.into_string().ok()?)),
        Err(ureq::Error::Status(code, resp)) => Some((code, resp.into_string().unwrap_or_default())),
        Err(_) => None,
    }
}

/// A minimal HTTP/1.0 GET; `None` if the server is unreachable.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// Parsed samples of a scrape: `name{labels}` → value.
#[derive(Debug, Default)]
pub struct Metrics {
    pub samples: Vec<(String, HashMap<String, String>, f64)>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n.to_string(), parse_labels(rest.trim_end_matches('}'))),
                None => (series.to_string(), HashMap::new()),
            };
            samples.push((name, labels, value));
        }
        Metrics { samples }
    }

    /// The value of the one sample with this name whose labels include all of `want`.
    pub fn get(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| n == name && want.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, _, v)| *v)
            .collect();
        assert!(found.len() <= 1, "{name} {want:?} matches {} samples", found.len());
        found.first().copied()
    }

    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|(n, _, _)| n == name)
    }

    /// Asserts that every metric of a contract list is present (a histogram by its `_count`).
    pub fn assert_exports(&self, names: &[&str], who: &str) {
        for name in names {
            let name = if eventscope::telemetry::contract::HISTOGRAMS.contains(name) {
                format!("{name}_count")
            } else {
                name.to_string()
            };
            assert!(self.has(&name), "{name} is not exported by {who}");
        }
    }

    pub fn count(&self, name: &str, want: &[(&str, &str)]) -> usize {
        self.samples
            .iter()
            .filter(|(n, l, _)| n == name && want.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .count()
    }

    /// The label value of the `status` whose sample is 1.
    pub fn status(&self, cluster: &str, group: &str, topic: &str) -> Option<String> {
        self.samples
            .iter()
            .find(|(n, l, v)| {
                n == "kafka_consumergroup_status"
                    && *v == 1.0
                    && l.get("cluster").map(String::as_str) == Some(cluster)
                    && l.get("consumergroup").map(String::as_str) == Some(group)
                    && l.get("topic").map(String::as_str) == Some(topic)
            })
            .map(|(_, l, _)| l["status"].clone())
    }
}

fn parse_labels(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s;
    while let Some((k, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(k.trim_start_matches(',').to_string(), value);
        rest = &after[end..];
    }
    out
}

/// A librdkafka configuration with extra client properties (security settings).
pub fn client_config(bootstrap: &str, props: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    for (k, v) in props {
        c.set(*k, *v);
    }
    c
}

/// Creates a topic through the Kafka protocol (CreateTopics) with librdkafka's admin client.
pub fn create_topic_with(bootstrap: &str, props: &[(&str, &str)], name: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap, props).create().unwrap();
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let r =
        futures::executor::block_on(admin.create_topics(&[topic], &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))))
            .expect("CreateTopics");
    assert!(r[0].is_ok(), "create topic {name}: {:?}", r[0]);
}

pub fn producer_with(bootstrap: &str, props: &[(&str, &str)]) -> BaseProducer {
    let mut c = client_config(bootstrap, props);
    c.set("batch.num.messages", "1").set("linger.ms", "0").set("acks", "all");
    c.create().unwrap()
}

pub fn committer_with(bootstrap: &str, group: &str, props: &[(&str, &str)]) -> BaseConsumer {
    let mut c = client_config(bootstrap, props);
    c.set("group.id", group).set("enable.auto.commit", "false");
    c.create().unwrap()
}

/// stunnel (Debian's stunnel4) terminating TLS on `accept` and forwarding to `connect` in plaintext;
/// with `client_ca`, it requires client certificates signed by that CA (mutual TLS).
pub struct Stunnel {
    child: Child,
    _config: tempfile::NamedTempFile,
}

impl Stunnel {
    pub fn start(accept: u16, connect: u16, certs: &Certs, require_client_cert: bool) -> Stunnel {
        let mut config = tempfile::NamedTempFile::new().unwrap();
        let mut text = format!(
            "foreground = yes\npid =\nsyslog = no\ndebug = 3\n[kafka]\naccept = 127.0.0.1:{accept}\nconnect = 127.0.0.1:{connect}\ncert = {}\nkey = {}\n",
            certs.server_cert.display(),
            certs.server_key.display()
        );
        if require_client_cert {
            text.push_str(&format!("verifyChain = yes\nCAfile = {}\n", certs.ca.display()));
        }
        config.write_all(text.as_bytes()).unwrap();
        let child = tool("stunnel4")
            .arg(config.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("stunnel4 is installed (Debian package stunnel4; .ci/run installs it)");
        wait_for(Duration::from_secs(10), "stunnel to listen", || {
            TcpStream::connect(("127.0.0.1", accept)).ok()
        });
        Stunnel { child, _config: config }
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test CA, a server certificate for 127.0.0.1/localhost and a client certificate, made with openssl.
pub struct Certs {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed nothing here: trusting only it must fail.
    pub other_ca: PathBuf,
}

impl Certs {
    pub fn generate() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let run = |args: &[&str]| {
            let out = tool("openssl").args(args).current_dir(d).output().expect("openssl is installed");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        for ca in ["ca", "other-ca"] {
            run(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-subj",
                &format!("/CN=eventscope test {ca}"),
                "-days",
                "2",
            ]);
        }
        std::fs::write(d.join("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
        std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for who in ["server", "client"] {
            run(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{who}.key"),
                "-out",
                &format!("{who}.csr"),
                "-subj",
                &format!("/CN={who}"),
            ]);
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{who}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{who}.ext"),
            ]);
        }
        Certs {
            ca: d.join("ca.pem"),
            server_cert: d.join("server.pem"),
            server_key: d.join("server.key"),
            client_cert: d.join("client.pem"),
            client_key: d.join("client.key"),
            other_ca: d.join("other-ca.pem"),
            dir,
        }
    }
}

/// A collector config for one cluster with extra Kafka client properties.
pub fn collector_toml_with(bootstrap: &str, props: &[(&str, &str)]) -> String {
    let mut kafka = format!("\"bootstrap.servers\" = \"{bootstrap}\"");
    for (k, v) in props {
        kafka.push_str(&format!(", \"{k}\" = \"{v}\""));
    }
    format!("[collector]\npoll_interval = \"500ms\"\nrequest_timeout = \"2s\"\n[[clusters]]\nname = \"test\"\nkafka = {{ {kafka} }}\n")
}

/// A producer that sends one record per request (tansu's ListOffsets answers the start of the last batch
/// + 1 for multi-record batches; see docs and the issue note).
pub fn producer(bootstrap: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("batch.num.messages", "1")
        .set("linger.ms", "0")
        .set("acks", "all")
        .create()
        .unwrap()
}

/// Produces records to a partition with the given CreateTime timestamps; waits for every ack.
pub fn produce(p: &BaseProducer, topic: &str, partition: i32, timestamps: &[i64]) {
    for (i, ts) in timestamps.iter().enumerate() {
        let payload = format!("record-{i}");
        loop {
            match p.send(BaseRecord::<(), _>::to(topic).partition(partition).payload(&payload).timestamp(*ts)) {
                Ok(()) => break,
                Err((_, _)) => {
                    p.poll(Duration::from_millis(10));
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    assert_eq!(p.flush(Duration::from_secs(30)).map(|_| 0), Ok(0), "every record acknowledged");
}

/// A consumer in `group` that has not joined (no subscription): commits make the group exist with no members.
pub fn committer(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

pub fn commit(c: &BaseConsumer, topic: &str, offsets: &[(i32, i64)]) {
    let mut tpl = TopicPartitionList::new();
    for (p, o) in offsets {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o)).unwrap();
    }
    c.commit(&tpl, CommitMode::Sync).unwrap();
}

/// High watermark of a partition as librdkafka sees it.
pub fn high_watermark(c: &BaseConsumer, topic: &str, partition: i32) -> i64 {
    c.fetch_watermarks(topic, partition, Duration::from_secs(10)).unwrap().1
}

/// A collector config for one cluster on `bootstrap`, polling fast for tests.
pub fn collector_toml(bootstrap: &str, extra_collector: &str) -> String {
    format!(
        "[collector]\npoll_interval = \"500ms\"\nrequest_timeout = \"2s\"\n{extra_collector}\n[[clusters]]\nname = \"test\"\nkafka = {{ \"bootstrap.servers\" = \"{bootstrap}\" }}\n"
    )
}

/// 1,000 different 1 KiB payloads, half random bytes, half repeated text, so that lz4 has something to
/// do without turning each record into a few bytes (the Kafka benchmarks' records).
pub fn payloads() -> Vec<Vec<u8>> {
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

/// One Kafka frame's body (what follows its length prefix) read from `s`.
pub fn read_frame(s: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut body = vec![0u8; i32::from_be_bytes(len).max(0) as usize];
    s.read_exact(&mut body)?;
    Ok(body)
}

/// One uncompressed record batch (magic 2) of `records`, as a producer encodes it.
pub fn encode_batch(records: &[kafka_protocol::records::Record]) -> bytes::Bytes {
    use kafka_protocol::records::{Compression, RecordBatchEncoder, RecordEncodeOptions};
    let mut buf = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    buf.freeze()
}

/// A request frame (length prefix, header with `client.id`, body) of API `key` at `version`.
pub fn request_frame(
    key: kafka_protocol::messages::ApiKey,
    version: i16,
    correlation: i32,
    client: &'static str,
    body: &impl kafka_protocol::protocol::Encodable,
) -> Vec<u8> {
    use bytes::BufMut;
    use kafka_protocol::protocol::{Encodable, StrBytes};
    let mut f = bytes::BytesMut::new();
    f.put_i32(0);
    kafka_protocol::messages::RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_static_str(client)))
        .encode(&mut f, key.request_header_version(version))
        .unwrap();
    body.encode(&mut f, version).unwrap();
    let n = f.len() as i32 - 4;
    f[..4].copy_from_slice(&n.to_be_bytes());
    f.to_vec()
}

/// A consumer's Fetch request frame for partition 0 of `topic` from `offset` (up to 1 MiB), held by the
/// broker up to `max_wait_ms` when it finds nothing.
pub fn fetch_frame(version: i16, correlation: i32, client: &'static str, topic: &'static str, offset: i64, max_wait_ms: i32) -> Vec<u8> {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str(topic)))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])]);
    request_frame(ApiKey::Fetch, version, correlation, client, &request)
}
