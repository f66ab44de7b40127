//! The producing application as the sidecar sees it: records and bytes acknowledged per topic, produce
//! latency, errors by Kafka error code, and trace context.
//!
//! Without tracing, record batches stay undecoded bytes: only their headers are read. With tracing, each
//! batch's records are read (decompressed up to a limit) for their `traceparent`; every record gets a
//! `send {topic}` span, and in `inject` mode its `traceparent` is set to that span and the batch is
//! re-encoded (see [`crate::kafka::records`]). The per-partition counts and spans wait with the request until
//! its response says which partitions were written and at which offsets, so retried batches count once.
//!
//! A request over 64 KiB that is not rewritten (tracing off, larger than `max_batch_bytes`, or past the
//! proxy's rewrite budget) is never held whole: it is streamed through and read on the way by
//! [`crate::kafka::produce_stream`], which tells the same partitions and counts ([`ProduceAsk::add`]).

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::Encodable;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;

use crate::kafka::{batch, produce_stream, records};
use crate::telemetry::kafka::{ProxyErrorKind, ProxyMetrics};
use crate::telemetry::traces::{SpanGroup, SpanIds, TraceMode, Tracer};

/// A `send` span decided when the request was relayed: its record is the `index`-th of the partition's
/// records in the request, so its offset is the response's base offset + `index`.
pub struct SendSpan {
    pub start: SpanIds,
    pub topic: std::sync::Arc<str>,
    pub partition: i32,
    pub index: i64,
}

/// What a Produce request leaves to be matched with its response.
#[derive(Default)]
pub struct ProduceAsk {
    pub client: String,
    pub batches: Vec<PartitionBatch>,
    pub spans: Vec<SendSpan>,
}

impl ProduceAsk {
    /// Takes in what the streaming reader tells of a request relayed unchanged (no spans).
    pub fn add(&mut self, event: produce_stream::Event<'_>) {
        match event {
            produce_stream::Event::Client(c) => self.client = c.to_string(),
            produce_stream::Event::Partition {
                topic,
                partition,
                records,
                bytes,
            } => self.batches.push(PartitionBatch {
                topic: topic.to_string(),
                partition,
                records,
                bytes,
            }),
        }
    }
}

/// Counts the records of partitions relayed without their trace context read or set as `skipped`.
pub fn count_skipped(metrics: &ProxyMetrics, batches: &[PartitionBatch]) {
    for b in batches.iter().filter(|b| b.records > 0) {
        let label = metrics.topic_label(&b.topic);
        metrics
            .consume
            .trace_context
            .with([label.as_str(), "produce", "skipped"])
            .inc_by(b.records);
    }
}

/// How to treat trace context in produced records.
pub struct TraceWork<'a> {
    pub tracer: &'a Tracer,
    pub mode: TraceMode,
    pub metrics: &'a ProxyMetrics,
    pub decompress_limit: usize,
    /// A batch that would grow past this with trace headers is relayed unchanged (the broker's
    /// `message.max.bytes` would refuse it).
    pub max_batch_bytes: usize,
}

/// Records and bytes of one partition in a Produce request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionBatch {
    pub topic: String,
    pub partition: i32,
    pub records: u64,
    pub bytes: u64,
}

/// Records in the batches of a `records` field, from their headers.
fn record_count(records: &[u8]) -> u64 {
    crate::kafka::batch::batches(records).map(|b| b.record_count.max(0) as u64).sum()
}

/// Reads a Produce request frame (length prefix included): its partitions, and with `trace` the spans of
/// its records and, in inject mode, the frame with their `traceparent` set. `None` if it does not decode.
pub fn produce_request(frame: &Bytes, version: i16, trace: Option<TraceWork<'_>>) -> Option<(ProduceAsk, Option<Bytes>)> {
    let header_version = ApiKey::Produce.request_header_version(version);
    let (header, mut request) = crate::kafka::decode::request::<ProduceRequest>(frame, ApiKey::Produce, version)?;
    let mut ask = ProduceAsk {
        client: super::frame::client_id(&header),
        batches: Vec::new(),
        spans: Vec::new(),
    };
    let mut changed = false;
    for t in &mut request.topic_data {
        let topic = t.name.0.to_string();
        for p in &mut t.partition_data {
            let records = p.records.clone().unwrap_or_default();
            ask.batches.push(PartitionBatch {
                topic: topic.clone(),
                partition: p.index,
                records: record_count(&records),
                bytes: records.len() as u64,
            });
            if let Some(work) = &trace {
                if let Some(new) = trace_partition(work, &topic, p.index, &records, &mut ask.spans) {
                    p.records = Some(new);
                    changed = true;
                }
            }
        }
    }
    if !changed {
        return Some((ask, None));
    }
    let mut out = BytesMut::with_capacity(frame.len() + 128 * ask.spans.len());
    out.put_i32(0);
    if header.encode(&mut out, header_version).is_err() || request.encode(&mut out, version).is_err() {
        return Some((ask, None));
    }
    let len = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Some((ask, Some(out.freeze())))
}

