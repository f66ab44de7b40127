//! The sidecar's per-partition consumer series, `kafka_consumergroup_lag`, `_lag_seconds` and
//! `_current_offset`: kept as the last refresh's rows and written in the text format directly.
//!
//! They are the sidecar's only series whose number grows with the traffic: one of each per group,
//! topic and partition committed, up to 10,000. In `prometheus` gauge families a scrape first made a
//! protobuf copy of every series of the registry, so that a scrape of a sidecar with 100 groups on 32
//! partitions held 4 to 5 MB more for its duration, and took 55 to 62 ms at the bound against 6.4 to
//! 6.9 now (docs/benchmarks.md, `benches/lag_refresh.rs`). Here a scrape writes the rows out as they
//! are, as the collector writes its own (`collector::exposition`).
//!
//! A refresh replaces every row at once, so a scrape reads all partitions from the same refresh (a
//! partition's lag beside its committed offset of the same moment); and a refresh numbered before the
//! one published last is not published, so a scrape never sees an older refresh after a newer one.

use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex};

use super::contract::{Family, GROUP_CURRENT_OFFSET, GROUP_LAG, GROUP_LAG_SECONDS};
use super::text::{write_header, write_value};

/// A partition's label set as the text format writes it (`name="value"` pairs, escaped): made once, when
/// the partition is first committed, and shared by every row of it after.
pub type Labels = Arc<str>;

/// A label set from `name`, `value` pairs (values bounded by the caller).
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    String::from_utf8(super::text::label_set(pairs)).unwrap_or_default().into()
}

/// One partition's series: its label set and its values.
pub struct Row {
    labels: Labels,
    /// Other partitions may have the same label set (a group or topic beyond its bound: `_other`).
    shared: bool,
    offset: i64,
    lag: Option<i64>,
    seconds: Option<f64>,
}

impl Row {
    /// A partition's row: `lag` is absent until a high watermark is known, `seconds` when the records
    /// behind the commit are not tracked; `shared` when other partitions may have the same label set.
    pub fn new(labels: Labels, shared: bool, offset: i64, lag: Option<i64>, seconds: Option<f64>) -> Row {
        Row {
            labels,
            shared,
            offset,
            lag,
            seconds,
        }
    }
}

#[derive(Default)]
struct Published {
    refresh: u64,
    rows: Arc<Vec<Row>>,
}

/// The rows of the last refresh published; cheap to clone (one shared set).
#[derive(Clone, Default)]
pub struct PartitionSeries {
    published: Arc<Mutex<Published>>,
}

impl PartitionSeries {
    /// Replaces every row by `rows`, computed by refresh number `refresh` (numbers grow with each
    /// refresh); a refresh older than the one published last is dropped. False if it was.
    ///
    /// Each label set is written once: groups and topics beyond their bounds share the label `_other`,
    /// and of the partitions that share a label set the one furthest behind (the largest lag) is
    /// shown, with its own offset and seconds. (Only those rows are compared: sorting them all cost
    /// three times the rest of a refresh.)
    pub fn publish(&self, refresh: u64, rows: Vec<Row>) -> bool {
        let (mut rows, shared): (Vec<Row>, Vec<Row>) = rows.into_iter().partition(|r| !r.shared);
        if !shared.is_empty() {
            let mut furthest: std::collections::HashMap<Labels, Row> = Default::default();
            for r in shared {
                match furthest.entry(r.labels.clone()) {
                    Entry::Occupied(mut e) if r.lag > e.get().lag => {
                        e.insert(r);
                    }
                    Entry::Occupied(_) => {}
                    Entry::Vacant(e) => {
                        e.insert(r);
                    }
                }
            }
            rows.extend(furthest.into_values());
        }
        let mut p = self.published.lock().unwrap_or_else(|e| e.into_inner());
        if refresh < p.refresh {
            return false;
        }
        *p = Published {
            refresh,
            rows: Arc::new(rows),
        };
        true
    }

