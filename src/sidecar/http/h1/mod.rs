//! The inbound proxy's fast path for plain HTTP/1.1 requests, the common case of a pod's traffic.
//!
//! The request head is parsed in place with `httparse` (the parser hyper itself uses), rewritten as bytes
//! (hop-by-hop headers out; `traceparent`, `X-Forwarded-For` in) and written to an idle connection to the
//! application; the response head is parsed the same way and the body relayed as bytes by its framing
//! (`Content-Length`, chunked, or until the application closes). No header map, request object or task
//! hand-off per request: hyper's general machinery costs about four times the CPU of nginx per proxied
//! request, this path about as much as nginx (measured in `docs/benchmarks.md`). Measurement and trace
//! context are the same as on hyper's path ([`super::HttpProxy::begin`], [`super::Completion`]).
//!
//! Only requests whose handling is unambiguous take this path: HTTP/1.1 in origin form with one `Host`,
//! no body or a `Content-Length` body of at most [`MAX_FAST_BODY`], no `Transfer-Encoding`, `Expect` or
//! upgrade. Anything else (HTTP/1.0, the HTTP/2 preface, chunked or large uploads, WebSocket, malformed
//! or oversized heads) hands the connection over to hyper's server with the bytes already read
//! ([`Rewind`]); hyper then answers it as before (streaming, tunnels, 400, 431) and keeps the connection.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use hyper::{Method, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::headers::{self, connection_tokens};
use super::{local_text, Completion, HttpProxy, Inbound, SeriesCache};
use crate::telemetry::http::HttpErrorKind;

/// Headers per message, as hyper's server allows.
const MAX_HEADERS: usize = 100;
/// Request bodies up to this size are read whole before the request is sent; larger ones (uploads) go to
/// hyper, which streams them both ways.
pub const MAX_FAST_BODY: usize = 64 * 1024;
/// The largest response head taken from the application (hyper's client allows about 400 KiB).
const MAX_RESPONSE_HEAD: usize = 256 * 1024;
/// Bytes asked for per read: hyper's initial buffer size, so idle connections hold as little.
const READ_SIZE: usize = 8 * 1024;
/// Idle connections to the application kept for reuse (hyper's pool keeps any number).
const MAX_IDLE: usize = 1024;

/// A deadline moved only when it moves by more than this (a timer that fires early is re-armed).
const TIMER_SLACK: Duration = Duration::from_secs(1);

/// One of a connection's deadlines (the next request head; the application's response), on one tokio
/// timer that is re-armed only when the deadline moves earlier or more than [`TIMER_SLACK`] later: arming
/// and clearing a timer per request and wait was a measurable part of the proxy's CPU (perf). When the
/// timer fires before the deadline it wanted, it is moved to it.
struct Deadline {
    sleep: Pin<Box<tokio::time::Sleep>>,
    want: tokio::time::Instant,
}

impl Deadline {
    fn new() -> Deadline {
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400);
        Deadline {
            sleep: Box::pin(tokio::time::sleep_until(far)),
            want: far,
        }
    }

    /// The deadline is `after` from now.
    fn set(&mut self, after: Duration) {
        self.want = tokio::time::Instant::now() + after;
        let armed = self.sleep.deadline();
        if self.want < armed || self.want > armed + TIMER_SLACK {
            self.sleep.as_mut().reset(self.want);
        }
    }

    /// Completes once the deadline has passed.
    async fn expired(&mut self) {
        loop {
            self.sleep.as_mut().await;
            if tokio::time::Instant::now() >= self.want {
                return;
            }
            self.sleep.as_mut().reset(self.want);
        }
    }
}

/// A connection handed to hyper: the stream and what was read from it but not consumed.
pub struct Rewind {
    prefix: Bytes,
    inner: TcpStream,
}

