//! Prometheus text exposition of the collection snapshots.
//!
//! At 10,000 groups the snapshot is hundreds of thousands of series, so rendering is built for it: each
//! family's `# HELP`/`# TYPE` once, every label set escaped once per group and topic and reused for all its
//! lines, integers through `itoa`. The result is rendered once per new snapshot and shared by every scrape
//! as `Bytes`, without a copy.

use std::sync::Arc;

use bytes::Bytes;

use super::backlog::{Broker, BrokerSnapshot, Row};
use super::consistency::Histogram;
use super::snapshot::{GroupTopicRow, Snapshot};
use super::status::Status;
use crate::telemetry::contract::{self as m, Family};
use crate::telemetry::text::{escape_into as escaped, label_set, write_header, write_value};

struct Writer {
    out: Vec<u8>,
    ints: itoa::Buffer,
}

impl Writer {
    fn header(&mut self, f: &Family) {
        let mut s = String::new();
        write_header(&mut s, f);
        self.out.extend_from_slice(s.as_bytes());
    }

    /// `name{labels[,extra]} value\n`
    fn sample(&mut self, name: &str, suffix: &str, labels: &[u8], extra: Option<(&str, &str)>, value: Value) {
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(suffix.as_bytes());
        self.out.push(b'{');
        self.out.extend_from_slice(labels);
        if let Some((k, v)) = extra {
            self.out.push(b',');
            self.out.extend_from_slice(k.as_bytes());
            self.out.extend_from_slice(b"=\"");
            escaped(&mut self.out, v);
            self.out.push(b'"');
        }
        self.out.extend_from_slice(b"} ");
        match value {
            Value::Int(i) => self.out.extend_from_slice(self.ints.format(i).as_bytes()),
            Value::Float(f) => {
                let mut s = String::new();
                write_value(&mut s, f);
                self.out.extend_from_slice(s.as_bytes());
            }
        }
        self.out.push(b'\n');
    }
}

#[derive(Clone, Copy)]
enum Value {
    Int(i64),
    Float(f64),
}

/// Label sets of one snapshot, escaped once.
struct Labels {
    /// Per group: `cluster,consumergroup`.
    group: Vec<Vec<u8>>,
    /// Per group and topic: `cluster,consumergroup,topic`.
    group_topic: Vec<Vec<Vec<u8>>>,
    /// Per topic row: `cluster,topic`.
    topic: Vec<Vec<u8>>,
}

/// The `source` label of the collector's group series (the sidecar's are `sidecar`).
const SOURCE: &str = "collector";

fn labels_of(s: &Snapshot) -> Labels {
    let c = s.cluster.as_str();
    Labels {
        group: s
            .groups
            .iter()
            .map(|g| label_set(&[(m::L_CLUSTER, c), (m::L_GROUP, &g.group), (m::L_SOURCE, SOURCE)]))
            .collect(),
        group_topic: s
            .groups
            .iter()
            .map(|g| {
                g.topics
                    .iter()
                    .map(|t| {
                        label_set(&[
                            (m::L_CLUSTER, c),
                            (m::L_GROUP, &g.group),
                            (m::L_TOPIC, &t.topic),
                            (m::L_SOURCE, SOURCE),
                        ])
                    })
                    .collect()
            })
            .collect(),
        topic: s
            .topics
            .iter()
            .map(|t| label_set(&[(m::L_CLUSTER, c), (m::L_TOPIC, &t.topic)]))
            .collect(),
    }
}

