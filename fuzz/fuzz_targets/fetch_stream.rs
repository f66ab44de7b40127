//! Differential: the sidecar's streaming Fetch reader (`kafka::fetch_stream`, fed in chunks of sizes the
//! input chooses, through the same `consume::Pieces` the relay uses) against `kafka-protocol`'s whole-message
//! decoder, on the same bytes. On every input both accept they must agree on:
//! - the partitions, in order: topic, index, error code, high watermark;
//! - each partition's batches: what the reader tells is exactly the longest run of whole, walkable
//!   batches at the start of the partition's `records` field (`kafka-protocol`'s bytes);
//! - each batch's records: offsets, timestamps and headers, from the sidecar's record parser
//!   (`kafka::records`) and from `kafka-protocol`'s `RecordBatchDecoder`.
//!
//! Nothing may panic or allocate beyond the limit on any input. Half the inputs are raw response bodies;
//! the other half are well-formed responses the input describes (topics, partitions, records with keys,
//! headers and timestamps, codecs), then mutated at the positions the input gives, so that the fuzzer
//! reaches the records.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run fetch_stream -- -runs=10000000`
#![no_main]

use bytes::{BufMut, Bytes, BytesMut};
use eventscope::kafka::batch;
use eventscope::kafka::records;
use eventscope::sidecar::kafka::consume::{Batches, FetchPiece, Pieces};
use indexmap::IndexMap;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchResponse, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
use libfuzzer_sys::fuzz_target;

/// Small, so that the inputs' batches are sometimes larger (relayed unread).
const MAX_BATCH: usize = 1024;

#[path = "input.rs"]
mod input;
use input::{chunks, Input};