/// Spans for a partition's records; in inject mode, its records with `traceparent` set (if any changed).
fn trace_partition(work: &TraceWork<'_>, topic: &str, partition: i32, data: &Bytes, spans: &mut Vec<SendSpan>) -> Option<Bytes> {
    let label = work.metrics.topic_label(topic);
    let shared_topic: std::sync::Arc<str> = topic.into();
    let mut out: Vec<u8> = Vec::new();
    let mut changed = false;
    let mut index = 0i64;
    // Records by trace context: continued, invalid, started, absent, skipped (counted once per partition).
    let mut contexts = [0u64; 5];
    for b in batch::batches(data) {
        let before = index;
        index += b.record_count.max(0) as i64;
        let unreadable = |why: String| {
            work.metrics
                .error(ProxyErrorKind::RecordsUnreadable, &format!("produce {topic}/{partition}: {why}"));
        };
        if b.control || !b.complete {
            out.extend_from_slice(b.bytes);
            continue;
        }
        let section = match records::checked_section(&b, work.decompress_limit) {
            Ok(s) => s,
            Err(e) => {
                unreadable(e.to_string());
                out.extend_from_slice(b.bytes);
                continue;
            }
        };
        let list = match records::records(&section, b.record_count) {
            Ok(l) => l,
            Err(e) => {
                unreadable(e.to_string());
                out.extend_from_slice(b.bytes);
                continue;
            }
        };
        let mut section_out = Vec::with_capacity(section.len() + 80 * list.len());
        let spans_before = spans.len();
        let contexts_before = contexts;
        for r in &list {
            let parent = r.traceparent.and_then(|tp| crate::telemetry::traces::extract(tp, r.tracestate));
            contexts[match (r.traceparent, &parent) {
                (Some(_), Some(_)) => 0,
                (Some(_), None) => 1,
                (None, _) if work.mode == TraceMode::Inject => 2,
                (None, _) => 3,
            }] += 1;
            if parent.is_none() && work.mode == TraceMode::Observe {
                continue;
            }
            let start = work.tracer.start_span(parent, "send", SpanKind::Producer);
            if work.mode == TraceMode::Inject {
                records::put_with_traceparent(
                    &mut section_out,
                    r,
                    crate::telemetry::traces::traceparent(&start.context).as_bytes(),
                );
            }
            // Only sampled spans are exported; the others exist only in the header.
            if start.context.is_sampled() && work.tracer.exporting() {
                spans.push(SendSpan {
                    start: start.into(),
                    topic: shared_topic.clone(),
                    partition,
                    index: before + r.offset_delta as i64,
                });
            }
        }
        if work.mode != TraceMode::Inject {
            continue;
        }
        // Built straight into the request's records, taken back out if too large.
        let at = out.len();
        match records::rebuild_into(&b, &section_out, &mut out) {
            Ok(len) if len > work.max_batch_bytes => {
                // Too large with the headers: the records go as they came, without send spans.
                out.truncate(at);
                spans.truncate(spans_before);
                contexts = contexts_before;
                contexts[4] += list.len() as u64;
                out.extend_from_slice(b.bytes);
            }
            Ok(_) => changed = true,
            Err(e) => {
                unreadable(e.to_string());
                out.extend_from_slice(b.bytes);
            }
        }
    }
    for (i, context) in ["continued", "invalid", "started", "absent", "skipped"].iter().enumerate() {
        if contexts[i] > 0 {
            work.metrics
                .consume
                .trace_context
                .with([label.as_str(), "produce", context])
                .inc_by(contexts[i]);
        }
    }
    // Bytes after the last whole batch (none from a well-behaved client) stay as they were.
    let consumed: usize = batch::batches(data).map(|b| b.bytes.len()).sum();
    out.extend_from_slice(&data[consumed.min(data.len())..]);
    changed.then(|| Bytes::from(out))
}

/// `(topic, partition, error code, base offset)` of a Produce response frame (length prefix included).
pub fn produce_response(frame: &Bytes, version: i16) -> Option<Vec<(String, i32, i16, i64)>> {
    let response = crate::kafka::decode::response::<ProduceResponse>(frame, ApiKey::Produce, version)?;
    Some(
        response
            .responses
            .iter()
            .flat_map(|t| {
                t.partition_responses
                    .iter()
                    .map(move |p| (t.name.0.to_string(), p.index, p.error_code, p.base_offset))
            })
            .collect(),
    )
}

