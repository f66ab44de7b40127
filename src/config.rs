//! Configuration: one TOML file, overridable key by key with `EVENTSCOPE_...` environment variables.
//!
//! Loading happens in three steps, so that a user sees every problem at once:
//! 1. the TOML text is parsed into a value tree and environment overrides are applied to it
//!    (`EVENTSCOPE_COLLECTOR__POLL_INTERVAL=10s`: `__` separates levels, array elements are addressed by
//!    index, and under a `kafka` table `_` becomes `.` so `..._KAFKA__BOOTSTRAP_SERVERS` sets
//!    `bootstrap.servers`);
//! 2. the tree is deserialized with `deny_unknown_fields`; each failure is recorded with its key path, the
//!    offending key is removed and deserialization is retried, so one typo does not hide the next;
//! 3. [`Config::validate`] checks meaning (regexes, addresses, Kafka client properties) and reports all.
//!
//! Any problem makes the process exit with code 64 (`EX_USAGE`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Exit code for bad configuration (`EX_USAGE` from sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

/// Prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "EVENTSCOPE_";

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub collector: CollectorConfig,
    /// The Kafka clusters to watch (collector role); at least one for that role.
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
    /// The sidecar role: a Kafka protocol proxy beside the application.
    #[serde(default)]
    pub sidecar: Option<SidecarConfig>,
}

/// Which role a configuration is for: each has its required keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Collector,
    Sidecar,
}

/// The sidecar role.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarConfig {
    /// The real cluster's bootstrap servers, `host:port[,host:port...]`.
    #[serde(default)]
    pub kafka_bootstrap: String,
    /// Where the application connects (its `bootstrap.servers`). Brokers get the following ports.
    #[serde(default = "default_kafka_listen")]
    pub kafka_listen: String,
    /// Host given to clients for the broker listeners (default: the listen address; 127.0.0.1 for 0.0.0.0).
    #[serde(default)]
    pub kafka_advertised_host: String,
    /// Largest Kafka frame relayed in either direction, in bytes.
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: usize,
    /// Client connections at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Deadline for dialling a broker.
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// TLS towards the brokers, with Kafka client property names (`security.protocol = "SSL"`, `ssl.*`).
    /// SASL is the application's own and passes through the proxy unchanged.
    #[serde(default, deserialize_with = "scalar_map")]
    pub kafka: BTreeMap<String, String>,
    /// Trace context in records: `inject` (set `traceparent` to the sidecar's `send` span), `observe`
    /// (spans only for records that carry one; records never change) or `off`.
    #[serde(default)]
    pub trace_mode: crate::telemetry::traces::TraceMode,
    /// The `cluster` label of the lag and consistency series the sidecar measures: the collector's
    /// `[[clusters]] name` for the same cluster, so one dashboard shows both.
    #[serde(default = "default_sidecar_cluster")]
    pub cluster: String,
    /// A produced batch that would grow past this many bytes with trace headers is relayed unchanged:
    /// the brokers' `message.max.bytes` (default 1048588) would refuse it.
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: usize,
    /// The HTTP reverse proxy in front of the application (on when `http.upstream` is set).
    #[serde(default)]
    pub http: HttpConfig,
    /// Runtime threads that relay traffic (as Linkerd's proxy, one by default, a current-thread runtime: a sidecar gets a small CPU
    /// share, and one thread saves the cross-thread wake-ups that cost more than they bring at pod
    /// rates). Measuring (the observer) has a thread of its own besides.
    #[serde(default = "default_worker_threads")]
    pub worker_threads: usize,
}

fn default_worker_threads() -> usize {
    1
}

