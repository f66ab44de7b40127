//! Burrow-style evaluation of a consumer group's progress on each partition, over a sliding window.
//!
//! Burrow reads commit events from `__consumer_offsets`; eventscope polls committed offsets and group
//! membership instead, so the rules are Burrow's, adapted to what a poll can see (an identical offset
//! re-committed and no commit at all look the same to OffsetFetch; membership tells them apart):
//!
//! | status | rule, checked in this order |
//! |---|---|
//! | OK | current lag ≤ `allowed_lag` |
//! | STOP | lag > `allowed_lag` and the group has no members; or membership is unknown and the offset has not moved for a full window |
//! | REWIND | lag > `allowed_lag` throughout the window and the committed offset went backwards within it |
//! | STALL | members > 0, lag > `allowed_lag` throughout a full window, and the offset never moved |
//! | WARN | lag > `allowed_lag` throughout a full window, the offset moves, but lag never decreased |
//! | OK | otherwise |
//!
//! ERR is not a partition rule: the collector reports it when the group's offsets could not be read.

use std::collections::VecDeque;

/// The status of a group on a partition (or, as the worst of its partitions, on a topic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    Ok,
    Warn,
    Rewind,
    Stall,
    Stop,
    Err,
}

impl Status {
    pub const ALL: [Status; 6] = [Status::Ok, Status::Warn, Status::Stall, Status::Stop, Status::Rewind, Status::Err];

    pub fn as_label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Stall => "STALL",
            Status::Stop => "STOP",
            Status::Rewind => "REWIND",
            Status::Err => "ERR",
        }
    }
}

/// One poll's view of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub offset: i64,
    pub lag: u64,
    pub at_ms: i64,
}

/// The last `size` observations of one group on one partition.
#[derive(Debug, Clone)]
pub struct Window {
    size: usize,
    obs: VecDeque<Observation>,
}

impl Window {
    pub fn new(size: usize) -> Window {
        Window {
            size,
            obs: VecDeque::with_capacity(size),
        }
    }

    pub fn push(&mut self, o: Observation) {
        if self.obs.len() == self.size {
            self.obs.pop_front();
        }
        self.obs.push_back(o);
    }

    pub fn first(&self) -> Option<&Observation> {
        self.obs.front()
    }

    pub fn last(&self) -> Option<&Observation> {
        self.obs.back()
    }

    /// Evaluates the window. `members` is `None` where the broker cannot describe groups.
    pub fn evaluate(&self, allowed_lag: u64, members: Option<usize>) -> Status {
        let Some(current) = self.obs.back() else { return Status::Ok };
        if current.lag <= allowed_lag {
            return Status::Ok;
        }
        let full = self.obs.len() == self.size;
        let unmoved = self.obs.iter().all(|o| o.offset == current.offset);
        match members {
            Some(0) => return Status::Stop,
            None if full && unmoved => return Status::Stop,
            _ => {}
        }
        let lagging_throughout = self.obs.iter().all(|o| o.lag > allowed_lag);
        if !lagging_throughout {
            return Status::Ok;
        }
        let pairs = || self.obs.iter().zip(self.obs.iter().skip(1));
        if pairs().any(|(a, b)| b.offset < a.offset) {
            return Status::Rewind;
        }
        if full && unmoved {
            return Status::Stall;
        }
        if full && pairs().all(|(a, b)| b.lag >= a.lag) {
            return Status::Warn;
        }
        Status::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(points: &[(i64, u64)]) -> Window {
        let mut w = Window::new(points.len());
        for (i, &(offset, lag)) in points.iter().enumerate() {
            w.push(Observation {
                offset,
                lag,
                at_ms: i as i64 * 1000,
            });
        }
        w
    }

    #[test]
    fn burrow_rules() {
        // Caught up at the end: OK whatever came before.
        assert_eq!(window(&[(0, 5), (0, 5), (10, 0)]).evaluate(0, Some(1)), Status::Ok);
        // No members and lag: STOP at once.
        assert_eq!(window(&[(10, 5)]).evaluate(0, Some(0)), Status::Stop);
        // Members, same offset, lag, full window: STALL.
        assert_eq!(window(&[(10, 5), (10, 6), (10, 7)]).evaluate(0, Some(2)), Status::Stall);
        // Unknown members, same offset for a full window: STOP.
        assert_eq!(window(&[(10, 5), (10, 6), (10, 7)]).evaluate(0, None), Status::Stop);
        // Offset went back: REWIND.
        assert_eq!(window(&[(100, 5), (0, 105), (10, 95)]).evaluate(0, Some(1)), Status::Rewind);
        // Moving but lag never decreases: WARN.
        assert_eq!(window(&[(10, 5), (12, 6), (14, 6)]).evaluate(0, Some(1)), Status::Warn);
        // Moving and lag decreasing: OK.
        assert_eq!(window(&[(10, 5), (12, 6), (20, 2)]).evaluate(0, Some(1)), Status::Ok);
        // Within the allowed lag: OK.
        assert_eq!(window(&[(10, 5), (10, 5), (10, 5)]).evaluate(5, Some(1)), Status::Ok);
    }

    #[test]
    fn partial_window_does_not_stall() {
        let mut w = Window::new(5);
        w.push(Observation {
            offset: 1,
            lag: 3,
            at_ms: 0,
        });
        w.push(Observation {
            offset: 1,
            lag: 3,
            at_ms: 1,
        });
        assert_eq!(w.evaluate(0, Some(1)), Status::Ok);
    }
}
