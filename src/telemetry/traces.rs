//! Trace context through Kafka messages, and the spans the sidecar exports over OTLP.
//!
//! The sidecar sees each record twice: when the application produces it and when a consuming application
//! fetches (and later commits) it. It reads and writes the W3C `traceparent`/`tracestate` record headers
//! with OpenTelemetry's `TraceContextPropagator` (an invalid header is a missing one: it never fails a
//! request) and makes spans after the fact, as `SpanData` with the times it measured: `send {topic}`
//! (PRODUCER, from relaying the Produce request to its acknowledgement) and `process {topic}` (CONSUMER,
//! from delivering the record to the commit that covers it).
//!
//! Export is OpenTelemetry's OTLP exporter (`opentelemetry-otlp`, gRPC or HTTP/protobuf), configured by the
//! standard `OTEL_*` variables. Spans go through a bounded queue to one export task: the data path never
//! waits, and a full queue drops the span and counts it (`eventscope_trace_spans_total{outcome="dropped"}`).
//! The queue's bound counts spans; the `process` spans one commit ends (every record consumed since the
//! last commit: 5 s of them with librdkafka's and Java's default auto-commit) go in as one compact
//! [`SpanGroup`] that the export task makes into `SpanData` a batch at a time, so that a commit's burst
//! costs 72 bytes per span while it waits ([`SpanIds`]), not a `SpanData` of a kilobyte.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SamplingDecision, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, ShouldSample, SpanData, SpanEvents, SpanExporter, SpanLinks};
use tokio::sync::mpsc;

use prometheus::{IntCounterVec, Opts, Registry};

use crate::telemetry::contract::{L_OUTCOME, TRACE_QUEUE, TRACE_SPANS};

/// What the sidecar does with trace context in records it relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TraceMode {
    /// Rewrite (or add) `traceparent` on produced records to the sidecar's `send` span, and emit spans.
    #[default]
    Inject,
    /// Emit spans for records that already carry `traceparent`; never change a record.
    Observe,
    /// No trace work at all: records are relayed as they are.
    Off,
}

/// Spans the export queue holds by default: more than the SDK's 2,048, because one commit ends every
/// `process` span since the last (with every trace sampled, 250,000 at 50,000 records/s and the clients'
/// default 5 s auto-commit). Measured (`cargo bench --bench sidecar_rates`, docs/benchmarks.md): with
/// 2,048, 35% of the spans were dropped at 20,000 records/s and 20% at 50,000; with this, none, also at
/// 50,000 records/s once every `process` span is held to its commit (no longer capped at 100,000). A
/// queued span of a group (a commit's, or a Produce response's) takes 72 bytes ([`SpanIds`]): 19 MB at
/// most; a lone span (a failed `send`) about a kilobyte.
pub const DEFAULT_QUEUE: usize = 262_144;

/// Exports in flight at once by default (the SDK's is 1). Measured in docs/benchmarks.md: with one, the
/// exporter kept up with 40,000 spans/s for 16 minutes of the soak and then fell behind for good.
pub const DEFAULT_CONCURRENT: usize = 2;

/// Export settings from the standard `OTEL_*` environment variables (OpenTelemetry SDK configuration).
#[derive(Debug, Clone)]
pub struct ExportSettings {
    /// `OTEL_TRACES_EXPORTER`: `otlp` (default) or `none`.
    pub enabled: bool,
    /// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc` or `http/protobuf` (the default).
    pub grpc: bool,
    /// `OTEL_BSP_MAX_QUEUE_SIZE` ([`DEFAULT_QUEUE`] spans), `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (512),
    /// `OTEL_BSP_SCHEDULE_DELAY` ms (5000).
    pub queue: usize,
    pub batch: usize,
    pub delay: Duration,
    /// `OTEL_BSP_MAX_CONCURRENT_EXPORTS` ([`DEFAULT_CONCURRENT`]): exports in flight at once.
    pub concurrent: usize,
}

