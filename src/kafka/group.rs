//! Membership of a Kafka consumer group with Kafka's own group protocol (JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup; `protocol_type = "consumer"`, the `range` assignor), so that several collector
//! replicas share a saga's partitions the way Kafka consumers do. Offsets are never committed: a member
//! that receives a partition rebuilds its state from the log.
//!
//! The leader assigns as Kafka's `RangeAssignor` does (per topic, members sorted by id, consecutive
//! ranges): with co-partitioned topics, one member gets the same partition numbers of every topic, so
//! all the events of a correlation id reach one member. Member metadata from the broker is untrusted:
//! what cannot be decoded counts as subscribing to nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::{ConsumerProtocolAssignment, TopicPartition as AssignedTopic};
use kafka_protocol::messages::consumer_protocol_subscription::ConsumerProtocolSubscription;
use kafka_protocol::messages::heartbeat_request::HeartbeatRequest;
use kafka_protocol::messages::join_group_request::{JoinGroupRequest, JoinGroupRequestProtocol};
use kafka_protocol::messages::leave_group_request::{LeaveGroupRequest, MemberIdentity};
use kafka_protocol::messages::sync_group_request::{SyncGroupRequest, SyncGroupRequestAssignment};
use kafka_protocol::messages::{GroupId, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError;

use super::client::{ClusterMetadata, Tp};
use super::{ClusterClient, KafkaError};

const JOIN_GROUP_MAX: i16 = 5;
const SYNC_GROUP_MAX: i16 = 3;
const HEARTBEAT_MAX: i16 = 3;
const LEAVE_GROUP_MAX: i16 = 3;
/// The consumer protocol's metadata and assignment version written (read: any the crate knows).
const CONSUMER_PROTOCOL_VERSION: i16 = 0;
const ASSIGNOR: &str = "range";

/// One member's place in a group.
pub struct Member {
    pub group: String,
    pub topics: Vec<String>,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    member_id: String,
    generation: i32,
    coordinator: Option<i32>,
}

/// What a heartbeat says.
#[derive(Debug, PartialEq, Eq)]
pub enum Beat {
    /// The assignment holds.
    Steady,
    /// The group is rebalancing (or forgot this member): join again.
    Rejoin,
}

fn versioned<T: Encodable>(version: i16, message: &T) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(version);
    // Encoding a message built here cannot fail; an empty body would be read as subscribing to nothing.
    let _ = message.encode(&mut buf, version);
    buf.freeze()
}

/// A consumer-protocol message (`version: i16` then the body) from untrusted bytes.
fn unversioned<T: Decodable>(mut bytes: Bytes) -> Option<T> {
    if bytes.len() < 2 {
        return None;
    }
    let version = bytes.get_i16().clamp(0, 3);
    super::decode::contained(move || T::decode(&mut bytes, version).map_err(|e| e.to_string())).ok()
}

/// Kafka's range assignment: for each topic, its partitions in order split into consecutive ranges over
/// the members that subscribe to it, sorted by id; the first `partitions % members` get one more.
pub fn range_assign(subscriptions: &BTreeMap<String, Vec<String>>, partitions: &BTreeMap<String, Vec<i32>>) -> BTreeMap<String, Vec<Tp>> {
    let mut out: BTreeMap<String, Vec<Tp>> = subscriptions.keys().map(|m| (m.clone(), Vec::new())).collect();
    for (topic, parts) in partitions {
        let members: Vec<&String> = subscriptions.iter().filter(|(_, t)| t.contains(topic)).map(|(m, _)| m).collect();
        if members.is_empty() {
            continue;
        }
        let mut parts = parts.clone();
        parts.sort_unstable();
        let (each, extra) = (parts.len() / members.len(), parts.len() % members.len());
        let topic: Arc<str> = Arc::from(topic.as_str());
        let mut at = 0;
        for (i, m) in members.iter().enumerate() {
            let n = each + usize::from(i < extra);
            let list = out.entry((*m).clone()).or_default();
            list.extend(parts[at..at + n].iter().map(|p| (topic.clone(), *p)));
            at += n;
        }
    }
    out
}

impl Member {
    pub fn new(group: &str, topics: Vec<String>, session_timeout_ms: i32, rebalance_timeout_ms: i32) -> Member {
        Member {
            group: group.to_string(),
            topics,
            session_timeout_ms,
            rebalance_timeout_ms,
            member_id: String::new(),
            generation: -1,
            coordinator: None,
        }
    }

    async fn coordinator(&mut self, client: &ClusterClient) -> Result<i32, KafkaError> {
        if let Some(c) = self.coordinator {
            return Ok(c);
        }
        let found = client.find_coordinators(std::slice::from_ref(&self.group)).await?;
        let node = found
            .into_iter()
            .next()
            .map(|(_, r)| r)
            .unwrap_or_else(|| Err(KafkaError::Protocol("FindCoordinator: no answer for the group".into())))?;
        self.coordinator = Some(node);
        Ok(node)
    }

