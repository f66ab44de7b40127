//! A small Kafka client for administrative reads, built on the `kafka-protocol` crate's codecs.
//!
//! The collector needs batched, raw requests that no high-level client exposes at scale: ListGroups on
//! every broker, DescribeGroups and OffsetFetch batched per coordinator, ListOffsets and Fetch batched per
//! partition leader (the approach KMinion takes). [`conn`] is one pipelined broker connection; [`client`]
//! knows the cluster's brokers and negotiates versions.

pub mod batch;
pub mod client;
pub mod conn;
pub mod decode;
pub mod fetch_stream;
pub mod group;
pub mod produce_stream;
pub mod records;
pub mod security;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kafka_protocol::messages::ApiKey;
use kafka_protocol::ResponseError;

pub use client::ClusterClient;
pub use conn::Connection;
pub use security::Security;

/// Everything that can go wrong talking to a broker, typed where it arises. I/O errors keep their source
/// (shared, so that one failure can stand for every request it failed).
#[derive(Debug, Clone, thiserror::Error)]
pub enum KafkaError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: Arc<std::io::Error> },
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    #[error("connection lost: {0}")]
    Io(#[source] Arc<std::io::Error>),
    #[error("malformed data from broker: {0}")]
    Protocol(String),
    #[error("broker does not support {api:?} in a version eventscope speaks")]
    Unsupported { api: ApiKey },
    #[error("not authorized ({0})")]
    Authorization(String),
    #[error("broker error {code}: {name}")]
    Broker { code: i16, name: String },
}

impl KafkaError {
    /// Classifies a non-zero Kafka error code.
    pub fn from_code(code: i16) -> KafkaError {
        let name = match ResponseError::try_from_code(code) {
            Some(e) => format!("{e:?}"),
            None => format!("UNKNOWN_{code}"),
        };
        use ResponseError as R;
        if matches!(
            ResponseError::try_from_code(code),
            Some(R::TopicAuthorizationFailed | R::GroupAuthorizationFailed | R::ClusterAuthorizationFailed | R::SaslAuthenticationFailed)
        ) {
            KafkaError::Authorization(name)
        } else {
            KafkaError::Broker { code, name }
        }
    }

    /// A lost connection, with what was going on.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> KafkaError {
        KafkaError::Io(Arc::new(std::io::Error::new(source.kind(), format!("{}: {source}", what.into()))))
    }

    /// A lost connection without an I/O error of its own (closed, no address to try).
    pub fn closed(why: impl Into<String>) -> KafkaError {
        KafkaError::Io(Arc::new(std::io::Error::other(why.into())))
    }

    /// Whether this is a broker's "not authorized" answer for a topic.
    pub fn is_topic_authorization(&self) -> bool {
        matches!(self, KafkaError::Authorization(name) if name == "TopicAuthorizationFailed")
    }

    /// Whether the connection that produced this error should be dropped and re-dialled.
    pub fn is_connection_fatal(&self) -> bool {
        matches!(
            self,
            KafkaError::Connect { .. } | KafkaError::Io(_) | KafkaError::Timeout(_) | KafkaError::Protocol(_)
        )
    }
}

/// Turns a non-zero Kafka error code into an error; zero into `Ok`.
pub fn check_code(code: i16) -> Result<(), KafkaError> {
    if code == 0 {
        Ok(())
    } else {
        Err(KafkaError::from_code(code))
    }
}

/// Now, in milliseconds since the Unix epoch: the unit of Kafka's record timestamps.
pub fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Splits `host:port` (and `[v6]:port`); `None` if it is not of that form.
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return None;
    }
    Some((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port() {
        assert_eq!(split_host_port("localhost:9092"), Some(("localhost".into(), 9092)));
        assert_eq!(split_host_port("[::1]:9092"), Some(("::1".into(), 9092)));
        assert_eq!(split_host_port("localhost"), None);
        assert_eq!(split_host_port("localhost:0"), None);
        assert_eq!(split_host_port(":9092"), None);
    }

    #[test]
    fn codes_are_classified() {
        assert!(matches!(KafkaError::from_code(29), KafkaError::Authorization(_)));
        assert!(matches!(KafkaError::from_code(16), KafkaError::Broker { code: 16, .. }));
        assert!(check_code(0).is_ok());
    }
}
