//! RabbitMQ queues through the management API: `GET /api/queues` per vhost and poll, cut to the columns
//! used, as rabbitmq_exporter reads it. The first request is a page of `page_size`; if it is the only
//! page, that is all. The API lists and sorts every queue for each page it serves, so a page costs
//! nearly as much as an unpaged answer (10,000 queues on 2 cores: 20 pages 5-7 s in turn, one answer
//! 2 s, benches/broker_scale.rs): up to `max_unpaged_queues` the rest is read in one unpaged answer,
//! beyond it in pages, `concurrency` at a time on their own kept-alive connections (RabbitMQ serves them
//! on its schedulers in parallel), so that no single answer grows with the cluster.
//!
//! - **Backlog**: `messages_ready + messages_unacknowledged` (delivered but not acked is not consumed).
//! - **Age** of the oldest message: `now − head_message_timestamp` where the broker gives it (classic
//!   queues, publishers that set the AMQP `timestamp` property; whole seconds; it is the head of the
//!   *ready* messages, so messages a consumer holds unacked may be older). Elsewhere it is interpolated on
//!   the queue's publish-count timeline, as the Kafka fallback interpolates on log-end offsets: the oldest
//!   unconsumed message is number `published − backlog`, and its publish time lies between the two polls
//!   whose counts bracket it, so the value is accurate to one poll interval plus the management
//!   statistics' own delay (`collect_statistics_interval`, 5 s by default), for a FIFO queue. It cannot be
//!   known, and is a lower bound, for messages published before the first poll or before a statistics
//!   reset (a node restart), and it is wrong for queues that are not FIFO (priorities, requeues after the
//!   head moved on, per-message TTL that drops from the middle).
//! - **Status**: the Kafka rules with the queue's acks (`ack + deliver_no_ack`) as the progress and its
//!   `consumers` as the members: a backlog with no consumer is STOP, consumers that ack nothing for a
//!   whole window STALL.

use std::collections::{HashMap, HashSet};

use futures::future::try_join_all;
use serde::Deserialize;

use super::http::Client;
use super::{allowed, Broker, BrokerSnapshot, Row, Sample, Source, SourceError, Trend};
use crate::collector::lag::{age_seconds, Timeline};
use crate::config::{CollectorConfig, HttpBase, RabbitmqConfig};
use crate::telemetry::contract as m;

/// Pages read per vhost and poll at most: 5,000,000 queues at 500 a page.
const MAX_PAGES: u64 = 10_000;

const COLUMNS: &str = "name,vhost,type,messages_ready,messages_unacknowledged,consumers,consumer_utilisation,\
head_message_timestamp,message_stats.publish,message_stats.deliver_get,message_stats.ack,\
message_stats.deliver_no_ack,message_stats.redeliver";

#[derive(Debug, Deserialize)]
struct Page {
    #[serde(default)]
    items: Vec<Queue>,
    #[serde(default)]
    page_count: u64,
    /// Queues in the listing (after the API's own filters, none here).
    #[serde(default)]
    filtered_count: u64,
}

#[derive(Debug, Deserialize)]
struct Queue {
    name: String,
    vhost: String,
    #[serde(default)]
    messages_ready: Option<u64>,
    #[serde(default)]
    messages_unacknowledged: Option<u64>,
    #[serde(default)]
    consumers: Option<u64>,
    #[serde(default)]
    consumer_utilisation: Option<f64>,
    #[serde(default)]
    head_message_timestamp: Option<i64>,
    #[serde(default)]
    message_stats: Option<Stats>,
}

#[derive(Debug, Default, Deserialize)]
struct Stats {
    #[serde(default)]
    publish: Option<u64>,
    #[serde(default)]
    deliver_get: Option<u64>,
    #[serde(default)]
    ack: Option<u64>,
    #[serde(default)]
    deliver_no_ack: Option<u64>,
    #[serde(default)]
    redeliver: Option<u64>,
}

/// One `[[rabbitmq]]` entry.
pub struct Rabbitmq {
    cfg: RabbitmqConfig,
    /// `concurrency` connections; the first also reads each vhost's first page.
    clients: Vec<Client>,
    trend: Trend,
    timelines: HashMap<String, Timeline>,
}

