//! Every path that reads bytes from the network: the proxy's response rewriting (ApiVersions, Metadata,
//! FindCoordinator, DescribeCluster in every version, through the vendored kafka-protocol decoders) and the
//! collector's record-batch walk. Nothing may panic, hang or allocate beyond the input.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run untrusted_bytes -- -max_total_time=300`
#![no_main]

use bytes::Bytes;
use eventscope::sidecar::kafka::rewrite::{rewrite, AddressMap};
use libfuzzer_sys::fuzz_target;

struct Local;
impl AddressMap for Local {
    fn local_for(&self, node_id: i32, _: &str, _: i32) -> Option<(String, i32)> {
        Some(("127.0.0.1".into(), 19093 + (node_id & 0xff)))
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    // First byte picks the API, second the version; the rest is the response body.
    let key = [18i16, 3, 10, 60][(data[0] % 4) as usize];
    let version = (data[1] % 16) as i16;
    let body = Bytes::copy_from_slice(&data[2..]);
    let _ = rewrite(key, version, &body, &Local);
    let mut anchors = Vec::new();
    let target = i64::from(data[0]) * 7;
    let _ = eventscope::collector::lag::find_record_time(&data[2..], target, &mut anchors);
    assert!(anchors.len() <= data.len());
});
