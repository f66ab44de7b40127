//! The consuming application as the sidecar sees it: which records each Fetch response delivered, and
//! which offsets each OffsetCommit committed. From those two, measured rather than estimated:
//!
//! - **consistency window**: for every record the application commits, commit time − the record's append
//!   timestamp (LogAppendTime when the topic uses it, else CreateTime; `eventscope_kafka_delivered_records_total`
//!   says which), into `eventscope_consistency_window_seconds{source="sidecar"}`;
//! - **delivery latency**: delivery time − append timestamp, per topic;
//! - **lag** from the high watermarks in Fetch responses and the group's commits, and **lag seconds** from the
//!   append time of the first record not yet committed (a record the sidecar delivered);
//! - a `process {topic}` span per record that carries `traceparent`, from delivery to the commit covering it.
//!
//! Fetch requests carry no group: records are kept per client id (`client.id`, which Kafka clients send in
//! every request header) and matched with the commits of the same client id. Delivered records are kept
//! as runs (consecutive offsets, one append timestamp: one entry for hundreds of records at high rates),
//! so every record's window is measured however many a consumer holds between commits. Memory is
//! bounded: at most [`MAX_TRACKED_RUNS`] runs (records beyond are counted, not tracked) and
//! [`MAX_PENDING_SPANS`] sampled spans (beyond, dropped and counted) in all, and partitions unseen for
//! [`IDLE_EXPIRY`] are forgotten along with their series.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::kafka::unix_ms;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, FetchRequest, OffsetCommitRequest, OffsetCommitResponse};
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;

use crate::kafka::{batch, records};
use crate::telemetry::contract::{L_CLUSTER, L_GROUP, L_PARTITION, L_SOURCE, L_TOPIC};
use crate::telemetry::kafka::{ConsumeMetrics, ProxyErrorKind, ProxyMetrics};
use crate::telemetry::labels::{BoundedLabel, OTHER_LABEL};
use crate::telemetry::partitions::{self, Labels, Row};
use crate::telemetry::traces::{SpanGroup, SpanIds, Tracer};

/// Runs of delivered records awaiting their commit, in all partitions together: 24 bytes each, 6 MB at
/// most. librdkafka stamps records in milliseconds, so a partition makes at most 1,000 runs a second
/// whatever its rate: this covers the 5 s between librdkafka's and Java's default auto-commits for 50
/// busy partitions, minutes for a few, and at low rates (a run may hold one record) 250,000 records.
pub const MAX_TRACKED_RUNS: usize = 250_000;
/// Sampled `process` spans awaiting their commit, in all partitions together: 72 bytes each
/// ([`SpanIds`] and the record's offset and delivery time), 22 MB at most, reached only when most
/// traces are sampled. Every trace sampled, a consumer of 50,000 records/s that commits every 5 s holds
/// 250,000 (`benches/sidecar_rates.rs`); beyond this bound a record's span is dropped and counted.
pub const MAX_PENDING_SPANS: usize = 300_000;
/// A partition not fetched or committed for this long is forgotten (its consumer moved or stopped).
pub const IDLE_EXPIRY: Duration = Duration::from_secs(300);

mod pieces;
mod runs;

pub use pieces::{Batches, FetchPiece, Pieces};
use runs::Run;
use runs::Runs;

type Key = (String, String, i32);

/// A sampled `process` span of a delivered record, ended by the commit that covers it.
struct PendingSpan {
    offset: i64,
    delivered: SystemTime,
    ids: SpanIds,
}

#[derive(Default)]
struct Partition {
    runs: Runs,
    spans: VecDeque<PendingSpan>,
    last_offset: Option<i64>,
    seen: Option<Instant>,
}

struct Committed {
    offset: i64,
    client: String,
    seen: Instant,
    /// Its series' label set (bounded), made at its first commit; `shared` if the group or the topic
    /// is beyond its bound (`_other`), which other partitions then share.
    labels: Labels,
    shared: bool,
}

#[derive(Default)]
struct State {
    /// (client id, topic, partition) → records delivered and not yet committed.
    delivered: HashMap<Key, Partition>,
    /// (group, topic, partition) → the group's last successful commit.
    committed: HashMap<Key, Committed>,
    /// (topic, partition) → high watermark from the latest Fetch response, and when.
    high_watermarks: HashMap<(String, i32), (i64, Instant)>,
    /// Runs and spans held in all partitions: bounded by [`MAX_TRACKED_RUNS`] and [`MAX_PENDING_SPANS`].
    runs_held: usize,
    spans_held: usize,
    /// (group label, topic label) → when a commit last fed its consistency series.
    windows_seen: HashMap<(String, String), Instant>,
}

/// Gives back most of a deque's room once it holds under a quarter of it (a burst between two commits,
/// committed): at most one copy of what is left per commit.
fn shrink<T>(deque: &mut VecDeque<T>) {
    if deque.capacity() > 64 && deque.len() < deque.capacity() / 4 {
        deque.shrink_to(deque.len() * 2);
    }
}

/// A Fetch request's partitions and the offsets asked for, kept until its response.
pub struct FetchAsk {
    client: String,
    offsets: HashMap<(String, i32), i64>,
}

/// An OffsetCommit request's group and offsets, kept until its response.
pub struct CommitAsk {
    client: String,
    group: String,
    offsets: HashMap<(String, i32), i64>,
}

