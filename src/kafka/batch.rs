//! Record batch headers (format v2), read straight from untrusted bytes without decoding or decompressing
//! the records: the collector's lag seconds and the sidecar's producer metrics need only offsets,
//! timestamps, counts and attributes. Every length is checked before use; a malformed header ends the walk.

/// The v2 record batch header's layout (KIP-98), written once: where each field lies.
pub mod layout {
    pub const HEADER_LEN: usize = 61;
    pub const OFF_LENGTH: usize = 8;
    pub const OFF_MAGIC: usize = 16;
    pub const OFF_CRC: usize = 17;
    /// The CRC-32C covers everything from here to the batch's end.
    pub const OFF_ATTRIBUTES: usize = 21;
    pub const OFF_LAST_OFFSET_DELTA: usize = 23;
    pub const OFF_BASE_TIMESTAMP: usize = 27;
    pub const OFF_MAX_TIMESTAMP: usize = 35;
    pub const OFF_RECORD_COUNT: usize = 57;
}
use layout::*;

const ATTR_COMPRESSION: i16 = 0b111;
const ATTR_LOG_APPEND_TIME: i16 = 1 << 3;
const ATTR_CONTROL: i16 = 1 << 5;

/// One batch's header, and the batch's bytes as far as they were received.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    pub base_offset: i64,
    /// Base offset + last offset delta (saturating; a negative delta counts as 0).
    pub last_offset: i64,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub record_count: i32,
    /// The attributes field (codec in its low 3 bits, timestamp type, transactional, control).
    pub attributes: i16,
    /// The CRC-32C the batch claims.
    pub crc: u32,
    pub compressed: bool,
    pub log_append_time: bool,
    pub control: bool,
    /// False when the batch was cut short (a fetch size limit): only its header is usable.
    pub complete: bool,
    /// The batch (length prefix included), whole or as far as it goes.
    pub bytes: &'a [u8],
}

/// Big-endian integers at the start of `b` (which holds at least that many bytes): the readers of
/// untrusted Kafka bytes in this module and the streaming readers beside it share these.
pub(super) fn be_i16(b: &[u8]) -> i16 {
    i16::from_be_bytes([b[0], b[1]])
}
pub(super) fn be_i32(b: &[u8]) -> i32 {
    i32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
pub(super) fn be_i64(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    i64::from_be_bytes(a)
}

/// The batches of a `records` field, in order. Stops after a cut-off batch or at a malformed header.
pub fn batches(records: &[u8]) -> impl Iterator<Item = Batch<'_>> {
    let mut at = 0usize;
    let mut done = false;
    std::iter::from_fn(move || {
        if done || records.len() - at < HEADER_LEN {
            return None;
        }
        let b = &records[at..];
        let length = be_i32(&b[OFF_LENGTH..]);
        if length < (HEADER_LEN - 12) as i32 || b[OFF_MAGIC] != 2 {
            done = true;
            return None;
        }
        let total = 12 + length as usize;
        let complete = total <= b.len();
        let attributes = i16::from_be_bytes([b[OFF_ATTRIBUTES], b[OFF_ATTRIBUTES + 1]]);
        let base_offset = be_i64(b);
        let batch = Batch {
            base_offset,
            last_offset: base_offset.saturating_add(be_i32(&b[OFF_LAST_OFFSET_DELTA..]).max(0) as i64),
            base_timestamp: be_i64(&b[OFF_BASE_TIMESTAMP..]),
            max_timestamp: be_i64(&b[OFF_MAX_TIMESTAMP..]),
            record_count: be_i32(&b[OFF_RECORD_COUNT..]),
            attributes,
            crc: be_i32(&b[OFF_CRC..]) as u32,
            compressed: attributes & ATTR_COMPRESSION != 0,
            log_append_time: attributes & ATTR_LOG_APPEND_TIME != 0,
            control: attributes & ATTR_CONTROL != 0,
            complete,
            bytes: &b[..total.min(b.len())],
        };
        if complete {
            at += total;
        } else {
            done = true;
        }
        Some(batch)
    })
}

impl<'a> Batch<'a> {
    /// The codec bits of the attributes (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn codec_bits(&self) -> i16 {
        self.attributes & ATTR_COMPRESSION
    }

    /// The records section (after the header), as far as it was received.
    pub fn section(&self) -> &'a [u8] {
        &self.bytes[HEADER_LEN.min(self.bytes.len())..]
    }
}

/// A record batch of records at `base..` with the given timestamps, for tests.
#[cfg(test)]
pub(crate) fn test_batch(base: i64, timestamps: &[i64], compression: kafka_protocol::records::Compression) -> Vec<u8> {
    use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions};
    let records: Vec<Record> = timestamps
        .iter()
        .enumerate()
        .map(|(i, ts)| test_record(base + i as i64, i as i32, *ts))
        .collect();
    let mut buf = bytes::BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, &records, &RecordEncodeOptions { version: 2, compression }).expect("encodable");
    buf.to_vec()
}

/// A plain record (no key or headers, value `hello`) at `offset`, for tests. `sequence` goes in step with
/// the offset: the encoder starts a new batch whenever offset − sequence changes.
#[cfg(test)]
pub(crate) fn test_record(offset: i64, sequence: i32, timestamp: i64) -> kafka_protocol::records::Record {
    kafka_protocol::records::Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: kafka_protocol::records::TimestampType::Creation,
        offset,
        sequence,
        timestamp,
        key: None,
        value: Some(bytes::Bytes::from_static(b"hello")),
        headers: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::Compression;

    #[test]
    fn reads_headers_of_every_batch_and_stops_at_a_cut() {
        let mut bytes = test_batch(10, &[1000, 2000, 3000], Compression::Zstd);
        bytes.extend(test_batch(13, &[4000, 5000], Compression::None));
        let all: Vec<_> = batches(&bytes)
            .map(|b| (b.base_offset, b.last_offset, b.record_count, b.compressed, b.complete))
            .collect();
        assert_eq!(all, vec![(10, 12, 3, true, true), (13, 14, 2, false, true)]);
        let cut: Vec<_> = batches(&bytes[..bytes.len() - 3]).map(|b| (b.base_offset, b.complete)).collect();
        assert_eq!(cut, vec![(10, true), (13, false)]);
        assert_eq!(batches(&[0xff; 100]).count(), 0);
    }
}
