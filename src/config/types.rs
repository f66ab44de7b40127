//! Values that are checked as they are deserialized, so that a configuration that parsed holds only
//! usable values and nothing is parsed again later: durations, regexes, `host:port` lists, optional
//! addresses, route templates, log filters.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Deserializer};

/// A regex, compiled when the configuration is read.
#[derive(Clone)]
pub struct Pattern(pub regex::Regex);

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        regex::Regex::new(&s)
            .map(Pattern)
            .map_err(|e| serde::de::Error::custom(format!("not a valid regex: {e}")))
    }
}

impl Pattern {
    pub fn is_match(&self, s: &str) -> bool {
        self.0.is_match(s)
    }
}

/// `host:port` (or `[v6]:port`), checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    pub fn parse(s: &str) -> Result<HostPort, String> {
        let s = s.trim();
        let (host, port) = crate::kafka::split_host_port(s).ok_or_else(|| format!("{s:?} is not host:port"))?;
        Ok(HostPort { host, port })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        HostPort::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// `host:port[,host:port...]`, as Kafka clients write `bootstrap.servers` (blanks dropped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Servers(pub Vec<HostPort>);

impl Servers {
    pub fn parse(list: &str) -> Result<Servers, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(HostPort::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(Servers)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each server as `host:port`.
    pub fn addresses(&self) -> Vec<String> {
        self.0.iter().map(|s| s.to_string()).collect()
    }
}

impl fmt::Display for Servers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addresses().join(","))
    }
}

impl<'de> Deserialize<'de> for Servers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Servers::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A log level or `tracing` filter (`info`, `eventscope=debug,warn`), checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLevel(pub String);

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match tracing_subscriber::EnvFilter::try_new(&s) {
            Ok(_) => Ok(LogLevel(s)),
            Err(_) => Err(serde::de::Error::custom(format!(
                "{s:?} is not a level or filter (trace, debug, info, warn, error)"
            ))),
        }
    }
}

/// A route template of the HTTP side (`/orders/{id}`), checked.
impl<'de> Deserialize<'de> for crate::telemetry::route::Template {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        crate::telemetry::route::Template::parse(&s).map_err(|why| serde::de::Error::custom(format!("{s:?}: {why}")))
    }
}

/// A socket address like `0.0.0.0:9464`.
pub fn address<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.parse()
        .map_err(|_| serde::de::Error::custom(format!("{s:?} is not an address like 0.0.0.0:9464")))
}

/// An optional socket address: empty means none (as a flag or variable left empty does).
pub fn optional_address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| serde::de::Error::custom(format!("{s:?} is not an address like 127.0.0.1:15002")))
}

/// An optional `host:port`: empty means none.
pub fn optional_host_port<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HostPort>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Ok(None);
    }
    HostPort::parse(&s)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("{e} like 127.0.0.1:8080")))
}

/// Durations as human strings: `"5s"`, `"250ms"`, `"1m 30s"`.
pub mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("{s:?} is not a duration like \"5s\": {e}")))
    }
}

/// Kafka properties are strings, but `request.timeout.ms = 5000` is accepted too.
pub fn scalar_map<'de, D: Deserializer<'de>>(d: D) -> Result<std::collections::BTreeMap<String, String>, D::Error> {
    let raw = std::collections::BTreeMap::<String, toml::Value>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| match v {
            toml::Value::String(s) => Ok((k, s)),
            toml::Value::Integer(i) => Ok((k, i.to_string())),
            toml::Value::Boolean(b) => Ok((k, b.to_string())),
            toml::Value::Float(f) => Ok((k, f.to_string())),
            other => Err(serde::de::Error::custom(format!(
                "property {k:?} must be a string, not {}",
                other.type_str()
            ))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_and_host_ports_are_checked() {
        let s = Servers::parse(" a:1, [::1]:9092 ,").unwrap();
        assert_eq!(s.addresses(), vec!["a:1", "[::1]:9092"]);
        assert!(Servers::parse("a:1,b").is_err());
        assert!(HostPort::parse("a:0").is_err());
    }
}
