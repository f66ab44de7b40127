//! An OTLP trace receiver for tests, on the real protocol types of `opentelemetry-proto`: gRPC (tonic's
//! `TraceService`) or HTTP/protobuf (`POST /v1/traces`). It keeps every span it receives with its
//! resource's attributes, or only counts them ([`OtlpReceiver::count_only`], for benchmarks that send
//! millions).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;

/// A span as received, with ids in hex and attributes as strings.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    /// OTLP `SpanKind`: 4 producer, 5 consumer.
    pub kind: i32,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: HashMap<String, String>,
    /// Linked (trace id, span id).
    pub links: Vec<(String, String)>,
    pub status_code: i32,
    pub resource: HashMap<String, String>,
}

pub const KIND_PRODUCER: i32 = 4;
pub const KIND_CONSUMER: i32 = 5;

/// (trace id, span id) of a `traceparent` value.
pub fn ids(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    (parts[1].to_string(), parts[2].to_string())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attrs(kv: &[KeyValue]) -> HashMap<String, String> {
    kv.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

#[derive(Default)]
struct Kept {
    spans: Vec<ReceivedSpan>,
    count_only: bool,
    count: u64,
}

type Store = Arc<Mutex<Kept>>;

fn keep(store: &Store, request: ExportTraceServiceRequest) {
    let mut kept = store.lock().unwrap();
    kept.count += request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len() as u64)
        .sum::<u64>();
    if kept.count_only {
        return;
    }
    let out = &mut kept.spans;
    for rs in request.resource_spans {
        let resource = rs.resource.map(|r| attrs(&r.attributes)).unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(ReceivedSpan {
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    name: s.name,
                    kind: s.kind,
                    start_ns: s.start_time_unix_nano,
                    end_ns: s.end_time_unix_nano,
                    attributes: attrs(&s.attributes),
                    links: s.links.iter().map(|l| (hex(&l.trace_id), hex(&l.span_id))).collect(),
                    status_code: s.status.map(|st| st.code).unwrap_or(0),
                    resource: resource.clone(),
                });
            }
        }
    }
}

struct Service(Store);

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// A running receiver; stops when dropped.
pub struct OtlpReceiver {
    pub endpoint: String,
    spans: Store,
    runtime: Option<tokio::runtime::Runtime>,
}

impl OtlpReceiver {
    /// OTLP/gRPC on a free loopback port.
    pub fn grpc() -> OtlpReceiver {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let spans: Store = Default::default();
        let service = TraceServiceServer::new(Service(spans.clone()));
        runtime.spawn(async move {
            let incoming = futures::stream::unfold(listener, |l| async move {
                let r = l.accept().await.map(|(s, _)| s);
                Some((r, l))
            });
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        OtlpReceiver {
            endpoint: format!("http://{addr}"),
            spans,
            runtime: Some(runtime),
        }
    }

    /// OTLP/HTTP with protobuf bodies on a free loopback port.
    pub fn http() -> OtlpReceiver {
        use http_body_util::BodyExt;
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let spans: Store = Default::default();
        let store = spans.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let store = store.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let store = store.clone();
                        async move {
                            let ok = req.uri().path() == "/v1/traces";
                            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let status = match <ExportTraceServiceRequest as prost::Message>::decode(body) {
                                Ok(r) if ok => {
                                    keep(&store, r);
                                    200
                                }
                                _ => 400,
                            };
                            let reply = prost::Message::encode_to_vec(&ExportTraceServiceResponse { partial_success: None });
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/x-protobuf")
                                    .body(http_body_util::Full::new(bytes::Bytes::from(reply)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        OtlpReceiver {
            endpoint: format!("http://{addr}"),
            spans,
            runtime: Some(runtime),
        }
    }

    /// Keeps no span from now on, only their number.
    pub fn count_only(self) -> OtlpReceiver {
        self.spans.lock().unwrap().count_only = true;
        self
    }

    /// Spans received so far.
    pub fn received(&self) -> u64 {
        self.spans.lock().unwrap().count
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().spans.clone()
    }

    /// Waits until at least `n` spans match `f`; returns those.
    pub fn wait_for(&self, n: usize, what: &str, f: impl Fn(&ReceivedSpan) -> bool) -> Vec<ReceivedSpan> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let got: Vec<ReceivedSpan> = self.spans().into_iter().filter(&f).collect();
            if got.len() >= n {
                return got;
            }
            assert!(std::time::Instant::now() < deadline, "{what}: {} of {n} spans arrived", got.len());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