    /// Withdraws every row (the measurements start again), after any refresh numbered before `refresh`.
    pub fn clear(&self, refresh: u64) {
        self.publish(refresh, Vec::new());
    }

    /// The three families in the text format; nothing when there is no row.
    pub fn render(&self, out: &mut String) {
        let rows = self.published.lock().unwrap_or_else(|e| e.into_inner()).rows.clone();
        if rows.is_empty() {
            return;
        }
        out.reserve(rows.len() * 3 * (rows[0].labels.len() + 64));
        let family = |out: &mut String, f: &Family, value: &dyn Fn(&Row) -> Option<f64>| {
            write_header(out, f);
            for r in rows.iter() {
                if let Some(v) = value(r) {
                    out.push_str(f.name);
                    out.push('{');
                    out.push_str(&r.labels);
                    out.push_str("} ");
                    write_value(out, v);
                    out.push('\n');
                }
            }
        };
        family(out, &GROUP_LAG, &|r| r.lag.map(|l| l as f64));
        family(out, &GROUP_LAG_SECONDS, &|r| r.lag.and(r.seconds));
        family(out, &GROUP_CURRENT_OFFSET, &|r| Some(r.offset as f64));
    }

    /// The rows in the text format, as a scrape reads them.
    pub fn text(&self) -> String {
        let mut out = String::new();
        self.render(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(topic: &str, offset: i64, lag: Option<i64>, seconds: Option<f64>) -> Row {
        Row::new(
            labels(&[("cluster", "c"), ("topic", topic)]),
            topic == "_other",
            offset,
            lag,
            seconds,
        )
    }

    #[test]
    fn rows_are_written_as_the_text_format_wants() {
        let s = PartitionSeries::default();
        assert_eq!(s.text(), "", "no row, no family");
        assert!(s.publish(1, vec![row("a\"b", 20, Some(10), Some(1.5)), row("c", 5, None, None)]));
        let text = s.text();
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "kafka_consumergroup_lag{cluster=\"c\",topic=\"a\\\"b\"} 10",
                "kafka_consumergroup_lag_seconds{cluster=\"c\",topic=\"a\\\"b\"} 1.5",
                "kafka_consumergroup_current_offset{cluster=\"c\",topic=\"a\\\"b\"} 20",
                "kafka_consumergroup_current_offset{cluster=\"c\",topic=\"c\"} 5",
            ]
        );
        assert!(text.contains("# TYPE kafka_consumergroup_lag gauge\n"));
    }

    #[test]
    fn a_label_set_shared_by_partitions_is_written_once_with_the_largest_lag() {
        let s = PartitionSeries::default();
        s.publish(
            1,
            vec![
                row("_other", 7, Some(3), None),
                row("_other", 2, Some(40), Some(9.0)),
                row("_other", 5, None, None),
            ],
        );
        let samples: Vec<String> = s.text().lines().filter(|l| !l.starts_with('#')).map(String::from).collect();
        assert_eq!(
            samples,
            [
                "kafka_consumergroup_lag{cluster=\"c\",topic=\"_other\"} 40",
                "kafka_consumergroup_lag_seconds{cluster=\"c\",topic=\"_other\"} 9",
                "kafka_consumergroup_current_offset{cluster=\"c\",topic=\"_other\"} 2",
            ]
        );
    }

    #[test]
    fn an_older_refresh_is_not_published_after_a_newer_one() {
        let s = PartitionSeries::default();
        assert!(s.publish(2, vec![row("t", 2, Some(0), Some(0.0))]));
        assert!(!s.publish(1, vec![row("t", 1, Some(1), None)]));
        assert!(s
            .text()
            .contains("kafka_consumergroup_current_offset{cluster=\"c\",topic=\"t\"} 2\n"));
        s.clear(3);
        assert_eq!(s.text(), "");
    }
}
