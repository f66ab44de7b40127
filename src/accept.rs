//! Accepting client connections for the sidecar's proxies (Kafka and HTTP): under a connection limit,
//! with `TCP_NODELAY`, until shutdown. A failed accept is logged and retried; a connection over the
//! limit is closed at once and reported to the caller, which logs and counts it with its own kind.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// The next connection that fits under `permits`, or `None` once `shutdown` fires. `what` names the
/// proxy in logs; `refused` is told of every connection closed for being over the limit.
pub async fn next(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
    shutdown: &mut watch::Receiver<bool>,
    what: &str,
    refused: impl Fn(SocketAddr),
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "{what} accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return None,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused(peer);
            continue;
        };
        let _ = stream.set_nodelay(true);
        return Some((stream, peer, permit));
    }
}
