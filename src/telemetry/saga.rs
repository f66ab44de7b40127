//! The series of `[[sagas]]` (collector role): counts of instances and events, the instances in flight
//! and stuck by step, and where the time goes. Every label value comes from the configuration (the
//! saga's name, types and steps) or from a closed set (outcomes, reasons), never from the traffic.

use prometheus::Registry;

use super::contract::*;
use super::{counters, histograms, int_gauges, Counters, Histograms, IntGauges, Spec};

/// The saga series, shared by every saga of the process.
#[derive(Clone)]
pub struct SagaMetrics {
    pub started: Counters<2>,
    pub ended: Counters<3>,
    pub in_flight: IntGauges<3>,
    pub stuck: IntGauges<3>,
    pub duration: Histograms<3>,
    pub step: Histograms<3>,
    pub events: Counters<3>,
    pub unmatched: Counters<3>,
    pub evicted: Counters<2>,
    pub late: Counters<2>,
    pub partitions: IntGauges<2>,
    pub up: IntGauges<2>,
}

impl SagaMetrics {
    pub fn new(registry: &Registry) -> SagaMetrics {
        let saga = [L_CLUSTER, L_SAGA];
        SagaMetrics {
            started: counters(registry, Spec { name: SAGA_STARTED, help: "Saga instances started (a start event of a new correlation id).", labels: saga }),
            ended: counters(
                registry,
                Spec {
                    name: SAGA_ENDED,
                    help: "Saga instances ended, by outcome: completed, compensated (failed, every done step compensated) or inconsistent (failed, a compensation still missing after compensation_grace).",
                    labels: [L_CLUSTER, L_SAGA, L_OUTCOME],
                },
            ),
            in_flight: int_gauges(
                registry,
                Spec { name: SAGA_IN_FLIGHT, help: "Saga instances in flight (not ended, not failed), by the last step reached.", labels: [L_CLUSTER, L_SAGA, L_STEP] },
            ),
            stuck: int_gauges(
                registry,
                Spec { name: SAGA_STUCK, help: "Saga instances in flight for longer than the saga's timeout, by the last step reached.", labels: [L_CLUSTER, L_SAGA, L_STEP] },
            ),
            duration: histograms(
                registry,
                Spec { name: SAGA_DURATION, help: "Time from an instance's start event to its end, by outcome (inconsistent: to its failure).", labels: [L_CLUSTER, L_SAGA, L_OUTCOME] },
                SAGA_BUCKETS,
            ),
            step: histograms(
                registry,
                Spec { name: SAGA_STEP_DURATION, help: "Time from an instance's previous event to this step's event.", labels: [L_CLUSTER, L_SAGA, L_STEP] },
                SAGA_BUCKETS,
            ),
            events: counters(registry, Spec { name: SAGA_EVENTS, help: "Events of the saga read from its topics, by type.", labels: [L_CLUSTER, L_SAGA, L_TYPE] }),
            unmatched: counters(
                registry,
                Spec {
                    name: SAGA_UNMATCHED,
                    help: "Records on the saga's topics that are not one of its events, by reason (no_correlation, no_type, unknown_type, before_start, not_json, too_large).",
                    labels: [L_CLUSTER, L_SAGA, L_REASON],
                },
            ),
            evicted: counters(registry, Spec { name: SAGA_EVICTED, help: "Instances dropped, oldest first, to stay within max_in_flight.", labels: saga }),
            late: counters(
                registry,
                Spec { name: SAGA_LATE_COMPENSATIONS, help: "Inconsistent instances whose missing compensations arrived later (they are compensated now).", labels: saga },
            ),
            partitions: int_gauges(registry, Spec { name: SAGA_PARTITIONS, help: "Partitions of the saga's topics this collector reads (all, or its share of the group's).", labels: saga }),
            up: int_gauges(
                registry,
                Spec {
                    name: SAGA_UP,
                    help: "1 when the saga's topics are read and its state rebuilt from the lookback; 0 while rebuilding or when reading fails (its in-flight and stuck series are then withdrawn).",
                    labels: saga,
                },
            ),
        }
    }
}
