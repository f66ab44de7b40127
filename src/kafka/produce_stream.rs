//! A streaming reader of Produce requests (v3 to v9: the versions the sidecar lets clients use; v9 is
//! the first flexible one): fed the request's bytes as they are relayed, in chunks of any size, it tells
//! the client id and, for each partition, the records its batch headers count and the length of its
//! `records` field. It keeps a topic name and one batch header (61 bytes), whatever the request's size.
//!
//! Why not `kafka-protocol`: its decoders take a whole message, so a Produce request the sidecar does not
//! rewrite (tracing off, or larger than it rewrites) had to be held whole, up to `max_frame_bytes`, only
//! to count its records. This reads the layout of `ProduceRequest` and its request header (header v1, and
//! v2 with tagged fields from Produce v9), small enough to keep in one file; the differential fuzz target
//! `fuzz/fuzz_targets/produce_stream.rs` checks it against `kafka-protocol`'s decoder on every input both
//! accept.
//!
//! The bytes are untrusted: counts allocate nothing (elements are read one by one from the bytes that are
//! there), a topic name is at most [`MAX_NAME`] bytes, and the request's own length bounds the work. The
//! batches of a partition are walked as [`super::batch::batches`] walks them: a header is counted when
//! 61 bytes of it are there with `magic` 2 and a length that covers it, and the walk stops after a batch
//! cut off by the field's end or at one that cannot be walked.

use super::batch::layout::{HEADER_LEN, OFF_LENGTH, OFF_MAGIC, OFF_RECORD_COUNT};
use super::batch::{be_i16, be_i32};

/// The longest topic or client name read (Kafka's topic names are at most 249 characters).
pub const MAX_NAME: usize = i16::MAX as usize;

/// What the reader tells, in the request's order.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// The request header's `client.id` ("" when null), told first.
    Client(&'a str),
    /// One partition, once its `records` field is read: the records its batch headers count (negative
    /// counts as 0) and the field's length (0 when null).
    Partition {
        topic: &'a str,
        partition: i32,
        records: u64,
        bytes: u64,
    },
}

