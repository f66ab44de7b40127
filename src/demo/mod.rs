//! `eventscope demo`: the collector on an embedded Kafka, with no Kafka to install.
//!
//! librdkafka's mock cluster (real protocol code, in-process, on 127.0.0.1) carries an order stream.
//! Three consumer groups read it the way rust-rdkafka recommends (offsets stored only after a record is
//! processed, committed in the background): `inventory-service` keeps up, `order-readmodel` is too slow
//! and its lag grows past the seed's 10,000-message threshold, `payment-notifier` stops after 20 s. The
//! collector watches them (the mock cannot list or describe groups, so the demo names them), serves
//! `/metrics`, and the demo prints a table of what it sees.
//!
//! The services reach the cluster through an embedded sidecar (the Kafka proxy of `eventscope sidecar`,
//! on 127.0.0.1), as they would in their pods: the sidecar measures lag, lag seconds and consistency
//! windows from their own traffic, carries their `traceparent` on, and serves its own `/metrics` on the
//! next admin port. The page at `/` shows the collector's view and the sidecar's side by side.
//!
//! The seed's order saga runs beside them ([`saga`]): choreographed over four topics, with completed,
//! compensated, inconsistent (the August incident re-enacted) and stuck orders. The collector follows it
//! from the events, the table gains a saga section and `/sagas` lists the stuck and inconsistent orders.

mod saga;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::Message;
use tokio::sync::watch;

use crate::collector::consistency::Histogram;
use crate::collector::saga::reader::Reader;
use crate::collector::{ClusterCollector, Published, Snapshot};
use crate::config::{ClusterConfig, CollectorConfig, SagaConfig};
use crate::telemetry::collector::CollectorMetrics;
use crate::telemetry::saga::SagaMetrics;

const ORDERS: &str = "orders";
const PAYMENTS: &str = "payments";

/// A consumer group of the demo and how it behaves.
struct DemoGroup {
    group: &'static str,
    topic: &'static str,
    /// Processing time per record.
    per_record: Duration,
    /// Stop consuming (leave the group) after this long.
    stop_after: Option<Duration>,
}

const GROUPS: &[DemoGroup] = &[
    DemoGroup {
        group: "inventory-service",
        topic: ORDERS,
        per_record: Duration::ZERO,
        stop_after: None,
    },
    DemoGroup {
        group: "order-readmodel",
        topic: ORDERS,
        per_record: Duration::from_micros(2500),
        stop_after: None,
    },
    DemoGroup {
        group: "payment-notifier",
        topic: PAYMENTS,
        per_record: Duration::ZERO,
        stop_after: Some(Duration::from_secs(20)),
    },
];

/// What `eventscope demo` is given.
pub struct DemoOptions {
    /// The collector's admin address (the page, `/metrics`); the sidecar's is the next port.
    pub admin_listen: String,
    /// Stop after this many seconds.
    pub duration: Option<u64>,
    /// Seconds between two tables.
    pub every: u64,
    /// The page's trace links (`ui.trace_url`).
    pub trace_url: Option<String>,
}

