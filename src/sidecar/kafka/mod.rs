//! The sidecar's Kafka protocol proxy.
//!
//! The application points `bootstrap.servers` at the sidecar's `kafka_listen` address. That listener
//! relays to the upstream bootstrap servers; every broker named in a response gets a listener of its own
//! (opened as brokers appear), and every response that names brokers is rewritten to those listeners, so
//! the client never learns an upstream address and leadership moves keep working.
//!
//! Requests and responses are relayed as bytes; responses over 64 KiB (large Fetch responses) are streamed
//! through as they arrive. Only ApiVersions (clamped to what the sidecar decodes), Metadata,
//! FindCoordinator and DescribeCluster responses are decoded and re-encoded, and Produce requests when
//! trace context is injected. Produce, Fetch and OffsetCommit responses are also read, from a copy, by an
//! observer task beside the data path (see `observe` and `consume`). Correlation ids are
//! never touched, and pipelining is preserved: Kafka answers a connection's requests in order, so the proxy
//! keeps a FIFO of (correlation id, API, version) per connection. SASL frames pass unchanged, so brokers
//! authenticate and authorize the application's own identity; TLS to the brokers is the sidecar's.
//!
//! Limits: a frame longer than `max_frame_bytes` (either direction) or too short to hold a header closes
//! that connection with a logged reason and a counted error kind; connections beyond `max_connections`
//! are refused the same way. Other connections carry on.

pub mod consume;
pub mod produce;
pub mod rewrite;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::kafka::Security;
use crate::telemetry::kafka::{api_label, ProxyErrorKind, ProxyMetrics};
use crate::telemetry::traces::{TraceMode, Tracer};
use kafka_protocol::messages::ApiKey;
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use rewrite::AddressMap;

/// Requests tracked per connection while their responses are outstanding. Requests that get no response
/// (Produce with acks=0) are dropped from the front as later responses arrive; this bounds the rest.
const MAX_TRACKED: usize = 4096;

/// Responses larger than this are streamed to the client as they arrive; smaller ones are read whole.
const STREAM_ABOVE: usize = 64 * 1024;

/// Produce requests larger than this are rewritten (trace headers) on the blocking pool, not on the
/// runtime thread that relays every connection.
const REWRITE_OFF_THREAD_ABOVE: usize = 64 * 1024;

/// Read buffer per direction and connection.
const READ_BUFFER: usize = 64 * 1024;

/// A request awaiting its response: correlation id, API key, version, when it was relayed (monotonic and
/// wall clock), and what its response is to be matched with.
struct Pending {
    correlation: i32,
    key: i16,
    version: i16,
    sent: Instant,
    sent_at: SystemTime,
    ask: Ask,
}

/// Bytes of relayed responses waiting to be observed, at most (each counts its length + 256, a larger
/// one the whole budget): beyond it, responses are relayed but not observed, and counted.
const OBSERVE_BUDGET: u32 = 16 * 1024 * 1024;

/// How long a spare observation buffer is kept unused before it is freed.
const SPARE_IDLE: Duration = Duration::from_secs(2);

/// A relayed response to read for what it tells (offsets acknowledged, records delivered, commits).
struct Observation {
    frame: Bytes,
    version: i16,
    latency: Duration,
    sent_at: SystemTime,
    ask: Ask,
    _budget: OwnedSemaphorePermit,
}

/// What the proxy reads from a request to make sense of its response.
enum Ask {
    None,
    Produce(produce::ProduceAsk),
    Fetch(consume::FetchAsk),
    Commit(consume::CommitAsk),
}
/// A connection's requests in the order they were relayed (Kafka answers in that order).
type Inflight = Arc<Mutex<VecDeque<Pending>>>;

/// What the proxy needs to run.
#[derive(Clone)]
pub struct ProxySettings {
    pub listen: SocketAddr,
    /// The host clients are told to connect to (default: the listen address, or 127.0.0.1 for 0.0.0.0).
    pub advertised_host: String,
    pub upstream_bootstrap: Vec<String>,
    /// TLS towards the brokers (SASL is the application's own and passes through).
    pub security: Security,
    pub max_frame_bytes: usize,
    pub max_connections: usize,
    pub connect_timeout: Duration,
    /// What to do with trace context in records.
    pub trace_mode: TraceMode,
    /// Largest record batch the sidecar makes by adding trace headers.
    pub max_batch_bytes: usize,
    /// The `cluster` label of the lag and consistency series the sidecar measures.
    pub cluster: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Bootstrap,
    Broker(i32),
}

