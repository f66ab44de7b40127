//! The cluster-wide collector: every `poll_interval`, for each cluster, discover consumer groups, read
//! their committed offsets, state and members, read every partition's log-start and log-end offsets, and
//! turn them into lag, lag seconds, Burrow-style status and consistency windows.
//!
//! Each poll ends in a [`Snapshot`] published to [`Published`]; `/metrics` renders from snapshots only.
//!
//! **An unreachable cluster** (Metadata fails on every known broker and the bootstrap list): its snapshot
//! is withdrawn at once, so its lag series disappear from `/metrics` rather than being served stale
//! (Prometheus marks them stale, alerts on them stop); `eventscope_collector_up{cluster}` becomes 0,
//! `eventscope_collector_last_success_timestamp_seconds` keeps the time of the last good poll, and
//! `eventscope_collector_errors_total` counts each failure by kind. Connections are re-dialled on the next
//! poll, so collection recovers by itself. A group whose offsets cannot be read reports status ERR.

pub mod backlog;
pub mod consistency;
pub mod exposition;
pub mod lag;
pub mod saga;
pub mod snapshot;
pub mod status;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use futures::{stream, StreamExt};
use tokio::sync::watch;

use crate::config::{ClusterConfig, CollectorConfig, LagSecondsMethod, Pattern};
use crate::kafka::client::{ClusterMetadata, GroupDescription, Tp, EARLIEST, LATEST};
use crate::kafka::{now_ms, ClusterClient, KafkaError};
use consistency::{observe_commit, Histogram};
use lag::{age_seconds, find_record_time, RecordTime, Timeline};
pub use snapshot::{GroupRow, GroupTopicRow, PartitionRow, Published, Snapshot, TopicRow};
use status::{Observation, Status, Window};

/// Groups per DescribeGroups + OffsetFetch job (one batched request each where the broker allows).
const GROUP_JOB: usize = 100;
/// Partitions per ListOffsets request.
const LIST_OFFSETS_BATCH: usize = 1000;
/// Partitions per lag-seconds Fetch request, and bytes read per partition (the broker still returns the
/// whole first batch of a partition if it is larger; later partitions' batches may be cut, see `lag`).
const FETCH_BATCH: usize = 100;
const FETCH_PARTITION_BYTES: i32 = 64 * 1024;

/// A cluster's group and topic filters (regexes compiled when the configuration was read).
struct Filters {
    group_allow: Vec<Pattern>,
    group_deny: Vec<Pattern>,
    topic_allow: Vec<Pattern>,
    topic_deny: Vec<Pattern>,
    include_internal: bool,
}

impl Filters {
    fn new(c: &ClusterConfig) -> Filters {
        Filters {
            group_allow: c.group_allow.clone(),
            group_deny: c.group_deny.clone(),
            topic_allow: c.topic_allow.clone(),
            topic_deny: c.topic_deny.clone(),
            include_internal: c.include_internal_topics,
        }
    }

    fn group(&self, g: &str) -> bool {
        (self.group_allow.is_empty() || self.group_allow.iter().any(|r| r.is_match(g))) && !self.group_deny.iter().any(|r| r.is_match(g))
    }

    fn topic(&self, t: &str, internal: bool) -> bool {
        let internal = internal || t.starts_with("__") || t == "_schemas";
        (self.include_internal || !internal)
            && (self.topic_allow.is_empty() || self.topic_allow.iter().any(|r| r.is_match(t)))
            && !self.topic_deny.iter().any(|r| r.is_match(t))
    }
}

#[derive(Default)]
struct GroupState {
    windows: HashMap<Tp, Window>,
    consistency: HashMap<Arc<str>, Histogram>,
}

/// A topic denied to the collector's Fetch (TOPIC_AUTHORIZATION_FAILED) is read again after this long,
/// so that a fixed ACL brings exact lag seconds back without a restart.
pub const FETCH_DENIED_RETRY_MS: i64 = 5 * 60 * 1000;

/// Topics whose records the collector may not read: lag seconds are interpolated for them until
/// [`FETCH_DENIED_RETRY_MS`] after the denial, then reading is tried again.
#[derive(Default)]
struct FetchDenied(HashMap<Arc<str>, i64>);

