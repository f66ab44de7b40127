//! eventscope: an observability sidecar and collector for Kafka-based event-driven microservices.
//!
//! The modules are the architecture (`docs/architecture.md` draws it):
//! - [`collector`]: the cluster-wide role: poll loop, snapshot, lag, status, consistency windows;
//! - [`sidecar`]: the in-pod role: the Kafka protocol proxy ([`sidecar::kafka`]) and the HTTP reverse
//!   proxy ([`sidecar::http`]);
//! - [`kafka`]: the Kafka client both roles use (connections, security, record batches);
//! - [`telemetry`]: the metric contract, its exposition, trace context and OTLP export;
//! - [`admin`]: the admin server (`/metrics`, `/healthz`, `/readyz`) with a state of its own;
//! - [`config`], [`cli`], [`run`] (wiring: build, spawn, wait for SIGTERM, drain), [`demo`].

pub mod accept;
pub mod admin;
pub mod cli;
pub mod collector;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod kafka;
pub mod logging;
pub mod memory;
pub mod run;
pub mod sidecar;
pub mod telemetry;

/// Helpers of the unit tests.
#[cfg(test)]
pub(crate) mod testing {
    /// A deterministic xorshift64 stream, for tests that feed arbitrary bytes to a parser.
    pub fn xorshift(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }
}
