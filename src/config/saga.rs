//! `[[sagas]]`: the business transactions the collector follows from their events (issue 13). The keys
//! are a contract; where the correlation id and the type of an event are found is typed as it is read
//! ([`Source`]), and [`SagaConfig::problems`] checks what spans keys (a type listed twice, a
//! compensation of a step that is not listed).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::types::duration;

/// Where a field of an event is found in its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The record's key.
    Key,
    /// A record header (`header:ce_type`).
    Header(String),
    /// A JSON pointer (RFC 6901) into the record's value (`json:/order/id`).
    Json(String),
    /// The record's topic.
    Topic,
}

/// The forms `correlation` takes.
pub const CORRELATION_FORMS: &[&str] = &["key", "header:NAME", "json:/pointer"];
/// The forms `event_type` takes.
pub const TYPE_FORMS: &[&str] = &["header:NAME", "json:/pointer", "topic"];

impl Source {
    /// Parses `key`, `header:NAME`, `json:/pointer` or `topic`; `allowed` says which forms the key takes.
    pub fn parse(text: &str, allowed: &[&str]) -> Result<Source, String> {
        let source = match text.split_once(':') {
            None if text == "key" => Source::Key,
            None if text == "topic" => Source::Topic,
            Some(("header", name)) if !name.is_empty() => Source::Header(name.to_string()),
            Some(("json", pointer)) => {
                json_pointer(pointer).map_err(|why| format!("{pointer:?} is not a JSON pointer: {why}"))?;
                Source::Json(pointer.to_string())
            }
            _ => return Err(format!("{text:?} is not one of: {}", allowed.join(", "))),
        };
        let form = match source {
            Source::Key => "key",
            Source::Header(_) => "header:NAME",
            Source::Json(_) => "json:/pointer",
            Source::Topic => "topic",
        };
        if allowed.contains(&form) {
            Ok(source)
        } else {
            Err(format!("{text:?}: {form} is not allowed here; one of: {}", allowed.join(", ")))
        }
    }
}

/// RFC 6901: empty (the whole value) or `/`-separated tokens where `~` is only `~0` or `~1`.
fn json_pointer(p: &str) -> Result<(), &'static str> {
    if !p.is_empty() && !p.starts_with('/') {
        return Err("it starts with /");
    }
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err("~ is written ~0, and / inside a name ~1");
        }
    }
    Ok(())
}

fn correlation<'de, D: Deserializer<'de>>(d: D) -> Result<Source, D::Error> {
    Source::parse(&String::deserialize(d)?, CORRELATION_FORMS).map_err(serde::de::Error::custom)
}

fn event_type<'de, D: Deserializer<'de>>(d: D) -> Result<Source, D::Error> {
    Source::parse(&String::deserialize(d)?, TYPE_FORMS).map_err(serde::de::Error::custom)
}

/// At most this many steps (one bit each in an instance).
pub const MAX_STEPS: usize = 64;

/// One saga (collector role).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SagaConfig {
    /// The `saga` label.
    pub name: String,
    /// A `[[clusters]]` name: where its topics are.
    pub cluster: String,
    /// The topics its events are on (read with the collector's own Fetch requests; nothing is committed).
    pub topics: Vec<String>,
    /// Where an event's correlation id is: `key`, `header:NAME` or `json:/pointer` (in the value).
    #[serde(deserialize_with = "correlation")]
    pub correlation: Source,
    /// Where an event's type is: `header:NAME`, `json:/pointer` or `topic` (default: CloudEvents' `ce_type`).
    #[serde(deserialize_with = "event_type")]
    pub event_type: Source,
    pub start: Vec<String>,
    pub steps: Vec<String>,
    pub complete: Vec<String>,
    pub fail: Vec<String>,
    /// Step → the event type that compensates it.
    pub compensations: BTreeMap<String, String>,
    /// An instance not ended by then is stuck.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// A failed instance whose done steps are not all compensated after this is inconsistent.
    #[serde(with = "duration")]
    pub compensation_grace: Duration,
    /// On start (and for partitions taken over from another replica), state is rebuilt from `now - lookback`.
    #[serde(with = "duration")]
    pub lookback: Duration,
    /// Instances held at most; beyond, the oldest are evicted (and counted).
    pub max_in_flight: usize,
    /// Values larger than this are not parsed as JSON (counted as `too_large`).
    pub max_value_bytes: usize,
    /// Empty: this collector reads every partition of the topics. Set: replicas with the same `group`
    /// share the partitions through a Kafka consumer group (range assignment; the topics must be
    /// co-partitioned by the correlation id). Its offsets are never committed.
    pub group: String,
}