impl Rabbitmq {
    /// `cfg.url` was checked when the configuration was read.
    pub fn new(cfg: RabbitmqConfig, settings: &CollectorConfig) -> Result<Rabbitmq, String> {
        let base = HttpBase::parse(&cfg.url)?;
        let clients = (0..cfg.concurrency.max(1))
            .map(|_| {
                Client::new(
                    base.clone(),
                    &cfg.username,
                    &cfg.password,
                    settings.request_timeout,
                    settings.max_response_bytes,
                )
            })
            .collect();
        Ok(Rabbitmq {
            trend: Trend::new(settings.status_window, settings.allowed_lag),
            timelines: HashMap::new(),
            cfg,
            clients,
        })
    }

    fn refresh_credentials(&mut self) -> Result<(), SourceError> {
        if let Some(f) = &self.cfg.password_file {
            let password =
                std::fs::read_to_string(f).map_err(|e| SourceError::Authorization(format!("cannot read {}: {e}", f.display())))?;
            for c in &mut self.clients {
                c.set_credentials(&self.cfg.username, password.trim_end_matches(['\n', '\r']));
            }
        }
        Ok(())
    }

    async fn queues(&mut self) -> Result<Vec<Queue>, SourceError> {
        let scopes: Vec<String> = if self.cfg.vhosts.is_empty() {
            vec![String::new()]
        } else {
            self.cfg.vhosts.iter().map(|v| format!("/{}", encode(v))).collect()
        };
        let mut out = Vec::new();
        for scope in scopes {
            let path = |page: u64| format!("/api/queues{scope}?page={page}&page_size={}&columns={COLUMNS}", self.cfg.page_size);
            let (first, rest) = self
                .clients
                .split_first_mut()
                .ok_or_else(|| SourceError::Connect("no connection".into()))?;
            let p = read_page(first, &path(1)).await?;
            let pages = p.page_count.min(MAX_PAGES);
            if pages <= 1 {
                out.push(p.items);
                continue;
            }
            if p.filtered_count <= self.cfg.max_unpaged_queues {
                let path = format!("/api/queues{scope}?columns={COLUMNS}");
                let body = first.get(&path).await?;
                out.push(serde_json::from_slice(&body).map_err(|e| SourceError::Protocol(format!("{path}: {e}")))?);
                continue;
            }
            out.push(p.items);
            // Pages 2..=pages, dealt round-robin to the connections (the first one included), each
            // connection reading its share in turn.
            let n = rest.len() as u64 + 1;
            let shares = std::iter::once(first).chain(rest.iter_mut()).enumerate().map(|(i, client)| {
                let path = &path;
                async move {
                    let mut items = Vec::new();
                    let mut page = 2 + i as u64;
                    while page <= pages {
                        items.push(read_page(client, &path(page)).await?.items);
                        page += n;
                    }
                    Ok::<_, SourceError>(items)
                }
            });
            out.extend(try_join_all(shares).await?.into_iter().flatten());
        }
        Ok(out
            .into_iter()
            .flatten()
            .filter(|q| allowed(&q.name, &self.cfg.queue_allow, &self.cfg.queue_deny))
            .collect())
    }
}

async fn read_page(client: &mut Client, path: &str) -> Result<Page, SourceError> {
    let body = client.get(path).await?;
    serde_json::from_slice(&body).map_err(|e| SourceError::Protocol(format!("{path}: {e}")))
}

