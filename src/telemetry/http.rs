//! The sidecar's HTTP proxy metrics: the seed's SLI series, the proxy's own, and the closed set of its
//! error kinds.

use prometheus::{IntGauge, Registry};

use super::{counters, histograms, register, Counters, Histograms, Spec};

use super::contract::*;

/// Why the HTTP proxy answered with an error of its own or lost a request: a closed set, the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpErrorKind {
    /// The application could not be connected to: answered 502.
    UpstreamUnavailable,
    /// The application sent no response headers within `response_timeout`: answered 504.
    UpstreamTimeout,
    /// The application's connection failed before its response headers: answered 502.
    UpstreamFailed,
    /// The application's response body broke off after its headers were relayed.
    ResponseAborted,
    /// A request the server could not parse, or whose head was over `max_header_bytes` (400/431).
    MalformedRequest,
    /// A client that did not send its request head within `header_read_timeout`.
    ClientTimeout,
    /// More client connections than `max_connections`.
    ConnectionLimit,
}

impl HttpErrorKind {
    pub const ALL: [HttpErrorKind; 7] = [
        HttpErrorKind::UpstreamUnavailable,
        HttpErrorKind::UpstreamTimeout,
        HttpErrorKind::UpstreamFailed,
        HttpErrorKind::ResponseAborted,
        HttpErrorKind::MalformedRequest,
        HttpErrorKind::ClientTimeout,
        HttpErrorKind::ConnectionLimit,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            HttpErrorKind::UpstreamUnavailable => "upstream_unavailable",
            HttpErrorKind::UpstreamTimeout => "upstream_timeout",
            HttpErrorKind::UpstreamFailed => "upstream_failed",
            HttpErrorKind::ResponseAborted => "response_aborted",
            HttpErrorKind::MalformedRequest => "malformed_request",
            HttpErrorKind::ClientTimeout => "client_timeout",
            HttpErrorKind::ConnectionLimit => "connection_limit",
        }
    }
}

/// The `method` label: the standard methods, every other one `_OTHER` (as OpenTelemetry's
/// `http.request.method` does), so a client cannot grow the series with made-up methods.
pub fn method_label(method: &hyper::Method) -> &'static str {
    use hyper::Method as M;
    match *method {
        M::GET => "GET",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::PATCH => "PATCH",
        M::HEAD => "HEAD",
        M::OPTIONS => "OPTIONS",
        M::CONNECT => "CONNECT",
        M::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// The HTTP proxy's metrics: the seed's SLI series plus the proxy's own.
#[derive(Clone)]
pub struct HttpMetrics {
    pub requests: Counters<4>,
    pub duration: Histograms<3>,
    pub client_requests: Counters<4>,
    pub client_duration: Histograms<3>,
    pub trace_context: Counters<2>,
    pub errors: Counters<1>,
    pub connections: IntGauge,
}

impl HttpMetrics {
    pub fn new(registry: &Registry) -> HttpMetrics {
        let errors = counters(
            registry,
            Spec {
                name: HTTP_PROXY_ERRORS,
                help: "Requests the HTTP proxy answered itself or lost, by kind.",
                labels: [L_KIND],
            },
        );
        for kind in HttpErrorKind::ALL {
            errors.with([kind.as_label()]);
        }
        HttpMetrics {
            requests: counters(
                registry,
                Spec {
                    name: HTTP_REQUESTS,
                    help: "HTTP requests served through the sidecar, by service, method, route template and status code.",
                    labels: [L_SERVICE, L_METHOD, L_ROUTE, L_STATUS],
                },
            ),
            duration: histograms(
                registry,
                Spec {
                    name: HTTP_REQUEST_DURATION,
                    help: "Time from a request's arrival until its response was sent in full, by service, method and route.",
                    labels: [L_SERVICE, L_METHOD, L_ROUTE],
                },
                HTTP_LATENCY_BUCKETS,
            ),
            client_requests: counters(
                registry,
                Spec {
                    name: HTTP_CLIENT_REQUESTS,
                    help: "The application's outbound HTTP requests through the sidecar, by service, method, destination (host:port) and status code.",
                    labels: [L_SERVICE, L_METHOD, L_DESTINATION, L_STATUS],
                },
            ),
            client_duration: histograms(
                registry,
                Spec {
                    name: HTTP_CLIENT_DURATION,
                    help: "Time of the application's outbound HTTP requests, from arrival at the sidecar until the response was sent in full.",
                    labels: [L_SERVICE, L_METHOD, L_DESTINATION],
                },
                HTTP_LATENCY_BUCKETS,
            ),
            trace_context: counters(
                registry,
                Spec {
                    name: HTTP_TRACE_CONTEXT,
                    help: "Requests by incoming W3C trace context: continued (valid traceparent), invalid (a new trace was started), absent.",
                    labels: [L_SERVICE, L_CONTEXT],
                },
            ),
            errors,
            connections: register(
                registry,
                IntGauge::new(HTTP_CONNECTIONS, "Open client connections through the HTTP proxy.").expect("valid metric"),
            ),
        }
    }

    /// The one place an HTTP proxy error is both logged and counted.
    pub fn error(&self, kind: HttpErrorKind, detail: &str) {
        tracing::warn!(kind = kind.as_label(), detail, "http proxy");
        self.errors.with([kind.as_label()]).inc();
    }
}
