//! Records inside a v2 record batch: read them (offsets, timestamps, trace headers) and rewrite one header
//! per record while keeping every other byte of the record as it was.
//!
//! Why not `kafka_protocol::records`: its `Record` keeps headers in a map, so a record with two headers of
//! the same key (allowed by Kafka, and used) would lose one on re-encoding, and its decompressors have no
//! output limit. Here records stay byte slices: a rewritten record is its original bytes with one header
//! value replaced (or appended), and decompression stops at a limit. Compression on the way back uses
//! `kafka_protocol::compression`, so batches are re-encoded with the codec they came with.
//!
//! The batch header (base offset, partition leader epoch, attributes, last offset delta, timestamps,
//! producer id and epoch, base sequence, record count) is copied unchanged; only the length and CRC are
//! recomputed. Control batches are never rewritten, and a batch whose CRC does not match is left alone for
//! the broker to reject.

use std::io::Read;

use bytes::BytesMut;
use kafka_protocol::compression::{Compressor, Gzip, Snappy, Zstd};
use kafka_protocol::records::Compression;

use super::batch::layout::{HEADER_LEN, OFF_ATTRIBUTES, OFF_CRC, OFF_LENGTH};
use super::batch::Batch;

/// Why a batch's records could not be read or rewritten.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("batch CRC does not match")]
    Crc,
    #[error("unknown compression codec {0}")]
    Codec(i16),
    #[error("decompressed batch exceeds {0} bytes")]
    TooLarge(usize),
    #[error("cannot decompress: {0}")]
    Decompress(String),
    #[error("malformed record: {0}")]
    Malformed(&'static str),
    #[error("cannot compress: {0}")]
    Compress(String),
}

/// One record, borrowed from the (decompressed) records section.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub offset_delta: i32,
    pub timestamp_delta: i64,
    /// The first `traceparent` header's value, and `tracestate`'s.
    pub traceparent: Option<&'a [u8]>,
    pub tracestate: Option<&'a [u8]>,
    /// The record's bytes after its length prefix.
    body: &'a [u8],
    /// Where in `body` the header count starts, and where the `traceparent` value (prefix included) lies.
    headers_at: usize,
    traceparent_at: Option<(usize, usize)>,
}

/// A batch's compression codec from its attributes.
pub fn codec(batch: &Batch<'_>) -> Result<Compression, RecordError> {
    Ok(match batch.codec_bits() {
        0 => Compression::None,
        1 => Compression::Gzip,
        2 => Compression::Snappy,
        3 => Compression::Lz4,
        4 => Compression::Zstd,
        other => return Err(RecordError::Codec(other)),
    })
}

/// Checks a complete batch's CRC-32C (over everything from the attributes on).
pub fn crc_ok(batch: &Batch<'_>) -> bool {
    let b = batch.bytes;
    b.len() >= HEADER_LEN && batch.crc == crc32c::crc32c(&b[OFF_ATTRIBUTES..])
}

/// The records section of a complete batch, decompressed to at most `limit` bytes.
pub fn records_section<'a>(batch: &Batch<'a>, limit: usize) -> Result<std::borrow::Cow<'a, [u8]>, RecordError> {
    decompress(codec(batch)?, batch.section(), limit)
}

/// The records section of a complete batch whose CRC matches (else [`RecordError::Crc`]): what the
/// sidecar may rewrite.
pub fn checked_section<'a>(batch: &Batch<'a>, limit: usize) -> Result<std::borrow::Cow<'a, [u8]>, RecordError> {
    if !crc_ok(batch) {
        return Err(RecordError::Crc);
    }
    records_section(batch, limit)
}

/// Decompresses a records section, refusing to produce more than `limit` bytes.
pub fn decompress(codec: Compression, data: &[u8], limit: usize) -> Result<std::borrow::Cow<'_, [u8]>, RecordError> {
    fn read_limited(r: impl Read, limit: usize, hint: usize) -> Result<Vec<u8>, RecordError> {
        // Sized for a typical ratio up front, so that the output is not copied each time it doubles.
        let mut out = Vec::with_capacity(hint.saturating_mul(4).min(limit.saturating_add(1)));
        r.take(limit as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| RecordError::Decompress(e.to_string()))?;
        if out.len() > limit {
            return Err(RecordError::TooLarge(limit));
        }
        Ok(out)
    }
    let out = match codec {
        Compression::None => return Ok(std::borrow::Cow::Borrowed(data)),
        Compression::Gzip => read_limited(flate2::read::GzDecoder::new(data), limit, data.len())?,
        Compression::Lz4 => read_limited(
            lz4::Decoder::new(data).map_err(|e| RecordError::Decompress(e.to_string()))?,
            limit,
            data.len(),
        )?,
        Compression::Zstd => read_limited(
            zstd::stream::read::Decoder::new(data).map_err(|e| RecordError::Decompress(e.to_string()))?,
            limit,
            data.len(),
        )?,
        Compression::Snappy => snappy(data, limit)?,
    };
    Ok(std::borrow::Cow::Owned(out))
}