impl Source for Rabbitmq {
    async fn poll(&mut self, now_ms: i64) -> Result<BrokerSnapshot, SourceError> {
        self.refresh_credentials()?;
        let queues = self.queues().await?;
        let cluster = self.cfg.name.clone();
        let mut rows = Vec::with_capacity(queues.len());
        let mut samples = Vec::with_capacity(queues.len() * 8);
        let mut seen = HashSet::with_capacity(queues.len());
        for q in queues {
            // A queue created since the statistics' last refresh has no counts yet: it is left out, not
            // reported as empty.
            let (Some(ready), Some(unacked)) = (q.messages_ready, q.messages_unacknowledged) else {
                continue;
            };
            let destination = destination(&q.vhost, &q.name);
            // Pages are not one snapshot: a queue created or deleted between two of them moves the
            // others across a page boundary, so one may be read twice (and one missed until next poll).
            if !seen.insert((destination.clone(), String::new())) {
                continue;
            }
            let messages = ready + unacked;
            // A queue with counts but no `message_stats` has had nothing published since the statistics
            // began: the count is 0, and that point lets the first messages be placed between two polls.
            let stats = q.message_stats.unwrap_or(Stats {
                publish: Some(0),
                ..Stats::default()
            });
            if let Some(published) = stats.publish {
                self.timelines
                    .entry(destination.clone())
                    .or_default()
                    .observe_log_end(published as i64, now_ms);
            }
            let oldest = stats.publish.map(|p| (p as i64 - messages as i64).max(0));
            let age_seconds = if messages == 0 {
                Some(0.0)
            } else if let (Some(ts), true) = (q.head_message_timestamp, ready > 0) {
                Some(age_seconds(now_ms, ts.saturating_mul(1000)))
            } else {
                oldest
                    .and_then(|o| self.timelines.get(&destination)?.estimate(o))
                    .map(|ts| age_seconds(now_ms, ts))
            };
            if let (Some(o), Some(t)) = (oldest, self.timelines.get_mut(&destination)) {
                t.prune_below(o);
            }
            let consumed = stats.ack.unwrap_or(0) + stats.deliver_no_ack.unwrap_or(0);
            let consumers = q.consumers.unwrap_or(0);
            let (status, drain_seconds) =
                self.trend
                    .observe((&destination, ""), consumed as i64, messages, Some(consumers as usize), now_ms);
            let labels = || vec![(m::L_CLUSTER, cluster.clone()), (m::L_DESTINATION, destination.clone())];
            let mut sample = |family: &'static m::Family, value: f64| {
                samples.push(Sample {
                    family,
                    labels: labels(),
                    value,
                })
            };
            sample(&m::RABBITMQ_READY, ready as f64);
            sample(&m::RABBITMQ_UNACKED, unacked as f64);
            sample(&m::RABBITMQ_CONSUMERS, consumers as f64);
            if let Some(u) = q.consumer_utilisation {
                sample(&m::RABBITMQ_UTILISATION, u);
            }
            for (family, v) in [
                (&m::RABBITMQ_PUBLISHED, stats.publish),
                (&m::RABBITMQ_DELIVERED, stats.deliver_get),
                (&m::RABBITMQ_ACKED, stats.ack.map(|a| a + stats.deliver_no_ack.unwrap_or(0))),
                (&m::RABBITMQ_REDELIVERED, stats.redeliver),
            ] {
                if let Some(v) = v {
                    sample(family, v as f64);
                }
            }
            rows.push(Row {
                destination,
                consumer: String::new(),
                messages,
                age_seconds,
                drain_seconds,
                status,
            });
        }
        self.trend.retain(&seen);
        self.timelines.retain(|d, _| seen.contains(&(d.clone(), String::new())));
        Ok(BrokerSnapshot {
            broker: Broker::Rabbitmq,
            cluster,
            taken_at_ms: now_ms,
            rows,
            samples,
            consistency: Vec::new(),
        })
    }

    fn failed(&mut self) {
        // A node that went away may come back with its statistics reset.
        for c in &mut self.clients {
            c.reset();
        }
        self.trend.clear();
        self.timelines.clear();
    }
}

/// The `destination` label of a queue: its name, prefixed with its vhost outside the default one.
pub fn destination(vhost: &str, queue: &str) -> String {
    if vhost == "/" {
        queue.to_string()
    } else {
        format!("{vhost}/{queue}")
    }
}

/// Percent-encodes a path segment (a vhost name: `/` is `%2F`).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vhosts_are_encoded() {
        assert_eq!(encode("/"), "%2F");
        assert_eq!(encode("prod orders"), "prod%20orders");
        assert_eq!(destination("/", "orders"), "orders");
        assert_eq!(destination("prod", "orders"), "prod/orders");
    }

    #[test]
    fn a_page_with_missing_and_null_fields_parses() {
        let p: Page = serde_json::from_str(
            r#"{"items":[{"name":"q","vhost":"/","messages_ready":3,"messages_unacknowledged":1,"consumer_utilisation":null,
            "head_message_timestamp":null,"message_stats":{"publish":10}},{"name":"new","vhost":"/"}],"page_count":1}"#,
        )
        .unwrap();
        assert_eq!(p.items.len(), 2);
        assert_eq!(p.items[0].message_stats.as_ref().unwrap().publish, Some(10));
        assert!(p.items[1].messages_ready.is_none());
    }
}
