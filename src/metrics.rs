//! The metric contract: every name, label and help text the program exports, in one place.
//!
//! Dashboards (`dashboards/`) and alerts (`alerts/`) depend on these names; `tests/artifacts.rs` checks that
//! they use nothing else, and `docs/metrics.md` documents each. Lag metrics keep kafka_exporter's names and
//! labels (`consumergroup`, `topic`, `partition`) plus `cluster`, so existing dashboards keep working.
//!
//! Two kinds of metrics live here:
//! - **collection results** (lag, offsets, status, consistency windows): rebuilt from scratch at the end of
//!   each poll into a [`crate::collector::Snapshot`] and rendered once into cached text. A group or topic
//!   that disappears is simply absent from the next snapshot, so no series leaks; a scrape never calls a
//!   broker and many scrapes cost one render.
//! - **about eventscope itself** (poll duration, errors, last success): a `prometheus` registry.

use std::fmt::Write as _;

use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Namespace of eventscope's own metrics.
pub const NAMESPACE: &str = "eventscope";

// Label names.
pub const L_CLUSTER: &str = "cluster";
pub const L_GROUP: &str = "consumergroup";
pub const L_TOPIC: &str = "topic";
pub const L_PARTITION: &str = "partition";
pub const L_STATUS: &str = "status";
pub const L_KIND: &str = "kind";
/// Which role measured a lag or consistency series: `collector` (polling) or `sidecar` (in the data path).
pub const L_SOURCE: &str = "source";

/// A metric family: name, type and help.
pub struct Family {
    pub name: &'static str,
    pub kind: &'static str,
    pub help: &'static str,
}

macro_rules! family {
    ($id:ident, $name:expr, $kind:expr, $help:expr) => {
        pub const $id: Family = Family {
            name: $name,
            kind: $kind,
            help: $help,
        };
    };
}

family!(
    GROUP_LAG,
    "kafka_consumergroup_lag",
    "gauge",
    "Messages between the partition's log-end offset and the group's committed offset (never negative)."
);
family!(
    GROUP_LAG_SUM,
    "kafka_consumergroup_lag_sum",
    "gauge",
    "kafka_consumergroup_lag summed over the topic's partitions."
);
family!(
    GROUP_LAG_SECONDS,
    "kafka_consumergroup_lag_seconds",
    "gauge",
    "Seconds since the oldest record the group has not consumed was appended (0 when caught up)."
);
family!(
    GROUP_CURRENT_OFFSET,
    "kafka_consumergroup_current_offset",
    "gauge",
    "The group's committed offset for the partition."
);
family!(
    GROUP_CURRENT_OFFSET_SUM,
    "kafka_consumergroup_current_offset_sum",
    "gauge",
    "kafka_consumergroup_current_offset summed over the topic's partitions."
);
family!(
    GROUP_MEMBERS,
    "kafka_consumergroup_members",
    "gauge",
    "Members of the consumer group (absent when the broker cannot describe groups)."
);
family!(
    GROUP_STATUS,
    "kafka_consumergroup_status",
    "gauge",
    "Burrow-style evaluation of the group on the topic: 1 for the current status, 0 for the others."
);
family!(TOPIC_PARTITIONS, "kafka_topic_partitions", "gauge", "Partitions of the topic.");
family!(
    TOPIC_CURRENT_OFFSET,
    "kafka_topic_partition_current_offset",
    "gauge",
    "Log-end offset (high watermark) of the partition."
);
family!(
    TOPIC_OLDEST_OFFSET,
    "kafka_topic_partition_oldest_offset",
    "gauge",
    "Log-start offset of the partition."
);
family!(
    CONSISTENCY_WINDOW,
    "eventscope_consistency_window_seconds",
    "histogram",
    "Time from a record's append until a commit of the group past it was observed: the read model's eventual-consistency window."
);

/// Every family the collection snapshot renders, in render order.
pub const SNAPSHOT_FAMILIES: &[&Family] = &[
    &GROUP_LAG,
    &GROUP_LAG_SUM,
    &GROUP_LAG_SECONDS,
    &GROUP_CURRENT_OFFSET,
    &GROUP_CURRENT_OFFSET_SUM,
    &GROUP_MEMBERS,
    &GROUP_STATUS,
    &TOPIC_PARTITIONS,
    &TOPIC_CURRENT_OFFSET,
    &TOPIC_OLDEST_OFFSET,
    &CONSISTENCY_WINDOW,
];