/// Renders snapshots, each family once with the series of every cluster and broker.
pub fn render(snaps: &[Arc<Snapshot>], brokers: &[Arc<BrokerSnapshot>]) -> Bytes {
    if snaps.is_empty() && brokers.is_empty() {
        // No collector in this process (the sidecar role), or nothing collected: no collection families.
        return Bytes::new();
    }
    let labels: Vec<Labels> = snaps.iter().map(|s| labels_of(s)).collect();
    let size_hint: usize = snaps
        .iter()
        .map(|s| s.groups.iter().map(|g| g.topics.len() * 6000).sum::<usize>() + 4096)
        .sum();
    let mut w = Writer {
        out: Vec::with_capacity(size_hint),
        ints: itoa::Buffer::new(),
    };
    let bucket_bounds: Vec<String> = m::CONSISTENCY_BUCKETS
        .iter()
        .map(|b| b.to_string())
        .chain(["+Inf".to_string()])
        .collect();
    let mut pbuf = itoa::Buffer::new();
    for fam in m::SNAPSHOT_FAMILIES {
        w.header(fam);
        let n = fam.name;
        for (s, l) in snaps.iter().zip(&labels) {
            if n == m::GROUP_MEMBERS.name {
                for (g, gl) in s.groups.iter().zip(&l.group) {
                    if let Some(members) = g.members {
                        w.sample(n, "", gl, None, Value::Int(members as i64));
                    }
                }
            } else if n == m::TOPIC_PARTITIONS.name {
                for (t, tl) in s.topics.iter().zip(&l.topic) {
                    w.sample(n, "", tl, None, Value::Int(t.partitions.len() as i64));
                }
            } else if n == m::TOPIC_SKEW.name {
                for (t, tl) in s.topics.iter().zip(&l.topic) {
                    if let Some(v) = t.skew {
                        w.sample(n, "", tl, None, Value::Float(v));
                    }
                }
            } else if n == m::TOPIC_CURRENT_OFFSET.name || n == m::TOPIC_OLDEST_OFFSET.name {
                let newest = n == m::TOPIC_CURRENT_OFFSET.name;
                for (t, tl) in s.topics.iter().zip(&l.topic) {
                    for (p, oldest, end) in &t.partitions {
                        if let Some(v) = if newest { end } else { oldest } {
                            w.sample(n, "", tl, Some((m::L_PARTITION, pbuf.format(*p))), Value::Int(*v));
                        }
                    }
                }
            } else {
                for (g, gtl) in s.groups.iter().zip(&l.group_topic) {
                    for (t, tl) in g.topics.iter().zip(gtl) {
                        group_topic_family(&mut w, fam, t, tl, &bucket_bounds, &mut pbuf);
                    }
                }
            }
        }
        if n == m::CONSISTENCY_WINDOW.name {
            // Other brokers' windows (NATS), in the same family: the Kafka labels plus `broker`.
            for b in brokers {
                for c in &b.consistency {
                    let labels = label_set(&[
                        (m::L_CLUSTER, &b.cluster),
                        (m::L_GROUP, &c.consumer),
                        (m::L_TOPIC, &c.destination),
                        (m::L_SOURCE, SOURCE),
                        (m::L_BROKER, b.broker.as_label()),
                    ]);
                    histogram(&mut w, n, &labels, &c.histogram, &bucket_bounds);
                }
            }
        }
    }
    backlog_families(&mut w, snaps, brokers);
    for fam in m::BROKER_FAMILIES {
        w.header(fam);
        for b in brokers {
            for sample in b.samples.iter().filter(|s| s.family.name == fam.name) {
                let pairs: Vec<(&str, &str)> = sample.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                w.sample(fam.name, "", &label_set(&pairs), None, Value::Float(sample.value));
            }
        }
    }
    Bytes::from(w.out)
}

/// `eventscope_backlog_*`: Kafka's groups from the cluster snapshots, then every other broker's rows.
fn backlog_families(w: &mut Writer, snaps: &[Arc<Snapshot>], brokers: &[Arc<BrokerSnapshot>]) {
    let kafka = snaps.iter().map(|s| (Broker::Kafka, s.cluster.as_str(), &s.backlog));
    let others = brokers.iter().map(|b| (b.broker, b.cluster.as_str(), &b.rows));
    let all: Vec<(Broker, &str, &Vec<Row>)> = kafka.chain(others).collect();
    let labels: Vec<Vec<Vec<u8>>> = all
        .iter()
        .map(|(broker, cluster, rows)| {
            rows.iter()
                .map(|r| {
                    label_set(&[
                        (m::L_BROKER, broker.as_label()),
                        (m::L_CLUSTER, cluster),
                        (m::L_DESTINATION, &r.destination),
                        (m::L_CONSUMER, &r.consumer),
                    ])
                })
                .collect()
        })
        .collect();
    for fam in m::BACKLOG_FAMILIES {
        w.header(fam);
        let n = fam.name;
        for ((_, _, rows), ls) in all.iter().zip(&labels) {
            for (r, l) in rows.iter().zip(ls) {
                if n == m::BACKLOG_STATUS.name {
                    for st in Status::ALL {
                        w.sample(n, "", l, Some((m::L_STATUS, st.as_label())), Value::Int((st == r.status) as i64));
                    }
                    continue;
                }
                let v = if n == m::BACKLOG_MESSAGES.name {
                    Some(r.messages as f64)
                } else if n == m::BACKLOG_AGE.name {
                    r.age_seconds
                } else {
                    r.drain_seconds
                };
                if let Some(v) = v {
                    w.sample(n, "", l, None, Value::Float(v));
                }
            }
        }
    }
}

