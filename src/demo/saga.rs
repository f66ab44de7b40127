//! The seed's order saga in the demo, choreographed over four topics with CloudEvents headers
//! (`ce_type`, `ce_id`, `ce_source`, `ce_specversion`) and a `traceparent` per order, as the order,
//! inventory, payment and shipping services of the seed would write it:
//! - most orders complete: OrderCreated → InventoryReserved → PaymentProcessed → ShippingScheduled →
//!   OrderCompleted;
//! - some payments are declined: OrderFailed, then the inventory service releases the reservation
//!   (compensated);
//! - the August incident, every minute from 5 s to 15 s: the inventory service's release handler is
//!   offline while payments fail more often; the releases of the orders that fail meanwhile are lost, not
//!   retried (inconsistent, once the grace has passed);
//! - a few orders stop midway (a shipping request lost): stuck once the saga's timeout has passed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

/// The saga's topics, in the order of [`topic_of`].
pub const TOPICS: [&str; 4] = ["order-events", "inventory-events", "payment-events", "shipping-events"];

/// The `[[sagas]]` entry the demo's collector follows (short timeouts, so that a minute shows everything).
pub const CONFIG: &str = r#"
name = "order"
cluster = "demo"
topics = ["order-events", "inventory-events", "payment-events", "shipping-events"]
correlation = "key"
start = ["OrderCreated"]
steps = ["InventoryReserved", "PaymentProcessed", "ShippingScheduled"]
complete = ["OrderCompleted"]
fail = ["OrderFailed"]
compensations = { InventoryReserved = "InventoryReleased", PaymentProcessed = "PaymentRefunded" }
timeout = "10s"
compensation_grace = "5s"
"#;

fn topic_of(event_type: &str) -> &'static str {
    match event_type {
        "InventoryReserved" | "InventoryReleased" => TOPICS[1],
        "PaymentProcessed" | "PaymentRefunded" => TOPICS[2],
        "ShippingScheduled" => TOPICS[3],
        _ => TOPICS[0],
    }
}

/// Whether the inventory service's release handler is offline `elapsed` into the demo (5 s to 15 s of
/// every minute).
fn inventory_offline(elapsed: Duration) -> bool {
    (5..15).contains(&(elapsed.as_secs() % 60))
}

/// The next event of order `n` after `event`, and how long after it the service writes it.
fn next(n: u64, event: &str, offline: bool) -> Option<(&'static str, u64)> {
    let declined = n % 20 == 7 || (offline && n % 10 == 1);
    let stops = n % 50 == 13;
    match event {
        "OrderCreated" => Some(("InventoryReserved", 80)),
        "InventoryReserved" if declined => Some(("OrderFailed", 150)),
        "InventoryReserved" => Some(("PaymentProcessed", 150)),
        "PaymentProcessed" if stops => None,
        "PaymentProcessed" => Some(("ShippingScheduled", 100)),
        "ShippingScheduled" => Some(("OrderCompleted", 60)),
        // The inventory service compensates the reservation, unless it is offline: then it is lost.
        "OrderFailed" if offline => None,
        "OrderFailed" => Some(("InventoryReleased", 90)),
        _ => None,
    }
}

/// Produces the saga's events until `stop`: about 20 orders a second.
pub fn spawn(bootstrap: String, stop: Arc<AtomicBool>) -> anyhow::Result<thread::JoinHandle<()>> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "5")
        .create()?;
    Ok(thread::spawn(move || {
        let started = Instant::now();
        let mut due: BinaryHeap<Reverse<(Instant, u64, &'static str)>> = BinaryHeap::new();
        let mut n: u64 = 0;
        let mut next_order = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            while next_order <= now {
                due.push(Reverse((next_order, n, "OrderCreated")));
                n += 1;
                next_order += Duration::from_millis(50);
            }
            while due.peek().is_some_and(|Reverse((at, _, _))| *at <= now) {
                let Some(Reverse((_, order, event))) = due.pop() else { break };
                let offline = inventory_offline(now - started);
                let key = format!("order-{order}");
                let ce_id = format!("{order}-{event}");
                let traceparent = format!(
                    "00-{:016x}{:016x}-{:016x}-01",
                    0xe5e5_0000_0000_0000u64 | order,
                    order.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    order + 1
                );
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "ce_specversion",
                        value: Some("1.0"),
                    })
                    .insert(Header {
                        key: "ce_type",
                        value: Some(event),
                    })
                    .insert(Header {
                        key: "ce_id",
                        value: Some(&ce_id),
                    })
                    .insert(Header {
                        key: "ce_source",
                        value: Some("/demo/orders"),
                    })
                    .insert(Header {
                        key: "traceparent",
                        value: Some(&traceparent),
                    });
                let value = format!("{{\"order_id\":\"{key}\"}}");
                let _ = producer.send(BaseRecord::to(topic_of(event)).key(&key).payload(&value).headers(headers));
                if let Some((then, after_ms)) = next(order, event, offline) {
                    due.push(Reverse((now + Duration::from_millis(after_ms), order, then)));
                }
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = producer.flush(Duration::from_secs(2));
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_saga_has_every_outcome() {
        let path = |n: u64, offline: bool| {
            let mut events = vec!["OrderCreated"];
            while let Some((e, _)) = next(n, events.last().unwrap(), offline) {
                events.push(e);
            }
            events
        };
        assert_eq!(path(1, false).last(), Some(&"OrderCompleted"));
        assert_eq!(path(7, false).last(), Some(&"InventoryReleased"));
        assert_eq!(path(11, true), vec!["OrderCreated", "InventoryReserved", "OrderFailed"]);
        assert_eq!(path(13, false).last(), Some(&"PaymentProcessed"));
        assert!(inventory_offline(Duration::from_secs(65)) && !inventory_offline(Duration::from_secs(20)));
    }
}
