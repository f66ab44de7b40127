//! Wiring of the roles: build, spawn, wait for SIGTERM/SIGINT, drain within the grace period.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;

use crate::collector::{self, Shared};
use crate::config::Config;
use crate::metrics::SelfMetrics;

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
    let shared = Shared::new(config.clusters.iter().map(|c| c.name.clone()).collect(), SelfMetrics::new());
    let (tx, rx) = watch::channel(false);
    let mut tasks = collector::spawn_all(&config, &shared, &rx);
    tasks.push(tokio::spawn(crate::admin::serve(listener, shared.clone(), rx.clone())));
    tracing::info!(%addr, clusters = config.clusters.len(), "collector running");
    shutdown_signal().await;
    drain(tx, tasks, config.admin.shutdown_grace).await;
    Ok(())
}

/// Runs the sidecar role until a shutdown signal.
pub async fn sidecar(config: Config) -> anyhow::Result<()> {
    let sc = config
        .sidecar
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no [sidecar] configuration"))?;
    let admin: SocketAddr = config.admin.listen.parse()?;
    let listen: SocketAddr = sc.kafka_listen.parse()?;
    let admin_listener = crate::admin::bind(admin)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {admin}: {e}"))?;
    let self_metrics = SelfMetrics::new();
    let proxy_metrics = crate::metrics::ProxyMetrics::new(&self_metrics.registry);
    let shared = Shared::new(Vec::new(), self_metrics);
    let (tx, rx) = watch::channel(false);
    let security = crate::kafka::Security::from_properties(&sc.kafka).map_err(|p| anyhow::anyhow!("sidecar.kafka: {p:?}"))?;
    let settings = crate::proxy::ProxySettings {
        listen,
        advertised_host: if sc.kafka_advertised_host.is_empty() {
            crate::proxy::default_advertised_host(&listen)
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
    let trace_metrics = crate::metrics::TraceMetrics::new(&shared.self_metrics.registry);
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let export = crate::traces::ExportSettings::from_env(&env).map_err(|p| anyhow::anyhow!("{p:?}"))?;
    let (tracer, export_task) = if sc.trace_mode == crate::traces::TraceMode::Off {
        (crate::traces::Tracer::disabled(trace_metrics), None)
    } else {
        crate::traces::Tracer::start(&export, trace_metrics, rx.clone())?
    };
    let _proxy = crate::proxy::Proxy::start(settings, proxy_metrics, tracer, rx.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let mut tasks = vec![tokio::spawn(crate::admin::serve(admin_listener, shared.clone(), rx.clone()))];
    tasks.extend(export_task);
    tracing::info!(kafka_listen = %listen, upstream = %sc.kafka_bootstrap, %admin, "sidecar running");
    shutdown_signal().await;
    drain(tx, tasks, config.admin.shutdown_grace).await;
    Ok(())
}

/// Tells every task to stop and waits for them, at most `grace`.
pub async fn drain(tx: watch::Sender<bool>, tasks: Vec<tokio::task::JoinHandle<()>>, grace: Duration) {
    tracing::info!(grace = ?grace, "shutting down");
    let _ = tx.send(true);
    if tokio::time::timeout(grace, futures::future::join_all(tasks)).await.is_err() {
        tracing::warn!("grace period over; stopping with work in flight");
    }
}
