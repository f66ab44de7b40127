//! Sagas followed from their events: [`reader`] reads a saga's topics with the collector's own Fetch
//! requests (from `now - lookback`, never committing, alone or sharing partitions with other replicas
//! through a consumer group), [`event`] finds each record's correlation id and type, this module's
//! [`Tracker`] turns them into instances and outcomes, and [`board`] holds the stuck and inconsistent
//! instances that `/sagas` lists.
//!
//! The tracker is pure and bounded: no I/O, no clock of its own (every call says what time it is), at
//! most `max_in_flight` instances. It decides outcomes exactly as issue 13 states them:
//! - `completed`: a `complete` event;
//! - `compensated`: a `fail` event, and every step done before it has its compensation;
//! - `inconsistent`: failed, and a done step's compensation is still missing `compensation_grace` after
//!   the failure (the seed's August incident); a compensation that arrives later turns it into
//!   `compensated` and is reported as such ([`Transition::LateCompensation`]);
//! - `stuck` is a state, not an end: in flight for longer than `timeout`, by the last step reached.

pub mod board;
pub mod event;
pub mod reader;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
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

impl Spec {
    /// The tracker's view of a `[[sagas]]` entry.
    pub fn from_config(c: &crate::config::SagaConfig) -> Spec {
        Spec {
            start: c.start.clone(),
            steps: c.steps.clone(),
            complete: c.complete.clone(),
            fail: c.fail.clone(),
            compensations: c.compensations.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            timeout_ms: c.timeout.as_millis().min(i64::MAX as u128) as i64,
            compensation_grace_ms: c.compensation_grace.as_millis().min(i64::MAX as u128) as i64,
            max_in_flight: c.max_in_flight,
        }
    }
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
    pub const ALL: [Outcome; 3] = [Outcome::Completed, Outcome::Compensated, Outcome::Inconsistent];

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

impl Unmatched {
    pub fn as_label(self) -> &'static str {
        match self {
            Unmatched::UnknownType => "unknown_type",
            Unmatched::BeforeStart => "before_start",
        }
    }
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

/// One saga instance: 72 bytes, laid out for the hash table's buckets (a million instances in flight
/// is the design point, so no `Option` that costs padding: sentinels instead). Which entry of the start
/// order or of the deadlines is this instance's is told by the identity of its id's allocation
/// (`Arc::ptr_eq`), not by a sequence number.
#[derive(Debug, Clone)]
struct Instance {
    started_ms: i64,
    last_ms: i64,
    done: u64,
    compensated: u64,
    /// When it failed, or [`NOT_FAILED`].
    failed_at: i64,
    /// The trace id of its events' `traceparent`; all zero (an invalid W3C trace id) for none.
    trace: [u8; 16],
    /// The last step reached (`None`: only started).
    last_step: Option<u8>,
    inconsistent: bool,
    /// The partition its start was read from (all its events are there when the topics are
    /// co-partitioned): what a replica forgets when the partition moves to another.
    partition: i32,
    /// The type of its last event, as an index into [`Tracker::types`].
    last_type: u16,
}

const NOT_FAILED: i64 = i64::MIN;

impl Instance {
    fn failed_ms(&self) -> Option<i64> {
        (self.failed_at != NOT_FAILED).then_some(self.failed_at)
    }

    fn trace_id(&self) -> Option<[u8; 16]> {
        (self.trace != [0; 16]).then_some(self.trace)
    }

    fn missing(&self) -> u64 {
        self.done & !self.compensated
    }

    /// In flight (not failed) for longer than `timeout_ms`.
    fn stuck(&self, now_ms: i64, timeout_ms: i64) -> bool {
        self.failed_at == NOT_FAILED && now_ms.saturating_sub(self.started_ms) > timeout_ms
    }
}

/// A stuck or inconsistent instance, as `/sagas` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub id: Arc<str>,
    pub inconsistent: bool,
    pub started_ms: i64,
    pub last_ms: i64,
    /// The type of the last event seen.
    pub last_event: String,
    pub missing_compensations: Vec<String>,
    pub trace_id: Option<[u8; 16]>,
}

