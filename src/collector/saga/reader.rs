//! The reader of one saga's topics: the collector's own Fetch requests (it never commits an offset and
//! never joins the applications' groups), from `now - lookback` found with ListOffsets by timestamp, on
//! every partition of the topics or, with `group` set, on this replica's share of a consumer group's.
//!
//! Events are applied in timestamp order across partitions: a record is held until every partition the
//! reader follows has been read past its time (a partition that is caught up counts as read until
//! [`REORDER_MS`] ago), so that a step read from one topic before the start read from another is not
//! lost, and the state rebuilt after a restart is decided exactly as the live one was. The holding is
//! bounded ([`MAX_HELD`]); past it the oldest are applied anyway.
//!
//! While the state is being rebuilt, or when the topics cannot be read, the in-flight and stuck series
//! and `/sagas` are withdrawn rather than served as if they were current.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{Histogram, IntCounter};
use tokio::sync::watch;

use super::board::{Board, MAX_LISTED};
use super::event::{read, Rules};
use super::{Outcome, Spec, Tracker, Transition, Unmatched};
use crate::config::{ClusterConfig, CollectorConfig, SagaConfig};
use crate::kafka::batch::batches;
use crate::kafka::client::{ClusterMetadata, FetchedPartition, Tp, EARLIEST, LATEST};
use crate::kafka::group::{Beat, Member};
use crate::kafka::records::{records, records_section};
use crate::kafka::{now_ms, ClusterClient, KafkaError};
use crate::telemetry::collector::CollectorMetrics;
use crate::telemetry::saga::SagaMetrics;

/// How long a Fetch waits for new records.
const MAX_WAIT_MS: i32 = 500;
/// Bytes asked per partition (doubled, up to `max_response_bytes`, for a batch that does not fit).
const PARTITION_BYTES: i32 = 1 << 20;
/// A caught-up partition counts as read until this long ago: events appended out of timestamp order
/// across partitions by up to this much are still applied in order.
pub const REORDER_MS: i64 = 1000;
/// Events held for ordering at most.
pub const MAX_HELD: usize = 200_000;
const METADATA_EVERY: Duration = Duration::from_secs(30);
const PUBLISH_EVERY: Duration = Duration::from_secs(1);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// Group timeouts: a stopped replica's partitions move after its LeaveGroup at once, a killed one's after
/// the session timeout.
const SESSION_TIMEOUT_MS: i32 = 10_000;
const REBALANCE_TIMEOUT_MS: i32 = 10_000;

/// Where the reader is in one partition.
struct Position {
    offset: i64,
    /// Records older than this are before the lookback and skipped.
    from_ms: i64,
    caught_up: bool,
    /// The latest record time read from it.
    last_ts: i64,
    max_bytes: i32,
}

/// An event read and held until it can be applied in order.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Held {
    at_ms: i64,
    rank: u8,
    partition: i32,
    offset: i64,
    topic: Arc<str>,
    id: String,
    event_type: String,
    trace_id: Option<[u8; 16]>,
}

/// The saga's series, resolved once (an event costs no label lookup).
struct Series {
    started: IntCounter,
    ended: [IntCounter; 3],
    duration: [Histogram; 3],
    steps: Vec<Histogram>,
    events: Vec<(String, IntCounter)>,
    unmatched: [IntCounter; 6],
    evicted: IntCounter,
    late: IntCounter,
}

const REASONS: [&str; 6] = ["no_correlation", "no_type", "not_json", "too_large", "unknown_type", "before_start"];

fn reason_index(label: &str) -> usize {
    REASONS.iter().position(|r| *r == label).unwrap_or(0)
}

impl Series {
    fn new(m: &SagaMetrics, cluster: &str, saga: &str, tracker: &Tracker, steps: &[String]) -> Series {
        let outcome = |o: Outcome| [cluster, saga, o.as_label()];
        Series {
            started: m.started.with([cluster, saga]),
            ended: Outcome::ALL.map(|o| m.ended.with(outcome(o))),
            duration: Outcome::ALL.map(|o| m.duration.with(outcome(o))),
            steps: steps.iter().map(|s| m.step.with([cluster, saga, s])).collect(),
            events: tracker
                .types()
                .iter()
                .map(|t| (t.clone(), m.events.with([cluster, saga, t])))
                .collect(),
            unmatched: REASONS.map(|r| m.unmatched.with([cluster, saga, r])),
            evicted: m.evicted.with([cluster, saga]),
            late: m.late.with([cluster, saga]),
        }
    }