pub async fn run(o: DemoOptions) -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = o.admin_listen.parse()?;
    if let Some(Err(why)) = o.trace_url.as_deref().map(crate::config::validate::check_trace_url) {
        anyhow::bail!("--trace-url {why}");
    }
    let listener = crate::admin::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    // The sidecar's admin server: the next port, or any free one if that is taken.
    let next = std::net::SocketAddr::new(addr.ip(), addr.port().wrapping_add(1));
    let sidecar_listener = match crate::admin::bind(next).await {
        Ok(l) => l,
        Err(_) => crate::admin::bind(std::net::SocketAddr::new(addr.ip(), 0))
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {} (the sidecar's admin port): {e}", addr.ip()))?,
    };
    let sidecar_admin = sidecar_listener.local_addr()?;
    let mock: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1)?;
    mock.create_topic(ORDERS, 6, 1)?;
    mock.create_topic(PAYMENTS, 3, 1)?;
    for t in saga::TOPICS {
        mock.create_topic(t, 3, 1)?;
    }
    let bootstrap = mock.bootstrap_servers();
    let (tx, rx) = watch::channel(false);

    // The services' sidecar: they connect to it, it relays to the cluster.
    let sidecar_registry = prometheus::Registry::new();
    crate::telemetry::register_process(&sidecar_registry);
    let proxy_metrics = crate::telemetry::kafka::ProxyMetrics::new(&sidecar_registry);
    let sidecar_series = crate::admin::Series {
        registry: sidecar_registry.clone(),
        written: vec![proxy_metrics.consume.partitions.clone()],
    };
    let (proxy, through, export_task) = start_sidecar(&bootstrap, &sidecar_registry, proxy_metrics, rx.clone()).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = vec![
        spawn_producer(through.clone(), stop.clone())?,
        saga::spawn(through.clone(), stop.clone())?,
    ];
    for g in GROUPS {
        threads.push(spawn_consumer(through.clone(), g, stop.clone())?);
    }

    let cluster: ClusterConfig = toml::from_str(&format!(
        "name = \"demo\"\ngroups = [{}]\nkafka = {{ \"bootstrap.servers\" = \"{bootstrap}\" }}",
        GROUPS.iter().map(|g| format!("\"{}\"", g.group)).collect::<Vec<_>>().join(", ")
    ))?;
    let settings = CollectorConfig {
        poll_interval: Duration::from_secs(2),
        status_window: 5,
        ..CollectorConfig::default()
    };
    let registry = prometheus::Registry::new();
    crate::telemetry::register_process(&registry);
    let order_saga: SagaConfig = toml::from_str(saga::CONFIG)?;
    let shared = Published::new(
        vec!["demo".into()],
        Vec::new(),
        CollectorMetrics::new(&registry),
        &[("demo".into(), order_saga.name.clone())],
    );
    let saga_metrics = SagaMetrics::new(&registry);
    let reader = Reader::new(
        0,
        order_saga,
        &cluster,
        &settings,
        saga_metrics.clone(),
        shared.metrics().clone(),
        shared.sagas().clone(),
    );
    let page = crate::admin::view::PageConfig {
        role: "demo",
        trace_url: o.trace_url.clone(),
    };
    // The page beside the collector shows the sidecar's series too; each `/metrics` stays its own role's.
    let admin = crate::admin::State::new(registry, Some(shared.clone()))
        .with_page(page.clone())
        .with_page_also(sidecar_series.clone());
    let sidecar_page = crate::admin::view::PageConfig { role: "sidecar", ..page };
    let sidecar_state = crate::admin::State::new(sidecar_series, None).with_page(sidecar_page);
    let mut tasks = vec![
        tokio::spawn(ClusterCollector::new(0, cluster, settings, shared.clone()).run(rx.clone())),
        tokio::spawn(reader.run(rx.clone())),
        tokio::spawn(crate::admin::serve(listener, admin, rx.clone())),
        tokio::spawn(crate::admin::serve(sidecar_listener, sidecar_state, rx.clone())),
    ];
    tasks.extend(export_task);
    println!("eventscope demo: librdkafka mock cluster on {bootstrap}, the services' sidecar on {through}; Ctrl-C to stop");
    println!("metrics: the collector's on http://{addr}/metrics, the sidecar's on http://{sidecar_admin}/metrics");
    println!("groups: inventory-service keeps up, order-readmodel is slow (lag passes 10,000), payment-notifier stops at 20 s");
    println!("saga \"order\": most orders complete, some payments are declined and compensated; the inventory service is offline");
    println!("from 5 s to 15 s of every minute, so some failed orders keep their reservation (inconsistent); a few stop midway (stuck)");
    println!("stuck and inconsistent orders, with their trace ids: http://{addr}/sagas");
    println!("the page (both views, live): http://{addr}/\n");

    let started = Instant::now();
    let mut previous: HashMap<(String, String), Histogram> = HashMap::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(o.every.max(1)));
    ticker.tick().await;
    let signal = crate::run::shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = &mut signal => break,
        }
        if let Some(s) = shared.snapshots().first() {
            print!("{}", table(s, started.elapsed(), &mut previous));
            print!("{}", saga_table(&saga_metrics, "demo", "order"));
            println!("         page: http://{addr}/\n");
        }
        if o.duration.is_some_and(|d| started.elapsed() >= Duration::from_secs(d)) {
            break;
        }
    }
    // The services stop first, through their sidecar (their last commits go through it), then the rest.
    stop.store(true, Ordering::Relaxed);
    tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await?;
    let mut stopped = rx.clone();
    tasks.push(tokio::spawn(async move {
        let _ = stopped.wait_for(|s| *s).await;
        proxy.drained().await;
    }));
    crate::run::drain(tx, tasks, Duration::from_secs(5)).await;
    drop(mock);
    Ok(())
}

