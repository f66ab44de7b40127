//! A saga event out of a Kafka record: its correlation id and its type, found where the saga's
//! configuration says (`correlation = "key" | "header:NAME" | "json:/pointer"`, `event_type =
//! "header:NAME" | "json:/pointer" | "topic"`, by default the CloudEvents Kafka binding's `ce_type`
//! header), and the trace id of its `traceparent`. The record is untrusted: an event that does not fit is
//! a reason ([`NoFit`]), never a panic, and a value is parsed as JSON only within `max_value_bytes`.

pub use crate::config::Source;
use crate::kafka::records::RecordRef;

/// Correlation ids and types longer than this are not events (`too_large`): an id is held for as long
/// as its instance is in flight, so a hostile key must not multiply memory by `max_in_flight`.
pub const MAX_FIELD_BYTES: usize = 256;

/// How a saga's events are read.
#[derive(Debug, Clone)]
pub struct Rules {
    pub correlation: Source,
    pub event_type: Source,
    /// Values larger than this are not parsed as JSON.
    pub max_value_bytes: usize,
}

/// Why a record is not an event of the saga (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoFit {
    NoCorrelation,
    NoType,
    NotJson,
    TooLarge,
}

impl NoFit {
    pub fn as_label(self) -> &'static str {
        match self {
            NoFit::NoCorrelation => "no_correlation",
            NoFit::NoType => "no_type",
            NoFit::NotJson => "not_json",
            NoFit::TooLarge => "too_large",
        }
    }
}

/// A record read as a saga event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub event_type: String,
    pub trace_id: Option<[u8; 16]>,
}

/// A JSON scalar as text (strings as they are, numbers and booleans as JSON writes them).
fn scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The event a record of `topic` carries, by `rules`.
pub fn read(rules: &Rules, topic: &str, record: &RecordRef<'_>) -> Result<Event, NoFit> {
    let wants_json = matches!(rules.correlation, Source::Json(_)) || matches!(rules.event_type, Source::Json(_));
    let json = if wants_json {
        let value = record.value().unwrap_or_default();
        if value.len() > rules.max_value_bytes {
            return Err(NoFit::TooLarge);
        }
        Some(serde_json::from_slice::<serde_json::Value>(value).map_err(|_| NoFit::NotJson)?)
    } else {
        None
    };
    let field = |source: &Source| -> Option<String> {
        let text = |b: &[u8]| std::str::from_utf8(b).ok().filter(|s| !s.is_empty()).map(String::from);
        match source {
            Source::Key => record.key().and_then(text),
            Source::Header(name) => record.header(name.as_bytes()).and_then(text),
            Source::Json(pointer) => json.as_ref()?.pointer(pointer).and_then(scalar),
            Source::Topic => Some(topic.to_string()),
        }
    };
    let id = field(&rules.correlation).ok_or(NoFit::NoCorrelation)?;
    let event_type = field(&rules.event_type).ok_or(NoFit::NoType)?;
    if id.len() > MAX_FIELD_BYTES || event_type.len() > MAX_FIELD_BYTES {
        return Err(NoFit::TooLarge);
    }
    let trace_id = record
        .traceparent
        .and_then(|tp| crate::telemetry::traces::extract(tp, None))
        .map(|context| context.trace_id().to_bytes());
    Ok(Event { id, event_type, trace_id })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::batch::batches;
    use crate::kafka::records::{records, records_section};
    use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions};

    /// One record with `key`, `value` and `headers`, in a batch, as bytes.
    fn batch(key: Option<&'static str>, value: &[u8], headers: &[(&str, &str)]) -> Vec<u8> {
        let record = Record {
            key: key.map(|k| bytes::Bytes::from_static(k.as_bytes())),
            value: Some(bytes::Bytes::copy_from_slice(value)),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string().into(), Some(bytes::Bytes::copy_from_slice(v.as_bytes()))))
                .collect(),
            ..crate::kafka::batch::test_record(0, 0, 1000)
        };
        let mut buf = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &[record],
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .unwrap();
        buf.to_vec()
    }

    fn read_one(rules: &Rules, bytes: &[u8]) -> Result<Event, NoFit> {
        let b = batches(bytes).next().unwrap();
        let section = records_section(&b, 1 << 20).unwrap();
        let list = records(&section, b.record_count).unwrap();
        read(rules, "orders", &list[0])
    }

    fn rules(correlation: &str, event_type: &str) -> Rules {
        Rules {
            correlation: Source::parse(correlation, crate::config::saga::CORRELATION_FORMS).unwrap(),
            event_type: Source::parse(event_type, crate::config::saga::TYPE_FORMS).unwrap(),
            max_value_bytes: 1024,
        }
    }

    #[test]
    fn correlation_and_type_are_found_where_the_saga_says() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let bytes = batch(
            Some("order-7"),
            br#"{"order": {"id": 42}, "kind": "OrderCreated"}"#,
            &[
                ("ce_type", "OrderCreated"),
                ("ce_id", "e-1"),
                ("traceparent", tp),
                ("order-id", "o-9"),
            ],
        );
        let e = read_one(&rules("key", "header:ce_type"), &bytes).unwrap();
        assert_eq!((e.id.as_str(), e.event_type.as_str()), ("order-7", "OrderCreated"));
        assert_eq!(e.trace_id.map(|t| t[0]), Some(0x0a));
        let e = read_one(&rules("json:/order/id", "json:/kind"), &bytes).unwrap();
        assert_eq!((e.id.as_str(), e.event_type.as_str()), ("42", "OrderCreated"));
        let e = read_one(&rules("header:order-id", "topic"), &bytes).unwrap();
        assert_eq!((e.id.as_str(), e.event_type.as_str()), ("o-9", "orders"));
    }

    #[test]
    fn records_that_do_not_fit_say_why() {
        let plain = batch(None, b"not json at all", &[]);
        assert_eq!(read_one(&rules("key", "header:ce_type"), &plain), Err(NoFit::NoCorrelation));
        assert_eq!(read_one(&rules("json:/id", "topic"), &plain), Err(NoFit::NotJson));
        let keyed = batch(Some("k"), b"{}", &[]);
        assert_eq!(read_one(&rules("key", "header:ce_type"), &keyed), Err(NoFit::NoType));
        assert_eq!(read_one(&rules("json:/id", "topic"), &keyed), Err(NoFit::NoCorrelation));
        let huge = batch(Some("k"), &vec![b' '; 2048], &[]);
        assert_eq!(read_one(&rules("json:/id", "topic"), &huge), Err(NoFit::TooLarge));
        let long_key: &'static str = Box::leak("k".repeat(MAX_FIELD_BYTES + 1).into_boxed_str());
        let long = batch(Some(long_key), b"{}", &[("ce_type", "OrderCreated")]);
        assert_eq!(read_one(&rules("key", "header:ce_type"), &long), Err(NoFit::TooLarge));
    }
}