/// Snappy as Kafka clients write it: xerial framing (Java clients, librdkafka) or a raw block.
fn snappy(data: &[u8], limit: usize) -> Result<Vec<u8>, RecordError> {
    const XERIAL: &[u8] = b"\x82SNAPPY\x00";
    let block = |input: &[u8], out: &mut Vec<u8>| -> Result<(), RecordError> {
        let n = snap::raw::decompress_len(input).map_err(|e| RecordError::Decompress(e.to_string()))?;
        if out.len().saturating_add(n) > limit {
            return Err(RecordError::TooLarge(limit));
        }
        let at = out.len();
        out.resize(at + n, 0);
        snap::raw::Decoder::new()
            .decompress(input, &mut out[at..])
            .map_err(|e| RecordError::Decompress(e.to_string()))?;
        Ok(())
    };
    let mut out = Vec::new();
    if !data.starts_with(XERIAL) || data.len() < 16 {
        block(data, &mut out)?;
        return Ok(out);
    }
    let mut rest = &data[16..];
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(RecordError::Decompress("truncated snappy block length".into()));
        }
        let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let chunk = rest.get(4..4 + n).ok_or(RecordError::Decompress("truncated snappy block".into()))?;
        block(chunk, &mut out)?;
        rest = &rest[4 + n..];
    }
    Ok(out)
}

/// Compresses a records section with a codec, as Kafka clients frame it.
pub fn compress(codec: Compression, data: &[u8]) -> Result<Vec<u8>, RecordError> {
    let mut out = Vec::new();
    compress_into(codec, data, &mut out)?;
    Ok(out)
}

/// Appends a records section compressed with a codec to `out` (lz4 and no compression write there
/// directly; the other codecs' output is copied in).
fn compress_into(codec: Compression, data: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
    fn with<C: Compressor<BytesMut, BufMut = BytesMut>>(data: &[u8]) -> Result<Vec<u8>, RecordError> {
        let mut out = BytesMut::new();
        C::compress(&mut out, |buf| {
            buf.extend_from_slice(data);
            Ok(())
        })
        .map_err(|e| RecordError::Compress(e.to_string()))?;
        Ok(out.to_vec())
    }
    match codec {
        Compression::None => out.extend_from_slice(data),
        Compression::Gzip => out.extend_from_slice(&with::<Gzip>(data)?),
        Compression::Snappy => out.extend_from_slice(&with::<Snappy>(data)?),
        Compression::Lz4 => lz4_fast(data, out)?,
        Compression::Zstd => out.extend_from_slice(&with::<Zstd>(data)?),
    }
    Ok(())
}

/// LZ4 frames as librdkafka writes them: the fast level (`kafka-protocol`'s Lz4 compressor uses level 4,
/// which is LZ4-HC and several times slower), independent blocks, and no content or block checksums (the
/// lz4 crate's defaults add both: two XXH32 passes over every batch, which the batch's own CRC-32C
/// already covers).
fn lz4_fast(data: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
    use std::io::Write;
    out.reserve(data.len() / 2 + 64);
    let mut encoder = lz4::EncoderBuilder::new()
        .level(0)
        .checksum(lz4::ContentChecksum::NoChecksum)
        .block_checksum(lz4::liblz4::BlockChecksum::NoBlockChecksum)
        .block_mode(lz4::BlockMode::Independent)
        .build(out)
        .map_err(|e| RecordError::Compress(e.to_string()))?;
    encoder.write_all(data).map_err(|e| RecordError::Compress(e.to_string()))?;
    let (_, result) = encoder.finish();
    result.map_err(|e| RecordError::Compress(e.to_string()))
}