/// The sidecar's HTTP side: a reverse proxy from the pod's port to the application, measuring the seed's
/// SLIs and carrying W3C trace context.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Where clients connect (the pod's port): HTTP/1.1 and HTTP/2 (h2c) on the same port.
    #[serde(default = "default_http_listen")]
    pub listen: String,
    /// The application, `host:port` (usually `127.0.0.1:8080`). Empty: no HTTP proxy.
    #[serde(default)]
    pub upstream: String,
    /// The `service` label of the SLI series (default: `OTEL_SERVICE_NAME`, else `unknown_service`).
    #[serde(default)]
    pub service: String,
    /// Route templates for the `route` label, e.g. `/orders/{id}`; other paths get a bounded fallback.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Distinct fallback routes before the rest share `route="_other"`.
    #[serde(default = "default_max_routes")]
    pub max_routes: usize,
    /// Deadline for connecting to the application (then 502).
    #[serde(default = "default_http_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// Deadline for the application's response headers (then 504).
    #[serde(default = "default_http_response_timeout", with = "duration")]
    pub response_timeout: Duration,
    /// A client must send its request headers within this time (slow clients are closed).
    #[serde(default = "default_http_header_read_timeout", with = "duration")]
    pub header_read_timeout: Duration,
    /// Idle pooled connections to the application are closed after this long.
    #[serde(default = "default_http_idle_timeout", with = "duration")]
    pub idle_timeout: Duration,
    /// Largest request head (HTTP/1.1) or header list (HTTP/2) accepted; larger ones get 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Client connections at once.
    #[serde(default = "default_http_max_connections")]
    pub max_connections: usize,
    /// The outbound proxy for the application's own calls (set `HTTP_PROXY=http://<this>` in the
    /// application); empty: off.
    #[serde(default)]
    pub outbound_listen: String,
    /// The protocol to the application: `http1`, `http2` (cleartext, prior knowledge: gRPC services) or
    /// `downstream` (the client's: HTTP/2 requests over HTTP/2, others over HTTP/1.1), as Envoy's
    /// `USE_DOWNSTREAM_PROTOCOL`.
    #[serde(default)]
    pub upstream_protocol: UpstreamProtocol,
}

/// The protocol the HTTP proxy speaks to the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    Http2,
    Downstream,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_http_listen(),
            upstream: String::new(),
            service: String::new(),
            routes: Vec::new(),
            max_routes: default_max_routes(),
            connect_timeout: default_http_connect_timeout(),
            response_timeout: default_http_response_timeout(),
            header_read_timeout: default_http_header_read_timeout(),
            idle_timeout: default_http_idle_timeout(),
            max_header_bytes: default_max_header_bytes(),
            max_connections: default_http_max_connections(),
            outbound_listen: String::new(),
            upstream_protocol: UpstreamProtocol::default(),
        }
    }
}

impl HttpConfig {
    /// Whether the HTTP proxy runs.
    pub fn enabled(&self) -> bool {
        !self.upstream.is_empty()
    }
}

fn default_http_listen() -> String {
    "0.0.0.0:15001".to_string()
}
fn default_max_routes() -> usize {
    200
}
fn default_http_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_http_response_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_http_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_http_idle_timeout() -> Duration {
    Duration::from_secs(90)
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_http_max_connections() -> usize {
    10_000
}

fn default_max_batch_bytes() -> usize {
    1_048_588
}

fn default_sidecar_cluster() -> String {
    "default".to_string()
}

fn default_kafka_listen() -> String {
    "127.0.0.1:19092".to_string()
}
fn default_max_frame_bytes() -> usize {
    100 * 1024 * 1024
}
fn default_max_connections() -> usize {
    1024
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The admin HTTP server: `/metrics`, `/healthz`, `/readyz`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// How long in-flight work may take to finish after SIGTERM/SIGINT.
    #[serde(default = "default_shutdown_grace", with = "duration")]
    pub shutdown_grace: Duration,
}

fn default_admin_listen() -> String {
    "0.0.0.0:9464".to_string()
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10)
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            shutdown_grace: default_shutdown_grace(),
        }
    }
}

/// Logging. `RUST_LOG`, when set, wins over `level`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

fn default_log_level() -> String {
    "info".to_string()
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            format: LogFormat::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// How `kafka_consumergroup_lag_seconds` finds the append time of the oldest unconsumed record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LagSecondsMethod {
    /// Read the record at the committed offset (exact); fall back to interpolation where reading is denied.
    #[default]
    Fetch,
    /// Never read records: interpolate from the log-end offsets sampled at every poll.
    Interpolate,
}

