//! Sagas followed from their events (issue 13, in progress): the state machine that turns a saga's
//! events, keyed by correlation id, into instances and outcomes. Pure and bounded: no I/O, no clock of
//! its own (every call says what time it is), at most `max_in_flight` instances.
//!
//! Not wired yet: the reader of the saga topics (its own Fetch requests from `now - lookback`), the
//! `[[sagas]]` configuration, the `eventscope_saga_*` series and `/sagas` come next. This module decides
//! outcomes, exactly as issue 13 states them:
//! - `completed`: a `complete` event;
//! - `compensated`: a `fail` event, and every step done before it has its compensation;
//! - `inconsistent`: failed, and a done step's compensation is still missing `compensation_grace` after
//!   the failure (the seed's August incident); a compensation that arrives later turns it into
//!   `compensated` and is reported as such ([`Transition::LateCompensation`]);
//! - `stuck` is a state, not an end: in flight for longer than `timeout`, by the last step reached.

pub mod event;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// What a saga is made of (from `[[sagas]]`).
#[derive(Debug, Clone)]
pub struct Spec {
    pub start: Vec<String>,
    /// At most 64 steps (one bit each per instance).
    pub steps: Vec<String>,
    pub complete: Vec<String>,
    pub fail: Vec<String>,
    /// Step → the event type that compensates it.
    pub compensations: HashMap<String, String>,
    pub timeout_ms: i64,
    pub compensation_grace_ms: i64,
    pub max_in_flight: usize,
}

/// What an event type means in a saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Start,
    Step(u8),
    Complete,
    Fail,
    Compensation(u8),
}

/// How an instance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Completed,
    Compensated,
    Inconsistent,
}

impl Outcome {
    pub fn as_label(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Compensated => "compensated",
            Outcome::Inconsistent => "inconsistent",
        }
    }
}

/// Why an event did not fit the saga (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unmatched {
    /// A type the saga does not list.
    UnknownType,
    /// A step, end or compensation for an id with no instance: no start seen, or the instance has
    /// already ended (completed or compensated) or was evicted.
    BeforeStart,
}

/// What an event or an evaluation changed, for the caller to count and time.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Started,
    /// A step reached, and the time since the instance's previous event.
    Step {
        step: u8,
        seconds: f64,
    },
    Ended {
        outcome: Outcome,
        seconds: f64,
    },
    /// An inconsistent instance whose missing compensations all arrived.
    LateCompensation,
    /// The oldest instance was dropped to stay within `max_in_flight`.
    Evicted,
}

/// One saga instance.
#[derive(Debug, Clone)]
struct Instance {
    seq: u64,
    started_ms: i64,
    last_ms: i64,
    /// The last step reached (`None`: only started).
    last_step: Option<u8>,
    done: u64,
    compensated: u64,
    failed_ms: Option<i64>,
    inconsistent: bool,
    trace_id: Option<[u8; 16]>,
}

impl Instance {
    fn missing(&self) -> u64 {
        self.done & !self.compensated
    }

    /// In flight (not failed) for longer than `timeout_ms`.
    fn stuck(&self, now_ms: i64, timeout_ms: i64) -> bool {
        self.failed_ms.is_none() && now_ms.saturating_sub(self.started_ms) > timeout_ms
    }
}

/// A stuck or inconsistent instance, as `/sagas` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub id: Arc<str>,
    pub inconsistent: bool,
    pub started_ms: i64,
    pub last_ms: i64,
    /// The last step reached, or the start for an instance that reached none.
    pub last_step: Option<String>,
    pub missing_compensations: Vec<String>,
    pub trace_id: Option<[u8; 16]>,
}

/// The instances of one saga.
pub struct Tracker {
    spec: Spec,
    roles: HashMap<String, Role>,
    instances: HashMap<Arc<str>, Instance>,
    /// Instances by start, oldest first (entries of ended instances are skipped and compacted).
    order: VecDeque<(u64, Arc<str>)>,
    seq: u64,
}