type Sidecar = (Arc<crate::sidecar::kafka::Proxy>, String, Option<tokio::task::JoinHandle<()>>);

/// Starts the services' sidecar towards `bootstrap` on a free port of 127.0.0.1: the proxy, where the
/// services connect, and its span export (over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, else
/// nowhere: the trace context is still carried on).
async fn start_sidecar(
    bootstrap: &str,
    registry: &prometheus::Registry,
    proxy_metrics: crate::telemetry::kafka::ProxyMetrics,
    rx: watch::Receiver<bool>,
) -> anyhow::Result<Sidecar> {
    use crate::telemetry::traces::{ExportSettings, TraceMetrics, Tracer};
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let settings = crate::config::SidecarConfig {
        kafka_bootstrap: crate::config::Servers::parse(bootstrap).map_err(|e| anyhow::anyhow!(e))?,
        kafka_listen: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        kafka_advertised_host: "127.0.0.1".into(),
        cluster: "demo".into(),
        ..Default::default()
    };
    let metrics = TraceMetrics::new(registry);
    let env: HashMap<String, String> = std::env::vars().collect();
    let exporting = env.contains_key("OTEL_EXPORTER_OTLP_ENDPOINT") || env.contains_key("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let (tracer, export_task) = if exporting {
        let export = ExportSettings::from_env(&env).map_err(|p| anyhow::anyhow!(crate::run::problems(&p)))?;
        Tracer::start(&export, metrics, rx.clone())?
    } else {
        (Tracer::disabled(metrics), None)
    };
    let proxy = crate::sidecar::kafka::Proxy::start(settings, proxy_metrics, tracer, rx)
        .await
        .map_err(|e| anyhow::anyhow!("the demo's sidecar cannot listen on 127.0.0.1:{port}: {e}"))?;
    Ok((proxy, format!("127.0.0.1:{port}"), export_task))
}

/// The live table: lag, lag seconds, status, and the consistency window quantiles since the last table.
pub fn table(s: &Snapshot, elapsed: Duration, previous: &mut HashMap<(String, String), Histogram>) -> String {
    let mut out = format!(
        "t={:>4}s  {:<18} {:<9} {:>8} {:>8} {:<7} {:>8} {:>8} {:>8}\n",
        elapsed.as_secs(),
        "GROUP",
        "TOPIC",
        "LAG",
        "LAG_S",
        "STATUS",
        "CW_P50",
        "CW_P95",
        "CW_P99"
    );
    for g in &s.groups {
        for t in &g.topics {
            let lag: u64 = t.partitions.iter().filter_map(|p| p.lag).sum();
            let lag_s = t.partitions.iter().filter_map(|p| p.lag_seconds).fold(0.0, f64::max);
            let key = (g.group.clone(), t.topic.to_string());
            let recent = previous
                .get(&key)
                .map(|p| t.consistency.since(p))
                .unwrap_or_else(|| t.consistency.clone());
            previous.insert(key, t.consistency.clone());
            let q = |x: f64| recent.quantile(x).map(|v| format!("{v:.2}s")).unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "         {:<18} {:<9} {:>8} {:>7.1}s {:<7} {:>8} {:>8} {:>8}\n",
                g.group,
                t.topic,
                lag,
                lag_s,
                t.status.as_label(),
                q(0.5),
                q(0.95),
                q(0.99)
            ));
        }
    }
    out.push('\n');
    out
}