/// A zigzag varint (Kafka's `varint`/`varlong`) at `*at`, advancing it.
fn varint(b: &[u8], at: &mut usize) -> Result<i64, RecordError> {
    let mut value: u64 = 0;
    for shift in (0..70).step_by(7) {
        let byte = *b.get(*at).ok_or(RecordError::Malformed("truncated varint"))?;
        *at += 1;
        if shift == 63 && byte > 1 {
            return Err(RecordError::Malformed("varint too long"));
        }
        value |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    Err(RecordError::Malformed("varint too long"))
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// A length-prefixed byte field (−1 for null) at `*at`, advancing past it.
fn bytes_field<'a>(b: &'a [u8], at: &mut usize) -> Result<Option<&'a [u8]>, RecordError> {
    let n = varint(b, at)?;
    if n < 0 {
        return Ok(None);
    }
    let end = at
        .checked_add(n as usize)
        .filter(|e| *e <= b.len())
        .ok_or(RecordError::Malformed("field past the record's end"))?;
    let v = &b[*at..end];
    *at = end;
    Ok(Some(v))
}

impl<'a> RecordRef<'a> {
    /// The key and the value (`None` for null), read again from the record's bytes.
    fn key_value(&self) -> (Option<&'a [u8]>, Option<&'a [u8]>) {
        let body = self.body;
        let mut at = 1;
        let (Ok(_), Ok(_)) = (varint(body, &mut at), varint(body, &mut at)) else {
            return (None, None);
        };
        let key = bytes_field(body, &mut at).ok().flatten();
        let value = bytes_field(body, &mut at).ok().flatten();
        (key, value)
    }

    pub fn key(&self) -> Option<&'a [u8]> {
        self.key_value().0
    }

    pub fn value(&self) -> Option<&'a [u8]> {
        self.key_value().1
    }

    /// Every header, `(name, value)` in order (`None` for a null value), as far as they can be read.
    pub fn headers(&self) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> {
        let body = self.body;
        let mut at = self.headers_at;
        let mut left = varint(body, &mut at).unwrap_or(0).max(0);
        std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            left -= 1;
            let key = bytes_field(body, &mut at).ok()?.unwrap_or_default();
            let value = bytes_field(body, &mut at).ok()?;
            Some((key, value))
        })
    }

    /// The value of the first header named `name` (`None` when absent or null).
    pub fn header(&self, name: &[u8]) -> Option<&'a [u8]> {
        let body = self.body;
        let mut at = self.headers_at;
        let count = varint(body, &mut at).ok()?;
        for _ in 0..count {
            let key = bytes_field(body, &mut at).ok()?.unwrap_or_default();
            let value = bytes_field(body, &mut at).ok()?;
            if key == name {
                return value;
            }
        }
        None
    }
}

fn parse_record(body: &[u8]) -> Result<RecordRef<'_>, RecordError> {
    let mut at = 1; // attributes
    if body.is_empty() {
        return Err(RecordError::Malformed("empty record"));
    }
    let timestamp_delta = varint(body, &mut at)?;
    let offset_delta = i32::try_from(varint(body, &mut at)?).map_err(|_| RecordError::Malformed("offset delta"))?;
    bytes_field(body, &mut at)?; // key
    bytes_field(body, &mut at)?; // value
    let headers_at = at;
    let count = varint(body, &mut at)?;
    if count < 0 || count as usize > body.len() {
        return Err(RecordError::Malformed("header count"));
    }
    let (mut traceparent, mut tracestate, mut traceparent_at) = (None, None, None);
    for _ in 0..count {
        let key = bytes_field(body, &mut at)?.unwrap_or_default();
        let value_at = at;
        let value = bytes_field(body, &mut at)?;
        if key == b"traceparent" && traceparent_at.is_none() {
            traceparent = value;
            traceparent_at = Some((value_at, at));
        } else if key == b"tracestate" && tracestate.is_none() {
            tracestate = value;
        }
    }
    if at != body.len() {
        return Err(RecordError::Malformed("bytes after the headers"));
    }
    Ok(RecordRef {
        offset_delta,
        timestamp_delta,
        traceparent,
        tracestate,
        body,
        headers_at,
        traceparent_at,
    })
}

