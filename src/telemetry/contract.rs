//! The metric contract: every name, label and help text the program exports, in one place.
//!
//! Dashboards (`dashboards/`) and alerts (`alerts/`) depend on these names; `tests/artifacts.rs` checks that
//! they use nothing else, and `docs/metrics.md` documents each. Lag metrics keep kafka_exporter's names and
//! labels (`consumergroup`, `topic`, `partition`) plus `cluster`, so existing dashboards keep working.
//!
//! Two kinds of metrics use these names:
//! - **collection results** (lag, offsets, status, consistency windows): rebuilt from scratch at the end of
//!   each poll into a collector snapshot and rendered once into cached text (`collector::exposition`). A
//!   group or topic that disappears is simply absent from the next snapshot, so no series leaks; a scrape
//!   never calls a broker and many scrapes cost one render.
//! - **registered series** (the sidecar's measurements, eventscope's own): a `prometheus` registry, one
//!   struct per role (`telemetry::collector`, `telemetry::kafka`, `telemetry::http`), each series created
//!   through [`super::register`].

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
#[derive(Debug, PartialEq, Eq)]
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
    TOPIC_SKEW,
    "kafka_topic_partition_skew_ratio",
    "gauge",
    "The busiest partition's append rate over the mean of the topic's partitions, over the status window (1: even; absent without appends)."
);
family!(
    GROUP_LAG_SKEW,
    "kafka_consumergroup_lag_skew_ratio",
    "gauge",
    "The group's largest partition lag on the topic over its mean partition lag (1: even; absent when caught up)."
);
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

// One view of backlogs across brokers (collector role): Kafka groups, RabbitMQ queues, JetStream consumers,
// SQS queues. Labels: `broker` (a closed set), `cluster` (a configured name), `destination` and `consumer`
// (what the broker holds, filtered by the configuration's allow and deny lists).
pub const L_BROKER: &str = "broker";
pub const L_CONSUMER: &str = "consumer";
family!(
    BACKLOG_MESSAGES,
    "eventscope_backlog_messages",
    "gauge",
    "Messages not yet consumed: a Kafka group's lag on the topic, a RabbitMQ queue's ready + unacked, a JetStream consumer's pending + ack pending, an SQS queue's visible + in flight."
);
family!(
    BACKLOG_AGE,
    "eventscope_backlog_age_seconds",
    "gauge",
    "Age of the oldest message not yet consumed, where it can be known (0 when there is none)."
);
family!(
    BACKLOG_DRAIN,
    "eventscope_backlog_drain_seconds",
    "gauge",
    "Seconds to consume the backlog at the net consumption rate over the status window (absent while it does not shrink)."
);
family!(
    BACKLOG_STATUS,
    "eventscope_backlog_status",
    "gauge",
    "Burrow-style evaluation of the consumer on the destination: 1 for the current status, 0 for the others."
);
family!(
    RABBITMQ_READY,
    "eventscope_rabbitmq_queue_messages_ready",
    "gauge",
    "Messages ready for delivery in the RabbitMQ queue."
);
family!(
    RABBITMQ_UNACKED,
    "eventscope_rabbitmq_queue_messages_unacked",
    "gauge",
    "Messages delivered to consumers and not yet acknowledged."
);
family!(
    RABBITMQ_CONSUMERS,
    "eventscope_rabbitmq_queue_consumers",
    "gauge",
    "Consumers of the queue."
);
family!(
    RABBITMQ_UTILISATION,
    "eventscope_rabbitmq_queue_consumer_utilisation",
    "gauge",
    "Fraction of the time the queue can deliver to its consumers at once (RabbitMQ's consumer_utilisation, 0 to 1)."
);
family!(
    RABBITMQ_PUBLISHED,
    "eventscope_rabbitmq_queue_published_total",
    "counter",
    "Messages published into the queue (the management statistics' count; it restarts with the node)."
);
family!(
    RABBITMQ_DELIVERED,
    "eventscope_rabbitmq_queue_delivered_total",
    "counter",
    "Messages delivered or fetched from the queue."
);
family!(
    RABBITMQ_ACKED,
    "eventscope_rabbitmq_queue_acked_total",
    "counter",
    "Messages consumed from the queue: acknowledged, or delivered with automatic acknowledgement."
);
family!(
    RABBITMQ_REDELIVERED,
    "eventscope_rabbitmq_queue_redelivered_total",
    "counter",
    "Messages delivered again (requeued or not acknowledged before the consumer went away)."
);
family!(
    NATS_PENDING,
    "eventscope_nats_consumer_pending_messages",
    "gauge",
    "Messages of the stream the JetStream consumer has not yet delivered (num_pending)."
);
family!(
    NATS_ACK_PENDING,
    "eventscope_nats_consumer_ack_pending_messages",
    "gauge",
    "Messages delivered and not yet acknowledged (num_ack_pending)."
);
family!(
    NATS_REDELIVERED,
    "eventscope_nats_consumer_redelivered_messages",
    "gauge",
    "Messages delivered more than once and not yet acknowledged (num_redelivered)."
);
family!(
    NATS_WAITING,
    "eventscope_nats_consumer_waiting_pulls",
    "gauge",
    "Pull requests waiting for messages (num_waiting): a pull consumer's active fetchers."
);
family!(
    NATS_STREAM_MESSAGES,
    "eventscope_nats_stream_messages",
    "gauge",
    "Messages stored in the stream."
);
family!(
    NATS_STREAM_BYTES,
    "eventscope_nats_stream_bytes",
    "gauge",
    "Bytes stored in the stream."
);
family!(
    NATS_STREAM_FIRST_SEQ,
    "eventscope_nats_stream_first_sequence",
    "gauge",
    "Sequence of the stream's first stored message."
);
family!(
    NATS_STREAM_LAST_SEQ,
    "eventscope_nats_stream_last_sequence",
    "gauge",
    "Sequence of the stream's last stored message."
);
family!(
    SQS_VISIBLE,
    "eventscope_sqs_queue_visible_messages",
    "gauge",
    "Messages available for retrieval from the SQS queue (ApproximateNumberOfMessages)."
);
family!(
    SQS_IN_FLIGHT,
    "eventscope_sqs_queue_in_flight_messages",
    "gauge",
    "Messages received and not yet deleted, invisible until their visibility timeout (ApproximateNumberOfMessagesNotVisible)."
);
family!(
    SQS_DELAYED,
    "eventscope_sqs_queue_delayed_messages",
    "gauge",
    "Messages delayed and not yet available (ApproximateNumberOfMessagesDelayed); not in the backlog."
);
family!(
    SQS_DEAD_LETTER,
    "eventscope_sqs_queue_dead_letter_messages",
    "gauge",
    "Messages in the queue's dead-letter queue (the one its RedrivePolicy names)."
);
family!(
    SQS_SUBSCRIPTION,
    "eventscope_sqs_queue_sns_subscription_info",
    "gauge",
    "1 for each SNS topic that delivers to the queue."
);
pub const L_DEAD_LETTER_QUEUE: &str = "dead_letter_queue";
pub const L_SNS_TOPIC: &str = "sns_topic";