/// Reads a Fetch request frame (length prefix included).
pub fn fetch_request(frame: &Bytes, version: i16) -> Option<FetchAsk> {
    let (header, request) = crate::kafka::decode::request::<FetchRequest>(frame, ApiKey::Fetch, version)?;
    let offsets = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| ((t.topic.0.to_string(), p.partition), p.fetch_offset))
        })
        .collect();
    Some(FetchAsk {
        client: super::frame::client_id(&header),
        offsets,
    })
}

/// Reads an OffsetCommit request frame (length prefix included).
pub fn commit_request(frame: &Bytes, version: i16) -> Option<CommitAsk> {
    let (header, request) = crate::kafka::decode::request::<OffsetCommitRequest>(frame, ApiKey::OffsetCommit, version)?;
    let offsets = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| ((t.name.0.to_string(), p.partition_index), p.committed_offset))
        })
        .collect();
    Some(CommitAsk {
        client: super::frame::client_id(&header),
        group: request.group_id.0.to_string(),
        offsets,
    })
}

/// Distinct `consumergroup` values the sidecar reports before it folds the rest into `_other` (group ids
/// come from client requests).
pub const MAX_GROUP_LABELS: usize = 256;
/// (group, topic, partition) commits tracked at most, and so lag series at most: partitions come from
/// client requests. Commits for further partitions are not measured until idle ones expire.
pub const MAX_COMMITTED_PARTITIONS: usize = 10_000;

/// Consumption state of one sidecar.
pub struct Consumption {
    state: Mutex<State>,
    metrics: ProxyMetrics,
    groups: BoundedLabel,
    tracer: Tracer,
    cluster: String,
    decompress_limit: usize,
    max_batch: usize,
    /// Refreshes so far, numbered under the state's lock: the order in which they were computed.
    refreshes: std::sync::atomic::AtomicU64,
    /// Called while a batch is decoded (tests: to check that nothing waits on the observer meanwhile).
    #[cfg(test)]
    decode_hook: Mutex<Option<Box<dyn Fn() + Send>>>,
    /// Called between a refresh's computing and its publishing (tests: to publish them out of order).
    #[cfg(test)]
    publish_hook: Mutex<Option<std::sync::Arc<dyn Fn() + Send + Sync>>>,
}

/// What one partition of a Fetch response delivered, read without the state's lock.
#[derive(Default)]
struct Delivered {
    runs: Vec<Run>,
    spans: Vec<PendingSpan>,
    /// Sampled spans beyond [`MAX_PENDING_SPANS`] in this one piece: dropped.
    spans_over: u64,
    last: Option<i64>,
    by_timestamp: [u64; 2],
    by_context: [u64; 3],
}

impl Delivered {
    fn push(&mut self, offset: i64, appended_ms: i64) {
        self.last = Some(offset);
        if let Some(run) = self.runs.last_mut() {
            if run.end() == offset && run.appended_ms == appended_ms && run.count < u32::MAX {
                run.count += 1;
                return;
            }
        }
        self.runs.push(Run {
            first: offset,
            count: 1,
            appended_ms,
        });
    }
}

impl Consumption {
    /// `max_batch`: record batches of Fetch responses larger than this are relayed, not read.
    pub fn new(metrics: ProxyMetrics, tracer: Tracer, cluster: String, decompress_limit: usize, max_batch: usize) -> Consumption {
        Consumption {
            max_batch,
            state: Mutex::new(State::default()),
            refreshes: std::sync::atomic::AtomicU64::new(0),
            metrics,
            groups: BoundedLabel::new(MAX_GROUP_LABELS),
            tracer,
            cluster,
            decompress_limit,
            #[cfg(test)]
            decode_hook: Mutex::new(None),
            #[cfg(test)]
            publish_hook: Mutex::new(None),
        }
    }

    fn m(&self) -> &ConsumeMetrics {
        &self.metrics.consume
    }

    /// The state, also after a panic while it was held: [`Consumption::reset`] follows such a panic.
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Forgets everything measured and withdraws the series built from it: after the observer panicked
    /// (the state may be half-updated) or stopped (nothing would update the series any more). Later
    /// traffic builds them again.
    pub fn reset(&self) {
        let refresh = {
            let mut state = self.lock();
            *state = State::default();
            self.next_refresh()
        };
        let m = self.m();
        m.partitions.clear(refresh);
        m.consistency.reset();
    }

    /// A whole Fetch response (length prefix included) for `ask`, relayed at `delivered_at`: read as the
    /// relay reads a streamed one, cut into [`FetchPiece`]s (tests, the fuzz targets).
    pub fn fetch_response(&self, frame: &Bytes, version: i16, ask: &FetchAsk, delivered_at: SystemTime) {
        let Some(mut pieces) = Pieces::new(version, self.max_batch, None) else {
            return;
        };
        let body = frame.get(4..).unwrap_or_default();
        let mut observe = |piece: FetchPiece, records: Batches, _| self.fetch_piece(ask, &piece, &records, delivered_at);
        if let Err(e) = pieces.feed(body, &mut observe).and_then(|()| pieces.finish()) {
            self.metrics
                .error(ProxyErrorKind::RecordsUnreadable, &format!("fetch response: {e}"));
        }
    }

