//! The admin HTTP server (hyper), apart from the data path: `/metrics` in the Prometheus text format,
//! `/healthz` (the process is alive), `/readyz` (every cluster has had one successful collection), the
//! JSON listings a collection offers (`/sagas`), and the live page: `/` (one self-contained HTML file in
//! the binary, `page.html`) and the JSON it reads, `/api/v1/view` ([`view`], documented in `docs/api.md`).
//!
//! It has a state of its own, [`State`]: the process registry (every role's registered series) and, in
//! the collector role, the [`Collection`] whose snapshots it renders. It knows no role.
//!
//! - A scrape never calls a broker: it renders what the process already holds, on the blocking pool.
//! - A render that panics answers 500 (Prometheus then marks the target down), never 200 with an empty
//!   body that would look like a healthy target without series.
//! - The page's view is rebuilt every [`view::SAMPLE_EVERY`] from the same render as `/metrics`, by one
//!   task; a request is served that one document, so viewers add no work.
//! - Connections are limited ([`MAX_CONNECTIONS`]); a failed accept (EMFILE) backs off instead of
//!   spinning.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

pub mod view;

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
const JSON: &str = "application/json";
const HTML: &str = "text/html; charset=utf-8";
/// The page: one file, no CDN, no external font or script (it must work offline and inside a cluster).
const PAGE: &str = include_str!("page.html");
/// The page may only talk to this server; its script and style are inline.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Admin connections at once: scrapers and probes are few; more are closed at once.
pub const MAX_CONNECTIONS: usize = 64;

/// Series a role renders itself rather than registering them (the collector's snapshots).
pub trait Collection: Send + Sync + 'static {
    /// The series in the text format.
    fn render(&self) -> Bytes;
    /// What readiness still waits for (empty: ready).
    fn waiting(&self) -> Vec<String>;
    /// A JSON listing at `path` (`/sagas`) for the query string: `None` when there is none at that path,
    /// `Err` with the reason for a bad query.
    fn listing(&self, _path: &str, _query: Option<&str>) -> Option<Result<Bytes, String>> {
        None
    }
}

/// What the admin server serves.
#[derive(Clone)]
pub struct State {
    series: Series,
    collection: Option<Arc<dyn Collection>>,
    page: Arc<Page>,
    /// Series the page reads besides this server's own (the demo's sidecar), not served by `/metrics`.
    page_also: Vec<Series>,
}

/// A role's series besides a collection's: its registry's, and the rows it writes itself (the
/// sidecar's per-partition series, which a registry would copy whole into protobuf on every scrape).
#[derive(Clone)]
pub struct Series {
    pub registry: Registry,
    pub written: Vec<crate::telemetry::partitions::PartitionSeries>,
}

impl Series {
    /// The series in the text format.
    fn render(&self) -> String {
        let mut text = crate::telemetry::render_registry(&self.registry);
        for w in &self.written {
            w.render(&mut text);
        }
        text
    }
}

impl From<Registry> for Series {
    fn from(registry: Registry) -> Series {
        Series {
            registry,
            written: Vec::new(),
        }
    }
}

/// The page's view: the sampler and its last document.
struct Page {
    sampler: Mutex<view::Sampler>,
    document: RwLock<Bytes>,
}

impl State {
    /// The page is a collector's with a collection, a sidecar's without; [`State::with_page`] says otherwise.
    pub fn new(series: impl Into<Series>, collection: Option<Arc<dyn Collection>>) -> State {
        let role = if collection.is_some() { "collector" } else { "sidecar" };
        State {
            series: series.into(),
            collection,
            page: Arc::new(Page::new(view::PageConfig { role, trace_url: None })),
            page_also: Vec::new(),
        }
    }

    /// The page also shows these series (`/metrics` does not: a family must appear once there).
    pub fn with_page_also(mut self, series: impl Into<Series>) -> State {
        self.page_also.push(series.into());
        self
    }

    /// The page's role and trace links (`ui.trace_url`).
    pub fn with_page(mut self, config: view::PageConfig) -> State {
        self.page = Arc::new(Page::new(config));
        self
    }

    /// Rebuilds the page's view from what `/metrics` would serve now.
    fn sample_view(&self) {
        let (series, own) = self.render();
        let also: Vec<String> = self.page_also.iter().map(Series::render).collect();
        // Our own renders are UTF-8: borrowed, not copied (a large collector's text is tens of MB).
        let (series, own) = (String::from_utf8_lossy(&series), String::from_utf8_lossy(&own));
        let mut parts = vec![series.as_ref(), own.as_ref()];
        parts.extend(also.iter().map(String::as_str));
        let doc = lock(&self.page.sampler).sample(&parts, crate::kafka::now_ms());
        *self.page.document.write().unwrap_or_else(|p| p.into_inner()) = doc;
    }

