//! The cluster client: bootstrap, broker map, one connection per broker, and the batched admin reads
//! the collector is built from. Versions are negotiated per broker; where a broker lacks a batched form
//! (OffsetFetch v8, FindCoordinator v4) the client falls back to one request per group.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::describe_groups_request::DescribeGroupsRequest;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::list_groups_request::ListGroupsRequest;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequest, OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::{BrokerId, GroupId, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::{check_code, Connection, KafkaError, Security};

/// A topic and partition.
pub type Tp = (Arc<str>, i32);

/// ListOffsets timestamps with a special meaning.
pub const LATEST: i64 = -1;
pub const EARLIEST: i64 = -2;

// Highest versions used: newer ones address topics by id only (Fetch v13+, OffsetFetch v10+) or add
// nothing the collector reads.
const METADATA_MAX: i16 = 12;
const LIST_GROUPS_MAX: i16 = 4;
const DESCRIBE_GROUPS_MAX: i16 = 5;
const FIND_COORDINATOR_MAX: i16 = 4;
const OFFSET_FETCH_MAX: i16 = 8;
const LIST_OFFSETS_MAX: i16 = 7;
// Fetch v11 is the last non-flexible version: tansu 0.6.0 sends a top-level tagged field (tag 0,
// NodeEndpoints, defined from v16) in v12+ responses, which a strict decoder rightly rejects.
const FETCH_MAX: i16 = 11;

/// Groups per batched DescribeGroups / OffsetFetch / FindCoordinator request.
const GROUP_BATCH: usize = 100;

/// What Metadata says about the cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterMetadata {
    pub brokers: HashMap<i32, String>,
    pub topics: BTreeMap<Arc<str>, TopicMeta>,
}

#[derive(Debug, Clone, Default)]
pub struct TopicMeta {
    pub internal: bool,
    /// Partition → leader broker id (`None` while leaderless).
    pub partitions: BTreeMap<i32, Option<i32>>,
}

/// A group as ListGroups reports it.
#[derive(Debug, Clone)]
pub struct ListedGroup {
    pub group: String,
    pub protocol_type: String,
    pub state: String,
}

/// A group as DescribeGroups reports it.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    pub group: String,
    pub state: String,
    pub members: usize,
}

/// Committed offsets of one group, or why they could not be read.
pub type GroupOffsets = Result<HashMap<Tp, i64>, KafkaError>;

/// The first record at or after a fetch offset, as far as the fetched bytes tell.
#[derive(Debug, Clone, Default)]
pub struct FetchedPartition {
    pub error_code: i16,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    /// Raw record batches (possibly ending with a truncated one).
    pub records: Option<Bytes>,
}

/// The caller's name for a topic named in a response (no new allocation per partition), or a new one.
fn topic_key<V>(asked: &BTreeMap<Arc<str>, V>, name: &str) -> Arc<str> {
    asked.get_key_value(name).map(|(k, _)| k.clone()).unwrap_or_else(|| Arc::from(name))
}

/// Committed offsets from an OffsetFetch response: `(topic, [(partition, offset, error code)])`.
/// Partitions with an error or without a commit (-1) are left out.
fn committed<'a, P>(topics: impl Iterator<Item = (&'a str, P)>) -> HashMap<Tp, i64>
where
    P: Iterator<Item = (i32, i64, i16)>,
{
    let mut out = HashMap::new();
    for (name, partitions) in topics {
        let topic: Arc<str> = Arc::from(name);
        for (partition, offset, error) in partitions {
            if error == 0 && offset >= 0 {
                out.insert((topic.clone(), partition), offset);
            }
        }
    }
    out
}

pub struct ClusterClient {
    bootstrap: Vec<String>,
    client_id: String,
    timeout: Duration,
    max_frame: usize,
    security: Security,
    brokers: Mutex<HashMap<i32, String>>,
    /// One slot per broker address, each locked on its own: dialling a dead broker (up to the request
    /// timeout, per attempt) holds only that broker's slot, never the others'.
    conns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
}

/// A broker address's connection.
#[derive(Default)]
enum Slot {
    #[default]
    Empty,
    Up(Arc<Connection>),
    /// The last dial failed: requests until `until` fail at once with that error, rather than each
    /// waiting for a dial of its own.
    Down {
        until: std::time::Instant,
        error: KafkaError,
    },
}

/// How long a failed dial is not retried.
const REDIAL_AFTER: Duration = Duration::from_secs(1);

