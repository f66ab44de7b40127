//! The admin page's data, `/api/v1/view`: every [`SAMPLE_EVERY`] the process's own `/metrics` text (what a
//! scrape reads: no broker call) is read into rows (Kafka groups, the other brokers' backlogs, sagas, the
//! sidecar's topics and HTTP routes), each with a bounded history, and serialized once. Every viewer then
//! gets that one document, so viewers cost nothing extra and memory does not grow with them.
//!
//! Bounded: at most [`MAX_ROWS`] rows per section (the rest counted in `omitted`), [`HISTORY_POINTS`]
//! points of history per chart, and [`WINDOW_POINTS`] samples of raw counters and buckets per row for the
//! rates and quantiles over the last minute. The page reads the metric contract's names only, so it shows
//! what `/metrics` says.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::telemetry::contract as m;
use crate::telemetry::text::{parse_line, Line};

/// How often the view is rebuilt (and the page refreshes).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Points kept per chart: 15 minutes at one every 5 s.
pub const HISTORY_POINTS: usize = 180;
/// Samples kept per row for rates and quantiles: the last minute.
pub const WINDOW_POINTS: usize = 13;
/// Rows per section at most.
pub const MAX_ROWS: usize = 300;
/// The seed's latency objective for an HTTP route: p99 under 500 ms.
pub const LATENCY_TARGET_SECONDS: f64 = 0.5;

/// The sections of the view, in the order the page shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Section {
    Kafka,
    Backlogs,
    Sagas,
    Topics,
    Routes,
    HttpTraceContext,
}

impl Section {
    const ALL: [Section; 6] = [
        Section::Kafka,
        Section::Backlogs,
        Section::Sagas,
        Section::Topics,
        Section::Routes,
        Section::HttpTraceContext,
    ];

    fn name(self) -> &'static str {
        match self {
            Section::Kafka => "kafka",
            Section::Backlogs => "backlogs",
            Section::Sagas => "sagas",
            Section::Topics => "topics",
            Section::Routes => "routes",
            Section::HttpTraceContext => "http_trace_context",
        }
    }

    /// The labels that name a row, in order.
    fn keys(self) -> &'static [&'static str] {
        match self {
            Section::Kafka => &["source", m::L_CLUSTER, m::L_GROUP, m::L_TOPIC],
            Section::Backlogs => &[m::L_BROKER, m::L_CLUSTER, m::L_DESTINATION, m::L_CONSUMER],
            Section::Sagas => &[m::L_CLUSTER, m::L_SAGA],
            Section::Topics => &[m::L_TOPIC],
            Section::Routes => &[m::L_SERVICE, m::L_METHOD, m::L_ROUTE],
            Section::HttpTraceContext => &[m::L_SERVICE],
        }
    }
}

/// One row's raw values in one sample.
#[derive(Debug, Default, Clone)]
struct Raw {
    gauges: BTreeMap<String, f64>,
    counters: BTreeMap<String, f64>,
    /// Histogram name → cumulative count per `le`, sorted by `le`.
    buckets: BTreeMap<&'static str, Vec<(f64, f64)>>,
    status: Option<String>,
}

impl Raw {
    fn add_gauge(&mut self, k: impl Into<String>, v: f64) {
        *self.gauges.entry(k.into()).or_default() += v;
    }
    fn max_gauge(&mut self, k: &str, v: f64) {
        let e = self.gauges.entry(k.to_string()).or_insert(v);
        *e = e.max(v);
    }
    fn add_counter(&mut self, k: impl Into<String>, v: f64) {
        *self.counters.entry(k.into()).or_default() += v;
    }
    fn add_bucket(&mut self, h: &'static str, le: f64, v: f64) {
        let b = self.buckets.entry(h).or_default();
        match b.iter_mut().find(|(l, _)| *l == le) {
            Some(e) => e.1 += v,
            None => {
                let at = b.partition_point(|(l, _)| *l < le);
                b.insert(at, (le, v));
            }
        }
    }
}

