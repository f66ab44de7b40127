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
pub mod partitions;
pub mod route;
pub mod saga;
pub mod text;
pub mod traces;

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// How a series is made: its name, help and its `N` label names (and buckets, for a histogram).
pub struct Spec<'a, const N: usize> {
    pub name: &'a str,
    pub help: &'a str,
    pub labels: [&'a str; N],
}

/// A metric family with `N` labels: the compiler checks that every use gives exactly `N` values, in the
/// order of [`Spec::labels`] (a `prometheus` vector only finds out at run time, with a panic).
pub struct Family<B: MetricVecBuilder, const N: usize>(MetricVec<B>);

impl<B: MetricVecBuilder, const N: usize> Clone for Family<B, N> {
    fn clone(&self) -> Self {
        Family(self.0.clone())
    }
}

impl<B: MetricVecBuilder, const N: usize> Family<B, N> {
    /// The series with these label values (created at its zero value if new).
    pub fn with(&self, values: [&str; N]) -> B::M {
        self.0.with_label_values(&values)
    }

    /// Removes the series with these label values, if it exists.
    pub fn remove(&self, values: [&str; N]) {
        let _ = self.0.remove_label_values(&values);
    }

    /// Removes every series of the family.
    pub fn reset(&self) {
        self.0.reset()
    }
}

/// Integer counters with `N` labels.
pub type Counters<const N: usize> = Family<<IntCounterVec as VecBuilder>::B, N>;
/// Integer gauges with `N` labels.
pub type IntGauges<const N: usize> = Family<<IntGaugeVec as VecBuilder>::B, N>;
/// Float gauges with `N` labels.
pub type Gauges<const N: usize> = Family<<GaugeVec as VecBuilder>::B, N>;
/// Histograms with `N` labels.
pub type Histograms<const N: usize> = Family<<HistogramVec as VecBuilder>::B, N>;

/// The builder behind a `prometheus` vector type (so the aliases above need not name it).
pub trait VecBuilder {
    type B: MetricVecBuilder;
}

impl<B: MetricVecBuilder> VecBuilder for MetricVec<B> {
    type B = B;
}

/// Registers `metric` in `registry` and hands it back: the one place registration happens. A name that is
/// already registered is a programming error (each name is made once, by one role's struct), except where
/// the caller says a second registration keeps the first.
pub fn register<M: Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry.register(Box::new(metric.clone())).expect("a metric name registered once");
    metric
}

/// A counter family, registered.
pub fn counters<const N: usize>(registry: &Registry, s: Spec<'_, N>) -> Counters<N> {
    Family(register(
        registry,
        IntCounterVec::new(Opts::new(s.name, s.help), &s.labels).expect("valid metric"),
    ))
}

/// An integer gauge family, registered.
pub fn int_gauges<const N: usize>(registry: &Registry, s: Spec<'_, N>) -> IntGauges<N> {
    Family(register(
        registry,
        IntGaugeVec::new(Opts::new(s.name, s.help), &s.labels).expect("valid metric"),
    ))
}

/// A float gauge family, registered.
pub fn gauges<const N: usize>(registry: &Registry, s: Spec<'_, N>) -> Gauges<N> {
    Family(register(
        registry,
        GaugeVec::new(Opts::new(s.name, s.help), &s.labels).expect("valid metric"),
    ))
}

/// A histogram family with the given buckets, registered.
pub fn histograms<const N: usize>(registry: &Registry, s: Spec<'_, N>, buckets: &[f64]) -> Histograms<N> {
    Family(register(
        registry,
        HistogramVec::new(HistogramOpts::new(s.name, s.help).buckets(buckets.to_vec()), &s.labels).expect("valid metric"),
    ))
}

/// The series every role exports: `eventscope_build_info` and the process collector (RSS, CPU, fds).
pub fn register_process(registry: &Registry) {
    let build = int_gauges(
        registry,
        Spec {
            name: contract::BUILD_INFO,
            help: "Always 1; the version label says which eventscope runs.",
            labels: ["version"],
        },
    );
    build.with([env!("CARGO_PKG_VERSION")]).set(1);
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
