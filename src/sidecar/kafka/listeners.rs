//! The proxy's broker listeners: one per broker named in a response, so that a client connecting to
//! "broker 2" reaches broker 2 through the sidecar.
//!
//! - A broker's listener takes `kafka_listen`'s port + 1 + node id when that port is free (as
//!   Kroxylicious does), so a broker that leaves and comes back gets the same port again.
//! - At most [`MAX_BROKER_LISTENERS`] at once: node ids come from the network.
//! - A broker gone from the cluster's broker list (a Metadata or DescribeCluster response) has its
//!   listener closed; connections already open through it carry on until they end.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::net::TcpListener;
use tokio::task::AbortHandle;

/// Broker listeners open at once, at most.
pub const MAX_BROKER_LISTENERS: usize = 256;

struct Route {
    upstream: String,
    local_port: u16,
    accept: AbortHandle,
}

/// Why no listener could be given for a broker.
#[derive(Debug, PartialEq, Eq)]
pub enum NoListener {
    /// [`MAX_BROKER_LISTENERS`] are open.
    Full,
    /// No port could be bound.
    Bind(String),
}

impl std::fmt::Display for NoListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoListener::Full => write!(f, "{MAX_BROKER_LISTENERS} broker listeners are open already"),
            NoListener::Bind(e) => write!(f, "cannot bind a broker listener: {e}"),
        }
    }
}

/// The broker listeners of one proxy.
pub struct Listeners {
    listen: SocketAddr,
    routes: Mutex<HashMap<i32, Route>>,
    runtime: tokio::runtime::Handle,
}

impl Listeners {
    pub fn new(listen: SocketAddr, runtime: tokio::runtime::Handle) -> Listeners {
        Listeners {
            listen,
            routes: Mutex::new(HashMap::new()),
            runtime,
        }
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Route>> {
        // Routes are replaced whole under the lock: a panic elsewhere leaves them usable.
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The local port serving `node_id`, opening a listener when there is none: `accept` starts its
    /// accept loop (on the proxy's runtime) and returns the task to abort when the broker goes away.
    pub fn ensure(&self, node_id: i32, upstream: String, accept: impl FnOnce(TcpListener) -> AbortHandle) -> Result<u16, NoListener> {
        let mut routes = self.routes();
        if let Some(r) = routes.get_mut(&node_id) {
            // A broker that moved keeps its local port.
            r.upstream = upstream;
            return Ok(r.local_port);
        }
        if routes.len() >= MAX_BROKER_LISTENERS {
            return Err(NoListener::Full);
        }
        let ip = self.listen.ip();
        let preferred = (node_id >= 0)
            .then(|| self.listen.port() as i64 + 1 + node_id as i64)
            .filter(|p| *p < 65536 && self.listen.port() != 0);
        let bind = |port: u16| std::net::TcpListener::bind(SocketAddr::new(ip, port));
        let std_listener = match preferred.and_then(|p| bind(p as u16).ok()) {
            Some(l) => l,
            None => bind(0).map_err(|e| NoListener::Bind(e.to_string()))?,
        };
        std_listener.set_nonblocking(true).map_err(|e| NoListener::Bind(e.to_string()))?;
        let local_port = std_listener.local_addr().map_err(|e| NoListener::Bind(e.to_string()))?.port();
        let listener = {
            let _guard = self.runtime.enter();
            TcpListener::from_std(std_listener).map_err(|e| NoListener::Bind(e.to_string()))?
        };
        tracing::info!(node_id, %upstream, local_port, "kafka proxy: listener for broker");
        let accept = {
            let _guard = self.runtime.enter();
            accept(listener)
        };
        routes.insert(
            node_id,
            Route {
                upstream,
                local_port,
                accept,
            },
        );
        Ok(local_port)
    }

    /// Where broker `node_id` lives upstream, if it has a listener.
    pub fn upstream(&self, node_id: i32) -> Option<String> {
        self.routes().get(&node_id).map(|r| r.upstream.clone())
    }

    /// The local port serving `node_id`, if one is open.
    pub fn port(&self, node_id: i32) -> Option<u16> {
        self.routes().get(&node_id).map(|r| r.local_port)
    }

    /// Closes the listeners of brokers not in `present` (the cluster's whole broker list); returns the
    /// node ids whose listeners were closed.
    pub fn retain(&self, present: &[i32]) -> Vec<i32> {
        let mut closed = Vec::new();
        self.routes().retain(|node, r| {
            let keep = present.contains(node);
            if !keep {
                tracing::info!(
                    node_id = node,
                    local_port = r.local_port,
                    "kafka proxy: broker left the cluster; listener closed"
                );
                r.accept.abort();
                closed.push(*node);
            }
            keep
        });
        closed
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for r in self.routes().values() {
            r.accept.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept_forever(listener: TcpListener) -> AbortHandle {
        tokio::spawn(async move {
            loop {
                let _ = listener.accept().await;
            }
        })
        .abort_handle()
    }

    /// Defect 8: listeners were opened for every node id ever seen and never closed.
    #[tokio::test]
    async fn listeners_are_capped_and_closed_when_their_broker_leaves() {
        let l = Listeners::new("127.0.0.1:0".parse().unwrap(), tokio::runtime::Handle::current());
        for node in 0..MAX_BROKER_LISTENERS as i32 {
            l.ensure(node, format!("broker{node}:9092"), accept_forever).unwrap();
        }
        assert_eq!(l.ensure(100_000, "one-too-many:9092".into(), accept_forever), Err(NoListener::Full));
        // A known broker keeps its port even at the cap, and learns its new address.
        let port = l.port(7).unwrap();
        assert_eq!(l.ensure(7, "moved:9092".into(), accept_forever), Ok(port));
        assert_eq!(l.upstream(7).as_deref(), Some("moved:9092"));
        assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok());

        let closed = l.retain(&[1, 2]);
        assert_eq!(closed.len(), MAX_BROKER_LISTENERS - 2);
        assert_eq!(l.port(7), None);
        // The closed listener's port refuses connections once its accept loop is gone.
        let mut refused = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(refused, "port {port} still accepts after its broker left");
        // Room again: a new broker gets a listener.
        assert!(l.ensure(100_000, "new:9092".into(), accept_forever).is_ok());
    }
}
