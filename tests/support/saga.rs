//! The seed's order saga for the tests: its topics (choreographed: each service writes its own), its
//! `[[sagas]]` entry, and events sent as the services send them (keyed by order id, CloudEvents headers).

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

pub const TOPICS: [&str; 4] = ["orders", "inventory-events", "payment-events", "shipping-events"];

/// The topic each type of the seed's order saga is on (choreographed: each service writes its own).
pub fn topic_of(event_type: &str) -> &'static str {
    match event_type {
        "OrderCreated" | "OrderCompleted" | "OrderFailed" => "orders",
        "InventoryReserved" | "InventoryReleased" => "inventory-events",
        "PaymentProcessed" | "PaymentRefunded" => "payment-events",
        _ => "shipping-events",
    }
}

/// The order saga's `[[sagas]]` entry (correlation by key, type by CloudEvents' `ce_type` header).
pub fn order_saga(timeout: &str, grace: &str, extra: &str) -> String {
    format!(
        r#"
[[sagas]]
name = "order"
cluster = "test"
topics = ["orders", "inventory-events", "payment-events", "shipping-events"]
correlation = "key"
start = ["OrderCreated"]
steps = ["InventoryReserved", "PaymentProcessed", "ShippingScheduled"]
complete = ["OrderCompleted"]
fail = ["OrderFailed"]
compensations = {{ InventoryReserved = "InventoryReleased", PaymentProcessed = "PaymentRefunded" }}
timeout = "{timeout}"
compensation_grace = "{grace}"
{extra}
"#
    )
}

/// Sends one event as the services would: keyed by the order id, with CloudEvents headers and, when
/// given, a `traceparent`; waits for its acknowledgement so that events are appended in order.
pub fn emit(p: &BaseProducer, id: &str, event_type: &str, traceparent: Option<&str>) {
    let ce_id = format!("{id}-{event_type}");
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: "ce_type",
            value: Some(event_type),
        })
        .insert(Header {
            key: "ce_id",
            value: Some(&ce_id),
        })
        .insert(Header {
            key: "ce_source",
            value: Some("/orders"),
        });
    if let Some(tp) = traceparent {
        headers = headers.insert(Header {
            key: "traceparent",
            value: Some(tp),
        });
    }
    let payload = format!("{{\"order_id\":\"{id}\",\"type\":\"{event_type}\"}}");
    let record = BaseRecord::to(topic_of(event_type)).key(id).payload(&payload).headers(headers);
    p.send(record).map_err(|(e, _)| e).expect("queued");
    p.flush(Duration::from_secs(10)).expect("acknowledged");
    std::thread::sleep(Duration::from_millis(3));
}