/// What a sample line does to its row.
type Feed = fn(&mut Raw, &Line<'_>);

/// Which row and field a sample line feeds.
fn route(l: &Line<'_>) -> Option<(Section, Feed)> {
    let nats = l.label(m::L_BROKER) == Some("nats");
    Some(match l.name {
        n if n == m::GROUP_LAG.name => (Section::Kafka, |r, l| r.add_gauge("lag", l.value)),
        n if n == m::GROUP_LAG_SECONDS.name => (Section::Kafka, |r, l| r.max_gauge("lag_seconds", l.value)),
        n if n == m::GROUP_STATUS.name => (Section::Kafka, |r, l| {
            if l.value == 1.0 {
                r.status = l.label(m::L_STATUS).map(str::to_string);
            }
        }),
        "eventscope_consistency_window_seconds_bucket" => (if nats { Section::Backlogs } else { Section::Kafka }, |r, l| {
            if let Some(le) = l.label("le").and_then(le) {
                r.add_bucket("consistency", le, l.value)
            }
        }),
        n if n == m::BACKLOG_MESSAGES.name => (Section::Backlogs, |r, l| r.add_gauge("messages", l.value)),
        n if n == m::BACKLOG_AGE.name => (Section::Backlogs, |r, l| r.max_gauge("age_seconds", l.value)),
        n if n == m::BACKLOG_DRAIN.name => (Section::Backlogs, |r, l| r.max_gauge("drain_seconds", l.value)),
        n if n == m::BACKLOG_STATUS.name => (Section::Backlogs, |r, l| {
            if l.value == 1.0 {
                r.status = l.label(m::L_STATUS).map(str::to_string);
            }
        }),
        m::SAGA_STARTED => (Section::Sagas, |r, l| r.add_counter("started", l.value)),
        m::SAGA_ENDED => (Section::Sagas, |r, l| {
            r.add_counter(format!("ended:{}", l.label(m::L_OUTCOME).unwrap_or("")), l.value)
        }),
        m::SAGA_IN_FLIGHT => (Section::Sagas, |r, l| r.add_gauge("in_flight", l.value)),
        m::SAGA_STUCK => (Section::Sagas, |r, l| {
            r.add_gauge(format!("stuck:{}", l.label(m::L_STEP).unwrap_or("")), l.value);
            r.add_gauge("stuck", l.value)
        }),
        m::SAGA_UP => (Section::Sagas, |r, l| r.max_gauge("up", l.value)),
        "eventscope_saga_duration_seconds_bucket" => (Section::Sagas, |r, l| {
            if let (Some("completed"), Some(le)) = (l.label(m::L_OUTCOME), l.label("le").and_then(le)) {
                r.add_bucket("duration_completed", le, l.value)
            }
        }),
        m::PRODUCED_RECORDS => (Section::Topics, |r, l| r.add_counter("produced", l.value)),
        m::PRODUCE_ERRORS => (Section::Topics, |r, l| r.add_counter("produce_errors", l.value)),
        m::DELIVERED_RECORDS => (Section::Topics, |r, l| r.add_counter("delivered", l.value)),
        "eventscope_kafka_delivery_latency_seconds_bucket" => (Section::Topics, |r, l| {
            if let Some(le) = l.label("le").and_then(le) {
                r.add_bucket("delivery_latency", le, l.value)
            }
        }),
        m::TRACE_CONTEXT_RECORDS => (Section::Topics, |r, l| {
            let (d, c) = (l.label(m::L_DIRECTION).unwrap_or(""), l.label(m::L_CONTEXT).unwrap_or(""));
            r.add_counter(format!("trace:{d}:{c}"), l.value)
        }),
        m::HTTP_REQUESTS => (Section::Routes, |r, l| {
            r.add_counter("requests", l.value);
            if l.label("status").is_some_and(|s| s.starts_with('5')) {
                r.add_counter("errors", l.value);
            }
        }),
        "http_request_duration_seconds_bucket" => (Section::Routes, |r, l| {
            if let Some(le) = l.label("le").and_then(le) {
                r.add_bucket("duration", le, l.value)
            }
        }),
        m::HTTP_TRACE_CONTEXT => (Section::HttpTraceContext, |r, l| {
            r.add_counter(format!("context:{}", l.label(m::L_CONTEXT).unwrap_or("")), l.value)
        }),
        _ => return None,
    })
}

fn le(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        s => s.parse().ok(),
    }
}