/// Why a request cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProduceStreamError {
    #[error("invalid length {0} for {1}")]
    Length(i64, &'static str),
    #[error("{0} is not UTF-8")]
    Utf8(&'static str),
    #[error("request ended inside {0}")]
    Truncated(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// API key, version and correlation id.
    Header,
    ClientLength,
    Client,
    /// Tagged fields; then `after`.
    Tags,
    TagKey,
    TagSize,
    Skip,
    TransactionalId,
    /// Acks and timeout.
    AcksTimeout,
    TopicCount,
    TopicNameLength,
    TopicName,
    PartitionCount,
    PartitionIndex,
    RecordsLength,
    /// A batch header, or the records' end.
    BatchHead,
    /// The rest of the records field or of a batch, skipped.
    SkipRecords,
    /// A partition's records are read: told, then its tagged fields.
    PartitionDone,
    NextPartition,
    /// A topic's partitions are read (and its tagged fields).
    TopicDone,
    Done,
}

/// The reader of one request body (after the length prefix: the API key first).
pub struct ProduceStream {
    flexible: bool,
    step: Step,
    /// Where a run of tagged fields or a skip leads.
    after: Step,
    scratch: [u8; HEADER_LEN],
    have: usize,
    /// A varint being read: its value so far and how many of its bytes were read.
    varint: (u32, u32),
    name: Vec<u8>,
    name_len: usize,
    topics_left: u64,
    partitions_left: u64,
    tags_left: u64,
    partition: i32,
    /// Bytes left to skip; of the current partition's records field; its length and record count.
    skip: u64,
    records_left: u64,
    records_len: u64,
    record_count: u64,
}

/// How a length or count field reads: fixed width (`int16`, `int32`) or a compact unsigned varint (n + 1).
enum Len {
    /// A value (non-negative).
    Some(u64),
    /// -1, or 0 in compact form.
    Null,
    /// Still reading.
    More,
}

impl ProduceStream {
    /// A reader for a Produce request of `version` (3 to 9).
    pub fn new(version: i16) -> Option<ProduceStream> {
        (3..=9).contains(&version).then(|| ProduceStream {
            flexible: version >= 9,
            step: Step::Header,
            after: Step::Done,
            scratch: [0; HEADER_LEN],
            have: 0,
            varint: (0, 0),
            name: Vec::new(),
            name_len: 0,
            topics_left: 0,
            partitions_left: 0,
            tags_left: 0,
            partition: 0,
            skip: 0,
            records_left: 0,
            records_len: 0,
            record_count: 0,
        })
    }

    /// The end of the request's bytes: an error if it ended inside its structure.
    pub fn finish(&self) -> Result<(), ProduceStreamError> {
        match self.step {
            Step::Done => Ok(()),
            Step::Header | Step::ClientLength | Step::Client => Err(ProduceStreamError::Truncated("the header")),
            Step::RecordsLength | Step::BatchHead | Step::SkipRecords => Err(ProduceStreamError::Truncated("records")),
            _ => Err(ProduceStreamError::Truncated("the request")),
        }
    }

    /// Collects `n` bytes (at most 61) of a fixed-width field into `scratch`; true once they are there.
    fn fill(&mut self, input: &mut &[u8], n: usize) -> bool {
        let take = (n - self.have).min(input.len());
        self.scratch[self.have..self.have + take].copy_from_slice(&input[..take]);
        self.have += take;
        *input = &input[take..];
        if self.have == n {
            self.have = 0;
            true
        } else {
            false
        }
    }

    /// An unsigned varint of at most 5 bytes (as `kafka-protocol` reads it: a fifth byte ends it whatever
    /// its high bit, and bits past 32 are dropped).
    fn uvarint(&mut self, input: &mut &[u8]) -> Option<u32> {
        while let Some((&b, rest)) = input.split_first() {
            *input = rest;
            let (value, n) = self.varint;
            let value = value | ((b as u32 & 0x7f) << (7 * n));
            if b < 0x80 || n == 4 {
                self.varint = (0, 0);
                return Some(value);
            }
            self.varint = (value, n + 1);
        }
        None
    }

    /// A length: `int16` or `int32` (`wide`) in the non-flexible versions, a compact varint (n + 1) in the
    /// flexible ones when `compact`.
    fn length(&mut self, input: &mut &[u8], compact: bool, wide: bool, what: &'static str) -> Result<Len, ProduceStreamError> {
        if compact && self.flexible {
            return Ok(match self.uvarint(input) {
                None => Len::More,
                Some(0) => Len::Null,
                Some(n) => Len::Some(n as u64 - 1),
            });
        }
        let n = if wide {
            if !self.fill(input, 4) {
                return Ok(Len::More);
            }
            be_i32(&self.scratch) as i64
        } else {
            if !self.fill(input, 2) {
                return Ok(Len::More);
            }
            be_i16(&self.scratch) as i64
        };
        match n {
            -1 => Ok(Len::Null),
            n if n >= 0 => Ok(Len::Some(n as u64)),
            n => Err(ProduceStreamError::Length(n, what)),
        }
    }

    /// Tagged fields (flexible versions only), then `after`.
    fn tags_then(&self, after: Step) -> (Step, Step) {
        if self.flexible {
            (Step::Tags, after)
        } else {
            (after, after)
        }
    }

    fn next_partition(&mut self) -> Step {
        if self.partitions_left > 0 {
            Step::PartitionIndex
        } else {
            let (step, after) = self.tags_then(Step::TopicDone);
            self.after = after;
            step
        }
    }

    /// Reads `input`, the next bytes of the request, telling `sink` what they complete. Bytes after the
    /// request's structure is done are ignored.
    pub fn feed(&mut self, mut input: &[u8], sink: &mut impl FnMut(Event<'_>)) -> Result<(), ProduceStreamError> {
        let input = &mut input;
        loop {
            match self.step {
                Step::Done => return Ok(()),
                Step::Header => {
                    if !self.fill(input, 8) {
                        return Ok(());
                    }
                    self.step = Step::ClientLength;
                }
                // The header's client id is an `int16` string in every header version.
                Step::ClientLength => {
                    let n = match self.length(input, false, false, "the client id")? {
                        Len::More => return Ok(()),
                        Len::Null => 0,
                        Len::Some(n) => n,
                    };
                    self.start_name(n, Step::Client)?;
                }
                Step::Client => {
                    if !self.read_name(input, "the client id")? {
                        return Ok(());
                    }
                    sink(Event::Client(std::str::from_utf8(&self.name).unwrap_or("")));
                    (self.step, self.after) = self.tags_then(Step::TransactionalId);
                }
                Step::Tags => {
                    let Some(n) = self.uvarint(input) else { return Ok(()) };
                    self.tags_left = n as u64;
                    self.step = if n == 0 { self.after } else { Step::TagKey };
                }
                Step::TagKey => {
                    if self.uvarint(input).is_none() {
                        return Ok(());
                    }
                    self.step = Step::TagSize;
                }
                Step::TagSize => {
                    let Some(n) = self.uvarint(input) else { return Ok(()) };
                    self.tags_left -= 1;
                    self.skip = n as u64;
                    self.step = Step::Skip;
                }
                Step::Skip => {
                    if !self.skip_bytes(input) {
                        return Ok(());
                    }
                    self.step = if self.tags_left > 0 { Step::TagKey } else { self.after };
                }
                Step::TransactionalId => match self.length(input, true, false, "the transactional id")? {
                    Len::More => return Ok(()),
                    Len::Null => self.step = Step::AcksTimeout,
                    Len::Some(n) => {
                        self.skip = n;
                        self.after = Step::AcksTimeout;
                        self.step = Step::Skip;
                    }
                },
                Step::AcksTimeout => {
                    if !self.fill(input, 6) {
                        return Ok(());
                    }
                    self.step = Step::TopicCount;
                }
                Step::TopicCount => match self.length(input, true, true, "the topics")? {
                    Len::More => return Ok(()),
                    Len::Null => return Err(ProduceStreamError::Length(-1, "the topics")),
                    Len::Some(n) => {
                        self.topics_left = n;
                        self.step = self.next_topic();
                    }
                },
                Step::TopicNameLength => match self.length(input, true, false, "a topic name")? {
                    Len::More => return Ok(()),
                    Len::Null => return Err(ProduceStreamError::Length(-1, "a topic name")),
                    Len::Some(n) => {
                        self.topics_left -= 1;
                        self.start_name(n, Step::TopicName)?;
                    }
                },
                Step::TopicName => {
                    if !self.read_name(input, "a topic name")? {
                        return Ok(());
                    }
                    self.step = Step::PartitionCount;
                }
                Step::PartitionCount => match self.length(input, true, true, "the partitions")? {
                    Len::More => return Ok(()),
                    Len::Null => return Err(ProduceStreamError::Length(-1, "the partitions")),
                    Len::Some(n) => {
                        self.partitions_left = n;
                        self.step = self.next_partition();
                    }
                },
                Step::PartitionIndex => {
                    if !self.fill(input, 4) {
                        return Ok(());
                    }
                    self.partition = be_i32(&self.scratch);
                    self.partitions_left -= 1;
                    self.step = Step::RecordsLength;
                }
                Step::RecordsLength => {
                    let n = match self.length(input, true, true, "records")? {
                        Len::More => return Ok(()),
                        Len::Null => 0,
                        Len::Some(n) => n,
                    };
                    (self.records_len, self.records_left, self.record_count) = (n, n, 0);
                    self.step = Step::BatchHead;
                }
                Step::BatchHead => {
                    if self.records_left < HEADER_LEN as u64 {
                        // The end of the records, or too little left for a batch header.
                        self.skip_rest();
                        continue;
                    }
                    if !self.fill(input, HEADER_LEN) {
                        return Ok(());
                    }
                    self.records_left -= HEADER_LEN as u64;
                    let length = be_i32(&self.scratch[OFF_LENGTH..]);
                    if length < (HEADER_LEN - 12) as i32 || self.scratch[OFF_MAGIC] != 2 {
                        // Cannot be walked past: the rest of the records is skipped.
                        self.skip_rest();
                        continue;
                    }
                    self.record_count += be_i32(&self.scratch[OFF_RECORD_COUNT..]).max(0) as u64;
                    let body = 12 + length as u64 - HEADER_LEN as u64;
                    if body > self.records_left {
                        // Cut off by the field's end: counted, and the walk ends.
                        self.skip_rest();
                    } else {
                        self.skip = body;
                        self.records_left -= body;
                        self.step = Step::SkipRecords;
                    }
                }
                Step::SkipRecords => {
                    if !self.skip_bytes(input) {
                        return Ok(());
                    }
                    self.step = if self.records_left > 0 {
                        Step::BatchHead
                    } else {
                        Step::PartitionDone
                    };
                }
                Step::PartitionDone => {
                    sink(Event::Partition {
                        // Checked to be UTF-8 when it was read.
                        topic: std::str::from_utf8(&self.name).unwrap_or(""),
                        partition: self.partition,
                        records: self.record_count,
                        bytes: self.records_len,
                    });
                    (self.step, self.after) = self.tags_then(Step::NextPartition);
                }
                Step::NextPartition => self.step = self.next_partition(),
                Step::TopicDone => self.step = self.next_topic(),
            }
        }
    }

    fn next_topic(&mut self) -> Step {
        if self.topics_left > 0 {
            Step::TopicNameLength
        } else {
            let (step, after) = self.tags_then(Step::Done);
            self.after = after;
            step
        }
    }

    /// Ends the walk of the records: what is left of them is skipped.
    fn skip_rest(&mut self) {
        self.skip = self.records_left;
        self.records_left = 0;
        self.step = Step::SkipRecords;
    }

    fn start_name(&mut self, n: u64, then: Step) -> Result<(), ProduceStreamError> {
        if n > MAX_NAME as u64 {
            return Err(ProduceStreamError::Length(n as i64, "a name"));
        }
        self.name.clear();
        self.name_len = n as usize;
        self.step = then;
        Ok(())
    }

    /// Reads the name being read; true once it is whole (and UTF-8).
    fn read_name(&mut self, input: &mut &[u8], what: &'static str) -> Result<bool, ProduceStreamError> {
        let take = (self.name_len - self.name.len()).min(input.len());
        self.name.extend_from_slice(&input[..take]);
        *input = &input[take..];
        if self.name.len() < self.name_len {
            return Ok(false);
        }
        if std::str::from_utf8(&self.name).is_err() {
            return Err(ProduceStreamError::Utf8(what));
        }
        Ok(true)
    }

    /// Skips what `skip` says; true once it is done.
    fn skip_bytes(&mut self, input: &mut &[u8]) -> bool {
        let take = self.skip.min(input.len() as u64) as usize;
        *input = &input[take..];
        self.skip -= take as u64;
        self.skip == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::batch::test_batch;
    use bytes::{BufMut, Bytes, BytesMut};
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, ProduceRequest, RequestHeader, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};
    use kafka_protocol::records::Compression;

    type Told = (String, Vec<(String, i32, u64, u64)>);

    /// What the reader tells of `body`, fed in chunks of `chunk` bytes.
    pub(crate) fn read(body: &[u8], version: i16, chunk: usize) -> Result<Told, ProduceStreamError> {
        let mut r = ProduceStream::new(version).expect("a version it reads");
        let (mut client, mut partitions) = (String::new(), Vec::new());
        let mut sink = |e: Event<'_>| match e {
            Event::Client(c) => client = c.to_string(),
            Event::Partition {
                topic,
                partition,
                records,
                bytes,
            } => partitions.push((topic.to_string(), partition, records, bytes)),
        };
        for c in body.chunks(chunk.max(1)) {
            r.feed(c, &mut sink)?;
        }
        r.finish()?;
        Ok((client, partitions))
    }

    /// A Produce request frame (length prefix included) with these partitions' records.
    pub(crate) fn request(version: i16, client: Option<&'static str>, partitions: Vec<(&'static str, i32, Option<Vec<u8>>)>) -> Bytes {
        let mut topics: Vec<TopicProduceData> = Vec::new();
        for (topic, index, records) in partitions {
            let p = PartitionProduceData::default()
                .with_index(index)
                .with_records(records.map(Bytes::from));
            match topics.last_mut().filter(|t| t.name.0.as_str() == topic) {
                Some(t) => t.partition_data.push(p),
                None => topics.push(
                    TopicProduceData::default()
                        .with_name(TopicName(StrBytes::from_static_str(topic)))
                        .with_partition_data(vec![p]),
                ),
            }
        }
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        RequestHeader::default()
            .with_request_api_key(ApiKey::Produce as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(client.map(StrBytes::from_static_str))
            .encode(&mut frame, ApiKey::Produce.request_header_version(version))
            .unwrap();
        ProduceRequest::default()
            .with_transactional_id(Some(kafka_protocol::messages::TransactionalId(StrBytes::from_static_str("tx-1"))))
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(topics)
            .encode(&mut frame, version)
            .unwrap();
        let len = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        frame.freeze()
    }

    /// What the whole-frame reader (`kafka-protocol`'s decoder) makes of the same frame.
    fn whole(frame: &Bytes, version: i16) -> Told {
        let (ask, _) = crate::sidecar::kafka::produce::produce_request(frame, version, None).expect("decodes");
        (
            ask.client,
            ask.batches
                .into_iter()
                .map(|b| (b.topic, b.partition, b.records, b.bytes))
                .collect(),
        )
    }

    #[test]
    fn every_version_and_chunk_size_tells_what_the_decoder_does() {
        let a = test_batch(0, &[1000, 2000, 3000], Compression::None);
        let b = test_batch(0, &[4000; 7], Compression::Lz4);
        let mut cut = a.clone();
        cut.extend(&b[..b.len() - 9]);
        for version in 3..=9 {
            for client in [Some("orders-service"), None] {
                let frame = request(
                    version,
                    client,
                    vec![
                        ("orders", 0, Some(a.clone())),
                        ("orders", 3, None),
                        ("payments", 1, Some(b.clone())),
                        ("payments", 2, Some(cut.clone())),
                        ("x", 9, Some(vec![0xff; 70])),
                    ],
                );
                let want = whole(&frame, version);
                assert_eq!(want.1.iter().map(|p| p.2).collect::<Vec<_>>(), vec![3, 0, 7, 10, 0]);
                for chunk in [1, 2, 5, 61, 64, 100_000] {
                    assert_eq!(read(&frame[4..], version, chunk), Ok(want.clone()), "v{version} chunk {chunk}");
                }
            }
        }
    }

    #[test]
    fn hostile_counts_and_lengths_allocate_nothing_and_end_in_errors() {
        let frame = request(8, Some("c"), vec![("t", 0, Some(test_batch(0, &[1], Compression::None)))]);
        let body = &frame[4..];
        // The header, "c", no transactional id... then two billion topics announced, none there.
        let at = 8 + 2 + 1 + 2 + 4 + 6;
        let mut b = body[..at].to_vec();
        b.extend(0x7fff_ffffi32.to_be_bytes());
        assert_eq!(read(&b, 8, 3), Err(ProduceStreamError::Truncated("the request")));
        // A negative topic name length.
        b.extend((-2i16).to_be_bytes());
        assert_eq!(read(&b, 8, 3), Err(ProduceStreamError::Length(-2, "a topic name")));
        // Records announced at 2 GB, one batch there: its header counted, the rest missing.
        let frame = request(8, Some("c"), vec![("t", 0, None)]);
        let mut b = frame[4..frame.len() - 4].to_vec();
        b.extend(0x7fff_ffffi32.to_be_bytes());
        b.extend(test_batch(0, &[1, 2], Compression::None));
        assert_eq!(read(&b, 8, 7), Err(ProduceStreamError::Truncated("records")));
        // A compact varint that never ends (v9): read as kafka-protocol does, five bytes at most.
        let mut r = ProduceStream::new(9).unwrap();
        let mut head = vec![0u8; 8];
        head.extend([0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(r.feed(&head, &mut |_| {}), Ok(()));
        assert!(ProduceStream::new(2).is_none() && ProduceStream::new(10).is_none());
    }
}
