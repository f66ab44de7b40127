//! A Fetch response cut into pieces as it streams through the relay, so that the observer never needs
//! the whole response: a piece is one partition's header and up to [`PIECE_BYTES`] of its whole record
//! batches (a larger batch makes a piece of its own). The relay hands each piece to the observer as soon
//! as it is complete; what it holds meanwhile is one piece and the reader's one batch.
//!
//! With a budget (the observer's), every byte held is charged as it is taken: the batches of a piece
//! and a batch the reader buffers because it is split across chunks (that buffer then moves into the
//! piece with its charge; each batch is held in a buffer of its own size, [`Batches`], so what is held
//! is what is charged). A batch the budget has no room
//! for is left out of its piece and counted ([`FetchPiece::left_out`]), so that all connections
//! together hold at most the budget, whatever their number and their responses' size.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::kafka::fetch_stream::{Event, FetchStream, FetchStreamError};

/// Record bytes per piece, at most (one batch may exceed it alone).
pub const PIECE_BYTES: usize = 1024 * 1024;

/// A piece's record batches, each in a buffer of exactly its size: copied once from the chunk it
/// arrived in whole, or the reader's own buffer of a batch that arrived split, moved. So what a piece
/// holds is what it is charged, with no slack of a growing buffer and no buffer kept between batches.
#[derive(Debug, Clone, Default)]
pub struct Batches {
    batches: Vec<Bytes>,
    bytes: usize,
}

impl Batches {
    fn push(&mut self, batch: Bytes) {
        self.bytes += batch.len();
        self.batches.push(batch);
    }

    /// Bytes in all the batches.
    pub fn len(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// The batches in order, each whole (its offset and length prefix included).
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.batches.iter().map(|b| &b[..])
    }
}

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
    /// Batches the budget had no room for, relayed but not read.
    pub left_out: u32,
}

/// Cuts one response into pieces.
pub struct Pieces {
    reader: FetchStream,
    current: Option<FetchPiece>,
    records: Batches,
    budget: Option<Arc<Semaphore>>,
    /// What `records` is charged.
    held: Option<OwnedSemaphorePermit>,
    /// What the batch the reader is buffering is charged.
    buffering: Option<OwnedSemaphorePermit>,
}

/// `bytes` from `budget`, merged into `held`; false if there is no room.
fn charge(budget: &Arc<Semaphore>, held: &mut Option<OwnedSemaphorePermit>, bytes: usize) -> bool {
    let Ok(permit) = budget.clone().try_acquire_many_owned(bytes.min(u32::MAX as usize) as u32) else {
        return false;
    };
    match held {
        Some(h) => h.merge(permit),
        None => *held = Some(permit),
    }
    true
}

impl Pieces {
    /// For a Fetch response of `version`, charging what it holds to `budget` when given; `None` for a
    /// version the reader does not read.
    pub fn new(version: i16, max_batch: usize, budget: Option<Arc<Semaphore>>) -> Option<Pieces> {
        Some(Pieces {
            reader: FetchStream::new(version, max_batch)?,
            current: None,
            records: Batches::default(),
            budget,
            held: None,
            buffering: None,
        })
    }