pub const POLL_DURATION: &str = "eventscope_collector_poll_duration_seconds";
pub const LAST_SUCCESS: &str = "eventscope_collector_last_success_timestamp_seconds";
pub const ERRORS_TOTAL: &str = "eventscope_collector_errors_total";
pub const CLUSTER_UP: &str = "eventscope_collector_up";
pub const BUILD_INFO: &str = "eventscope_build_info";
pub const RENDER_DURATION: &str = "eventscope_metrics_render_duration_seconds";

// The sidecar's Kafka proxy.
pub const PROXY_REQUESTS: &str = "eventscope_kafka_requests_total";
pub const PROXY_REQUEST_DURATION: &str = "eventscope_kafka_request_duration_seconds";
pub const PROXY_BYTES: &str = "eventscope_kafka_bytes_total";
pub const PROXY_CONNECTIONS: &str = "eventscope_kafka_connections";
pub const PROXY_CONNECTIONS_TOTAL: &str = "eventscope_kafka_connections_total";
pub const PROXY_ERRORS: &str = "eventscope_kafka_proxy_errors_total";
pub const PRODUCED_RECORDS: &str = "eventscope_kafka_produced_records_total";
pub const PRODUCED_BYTES: &str = "eventscope_kafka_produced_bytes_total";
pub const PRODUCE_DURATION: &str = "eventscope_kafka_produce_duration_seconds";
pub const PRODUCE_ERRORS: &str = "eventscope_kafka_produce_errors_total";
pub const L_ERROR: &str = "error";
pub const DELIVERY_LATENCY: &str = "eventscope_kafka_delivery_latency_seconds";
pub const DELIVERED_RECORDS: &str = "eventscope_kafka_delivered_records_total";
pub const TRACE_CONTEXT_RECORDS: &str = "eventscope_kafka_trace_context_records_total";
pub const UNTRACKED_RECORDS: &str = "eventscope_kafka_untracked_records_total";
pub const UNOBSERVED_RESPONSES: &str = "eventscope_kafka_unobserved_responses_total";
pub const TRACE_SPANS: &str = "eventscope_trace_spans_total";
pub const L_TIMESTAMP_TYPE: &str = "timestamp_type";
pub const L_CONTEXT: &str = "context";
pub const L_OUTCOME: &str = "outcome";
/// Distinct `topic` values the sidecar reports before it folds the rest into [`OTHER_LABEL`]: an
/// application writes to a handful of topics, and a hostile client cannot grow the series without bound.
pub const MAX_TOPIC_LABELS: usize = 256;
/// The value a [`BoundedLabel`] gives everything past its budget (topics, routes, destinations).
pub const OTHER_LABEL: &str = "_other";

/// A label whose first `max` distinct values are kept and every later one becomes [`OTHER_LABEL`]: the
/// bound on series whose label values come from the network (topics, routes, destinations).
pub struct BoundedLabel {
    max: usize,
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl BoundedLabel {
    pub fn new(max: usize) -> BoundedLabel {
        BoundedLabel {
            max,
            seen: Default::default(),
        }
    }

    /// `value` itself if it is among the first `max` distinct values, else `_other`.
    pub fn label(&self, value: &str) -> String {
        let mut seen = self.seen.lock().expect("label lock");
        if seen.contains(value) || (seen.len() < self.max && seen.insert(value.to_string())) {
            value.to_string()
        } else {
            OTHER_LABEL.to_string()
        }
    }
}
pub const L_API: &str = "api";
pub const L_DIRECTION: &str = "direction";

// The sidecar's HTTP reverse proxy: the seed's SLI names, exactly as its queries use them.
pub const HTTP_REQUESTS: &str = "http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";
pub const HTTP_TRACE_CONTEXT: &str = "eventscope_http_trace_context_requests_total";
pub const HTTP_PROXY_ERRORS: &str = "eventscope_http_proxy_errors_total";
pub const HTTP_CONNECTIONS: &str = "eventscope_http_connections";
pub const HTTP_CLIENT_REQUESTS: &str = "eventscope_http_client_requests_total";
pub const HTTP_CLIENT_DURATION: &str = "eventscope_http_client_request_duration_seconds";
pub const L_DESTINATION: &str = "destination";
/// Distinct `destination` values of the outbound proxy before the rest share `_other`.
pub const MAX_DESTINATIONS: usize = 100;
pub const L_SERVICE: &str = "service";
pub const L_METHOD: &str = "method";
pub const L_ROUTE: &str = "route";

/// Buckets of `http_request_duration_seconds`: dense around the seed's 500 ms p99 target (0.4 to 0.6 s in
/// 50 ms steps), so that `histogram_quantile(0.99, ...)` near the target and the "slower than 0.5 s"
/// ratio of the latency SLO are exact at the boundary rather than interpolated across a wide bucket.
pub const HTTP_LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.75, 1.0, 2.5, 5.0, 10.0,
];