impl FetchDenied {
    fn deny(&mut self, topic: Arc<str>, now_ms: i64) {
        self.0.insert(topic, now_ms);
    }

    /// Forgets denials older than the retry period.
    fn expire(&mut self, now_ms: i64) {
        self.0.retain(|_, at| now_ms.saturating_sub(*at) < FETCH_DENIED_RETRY_MS);
    }

    fn contains(&self, topic: &str) -> bool {
        self.0.contains_key(topic)
    }
}

/// Why a poll produced no snapshot.
enum PollFailed {
    /// Metadata could not be read from any broker: counted as the `metadata` step.
    Metadata(KafkaError),
    /// ListGroups failed on every broker: each failure is counted already, once per broker.
    ListGroups,
}

#[derive(Default)]
struct State {
    timelines: HashMap<Tp, Timeline>,
    /// Each partition's log-end offsets over the status window, for the append-rate skew.
    ends: HashMap<Tp, std::collections::VecDeque<(i64, i64)>>,
    record_times: HashMap<(Tp, i64), RecordTime>,
    groups: HashMap<String, GroupState>,
    coordinators: HashMap<String, i32>,
    fetch_denied: FetchDenied,
}

/// Collects one cluster.
pub struct ClusterCollector {
    index: usize,
    cfg: ClusterConfig,
    settings: CollectorConfig,
    client: ClusterClient,
    filters: Filters,
    state: State,
    /// The groups' backlog trend, for the common view's drain time.
    trend: backlog::Trend,
    shared: Arc<Published>,
}

impl ClusterCollector {
    pub fn new(index: usize, cfg: ClusterConfig, settings: CollectorConfig, shared: Arc<Published>) -> ClusterCollector {
        let security = cfg.security.clone();
        let client = ClusterClient::new(
            cfg.bootstrap_servers(),
            cfg.client_id(),
            settings.request_timeout,
            settings.max_response_bytes,
            security,
        );
        let filters = Filters::new(&cfg);
        ClusterCollector {
            trend: backlog::Trend::new(settings.status_window, settings.allowed_lag),
            index,
            cfg,
            settings,
            client,
            filters,
            state: State::default(),
            shared,
        }
    }

    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn error(&self, step: &str, e: &KafkaError) {
        self.shared.metrics().collection_error(&self.cfg.name, step, e);
    }