    /// Reads the next bytes of the response body (correlation id first), handing every completed piece
    /// to `emit` with its batches and what they are charged to the budget.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        emit: &mut impl FnMut(FetchPiece, Batches, Option<OwnedSemaphorePermit>),
    ) -> Result<(), FetchStreamError> {
        let Pieces {
            reader,
            current,
            records,
            budget,
            held,
            buffering,
        } = self;
        reader.feed(chunk, &mut |event| {
            match event {
                Event::Partition(h) => {
                    *current = Some(FetchPiece {
                        topic: h.topic.to_string(),
                        partition: h.partition,
                        error_code: h.error_code,
                        high_watermark: h.high_watermark,
                        continuation: false,
                        skipped_batches: 0,
                        left_out: 0,
                    });
                }
                Event::Buffer(total) => {
                    let room = budget.as_ref().is_none_or(|b| charge(b, buffering, total));
                    if !room {
                        if let Some(piece) = current.as_mut() {
                            piece.left_out += 1;
                        }
                    }
                    return room;
                }
                Event::Batch(b) => {
                    let Some(piece) = current.as_mut() else {
                        return true;
                    };
                    if !records.is_empty() && records.len() + b.len() > PIECE_BYTES {
                        emit(piece.clone(), std::mem::take(records), held.take());
                        piece.continuation = true;
                        piece.skipped_batches = 0;
                        piece.left_out = 0;
                    }
                    // A buffered batch was charged already: its charge moves with its buffer into the
                    // piece.
                    let charged = match (buffering.take(), held.as_mut()) {
                        (Some(p), Some(h)) => {
                            h.merge(p);
                            true
                        }
                        (Some(p), None) => {
                            *held = Some(p);
                            true
                        }
                        (None, _) => budget.as_ref().is_none_or(|bud| charge(bud, held, b.len())),
                    };
                    if charged {
                        records.push(Bytes::from(b.into_owned()));
                    } else {
                        piece.left_out += 1;
                    }
                }
                Event::BatchSkipped(_) => {
                    if let Some(piece) = current.as_mut() {
                        piece.skipped_batches += 1;
                    }
                }
                Event::PartitionEnd => {
                    if let Some(piece) = current.take() {
                        emit(piece, std::mem::take(records), held.take());
                    }
                }
            }
            true
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
        let mut pieces = Pieces::new(4, 1 << 20, None).unwrap();
        let mut got = Vec::new();
        let mut emit = |p: FetchPiece, r: Batches, _| got.push((p.continuation, r.len()));
        for c in body.chunks(65536) {
            pieces.feed(c, &mut emit).unwrap();
        }
        pieces.finish().unwrap();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(!got[0].0 && got[1].0);
        assert!(got[0].1 <= PIECE_BYTES);
        assert_eq!(got[0].1 + got[1].1, records.len());
    }

    #[test]
    fn what_pieces_hold_is_charged_to_the_budget_and_batches_without_room_are_left_out() {
        // Three partitions of one 10 KB batch each, read in 4 KiB chunks (so each batch is buffered).
        let batch = test_batch(0, &[1000; 10], Compression::None);
        let mut body = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 3];
        for p in 0..3i32 {
            body.extend(p.to_be_bytes());
            body.extend(0i16.to_be_bytes());
            body.extend(50i64.to_be_bytes());
            body.extend(0i64.to_be_bytes());
            body.extend((-1i32).to_be_bytes());
            body.extend((batch.len() as i32).to_be_bytes());
            body.extend(&batch);
        }
        // Room for two batches: the third is left out while the first two pieces' charges are held.
        let budget = Arc::new(Semaphore::new(2 * batch.len() + 100));
        let mut pieces = Pieces::new(4, 1 << 20, Some(budget.clone())).unwrap();
        // The observer holds each piece's charge until it has read it: here, to the end.
        let (mut got, mut kept) = (Vec::new(), Vec::new());
        let mut emit = |p: FetchPiece, r: Batches, held: Option<OwnedSemaphorePermit>| {
            got.push((p.partition, p.left_out, r.len(), held.as_ref().map_or(0, |h| h.num_permits())));
            kept.push(held);
        };
        for c in body.chunks(4096) {
            pieces.feed(c, &mut emit).unwrap();
        }
        pieces.finish().unwrap();
        assert_eq!(
            got.iter().map(|g| (g.0, g.1, g.2, g.3)).collect::<Vec<_>>(),
            vec![(0, 0, batch.len(), batch.len()), (1, 0, batch.len(), batch.len()), (2, 1, 0, 0)]
        );
        // The charges go with the pieces: the whole budget is back.
        drop((pieces, kept));
        assert_eq!(budget.available_permits(), 2 * batch.len() + 100);

        // Batches whole in a chunk are charged too.
        let budget = Arc::new(Semaphore::new(batch.len()));
        let mut pieces = Pieces::new(4, 1 << 20, Some(budget.clone())).unwrap();
        let (mut left_out, mut kept) = (0, Vec::new());
        let mut emit = |p: FetchPiece, _: Batches, held| {
            left_out += p.left_out;
            kept.push(held);
        };
        pieces.feed(&body, &mut emit).unwrap();
        assert_eq!(left_out, 2);
    }
}
