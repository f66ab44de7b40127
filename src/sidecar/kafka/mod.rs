//! The sidecar's Kafka protocol proxy.
//!
//! The application points `bootstrap.servers` at the sidecar's `kafka_listen` address. That listener
//! relays to the upstream bootstrap servers; every broker named in a response gets a listener of its own
//! (opened as brokers appear), and every response that names brokers is rewritten to those listeners, so
//! the client never learns an upstream address and leadership moves keep working.
//!
//! Requests and responses are relayed as bytes; frames over 64 KiB are streamed through as they arrive
//! (large Fetch responses, and Produce requests that are not rewritten, read on the way), so none is held
//! whole unless it must be changed. Only ApiVersions (clamped to what the sidecar decodes), Metadata,
//! FindCoordinator and DescribeCluster responses are decoded and re-encoded, and Produce requests when
//! trace context is injected. Produce, Fetch and OffsetCommit responses are also read, from a copy, by an
//! observer thread beside the data path (`observer`, `produce`, `consume`). Correlation ids are
//! never touched, and pipelining is preserved: Kafka answers a connection's requests in order, so the proxy
//! keeps a FIFO of (correlation id, API, version) per connection. SASL frames pass unchanged, so brokers
//! authenticate and authorize the application's own identity; TLS to the brokers is the sidecar's.
//!
//! Limits: a frame longer than `max_frame_bytes` (either direction) or too short to hold a header closes
//! that connection with a logged reason and a counted error kind; connections beyond `max_connections`
//! are refused the same way. Other connections carry on.
//!
//! Shutdown: on SIGTERM the listeners stop accepting, each connection stops reading new requests and
//! relays the responses to the ones already sent, then closes; [`Proxy::drained`] resolves when every
//! connection has closed (the caller bounds it by `shutdown_grace`).
//!
//! Modules: [`frame`] (reading and streaming frames), [`listeners`] (broker listeners), [`rewrite`]
//! (addresses and versions in responses), [`observer`] (the measuring thread), [`produce`] and
//! [`consume`] (what requests and responses tell).

pub mod consume;
pub mod frame;
pub mod listeners;
pub mod observer;
pub mod produce;
pub mod rewrite;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::config::SidecarConfig;
use crate::telemetry::kafka::{api_label, ProxyErrorKind, ProxyMetrics};
use crate::telemetry::traces::{TraceMode, Tracer};
use frame::{checked_length, read_request_head, read_rest, stream, stream_observed, FrameError, Observe};
use kafka_protocol::messages::ApiKey;
use listeners::Listeners;
use observer::{Observation, Observer};
use rewrite::AddressMap;

/// Requests tracked per connection while their responses are outstanding. Requests that get no response
/// (Produce with acks=0) are dropped from the front as later responses arrive; this bounds the rest.
const MAX_TRACKED: usize = 4096;

/// Frames larger than this are streamed through as they arrive (unless something in them is needed
/// first); smaller ones are read whole and written in one go. Produce requests up to this are rewritten
/// on the runtime thread; larger ones on the blocking pool.
const STREAM_ABOVE: usize = 64 * 1024;

/// Bytes of Produce requests being rewritten whole (above [`STREAM_ABOVE`]) at one time, all
/// connections together; a rewrite's working set is about three times its request (the request, its
/// rewritten partitions, the new frame) and one batch decompressed. Past it, or past `max_batch_bytes`,
/// a request is streamed through unchanged instead: memory stays bounded and the traffic never waits.
/// A pod's producers keep a connection or two per broker, and with librdkafka's and Java's defaults a
/// request is at most 1 MB, so eight of them fit.
const REWRITE_BUDGET: usize = 8 * 1024 * 1024;

/// Read buffer per direction and connection: enough for the small frames (a large one is read past it,
/// straight into its own buffer), and little beside many connections: with 16 KiB, 100 consumers'
/// connections held 4.4 MB of them at the peak (heaptrack), with 64 KiB 12.8 MB. No CPU cost measured
/// against 16 KiB (`benches/sidecar_rates.rs`, tracing off: 19.9 / 5.7 / 2.6 / 1.7 millicores per MB/s
/// at 5k / 20k / 50k / 100k records/s, against 22.1 / 6.3 / 2.7 / 1.6).
const READ_BUFFER: usize = 4 * 1024;

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