/// Settings shared by every cluster's collection loop.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// Time between two collections of a cluster. Scrapes never trigger broker calls.
    #[serde(default = "default_poll_interval", with = "duration")]
    pub poll_interval: Duration,
    /// Deadline for one request to a broker.
    #[serde(default = "default_request_timeout", with = "duration")]
    pub request_timeout: Duration,
    /// Requests in flight at once per cluster (group batches, per-broker offset lists, fetches).
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    #[serde(default)]
    pub lag_seconds_method: LagSecondsMethod,
    /// Number of observations per partition that the status evaluation looks at (Burrow's window).
    #[serde(default = "default_status_window")]
    pub status_window: usize,
    /// Lag at or below this many messages counts as caught up for the status evaluation.
    #[serde(default)]
    pub allowed_lag: u64,
    /// Largest Kafka response accepted from a broker, in bytes.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_concurrency() -> usize {
    16
}
fn default_status_window() -> usize {
    10
}
fn default_max_response_bytes() -> usize {
    100 * 1024 * 1024
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            poll_interval: default_poll_interval(),
            request_timeout: default_request_timeout(),
            max_concurrency: default_max_concurrency(),
            lag_seconds_method: LagSecondsMethod::default(),
            status_window: default_status_window(),
            allowed_lag: 0,
            max_response_bytes: default_max_response_bytes(),
        }
    }
}

/// One Kafka cluster to watch.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Value of the `cluster` label.
    #[serde(default)]
    pub name: String,
    /// Kafka client properties with their usual names (`bootstrap.servers`, `security.protocol`, ...).
    #[serde(default, deserialize_with = "scalar_map")]
    pub kafka: BTreeMap<String, String>,
    /// Watch exactly these groups instead of discovering them with ListGroups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Regexes; a discovered group is watched when it matches one (empty: all).
    #[serde(default)]
    pub group_allow: Vec<String>,
    #[serde(default)]
    pub group_deny: Vec<String>,
    #[serde(default)]
    pub topic_allow: Vec<String>,
    #[serde(default)]
    pub topic_deny: Vec<String>,
    /// Report internal topics (`__consumer_offsets`, `__transaction_state`, `_schemas`...).
    #[serde(default)]
    pub include_internal_topics: bool,
}

impl ClusterConfig {
    pub fn bootstrap_servers(&self) -> Vec<String> {
        self.kafka.get("bootstrap.servers").map(|s| split_servers(s)).unwrap_or_default()
    }

    pub fn client_id(&self) -> String {
        self.kafka.get("client.id").cloned().unwrap_or_else(|| "eventscope".to_string())
    }
}