impl Tracker {
    /// A tracker for `spec` (validation has checked it: types listed once, compensations of listed
    /// steps, at most 64 steps).
    pub fn new(spec: Spec) -> Tracker {
        let mut roles = HashMap::new();
        for t in &spec.start {
            roles.insert(t.clone(), Role::Start);
        }
        for (i, t) in spec.steps.iter().enumerate().take(64) {
            roles.insert(t.clone(), Role::Step(i as u8));
            if let Some(c) = spec.compensations.get(t) {
                roles.insert(c.clone(), Role::Compensation(i as u8));
            }
        }
        for t in &spec.complete {
            roles.insert(t.clone(), Role::Complete);
        }
        for t in &spec.fail {
            roles.insert(t.clone(), Role::Fail);
        }
        Tracker {
            spec,
            roles,
            instances: HashMap::new(),
            order: VecDeque::new(),
            seq: 0,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.instances.len()
    }

    /// One event of instance `id`, of `event_type`, appended at `at_ms`, with the trace id of its
    /// `traceparent` when it has one. Transitions go to `out`.
    pub fn event(
        &mut self,
        id: &str,
        event_type: &str,
        at_ms: i64,
        trace_id: Option<[u8; 16]>,
        out: &mut Vec<Transition>,
    ) -> Result<(), Unmatched> {
        let role = *self.roles.get(event_type).ok_or(Unmatched::UnknownType)?;
        if role == Role::Start {
            if self.instances.contains_key(id) {
                return Ok(());
            }
            let id: Arc<str> = Arc::from(id);
            self.seq += 1;
            self.instances.insert(
                id.clone(),
                Instance {
                    seq: self.seq,
                    started_ms: at_ms,
                    last_ms: at_ms,
                    last_step: None,
                    done: 0,
                    compensated: 0,
                    failed_ms: None,
                    inconsistent: false,
                    trace_id,
                },
            );
            self.order.push_back((self.seq, id));
            out.push(Transition::Started);
            self.bound(out);
            return Ok(());
        }
        let inst = self.instances.get_mut(id).ok_or(Unmatched::BeforeStart)?;
        let since = (at_ms.saturating_sub(inst.last_ms)).max(0) as f64 / 1000.0;
        inst.last_ms = inst.last_ms.max(at_ms);
        if inst.trace_id.is_none() {
            inst.trace_id = trace_id;
        }
        let duration = |inst: &Instance| (at_ms.saturating_sub(inst.started_ms)).max(0) as f64 / 1000.0;
        let end = match role {
            Role::Start => unreachable!("handled above"),
            Role::Step(i) => {
                inst.done |= 1 << i;
                inst.last_step = Some(i);
                out.push(Transition::Step { step: i, seconds: since });
                None
            }
            Role::Complete if inst.failed_ms.is_none() => Some(Outcome::Completed),
            Role::Complete => None,
            Role::Fail => {
                inst.failed_ms.get_or_insert(at_ms);
                (inst.missing() == 0).then_some(Outcome::Compensated)
            }
            Role::Compensation(i) => {
                inst.compensated |= 1 << i;
                match (inst.failed_ms, inst.missing(), inst.inconsistent) {
                    (Some(_), 0, true) => {
                        out.push(Transition::LateCompensation);
                        Some(Outcome::Compensated)
                    }
                    (Some(_), 0, false) => Some(Outcome::Compensated),
                    _ => None,
                }
            }
        };
        if let Some(outcome) = end {
            let late = inst.inconsistent;
            let seconds = duration(inst);
            self.instances.remove(id);
            if !late {
                out.push(Transition::Ended { outcome, seconds });
            }
        }
        Ok(())
    }

    /// As of `now_ms`: failed instances past their grace become inconsistent (once each).
    pub fn evaluate(&mut self, now_ms: i64, out: &mut Vec<Transition>) {
        let grace = self.spec.compensation_grace_ms;
        for inst in self.instances.values_mut() {
            if let Some(failed) = inst.failed_ms {
                if !inst.inconsistent && inst.missing() != 0 && now_ms.saturating_sub(failed) >= grace {
                    inst.inconsistent = true;
                    let seconds = (failed.saturating_sub(inst.started_ms)).max(0) as f64 / 1000.0;
                    out.push(Transition::Ended {
                        outcome: Outcome::Inconsistent,
                        seconds,
                    });
                }
            }
        }
    }

    /// The name of the last step an instance reached (the first start type when none).
    fn step_name(&self, step: Option<u8>) -> &str {
        match step {
            Some(i) => &self.spec.steps[i as usize],
            None => self.spec.start.first().map(String::as_str).unwrap_or(""),
        }
    }

    /// Instances in flight (not failed) by the last step reached, and those of them stuck (in flight for
    /// longer than `timeout`).
    pub fn by_step(&self, now_ms: i64) -> (HashMap<String, u64>, HashMap<String, u64>) {
        let (mut in_flight, mut stuck) = (HashMap::new(), HashMap::new());
        for inst in self.instances.values().filter(|i| i.failed_ms.is_none()) {
            let step = self.step_name(inst.last_step).to_string();
            if inst.stuck(now_ms, self.spec.timeout_ms) {
                *stuck.entry(step.clone()).or_insert(0) += 1;
            }
            *in_flight.entry(step).or_insert(0) += 1;
        }
        (in_flight, stuck)
    }

    /// The stuck and inconsistent instances, newest first, at most `limit`.
    pub fn listed(&self, now_ms: i64, limit: usize) -> Vec<Listed> {
        let mut out: Vec<Listed> = self
            .instances
            .iter()
            .filter(|(_, i)| i.inconsistent || i.stuck(now_ms, self.spec.timeout_ms))
            .map(|(id, i)| Listed {
                id: id.clone(),
                inconsistent: i.inconsistent,
                started_ms: i.started_ms,
                last_ms: i.last_ms,
                last_step: Some(self.step_name(i.last_step).to_string()),
                missing_compensations: (0..self.spec.steps.len().min(64))
                    .filter(|b| i.missing() & (1 << b) != 0)
                    .filter_map(|b| self.spec.compensations.get(&self.spec.steps[b]).cloned())
                    .collect(),
                trace_id: i.trace_id,
            })
            .collect();
        out.sort_by(|a, b| b.started_ms.cmp(&a.started_ms).then_with(|| a.id.cmp(&b.id)));
        out.truncate(limit);
        out
    }

    /// Evicts the oldest instances beyond `max_in_flight`; compacts the start order.
    fn bound(&mut self, out: &mut Vec<Transition>) {
        while self.instances.len() > self.spec.max_in_flight {
            let Some((seq, id)) = self.order.pop_front() else { break };
            if self.instances.get(&id).is_some_and(|i| i.seq == seq) {
                self.instances.remove(&id);
                out.push(Transition::Evicted);
            }
        }
        if self.order.len() > 2 * self.instances.len() + 64 {
            let instances = &self.instances;
            self.order.retain(|(seq, id)| instances.get(id).is_some_and(|i| i.seq == *seq));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's order saga.
    fn order_saga(max_in_flight: usize) -> Tracker {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        Tracker::new(Spec {
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
        })
    }

    fn ended(out: &[Transition]) -> Vec<Outcome> {
        out.iter()
            .filter_map(|t| match t {
                Transition::Ended { outcome, .. } => Some(*outcome),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_completed_order_ends_completed_with_its_duration_and_step_times() {
        let mut t = order_saga(10);
        let mut out = Vec::new();
        for (ty, at) in [
            ("OrderCreated", 0),
            ("InventoryReserved", 100),
            ("PaymentProcessed", 350),
            ("OrderCompleted", 1000),
        ] {
            t.event("o-1", ty, at, None, &mut out).unwrap();
        }
        assert_eq!(out[0], Transition::Started);
        assert_eq!(out[2], Transition::Step { step: 1, seconds: 0.25 });
        assert_eq!(
            out.last(),
            Some(&Transition::Ended {
                outcome: Outcome::Completed,
                seconds: 1.0
            })
        );
        assert_eq!(t.in_flight(), 0);
        // An event after the end has no instance.
        assert_eq!(
            t.event("o-1", "ShippingScheduled", 1100, None, &mut out),
            Err(Unmatched::BeforeStart)
        );
    }

    #[test]
    fn a_failure_is_compensated_or_turns_inconsistent_after_the_grace() {
        let mut t = order_saga(10);
        let mut out = Vec::new();
        // o-1: both done steps compensated before the failure is final.
        for (ty, at) in [
            ("OrderCreated", 0),
            ("InventoryReserved", 10),
            ("PaymentProcessed", 20),
            ("PaymentRefunded", 30),
            ("OrderFailed", 40),
            ("InventoryReleased", 50),
        ] {
            t.event("o-1", ty, at, None, &mut out).unwrap();
        }
        assert_eq!(ended(&out), vec![Outcome::Compensated]);
        // o-2: the inventory service is offline: its reservation is never released (the August incident).
        out.clear();
        for (ty, at) in [("OrderCreated", 0), ("InventoryReserved", 10), ("OrderFailed", 1_000)] {
            t.event("o-2", ty, at, Some([7; 16]), &mut out).unwrap();
        }
        t.evaluate(1_000 + 59_999, &mut out);
        assert!(ended(&out).is_empty(), "still within the grace");
        t.evaluate(1_000 + 60_000, &mut out);
        t.evaluate(1_000 + 90_000, &mut out);
        assert_eq!(ended(&out), vec![Outcome::Inconsistent], "counted once");
        let listed = t.listed(100_000, 10);
        assert_eq!(listed.len(), 1);
        assert!(listed[0].inconsistent);
        assert_eq!(listed[0].missing_compensations, vec!["InventoryReleased".to_string()]);
        assert_eq!(listed[0].trace_id, Some([7; 16]));
        // The late compensation turns it into compensated, reported as late.
        out.clear();
        t.event("o-2", "InventoryReleased", 200_000, None, &mut out).unwrap();
        assert_eq!(out, vec![Transition::LateCompensation]);
        assert!(t.listed(300_000, 10).is_empty());
    }

    #[test]
    fn stuck_is_by_the_last_step_reached_and_listed_newest_first() {
        let mut t = order_saga(10);
        let mut out = Vec::new();
        t.event("old", "OrderCreated", 0, None, &mut out).unwrap();
        t.event("old", "InventoryReserved", 5, None, &mut out).unwrap();
        t.event("new", "OrderCreated", 1_000, None, &mut out).unwrap();
        t.event("fresh", "OrderCreated", 400_000, None, &mut out).unwrap();
        let (in_flight, stuck) = t.by_step(302_000);
        assert_eq!(in_flight.get("InventoryReserved"), Some(&1));
        assert_eq!(in_flight.get("OrderCreated"), Some(&2));
        assert_eq!(stuck.get("InventoryReserved"), Some(&1));
        assert_eq!(stuck.get("OrderCreated"), Some(&1));
        let ids: Vec<String> = t.listed(302_000, 10).iter().map(|l| l.id.to_string()).collect();
        assert_eq!(ids, vec!["new", "old"]);
        assert_eq!(t.listed(302_000, 1).len(), 1);
    }

    #[test]
    fn events_that_do_not_fit_are_told_apart() {
        let mut t = order_saga(10);
        let mut out = Vec::new();
        assert_eq!(t.event("x", "Unrelated", 0, None, &mut out), Err(Unmatched::UnknownType));
        assert_eq!(t.event("x", "PaymentProcessed", 0, None, &mut out), Err(Unmatched::BeforeStart));
        // A repeated start does not restart the instance.
        t.event("x", "OrderCreated", 0, None, &mut out).unwrap();
        t.event("x", "OrderCreated", 50, None, &mut out).unwrap();
        assert_eq!(out, vec![Transition::Started]);
    }

    #[test]
    fn memory_is_bounded_by_evicting_the_oldest() {
        let mut t = order_saga(1_000);
        let mut out = Vec::new();
        for i in 0..10_000 {
            t.event(&format!("o-{i}"), "OrderCreated", i, None, &mut out).unwrap();
        }
        assert_eq!(t.in_flight(), 1_000);
        assert_eq!(out.iter().filter(|t| **t == Transition::Evicted).count(), 9_000);
        assert!(t.order.len() <= 2 * 1_000 + 64);
        // The newest are kept.
        assert!(t.event("o-9999", "InventoryReserved", 10_000, None, &mut out).is_ok());
        assert_eq!(
            t.event("o-0", "InventoryReserved", 10_000, None, &mut out),
            Err(Unmatched::BeforeStart)
        );
    }
}