/// What the proxy reads from a request to make sense of its response.
enum Ask {
    None,
    Produce(produce::ProduceAsk),
    Fetch(consume::FetchAsk),
    /// One partition's piece of a Fetch response being streamed, and its batches (the observation's
    /// frame is empty).
    FetchPiece(Arc<consume::FetchAsk>, consume::FetchPiece, consume::Batches),
    Commit(consume::CommitAsk),
}
/// Why a connection's request relay ended.
#[derive(Debug, PartialEq, Eq)]
enum RequestsEnded {
    /// The client closed (or sent a frame that closed the connection).
    Closed,
    /// Shutdown: the responses to the requests already sent are still to be relayed.
    Shutdown,
}

/// A connection's requests in the order they were relayed (Kafka answers in that order).
type Inflight = Arc<Mutex<VecDeque<Pending>>>;

/// Queues a request relayed (or about to be) for its response, within [`MAX_TRACKED`].
fn push(inflight: &Inflight, pending: Pending) {
    let mut q = inflight.lock().expect("inflight lock");
    if q.len() >= MAX_TRACKED {
        q.pop_front();
    }
    q.push_back(pending);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Bootstrap,
    Broker(i32),
}

/// The running proxy: its listeners and routes.
pub struct Proxy {
    settings: SidecarConfig,
    metrics: ProxyMetrics,
    tracer: Tracer,
    consumption: Arc<consume::Consumption>,
    observer: Arc<Observer<Ask>>,
    listeners: Listeners,
    permits: Arc<Semaphore>,
    /// Streams that may read [`frame::STREAM_CHUNK`] at a time; the others read [`frame::SMALL_CHUNK`].
    large_reads: Arc<Semaphore>,
    /// Bytes of Produce requests that may be held whole to be rewritten ([`REWRITE_BUDGET`]).
    rewrites: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
}

impl Proxy {
    /// Binds the bootstrap listener and starts serving; returns once it is bound.
    pub async fn start(
        settings: SidecarConfig,
        metrics: ProxyMetrics,
        tracer: Tracer,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<Arc<Proxy>> {
        let listener = TcpListener::bind(settings.kafka_listen).await?;
        let consumption = Arc::new(consume::Consumption::new(
            metrics.clone(),
            tracer.clone(),
            settings.cluster.clone(),
            settings.max_frame_bytes,
            settings.max_batch_bytes,
        ));
        let observer = {
            let (consumption, panic_consumption) = (consumption.clone(), consumption.clone());
            let tick_consumption = consumption.clone();
            let (metrics, panic_metrics) = (metrics.clone(), metrics.clone());
            let tracer = tracer.clone();
            Observer::start(
                move |o: Observation<Ask>| {
                    // Times are when the response arrived, not when the observer got to it.
                    let at = o.sent_at + o.latency;
                    match o.ask {
                        Ask::None => {}
                        Ask::Produce(ask) => produce::observe_response(&metrics, &tracer, &o.frame, o.version, o.latency, o.sent_at, ask),
                        Ask::Fetch(ask) => consumption.fetch_response(&o.frame, o.version, &ask, at),
                        Ask::FetchPiece(ask, piece, batches) => consumption.fetch_piece(&ask, &piece, &batches, at),
                        Ask::Commit(ask) => consumption.commit_response(&o.frame, o.version, ask, at),
                    }
                },
                // Lag keeps growing between commits: recomputed once a second, off the relaying thread.
                move || tick_consumption.refresh(),
                move |why| {
                    panic_metrics.error(
                        ProxyErrorKind::ObserverPanic,
                        &format!("observer: {why}; its measurements start again"),
                    );
                    panic_consumption.reset();
                },
                shutdown.clone(),
            )?
        };
        let proxy = Arc::new(Proxy {
            observer,
            consumption,
            permits: Arc::new(Semaphore::new(settings.max_connections)),
            large_reads: Arc::new(Semaphore::new(frame::LARGE_READS)),
            rewrites: Arc::new(Semaphore::new(REWRITE_BUDGET.max(settings.max_batch_bytes))),
            listeners: Listeners::new(settings.kafka_listen, tokio::runtime::Handle::current()),
            tracer,
            settings,
            metrics,
            shutdown,
        });
        tokio::spawn(proxy.clone().accept_loop(listener, Target::Bootstrap));
        tokio::spawn(proxy.clone().refresh_loop());
        Ok(proxy)
    }

    /// The local port serving a broker, if one is open.
    pub fn broker_port(&self, node_id: i32) -> Option<u16> {
        self.listeners.port(node_id)
    }

    /// Resolves once every client connection has closed (after shutdown: once each has relayed the
    /// responses to the requests it had sent).
    pub async fn drained(&self) {
        let _ = self.permits.acquire_many(self.settings.max_connections as u32).await;
    }

    /// Withdraws the consumer measurements if the observer is gone (it refreshes them itself, once a
    /// second), and frees its spare buffer once unused.
    async fn refresh_loop(self: Arc<Self>) {
        let mut shutdown = self.shutdown.clone();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut observer_lost = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if !self.observer.alive() && !observer_lost {
                        // Nothing updates the measurements any more: withdraw them rather than serve
                        // frozen values as fresh.
                        observer_lost = true;
                        self.metrics.error(ProxyErrorKind::ObserverPanic, "observer thread ended; consumer measurements withdrawn");
                        self.consumption.reset();
                    }
                    self.observer.expire_spare();
                }
                _ = shutdown.changed() => return,
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
        let proxy = self.clone();
        let accept = move |listener| tokio::spawn(proxy.accept_loop(listener, Target::Broker(node_id))).abort_handle();
        match self.listeners.ensure(node_id, upstream, accept) {
            Ok(port) => Some(port),
            Err(e) => {
                tracing::warn!(node_id, error = %e, "kafka proxy: no listener for broker");
                None
            }
        }
    }