/// The row a line belongs to: its section's key labels (a Kafka series without `source` is the
/// collector's; a NATS consistency window is its consumer's backlog row).
fn row_key(section: Section, l: &Line<'_>) -> Vec<String> {
    if section == Section::Backlogs && l.name.starts_with("eventscope_consistency_window") {
        let get = |k| l.label(k).unwrap_or("").to_string();
        return vec!["nats".into(), get(m::L_CLUSTER), get(m::L_TOPIC), get(m::L_GROUP)];
    }
    section
        .keys()
        .iter()
        .map(|k| match (l.label(k), *k) {
            (Some(v), _) => v.to_string(),
            (None, "source") => "collector".to_string(),
            (None, _) => String::new(),
        })
        .collect()
}

/// The q-quantile of cumulative buckets, interpolated within a bucket as PromQL's `histogram_quantile`.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(upper, count) in buckets {
        if count >= rank {
            if upper.is_infinite() {
                return Some(lower);
            }
            let within = if count > below { (rank - below) / (count - below) } else { 1.0 };
            return Some(lower + (upper - lower) * within);
        }
        lower = upper;
        below = count;
    }
    Some(lower)
}

/// `later − earlier` bucket by bucket (a reset, a count going down, gives `later`).
fn buckets_since(later: &[(f64, f64)], earlier: Option<&[(f64, f64)]>) -> Vec<(f64, f64)> {
    let Some(earlier) = earlier else { return later.to_vec() };
    let reset = later.last().map(|l| l.1) < earlier.last().map(|e| e.1);
    later
        .iter()
        .map(|&(le, c)| {
            let before = if reset {
                0.0
            } else {
                earlier.iter().find(|e| e.0 == le).map_or(0.0, |e| e.1)
            };
            (le, (c - before).max(0.0))
        })
        .collect()
}

/// Fraction of observations at or under `bound` (which must be a bucket's `le`).
fn fraction_within(buckets: &[(f64, f64)], bound: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    let under = buckets.iter().find(|(le, _)| *le >= bound)?.1;
    (total > 0.0).then(|| under / total)
}

/// A row across samples.
#[derive(Default)]
struct Row {
    /// The last [`WINDOW_POINTS`] samples' raw values with their times; empty while the row is absent
    /// from the latest sample.
    window: VecDeque<(i64, Raw)>,
    /// Chart name → one point per sample of the view (aligned with the view's times).
    history: BTreeMap<&'static str, VecDeque<Option<f64>>>,
}

impl Row {
    fn now(&self) -> Option<&Raw> {
        self.window.back().map(|(_, r)| r)
    }

    /// In the latest sample.
    fn present(&self) -> bool {
        !self.window.is_empty()
    }

    /// Per second over the window: `(last − first) / elapsed`, `None` without two samples or on a reset.
    fn rate(&self, counter: &str) -> Option<f64> {
        let (t0, first) = self.window.front()?;
        let (t1, last) = self.window.back()?;
        rate_between((*t0, first), (*t1, last), counter)
    }

    /// Per second since the previous sample.
    fn instant_rate(&self, counter: &str) -> Option<f64> {
        let n = self.window.len();
        let (t0, a) = self.window.get(n.checked_sub(2)?)?;
        let (t1, b) = self.window.back()?;
        rate_between((*t0, a), (*t1, b), counter)
    }

    /// The histogram's buckets over the window.
    fn window_buckets(&self, h: &str) -> Option<Vec<(f64, f64)>> {
        let last = self.window.back()?.1.buckets.get(h)?;
        let first = self.window.front().and_then(|(_, r)| r.buckets.get(h));
        let first = first.filter(|_| self.window.len() > 1);
        Some(buckets_since(last, first.map(Vec::as_slice)))
    }

    /// Counts since the window's start, by counter.
    fn window_delta(&self, counter: &str) -> Option<f64> {
        let (_, first) = self.window.front()?;
        let (_, last) = self.window.back()?;
        let (a, b) = (first.counters.get(counter).copied().unwrap_or(0.0), *last.counters.get(counter)?);
        Some(if b >= a && self.window.len() > 1 { b - a } else { b })
    }

    fn chart(&mut self, name: &'static str, value: Option<f64>, len: usize) {
        let h = self.history.entry(name).or_default();
        // A chart that starts late is padded to the view's length.
        while h.len() + 1 < len {
            h.push_front(None);
        }
        h.push_back(value.filter(|v| v.is_finite()));
        while h.len() > HISTORY_POINTS {
            h.pop_front();
        }
    }
}

