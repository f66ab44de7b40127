//! The sidecar's HTTP side: a reverse proxy from the pod's port to the application that measures the
//! seed's SLIs and carries W3C trace context, with no change to the application.
//!
//! - Plain HTTP/1.1 requests take a fast path ([`h1`]: heads parsed in place, bodies relayed by their
//!   framing, idle connections to the application pooled); the rest is hyper's, below.
//! - HTTP/1.1 and HTTP/2 without TLS (h2c, prior knowledge) on one port (hyper-util's `auto` server);
//!   requests go to the application over pooled HTTP/1.1 connections (hyper-util's client), or HTTP/2
//!   (`upstream_protocol`: `http2`, or `downstream` for the client's own; gRPC services). Bodies are
//!   streamed both ways, never buffered whole; upgrades (WebSocket) are tunnelled once the application
//!   answers `101 Switching Protocols`.
//! - Trace context: `traceparent`/`tracestate` are read with OpenTelemetry's propagator (an invalid header
//!   starts a new trace and is counted, it never fails a request); a SERVER span per request, named
//!   `{method} {route}` with the HTTP semantic-convention attributes, is exported through the same OTLP
//!   pipeline as the Kafka spans, and the request reaches the application with `traceparent` set to it.
//! - SLIs: `http_requests_total{service,method,route,status}` and
//!   `http_request_duration_seconds{service,method,route}` (from arrival until the response is sent in
//!   full), exactly the names the seed's queries use; `route` comes from [`route::Routes`] (bounded).
//! - The application down or slow: 502 (cannot connect, or failed before its headers) or 504 (no headers
//!   within `response_timeout`), counted as requests with that status and in
//!   `eventscope_http_proxy_errors_total{kind}`. The sidecar itself stays up and ready.
//! - Hostile clients: request heads over `max_header_bytes` get 431, malformed ones 400, clients that do
//!   not send a head within `header_read_timeout` are closed; all counted. Connections are limited.

mod h1;
pub mod headers;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONNECTION, HOST, UPGRADE};
use http::uri::{Authority, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::config::HttpConfig;
use crate::telemetry::http::{method_label, HttpErrorKind, HttpMetrics};
use crate::telemetry::route::Routes;
use crate::telemetry::traces::{SpanStart, Tracer};

/// Which side of the application a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Requests to the application (the pod's port): SERVER spans, the seed's SLIs.
    Inbound,
    /// The application's own calls, through its `HTTP_PROXY`: CLIENT spans, `eventscope_http_client_*`.
    Outbound,
}

/// The runtime's next timer wake-up is kept at most this far away. Tokio's timer writes to the runtime's
/// eventfd (a system call) whenever a timer is registered that expires before the driver's planned
/// wake-up; with idle keep-alive connections waiting up to `idle_timeout`, each request's
/// `response_timeout` deadline was such a timer: one `write` per request, several percent of the proxy's
/// CPU (seen with strace and perf). A tick a second keeps the planned wake-up near, so registering request
/// deadlines stays in user space.
const TIMER_TICK: Duration = Duration::from_secs(1);

/// Concurrent HTTP/2 streams per client connection (hyper's default is 200; Envoy and nginx use 100 to 128).
const MAX_CONCURRENT_STREAMS: u32 = 250;

type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// The running HTTP proxy.
pub struct HttpProxy {
    settings: HttpConfig,
    /// The application, `host:port`.
    upstream_addr: String,
    upstream: Authority,
    client: Client<HttpConnector, Incoming>,
    /// HTTP/2 with prior knowledge (h2c), for applications that speak it (gRPC).
    h2_client: Client<HttpConnector, Incoming>,
    routes: Routes,
    destinations: crate::telemetry::labels::BoundedLabel,
    /// `eventscope_http_trace_context_requests_total` for this service: continued, invalid, absent.
    context_counters: [prometheus::IntCounter; 3],
    metrics: HttpMetrics,
    tracer: Tracer,
    permits: Arc<Semaphore>,
    /// Idle HTTP/1.1 connections to the application, for the fast path ([`h1`]).
    pool: h1::Pool,
}

