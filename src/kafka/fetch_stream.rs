//! A streaming reader of Fetch responses (v4 to v11: the versions the sidecar lets clients use that
//! `kafka-protocol` decodes too, so that each is checked against it; Kafka 4 dropped v0 to v3): fed the
//! response's bytes as they are relayed, in chunks of any size, it tells each partition's header and
//! each complete record batch, and keeps nothing else. Its memory is one batch (at most `max_batch`
//! bytes; larger ones are skipped and said so), held only while a batch split across chunks arrives and
//! only if the sink agrees to it, then handed to the sink; and a topic name, whatever the response's
//! size.
//!
//! Why not `kafka-protocol`: its decoders take a whole message, so observing a 50 MB response meant
//! holding a 50 MB copy of it. The layout read here is the non-flexible one (fixed-width integers,
//! `int16`-prefixed strings, `int32`-prefixed arrays and bytes), small enough to keep in one file; the
//! differential fuzz target `fuzz/fuzz_targets/fetch_stream.rs` checks it against `kafka-protocol`'s
//! decoder on every input both accept.
//!
//! The bytes are untrusted: counts allocate nothing (elements are read one by one from the bytes that
//! are there), a negative length other than null is an error, and the response's own length bounds the
//! work. A record batch is told only when it is whole and well-formed enough to walk (`magic` 2, a length
//! that covers its header); the walk of a partition's records stops at the first that is not, as
//! [`super::batch::batches`] does.

use std::borrow::Cow;

use super::batch::layout::{HEADER_LEN, OFF_MAGIC};
use super::batch::{be_i16, be_i32, be_i64};

/// A partition's header, told before its batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionHead<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub error_code: i16,
    pub high_watermark: i64,
}

/// What the reader tells, in the response's order.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Partition(PartitionHead<'a>),
    /// One whole record batch of the current partition (its 12-byte offset and length prefix included):
    /// borrowed from the chunk it arrived in whole, or, when it arrived split across chunks, the reader's
    /// buffer of exactly its size, handed over (the reader keeps nothing of it, and the sink need not
    /// copy it again).
    Batch(Cow<'a, [u8]>),
    /// A batch of this many bytes (within `max_batch`) arrives split across chunks: the sink's answer
    /// decides whether the reader buffers it to tell it whole (`true`) or skips it, telling nothing more
    /// of it (`false`), so that a caller can charge the buffer to a budget. Every other event's answer
    /// is ignored.
    Buffer(usize),
    /// A whole batch larger than `max_batch` (its length): relayed, not read.
    BatchSkipped(usize),
    /// The current partition's records are done.
    PartitionEnd,
}