struct BrokerRoute {
    upstream: String,
    local_port: u16,
}

/// The running proxy: its listeners and routes.
pub struct Proxy {
    settings: ProxySettings,
    metrics: ProxyMetrics,
    tracer: Tracer,
    consumption: consume::Consumption,
    observations: std::sync::mpsc::Sender<Observation>,
    observe_budget: Arc<Semaphore>,
    /// The last large observation buffer, back from the observer, and when: the next large response is
    /// read into it rather than into fresh pages (a 50 MB Fetch response would otherwise cost 12,800 page
    /// faults and as many zeroed pages, on the thread that relays). Freed after [`SPARE_IDLE`] unused.
    spare: Mutex<Option<(BytesMut, Instant)>>,
    routes: Mutex<HashMap<i32, BrokerRoute>>,
    permits: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
    runtime: tokio::runtime::Handle,
}

impl Proxy {
    /// Binds the bootstrap listener and starts serving; returns once it is bound.
    pub async fn start(
        settings: ProxySettings,
        metrics: ProxyMetrics,
        tracer: Tracer,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<Arc<Proxy>> {
        let listener = TcpListener::bind(settings.listen).await?;
        let (observations, observe_rx) = std::sync::mpsc::channel();
        let proxy = Arc::new(Proxy {
            observations,
            observe_budget: Arc::new(Semaphore::new(OBSERVE_BUDGET as usize)),
            spare: Mutex::new(None),
            permits: Arc::new(Semaphore::new(settings.max_connections)),
            consumption: consume::Consumption::new(metrics.clone(), tracer.clone(), settings.cluster.clone(), settings.max_frame_bytes),
            tracer,
            settings,
            metrics,
            routes: Mutex::new(HashMap::new()),
            shutdown,
            runtime: tokio::runtime::Handle::current(),
        });
        tokio::spawn(proxy.clone().accept_loop(listener, Target::Bootstrap));
        tokio::spawn(proxy.clone().refresh_loop());
        let observer = proxy.clone();
        std::thread::Builder::new()
            .name("eventscope-observer".into())
            .spawn(move || observer.observe_loop(observe_rx))?;
        Ok(proxy)
    }

    /// The local port serving a broker, if one is open.
    pub fn broker_port(&self, node_id: i32) -> Option<u16> {
        self.routes.lock().expect("routes lock").get(&node_id).map(|r| r.local_port)
    }

    /// Keeps the lag gauges current between commits.
    async fn refresh_loop(self: Arc<Self>) {
        let mut shutdown = self.shutdown.clone();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.consumption.refresh();
                    let mut spare = self.spare.lock().expect("spare lock");
                    if spare.as_ref().is_some_and(|(_, at)| at.elapsed() >= SPARE_IDLE) {
                        *spare = None;
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Reads relayed responses off the data path, on a thread of its own: measuring (decoding Fetch
    /// responses, decompressing batches for their trace headers, building spans) never holds a runtime
    /// worker that relays the application's traffic, and a backlog beyond [`OBSERVE_BUDGET`] is skipped
    /// and counted rather than held.
    fn observe_loop(self: Arc<Self>, rx: std::sync::mpsc::Receiver<Observation>) {
        loop {
            let o = match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(o) => o,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if !*self.shutdown.borrow() => continue,
                Err(_) => return,
            };
            match o.ask {
                Ask::None => {}
                Ask::Produce(ask) => self.observe_produce(&o.frame, o.version, o.latency, o.sent_at, ask),
                // Times are when the response arrived, not when the observer got to it.
                Ask::Fetch(ask) => self.consumption.fetch_response(&o.frame, o.version, ask, o.sent_at + o.latency),
                Ask::Commit(ask) => self.consumption.commit_response(&o.frame, o.version, ask, o.sent_at + o.latency),
            }
            // Nothing refers to the frame any more: a large buffer is kept for the next large response.
            if o.frame.len() >= crate::memory::OWN_PAGES_FROM {
                if let Ok(buf) = o.frame.try_into_mut() {
                    let mut spare = self.spare.lock().expect("spare lock");
                    if spare.as_ref().is_none_or(|(b, _)| b.capacity() <= buf.capacity()) {
                        *spare = Some((buf, Instant::now()));
                    }
                }
            }
        }
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, target: Target) {
        let mut shutdown = self.shutdown.clone();
        let refused = |peer| {
            self.metrics.error(
                ProxyErrorKind::ConnectionLimit,
                &format!("{peer}: over {} connections", self.settings.max_connections),
            )
        };
        while let Some((stream, _, permit)) = crate::accept::next(&listener, &self.permits, &mut shutdown, "kafka proxy", refused).await {
            tokio::spawn(self.clone().serve(stream, target, permit));
        }
    }

    /// Opens (or reuses) the listener for a broker and records where it lives upstream.
    fn ensure_listener(self: &Arc<Self>, node_id: i32, upstream: String) -> Option<u16> {
        let mut routes = self.routes.lock().expect("routes lock");
        if let Some(r) = routes.get_mut(&node_id) {
            // A broker that moved keeps its local port.
            r.upstream = upstream;
            return Some(r.local_port);
        }
        let ip = self.settings.listen.ip();
        // Port per broker (as Kroxylicious does): listen port + 1 + node id when free, else any port.
        let preferred = (node_id >= 0)
            .then(|| self.settings.listen.port() as i64 + 1 + node_id as i64)
            .filter(|p| *p < 65536 && self.settings.listen.port() != 0);
        let std_listener = preferred
            .and_then(|p| std::net::TcpListener::bind(SocketAddr::new(ip, p as u16)).ok())
            .or_else(|| std::net::TcpListener::bind(SocketAddr::new(ip, 0)).ok())?;
        std_listener.set_nonblocking(true).ok()?;
        let local_port = std_listener.local_addr().ok()?.port();
        let _guard = self.runtime.enter();
        let listener = TcpListener::from_std(std_listener).ok()?;
        tracing::info!(node_id, %upstream, local_port, "kafka proxy: listener for broker");
        routes.insert(node_id, BrokerRoute { upstream, local_port });
        self.runtime.spawn(self.clone().accept_loop(listener, Target::Broker(node_id)));
        Some(local_port)
    }

    async fn dial(&self, target: Target) -> Result<Box<dyn crate::kafka::conn::Stream>, String> {
        let candidates: Vec<String> = match target {
            Target::Bootstrap => self.settings.upstream_bootstrap.clone(),
            Target::Broker(n) => match self.routes.lock().expect("routes lock").get(&n) {
                Some(r) => vec![r.upstream.clone()],
                None => return Err(format!("no route to broker {n}")),
            },
        };
        let mut last = String::from("no upstream address");
        for addr in candidates {
            match crate::kafka::conn::dial(&addr, self.settings.connect_timeout, &self.settings.security).await {
                Ok(s) => return Ok(s),
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(last)
    }

    async fn serve(self: Arc<Self>, client: TcpStream, target: Target, _permit: OwnedSemaphorePermit) {
        self.metrics.connections_total.inc();
        self.metrics.connections.inc();
        let upstream = match self.dial(target).await {
            Ok(s) => s,
            Err(e) => {
                self.metrics.error(ProxyErrorKind::UpstreamUnreachable, &e);
                self.metrics.connections.dec();
                return;
            }
        };
        let (client_read, client_write) = client.into_split();
        let (upstream_read, upstream_write) = tokio::io::split(upstream);
        // Buffered reads: a small frame's length and body usually arrive in one read.
        let client_read = BufReader::with_capacity(READ_BUFFER, client_read);
        let upstream_read = BufReader::with_capacity(READ_BUFFER, upstream_read);
        let inflight: Inflight = Arc::new(Mutex::new(VecDeque::new()));
        let requests = self.clone().relay_requests(client_read, upstream_write, inflight.clone());
        let responses = self.clone().relay_responses(upstream_read, client_write, inflight);
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            _ = requests => {}
            _ = responses => {}
            _ = shutdown.changed() => {}
        }
        self.metrics.connections.dec();
    }

    /// Client → broker: frames relayed as they are, each request's API and version remembered.
    async fn relay_requests(self: Arc<Self>, mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, inflight: Inflight) {
        loop {
            let frame = match read_frame(&mut from, self.settings.max_frame_bytes, 8).await {
                Ok(f) => f,
                Err(FrameError::Closed) => return,
                Err(FrameError::Bad(kind, why)) => {
                    self.metrics.error(kind, &format!("request: {why}"));
                    return;
                }
            };
            let key = i16::from_be_bytes([frame[4], frame[5]]);
            let version = i16::from_be_bytes([frame[6], frame[7]]);
            let correlation = i32::from_be_bytes([frame[8], frame[9], frame[10], frame[11]]);
            let api = api_label(key);
            self.metrics.requests.with_label_values(&[api]).inc();
            self.metrics.bytes.with_label_values(&[api, "request"]).inc_by(frame.len() as u64);
            // Rewriting a large Produce request (decompress, add headers, recompress) takes milliseconds:
            // it runs on the blocking pool, so the runtime thread keeps relaying other connections.
            let (ask, frame) =
                if key == ApiKey::Produce as i16 && frame.len() > REWRITE_OFF_THREAD_ABOVE && self.settings.trace_mode != TraceMode::Off {
                    let proxy = self.clone();
                    match tokio::task::spawn_blocking(move || proxy.read_request(frame, key, version)).await {
                        Ok(r) => r,
                        Err(e) => {
                            self.metrics
                                .error(ProxyErrorKind::RecordsUnreadable, &format!("produce rewrite: {e}"));
                            return;
                        }
                    }
                } else {
                    self.read_request(frame, key, version)
                };
            {
                let mut q = inflight.lock().expect("inflight lock");
                if q.len() >= MAX_TRACKED {
                    q.pop_front();
                }
                q.push_back(Pending {
                    correlation,
                    key,
                    version,
                    sent: Instant::now(),
                    sent_at: SystemTime::now(),
                    ask,
                });
            }
            if to.write_all(&frame).await.is_err() {
                return;
            }
        }
    }

    /// Broker → client. Responses that name brokers or versions are read whole and rewritten; all others
    /// are streamed through as they arrive (no store-and-forward delay on large Fetch responses), with a
    /// copy kept for the observer when it wants one and its budget allows.
    async fn relay_responses<R: AsyncRead + Unpin>(
        self: Arc<Self>,
        mut from: BufReader<R>,
        mut to: impl AsyncWrite + Unpin,
        inflight: Inflight,
    ) {
        let max = self.settings.max_frame_bytes;
        loop {
            let mut head = [0u8; 8];
            if from.read_exact(&mut head[..4]).await.is_err() {
                return;
            }
            let n = i32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            if n < 4 || n as usize > max {
                let (kind, why) = if n < 4 {
                    (ProxyErrorKind::MalformedFrame, format!("frame of {n} bytes is too short"))
                } else {
                    (ProxyErrorKind::OversizedFrame, format!("frame of {n} bytes exceeds {max}"))
                };
                self.metrics.error(kind, &format!("response: {why}"));
                return;
            }
            if from.read_exact(&mut head[4..]).await.is_err() {
                return;
            }
            let received = Instant::now();
            let correlation = i32::from_be_bytes([head[4], head[5], head[6], head[7]]);
            let request = {
                let mut q = inflight.lock().expect("inflight lock");
                // Requests without responses (acks=0) were sent before this one: drop them.
                match q.iter().position(|p| p.correlation == correlation) {
                    Some(i) => {
                        q.drain(..i);
                        q.pop_front()
                    }
                    None => None,
                }
            };
            let Some(Pending {
                key,
                version,
                sent,
                sent_at,
                ask,
                ..
            }) = request
            else {
                self.metrics.error(
                    ProxyErrorKind::MalformedFrame,
                    &format!("response to unknown correlation id {correlation}"),
                );
                if to.write_all(&head).await.is_err() || stream(&mut from, &mut to, n as usize - 4, None).await.is_err() {
                    return;
                }
                continue;
            };
            let api = api_label(key);
            self.metrics
                .duration
                .with_label_values(&[api])
                .observe(received.duration_since(sent).as_secs_f64());
            self.metrics.bytes.with_label_values(&[api, "response"]).inc_by(4 + n as u64);
            if rewrite::needs_rewrite(key) {
                let Ok(frame) = read_rest(&mut from, &head, n as usize).await else {
                    return;
                };
                let out = match rewrite::rewrite(key, version, &frame.slice(4..), &self) {
                    Ok(body) => rewrite::frame(&body),
                    Err(e) => {
                        self.metrics.error(ProxyErrorKind::RewriteFailed, &format!("{api} v{version}: {e}"));
                        frame
                    }
                };
                if to.write_all(&out).await.is_err() {
                    return;
                }
                continue;
            }
            // What the response tells (acknowledged offsets, delivered records, commits) is read by the
            // observer task from a copy, after the client has the response.
            let permit = if matches!(ask, Ask::None) {
                None
            } else {
                let cost = (n as u32).saturating_add(260).min(OBSERVE_BUDGET);
                let permit = self.observe_budget.clone().try_acquire_many_owned(cost).ok();
                if permit.is_none() {
                    self.metrics.unobserved.inc();
                }
                permit
            };
            let frame = if n as usize <= STREAM_ABOVE {
                // Small: read whole, written in one go (one packet), shared with the observer as is.
                let Ok(frame) = read_rest(&mut from, &head, n as usize).await else {
                    return;
                };
                if to.write_all(&frame).await.is_err() {
                    return;
                }
                permit.is_some().then_some(frame)
            } else {
                let mut copy = permit.as_ref().map(|_| {
                    let mut b = self.observation_buffer(4 + n as usize);
                    b.extend_from_slice(&head);
                    b
                });
                if to.write_all(&head).await.is_err() || stream(&mut from, &mut to, n as usize - 4, copy.as_mut()).await.is_err() {
                    return;
                }
                copy.map(BytesMut::freeze)
            };
            if let (Some(frame), Some(permit)) = (frame, permit) {
                let _ = self.observations.send(Observation {
                    frame,
                    version,
                    latency: received.duration_since(sent),
                    sent_at,
                    ask,
                    _budget: permit,
                });
            }
        }
    }
}

/// The whole frame whose length prefix and correlation id are `head` and whose length is `n`.
async fn read_rest<R: AsyncRead + Unpin>(from: &mut BufReader<R>, head: &[u8; 8], n: usize) -> std::io::Result<Bytes> {
    let mut frame = BytesMut::with_capacity(4 + n);
    frame.extend_from_slice(head);
    stream(from, &mut tokio::io::sink(), n - 4, Some(&mut frame)).await?;
    Ok(frame.freeze())
}

/// The `client.id` of a request header ("" when null).
pub(crate) fn client_id(header: &kafka_protocol::messages::RequestHeader) -> String {
    header.client_id.as_ref().map(|c| c.to_string()).unwrap_or_default()
}

/// Decodes a request frame (length prefix included) as API `key`: its header and body, `None` if either
/// does not decode.
pub(crate) fn decode_request<R: kafka_protocol::protocol::Decodable>(
    frame: &Bytes,
    key: ApiKey,
    version: i16,
) -> Option<(kafka_protocol::messages::RequestHeader, R)> {
    use kafka_protocol::protocol::Decodable;
    let mut buf = frame.slice(4..);
    let header = kafka_protocol::messages::RequestHeader::decode(&mut buf, key.request_header_version(version)).ok()?;
    let request = R::decode(&mut buf, version).ok()?;
    Some((header, request))
}

/// Most bytes moved per read when streaming a response: a read takes whatever the socket holds, up to
/// this (16 of the 64 KiB reads it replaces), so a 50 MB Fetch response costs the proxy about 50 reads,
/// writes and client wake-ups rather than 800 (strace).
const STREAM_CHUNK: usize = 1024 * 1024;

/// Moves `n` bytes from `from` to `to` as they arrive, appending them to `copy` too when given: what the
/// read buffer holds first, then reads straight into `copy` (or a scratch buffer) past the read buffer.
async fn stream<R: AsyncRead + Unpin>(
    from: &mut BufReader<R>,
    to: &mut (impl AsyncWrite + Unpin),
    mut n: usize,
    mut copy: Option<&mut BytesMut>,
) -> std::io::Result<()> {
    let buffered = from.buffer().len().min(n);
    if buffered > 0 {
        to.write_all(&from.buffer()[..buffered]).await?;
        if let Some(c) = copy.as_deref_mut() {
            c.extend_from_slice(&from.buffer()[..buffered]);
        }
        std::pin::Pin::new(&mut *from).consume(buffered);
        n -= buffered;
    }
    let mut scratch = Vec::new();
    while n > 0 {
        let want = n.min(STREAM_CHUNK);
        let got = match copy.as_deref_mut() {
            Some(c) => {
                let at = c.len();
                c.reserve(want);
                let got = from.read_buf(&mut (&mut *c).limit(want)).await?;
                to.write_all(&c[at..at + got]).await?;
                got
            }
            None => {
                scratch.resize(want.max(scratch.len()), 0);
                let got = from.read(&mut scratch[..want]).await?;
                to.write_all(&scratch[..got]).await?;
                got
            }
        };
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        n -= got;
    }
    Ok(())
}

impl Proxy {
    /// An empty buffer for a copy of `len` bytes: the spare one when it is large enough.
    fn observation_buffer(&self, len: usize) -> BytesMut {
        if len >= crate::memory::OWN_PAGES_FROM {
            // A spare too small is freed before the larger buffer is made, never held beside it.
            let spare = self.spare.lock().expect("spare lock").take();
            if let Some((mut b, _)) = spare.filter(|(b, _)| b.capacity() >= len) {
                b.clear();
                return b;
            }
        }
        BytesMut::with_capacity(len)
    }

    /// What a request's response will be matched with; for Produce with trace injection, the rewritten frame.
    fn read_request(&self, frame: Bytes, key: i16, version: i16) -> (Ask, Bytes) {
        match ApiKey::try_from(key) {
            Ok(ApiKey::Produce) => {
                let work = (self.settings.trace_mode != TraceMode::Off).then_some(produce::TraceWork {
                    tracer: &self.tracer,
                    mode: self.settings.trace_mode,
                    metrics: &self.metrics,
                    decompress_limit: self.settings.max_frame_bytes,
                    max_batch_bytes: self.settings.max_batch_bytes,
                });
                match produce::produce_request(&frame, version, work) {
                    Some((ask, Some(rewritten))) if rewritten.len() <= self.settings.max_frame_bytes => (Ask::Produce(ask), rewritten),
                    Some((ask, _)) => (Ask::Produce(ask), frame),
                    None => (Ask::None, frame),
                }
            }
            Ok(ApiKey::Fetch) => (consume::fetch_request(&frame, version).map_or(Ask::None, Ask::Fetch), frame),
            Ok(ApiKey::OffsetCommit) => (consume::commit_request(&frame, version).map_or(Ask::None, Ask::Commit), frame),
            _ => (Ask::None, frame),
        }
    }

    /// Producer-side metrics and `send` spans from a Produce response and what its request held.
    fn observe_produce(&self, frame: &Bytes, version: i16, latency: Duration, sent_at: SystemTime, ask: produce::ProduceAsk) {
        let Some(outcomes) = produce::produce_response(frame, version) else {
            return;
        };
        let acked_at = sent_at + latency;
        let batches = ask.batches;
        let mut spans = ask.spans;
        for (topic, partition, error, base_offset) in &outcomes {
            let mine;
            (mine, spans) = spans.into_iter().partition(|s| *s.topic == **topic && s.partition == *partition);
            // Unsampled spans are never exported: skip building them.
            for s in mine.into_iter().filter(|s| s.start.context.is_sampled()) {
                let mut attributes = vec![
                    KeyValue::new("messaging.system", "kafka"),
                    KeyValue::new("messaging.operation.name", "send"),
                    KeyValue::new("messaging.operation.type", "send"),
                    KeyValue::new("messaging.destination.name", topic.clone()),
                    KeyValue::new("messaging.destination.partition.id", partition.to_string()),
                    KeyValue::new("messaging.client.id", ask.client.clone()),
                ];
                let failure = (*error != 0).then(|| produce::error_label(*error));
                match &failure {
                    None => attributes.push(KeyValue::new("messaging.kafka.offset", base_offset.saturating_add(s.index))),
                    Some(e) => attributes.push(KeyValue::new("error.type", e.clone())),
                }
                self.tracer.finish(
                    s.start,
                    SpanKind::Producer,
                    format!("send {topic}"),
                    sent_at,
                    acked_at,
                    attributes,
                    failure,
                );
            }
        }
        let latency = latency.as_secs_f64();
        let mut topics_seen = std::collections::HashSet::new();
        for (topic, partition, error, _) in outcomes {
            let label = self.metrics.topic_label(&topic);
            if topics_seen.insert(topic.clone()) {
                self.metrics.produce_duration.with_label_values(&[&label]).observe(latency);
            }
            if error != 0 {
                self.metrics
                    .produce_errors
                    .with_label_values(&[&label, &produce::error_label(error)])
                    .inc();
                continue;
            }
            if let Some(b) = batches.iter().find(|b| b.topic == topic && b.partition == partition) {
                self.metrics.produced_records.with_label_values(&[&label]).inc_by(b.records);
                self.metrics.produced_bytes.with_label_values(&[&label]).inc_by(b.bytes);
            }
        }
    }
}

impl AddressMap for Arc<Proxy> {
    fn local_for(&self, node_id: i32, host: &str, port: i32) -> Option<(String, i32)> {
        let port = self.ensure_listener(node_id, format!("{host}:{port}"))?;
        Some((self.settings.advertised_host.clone(), port as i32))
    }
}

enum FrameError {
    Closed,
    Bad(ProxyErrorKind, String),
}

/// Reads one length-prefixed frame (prefix included), checking its length before allocating.
async fn read_frame(r: &mut (impl AsyncRead + Unpin), max: usize, min: usize) -> Result<Bytes, FrameError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.map_err(|_| FrameError::Closed)?;
    let n = i32::from_be_bytes(len);
    if n < 0 || (n as usize) < min {
        return Err(FrameError::Bad(
            ProxyErrorKind::MalformedFrame,
            format!("frame of {n} bytes is too short"),
        ));
    }
    if n as usize > max {
        return Err(FrameError::Bad(
            ProxyErrorKind::OversizedFrame,
            format!("frame of {n} bytes exceeds {max}"),
        ));
    }
    // Filled by reading, not zeroed first: the length is already checked against the maximum.
    let mut buf = BytesMut::with_capacity(4 + n as usize);
    buf.extend_from_slice(&len);
    let mut body = r.take(n as u64);
    while buf.len() < 4 + n as usize {
        if body.read_buf(&mut buf).await.map_err(|_| FrameError::Closed)? == 0 {
            return Err(FrameError::Closed);
        }
    }
    Ok(buf.freeze())
}

/// The host to advertise for a listen address: itself, or loopback for an unspecified address.
pub fn default_advertised_host(listen: &SocketAddr) -> String {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".into(),
        IpAddr::V6(ip) if ip.is_unspecified() => "::1".into(),
        ip => ip.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The observer hands a large buffer back whole once the decoded response that sliced it is gone,
    /// and the relay gets it back for a response that fits.
    #[test]
    fn an_observed_frame_comes_back_as_the_spare_buffer() {
        let len = crate::memory::OWN_PAGES_FROM + 10;
        let mut b = BytesMut::with_capacity(len);
        b.resize(len, 7);
        let frame = b.freeze();
        let slice = frame.slice(100..200);
        let frame = frame.try_into_mut().expect_err("a slice still refers to it");
        drop(slice);
        let back = frame.try_into_mut().expect("unique again");
        assert!(back.capacity() >= len);
        assert_eq!(back.len(), len);
    }
}