/// The records of a (decompressed) records section; at most `count` of them.
pub fn records(section: &[u8], count: i32) -> Result<Vec<RecordRef<'_>>, RecordError> {
    let mut out = Vec::with_capacity((count.max(0) as usize).min(section.len() / 7 + 1));
    let mut at = 0;
    while at < section.len() && out.len() < count.max(0) as usize {
        let len = varint(section, &mut at)?;
        let end = (len >= 0)
            .then(|| at.checked_add(len as usize))
            .flatten()
            .filter(|e| *e <= section.len())
            .ok_or(RecordError::Malformed("record past the batch's end"))?;
        out.push(parse_record(&section[at..end])?);
        at = end;
    }
    if out.len() != count.max(0) as usize || at != section.len() {
        return Err(RecordError::Malformed("record count does not match the batch"));
    }
    Ok(out)
}

/// Appends `record` to `out` (length prefix included) with its `traceparent` header set to `value`:
/// replaced where it was, or added as the last header. Every other byte is the record's own. Written in
/// place (no intermediate buffer): this runs once per produced record.
pub fn put_with_traceparent(out: &mut Vec<u8>, record: &RecordRef<'_>, value: &[u8]) {
    let value_field = varint_len(value.len() as i64) + value.len();
    match record.traceparent_at {
        Some((start, end)) => {
            let len = record.body.len() - (end - start) + value_field;
            put_varint(out, len as i64);
            out.extend_from_slice(&record.body[..start]);
            put_varint(out, value.len() as i64);
            out.extend_from_slice(value);
            out.extend_from_slice(&record.body[end..]);
        }
        None => {
            let mut at = record.headers_at;
            // Parsed before: the count is valid.
            let count = varint(record.body, &mut at).unwrap_or(0);
            const KEY: &[u8] = b"traceparent";
            let len = record.body.len() - (at - record.headers_at)
                + varint_len(count + 1)
                + varint_len(KEY.len() as i64)
                + KEY.len()
                + value_field;
            put_varint(out, len as i64);
            out.extend_from_slice(&record.body[..record.headers_at]);
            put_varint(out, count + 1);
            out.extend_from_slice(&record.body[at..]);
            put_varint(out, KEY.len() as i64);
            out.extend_from_slice(KEY);
            put_varint(out, value.len() as i64);
            out.extend_from_slice(value);
        }
    }
}

/// Bytes of a zigzag varint.
fn varint_len(v: i64) -> usize {
    let z = ((v << 1) ^ (v >> 63)) as u64;
    (64 - z.max(1).leading_zeros() as usize).div_ceil(7)
}