/// The instances of one saga.
pub struct Tracker {
    spec: Spec,
    roles: HashMap<String, (Role, u16)>,
    /// Every type of the saga, indexed by the `u16` of `roles`.
    types: Vec<String>,
    instances: HashMap<Arc<str>, Instance>,
    /// Instances by start, oldest first (entries of ended instances are skipped and compacted).
    order: VecDeque<Arc<str>>,
    /// Failed instances by the end of their grace (entries of instances that ended since are skipped).
    deadlines: BinaryHeap<Reverse<(i64, Arc<str>)>>,
}

/// Whether `id` (an entry of the start order or the deadlines) is the id of an instance still held, and
/// not of an earlier instance with the same correlation id.
fn current(instances: &HashMap<Arc<str>, Instance>, id: &Arc<str>) -> bool {
    instances.get_key_value(id).is_some_and(|(key, _)| Arc::ptr_eq(key, id))
}

impl Tracker {
    /// A tracker for `spec` (validation has checked it: types listed once, compensations of listed
    /// steps, at most 64 steps).
    pub fn new(spec: Spec) -> Tracker {
        let mut listed: Vec<(String, Role)> = spec.start.iter().map(|t| (t.clone(), Role::Start)).collect();
        for (i, t) in spec.steps.iter().enumerate().take(64) {
            listed.push((t.clone(), Role::Step(i as u8)));
            if let Some(c) = spec.compensations.get(t) {
                listed.push((c.clone(), Role::Compensation(i as u8)));
            }
        }
        listed.extend(spec.complete.iter().map(|t| (t.clone(), Role::Complete)));
        listed.extend(spec.fail.iter().map(|t| (t.clone(), Role::Fail)));
        let mut roles = HashMap::new();
        let mut types = Vec::new();
        for (t, role) in listed {
            if !roles.contains_key(&t) {
                roles.insert(t.clone(), (role, types.len() as u16));
                types.push(t);
            }
        }
        Tracker {
            spec,
            roles,
            types,
            instances: HashMap::new(),
            order: VecDeque::new(),
            deadlines: BinaryHeap::new(),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.instances.len()
    }

    /// Every event type of the saga (the `type` label's values).
    pub fn types(&self) -> &[String] {
        &self.types
    }

    /// The step labels of `in_flight` and `stuck`: the first start type (instances that reached no step),
    /// then the steps.
    pub fn step_labels(&self) -> Vec<&str> {
        std::iter::once(self.step_name(None))
            .chain(self.spec.steps.iter().map(String::as_str))
            .collect()
    }

    /// Where an event of `event_type` goes among events with the same timestamp (read from different
    /// partitions, their order is unknown): starts first, then steps in order, compensations, the
    /// failure and the end; `None` for a type the saga does not list.
    pub fn rank(&self, event_type: &str) -> Option<u8> {
        self.roles.get(event_type).map(|(role, _)| match role {
            Role::Start => 0,
            Role::Step(i) => 1 + *i,
            Role::Compensation(_) => 100,
            Role::Fail => 101,
            Role::Complete => 102,
        })
    }

    /// Forgets the instances whose partition `keep` refuses (partitions that moved to another replica).
    pub fn forget(&mut self, keep: impl Fn(i32) -> bool) {
        self.instances.retain(|_, i| keep(i.partition));
        let instances = &self.instances;
        self.order.retain(|id| current(instances, id));
        self.deadlines.retain(|Reverse((_, id))| current(instances, id));
    }

    /// One event of instance `id`, of `event_type`, appended at `at_ms`, with the trace id of its
    /// `traceparent` when it has one. Transitions go to `out`.
    pub fn event(
        &mut self,
        id: &str,
        event_type: &str,
        at_ms: i64,
        trace_id: Option<[u8; 16]>,
        partition: i32,
        out: &mut Vec<Transition>,
    ) -> Result<(), Unmatched> {
        let (role, type_index) = *self.roles.get(event_type).ok_or(Unmatched::UnknownType)?;
        if role == Role::Start {
            if self.instances.contains_key(id) {
                return Ok(());
            }
            let id: Arc<str> = Arc::from(id);
            self.instances.insert(
                id.clone(),
                Instance {
                    started_ms: at_ms,
                    last_ms: at_ms,
                    last_step: None,
                    done: 0,
                    compensated: 0,
                    failed_at: NOT_FAILED,
                    inconsistent: false,
                    partition,
                    last_type: type_index,
                    trace: trace_id.unwrap_or_default(),
                },
            );
            self.order.push_back(id);
            out.push(Transition::Started);
            self.bound(out);
            return Ok(());
        }
        // A failure's deadline names the instance by its id's allocation.
        let key = (role == Role::Fail)
            .then(|| self.instances.get_key_value(id).map(|(k, _)| k.clone()))
            .flatten();
        let inst = self.instances.get_mut(id).ok_or(Unmatched::BeforeStart)?;
        let since = (at_ms.saturating_sub(inst.last_ms)).max(0) as f64 / 1000.0;
        inst.last_ms = inst.last_ms.max(at_ms);
        inst.last_type = type_index;
        if inst.trace == [0; 16] {
            inst.trace = trace_id.unwrap_or_default();
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
            Role::Complete if inst.failed_at == NOT_FAILED => Some(Outcome::Completed),
            Role::Complete => None,
            Role::Fail => {
                if inst.failed_at == NOT_FAILED {
                    inst.failed_at = at_ms;
                    let deadline = at_ms.saturating_add(self.spec.compensation_grace_ms);
                    if let Some(key) = key {
                        self.deadlines.push(Reverse((deadline, key)));
                    }
                }
                (inst.missing() == 0).then_some(Outcome::Compensated)
            }
            Role::Compensation(i) => {
                inst.compensated |= 1 << i;
                match (inst.failed_ms(), inst.missing(), inst.inconsistent) {
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

    /// As of `now_ms`: failed instances past their grace become inconsistent (once each). Costs what
    /// expired, not what is in flight; called with each event's time as events are applied in time order,
    /// so that a state rebuilt from the topics decides exactly as the live one did.
    pub fn evaluate(&mut self, now_ms: i64, out: &mut Vec<Transition>) {
        while let Some(Reverse((deadline, _))) = self.deadlines.peek() {
            if *deadline > now_ms {
                break;
            }
            let Some(Reverse((_, id))) = self.deadlines.pop() else { break };
            if !current(&self.instances, &id) {
                continue;
            }
            let Some(inst) = self.instances.get_mut(&id) else { continue };
            if let Some(failed) = inst.failed_ms() {
                if !inst.inconsistent && inst.missing() != 0 {
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
        for inst in self.instances.values().filter(|i| i.failed_at == NOT_FAILED) {
            let step = self.step_name(inst.last_step).to_string();
            if inst.stuck(now_ms, self.spec.timeout_ms) {
                *stuck.entry(step.clone()).or_insert(0) += 1;
            }
            *in_flight.entry(step).or_insert(0) += 1;
        }
        (in_flight, stuck)
    }

    /// The stuck and inconsistent instances, newest first, at most `limit` (selected, not sorted whole:
    /// a million stuck instances cost one pass).
    pub fn listed(&self, now_ms: i64, limit: usize) -> Vec<Listed> {
        let newest_first =
            |a: &(&Arc<str>, &Instance), b: &(&Arc<str>, &Instance)| b.1.started_ms.cmp(&a.1.started_ms).then_with(|| a.0.cmp(b.0));
        let mut found: Vec<(&Arc<str>, &Instance)> = self
            .instances
            .iter()
            .filter(|(_, i)| i.inconsistent || i.stuck(now_ms, self.spec.timeout_ms))
            .collect();
        if found.len() > limit && limit > 0 {
            found.select_nth_unstable_by(limit - 1, newest_first);
        }
        found.truncate(limit);
        found.sort_by(newest_first);
        found
            .into_iter()
            .map(|(id, i)| Listed {
                id: id.clone(),
                inconsistent: i.inconsistent,
                started_ms: i.started_ms,
                last_ms: i.last_ms,
                last_event: self.types.get(i.last_type as usize).cloned().unwrap_or_default(),
                missing_compensations: (0..self.spec.steps.len().min(64))
                    .filter(|b| i.failed_at != NOT_FAILED && i.missing() & (1 << b) != 0)
                    .filter_map(|b| self.spec.compensations.get(&self.spec.steps[b]).cloned())
                    .collect(),
                trace_id: i.trace_id(),
            })
            .collect()
    }

    /// Evicts the oldest instances beyond `max_in_flight`; compacts the start order.
    fn bound(&mut self, out: &mut Vec<Transition>) {
        while self.instances.len() > self.spec.max_in_flight {
            let Some(id) = self.order.pop_front() else { break };
            if current(&self.instances, &id) {
                self.instances.remove(&id);
                out.push(Transition::Evicted);
            }
        }
        let instances = &self.instances;
        if self.order.len() > 2 * instances.len() + 64 {
            self.order.retain(|id| current(instances, id));
        }
        if self.deadlines.len() > 2 * instances.len() + 64 {
            self.deadlines.retain(|Reverse((_, id))| current(instances, id));
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
            t.event("o-1", ty, at, None, 0, &mut out).unwrap();
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
            t.event("o-1", "ShippingScheduled", 1100, None, 0, &mut out),
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
            t.event("o-1", ty, at, None, 0, &mut out).unwrap();
        }
        assert_eq!(ended(&out), vec![Outcome::Compensated]);
        // o-2: the inventory service is offline: its reservation is never released (the August incident).
        out.clear();
        for (ty, at) in [("OrderCreated", 0), ("InventoryReserved", 10), ("OrderFailed", 1_000)] {
            t.event("o-2", ty, at, Some([7; 16]), 0, &mut out).unwrap();
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
        t.event("o-2", "InventoryReleased", 200_000, None, 0, &mut out).unwrap();
        assert_eq!(out, vec![Transition::LateCompensation]);
        assert!(t.listed(300_000, 10).is_empty());
    }

    #[test]
    fn stuck_is_by_the_last_step_reached_and_listed_newest_first() {
        let mut t = order_saga(10);
        let mut out = Vec::new();
        t.event("old", "OrderCreated", 0, None, 0, &mut out).unwrap();
        t.event("old", "InventoryReserved", 5, None, 0, &mut out).unwrap();
        t.event("new", "OrderCreated", 1_000, None, 0, &mut out).unwrap();
        t.event("fresh", "OrderCreated", 400_000, None, 0, &mut out).unwrap();
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
        assert_eq!(t.event("x", "Unrelated", 0, None, 0, &mut out), Err(Unmatched::UnknownType));
        assert_eq!(t.event("x", "PaymentProcessed", 0, None, 0, &mut out), Err(Unmatched::BeforeStart));
        // A repeated start does not restart the instance.
        t.event("x", "OrderCreated", 0, None, 0, &mut out).unwrap();
        t.event("x", "OrderCreated", 50, None, 0, &mut out).unwrap();
        assert_eq!(out, vec![Transition::Started]);
    }

    /// The start order names instances by their id's allocation: an id that ended and started again is
    /// not evicted in place of the instance after it.
    #[test]
    fn a_restarted_id_is_not_evicted_by_its_earlier_instance() {
        let mut t = order_saga(2);
        let mut out = Vec::new();
        for (id, ty, at) in [
            ("x", "OrderCreated", 0),
            ("x", "OrderCompleted", 1),
            ("y", "OrderCreated", 2),
            ("x", "OrderCreated", 3),
            ("z", "OrderCreated", 4),
        ] {
            t.event(id, ty, at, None, 0, &mut out).unwrap();
        }
        assert_eq!(out.iter().filter(|t| **t == Transition::Evicted).count(), 1);
        assert!(t.event("x", "InventoryReserved", 5, None, 0, &mut out).is_ok());
        assert!(t.event("z", "InventoryReserved", 5, None, 0, &mut out).is_ok());
        assert_eq!(t.event("y", "InventoryReserved", 5, None, 0, &mut out), Err(Unmatched::BeforeStart));
    }

    #[test]
    fn an_instance_fits_a_bucket_of_72_bytes() {
        assert_eq!(std::mem::size_of::<Instance>(), 72);
    }

    #[test]
    fn memory_is_bounded_by_evicting_the_oldest() {
        let mut t = order_saga(1_000);
        let mut out = Vec::new();
        for i in 0..10_000 {
            t.event(&format!("o-{i}"), "OrderCreated", i, None, 0, &mut out).unwrap();
        }
        assert_eq!(t.in_flight(), 1_000);
        assert_eq!(out.iter().filter(|t| **t == Transition::Evicted).count(), 9_000);
        assert!(t.order.len() <= 2 * 1_000 + 64);
        // The newest are kept.
        assert!(t.event("o-9999", "InventoryReserved", 10_000, None, 0, &mut out).is_ok());
        assert_eq!(
            t.event("o-0", "InventoryReserved", 10_000, None, 0, &mut out),
            Err(Unmatched::BeforeStart)
        );
    }
}
