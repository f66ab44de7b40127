//! The eventual-consistency window of a read model: for every record a consumer group's commit moves
//! past, the time from the record's append until that commit was observed.
//!
//! The collector sees commits at poll time, so a window is accurate to one `poll_interval` (the sidecar,
//! which sees each commit as it happens, is exact). Append times come from the partition's
//! [`crate::collector::lag::Timeline`]: exact where a record was read, interpolated between log-end samples elsewhere.
//! Counts are exact: a commit that moves from offset `a` to `b` observes `b − a` records.

use crate::telemetry::contract::CONSISTENCY_BUCKETS;

/// Above this many records per partition and poll, records are observed in equal strides (each stride
/// observed once with its record count), so a huge catch-up costs bounded work and counts stay exact.
const MAX_POINTS_PER_COMMIT: i64 = 10_000;

/// A cumulative histogram with the consistency buckets and weighted observations.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Non-cumulative counts per bucket; the last one is `+Inf`.
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; CONSISTENCY_BUCKETS.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }
}

impl Histogram {
    pub fn observe_n(&mut self, seconds: f64, n: u64) {
        let v = if seconds.is_finite() { seconds.max(0.0) } else { 0.0 };
        let idx = CONSISTENCY_BUCKETS.partition_point(|&b| b < v);
        self.counts[idx] += n;
        self.sum += v * n as f64;
        self.count += n;
    }

    /// Cumulative counts, one per bucket bound then `+Inf`.
    pub fn cumulative(&self) -> Vec<u64> {
        let mut acc = 0;
        self.counts
            .iter()
            .map(|c| {
                acc += c;
                acc
            })
            .collect()
    }

    /// `self − earlier`, for quantiles over an interval.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        Histogram {
            counts: self.counts.iter().zip(&earlier.counts).map(|(a, b)| a.saturating_sub(*b)).collect(),
            sum: (self.sum - earlier.sum).max(0.0),
            count: self.count.saturating_sub(earlier.count),
        }
    }

    /// The q-quantile, interpolated within buckets as PromQL's `histogram_quantile` does.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q * self.count as f64;
        let cumulative = self.cumulative();
        let idx = cumulative.iter().position(|&c| c as f64 >= rank)?;
        if idx == CONSISTENCY_BUCKETS.len() {
            return CONSISTENCY_BUCKETS.last().copied();
        }
        let upper = CONSISTENCY_BUCKETS[idx];
        let lower = if idx == 0 { 0.0 } else { CONSISTENCY_BUCKETS[idx - 1] };
        let below = if idx == 0 { 0 } else { cumulative[idx - 1] };
        let in_bucket = self.counts[idx];
        if in_bucket == 0 {
            return Some(upper);
        }
        Some(lower + (upper - lower) * (rank - below as f64) / in_bucket as f64)
    }
}

/// Observes the records `[from, to)` committed at `commit_ms`, with append times from `append_ms`.
pub fn observe_commit(h: &mut Histogram, from: i64, to: i64, commit_ms: i64, append_ms: impl Fn(i64) -> i64) {
    let n = to - from;
    if n <= 0 {
        return;
    }
    let stride = (n + MAX_POINTS_PER_COMMIT - 1) / MAX_POINTS_PER_COMMIT;
    let mut offset = from;
    while offset < to {
        let weight = stride.min(to - offset);
        let window_ms = commit_ms.saturating_sub(append_ms(offset)).max(0);
        h.observe_n(window_ms as f64 / 1000.0, weight as u64);
        offset += weight;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_exact_even_when_strided() {
        let mut h = Histogram::default();
        observe_commit(&mut h, 0, 25_001, 100_000, |o| 100_000 - (o % 1000));
        assert_eq!(h.count, 25_001);
        assert_eq!(h.counts.iter().sum::<u64>(), 25_001);
    }

    #[test]
    fn quantiles_follow_histogram_quantile() {
        let mut h = Histogram::default();
        h.observe_n(0.08, 50);
        h.observe_n(0.3, 45);
        h.observe_n(0.55, 5);
        let p50 = h.quantile(0.5).unwrap();
        assert!((0.075..=0.1).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99).unwrap();
        assert!((0.5..=0.6).contains(&p99), "{p99}");
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    #[test]
    fn negative_and_nan_are_zero() {
        let mut h = Histogram::default();
        h.observe_n(-1.0, 1);
        h.observe_n(f64::NAN, 1);
        assert_eq!(h.counts[0], 2);
        assert_eq!(h.sum, 0.0);
    }
}
