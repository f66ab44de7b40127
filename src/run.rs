//! Wiring of the roles: build, spawn, wait for SIGTERM/SIGINT, drain within the grace period.

use std::time::Duration;

use tokio::sync::watch;

use crate::collector::{self, Published};
use crate::config::Config;
use crate::telemetry::collector::CollectorMetrics;

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Runs the collector role until a shutdown signal.
pub async fn collector(config: Config) -> anyhow::Result<()> {
    let addr = config.admin.listen;
    let listener = crate::admin::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let registry = prometheus::Registry::new();
    crate::telemetry::register_process(&registry);
    let shared = Published::new(
        config.clusters.iter().map(|c| c.name.clone()).collect(),
        collector::broker_names(&config),
        CollectorMetrics::new(&registry),
        &config.sagas.iter().map(|s| (s.cluster.clone(), s.name.clone())).collect::<Vec<_>>(),
    );
    let (tx, rx) = watch::channel(false);
    let mut tasks = collector::spawn_all(&config, &shared, &registry, &rx);
    let admin = crate::admin::State::new(registry, Some(shared.clone())).with_page(config.ui.page("collector"));
    tasks.push(tokio::spawn(crate::admin::serve(listener, admin, rx.clone())));
    tasks.push(crate::memory::spawn_release(rx.clone()));
    tracing::info!(%addr, clusters = config.clusters.len(), brokers = collector::broker_names(&config).len(), sagas = config.sagas.len(), "collector running");
    shutdown_signal().await;
    drain(tx, tasks, config.admin.shutdown_grace).await;
    Ok(())
}

/// Runs the sidecar role until a shutdown signal: the Kafka proxy (when `kafka_bootstrap` is set) and the
/// HTTP proxy (when `http.upstream` is set), one OTLP pipeline for both.
pub async fn sidecar(config: Config) -> anyhow::Result<()> {
    let sc = config
        .sidecar
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no [sidecar] configuration"))?;
    let admin = config.admin.listen;
    // The admin server, /metrics renders and the span export run on a thread of their own, never on the
    // data path's: a scrape or a batch of spans being encoded does not hold up the traffic.
    let admin_thread = AdminThread::start().map_err(|e| anyhow::anyhow!("cannot start the admin thread: {e}"))?;
    let admin_listener = admin_thread
        .handle
        .spawn(crate::admin::bind(admin))
        .await?
        .map_err(|e| anyhow::anyhow!("cannot listen on {admin}: {e}"))?;
    let registry = &prometheus::Registry::new();
    crate::telemetry::register_process(registry);
    let (tx, rx) = watch::channel(false);
    let trace_metrics = crate::telemetry::traces::TraceMetrics::new(registry);
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let export = crate::telemetry::traces::ExportSettings::from_env(&env).map_err(|p| anyhow::anyhow!(problems(&p)))?;
    let (tracer, export_task, release_task) = {
        // The exporters' connections and the export loop live on the admin thread's runtime.
        let _admin = admin_thread.handle.enter();
        let (tracer, export_task) = crate::telemetry::traces::Tracer::start(&export, trace_metrics.clone(), rx.clone())?;
        (tracer, export_task, crate::memory::spawn_release(rx.clone()))
    };
    let proxy_metrics = (!sc.kafka_bootstrap.is_empty()).then(|| crate::telemetry::kafka::ProxyMetrics::new(registry));
    let series = crate::admin::Series {
        registry: registry.clone(),
        written: proxy_metrics.iter().map(|m| m.consume.partitions.clone()).collect(),
    };
    let mut tasks = vec![
        admin_thread.handle.spawn(crate::admin::serve(
            admin_listener,
            crate::admin::State::new(series, None).with_page(config.ui.page("sidecar")),
            rx.clone(),
        )),
        release_task,
    ];
    tasks.extend(export_task);

    if let Some(proxy_metrics) = proxy_metrics {
        let listen = sc.kafka_listen;
        // trace_mode = "off" turns off the Kafka side's spans; the HTTP side still traces.
        let kafka_tracer = if sc.trace_mode == crate::telemetry::traces::TraceMode::Off {
            crate::telemetry::traces::Tracer::disabled(trace_metrics.clone())
        } else {
            tracer.clone()
        };
        let upstream = sc.kafka_bootstrap.to_string();
        let proxy = crate::sidecar::kafka::Proxy::start(sc.clone(), proxy_metrics, kafka_tracer, rx.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
        // Drained once shutdown has fired and every connection has relayed its in-flight responses.
        let mut stop = rx.clone();
        tasks.push(tokio::spawn(async move {
            let _ = stop.wait_for(|s| *s).await;
            proxy.drained().await;
        }));
        tracing::info!(kafka_listen = %listen, %upstream, "kafka proxy running");
    }
    if sc.http.enabled() {
        let metrics = crate::telemetry::http::HttpMetrics::new(registry);
        let (_, task) = crate::sidecar::http::HttpProxy::start(sc.http.clone(), metrics, tracer.clone(), rx.clone()).await?;
        tasks.push(task);
    }
    tracing::info!(%admin, "sidecar running");
    shutdown_signal().await;
    drain(tx, tasks, config.admin.shutdown_grace).await;
    drop(admin_thread);
    Ok(())
}

/// A runtime on a thread of its own for the sidecar's admin side (as linkerd2-proxy keeps its admin
/// runtime apart from the data path): the admin server, /metrics renders, the span export and handing
/// memory back. Encoding a batch of spans for OTLP takes milliseconds; on the data path's thread every
/// connection waited meanwhile (docs/benchmarks.md, "The admin side on a thread of its own"). Dropping it
/// stops the runtime and joins the thread.
struct AdminThread {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminThread {
    fn start() -> std::io::Result<AdminThread> {
        let mut builder = tokio::runtime::Builder::new_current_thread();
        // Its blocking work: /metrics renders and `malloc_trim`.
        crate::memory::one_kept_blocking_thread(&mut builder);
        let runtime = builder.enable_all().thread_name("eventscope-admin-blocking").build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("eventscope-admin".into()).spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            });
        })?;
        Ok(AdminThread {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for AdminThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `(key, reason)` problems as a user reads them: `key: reason`, one per line.
pub(crate) fn problems(list: &[(String, String)]) -> String {
    list.iter().map(|(k, why)| format!("{k}: {why}")).collect::<Vec<_>>().join("\n")
}

/// Tells every task to stop and waits for them, at most `grace`.
pub async fn drain(tx: watch::Sender<bool>, tasks: Vec<tokio::task::JoinHandle<()>>, grace: Duration) {
    tracing::info!(grace = ?grace, "shutting down");
    let _ = tx.send(true);
    if tokio::time::timeout(grace, futures::future::join_all(tasks)).await.is_err() {
        tracing::warn!("grace period over; stopping with work in flight");
    }
}
