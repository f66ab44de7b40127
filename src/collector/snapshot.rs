//! What a poll produces and the admin server reads: one [`Snapshot`] per cluster, published whole, and
//! its exposition cached until the next one.
//!
//! A cluster whose poll failed has no snapshot: its series are withdrawn rather than served stale.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;

use super::backlog::BrokerSnapshot;
use super::consistency::Histogram;
use super::status::Status;
use crate::telemetry::collector::CollectorMetrics;

/// One partition of a group in a snapshot.
#[derive(Debug, Clone)]
pub struct PartitionRow {
    pub partition: i32,
    pub committed: i64,
    /// `None` when the partition's log-end offset could not be read this poll.
    pub lag: Option<u64>,
    pub lag_seconds: Option<f64>,
}

/// A group on one topic in a snapshot.
#[derive(Debug, Clone)]
pub struct GroupTopicRow {
    pub topic: Arc<str>,
    pub status: Status,
    pub partitions: Vec<PartitionRow>,
    pub consistency: Histogram,
}

/// A consumer group in a snapshot.
#[derive(Debug, Clone)]
pub struct GroupRow {
    pub group: String,
    pub members: Option<usize>,
    pub topics: Vec<GroupTopicRow>,
}

/// A topic's partitions in a snapshot.
#[derive(Debug, Clone)]
pub struct TopicRow {
    pub topic: Arc<str>,
    /// The busiest partition's append rate over the mean, over the status window (`None`: no appends).
    pub skew: Option<f64>,
    /// Partition, log-start offset, log-end offset.
    pub partitions: Vec<(i32, Option<i64>, Option<i64>)>,
}

/// The result of one successful poll of one cluster.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub cluster: String,
    pub taken_at_ms: i64,
    pub topics: Vec<TopicRow>,
    pub groups: Vec<GroupRow>,
    /// The groups in the common backlog view (`eventscope_backlog_*{broker="kafka"}`).
    pub backlog: Vec<super::backlog::Row>,
}

/// A cluster's (or another broker's) published state.
struct Slot<T> {
    name: String,
    snapshot: Mutex<Option<Arc<T>>>,
    ready: AtomicBool,
}

impl<T> Slot<T> {
    fn new(name: String) -> Slot<T> {
        Slot {
            name,
            snapshot: Mutex::new(None),
            ready: AtomicBool::new(false),
        }
    }

    fn set(&self, snapshot: Option<Arc<T>>) {
        if snapshot.is_some() {
            self.ready.store(true, Ordering::Relaxed);
        }
        *lock(&self.snapshot) = snapshot;
    }
}

/// The clusters' latest snapshots, and their exposition rendered once per new snapshot.
pub struct Published {
    metrics: CollectorMetrics,
    sagas: Arc<super::saga::board::Board>,
    clusters: Vec<Slot<Snapshot>>,
    brokers: Vec<Slot<BrokerSnapshot>>,
    version: AtomicU64,
    cache: Mutex<(u64, Bytes)>,
}

impl Published {
    /// The slots of the `names` Kafka clusters, of the other brokers' sources (`brokers`, in the order
    /// of [`super::broker_names`]) and of the sagas, `(cluster, saga)`.
    pub fn new(names: Vec<String>, brokers: Vec<String>, metrics: CollectorMetrics, sagas: &[(String, String)]) -> Arc<Published> {
        for n in names.iter().chain(&brokers) {
            metrics.init_cluster(n);
        }
        Arc::new(Published {
            metrics,
            sagas: Arc::new(super::saga::board::Board::new(sagas)),
            clusters: names.into_iter().map(Slot::new).collect(),
            brokers: brokers.into_iter().map(Slot::new).collect(),
            version: AtomicU64::new(1),
            cache: Mutex::new((0, Bytes::new())),
        })
    }

    pub fn metrics(&self) -> &CollectorMetrics {
        &self.metrics
    }

    /// What `/sagas` lists.
    pub fn sagas(&self) -> &Arc<super::saga::board::Board> {
        &self.sagas
    }

    /// Replaces cluster `index`'s snapshot (`None`: withdraws it).
    pub fn publish(&self, index: usize, snapshot: Option<Arc<Snapshot>>) {
        self.clusters[index].set(snapshot);
        self.version.fetch_add(1, Ordering::Release);
    }

    /// Replaces broker source `index`'s snapshot (`None`: withdraws it).
    pub fn publish_broker(&self, index: usize, snapshot: Option<Arc<BrokerSnapshot>>) {
        self.brokers[index].set(snapshot);
        self.version.fetch_add(1, Ordering::Release);
    }

    pub fn snapshots(&self) -> Vec<Arc<Snapshot>> {
        self.clusters.iter().filter_map(|c| lock(&c.snapshot).clone()).collect()
    }

    pub fn broker_snapshots(&self) -> Vec<Arc<BrokerSnapshot>> {
        self.brokers.iter().filter_map(|c| lock(&c.snapshot).clone()).collect()
    }
}

/// A lock whose holder panicked still holds whole values (a snapshot is replaced, never edited).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl crate::admin::Collection for Published {
    /// The snapshot series, rendered once per new snapshot, then shared by every scrape without a copy.
    fn render(&self) -> Bytes {
        let version = self.version.load(Ordering::Acquire);
        let mut cache = lock(&self.cache);
        if cache.0 != version {
            let started = Instant::now();
            *cache = (version, super::exposition::render(&self.snapshots(), &self.broker_snapshots()));
            self.metrics.render_duration.observe(started.elapsed().as_secs_f64());
        }
        cache.1.clone()
    }

    fn waiting(&self) -> Vec<String> {
        let kafka = self
            .clusters
            .iter()
            .filter(|c| !c.ready.load(Ordering::Relaxed))
            .map(|c| c.name.clone());
        let brokers = self
            .brokers
            .iter()
            .filter(|c| !c.ready.load(Ordering::Relaxed))
            .map(|c| c.name.clone());
        kafka.chain(brokers).collect()
    }

    fn listing(&self, path: &str, query: Option<&str>) -> Option<Result<Bytes, String>> {
        use super::saga::board::Query;
        (path == "/sagas").then(|| Query::parse(query).map(|q| self.sagas.json(&q, crate::kafka::now_ms())))
    }
}