/// The histogram families: exported as `<name>_bucket`, `<name>_sum` and `<name>_count`.
pub const HISTOGRAMS: &[&str] = &[
    HTTP_REQUEST_DURATION,
    HTTP_CLIENT_DURATION,
    CONSISTENCY_WINDOW.name,
    POLL_DURATION,
    RENDER_DURATION,
    PROXY_REQUEST_DURATION,
    PRODUCE_DURATION,
    DELIVERY_LATENCY,
];

/// Buckets of the proxied request latency (upstream round trip seen by the sidecar): loopback and
/// in-zone requests take well under a millisecond, fetches wait up to `fetch.max.wait.ms` (500 ms by
/// default), and anything past 10 s is a timeout in the making.
pub const PROXY_LATENCY_BUCKETS: &[f64] = &[
    0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Why the proxy closed a connection or could not serve it: a closed set, the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyErrorKind {
    /// A frame longer than the configured maximum (from the client or the broker).
    OversizedFrame,
    /// A frame too short to hold a header, or a response to no request.
    MalformedFrame,
    /// The upstream broker could not be reached (or its TLS handshake failed).
    UpstreamUnreachable,
    /// More connections than `max_connections`.
    ConnectionLimit,
    /// A response that must be rewritten could not be decoded: forwarded unchanged.
    RewriteFailed,
    /// A record batch that could not be read (bad CRC, codec, compression, records): relayed unchanged.
    RecordsUnreadable,
}

impl ProxyErrorKind {
    pub const ALL: [ProxyErrorKind; 6] = [
        ProxyErrorKind::OversizedFrame,
        ProxyErrorKind::MalformedFrame,
        ProxyErrorKind::UpstreamUnreachable,
        ProxyErrorKind::ConnectionLimit,
        ProxyErrorKind::RewriteFailed,
        ProxyErrorKind::RecordsUnreadable,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            ProxyErrorKind::OversizedFrame => "oversized_frame",
            ProxyErrorKind::MalformedFrame => "malformed_frame",
            ProxyErrorKind::UpstreamUnreachable => "upstream_unreachable",
            ProxyErrorKind::ConnectionLimit => "connection_limit",
            ProxyErrorKind::RewriteFailed => "rewrite_failed",
            ProxyErrorKind::RecordsUnreadable => "records_unreadable",
        }
    }
}

/// The `api` label of a Kafka API key: its name, from a closed enum (unknown keys share one value).
pub fn api_label(key: i16) -> &'static str {
    use kafka_protocol::messages::ApiKey;
    match ApiKey::try_from(key) {
        Ok(k) => api_name(k),
        Err(_) => "Unknown",
    }
}

fn api_name(k: kafka_protocol::messages::ApiKey) -> &'static str {
    use kafka_protocol::messages::ApiKey as A;
    match k {
        A::Produce => "Produce",
        A::Fetch => "Fetch",
        A::ListOffsets => "ListOffsets",
        A::Metadata => "Metadata",
        A::OffsetCommit => "OffsetCommit",
        A::OffsetFetch => "OffsetFetch",
        A::FindCoordinator => "FindCoordinator",
        A::JoinGroup => "JoinGroup",
        A::Heartbeat => "Heartbeat",
        A::LeaveGroup => "LeaveGroup",
        A::SyncGroup => "SyncGroup",
        A::DescribeGroups => "DescribeGroups",
        A::ListGroups => "ListGroups",
        A::SaslHandshake => "SaslHandshake",
        A::ApiVersions => "ApiVersions",
        A::CreateTopics => "CreateTopics",
        A::DeleteTopics => "DeleteTopics",
        A::InitProducerId => "InitProducerId",
        A::AddPartitionsToTxn => "AddPartitionsToTxn",
        A::AddOffsetsToTxn => "AddOffsetsToTxn",
        A::EndTxn => "EndTxn",
        A::TxnOffsetCommit => "TxnOffsetCommit",
        A::SaslAuthenticate => "SaslAuthenticate",
        A::DescribeCluster => "DescribeCluster",
        A::DescribeConfigs => "DescribeConfigs",
        A::OffsetForLeaderEpoch => "OffsetForLeaderEpoch",
        A::DeleteGroups => "DeleteGroups",
        A::ConsumerGroupHeartbeat => "ConsumerGroupHeartbeat",
        A::ConsumerGroupDescribe => "ConsumerGroupDescribe",
        A::GetTelemetrySubscriptions => "GetTelemetrySubscriptions",
        A::PushTelemetry => "PushTelemetry",
        _ => "Other",
    }
}

