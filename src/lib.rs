//! eventscope: an observability sidecar and collector for Kafka-based event-driven microservices.
//!
//! This crate holds the `collector` role: consumer lag in messages and seconds, Burrow-style status and
//! end-to-end consistency windows for every consumer group of one or more clusters, exported on
//! `/metrics`. See README.md for the map of modules.

pub mod accept;
pub mod admin;
pub mod cli;
pub mod collector;
pub mod config;
pub mod consistency;
#[cfg(feature = "demo")]
pub mod demo;
pub mod exposition;
pub mod http;
pub mod kafka;
pub mod lag;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod proxy;
pub mod run;
pub mod status;
pub mod traces;

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