/// Appends to `out` the batch with a new (uncompressed) records section: the header copied, the section
/// compressed with the batch's own codec straight after it, length and CRC recomputed. Returns the
/// batch's length; on an error `out` is as it was.
pub fn rebuild_into(batch: &Batch<'_>, section: &[u8], out: &mut Vec<u8>) -> Result<usize, RecordError> {
    let start = out.len();
    let built = (|| {
        let codec = codec(batch)?;
        out.extend_from_slice(&batch.bytes[..HEADER_LEN]);
        compress_into(codec, section, out)?;
        let batch = &mut out[start..];
        let length = i32::try_from(batch.len() - 12).map_err(|_| RecordError::Compress("batch too large".into()))?;
        batch[OFF_LENGTH..OFF_LENGTH + 4].copy_from_slice(&length.to_be_bytes());
        let crc = crc32c::crc32c(&batch[OFF_ATTRIBUTES..]);
        batch[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_be_bytes());
        Ok(batch.len())
    })();
    if built.is_err() {
        out.truncate(start);
    }
    built
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::batch::batches;
    use bytes::Bytes;
    use kafka_protocol::records::{Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

    const CODECS: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    fn batch_with_headers(compression: Compression, headers: &[&[(&str, &str)]]) -> Vec<u8> {
        let records: Vec<Record> = headers
            .iter()
            .enumerate()
            .map(|(i, hs)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 3,
                producer_id: 42,
                producer_epoch: 1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: 7 + i as i32,
                timestamp: 1_700_000_000_000 + 10 * i as i64,
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(vec![b'v'; 100 + i])),
                headers: hs
                    .iter()
                    .map(|(k, v)| (k.to_string().into(), Some(Bytes::from(v.to_string()))))
                    .collect(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(&mut buf, &records, &RecordEncodeOptions { version: 2, compression }).unwrap();
        buf.to_vec()
    }

    fn inject_all(bytes: &[u8], value: &str) -> Vec<u8> {
        let batch = batches(bytes).next().unwrap();
        let section = checked_section(&batch, 1 << 20).unwrap();
        let mut out = Vec::new();
        for r in records(&section, batch.record_count).unwrap() {
            put_with_traceparent(&mut out, &r, value.as_bytes());
        }
        let mut rebuilt = b"before".to_vec();
        rebuild_into(&batch, &out, &mut rebuilt).unwrap();
        assert!(rebuilt.starts_with(b"before"), "appended after what the buffer held");
        rebuilt.split_off(6)
    }

    #[test]
    fn rewrites_traceparent_and_keeps_everything_else_under_every_codec() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let new = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01";
        for codec in CODECS {
            let original = batch_with_headers(
                codec,
                &[&[("a", "1"), ("traceparent", tp), ("tracestate", "x=1")], &[("a", "2")], &[]],
            );
            let rewritten = inject_all(&original, new);
            // The header is the batch's own, apart from the length and CRC.
            assert_eq!(rewritten[..8], original[..8]);
            assert_eq!(rewritten[12..17], original[12..17]);
            assert_eq!(rewritten[21..61], original[21..61]);
            let before = RecordBatchDecoder::decode(&mut Bytes::from(original)).unwrap();
            let after = RecordBatchDecoder::decode(&mut Bytes::from(rewritten)).unwrap();
            assert_eq!(after.compression, codec);
            assert_eq!(before.records.len(), after.records.len());
            for (b, a) in before.records.iter().zip(&after.records) {
                assert_eq!(
                    (b.offset, b.timestamp, b.sequence, b.producer_id),
                    (a.offset, a.timestamp, a.sequence, a.producer_id)
                );
                assert_eq!((&b.key, &b.value), (&a.key, &a.value));
                let mut expected = b.headers.clone();
                expected.insert("traceparent".to_string().into(), Some(Bytes::from(new)));
                assert_eq!(a.headers, expected, "{codec:?}");
            }
            // The first record's header kept its place.
            assert_eq!(after.records[0].headers.get_index(1).unwrap().0.as_str(), "traceparent");
        }
    }

    #[test]
    fn duplicate_header_keys_survive() {
        // kafka-protocol's Record keeps headers in a map, so build the duplicate by hand: two "a" headers.
        let original = batch_with_headers(Compression::None, &[&[("a", "1"), ("b", "2")]]);
        let batch = batches(&original).next().unwrap();
        let section = records_section(&batch, 1 << 20).unwrap();
        let r = records(&section, 1).unwrap()[0];
        let dup: Vec<u8> = r.body.iter().map(|c| if *c == b'b' { b'a' } else { *c }).collect();
        let dup_record = RecordRef { body: &dup, ..r };
        let mut out = Vec::new();
        put_with_traceparent(&mut out, &dup_record, b"00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01");
        let again = records(&out, 1).unwrap()[0];
        assert_eq!(again.body.windows(3).filter(|w| w == b"\x02a\x02").count(), 2);
        assert!(again.traceparent.is_some());
    }

    #[test]
    fn bounded_decompression_and_garbage() {
        let big = vec![0u8; 4 << 20];
        for codec in [Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            let bomb = compress(codec, &big).unwrap();
            assert!(bomb.len() < big.len() / 20, "{codec:?}");
            assert_eq!(
                decompress(codec, &bomb, 1 << 20).unwrap_err(),
                RecordError::TooLarge(1 << 20),
                "{codec:?}"
            );
            assert_eq!(decompress(codec, &bomb, 8 << 20).unwrap().len(), big.len());
            assert!(decompress(codec, &[0xff; 64], 1 << 20).is_err(), "{codec:?}");
        }
        let mut corrupt = batch_with_headers(Compression::None, &[&[("a", "1")]]);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        assert_eq!(
            checked_section(&batches(&corrupt).next().unwrap(), 1 << 20).unwrap_err(),
            RecordError::Crc
        );
        assert!(records(&[0xff; 32], 1).is_err());
        assert!(records(&[0x02, 0x00], 1).is_err());
    }

    #[test]
    fn varints_round_trip() {
        for v in [0i64, 1, -1, 63, -64, 64, 300, i32::MAX as i64, i32::MIN as i64, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut at = 0;
            assert_eq!(varint(&out, &mut at).unwrap(), v);
            assert_eq!(at, out.len());
            assert_eq!(varint_len(v), out.len(), "{v}");
        }
        assert!(varint(&[0xff; 11], &mut 0).is_err());
    }
}