    async fn dial(&self, target: Target) -> Result<Box<dyn crate::kafka::conn::Stream>, String> {
        let candidates: Vec<String> = match target {
            Target::Bootstrap => self.settings.kafka_bootstrap.addresses(),
            Target::Broker(n) => match self.listeners.upstream(n) {
                Some(upstream) => vec![upstream],
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
        tokio::pin!(requests, responses);
        tokio::select! {
            ended = &mut requests => {
                // Shutdown: no new requests; the responses to those sent are still relayed (the caller
                // bounds the wait by the grace period). A client that closed needs nothing more.
                if ended == RequestsEnded::Shutdown {
                    responses.await;
                }
            }
            _ = &mut responses => {}
        }
        self.metrics.connections.dec();
    }

    /// Client → broker: frames relayed as they are, each request's API and version remembered; until the
    /// client closes, a bad frame, or shutdown (checked between requests, never inside one).
    ///
    /// A request is read whole when something in it is needed before it goes on (Fetch and OffsetCommit,
    /// a Produce request up to [`STREAM_ABOVE`], or up to `max_batch_bytes` to be rewritten within
    /// [`REWRITE_BUDGET`]); every other request over [`STREAM_ABOVE`] is streamed through as it arrives,
    /// a Produce request read on the way by [`produce_stream`](crate::kafka::produce_stream).
    async fn relay_requests<R: AsyncRead + Unpin>(
        self: Arc<Self>,
        mut from: BufReader<R>,
        mut to: impl AsyncWrite + Unpin,
        inflight: Inflight,
    ) -> RequestsEnded {
        let mut shutdown = self.shutdown.clone();
        loop {
            if *shutdown.borrow() {
                return RequestsEnded::Shutdown;
            }
            // Waits for the next request's first bytes (they stay buffered) or for shutdown.
            tokio::select! {
                r = from.fill_buf() => if r.map_or(true, |b| b.is_empty()) { return RequestsEnded::Closed },
                _ = shutdown.changed() => return RequestsEnded::Shutdown,
            }
            let (head, n) = match read_request_head(&mut from, self.settings.max_frame_bytes).await {
                Ok(h) => h,
                Err(FrameError::Closed) => return RequestsEnded::Closed,
                Err(FrameError::Bad(kind, why)) => {
                    self.metrics.error(kind, &format!("request: {why}"));
                    return RequestsEnded::Closed;
                }
            };
            let key = i16::from_be_bytes([head[4], head[5]]);
            let version = i16::from_be_bytes([head[6], head[7]]);
            let correlation = i32::from_be_bytes([head[8], head[9], head[10], head[11]]);
            let api = api_label(key);
            self.metrics.requests.with([api]).inc();
            self.metrics.bytes.with([api, "request"]).inc_by(4 + n as u64);
            let pending = |ask| Pending {
                correlation,
                key,
                version,
                sent: Instant::now(),
                sent_at: SystemTime::now(),
                ask,
            };
            let mut rewrite_budget = None;
            if n > STREAM_ABOVE {
                let streamed = match ApiKey::try_from(key) {
                    Ok(ApiKey::Produce) => {
                        rewrite_budget = self.rewrite_budget(n);
                        rewrite_budget.is_none()
                    }
                    Ok(ApiKey::Fetch | ApiKey::OffsetCommit) => false,
                    _ => true,
                };
                if streamed {
                    if !self.relay_streamed(&mut from, &mut to, &head, n, &inflight, pending).await {
                        return RequestsEnded::Closed;
                    }
                    continue;
                }
            }
            let Ok(frame) = read_rest(&mut from, &head, n).await else {
                return RequestsEnded::Closed;
            };
            // Rewriting a large Produce request (decompress, add headers, recompress) takes milliseconds:
            // it runs on the blocking pool, so the runtime thread keeps relaying other connections.
            let (ask, frame) = if rewrite_budget.is_some() {
                let proxy = self.clone();
                match tokio::task::spawn_blocking(move || proxy.read_request(frame, key, version)).await {
                    Ok(r) => r,
                    Err(e) => {
                        self.metrics
                            .error(ProxyErrorKind::RecordsUnreadable, &format!("produce rewrite: {e}"));
                        return RequestsEnded::Closed;
                    }
                }
            } else {
                self.read_request(frame, key, version)
            };
            push(&inflight, pending(ask));
            if to.write_all(&frame).await.is_err() {
                return RequestsEnded::Closed;
            }
        }
    }

    /// Room to rewrite a Produce request of `n` bytes whole: only with trace context to set, up to
    /// `max_batch_bytes`, and while the requests being rewritten hold less than [`REWRITE_BUDGET`].
    fn rewrite_budget(&self, n: usize) -> Option<OwnedSemaphorePermit> {
        if self.settings.trace_mode == TraceMode::Off || n > self.settings.max_batch_bytes {
            return None;
        }
        self.rewrites.clone().try_acquire_many_owned(n as u32).ok()
    }

    /// Streams a request through as it arrives (`head` read, `n` bytes after the length prefix), never
    /// holding it whole. A Produce request is read on the way for what its response is matched with (its
    /// partitions and record counts); its records go unchanged, so in trace modes they count as
    /// `skipped`. Its [`Pending`] is queued before its last bytes go, so its response always finds it.
    /// False if the connection failed.
    async fn relay_streamed<R: AsyncRead + Unpin>(
        &self,
        from: &mut BufReader<R>,
        to: &mut (impl AsyncWrite + Unpin),
        head: &[u8; 12],
        n: usize,
        inflight: &Inflight,
        pending: impl Fn(Ask) -> Pending,
    ) -> bool {
        let key = i16::from_be_bytes([head[4], head[5]]);
        let version = i16::from_be_bytes([head[6], head[7]]);
        // The reader, or why it stopped reading: told once the request's last bytes are there.
        let mut reader = (key == ApiKey::Produce as i16)
            .then(|| crate::kafka::produce_stream::ProduceStream::new(version))
            .flatten()
            .map(Ok);
        let mut ask = produce::ProduceAsk::default();
        let mut seen = 0;
        let mut observe = |chunk: &[u8]| {
            if let Some(Ok(r)) = reader.as_mut() {
                if let Err(e) = r.feed(chunk, &mut |e| ask.add(e)) {
                    reader = Some(Err(e));
                }
            }
            seen += chunk.len();
            if seen < n {
                return;
            }
            let read = match reader.take().map(|r| r.and_then(|r| r.finish())) {
                Some(Ok(())) => Some(std::mem::take(&mut ask)),
                Some(Err(e)) => {
                    self.metrics
                        .error(ProxyErrorKind::RecordsUnreadable, &format!("produce request: {e}"));
                    None
                }
                None => None,
            };
            match &read {
                Some(ask) if self.settings.trace_mode != TraceMode::Off => produce::count_skipped(&self.metrics, &ask.batches),
                Some(_) => {}
                // A Produce request not read (a version it does not read, or bytes that do not parse):
                // its response goes unmeasured.
                None if key == ApiKey::Produce as i16 => self.metrics.unobserved.inc(),
                None => {}
            }
            push(inflight, pending(read.map_or(Ask::None, Ask::Produce)));
        };
        // The API key, version and correlation id are the body's first bytes.
        observe(&head[4..]);
        let (chunk, _large) = self.read_chunk();
        to.write_all(head).await.is_ok()
            && stream_observed(from, to, n - 8, chunk, Observe::BeforeWrite, &mut observe)
                .await
                .is_ok()
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
        let mut shutdown = self.shutdown.clone();
        let mut quiet = Quiet::default();
        loop {
            // After shutdown, the connection ends once every request sent has its response.
            if *shutdown.borrow() && inflight.lock().expect("inflight lock").is_empty() {
                return;
            }
            // Waits for the next response's first bytes (they stay buffered) or for shutdown.
            tokio::select! {
                r = from.fill_buf() => if r.map_or(true, |b| b.is_empty()) { return },
                _ = shutdown.changed(), if !*shutdown.borrow() => continue,
            }
            let mut head = [0u8; 8];
            if from.read_exact(&mut head[..4]).await.is_err() {
                return;
            }
            let n = match checked_length([head[0], head[1], head[2], head[3]], 4, max) {
                Ok(n) => n,
                Err(FrameError::Bad(kind, why)) => {
                    self.metrics.error(kind, &format!("response: {why}"));
                    return;
                }
                Err(FrameError::Closed) => return,
            };
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
                let (chunk, _large) = self.read_chunk();
                if to.write_all(&head).await.is_err() || stream(&mut from, &mut to, n - 4, chunk, None).await.is_err() {
                    return;
                }
                continue;
            };
            let api = api_label(key);
            self.metrics
                .duration
                .with([api])
                .observe(received.duration_since(sent).as_secs_f64());
            self.metrics.bytes.with([api, "response"]).inc_by(4 + n as u64);
            if rewrite::needs_rewrite(key) {
                let Ok(frame) = read_rest(&mut from, &head, n).await else {
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
            if let Ask::Fetch(ask) = ask {
                let ask = Arc::new(ask);
                if !self
                    .relay_fetch(
                        &mut from,
                        &mut to,
                        &head,
                        n,
                        version,
                        received.duration_since(sent),
                        sent_at,
                        ask,
                        &mut quiet,
                    )
                    .await
                {
                    return;
                }
                continue;
            }
            // What the response tells (acknowledged offsets, delivered records, commits) is read by the
            // observer task from a copy, after the client has the response.
            let permit = if matches!(ask, Ask::None) {
                None
            } else {
                let permit = self.observer.reserve(n);
                if permit.is_none() {
                    self.metrics.unobserved.inc();
                }
                permit
            };
            let frame = if n <= STREAM_ABOVE {
                // Small: read whole, written in one go (one packet), shared with the observer as is.
                let Ok(frame) = read_rest(&mut from, &head, n).await else {
                    return;
                };
                if to.write_all(&frame).await.is_err() {
                    return;
                }
                permit.is_some().then_some(frame)
            } else {
                let mut copy = permit.as_ref().map(|_| {
                    let mut b = self.observer.buffer(4 + n);
                    b.extend_from_slice(&head);
                    b
                });
                let (chunk, _large) = self.read_chunk();
                if to.write_all(&head).await.is_err() || stream(&mut from, &mut to, n - 4, chunk, copy.as_mut()).await.is_err() {
                    return;
                }
                copy.map(BytesMut::freeze)
            };
            if let (Some(frame), Some(permit)) = (frame, permit) {
                let sent = self.observer.send(Observation {
                    frame,
                    version,
                    latency: received.duration_since(sent),
                    sent_at,
                    ask,
                    budget: permit,
                });
                if !sent {
                    self.metrics.unobserved.inc();
                }
            }
        }
    }
}

/// A connection's partitions as its last Fetch pieces showed them: an empty piece (no records, no error)
/// repeating the high watermark seen within [`QUIET_REFRESH`] is not handed to the observer. An idle
/// consumer's fetches return every partition empty hundreds of times a second, and each piece costs the
/// observer a hand-over, a lock and a map update that change nothing.
#[derive(Default)]
struct Quiet {
    seen: std::collections::HashMap<String, std::collections::HashMap<i32, (i64, Instant)>>,
    partitions: usize,
}

/// How long a quiet partition's high watermark goes without being refreshed (the observer forgets a
/// partition after [`consume::IDLE_EXPIRY`]).
const QUIET_REFRESH: Duration = Duration::from_secs(10);
/// Partitions remembered per connection, at most (past it, the memory starts again).
const QUIET_MAX: usize = 10_000;

impl Quiet {
    /// Whether `piece` says nothing the observer has not been told in the last [`QUIET_REFRESH`]; else
    /// remembers it.
    fn repeats(&mut self, piece: &consume::FetchPiece, empty: bool, now: Instant) -> bool {
        if piece.continuation {
            return false;
        }
        let quiet = empty && piece.error_code == 0 && piece.skipped_batches == 0 && piece.left_out == 0;
        if let Some(seen) = self.seen.get_mut(piece.topic.as_str()).and_then(|t| t.get_mut(&piece.partition)) {
            if quiet && seen.0 == piece.high_watermark && now.duration_since(seen.1) < QUIET_REFRESH {
                return true;
            }
            *seen = (piece.high_watermark, now);
            return false;
        }
        if self.partitions >= QUIET_MAX {
            self.seen.clear();
            self.partitions = 0;
        }
        self.partitions += 1;
        self.seen
            .entry(piece.topic.clone())
            .or_default()
            .insert(piece.partition, (piece.high_watermark, now));
        false
    }
}

impl Proxy {
    /// Relays a Fetch response (`head` read, `n` bytes after the length prefix) as it arrives, cutting it
    /// into pieces for the observer on the way: nothing holds the whole response. False if the
    /// connection failed.
    #[allow(clippy::too_many_arguments)]
    async fn relay_fetch<R: AsyncRead + Unpin>(
        &self,
        from: &mut BufReader<R>,
        to: &mut (impl AsyncWrite + Unpin),
        head: &[u8; 8],
        n: usize,
        version: i16,
        latency: Duration,
        sent_at: SystemTime,
        ask: Arc<consume::FetchAsk>,
        quiet: &mut Quiet,
    ) -> bool {
        let mut pieces = consume::Pieces::new(version, self.settings.max_batch_bytes, Some(self.observer.budget()));
        let now = Instant::now();
        let mut emit = |piece: consume::FetchPiece, records: consume::Batches, held: Option<OwnedSemaphorePermit>| {
            if quiet.repeats(&piece, records.is_empty(), now) {
                return;
            }
            if piece.skipped_batches > 0 {
                self.metrics.error(
                    ProxyErrorKind::RecordsUnreadable,
                    &format!(
                        "fetch {}/{}: {} batch(es) over max_batch_bytes relayed unread",
                        piece.topic, piece.partition, piece.skipped_batches
                    ),
                );
            }
            if piece.left_out > 0 {
                self.metrics.unobserved.inc_by(piece.left_out as u64);
            }
            let sent = held.or_else(|| self.observer.reserve(0)).is_some_and(|budget| {
                self.observer.send(Observation {
                    frame: Bytes::new(),
                    version,
                    latency,
                    sent_at,
                    ask: Ask::FetchPiece(ask.clone(), piece, records),
                    budget,
                })
            });
            if !sent {
                self.metrics.unobserved.inc();
            }
        };
        let mut failed = false;
        let mut observe = |chunk: &[u8]| {
            if let Some(p) = pieces.as_mut().filter(|_| !failed) {
                if let Err(e) = p.feed(chunk, &mut emit) {
                    failed = true;
                    self.metrics
                        .error(ProxyErrorKind::RecordsUnreadable, &format!("fetch response: {e}"));
                }
            }
        };
        if n <= STREAM_ABOVE {
            // Small: read whole, written in one go (one packet), then observed.
            let Ok(frame) = read_rest(from, head, n).await else {
                return false;
            };
            if to.write_all(&frame).await.is_err() {
                return false;
            }
            observe(&frame[4..]);
        } else {
            // The correlation id is the body's first field.
            observe(&head[4..]);
            let (chunk, _large) = self.read_chunk();
            if to.write_all(head).await.is_err()
                || stream_observed(from, to, n - 4, chunk, Observe::AfterWrite, &mut observe)
                    .await
                    .is_err()
            {
                return false;
            }
        }
        if let Some(Err(e)) = pieces.as_ref().filter(|_| !failed).map(|p| p.finish()) {
            self.metrics
                .error(ProxyErrorKind::RecordsUnreadable, &format!("fetch response: {e}"));
        }
        true
    }

    /// How much a stream reads at a time: a large buffer while one of the few is free (held as long as
    /// the permit), else a small one, so that many connections streaming at once hold little.
    fn read_chunk(&self) -> (usize, Option<OwnedSemaphorePermit>) {
        match self.large_reads.clone().try_acquire_owned() {
            Ok(permit) => (frame::STREAM_CHUNK, Some(permit)),
            Err(_) => (frame::SMALL_CHUNK, None),
        }
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
}

impl AddressMap for Arc<Proxy> {
    fn local_for(&self, node_id: i32, host: &str, port: i32) -> Option<(String, i32)> {
        let port = self.ensure_listener(node_id, format!("{host}:{port}"))?;
        Some((self.settings.kafka_advertised_host.clone(), port as i32))
    }

    fn brokers_present(&self, node_ids: &[i32]) {
        self.listeners.retain(node_ids);
    }
}