/// The `error` label of a Kafka error code: its name from the protocol's closed list.
pub fn error_label(code: i16) -> String {
    match kafka_protocol::ResponseError::try_from_code(code) {
        Some(e) => format!("{e:?}"),
        None => "Unknown".to_string(),
    }
}

/// Producer-side metrics and `send` spans from a Produce response and what its request held.
pub fn observe_response(
    metrics: &ProxyMetrics,
    tracer: &Tracer,
    frame: &Bytes,
    version: i16,
    latency: Duration,
    sent_at: SystemTime,
    ask: ProduceAsk,
) {
    let Some(outcomes) = produce_response(frame, version) else {
        return;
    };
    let acked_at = sent_at + latency;
    let batches = ask.batches;
    let mut spans = ask.spans;
    for (topic, partition, error, base_offset) in &outcomes {
        let mine;
        (mine, spans) = spans.into_iter().partition(|s| *s.topic == **topic && s.partition == *partition);
        // Unsampled spans are never exported: skip building them.
        let mine = mine.into_iter().filter(|s| s.start.is_sampled());
        if *error == 0 {
            // Acknowledged: one group, made into spans by the export task.
            tracer.finish_group(SpanGroup {
                kind: SpanKind::Producer,
                name: format!("send {topic}"),
                ended: acked_at,
                attributes: vec![
                    KeyValue::new("messaging.system", "kafka"),
                    KeyValue::new("messaging.operation.name", "send"),
                    KeyValue::new("messaging.operation.type", "send"),
                    KeyValue::new("messaging.destination.name", std::sync::Arc::<str>::from(topic.as_str())),
                    KeyValue::new("messaging.destination.partition.id", partition.to_string()),
                    KeyValue::new("messaging.client.id", std::sync::Arc::<str>::from(ask.client.as_str())),
                ],
                key: "messaging.kafka.offset",
                spans: mine.map(|s| (s.start, sent_at, base_offset.saturating_add(s.index))).collect(),
            });
            continue;
        }
        for s in mine {
            let failure = error_label(*error);
            let attributes = vec![
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.operation.name", "send"),
                KeyValue::new("messaging.operation.type", "send"),
                KeyValue::new("messaging.destination.name", topic.clone()),
                KeyValue::new("messaging.destination.partition.id", partition.to_string()),
                KeyValue::new("messaging.client.id", ask.client.clone()),
                KeyValue::new("error.type", failure.clone()),
            ];
            tracer.finish(
                s.start.start(),
                SpanKind::Producer,
                format!("send {topic}"),
                sent_at,
                acked_at,
                attributes,
                Some(failure),
            );
        }
    }
    let latency = latency.as_secs_f64();
    let mut topics_seen = std::collections::HashSet::new();
    for (topic, partition, error, _) in outcomes {
        let label = metrics.topic_label(&topic);
        if topics_seen.insert(topic.clone()) {
            metrics.produce_duration.with([&label]).observe(latency);
        }
        if error != 0 {
            metrics.produce_errors.with([&label, &error_label(error)]).inc();
            continue;
        }
        if let Some(b) = batches.iter().find(|b| b.topic == topic && b.partition == partition) {
            metrics.produced_records.with([&label]).inc_by(b.records);
            metrics.produced_bytes.with([&label]).inc_by(b.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::RequestHeader;
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::{Encodable, StrBytes};
    use kafka_protocol::records::Compression;

    #[test]
    fn counts_records_of_compressed_batches_without_decompressing() {
        let batch = Bytes::from(crate::kafka::batch::test_batch(0, &[1000; 5], Compression::Lz4));
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("orders")))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(2)
                    .with_records(Some(batch.clone()))])]);
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        RequestHeader::default()
            .with_request_api_key(0)
            .with_request_api_version(9)
            .encode(&mut frame, ApiKey::Produce.request_header_version(9))
            .unwrap();
        request.encode(&mut frame, 9).unwrap();
        let (got, rewritten) = produce_request(&frame.freeze(), 9, None).unwrap();
        assert!(rewritten.is_none());
        assert_eq!(
            got.batches,
            vec![PartitionBatch {
                topic: "orders".into(),
                partition: 2,
                records: 5,
                bytes: batch.len() as u64
            }]
        );
        assert_eq!(record_count(&[0xff; 200]), 0);
        assert_eq!(error_label(3), "UnknownTopicOrPartition");
    }
}