impl Rewind {
    pub fn new(inner: TcpStream, prefix: Bytes) -> Rewind {
        Rewind { prefix, inner }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Idle connections to the application, the most recently used taken first.
pub struct Pool {
    idle: Mutex<Vec<(TcpStream, Instant)>>,
    idle_timeout: Duration,
}

impl Pool {
    pub fn new(idle_timeout: Duration) -> Pool {
        Pool {
            idle: Mutex::new(Vec::new()),
            idle_timeout,
        }
    }

    fn take(&self) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((s, since)) = idle.pop() {
            if since.elapsed() < self.idle_timeout && reusable(&s) {
                return Some(s);
            }
        }
        None
    }

    fn put(&self, s: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // The oldest connection goes once it has been idle too long (or the pool is full).
        if idle
            .first()
            .is_some_and(|(_, since)| since.elapsed() >= self.idle_timeout || idle.len() >= MAX_IDLE)
        {
            idle.remove(0);
        }
        idle.push((s, Instant::now()));
    }
}

/// Whether an idle connection to the application is still open and quiet: no system call unless the
/// reactor has seen it become readable (the application closed it, or sent what it should not have).
fn reusable(s: &TcpStream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match s.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut b = [0u8; 1];
            matches!(s.try_read(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}

/// Serves a client connection on the fast path until it closes (`None`) or sends something only hyper
/// handles (`Some`: the connection with the bytes already read).
pub async fn serve(
    proxy: &Arc<HttpProxy>,
    mut client: TcpStream,
    peer: SocketAddr,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Rewind> {
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    // The application's response bytes, reused from request to request.
    let mut rbuf = BytesMut::new();
    let peer_ip = peer.ip().to_string();
    let mut cache = SeriesCache::default();
    let (mut head_deadline, mut response_deadline) = (Deadline::new(), Deadline::new());
    let mut first = true;
    loop {
        if *shutdown.borrow() {
            return None;
        }
        let plan = loop {
            if !buf.is_empty() {
                match plan(proxy, &buf, peer, &peer_ip) {
                    Parsed::Ready(p) => break p,
                    Parsed::Partial if buf.len() <= proxy.settings.max_header_bytes => {}
                    _ => return Some(Rewind::new(client, buf.freeze())),
                }
            }
            // The first byte of a request may take as long as a keep-alive connection may idle (the
            // first request on a connection: the header read timeout); the rest of the head must come
            // within the header read timeout.
            let wait = if buf.is_empty() && !first {
                proxy.settings.idle_timeout
            } else {
                proxy.settings.header_read_timeout
            };
            let got = tokio::select! {
                g = read_within(&mut client, &mut buf, &mut head_deadline, wait) => g,
                _ = shutdown.changed(), if buf.is_empty() => return None,
            };
            match got {
                Got::Bytes => {}
                Got::Closed => return None,
                Got::TimedOut => {
                    if first || !buf.is_empty() {
                        proxy
                            .metrics
                            .error(HttpErrorKind::ClientTimeout, &format!("{peer}: no request head within {wait:?}"));
                    }
                    return None;
                }
            }
        };
        first = false;
        // The body, bounded by MAX_FAST_BODY, then the whole request to the application.
        let total = plan.head_len + plan.body_len;
        while buf.len() < total {
            match read_within(&mut client, &mut buf, &mut head_deadline, proxy.settings.header_read_timeout).await {
                Got::Bytes => {}
                Got::Closed => return None,
                Got::TimedOut => {
                    proxy
                        .metrics
                        .error(HttpErrorKind::ClientTimeout, &format!("{peer}: request body stalled"));
                    return None;
                }
            }
        }
        let mut request = plan.head;
        request.extend_from_slice(&buf[plan.head_len..total]);
        buf.advance(total);
        let connection = Connection {
            client: &mut client,
            rbuf: &mut rbuf,
            cache: &mut cache,
            deadline: &mut response_deadline,
        };
        let keep_open = exchange(proxy, connection, request, plan.done, plan.method_kind).await;
        if rbuf.capacity() > 4 * READ_SIZE {
            // A large response head grew it: idle connections keep only the usual size.
            rbuf = BytesMut::new();
        }
        if !keep_open || plan.close {
            return None;
        }
    }
}

/// What reading the client within a deadline gave.
enum Got {
    Bytes,
    /// The client closed its side, or the connection failed.
    Closed,
    TimedOut,
}

/// Reads what the client sends next into `buf`, giving up `after` from now.
async fn read_within(s: &mut TcpStream, buf: &mut BytesMut, deadline: &mut Deadline, after: Duration) -> Got {
    deadline.set(after);
    buf.reserve(READ_SIZE);
    tokio::select! {
        r = s.read_buf(buf) => match r {
            Ok(0) | Err(_) => Got::Closed,
            Ok(_) => Got::Bytes,
        },
        _ = deadline.expired() => Got::TimedOut,
    }
}

/// What an exchange uses of its client connection.
struct Connection<'a> {
    client: &'a mut TcpStream,
    /// The application's response bytes, reused from request to request.
    rbuf: &'a mut BytesMut,
    cache: &'a mut SeriesCache,
    /// The response deadline.
    deadline: &'a mut Deadline,
}

/// A parsed request, ready to go to the application.
struct Plan {
    head_len: usize,
    body_len: usize,
    /// The head the application gets.
    head: Vec<u8>,
    done: Completion,
    /// The client asked to close after this request.
    close: bool,
    method_kind: MethodKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum MethodKind {
    /// HEAD: the response has no body whatever its headers say.
    Head,
    /// May be sent again on a fresh connection if a reused one turns out closed (RFC 9110 §9.2.2).
    Idempotent,
    Other,
}

// Returned once per request and consumed at once: boxing the plan would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Ready(Plan),
    Partial,
    /// Not for the fast path: hyper takes the connection.
    Other,
}

fn plan(proxy: &Arc<HttpProxy>, buf: &[u8], peer: SocketAddr, peer_ip: &str) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        // Heads over the limit go to hyper, which answers 431.
        Ok(httparse::Status::Complete(n)) if n <= proxy.settings.max_header_bytes => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        _ => return Parsed::Other,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Other;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Other;
    };
    if !target.starts_with('/') || method == Method::CONNECT {
        return Parsed::Other;
    }
    // One pass over the headers: what decides the path, and what the proxy reads.
    let mut content_length: Option<u64> = None;
    let mut host = None;
    let mut close = false;
    let mut named: Vec<&str> = Vec::new();
    let (mut traceparent, mut tracestate, mut xff, mut user_agent) = (None, None, None, None);
    let mut has_proto = false;
    for h in req.headers.iter() {
        let n = h.name;
        if n.eq_ignore_ascii_case("content-length") {
            let Some(len) = parse_length(h.value) else {
                return Parsed::Other;
            };
            if content_length.replace(len).is_some() || len > MAX_FAST_BODY as u64 {
                return Parsed::Other;
            }
        } else if n.eq_ignore_ascii_case("transfer-encoding") || n.eq_ignore_ascii_case("upgrade") || n.eq_ignore_ascii_case("expect") {
            return Parsed::Other;
        } else if n.eq_ignore_ascii_case("connection") {
            let Ok(v) = std::str::from_utf8(h.value) else {
                return Parsed::Other;
            };
            for token in connection_tokens(v) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("upgrade") {
                    return Parsed::Other;
                } else if !token.eq_ignore_ascii_case("keep-alive") {
                    named.push(token);
                }
            }
        } else if n.eq_ignore_ascii_case("host") {
            let Ok(v) = std::str::from_utf8(h.value) else {
                return Parsed::Other;
            };
            if host.replace(v).is_some() {
                return Parsed::Other;
            }
        } else if n.eq_ignore_ascii_case("traceparent") {
            traceparent = traceparent.or(Some(h.value));
        } else if n.eq_ignore_ascii_case("tracestate") {
            tracestate = tracestate.or(Some(h.value));
        } else if n.eq_ignore_ascii_case("x-forwarded-for") {
            xff = xff.or(std::str::from_utf8(h.value).ok());
        } else if n.eq_ignore_ascii_case("x-forwarded-proto") {
            has_proto = true;
        } else if n.eq_ignore_ascii_case("user-agent") {
            user_agent = user_agent.or(std::str::from_utf8(h.value).ok());
        }
    }
    let Some(host) = host else {
        return Parsed::Other;
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let inbound = Inbound {
        method: &method,
        path,
        query,
        version: Version::HTTP_11,
        traceparent,
        tracestate,
        host: Some(host),
        user_agent,
    };
    let (done, context, continued) = proxy.begin(&inbound, peer);

    let body_len = content_length.unwrap_or(0) as usize;
    let mut head = Vec::with_capacity(head_len + 160 + body_len);
    head.extend_from_slice(method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for h in req.headers.iter() {
        if !headers::request_keeps(h.name, h.value, &named, continued) {
            continue;
        }
        header(&mut head, h.name, h.value);
    }
    header(&mut head, "traceparent", context.as_bytes());
    header(&mut head, "x-forwarded-for", headers::forwarded_for(xff, peer_ip).as_bytes());
    if !has_proto {
        header(&mut head, "x-forwarded-proto", headers::FORWARDED_PROTO.as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    let method_kind = match method {
        Method::HEAD => MethodKind::Head,
        Method::GET | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE => MethodKind::Idempotent,
        _ => MethodKind::Other,
    };
    Parsed::Ready(Plan {
        head_len,
        body_len,
        head,
        done,
        close,
        method_kind,
    })
}

fn header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A `Content-Length` value: digits only (RFC 9110 §8.6), no sign, no list.
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// A response head from the application, rewritten for the client.
struct ResponseHead {
    len: usize,
    status: u16,
    framing: Framing,
    /// The application will not take another request on this connection.
    app_closes: bool,
    /// The head the client gets (after any interim 1xx heads).
    out: Vec<u8>,
}

/// Why the exchange with the application failed before its response head.
enum Failure {
    /// The connection failed; `received` says whether any response byte had come.
    Io { received: bool, error: String },
    /// The application answered something that is not an HTTP/1.1 response this request allows.
    Invalid(String),
}

/// Sends `request` to the application and relays its response to the client (502 or 504 of its own if
/// the application fails); false when the client connection must close.
async fn exchange(proxy: &Arc<HttpProxy>, c: Connection<'_>, request: Vec<u8>, mut done: Completion, method_kind: MethodKind) -> bool {
    let Connection {
        client,
        rbuf,
        cache,
        deadline,
    } = c;
    let target = &proxy.upstream_addr;
    let mut retried = false;
    let (mut app, head) = loop {
        let pooled = if retried { None } else { proxy.pool.take() };
        let reused = pooled.is_some();
        let mut app = match pooled {
            Some(s) => s,
            None => match connect(proxy).await {
                Ok(s) => s,
                Err(e) => {
                    proxy
                        .metrics
                        .error(HttpErrorKind::UpstreamUnavailable, &format!("cannot connect to {target}: {e}"));
                    return local(client, done, StatusCode::BAD_GATEWAY).await;
                }
            },
        };
        rbuf.clear();
        deadline.set(proxy.settings.response_timeout);
        let sent = tokio::select! {
            r = send_and_read_head(&mut app, &request, rbuf, method_kind == MethodKind::Head) => Some(r),
            _ = deadline.expired() => None,
        };
        match sent {
            Some(Ok(head)) => break (app, head),
            // A reused connection the application had closed: once more on a fresh one, if that is safe.
            Some(Err(Failure::Io { received: false, .. })) if reused && method_kind != MethodKind::Other => {
                retried = true;
            }
            Some(Err(Failure::Io { error, .. } | Failure::Invalid(error))) => {
                proxy.metrics.error(HttpErrorKind::UpstreamFailed, &format!("{target}: {error}"));
                return local(client, done, StatusCode::BAD_GATEWAY).await;
            }
            None => {
                proxy.metrics.error(
                    HttpErrorKind::UpstreamTimeout,
                    &format!("{target}: no response within {:?}", proxy.settings.response_timeout),
                );
                return local(client, done, StatusCode::GATEWAY_TIMEOUT).await;
            }
        }
    };
    done.status = head.status;
    let mut framer = Framer::new(head.framing);
    let mut out = head.out;
    let after_head = &rbuf[head.len..];
    let take = match framer.feed(after_head) {
        Ok(n) => n,
        Err(()) => {
            proxy
                .metrics
                .error(HttpErrorKind::UpstreamFailed, &format!("{target}: malformed chunked body"));
            return local(client, done, StatusCode::BAD_GATEWAY).await;
        }
    };
    out.extend_from_slice(&after_head[..take]);
    // Bytes past the end of the response: the application cannot be trusted with another request.
    let mut app_reusable = !head.app_closes && take == after_head.len();
    // A client that goes away is its own business (as on hyper's path); an application whose body breaks
    // off is counted as an aborted response.
    if client.write_all(&out).await.is_err() {
        done.complete(false);
        return false;
    }
    let mut aborted = false;
    let mut client_gone = false;
    while !framer.done() {
        rbuf.clear();
        rbuf.reserve(READ_SIZE);
        match app.read_buf(rbuf).await {
            Ok(0) if head.framing == Framing::UntilClose => break,
            Ok(0) | Err(_) => {
                aborted = true;
                break;
            }
            Ok(_) => {}
        }
        let Ok(take) = framer.feed(rbuf) else {
            aborted = true;
            break;
        };
        app_reusable &= take == rbuf.len();
        if client.write_all(&rbuf[..take]).await.is_err() {
            client_gone = true;
            break;
        }
    }
    done.complete_with(aborted, Some(cache));
    if aborted || client_gone {
        return false;
    }
    if app_reusable {
        proxy.pool.put(app);
    }
    head.framing != Framing::UntilClose
}

async fn connect(proxy: &HttpProxy) -> io::Result<TcpStream> {
    let s = tokio::time::timeout(proxy.settings.connect_timeout, TcpStream::connect(proxy.upstream_addr.as_str()))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Writes the request and reads the final response head (interim 1xx heads are kept and go first).
async fn send_and_read_head(app: &mut TcpStream, request: &[u8], rbuf: &mut BytesMut, head_request: bool) -> Result<ResponseHead, Failure> {
    let io = |received: bool| {
        move |e: io::Error| Failure::Io {
            received,
            error: e.to_string(),
        }
    };
    app.write_all(request).await.map_err(io(false))?;
    let mut interim = Vec::new();
    loop {
        match parse_response(rbuf, head_request)? {
            Some(head) if (100..200).contains(&head.status) => {
                if head.status == 101 {
                    return Err(Failure::Invalid("101 Switching Protocols without an upgrade request".into()));
                }
                interim.extend_from_slice(&head.out);
                rbuf.advance(head.len);
                if interim.len() > MAX_RESPONSE_HEAD {
                    return Err(Failure::Invalid(format!("interim responses over {MAX_RESPONSE_HEAD} bytes")));
                }
                continue;
            }
            Some(mut head) => {
                if !interim.is_empty() {
                    interim.extend_from_slice(&head.out);
                    head.out = interim;
                }
                return Ok(head);
            }
            None if rbuf.len() > MAX_RESPONSE_HEAD => {
                return Err(Failure::Invalid(format!("response head over {MAX_RESPONSE_HEAD} bytes")));
            }
            None => {}
        }
        let received = !rbuf.is_empty() || !interim.is_empty();
        rbuf.reserve(READ_SIZE);
        match app.read_buf(rbuf).await {
            Ok(0) => {
                return Err(Failure::Io {
                    received,
                    error: "connection closed before the response head".into(),
                })
            }
            Ok(_) => {}
            Err(e) => return Err(io(received)(e)),
        }
    }
}

/// The response head in `buf`, if complete; its framing by RFC 9112 §6.3.
fn parse_response(buf: &[u8], head_request: bool) -> Result<Option<ResponseHead>, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Failure::Invalid(format!("malformed response head: {e}"))),
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Err(Failure::Invalid("malformed response head".into()));
    };
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut app_closes = version == 0;
    let mut named: Vec<&str> = Vec::new();
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            match (parse_length(h.value), length) {
                (Some(l), None) => length = Some(l),
                (Some(l), Some(prior)) if l == prior => {}
                _ => return Err(Failure::Invalid("invalid Content-Length".into())),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked only if it is the last coding (RFC 9112 §6.3: otherwise the body ends at close).
            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = std::str::from_utf8(h.value).unwrap_or_default();
            for token in connection_tokens(v) {
                if token.eq_ignore_ascii_case("close") {
                    app_closes = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    app_closes &= version != 0;
                } else {
                    named.push(token);
                }
            }
        }
    }
    let framing = if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(l)) => Framing::Length(l),
            (None, None) => Framing::UntilClose,
        }
    };
    let mut out = Vec::with_capacity(len + 32);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        if !headers::response_keeps(h.name, &named)
            // With Transfer-Encoding, Content-Length means nothing and must not reach the client
            // (RFC 9112 §6.3).
            || (chunked.is_some() && h.name.eq_ignore_ascii_case("content-length"))
        {
            continue;
        }
        header(&mut out, h.name, h.value);
    }
    if framing == Framing::UntilClose {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(ResponseHead {
        len,
        status,
        framing,
        app_closes: app_closes || framing == Framing::UntilClose,
        out,
    }))
}

