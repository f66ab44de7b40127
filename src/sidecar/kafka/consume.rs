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
//! bounded: at most [`MAX_TRACKED_ENTRIES`] runs and sampled spans in all (records beyond are counted,
//! not tracked), and partitions unseen for [`IDLE_EXPIRY`] are forgotten along with their series.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::kafka::unix_ms;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, OffsetCommitRequest, OffsetCommitResponse, ResponseHeader};
use kafka_protocol::protocol::Decodable;
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;

use crate::kafka::{batch, records};
use crate::telemetry::kafka::{ConsumeMetrics, ProxyErrorKind, ProxyMetrics};
use crate::telemetry::traces::{SpanStart, Tracer};

/// Entries awaiting their commit, in all partitions together: runs of delivered records (24 bytes each)
/// and sampled `process` spans (about 100 bytes each). About 3 MB for runs. librdkafka stamps records in
/// milliseconds, so at 1 million records/s a run holds about a thousand of them and this covers minutes
/// between commits; at low rates, where a run may hold one record, it still covers 100,000 records.
pub const MAX_TRACKED_ENTRIES: usize = 100_000;
/// A partition not fetched or committed for this long is forgotten (its consumer moved or stopped).
pub const IDLE_EXPIRY: Duration = Duration::from_secs(300);

type Key = (String, String, i32);

/// Delivered records with consecutive offsets and one append timestamp.
#[derive(Debug, PartialEq)]
struct Run {
    first: i64,
    count: u32,
    /// Append timestamp (ms since the epoch).
    appended_ms: i64,
}

impl Run {
    fn end(&self) -> i64 {
        self.first + self.count as i64
    }
}

/// A partition's delivered, uncommitted records in offset order, as runs.
#[derive(Default)]
struct Runs(VecDeque<Run>);

impl Runs {
    /// Adds the record at `offset` (after every record held): into the last run when it continues it,
    /// else as a new run if `room`. Whether it is tracked.
    fn push(&mut self, offset: i64, appended_ms: i64, room: bool) -> Option<Tracked> {
        if let Some(last) = self.0.back_mut() {
            if last.end() == offset && last.appended_ms == appended_ms && last.count < u32::MAX {
                last.count += 1;
                return Some(Tracked::InRun);
            }
        }
        room.then(|| {
            self.0.push_back(Run {
                first: offset,
                count: 1,
                appended_ms,
            });
            Tracked::NewRun
        })
    }

    /// Takes the records before `offset` out, handing each run's share to `each(count, appended_ms)`;
    /// the number of runs removed.
    fn commit(&mut self, offset: i64, mut each: impl FnMut(u32, i64)) -> usize {
        let mut removed = 0;
        while let Some(run) = self.0.front_mut() {
            if run.first >= offset {
                break;
            }
            let n = (offset - run.first).min(run.count as i64) as u32;
            each(n, run.appended_ms);
            if n == run.count {
                self.0.pop_front();
                removed += 1;
            } else {
                run.first += n as i64;
                run.count -= n;
            }
        }
        removed
    }

    /// Forgets the records at or after `from` (the consumer seeked back); the number of runs removed.
    fn truncate(&mut self, from: i64) -> usize {
        let mut removed = 0;
        while let Some(run) = self.0.back_mut() {
            if run.first >= from {
                self.0.pop_back();
                removed += 1;
                continue;
            }
            if run.end() > from {
                run.count = (from - run.first) as u32;
            }
            break;
        }
        removed
    }

    /// The append timestamp of the first record held at or after `offset`.
    fn appended_from(&self, offset: i64) -> Option<i64> {
        self.0.iter().find(|r| r.end() > offset).map(|r| r.appended_ms)
    }

    fn last(&self) -> Option<i64> {
        self.0.back().map(|r| r.end() - 1)
    }
}

#[derive(Debug, PartialEq)]
enum Tracked {
    InRun,
    NewRun,
}