/// `host:port[,host:port...]` as a list, blanks dropped.
pub fn split_servers(list: &str) -> Vec<String> {
    list.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

/// Kafka client properties the collector understands besides the security ones.
const KAFKA_PROPERTIES: &[&str] = &["bootstrap.servers", "client.id"];

/// One configuration problem: the key it concerns and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// All the problems found in a configuration.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigIssue>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for issue in &self.0 {
            writeln!(f, "  - {issue}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads a file, applies the process environment and validates it for the given roles (none: for the
    /// roles its sections ask for).
    pub fn load_file(path: &std::path::Path, roles: &[Role]) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigIssue {
                key: path.display().to_string(),
                reason: format!("cannot read: {e}"),
            }])
        })?;
        Self::load_str(&text, std::env::vars(), roles)
    }

    /// Parses TOML text, applies the given `EVENTSCOPE_...` variables and validates for `roles`.
    pub fn load_str(text: &str, env: impl IntoIterator<Item = (String, String)>, roles: &[Role]) -> Result<Config, ConfigErrors> {
        let mut issues = Vec::new();
        let mut tree: toml::Value = match text.parse::<toml::Table>() {
            Ok(t) => toml::Value::Table(t),
            Err(e) => {
                let reason = e.message().to_string();
                return Err(ConfigErrors(vec![ConfigIssue {
                    key: "(file)".into(),
                    reason: format!("not valid TOML: {reason}"),
                }]));
            }
        };
        let env: Vec<(String, String)> = env.into_iter().collect();
        apply_env(&mut tree, env.iter().cloned(), &mut issues);
        let config = deserialize_collecting(tree, &mut issues);
        if let Some(config) = &config {
            issues.extend(config.validate());
            let roles: Vec<Role> = if roles.is_empty() { config.roles() } else { roles.to_vec() };
            if roles.is_empty() {
                issues.push(ConfigIssue {
                    key: "(file)".into(),
                    reason: "nothing to run: add [[clusters]] (collector) or [sidecar]".into(),
                });
            }
            if roles.contains(&Role::Sidecar) {
                // The OTLP export settings: standard OTEL_* variables, checked with the rest.
                let otel: std::collections::HashMap<String, String> = env.iter().filter(|(k, _)| k.starts_with("OTEL_")).cloned().collect();
                if let Err(problems) = crate::telemetry::traces::ExportSettings::from_env(&otel) {
                    issues.extend(problems.into_iter().map(|(key, reason)| ConfigIssue { key, reason }));
                }
            }
            for role in roles {
                issues.extend(config.validate_role(role));
            }
        }
        match config {
            Some(c) if issues.is_empty() => Ok(c),
            _ => Err(ConfigErrors(issues)),
        }
    }

    /// Checks the meaning of every key and returns every problem found.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut out = Vec::new();
        let mut push = |key: String, reason: String| out.push(ConfigIssue { key, reason });
        if self.admin.listen.parse::<SocketAddr>().is_err() {
            push(
                "admin.listen".into(),
                format!("{:?} is not an address like 0.0.0.0:9464", self.admin.listen),
            );
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            push(
                "log.level".into(),
                format!("{:?} is not a level or filter (trace, debug, info, warn, error)", self.log.level),
            );
        }
        let c = &self.collector;
        if c.poll_interval < Duration::from_millis(100) {
            push("collector.poll_interval".into(), "must be at least 100ms".into());
        }
        if c.request_timeout < Duration::from_millis(100) {
            push("collector.request_timeout".into(), "must be at least 100ms".into());
        }
        if c.max_concurrency == 0 || c.max_concurrency > 1024 {
            push("collector.max_concurrency".into(), "must be between 1 and 1024".into());
        }
        if c.status_window < 2 || c.status_window > 1000 {
            push("collector.status_window".into(), "must be between 2 and 1000".into());
        }
        if c.max_response_bytes < 1024 * 1024 || c.max_response_bytes > 1024 * 1024 * 1024 {
            push("collector.max_response_bytes".into(), "must be between 1 MiB and 1 GiB".into());
        }
        if let Some(sc) = &self.sidecar {
            if !sc.kafka_bootstrap.is_empty() {
                for server in sc.kafka_bootstrap.split(',').map(str::trim) {
                    if crate::kafka::split_host_port(server).is_none() {
                        push("sidecar.kafka_bootstrap".into(), format!("{server:?} is not host:port"));
                    }
                }
            }
            if sc.kafka_listen.parse::<SocketAddr>().is_err() {
                push(
                    "sidecar.kafka_listen".into(),
                    format!("{:?} is not an address like 127.0.0.1:19092", sc.kafka_listen),
                );
            }
            if sc.max_frame_bytes < 1024 * 1024 || sc.max_frame_bytes > 1024 * 1024 * 1024 {
                push("sidecar.max_frame_bytes".into(), "must be between 1 MiB and 1 GiB".into());
            }
            if sc.max_batch_bytes < 1024 || sc.max_batch_bytes > sc.max_frame_bytes {
                push("sidecar.max_batch_bytes".into(), "must be between 1 KiB and max_frame_bytes".into());
            }
            if sc.max_connections == 0 {
                push("sidecar.max_connections".into(), "must be at least 1".into());
            }
            if sc.worker_threads == 0 || sc.worker_threads > 64 {
                push("sidecar.worker_threads".into(), "must be between 1 and 64".into());
            }
            let h = &sc.http;
            if h.listen.parse::<SocketAddr>().is_err() {
                push(
                    "sidecar.http.listen".into(),
                    format!("{:?} is not an address like 0.0.0.0:15001", h.listen),
                );
            }
            if !h.outbound_listen.is_empty() && h.outbound_listen.parse::<SocketAddr>().is_err() {
                push(
                    "sidecar.http.outbound_listen".into(),
                    format!("{:?} is not an address like 127.0.0.1:15002", h.outbound_listen),
                );
            }
            if !h.outbound_listen.is_empty() && !h.enabled() {
                push(
                    "sidecar.http.outbound_listen".into(),
                    "the outbound proxy runs beside the inbound one: set sidecar.http.upstream too".into(),
                );
            }
            if h.enabled() && crate::kafka::split_host_port(&h.upstream).is_none() {
                push(
                    "sidecar.http.upstream".into(),
                    format!("{:?} is not host:port like 127.0.0.1:8080", h.upstream),
                );
            }
            for (i, r) in h.routes.iter().enumerate() {
                if let Err(why) = crate::telemetry::route::Template::parse(r) {
                    push(format!("sidecar.http.routes[{i}]"), format!("{r:?}: {why}"));
                }
            }
            if h.max_routes == 0 || h.max_routes > 10_000 {
                push("sidecar.http.max_routes".into(), "must be between 1 and 10000".into());
            }
            for (key, d) in [
                ("connect_timeout", h.connect_timeout),
                ("response_timeout", h.response_timeout),
                ("header_read_timeout", h.header_read_timeout),
                ("idle_timeout", h.idle_timeout),
            ] {
                if d.is_zero() {
                    push(format!("sidecar.http.{key}"), "must be more than 0".into());
                }
            }
            if h.max_header_bytes < 8192 || h.max_header_bytes > 1024 * 1024 {
                push("sidecar.http.max_header_bytes".into(), "must be between 8192 and 1 MiB".into());
            }
            if h.max_connections == 0 {
                push("sidecar.http.max_connections".into(), "must be at least 1".into());
            }
            for key in sc.kafka.keys() {
                if key.starts_with("sasl.") {
                    push(
                        format!("sidecar.kafka.\"{key}\""),
                        "SASL is the application's own: it passes through the proxy, so it is not configured here".into(),
                    );
                } else if !crate::kafka::security::SECURITY_PROPERTIES.contains(&key.as_str()) {
                    push(
                        format!("sidecar.kafka.\"{key}\""),
                        "only security.protocol and ssl.* apply to the sidecar's upstream connections".into(),
                    );
                }
            }
            let upstream: BTreeMap<String, String> = sc
                .kafka
                .iter()
                .filter(|(k, _)| !k.starts_with("sasl."))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            match crate::kafka::Security::from_properties(&upstream) {
                Ok(sec) if sec.sasl.is_some() => push(
                    "sidecar.kafka.\"security.protocol\"".into(),
                    "use PLAINTEXT or SSL: SASL passes through from the application".into(),
                ),
                Ok(_) => {}
                Err(problems) => {
                    for (property, reason) in problems {
                        if !property.starts_with("sasl.") {
                            push(format!("sidecar.kafka.\"{property}\""), reason);
                        }
                    }
                }
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, cl) in self.clusters.iter().enumerate() {
            let k = |s: &str| format!("clusters[{i}].{s}");
            if cl.name.is_empty() {
                push(k("name"), "required (it becomes the `cluster` label)".into());
            } else if !names.insert(cl.name.clone()) {
                push(k("name"), format!("{:?} is used by another cluster", cl.name));
            }
            if cl.bootstrap_servers().is_empty() {
                push(k("kafka.\"bootstrap.servers\""), "required: host:port[,host:port...]".into());
            }
            for server in cl.bootstrap_servers() {
                if crate::kafka::split_host_port(&server).is_none() {
                    push(k("kafka.\"bootstrap.servers\""), format!("{server:?} is not host:port"));
                }
            }
            for key in cl.kafka.keys() {
                if !KAFKA_PROPERTIES.contains(&key.as_str()) && !crate::kafka::security::SECURITY_PROPERTIES.contains(&key.as_str()) {
                    let known: Vec<&str> = KAFKA_PROPERTIES
                        .iter()
                        .chain(crate::kafka::security::SECURITY_PROPERTIES)
                        .copied()
                        .collect();
                    push(
                        k(&format!("kafka.\"{key}\"")),
                        format!("unknown or unsupported Kafka client property; supported: {}", known.join(", ")),
                    );
                }
            }
            if let Err(problems) = crate::kafka::Security::from_properties(&cl.kafka) {
                for (property, reason) in problems {
                    push(k(&format!("kafka.\"{property}\"")), reason);
                }
            }
            for (field, list) in [
                ("group_allow", &cl.group_allow),
                ("group_deny", &cl.group_deny),
                ("topic_allow", &cl.topic_allow),
                ("topic_deny", &cl.topic_deny),
            ] {
                for (j, re) in list.iter().enumerate() {
                    if let Err(e) = regex::Regex::new(re) {
                        push(k(&format!("{field}[{j}]")), format!("not a valid regex: {e}"));
                    }
                }
            }
            if !cl.groups.is_empty() && (!cl.group_allow.is_empty() || !cl.group_deny.is_empty()) {
                push(
                    k("groups"),
                    "an explicit groups list cannot be combined with group_allow/group_deny".into(),
                );
            }
        }
        out
    }
}