    fn count(&self, transitions: &[Transition]) {
        for t in transitions {
            match t {
                Transition::Started => self.started.inc(),
                Transition::Step { step, seconds } => {
                    if let Some(h) = self.steps.get(*step as usize) {
                        h.observe(*seconds);
                    }
                }
                Transition::Ended { outcome, seconds } => {
                    let i = Outcome::ALL.iter().position(|o| o == outcome).unwrap_or(0);
                    self.ended[i].inc();
                    self.duration[i].observe(*seconds);
                }
                Transition::LateCompensation => self.late.inc(),
                Transition::Evicted => self.evicted.inc(),
            }
        }
    }
}

/// Follows one saga.
pub struct Reader {
    index: usize,
    cluster: String,
    cfg: SagaConfig,
    client: ClusterClient,
    tracker: Tracker,
    rules: Rules,
    metrics: SagaMetrics,
    errors: CollectorMetrics,
    series: Series,
    board: Arc<Board>,
    decompress_limit: usize,
    positions: BTreeMap<Tp, Position>,
    leaders: BTreeMap<Tp, i32>,
    held: BinaryHeap<Reverse<Held>>,
    transitions: Vec<Transition>,
    member: Option<Member>,
    /// Every partition has been read up to its end once since it was assigned.
    replayed: bool,
    /// The last read round reached the brokers.
    up: bool,
    stale_metadata: bool,
    /// The group asked this member to join again (or it has not joined yet).
    rejoin: bool,
    /// Partitions of the saga's topics in the last metadata.
    known_partitions: usize,
}

impl Reader {
    pub fn new(
        index: usize,
        cfg: SagaConfig,
        cluster: &ClusterConfig,
        settings: &CollectorConfig,
        metrics: SagaMetrics,
        errors: CollectorMetrics,
        board: Arc<Board>,
    ) -> Reader {
        // A JoinGroup waits up to the rebalance timeout: the client's deadline covers it.
        let timeout = settings
            .request_timeout
            .max(Duration::from_millis(REBALANCE_TIMEOUT_MS as u64 + 5_000));
        let client = ClusterClient::new(
            cluster.bootstrap_servers(),
            format!("{}-saga-{}", cluster.client_id(), cfg.name),
            timeout,
            settings.max_response_bytes,
            cluster.security.clone(),
        );
        let tracker = Tracker::new(Spec::from_config(&cfg));
        let rules = Rules {
            correlation: cfg.correlation.clone(),
            event_type: cfg.event_type.clone(),
            max_value_bytes: cfg.max_value_bytes,
        };
        let series = Series::new(&metrics, &cluster.name, &cfg.name, &tracker, &cfg.steps);
        let member = (!cfg.group.is_empty()).then(|| Member::new(&cfg.group, cfg.topics.clone(), SESSION_TIMEOUT_MS, REBALANCE_TIMEOUT_MS));
        Reader {
            index,
            cluster: cluster.name.clone(),
            cfg,
            client,
            tracker,
            rules,
            metrics,
            errors,
            series,
            board,
            decompress_limit: settings.max_response_bytes,
            positions: BTreeMap::new(),
            leaders: BTreeMap::new(),
            held: BinaryHeap::new(),
            transitions: Vec::new(),
            member,
            replayed: false,
            up: false,
            stale_metadata: true,
            rejoin: true,
            known_partitions: usize::MAX,
        }
    }

    fn error(&self, step: &str, e: &KafkaError) {
        self.errors.collection_error(&self.cluster, step, e);
    }