    /// Polls until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(self.settings.poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
            self.poll_once().await;
        }
        tracing::debug!(cluster = self.name(), "collector stopped");
    }

    /// One collection; publishes its snapshot (or withdraws it on failure).
    pub async fn poll_once(&mut self) {
        let started = Instant::now();
        let sm = self.shared.metrics().clone();
        let name = self.cfg.name.clone();
        match self.poll().await {
            Ok(snapshot) => {
                sm.up.with([&name]).set(1);
                sm.last_success.with([&name]).set(snapshot.taken_at_ms as f64 / 1000.0);
                self.shared.publish(self.index, Some(Arc::new(snapshot)));
            }
            Err(failed) => {
                if let PollFailed::Metadata(e) = &failed {
                    self.error("metadata", e);
                }
                sm.up.with([&name]).set(0);
                self.shared.publish(self.index, None);
            }
        }
        sm.poll_duration.with([&name]).observe(started.elapsed().as_secs_f64());
    }

    async fn poll(&mut self) -> Result<Snapshot, PollFailed> {
        let now = now_ms();
        let md = self.client.metadata().await.map_err(PollFailed::Metadata)?;
        let topics: BTreeMap<Arc<str>, Vec<(i32, Option<i32>)>> = md
            .topics
            .iter()
            .filter(|(t, meta)| self.filters.topic(t, meta.internal))
            .map(|(t, meta)| (t.clone(), meta.partitions.iter().map(|(p, l)| (*p, *l)).collect()))
            .collect();

        let groups = self.discover_groups(&md).await?;
        let (descriptions, offsets) = self.read_groups(&groups, &topics).await;

        // Log-end offsets are read after committed offsets, so lag is never negative.
        let (log_start, log_end) = self.read_partition_offsets(&topics).await;
        for (tp, end) in &log_end {
            self.state.timelines.entry(tp.clone()).or_default().observe_log_end(*end, now);
            let ends = self.state.ends.entry(tp.clone()).or_default();
            if ends.len() == self.settings.status_window {
                ends.pop_front();
            }
            ends.push_back((*end, now));
        }
        self.state.ends.retain(|tp, _| log_end.contains_key(tp));
        self.state
            .timelines
            .retain(|tp, _| log_end.contains_key(tp) || topics.contains_key(&tp.0));

        if self.settings.lag_seconds_method == LagSecondsMethod::Fetch {
            self.read_record_times(now, &offsets, &log_start, &log_end, &topics).await;
        }

        let snapshot_groups = self.evaluate(now, &groups, &descriptions, &offsets, &log_start, &log_end);
        let topic_rows = topics
            .iter()
            .map(|(t, parts)| TopicRow {
                topic: t.clone(),
                skew: skew(parts.iter().filter_map(|(p, _)| {
                    let ends = self.state.ends.get(&(t.clone(), *p))?;
                    let (&(e0, t0), &(e1, t1)) = (ends.front()?, ends.back()?);
                    (t1 > t0).then(|| (e1 - e0).max(0) as f64 / ((t1 - t0) as f64 / 1000.0))
                })),
                partitions: parts
                    .iter()
                    .map(|(p, _)| {
                        let tp = (t.clone(), *p);
                        (*p, log_start.get(&tp).copied(), log_end.get(&tp).copied())
                    })
                    .collect(),
            })
            .collect();
        let backlog = backlog::kafka_rows(&snapshot_groups, &mut self.trend, now);
        Ok(Snapshot {
            cluster: self.cfg.name.clone(),
            taken_at_ms: now,
            topics: topic_rows,
            groups: snapshot_groups,
            backlog,
        })
    }

    /// The groups to watch: the configured list, or ListGroups on every broker, filtered.
    async fn discover_groups(&mut self, md: &ClusterMetadata) -> Result<Vec<String>, PollFailed> {
        if !self.cfg.groups.is_empty() {
            return Ok(self.cfg.groups.clone());
        }
        let client = &self.client;
        let brokers: Vec<i32> = md.brokers.keys().copied().collect();
        let results: Vec<_> = stream::iter(brokers)
            .map(|node| async move { (node, client.list_groups(node).await) })
            .buffer_unordered(self.settings.max_concurrency)
            .collect()
            .await;
        let mut groups = BTreeSet::new();
        let mut failed = 0;
        let mut ok = 0;
        for (_, r) in results {
            match r {
                Ok(list) => {
                    ok += 1;
                    groups.extend(list.into_iter().filter(|g| g.state != "Dead").map(|g| g.group));
                }
                Err(e) => {
                    self.error("list_groups", &e);
                    failed += 1;
                }
            }
        }
        if ok == 0 && failed > 0 {
            return Err(PollFailed::ListGroups);
        }
        Ok(groups.into_iter().filter(|g| self.filters.group(g)).collect())
    }

    /// Coordinators, descriptions and committed offsets of the groups, batched per coordinator.
    async fn read_groups(
        &mut self,
        groups: &[String],
        topics: &BTreeMap<Arc<str>, Vec<(i32, Option<i32>)>>,
    ) -> (
        HashMap<String, GroupDescription>,
        HashMap<String, Result<HashMap<Tp, i64>, KafkaError>>,
    ) {
        let mut offsets: HashMap<String, Result<HashMap<Tp, i64>, KafkaError>> = HashMap::new();
        let missing: Vec<String> = groups
            .iter()
            .filter(|g| !self.state.coordinators.contains_key(*g))
            .cloned()
            .collect();
        if !missing.is_empty() {
            match self.client.find_coordinators(&missing).await {
                Ok(found) => {
                    for (g, r) in found {
                        match r {
                            Ok(node) => {
                                self.state.coordinators.insert(g, node);
                            }
                            Err(e) => {
                                self.error("find_coordinator", &e);
                                offsets.insert(g, Err(e));
                            }
                        }
                    }
                }
                Err(e) => {
                    self.error("find_coordinator", &e);
                    for g in missing {
                        offsets.insert(g, Err(e.clone()));
                    }
                }
            }
        }
        let mut by_node: BTreeMap<i32, Vec<String>> = BTreeMap::new();
        for g in groups {
            if let Some(node) = self.state.coordinators.get(g) {
                by_node.entry(*node).or_default().push(g.clone());
            }
        }
        // An explicit group list is small: ask for the watched topics' partitions by name (brokers such as
        // librdkafka's mock answer nothing to "all topics"). Discovered groups ask for all they committed.
        let explicit: Option<BTreeMap<Arc<str>, Vec<i32>>> = (!self.cfg.groups.is_empty()).then(|| {
            topics
                .iter()
                .map(|(t, ps)| (t.clone(), ps.iter().map(|(p, _)| *p).collect()))
                .collect()
        });
        // One job per batch of groups, so that batches for the same coordinator are in flight together on
        // its pipelined connection.
        let jobs: Vec<(i32, Vec<String>)> = by_node
            .into_iter()
            .flat_map(|(node, gs)| gs.chunks(GROUP_JOB).map(|c| (node, c.to_vec())).collect::<Vec<_>>())
            .collect();
        let client = &self.client;
        let explicit_ref = explicit.as_ref();
        let results: Vec<_> = stream::iter(jobs)
            .map(|(node, gs)| async move {
                let described = client.describe_groups(node, &gs).await;
                let fetched = client.offset_fetch(node, &gs, explicit_ref).await;
                (node, gs, described, fetched)
            })
            .buffer_unordered(self.settings.max_concurrency)
            .collect()
            .await;
        let mut descriptions = HashMap::new();
        for (_, gs, described, fetched) in results {
            match described {
                Ok(list) => {
                    for d in list {
                        match d {
                            Ok(d) => {
                                descriptions.insert(d.group.clone(), d);
                            }
                            Err((_, e)) => self.error("describe_groups", &e),
                        }
                    }
                }
                // Brokers without DescribeGroups (librdkafka's mock): membership stays unknown.
                Err(KafkaError::Unsupported { .. }) => {}
                Err(e) => self.error("describe_groups", &e),
            }
            match fetched {
                Ok(map) => {
                    for (g, r) in map {
                        if let Err(e) = &r {
                            self.error("offset_fetch", e);
                            self.state.coordinators.remove(&g);
                        }
                        offsets.insert(g, r);
                    }
                }
                Err(e) => {
                    self.error("offset_fetch", &e);
                    for g in gs {
                        self.state.coordinators.remove(&g);
                        offsets.insert(g, Err(e.clone()));
                    }
                }
            }
        }
        self.state.coordinators.retain(|g, _| groups.contains(g));
        (descriptions, offsets)
    }

    /// Log-start and log-end offsets of every watched partition, batched per leader.
    async fn read_partition_offsets(&self, topics: &BTreeMap<Arc<str>, Vec<(i32, Option<i32>)>>) -> (HashMap<Tp, i64>, HashMap<Tp, i64>) {
        let mut by_leader: BTreeMap<i32, Vec<Tp>> = BTreeMap::new();
        for (t, parts) in topics {
            for (p, leader) in parts {
                if let Some(l) = leader {
                    by_leader.entry(*l).or_default().push((t.clone(), *p));
                }
            }
        }
        let mut jobs = Vec::new();
        for (leader, tps) in &by_leader {
            for chunk in tps.chunks(LIST_OFFSETS_BATCH) {
                for ts in [EARLIEST, LATEST] {
                    jobs.push((*leader, chunk.to_vec(), ts));
                }
            }
        }
        let client = &self.client;
        let results: Vec<_> = stream::iter(jobs)
            .map(|(leader, chunk, ts)| async move { (ts, client.list_offsets(leader, &chunk, ts).await) })
            .buffer_unordered(self.settings.max_concurrency)
            .collect()
            .await;
        let (mut start, mut end) = (HashMap::new(), HashMap::new());
        for (ts, r) in results {
            match r {
                Ok(map) => {
                    for (tp, r) in map {
                        match r {
                            Ok(o) if o >= 0 => {
                                if ts == LATEST {
                                    end.insert(tp, o);
                                } else {
                                    start.insert(tp, o);
                                }
                            }
                            Ok(_) => {}
                            Err(e) => self.error("list_offsets", &e),
                        }
                    }
                }
                Err(e) => self.error("list_offsets", &e),
            }
        }
        (start, end)
    }

    /// Reads the timestamp of the record at each lagging committed offset not already known.
    async fn read_record_times(
        &mut self,
        now: i64,
        offsets: &HashMap<String, Result<HashMap<Tp, i64>, KafkaError>>,
        log_start: &HashMap<Tp, i64>,
        log_end: &HashMap<Tp, i64>,
        topics: &BTreeMap<Arc<str>, Vec<(i32, Option<i32>)>>,
    ) {
        let leaders: HashMap<Tp, i32> = topics
            .iter()
            .flat_map(|(t, ps)| ps.iter().filter_map(move |(p, l)| l.map(|l| ((t.clone(), *p), l))))
            .collect();
        self.state.fetch_denied.expire(now);
        let mut wanted: BTreeSet<(i32, Tp, i64)> = BTreeSet::new();
        for committed in offsets.values().flatten() {
            for (tp, &c) in committed {
                let (Some(&end), Some(&leader)) = (log_end.get(tp), leaders.get(tp)) else {
                    continue;
                };
                let at = c.max(log_start.get(tp).copied().unwrap_or(0));
                if at < end && !self.state.fetch_denied.contains(&tp.0) && !self.state.record_times.contains_key(&(tp.clone(), at)) {
                    wanted.insert((leader, tp.clone(), at));
                }
            }
        }
        // One request may name a partition once: split into rounds of distinct partitions per leader.
        let mut requests: Vec<(i32, Vec<(Tp, i64)>)> = Vec::new();
        let mut rounds: HashMap<(i32, usize), Vec<(Tp, i64)>> = HashMap::new();
        let mut seen: HashMap<(i32, Tp), usize> = HashMap::new();
        for (leader, tp, at) in wanted {
            let round = seen.entry((leader, tp.clone())).or_insert(0);
            rounds.entry((leader, *round)).or_default().push((tp, at));
            *round += 1;
        }
        for ((leader, _), parts) in rounds {
            for chunk in parts.chunks(FETCH_BATCH) {
                requests.push((leader, chunk.to_vec()));
            }
        }
        let client = &self.client;
        let results: Vec<_> = stream::iter(requests)
            .map(|(leader, parts)| async move {
                let r = client.fetch_at(leader, &parts, FETCH_PARTITION_BYTES).await;
                (parts, r)
            })
            .buffer_unordered(self.settings.max_concurrency)
            .collect()
            .await;
        let mut anchors = Vec::new();
        for (parts, r) in results {
            let fetched = match r {
                Ok(f) => f,
                Err(e) => {
                    self.error("fetch", &e);
                    continue;
                }
            };
            for (tp, at) in parts {
                let Some(fp) = fetched.get(&tp) else { continue };
                if let Err(e) = crate::kafka::check_code(fp.error_code) {
                    if e.is_topic_authorization() {
                        self.error("fetch", &e);
                        self.state.fetch_denied.deny(tp.0.clone(), now);
                        continue;
                    }
                }
                let Some(records) = &fp.records else { continue };
                anchors.clear();
                let found = find_record_time(records, at, &mut anchors);
                tracing::debug!(topic = %tp.0, partition = tp.1, at, bytes = records.len(), anchors = anchors.len(), ?found, "record time");
                if let Some(rt) = found {
                    self.state.record_times.insert((tp.clone(), at), rt);
                }
                let timeline = self.state.timelines.entry(tp.clone()).or_default();
                for &(o, ts) in &anchors {
                    if o < log_end.get(&tp).copied().unwrap_or(i64::MAX) {
                        timeline.observe_exact(o, ts);
                    }
                }
            }
        }
    }

    /// Lag, lag seconds, status and consistency windows of every group; updates the windows.
    fn evaluate(
        &mut self,
        now: i64,
        groups: &[String],
        descriptions: &HashMap<String, GroupDescription>,
        offsets: &HashMap<String, Result<HashMap<Tp, i64>, KafkaError>>,
        log_start: &HashMap<Tp, i64>,
        log_end: &HashMap<Tp, i64>,
    ) -> Vec<GroupRow> {
        let window_size = self.settings.status_window;
        let allowed_lag = self.settings.allowed_lag;
        let mut rows = Vec::new();
        let mut used_times: HashSet<(Tp, i64)> = HashSet::new();
        let mut min_committed: HashMap<Tp, i64> = HashMap::new();
        for g in groups {
            let desc = descriptions.get(g);
            if desc.is_some_and(|d| d.state == "Dead") {
                continue;
            }
            let members = desc.map(|d| d.members);
            let state = self.state.groups.entry(g.clone()).or_default();
            let committed = match offsets.get(g) {
                Some(Ok(c)) => c,
                _ => {
                    // Offsets unreadable: ERR on every topic the group was last seen on.
                    let topics: BTreeSet<Arc<str>> = state.windows.keys().map(|tp| tp.0.clone()).collect();
                    let topics = topics
                        .into_iter()
                        .map(|t| GroupTopicRow {
                            consistency: state.consistency.get(&t).cloned().unwrap_or_default(),
                            topic: t,
                            status: Status::Err,
                            partitions: Vec::new(),
                        })
                        .collect();
                    rows.push(GroupRow {
                        group: g.clone(),
                        members,
                        topics,
                    });
                    continue;
                }
            };
            let mut by_topic: BTreeMap<Arc<str>, Vec<(i32, i64)>> = BTreeMap::new();
            for (tp, &c) in committed {
                if log_end.contains_key(tp) || self.state.timelines.contains_key(tp) {
                    by_topic.entry(tp.0.clone()).or_default().push((tp.1, c));
                }
            }
            state.windows.retain(|tp, _| committed.contains_key(tp));
            state.consistency.retain(|t, _| by_topic.contains_key(t));
            let mut topic_rows = Vec::new();
            for (topic, mut parts) in by_topic {
                parts.sort_unstable();
                let mut worst = Status::Ok;
                let mut partition_rows = Vec::with_capacity(parts.len());
                let hist = state.consistency.entry(topic.clone()).or_default();
                for (p, c) in parts {
                    let tp: Tp = (topic.clone(), p);
                    let timeline = self.state.timelines.get(&tp);
                    let end = log_end.get(&tp).copied();
                    let lag = end.map(|e| (e - c).max(0) as u64);
                    let at = c.max(log_start.get(&tp).copied().unwrap_or(0));
                    let lag_seconds = match lag {
                        Some(0) => Some(0.0),
                        Some(_) => {
                            let key = (tp.clone(), at);
                            let exact = self.state.record_times.get(&key).map(|rt| rt.timestamp_ms);
                            if exact.is_some() {
                                used_times.insert(key);
                            }
                            exact
                                .or_else(|| timeline.and_then(|t| t.estimate(at)))
                                .map(|ts| age_seconds(now, ts))
                        }
                        None => None,
                    };
                    let window = state.windows.entry(tp.clone()).or_insert_with(|| Window::new(window_size));
                    if let (Some(prev), Some(timeline)) = (window.last(), timeline) {
                        if c > prev.offset {
                            observe_commit(hist, prev.offset, c, now, |o| timeline.estimate(o).unwrap_or(now));
                        }
                    }
                    if let Some(l) = lag {
                        window.push(Observation {
                            offset: c,
                            lag: l,
                            at_ms: now,
                        });
                        worst = worst.max(window.evaluate(allowed_lag, members));
                    }
                    let min = min_committed.entry(tp).or_insert(c);
                    *min = (*min).min(c);
                    partition_rows.push(PartitionRow {
                        partition: p,
                        committed: c,
                        lag,
                        lag_seconds,
                    });
                }
                topic_rows.push(GroupTopicRow {
                    topic: topic.clone(),
                    status: worst,
                    partitions: partition_rows,
                    consistency: hist.clone(),
                });
            }
            rows.push(GroupRow {
                group: g.clone(),
                members,
                topics: topic_rows,
            });
        }
        let watched: HashSet<&String> = groups.iter().collect();
        self.state.groups.retain(|g, _| watched.contains(g));
        self.state.record_times.retain(|k, _| used_times.contains(k));
        for (tp, timeline) in self.state.timelines.iter_mut() {
            let floor = min_committed.get(tp).copied().or_else(|| log_start.get(tp).copied()).unwrap_or(0);
            timeline.prune_below(floor);
        }
        rows.sort_by(|a, b| a.group.cmp(&b.group));
        rows
    }
}