impl Config {
    /// The roles this configuration's sections ask for.
    pub fn roles(&self) -> Vec<Role> {
        let mut r = Vec::new();
        if !self.clusters.is_empty() {
            r.push(Role::Collector);
        }
        if self.sidecar.is_some() {
            r.push(Role::Sidecar);
        }
        r
    }

    /// What a role requires beyond the general checks.
    pub fn validate_role(&self, role: Role) -> Vec<ConfigIssue> {
        let mut out = Vec::new();
        match role {
            Role::Collector if self.clusters.is_empty() => out.push(ConfigIssue {
                key: "clusters".into(),
                reason: "at least one [[clusters]] entry is required".into(),
            }),
            Role::Sidecar
                if self
                    .sidecar
                    .as_ref()
                    .is_none_or(|s| s.kafka_bootstrap.is_empty() && !s.http.enabled()) =>
            {
                out.push(ConfigIssue {
                    key: "sidecar.kafka_bootstrap".into(),
                    reason: "required: the cluster's bootstrap servers (--kafka-bootstrap, EVENTSCOPE_KAFKA_BOOTSTRAP), \
                             unless the sidecar only proxies HTTP (--http-upstream)"
                        .into(),
                })
            }
            _ => {}
        }
        out
    }
}

/// Deserializes the tree, recording each failure with its path and removing the key that caused it,
/// until it succeeds or no progress is possible.
fn deserialize_collecting(mut tree: toml::Value, issues: &mut Vec<ConfigIssue>) -> Option<Config> {
    for _ in 0..256 {
        match serde_path_to_error::deserialize::<_, Config>(tree.clone()) {
            Ok(config) => return Some(config),
            Err(err) => {
                let path = err.path().to_string();
                // Keep the first line: the path is reported separately.
                let inner = err.into_inner().to_string().lines().next().unwrap_or_default().trim().to_string();
                let (path, reason) = match unknown_field_name(&inner) {
                    // For an unknown field the path names its parent; point at the field itself.
                    Some(field) if !path.ends_with(&field) => (if path == "." { field.clone() } else { format!("{path}.{field}") }, inner),
                    _ => (path, inner),
                };
                issues.push(ConfigIssue { key: path.clone(), reason });
                if !remove_path(&mut tree, &path) {
                    return None;
                }
            }
        }
    }
    None
}