    /// Reads until `shutdown` turns true; then leaves the group, if any.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut last_metadata: Option<Instant> = None;
        let mut last_publish: Option<Instant> = None;
        let mut last_beat = Instant::now();
        self.publish(now_ms());
        while !*shutdown.borrow() {
            if self.stale_metadata || self.rejoin || last_metadata.is_none_or(|t| t.elapsed() >= METADATA_EVERY) {
                let refreshed = tokio::select! {
                    r = self.refresh() => r,
                    _ = shutdown.changed() => break,
                };
                match refreshed {
                    Ok(()) => {
                        last_metadata = Some(Instant::now());
                        self.stale_metadata = false;
                        last_beat = Instant::now();
                    }
                    Err(e) => {
                        self.error("saga_metadata", &e);
                        self.up = false;
                        self.publish(now_ms());
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = shutdown.changed() => break,
                        }
                        continue;
                    }
                }
            }
            if self.member.is_some() && !self.rejoin && last_beat.elapsed() >= HEARTBEAT_EVERY {
                last_beat = Instant::now();
                self.beat().await;
            }
            let read = tokio::select! {
                r = self.fetch_round() => r,
                _ = shutdown.changed() => break,
            };
            self.up = read;
            if !read {
                self.stale_metadata = true;
            }
            self.release(now_ms());
            if last_publish.is_none_or(|t| t.elapsed() >= PUBLISH_EVERY) {
                last_publish = Some(Instant::now());
                self.publish(now_ms());
            }
            if self.positions.is_empty() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(MAX_WAIT_MS as u64)) => {}
                    _ = shutdown.changed() => break,
                }
            }
        }
        if let Some(member) = &mut self.member {
            member.leave(&self.client).await;
        }
        tracing::debug!(saga = %self.cfg.name, "saga reader stopped");
    }

    /// A heartbeat; on a rebalance, joins again and takes the new assignment.
    async fn beat(&mut self) {
        let Some(member) = &mut self.member else { return };
        match member.heartbeat(&self.client).await {
            Ok(Beat::Steady) => {}
            Ok(Beat::Rejoin) => self.rejoin = true,
            Err(e) => {
                self.error("saga_group", &e);
                self.rejoin = true;
            }
        }
    }

    /// Metadata, the assignment (all partitions, or the group's share) and the start of each new
    /// partition.
    async fn refresh(&mut self) -> Result<(), KafkaError> {
        let md = self.client.metadata().await?;
        let all = self.all_partitions(&md);
        let missing: Vec<&str> = self
            .cfg
            .topics
            .iter()
            .filter(|t| !md.topics.contains_key(t.as_str()))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() && all.len() != self.known_partitions {
            tracing::warn!(saga = %self.cfg.name, topics = ?missing, "saga topics not in the cluster's metadata");
        }
        // Partitions added to the topics: the group's leader assigns them only in a new generation.
        if self.member.is_some() && all.len() != self.known_partitions {
            self.rejoin = true;
        }
        self.known_partitions = all.len();
        let assigned: BTreeSet<Tp> = match &mut self.member {
            Some(member) if self.rejoin => {
                let assigned = member.join(&self.client, &md).await?;
                self.rejoin = false;
                assigned.into_iter().collect()
            }
            Some(_) => self.positions.keys().cloned().collect(),
            None => all,
        };
        self.leaders = assigned
            .iter()
            .filter_map(|tp| {
                let leader = md.topics.get(&tp.0)?.partitions.get(&tp.1).copied().flatten()?;
                Some((tp.clone(), leader))
            })
            .collect();
        let lost: Vec<Tp> = self.positions.keys().filter(|tp| !assigned.contains(*tp)).cloned().collect();
        if !lost.is_empty() {
            for tp in &lost {
                self.positions.remove(tp);
            }
            let kept: BTreeSet<i32> = self.positions.keys().map(|(_, p)| *p).collect();
            self.tracker.forget(|p| kept.contains(&p));
            self.held.retain(|Reverse(h)| kept.contains(&h.partition));
            tracing::info!(saga = %self.cfg.name, partitions = lost.len(), "saga partitions moved to another replica");
        }
        let new: Vec<Tp> = assigned.iter().filter(|tp| !self.positions.contains_key(*tp)).cloned().collect();
        if !new.is_empty() {
            let from_ms = now_ms().saturating_sub(self.cfg.lookback.as_millis().min(i64::MAX as u128) as i64);
            let starts = self.starts(&new, from_ms).await;
            for tp in new {
                let offset = starts.get(&tp).copied().unwrap_or(0);
                self.positions.insert(
                    tp,
                    Position {
                        offset,
                        from_ms,
                        caught_up: false,
                        last_ts: i64::MIN,
                        max_bytes: PARTITION_BYTES,
                    },
                );
            }
            self.replayed = false;
        }
        self.metrics
            .partitions
            .with([&self.cluster, &self.cfg.name])
            .set(self.positions.len() as i64);
        Ok(())
    }

    fn all_partitions(&self, md: &ClusterMetadata) -> BTreeSet<Tp> {
        self.cfg
            .topics
            .iter()
            .filter_map(|t| md.topics.get_key_value(t.as_str()))
            .flat_map(|(t, meta)| meta.partitions.keys().map(move |p| (t.clone(), *p)))
            .collect()
    }

    /// Where each partition's lookback starts: the first offset at or after `from_ms` (ListOffsets by
    /// timestamp); the log end when nothing is that recent; the log start when the broker cannot say
    /// (records before `from_ms` are then skipped as they are read).
    async fn starts(&self, tps: &[Tp], from_ms: i64) -> BTreeMap<Tp, i64> {
        let mut by_leader: BTreeMap<i32, Vec<Tp>> = BTreeMap::new();
        for tp in tps {
            if let Some(l) = self.leaders.get(tp) {
                by_leader.entry(*l).or_default().push(tp.clone());
            }
        }
        let mut out = BTreeMap::new();
        for (leader, tps) in by_leader {
            let found = match self.client.list_offsets(leader, &tps, from_ms).await {
                Ok(map) => map,
                Err(e) => {
                    self.error("saga_list_offsets", &e);
                    Default::default()
                }
            };
            let mut fallback = Vec::new();
            let mut at_end = Vec::new();
            for tp in &tps {
                match found.get(tp) {
                    Some(Ok(o)) if *o >= 0 => {
                        out.insert(tp.clone(), *o);
                    }
                    Some(Ok(_)) => at_end.push(tp.clone()),
                    _ => fallback.push(tp.clone()),
                }
            }
            for (list, ts) in [(at_end, LATEST), (fallback, EARLIEST)] {
                if list.is_empty() {
                    continue;
                }
                match self.client.list_offsets(leader, &list, ts).await {
                    Ok(map) => {
                        for (tp, r) in map {
                            if let Ok(o) = r {
                                out.insert(tp, o.max(0));
                            }
                        }
                    }
                    Err(e) => self.error("saga_list_offsets", &e),
                }
            }
        }
        out
    }

    /// One Fetch per leader, at once; false when none reached its broker.
    async fn fetch_round(&mut self) -> bool {
        let mut by_leader: BTreeMap<i32, (Vec<(Tp, i64)>, i32)> = BTreeMap::new();
        for (tp, pos) in &self.positions {
            match self.leaders.get(tp) {
                Some(l) => {
                    let entry = by_leader.entry(*l).or_default();
                    entry.0.push((tp.clone(), pos.offset));
                    entry.1 = entry.1.max(pos.max_bytes);
                }
                None => self.stale_metadata = true,
            }
        }
        if by_leader.is_empty() {
            return !self.stale_metadata || self.positions.is_empty();
        }
        let client = &self.client;
        let results = futures::future::join_all(
            by_leader
                .into_iter()
                .map(|(leader, (parts, bytes))| async move { client.fetch(leader, &parts, bytes, MAX_WAIT_MS).await }),
        )
        .await;
        let mut reached = false;
        for r in results {
            match r {
                Ok(fetched) => {
                    reached = true;
                    for (tp, fp) in fetched {
                        self.take(&tp, fp);
                    }
                }
                Err(e) => {
                    // Leaders may have moved: learn them again before the next round.
                    self.stale_metadata = true;
                    self.error("saga_fetch", &e);
                }
            }
        }
        reached
    }

    /// The records of one partition's answer: decoded, filtered, classified, held.
    fn take(&mut self, tp: &Tp, fp: FetchedPartition) {
        let Some(pos) = self.positions.get_mut(tp) else { return };
        if fp.error_code != 0 {
            let e = KafkaError::from_code(fp.error_code);
            use kafka_protocol::ResponseError as R;
            match R::try_from_code(fp.error_code) {
                // Retention passed the position: go on from the log start the broker reports.
                Some(R::OffsetOutOfRange) => pos.offset = fp.log_start_offset.max(pos.offset),
                _ => self.stale_metadata = true,
            }
            self.errors.collection_error(&self.cluster, "saga_fetch", &e);
            return;
        }
        let mut found = Vec::new();
        let mut unmatched: [u64; 6] = [0; 6];
        let mut progressed = false;
        let mut malformed = None;
        let bytes = fp.records.unwrap_or_default();
        for b in batches(&bytes) {
            if !b.complete {
                break;
            }
            let next = b.last_offset.saturating_add(1);
            if next <= pos.offset {
                continue;
            }
            if !b.control {
                let decoded = records_section(&b, self.decompress_limit)
                    .map_err(|e| e.to_string())
                    .and_then(|section| {
                        let list = records(&section, b.record_count).map_err(|e| e.to_string())?;
                        for r in &list {
                            let offset = b.base_offset.saturating_add(r.offset_delta as i64);
                            if offset < pos.offset {
                                continue;
                            }
                            let at_ms = if b.log_append_time {
                                b.max_timestamp
                            } else {
                                b.base_timestamp.saturating_add(r.timestamp_delta)
                            };
                            pos.last_ts = pos.last_ts.max(at_ms);
                            if at_ms < pos.from_ms {
                                continue;
                            }
                            match read(&self.rules, &tp.0, r) {
                                Err(no_fit) => unmatched[reason_index(no_fit.as_label())] += 1,
                                Ok(ev) => match self.tracker.rank(&ev.event_type) {
                                    None => unmatched[reason_index(Unmatched::UnknownType.as_label())] += 1,
                                    Some(rank) => found.push(Held {
                                        at_ms,
                                        rank,
                                        partition: tp.1,
                                        offset,
                                        topic: tp.0.clone(),
                                        id: ev.id,
                                        event_type: ev.event_type,
                                        trace_id: ev.trace_id,
                                    }),
                                },
                            }
                        }
                        Ok(())
                    });
                if let Err(e) = decoded {
                    malformed = Some(e);
                }
            }
            pos.offset = next;
            progressed = true;
        }
        pos.caught_up = pos.offset >= fp.high_watermark;
        if progressed {
            pos.max_bytes = PARTITION_BYTES;
        } else if !pos.caught_up && !bytes.is_empty() {
            // A batch larger than what was asked: ask for more next time, within the response limit.
            pos.max_bytes = pos
                .max_bytes
                .saturating_mul(2)
                .min(self.decompress_limit.min(i32::MAX as usize) as i32);
        }
        if let Some(why) = malformed {
            self.error(
                "saga_fetch",
                &KafkaError::Protocol(format!("{}[{}]: a batch skipped: {why}", tp.0, tp.1)),
            );
        }
        for (i, n) in unmatched.iter().enumerate() {
            if *n > 0 {
                self.series.unmatched[i].inc_by(*n);
            }
        }
        self.held.extend(found.into_iter().map(Reverse));
    }

    /// The time up to which every followed partition has been read.
    fn frontier(&self, now: i64) -> i64 {
        self.positions
            .values()
            .map(|p| if p.caught_up { now - REORDER_MS } else { p.last_ts })
            .min()
            .unwrap_or(now - REORDER_MS)
    }

    /// Applies, in order, the held events every partition has been read past; decides the failures
    /// whose grace ended up to then.
    fn release(&mut self, now: i64) {
        let frontier = self.frontier(now);
        while let Some(Reverse(top)) = self.held.peek() {
            if top.at_ms > frontier && self.held.len() <= MAX_HELD {
                break;
            }
            let Some(Reverse(h)) = self.held.pop() else { break };
            self.transitions.clear();
            self.tracker.evaluate(h.at_ms, &mut self.transitions);
            match self
                .tracker
                .event(&h.id, &h.event_type, h.at_ms, h.trace_id, h.partition, &mut self.transitions)
            {
                Ok(()) => {
                    if let Some((_, c)) = self.series.events.iter().find(|(t, _)| *t == h.event_type) {
                        c.inc();
                    }
                }
                Err(u) => self.series.unmatched[reason_index(u.as_label())].inc(),
            }
            self.series.count(&self.transitions);
        }
        if self.positions.values().all(|p| p.caught_up) && !self.positions.is_empty() {
            self.replayed = true;
        }
        if self.positions.is_empty() && !self.stale_metadata {
            self.replayed = true;
        }
        if self.replayed {
            self.transitions.clear();
            self.tracker.evaluate(frontier.min(now), &mut self.transitions);
            self.series.count(&self.transitions);
        }
    }

    /// The in-flight and stuck series and the board, or their withdrawal while the state is not current.
    fn publish(&self, now: i64) {
        let (cluster, saga) = (self.cluster.as_str(), self.cfg.name.as_str());
        let current = self.replayed && self.up;
        self.metrics.up.with([cluster, saga]).set(i64::from(current));
        let labels = self.tracker.step_labels();
        if current {
            let (in_flight, stuck) = self.tracker.by_step(now);
            for step in labels {
                self.metrics
                    .in_flight
                    .with([cluster, saga, step])
                    .set(in_flight.get(step).copied().unwrap_or(0) as i64);
                self.metrics
                    .stuck
                    .with([cluster, saga, step])
                    .set(stuck.get(step).copied().unwrap_or(0) as i64);
            }
            self.board.publish(self.index, Some(self.tracker.listed(now, MAX_LISTED)));
        } else {
            for step in labels {
                self.metrics.in_flight.remove([cluster, saga, step]);
                self.metrics.stuck.remove([cluster, saga, step]);
            }
            self.board.publish(self.index, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::saga::event::NoFit;

    #[test]
    fn every_reason_has_its_counter() {
        let labels = [NoFit::NoCorrelation, NoFit::NoType, NoFit::NotJson, NoFit::TooLarge]
            .map(NoFit::as_label)
            .into_iter()
            .chain([Unmatched::UnknownType, Unmatched::BeforeStart].map(Unmatched::as_label));
        let mut seen = BTreeSet::new();
        for l in labels {
            assert!(REASONS.contains(&l), "{l}");
            seen.insert(l);
        }
        assert_eq!(seen.len(), REASONS.len());
    }
}