/// The sidecar proxy's metrics, registered in the process registry.
#[derive(Clone)]
pub struct ProxyMetrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub bytes: IntCounterVec,
    pub connections: prometheus::IntGauge,
    pub connections_total: prometheus::IntCounter,
    pub errors: IntCounterVec,
    pub produced_records: IntCounterVec,
    pub produced_bytes: IntCounterVec,
    pub produce_duration: HistogramVec,
    pub produce_errors: IntCounterVec,
    pub consume: ConsumeMetrics,
    pub unobserved: prometheus::IntCounter,
    topics: std::sync::Arc<BoundedLabel>,
}

impl ProxyMetrics {
    pub fn new(registry: &Registry) -> ProxyMetrics {
        let requests = IntCounterVec::new(Opts::new(PROXY_REQUESTS, "Kafka requests relayed, by API."), &[L_API]).expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                PROXY_REQUEST_DURATION,
                "Time from relaying a request to the broker until its response arrived, by API.",
            )
            .buckets(PROXY_LATENCY_BUCKETS.to_vec()),
            &[L_API],
        )
        .expect("valid metric");
        let bytes = IntCounterVec::new(
            Opts::new(PROXY_BYTES, "Bytes relayed, by API and direction (request, response)."),
            &[L_API, L_DIRECTION],
        )
        .expect("valid metric");
        let connections =
            prometheus::IntGauge::new(PROXY_CONNECTIONS, "Open client connections through the Kafka proxy.").expect("valid metric");
        let connections_total =
            prometheus::IntCounter::new(PROXY_CONNECTIONS_TOTAL, "Client connections accepted by the Kafka proxy.").expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                PROXY_ERRORS,
                "Connections closed or responses left unchanged by the proxy, by kind.",
            ),
            &[L_KIND],
        )
        .expect("valid metric");
        for kind in ProxyErrorKind::ALL {
            errors.with_label_values(&[kind.as_label()]);
        }
        let produced_records = IntCounterVec::new(
            Opts::new(
                PRODUCED_RECORDS,
                "Records the application produced that the broker acknowledged, by topic.",
            ),
            &[L_TOPIC],
        )
        .expect("valid metric");
        let produced_bytes = IntCounterVec::new(
            Opts::new(
                PRODUCED_BYTES,
                "Record-batch bytes the broker acknowledged, by topic (compressed size).",
            ),
            &[L_TOPIC],
        )
        .expect("valid metric");
        let produce_duration = HistogramVec::new(
            HistogramOpts::new(PRODUCE_DURATION, "Time from relaying a Produce request to its response, by topic.")
                .buckets(PROXY_LATENCY_BUCKETS.to_vec()),
            &[L_TOPIC],
        )
        .expect("valid metric");
        let produce_errors = IntCounterVec::new(
            Opts::new(
                PRODUCE_ERRORS,
                "Partitions of Produce responses with an error, by topic and Kafka error name.",
            ),
            &[L_TOPIC, L_ERROR],
        )
        .expect("valid metric");
        let unobserved = prometheus::IntCounter::new(
            UNOBSERVED_RESPONSES,
            "Responses relayed but not measured: the observer's backlog was full (16 MiB).",
        )
        .expect("valid metric");
        for c in [
            Box::new(unobserved.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(requests.clone()),
            Box::new(duration.clone()),
            Box::new(bytes.clone()),
            Box::new(connections.clone()),
            Box::new(connections_total.clone()),
            Box::new(errors.clone()),
            Box::new(produced_records.clone()),
            Box::new(produced_bytes.clone()),
            Box::new(produce_duration.clone()),
            Box::new(produce_errors.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        ProxyMetrics {
            requests,
            duration,
            bytes,
            connections,
            connections_total,
            errors,
            produced_records,
            produced_bytes,
            produce_duration,
            produce_errors,
            consume: ConsumeMetrics::new(registry),
            unobserved,
            topics: std::sync::Arc::new(BoundedLabel::new(MAX_TOPIC_LABELS)),
        }
    }

    /// The `topic` label for a topic: itself for the first [`MAX_TOPIC_LABELS`] topics seen, then `_other`.
    pub fn topic_label(&self, topic: &str) -> String {
        self.topics.label(topic)
    }

    /// The one place a proxy error is both logged and counted.
    pub fn error(&self, kind: ProxyErrorKind, detail: &str) {
        tracing::warn!(kind = kind.as_label(), detail, "kafka proxy");
        self.errors.with_label_values(&[kind.as_label()]).inc();
    }
}

/// Every metric name the collector role exports (histograms by family name).
/// What the sidecar measures on the consuming side (see `proxy::consume`), with the collector's names and
/// labels plus `source="sidecar"` where the meaning is the same.
#[derive(Clone)]
pub struct ConsumeMetrics {
    pub lag: IntGaugeVec,
    pub lag_seconds: GaugeVec,
    pub current_offset: IntGaugeVec,
    pub consistency: HistogramVec,
    pub delivery_latency: HistogramVec,
    pub delivered: IntCounterVec,
    pub trace_context: IntCounterVec,
    pub untracked: prometheus::IntCounter,
}

impl ConsumeMetrics {
    fn new(registry: &Registry) -> ConsumeMetrics {
        let partition_labels = [L_CLUSTER, L_GROUP, L_TOPIC, L_PARTITION, L_SOURCE];
        let lag = IntGaugeVec::new(Opts::new(GROUP_LAG.name, GROUP_LAG.help), &partition_labels).expect("valid metric");
        let lag_seconds =
            GaugeVec::new(Opts::new(GROUP_LAG_SECONDS.name, GROUP_LAG_SECONDS.help), &partition_labels).expect("valid metric");
        let current_offset =
            IntGaugeVec::new(Opts::new(GROUP_CURRENT_OFFSET.name, GROUP_CURRENT_OFFSET.help), &partition_labels).expect("valid metric");
        let consistency = HistogramVec::new(
            HistogramOpts::new(CONSISTENCY_WINDOW.name, CONSISTENCY_WINDOW.help).buckets(CONSISTENCY_BUCKETS.to_vec()),
            &[L_CLUSTER, L_GROUP, L_TOPIC, L_SOURCE],
        )
        .expect("valid metric");
        let delivery_latency = HistogramVec::new(
            HistogramOpts::new(
                DELIVERY_LATENCY,
                "Time from a record's append until the sidecar delivered it to the application, by topic.",
            )
            .buckets(CONSISTENCY_BUCKETS.to_vec()),
            &[L_TOPIC],
        )
        .expect("valid metric");
        let delivered = IntCounterVec::new(
            Opts::new(
                DELIVERED_RECORDS,
                "Records delivered to the application, by topic and the timestamp type its windows are measured from.",
            ),
            &[L_TOPIC, L_TIMESTAMP_TYPE],
        )
        .expect("valid metric");
        let trace_context = IntCounterVec::new(
            Opts::new(
                TRACE_CONTEXT_RECORDS,
                "Records by trace context: continued (valid traceparent), started (new trace), invalid (header ignored), absent.",
            ),
            &[L_TOPIC, L_DIRECTION, L_CONTEXT],
        )
        .expect("valid metric");
        let untracked = prometheus::IntCounter::new(
            UNTRACKED_RECORDS,
            "Records delivered while the sidecar already tracked its maximum of uncommitted records (no window measured).",
        )
        .expect("valid metric");
        for c in [
            Box::new(lag.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(lag_seconds.clone()),
            Box::new(current_offset.clone()),
            Box::new(consistency.clone()),
            Box::new(delivery_latency.clone()),
            Box::new(delivered.clone()),
            Box::new(trace_context.clone()),
            Box::new(untracked.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        ConsumeMetrics {
            lag,
            lag_seconds,
            current_offset,
            consistency,
            delivery_latency,
            delivered,
            trace_context,
            untracked,
        }
    }
}

/// Spans handed to the OTLP exporter, by outcome.
#[derive(Clone)]
pub struct TraceMetrics {
    pub exported: prometheus::IntCounter,
    pub dropped: prometheus::IntCounter,
    pub failed: prometheus::IntCounter,
}

impl TraceMetrics {
    pub fn new(registry: &Registry) -> TraceMetrics {
        let spans = IntCounterVec::new(
            Opts::new(
                TRACE_SPANS,
                "Spans by outcome: exported, dropped (export queue full), failed (the OTLP endpoint refused or timed out).",
            ),
            &[L_OUTCOME],
        )
        .expect("valid metric");
        // A second registration (several sidecars in one test process) keeps the first.
        let _ = registry.register(Box::new(spans.clone()));
        TraceMetrics {
            exported: spans.with_label_values(&["exported"]),
            dropped: spans.with_label_values(&["dropped"]),
            failed: spans.with_label_values(&["failed"]),
        }
    }
}

pub fn collector_names() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = SNAPSHOT_FAMILIES.iter().map(|f| f.name).collect();
    v.extend([POLL_DURATION, LAST_SUCCESS, ERRORS_TOTAL, CLUSTER_UP, BUILD_INFO, RENDER_DURATION]);
    v.extend(PROCESS_NAMES);
    v
}

/// Every metric name the sidecar role exports.
pub fn sidecar_names() -> Vec<&'static str> {
    let mut v = vec![
        PROXY_REQUESTS,
        PROXY_REQUEST_DURATION,
        PROXY_BYTES,
        PROXY_CONNECTIONS,
        PROXY_CONNECTIONS_TOTAL,
        PROXY_ERRORS,
        PRODUCED_RECORDS,
        PRODUCED_BYTES,
        PRODUCE_DURATION,
        PRODUCE_ERRORS,
        GROUP_LAG.name,
        GROUP_LAG_SECONDS.name,
        GROUP_CURRENT_OFFSET.name,
        CONSISTENCY_WINDOW.name,
        DELIVERY_LATENCY,
        DELIVERED_RECORDS,
        TRACE_CONTEXT_RECORDS,
        UNTRACKED_RECORDS,
        UNOBSERVED_RESPONSES,
        TRACE_SPANS,
        BUILD_INFO,
    ];
    v.extend(PROCESS_NAMES);
    v
}

const PROCESS_NAMES: [&str; 4] = [
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "process_start_time_seconds",
    "process_open_fds",
];

/// Every metric name the sidecar's HTTP proxy adds (when `sidecar.http.upstream` is set).
pub fn http_names() -> Vec<&'static str> {
    vec![
        HTTP_REQUESTS,
        HTTP_REQUEST_DURATION,
        HTTP_TRACE_CONTEXT,
        HTTP_PROXY_ERRORS,
        HTTP_CONNECTIONS,
        TRACE_SPANS,
    ]
}

/// What the outbound HTTP proxy adds (when `sidecar.http.outbound_listen` is set).
pub fn http_outbound_names() -> Vec<&'static str> {
    vec![HTTP_CLIENT_REQUESTS, HTTP_CLIENT_DURATION]
}

