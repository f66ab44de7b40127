//! One pipelined connection to one broker.
//!
//! Requests are written under a lock and answered by a reader task that matches responses to callers by
//! correlation id, so many requests can be in flight on one connection. Every frame length read from the
//! broker is checked against a maximum before anything is allocated; a malformed or oversized frame ends
//! the connection (all its callers get the error) and the client dials a new one on next use.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader};
use kafka_protocol::protocol::{Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::security::{plain_token, Mechanism, Scram, Security};
use super::KafkaError;

/// A byte stream to a broker: TCP, or TLS over TCP.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}
pub type BoxStream = Box<dyn Stream>;

/// How long before the broker's SASL session ends a connection is replaced (KIP-368).
const REAUTH_MARGIN: Duration = Duration::from_secs(5);

type Waiter = oneshot::Sender<Result<Bytes, KafkaError>>;

#[derive(Default)]
struct Pending {
    waiters: HashMap<i32, Waiter>,
    closed: Option<Closed>,
}

/// Why the reader stopped.
#[derive(Clone)]
enum Closed {
    Io(Arc<std::io::Error>),
    /// The broker sent a frame that cannot be valid: never read, the connection is dropped.
    Malformed(String),
}

impl Closed {
    fn error(&self) -> KafkaError {
        match self {
            Closed::Io(e) => KafkaError::Io(e.clone()),
            Closed::Malformed(r) => KafkaError::Protocol(r.clone()),
        }
    }
}

/// A connection with negotiated API versions.
pub struct Connection {
    addr: String,
    writer: tokio::sync::Mutex<WriteHalf<BoxStream>>,
    pending: Arc<Mutex<Pending>>,
    next_correlation: AtomicI32,
    alive: Arc<AtomicBool>,
    versions: HashMap<i16, (i16, i16)>,
    client_id: StrBytes,
    timeout: Duration,
    reader: tokio::task::JoinHandle<()>,
    /// When the broker will end the SASL session (SaslAuthenticate's session lifetime), if it said.
    expires_at: Option<std::time::Instant>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Opens a byte stream to a broker: TCP, with TLS when the settings say so.
pub async fn dial(addr: &str, timeout: Duration, security: &Security) -> Result<BoxStream, KafkaError> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| KafkaError::Timeout(timeout))?
        .map_err(|source| KafkaError::Connect {
            addr: addr.to_string(),
            source: Arc::new(source),
        })?;
    let _ = tcp.set_nodelay(true);
    Ok(match &security.tls {
        None => Box::new(tcp),
        Some(config) => {
            let host = super::split_host_port(addr).map(|(h, _)| h).unwrap_or_default();
            let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|_| KafkaError::Connect {
                addr: addr.into(),
                source: Arc::new(std::io::Error::other(format!("{host:?} is not a TLS server name"))),
            })?;
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let tls = tokio::time::timeout(timeout, connector.connect(name, tcp))
                .await
                .map_err(|_| KafkaError::Timeout(timeout))?
                .map_err(|e| KafkaError::Connect {
                    addr: addr.into(),
                    source: Arc::new(std::io::Error::other(format!("TLS handshake: {e}"))),
                })?;
            Box::new(tls)
        }
    })
}

impl Connection {
    /// Dials `addr` (with TLS when configured), starts the reader, negotiates versions with ApiVersions
    /// and authenticates with SASL when configured.
    pub async fn connect(
        addr: &str,
        client_id: &str,
        timeout: Duration,
        max_frame: usize,
        security: &Security,
    ) -> Result<Connection, KafkaError> {
        let stream = dial(addr, timeout, security).await?;
        let (read, write) = tokio::io::split(stream);
        let pending = Arc::new(Mutex::new(Pending::default()));
        let alive = Arc::new(AtomicBool::new(true));
        let reader = tokio::spawn(read_loop(read, pending.clone(), alive.clone(), max_frame));
        let mut conn = Connection {
            addr: addr.to_string(),
            writer: tokio::sync::Mutex::new(write),
            pending,
            next_correlation: AtomicI32::new(1),
            alive,
            versions: HashMap::new(),
            client_id: StrBytes::from_string(client_id.to_string()),
            timeout,
            reader,
            expires_at: None,
        };
        conn.versions = conn.negotiate().await?;
        if let Some(sasl) = &security.sasl {
            conn.expires_at = conn.authenticate(sasl.mechanism, &sasl.username, &sasl.password).await?;
        }
        Ok(conn)
    }