impl ExportSettings {
    /// Reads the variables from `env`; problems come back as (variable, reason).
    pub fn from_env(env: &HashMap<String, String>) -> Result<ExportSettings, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let mut number = |key: &str, default: u64, max: u64| -> u64 {
            match env.get(key).map(|v| v.trim().parse::<u64>()) {
                None => default,
                Some(Ok(v)) if v >= 1 && v <= max => v,
                Some(_) => {
                    problems.push((key.to_string(), format!("must be a whole number from 1 to {max}")));
                    default
                }
            }
        };
        let queue = number("OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_QUEUE as u64, 1 << 22) as usize;
        let batch = number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, 1 << 16) as usize;
        let delay = Duration::from_millis(number("OTEL_BSP_SCHEDULE_DELAY", 5000, 3_600_000));
        let concurrent = number("OTEL_BSP_MAX_CONCURRENT_EXPORTS", DEFAULT_CONCURRENT as u64, 16) as usize;
        let enabled = match env.get("OTEL_TRACES_EXPORTER").map(|s| s.trim()) {
            None | Some("otlp") => true,
            Some("none") => false,
            Some(other) => {
                problems.push(("OTEL_TRACES_EXPORTER".into(), format!("`{other}` is not supported (otlp or none)")));
                true
            }
        };
        let protocol = env
            .get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| env.get("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .map(|s| s.trim().to_string());
        let grpc = match protocol.as_deref() {
            None | Some("http/protobuf") => false,
            Some("grpc") => true,
            Some(other) => {
                problems.push((
                    "OTEL_EXPORTER_OTLP_PROTOCOL".into(),
                    format!("`{other}` is not supported (grpc or http/protobuf)"),
                ));
                false
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(ExportSettings {
            enabled,
            grpc,
            queue,
            batch: batch.min(queue),
            delay,
            concurrent,
        })
    }
}

/// A span's identity, decided when the sidecar first sees the record; the span itself is made later.
#[derive(Debug, Clone)]
pub struct SpanStart {
    pub context: SpanContext,
    /// The parent from the record's header, if it had a valid one.
    pub parent: Option<SpanContext>,
}

/// Spans of one kind and name ended at the same time, alike but for their context, start and one
/// integer attribute (the `process` spans a commit ends): queued as one entry.
pub struct SpanGroup {
    pub kind: SpanKind,
    pub name: String,
    pub ended: SystemTime,
    /// Attributes every span has.
    pub attributes: Vec<KeyValue>,
    /// The attribute each span has its own value of (`messaging.kafka.offset`).
    pub key: &'static str,
    /// Each span's start (context and parent), start time and value of `key`.
    pub spans: Vec<(SpanIds, SystemTime, i64)>,
}

enum Queued {
    One(Box<SpanData>),
    Group(SpanGroup),
}

/// A [`SpanStart`] kept compact while its span waits to be made: 48 bytes and no allocation, against
/// about 150 for two `SpanContext`s boxed. A consumer holds every record it fetched until its commit
/// (5 s of them with librdkafka's and Java's default auto-commit: 250,000 at 50,000 records/s), and a
/// commit queues them all at once, so this is what bounds the sidecar's memory when every trace is
/// sampled. A child's trace and trace state are its parent's, which is all `start_span` makes.
pub struct SpanIds {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    /// All zeros: a root (an invalid span id never comes from a header: `extract` rejects it).
    parent_span_id: [u8; 8],
    flags: u8,
    parent_flags: u8,
    /// Boxed: most records carry no `tracestate`.
    state: Option<Box<opentelemetry::trace::TraceState>>,
}

impl SpanIds {
    pub fn is_sampled(&self) -> bool {
        TraceFlags::new(self.flags).is_sampled()
    }

    /// The span's start again, as it was.
    pub fn start(self) -> SpanStart {
        let state = self.state.map(|s| *s).unwrap_or_default();
        let trace_id = opentelemetry::trace::TraceId::from_bytes(self.trace_id);
        let parent = (self.parent_span_id != [0; 8]).then(|| {
            SpanContext::new(
                trace_id,
                SpanId::from_bytes(self.parent_span_id),
                TraceFlags::new(self.parent_flags),
                true,
                state.clone(),
            )
        });
        SpanStart {
            context: SpanContext::new(
                trace_id,
                SpanId::from_bytes(self.span_id),
                TraceFlags::new(self.flags),
                false,
                state,
            ),
            parent,
        }
    }
}

impl From<SpanStart> for SpanIds {
    fn from(s: SpanStart) -> SpanIds {
        let state = s.context.trace_state().clone();
        SpanIds {
            trace_id: s.context.trace_id().to_bytes(),
            span_id: s.context.span_id().to_bytes(),
            parent_span_id: s.parent.as_ref().map_or([0; 8], |p| p.span_id().to_bytes()),
            flags: s.context.trace_flags().to_u8(),
            parent_flags: s.parent.as_ref().map_or(0, |p| p.trace_flags().to_u8()),
            state: (state.header() != "").then(|| Box::new(state)),
        }
    }
}

/// A group's spans not yet made into `SpanData`.
type GroupRest = std::vec::IntoIter<(SpanIds, SystemTime, i64)>;

/// The export queue: entries, and a bound on the spans they hold.
struct Queue {
    tx: mpsc::UnboundedSender<Queued>,
    spans: Arc<AtomicUsize>,
    capacity: usize,
}

impl Queue {
    /// Room for up to `n` more spans: how many fit.
    fn admit(&self, n: usize) -> usize {
        let mut took = 0;
        let _ = self.spans.fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
            took = n.min(self.capacity.saturating_sub(q));
            Some(q + took)
        });
        took
    }
}