impl HttpProxy {
    /// Binds the listener and starts serving; returns the bound address and a task that ends once
    /// `shutdown` has fired and every open connection has finished its request (the caller bounds the
    /// wait by the grace period).
    pub async fn start(
        settings: HttpConfig,
        metrics: HttpMetrics,
        tracer: Tracer,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let upstream_addr = settings
            .upstream
            .as_ref()
            .map(|u| u.to_string())
            .ok_or_else(|| anyhow::anyhow!("sidecar.http.upstream is not set"))?;
        let upstream: Authority = upstream_addr
            .parse()
            .map_err(|e| anyhow::anyhow!("sidecar.http.upstream {upstream_addr:?}: {e}"))?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.listen))?;
        let bound = listener.local_addr()?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(settings.idle_timeout)
            .build(connector.clone());
        let h2_client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(settings.idle_timeout)
            .timer(TokioTimer::new())
            .http2_only(true)
            .build(connector);
        let proxy = Arc::new(HttpProxy {
            routes: Routes::new(settings.routes.clone(), settings.max_routes),
            upstream_addr,
            destinations: crate::telemetry::labels::BoundedLabel::new(crate::telemetry::contract::MAX_DESTINATIONS),
            context_counters: ["continued", "invalid", "absent"].map(|c| metrics.trace_context.with([settings.service.as_str(), c])),
            permits: Arc::new(Semaphore::new(settings.max_connections)),
            pool: h1::Pool::new(settings.idle_timeout),
            upstream,
            client,
            h2_client,
            metrics,
            tracer,
            settings,
        });
        let outbound = match proxy.settings.outbound_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?,
            ),
            None => None,
        };
        tracing::info!(listen = %bound, upstream = %proxy.upstream_addr, "http proxy running");
        let inbound = tokio::spawn(proxy.clone().accept_loop(listener, Direction::Inbound, shutdown.clone()));
        let mut tick_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TIMER_TICK);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = tick_shutdown.changed() => return,
                }
            }
        });
        let outbound = outbound.map(|l| {
            tracing::info!(listen = ?l.local_addr().ok(), "http outbound proxy running");
            tokio::spawn(proxy.clone().accept_loop(l, Direction::Outbound, shutdown))
        });
        // The task ends when the listeners have stopped and every connection has finished.
        let task = tokio::spawn(async move {
            let _ = inbound.await;
            if let Some(o) = outbound {
                let _ = o.await;
            }
            proxy.drained().await;
        });
        Ok((bound, task))
    }

    /// Resolves once every client connection (and upgraded tunnel) has closed: after shutdown, once each
    /// has finished the request it was serving.
    pub async fn drained(&self) {
        let _ = self.permits.acquire_many(self.settings.max_connections as u32).await;
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, direction: Direction, mut shutdown: watch::Receiver<bool>) {
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.settings.header_read_timeout)
            .max_buf_size(self.settings.max_header_bytes);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(self.settings.max_header_bytes as u32)
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
        let builder = Arc::new(builder);
        let refused = |peer| {
            self.metrics.error(
                HttpErrorKind::ConnectionLimit,
                &format!("{peer}: over {} connections", self.settings.max_connections),
            )
        };
        while let Some((stream, peer, permit)) = crate::accept::next(&listener, &self.permits, &mut shutdown, "http proxy", refused).await {
            let proxy = self.clone();
            let builder = builder.clone();
            let mut conn_shutdown = shutdown.clone();
            tokio::spawn(async move {
                let held = Arc::new(Held::new(permit, &proxy.metrics.connections));
                // Plain HTTP/1.1 requests to the application take the fast path; the rest, and a
                // connection once it sends anything else, hyper's server.
                let fast = direction == Direction::Inbound
                    && proxy.settings.fast_path
                    && proxy.settings.upstream_protocol != crate::config::UpstreamProtocol::Http2;
                let io = if fast {
                    h1::serve(&proxy, stream, peer, &mut conn_shutdown).await
                } else {
                    Some(h1::Rewind::new(stream, Bytes::new()))
                };
                if let Some(io) = io {
                    proxy.serve_hyper(&builder, io, peer, direction, &mut conn_shutdown, &held).await;
                }
                // An upgraded connection's tunnel holds its own reference until it ends.
                drop(held);
            });
        }
    }

    /// Serves a client connection with hyper's server (HTTP/1.1 and HTTP/2, upgrades).
    async fn serve_hyper(
        self: &Arc<Self>,
        builder: &hyper_util::server::conn::auto::Builder<TokioExecutor>,
        io: h1::Rewind,
        peer: SocketAddr,
        direction: Direction,
        shutdown: &mut watch::Receiver<bool>,
        held: &Arc<Held>,
    ) {
        let service = {
            let proxy = self.clone();
            let held = held.clone();
            hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let proxy = proxy.clone();
                // An upgrade takes it into its tunnel: the connection counts until the tunnel closes.
                req.extensions_mut().insert(held.clone());
                async move {
                    match direction {
                        Direction::Inbound => proxy.handle(req, peer).await,
                        Direction::Outbound => proxy.handle_outbound(req).await,
                    }
                }
            })
        };
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = shutdown.changed() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            self.connection_error(peer, e.as_ref());
        }
    }

    /// Sorts a failed client connection into the closed set of error kinds (the client's own resets and
    /// early closes are only logged at debug level: they are the client's business).
    fn connection_error(&self, peer: SocketAddr, e: &(dyn std::error::Error + 'static)) {
        let hyper_error = e.downcast_ref::<hyper::Error>();
        match hyper_error {
            Some(h) if h.is_timeout() => self.metrics.error(HttpErrorKind::ClientTimeout, &format!("{peer}: {e}")),
            Some(h) if h.is_parse() || h.is_parse_too_large() || h.is_parse_status() => {
                self.metrics.error(HttpErrorKind::MalformedRequest, &format!("{peer}: {e}"))
            }
            // HTTP/2 protocol errors (bad frames, header lists over the limit) by their reason code.
            _ if h2_protocol_error(e) => self
                .metrics
                .error(HttpErrorKind::MalformedRequest, &format!("{peer}: {}", error_chain(e))),
            _ => tracing::debug!(%peer, error = %e, "http client connection"),
        }
    }

    /// Starts measuring an inbound request (hyper's or the HTTP/1.1 fast path's): its route label, the
    /// trace-context counter and the SERVER span. Returns what records the request once it is over, the
    /// `traceparent` the application gets, and whether the client's context was continued (only then does
    /// its `tracestate` go on).
    fn begin(self: &Arc<Self>, r: &Inbound<'_>, peer: SocketAddr) -> (Completion, crate::telemetry::traces::Traceparent, bool) {
        let started = Instant::now();
        let method = method_label(r.method);
        let (route, _templated) = self.routes.label(r.path);

        // W3C trace context: continue a valid one, start a new trace otherwise; never fail the request.
        let parent = r.traceparent.and_then(|tp| crate::telemetry::traces::extract(tp, r.tracestate));
        // Index into context_counters: continued, invalid, absent.
        self.context_counters[match (r.traceparent.is_some(), parent.is_some()) {
            (true, true) => 0,
            (true, false) => 1,
            (false, _) => 2,
        }]
        .inc();
        let continued = parent.is_some();
        let span = self.tracer.start_span(parent, method, SpanKind::Server);
        let traceparent = crate::telemetry::traces::traceparent(&span.context);

        // Attributes only for spans that will be exported (the span's context is propagated regardless).
        let recorded = span.context.is_sampled() && self.tracer.exporting();
        // Wall-clock time only for spans (a clock read fewer per request otherwise).
        let started_at = if recorded { SystemTime::now() } else { SystemTime::UNIX_EPOCH };
        let (name, attributes) = if !recorded {
            (String::new(), Vec::new())
        } else if method == "_OTHER" {
            ("HTTP".to_string(), span_attributes(r, &route, peer))
        } else {
            (format!("{method} {route}"), span_attributes(r, &route, peer))
        };
        let done = Completion {
            proxy: self.clone(),
            direction: Direction::Inbound,
            method,
            route,
            status: 0,
            span: recorded.then_some(span),
            name,
            started,
            started_at,
            attributes,
        };
        (done, traceparent, continued)
    }

    async fn handle(self: Arc<Self>, mut req: Request<Incoming>, peer: SocketAddr) -> Result<Response<Observed>, Infallible> {
        let authority_or_host = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()));
        let inbound = Inbound {
            method: req.method(),
            path: req.uri().path(),
            query: req.uri().query(),
            version: req.version(),
            traceparent: req.headers().get(TRACEPARENT).map(|v| v.as_bytes()),
            tracestate: req.headers().get(TRACESTATE).map(|v| v.as_bytes()),
            host: authority_or_host,
            user_agent: req.headers().get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()),
        };
        let (done, traceparent, continued) = self.begin(&inbound, peer);
        // HTTP/2 requests carry the host in `:authority`; HTTP/1.1 ones without Host get it from there.
        let host = (!req.headers().contains_key(HOST))
            .then(|| authority_or_host.map(String::from))
            .flatten();

        // To the application: HTTP/1.1 (or HTTP/2 as configured), Host kept (from :authority for HTTP/2
        // requests).
        let upgrade = wants_upgrade(&req);
        let h2 = !upgrade
            && match self.settings.upstream_protocol {
                crate::config::UpstreamProtocol::Http1 => false,
                crate::config::UpstreamProtocol::Http2 => true,
                crate::config::UpstreamProtocol::Downstream => req.version() == Version::HTTP_2,
            };
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        if let Some(h) = &host {
            if let Ok(v) = HeaderValue::from_str(h) {
                req.headers_mut().insert(HOST, v);
            }
        }
        headers::request_to_application(req.headers_mut(), continued, upgrade, traceparent.as_str(), Some(peer));
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(self.upstream.clone());
        parts.path_and_query = Some(
            req.uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        let uri = Uri::from_parts(parts);
        match uri {
            Ok(uri) => *req.uri_mut() = uri,
            // The server parsed this path already; this cannot fail, but never panic on it.
            Err(_) => return Ok(done.local(StatusCode::BAD_REQUEST)),
        }
        if h2 {
            // HTTP/2 carries the authority in `:authority` (the application's address here); a Host header
            // that differs from it is refused by strict servers. The client's host goes on in
            // X-Forwarded-Host.
            if let Some(host) = req.headers_mut().remove(HOST) {
                req.headers_mut().entry(HeaderName::from_static("x-forwarded-host")).or_insert(host);
            }
        }
        *req.version_mut() = if h2 { Version::HTTP_2 } else { Version::HTTP_11 };

        self.forward(req, client_upgrade, done, &self.upstream).await
    }
}