/// The saga section of the live table: instances started and ended by outcome, stuck now, and the p99
/// duration of the completed ones, from the series `/metrics` exports.
pub fn saga_table(m: &SagaMetrics, cluster: &str, saga: &str) -> String {
    let ended = |o: &str| m.ended.with([cluster, saga, o]).get();
    let stuck: i64 = ["OrderCreated", "InventoryReserved", "PaymentProcessed", "ShippingScheduled"]
        .iter()
        .map(|step| m.stuck.with([cluster, saga, step]).get())
        .sum();
    let h = m.duration.with([cluster, saga, "completed"]);
    let p99 = histogram_quantile(&h, 0.99)
        .map(|v| format!("{v:.2}s"))
        .unwrap_or_else(|| "-".into());
    format!(
        "         {:<8} {:>8} {:>10} {:>12} {:>13} {:>6} {:>8}\n         {:<8} {:>8} {:>10} {:>12} {:>13} {:>6} {:>8}\n\n",
        "SAGA",
        "STARTED",
        "COMPLETED",
        "COMPENSATED",
        "INCONSISTENT",
        "STUCK",
        "P99",
        saga,
        m.started.with([cluster, saga]).get(),
        ended("completed"),
        ended("compensated"),
        ended("inconsistent"),
        stuck,
        p99
    )
}

/// A quantile of a histogram as PromQL's `histogram_quantile` (the page's own, on its cumulative buckets).
fn histogram_quantile(h: &prometheus::Histogram, q: f64) -> Option<f64> {
    use prometheus::core::Collector;
    let families = h.collect();
    let metric = families.first()?.get_metric().first()?.get_histogram().clone();
    let mut buckets: Vec<(f64, f64)> = metric
        .get_bucket()
        .iter()
        .map(|b| (b.upper_bound(), b.cumulative_count() as f64))
        .collect();
    buckets.push((f64::INFINITY, metric.get_sample_count() as f64));
    crate::admin::view::quantile(&buckets, q)
}

fn spawn_producer(bootstrap: String, stop: Arc<AtomicBool>) -> anyhow::Result<thread::JoinHandle<()>> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "5")
        .create()?;
    Ok(thread::spawn(move || {
        let mut n: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            // About 800 orders and 200 payments a second.
            for _ in 0..8 {
                let key = format!("order-{}", n % 1000);
                let value = format!("{{\"order\":{n},\"event\":\"OrderCreated\"}}");
                let _ = producer.send(BaseRecord::to(ORDERS).key(&key).payload(&value));
                n += 1;
            }
            for _ in 0..2 {
                let key = format!("order-{}", n % 1000);
                let _ = producer.send(BaseRecord::to(PAYMENTS).key(&key).payload("{\"event\":\"PaymentProcessed\"}"));
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = producer.flush(Duration::from_secs(2));
    }))
}

fn spawn_consumer(bootstrap: String, g: &'static DemoGroup, stop: Arc<AtomicBool>) -> anyhow::Result<thread::JoinHandle<()>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", g.group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .create()?;
    consumer.subscribe(&[g.topic])?;
    Ok(thread::spawn(move || {
        let started = Instant::now();
        while !stop.load(Ordering::Relaxed) && g.stop_after.is_none_or(|d| started.elapsed() < d) {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    if !g.per_record.is_zero() {
                        thread::sleep(g.per_record);
                    }
                    // Processed: only now may its offset be committed.
                    let _ = consumer.store_offset_from_message(&message);
                    let _ = message.payload();
                }
                Some(Err(e)) => tracing::debug!(group = g.group, error = %e, "demo consumer"),
                None => {}
            }
        }
        let _ = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
        consumer.unsubscribe();
    }))
}