fn rate_between((t0, a): (i64, &Raw), (t1, b): (i64, &Raw), counter: &str) -> Option<f64> {
    let (va, vb) = (a.counters.get(counter).copied().unwrap_or(0.0), *b.counters.get(counter)?);
    let dt = (t1 - t0) as f64 / 1000.0;
    (dt > 0.0 && vb >= va).then(|| (vb - va) / dt)
}

/// What the page is configured with.
#[derive(Debug, Clone, Default)]
pub struct PageConfig {
    /// `collector`, `sidecar` or `demo`.
    pub role: &'static str,
    /// `ui.trace_url`: a trace id's address, `{trace_id}` replaced.
    pub trace_url: Option<String>,
}

/// The view across samples.
pub struct Sampler {
    config: PageConfig,
    times: VecDeque<i64>,
    rows: BTreeMap<(Section, Vec<String>), Row>,
    omitted: BTreeMap<Section, usize>,
}

impl Sampler {
    pub fn new(config: PageConfig) -> Sampler {
        Sampler {
            config,
            times: VecDeque::new(),
            rows: BTreeMap::new(),
            omitted: BTreeMap::new(),
        }
    }

    /// Reads one `/metrics` text (in parts, as rendered, so that a large collector's is not copied) taken
    /// at `now_ms` and returns the view's JSON document.
    pub fn sample(&mut self, parts: &[&str], now_ms: i64) -> Bytes {
        let mut raw: BTreeMap<(Section, Vec<String>), Raw> = BTreeMap::new();
        let mut per_section: BTreeMap<Section, usize> = BTreeMap::new();
        let mut omitted: BTreeMap<Section, usize> = BTreeMap::new();
        for line in parts.iter().flat_map(|p| p.lines()) {
            // Cheap rejection before parsing labels: most lines of a large collector are partitions.
            let name = line.split(['{', ' ']).next().unwrap_or("");
            if !is_viewed(name) {
                continue;
            }
            let Some(l) = parse_line(line) else { continue };
            let Some((section, feed)) = route(&l) else { continue };
            let key = (section, row_key(section, &l));
            if !raw.contains_key(&key) {
                let n = per_section.entry(section).or_default();
                if *n >= MAX_ROWS {
                    *omitted.entry(section).or_default() += 1;
                    continue;
                }
                *n += 1;
            }
            feed(raw.entry(key).or_default(), &l);
        }
        self.omitted = omitted;
        self.times.push_back(now_ms);
        while self.times.len() > HISTORY_POINTS {
            self.times.pop_front();
        }
        let len = self.times.len();
        // Rows that went away: their charts carry on empty until they have nothing left to show.
        self.rows.retain(|key, row| {
            if !raw.contains_key(key) {
                row.window.clear();
            }
            row.present() || row.history.values().any(|h| h.iter().any(Option::is_some))
        });
        for (key, r) in raw {
            let row = self.rows.entry(key).or_default();
            row.window.push_back((now_ms, r));
            while row.window.len() > WINDOW_POINTS {
                row.window.pop_front();
            }
        }
        for ((section, _), row) in self.rows.iter_mut() {
            for (name, value) in charts(*section, row) {
                row.chart(name, value, len);
            }
        }
        Bytes::from(serde_json::to_vec(&self.document(now_ms)).unwrap_or_default())
    }

    fn document(&self, now_ms: i64) -> Value {
        let mut doc = Map::new();
        doc.insert("version".into(), json!(1));
        doc.insert("role".into(), json!(self.config.role));
        doc.insert("taken_at_ms".into(), json!(now_ms));
        doc.insert("interval_seconds".into(), json!(SAMPLE_EVERY.as_secs()));
        doc.insert("window_seconds".into(), json!(SAMPLE_EVERY.as_secs() * (WINDOW_POINTS as u64 - 1)));
        doc.insert("trace_url".into(), json!(self.config.trace_url));
        doc.insert("times_ms".into(), json!(self.times));
        let omitted: Map<String, Value> = Section::ALL
            .iter()
            .map(|s| (s.name().to_string(), json!(self.omitted.get(s).copied().unwrap_or(0))))
            .collect();
        doc.insert("omitted".into(), Value::Object(omitted));
        for section in Section::ALL {
            let rows: Vec<Value> = self
                .rows
                .iter()
                .filter(|((s, _), row)| *s == section && row.present())
                .map(|((s, key), row)| {
                    let mut o: Map<String, Value> = s.keys().iter().zip(key).map(|(k, v)| (k.to_string(), json!(v))).collect();
                    o.extend(values(*s, row));
                    let history: Map<String, Value> = row.history.iter().map(|(k, h)| (k.to_string(), json!(h))).collect();
                    o.insert("history".into(), Value::Object(history));
                    Value::Object(o)
                })
                .collect();
            doc.insert(section.name().into(), Value::Array(rows));
        }
        Value::Object(doc)
    }
}