impl HttpProxy {
    /// Sends `req` to `target` and relays the response (an upgrade is tunnelled once `target` answers 101);
    /// 502 when it cannot be reached or fails before its headers, 504 when they do not come in time.
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        done: Completion,
        target: &Authority,
    ) -> Result<Response<Observed>, Infallible> {
        let held = take_held(&mut req);
        let client = if req.version() == Version::HTTP_2 {
            &self.h2_client
        } else {
            &self.client
        };
        match tokio::time::timeout(self.settings.response_timeout, client.request(req)).await {
            Ok(Ok(mut resp)) => {
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(client_side) = client_upgrade {
                        let app_side = hyper::upgrade::on(&mut resp);
                        tokio::spawn(tunnel(client_side, app_side, held));
                    }
                } else {
                    headers::response_to_client(resp.headers_mut());
                }
                Ok(done.relay(resp))
            }
            Ok(Err(e)) => {
                let (kind, detail) = if e.is_connect() {
                    (
                        HttpErrorKind::UpstreamUnavailable,
                        format!("cannot connect to {}: {}", target, error_chain(&e)),
                    )
                } else {
                    (HttpErrorKind::UpstreamFailed, format!("{}: {}", target, error_chain(&e)))
                };
                self.metrics.error(kind, &detail);
                Ok(done.local(StatusCode::BAD_GATEWAY))
            }
            Err(_) => {
                self.metrics.error(
                    HttpErrorKind::UpstreamTimeout,
                    &format!("{}: no response within {:?}", target, self.settings.response_timeout),
                );
                Ok(done.local(StatusCode::GATEWAY_TIMEOUT))
            }
        }
    }

    /// The application's own call, through its `HTTP_PROXY` (absolute-form request): forwarded to the host
    /// it names with `traceparent` set to a CLIENT span (the child of the application's context when it
    /// sent one), so the called service's sidecar continues the trace. CONNECT (HTTPS through the proxy)
    /// is tunnelled unchanged.
    async fn handle_outbound(self: Arc<Self>, mut req: Request<Incoming>) -> Result<Response<Observed>, Infallible> {
        let started = Instant::now();
        let started_at = SystemTime::now();
        let method = method_label(req.method());
        let authority = req.uri().authority().cloned();
        let destination = authority
            .as_ref()
            .map(|a| match a.port_u16() {
                Some(_) => a.as_str().to_string(),
                None => format!("{}:80", a.host()),
            })
            .unwrap_or_else(|| "_invalid".to_string());
        let destination = self.destinations.label(&destination);
        let parent = req
            .headers()
            .get(TRACEPARENT)
            .and_then(|tp| crate::telemetry::traces::extract(tp.as_bytes(), req.headers().get(TRACESTATE).map(|v| v.as_bytes())));
        let continued = parent.is_some();
        let span = self.tracer.start_span(parent, method, SpanKind::Client);
        let recorded = span.context.is_sampled() && self.tracer.exporting();
        let mut attributes = Vec::new();
        if recorded {
            attributes.push(KeyValue::new("http.request.method", req.method().as_str().to_string()));
            attributes.push(KeyValue::new("url.full", req.uri().to_string()));
            attributes.push(KeyValue::new("network.protocol.version", protocol_version(req.version())));
            if let Some(a) = &authority {
                attributes.push(KeyValue::new("server.address", a.host().to_string()));
                attributes.push(KeyValue::new("server.port", a.port_u16().unwrap_or(80) as i64));
            }
        }
        let done = Completion {
            proxy: self.clone(),
            direction: Direction::Outbound,
            method,
            route: destination,
            status: 0,
            span: recorded.then_some(span.clone()),
            name: if method == "_OTHER" {
                "HTTP".to_string()
            } else {
                method.to_string()
            },
            started,
            started_at,
            attributes,
        };
        let Some(authority) = authority else {
            return Ok(done.local(StatusCode::BAD_REQUEST));
        };
        if req.method() == hyper::Method::CONNECT {
            let dial = tokio::time::timeout(self.settings.connect_timeout, tokio::net::TcpStream::connect(authority.as_str())).await;
            let Ok(Ok(mut server)) = dial else {
                self.metrics
                    .error(HttpErrorKind::UpstreamUnavailable, &format!("CONNECT {authority}"));
                return Ok(done.local(StatusCode::BAD_GATEWAY));
            };
            let _ = server.set_nodelay(true);
            let client = hyper::upgrade::on(&mut req);
            let held = take_held(&mut req);
            tokio::spawn(async move {
                let _held = held;
                if let Ok(client) = client.await {
                    let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut server).await;
                }
            });
            return Ok(done.local(StatusCode::OK));
        }
        if req.uri().scheme_str() != Some("http") {
            // Only plain HTTP can carry trace context; HTTPS goes through CONNECT.
            return Ok(done.local(StatusCode::BAD_REQUEST));
        }
        let upgrade = wants_upgrade(&req);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let context = crate::telemetry::traces::traceparent(&span.context);
        headers::request_to_application(req.headers_mut(), continued, upgrade, context.as_str(), None);
        req.headers_mut().remove("proxy-authorization");
        if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
            req.headers_mut().insert(HOST, v);
        }
        *req.version_mut() = Version::HTTP_11;
        self.forward(req, client_upgrade, done, &authority).await
    }
}

