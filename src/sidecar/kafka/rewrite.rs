//! The responses the proxy must change: ApiVersions (clamped to what the sidecar decodes, without the APIs
//! and versions whose responses would carry broker addresses it does not rewrite) and every response that
//! names brokers (Metadata, FindCoordinator, DescribeCluster), whose addresses become the sidecar's own
//! listeners. Everything else passes as bytes.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, DescribeClusterResponse, FindCoordinatorResponse, MetadataResponse, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// Highest version the proxy lets clients use, for APIs where it matters. Produce v10+ and Fetch v16+
/// responses carry leader endpoints (KIP-951) and Fetch v13+ addresses topics by id only: capping them keeps
/// every broker address in responses the proxy rewrites, and topic names in what it measures.
pub fn version_cap(key: ApiKey) -> Option<i16> {
    match key {
        ApiKey::Produce => Some(9),
        // v11: the last version before flexible encoding. tansu 0.6.0 puts a tagged field in v12–v15 Fetch
        // responses that only v16 defines, which the decoder (rightly) rejects; v11 loses nothing else.
        ApiKey::Fetch => Some(11),
        // v10 addresses topics by id only.
        ApiKey::OffsetCommit => Some(9),
        // Decoded and rewritten: the codec's range.
        ApiKey::Metadata | ApiKey::FindCoordinator | ApiKey::DescribeCluster | ApiKey::ApiVersions => Some(key.valid_versions().max),
        _ => None,
    }
}

/// APIs never offered to clients: their responses name brokers (share groups, KIP-932) and the proxy does
/// not rewrite them yet.
fn hidden(key: i16) -> bool {
    matches!(
        ApiKey::try_from(key),
        Ok(ApiKey::ShareFetch | ApiKey::ShareAcknowledge | ApiKey::ShareGroupHeartbeat)
    )
}

/// Whether responses to this API must be decoded.
pub fn needs_rewrite(key: i16) -> bool {
    matches!(
        ApiKey::try_from(key),
        Ok(ApiKey::ApiVersions | ApiKey::Metadata | ApiKey::FindCoordinator | ApiKey::DescribeCluster)
    )
}

/// Maps an upstream broker (id, host, port) to the local address clients must use.
pub trait AddressMap {
    fn local_for(&self, node_id: i32, host: &str, port: i32) -> Option<(String, i32)>;

    /// The cluster's whole broker list, from a Metadata or DescribeCluster response: brokers not in it
    /// are gone.
    fn brokers_present(&self, _node_ids: &[i32]) {}
}

/// Points one broker address at the local listener that serves that broker.
fn relocate(map: &dyn AddressMap, node_id: i32, host: &mut StrBytes, port: &mut i32) -> Result<(), String> {
    let (local_host, local_port) = map.local_for(node_id, host.as_str(), *port).ok_or("no local listener")?;
    *host = StrBytes::from_string(local_host);
    *port = local_port;
    Ok(())
}

/// Rewrites one response frame body (correlation id onwards, no length prefix). `Err` leaves it unchanged.
/// The bytes are untrusted: decoding runs contained ([`crate::kafka::decode::contained`]).
pub fn rewrite(key: i16, version: i16, body: &Bytes, map: &dyn AddressMap) -> Result<Bytes, String> {
    crate::kafka::decode::contained(|| rewrite_contained(key, version, body, map))
}

fn rewrite_contained(key: i16, version: i16, body: &Bytes, map: &dyn AddressMap) -> Result<Bytes, String> {
    let key = ApiKey::try_from(key).map_err(|_| "unknown api key".to_string())?;
    let header_version = key.response_header_version(version);
    let mut buf = body.clone();
    let header = ResponseHeader::decode(&mut buf, header_version).map_err(|e| e.to_string())?;
    let mut out = BytesMut::with_capacity(body.len() + 64);
    header.encode(&mut out, header_version).map_err(|e| e.to_string())?;
    match key {
        ApiKey::ApiVersions => {
            let mut r = ApiVersionsResponse::decode(&mut buf, version).map_err(|e| e.to_string())?;
            if r.error_code != 0 {
                // An error (usually UNSUPPORTED_VERSION during negotiation): the client retries with a
                // version the broker lists, and that response is clamped. Nothing to change here.
                return Ok(body.clone());
            }
            r.api_keys.retain(|k| !hidden(k.api_key));
            for k in r.api_keys.iter_mut() {
                if let Some(cap) = ApiKey::try_from(k.api_key).ok().and_then(version_cap) {
                    k.max_version = k.max_version.min(cap);
                }
            }
            r.api_keys.retain(|k| k.min_version <= k.max_version);
            r.encode(&mut out, version).map_err(|e| e.to_string())?;
        }
        ApiKey::Metadata => {
            let mut r = MetadataResponse::decode(&mut buf, version).map_err(|e| e.to_string())?;
            for b in r.brokers.iter_mut() {
                relocate(map, b.node_id.0, &mut b.host, &mut b.port)?;
            }
            if !r.brokers.is_empty() {
                map.brokers_present(&r.brokers.iter().map(|b| b.node_id.0).collect::<Vec<_>>());
            }
            r.encode(&mut out, version).map_err(|e| e.to_string())?;
        }
        ApiKey::FindCoordinator => {
            let mut r = FindCoordinatorResponse::decode(&mut buf, version).map_err(|e| e.to_string())?;
            if version < 4 {
                if r.error_code == 0 && r.node_id.0 >= 0 {
                    relocate(map, r.node_id.0, &mut r.host, &mut r.port)?;
                }
            } else {
                for c in r.coordinators.iter_mut().filter(|c| c.error_code == 0 && c.node_id.0 >= 0) {
                    relocate(map, c.node_id.0, &mut c.host, &mut c.port)?;
                }
            }
            r.encode(&mut out, version).map_err(|e| e.to_string())?;
        }
        ApiKey::DescribeCluster => {
            let mut r = DescribeClusterResponse::decode(&mut buf, version).map_err(|e| e.to_string())?;
            for b in r.brokers.iter_mut() {
                relocate(map, b.broker_id.0, &mut b.host, &mut b.port)?;
            }
            if r.error_code == 0 && !r.brokers.is_empty() {
                map.brokers_present(&r.brokers.iter().map(|b| b.broker_id.0).collect::<Vec<_>>());
            }
            r.encode(&mut out, version).map_err(|e| e.to_string())?;
        }
        _ => return Err("not rewritten".into()),
    }
    Ok(out.freeze())
}