/// The broker-specific families, in render order.
pub const BROKER_FAMILIES: &[&Family] = &[
    &RABBITMQ_READY,
    &RABBITMQ_UNACKED,
    &RABBITMQ_CONSUMERS,
    &RABBITMQ_UTILISATION,
    &RABBITMQ_PUBLISHED,
    &RABBITMQ_DELIVERED,
    &RABBITMQ_ACKED,
    &RABBITMQ_REDELIVERED,
    &NATS_PENDING,
    &NATS_ACK_PENDING,
    &NATS_REDELIVERED,
    &NATS_WAITING,
    &NATS_STREAM_MESSAGES,
    &NATS_STREAM_BYTES,
    &NATS_STREAM_FIRST_SEQ,
    &NATS_STREAM_LAST_SEQ,
    &SQS_VISIBLE,
    &SQS_IN_FLIGHT,
    &SQS_DELAYED,
    &SQS_DEAD_LETTER,
    &SQS_SUBSCRIPTION,
];

/// The families of the common backlog view, in render order.
pub const BACKLOG_FAMILIES: &[&Family] = &[&BACKLOG_MESSAGES, &BACKLOG_AGE, &BACKLOG_DRAIN, &BACKLOG_STATUS];

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
    &TOPIC_SKEW,
    &GROUP_LAG_SKEW,
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
pub const TRACE_QUEUE: &str = "eventscope_trace_queue_spans";
pub const L_TIMESTAMP_TYPE: &str = "timestamp_type";
pub const L_CONTEXT: &str = "context";
pub const L_OUTCOME: &str = "outcome";
/// Distinct `topic` values the sidecar reports before it folds the rest into [`OTHER_LABEL`]: an
/// application writes to a handful of topics, and a hostile client cannot grow the series without bound.
pub const MAX_TOPIC_LABELS: usize = 256;
/// The value a [`BoundedLabel`] gives everything past its budget (topics, routes, destinations).
pub const OTHER_LABEL: &str = "_other";

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