/// What the inbound side reads of a request, from hyper's parsed request or the HTTP/1.1 fast path's.
struct Inbound<'a> {
    method: &'a hyper::Method,
    path: &'a str,
    query: Option<&'a str>,
    version: Version,
    traceparent: Option<&'a [u8]>,
    tracestate: Option<&'a [u8]>,
    /// The request's authority (HTTP/2) or `Host` header.
    host: Option<&'a str>,
    user_agent: Option<&'a str>,
}

/// The HTTP semantic-convention attributes of a SERVER span.
fn span_attributes(r: &Inbound<'_>, route: &str, peer: SocketAddr) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("http.request.method", r.method.as_str().to_string()),
        KeyValue::new("http.route", route.to_string()),
        KeyValue::new("url.path", r.path.to_string()),
        KeyValue::new("url.scheme", "http"),
        KeyValue::new("network.protocol.version", protocol_version(r.version)),
        KeyValue::new("client.address", peer.ip().to_string()),
    ];
    if let Some(q) = r.query {
        attributes.push(KeyValue::new("url.query", q.to_string()));
    }
    if let Some(ua) = r.user_agent {
        attributes.push(KeyValue::new("user_agent.original", ua.to_string()));
    }
    if let Some(h) = r.host {
        let (address, port) = h.rsplit_once(':').map_or((h, None), |(a, p)| (a, p.parse::<i64>().ok()));
        attributes.push(KeyValue::new("server.address", address.to_string()));
        if let Some(p) = port {
            attributes.push(KeyValue::new("server.port", p));
        }
    }
    attributes
}

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

