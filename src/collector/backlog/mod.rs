//! One view of backlogs across brokers: what is not yet consumed, how old the oldest of it is, how long
//! it takes to drain, and a Burrow-style status, under the same names for Kafka, RabbitMQ, NATS JetStream
//! and SQS (`eventscope_backlog_*{broker,cluster,destination,consumer}`).
//!
//! Each source (`rabbitmq`, `nats`, `sqs`) polls its broker every `collector.poll_interval` and publishes a
//! [`BrokerSnapshot`]: the common [`Row`]s plus its broker-specific series. Kafka's rows come from the
//! cluster collector's own poll ([`kafka_rows`]). As for Kafka clusters, a source that cannot be read
//! withdraws its snapshot (its series disappear rather than go stale) and sets
//! `eventscope_collector_up{cluster}` to 0; it is read again on the next poll, so it recovers by itself.
//!
//! Status and drain time are computed from the last `collector.status_window` polls of each row
//! ([`Trend`]): the consumer's *progress* (a counter that grows as messages are consumed: RabbitMQ's acks,
//! a JetStream consumer's ack floor, a Kafka group's committed offsets) plays the part of Burrow's
//! committed offset, so the rules are the Kafka ones ([`crate::collector::status`]).

pub mod http;
pub mod nats;
pub mod rabbitmq;
pub mod sqs;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use super::consistency::Histogram;
use super::snapshot::Published;
use super::status::{Observation, Status, Window};
use crate::telemetry::collector::ErrorKind;
use crate::telemetry::contract::Family;

/// The broker a backlog is on: the `broker` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Broker {
    Kafka,
    Rabbitmq,
    Nats,
    Sqs,
}

impl Broker {
    pub fn as_label(self) -> &'static str {
        match self {
            Broker::Kafka => "kafka",
            Broker::Rabbitmq => "rabbitmq",
            Broker::Nats => "nats",
            Broker::Sqs => "sqs",
        }
    }
}

/// One destination (and consumer) in the common view.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The topic, queue or stream.
    pub destination: String,
    /// The group or JetStream consumer; empty for a queue.
    pub consumer: String,
    /// Messages not yet consumed.
    pub messages: u64,
    /// Age of the oldest of them, where it can be known (0 when there are none).
    pub age_seconds: Option<f64>,
    /// Time to consume them at the current net rate; `None` when the backlog is not shrinking.
    pub drain_seconds: Option<f64>,
    pub status: Status,
}

/// A broker-specific sample: a family of the contract, its labels (`cluster` first) and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub family: &'static Family,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// A consistency window histogram measured on a broker other than Kafka (NATS: the ack floor's movement
/// past each message), rendered into `eventscope_consistency_window_seconds` with a `broker` label.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsistencyRow {
    pub destination: String,
    pub consumer: String,
    pub histogram: Histogram,
}

/// The result of one successful poll of one source.
#[derive(Debug, Clone)]
pub struct BrokerSnapshot {
    pub broker: Broker,
    /// The source's `name`: the `cluster` label.
    pub cluster: String,
    pub taken_at_ms: i64,
    pub rows: Vec<Row>,
    pub samples: Vec<Sample>,
    pub consistency: Vec<ConsistencyRow>,
}

/// Why a source's poll failed: sorted into the collector's closed error kinds before it becomes a label.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("unusable answer: {0}")]
    Protocol(String),
    #[error("the broker answered an error: {0}")]
    Broker(String),
    #[error("not authorised: {0}")]
    Authorization(String),
}

impl SourceError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SourceError::Connect(_) => ErrorKind::Connect,
            SourceError::Timeout(_) => ErrorKind::Timeout,
            SourceError::Protocol(_) => ErrorKind::Protocol,
            SourceError::Broker(_) => ErrorKind::Broker,
            SourceError::Authorization(_) => ErrorKind::Authorization,
        }
    }
}

/// The last polls of every row: Burrow-style status and drain time.
pub struct Trend {
    size: usize,
    allowed: u64,
    windows: HashMap<(String, String), Window>,
}

impl Trend {
    pub fn new(size: usize, allowed: u64) -> Trend {
        Trend {
            size,
            allowed,
            windows: HashMap::new(),
        }
    }

    /// Adds one poll of `(destination, consumer)`: `progress` grows as messages are consumed, `consumers`
    /// is `None` where the broker cannot tell. Returns the status and the drain time.
    pub fn observe(
        &mut self,
        key: (&str, &str),
        progress: i64,
        messages: u64,
        consumers: Option<usize>,
        now_ms: i64,
    ) -> (Status, Option<f64>) {
        let size = self.size;
        let w = self
            .windows
            .entry((key.0.to_string(), key.1.to_string()))
            .or_insert_with(|| Window::new(size));
        w.push(Observation {
            offset: progress,
            lag: messages,
            at_ms: now_ms,
        });
        (w.evaluate(self.allowed, consumers), drain_seconds(w))
    }