/// The busiest value over the mean (the seed's partition skew): `None` without values or with a mean of 0.
pub fn skew(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (mut n, mut sum, mut max) = (0usize, 0.0f64, 0.0f64);
    for v in values {
        n += 1;
        sum += v;
        max = max.max(v);
    }
    (n > 0 && sum > 0.0).then(|| max / (sum / n as f64))
}

/// The names of the other brokers' sources, in the order of their slots in [`Published`].
pub fn broker_names(config: &crate::config::Config) -> Vec<String> {
    let rabbitmq = config.rabbitmq.iter().map(|r| r.name.clone());
    let nats = config.nats.iter().map(|n| n.name.clone());
    let sqs = config.sqs.iter().map(|q| q.name.clone());
    rabbitmq.chain(nats).chain(sqs).collect()
}

/// Spawns one collector per cluster and one reader per saga (their series registered in `registry`);
/// returns their join handles.
pub fn spawn_all(
    config: &crate::config::Config,
    shared: &Arc<Published>,
    registry: &prometheus::Registry,
    shutdown: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks: Vec<_> = config
        .clusters
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let collector = ClusterCollector::new(i, c.clone(), config.collector.clone(), shared.clone());
            tokio::spawn(collector.run(shutdown.clone()))
        })
        .collect();
    // The other brokers' sources, in the order of their slots (`broker_names`).
    fn spawn<S: backlog::Source>(
        source: S,
        name: &str,
        index: usize,
        interval: std::time::Duration,
        shared: &Arc<Published>,
        shutdown: &watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(backlog::run(
            source,
            name.to_string(),
            index,
            interval,
            shared.clone(),
            shutdown.clone(),
        ))
    }
    let interval = config.collector.poll_interval;
    let mut slots = 0..;
    for r in &config.rabbitmq {
        let index = slots.next().unwrap_or_default();
        match backlog::rabbitmq::Rabbitmq::new(r.clone(), &config.collector) {
            Ok(source) => tasks.push(spawn(source, &r.name, index, interval, shared, shutdown)),
            // Checked when the configuration was read: cannot happen.
            Err(why) => tracing::error!(source = %r.name, %why, "not watched"),
        }
    }
    for n in &config.nats {
        let source = backlog::nats::Nats::new(n.clone(), &config.collector);
        tasks.push(spawn(source, &n.name, slots.next().unwrap_or_default(), interval, shared, shutdown));
    }
    for q in &config.sqs {
        let source = backlog::sqs::Sqs::new(q.clone(), &config.collector);
        tasks.push(spawn(source, &q.name, slots.next().unwrap_or_default(), interval, shared, shutdown));
    }
    if !config.sagas.is_empty() {
        let metrics = crate::telemetry::saga::SagaMetrics::new(registry);
        for (i, saga) in config.sagas.iter().enumerate() {
            let Some(cluster) = config.clusters.iter().find(|c| c.name == saga.cluster) else {
                continue;
            };
            let reader = saga::reader::Reader::new(
                i,
                saga.clone(),
                cluster,
                &config.collector,
                metrics.clone(),
                shared.metrics().clone(),
                shared.sagas().clone(),
            );
            tasks.push(tokio::spawn(reader.run(shutdown.clone())));
        }
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Defect 10: a denied topic used to stay denied (lag seconds interpolated) until a restart.
    #[test]
    fn a_denied_topic_is_read_again_after_the_retry_period() {
        let mut denied = FetchDenied::default();
        denied.deny("orders".into(), 1_000);
        denied.expire(1_000 + FETCH_DENIED_RETRY_MS - 1);
        assert!(denied.contains("orders"));
        denied.expire(1_000 + FETCH_DENIED_RETRY_MS);
        assert!(!denied.contains("orders"));
    }

    #[test]
    fn skew_is_the_busiest_over_the_mean() {
        assert_eq!(skew([30.0, 10.0, 20.0].into_iter()), Some(1.5));
        assert_eq!(skew([5.0].into_iter()), Some(1.0));
        assert_eq!(skew([0.0, 0.0].into_iter()), None);
        assert_eq!(skew(std::iter::empty()), None);
    }

    #[test]
    fn topic_authorization_is_told_by_name() {
        assert!(KafkaError::from_code(kafka_protocol::ResponseError::TopicAuthorizationFailed.code()).is_topic_authorization());
        assert!(!KafkaError::from_code(kafka_protocol::ResponseError::GroupAuthorizationFailed.code()).is_topic_authorization());
    }
}