struct Inner {
    sampler: Box<dyn ShouldSample>,
    ids: RandomIdGenerator,
    queue: Option<Queue>,
    scope: InstrumentationScope,
    metrics: TraceMetrics,
}

/// Makes span contexts and spans; cheap to clone.
#[derive(Clone)]
pub struct Tracer {
    inner: Arc<Inner>,
}

struct Headers<'a>(&'a str, Option<&'a str>);
impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.0),
            "tracestate" => self.1,
            _ => None,
        }
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// The span context in a record's `traceparent` (and `tracestate`) header values; `None` if absent or invalid.
pub fn extract(traceparent: &[u8], tracestate: Option<&[u8]>) -> Option<SpanContext> {
    let tp = std::str::from_utf8(traceparent).ok()?;
    let ts = tracestate.and_then(|t| std::str::from_utf8(t).ok());
    let cx = TraceContextPropagator::new().extract(&Headers(tp, ts));
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// A `traceparent` header value: `00-{trace id}-{span id}-{flags}`, 55 ASCII bytes.
#[derive(Clone, Copy)]
pub struct Traceparent([u8; 55]);

impl Traceparent {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits and dashes are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// The `traceparent` header value for a span context (W3C Trace Context version 00), written directly
/// into a fixed array (no formatting machinery, no allocation): this runs once per produced record and
/// per HTTP request. The test below checks it against `TraceContextPropagator`.
pub fn traceparent(context: &SpanContext) -> Traceparent {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    fn hex(out: &mut [u8], bytes: &[u8]) {
        for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
            pair[0] = HEX[(b >> 4) as usize];
            pair[1] = HEX[(b & 0x0f) as usize];
        }
    }
    let mut v = [b'-'; 55];
    v[..2].copy_from_slice(b"00");
    hex(&mut v[3..35], &context.trace_id().to_bytes());
    hex(&mut v[36..52], &context.span_id().to_bytes());
    hex(&mut v[53..55], &[context.trace_flags().to_u8() & TraceFlags::SAMPLED.to_u8()]);
    Traceparent(v)
}

impl Tracer {
    /// A tracer whose spans go nowhere (tracing off, or no exporter).
    pub fn disabled(metrics: TraceMetrics) -> Tracer {
        Tracer {
            inner: Arc::new(Inner {
                sampler: opentelemetry_sdk::trace::Config::default().sampler,
                ids: RandomIdGenerator::default(),
                queue: None,
                scope: scope(),
                metrics,
            }),
        }
    }

    /// A tracer exporting over OTLP as the `OTEL_*` variables say; the export task runs until `shutdown`
    /// fires, then sends what is queued (bounded by the grace period the caller gives it).
    pub fn start(
        settings: &ExportSettings,
        metrics: TraceMetrics,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<(Tracer, Option<tokio::task::JoinHandle<()>>)> {
        if !settings.enabled {
            return Ok((Tracer::disabled(metrics), None));
        }
        // One exporter per export in flight: the SDK's exporters take one export at a time.
        let mut exporters = Vec::new();
        for _ in 0..settings.concurrent {
            let builder = opentelemetry_otlp::SpanExporter::builder();
            let mut exporter = if settings.grpc {
                builder.with_tonic().build()?
            } else {
                builder.with_http().build()?
            };
            // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, through the SDK's resource detectors.
            exporter.set_resource(&opentelemetry_sdk::Resource::builder().build());
            exporters.push(exporter);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let spans = metrics.queued.clone();
        let tracer = Tracer {
            inner: Arc::new(Inner {
                // OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG, as the SDK reads them.
                sampler: opentelemetry_sdk::trace::Config::default().sampler,
                ids: RandomIdGenerator::default(),
                queue: Some(Queue {
                    tx,
                    spans: spans.clone(),
                    capacity: settings.queue,
                }),
                scope: scope(),
                metrics: metrics.clone(),
            }),
        };
        let source = Source {
            rx,
            spans,
            group: None,
            scope: scope(),
        };
        let task = tokio::spawn(export_loop(exporters, source, settings.batch, settings.delay, metrics, shutdown));
        Ok((tracer, Some(task)))
    }

    /// Whether finished spans go anywhere (an exporter is configured): callers skip building attributes
    /// of spans that would be thrown away.
    pub fn exporting(&self) -> bool {
        self.inner.queue.is_some()
    }

    /// The context of a new span: the parent's child, or the root of a new trace, sampled as configured.
    pub fn start_span(&self, parent: Option<SpanContext>, name: &str, kind: SpanKind) -> SpanStart {
        let inner = &self.inner;
        let trace_id = parent.as_ref().map(|p| p.trace_id()).unwrap_or_else(|| inner.ids.new_trace_id());
        // A root needs no Context (an allocation per record saved).
        let parent_cx = parent.as_ref().map(|p| Context::new().with_remote_span_context(p.clone()));
        let decision = inner
            .sampler
            .should_sample(parent_cx.as_ref(), trace_id, name, &kind, &[], &[])
            .decision;
        let flags = if decision == SamplingDecision::RecordAndSample {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let state = parent.as_ref().map(|p| p.trace_state().clone()).unwrap_or_default();
        SpanStart {
            context: SpanContext::new(trace_id, inner.ids.new_span_id(), flags, false, state),
            parent,
        }
    }

    /// Queues a finished span for export if it is sampled; never waits.
    #[allow(clippy::too_many_arguments)]
    pub fn finish(
        &self,
        start: SpanStart,
        kind: SpanKind,
        name: String,
        started: SystemTime,
        ended: SystemTime,
        attributes: Vec<KeyValue>,
        error: Option<String>,
    ) {
        if !start.context.is_sampled() {
            return;
        }
        let Some(queue) = &self.inner.queue else {
            return;
        };
        if queue.admit(1) == 0 {
            self.inner.metrics.dropped.inc();
            return;
        }
        let span = span_data(start, kind, Cow::Owned(name), started, ended, attributes, error, &self.inner.scope);
        if queue.tx.send(Queued::One(Box::new(span))).is_err() {
            queue.spans.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Counts `n` sampled spans dropped before they reached the queue (their bound was reached while
    /// they waited to end).
    pub fn dropped(&self, n: u64) {
        if n > 0 && self.inner.queue.is_some() {
            self.inner.metrics.dropped.inc_by(n);
        }
    }

    /// Queues the sampled spans of a group as one entry, as many as the queue has room for (the rest are
    /// dropped and counted); never waits.
    pub fn finish_group(&self, mut group: SpanGroup) {
        let Some(queue) = &self.inner.queue else {
            return;
        };
        group.spans.retain(|(s, _, _)| s.is_sampled());
        let n = group.spans.len();
        if n == 0 {
            return;
        }
        let took = queue.admit(n);
        if took < n {
            self.inner.metrics.dropped.inc_by((n - took) as u64);
            group.spans.truncate(took);
        }
        if took > 0 && queue.tx.send(Queued::Group(group)).is_err() {
            queue.spans.fetch_sub(took, Ordering::AcqRel);
        }
    }
}

/// The export task's end of a [`Tracer::with_test_queue`]'s queue (tests of other modules).
#[cfg(test)]
pub struct TestQueue(Source);

#[cfg(test)]
impl TestQueue {
    /// The spans queued so far.
    pub fn drain(&mut self) -> Vec<SpanData> {
        std::iter::from_fn(|| self.0.try_recv()).collect()
    }
}

#[cfg(test)]
impl Tracer {
    /// A tracer sampling every trace into a queue of `capacity` spans that the test reads.
    pub fn with_test_queue(capacity: usize, metrics: TraceMetrics) -> (Tracer, TestQueue) {
        let (tx, rx) = mpsc::unbounded_channel();
        let spans = Arc::new(AtomicUsize::new(0));
        let tracer = Tracer {
            inner: Arc::new(Inner {
                sampler: Box::new(opentelemetry_sdk::trace::Sampler::AlwaysOn),
                ids: RandomIdGenerator::default(),
                queue: Some(Queue {
                    tx,
                    spans: spans.clone(),
                    capacity,
                }),
                scope: scope(),
                metrics,
            }),
        };
        let source = Source {
            rx,
            spans,
            group: None,
            scope: scope(),
        };
        (tracer, TestQueue(source))
    }
}

/// A finished span as the exporter takes it.
#[allow(clippy::too_many_arguments)]
fn span_data(
    start: SpanStart,
    kind: SpanKind,
    name: Cow<'static, str>,
    started: SystemTime,
    ended: SystemTime,
    attributes: Vec<KeyValue>,
    error: Option<String>,
    scope: &InstrumentationScope,
) -> SpanData {
    let links = match (&kind, &start.parent) {
        // A consumer span links to the producer's context as well (messaging semantic conventions).
        (SpanKind::Consumer, Some(p)) => vec![opentelemetry::trace::Link::new(p.clone(), Vec::new(), 0)],
        _ => Vec::new(),
    };
    let mut span_links = SpanLinks::default();
    span_links.links = links;
    SpanData {
        parent_span_id: start.parent.as_ref().map(|p| p.span_id()).unwrap_or(SpanId::INVALID),
        parent_span_is_remote: start.parent.is_some(),
        span_context: start.context,
        span_kind: kind,
        name,
        start_time: started,
        end_time: ended.max(started),
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: span_links,
        status: match error {
            Some(e) => Status::error(e),
            None => Status::Unset,
        },
        instrumentation_scope: scope.clone(),
    }
}

/// The export task's end of the queue: spans one at a time, a group's made as they are taken.
struct Source {
    rx: mpsc::UnboundedReceiver<Queued>,
    spans: Arc<AtomicUsize>,
    /// The group being taken apart, and its spans left.
    group: Option<(SpanGroup, GroupRest)>,
    scope: InstrumentationScope,
}

impl Source {
    /// The next span of the group being taken apart, if any.
    fn next_of_group(&mut self) -> Option<SpanData> {
        let (group, rest) = self.group.as_mut()?;
        let Some((start, started, value)) = rest.next() else {
            self.group = None;
            return None;
        };
        self.spans.fetch_sub(1, Ordering::AcqRel);
        let mut attributes = group.attributes.clone();
        attributes.push(KeyValue::new(group.key, value));
        Some(span_data(
            start.start(),
            group.kind.clone(),
            Cow::Owned(group.name.clone()),
            started,
            group.ended,
            attributes,
            None,
            &self.scope,
        ))
    }

    fn take(&mut self, q: Queued) -> Option<SpanData> {
        match q {
            Queued::One(s) => {
                self.spans.fetch_sub(1, Ordering::AcqRel);
                Some(*s)
            }
            Queued::Group(g) => {
                let mut g = g;
                let spans = std::mem::take(&mut g.spans).into_iter();
                self.group = Some((g, spans));
                self.next_of_group()
            }
        }
    }

    /// The next span, waiting for one; `None` once every sender is gone.
    async fn recv(&mut self) -> Option<SpanData> {
        loop {
            if let Some(s) = self.next_of_group() {
                return Some(s);
            }
            let q = self.rx.recv().await?;
            if let Some(s) = self.take(q) {
                return Some(s);
            }
        }
    }

    /// The next span if one is there now.
    fn try_recv(&mut self) -> Option<SpanData> {
        loop {
            if let Some(s) = self.next_of_group() {
                return Some(s);
            }
            let q = self.rx.try_recv().ok()?;
            if let Some(s) = self.take(q) {
                return Some(s);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.group.as_ref().is_none_or(|(_, rest)| rest.len() == 0) && self.rx.is_empty()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("eventscope")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

async fn export_loop(
    exporters: Vec<opentelemetry_otlp::SpanExporter>,
    mut rx: Source,
    batch: usize,
    delay: Duration,
    metrics: TraceMetrics,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use futures::stream::{FuturesUnordered, StreamExt};
    let export = |i: usize, spans: Vec<SpanData>| {
        let exporter = &exporters[i];
        async move {
            let n = spans.len() as u64;
            (i, n, tokio::time::timeout(Duration::from_secs(10), exporter.export(spans)).await)
        }
    };
    let mut idle: Vec<usize> = (0..exporters.len()).rev().collect();
    let mut in_flight = FuturesUnordered::new();
    let mut pending: Vec<SpanData> = Vec::with_capacity(batch);
    let mut stopping = false;
    let deadline = tokio::time::sleep(delay);
    tokio::pin!(deadline);
    let mut due = false;
    loop {
        // A batch goes when it is full, when the delay has passed, or at the end; while every exporter
        // is busy, spans wait in the queue (where its bound counts them).
        if !pending.is_empty() && (pending.len() >= batch || due || stopping) {
            if let Some(i) = idle.pop() {
                let spans = std::mem::replace(&mut pending, Vec::with_capacity(batch));
                in_flight.push(export(i, spans));
                due = false;
                deadline.as_mut().reset(tokio::time::Instant::now() + delay);
            }
        }
        if stopping && pending.is_empty() && rx.is_empty() && in_flight.is_empty() {
            return;
        }
        tokio::select! {
            Some((i, n, result)) = in_flight.next(), if !in_flight.is_empty() => {
                idle.push(i);
                match result {
                    Ok(Ok(())) => metrics.exported.inc_by(n),
                    Ok(Err(e)) => {
                        metrics.failed.inc_by(n);
                        tracing::warn!(error = %e, spans = n, "OTLP export failed");
                    }
                    Err(_) => {
                        metrics.failed.inc_by(n);
                        tracing::warn!(spans = n, "OTLP export timed out");
                    }
                }
            }
            span = rx.recv(), if pending.len() < batch && !stopping => match span {
                Some(s) => pending.push(s),
                None => stopping = true,
            },
            _ = &mut deadline, if !due => due = true,
            _ = shutdown.changed(), if !stopping => stopping = true,
            else => {}
        }
        if stopping {
            while pending.len() < batch {
                match rx.try_recv() {
                    Some(s) => pending.push(s),
                    None => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The queue gauge is the queue's own count at the scrape.
    #[test]
    fn the_queue_gauge_reads_the_queue_at_the_scrape() {
        let registry = Registry::new();
        let metrics = TraceMetrics::new(&registry);
        metrics.queued.store(7, Ordering::Release);
        let text = crate::telemetry::render_registry(&registry);
        assert!(text.contains("\neventscope_trace_queue_spans 7\n"), "{text}");
        metrics.queued.store(0, Ordering::Release);
        assert!(crate::telemetry::render_registry(&registry).contains("\neventscope_trace_queue_spans 0\n"));
    }

    use super::*;
    use opentelemetry::propagation::Injector;

    struct Header(Option<String>);
    impl Injector for Header {
        fn set(&mut self, key: &str, value: String) {
            if key == "traceparent" {
                self.0 = Some(value);
            }
        }
    }

    #[test]
    fn extract_is_lenient_and_inject_round_trips() {
        let tp = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let sc = extract(tp, Some(b"congo=t61rcWkgMzE")).unwrap();
        assert_eq!(sc.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert!(sc.is_sampled() && sc.is_remote());
        assert_eq!(sc.trace_state().header(), "congo=t61rcWkgMzE");
        assert_eq!(traceparent(&sc).as_bytes(), tp);
        let mut h = Header(None);
        TraceContextPropagator::new().inject_context(&Context::new().with_remote_span_context(sc.clone()), &mut h);
        assert_eq!(
            h.0.as_deref(),
            Some(traceparent(&sc).as_str()),
            "the same as OpenTelemetry's propagator"
        );
        let unsampled = SpanContext::new(sc.trace_id(), sc.span_id(), TraceFlags::default(), false, Default::default());
        assert!(traceparent(&unsampled).as_str().ends_with("-00"));
        for bad in [
            &b"00-00000000000000000000000000000000-b7ad6b7169203331-01"[..],
            b"garbage",
            b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            b"\xff\xfe",
            b"",
        ] {
            assert!(extract(bad, None).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn span_ids_keep_what_a_span_start_says() {
        let tracer = Tracer::disabled(TraceMetrics::new(&prometheus::Registry::new()));
        let parent = extract(
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            Some(b"congo=t61rcWkgMzE"),
        )
        .unwrap();
        let unsampled = extract(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", None).unwrap();
        for start in [
            tracer.start_span(Some(parent.clone()), "process", SpanKind::Consumer),
            tracer.start_span(Some(unsampled), "process", SpanKind::Consumer),
            tracer.start_span(None, "send", SpanKind::Producer),
        ] {
            let (context, parent) = (start.context.clone(), start.parent.clone());
            let ids = SpanIds::from(start);
            assert_eq!(ids.is_sampled(), context.is_sampled());
            let back = ids.start();
            assert_eq!(back.context, context);
            assert_eq!(back.parent, parent);
        }
        assert!(std::mem::size_of::<SpanIds>() <= 48, "{} bytes", std::mem::size_of::<SpanIds>());
    }

    #[test]
    fn children_keep_the_trace_and_state() {
        let tracer = Tracer::disabled(TraceMetrics::new(&prometheus::Registry::new()));
        let parent = extract(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", Some(b"a=1")).unwrap();
        let child = tracer.start_span(Some(parent.clone()), "send t", SpanKind::Producer);
        assert_eq!(child.context.trace_id(), parent.trace_id());
        assert_ne!(child.context.span_id(), parent.span_id());
        assert_eq!(child.context.trace_state().header(), "a=1");
        let root = tracer.start_span(None, "send t", SpanKind::Producer);
        assert_ne!(root.context.trace_id(), parent.trace_id());
        assert!(root.context.is_valid());
    }

    #[test]
    fn export_settings_report_every_problem() {
        let env: HashMap<String, String> = [
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let problems = ExportSettings::from_env(&env).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        let ok = ExportSettings::from_env(&HashMap::from([("OTEL_EXPORTER_OTLP_PROTOCOL".to_string(), "grpc".to_string())])).unwrap();
        assert!(ok.grpc && ok.enabled && ok.queue == DEFAULT_QUEUE && ok.batch == 512);
    }

    #[test]
    fn a_group_takes_what_the_queue_has_room_for_and_comes_out_span_by_span() {
        let metrics = TraceMetrics::new(&prometheus::Registry::new());
        let (tracer, TestQueue(mut source)) = Tracer::with_test_queue(4, metrics.clone());
        let spans = source.spans.clone();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        // One span alone, then a group of five: three fit beside it, two are dropped.
        tracer.finish(
            tracer.start_span(None, "send", SpanKind::Producer),
            SpanKind::Producer,
            "send t".into(),
            at,
            at,
            vec![],
            None,
        );
        tracer.finish_group(SpanGroup {
            kind: SpanKind::Consumer,
            name: "process t".into(),
            ended: at + Duration::from_secs(5),
            attributes: vec![KeyValue::new("messaging.destination.name", "t")],
            key: "messaging.kafka.offset",
            spans: (0..5)
                .map(|i| (tracer.start_span(None, "process", SpanKind::Consumer).into(), at, 100 + i))
                .collect(),
        });
        assert_eq!(metrics.dropped.get(), 2);
        assert_eq!(spans.load(Ordering::Acquire), 4);
        let mut got = Vec::new();
        while let Some(s) = source.try_recv() {
            got.push(s);
        }
        assert!(source.is_empty());
        assert_eq!(spans.load(Ordering::Acquire), 0, "the queue's count comes back down");
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].name, "send t");
        for (i, s) in got[1..].iter().enumerate() {
            assert_eq!(s.name, "process t");
            assert_eq!(s.span_kind, SpanKind::Consumer);
            assert_eq!(s.end_time, at + Duration::from_secs(5));
            assert_eq!(
                s.attributes,
                vec![
                    KeyValue::new("messaging.destination.name", "t"),
                    KeyValue::new("messaging.kafka.offset", 100 + i as i64)
                ]
            );
        }
        // Unsampled spans are not queued at all.
        let unsampled = SpanStart {
            context: SpanContext::new(
                opentelemetry::trace::TraceId::from_bytes([7; 16]),
                SpanId::from_bytes([8; 8]),
                TraceFlags::default(),
                false,
                Default::default(),
            ),
            parent: None,
        };
        tracer.finish_group(SpanGroup {
            kind: SpanKind::Consumer,
            name: "process t".into(),
            ended: at,
            attributes: vec![],
            key: "messaging.kafka.offset",
            spans: vec![(unsampled.into(), at, 1)],
        });
        assert!(source.try_recv().is_none());
        assert_eq!(metrics.dropped.get(), 2);
    }
}

/// Spans handed to the OTLP exporter, by outcome.
#[derive(Clone)]
pub struct TraceMetrics {
    pub exported: prometheus::IntCounter,
    pub dropped: prometheus::IntCounter,
    pub failed: prometheus::IntCounter,
    /// Spans in the export queue: the queue's own count, which `eventscope_trace_queue_spans` reads at
    /// each scrape.
    pub queued: Arc<AtomicUsize>,
}

/// `eventscope_trace_queue_spans`, read from the queue's count when scraped (never a stale copy).
struct QueuedSpans {
    gauge: prometheus::IntGauge,
    spans: Arc<AtomicUsize>,
}

impl prometheus::core::Collector for QueuedSpans {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.gauge.set(self.spans.load(Ordering::Acquire) as i64);
        self.gauge.collect()
    }
}

impl TraceMetrics {
    pub fn new(registry: &Registry) -> TraceMetrics {
        let spans = IntCounterVec::new(
            Opts::new(
                TRACE_SPANS,
                "Spans by outcome: exported, dropped (export queue full), failed (the OTLP endpoint refused or timed out).",
            ),
            &[L_OUTCOME],
        )
        .expect("valid metric");
        // A second registration (several sidecars in one test process) keeps the first.
        let _ = registry.register(Box::new(spans.clone()));
        let queued = Arc::new(AtomicUsize::new(0));
        let gauge = prometheus::IntGauge::with_opts(Opts::new(
            TRACE_QUEUE,
            "Spans waiting in the export queue (at most OTEL_BSP_MAX_QUEUE_SIZE; beyond it spans are dropped).",
        ))
        .expect("valid metric");
        let _ = registry.register(Box::new(QueuedSpans {
            gauge,
            spans: queued.clone(),
        }));
        TraceMetrics {
            exported: spans.with_label_values(&["exported"]),
            dropped: spans.with_label_values(&["dropped"]),
            failed: spans.with_label_values(&["failed"]),
            queued,
        }
    }
}
