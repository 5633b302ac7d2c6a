//! Scaling to zero and back, for a policy with `minReplicas: 0`. The request splitter in front of
//! the service holds requests while no replica runs; its metrics say how many are held and how
//! many it has answered. From them:
//!
//! - at zero, any held request scales to one replica at once: no stabilization window, no rate
//!   policy, since every moment counts against the held request's timeout;
//! - above zero, a service that has had no request (none answered, none held) for the scale-down
//!   stabilization window scales to zero, from whatever count it has (as KEDA deactivates a
//!   scaler after its cooldown);
//! - otherwise the HPA algorithm decides, with at least one replica: only the absence of traffic
//!   takes a service to zero, never a metric's recommendation.

use std::time::Duration;

use kube::ResourceExt;
use outrigger_api::{autoscaling::ScaleTargetKind, AutoscalingPolicy};

/// What the front request splitters reported at one poll, summed over their pods.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrontReading {
    /// Requests held now (`outrigger_splitter_held_requests`).
    pub held: f64,
    /// Requests answered so far (`outrigger_splitter_requests_total`), a counter.
    pub answered: f64,
}

/// What the decision needs of the front: requests held now, and how long the service has had no
/// traffic (`None` when the front splitters could not be read, so idleness is unknown).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Front {
    pub held: f64,
    pub idle_for: Option<Duration>,
}

/// When the service last had traffic, from the front's readings over time.
#[derive(Debug, Clone, Default)]
pub struct Idleness {
    answered: Option<f64>,
    last_traffic: Option<Duration>,
}

impl Idleness {
    /// Takes the reading of the poll at `now` (`None`: no front splitter answered) and returns the
    /// front as the decision sees it. A counter that moved either way (a splitter restarted, or one
    /// of several did not answer) counts as traffic; so does the first reading, so a restarted
    /// operator waits a whole window before it scales anything to zero.
    pub fn observe(&mut self, now: Duration, reading: Option<FrontReading>) -> Front {
        let Some(reading) = reading else {
            return Front {
                held: 0.0,
                idle_for: None,
            };
        };
        let moved = self
            .answered
            .is_none_or(|before| (before - reading.answered).abs() > f64::EPSILON);
        if moved || reading.held > 0.0 || self.last_traffic.is_none() {
            self.last_traffic = Some(now);
        }
        self.answered = Some(reading.answered);
        Front {
            held: reading.held,
            idle_for: self.last_traffic.map(|at| now.saturating_sub(at)),
        }
    }
}

/// A move to or from zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ZeroMove {
    /// Requests are held at zero replicas: scale to one now.
    FromZero { held: f64 },
    /// No traffic for the scale-down window: scale to zero.
    ToZero { idle_for: Duration },
    /// At zero, nothing held: stay there.
    StayAtZero,
}

/// The move to or from zero at this poll, if any; `None` leaves the decision to the HPA algorithm.
/// `window` is the scale-down stabilization window.
pub fn zero_move(
    current: i32,
    min_replicas: i32,
    window: Duration,
    front: Option<&Front>,
) -> Option<ZeroMove> {
    if min_replicas > 0 {
        return None;
    }
    let front = front.copied().unwrap_or(Front {
        held: 0.0,
        idle_for: None,
    });
    if current <= 0 {
        return Some(if front.held > 0.0 {
            ZeroMove::FromZero { held: front.held }
        } else {
            ZeroMove::StayAtZero
        });
    }
    match front.idle_for {
        // Idle for at least one poll, and for the whole window.
        Some(idle_for) if !idle_for.is_zero() && idle_for >= window && front.held <= 0.0 => {
            Some(ZeroMove::ToZero { idle_for })
        }
        _ => None,
    }
}

