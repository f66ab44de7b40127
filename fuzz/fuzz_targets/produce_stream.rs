//! Differential: the sidecar's streaming Produce reader (`kafka::produce_stream`, fed in chunks of sizes
//! the input chooses) against `kafka-protocol`'s whole-message decoder as the sidecar uses it
//! (`sidecar::kafka::produce::produce_request`), on the same bytes. On every input both accept they must
//! agree on the client id and, in order, every partition's topic, index, record count (from its batch
//! headers) and records length.
//!
//! Nothing may panic or allocate beyond the limit on any input. Half the inputs are raw request bodies;
//! the other half are well-formed requests the input describes (client and transactional ids, topics,
//! partitions, batches in every codec, some cut off or null), then mutated at the positions the input
//! gives, so that the fuzzer reaches the records and the flexible versions' tagged fields.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run produce_stream -- -runs=10000000`
#![no_main]

use bytes::{BufMut, Bytes, BytesMut};
use eventscope::kafka::produce_stream::{Event, ProduceStream};
use eventscope::sidecar::kafka::produce::produce_request;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, RequestHeader, TopicName, TransactionalId};
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
use libfuzzer_sys::fuzz_target;

#[path = "input.rs"]
mod input;
use input::{chunks, Input};

/// A well-formed Produce request body (API key first) that `input` describes.
fn structured(input: &mut Input<'_>, version: i16) -> Vec<u8> {
    let mut topics = Vec::new();
    for t in 0..input.byte() % 4 {
        let mut partitions = Vec::new();
        for p in 0..input.byte() % 4 {
            let mut records = BytesMut::new();
            for _ in 0..input.byte() % 3 {
                let n = 1 + input.byte() % 5;
                let compression = match input.byte() % 5 {
                    0 => Compression::None,
                    1 => Compression::Lz4,
                    2 => Compression::Gzip,
                    3 => Compression::Zstd,
                    _ => Compression::Snappy,
                };
                let batch: Vec<Record> = (0..n)
                    .map(|i| Record {
                        transactional: false,
                        control: false,
                        delete_horizon: false,
                        partition_leader_epoch: 0,
                        producer_id: -1,
                        producer_epoch: -1,
                        timestamp_type: TimestampType::Creation,
                        offset: i as i64,
                        sequence: i as i32,
                        timestamp: 1_700_000_000_000 + input.byte() as i64,
                        key: None,
                        value: Some(Bytes::from(input.bytes(input.0.first().map_or(0, |b| *b as usize % 48)))),
                        headers: Default::default(),
                    })
                    .collect();
                let _ = RecordBatchEncoder::encode(&mut records, &batch, &RecordEncodeOptions { version: 2, compression });
            }
            // Sometimes cut off, sometimes null.
            let cut = input.byte() as usize % 8;
            let records = if cut > 0 && records.len() > cut * 8 { records.split_to(records.len() - cut * 8) } else { records };
            partitions.push(
                PartitionProduceData::default()
                    .with_index(p as i32 + input.byte() as i32)
                    .with_records((input.byte() % 8 != 0).then(|| records.freeze())),
            );
        }
        topics.push(
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(format!("topic-{t}"))))
                .with_partition_data(partitions),
        );
    }
    let mut b = BytesMut::new();
    let client = (input.byte() % 4 != 0).then(|| StrBytes::from_string(format!("client-{}", input.byte())));
    let _ = RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(version)
        .with_correlation_id(input.byte() as i32)
        .with_client_id(client)
        .encode(&mut b, ApiKey::Produce.request_header_version(version));
    let transactional = (input.byte() % 2 == 0).then(|| TransactionalId(StrBytes::from_static_str("tx")));
    let _ = ProduceRequest::default()
        .with_transactional_id(transactional)
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(topics)
        .encode(&mut b, version);
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

type Told = (String, Vec<(String, i32, u64, u64)>);

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let version = 3 + (input.byte() % 7) as i16;
    let chunk_seed = input.byte();
    let body = if input.byte() % 2 == 0 { input.0.to_vec() } else { structured(&mut input, version) };

    // The streaming side, in chunks of 1 to 256 bytes varying along the way.
    let mut reader = ProduceStream::new(version).expect("a version the reader reads");
    let mut mine: Told = Default::default();
    let mut sink = |e: Event<'_>| match e {
        Event::Client(c) => mine.0 = c.to_string(),
        Event::Partition { topic, partition, records, bytes } => mine.1.push((topic.to_string(), partition, records, bytes)),
    };
    let accepted = chunks(&body, chunk_seed).all(|c| reader.feed(c, &mut sink).is_ok()) && reader.finish().is_ok();

    // The reference: the whole frame through `kafka-protocol`.
    let mut frame = BytesMut::with_capacity(4 + body.len());
    frame.put_i32(body.len() as i32);
    frame.extend_from_slice(&body);
    let Some((ask, _)) = produce_request(&frame.freeze(), version, None) else {
        return;
    };
    if !accepted {
        return;
    }
    let theirs: Told = (
        ask.client,
        ask.batches.into_iter().map(|b| (b.topic, b.partition, b.records, b.bytes)).collect(),
    );
    assert_eq!(mine, theirs, "the streaming reader and kafka-protocol disagree");
});