impl ClusterClient {
    pub fn new(bootstrap: Vec<String>, client_id: String, timeout: Duration, max_frame: usize, security: Security) -> ClusterClient {
        ClusterClient {
            bootstrap,
            client_id,
            timeout,
            max_frame,
            security,
            brokers: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
        }
    }

    async fn conn_to(&self, addr: &str) -> Result<Arc<Connection>, KafkaError> {
        let slot = self.conns.lock().expect("conns lock").entry(addr.to_string()).or_default().clone();
        let mut slot = slot.lock().await;
        match &*slot {
            Slot::Up(c) if c.is_alive() => return Ok(c.clone()),
            Slot::Down { until, error } if std::time::Instant::now() < *until => return Err(error.clone()),
            _ => {}
        }
        match Connection::connect(addr, &self.client_id, self.timeout, self.max_frame, &self.security).await {
            Ok(c) => {
                let c = Arc::new(c);
                *slot = Slot::Up(c.clone());
                Ok(c)
            }
            Err(error) => {
                *slot = Slot::Down {
                    until: std::time::Instant::now() + REDIAL_AFTER,
                    error: error.clone(),
                };
                Err(error)
            }
        }
    }

    /// A connection to the given broker id.
    pub async fn broker(&self, node: i32) -> Result<Arc<Connection>, KafkaError> {
        let addr = self.brokers.lock().expect("brokers lock").get(&node).cloned();
        match addr {
            Some(addr) => self.conn_to(&addr).await,
            None => Err(KafkaError::Protocol(format!("unknown broker id {node}"))),
        }
    }