/// Every metric name the program can export, in any role (for the artifact tests).
pub fn exported_names() -> Vec<&'static str> {
    let mut v = collector_names();
    v.extend(sidecar_names());
    v.extend(http_names());
    v.extend(http_outbound_names());
    v.sort_unstable();
    v.dedup();
    v
}

/// Buckets of `eventscope_consistency_window_seconds`, 1 ms to 1 h. Dense between 50 ms and 3 s, where the
/// seed's observed consistency windows lie (p50 85 ms to p99 3.5 s), so p50/p95/p99 interpolate well
/// there; coarse beyond, where a window of minutes is an incident whatever its exact value.
pub const CONSISTENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0,
    60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Buckets of the poll duration: a poll is milliseconds on a small cluster and must stay under the 5 s
/// default interval on a large one.
pub const POLL_DURATION_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Why a collection step failed: a closed set, used as the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A broker could not be reached.
    Connect,
    /// A request got no answer in time.
    Timeout,
    /// A response could not be decoded, or was too large.
    Protocol,
    /// The broker answered with an error code.
    Broker,
    /// The broker denied the request (ACLs).
    Authorization,
    /// The broker lacks an API (or version) the step needs.
    Unsupported,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Protocol,
        ErrorKind::Broker,
        ErrorKind::Authorization,
        ErrorKind::Unsupported,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Broker => "broker",
            ErrorKind::Authorization => "authorization",
            ErrorKind::Unsupported => "unsupported",
        }
    }
}