/// Answers with a response of the proxy's own (502, 504) and records the request; false if the client
/// is gone.
async fn local(client: &mut TcpStream, mut done: Completion, status: StatusCode) -> bool {
    done.status = status.as_u16();
    let body = local_text(status);
    let response = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let sent = client.write_all(response.as_bytes()).await.is_ok();
    done.complete(!sent);
    sent
}

/// Finds where a response body ends in the bytes relayed, without buffering them.
#[derive(Debug)]
enum Framer {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
}

/// Where a chunked body's decoder stands (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size { value: u64, digits: u8 },
    Extension { value: u64 },
    SizeLf { value: u64 },
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

impl Framer {
    fn new(framing: Framing) -> Framer {
        match framing {
            Framing::Empty => Framer::Length(0),
            Framing::Length(n) => Framer::Length(n),
            Framing::Chunked => Framer::Chunked(Chunk::Size { value: 0, digits: 0 }),
            Framing::UntilClose => Framer::UntilClose,
        }
    }

    fn done(&self) -> bool {
        matches!(self, Framer::Length(0) | Framer::Chunked(Chunk::Done))
    }

    /// How many bytes of `b` belong to the body (the rest is past its end); an error if the chunked
    /// framing is broken.
    fn feed(&mut self, b: &[u8]) -> Result<usize, ()> {
        match self {
            Framer::UntilClose => Ok(b.len()),
            Framer::Length(left) => {
                let n = (*left).min(b.len() as u64);
                *left -= n;
                Ok(n as usize)
            }
            Framer::Chunked(state) => {
                let mut i = 0;
                while i < b.len() && *state != Chunk::Done {
                    let c = b[i];
                    *state = match *state {
                        Chunk::Data(left) => {
                            let n = left.min((b.len() - i) as u64);
                            i += n as usize;
                            if n == left {
                                Chunk::DataCr
                            } else {
                                Chunk::Data(left - n)
                            }
                        }
                        s => {
                            i += 1;
                            chunk_step(s, c)?
                        }
                    };
                }
                Ok(i)
            }
        }
    }
}

