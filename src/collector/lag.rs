//! Consumer lag in messages and in seconds.
//!
//! **Lag** is `log_end − committed`, floored at 0 (committed offsets are read *before* log-end offsets in
//! each poll, so a fast consumer can never produce a negative value).
//!
//! **Lag seconds** is how long ago the oldest record the group has not consumed was appended: `now − ts`
//! where `ts` is the timestamp of the record at the committed offset (the next record the group will
//! read), 0 when the group is caught up. The collector reads that record with a small Fetch (only for
//! lagging partitions, batched per leader, cached while the committed offset stays put), so the value is
//! measured, not estimated: a group that rewinds to offset 0 shows the true age of offset 0, a busy topic
//! does not bounce between 0 and the poll interval, and nothing is ever NaN. The timestamp is
//! LogAppendTime where the topic is so configured, else the producer's CreateTime; a timestamp in the
//! future (clock skew) gives 0, never a negative value.
//!
//! Where reading is not allowed (`lag_seconds_method = "interpolate"`, or the broker denies the Fetch),
//! the append time is interpolated on a [`Timeline`] of `(log_end − 1, poll time)` samples. An offset
//! older than the oldest sample gets the oldest sample's time: a lower bound, never an extrapolation.

use std::collections::VecDeque;

use kafka_protocol::records::RecordBatchDecoder;

use crate::kafka::batch::{batches, Batch};

/// Largest number of anchor points kept per partition.
const TIMELINE_POINTS: usize = 512;

/// Known `(offset, append time)` points of one partition, sorted by offset.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    points: VecDeque<(i64, i64)>,
    /// The last log-end offset seen and when: record `log_end` did not exist yet at that time.
    last_seen: Option<(i64, i64)>,
}

impl Timeline {
    /// Records the log-end offset seen at `now_ms`. New records `[previous log end, log_end)` were appended
    /// after the previous sample and by this one: the first is placed at the previous sample's time, the
    /// last at this one's, so interpolation between them is off by at most one poll interval.
    pub fn observe_log_end(&mut self, log_end: i64, now_ms: i64) {
        match self.last_seen {
            Some((previous, _)) if log_end < previous => {
                // The log went backwards: the topic was recreated or truncated. Start again.
                self.points.clear();
                if log_end > 0 {
                    self.insert(log_end - 1, now_ms);
                }
            }
            Some((previous, seen_at)) if log_end > previous => {
                if log_end - 1 == previous {
                    self.insert(previous, seen_at + (now_ms - seen_at) / 2);
                } else {
                    self.insert(previous, seen_at);
                    self.insert(log_end - 1, now_ms);
                }
            }
            Some(_) => {}
            // First sample: everything below was appended at or before now.
            None if log_end > 0 => self.insert(log_end - 1, now_ms),
            None => {}
        }
        self.last_seen = Some((log_end, now_ms));
    }

    /// Records an append time read from a record.
    pub fn observe_exact(&mut self, offset: i64, ts_ms: i64) {
        self.insert(offset, ts_ms);
    }

    fn insert(&mut self, offset: i64, ts_ms: i64) {
        let idx = self.points.partition_point(|&(o, _)| o < offset);
        match self.points.get_mut(idx) {
            Some(p) if p.0 == offset => p.1 = ts_ms,
            _ => self.points.insert(idx, (offset, ts_ms)),
        }
        while self.points.len() > TIMELINE_POINTS {
            self.points.pop_front();
        }
    }

    /// Drops points that no group can need any more: all but the last one below `min_offset`.
    pub fn prune_below(&mut self, min_offset: i64) {
        while self.points.len() > 1 && self.points[1].0 <= min_offset {
            self.points.pop_front();
        }
    }

