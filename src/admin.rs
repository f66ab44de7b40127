//! The admin HTTP server (hyper): `/metrics` in the Prometheus text format, `/healthz` (the process is
//! alive) and `/readyz` (every cluster has had one successful collection).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::collector::Shared;

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds the admin address. Done before anything else starts, so a taken port fails fast.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `shutdown` turns true, then stops accepting; open connections finish their request.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let shared = shared.clone();
        let mut conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, shared.clone()));
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => { if let Err(e) = r { tracing::debug!(error = %e, "admin connection"); } }
                _ = conn_shutdown.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let response = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let (series, own) = tokio::task::spawn_blocking(move || shared.render_metrics())
                .await
                .unwrap_or_default();
            let frames = vec![Ok::<_, Infallible>(Frame::data(series)), Ok(Frame::data(Bytes::from(own)))];
            Response::builder()
                .header("content-type", TEXT_FORMAT)
                .body(StreamBody::new(futures::stream::iter(frames)).boxed())
        }
        (&Method::GET, "/healthz") => Response::builder().body(full(Bytes::from_static(b"ok\n"))),
        (&Method::GET, "/readyz") => {
            if shared.ready() {
                Response::builder().body(full(Bytes::from_static(b"ready\n")))
            } else {
                let waiting: Vec<&str> = shared
                    .clusters
                    .iter()
                    .filter(|c| !c.ready.load(std::sync::atomic::Ordering::Relaxed))
                    .map(|c| c.name.as_str())
                    .collect();
                Response::builder()
                    .status(StatusCode::SERVICE_UNAVAILABLE)
                    .body(full(Bytes::from(format!(
                        "waiting for a first collection of: {}\n",
                        waiting.join(", ")
                    ))))
            }
        }
        (_, "/metrics" | "/healthz" | "/readyz") => Response::builder().status(StatusCode::METHOD_NOT_ALLOWED).body(full(Bytes::new())),
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(full(Bytes::from_static(b"not found: try /metrics, /healthz, /readyz\n"))),
    };
    Ok(response.unwrap_or_else(|_| Response::new(full(Bytes::new()))))
}

fn full(b: Bytes) -> BoxBody<Bytes, Infallible> {
    Full::new(b).boxed()
}