    /// Any reachable broker: known brokers first, then the bootstrap list.
    async fn any(&self) -> Result<Arc<Connection>, KafkaError> {
        let mut candidates: Vec<String> = self.brokers.lock().expect("brokers lock").values().cloned().collect();
        candidates.sort();
        candidates.extend(self.bootstrap.iter().cloned());
        let mut last = None;
        for addr in candidates {
            match self.conn_to(&addr).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| KafkaError::closed("no bootstrap servers")))
    }

    /// Metadata for all topics; refreshes the broker map.
    pub async fn metadata(&self) -> Result<ClusterMetadata, KafkaError> {
        let conn = self.any().await?;
        let version = conn.require_version::<MetadataRequest>(METADATA_MAX)?;
        let request = MetadataRequest::default().with_topics(None).with_allow_auto_topic_creation(false);
        let response = conn.send(&request, version).await?;
        let mut md = ClusterMetadata::default();
        for b in &response.brokers {
            md.brokers.insert(b.node_id.0, format!("{}:{}", b.host.as_str(), b.port));
        }
        for t in &response.topics {
            let Some(name) = &t.name else { continue };
            if t.error_code != 0 {
                continue;
            }
            let topic = md.topics.entry(Arc::from(name.0.as_str())).or_default();
            topic.internal = t.is_internal;
            for p in &t.partitions {
                let leader = (p.leader_id.0 >= 0).then_some(p.leader_id.0);
                topic.partitions.insert(p.partition_index, leader);
            }
        }
        if !md.brokers.is_empty() {
            *self.brokers.lock().expect("brokers lock") = md.brokers.clone();
            // Slots of addresses that are neither brokers nor bootstrap servers any more are dropped.
            let keep: std::collections::HashSet<&String> = md.brokers.values().chain(&self.bootstrap).collect();
            self.conns.lock().expect("conns lock").retain(|addr, _| keep.contains(addr));
        }
        Ok(md)
    }

    /// ListGroups on one broker (each broker lists the groups it coordinates).
    pub async fn list_groups(&self, node: i32) -> Result<Vec<ListedGroup>, KafkaError> {
        let conn = self.broker(node).await?;
        let version = conn.require_version::<ListGroupsRequest>(LIST_GROUPS_MAX)?;
        let response = conn.send(&ListGroupsRequest::default(), version).await?;
        check_code(response.error_code)?;
        Ok(response
            .groups
            .iter()
            .map(|g| ListedGroup {
                group: g.group_id.0.to_string(),
                protocol_type: g.protocol_type.to_string(),
                state: g.group_state.to_string(),
            })
            .collect())
    }

    /// The coordinator broker of each group, batched where the broker allows.
    pub async fn find_coordinators(&self, groups: &[String]) -> Result<HashMap<String, Result<i32, KafkaError>>, KafkaError> {
        let conn = self.any().await?;
        let version = conn.require_version::<FindCoordinatorRequest>(FIND_COORDINATOR_MAX)?;
        let mut out = HashMap::new();
        if version >= 4 {
            for chunk in groups.chunks(GROUP_BATCH) {
                let request = FindCoordinatorRequest::default()
                    .with_key_type(0)
                    .with_coordinator_keys(chunk.iter().map(|g| StrBytes::from_string(g.clone())).collect());
                let response = conn.send(&request, version).await?;
                for c in response.coordinators {
                    let r = check_code(c.error_code).map(|_| c.node_id.0);
                    out.insert(c.key.to_string(), r);
                }
            }
        } else {
            for g in groups {
                let request = FindCoordinatorRequest::default()
                    .with_key_type(0)
                    .with_key(StrBytes::from_string(g.clone()));
                let response = conn.send(&request, version).await?;
                out.insert(g.clone(), check_code(response.error_code).map(|_| response.node_id.0));
            }
        }
        Ok(out)
    }

    /// DescribeGroups for groups coordinated by `node`. `Unsupported` if the broker has no such API.
    pub async fn describe_groups(
        &self,
        node: i32,
        groups: &[String],
    ) -> Result<Vec<Result<GroupDescription, (String, KafkaError)>>, KafkaError> {
        let conn = self.broker(node).await?;
        let version = conn.require_version::<DescribeGroupsRequest>(DESCRIBE_GROUPS_MAX)?;
        let mut out = Vec::with_capacity(groups.len());
        for chunk in groups.chunks(GROUP_BATCH) {
            let request =
                DescribeGroupsRequest::default().with_groups(chunk.iter().map(|g| GroupId(StrBytes::from_string(g.clone()))).collect());
            let response = conn.send(&request, version).await?;
            for g in response.groups {
                let name = g.group_id.0.to_string();
                out.push(match check_code(g.error_code) {
                    Ok(()) => Ok(GroupDescription {
                        group: name,
                        state: g.group_state.to_string(),
                        members: g.members.len(),
                    }),
                    Err(e) => Err((name, e)),
                });
            }
        }
        Ok(out)
    }

    /// Committed offsets of groups coordinated by `node`. With `topics` = `None` the broker returns every
    /// partition the group has committed; otherwise only those asked for.
    pub async fn offset_fetch(
        &self,
        node: i32,
        groups: &[String],
        topics: Option<&BTreeMap<Arc<str>, Vec<i32>>>,
    ) -> Result<HashMap<String, GroupOffsets>, KafkaError> {
        let conn = self.broker(node).await?;
        let version = conn.require_version::<OffsetFetchRequest>(OFFSET_FETCH_MAX)?;
        let mut out = HashMap::new();
        if version >= 8 {
            for chunk in groups.chunks(GROUP_BATCH) {
                let request_groups = chunk
                    .iter()
                    .map(|g| {
                        OffsetFetchRequestGroup::default()
                            .with_group_id(GroupId(StrBytes::from_string(g.clone())))
                            .with_topics(topics.map(|t| {
                                t.iter()
                                    .map(|(name, parts)| {
                                        OffsetFetchRequestTopics::default()
                                            .with_name(TopicName(StrBytes::from_string(name.to_string())))
                                            .with_partition_indexes(parts.clone())
                                    })
                                    .collect()
                            }))
                    })
                    .collect();
                let response = conn
                    .send(&OffsetFetchRequest::default().with_groups(request_groups), version)
                    .await?;
                for g in response.groups {
                    let offsets = check_code(g.error_code).map(|_| {
                        committed(g.topics.iter().map(|t| {
                            (
                                t.name.0.as_str(),
                                t.partitions.iter().map(|p| (p.partition_index, p.committed_offset, p.error_code)),
                            )
                        }))
                    });
                    out.insert(g.group_id.0.to_string(), offsets);
                }
            }
        } else {
            let request_topics: Option<Vec<OffsetFetchRequestTopic>> = topics.map(|t| {
                t.iter()
                    .map(|(name, parts)| {
                        OffsetFetchRequestTopic::default()
                            .with_name(TopicName(StrBytes::from_string(name.to_string())))
                            .with_partition_indexes(parts.clone())
                    })
                    .collect()
            });
            for g in groups {
                let request = OffsetFetchRequest::default()
                    .with_group_id(GroupId(StrBytes::from_string(g.clone())))
                    .with_topics(request_topics.clone());
                let response = match conn.send(&request, version).await {
                    Ok(r) => r,
                    Err(e) if e.is_connection_fatal() => return Err(e),
                    Err(e) => {
                        out.insert(g.clone(), Err(e));
                        continue;
                    }
                };
                let offsets = check_code(response.error_code).map(|_| {
                    committed(response.topics.iter().map(|t| {
                        (
                            t.name.0.as_str(),
                            t.partitions.iter().map(|p| (p.partition_index, p.committed_offset, p.error_code)),
                        )
                    }))
                });
                out.insert(g.clone(), offsets);
            }
        }
        Ok(out)
    }

    /// ListOffsets on a leader for many partitions at one timestamp (`LATEST`, `EARLIEST`).
    pub async fn list_offsets(
        &self,
        node: i32,
        partitions: &[Tp],
        timestamp: i64,
    ) -> Result<HashMap<Tp, Result<i64, KafkaError>>, KafkaError> {
        let conn = self.broker(node).await?;
        let version = conn.require_version::<ListOffsetsRequest>(LIST_OFFSETS_MAX)?;
        let mut by_topic: BTreeMap<Arc<str>, Vec<i32>> = BTreeMap::new();
        for (t, p) in partitions {
            by_topic.entry(t.clone()).or_default().push(*p);
        }
        let topics = by_topic
            .iter()
            .map(|(t, ps)| {
                ListOffsetsTopic::default()
                    .with_name(TopicName(StrBytes::from_string(t.to_string())))
                    .with_partitions(
                        ps.iter()
                            .map(|p| {
                                ListOffsetsPartition::default()
                                    .with_partition_index(*p)
                                    .with_timestamp(timestamp)
                                    .with_current_leader_epoch(-1)
                            })
                            .collect(),
                    )
            })
            .collect();
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_isolation_level(0)
            .with_topics(topics);
        let response = conn.send(&request, version).await?;
        let mut out = HashMap::new();
        for t in response.topics {
            let topic = topic_key(&by_topic, t.name.0.as_str());
            for p in t.partitions {
                out.insert((topic.clone(), p.partition_index), check_code(p.error_code).map(|_| p.offset));
            }
        }
        Ok(out)
    }

    /// One Fetch on a leader, starting each partition at the given offset, returning immediately with at
    /// most `partition_max_bytes` per partition (the broker returns at least one whole batch for the first).
    pub async fn fetch_at(
        &self,
        node: i32,
        partitions: &[(Tp, i64)],
        partition_max_bytes: i32,
    ) -> Result<HashMap<Tp, FetchedPartition>, KafkaError> {
        self.fetch(node, partitions, partition_max_bytes, 0).await
    }

    /// One Fetch on a leader, as [`ClusterClient::fetch_at`], that waits up to `max_wait_ms` for a
    /// first byte when there is nothing new (a reader that follows the log).
    pub async fn fetch(
        &self,
        node: i32,
        partitions: &[(Tp, i64)],
        partition_max_bytes: i32,
        max_wait_ms: i32,
    ) -> Result<HashMap<Tp, FetchedPartition>, KafkaError> {
        let conn = self.broker(node).await?;
        let version = conn.require_version::<FetchRequest>(FETCH_MAX)?;
        let mut by_topic: BTreeMap<Arc<str>, Vec<(i32, i64)>> = BTreeMap::new();
        for ((t, p), offset) in partitions {
            by_topic.entry(t.clone()).or_default().push((*p, *offset));
        }
        let topics = by_topic
            .iter()
            .map(|(t, ps)| {
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(t.to_string())))
                    .with_partitions(
                        ps.iter()
                            .map(|(p, o)| {
                                FetchPartition::default()
                                    .with_partition(*p)
                                    .with_fetch_offset(*o)
                                    .with_partition_max_bytes(partition_max_bytes)
                                    .with_current_leader_epoch(-1)
                                    .with_last_fetched_epoch(-1)
                                    .with_log_start_offset(-1)
                            })
                            .collect(),
                    )
            })
            .collect();
        let max_bytes = partition_max_bytes.saturating_mul(partitions.len() as i32).max(partition_max_bytes);
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(i32::from(max_wait_ms > 0))
            .with_max_bytes(max_bytes)
            .with_isolation_level(0)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(topics);
        let response = conn.send(&request, version).await?;
        check_code(response.error_code)?;
        let mut out = HashMap::new();
        for t in response.responses {
            let topic = topic_key(&by_topic, t.topic.0.as_str());
            for p in t.partitions {
                out.insert(
                    (topic.clone(), p.partition_index),
                    FetchedPartition {
                        error_code: p.error_code,
                        high_watermark: p.high_watermark,
                        log_start_offset: p.log_start_offset,
                        records: p.records,
                    },
                );
            }
        }
        Ok(out)
    }
}