    /// Estimated append time of `offset`, by linear interpolation between the points around it.
    pub fn estimate(&self, offset: i64) -> Option<i64> {
        let idx = self.points.partition_point(|&(o, _)| o < offset);
        match (idx.checked_sub(1).and_then(|i| self.points.get(i)), self.points.get(idx)) {
            (_, Some(&(o, t))) if o == offset => Some(t),
            (Some(&a), Some(&b)) => Some(interpolate(a, b, offset)),
            // Older than every point: the oldest point's time is an upper bound on its append time.
            (None, Some(&(_, t))) => Some(t),
            // Newer than every point: appended after the last sample; the caller's `now` is the bound.
            (Some(_), None) | (None, None) => None,
        }
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

/// The timestamp of a record found in fetched bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordTime {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub log_append_time: bool,
    /// False when the batch was cut short and only its header could be read: then the timestamp is the
    /// batch's first timestamp, which is at most the batch's linger time early.
    pub exact: bool,
}

/// Finds the first data record at or after `target` in a Fetch response's record bytes, and every
/// batch boundary seen on the way (as `(offset, timestamp)` anchors for the timeline).
///
/// The bytes are untrusted: every length is checked before use, a truncated or corrupt batch ends the
/// walk, and nothing here can panic or allocate more than the input's size.
pub fn find_record_time(records: &[u8], target: i64, anchors: &mut Vec<(i64, i64)>) -> Option<RecordTime> {
    let mut found = None;
    for batch in batches(records).filter(|b| !b.control) {
        let first_ts = if batch.log_append_time {
            batch.max_timestamp
        } else {
            batch.base_timestamp
        };
        anchors.push((batch.base_offset, first_ts));
        if batch.complete {
            anchors.push((batch.last_offset, batch.max_timestamp));
        }
        if found.is_none() && batch.last_offset >= target {
            found = Some(record_in_batch(&batch, target));
        }
    }
    found
}

/// The time of the first record at or after `target` in one batch that contains it.
///
/// Compressed batches are never decompressed (no decompression bomb can reach the collector, and no CPU
/// is spent on it): Kafka producers set a batch's base timestamp to its first record's, so the base offset
/// is exact from the header alone, and an offset inside the batch is interpolated between the first and
/// the max timestamp (records of one batch were created within the producer's linger time).
fn record_in_batch(batch: &Batch<'_>, target: i64) -> RecordTime {
    let (base, base_ts, max_ts) = (batch.base_offset, batch.base_timestamp, batch.max_timestamp);
    let offset = target.max(base);
    if batch.log_append_time {
        return RecordTime {
            offset,
            timestamp_ms: max_ts,
            log_append_time: true,
            exact: true,
        };
    }
    if offset == base {
        return RecordTime {
            offset,
            timestamp_ms: base_ts,
            log_append_time: false,
            exact: true,
        };
    }
    if batch.complete && !batch.compressed {
        let mut slice = bytes::Bytes::copy_from_slice(batch.bytes);
        if let Ok(set) = RecordBatchDecoder::decode(&mut slice) {
            if let Some(r) = set.records.iter().find(|r| r.offset >= target) {
                return RecordTime {
                    offset: r.offset,
                    timestamp_ms: r.timestamp,
                    log_append_time: false,
                    exact: true,
                };
            }
        }
    }
    let last = batch.last_offset;
    let ts = if last > base && max_ts >= base_ts {
        interpolate((base, base_ts), (last, max_ts), offset)
    } else {
        base_ts
    };
    RecordTime {
        offset,
        timestamp_ms: ts,
        log_append_time: false,
        exact: false,
    }
}

/// The time of `offset` on the line between two `(offset, time)` points. Offsets and times may come from
/// untrusted bytes anywhere in the i64 range: computed in f64, saturated back into i64, never overflowing.
fn interpolate((o1, t1): (i64, i64), (o2, t2): (i64, i64), offset: i64) -> i64 {
    let span = o2 as f64 - o1 as f64;
    if span <= 0.0 {
        return t1;
    }
    let frac = ((offset as f64 - o1 as f64) / span).clamp(0.0, 1.0);
    // `as` from f64 to i64 saturates.
    (t1 as f64 + (t2 as f64 - t1 as f64) * frac).round() as i64
}

/// Seconds between `ts_ms` and `now_ms`, never negative (and never overflowing on hostile timestamps).
pub fn age_seconds(now_ms: i64, ts_ms: i64) -> f64 {
    now_ms.saturating_sub(ts_ms).max(0) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::batch::test_batch as batch;
    use kafka_protocol::records::Compression;

    #[test]
    fn finds_the_record_at_the_target_inside_a_batch() {
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Lz4,
            Compression::Zstd,
            Compression::Snappy,
        ] {
            let mut bytes = batch(10, &[1000, 2000, 3000], compression);
            bytes.extend(batch(13, &[4000, 5000], compression));
            let mut anchors = Vec::new();
            let r = find_record_time(&bytes, 11, &mut anchors).unwrap();
            // Uncompressed: read from the record. Compressed: interpolated from the header, not decompressed.
            assert_eq!(
                (r.offset, r.timestamp_ms, r.exact),
                (11, 2000, compression == Compression::None),
                "{compression:?}"
            );
            let r = find_record_time(&bytes, 13, &mut anchors).unwrap();
            assert_eq!(
                (r.offset, r.timestamp_ms, r.exact),
                (13, 4000, true),
                "base offsets are exact from the header"
            );
            let r = find_record_time(&bytes, 14, &mut anchors).unwrap();
            assert_eq!((r.offset, r.timestamp_ms), (14, 5000));
            assert!(find_record_time(&bytes, 15, &mut anchors).is_none());
        }
    }

