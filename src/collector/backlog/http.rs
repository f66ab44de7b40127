//! A small HTTP/1.1 GET client for management APIs (hyper's client connection, rustls for `https`): one
//! kept-alive connection per `Client` (a source holds as many as it reads at once), every answer bounded
//! in size and time, as the Kafka client is.
//!
//! The answers are untrusted: a body past `max_bytes` is cut off with an error (never buffered whole), a
//! server that stops talking hits the deadline, a non-2xx status is an error with its code.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::SourceError;
use crate::config::HttpBase;

/// One connection to a management API.
pub struct Client {
    base: HttpBase,
    authorization: String,
    timeout: Duration,
    max_bytes: usize,
    sender: Option<SendRequest<Empty<Bytes>>>,
}

impl Client {
    pub fn new(base: HttpBase, username: &str, password: &str, timeout: Duration, max_bytes: usize) -> Client {
        Client {
            base,
            authorization: basic(username, password),
            timeout,
            max_bytes,
            sender: None,
        }
    }

    /// Sets new credentials (a rotated secret), dropping the connection.
    pub fn set_credentials(&mut self, username: &str, password: &str) {
        let authorization = basic(username, password);
        if authorization != self.authorization {
            self.authorization = authorization;
            self.sender = None;
        }
    }

    /// Drops the connection (the next request dials again).
    pub fn reset(&mut self) {
        self.sender = None;
    }

    /// `GET base + path_and_query`: the body of a 2xx answer.
    pub async fn get(&mut self, path_and_query: &str) -> Result<Bytes, SourceError> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.get_inner(path_and_query)).await {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                self.sender = None;
                Err(SourceError::Timeout(timeout))
            }
        }
    }

    async fn get_inner(&mut self, path_and_query: &str) -> Result<Bytes, SourceError> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.sender = Some(self.connect().await?);
        }
        let Some(sender) = self.sender.as_mut() else {
            return Err(SourceError::Connect("no connection".into()));
        };
        sender
            .ready()
            .await
            .map_err(|e| SourceError::Connect(format!("connection closed: {e}")))?;
        let host = if self.base.host.contains(':') {
            format!("[{}]:{}", self.base.host, self.base.port)
        } else {
            format!("{}:{}", self.base.host, self.base.port)
        };
        let req = http::Request::get(format!("{}{}", self.base.path, path_and_query))
            .header(http::header::HOST, host)
            .header(http::header::AUTHORIZATION, &self.authorization)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, concat!("eventscope/", env!("CARGO_PKG_VERSION")))
            .body(Empty::new())
            .map_err(|e| SourceError::Protocol(format!("cannot build the request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| SourceError::Connect(format!("request failed: {e}")))?;
        let status = resp.status();
        if let Some(len) = resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        {
            if len > self.max_bytes {
                return Err(SourceError::Protocol(format!(
                    "answer of {len} bytes is over the {} byte limit",
                    self.max_bytes
                )));
            }
        }
        let mut body = resp.into_body();
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| SourceError::Protocol(format!("body: {e}")))?;
            if let Some(chunk) = frame.data_ref() {
                if buf.len() + chunk.len() > self.max_bytes {
                    return Err(SourceError::Protocol(format!("answer is over the {} byte limit", self.max_bytes)));
                }
                buf.extend_from_slice(chunk);
            }
        }
        match status.as_u16() {
            200..=299 => Ok(buf.freeze()),
            401 | 403 => Err(SourceError::Authorization(format!("HTTP {status}"))),
            _ => Err(SourceError::Broker(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&buf[..buf.len().min(200)])
            ))),
        }
    }

    async fn connect(&self) -> Result<SendRequest<Empty<Bytes>>, SourceError> {
        let addr = (self.base.host.as_str(), self.base.port);
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| SourceError::Connect(format!("{}:{}: {e}", self.base.host, self.base.port)))?;
        let _ = tcp.set_nodelay(true);
        if self.base.tls {
            let name = rustls::pki_types::ServerName::try_from(self.base.host.clone())
                .map_err(|_| SourceError::Connect(format!("{:?} is not a TLS server name", self.base.host)))?;
            let tls = tokio_rustls::TlsConnector::from(tls_config())
                .connect(name, tcp)
                .await
                .map_err(|e| SourceError::Connect(format!("TLS: {e}")))?;
            handshake(tls).await
        } else {
            handshake(tcp).await
        }
    }
}

/// The `Authorization` header of HTTP basic authentication.
fn basic(username: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
    )
}

async fn handshake<T>(io: T) -> Result<SendRequest<Empty<Bytes>>, SourceError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(64 * 1024)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| SourceError::Connect(format!("HTTP handshake: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "management API connection ended");
        }
    });
    Ok(sender)
}

/// Public roots (webpki's), ring as the provider.
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring provides TLS 1.2 and 1.3")
                .with_root_certificates(roots)
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}