/// The families the view reads (before a line is parsed).
fn is_viewed(name: &str) -> bool {
    name.starts_with("kafka_consumergroup_lag")
        || name == m::GROUP_STATUS.name
        || name.starts_with("eventscope_")
        || name.starts_with("http_request")
}

fn finite(v: Option<f64>) -> Value {
    v.filter(|v| v.is_finite()).map_or(Value::Null, |v| json!(v))
}

fn quantiles(b: Option<&Vec<(f64, f64)>>, qs: &[(&str, f64)]) -> Value {
    let mut o: Map<String, Value> = qs
        .iter()
        .map(|(k, q)| (k.to_string(), finite(b.and_then(|b| quantile(b, *q)))))
        .collect();
    o.insert("count".into(), json!(b.and_then(|b| b.last()).map_or(0.0, |l| l.1)));
    Value::Object(o)
}

/// Counters named `prefix:a:b` as nested objects `{a: {b: n}}` (or `{a: n}`).
fn nested(raw: &Raw, prefix: &str) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in raw.counters.iter().chain(&raw.gauges) {
        let Some(rest) = k.strip_prefix(prefix).and_then(|r| r.strip_prefix(':')) else {
            continue;
        };
        match rest.split_once(':') {
            Some((a, b)) => {
                let e = out.entry(a.to_string()).or_insert_with(|| json!({}));
                e[b] = json!(v);
            }
            None => {
                out.insert(rest.to_string(), json!(v));
            }
        }
    }
    out
}

/// Records that carry a trace context after the sidecar (continued or started), over all, per direction.
fn coverage(trace: &Map<String, Value>) -> Map<String, Value> {
    trace
        .iter()
        .map(|(direction, contexts)| {
            let n = |c: &str| contexts.get(c).and_then(Value::as_f64).unwrap_or(0.0);
            let total: f64 = contexts.as_object().map_or(0.0, |o| o.values().filter_map(Value::as_f64).sum());
            let covered = n("continued") + n("started");
            (direction.clone(), finite((total > 0.0).then(|| covered / total)))
        })
        .collect()
}

/// A row's current values for the document.
fn values(section: Section, row: &Row) -> Map<String, Value> {
    let Some(now) = row.now() else { return Map::new() };
    let g = |k: &str| finite(now.gauges.get(k).copied());
    let mut o = Map::new();
    let mut put = |k: &str, v: Value| {
        o.insert(k.to_string(), v);
    };
    match section {
        Section::Kafka | Section::Backlogs => {
            if section == Section::Kafka {
                put("lag", g("lag"));
                put("lag_seconds", g("lag_seconds"));
            } else {
                put("messages", g("messages"));
                put("age_seconds", g("age_seconds"));
                put("drain_seconds", g("drain_seconds"));
            }
            put("status", json!(now.status));
            let cw = row.window_buckets("consistency");
            if cw.is_some() || section == Section::Kafka {
                put(
                    "consistency_window_seconds",
                    quantiles(cw.as_ref(), &[("p50", 0.5), ("p95", 0.95), ("p99", 0.99)]),
                );
            }
        }
        Section::Sagas => {
            put("started", finite(now.counters.get("started").copied()));
            put("ended", Value::Object(nested(now, "ended")));
            put("in_flight", g("in_flight"));
            put("stuck", g("stuck"));
            put("stuck_by_step", Value::Object(nested(now, "stuck")));
            put("up", g("up"));
            let d = row.window_buckets("duration_completed");
            put("duration_completed_seconds", quantiles(d.as_ref(), &[("p50", 0.5), ("p99", 0.99)]));
        }
        Section::Topics => {
            put("produced_per_second", finite(row.rate("produced")));
            put("delivered_per_second", finite(row.rate("delivered")));
            put("produced", finite(now.counters.get("produced").copied()));
            put("delivered", finite(now.counters.get("delivered").copied()));
            put("produce_errors", finite(now.counters.get("produce_errors").copied()));
            let d = row.window_buckets("delivery_latency");
            put("delivery_latency_seconds", quantiles(d.as_ref(), &[("p50", 0.5), ("p99", 0.99)]));
            let trace = nested(now, "trace");
            put("trace_context_coverage", Value::Object(coverage(&trace)));
            put("trace_context", Value::Object(trace));
        }
        Section::Routes => {
            let requests = row.window_delta("requests");
            let errors = row.window_delta("errors").unwrap_or(0.0);
            let error_rate = requests.filter(|r| *r > 0.0).map(|r| errors / r);
            let d = row.window_buckets("duration");
            put("requests", finite(now.counters.get("requests").copied()));
            put("errors", finite(Some(now.counters.get("errors").copied().unwrap_or(0.0))));
            put("requests_per_second", finite(row.rate("requests")));
            put("error_rate", finite(error_rate));
            put("availability", finite(error_rate.map(|e| 1.0 - e)));
            put("p99_seconds", finite(d.as_ref().and_then(|b| quantile(b, 0.99))));
            put("p99_target_seconds", json!(LATENCY_TARGET_SECONDS));
            put(
                "within_target",
                finite(d.as_ref().and_then(|b| fraction_within(b, LATENCY_TARGET_SECONDS))),
            );
        }
        Section::HttpTraceContext => {
            let contexts = nested(now, "context");
            let total: f64 = contexts.values().filter_map(Value::as_f64).sum();
            let continued = contexts.get("continued").and_then(Value::as_f64).unwrap_or(0.0);
            put("coverage", finite((total > 0.0).then(|| continued / total)));
            put("requests", Value::Object(contexts));
        }
    }
    o
}