    /// Forgets rows not seen in the last poll.
    pub fn retain(&mut self, seen: &std::collections::HashSet<(String, String)>) {
        self.windows.retain(|k, _| seen.contains(k));
    }

    /// Forgets everything (the broker was unreachable: its counters may have restarted).
    pub fn clear(&mut self) {
        self.windows.clear();
    }
}

/// Seconds to consume the backlog at the net rate over the window (its first to its last poll): 0 when
/// there is none, `None` when it did not shrink.
pub fn drain_seconds(w: &Window) -> Option<f64> {
    let (first, last) = (w.first()?, w.last()?);
    if last.lag == 0 {
        return Some(0.0);
    }
    let dt = (last.at_ms - first.at_ms) as f64 / 1000.0;
    if dt <= 0.0 || last.lag >= first.lag {
        return None;
    }
    let rate = (first.lag - last.lag) as f64 / dt;
    Some(last.lag as f64 / rate)
}

/// The common rows of a Kafka cluster's poll: per group and topic, the lag summed over partitions, the
/// oldest partition's lag seconds, the topic's status and the drain time.
pub fn kafka_rows(groups: &[super::GroupRow], trend: &mut Trend, now_ms: i64) -> Vec<Row> {
    let mut seen = std::collections::HashSet::new();
    let mut rows = Vec::new();
    for g in groups {
        for t in &g.topics {
            if t.partitions.is_empty() {
                continue;
            }
            let messages: u64 = t.partitions.iter().filter_map(|p| p.lag).sum();
            let committed: i64 = t.partitions.iter().map(|p| p.committed).sum();
            let age = t
                .partitions
                .iter()
                .filter_map(|p| p.lag_seconds)
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
            let (_, drain) = trend.observe((&t.topic, &g.group), committed, messages, g.members, now_ms);
            seen.insert((t.topic.to_string(), g.group.clone()));
            rows.push(Row {
                destination: t.topic.to_string(),
                consumer: g.group.clone(),
                messages,
                age_seconds: age,
                drain_seconds: drain,
                // The group's own evaluation, per partition, as kafka_consumergroup_status reports it.
                status: t.status,
            });
        }
    }
    trend.retain(&seen);
    rows
}

/// What a source does each poll.
pub trait Source: Send + 'static {
    /// Reads the broker once; `now_ms` is the poll's time.
    fn poll(&mut self, now_ms: i64) -> impl std::future::Future<Output = Result<BrokerSnapshot, SourceError>> + Send;
    /// Called when a poll failed: forget what a restarted broker would contradict.
    fn failed(&mut self);
}

/// Polls `source` every `interval` until shutdown, publishing into slot `index` of `shared`.
pub async fn run<S: Source>(
    mut source: S,
    name: String,
    index: usize,
    interval: std::time::Duration,
    shared: Arc<Published>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let m = shared.metrics().clone();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
        let started = Instant::now();
        // A poll never outlives its interval's deadline many times over: every request has a timeout.
        match source.poll(crate::kafka::now_ms()).await {
            Ok(snap) => {
                m.up.with([&name]).set(1);
                m.last_success.with([&name]).set(snap.taken_at_ms as f64 / 1000.0);
                shared.publish_broker(index, Some(Arc::new(snap)));
            }
            Err(e) => {
                m.source_error(&name, "poll", e.kind(), &e);
                m.up.with([&name]).set(0);
                source.failed();
                shared.publish_broker(index, None);
            }
        }
        m.poll_duration.with([&name]).observe(started.elapsed().as_secs_f64());
    }
    tracing::debug!(source = %name, "source stopped");
}

/// Allow and deny lists: empty allow means all.
pub fn allowed(name: &str, allow: &[crate::config::Pattern], deny: &[crate::config::Pattern]) -> bool {
    (allow.is_empty() || allow.iter().any(|r| r.is_match(name))) && !deny.iter().any(|r| r.is_match(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_time_from_the_net_rate() {
        let mut t = Trend::new(3, 0);
        assert_eq!(t.observe(("q", ""), 0, 1000, Some(1), 0).1, None);
        // 1000 -> 800 in 2 s: 100/s, 800 left: 8 s.
        assert_eq!(t.observe(("q", ""), 300, 800, Some(1), 2000).1, Some(8.0));
        // Growing against the window's first poll: no drain time.
        assert_eq!(t.observe(("q", ""), 300, 1200, Some(1), 4000).1, None);
        assert_eq!(t.observe(("q", ""), 2000, 0, Some(1), 6000).1, Some(0.0));
    }

    #[test]
    fn stop_and_stall_as_for_kafka() {
        let mut t = Trend::new(3, 0);
        assert_eq!(t.observe(("q", ""), 5, 10, Some(0), 0).0, Status::Stop);
        let mut t = Trend::new(3, 0);
        for i in 0..3 {
            let (s, _) = t.observe(("q", ""), 5, 10 + i, Some(1), i as i64 * 1000);
            assert_eq!(s, if i < 2 { Status::Ok } else { Status::Stall });
        }
    }
}