fn unknown_field_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_string())
}

/// Removes the value at a serde_path_to_error path (`a.b[2].c`). Returns false if nothing was removed.
fn remove_path(tree: &mut toml::Value, path: &str) -> bool {
    let segments = parse_path(path);
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut node = tree;
    for seg in parents {
        node = match (seg, node) {
            (Seg::Key(k), toml::Value::Table(t)) => match t.get_mut(k) {
                Some(v) => v,
                None => return false,
            },
            (Seg::Index(i), toml::Value::Array(a)) => match a.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, node) {
        (Seg::Key(k), toml::Value::Table(t)) => t.remove(k).is_some(),
        (Seg::Index(i), toml::Value::Array(a)) if *i < a.len() => {
            // Keep indexes stable for the messages that follow: replace by an empty table.
            a[*i] = toml::Value::Table(Default::default());
            true
        }
        _ => false,
    }
}

enum Seg {
    Key(String),
    Index(usize),
}

fn parse_path(path: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let mut rest = part;
        if let Some(bracket) = rest.find('[') {
            if bracket > 0 {
                out.push(Seg::Key(rest[..bracket].to_string()));
            }
            rest = &rest[bracket..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(end) = stripped.find(']') else { break };
                if let Ok(i) = stripped[..end].parse() {
                    out.push(Seg::Index(i));
                }
                rest = &stripped[end + 1..];
            }
        } else if !rest.is_empty() {
            out.push(Seg::Key(rest.to_string()));
        }
    }
    out
}

