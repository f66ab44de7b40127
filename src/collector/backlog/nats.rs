//! NATS JetStream streams and consumers, through the JetStream API with `async-nats` (NATS's own client):
//! the stream list, each stream's consumer list (both paged by the server), and one message read per
//! lagging consumer.
//!
//! - **Backlog** of a consumer: `num_pending + num_ack_pending` (not yet delivered, and delivered but not
//!   acked).
//! - **Age**, measured: the first message after the consumer's ack floor (matching its filter subject) is
//!   read from the stream (`STREAM.MSG.GET`), and its stored time is the age's origin. It is read again
//!   only when the ack floor moves.
//! - **Consistency window**: each poll, the ack floor's movement past messages, like a Kafka group's
//!   commits, observed into `eventscope_consistency_window_seconds{broker="nats"}`. Message times come
//!   from the stream's timeline (its last sequence at each poll, and the messages read for the age), so
//!   a window is accurate to one poll interval, as the collector's Kafka windows.
//! - **Status**: the Kafka rules with the ack floor as the progress. A pull consumer has no members to
//!   count: `num_waiting` (pull requests waiting) stands in for them, and a push consumer bound to a
//!   subscriber counts as one; a consumer with neither is STOP once its floor has not moved for a window.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream;
use futures::{StreamExt, TryStreamExt};

use super::{allowed, Broker, BrokerSnapshot, ConsistencyRow, Row, Sample, Source, SourceError, Trend};
use crate::collector::consistency::{observe_commit, Histogram};
use crate::collector::lag::{age_seconds, Timeline};
use crate::config::{CollectorConfig, NatsConfig};
use crate::telemetry::contract as m;

/// Streams and consumers read per poll at most (each list is paged by the server).
const MAX_STREAMS: usize = 10_000;
const MAX_CONSUMERS: usize = 100_000;
/// Message reads in flight at once.
const CONCURRENCY: usize = 32;

/// One `[[nats]]` entry.
pub struct Nats {
    cfg: NatsConfig,
    timeout: Duration,
    client: Option<async_nats::Client>,
    trend: Trend,
    /// Per stream: its timeline of sequences.
    timelines: HashMap<String, Timeline>,
    /// Per consumer: its ack floor at the last poll and its consistency histogram.
    floors: HashMap<(String, String), (u64, Histogram)>,
    /// Per consumer: the first message after its ack floor, `(floor, message time)`.
    heads: HashMap<(String, String), (u64, i64)>,
}

impl Nats {
    pub fn new(cfg: NatsConfig, settings: &CollectorConfig) -> Nats {
        Nats {
            cfg,
            timeout: settings.request_timeout,
            client: None,
            trend: Trend::new(settings.status_window, settings.allowed_lag),
            timelines: HashMap::new(),
            floors: HashMap::new(),
            heads: HashMap::new(),
        }
    }

    async fn connect(&self) -> Result<async_nats::Client, SourceError> {
        let read = |f: &std::path::Path| {
            std::fs::read_to_string(f)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| SourceError::Authorization(format!("cannot read {}: {e}", f.display())))
        };
        let mut opts = if let Some(creds) = &self.cfg.creds_file {
            async_nats::ConnectOptions::with_credentials_file(creds)
                .await
                .map_err(|e| SourceError::Authorization(format!("{}: {e}", creds.display())))?
        } else if let Some(f) = &self.cfg.token_file {
            async_nats::ConnectOptions::with_token(read(f)?)
        } else if !self.cfg.token.is_empty() {
            async_nats::ConnectOptions::with_token(self.cfg.token.clone())
        } else if !self.cfg.user.is_empty() {
            let password = match &self.cfg.password_file {
                Some(f) => read(f)?,
                None => self.cfg.password.clone(),
            };
            async_nats::ConnectOptions::with_user_and_password(self.cfg.user.clone(), password)
        } else {
            async_nats::ConnectOptions::new()
        };
        opts = opts
            .name(concat!("eventscope/", env!("CARGO_PKG_VERSION")))
            .connection_timeout(self.timeout)
            .request_timeout(Some(self.timeout))
            // The client reconnects by itself; a poll while it is away fails fast and withdraws.
            .retry_on_initial_connect()
            .max_reconnects(None);
        let servers: Vec<String> = self.cfg.servers.clone();
        let client = tokio::time::timeout(self.timeout, opts.connect(servers))
            .await
            .map_err(|_| SourceError::Timeout(self.timeout))?
            .map_err(|e| SourceError::Connect(e.to_string()))?;
        // Retrying the first connection returns at once: give it the timeout to come up.
        let deadline = tokio::time::Instant::now() + self.timeout;
        while client.connection_state() != async_nats::connection::State::Connected && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(client)
    }

    fn context(&self, client: async_nats::Client) -> jetstream::Context {
        if self.cfg.domain.is_empty() {
            jetstream::new(client)
        } else {
            jetstream::with_domain(client, &self.cfg.domain)
        }
    }
}

