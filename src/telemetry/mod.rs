//! Telemetry: what eventscope tells the outside world, and nothing about how it is measured.
//!
//! - [`contract`]: every metric name, label and help text, the buckets, and which role exports what
//!   (checked against `alerts/`, `dashboards/` and `docs/metrics.md` by `tests/artifacts.rs`);
//! - one file per role's registered metrics ([`collector`], [`kafka`], [`http`]), each series made through
//!   the one helper of this module, with the closed error-kind enums that become `kind` labels;
//! - [`labels`] and [`route`]: bounds on label values that come from the network;
//! - [`text`]: the Prometheus text format's spelling, for the collector's snapshot exposition;
//! - [`traces`]: W3C trace context and OTLP span export.
//!
//! This module depends on no role: roles depend on it.

pub mod collector;
pub mod contract;
pub mod http;
pub mod kafka;
pub mod labels;
pub mod route;
pub mod text;
pub mod traces;

use prometheus::core::Collector;
use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// How a series is made: its name, help and labels (and buckets, for a histogram).
pub struct Spec<'a> {
    pub name: &'a str,
    pub help: &'a str,
    pub labels: &'a [&'a str],
}

/// Registers `metric` in `registry` and hands it back: the one place registration happens. A name that is
/// already registered is a programming error (each name is made once, by one role's struct), except where
/// the caller says a second registration keeps the first.
pub fn register<M: Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry.register(Box::new(metric.clone())).expect("a metric name registered once");
    metric
}

/// A counter family, registered.
pub fn counters(registry: &Registry, s: Spec<'_>) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(s.name, s.help), s.labels).expect("valid metric"),
    )
}

/// An integer gauge family, registered.
pub fn int_gauges(registry: &Registry, s: Spec<'_>) -> IntGaugeVec {
    register(
        registry,
        IntGaugeVec::new(Opts::new(s.name, s.help), s.labels).expect("valid metric"),
    )
}

/// A float gauge family, registered.
pub fn gauges(registry: &Registry, s: Spec<'_>) -> GaugeVec {
    register(registry, GaugeVec::new(Opts::new(s.name, s.help), s.labels).expect("valid metric"))
}

/// A histogram family with the given buckets, registered.
pub fn histograms(registry: &Registry, s: Spec<'_>, buckets: &[f64]) -> HistogramVec {
    register(
        registry,
        HistogramVec::new(HistogramOpts::new(s.name, s.help).buckets(buckets.to_vec()), s.labels).expect("valid metric"),
    )
}

/// The series every role exports: `eventscope_build_info` and the process collector (RSS, CPU, fds).
pub fn register_process(registry: &Registry) {
    let build = int_gauges(
        registry,
        Spec {
            name: contract::BUILD_INFO,
            help: "Always 1; the version label says which eventscope runs.",
            labels: &["version"],
        },
    );
    build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    #[cfg(target_os = "linux")]
    registry
        .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
        .expect("a metric name registered once");
}

/// The registry's series in the text format (empty if encoding fails, which a registry of valid metrics
/// does not).
pub fn render_registry(registry: &Registry) -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap_or_default()
}
