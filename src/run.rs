//! Wiring of the roles: build, spawn, wait for SIGTERM/SIGINT, drain within the grace period.

use std::net::SocketAddr;
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
    let addr: SocketAddr = config.admin.listen.parse()?;
    let listener = crate::admin::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let registry = prometheus::Registry::new();
    crate::telemetry::register_process(&registry);
    let shared = Published::new(
        config.clusters.iter().map(|c| c.name.clone()).collect(),
        CollectorMetrics::new(&registry),
    );
    let (tx, rx) = watch::channel(false);
    let mut tasks = collector::spawn_all(&config, &shared, &rx);
    let admin = crate::admin::State::new(registry, Some(shared.clone()));
    tasks.push(tokio::spawn(crate::admin::serve(listener, admin, rx.clone())));
    tasks.push(crate::memory::spawn_release(rx.clone()));
    tracing::info!(%addr, clusters = config.clusters.len(), "collector running");
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
    let admin: SocketAddr = config.admin.listen.parse()?;
    let admin_listener = crate::admin::bind(admin)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {admin}: {e}"))?;
    let registry = &prometheus::Registry::new();
    crate::telemetry::register_process(registry);
    let (tx, rx) = watch::channel(false);
    let trace_metrics = crate::telemetry::traces::TraceMetrics::new(registry);
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let export = crate::telemetry::traces::ExportSettings::from_env(&env).map_err(|p| anyhow::anyhow!(problems("", &p)))?;
    let (tracer, export_task) = crate::telemetry::traces::Tracer::start(&export, trace_metrics.clone(), rx.clone())?;
    let mut tasks = vec![
        tokio::spawn(crate::admin::serve(
            admin_listener,
            crate::admin::State::new(registry.clone(), None),
            rx.clone(),
        )),
        crate::memory::spawn_release(rx.clone()),
    ];
    tasks.extend(export_task);

    if !sc.kafka_bootstrap.is_empty() {
        let listen: SocketAddr = sc.kafka_listen.parse()?;
        let security = crate::kafka::Security::from_properties(&sc.kafka).map_err(|p| anyhow::anyhow!(problems("sidecar.kafka.", &p)))?;
        let settings = crate::sidecar::kafka::ProxySettings {
            listen,
            advertised_host: if sc.kafka_advertised_host.is_empty() {
                crate::sidecar::kafka::default_advertised_host(&listen)
            } else {
                sc.kafka_advertised_host.clone()
            },
            upstream_bootstrap: crate::config::split_servers(&sc.kafka_bootstrap),
            security,
            max_frame_bytes: sc.max_frame_bytes,
            max_connections: sc.max_connections,
            connect_timeout: sc.connect_timeout,
            trace_mode: sc.trace_mode,
            max_batch_bytes: sc.max_batch_bytes,
            cluster: sc.cluster.clone(),
        };
        // trace_mode = "off" turns off the Kafka side's spans; the HTTP side still traces.
        let kafka_tracer = if sc.trace_mode == crate::telemetry::traces::TraceMode::Off {
            crate::telemetry::traces::Tracer::disabled(trace_metrics.clone())
        } else {
            tracer.clone()
        };
        let proxy_metrics = crate::telemetry::kafka::ProxyMetrics::new(registry);
        let proxy = crate::sidecar::kafka::Proxy::start(settings, proxy_metrics, kafka_tracer, rx.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
        // Drained once shutdown has fired and every connection has relayed its in-flight responses.
        let mut stop = rx.clone();
        tasks.push(tokio::spawn(async move {
            let _ = stop.wait_for(|s| *s).await;
            proxy.drained().await;
        }));
        tracing::info!(kafka_listen = %listen, upstream = %sc.kafka_bootstrap, "kafka proxy running");
    }
    if sc.http.enabled() {
        let h = &sc.http;
        let settings = crate::sidecar::http::HttpSettings {
            listen: h.listen.parse()?,
            upstream: h.upstream.clone(),
            service: service_name(&h.service, &env),
            routes: h.routes.clone(),
            max_routes: h.max_routes,
            connect_timeout: h.connect_timeout,
            response_timeout: h.response_timeout,
            header_read_timeout: h.header_read_timeout,
            idle_timeout: h.idle_timeout,
            max_header_bytes: h.max_header_bytes,
            max_connections: h.max_connections,
            outbound_listen: if h.outbound_listen.is_empty() {
                None
            } else {
                Some(h.outbound_listen.parse()?)
            },
            upstream_protocol: h.upstream_protocol,
        };
        let metrics = crate::telemetry::http::HttpMetrics::new(registry);
        let (_, task) = crate::sidecar::http::HttpProxy::start(settings, metrics, tracer.clone(), rx.clone()).await?;
        tasks.push(task);
    }
    tracing::info!(%admin, "sidecar running");
    shutdown_signal().await;
    drain(tx, tasks, config.admin.shutdown_grace).await;
    Ok(())
}

/// `(key, reason)` problems as a user reads them: `key: reason`, one per line.
fn problems(prefix: &str, list: &[(String, String)]) -> String {
    list.iter()
        .map(|(k, why)| format!("{prefix}{k}: {why}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `service` label: the configured name, else `OTEL_SERVICE_NAME`, else OpenTelemetry's default.
fn service_name(configured: &str, env: &std::collections::HashMap<String, String>) -> String {
    if !configured.is_empty() {
        return configured.to_string();
    }
    env.get("OTEL_SERVICE_NAME")
        .filter(|s| !s.trim().is_empty())
        .cloned()
        .unwrap_or_else(|| "unknown_service".to_string())
}

/// Tells every task to stop and waits for them, at most `grace`.
pub async fn drain(tx: watch::Sender<bool>, tasks: Vec<tokio::task::JoinHandle<()>>, grace: Duration) {
    tracing::info!(grace = ?grace, "shutting down");
    let _ = tx.send(true);
    if tokio::time::timeout(grace, futures::future::join_all(tasks)).await.is_err() {
        tracing::warn!("grace period over; stopping with work in flight");
    }
}