/// A sampled `process` span of a delivered record, ended by the commit that covers it.
struct PendingSpan {
    offset: i64,
    delivered: SystemTime,
    start: Box<SpanStart>,
}

#[derive(Default)]
struct Partition {
    runs: Runs,
    spans: VecDeque<PendingSpan>,
    last_offset: Option<i64>,
    seen: Option<Instant>,
}

impl Partition {
    fn entries(&self) -> usize {
        self.runs.0.len() + self.spans.len()
    }
}

struct Committed {
    offset: i64,
    client: String,
    seen: Instant,
}

#[derive(Default)]
struct State {
    /// (client id, topic, partition) → records delivered and not yet committed.
    delivered: HashMap<Key, Partition>,
    /// (group, topic, partition) → the group's last successful commit.
    committed: HashMap<Key, Committed>,
    /// (topic, partition) → high watermark from the latest Fetch response, and when.
    high_watermarks: HashMap<(String, i32), (i64, Instant)>,
    tracked: usize,
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
    let (header, request) = super::decode_request::<FetchRequest>(frame, ApiKey::Fetch, version)?;
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
        client: super::client_id(&header),
        offsets,
    })
}

/// Reads an OffsetCommit request frame (length prefix included).
pub fn commit_request(frame: &Bytes, version: i16) -> Option<CommitAsk> {
    let (header, request) = super::decode_request::<OffsetCommitRequest>(frame, ApiKey::OffsetCommit, version)?;
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
        client: super::client_id(&header),
        group: request.group_id.0.to_string(),
        offsets,
    })
}

/// Consumption state of one sidecar.
pub struct Consumption {
    state: Mutex<State>,
    metrics: ProxyMetrics,
    tracer: Tracer,
    cluster: String,
    decompress_limit: usize,
}

impl Consumption {
    pub fn new(metrics: ProxyMetrics, tracer: Tracer, cluster: String, decompress_limit: usize) -> Consumption {
        Consumption {
            state: Mutex::new(State::default()),
            metrics,
            tracer,
            cluster,
            decompress_limit,
        }
    }

    fn m(&self) -> &ConsumeMetrics {
        &self.metrics.consume
    }