    fn view_document(&self) -> Bytes {
        self.page.document.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The whole `/metrics` body in two parts: the collection's series and the registry's.
    pub fn render(&self) -> (Bytes, Bytes) {
        let collection = self.collection.as_ref().map(|c| c.render()).unwrap_or_default();
        (collection, Bytes::from(self.series.render()))
    }

    fn waiting(&self) -> Vec<String> {
        self.collection.as_ref().map(|c| c.waiting()).unwrap_or_default()
    }

    fn listing(&self, path: &str, query: Option<&str>) -> Option<Result<Bytes, String>> {
        self.collection.as_ref()?.listing(path, query)
    }
}

impl Page {
    fn new(config: view::PageConfig) -> Page {
        Page {
            sampler: Mutex::new(view::Sampler::new(config)),
            document: RwLock::new(Bytes::from_static(b"{}")),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Rebuilds the view every [`view::SAMPLE_EVERY`] on the blocking pool until shutdown. A sample that
/// panics leaves the last document (its `taken_at_ms` tells the page it is stale) and the next one runs.
async fn sample_views(state: State, mut shutdown: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(view::SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let s = state.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || s.sample_view()).await {
            tracing::error!(error = %e, "building the page's view failed");
        }
    }
}

/// Binds the admin address. Done before anything else starts, so a taken port fails fast.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `shutdown` turns true, then stops accepting; open connections finish their request.
pub async fn serve(listener: TcpListener, state: State, mut shutdown: watch::Receiver<bool>) {
    tokio::spawn(sample_views(state.clone(), shutdown.clone()));
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let refused = |peer| tracing::warn!(%peer, "admin: over {MAX_CONNECTIONS} connections; closed");
    while let Some((stream, _, permit)) = crate::accept::next(&listener, &permits, &mut shutdown, "admin", refused).await {
        let state = state.clone();
        let mut conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| handle(req, state.clone()));
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
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

async fn handle(req: Request<Incoming>, state: State) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let response = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let render = state.clone();
            match tokio::task::spawn_blocking(move || render.render()).await {
                Ok((series, own)) => {
                    let frames = vec![Ok::<_, Infallible>(Frame::data(series)), Ok(Frame::data(own))];
                    Response::builder()
                        .header("content-type", TEXT_FORMAT)
                        .body(StreamBody::new(futures::stream::iter(frames)).boxed())
                }
                Err(e) => {
                    tracing::error!(error = %e, "rendering /metrics failed");
                    Response::builder()
                        .status(StatusCode::INTERNAL_SERVER_ERROR)
                        .body(full(Bytes::from_static(b"rendering the metrics failed; see the log\n")))
                }
            }
        }
        (&Method::GET, "/") => Response::builder()
            .header("content-type", HTML)
            .header("content-security-policy", PAGE_POLICY)
            .header("x-content-type-options", "nosniff")
            .header("cache-control", "no-cache")
            .body(full(Bytes::from_static(PAGE.as_bytes()))),
        (&Method::GET, "/api/v1/view") => Response::builder()
            .header("content-type", JSON)
            .header("cache-control", "no-store")
            .body(full(state.view_document())),
        (&Method::GET, "/healthz") => Response::builder().body(full(Bytes::from_static(b"ok\n"))),
        (&Method::GET, "/readyz") => {
            let waiting = state.waiting();
            if waiting.is_empty() {
                Response::builder().body(full(Bytes::from_static(b"ready\n")))
            } else {
                Response::builder()
                    .status(StatusCode::SERVICE_UNAVAILABLE)
                    .body(full(Bytes::from(format!(
                        "waiting for a first collection of: {}\n",
                        waiting.join(", ")
                    ))))
            }
        }
        (_, "/" | "/api/v1/view" | "/metrics" | "/healthz" | "/readyz") => {
            Response::builder().status(StatusCode::METHOD_NOT_ALLOWED).body(full(Bytes::new()))
        }
        (method, path) => match state.listing(path, req.uri().query()) {
            Some(_) if method != Method::GET => Response::builder().status(StatusCode::METHOD_NOT_ALLOWED).body(full(Bytes::new())),
            Some(Ok(json)) => Response::builder().header("content-type", JSON).body(full(json)),
            Some(Err(why)) => Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .header("content-type", JSON)
                .body(full(Bytes::from(serde_json::json!({ "error": why }).to_string()))),
            None => Response::builder().status(StatusCode::NOT_FOUND).body(full(Bytes::from_static(
                b"not found: try /, /api/v1/view, /metrics, /healthz, /readyz, /sagas\n",
            ))),
        },
    };
    Ok(response.unwrap_or_else(|_| Response::new(full(Bytes::new()))))
}

fn full(b: Bytes) -> BoxBody<Bytes, Infallible> {
    Full::new(b).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Panics;

    impl Collection for Panics {
        fn render(&self) -> Bytes {
            panic!("a bug in rendering")
        }
        fn waiting(&self) -> Vec<String> {
            Vec::new()
        }
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// Defect 6: a render that panicked used to answer 200 with an empty body.
    #[tokio::test]
    async fn a_render_that_panics_answers_500() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_tx, rx) = watch::channel(false);
        tokio::spawn(serve(listener, State::new(Registry::new(), Some(Arc::new(Panics))), rx));
        let answer = get(addr, "/metrics").await;
        assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
        // The server itself carries on.
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
    }

    /// Defect 7: connections over the limit are closed at once; the ones under it are served.
    #[tokio::test]
    async fn connections_over_the_limit_are_closed() {
        use tokio::io::AsyncReadExt;
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_tx, rx) = watch::channel(false);
        tokio::spawn(serve(listener, State::new(Registry::new(), None), rx));
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let mut over = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), over.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the connection over the limit stays open: {read:?}"
        );
        drop(idle);
        // Once the idle ones are gone, scrapes are served again.
        let mut served = false;
        for _ in 0..50 {
            if get(addr, "/healthz").await.starts_with("HTTP/1.1 200") {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(served);
    }
}