fn protocol_version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) that no hop passes on as they came, besides those a `Connection`
/// header names. `Transfer-Encoding` and `TE` are left to each path: their rules differ by direction.
/// An HTTP/1.1 upgrade request (`Connection: upgrade` with an `Upgrade` header).
fn wants_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && req.headers().get_all(CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| headers::connection_tokens(s).any(|t| t.eq_ignore_ascii_case("upgrade")))
        })
}

/// A client connection's place under `max_connections` and in the connections gauge, for as long as the
/// connection lives: with an upgrade (WebSocket), as long as its tunnel does.
pub(crate) struct Held {
    _permit: tokio::sync::OwnedSemaphorePermit,
    gauge: prometheus::IntGauge,
}

impl Held {
    fn new(permit: tokio::sync::OwnedSemaphorePermit, gauge: &prometheus::IntGauge) -> Held {
        gauge.inc();
        Held {
            _permit: permit,
            gauge: gauge.clone(),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The connection's [`Held`], taken off a request before it is forwarded.
fn take_held<B>(req: &mut Request<B>) -> Option<Arc<Held>> {
    req.extensions_mut().remove::<Arc<Held>>()
}

/// Copies bytes both ways between the client and the application once both sides have upgraded; the
/// connection keeps its place (`held`) until then.
async fn tunnel(client: hyper::upgrade::OnUpgrade, app: hyper::upgrade::OnUpgrade, _held: Option<Arc<Held>>) {
    let (client, app) = tokio::join!(client, app);
    let (Ok(client), Ok(app)) = (client, app) else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(app)).await;
}

/// Whether an error (or one of its sources) is an HTTP/2 error whose reason says the client broke the
/// protocol.
fn h2_protocol_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return matches!(
                h2.reason(),
                Some(
                    h2::Reason::PROTOCOL_ERROR
                        | h2::Reason::FRAME_SIZE_ERROR
                        | h2::Reason::COMPRESSION_ERROR
                        | h2::Reason::FLOW_CONTROL_ERROR
                )
            );
        }
        next = err.source();
    }
    false
}

