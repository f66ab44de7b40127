//! What `/sagas` lists: each saga's stuck and inconsistent instances, as its reader last published them
//! (at most [`MAX_LISTED`] each), filtered by the query (`state`, `saga`, `limit`). A request reads only
//! this board: no broker call, and its cost does not grow with the instances in flight.

use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;

use super::Listed;

/// Instances a saga publishes to the board at most; `?limit=` is capped at it.
pub const MAX_LISTED: usize = 1000;
/// What `/sagas` answers without `?limit=`.
pub const DEFAULT_LIMIT: usize = 100;

struct Slot {
    cluster: String,
    saga: String,
    /// `None` while the saga's state is being rebuilt or its topics cannot be read.
    listed: Option<Vec<Listed>>,
}

/// Every saga's published list, in configuration order.
pub struct Board {
    slots: Vec<Mutex<Slot>>,
}

#[derive(Serialize)]
struct Item<'a> {
    cluster: &'a str,
    saga: &'a str,
    id: &'a str,
    state: &'static str,
    started: String,
    last_event: &'a str,
    last_event_at: String,
    age_seconds: f64,
    missing_compensations: &'a [String],
    trace_id: Option<String>,
}

#[derive(Serialize)]
struct Answer<'a> {
    sagas: Vec<Item<'a>>,
    /// Sagas whose state is not known now (rebuilding, or their topics cannot be read).
    unavailable: Vec<&'a str>,
}

fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// A `/sagas` query: `state=stuck|inconsistent`, `saga=NAME`, `limit=N`.
#[derive(Debug, Default, PartialEq)]
pub struct Query {
    pub state: Option<String>,
    pub saga: Option<String>,
    pub limit: usize,
}

impl Query {
    /// Parses the query string; an unknown key or a bad value is an error to show the caller.
    pub fn parse(q: Option<&str>) -> Result<Query, String> {
        let mut out = Query {
            limit: DEFAULT_LIMIT,
            ..Query::default()
        };
        for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "state" if v == "stuck" || v == "inconsistent" => out.state = Some(v.to_string()),
                "state" => return Err(format!("state={v}: one of stuck, inconsistent")),
                "saga" => out.saga = Some(v.to_string()),
                "limit" => out.limit = v.parse::<usize>().map_err(|_| format!("limit={v}: a number"))?.min(MAX_LISTED),
                _ => return Err(format!("{k}: unknown parameter (state, saga, limit)")),
            }
        }
        Ok(out)
    }
}

impl Board {
    pub fn new(sagas: &[(String, String)]) -> Board {
        Board {
            slots: sagas
                .iter()
                .map(|(cluster, saga)| {
                    Mutex::new(Slot {
                        cluster: cluster.clone(),
                        saga: saga.clone(),
                        listed: None,
                    })
                })
                .collect(),
        }
    }

    pub fn publish(&self, index: usize, listed: Option<Vec<Listed>>) {
        if let Some(slot) = self.slots.get(index) {
            slot.lock().unwrap_or_else(|p| p.into_inner()).listed = listed;
        }
    }

    /// The `/sagas` body for `query` as of `now_ms`.
    pub fn json(&self, query: &Query, now_ms: i64) -> Bytes {
        let slots: Vec<_> = self.slots.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner())).collect();
        let mut items = Vec::new();
        let mut unavailable = Vec::new();
        for slot in slots.iter().filter(|s| query.saga.as_ref().is_none_or(|n| *n == s.saga)) {
            let Some(listed) = &slot.listed else {
                unavailable.push(slot.saga.as_str());
                continue;
            };
            for l in listed {
                let state = if l.inconsistent { "inconsistent" } else { "stuck" };
                if query.state.as_ref().is_some_and(|s| s != state) {
                    continue;
                }
                items.push(Item {
                    cluster: &slot.cluster,
                    saga: &slot.saga,
                    id: &l.id,
                    state,
                    started: rfc3339(l.started_ms),
                    last_event: &l.last_event,
                    last_event_at: rfc3339(l.last_ms),
                    age_seconds: (now_ms.saturating_sub(l.started_ms)).max(0) as f64 / 1000.0,
                    missing_compensations: &l.missing_compensations,
                    trace_id: l.trace_id.as_ref().map(hex),
                });
            }
        }
        // Newest first across sagas.
        items.sort_by(|a, b| a.age_seconds.total_cmp(&b.age_seconds).then_with(|| a.id.cmp(b.id)));
        items.truncate(query.limit);
        Bytes::from(serde_json::to_vec(&Answer { sagas: items, unavailable }).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(id: &str, started_ms: i64, inconsistent: bool) -> Listed {
        Listed {
            id: id.into(),
            inconsistent,
            started_ms,
            last_ms: started_ms + 5,
            last_event: "InventoryReserved".into(),
            missing_compensations: if inconsistent { vec!["InventoryReleased".into()] } else { vec![] },
            trace_id: Some([0xab; 16]),
        }
    }

    #[test]
    fn the_query_filters_and_limits_newest_first() {
        let board = Board::new(&[("prod".into(), "order".into()), ("prod".into(), "refund".into())]);
        board.publish(0, Some(vec![listed("o-2", 2_000, false), listed("o-1", 1_000, true)]));
        let all: serde_json::Value = serde_json::from_slice(&board.json(&Query::parse(None).unwrap(), 10_000)).unwrap();
        let ids: Vec<&str> = all["sagas"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
        assert_eq!(ids, vec!["o-2", "o-1"]);
        assert_eq!(all["unavailable"], serde_json::json!(["refund"]));
        assert_eq!(all["sagas"][1]["state"], "inconsistent");
        assert_eq!(all["sagas"][1]["missing_compensations"], serde_json::json!(["InventoryReleased"]));
        assert_eq!(all["sagas"][1]["age_seconds"], 9.0);
        assert_eq!(all["sagas"][0]["trace_id"], "ab".repeat(16));
        assert_eq!(all["sagas"][0]["started"], "1970-01-01T00:00:02.000Z");
        let q = Query::parse(Some("state=stuck&saga=order&limit=5")).unwrap();
        let stuck: serde_json::Value = serde_json::from_slice(&board.json(&q, 10_000)).unwrap();
        assert_eq!(stuck["sagas"].as_array().unwrap().len(), 1);
        let one: serde_json::Value = serde_json::from_slice(&board.json(&Query::parse(Some("limit=1")).unwrap(), 10_000)).unwrap();
        assert_eq!(one["sagas"][0]["id"], "o-2");
        assert!(Query::parse(Some("state=done")).is_err());
        assert!(Query::parse(Some("limit=x")).is_err());
        assert!(Query::parse(Some("colour=red")).is_err());
        assert_eq!(Query::parse(Some("limit=99999")).unwrap().limit, MAX_LISTED);
    }
}