    #[test]
    fn truncated_batch_gives_header_estimate() {
        let bytes = batch(0, &[1000, 2000, 3000], Compression::None);
        let cut = &bytes[..bytes.len() - 5];
        let r = find_record_time(cut, 1, &mut Vec::new()).unwrap();
        assert_eq!(
            (r.timestamp_ms, r.exact),
            (2000, false),
            "interpolated between the header's first and max timestamps"
        );
    }

    #[test]
    fn garbage_never_panics() {
        let bytes = batch(0, &[1000, 2000], Compression::None);
        for len in 0..bytes.len() {
            let _ = find_record_time(&bytes[..len], 0, &mut Vec::new());
        }
        // A record count of i32::MAX in an otherwise valid batch: refused by the CRC, answered from the header.
        let mut corrupt = bytes.clone();
        corrupt[57..61].copy_from_slice(&i32::MAX.to_be_bytes()); // the record count
        let r = find_record_time(&corrupt, 1, &mut Vec::new()).unwrap();
        assert!(!r.exact);
        let mut next = crate::testing::xorshift(0x1234_5678);
        for _ in 0..2000 {
            let junk: Vec<u8> = (0..200).map(|_| next() as u8).collect();
            let _ = find_record_time(&junk, 0, &mut Vec::new());
        }
    }

    /// Found by `cargo fuzz` (fuzz/fuzz_targets/untrusted_bytes.rs): timestamps at the ends of the i64
    /// range overflowed the interpolation.
    #[test]
    fn extreme_timestamps_do_not_overflow() {
        assert_eq!(interpolate((0, i64::MIN), (10, i64::MAX), 5), 0);
        assert_eq!(interpolate((i64::MIN, 0), (i64::MAX, 10), 0), 5);
        assert_eq!(age_seconds(i64::MAX, i64::MIN), i64::MAX as f64 / 1000.0);
        let crash = include_bytes!("../../fuzz/regressions/lag-interpolate-overflow.bin");
        let _ = find_record_time(&crash[2..], i64::from(crash[0]) * 7, &mut Vec::new());
    }

    #[test]
    fn timeline_interpolates_and_never_extrapolates() {
        let mut t = Timeline::default();
        t.observe_log_end(100, 10_000); // offsets 0..=99 appended by t=10s
        t.observe_log_end(200, 20_000);
        assert_eq!(t.estimate(199), Some(20_000));
        assert_eq!(
            t.estimate(100),
            Some(10_000),
            "the first new record: just after the previous sample"
        );
        assert_eq!(t.estimate(149), Some(14_949), "records 100..=199 spread over 10 s..20 s");
        assert_eq!(t.estimate(0), Some(10_000)); // lower bound, not "3 years"
        assert_eq!(t.estimate(250), None);
        t.observe_exact(120, 11_000);
        assert_eq!(t.estimate(120), Some(11_000));
        // Quiet for 20 s, then 10 records between t=40s and t=41s: placed in that second, not smeared
        // back over the quiet time.
        t.observe_log_end(200, 30_000);
        t.observe_log_end(200, 40_000);
        t.observe_log_end(210, 41_000);
        assert_eq!(t.estimate(200), Some(40_000));
        assert_eq!(t.estimate(209), Some(41_000));
        t.observe_log_end(211, 42_000);
        assert_eq!(t.estimate(210), Some(41_500), "a single new record: the middle of the interval");
        t.observe_log_end(50, 50_000); // topic recreated
        assert_eq!(t.len(), 1);
        assert_eq!(age_seconds(1_000, 2_000), 0.0);
    }
}