fn chunk_step(state: Chunk, c: u8) -> Result<Chunk, ()> {
    Ok(match (state, c) {
        (Chunk::Size { value, digits }, c) if c.is_ascii_hexdigit() => {
            if digits >= 15 {
                return Err(());
            }
            let d = (c as char).to_digit(16).ok_or(())? as u64;
            Chunk::Size {
                value: value * 16 + d,
                digits: digits + 1,
            }
        }
        (Chunk::Size { value, digits }, b';' | b' ' | b'\t') if digits > 0 => Chunk::Extension { value },
        (Chunk::Size { value, digits }, b'\r') if digits > 0 => Chunk::SizeLf { value },
        (Chunk::Extension { value }, b'\r') => Chunk::SizeLf { value },
        (Chunk::Extension { .. }, b'\n') => return Err(()),
        (Chunk::Extension { value }, _) => Chunk::Extension { value },
        (Chunk::SizeLf { value: 0 }, b'\n') => Chunk::TrailerStart,
        (Chunk::SizeLf { value }, b'\n') => Chunk::Data(value),
        (Chunk::DataCr, b'\r') => Chunk::DataLf,
        (Chunk::DataLf, b'\n') => Chunk::Size { value: 0, digits: 0 },
        (Chunk::TrailerStart, b'\r') => Chunk::EndLf,
        (Chunk::TrailerStart | Chunk::Trailer, b'\n') => return Err(()),
        (Chunk::TrailerStart | Chunk::Trailer, _) if c != b'\r' => Chunk::Trailer,
        (Chunk::Trailer, b'\r') => Chunk::TrailerLf,
        (Chunk::TrailerLf, b'\n') => Chunk::TrailerStart,
        (Chunk::EndLf, b'\n') => Chunk::Done,
        _ => return Err(()),
    })
}

#[cfg(test)]
mod tests;
