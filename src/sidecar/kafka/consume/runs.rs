//! A partition's delivered, uncommitted records as runs: consecutive offsets with one append timestamp
//! share one 24-byte entry.

use std::collections::VecDeque;

/// Delivered records with consecutive offsets and one append timestamp.
#[derive(Debug, PartialEq)]
pub(super) struct Run {
    pub first: i64,
    pub count: u32,
    /// Append timestamp (ms since the epoch).
    pub appended_ms: i64,
}

impl Run {
    pub fn end(&self) -> i64 {
        self.first + self.count as i64
    }
}

/// A partition's delivered, uncommitted records in offset order, as runs.
#[derive(Default)]
pub(super) struct Runs(pub VecDeque<Run>);

impl Runs {
    /// Adds the record at `offset` (after every record held): into the last run when it continues it,
    /// else as a new run if `room`. Whether it is tracked.
    #[cfg(test)]
    pub fn push(&mut self, offset: i64, appended_ms: i64, room: bool) -> Option<Tracked> {
        if let Some(last) = self.0.back_mut() {
            if last.end() == offset && last.appended_ms == appended_ms && last.count < u32::MAX {
                last.count += 1;
                return Some(Tracked::InRun);
            }
        }
        room.then(|| {
            self.0.push_back(Run {
                first: offset,
                count: 1,
                appended_ms,
            });
            Tracked::NewRun
        })
    }

    /// Takes the records before `offset` out, handing each run's share to `each(count, appended_ms)`;
    /// the number of runs removed.
    pub fn commit(&mut self, offset: i64, mut each: impl FnMut(u32, i64)) -> usize {
        let mut removed = 0;
        while let Some(run) = self.0.front_mut() {
            if run.first >= offset {
                break;
            }
            let n = (offset - run.first).min(run.count as i64) as u32;
            each(n, run.appended_ms);
            if n == run.count {
                self.0.pop_front();
                removed += 1;
            } else {
                run.first += n as i64;
                run.count -= n;
            }
        }
        removed
    }

    /// Forgets the records at or after `from` (the consumer seeked back); the number of runs removed.
    pub fn truncate(&mut self, from: i64) -> usize {
        let mut removed = 0;
        while let Some(run) = self.0.back_mut() {
            if run.first >= from {
                self.0.pop_back();
                removed += 1;
                continue;
            }
            if run.end() > from {
                run.count = (from - run.first) as u32;
            }
            break;
        }
        removed
    }

    /// The append timestamp of the first record held at or after `offset`.
    pub fn appended_from(&self, offset: i64) -> Option<i64> {
        self.0.iter().find(|r| r.end() > offset).map(|r| r.appended_ms)
    }

    pub fn last(&self) -> Option<i64> {
        self.0.back().map(|r| r.end() - 1)
    }
}

#[cfg(test)]
#[derive(Debug, PartialEq)]
pub enum Tracked {
    InRun,
    NewRun,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(r: &Runs) -> Vec<(i64, u32, i64)> {
        r.0.iter().map(|r| (r.first, r.count, r.appended_ms)).collect()
    }

    /// Runs holding each range of offsets with its append timestamp, pushed record by record.
    fn held(ranges: &[(std::ops::Range<i64>, i64)]) -> Runs {
        let mut r = Runs::default();
        for (offsets, appended_ms) in ranges {
            for o in offsets.clone() {
                r.push(o, *appended_ms, true);
            }
        }
        r
    }

    #[test]
    fn consecutive_records_with_one_timestamp_share_a_run() {
        let mut r = Runs::default();
        assert_eq!(r.push(10, 1000, true), Some(Tracked::NewRun));
        assert_eq!(r.push(11, 1000, true), Some(Tracked::InRun));
        // Continuing a run needs no room.
        assert_eq!(r.push(12, 1000, false), Some(Tracked::InRun));
        // A new timestamp or an offset gap (compaction, a transaction marker) starts a run.
        assert_eq!(r.push(13, 1001, true), Some(Tracked::NewRun));
        assert_eq!(r.push(15, 1001, true), Some(Tracked::NewRun));
        assert_eq!(r.push(17, 1001, false), None);
        assert_eq!(runs(&r), vec![(10, 3, 1000), (13, 1, 1001), (15, 1, 1001)]);
        assert_eq!(r.last(), Some(15));
        assert_eq!(r.appended_from(0), Some(1000));
        assert_eq!(r.appended_from(13), Some(1001));
        assert_eq!(r.appended_from(16), None);
    }

    #[test]
    fn a_commit_takes_every_record_before_it_once_and_splits_a_run() {
        let mut r = held(&[(0..5, 7), (5..8, 9)]);
        assert_eq!(runs(&r), vec![(0, 5, 7), (5, 3, 9)]);
        let mut seen = Vec::new();
        // Kafka commits the next offset to read: offset 3 covers records 0, 1 and 2.
        assert_eq!(r.commit(3, |n, t| seen.push((n, t))), 0);
        assert_eq!(seen, vec![(3, 7)]);
        assert_eq!(runs(&r), vec![(3, 2, 7), (5, 3, 9)]);
        seen.clear();
        assert_eq!(r.commit(7, |n, t| seen.push((n, t))), 1);
        assert_eq!(seen, vec![(2, 7), (2, 9)]);
        // A commit at or behind what is held takes nothing.
        seen.clear();
        assert_eq!(r.commit(7, |n, t| seen.push((n, t))), 0);
        assert!(seen.is_empty());
        assert_eq!(r.commit(100, |n, t| seen.push((n, t))), 1);
        assert_eq!(seen, vec![(1, 9)]);
        assert!(r.0.is_empty());
    }

    #[test]
    fn seeking_back_forgets_what_follows() {
        let mut r = held(&[(0..4, 1), (4..8, 2)]);
        assert_eq!(r.truncate(6), 0);
        assert_eq!(runs(&r), vec![(0, 4, 1), (4, 2, 2)]);
        assert_eq!(r.truncate(4), 1);
        assert_eq!(runs(&r), vec![(0, 4, 1)]);
        assert_eq!(r.truncate(0), 1);
        assert_eq!(r.last(), None);
    }
}