    /// Joins (or re-joins) the group and returns this member's partitions. `metadata` gives the topics'
    /// partitions when this member is the leader.
    pub async fn join(&mut self, client: &ClusterClient, metadata: &ClusterMetadata) -> Result<Vec<Tp>, KafkaError> {
        let result = self.join_once(client, metadata).await;
        if let Err(e) = &result {
            if needs_rediscovery(e) {
                self.coordinator = None;
            }
            if is_code(e, ResponseError::UnknownMemberId) || is_code(e, ResponseError::IllegalGeneration) {
                self.member_id.clear();
                self.generation = -1;
            }
        }
        result
    }

    async fn join_once(&mut self, client: &ClusterClient, metadata: &ClusterMetadata) -> Result<Vec<Tp>, KafkaError> {
        let node = self.coordinator(client).await?;
        let conn = client.broker(node).await?;
        let version = conn.require_version::<JoinGroupRequest>(JOIN_GROUP_MAX)?;
        let subscription =
            ConsumerProtocolSubscription::default().with_topics(self.topics.iter().map(|t| StrBytes::from_string(t.clone())).collect());
        let metadata_bytes = versioned(CONSUMER_PROTOCOL_VERSION, &subscription);
        let mut joined = None;
        // v4+: the first join answers MEMBER_ID_REQUIRED with the id to join with.
        for _ in 0..2 {
            let request = JoinGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(self.group.clone())))
                .with_session_timeout_ms(self.session_timeout_ms)
                .with_rebalance_timeout_ms(self.rebalance_timeout_ms)
                .with_member_id(StrBytes::from_string(self.member_id.clone()))
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(vec![JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str(ASSIGNOR))
                    .with_metadata(metadata_bytes.clone())]);
            let response = conn.send(&request, version).await?;
            if response.error_code == ResponseError::MemberIdRequired.code() {
                self.member_id = response.member_id.to_string();
                continue;
            }
            super::check_code(response.error_code)?;
            joined = Some(response);
            break;
        }
        let joined = joined.ok_or_else(|| KafkaError::Protocol("JoinGroup: no member id given".into()))?;
        self.member_id = joined.member_id.to_string();
        self.generation = joined.generation_id;
        let assignments = if joined.leader == joined.member_id {
            let subscriptions: BTreeMap<String, Vec<String>> = joined
                .members
                .iter()
                .map(|m| {
                    let topics = unversioned::<ConsumerProtocolSubscription>(m.metadata.clone())
                        .map(|s| s.topics.iter().map(|t| t.to_string()).collect())
                        .unwrap_or_default();
                    (m.member_id.to_string(), topics)
                })
                .collect();
            let wanted: BTreeSet<&String> = subscriptions.values().flatten().collect();
            let partitions: BTreeMap<String, Vec<i32>> = wanted
                .into_iter()
                .filter_map(|t| {
                    metadata
                        .topics
                        .get(t.as_str())
                        .map(|m| (t.clone(), m.partitions.keys().copied().collect()))
                })
                .collect();
            range_assign(&subscriptions, &partitions)
                .into_iter()
                .map(|(member, tps)| {
                    let mut by_topic: BTreeMap<Arc<str>, Vec<i32>> = BTreeMap::new();
                    for (t, p) in tps {
                        by_topic.entry(t).or_default().push(p);
                    }
                    let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(
                        by_topic
                            .into_iter()
                            .map(|(t, ps)| {
                                AssignedTopic::default()
                                    .with_topic(TopicName(StrBytes::from_string(t.to_string())))
                                    .with_partitions(ps)
                            })
                            .collect(),
                    );
                    SyncGroupRequestAssignment::default()
                        .with_member_id(StrBytes::from_string(member))
                        .with_assignment(versioned(CONSUMER_PROTOCOL_VERSION, &assignment))
                })
                .collect()
        } else {
            Vec::new()
        };
        let version = conn.require_version::<SyncGroupRequest>(SYNC_GROUP_MAX)?;
        let request = SyncGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.group.clone())))
            .with_generation_id(self.generation)
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_protocol_type(Some(StrBytes::from_static_str("consumer")))
            .with_protocol_name(Some(StrBytes::from_static_str(ASSIGNOR)))
            .with_assignments(assignments);
        let synced = conn.send(&request, version).await?;
        super::check_code(synced.error_code)?;
        let assignment = unversioned::<ConsumerProtocolAssignment>(synced.assignment).unwrap_or_default();
        Ok(assignment
            .assigned_partitions
            .iter()
            .flat_map(|t| {
                let topic: Arc<str> = Arc::from(t.topic.0.as_str());
                t.partitions.iter().map(move |p| (topic.clone(), *p))
            })
            .filter(|(t, _)| self.topics.iter().any(|s| s.as_str() == &**t))
            .collect())
    }

    /// One heartbeat: [`Beat::Rejoin`] when the group rebalances or has forgotten this member.
    pub async fn heartbeat(&mut self, client: &ClusterClient) -> Result<Beat, KafkaError> {
        let node = self.coordinator(client).await?;
        let conn = client.broker(node).await?;
        let version = conn.require_version::<HeartbeatRequest>(HEARTBEAT_MAX)?;
        let request = HeartbeatRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.group.clone())))
            .with_generation_id(self.generation)
            .with_member_id(StrBytes::from_string(self.member_id.clone()));
        let response = match conn.send(&request, version).await {
            Ok(r) => r,
            Err(e) => {
                self.coordinator = None;
                return Err(e);
            }
        };
        match ResponseError::try_from_code(response.error_code) {
            None => Ok(Beat::Steady),
            Some(ResponseError::RebalanceInProgress) => Ok(Beat::Rejoin),
            Some(ResponseError::UnknownMemberId | ResponseError::IllegalGeneration | ResponseError::FencedInstanceId) => {
                self.member_id.clear();
                self.generation = -1;
                Ok(Beat::Rejoin)
            }
            Some(_) => {
                let e = KafkaError::from_code(response.error_code);
                if needs_rediscovery(&e) {
                    self.coordinator = None;
                }
                Err(e)
            }
        }
    }

    /// Leaves the group, so that its partitions move to the other members at once (not after the
    /// session timeout). Best effort: a member that cannot say goodbye times out.
    pub async fn leave(&mut self, client: &ClusterClient) {
        if self.member_id.is_empty() {
            return;
        }
        let Ok(node) = self.coordinator(client).await else { return };
        let Ok(conn) = client.broker(node).await else { return };
        let Ok(version) = conn.require_version::<LeaveGroupRequest>(LEAVE_GROUP_MAX) else {
            return;
        };
        let mut request = LeaveGroupRequest::default().with_group_id(GroupId(StrBytes::from_string(self.group.clone())));
        request = if version >= 3 {
            request.with_members(vec![
                MemberIdentity::default().with_member_id(StrBytes::from_string(self.member_id.clone()))
            ])
        } else {
            request.with_member_id(StrBytes::from_string(self.member_id.clone()))
        };
        let _ = conn.send(&request, version).await;
        self.member_id.clear();
        self.generation = -1;
    }
}

