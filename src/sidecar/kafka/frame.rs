//! Kafka frames on the wire: a length prefix, then the body. Reading one whole (small requests and
//! responses) checks the length before allocating; streaming one (large ones) moves it as it arrives,
//! shown to the observer on the way or with an optional copy for it.
//!
//! Nothing here knows the proxy: these read and write bytes, and decode request headers on demand.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::telemetry::kafka::ProxyErrorKind;

/// When [`stream_observed`] shows a chunk to its observer: after writing it (a response: the client is
/// not kept waiting) or before (a request: what the observer makes of its last bytes is ready before
/// the broker can answer).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Observe {
    AfterWrite,
    BeforeWrite,
}

/// Why a frame could not be read.
pub enum FrameError {
    /// The peer closed the connection (or the read failed).
    Closed,
    /// A length that is out of bounds: the connection is closed with this kind and reason.
    Bad(ProxyErrorKind, String),
}

/// A frame's length prefix, checked before anything is allocated for it: at least `min`, at most `max`.
pub fn checked_length(prefix: [u8; 4], min: usize, max: usize) -> Result<usize, FrameError> {
    let n = i32::from_be_bytes(prefix);
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
    Ok(n as usize)
}

/// A request's first 12 bytes: its length prefix (checked: at least 8, at most `max`), API key, version
/// and correlation id; and its length after the prefix.
pub async fn read_request_head(r: &mut (impl AsyncRead + Unpin), max: usize) -> Result<([u8; 12], usize), FrameError> {
    let mut head = [0u8; 12];
    r.read_exact(&mut head[..4]).await.map_err(|_| FrameError::Closed)?;
    let n = checked_length([head[0], head[1], head[2], head[3]], 8, max)?;
    r.read_exact(&mut head[4..]).await.map_err(|_| FrameError::Closed)?;
    Ok((head, n))
}

/// The whole frame whose first bytes (length prefix included) are `head` and whose length after the
/// prefix is `n`: the rest is read, its length already checked against the maximum.
pub async fn read_rest<R: AsyncRead + Unpin>(from: &mut BufReader<R>, head: &[u8], n: usize) -> std::io::Result<Bytes> {
    let mut frame = BytesMut::with_capacity(4 + n);
    frame.extend_from_slice(head);
    stream(from, &mut tokio::io::sink(), 4 + n - head.len(), STREAM_CHUNK, Some(&mut frame)).await?;
    Ok(frame.freeze())
}

/// The `client.id` of a request header ("" when null).
pub fn client_id(header: &kafka_protocol::messages::RequestHeader) -> String {
    header.client_id.as_ref().map(|c| c.to_string()).unwrap_or_default()
}

/// Most bytes moved per read when streaming a response: a read takes whatever the socket holds, up to
/// this, so a 50 MB Fetch response costs the proxy about 200 reads, writes and client wake-ups rather
/// than 800 with 64 KiB (strace). On loopback a read rarely finds more than this waiting, so 1 MiB saved
/// no CPU measurably (`benches/sidecar_rates.rs`) and held 3 MiB more with 100 consumers (heaptrack). The
/// proxy lets a few connections at a time read this much at once ([`LARGE_READS`]); the others read
/// [`SMALL_CHUNK`].
pub const STREAM_CHUNK: usize = 256 * 1024;

/// Bytes per read for a connection that has no large read buffer.
pub const SMALL_CHUNK: usize = 16 * 1024;

/// Connections streaming a response with a [`STREAM_CHUNK`] buffer at one time (1 MiB in all).
pub const LARGE_READS: usize = 4;

/// Moves `n` bytes from `from` to `to` as they arrive, at most `chunk` per read, showing each chunk to
/// `observe` (`when` says whether before or after writing it): the observer sees the bytes without a
/// copy of the whole being kept.
pub async fn stream_observed<R: AsyncRead + Unpin>(
    from: &mut BufReader<R>,
    to: &mut (impl AsyncWrite + Unpin),
    mut n: usize,
    chunk: usize,
    when: Observe,
    observe: &mut impl FnMut(&[u8]),
) -> std::io::Result<()> {
    async fn pass(to: &mut (impl AsyncWrite + Unpin), bytes: &[u8], when: Observe, observe: &mut impl FnMut(&[u8])) -> std::io::Result<()> {
        if when == Observe::BeforeWrite {
            observe(bytes);
        }
        to.write_all(bytes).await?;
        if when == Observe::AfterWrite {
            observe(bytes);
        }
        Ok(())
    }
    let buffered = from.buffer().len().min(n);
    if buffered > 0 {
        pass(to, &from.buffer()[..buffered], when, observe).await?;
        std::pin::Pin::new(&mut *from).consume(buffered);
        n -= buffered;
    }
    let mut scratch = vec![0; n.min(chunk)];
    while n > 0 {
        let want = n.min(chunk);
        let got = from.read(&mut scratch[..want]).await?;
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        pass(to, &scratch[..got], when, observe).await?;
        n -= got;
    }
    Ok(())
}

/// Moves `n` bytes from `from` to `to` as they arrive, at most `chunk` per read, appending them to `copy`
/// too when given: what the read buffer holds first, then reads straight into `copy` (or a scratch
/// buffer) past the read buffer.
pub async fn stream<R: AsyncRead + Unpin>(
    from: &mut BufReader<R>,
    to: &mut (impl AsyncWrite + Unpin),
    mut n: usize,
    chunk: usize,
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
        let want = n.min(chunk);
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