/// Applies `EVENTSCOPE_A__B__0__C=value` overrides onto the tree.
fn apply_env(tree: &mut toml::Value, env: impl IntoIterator<Item = (String, String)>, issues: &mut Vec<ConfigIssue>) {
    let mut vars: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
    vars.sort();
    for (name, value) in vars {
        let path: Vec<String> = name[ENV_PREFIX.len()..].split("__").map(|s| s.to_ascii_lowercase()).collect();
        // Variables of the command line (EVENTSCOPE_CONFIG...) have a single segment and no table.
        if path.len() < 2 || path.iter().any(|s| s.is_empty()) {
            continue;
        }
        if let Err(reason) = set_path(tree, &path, &value) {
            issues.push(ConfigIssue { key: name.clone(), reason });
        }
    }
}

fn set_path(tree: &mut toml::Value, path: &[String], raw: &str) -> Result<(), String> {
    let mut node = tree;
    let mut in_kafka = false;
    for (depth, seg) in path.iter().enumerate() {
        let last = depth == path.len() - 1;
        let key = if in_kafka { seg.replace('_', ".") } else { seg.clone() };
        node = match node {
            toml::Value::Table(t) => {
                if last {
                    t.insert(key, env_value(raw));
                    return Ok(());
                }
                in_kafka = key == "kafka";
                t.entry(key.clone()).or_insert_with(|| {
                    if path[depth + 1].parse::<usize>().is_ok() {
                        toml::Value::Array(Vec::new())
                    } else {
                        toml::Value::Table(Default::default())
                    }
                })
            }
            toml::Value::Array(a) => {
                let i: usize = key.parse().map_err(|_| format!("{key:?} is not an array index"))?;
                if i > a.len() {
                    return Err(format!("index {i} skips elements (the array has {})", a.len()));
                }
                if i == a.len() {
                    a.push(toml::Value::Table(Default::default()));
                }
                if last {
                    a[i] = env_value(raw);
                    return Ok(());
                }
                &mut a[i]
            }
            _ => return Err(format!("{key:?} is inside a value that is not a table")),
        };
    }
    Ok(())
}

/// An environment value is read as TOML (numbers, booleans, arrays) when it parses, else as a string.
fn env_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// Kafka properties are strings, but `request.timeout.ms = 5000` is accepted too.
fn scalar_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, toml::Value>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| match v {
            toml::Value::String(s) => Ok((k, s)),
            toml::Value::Integer(i) => Ok((k, i.to_string())),
            toml::Value::Boolean(b) => Ok((k, b.to_string())),
            toml::Value::Float(f) => Ok((k, f.to_string())),
            other => Err(serde::de::Error::custom(format!(
                "property {k:?} must be a string, not {}",
                other.type_str()
            ))),
        })
        .collect()
}