/// An error and its sources, `outer: inner: ...`, as a user reads it (not a `Debug` dump).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// What is recorded once a request is over: the SLI series and the SERVER span (inbound), or the client
/// series and the CLIENT span (outbound; `route` then holds the destination).
struct Completion {
    proxy: Arc<HttpProxy>,
    direction: Direction,
    method: &'static str,
    route: String,
    status: u16,
    span: Option<SpanStart>,
    name: String,
    started: Instant,
    started_at: SystemTime,
    attributes: Vec<KeyValue>,
}

impl Completion {
    /// The application's response, measured until its body has been sent.
    fn relay(mut self, resp: Response<Incoming>) -> Response<Observed> {
        self.status = resp.status().as_u16();
        resp.map(|b| Observed {
            inner: b.boxed_unsync(),
            done: Some(self),
        })
    }

    /// A response of the proxy's own (502, 504, 400; an empty 200 opens a CONNECT tunnel).
    fn local(mut self, status: StatusCode) -> Response<Observed> {
        self.status = status.as_u16();
        let body = Full::new(Bytes::from(local_text(status)))
            .map_err(|never: Infallible| match never {})
            .boxed_unsync();
        let mut resp = Response::new(Observed {
            inner: body,
            done: Some(self),
        });
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        resp
    }