    /// A Fetch response (length prefix included) for `ask`, relayed at `delivered_at`: high watermarks and
    /// the records delivered.
    pub fn fetch_response(&self, frame: &Bytes, version: i16, ask: FetchAsk, delivered_at: SystemTime) {
        let mut buf = frame.slice(4..);
        let Ok(_) = ResponseHeader::decode(&mut buf, ApiKey::Fetch.response_header_version(version)) else {
            return;
        };
        let Ok(response) = FetchResponse::decode(&mut buf, version) else {
            return;
        };
        let now = Instant::now();
        let now_ms = unix_ms(delivered_at);
        let mut state = self.state.lock().expect("consumption lock");
        for t in &response.responses {
            let topic = t.topic.0.to_string();
            let label = self.metrics.topic_label(&topic);
            for p in &t.partitions {
                if p.error_code != 0 {
                    continue;
                }
                state
                    .high_watermarks
                    .insert((topic.clone(), p.partition_index), (p.high_watermark, now));
                let Some(records) = p.records.as_deref().filter(|r| !r.is_empty()) else {
                    continue;
                };
                let key = (ask.client.clone(), topic.clone(), p.partition_index);
                let tracked = state.tracked;
                let part = state.delivered.entry(key).or_default();
                part.seen = Some(now);
                // Records before the fetch position (a batch starts earlier) are not delivered to the
                // application; neither are ones delivered before (a re-fetch).
                let from = ask
                    .offsets
                    .get(&(topic.clone(), p.partition_index))
                    .copied()
                    .or(part.last_offset.map(|o| o + 1))
                    .unwrap_or(i64::MIN);
                let mut added = 0usize;
                let mut removed = 0usize;
                if part.last_offset.is_some_and(|last| from <= last) {
                    // The consumer seeked back: what it had from there on is no longer pending.
                    let spans = part.spans.len();
                    part.spans.retain(|s| s.offset < from);
                    removed = spans - part.spans.len() + part.runs.truncate(from);
                    part.last_offset = part.runs.last();
                }
                // Metric handles once per partition, counts added once (not per record); the histogram
                // buffered locally and flushed once, when it goes out of scope.
                let latency = self.m().delivery_latency.with_label_values(&[&label]).local();
                let mut by_timestamp = [0u64; 2];
                let mut by_context = [0u64; 3];
                let mut untracked = 0u64;
                // Whether one more entry fits, with `added` ones added so far in this response.
                let room = |added: usize| tracked + added < MAX_TRACKED_ENTRIES + removed;
                for b in batch::batches(records) {
                    if !b.complete || b.control || b.last_offset < from {
                        continue;
                    }
                    let section = match records::records_section(&b, self.decompress_limit) {
                        Ok(s) => s,
                        Err(e) => {
                            self.metrics.error(
                                ProxyErrorKind::RecordsUnreadable,
                                &format!("fetch {topic}/{}: {e}", p.partition_index),
                            );
                            continue;
                        }
                    };
                    let Ok(list) = records::records(&section, b.record_count) else {
                        self.metrics.error(
                            ProxyErrorKind::RecordsUnreadable,
                            &format!("fetch {topic}/{}: malformed records", p.partition_index),
                        );
                        continue;
                    };
                    for r in list {
                        let offset = b.base_offset.saturating_add(r.offset_delta as i64);
                        if offset < from || part.last_offset.is_some_and(|l| offset <= l) {
                            continue;
                        }
                        let appended_ms = if b.log_append_time {
                            b.max_timestamp
                        } else {
                            b.base_timestamp.saturating_add(r.timestamp_delta)
                        };
                        by_timestamp[b.log_append_time as usize] += 1;
                        latency.observe((now_ms.saturating_sub(appended_ms)).max(0) as f64 / 1000.0);
                        let parent = r.traceparent.and_then(|tp| crate::telemetry::traces::extract(tp, r.tracestate));
                        by_context[match (r.traceparent, &parent) {
                            (Some(_), Some(_)) => 0,
                            (Some(_), None) => 1,
                            (None, _) => 2,
                        }] += 1;
                        part.last_offset = Some(offset);
                        match part.runs.push(offset, appended_ms, room(added)) {
                            Some(Tracked::InRun) => {}
                            Some(Tracked::NewRun) => added += 1,
                            None => {
                                untracked += 1;
                                continue;
                            }
                        }
                        let span = parent
                            .map(|p| self.tracer.start_span(Some(p), "process", SpanKind::Consumer))
                            .filter(|s| s.context.is_sampled());
                        if let Some(start) = span.filter(|_| room(added)) {
                            part.spans.push_back(PendingSpan {
                                offset,
                                delivered: delivered_at,
                                start: Box::new(start),
                            });
                            added += 1;
                        }
                    }
                }
                state.tracked = (state.tracked + added).saturating_sub(removed);
                if untracked > 0 {
                    self.m().untracked.inc_by(untracked);
                }
                for (i, timestamp_type) in ["CreateTime", "LogAppendTime"].iter().enumerate() {
                    if by_timestamp[i] > 0 {
                        self.m()
                            .delivered
                            .with_label_values(&[label.as_str(), timestamp_type])
                            .inc_by(by_timestamp[i]);
                    }
                }
                for (i, context) in ["continued", "invalid", "absent"].iter().enumerate() {
                    if by_context[i] > 0 {
                        self.m()
                            .trace_context
                            .with_label_values(&[label.as_str(), "consume", context])
                            .inc_by(by_context[i]);
                    }
                }
            }
        }
    }