/// Durations as human strings: `"5s"`, `"250ms"`, `"1m 30s"`.
mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("{s:?} is not a duration like \"5s\": {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[collector]
poll_interval = "2s"
[[clusters]]
name = "prod"
kafka = { "bootstrap.servers" = "127.0.0.1:9092" }
"#;

    #[test]
    fn defaults_apply() {
        let c = Config::load_str(GOOD, Vec::new(), &[Role::Collector]).unwrap();
        assert_eq!(c.collector.poll_interval, Duration::from_secs(2));
        assert_eq!(c.collector.request_timeout, Duration::from_secs(10));
        assert_eq!(c.admin.listen, "0.0.0.0:9464");
        assert_eq!(c.clusters[0].bootstrap_servers(), vec!["127.0.0.1:9092"]);
    }

    #[test]
    fn env_overrides_any_key() {
        let env = vec![
            ("EVENTSCOPE_COLLECTOR__POLL_INTERVAL".to_string(), "7s".to_string()),
            (
                "EVENTSCOPE_CLUSTERS__0__KAFKA__BOOTSTRAP_SERVERS".to_string(),
                "10.0.0.1:9092".to_string(),
            ),
            ("EVENTSCOPE_COLLECTOR__ALLOWED_LAG".to_string(), "5".to_string()),
            ("EVENTSCOPE_ADMIN__LISTEN".to_string(), "127.0.0.1:1".to_string()),
            ("EVENTSCOPE_CONFIG".to_string(), "ignored.toml".to_string()),
        ];
        let c = Config::load_str(GOOD, env, &[Role::Collector]).unwrap();
        assert_eq!(c.collector.poll_interval, Duration::from_secs(7));
        assert_eq!(c.collector.allowed_lag, 5);
        assert_eq!(c.admin.listen, "127.0.0.1:1");
        assert_eq!(c.clusters[0].bootstrap_servers(), vec!["10.0.0.1:9092"]);
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let bad = r#"
[admin]
listen = "nowhere"
colour = "blue"
[collector]
poll_interval = "soon"
status_window = 1
[[clusters]]
kafka = { "bootstrap.servers" = "", "sasl.username" = "u", "linger.ms" = 5 }
group_allow = ["("]
"#;
        let errs = Config::load_str(bad, Vec::new(), &[]).unwrap_err().0;
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        for expected in [
            "admin.colour",
            "collector.poll_interval",
            "admin.listen",
            "collector.status_window",
            "clusters[0].name",
            "clusters[0].kafka.\"bootstrap.servers\"",
            "clusters[0].kafka.\"sasl.username\"",
            "clusters[0].kafka.\"linger.ms\"",
            "clusters[0].group_allow[0]",
        ] {
            assert!(keys.contains(&expected), "missing {expected} in {errs:?}");
        }
        assert_eq!(errs.len(), 9, "{errs:?}");
    }

    #[test]
    fn no_clusters_is_an_error() {
        let errs = Config::load_str("", Vec::new(), &[Role::Collector]).unwrap_err().0;
        assert_eq!(errs[0].key, "clusters");
        let errs = Config::load_str("", Vec::new(), &[]).unwrap_err().0;
        assert!(errs[0].reason.contains("nothing to run"));
    }

    #[test]
    fn sidecar_from_environment_alone() {
        let env = vec![("EVENTSCOPE_SIDECAR__KAFKA_BOOTSTRAP".to_string(), "kafka:9092".to_string())];
        let c = Config::load_str("", env, &[Role::Sidecar]).unwrap();
        let sc = c.sidecar.unwrap();
        assert_eq!(
            (sc.kafka_bootstrap.as_str(), sc.kafka_listen.as_str()),
            ("kafka:9092", "127.0.0.1:19092")
        );
        let errs = Config::load_str("[sidecar]\nkafka = { \"sasl.username\" = \"app\" }\n", Vec::new(), &[Role::Sidecar])
            .unwrap_err()
            .0;
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert!(
            keys.contains(&"sidecar.kafka.\"sasl.username\"") && keys.contains(&"sidecar.kafka_bootstrap"),
            "{errs:?}"
        );
    }
}