    /// SaslHandshake v1, then SaslAuthenticate rounds. Returns when the session ends, if the broker says.
    async fn authenticate(&self, mechanism: Mechanism, username: &str, password: &str) -> Result<Option<std::time::Instant>, KafkaError> {
        use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
        let v = self.require_version::<SaslHandshakeRequest>(1)?;
        let hs = self
            .send(
                &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism.name())),
                v,
            )
            .await?;
        if hs.error_code != 0 {
            let offered: Vec<String> = hs.mechanisms.iter().map(|m| m.to_string()).collect();
            return Err(KafkaError::Authorization(format!(
                "SASL mechanism {} refused (broker offers {})",
                mechanism.name(),
                offered.join(", ")
            )));
        }
        let av = self.require_version::<SaslAuthenticateRequest>(2)?;
        let round = |token: Vec<u8>| async move {
            let r = self
                .send(&SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(token)), av)
                .await?;
            if r.error_code != 0 {
                let msg = r.error_message.map(|m| m.to_string()).unwrap_or_default();
                return Err(KafkaError::Authorization(format!(
                    "SASL {} authentication failed: {msg}",
                    mechanism.name()
                )));
            }
            Ok::<_, KafkaError>((r.auth_bytes, r.session_lifetime_ms))
        };
        let lifetime_ms = match mechanism {
            Mechanism::Plain => round(plain_token(username, password)).await?.1,
            Mechanism::ScramSha256 | Mechanism::ScramSha512 => {
                let mut scram = Scram::new(mechanism, username, password, Scram::random_nonce());
                let (server_first, _) = round(scram.client_first().into_bytes()).await?;
                let server_first = String::from_utf8_lossy(&server_first).into_owned();
                let client_final = scram.client_final(&server_first).map_err(KafkaError::Authorization)?;
                let (server_final, lifetime) = round(client_final.into_bytes()).await?;
                scram
                    .verify_server_final(&String::from_utf8_lossy(&server_final))
                    .map_err(KafkaError::Authorization)?;
                lifetime
            }
        };
        Ok((lifetime_ms > 0).then(|| std::time::Instant::now() + Duration::from_millis(lifetime_ms as u64)))
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// False once the connection failed, or when its SASL session is about to end.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed) && self.expires_at.is_none_or(|t| std::time::Instant::now() + REAUTH_MARGIN < t)
    }

    /// The highest version of `R` both sides support, if any.
    pub fn version_for<R: Request>(&self, ours_max: i16) -> Option<i16> {
        let (theirs_min, theirs_max) = *self.versions.get(&R::KEY)?;
        let lo = theirs_min.max(R::VERSIONS.min);
        let hi = theirs_max.min(R::VERSIONS.max).min(ours_max);
        (lo <= hi).then_some(hi)
    }

    /// Like [`Connection::version_for`], as an error when there is no common version.
    pub fn require_version<R: Request>(&self, ours_max: i16) -> Result<i16, KafkaError> {
        self.version_for::<R>(ours_max)
            .ok_or(KafkaError::Unsupported { api: api_key(R::KEY) })
    }

    /// Sends a request in the given version and decodes its response.
    pub async fn send<R: Request>(&self, request: &R, version: i16) -> Result<R::Response, KafkaError> {
        let body = self.round_trip::<R>(request, version).await?;
        decode_response::<R>(body, version)
    }

    async fn round_trip<R: Request>(&self, request: &R, version: i16) -> Result<Bytes, KafkaError> {
        let correlation_id = self.next_correlation.fetch_add(1, Ordering::Relaxed);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(self.client_id.clone()));
        let mut frame = BytesMut::with_capacity(256);
        frame.put_i32(0);
        header
            .encode(&mut frame, R::header_version(version))
            .and_then(|_| request.encode(&mut frame, version))
            .map_err(|e| KafkaError::Protocol(format!("cannot encode request: {e}")))?;
        let len = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&len.to_be_bytes());

        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock().expect("pending lock");
            if let Some(closed) = &pending.closed {
                return Err(closed.error());
            }
            pending.waiters.insert(correlation_id, tx);
        }
        let result = tokio::time::timeout(self.timeout, async {
            {
                let mut w = self.writer.lock().await;
                w.write_all(&frame).await.map_err(|e| KafkaError::io("write", e))?;
            }
            rx.await.map_err(|_| KafkaError::closed("connection closed"))?
        })
        .await;
        match result {
            Ok(r) => {
                if r.is_err() {
                    self.alive.store(false, Ordering::Relaxed);
                }
                r
            }
            Err(_) => {
                self.pending.lock().expect("pending lock").waiters.remove(&correlation_id);
                self.alive.store(false, Ordering::Relaxed);
                Err(KafkaError::Timeout(self.timeout))
            }
        }
    }

    /// ApiVersions: try v3; a broker that does not know it may answer in any form, so on failure ask again
    /// in v0, which every broker speaks.
    async fn negotiate(&self) -> Result<HashMap<i16, (i16, i16)>, KafkaError> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("eventscope"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let body = self.round_trip::<ApiVersionsRequest>(&request, 3).await?;
        let response: ApiVersionsResponse = match decode_response::<ApiVersionsRequest>(body, 3) {
            Ok(r) if r.error_code == 0 => r,
            _ => {
                let body = self.round_trip::<ApiVersionsRequest>(&request, 0).await?;
                let r = decode_response::<ApiVersionsRequest>(body, 0)?;
                super::check_code(r.error_code)?;
                r
            }
        };
        Ok(response
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect())
    }
}