    /// One partition's piece of a Fetch response for `ask`, relayed at `delivered_at`: its high watermark,
    /// and the records `batches` delivered. Batches are decompressed and read without the state's lock,
    /// which is taken twice, briefly: to learn where the partition's delivered records end, and to add
    /// the new ones.
    pub fn fetch_piece(&self, ask: &FetchAsk, piece: &FetchPiece, batches: &Batches, delivered_at: SystemTime) {
        if piece.error_code != 0 {
            return;
        }
        let now = Instant::now();
        let now_ms = unix_ms(delivered_at);
        let topic = piece.topic.clone();
        let label = self.metrics.topic_label(&topic);
        let key = (ask.client.clone(), topic.clone(), piece.partition);
        let last = {
            let mut state = self.lock();
            if !piece.continuation {
                state
                    .high_watermarks
                    .insert((topic.clone(), piece.partition), (piece.high_watermark, now));
            }
            state.delivered.get(&key).and_then(|part| part.last_offset)
        };
        if batches.is_empty() {
            return;
        }
        // Records before the fetch position (a batch starts earlier) are not delivered to the application;
        // neither are ones delivered before (a re-fetch). A continuation starts after the piece before it.
        let asked = ask.offsets.get(&(topic.clone(), piece.partition)).copied();
        let from = if piece.continuation {
            last.map(|o| o + 1).or(asked)
        } else {
            asked.or(last.map(|o| o + 1))
        }
        .unwrap_or(i64::MIN);
        let delivered = self.read_delivered(batches, from, now_ms, delivered_at, &label, &topic, piece.partition);
        let (untracked, dropped) = self.add_delivered(key, from, now, delivered.runs, delivered.spans, delivered.last);
        if untracked > 0 {
            self.m().untracked.inc_by(untracked);
        }
        self.tracer.dropped(dropped + delivered.spans_over);
        for (i, timestamp_type) in ["CreateTime", "LogAppendTime"].iter().enumerate() {
            if delivered.by_timestamp[i] > 0 {
                self.m()
                    .delivered
                    .with([label.as_str(), timestamp_type])
                    .inc_by(delivered.by_timestamp[i]);
            }
        }
        for (i, context) in ["continued", "invalid", "absent"].iter().enumerate() {
            if delivered.by_context[i] > 0 {
                self.m()
                    .trace_context
                    .with([label.as_str(), "consume", context])
                    .inc_by(delivered.by_context[i]);
            }
        }
    }

    /// The records at or after `from` in a partition's record batches: runs, sampled spans, counts. Holds
    /// no lock; at most [`MAX_PENDING_SPANS`] spans are kept (the rest are counted dropped).
    #[allow(clippy::too_many_arguments)]
    fn read_delivered(
        &self,
        records: &Batches,
        from: i64,
        now_ms: i64,
        delivered_at: SystemTime,
        label: &str,
        topic: &str,
        partition: i32,
    ) -> Delivered {
        let mut out = Delivered::default();
        // No span is kept for nowhere (no exporter).
        let exporting = self.tracer.exporting();
        // The histogram buffered locally and flushed once, when it goes out of scope.
        let latency = self.m().delivery_latency.with([label]).local();
        for b in records.iter().flat_map(batch::batches) {
            if !b.complete || b.control || b.last_offset < from {
                continue;
            }
            #[cfg(test)]
            if let Some(hook) = self.decode_hook.lock().expect("hook lock").as_ref() {
                hook();
            }
            let section = match records::records_section(&b, self.decompress_limit) {
                Ok(s) => s,
                Err(e) => {
                    self.metrics
                        .error(ProxyErrorKind::RecordsUnreadable, &format!("fetch {topic}/{partition}: {e}"));
                    continue;
                }
            };
            let Ok(list) = records::records(&section, b.record_count) else {
                self.metrics.error(
                    ProxyErrorKind::RecordsUnreadable,
                    &format!("fetch {topic}/{partition}: malformed records"),
                );
                continue;
            };
            for r in list {
                let offset = b.base_offset.saturating_add(r.offset_delta as i64);
                if offset < from || out.last.is_some_and(|l| offset <= l) {
                    continue;
                }
                let appended_ms = if b.log_append_time {
                    b.max_timestamp
                } else {
                    b.base_timestamp.saturating_add(r.timestamp_delta)
                };
                out.by_timestamp[b.log_append_time as usize] += 1;
                latency.observe((now_ms.saturating_sub(appended_ms)).max(0) as f64 / 1000.0);
                let parent = r.traceparent.and_then(|tp| crate::telemetry::traces::extract(tp, r.tracestate));
                out.by_context[match (r.traceparent, &parent) {
                    (Some(_), Some(_)) => 0,
                    (Some(_), None) => 1,
                    (None, _) => 2,
                }] += 1;
                out.push(offset, appended_ms);
                let span = parent
                    .filter(|_| exporting)
                    .map(|p| self.tracer.start_span(Some(p), "process", SpanKind::Consumer))
                    .filter(|s| s.context.is_sampled());
                if let Some(start) = span {
                    if out.spans.len() < MAX_PENDING_SPANS {
                        out.spans.push(PendingSpan {
                            offset,
                            delivered: delivered_at,
                            ids: start.into(),
                        });
                    } else {
                        out.spans_over += 1;
                    }
                }
            }
        }
        out
    }

