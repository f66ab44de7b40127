//! The sidecar's record-batch path with bytes from the network: a Produce request whose records field is
//! the input (trace context injected: decompression, record parsing, re-encoding), and a Fetch response
//! carrying the same records (delivery and commit tracking). The batch CRC is fixed up first so the
//! fuzzer gets past it into the records. Nothing may panic, hang or allocate beyond the limit.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run record_batches -- -max_total_time=300`
#![no_main]

use bytes::{BufMut, Bytes, BytesMut};
use eventscope::telemetry::kafka::ProxyMetrics;
use eventscope::sidecar::kafka::{consume, produce};
use eventscope::telemetry::traces::{TraceMode, Tracer};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, ProduceRequest, RequestHeader, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Encodable, StrBytes};
use libfuzzer_sys::fuzz_target;

fn frame(f: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i32(0);
    f(&mut b);
    let n = (b.len() - 4) as i32;
    b[..4].copy_from_slice(&n.to_be_bytes());
    b.freeze()
}

fuzz_target!(|data: &[u8]| {
    let mut records = data.to_vec();
    if records.len() >= 61 {
        // Batch length to the end of the input, and a CRC that matches.
        let len = (records.len() - 12) as i32;
        records[8..12].copy_from_slice(&len.to_be_bytes());
        let crc = crc32c::crc32c(&records[21..]);
        records[17..21].copy_from_slice(&crc.to_be_bytes());
    }
    let records = Bytes::from(records);
    let topic = TopicName(StrBytes::from_static_str("t"));
    // Built once: registering metrics on every input would dominate the run.
    static SHARED: std::sync::OnceLock<(ProxyMetrics, Tracer)> = std::sync::OnceLock::new();
    let (metrics, tracer) = SHARED.get_or_init(|| {
        let registry = prometheus::Registry::new();
        (
            ProxyMetrics::new(&registry),
            Tracer::disabled(eventscope::telemetry::traces::TraceMetrics::new(&registry)),
        )
    });

    let produce = frame(|b| {
        RequestHeader::default()
            .with_request_api_key(0)
            .with_request_api_version(9)
            .encode(b, ApiKey::Produce.request_header_version(9))
            .unwrap();
        ProduceRequest::default()
            .with_acks(-1)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(topic.clone())
                .with_partition_data(vec![PartitionProduceData::default().with_records(Some(records.clone()))])])
            .encode(b, 9)
            .unwrap();
    });
    for mode in [TraceMode::Inject, TraceMode::Observe] {
        let work = produce::TraceWork {
            tracer,
            mode,
            metrics,
            decompress_limit: 1 << 20,
            max_batch_bytes: 1 << 20,
        };
        let _ = produce::produce_request(&produce, 9, Some(work));
    }

    let fetch = frame(|b| {
        RequestHeader::default()
            .with_request_api_key(1)
            .with_request_api_version(11)
            .encode(b, ApiKey::Fetch.request_header_version(11))
            .unwrap();
        FetchRequest::default()
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic.clone())
                .with_partitions(vec![FetchPartition::default()])])
            .encode(b, 11)
            .unwrap();
    });
    let response = frame(|b| {
        ResponseHeader::default()
            .encode(b, ApiKey::Fetch.response_header_version(11))
            .unwrap();
        FetchResponse::default()
            .with_responses(vec![FetchableTopicResponse::default().with_topic(topic.clone()).with_partitions(
                vec![PartitionData::default()
                    .with_high_watermark(1 << 40)
                    .with_records(Some(records.clone()))],
            )])
            .encode(b, 11)
            .unwrap();
    });
    let consumption = consume::Consumption::new(metrics.clone(), tracer.clone(), "c".into(), 1 << 20, 1 << 20);
    if let Some(ask) = consume::fetch_request(&fetch, 11) {
        consumption.fetch_response(&response, 11, &ask, std::time::SystemTime::now());
    }
    consumption.refresh();
});
