//! A Fetch response cut into pieces as it streams through the relay, so that the observer never needs
//! the whole response: a piece is one partition's header and up to [`PIECE_BYTES`] of its whole record
//! batches (a larger batch makes a piece of its own). The relay hands each piece to the observer as soon
//! as it is complete; what it holds meanwhile is one piece and the reader's one batch.

use bytes::{Bytes, BytesMut};

use crate::kafka::fetch_stream::{Event, FetchStream, FetchStreamError};

/// Record bytes per piece, at most (one batch may exceed it alone).
pub const PIECE_BYTES: usize = 1024 * 1024;

/// One partition's piece of a Fetch response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPiece {
    pub topic: String,
    pub partition: i32,
    pub error_code: i16,
    pub high_watermark: i64,
    /// Not the partition's first piece in this response: its records follow the previous piece's.
    pub continuation: bool,
    /// Batches larger than the reader's limit, relayed but not read.
    pub skipped_batches: u32,
}

/// Cuts one response into pieces.
pub struct Pieces {
    reader: FetchStream,
    current: Option<FetchPiece>,
    records: BytesMut,
}

impl Pieces {
    /// For a Fetch response of `version`; `None` for a version the reader does not read.
    pub fn new(version: i16, max_batch: usize) -> Option<Pieces> {
        Some(Pieces {
            reader: FetchStream::new(version, max_batch)?,
            current: None,
            records: BytesMut::new(),
        })
    }

    /// Reads the next bytes of the response body (correlation id first), handing every completed piece
    /// to `emit` with its batches.
    pub fn feed(&mut self, chunk: &[u8], emit: &mut impl FnMut(FetchPiece, Bytes)) -> Result<(), FetchStreamError> {
        let Pieces { reader, current, records } = self;
        reader.feed(chunk, &mut |event| match event {
            Event::Partition(h) => {
                *current = Some(FetchPiece {
                    topic: h.topic.to_string(),
                    partition: h.partition,
                    error_code: h.error_code,
                    high_watermark: h.high_watermark,
                    continuation: false,
                    skipped_batches: 0,
                });
            }
            Event::Batch(b) => {
                if !records.is_empty() && records.len() + b.len() > PIECE_BYTES {
                    if let Some(piece) = current.as_mut() {
                        emit(piece.clone(), records.split().freeze());
                        piece.continuation = true;
                        piece.skipped_batches = 0;
                    }
                }
                records.extend_from_slice(b);
            }
            Event::BatchSkipped(_) => {
                if let Some(piece) = current.as_mut() {
                    piece.skipped_batches += 1;
                }
            }
            Event::PartitionEnd => {
                if let Some(piece) = current.take() {
                    emit(piece, records.split().freeze());
                }
            }
        })
    }

    /// The end of the response's bytes: an error if it ended inside its structure (what was complete was
    /// handed over already).
    pub fn finish(&self) -> Result<(), FetchStreamError> {
        self.reader.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::batch::test_batch;
    use kafka_protocol::records::Compression;

    #[test]
    fn a_partition_larger_than_a_piece_is_cut_into_continuations() {
        let batch = test_batch(0, &[1000; 2000], Compression::None);
        let n = PIECE_BYTES / batch.len() + 1;
        let mut records = Vec::new();
        for _ in 0..n + 1 {
            records.extend(&batch);
        }
        let mut body = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 1];
        body.extend(0i32.to_be_bytes()); // partition
        body.extend(0i16.to_be_bytes()); // error
        body.extend(50i64.to_be_bytes()); // high watermark
        body.extend(0i64.to_be_bytes()); // last stable offset
        body.extend((-1i32).to_be_bytes()); // no aborted transactions
        body.extend((records.len() as i32).to_be_bytes());
        body.extend(&records);
        let mut pieces = Pieces::new(4, 1 << 20).unwrap();
        let mut got = Vec::new();
        let mut emit = |p: FetchPiece, r: Bytes| got.push((p.continuation, r.len()));
        for c in body.chunks(65536) {
            pieces.feed(c, &mut emit).unwrap();
        }
        pieces.finish().unwrap();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(!got[0].0 && got[1].0);
        assert!(got[0].1 <= PIECE_BYTES);
        assert_eq!(got[0].1 + got[1].1, records.len());
    }
}