/// A consumer's view in one poll.
struct Seen {
    stream: String,
    name: String,
    filter: String,
    pending: u64,
    ack_pending: u64,
    redelivered: u64,
    waiting: u64,
    floor: u64,
    members: usize,
}

/// Sorts a JetStream API error into a kind, by what the client says of it (its error kinds differ per
/// call; their text and sources tell them apart).
fn api_error(e: impl std::fmt::Display + std::fmt::Debug, timeout: Duration) -> SourceError {
    let s = format!("{e}: {e:?}");
    if s.contains("timed out") || s.contains("TimedOut") || s.contains("timeout") {
        SourceError::Timeout(timeout)
    } else if s.contains("authorization") || s.contains("permissions") {
        SourceError::Authorization(s)
    } else if s.contains("no responders") || s.contains("disconnected") {
        SourceError::Connect(s)
    } else if ["decode", "deserial", "Deserial", "JSON", "json", "parse", "EOF", "expected"]
        .iter()
        .any(|w| s.contains(w))
    {
        SourceError::Protocol(s)
    } else {
        SourceError::Broker(s)
    }
}

impl Source for Nats {
    async fn poll(&mut self, now_ms: i64) -> Result<BrokerSnapshot, SourceError> {
        if self.client.is_none() {
            self.client = Some(self.connect().await?);
        }
        let client = self.client.clone().ok_or_else(|| SourceError::Connect("no client".into()))?;
        if client.connection_state() != async_nats::connection::State::Connected {
            return Err(SourceError::Connect("not connected (reconnecting)".into()));
        }
        let js = self.context(client);
        let deadline = self.timeout;
        let infos: Vec<jetstream::stream::Info> = tokio::time::timeout(deadline, js.streams().take(MAX_STREAMS).try_collect())
            .await
            .map_err(|_| SourceError::Timeout(deadline))?
            .map_err(|e| api_error(e, deadline))?;
        let cluster = self.cfg.name.clone();
        let mut samples = Vec::new();
        let mut consumers: Vec<Seen> = Vec::new();
        let mut streams_seen = HashSet::new();
        for info in infos {
            let name = info.config.name.clone();
            if !allowed(&name, &self.cfg.stream_allow, &self.cfg.stream_deny) {
                continue;
            }
            let st = &info.state;
            let labels = vec![(m::L_CLUSTER, cluster.clone()), (m::L_DESTINATION, name.clone())];
            for (family, v) in [
                (&m::NATS_STREAM_MESSAGES, st.messages),
                (&m::NATS_STREAM_BYTES, st.bytes),
                (&m::NATS_STREAM_FIRST_SEQ, st.first_sequence),
                (&m::NATS_STREAM_LAST_SEQ, st.last_sequence),
            ] {
                samples.push(Sample {
                    family,
                    labels: labels.clone(),
                    value: v as f64,
                });
            }
            let timeline = self.timelines.entry(name.clone()).or_default();
            timeline.observe_log_end(st.last_sequence as i64 + 1, now_ms);
            if st.messages > 0 {
                timeline.observe_exact(st.last_sequence as i64, nanos_ms(st.last_timestamp.unix_timestamp_nanos()));
            }
            streams_seen.insert(name.clone());
            let stream = js.get_stream_no_info(&name).await.map_err(|e| api_error(e, deadline))?;
            let list: Vec<jetstream::consumer::Info> = tokio::time::timeout(deadline, stream.consumers().take(MAX_CONSUMERS).try_collect())
                .await
                .map_err(|_| SourceError::Timeout(deadline))?
                .map_err(|e| api_error(e, deadline))?;
            for c in list {
                if !allowed(&c.name, &self.cfg.consumer_allow, &self.cfg.consumer_deny) {
                    continue;
                }
                let filter = if !c.config.filter_subject.is_empty() {
                    c.config.filter_subject.clone()
                } else if c.config.filter_subjects.len() == 1 {
                    c.config.filter_subjects[0].clone()
                } else {
                    ">".to_string()
                };
                let members = if c.config.deliver_subject.is_some() {
                    usize::from(c.push_bound)
                } else {
                    c.num_waiting
                };
                consumers.push(Seen {
                    stream: name.clone(),
                    name: c.name,
                    filter,
                    pending: c.num_pending,
                    ack_pending: c.num_ack_pending as u64,
                    redelivered: c.num_redelivered as u64,
                    waiting: c.num_waiting as u64,
                    floor: c.ack_floor.stream_sequence,
                    members,
                });
            }
        }

        // The first message after each lagging consumer's ack floor, where not already known.
        let wanted: Vec<(String, String, String, u64)> = consumers
            .iter()
            .filter(|c| c.pending + c.ack_pending > 0)
            .filter(|c| {
                self.heads
                    .get(&(c.stream.clone(), c.name.clone()))
                    .is_none_or(|(f, _)| *f != c.floor)
            })
            .map(|c| (c.stream.clone(), c.name.clone(), c.filter.clone(), c.floor))
            .collect();
        let js_ref = &js;
        let read: Vec<_> = futures::stream::iter(wanted)
            .map(|(stream, name, filter, floor)| async move {
                let r = async {
                    let s = js_ref.get_stream_no_info(&stream).await.map_err(|e| api_error(e, deadline))?;
                    s.get_first_raw_message_by_subject(&filter, floor + 1)
                        .await
                        .map_err(|e| api_error(e, deadline))
                };
                let r = tokio::time::timeout(deadline, r)
                    .await
                    .unwrap_or(Err(SourceError::Timeout(deadline)));
                (stream, name, floor, r)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (stream, name, floor, r) in read {
            match r {
                Ok(msg) => {
                    let ts = nanos_ms(msg.time.unix_timestamp_nanos());
                    if let Some(t) = self.timelines.get_mut(&stream) {
                        t.observe_exact(msg.sequence as i64, ts);
                    }
                    self.heads.insert((stream, name), (floor, ts));
                }
                // Deleted or expired since: the age stays unknown this poll; other consumers carry on.
                Err(e) => tracing::debug!(%stream, consumer = %name, error = %e, "cannot read the message after the ack floor"),
            }
        }

        let mut rows = Vec::with_capacity(consumers.len());
        let mut consistency = Vec::with_capacity(consumers.len());
        let mut seen = HashSet::new();
        for c in consumers {
            let key = (c.stream.clone(), c.name.clone());
            let messages = c.pending + c.ack_pending;
            let age = if messages == 0 {
                Some(0.0)
            } else {
                self.heads
                    .get(&key)
                    .filter(|(f, _)| *f == c.floor)
                    .map(|(_, ts)| age_seconds(now_ms, *ts))
            };
            let timeline = self.timelines.get(&c.stream);
            let (prev, hist) = self.floors.entry(key.clone()).or_insert_with(|| (c.floor, Histogram::default()));
            if c.floor > *prev {
                if let Some(t) = timeline {
                    observe_commit(hist, *prev as i64 + 1, c.floor as i64 + 1, now_ms, |s| {
                        t.estimate(s).unwrap_or(now_ms)
                    });
                }
            }
            *prev = c.floor;
            let (status, drain) = self
                .trend
                .observe((&c.stream, &c.name), c.floor as i64, messages, Some(c.members), now_ms);
            let labels = vec![
                (m::L_CLUSTER, cluster.clone()),
                (m::L_DESTINATION, c.stream.clone()),
                (m::L_CONSUMER, c.name.clone()),
            ];
            for (family, v) in [
                (&m::NATS_PENDING, c.pending),
                (&m::NATS_ACK_PENDING, c.ack_pending),
                (&m::NATS_REDELIVERED, c.redelivered),
                (&m::NATS_WAITING, c.waiting),
            ] {
                samples.push(Sample {
                    family,
                    labels: labels.clone(),
                    value: v as f64,
                });
            }
            consistency.push(ConsistencyRow {
                destination: c.stream.clone(),
                consumer: c.name.clone(),
                histogram: hist.clone(),
            });
            rows.push(Row {
                destination: c.stream,
                consumer: c.name,
                messages,
                age_seconds: age,
                drain_seconds: drain,
                status,
            });
            seen.insert(key);
        }
        self.trend.retain(&seen);
        self.floors.retain(|k, _| seen.contains(k));
        self.heads.retain(|k, _| seen.contains(k));
        self.timelines.retain(|s, _| streams_seen.contains(s));
        // Each stream's timeline is needed from its slowest consumer's floor on (one pass over the floors).
        let mut lowest: HashMap<&str, u64> = HashMap::new();
        for ((stream, _), (floor, _)) in &self.floors {
            let l = lowest.entry(stream.as_str()).or_insert(*floor);
            *l = (*l).min(*floor);
        }
        for (stream, t) in self.timelines.iter_mut() {
            if let Some(f) = lowest.get(stream.as_str()) {
                t.prune_below(*f as i64);
            }
        }
        Ok(BrokerSnapshot {
            broker: Broker::Nats,
            cluster,
            taken_at_ms: now_ms,
            rows,
            samples,
            consistency,
        })
    }

    fn failed(&mut self) {
        // The client keeps reconnecting by itself; what it measured stays valid (sequences persist).
        self.heads.clear();
    }
}

fn nanos_ms(n: i128) -> i64 {
    (n / 1_000_000).clamp(0, i64::MAX as i128) as i64
}