fn histogram(w: &mut Writer, n: &str, labels: &[u8], h: &Histogram, bucket_bounds: &[String]) {
    for (bound, cum) in bucket_bounds.iter().zip(h.cumulative()) {
        w.sample(n, "_bucket", labels, Some(("le", bound)), Value::Int(cum as i64));
    }
    w.sample(n, "_sum", labels, None, Value::Float(h.sum));
    w.sample(n, "_count", labels, None, Value::Int(h.count as i64));
}

fn group_topic_family(w: &mut Writer, fam: &Family, t: &GroupTopicRow, tl: &[u8], bucket_bounds: &[String], pbuf: &mut itoa::Buffer) {
    let n = fam.name;
    if n == m::GROUP_STATUS.name {
        for st in Status::ALL {
            w.sample(n, "", tl, Some((m::L_STATUS, st.as_label())), Value::Int((st == t.status) as i64));
        }
    } else if n == m::GROUP_LAG_SUM.name || n == m::GROUP_CURRENT_OFFSET_SUM.name {
        if t.partitions.is_empty() {
            return;
        }
        let v = if n == m::GROUP_LAG_SUM.name {
            t.partitions.iter().filter_map(|p| p.lag).sum::<u64>() as i64
        } else {
            t.partitions.iter().map(|p| p.committed).sum::<i64>()
        };
        w.sample(n, "", tl, None, Value::Int(v));
    } else if n == m::CONSISTENCY_WINDOW.name {
        histogram(w, n, tl, &t.consistency, bucket_bounds);
    } else if n == m::GROUP_LAG_SKEW.name {
        if let Some(v) = super::skew(t.partitions.iter().filter_map(|p| p.lag.map(|l| l as f64))) {
            w.sample(n, "", tl, None, Value::Float(v));
        }
    } else {
        for p in &t.partitions {
            let v = if n == m::GROUP_LAG.name {
                p.lag.map(|l| Value::Int(l as i64))
            } else if n == m::GROUP_LAG_SECONDS.name {
                p.lag_seconds.map(Value::Float)
            } else {
                Some(Value::Int(p.committed))
            };
            if let Some(v) = v {
                w.sample(n, "", tl, Some((m::L_PARTITION, pbuf.format(p.partition))), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::snapshot::{GroupRow, PartitionRow, TopicRow};
    use super::*;

    #[test]
    fn renders_every_family_once_with_escaped_labels() {
        let mut h = Histogram::default();
        h.observe_n(0.08, 3);
        let snap = |cluster: &str| {
            Arc::new(Snapshot {
                cluster: cluster.into(),
                taken_at_ms: 0,
                topics: vec![TopicRow {
                    topic: "orders".into(),
                    skew: Some(1.25),
                    partitions: vec![(0, Some(0), Some(10))],
                }],
                groups: vec![GroupRow {
                    group: "read\"model".into(),
                    members: Some(2),
                    topics: vec![GroupTopicRow {
                        topic: "orders".into(),
                        status: Status::Warn,
                        partitions: vec![PartitionRow {
                            partition: 0,
                            committed: 4,
                            lag: Some(6),
                            lag_seconds: Some(1.5),
                        }],
                        consistency: h.clone(),
                    }],
                }],
                backlog: vec![Row {
                    destination: "orders".into(),
                    consumer: "read\"model".into(),
                    messages: 6,
                    age_seconds: Some(1.5),
                    drain_seconds: None,
                    status: Status::Warn,
                }],
            })
        };
        let nats = Arc::new(BrokerSnapshot {
            broker: Broker::Nats,
            cluster: "n".into(),
            taken_at_ms: 0,
            rows: vec![Row {
                destination: "ORDERS".into(),
                consumer: "billing".into(),
                messages: 0,
                age_seconds: Some(0.0),
                drain_seconds: Some(0.0),
                status: Status::Ok,
            }],
            samples: vec![super::super::backlog::Sample {
                family: &m::NATS_PENDING,
                labels: vec![
                    (m::L_CLUSTER, "n".into()),
                    (m::L_DESTINATION, "ORDERS".into()),
                    (m::L_CONSUMER, "billing".into()),
                ],
                value: 0.0,
            }],
            consistency: vec![super::super::backlog::ConsistencyRow {
                destination: "ORDERS".into(),
                consumer: "billing".into(),
                histogram: h.clone(),
            }],
        });
        let text = String::from_utf8(render(&[snap("a"), snap("b")], &[nats]).to_vec()).unwrap();
        assert!(
            text.contains(
                "eventscope_backlog_messages{broker=\"kafka\",cluster=\"a\",destination=\"orders\",consumer=\"read\\\"model\"} 6\n"
            ),
            "{text}"
        );
        assert!(text
            .contains("eventscope_backlog_drain_seconds{broker=\"nats\",cluster=\"n\",destination=\"ORDERS\",consumer=\"billing\"} 0\n"));
        assert!(!text.contains("eventscope_backlog_drain_seconds{broker=\"kafka\""));
        assert!(text.contains("eventscope_backlog_status{broker=\"kafka\",cluster=\"b\",destination=\"orders\",consumer=\"read\\\"model\",status=\"WARN\"} 1\n"));
        assert!(text.contains("eventscope_nats_consumer_pending_messages{cluster=\"n\",destination=\"ORDERS\",consumer=\"billing\"} 0\n"));
        assert!(text.contains(
            "eventscope_consistency_window_seconds_count{cluster=\"n\",consumergroup=\"billing\",topic=\"ORDERS\",source=\"collector\",broker=\"nats\"} 3\n"
        ));
        assert_eq!(text.matches("# TYPE eventscope_consistency_window_seconds histogram").count(), 1);
        assert!(text.contains("kafka_topic_partition_skew_ratio{cluster=\"a\",topic=\"orders\"} 1.25\n"));
        assert!(text.contains(
            "kafka_consumergroup_lag_skew_ratio{cluster=\"a\",consumergroup=\"read\\\"model\",topic=\"orders\",source=\"collector\"} 1\n"
        ));
        assert_eq!(text.matches("# TYPE kafka_consumergroup_lag gauge").count(), 1);
        assert!(
            text.contains("kafka_consumergroup_lag{cluster=\"a\",consumergroup=\"read\\\"model\",topic=\"orders\",source=\"collector\",partition=\"0\"} 6\n"),
            "{text}"
        );
        assert!(text.contains(
            "kafka_consumergroup_lag_seconds{cluster=\"b\",consumergroup=\"read\\\"model\",topic=\"orders\",source=\"collector\",partition=\"0\"} 1.5\n"
        ));
        assert!(
            text.contains("kafka_consumergroup_status{cluster=\"a\",consumergroup=\"read\\\"model\",topic=\"orders\",source=\"collector\",status=\"WARN\"} 1\n")
        );
        assert!(text.contains(
            "eventscope_consistency_window_seconds_bucket{cluster=\"a\",consumergroup=\"read\\\"model\",topic=\"orders\",source=\"collector\",le=\"0.1\"} 3\n"
        ));
        assert!(text
            .contains("eventscope_consistency_window_seconds_count{cluster=\"a\",consumergroup=\"read\\\"model\",topic=\"orders\",source=\"collector\"} 3\n"));
        assert!(text.contains("kafka_topic_partition_current_offset{cluster=\"b\",topic=\"orders\",partition=\"0\"} 10\n"));
        assert!(text.contains("kafka_consumergroup_members{cluster=\"a\",consumergroup=\"read\\\"model\",source=\"collector\"} 2\n"));
    }
}