    fn complete(self, aborted: bool) {
        self.complete_with(aborted, None)
    }

    /// [`Completion::complete`], with the connection's last series reused when method, route and status
    /// repeat.
    fn complete_with(mut self, aborted: bool, cache: Option<&mut SeriesCache>) {
        let p = &self.proxy;
        let service = p.settings.service.as_str();
        let mut status_text = itoa::Buffer::new();
        let status = status_text.format(self.status);
        let (requests, duration, kind) = match self.direction {
            Direction::Inbound => (&p.metrics.requests, &p.metrics.duration, SpanKind::Server),
            Direction::Outbound => (&p.metrics.client_requests, &p.metrics.client_duration, SpanKind::Client),
        };
        let elapsed = self.started.elapsed().as_secs_f64();
        let series = || {
            (
                requests.with([service, self.method, &self.route, status]),
                duration.with([service, self.method, &self.route]),
            )
        };
        match cache {
            Some(cache) => {
                let hit = cache
                    .0
                    .as_ref()
                    .is_some_and(|(m, r, s, ..)| *m == self.method && *r == self.route && *s == self.status);
                if !hit {
                    let (c, h) = series();
                    cache.0 = Some((self.method, self.route.clone(), self.status, c, h));
                }
                if let Some((.., c, h)) = &cache.0 {
                    c.inc();
                    h.observe(elapsed);
                }
            }
            None => {
                let (c, h) = series();
                c.inc();
                h.observe(elapsed);
            }
        }
        if aborted {
            p.metrics
                .error(HttpErrorKind::ResponseAborted, &format!("{} {}", self.method, self.route));
        }
        let Some(span) = self.span.take() else {
            return;
        };
        let mut attributes = std::mem::take(&mut self.attributes);
        attributes.push(KeyValue::new("http.response.status_code", self.status as i64));
        // Server spans: 5xx is an error, 4xx is the client's; client spans: both are (HTTP semantic conventions).
        let failed_status = match self.direction {
            Direction::Inbound => self.status >= 500,
            Direction::Outbound => self.status >= 400,
        };
        let error = (failed_status || aborted).then(|| {
            if aborted {
                "response_aborted".to_string()
            } else {
                status.to_string()
            }
        });
        if let Some(e) = &error {
            attributes.push(KeyValue::new("error.type", e.clone()));
        }
        let ended = self.started_at + self.started.elapsed();
        p.tracer.finish(
            span,
            kind,
            std::mem::take(&mut self.name),
            self.started_at,
            ended,
            attributes,
            error,
        );
    }
}

/// The body of a response of the proxy's own: empty for a success, else the status's reason.
fn local_text(status: StatusCode) -> String {
    if status.is_success() {
        String::new()
    } else {
        format!("eventscope: {}\n", status.canonical_reason().unwrap_or("error"))
    }
}

/// A connection's last SLI series (method, route, status and their counter and histogram): consecutive
/// requests on a connection usually share them, and reusing them saves two label lookups per request.
#[derive(Default)]
struct SeriesCache(Option<(&'static str, String, u16, prometheus::IntCounter, prometheus::Histogram)>);

/// A response body that records its request once it has been sent in full (or abandoned).
pub struct Observed {
    inner: ProxyBody,
    done: Option<Completion>,
}

impl Body for Observed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => {
                if let Some(d) = self.done.take() {
                    d.complete(false);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(d) = self.done.take() {
                    d.complete(true);
                }
            }
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    /// Bodies the server never polls to the end (empty, HEAD, or a client that went away) are recorded
    /// here.
    fn drop(&mut self) {
        if let Some(d) = self.done.take() {
            d.complete(false);
        }
    }
}
