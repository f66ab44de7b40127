//! Saga tracking on one core: events per second and memory per in-flight instance, against a baseline in
//! the same run.
//! - **eventscope**: the collector's per-event path without the network: record batches of the seed's
//!   order saga (keyed by order id, CloudEvents `ce_type` header, a `traceparent`) decoded
//!   (`kafka::batch`, `kafka::records`), read as events (`collector::saga::event::read`) and applied to
//!   the tracker (`collector::saga::Tracker`), 5 events per order;
//! - **baseline**: the least any tracker does: the same ids inserted into and removed from a
//!   `HashMap<String, u64>`, with no decoding.
//!
//! Memory: the resident set before and after 1,000,000 instances held in flight (ids like
//! `order-00000042`), divided by the count: the tracker's whole cost per instance, allocator included.
//!
//! Run: `cargo bench --bench saga_tracking` (BENCH_ORDERS=N orders, 1,000,000 by default). Results:
//! docs/benchmarks.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use eventscope::collector::saga::event::{read, Rules, Source};
use eventscope::collector::saga::{Spec, Tracker};
use eventscope::kafka::batch::batches;
use eventscope::kafka::records::{records, records_section};
use kafka_protocol::records::{Record, TimestampType};
use support::encode_batch;

const TYPES: [&str; 5] = [
    "OrderCreated",
    "InventoryReserved",
    "PaymentProcessed",
    "ShippingScheduled",
    "OrderCompleted",
];
const BATCH: usize = 100;

fn rss_bytes() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .unwrap_or(0.0)
        * 1024.0
}

fn spec(max_in_flight: usize) -> Spec {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    Spec {
        start: s(&["OrderCreated"]),
        steps: s(&["InventoryReserved", "PaymentProcessed", "ShippingScheduled"]),
        complete: s(&["OrderCompleted"]),
        fail: s(&["OrderFailed"]),
        compensations: [
            ("InventoryReserved".to_string(), "InventoryReleased".to_string()),
            ("PaymentProcessed".to_string(), "PaymentRefunded".to_string()),
        ]
        .into(),
        timeout_ms: 300_000,
        compensation_grace_ms: 60_000,
        max_in_flight,
    }
}

/// Batches of `BATCH` records: event `e` of orders `first..`, as a service produces them.
fn encode(first: usize, count: usize, event: usize) -> Bytes {
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let records: Vec<Record> = (first..first + count)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: (i - first) as i64,
            // In step with the offset: the encoder starts a new batch whenever offset − sequence changes.
            sequence: (i - first) as i32,
            timestamp: 1_700_000_000_000 + (i * 5 + event) as i64,
            key: Some(Bytes::from(format!("order-{i:08}"))),
            value: Some(Bytes::from(format!("{{\"order_id\":\"order-{i:08}\",\"amount\":42}}"))),
            headers: [
                ("ce_type", TYPES[event]),
                ("ce_id", "7f0c2a44-1b57-4c41-9d1e-0c1d2a3b4c5d"),
                ("ce_source", "/orders"),
                ("traceparent", tp),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string().into(), Some(Bytes::from_static(v.as_bytes()))))
            .collect(),
        })
        .collect();
    encode_batch(&records)
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let orders: usize = std::env::var("BENCH_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 20_000 } else { 1_000_000 });
    let rules = Rules {
        correlation: Source::Key,
        event_type: Source::Header("ce_type".into()),
        max_value_bytes: 1 << 20,
    };

    // The events as batches, built before timing.
    let mut streams: Vec<Vec<Bytes>> = Vec::new();
    for e in 0..TYPES.len() {
        streams.push(
            (0..orders)
                .step_by(BATCH)
                .map(|first| encode(first, BATCH.min(orders - first), e))
                .collect(),
        );
    }

    // Memory: every order started and left in flight.
    let before = rss_bytes();
    let mut tracker = Tracker::new(spec(orders));
    let mut out = Vec::new();
    let apply = |tracker: &mut Tracker, bytes: &Bytes, out: &mut Vec<_>| -> usize {
        let mut n = 0;
        for b in batches(bytes) {
            let section = records_section(&b, 1 << 24).unwrap();
            for r in records(&section, b.record_count).unwrap() {
                let ev = read(&rules, "orders", &r).unwrap();
                let at = b.base_timestamp + r.timestamp_delta;
                out.clear();
                let _ = tracker.event(&ev.id, &ev.event_type, at, ev.trace_id, 0, out);
                n += 1;
            }
        }
        n
    };
    let started = Instant::now();
    let mut events = 0;
    for bytes in &streams[0] {
        events += apply(&mut tracker, bytes, &mut out);
    }
    let held = tracker.in_flight();
    let per_instance = (rss_bytes() - before) / held as f64;
    // The rest of each order's events: all complete.
    for stream in &streams[1..] {
        for bytes in stream {
            events += apply(&mut tracker, bytes, &mut out);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(tracker.in_flight(), 0, "every order completed");
    let rate = events as f64 / secs;

    // Baseline: the same ids into and out of a plain map, no decoding.
    let ids: Vec<String> = (0..orders).map(|i| format!("order-{i:08}")).collect();
    let started = Instant::now();
    let mut map: HashMap<String, u64> = HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        map.insert(id.clone(), i as u64);
    }
    for _ in 1..TYPES.len() - 1 {
        for id in &ids {
            if let Some(v) = map.get_mut(id.as_str()) {
                *v += 1;
            }
        }
    }
    for id in &ids {
        map.remove(id.as_str());
    }
    let baseline = (orders * TYPES.len()) as f64 / started.elapsed().as_secs_f64();

    println!("saga tracking, {orders} orders x {} events, one thread:", TYPES.len());
    println!("  eventscope (decode + read + track): {:>12.0} events/s", rate);
    println!(
        "  baseline (HashMap<String, u64> only): {:>10.0} events/s   ratio {:.2}",
        baseline,
        rate / baseline
    );
    println!("  memory: {held} instances in flight, {per_instance:.0} bytes each (RSS delta, allocator included)");
    if !smoke {
        assert!(rate >= 200_000.0, "goal: at least 200,000 events/s on one core; got {rate:.0}");
        assert!(per_instance <= 300.0, "goal: at most 300 bytes per instance; got {per_instance:.0}");
    }
}