/// Whether `policy` may scale the ReplicatedService `namespace/service` to zero, so that the
/// request splitter must front it. An invalid policy scales nothing, so it asks for nothing.
pub fn may_scale_to_zero(policy: &AutoscalingPolicy, namespace: &str, service: &str) -> bool {
    let target = &policy.spec.scale_target_ref;
    policy.spec.min_replicas == 0
        && target.kind == ScaleTargetKind::ReplicatedService
        && target.name == service
        && policy.namespace().as_deref() == Some(namespace)
        && policy.metadata.deletion_timestamp.is_none()
        && crate::validate::autoscaling_policy(&policy.spec).is_ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_a_valid_policy_with_a_minimum_of_zero_on_the_service_asks_for_the_splitter() {
        let policy = |namespace: &str, patch: serde_json::Value| -> AutoscalingPolicy {
            let mut spec = json!({
                "scaleTargetRef": {"kind": "ReplicatedService", "name": "web"},
                "minReplicas": 0, "maxReplicas": 3,
                "metrics": [{"type": "requestRate", "target": {"type": "AverageValue", "averageValue": "10"}}],
            });
            if let (Some(spec), Some(patch)) = (spec.as_object_mut(), patch.as_object()) {
                spec.extend(patch.clone());
            }
            serde_json::from_value(json!({
                "apiVersion": "outrigger.dev/v1alpha1", "kind": "AutoscalingPolicy",
                "metadata": {"name": "web", "namespace": namespace},
                "spec": spec,
            }))
            .unwrap()
        };
        let cases = [
            (
                "a minimum of zero on the service",
                policy("shop", json!({})),
                true,
            ),
            ("another namespace", policy("other", json!({})), false),
            (
                "another service",
                policy(
                    "shop",
                    json!({"scaleTargetRef": {"kind": "ReplicatedService", "name": "api"}}),
                ),
                false,
            ),
            (
                "a minimum of one",
                policy("shop", json!({"minReplicas": 1})),
                false,
            ),
            (
                "an invalid policy",
                policy(
                    "shop",
                    json!({"scaleTargetRef": {"kind": "ReplicatedService", "name": "web", "dimension": "shards"}}),
                ),
                false,
            ),
        ];
        for (name, policy, expected) in cases {
            assert_eq!(may_scale_to_zero(&policy, "shop", "web"), expected, "{name}");
        }
    }

    fn secs(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    fn front(held: f64, idle_for: Option<u64>) -> Front {
        Front {
            held,
            idle_for: idle_for.map(secs),
        }
    }

    #[test]
    fn moves_to_and_from_zero() {
        let window = secs(300);
        // (case, current, minReplicas, front, move)
        type Case = (&'static str, i32, i32, Option<Front>, Option<ZeroMove>);
        let cases: Vec<Case> = vec![
            (
                "a held request at zero scales to one at once",
                0,
                0,
                Some(front(1.0, Some(0))),
                Some(ZeroMove::FromZero { held: 1.0 }),
            ),
            (
                "nothing held at zero stays at zero",
                0,
                0,
                Some(front(0.0, Some(900))),
                Some(ZeroMove::StayAtZero),
            ),
            (
                "an unreadable front at zero stays at zero",
                0,
                0,
                None,
                Some(ZeroMove::StayAtZero),
            ),
            (
                "idle for the whole window scales to zero",
                3,
                0,
                Some(front(0.0, Some(300))),
                Some(ZeroMove::ToZero { idle_for: secs(300) }),
            ),
            (
                "idle for less than the window leaves it to the algorithm",
                3,
                0,
                Some(front(0.0, Some(299))),
                None,
            ),
            (
                "traffic just seen leaves it to the algorithm",
                1,
                0,
                Some(front(0.0, Some(0))),
                None,
            ),
            (
                "unknown idleness never scales to zero",
                1,
                0,
                Some(front(0.0, None)),
                None,
            ),
            (
                "a policy with a minimum above zero never moves to or from zero",
                0,
                1,
                Some(front(5.0, Some(0))),
                None,
            ),
        ];
        for (name, current, min, front, expected) in cases {
            assert_eq!(
                zero_move(current, min, window, front.as_ref()),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn a_window_of_zero_scales_to_zero_after_one_poll_without_traffic() {
        assert_eq!(zero_move(2, 0, Duration::ZERO, Some(&front(0.0, Some(0)))), None);
        assert_eq!(
            zero_move(2, 0, Duration::ZERO, Some(&front(0.0, Some(1)))),
            Some(ZeroMove::ToZero { idle_for: secs(1) })
        );
    }

    #[test]
    fn idleness_counts_from_the_last_poll_that_saw_a_request_answered_or_held() {
        let reading = |held: f64, answered: f64| Some(FrontReading { held, answered });
        let mut idleness = Idleness::default();
        let script = [
            (0, reading(0.0, 10.0), Some(0)),
            (1, reading(0.0, 10.0), Some(1)),
            (5, reading(0.0, 12.0), Some(0)),
            (9, reading(0.0, 12.0), Some(4)),
            (10, reading(2.0, 12.0), Some(0)),
            (11, None, None),
            (12, reading(0.0, 14.0), Some(0)),
            // A restarted splitter starts its counter again: traffic, not a negative rate.
            (13, reading(0.0, 0.0), Some(0)),
            (20, reading(0.0, 0.0), Some(7)),
        ];
        for (second, reading, idle_for) in script {
            assert_eq!(
                idleness.observe(secs(second), reading).idle_for,
                idle_for.map(secs),
                "at {second}s"
            );
        }
    }
}