    /// Adds what a Fetch response delivered to its partition's records awaiting a commit, within
    /// [`MAX_TRACKED_RUNS`] and [`MAX_PENDING_SPANS`]: the number of records that did not fit, and of
    /// sampled spans dropped.
    fn add_delivered(&self, key: Key, from: i64, now: Instant, runs: Vec<Run>, spans: Vec<PendingSpan>, last: Option<i64>) -> (u64, u64) {
        let mut state = self.lock();
        let (runs_held, spans_held) = (state.runs_held, state.spans_held);
        let part = state.delivered.entry(key).or_default();
        part.seen = Some(now);
        let (mut runs_removed, mut spans_removed) = (0usize, 0usize);
        if part.last_offset.is_some_and(|l| from <= l) {
            // The consumer seeked back: what it had from there on is no longer pending.
            let held = part.spans.len();
            part.spans.retain(|s| s.offset < from);
            spans_removed = held - part.spans.len();
            runs_removed = part.runs.truncate(from);
            part.last_offset = part.runs.last();
        }
        let (mut added, mut spans_added, mut dropped) = (0usize, 0usize, 0u64);
        // Whether one more run fits, with `added` ones added so far in this response; once one does
        // not, none after it does.
        let room = |added: usize| runs_held + added < MAX_TRACKED_RUNS + runs_removed;
        let mut untracked = 0u64;
        let mut untracked_from = i64::MAX;
        for run in runs {
            let start = match part.last_offset {
                Some(l) if run.end() <= l + 1 => continue,
                Some(l) if run.first <= l => l + 1,
                _ => run.first,
            };
            let count = (run.end() - start) as u32;
            let continues = part
                .runs
                .0
                .back()
                .is_some_and(|b| b.end() == start && b.appended_ms == run.appended_ms && b.count.checked_add(count).is_some());
            if continues {
                part.runs.0.back_mut().expect("a last run").count += count;
            } else if untracked_from == i64::MAX && room(added) {
                part.runs.0.push_back(Run {
                    first: start,
                    count,
                    appended_ms: run.appended_ms,
                });
                added += 1;
            } else {
                untracked_from = untracked_from.min(start);
                untracked += count as u64;
            }
        }
        for span in spans {
            // A record delivered before already has its span.
            if part.last_offset.is_some_and(|l| span.offset <= l) {
                continue;
            }
            // Nor is a span kept for a record that is not tracked.
            if span.offset < untracked_from && spans_held + spans_added < MAX_PENDING_SPANS + spans_removed {
                part.spans.push_back(span);
                spans_added += 1;
            } else {
                dropped += 1;
            }
        }
        if let Some(l) = last {
            part.last_offset = Some(part.last_offset.map_or(l, |p| p.max(l)));
        }
        state.runs_held = (state.runs_held + added).saturating_sub(runs_removed);
        state.spans_held = (state.spans_held + spans_added).saturating_sub(spans_removed);
        (untracked, dropped)
    }

    /// An OffsetCommit response for `ask`, received at `committed_at`: every committed partition's records
    /// are done.
    pub fn commit_response(&self, frame: &Bytes, version: i16, ask: CommitAsk, committed_at: SystemTime) {
        let Some(response) = crate::kafka::decode::response::<OffsetCommitResponse>(frame, ApiKey::OffsetCommit, version) else {
            return;
        };
        let commit_ms = unix_ms(committed_at);
        let now = Instant::now();
        let group = self.groups.label(&ask.group);
        let mut groups = Vec::new();
        let mut state = self.lock();
        for t in &response.topics {
            let topic = t.name.0.to_string();
            let label = self.metrics.topic_label(&topic);
            state.windows_seen.insert((group.clone(), label.clone()), now);
            let window = self.m().consistency.with([&self.cluster, &group, &label, "sidecar"]).local();
            for p in &t.partitions {
                let Some(&offset) = ask.offsets.get(&(topic.clone(), p.partition_index)) else {
                    continue;
                };
                if p.error_code != 0 || offset < 0 {
                    continue;
                }
                let key = (ask.group.clone(), topic.clone(), p.partition_index);
                if let Some(c) = state.committed.get_mut(&key) {
                    (c.offset, c.seen) = (offset, now);
                    if c.client != ask.client {
                        c.client = ask.client.clone();
                    }
                } else if state.committed.len() < MAX_COMMITTED_PARTITIONS {
                    let labels = partitions::labels(&[
                        (L_CLUSTER, &self.cluster),
                        (L_GROUP, &group),
                        (L_TOPIC, &label),
                        (L_PARTITION, &p.partition_index.to_string()),
                        (L_SOURCE, "sidecar"),
                    ]);
                    let c = Committed {
                        offset,
                        client: ask.client.clone(),
                        seen: now,
                        labels,
                        shared: group == OTHER_LABEL || label == OTHER_LABEL,
                    };
                    state.committed.insert(key, c);
                }
                let Some(part) = state.delivered.get_mut(&(ask.client.clone(), topic.clone(), p.partition_index)) else {
                    continue;
                };
                part.seen = Some(now);
                let runs_done = part.runs.commit(offset, |n, appended_ms| {
                    let seconds = (commit_ms.saturating_sub(appended_ms)).max(0) as f64 / 1000.0;
                    for _ in 0..n {
                        window.observe(seconds);
                    }
                });
                let mut ended = Vec::new();
                while part.spans.front().is_some_and(|s| s.offset < offset) {
                    let s = part.spans.pop_front().expect("front exists");
                    ended.push((s.ids, s.delivered, s.offset));
                }
                // What a commit drained goes back: a deque keeps its largest size otherwise, and a
                // partition whose consumer moved on keeps it until it expires.
                shrink(&mut part.runs.0);
                shrink(&mut part.spans);
                state.runs_held = state.runs_held.saturating_sub(runs_done);
                state.spans_held = state.spans_held.saturating_sub(ended.len());
                if !ended.is_empty() {
                    let shared: std::sync::Arc<str> = topic.as_str().into();
                    groups.push(SpanGroup {
                        kind: SpanKind::Consumer,
                        name: format!("process {topic}"),
                        ended: committed_at,
                        attributes: vec![
                            KeyValue::new("messaging.system", "kafka"),
                            KeyValue::new("messaging.operation.name", "process"),
                            KeyValue::new("messaging.operation.type", "process"),
                            KeyValue::new("messaging.destination.name", shared),
                            KeyValue::new("messaging.destination.partition.id", p.partition_index.to_string()),
                            KeyValue::new("messaging.consumer.group.name", std::sync::Arc::<str>::from(ask.group.as_str())),
                            KeyValue::new("messaging.client.id", std::sync::Arc::<str>::from(ask.client.as_str())),
                        ],
                        key: "messaging.kafka.offset",
                        spans: ended,
                    });
                }
            }
        }
        drop(state);
        // Made into spans by the export task, after the lock is let go.
        for g in groups {
            self.tracer.finish_group(g);
        }
        self.refresh();
    }

