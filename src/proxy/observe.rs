//! What the proxy measures in the traffic it relays, beyond counting frames: the producer side (records
//! and bytes acknowledged per topic, produce latency per topic, errors by Kafka error code).
//!
//! Produce requests are decoded (record batches stay undecoded bytes: only their headers are read, never
//! decompressed); the per-partition record and byte counts wait with the request until its response says
//! which partitions succeeded, so retried batches are counted once.

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::Decodable;

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

/// The partitions of a Produce request frame (length prefix included). `None` if it does not decode.
pub fn produce_request(frame: &Bytes, version: i16) -> Option<Vec<PartitionBatch>> {
    let mut buf = frame.slice(4..);
    RequestHeader::decode(&mut buf, ApiKey::Produce.request_header_version(version)).ok()?;
    let request = ProduceRequest::decode(&mut buf, version).ok()?;
    let mut out = Vec::new();
    for t in &request.topic_data {
        for p in &t.partition_data {
            let records = p.records.as_deref().unwrap_or_default();
            out.push(PartitionBatch {
                topic: t.name.0.to_string(),
                partition: p.index,
                records: record_count(records),
                bytes: records.len() as u64,
            });
        }
    }
    Some(out)
}

/// `(topic, partition, error code)` of a Produce response frame (length prefix included).
pub fn produce_response(frame: &Bytes, version: i16) -> Option<Vec<(String, i32, i16)>> {
    let mut buf = frame.slice(4..);
    ResponseHeader::decode(&mut buf, ApiKey::Produce.response_header_version(version)).ok()?;
    let response = ProduceResponse::decode(&mut buf, version).ok()?;
    Some(
        response
            .responses
            .iter()
            .flat_map(|t| {
                t.partition_responses
                    .iter()
                    .map(move |p| (t.name.0.to_string(), p.index, p.error_code))
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
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
        let got = produce_request(&frame.freeze(), 9).unwrap();
        assert_eq!(
            got,
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
