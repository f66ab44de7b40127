//! The sidecar role, in the application's pod: a Kafka protocol proxy ([`kafka`]) and an HTTP reverse
//! proxy ([`http`]), each measuring in the data path and never failing the application's traffic because
//! of a measurement.

pub mod http;
pub mod kafka;
