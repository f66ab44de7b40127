//! The sidecar's Kafka proxy metrics (relay, produce side, consume side) and the closed set of its error
//! kinds.

use prometheus::{IntCounter, IntGauge, Registry};

use super::partitions::PartitionSeries;
use super::{counters, histograms, register, Counters, Histograms, Spec};

use super::contract::*;
use super::labels::BoundedLabel;

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
    /// The observer panicked while measuring a response (or its thread ended): the consumer
    /// measurements it held are withdrawn and start again; the traffic is not affected.
    ObserverPanic,
}

impl ProxyErrorKind {
    pub const ALL: [ProxyErrorKind; 7] = [
        ProxyErrorKind::OversizedFrame,
        ProxyErrorKind::MalformedFrame,
        ProxyErrorKind::UpstreamUnreachable,
        ProxyErrorKind::ConnectionLimit,
        ProxyErrorKind::RewriteFailed,
        ProxyErrorKind::RecordsUnreadable,
        ProxyErrorKind::ObserverPanic,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            ProxyErrorKind::OversizedFrame => "oversized_frame",
            ProxyErrorKind::MalformedFrame => "malformed_frame",
            ProxyErrorKind::UpstreamUnreachable => "upstream_unreachable",
            ProxyErrorKind::ConnectionLimit => "connection_limit",
            ProxyErrorKind::RewriteFailed => "rewrite_failed",
            ProxyErrorKind::RecordsUnreadable => "records_unreadable",
            ProxyErrorKind::ObserverPanic => "observer_panic",
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
    pub requests: Counters<1>,
    pub duration: Histograms<1>,
    pub bytes: Counters<2>,
    pub connections: IntGauge,
    pub connections_total: IntCounter,
    pub errors: Counters<1>,
    pub produced_records: Counters<1>,
    pub produced_bytes: Counters<1>,
    pub produce_duration: Histograms<1>,
    pub produce_errors: Counters<2>,
    pub consume: ConsumeMetrics,
    pub unobserved: IntCounter,
    topics: std::sync::Arc<BoundedLabel>,
}

impl ProxyMetrics {
    pub fn new(registry: &Registry) -> ProxyMetrics {
        let errors = counters(
            registry,
            Spec {
                name: PROXY_ERRORS,
                help: "Connections closed or responses left unchanged by the proxy, by kind.",
                labels: [L_KIND],
            },
        );
        for kind in ProxyErrorKind::ALL {
            errors.with([kind.as_label()]);
        }
        let topic = [L_TOPIC];
        ProxyMetrics {
            requests: counters(
                registry,
                Spec {
                    name: PROXY_REQUESTS,
                    help: "Kafka requests relayed, by API.",
                    labels: [L_API],
                },
            ),
            duration: histograms(
                registry,
                Spec {
                    name: PROXY_REQUEST_DURATION,
                    help: "Time from relaying a request to the broker until its response arrived, by API.",
                    labels: [L_API],
                },
                PROXY_LATENCY_BUCKETS,
            ),
            bytes: counters(
                registry,
                Spec {
                    name: PROXY_BYTES,
                    help: "Bytes relayed, by API and direction (request, response).",
                    labels: [L_API, L_DIRECTION],
                },
            ),
            connections: register(
                registry,
                IntGauge::new(PROXY_CONNECTIONS, "Open client connections through the Kafka proxy.").expect("valid metric"),
            ),
            connections_total: register(
                registry,
                IntCounter::new(PROXY_CONNECTIONS_TOTAL, "Client connections accepted by the Kafka proxy.").expect("valid metric"),
            ),
            errors,
            produced_records: counters(
                registry,
                Spec {
                    name: PRODUCED_RECORDS,
                    help: "Records the application produced that the broker acknowledged, by topic.",
                    labels: topic,
                },
            ),
            produced_bytes: counters(
                registry,
                Spec {
                    name: PRODUCED_BYTES,
                    help: "Record-batch bytes the broker acknowledged, by topic (compressed size).",
                    labels: topic,
                },
            ),
            produce_duration: histograms(
                registry,
                Spec {
                    name: PRODUCE_DURATION,
                    help: "Time from relaying a Produce request to its response, by topic.",
                    labels: topic,
                },
                PROXY_LATENCY_BUCKETS,
            ),
            produce_errors: counters(
                registry,
                Spec {
                    name: PRODUCE_ERRORS,
                    help: "Partitions of Produce responses with an error, by topic and Kafka error name.",
                    labels: [L_TOPIC, L_ERROR],
                },
            ),
            consume: ConsumeMetrics::new(registry),
            unobserved: register(
                registry,
                IntCounter::new(
                    UNOBSERVED_RESPONSES,
                    "Responses (Fetch: pieces of one) relayed but not measured: the observer's backlog was full (8 MiB).",
                )
                .expect("valid metric"),
            ),
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
        self.errors.with([kind.as_label()]).inc();
    }
}

/// What the sidecar measures on the consuming side (see `proxy::consume`), with the collector's names and
/// labels plus `source="sidecar"` where the meaning is the same.
#[derive(Clone)]
pub struct ConsumeMetrics {
    /// `kafka_consumergroup_lag`, `_lag_seconds` and `_current_offset` of every partition committed,
    /// as the last refresh made them: written by `/metrics` itself, not kept in the registry.
    pub partitions: PartitionSeries,
    pub consistency: Histograms<4>,
    pub delivery_latency: Histograms<1>,
    pub delivered: Counters<2>,
    pub trace_context: Counters<3>,
    pub untracked: IntCounter,
}

impl ConsumeMetrics {
    fn new(registry: &Registry) -> ConsumeMetrics {
        ConsumeMetrics {
            partitions: PartitionSeries::default(),
            consistency: histograms(
                registry,
                Spec {
                    name: CONSISTENCY_WINDOW.name,
                    help: CONSISTENCY_WINDOW.help,
                    labels: [L_CLUSTER, L_GROUP, L_TOPIC, L_SOURCE],
                },
                CONSISTENCY_BUCKETS,
            ),
            delivery_latency: histograms(
                registry,
                Spec {
                    name: DELIVERY_LATENCY,
                    help: "Time from a record's append until the sidecar delivered it to the application, by topic.",
                    labels: [L_TOPIC],
                },
                CONSISTENCY_BUCKETS,
            ),
            delivered: counters(
                registry,
                Spec {
                    name: DELIVERED_RECORDS,
                    help: "Records delivered to the application, by topic and the timestamp type its windows are measured from.",
                    labels: [L_TOPIC, L_TIMESTAMP_TYPE],
                },
            ),
            trace_context: counters(
                registry,
                Spec {
                    name: TRACE_CONTEXT_RECORDS,
                    help: "Records by trace context: continued (valid traceparent), started (new trace), invalid (header ignored), absent.",
                    labels: [L_TOPIC, L_DIRECTION, L_CONTEXT],
                },
            ),
            untracked: register(
                registry,
                IntCounter::new(
                    UNTRACKED_RECORDS,
                    "Records delivered while the sidecar already tracked its maximum of uncommitted records (no window measured).",
                )
                .expect("valid metric"),
            ),
        }
    }
}