    /// Recomputes lag gauges, forgets idle partitions and removes their series. Called after commits and
    /// once a second.
    pub fn refresh(&self) {
        self.refresh_at(Instant::now(), crate::kafka::now_ms());
    }

    /// The next refresh's number; taken under the state's lock.
    fn next_refresh(&self) -> u64 {
        self.refreshes.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }

    /// [`Consumption::refresh`] as of `now`. The rows are made under the state's lock, and numbered
    /// there: the observer's refresh after a commit and the once-a-second one run on different threads,
    /// and the one that made its rows first is not published after the other. They are published after
    /// the lock is released.
    fn refresh_at(&self, now: Instant, now_ms: i64) {
        let mut rows = Vec::new();
        let mut idle_windows = Vec::new();
        let refresh = {
            let mut state = self.lock();
            let State {
                delivered,
                committed,
                high_watermarks,
                runs_held,
                spans_held,
                windows_seen,
            } = &mut *state;
            delivered.retain(|_, p| {
                let keep = p.seen.is_some_and(|s| now.duration_since(s) < IDLE_EXPIRY);
                if !keep {
                    *runs_held -= p.runs.0.len();
                    *spans_held -= p.spans.len();
                }
                keep
            });
            high_watermarks.retain(|_, (_, seen)| now.duration_since(*seen) < IDLE_EXPIRY);
            windows_seen.retain(|k, seen| {
                let keep = now.duration_since(*seen) < IDLE_EXPIRY;
                if !keep {
                    idle_windows.push(k.clone());
                }
                keep
            });
            // A partition unseen for IDLE_EXPIRY is forgotten: its series go with the next rows.
            committed.retain(|_, c| now.duration_since(c.seen) < IDLE_EXPIRY);
            rows.reserve(committed.len());
            for ((_, topic, partition), c) in committed.iter() {
                let lag = high_watermarks
                    .get(&(topic.clone(), *partition))
                    .map(|(hw, _)| (hw - c.offset).max(0));
                let seconds = match lag {
                    Some(0) => Some(0.0),
                    Some(_) => delivered
                        .get(&(c.client.clone(), topic.clone(), *partition))
                        .and_then(|p| p.runs.appended_from(c.offset))
                        .map(|appended_ms| (now_ms.saturating_sub(appended_ms)).max(0) as f64 / 1000.0),
                    None => None,
                };
                rows.push(Row::new(c.labels.clone(), c.shared, c.offset, lag, seconds));
            }
            self.next_refresh()
        };
        let m = self.m();
        #[cfg(test)]
        {
            let hook = self.publish_hook.lock().expect("hook lock").clone();
            if let Some(hook) = hook {
                hook();
            }
        }
        m.partitions.publish(refresh, rows);
        for (group, topic) in idle_windows {
            m.consistency.remove([&self.cluster, &group, &topic, "sidecar"]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::BTreeMap;

    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
    use kafka_protocol::messages::FetchResponse;
    use kafka_protocol::messages::{ResponseHeader, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};
    use kafka_protocol::records::Compression;

    fn consumption() -> (Consumption, prometheus::Registry) {
        let registry = prometheus::Registry::new();
        let metrics = ProxyMetrics::new(&registry);
        let tracer = Tracer::disabled(crate::telemetry::traces::TraceMetrics::new(&registry));
        (Consumption::new(metrics, tracer, "c".into(), 1 << 20, 1 << 20), registry)
    }

    fn framed(key: ApiKey, version: i16, body: impl Fn(&mut BytesMut)) -> Bytes {
        let mut f = BytesMut::new();
        f.put_i32(0);
        ResponseHeader::default()
            .encode(&mut f, key.response_header_version(version))
            .unwrap();
        body(&mut f);
        let n = f.len() as i32 - 4;
        f[..4].copy_from_slice(&n.to_be_bytes());
        f.freeze()
    }

    /// A Fetch response (v11) delivering `timestamps.len()` records of `topic`/0 from offset `base`.
    fn fetch(topic: &'static str, base: i64, timestamps: &[i64], high_watermark: i64) -> Bytes {
        let batch = Bytes::from(crate::kafka::batch::test_batch(base, timestamps, Compression::Lz4));
        let response = FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
            .with_topic(TopicName(StrBytes::from_static_str(topic)))
            .with_partitions(vec![PartitionData::default()
                .with_partition_index(0)
                .with_high_watermark(high_watermark)
                .with_records(Some(batch))])]);
        framed(ApiKey::Fetch, 11, |f| response.encode(f, 11).unwrap())
    }

    fn fetch_ask(topic: &str, offset: i64) -> FetchAsk {
        FetchAsk {
            client: "app".into(),
            offsets: [((topic.to_string(), 0), offset)].into(),
        }
    }

    fn commit(c: &Consumption, group: &str, topic: &'static str, offset: i64, at: SystemTime) {
        let response = OffsetCommitResponse::default().with_topics(vec![OffsetCommitResponseTopic::default()
            .with_name(TopicName(StrBytes::from_static_str(topic)))
            .with_partitions(vec![OffsetCommitResponsePartition::default().with_partition_index(0)])]);
        let frame = framed(ApiKey::OffsetCommit, 8, |f| response.encode(f, 8).unwrap());
        let ask = CommitAsk {
            client: "app".into(),
            group: group.into(),
            offsets: [((topic.to_string(), 0), offset)].into(),
        };
        c.commit_response(&frame, 8, ask, at);
    }

    /// What a scrape of the sidecar shows: the registry's series and the partitions' rows, as (name,
    /// labels, value).
    fn scrape(c: &Consumption, registry: &prometheus::Registry) -> Vec<(String, BTreeMap<String, String>, f64)> {
        let mut text = crate::telemetry::render_registry(registry);
        c.m().partitions.render(&mut text);
        text.lines()
            .filter_map(crate::telemetry::text::parse_line)
            .map(|l| {
                let labels = l.labels.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                (l.name.to_string(), labels, l.value)
            })
            .collect()
    }

    /// The values of `label` among a scrape's series of the family `name` (a histogram's too).
    fn series(c: &Consumption, registry: &prometheus::Registry, name: &str, label: &str) -> std::collections::BTreeSet<String> {
        scrape(c, registry)
            .into_iter()
            .filter(|(n, _, _)| {
                n.strip_prefix(name)
                    .is_some_and(|rest| ["", "_bucket", "_sum", "_count"].contains(&rest))
            })
            .filter_map(|(_, labels, _)| labels.get(label).cloned())
            .collect()
    }

    /// A partition's value of `name` (group, topic, partition 0) in a scrape.
    fn value(c: &Consumption, registry: &prometheus::Registry, name: &str, group: &str, topic: &str) -> Option<f64> {
        scrape(c, registry)
            .into_iter()
            .find(|(n, l, _)| n == name && l["consumergroup"] == group && l["topic"] == topic && l["partition"] == "0")
            .map(|(_, _, v)| v)
    }

    /// Delivered records are measured at their commit: lag, lag seconds and a window per record.
    #[test]
    fn a_fetch_then_a_commit_measures_each_record() {
        let (c, registry) = consumption();
        let appended = crate::kafka::now_ms() - 2000;
        c.fetch_response(
            &fetch("orders", 0, &[appended; 10], 10),
            11,
            &fetch_ask("orders", 0),
            SystemTime::now(),
        );
        commit(&c, "readmodel", "orders", 4, SystemTime::now());
        assert_eq!(value(&c, &registry, "kafka_consumergroup_lag", "readmodel", "orders"), Some(6.0));
        assert!(value(&c, &registry, "kafka_consumergroup_lag_seconds", "readmodel", "orders").unwrap() >= 2.0);
        let h = c.m().consistency.with(["c", "readmodel", "orders", "sidecar"]);
        assert_eq!(h.get_sample_count(), 4);
        assert!(series(&c, &registry, "kafka_consumergroup_lag", "consumergroup").contains("readmodel"));
    }

    /// A scrape reads a partition's committed offset and its lag from the same refresh: with a high
    /// watermark of 1,000 they always add up to 1,000, however the scrape falls between refreshes.
    /// (With the series set one by one and no lock, this read an offset beside the previous commit's lag
    /// within a few hundred scrapes.)
    #[test]
    fn a_scrape_never_reads_an_offset_and_a_lag_from_different_refreshes() {
        const TOPICS: [&str; 16] = [
            "t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8", "t9", "t10", "t11", "t12", "t13", "t14", "t15",
        ];
        let (c, registry) = consumption();
        for t in TOPICS {
            c.fetch_response(&fetch(t, 0, &[1; 4], 1000), 11, &fetch_ask(t, 0), SystemTime::now());
        }
        let done = std::sync::atomic::AtomicBool::new(false);
        let scrapes = std::thread::scope(|scope| {
            scope.spawn(|| {
                for offset in 1..200 {
                    for t in TOPICS {
                        commit(&c, "g", t, offset, SystemTime::now());
                    }
                }
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            let mut scrapes = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let samples = scrape(&c, &registry);
                let values = |name: &str| -> BTreeMap<String, f64> {
                    samples
                        .iter()
                        .filter(|(n, _, _)| n == name)
                        .map(|(_, labels, v)| (labels["topic"].clone(), *v))
                        .collect()
                };
                let (offsets, lags) = (values("kafka_consumergroup_current_offset"), values("kafka_consumergroup_lag"));
                for (topic, offset) in &offsets {
                    assert_eq!(offset + lags[topic], 1000.0, "{topic}: offset {offset} beside lag {}", lags[topic]);
                }
                scrapes += 1;
            }
            scrapes
        });
        assert!(scrapes > 0);
    }

    /// Refreshes are published in the order they computed: the observer's refresh after a commit and
    /// the once-a-second one run on different threads. Here the once-a-second one computes offset 1 and
    /// is held before it publishes; a commit of offset 2 is refreshed and published meanwhile; the held
    /// one, published last, must not bring offset 1 back.
    #[test]
    fn an_older_refresh_published_last_does_not_bring_older_values_back() {
        let (c, registry) = consumption();
        c.fetch_response(&fetch("orders", 0, &[1; 4], 100), 11, &fetch_ask("orders", 0), SystemTime::now());
        commit(&c, "g", "orders", 1, SystemTime::now());
        let offset = || value(&c, &registry, "kafka_consumergroup_current_offset", "g", "orders");
        assert_eq!(offset(), Some(1.0));
        let (paused, held) = std::sync::mpsc::channel();
        let (go, proceed) = std::sync::mpsc::channel::<()>();
        let (armed, proceed) = (std::sync::atomic::AtomicBool::new(true), Mutex::new(proceed));
        *c.publish_hook.lock().unwrap() = Some(std::sync::Arc::new(move || {
            if armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
                let _ = paused.send(());
                let _ = proceed.lock().unwrap().recv_timeout(Duration::from_secs(10));
            }
        }));
        std::thread::scope(|scope| {
            let older = scope.spawn(|| c.refresh());
            held.recv_timeout(Duration::from_secs(10)).expect("the first refresh computed");
            commit(&c, "g", "orders", 2, SystemTime::now());
            assert_eq!(offset(), Some(2.0));
            go.send(()).unwrap();
            older.join().unwrap();
        });
        assert_eq!(offset(), Some(2.0), "the refresh computed first was published after the newer one");
    }

    /// Defect 2: the observer held the state's lock while it decompressed every batch of a Fetch
    /// response, and the relay's one-second refresh waited on it.
    #[test]
    fn nothing_waits_on_the_state_while_a_batch_is_decoded() {
        let (c, _registry) = consumption();
        let c = std::sync::Arc::new(c);
        let (in_decode, decoding) = std::sync::mpsc::channel();
        let (go, proceed) = std::sync::mpsc::channel::<()>();
        let proceed = Mutex::new(proceed);
        *c.decode_hook.lock().unwrap() = Some(Box::new(move || {
            let _ = in_decode.send(());
            let _ = proceed.lock().unwrap().recv_timeout(Duration::from_secs(10));
        }));
        let observer = {
            let c = c.clone();
            std::thread::spawn(move || c.fetch_response(&fetch("orders", 0, &[1000; 5], 5), 11, &fetch_ask("orders", 0), SystemTime::now()))
        };
        decoding.recv_timeout(Duration::from_secs(10)).expect("the batch is being decoded");
        let free = c.state.try_lock().is_ok();
        go.send(()).unwrap();
        observer.join().unwrap();
        assert!(free, "the consumption state is locked while a batch is decoded");
        assert_eq!(c.lock().delivered.values().map(|p| p.runs.0.len()).sum::<usize>(), 1);
    }

    /// Defect 3: a panic while the state was locked poisoned it, and every later refresh panicked or the
    /// gauges froze. After `reset` (what the observer's containment calls), the series are gone and the
    /// state works again.
    #[test]
    fn a_panic_under_the_lock_leaves_no_frozen_series() {
        let (c, registry) = consumption();
        c.fetch_response(&fetch("orders", 0, &[1000; 3], 3), 11, &fetch_ask("orders", 0), SystemTime::now());
        commit(&c, "g", "orders", 1, SystemTime::now());
        assert!(!series(&c, &registry, "kafka_consumergroup_lag", "consumergroup").is_empty());
        let poisoned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _held = c.state.lock().unwrap();
            panic!("a bug while measuring");
        }));
        assert!(poisoned.is_err() && c.state.is_poisoned());
        c.reset();
        c.refresh();
        assert!(series(&c, &registry, "kafka_consumergroup_lag", "consumergroup").is_empty());
        assert!(series(&c, &registry, "eventscope_consistency_window_seconds", "consumergroup").is_empty());
        // Later traffic measures again.
        c.fetch_response(&fetch("orders", 3, &[1000; 2], 5), 11, &fetch_ask("orders", 3), SystemTime::now());
        commit(&c, "g", "orders", 4, SystemTime::now());
        assert_eq!(value(&c, &registry, "kafka_consumergroup_lag", "g", "orders"), Some(1.0));
    }

    /// Defect 4: `consumergroup` came from client requests unbounded, and consistency series were never
    /// removed.
    #[test]
    fn group_labels_are_bounded_and_idle_series_removed() {
        let (c, registry) = consumption();
        for g in 0..MAX_GROUP_LABELS + 50 {
            commit(&c, &format!("group-{g}"), "orders", 1, SystemTime::now());
        }
        let groups = series(&c, &registry, "kafka_consumergroup_current_offset", "consumergroup");
        assert_eq!(groups.len(), MAX_GROUP_LABELS + 1, "{} groups", groups.len());
        assert!(groups.contains(crate::telemetry::labels::OTHER_LABEL));
        let windows = series(&c, &registry, "eventscope_consistency_window_seconds", "consumergroup");
        assert_eq!(windows.len(), MAX_GROUP_LABELS + 1);
        // Idle past the expiry: every lag and window series goes.
        c.refresh_at(Instant::now() + IDLE_EXPIRY + Duration::from_secs(1), crate::kafka::now_ms());
        assert!(series(&c, &registry, "kafka_consumergroup_current_offset", "consumergroup").is_empty());
        assert!(series(&c, &registry, "eventscope_consistency_window_seconds", "consumergroup").is_empty());
        assert!(c.lock().committed.is_empty());
    }

    /// A Fetch response (v11) delivering `n` records of `topic`/0 from offset 0, each with a sampled
    /// `traceparent` of its own trace (trace id `i + 1`, span id `0xaa..`).
    fn traced_fetch(topic: &'static str, n: usize) -> Bytes {
        use kafka_protocol::records::{RecordBatchEncoder, RecordEncodeOptions};
        let records: Vec<_> = (0..n)
            .map(|i| {
                let mut r = crate::kafka::batch::test_record(i as i64, i as i32, 1000);
                let tp = format!("00-{:032x}-aaaaaaaaaaaaaaaa-01", i + 1);
                r.headers.insert(StrBytes::from_static_str("traceparent"), Some(Bytes::from(tp)));
                r
            })
            .collect();
        let mut batch = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut batch,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .unwrap();
        let response = FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
            .with_topic(TopicName(StrBytes::from_static_str(topic)))
            .with_partitions(vec![PartitionData::default()
                .with_partition_index(0)
                .with_high_watermark(n as i64)
                .with_records(Some(batch.freeze()))])]);
        framed(ApiKey::Fetch, 11, |f| response.encode(f, 11).unwrap())
    }

    /// Every sampled `process` span waits for its commit within [`MAX_PENDING_SPANS`]: the ones beyond
    /// are dropped and counted, those kept come out of the commit whole (their record's trace, the
    /// producer's span as parent, their offset), and the commit makes room again.
    #[test]
    fn pending_spans_are_bounded_counted_and_ended_by_the_commit() {
        let registry = prometheus::Registry::new();
        let traces = crate::telemetry::traces::TraceMetrics::new(&registry);
        let (tracer, mut queue) = Tracer::with_test_queue(1000, traces.clone());
        let c = Consumption::new(ProxyMetrics::new(&registry), tracer, "c".into(), 1 << 20, 1 << 20);
        c.lock().spans_held = MAX_PENDING_SPANS - 3;
        c.fetch_response(&traced_fetch("orders", 5), 11, &fetch_ask("orders", 0), SystemTime::now());
        assert_eq!(traces.dropped.get(), 2, "two spans beyond the bound");
        assert_eq!(c.lock().spans_held, MAX_PENDING_SPANS);
        // The runs are not bounded by the spans: every record is still measured.
        assert_eq!(c.m().untracked.get(), 0);
        commit(&c, "g", "orders", 5, SystemTime::now());
        assert_eq!(c.lock().spans_held, MAX_PENDING_SPANS - 3);
        assert_eq!(c.m().consistency.with(["c", "g", "orders", "sidecar"]).get_sample_count(), 5);
        let spans = queue.drain();
        assert_eq!(spans.len(), 3);
        for (i, s) in spans.iter().enumerate() {
            assert_eq!(s.name, "process orders");
            assert_eq!(s.span_context.trace_id().to_bytes(), (i as u128 + 1).to_be_bytes());
            assert_eq!(s.parent_span_id.to_bytes(), [0xaa; 8]);
            assert!(s.parent_span_is_remote && s.span_context.is_sampled());
            assert!(s.attributes.contains(&KeyValue::new("messaging.kafka.offset", i as i64)));
            assert_eq!(s.links.links.len(), 1, "linked to the producer's context");
        }
    }

    /// A commit that drains a partition gives its deques' room back (a consumer that moves on to new
    /// partitions does not keep the largest burst of each until it expires).
    #[test]
    fn a_commit_gives_back_the_room_it_drained() {
        let registry = prometheus::Registry::new();
        let (tracer, _queue) = Tracer::with_test_queue(10_000, crate::telemetry::traces::TraceMetrics::new(&registry));
        let c = Consumption::new(ProxyMetrics::new(&registry), tracer, "c".into(), 1 << 20, 1 << 20);
        c.fetch_response(&traced_fetch("orders", 2000), 11, &fetch_ask("orders", 0), SystemTime::now());
        let capacity = |c: &Consumption| {
            let state = c.lock();
            let part = state.delivered.values().next().unwrap();
            (part.spans.len(), part.spans.capacity())
        };
        assert!(capacity(&c).1 >= 2000);
        commit(&c, "g", "orders", 1990, SystemTime::now());
        let (len, room) = capacity(&c);
        assert_eq!(len, 10);
        assert!(room <= 64, "{room} entries of room kept for 10");
    }

    /// Partitions tracked are bounded whatever the client commits.
    #[test]
    fn committed_partitions_are_bounded() {
        let (c, _registry) = consumption();
        let mut state = c.lock();
        for i in 0..MAX_COMMITTED_PARTITIONS as i32 {
            state.committed.insert(
                ("g".into(), "t".into(), i),
                Committed {
                    offset: 0,
                    client: "app".into(),
                    seen: Instant::now(),
                    labels: partitions::labels(&[("partition", &i.to_string())]),
                    shared: false,
                },
            );
        }
        drop(state);
        commit(&c, "g", "orders", 1, SystemTime::now());
        assert_eq!(c.lock().committed.len(), MAX_COMMITTED_PARTITIONS);
    }
}