impl From<&crate::kafka::KafkaError> for ErrorKind {
    fn from(e: &crate::kafka::KafkaError) -> Self {
        use crate::kafka::KafkaError as K;
        match e {
            K::Connect { .. } | K::Io(_) => ErrorKind::Connect,
            K::Timeout(_) => ErrorKind::Timeout,
            K::Protocol(_) => ErrorKind::Protocol,
            K::Unsupported { .. } => ErrorKind::Unsupported,
            K::Authorization(_) => ErrorKind::Authorization,
            K::Broker { .. } => ErrorKind::Broker,
        }
    }
}

/// eventscope's metrics about itself.
#[derive(Clone)]
pub struct SelfMetrics {
    pub registry: Registry,
    pub poll_duration: HistogramVec,
    pub last_success: GaugeVec,
    pub errors: IntCounterVec,
    pub up: IntGaugeVec,
    pub render_duration: prometheus::Histogram,
}

impl SelfMetrics {
    pub fn new() -> SelfMetrics {
        let registry = Registry::new();
        let poll_duration = HistogramVec::new(
            HistogramOpts::new(POLL_DURATION, "Duration of one collection of a cluster.").buckets(POLL_DURATION_BUCKETS.to_vec()),
            &[L_CLUSTER],
        )
        .expect("valid metric");
        let last_success = GaugeVec::new(
            Opts::new(LAST_SUCCESS, "Unix time of the cluster's last successful collection."),
            &[L_CLUSTER],
        )
        .expect("valid metric");
        let errors =
            IntCounterVec::new(Opts::new(ERRORS_TOTAL, "Failed collection steps, by kind."), &[L_CLUSTER, L_KIND]).expect("valid metric");
        let up = IntGaugeVec::new(
            Opts::new(
                CLUSTER_UP,
                "1 if the cluster's last collection succeeded, else 0 (and its lag series are withdrawn).",
            ),
            &[L_CLUSTER],
        )
        .expect("valid metric");
        let build = IntGaugeVec::new(
            Opts::new(BUILD_INFO, "Always 1; the version label says which eventscope runs."),
            &["version"],
        )
        .expect("valid metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let render_duration = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                RENDER_DURATION,
                "Time to render the collection series for /metrics (once per new snapshot).",
            )
            .buckets(POLL_DURATION_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        for c in [
            Box::new(poll_duration.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(last_success.clone()),
            Box::new(errors.clone()),
            Box::new(up.clone()),
            Box::new(build),
            Box::new(render_duration.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("unique metric");
        SelfMetrics {
            registry,
            poll_duration,
            last_success,
            errors,
            up,
            render_duration,
        }
    }

    /// Creates a cluster's series at their zero values, so they exist before the first event.
    pub fn init_cluster(&self, cluster: &str) {
        for kind in ErrorKind::ALL {
            self.errors.with_label_values(&[cluster, kind.as_label()]);
        }
        self.up.with_label_values(&[cluster]).set(0);
        self.poll_duration.with_label_values(&[cluster]);
    }

    /// The one place a collection error is both logged and counted.
    pub fn collection_error(&self, cluster: &str, step: &str, err: &crate::kafka::KafkaError) {
        let kind = ErrorKind::from(err);
        tracing::warn!(cluster, step, kind = kind.as_label(), error = %err, "collection step failed");
        self.errors.with_label_values(&[cluster, kind.as_label()]).inc();
    }

    pub fn render(&self, out: &mut String) {
        let families = self.registry.gather();
        if let Ok(text) = prometheus::TextEncoder::new().encode_to_string(&families) {
            out.push_str(&text);
        }
    }
}

impl Default for SelfMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes the `# HELP` and `# TYPE` lines of a family.
pub fn write_header(out: &mut String, f: &Family) {
    let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
    let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
}

/// Writes a sample value as the text format spells it: integers without a decimal point, `NaN`, `+Inf`,
/// `-Inf`.
pub fn write_value(out: &mut String, value: f64) {
    if value.is_finite() {
        if value == value.trunc() && value.abs() < 1e15 {
            let _ = write!(out, "{}", value as i64);
        } else {
            let _ = write!(out, "{value}");
        }
    } else if value.is_nan() {
        out.push_str("NaN");
    } else if value > 0.0 {
        out.push_str("+Inf");
    } else {
        out.push_str("-Inf");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_spelled_as_the_text_format_wants() {
        for (v, want) in [
            (1.5, "1.5"),
            (42.0, "42"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
        ] {
            let mut s = String::new();
            write_value(&mut s, v);
            assert_eq!(s, want);
        }
    }

    #[test]
    fn buckets_are_sorted() {
        assert!(CONSISTENCY_BUCKETS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(CONSISTENCY_BUCKETS[0], 0.001);
        assert_eq!(*CONSISTENCY_BUCKETS.last().unwrap(), 3600.0);
    }

    #[test]
    fn self_metrics_render() {
        let m = SelfMetrics::new();
        m.init_cluster("c1");
        let mut s = String::new();
        m.render(&mut s);
        assert!(
            s.contains("eventscope_collector_errors_total{cluster=\"c1\",kind=\"timeout\"} 0"),
            "{s}"
        );
        assert!(s.contains("eventscope_build_info"));
    }
}

/// Why the HTTP proxy answered with an error of its own or lost a request: a closed set, the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpErrorKind {
    /// The application could not be connected to: answered 502.
    UpstreamUnavailable,
    /// The application sent no response headers within `response_timeout`: answered 504.
    UpstreamTimeout,
    /// The application's connection failed before its response headers: answered 502.
    UpstreamFailed,
    /// The application's response body broke off after its headers were relayed.
    ResponseAborted,
    /// A request the server could not parse, or whose head was over `max_header_bytes` (400/431).
    MalformedRequest,
    /// A client that did not send its request head within `header_read_timeout`.
    ClientTimeout,
    /// More client connections than `max_connections`.
    ConnectionLimit,
}

impl HttpErrorKind {
    pub const ALL: [HttpErrorKind; 7] = [
        HttpErrorKind::UpstreamUnavailable,
        HttpErrorKind::UpstreamTimeout,
        HttpErrorKind::UpstreamFailed,
        HttpErrorKind::ResponseAborted,
        HttpErrorKind::MalformedRequest,
        HttpErrorKind::ClientTimeout,
        HttpErrorKind::ConnectionLimit,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            HttpErrorKind::UpstreamUnavailable => "upstream_unavailable",
            HttpErrorKind::UpstreamTimeout => "upstream_timeout",
            HttpErrorKind::UpstreamFailed => "upstream_failed",
            HttpErrorKind::ResponseAborted => "response_aborted",
            HttpErrorKind::MalformedRequest => "malformed_request",
            HttpErrorKind::ClientTimeout => "client_timeout",
            HttpErrorKind::ConnectionLimit => "connection_limit",
        }
    }
}

/// The `method` label: the standard methods, every other one `_OTHER` (as OpenTelemetry's
/// `http.request.method` does), so a client cannot grow the series with made-up methods.
pub fn method_label(method: &hyper::Method) -> &'static str {
    use hyper::Method as M;
    match *method {
        M::GET => "GET",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::PATCH => "PATCH",
        M::HEAD => "HEAD",
        M::OPTIONS => "OPTIONS",
        M::CONNECT => "CONNECT",
        M::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// The HTTP proxy's metrics: the seed's SLI series plus the proxy's own.
#[derive(Clone)]
pub struct HttpMetrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub client_requests: IntCounterVec,
    pub client_duration: HistogramVec,
    pub trace_context: IntCounterVec,
    pub errors: IntCounterVec,
    pub connections: prometheus::IntGauge,
}

impl HttpMetrics {
    pub fn new(registry: &Registry) -> HttpMetrics {
        let requests = IntCounterVec::new(
            Opts::new(
                HTTP_REQUESTS,
                "HTTP requests served through the sidecar, by service, method, route template and status code.",
            ),
            &[L_SERVICE, L_METHOD, L_ROUTE, L_STATUS],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                HTTP_REQUEST_DURATION,
                "Time from a request's arrival until its response was sent in full, by service, method and route.",
            )
            .buckets(HTTP_LATENCY_BUCKETS.to_vec()),
            &[L_SERVICE, L_METHOD, L_ROUTE],
        )
        .expect("valid metric");
        let client_requests = IntCounterVec::new(
            Opts::new(
                HTTP_CLIENT_REQUESTS,
                "The application's outbound HTTP requests through the sidecar, by service, method, destination (host:port) and status code.",
            ),
            &[L_SERVICE, L_METHOD, L_DESTINATION, L_STATUS],
        )
        .expect("valid metric");
        let client_duration = HistogramVec::new(
            HistogramOpts::new(
                HTTP_CLIENT_DURATION,
                "Time of the application's outbound HTTP requests, from arrival at the sidecar until the response was sent in full.",
            )
            .buckets(HTTP_LATENCY_BUCKETS.to_vec()),
            &[L_SERVICE, L_METHOD, L_DESTINATION],
        )
        .expect("valid metric");
        let trace_context = IntCounterVec::new(
            Opts::new(
                HTTP_TRACE_CONTEXT,
                "Requests by incoming W3C trace context: continued (valid traceparent), invalid (a new trace was started), absent.",
            ),
            &[L_SERVICE, L_CONTEXT],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(HTTP_PROXY_ERRORS, "Requests the HTTP proxy answered itself or lost, by kind."),
            &[L_KIND],
        )
        .expect("valid metric");
        for kind in HttpErrorKind::ALL {
            errors.with_label_values(&[kind.as_label()]);
        }
        let connections =
            prometheus::IntGauge::new(HTTP_CONNECTIONS, "Open client connections through the HTTP proxy.").expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(client_requests.clone()),
            Box::new(client_duration.clone()),
            Box::new(trace_context.clone()),
            Box::new(errors.clone()),
            Box::new(connections.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        HttpMetrics {
            requests,
            duration,
            client_requests,
            client_duration,
            trace_context,
            errors,
            connections,
        }
    }

    /// The one place an HTTP proxy error is both logged and counted.
    pub fn error(&self, kind: HttpErrorKind, detail: &str) {
        tracing::warn!(kind = kind.as_label(), detail, "http proxy");
        self.errors.with_label_values(&[kind.as_label()]).inc();
    }
}