/// Decodes a response body (untrusted bytes, decoded contained: see [`super::decode`]).
fn decode_response<R: Request>(body: Bytes, version: i16) -> Result<R::Response, KafkaError> {
    let header_version = <R::Response as HeaderVersion>::header_version(version);
    super::decode::response_body::<R::Response>(body, header_version, version)
        .map(|(_, response)| response)
        .map_err(|e| KafkaError::Protocol(format!("{:?} v{version} response: {e}", api_key(R::KEY))))
}

fn api_key(key: i16) -> ApiKey {
    ApiKey::try_from(key).unwrap_or(ApiKey::ApiVersions)
}

async fn read_loop(mut read: ReadHalf<BoxStream>, pending: Arc<Mutex<Pending>>, alive: Arc<AtomicBool>, max_frame: usize) {
    let closed = loop {
        let mut len = [0u8; 4];
        if let Err(e) = read.read_exact(&mut len).await {
            break Closed::Io(Arc::new(e));
        }
        let len = i32::from_be_bytes(len);
        if len < 4 || len as usize > max_frame {
            break Closed::Malformed(format!("response frame of {len} bytes is outside 4..={max_frame}"));
        }
        let mut buf = vec![0u8; len as usize];
        if let Err(e) = read.read_exact(&mut buf).await {
            break Closed::Io(Arc::new(e));
        }
        let body = Bytes::from(buf);
        let correlation_id = body.clone().get_i32();
        let waiter = pending.lock().expect("pending lock").waiters.remove(&correlation_id);
        match waiter {
            Some(tx) => {
                let _ = tx.send(Ok(body));
            }
            // A response nobody waits for (its caller timed out, or the broker invented it): dropped.
            None => tracing::debug!(correlation_id, "response without a waiter"),
        }
    };
    alive.store(false, Ordering::Relaxed);
    let mut p = pending.lock().expect("pending lock");
    for (_, tx) in p.waiters.drain() {
        let _ = tx.send(Err(closed.error()));
    }
    p.closed = Some(closed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::*;

    /// Random bytes, truncated responses and huge counts never panic or abort in any response the client
    /// decodes; they are errors (or, rarely, a nonsense value that the callers bound-check).
    #[test]
    fn garbage_responses_never_panic() {
        let mut next = crate::testing::xorshift(0x2545_f491u64);
        for round in 0..3000 {
            let len = (next() % 300) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 3 == 0 && bytes.len() >= 12 {
                // A plausible header followed by a huge count.
                bytes[4..8].copy_from_slice(&0x7fff_fff0i32.to_be_bytes());
            }
            let b = Bytes::from(bytes);
            macro_rules! no_panic {
                ($($req:ty => $v:expr),*) => {$(
                    let input = b.clone();
                    let outcome = std::panic::catch_unwind(move || decode_response::<$req>(input, $v).is_ok());
                    assert!(outcome.is_ok(), "{} v{} panicked on {:?}", stringify!($req), $v, b);
                )*};
            }
            no_panic!(
                ApiVersionsRequest => 3, ApiVersionsRequest => 0, MetadataRequest => 12, MetadataRequest => 9,
                ListGroupsRequest => 4, DescribeGroupsRequest => 5, FindCoordinatorRequest => 4, FindCoordinatorRequest => 3,
                OffsetFetchRequest => 8, OffsetFetchRequest => 6, ListOffsetsRequest => 7, FetchRequest => 11,
                SaslHandshakeRequest => 1, SaslAuthenticateRequest => 2
            );
        }
    }
}