/// The charts of a row, one point per sample.
fn charts(section: Section, row: &Row) -> Vec<(&'static str, Option<f64>)> {
    let now = row.now();
    let g = |k: &str| now.and_then(|r| r.gauges.get(k).copied());
    let p99 = |h: &str| row.window_buckets(h).and_then(|b| quantile(&b, 0.99));
    match section {
        Section::Kafka => vec![
            ("lag", g("lag")),
            ("lag_seconds", g("lag_seconds")),
            ("consistency_window_p99", now.and_then(|_| p99("consistency"))),
        ],
        Section::Backlogs => vec![("messages", g("messages")), ("age_seconds", g("age_seconds"))],
        Section::Sagas => vec![("in_flight", g("in_flight")), ("stuck", g("stuck"))],
        Section::Topics => vec![
            ("produced_per_second", now.and_then(|_| row.instant_rate("produced"))),
            ("delivered_per_second", now.and_then(|_| row.instant_rate("delivered"))),
            ("delivery_latency_p99", now.and_then(|_| p99("delivery_latency"))),
        ],
        Section::Routes => vec![
            ("requests_per_second", now.and_then(|_| row.instant_rate("requests"))),
            ("p99_seconds", now.and_then(|_| p99("duration"))),
        ],
        Section::HttpTraceContext => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The view reads the metric contract's series and nothing else: renaming one there without here fails.
    #[test]
    fn the_view_reads_exported_series_only() {
        fn line(name: &str) -> Line<'_> {
            Line {
                name,
                labels: vec![("le", "1".into())],
                value: 1.0,
            }
        }
        let names: Vec<String> = m::exported_names()
            .into_iter()
            .map(String::from)
            .chain(m::HISTOGRAMS.iter().map(|h| format!("{h}_bucket")))
            .collect();
        let read: Vec<&String> = names.iter().filter(|n| route(&line(n.as_str())).is_some()).collect();
        for want in [
            format!("{}_bucket", m::CONSISTENCY_WINDOW.name),
            format!("{}_bucket", m::DELIVERY_LATENCY),
            format!("{}_bucket", m::HTTP_REQUEST_DURATION),
            format!("{}_bucket", m::SAGA_DURATION),
            m::GROUP_LAG.name.to_string(),
            m::HTTP_REQUESTS.to_string(),
            m::SAGA_STUCK.to_string(),
            m::PRODUCED_RECORDS.to_string(),
        ] {
            assert!(read.contains(&&want), "{want} is not read");
        }
        assert_eq!(read.len(), 22, "{read:?}");
    }

    #[test]
    fn quantiles_interpolate_as_promql() {
        let b = [(0.1, 50.0), (0.5, 90.0), (1.0, 100.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile(&b, 0.5), Some(0.1));
        assert!((quantile(&b, 0.7).unwrap() - 0.3).abs() < 1e-9);
        assert_eq!(quantile(&b, 0.99), Some(0.95));
        assert_eq!(quantile(&[(1.0, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
        assert_eq!(quantile(&[(1.0, 0.0), (f64::INFINITY, 4.0)], 0.5), Some(1.0));
        assert_eq!(fraction_within(&b, 0.5), Some(0.9));
    }

    fn text(lag: u64, requests: u64, errors: u64) -> String {
        format!(
            r#"kafka_consumergroup_lag{{cluster="c",consumergroup="g",topic="t",partition="0"}} {lag}
kafka_consumergroup_lag{{cluster="c",consumergroup="g",topic="t",partition="1"}} 10
kafka_consumergroup_lag_seconds{{cluster="c",consumergroup="g",topic="t",partition="0"}} 4
kafka_consumergroup_lag_seconds{{cluster="c",consumergroup="g",topic="t",partition="1"}} 7.5
kafka_consumergroup_status{{cluster="c",consumergroup="g",topic="t",status="OK"}} 0
kafka_consumergroup_status{{cluster="c",consumergroup="g",topic="t",status="STALL"}} 1
kafka_consumergroup_lag{{cluster="c",consumergroup="g",topic="t",partition="0",source="sidecar"}} 3
http_requests_total{{service="s",method="GET",route="/a",status="200"}} {requests}
http_requests_total{{service="s",method="GET",route="/a",status="503"}} {errors}
eventscope_saga_stuck{{cluster="c",saga="order",step="PaymentProcessed"}} 2
eventscope_saga_stuck{{cluster="c",saga="order",step="OrderCreated"}} 1
"#
        )
    }

    #[test]
    fn rows_values_rates_and_history() {
        let mut s = Sampler::new(PageConfig {
            role: "collector",
            trace_url: Some("https://t/{trace_id}".into()),
        });
        s.sample(&[&text(100, 90, 10)], 0);
        let doc: Value = serde_json::from_slice(&s.sample(&[&text(250, 180, 20)], 5000)).unwrap();
        let kafka = doc["kafka"].as_array().unwrap();
        assert_eq!(kafka.len(), 2, "collector and sidecar rows: {kafka:?}");
        let c = &kafka[0];
        assert_eq!((c["source"].as_str(), c["consumergroup"].as_str()), (Some("collector"), Some("g")));
        assert_eq!(c["lag"], 260.0);
        assert_eq!(c["lag_seconds"], 7.5);
        assert_eq!(c["status"], "STALL");
        assert_eq!(c["history"]["lag"], json!([110.0, 260.0]));
        assert_eq!(kafka[1]["source"], "sidecar");
        let r = &doc["routes"][0];
        assert_eq!(r["requests_per_second"], 20.0);
        assert_eq!(r["error_rate"], 0.1);
        assert_eq!(r["availability"], 0.9);
        assert_eq!(doc["sagas"][0]["stuck"], 3.0);
        assert_eq!(doc["sagas"][0]["stuck_by_step"]["PaymentProcessed"], 2.0);
        assert_eq!(doc["times_ms"], json!([0, 5000]));
        assert_eq!(doc["trace_url"], "https://t/{trace_id}");
    }

    #[test]
    fn rows_are_bounded_and_go_when_their_series_do() {
        let mut s = Sampler::new(PageConfig::default());
        let many: String = (0..MAX_ROWS + 20)
            .map(|i| format!("kafka_consumergroup_lag{{cluster=\"c\",consumergroup=\"g{i}\",topic=\"t\",partition=\"0\"}} 1\n"))
            .collect();
        let doc: Value = serde_json::from_slice(&s.sample(&[&many], 0)).unwrap();
        assert_eq!(doc["kafka"].as_array().unwrap().len(), MAX_ROWS);
        assert_eq!(doc["omitted"]["kafka"], 20);
        for i in 1..=HISTORY_POINTS + 5 {
            s.sample(&[], i as i64 * 5000);
        }
        assert!(s.rows.is_empty(), "gone rows are dropped once their charts are empty");
        assert_eq!(s.times.len(), HISTORY_POINTS);
    }
}