// Sagas (collector role, `[[sagas]]`): labels bounded by the configuration (saga names, their types and
// steps), never by the traffic.
pub const SAGA_STARTED: &str = "eventscope_saga_started_total";
pub const SAGA_ENDED: &str = "eventscope_saga_ended_total";
pub const SAGA_IN_FLIGHT: &str = "eventscope_saga_in_flight";
pub const SAGA_STUCK: &str = "eventscope_saga_stuck";
pub const SAGA_DURATION: &str = "eventscope_saga_duration_seconds";
pub const SAGA_STEP_DURATION: &str = "eventscope_saga_step_seconds";
pub const SAGA_EVENTS: &str = "eventscope_saga_events_total";
pub const SAGA_UNMATCHED: &str = "eventscope_saga_unmatched_events_total";
pub const SAGA_EVICTED: &str = "eventscope_saga_evicted_total";
pub const SAGA_LATE_COMPENSATIONS: &str = "eventscope_saga_late_compensations_total";
pub const SAGA_PARTITIONS: &str = "eventscope_saga_partitions";
pub const SAGA_UP: &str = "eventscope_saga_up";
pub const L_SAGA: &str = "saga";
pub const L_STEP: &str = "step";
pub const L_TYPE: &str = "type";
pub const L_REASON: &str = "reason";

/// Buckets of a saga's duration and of its steps: a step takes milliseconds to seconds, a saga seconds to
/// the minutes of its `timeout`; past an hour it is an incident whatever its exact value.
pub const SAGA_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// What the collector adds for `[[sagas]]`.
pub fn saga_names() -> Vec<&'static str> {
    vec![
        SAGA_STARTED,
        SAGA_ENDED,
        SAGA_IN_FLIGHT,
        SAGA_STUCK,
        SAGA_DURATION,
        SAGA_STEP_DURATION,
        SAGA_EVENTS,
        SAGA_UNMATCHED,
        SAGA_EVICTED,
        SAGA_LATE_COMPENSATIONS,
        SAGA_PARTITIONS,
        SAGA_UP,
    ]
}

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
    SAGA_DURATION,
    SAGA_STEP_DURATION,
];

/// Buckets of the proxied request latency (upstream round trip seen by the sidecar): loopback and
/// in-zone requests take well under a millisecond, fetches wait up to `fetch.max.wait.ms` (500 ms by
/// default), and anything past 10 s is a timeout in the making.
pub const PROXY_LATENCY_BUCKETS: &[f64] = &[
    0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

pub fn collector_names() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = SNAPSHOT_FAMILIES.iter().map(|f| f.name).collect();
    v.extend(BACKLOG_FAMILIES.iter().map(|f| f.name));
    v.extend([POLL_DURATION, LAST_SUCCESS, ERRORS_TOTAL, CLUSTER_UP, BUILD_INFO, RENDER_DURATION]);
    v.extend(PROCESS_NAMES);
    v
}

/// What the collector adds for `[[rabbitmq]]`, `[[nats]]` and `[[sqs]]`: each broker's own series.
pub fn broker_names() -> Vec<&'static str> {
    BROKER_FAMILIES.iter().map(|f| f.name).collect()
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
        TRACE_QUEUE,
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
        TRACE_QUEUE,
    ]
}

/// What the outbound HTTP proxy adds (when `sidecar.http.outbound_listen` is set).
pub fn http_outbound_names() -> Vec<&'static str> {
    vec![HTTP_CLIENT_REQUESTS, HTTP_CLIENT_DURATION]
}

/// Every metric name the program can export, in any role (for the artifact tests).
pub fn exported_names() -> Vec<&'static str> {
    let mut v = collector_names();
    v.extend(saga_names());
    v.extend(broker_names());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_sorted() {
        for b in [
            CONSISTENCY_BUCKETS,
            POLL_DURATION_BUCKETS,
            HTTP_LATENCY_BUCKETS,
            PROXY_LATENCY_BUCKETS,
            SAGA_BUCKETS,
        ] {
            assert!(b.windows(2).all(|w| w[0] < w[1]));
        }
        assert_eq!(CONSISTENCY_BUCKETS[0], 0.001);
        assert_eq!(*CONSISTENCY_BUCKETS.last().unwrap(), 3600.0);
    }

    #[test]
    fn names_are_unique_per_role() {
        for names in [collector_names(), saga_names(), broker_names(), sidecar_names()] {
            let mut sorted = names.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), names.len(), "{names:?}");
        }
    }
}