/// A frame: 4-byte length, then the body.
pub fn frame(body: &[u8]) -> Bytes {
    let mut f = BytesMut::with_capacity(body.len() + 4);
    f.put_i32(body.len() as i32);
    f.put_slice(body);
    f.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
    use kafka_protocol::messages::BrokerId;

    struct Fixed;
    impl AddressMap for Fixed {
        fn local_for(&self, node_id: i32, _: &str, _: i32) -> Option<(String, i32)> {
            Some(("127.0.0.1".into(), 20000 + node_id))
        }
    }

    fn encode<T: Encodable>(header_version: i16, body: &T, version: i16) -> Bytes {
        let mut b = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(7)
            .encode(&mut b, header_version)
            .unwrap();
        body.encode(&mut b, version).unwrap();
        b.freeze()
    }

    #[test]
    fn metadata_brokers_become_local_listeners() {
        for version in [1, 9, 12] {
            let r = MetadataResponse::default().with_brokers(vec![
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(1))
                    .with_host(StrBytes::from_static_str("kafka-1.prod"))
                    .with_port(9092),
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(2))
                    .with_host(StrBytes::from_static_str("kafka-2.prod"))
                    .with_port(9092),
            ]);
            let hv = ApiKey::Metadata.response_header_version(version);
            let out = rewrite(ApiKey::Metadata as i16, version, &encode(hv, &r, version), &Fixed).unwrap();
            let mut b = out.clone();
            let h = ResponseHeader::decode(&mut b, hv).unwrap();
            assert_eq!(h.correlation_id, 7);
            let r = MetadataResponse::decode(&mut b, version).unwrap();
            assert_eq!(
                r.brokers.iter().map(|b| (b.host.to_string(), b.port)).collect::<Vec<_>>(),
                vec![("127.0.0.1".into(), 20001), ("127.0.0.1".into(), 20002)]
            );
        }
    }

    #[test]
    fn api_versions_are_clamped_and_share_apis_hidden() {
        let r = ApiVersionsResponse::default().with_api_keys(vec![
            ApiVersion::default()
                .with_api_key(ApiKey::Produce as i16)
                .with_min_version(3)
                .with_max_version(12),
            ApiVersion::default()
                .with_api_key(ApiKey::Fetch as i16)
                .with_min_version(4)
                .with_max_version(17),
            ApiVersion::default()
                .with_api_key(ApiKey::ShareFetch as i16)
                .with_min_version(0)
                .with_max_version(1),
            ApiVersion::default()
                .with_api_key(ApiKey::JoinGroup as i16)
                .with_min_version(0)
                .with_max_version(9),
        ]);
        let out = rewrite(ApiKey::ApiVersions as i16, 3, &encode(0, &r, 3), &Fixed).unwrap();
        let mut b = out;
        ResponseHeader::decode(&mut b, 0).unwrap();
        let r = ApiVersionsResponse::decode(&mut b, 3).unwrap();
        let got: Vec<(i16, i16)> = r.api_keys.iter().map(|k| (k.api_key, k.max_version)).collect();
        assert_eq!(got, vec![(0, 9), (1, 11), (11, 9)]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for key in [0i16, 3, 10, 18, 60] {
            for v in [0i16, 3, 4, 12] {
                let _ = rewrite(key, v, &Bytes::from_static(&[0, 0, 0, 7, 0x7f, 0xff, 0xff, 0xff, 1, 2]), &Fixed);
            }
        }
    }
}