    /// An OffsetCommit response for `ask`, received at `committed_at`: every committed partition's records
    /// are done.
    pub fn commit_response(&self, frame: &Bytes, version: i16, ask: CommitAsk, committed_at: SystemTime) {
        let mut buf = frame.slice(4..);
        let Ok(_) = ResponseHeader::decode(&mut buf, ApiKey::OffsetCommit.response_header_version(version)) else {
            return;
        };
        let Ok(response) = OffsetCommitResponse::decode(&mut buf, version) else {
            return;
        };
        let commit_ms = unix_ms(committed_at);
        let now = Instant::now();
        let mut state = self.state.lock().expect("consumption lock");
        for t in &response.topics {
            let topic = t.name.0.to_string();
            let label = self.metrics.topic_label(&topic);
            let window = self
                .m()
                .consistency
                .with_label_values(&[&self.cluster, &ask.group, &label, "sidecar"])
                .local();
            for p in &t.partitions {
                let Some(&offset) = ask.offsets.get(&(topic.clone(), p.partition_index)) else {
                    continue;
                };
                if p.error_code != 0 || offset < 0 {
                    continue;
                }
                state.committed.insert(
                    (ask.group.clone(), topic.clone(), p.partition_index),
                    Committed {
                        offset,
                        client: ask.client.clone(),
                        seen: now,
                    },
                );
                let Some(part) = state.delivered.get_mut(&(ask.client.clone(), topic.clone(), p.partition_index)) else {
                    continue;
                };
                part.seen = Some(now);
                let mut done = part.runs.commit(offset, |n, appended_ms| {
                    let seconds = (commit_ms.saturating_sub(appended_ms)).max(0) as f64 / 1000.0;
                    for _ in 0..n {
                        window.observe(seconds);
                    }
                });
                while part.spans.front().is_some_and(|s| s.offset < offset) {
                    let s = part.spans.pop_front().expect("front exists");
                    done += 1;
                    self.tracer.finish(
                        *s.start,
                        SpanKind::Consumer,
                        format!("process {topic}"),
                        s.delivered,
                        committed_at,
                        vec![
                            KeyValue::new("messaging.system", "kafka"),
                            KeyValue::new("messaging.operation.name", "process"),
                            KeyValue::new("messaging.operation.type", "process"),
                            KeyValue::new("messaging.destination.name", topic.clone()),
                            KeyValue::new("messaging.destination.partition.id", p.partition_index.to_string()),
                            KeyValue::new("messaging.consumer.group.name", ask.group.clone()),
                            KeyValue::new("messaging.client.id", ask.client.clone()),
                            KeyValue::new("messaging.kafka.offset", s.offset),
                        ],
                        None,
                    );
                }
                state.tracked = state.tracked.saturating_sub(done);
            }
        }
        drop(state);
        self.refresh();
    }