impl Default for SagaConfig {
    fn default() -> Self {
        SagaConfig {
            name: String::new(),
            cluster: String::new(),
            topics: Vec::new(),
            correlation: Source::Key,
            event_type: Source::Header("ce_type".to_string()),
            start: Vec::new(),
            steps: Vec::new(),
            complete: Vec::new(),
            fail: Vec::new(),
            compensations: BTreeMap::new(),
            timeout: Duration::from_secs(300),
            compensation_grace: Duration::from_secs(60),
            lookback: Duration::from_secs(3600),
            max_in_flight: 1_000_000,
            max_value_bytes: 1024 * 1024,
            group: String::new(),
        }
    }
}

impl SagaConfig {
    /// What spans keys, as `(key under sagas[i], reason)`; `clusters` are the configured cluster names.
    pub fn problems(&self, clusters: &[&str]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut push = |k: &str, why: String| out.push((k.to_string(), why));
        if self.name.is_empty() {
            push("name", "required (it becomes the `saga` label)".into());
        }
        if self.cluster.is_empty() {
            push("cluster", "required: a [[clusters]] name".into());
        } else if !clusters.contains(&self.cluster.as_str()) {
            push(
                "cluster",
                format!("{:?} is not a [[clusters]] name (known: {})", self.cluster, clusters.join(", ")),
            );
        }
        if self.topics.is_empty() || self.topics.iter().any(String::is_empty) {
            push("topics", "required: the topics the saga's events are on".into());
        }
        if self.start.is_empty() {
            push("start", "required: the event types that start an instance".into());
        }
        if self.complete.is_empty() && self.fail.is_empty() {
            push("complete", "required (or fail): the event types that end an instance".into());
        }
        if self.steps.len() > MAX_STEPS {
            push("steps", format!("at most {MAX_STEPS} steps"));
        }
        let mut seen: HashMap<&str, String> = HashMap::new();
        let listed = [
            ("start", &self.start),
            ("steps", &self.steps),
            ("complete", &self.complete),
            ("fail", &self.fail),
        ];
        let compensations = self.compensations.iter().map(|(step, t)| (format!("compensations.{step}"), t));
        let all = listed
            .iter()
            .flat_map(|(k, v)| v.iter().enumerate().map(move |(i, t)| (format!("{k}[{i}]"), t)))
            .chain(compensations);
        for (key, t) in all {
            if t.is_empty() {
                push(&key, "an event type cannot be empty".into());
            } else if let Some(first) = seen.get(t.as_str()) {
                push(
                    &key,
                    format!("{t:?} is already listed as {first}: a type has one meaning in a saga"),
                );
            } else {
                seen.insert(t, key);
            }
        }
        for step in self.compensations.keys() {
            if !self.steps.contains(step) {
                push(&format!("compensations.{step}"), format!("{step:?} is not one of the saga's steps"));
            }
        }
        for (key, d) in [
            ("timeout", self.timeout),
            ("compensation_grace", self.compensation_grace),
            ("lookback", self.lookback),
        ] {
            if d.is_zero() {
                push(key, "must be more than 0".into());
            }
        }
        if self.max_in_flight == 0 || self.max_in_flight > 100_000_000 {
            push("max_in_flight", "must be between 1 and 100000000".into());
        }
        if self.max_value_bytes < 1024 || self.max_value_bytes > 64 * 1024 * 1024 {
            push("max_value_bytes", "must be between 1 KiB and 64 MiB".into());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_checked() {
        assert_eq!(Source::parse("header:ce_type", TYPE_FORMS), Ok(Source::Header("ce_type".into())));
        assert_eq!(Source::parse("json:/a~1b/0", CORRELATION_FORMS), Ok(Source::Json("/a~1b/0".into())));
        assert!(Source::parse("json:id", TYPE_FORMS).unwrap_err().contains("JSON pointer"));
        assert!(Source::parse("json:/a~2", TYPE_FORMS).unwrap_err().contains("~0"));
        assert!(Source::parse("key", TYPE_FORMS).unwrap_err().contains("not allowed"));
        assert!(Source::parse("topic", CORRELATION_FORMS).unwrap_err().contains("not allowed"));
        assert!(Source::parse("header:", TYPE_FORMS).is_err());
        assert!(Source::parse("value", TYPE_FORMS).is_err());
    }
}