/// A well-formed Fetch response body (correlation id first) that `input` describes.
fn structured(input: &mut Input<'_>, version: i16) -> Vec<u8> {
    let mut topics = Vec::new();
    for t in 0..1 + input.byte() % 3 {
        let mut partitions = Vec::new();
        for p in 0..1 + input.byte() % 3 {
            let mut records = BytesMut::new();
            let mut offset = (input.byte() as i64) << 8;
            for _ in 0..input.byte() % 4 {
                let n = 1 + input.byte() % 5;
                let compression = match input.byte() % 4 {
                    0 => Compression::None,
                    1 => Compression::Lz4,
                    2 => Compression::Gzip,
                    _ => Compression::Snappy,
                };
                let base_ts = 1_700_000_000_000 + input.byte() as i64 * 1000;
                let batch: Vec<Record> = (0..n)
                    .map(|i| {
                        let mut headers = IndexMap::new();
                        for h in 0..input.byte() % 3 {
                            let name = if h == 0 && input.byte() % 2 == 0 { "traceparent".to_string() } else { format!("h{h}") };
                            let len = input.byte() as usize % 60;
                            headers.insert(StrBytes::from_string(name), Some(Bytes::from(input.bytes(len))));
                        }
                        let key_len = input.byte() as usize % 16;
                        let value_len = input.byte() as usize % 64;
                        Record {
                            transactional: false,
                            control: false,
                            delete_horizon: false,
                            partition_leader_epoch: 0,
                            producer_id: -1,
                            producer_epoch: -1,
                            timestamp_type: TimestampType::Creation,
                            offset: offset + i as i64,
                            sequence: (offset + i as i64) as i32,
                            timestamp: base_ts + input.byte() as i64,
                            key: (key_len > 0).then(|| Bytes::from(input.bytes(key_len))),
                            value: Some(Bytes::from(input.bytes(value_len))),
                            headers,
                        }
                    })
                    .collect();
                offset += n as i64;
                let _ = RecordBatchEncoder::encode(&mut records, &batch, &RecordEncodeOptions { version: 2, compression });
            }
            // Sometimes a batch cut off at the end, as a fetch size limit does.
            let cut = input.byte() as usize % 8;
            let records = if cut > 0 && records.len() > cut * 8 { records.split_to(records.len() - cut * 8) } else { records };
            partitions.push(
                PartitionData::default()
                    .with_partition_index(p as i32)
                    .with_error_code((input.byte() % 4 == 0) as i16)
                    .with_high_watermark(offset + input.byte() as i64)
                    .with_records((input.byte() % 8 != 0).then(|| records.freeze())),
            );
        }
        topics.push(
            FetchableTopicResponse::default()
                .with_topic(TopicName(StrBytes::from_string(format!("topic-{t}"))))
                .with_partitions(partitions),
        );
    }
    let mut b = BytesMut::new();
    b.put_i32(7);
    let _ = FetchResponse::default().with_responses(topics).encode(&mut b, version);
    let mut body = b.to_vec();
    // Mutations: (position, xor) pairs.
    for _ in 0..input.byte() % 4 {
        if body.is_empty() {
            break;
        }
        let at = ((input.byte() as usize) << 8 | input.byte() as usize) % body.len();
        body[at] ^= input.byte().max(1);
    }
    body
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Part {
    topic: String,
    partition: i32,
    error_code: i16,
    high_watermark: i64,
}

/// Offsets, timestamps and headers of a batch as the sidecar reads them; `None` if it does not accept
/// the batch (or a value would overflow, which `kafka-protocol` does not guard against).
fn ours(bytes: &[u8]) -> Option<Vec<(i64, i64, Vec<(Vec<u8>, Option<Vec<u8>>)>)>> {
    let b = batch::batches(bytes).next().filter(|b| b.complete)?;
    let section = records::records_section(&b, 1 << 20).ok()?;
    let list = records::records(&section, b.record_count).ok()?;
    list.iter()
        .map(|r| {
            let offset = b.base_offset.checked_add(r.offset_delta as i64)?;
            let timestamp = b.base_timestamp.checked_add(r.timestamp_delta)?;
            // `kafka-protocol` keeps the last value of a repeated header name, in its first place.
            let mut headers: IndexMap<Vec<u8>, Option<Vec<u8>>> = IndexMap::new();
            for (k, v) in r.headers() {
                headers.insert(k.to_vec(), v.map(<[u8]>::to_vec));
            }
            Some((offset, timestamp, headers.into_iter().collect()))
        })
        .collect()
}

fn theirs(bytes: &[u8]) -> Option<Vec<(i64, i64, Vec<(Vec<u8>, Option<Vec<u8>>)>)>> {
    let mut buf = Bytes::copy_from_slice(bytes);
    let set = RecordBatchDecoder::decode(&mut buf).ok()?;
    Some(
        set.records
            .into_iter()
            .map(|r| {
                let headers = r
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.to_vec())))
                    .collect();
                (r.offset, r.timestamp, headers)
            })
            .collect(),
    )
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let version = 4 + (input.byte() % 8) as i16;
    let chunk_seed = input.byte();
    let body = if input.byte() % 2 == 0 { input.0.to_vec() } else { structured(&mut input, version) };

    // The streaming side, in chunks of 1 to 256 bytes varying along the way.
    let mut pieces = Pieces::new(version, MAX_BATCH, None).expect("a version the reader reads");
    let mut got: Vec<(FetchPiece, Batches)> = Vec::new();
    let mut emit = |p: FetchPiece, r: Batches, _| got.push((p, r));
    let accepted = chunks(&body, chunk_seed).all(|c| pieces.feed(c, &mut emit).is_ok()) && pieces.finish().is_ok();

    // The reference.
    let mut buf = Bytes::copy_from_slice(&body);
    if body.len() < 4 || !accepted {
        return;
    }
    let _correlation = buf.get_i32_checked();
    let Ok(response) = FetchResponse::decode(&mut buf, version) else {
        return;
    };

    // Partitions: the reader's pieces, first pieces only (continuations repeat their partition).
    let mine: Vec<Part> = got
        .iter()
        .filter(|(p, _)| !p.continuation)
        .map(|(p, _)| Part {
            topic: p.topic.clone(),
            partition: p.partition,
            error_code: p.error_code,
            high_watermark: p.high_watermark,
        })
        .collect();
    let reference: Vec<(Part, Option<Bytes>)> = response
        .responses
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(move |p| {
                (
                    Part {
                        topic: t.topic.0.to_string(),
                        partition: p.partition_index,
                        error_code: p.error_code,
                        high_watermark: p.high_watermark,
                    },
                    p.records.clone(),
                )
            })
        })
        .collect();
    assert_eq!(mine, reference.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>());

    // Batches: per partition, what the pieces carry is what a walk of the whole records field finds
    // (`batch::batches`, the collector's walker): its whole batches in order, those over the limit
    // skipped and counted.
    let mut i = 0;
    for (_, records) in &reference {
        let mut told = Vec::new();
        let mut skipped = 0;
        loop {
            let (p, r) = &got[i];
            r.iter().for_each(|b| told.extend_from_slice(b));
            skipped += p.skipped_batches;
            i += 1;
            if i == got.len() || !got[i].0.continuation {
                break;
            }
        }
        let records = records.as_deref().unwrap_or_default();
        let whole: Vec<_> = batch::batches(records).filter(|b| b.complete).collect();
        let expected: Vec<u8> = whole.iter().filter(|b| b.bytes.len() <= MAX_BATCH).flat_map(|b| b.bytes.to_vec()).collect();
        assert_eq!(told, expected, "told batches differ from the walk of the records");
        assert_eq!(skipped as usize, whole.iter().filter(|b| b.bytes.len() > MAX_BATCH).count());
        // Records of every batch told.
        for b in batch::batches(&told) {
            assert!(b.complete);
            if let (Some(a), Some(b)) = (ours(b.bytes), theirs(b.bytes)) {
                assert_eq!(a, b, "records differ");
            }
        }
    }
    assert_eq!(i, got.len());
});

trait GetI32 {
    fn get_i32_checked(&mut self) -> Option<i32>;
}

impl GetI32 for Bytes {
    fn get_i32_checked(&mut self) -> Option<i32> {
        use bytes::Buf;
        (self.len() >= 4).then(|| self.get_i32())
    }
}
