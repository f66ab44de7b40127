//! The collector's metrics about itself (poll duration, errors by kind, up, last success) and the closed
//! set of collection error kinds.

use prometheus::{Histogram, HistogramOpts, Registry};

use super::{counters, gauges, histograms, int_gauges, register, Counters, Gauges, Histograms, IntGauges, Spec};

use super::contract::*;

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

/// The collector role's metrics about itself.
#[derive(Clone)]
pub struct CollectorMetrics {
    pub poll_duration: Histograms<1>,
    pub last_success: Gauges<1>,
    pub errors: Counters<2>,
    pub up: IntGauges<1>,
    pub render_duration: Histogram,
}

impl CollectorMetrics {
    pub fn new(registry: &Registry) -> CollectorMetrics {
        let cluster = [L_CLUSTER];
        let render_duration = Histogram::with_opts(
            HistogramOpts::new(
                RENDER_DURATION,
                "Time to render the collection series for /metrics (once per new snapshot).",
            )
            .buckets(POLL_DURATION_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        CollectorMetrics {
            poll_duration: histograms(
                registry,
                Spec {
                    name: POLL_DURATION,
                    help: "Duration of one collection of a cluster.",
                    labels: cluster,
                },
                POLL_DURATION_BUCKETS,
            ),
            last_success: gauges(
                registry,
                Spec {
                    name: LAST_SUCCESS,
                    help: "Unix time of the cluster's last successful collection.",
                    labels: cluster,
                },
            ),
            errors: counters(
                registry,
                Spec {
                    name: ERRORS_TOTAL,
                    help: "Failed collection steps, by kind.",
                    labels: [L_CLUSTER, L_KIND],
                },
            ),
            up: int_gauges(
                registry,
                Spec {
                    name: CLUSTER_UP,
                    help: "1 if the cluster's last collection succeeded, else 0 (and its lag series are withdrawn).",
                    labels: cluster,
                },
            ),
            render_duration: register(registry, render_duration),
        }
    }

    /// Creates a cluster's series at their zero values, so they exist before the first event.
    pub fn init_cluster(&self, cluster: &str) {
        for kind in ErrorKind::ALL {
            self.errors.with([cluster, kind.as_label()]);
        }
        self.up.with([cluster]).set(0);
        self.poll_duration.with([cluster]);
    }

    /// The one place a collection error is both logged and counted.
    pub fn collection_error(&self, cluster: &str, step: &str, err: &crate::kafka::KafkaError) {
        self.source_error(cluster, step, ErrorKind::from(err), err);
    }

    /// The same for any source (RabbitMQ, NATS, SQS), its error already sorted into a kind.
    pub fn source_error(&self, cluster: &str, step: &str, kind: ErrorKind, err: &dyn std::fmt::Display) {
        tracing::warn!(cluster, step, kind = kind.as_label(), error = %err, "collection step failed");
        self.errors.with([cluster, kind.as_label()]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_has_every_error_kind_at_zero() {
        let registry = Registry::new();
        super::super::register_process(&registry);
        let m = CollectorMetrics::new(&registry);
        m.init_cluster("c1");
        let s = super::super::render_registry(&registry);
        for kind in ErrorKind::ALL {
            let line = format!("eventscope_collector_errors_total{{cluster=\"c1\",kind=\"{}\"}} 0", kind.as_label());
            assert!(s.contains(&line), "{s}");
        }
        assert!(s.contains("eventscope_build_info"));
    }
}