    /// Recomputes lag gauges, forgets idle partitions. Called after commits and once a second.
    pub fn refresh(&self) {
        let now = Instant::now();
        let now_ms = crate::kafka::now_ms();
        let mut state = self.state.lock().expect("consumption lock");
        let State {
            delivered,
            committed,
            high_watermarks,
            tracked,
        } = &mut *state;
        delivered.retain(|_, p| {
            let keep = p.seen.is_some_and(|s| now.duration_since(s) < IDLE_EXPIRY);
            if !keep {
                *tracked -= p.entries();
            }
            keep
        });
        high_watermarks.retain(|_, (_, seen)| now.duration_since(*seen) < IDLE_EXPIRY);
        let m = self.m();
        committed.retain(|(group, topic, partition), c| {
            let label = self.metrics.topic_label(topic);
            let part = partition.to_string();
            let labels = [self.cluster.as_str(), group.as_str(), label.as_str(), part.as_str(), "sidecar"];
            if now.duration_since(c.seen) >= IDLE_EXPIRY {
                let _ = m.lag.remove_label_values(&labels);
                let _ = m.lag_seconds.remove_label_values(&labels);
                let _ = m.current_offset.remove_label_values(&labels);
                return false;
            }
            m.current_offset.with_label_values(&labels).set(c.offset);
            let Some((hw, _)) = high_watermarks.get(&(topic.clone(), *partition)) else {
                return true;
            };
            let lag = (hw - c.offset).max(0);
            m.lag.with_label_values(&labels).set(lag);
            let seconds = if lag == 0 {
                Some(0.0)
            } else {
                delivered
                    .get(&(c.client.clone(), topic.clone(), *partition))
                    .and_then(|p| p.runs.appended_from(c.offset))
                    .map(|appended_ms| (now_ms.saturating_sub(appended_ms)).max(0) as f64 / 1000.0)
            };
            match seconds {
                Some(s) => m.lag_seconds.with_label_values(&labels).set(s),
                None => {
                    let _ = m.lag_seconds.remove_label_values(&labels);
                }
            }
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(r: &Runs) -> Vec<(i64, u32, i64)> {
        r.0.iter().map(|r| (r.first, r.count, r.appended_ms)).collect()
    }

    /// Runs holding each range of offsets with its append timestamp, pushed record by record.
    fn held(ranges: &[(std::ops::Range<i64>, i64)]) -> Runs {
        let mut r = Runs::default();
        for (offsets, appended_ms) in ranges {
            for o in offsets.clone() {
                r.push(o, *appended_ms, true);
            }
        }
        r
    }

    #[test]
    fn consecutive_records_with_one_timestamp_share_a_run() {
        let mut r = Runs::default();
        assert_eq!(r.push(10, 1000, true), Some(Tracked::NewRun));
        assert_eq!(r.push(11, 1000, true), Some(Tracked::InRun));
        // Continuing a run needs no room.
        assert_eq!(r.push(12, 1000, false), Some(Tracked::InRun));
        // A new timestamp or an offset gap (compaction, a transaction marker) starts a run.
        assert_eq!(r.push(13, 1001, true), Some(Tracked::NewRun));
        assert_eq!(r.push(15, 1001, true), Some(Tracked::NewRun));
        assert_eq!(r.push(17, 1001, false), None);
        assert_eq!(runs(&r), vec![(10, 3, 1000), (13, 1, 1001), (15, 1, 1001)]);
        assert_eq!(r.last(), Some(15));
        assert_eq!(r.appended_from(0), Some(1000));
        assert_eq!(r.appended_from(13), Some(1001));
        assert_eq!(r.appended_from(16), None);
    }

    #[test]
    fn a_commit_takes_every_record_before_it_once_and_splits_a_run() {
        let mut r = held(&[(0..5, 7), (5..8, 9)]);
        assert_eq!(runs(&r), vec![(0, 5, 7), (5, 3, 9)]);
        let mut seen = Vec::new();
        // Kafka commits the next offset to read: offset 3 covers records 0, 1 and 2.
        assert_eq!(r.commit(3, |n, t| seen.push((n, t))), 0);
        assert_eq!(seen, vec![(3, 7)]);
        assert_eq!(runs(&r), vec![(3, 2, 7), (5, 3, 9)]);
        seen.clear();
        assert_eq!(r.commit(7, |n, t| seen.push((n, t))), 1);
        assert_eq!(seen, vec![(2, 7), (2, 9)]);
        // A commit at or behind what is held takes nothing.
        seen.clear();
        assert_eq!(r.commit(7, |n, t| seen.push((n, t))), 0);
        assert!(seen.is_empty());
        assert_eq!(r.commit(100, |n, t| seen.push((n, t))), 1);
        assert_eq!(seen, vec![(1, 9)]);
        assert!(r.0.is_empty());
    }

    #[test]
    fn seeking_back_forgets_what_follows() {
        let mut r = held(&[(0..4, 1), (4..8, 2)]);
        assert_eq!(r.truncate(6), 0);
        assert_eq!(runs(&r), vec![(0, 4, 1), (4, 2, 2)]);
        assert_eq!(r.truncate(4), 1);
        assert_eq!(runs(&r), vec![(0, 4, 1)]);
        assert_eq!(r.truncate(0), 1);
        assert_eq!(r.last(), None);
    }
}
