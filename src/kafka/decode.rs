//! Decoding untrusted Kafka bytes with `kafka-protocol`'s codecs: one place, used by the collector's
//! client and the sidecar alike.
//!
//! Every byte from the network is untrusted. The codecs return errors on malformed input and the vendored
//! copy bounds its pre-allocations (`vendor/README.md`); a panic in a codec would still be a bug in a
//! dependency that must not end a collection task or the sidecar's observer, so each decode here runs
//! contained: a panic becomes an error like any other malformed input.

use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::Decodable;

/// Runs a decode of untrusted bytes; a panic inside becomes `Err`.
pub fn contained<T>(decode: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(decode)).unwrap_or_else(|_| Err("the decoder panicked".to_string()))
}

/// A response body (after the length prefix): its header in `header_version`, then the response.
pub fn response_body<R: Decodable>(mut body: Bytes, header_version: i16, version: i16) -> Result<(ResponseHeader, R), String> {
    contained(move || {
        let header = ResponseHeader::decode(&mut body, header_version).map_err(|e| format!("response header: {e}"))?;
        let response = R::decode(&mut body, version).map_err(|e| e.to_string())?;
        Ok((header, response))
    })
}

/// A response frame (length prefix included) of API `key`, `None` if it does not decode.
pub fn response<R: Decodable>(frame: &Bytes, key: ApiKey, version: i16) -> Option<R> {
    let body = frame.get(4..).map(|_| frame.slice(4..))?;
    response_body::<R>(body, key.response_header_version(version), version)
        .ok()
        .map(|(_, r)| r)
}

/// A request frame (length prefix included) of API `key`: its header and body, `None` if either does not
/// decode.
pub fn request<R: Decodable>(frame: &Bytes, key: ApiKey, version: i16) -> Option<(RequestHeader, R)> {
    let mut body = frame.get(4..).map(|_| frame.slice(4..))?;
    contained(move || {
        let header = RequestHeader::decode(&mut body, key.request_header_version(version)).map_err(|e| e.to_string())?;
        let request = R::decode(&mut body, version).map_err(|e| e.to_string())?;
        Ok((header, request))
    })
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{FetchResponse, MetadataRequest};

    #[test]
    fn garbage_and_short_frames_are_none_never_a_panic() {
        let mut next = crate::testing::xorshift(7);
        for len in 0..300usize {
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let frame = Bytes::from(bytes);
            for version in [4, 11, 12, 16] {
                let _ = response::<FetchResponse>(&frame, ApiKey::Fetch, version);
            }
            let _ = request::<MetadataRequest>(&frame, ApiKey::Metadata, 12);
        }
        assert!(response::<FetchResponse>(&Bytes::from_static(b"\0\0"), ApiKey::Fetch, 12).is_none());
    }

    #[test]
    fn a_panic_inside_is_an_error() {
        let r: Result<(), String> = contained(|| panic!("codec bug"));
        assert_eq!(r, Err("the decoder panicked".to_string()));
    }
}