fn is_code(e: &KafkaError, code: ResponseError) -> bool {
    matches!(e, KafkaError::Broker { code: c, .. } if *c == code.code())
}

fn needs_rediscovery(e: &KafkaError) -> bool {
    is_code(e, ResponseError::NotCoordinator)
        || is_code(e, ResponseError::CoordinatorNotAvailable)
        || matches!(e, KafkaError::Connect { .. } | KafkaError::Io(_) | KafkaError::Timeout(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_assignment_gives_each_member_the_same_partitions_of_co_partitioned_topics() {
        let topics = vec!["orders".to_string(), "payments".to_string()];
        let subs: BTreeMap<String, Vec<String>> = [("b".to_string(), topics.clone()), ("a".to_string(), topics)].into();
        let parts: BTreeMap<String, Vec<i32>> = [
            ("orders".to_string(), vec![4, 0, 1, 2, 3]),
            ("payments".to_string(), vec![0, 1, 2, 3, 4]),
        ]
        .into();
        let got = range_assign(&subs, &parts);
        let numbers = |m: &str, t: &str| -> Vec<i32> { got[m].iter().filter(|(x, _)| &**x == t).map(|(_, p)| *p).collect() };
        assert_eq!(numbers("a", "orders"), vec![0, 1, 2]);
        assert_eq!(numbers("b", "orders"), vec![3, 4]);
        assert_eq!(numbers("a", "payments"), numbers("a", "orders"));
        assert_eq!(numbers("b", "payments"), numbers("b", "orders"));
    }

    #[test]
    fn member_metadata_round_trips_and_garbage_is_nothing() {
        let s = ConsumerProtocolSubscription::default().with_topics(vec![StrBytes::from_static_str("orders")]);
        let back: ConsumerProtocolSubscription = unversioned(versioned(0, &s)).unwrap();
        assert_eq!(back.topics[0].as_str(), "orders");
        assert!(unversioned::<ConsumerProtocolSubscription>(Bytes::from_static(&[0, 0, 0xff, 0xff, 0xff])).is_none());
        assert!(unversioned::<ConsumerProtocolSubscription>(Bytes::from_static(&[0])).is_none());
    }
}