/// Why a response cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchStreamError {
    #[error("negative length {0} for {1}")]
    NegativeLength(i64, &'static str),
    #[error("topic name is not UTF-8")]
    TopicName,
    #[error("response ended inside {0}")]
    Truncated(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Correlation id, throttle time (v1+), error code and session id (v7+).
    Header,
    TopicCount,
    TopicNameLength,
    TopicName,
    PartitionCount,
    /// Index, error code, high watermark, last stable offset (v4+), log start offset (v5+).
    PartitionHead,
    AbortedCount,
    /// Aborted transactions (16 bytes each), skipped.
    SkipAborted,
    PreferredReplica,
    RecordsLength,
    /// A batch's offset, length, leader epoch and magic (17 bytes), or the records' end.
    BatchHead,
    /// The rest of a batch: kept (`keep`) or skipped.
    BatchBody,
    /// The rest of a partition's records after a batch that cannot be walked, skipped.
    SkipRecords,
    Done,
}

/// The reader of one response body (after the length prefix: correlation id first).
pub struct FetchStream {
    version: i16,
    max_batch: usize,
    step: Step,
    /// Bytes of the fixed-width field being read.
    scratch: [u8; 40],
    have: usize,
    topics_left: i64,
    partitions_left: i64,
    topic: Vec<u8>,
    topic_len: usize,
    partition: (i32, i16, i64),
    /// Bytes left: of the skipped aborted transactions, of the partition's records, of the batch.
    skip: u64,
    records_left: u64,
    batch_left: u64,
    keep: bool,
    batch: Vec<u8>,
}

const BATCH_HEAD: usize = OFF_MAGIC + 1;

impl FetchStream {
    /// A reader for a Fetch response of `version` (4 to 11), telling batches of at most `max_batch` bytes.
    pub fn new(version: i16, max_batch: usize) -> Option<FetchStream> {
        if !(4..=11).contains(&version) {
            return None;
        }
        Some(FetchStream::any(version, max_batch))
    }

    fn any(version: i16, max_batch: usize) -> FetchStream {
        FetchStream {
            version,
            max_batch,
            step: Step::Header,
            scratch: [0; 40],
            have: 0,
            topics_left: 0,
            partitions_left: 0,
            topic: Vec::new(),
            topic_len: 0,
            partition: (0, 0, 0),
            skip: 0,
            records_left: 0,
            batch_left: 0,
            keep: false,
            batch: Vec::new(),
        }
    }

    /// Whether the whole response has been read.
    pub fn done(&self) -> bool {
        self.step == Step::Done
    }

    /// The end of the response's bytes: an error if it ended inside its structure.
    pub fn finish(&self) -> Result<(), FetchStreamError> {
        match self.step {
            Step::Done => Ok(()),
            Step::Header => Err(FetchStreamError::Truncated("the header")),
            Step::TopicCount | Step::TopicNameLength | Step::TopicName | Step::PartitionCount => {
                Err(FetchStreamError::Truncated("a topic"))
            }
            Step::PartitionHead | Step::AbortedCount | Step::SkipAborted | Step::PreferredReplica | Step::RecordsLength => {
                Err(FetchStreamError::Truncated("a partition"))
            }
            Step::BatchHead | Step::BatchBody | Step::SkipRecords => Err(FetchStreamError::Truncated("records")),
        }
    }

    fn head_len(&self) -> usize {
        4 + if self.version >= 1 { 4 } else { 0 } + if self.version >= 7 { 6 } else { 0 }
    }

    fn partition_head_len(&self) -> usize {
        14 + if self.version >= 4 { 8 } else { 0 } + if self.version >= 5 { 8 } else { 0 }
    }

    /// Collects `n` bytes (at most 40) of a fixed-width field into `scratch`; true once they are there.
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

    fn head(&self) -> PartitionHead<'_> {
        PartitionHead {
            // Checked to be UTF-8 when it was read.
            topic: std::str::from_utf8(&self.topic).unwrap_or(""),
            partition: self.partition.0,
            error_code: self.partition.1,
            high_watermark: self.partition.2,
        }
    }

    /// The next partition, topic or the end, once a partition's records are done.
    fn next_partition(&mut self) -> Step {
        if self.partitions_left > 0 {
            Step::PartitionHead
        } else if self.topics_left > 0 {
            Step::TopicNameLength
        } else {
            Step::Done
        }
    }

    /// Reads `input`, the next bytes of the response, telling `sink` what they complete. Bytes after the
    /// response's structure is done are ignored.
    pub fn feed(&mut self, mut input: &[u8], sink: &mut impl FnMut(Event<'_>) -> bool) -> Result<(), FetchStreamError> {
        let input = &mut input;
        loop {
            match self.step {
                Step::Done => return Ok(()),
                Step::Header => {
                    if !self.fill(input, self.head_len()) {
                        return Ok(());
                    }
                    self.step = Step::TopicCount;
                }
                Step::TopicCount => {
                    if !self.fill(input, 4) {
                        return Ok(());
                    }
                    // A null array (-1) has no topics.
                    self.topics_left = be_i32(&self.scratch).max(0) as i64;
                    self.step = if self.topics_left > 0 { Step::TopicNameLength } else { Step::Done };
                }
                Step::TopicNameLength => {
                    if !self.fill(input, 2) {
                        return Ok(());
                    }
                    let n = be_i16(&self.scratch);
                    if n < 0 {
                        return Err(FetchStreamError::NegativeLength(n as i64, "a topic name"));
                    }
                    self.topics_left -= 1;
                    self.topic.clear();
                    self.topic_len = n as usize;
                    self.step = Step::TopicName;
                }
                Step::TopicName => {
                    let take = (self.topic_len - self.topic.len()).min(input.len());
                    self.topic.extend_from_slice(&input[..take]);
                    *input = &input[take..];
                    if self.topic.len() < self.topic_len {
                        return Ok(());
                    }
                    if std::str::from_utf8(&self.topic).is_err() {
                        return Err(FetchStreamError::TopicName);
                    }
                    self.step = Step::PartitionCount;
                }
                Step::PartitionCount => {
                    if !self.fill(input, 4) {
                        return Ok(());
                    }
                    self.partitions_left = be_i32(&self.scratch).max(0) as i64;
                    self.step = self.next_partition();
                }
                Step::PartitionHead => {
                    if !self.fill(input, self.partition_head_len()) {
                        return Ok(());
                    }
                    let s = &self.scratch;
                    self.partition = (be_i32(s), be_i16(&s[4..]), be_i64(&s[6..]));
                    self.partitions_left -= 1;
                    self.step = if self.version >= 4 {
                        Step::AbortedCount
                    } else {
                        Step::RecordsLength
                    };
                }
                Step::AbortedCount => {
                    if !self.fill(input, 4) {
                        return Ok(());
                    }
                    let n = be_i32(&self.scratch);
                    if n < -1 {
                        return Err(FetchStreamError::NegativeLength(n as i64, "aborted transactions"));
                    }
                    self.skip = n.max(0) as u64 * 16;
                    self.step = Step::SkipAborted;
                }
                Step::SkipAborted => {
                    let take = self.skip.min(input.len() as u64) as usize;
                    *input = &input[take..];
                    self.skip -= take as u64;
                    if self.skip > 0 {
                        return Ok(());
                    }
                    self.step = if self.version >= 11 {
                        Step::PreferredReplica
                    } else {
                        Step::RecordsLength
                    };
                }
                Step::PreferredReplica => {
                    if !self.fill(input, 4) {
                        return Ok(());
                    }
                    self.step = Step::RecordsLength;
                }
                Step::RecordsLength => {
                    if !self.fill(input, 4) {
                        return Ok(());
                    }
                    let n = be_i32(&self.scratch);
                    if n < -1 {
                        return Err(FetchStreamError::NegativeLength(n as i64, "records"));
                    }
                    self.records_left = n.max(0) as u64;
                    sink(Event::Partition(self.head()));
                    self.step = Step::BatchHead;
                }
                Step::BatchHead => {
                    if self.records_left < BATCH_HEAD as u64 {
                        // The end of the records, or a batch cut off by a fetch size limit.
                        self.skip = self.records_left;
                        self.step = Step::SkipRecords;
                        continue;
                    }
                    // Whole in this chunk: told from the input, without a copy.
                    if self.have == 0 && input.len() >= BATCH_HEAD {
                        let length = be_i32(&input[8..]);
                        let total = 12 + length.max(0) as usize;
                        if length >= (HEADER_LEN - 12) as i32
                            && input[OFF_MAGIC] == 2
                            && total as u64 <= self.records_left
                            && total <= self.max_batch
                            && input.len() >= total
                        {
                            sink(Event::Batch(Cow::Borrowed(&input[..total])));
                            *input = &input[total..];
                            self.records_left -= total as u64;
                            continue;
                        }
                    }
                    if !self.fill(input, BATCH_HEAD) {
                        return Ok(());
                    }
                    let length = be_i32(&self.scratch[8..]);
                    let total = 12 + length.max(0) as u64;
                    if length < (HEADER_LEN - 12) as i32 || self.scratch[OFF_MAGIC] != 2 || total > self.records_left {
                        // Cannot be walked past (or cut off): the rest of the records is skipped.
                        self.skip = self.records_left - BATCH_HEAD as u64;
                        self.step = Step::SkipRecords;
                        continue;
                    }
                    self.records_left -= total;
                    self.batch_left = total - BATCH_HEAD as u64;
                    self.keep = total as usize <= self.max_batch && sink(Event::Buffer(total as usize));
                    self.batch.clear();
                    if self.keep {
                        self.batch.reserve_exact(total as usize);
                        self.batch.extend_from_slice(&self.scratch[..BATCH_HEAD]);
                    } else if total as usize > self.max_batch {
                        sink(Event::BatchSkipped(total as usize));
                    }
                    self.step = Step::BatchBody;
                }
                Step::BatchBody => {
                    let take = self.batch_left.min(input.len() as u64) as usize;
                    if self.keep {
                        self.batch.extend_from_slice(&input[..take]);
                    }
                    *input = &input[take..];
                    self.batch_left -= take as u64;
                    if self.batch_left > 0 {
                        return Ok(());
                    }
                    if self.keep {
                        sink(Event::Batch(Cow::Owned(std::mem::take(&mut self.batch))));
                    }
                    self.step = Step::BatchHead;
                }
                Step::SkipRecords => {
                    let take = self.skip.min(input.len() as u64) as usize;
                    *input = &input[take..];
                    self.skip -= take as u64;
                    if self.skip > 0 {
                        return Ok(());
                    }
                    self.records_left = 0;
                    sink(Event::PartitionEnd);
                    self.step = self.next_partition();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::batch::test_batch;
    use bytes::{BufMut, Bytes, BytesMut};
    use kafka_protocol::messages::fetch_response::{AbortedTransaction, FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::{FetchResponse, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};
    use kafka_protocol::records::Compression;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Partition(String, i32, i16, i64),
        Batch(Vec<u8>),
        Skipped(usize),
        End,
    }

    fn read(body: &[u8], version: i16, max_batch: usize, chunk: usize) -> (Vec<Owned>, Result<(), FetchStreamError>) {
        let mut r = FetchStream::any(version, max_batch);
        let mut out = Vec::new();
        let mut sink = |e: Event<'_>| {
            out.push(match e {
                Event::Partition(h) => Owned::Partition(h.topic.to_string(), h.partition, h.error_code, h.high_watermark),
                Event::Batch(b) => Owned::Batch(b.to_vec()),
                Event::BatchSkipped(n) => Owned::Skipped(n),
                Event::PartitionEnd => Owned::End,
                Event::Buffer(_) => return true,
            });
            true
        };
        for c in body.chunks(chunk.max(1)) {
            if let Err(e) = r.feed(c, &mut sink) {
                return (out, Err(e));
            }
        }
        let end = r.finish();
        (out, end)
    }

    fn body(version: i16, partitions: Vec<(&'static str, i32, Option<Vec<u8>>)>) -> Vec<u8> {
        let mut topics: Vec<FetchableTopicResponse> = Vec::new();
        for (topic, index, records) in partitions {
            let p = PartitionData::default()
                .with_partition_index(index)
                .with_high_watermark(100 + index as i64)
                .with_aborted_transactions((version >= 4).then(|| vec![AbortedTransaction::default(); 2]))
                .with_records(records.map(Bytes::from));
            match topics.last_mut().filter(|t| t.topic.0.as_str() == topic) {
                Some(t) => t.partitions.push(p),
                None => topics.push(
                    FetchableTopicResponse::default()
                        .with_topic(TopicName(StrBytes::from_static_str(topic)))
                        .with_partitions(vec![p]),
                ),
            }
        }
        let mut b = BytesMut::new();
        b.put_i32(42);
        FetchResponse::default().with_responses(topics).encode(&mut b, version).unwrap();
        b.to_vec()
    }

    #[test]
    fn every_version_and_chunk_size_tells_the_same() {
        let a = test_batch(10, &[1000, 2000], Compression::None);
        let b = test_batch(12, &[3000], Compression::Lz4);
        let mut two = a.clone();
        two.extend(&b);
        for version in 4..=11 {
            let body = body(
                version,
                vec![("orders", 0, Some(two.clone())), ("orders", 1, None), ("pay", 3, Some(b.clone()))],
            );
            let want = vec![
                Owned::Partition("orders".into(), 0, 0, 100),
                Owned::Batch(a.clone()),
                Owned::Batch(b.clone()),
                Owned::End,
                Owned::Partition("orders".into(), 1, 0, 101),
                Owned::End,
                Owned::Partition("pay".into(), 3, 0, 103),
                Owned::Batch(b.clone()),
                Owned::End,
            ];
            for chunk in [1, 3, 17, 64, 100_000] {
                assert_eq!(
                    read(&body, version, 1 << 20, chunk),
                    (want.clone(), Ok(())),
                    "v{version} chunk {chunk}"
                );
            }
        }
    }

    /// Two uncompressed batches of one partition (v11): the batches, and the response body holding them.
    fn two_batches() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let a = test_batch(10, &[1000, 2000], Compression::None);
        let b = test_batch(12, &[3000], Compression::None);
        let mut two = a.clone();
        two.extend(&b);
        let body = body(11, vec![("orders", 0, Some(two))]);
        (a, b, body)
    }

    /// A batch whole in its chunk is lent; one that arrived split is handed over in a buffer of exactly
    /// its size, and the reader keeps no buffer afterwards.
    #[test]
    fn a_split_batch_is_handed_over_in_a_buffer_of_its_size() {
        let (a, b, body) = two_batches();
        // The first batch is cut by the chunk boundary; the second arrives whole in the second chunk.
        let cut = body.len() - b.len() - 10;
        let mut r = FetchStream::any(11, 1 << 20);
        let mut told = Vec::new();
        let mut sink = |e: Event<'_>| {
            if let Event::Batch(x) = e {
                told.push(match x {
                    Cow::Owned(v) => (true, v.capacity() == v.len(), v),
                    Cow::Borrowed(v) => (false, true, v.to_vec()),
                });
            }
            true
        };
        r.feed(&body[..cut], &mut sink).unwrap();
        r.feed(&body[cut..], &mut sink).unwrap();
        r.finish().unwrap();
        assert_eq!(told, vec![(true, true, a), (false, true, b)]);
        assert_eq!(r.batch.capacity(), 0);
    }

    #[test]
    fn a_split_batch_the_sink_refuses_to_buffer_is_passed_over() {
        let (a, b, body) = two_batches();
        // In 20-byte chunks both batches are split; the first is refused, the second kept.
        let mut r = FetchStream::any(11, 1 << 20);
        let (mut asked, mut told) = (Vec::new(), Vec::new());
        let mut sink = |e: Event<'_>| match e {
            Event::Buffer(n) => {
                asked.push(n);
                asked.len() > 1
            }
            Event::Batch(x) => {
                told.push(x.to_vec());
                true
            }
            _ => true,
        };
        for c in body.chunks(20) {
            r.feed(c, &mut sink).unwrap();
        }
        r.finish().unwrap();
        assert_eq!(asked, vec![a.len(), b.len()]);
        assert_eq!(told, vec![b]);
    }

    #[test]
    fn a_cut_batch_is_not_told_and_a_large_one_is_skipped() {
        let a = test_batch(10, &[1000, 2000], Compression::None);
        let b = test_batch(12, &[3000], Compression::None);
        let mut records = a.clone();
        records.extend(&b[..b.len() - 5]);
        let body = body(11, vec![("t", 0, Some(records))]);
        for chunk in [1, 7, 4096] {
            let (events, end) = read(&body, 11, 1 << 20, chunk);
            assert_eq!(end, Ok(()));
            assert_eq!(
                events,
                vec![Owned::Partition("t".into(), 0, 0, 100), Owned::Batch(a.clone()), Owned::End]
            );
            let (events, _) = read(&body, 11, a.len() - 1, chunk);
            assert_eq!(
                events,
                vec![Owned::Partition("t".into(), 0, 0, 100), Owned::Skipped(a.len()), Owned::End]
            );
        }
    }

    #[test]
    fn hostile_counts_and_lengths_allocate_nothing_and_end_in_errors() {
        // Two billion topics announced, none there: truncated, nothing allocated per count.
        let mut b = vec![0, 0, 0, 42, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff];
        assert_eq!(read(&b, 1, 1 << 20, 5).1, Err(FetchStreamError::Truncated("a topic")));
        b.extend([0xff, 0xfe]);
        assert!(matches!(read(&b, 1, 1 << 20, 5).1, Err(FetchStreamError::NegativeLength(-2, _))));
        // Records announced at 2 GB, 10 bytes there.
        let mut body = body(4, vec![("t", 0, None)]);
        let at = body.len() - 4;
        body[at..].copy_from_slice(&0x7fff_ffffi32.to_be_bytes());
        body.extend([1u8; 10]);
        let (events, end) = read(&body, 4, 1 << 20, 3);
        assert_eq!(end, Err(FetchStreamError::Truncated("records")));
        assert_eq!(events, vec![Owned::Partition("t".into(), 0, 0, 100)]);
    }
}
