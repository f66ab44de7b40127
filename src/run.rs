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

/// Tells every task to stop and waits for them, at most `grace`.
pub async fn drain(tx: watch::Sender<bool>, tasks: Vec<tokio::task::JoinHandle<()>>, grace: Duration) {
    tracing::info!(grace = ?grace, "shutting down");
    let _ = tx.send(true);
    if tokio::time::timeout(grace, futures::future::join_all(tasks)).await.is_err() {
        tracing::warn!("grace period over; stopping with work in flight");
    }
}
