//! The AutoscalingPolicy algorithm, with HPA v2 semantics, pure: from the metrics observed at one
//! poll and the policy's history, the replicas to hold and why. The runtime polls, feeds this, and
//! writes the target only when the answer differs from the current replicas.
//!
//! Order of steps, as in the HPA controller: a target outside `minReplicas..maxReplicas` is brought
//! inside at once; otherwise every metric gives a recommendation (`replicas`), the largest wins
//! (the raw recommendation), the stabilization windows bound it (the stabilized recommendation),
//! and the rate policies and bounds limit the step (the replicas written). While metrics are
//! missing nothing changes, until `fallback.afterSeconds` have passed and the fallback replicas
//! are held.

pub mod behavior;
pub mod quantity;
pub mod replicas;
pub mod samples;
pub mod zero;

use std::time::Duration;

use outrigger_api::autoscaling::{AutoscalingPolicySpec, MetricSpec, MetricType, MetricValue, TargetType};

use self::{
    behavior::{History, Limit},
    replicas::{MetricError, MetricInput},
    zero::{Front, ZeroMove},
};

/// Decisions kept in status.
pub const DECISION_LIMIT: usize = 10;

/// Why the replicas are what they are after one poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The metrics ask for the current count (or the policies hold it).
    Steady,
    ScaleUp,
    ScaleDown,
    /// Metrics missing for `fallback.afterSeconds`: holding the fallback replicas.
    Fallback,
    /// Metrics missing, not yet for long enough to fall back (or no fallback): nothing changes.
    MetricsUnavailable,
    BelowMinReplicas,
    AboveMaxReplicas,
    /// The target has 0 replicas: with `minReplicas: 0`, no request is held; otherwise someone
    /// scaled it to zero, and the policy leaves it there.
    ScaledToZero,
    /// Requests held at zero replicas: one replica now.
    ScaleFromZero,
    /// No request for the scale-down stabilization window: zero replicas.
    ScaleToZero,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Steady => "Steady",
            Reason::ScaleUp => "ScaleUp",
            Reason::ScaleDown => "ScaleDown",
            Reason::Fallback => "Fallback",
            Reason::MetricsUnavailable => "MetricsUnavailable",
            Reason::BelowMinReplicas => "BelowMinReplicas",
            Reason::AboveMaxReplicas => "AboveMaxReplicas",
            Reason::ScaledToZero => "ScaledToZero",
            Reason::ScaleFromZero => "ScaleFromZero",
            Reason::ScaleToZero => "ScaleToZero",
        }
    }
}

/// The outcome of one poll.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Replicas the target should have (equal to the current count when nothing changes).
    pub desired: i32,
    pub reason: Reason,
    /// Every metric's value, target and recommendation, in the spec's order.
    pub metrics: Vec<MetricValue>,
    pub raw: Option<i32>,
    pub stabilized: Option<i32>,
    pub limit: Limit,
    /// Why the metrics could not be used, and for how long they have not been.
    pub metrics_error: Option<(String, Duration)>,
    /// With `minReplicas: 0`: the move to or from zero, or staying there.
    pub zero: Option<ZeroMove>,
}

/// What one policy remembers between polls.
#[derive(Debug, Clone, Default)]
pub struct PolicyState {
    pub history: History,
    failing_since: Option<Duration>,
}

/// A metric's target as a number, and its kind.
pub fn target_of(metric: &MetricSpec) -> Option<(f64, TargetType)> {
    let target = &metric.target;
    let value = match target.target_type {
        TargetType::Utilization => target.average_utilization.map(f64::from),
        TargetType::AverageValue => target.average_value.as_deref().and_then(quantity::parse),
        TargetType::Value => target.value.as_deref().and_then(quantity::parse),
    }?;
    Some((value, target.target_type))
}

fn target_text(metric: &MetricSpec) -> String {
    let target = &metric.target;
    match target.target_type {
        TargetType::Utilization => target
            .average_utilization
            .map(|u| format!("{u}%"))
            .unwrap_or_default(),
        TargetType::AverageValue => target.average_value.clone().unwrap_or_default(),
        TargetType::Value => target.value.clone().unwrap_or_default(),
    }
}

/// A short name of a metric for summaries (`requestRate`, `latency p99`).
pub fn metric_name(metric: &MetricSpec) -> String {
    let name = match metric.metric_type {
        MetricType::Cpu => "cpu",
        MetricType::Memory => "memory",
        MetricType::Network => "network",
        MetricType::RequestRate => "requestRate",
        MetricType::Latency => "latency",
        MetricType::Concurrency => "concurrency",
        MetricType::Prometheus => "prometheus",
    };
    match metric.percentile {
        Some(percentile) => format!("{name} p{percentile}"),
        None => name.to_owned(),
    }
}

impl PolicyState {
    /// Decides the replicas for this poll. `inputs` holds one entry per metric of the spec, in
    /// order. The history of recommendations is updated; call [`PolicyState::scaled`] once the
    /// replicas are written.
    ///
    /// `pods_per_replica` is how many pods one unit of `current` stands for: 1 for a service's
    /// replicas, the shard count for a ShardedService's replicas per shard, the replicas per shard
    /// for its shard count. The metrics are per pod; recommendations are in units of `current`.
    pub fn decide(
        &mut self,
        spec: &AutoscalingPolicySpec,
        current: (i32, i32),
        inputs: &[Result<MetricInput, MetricError>],
        now: Duration,
    ) -> Outcome {
        self.decide_with_front(spec, current, inputs, now, None)
    }

    /// As [`PolicyState::decide`], for a policy that may scale to zero: `front` is what the request
    /// splitters in front of the service report (see [`zero`]). Only the absence of traffic takes
    /// the service to zero; the metrics keep at least one replica.
    pub fn decide_with_front(
        &mut self,
        spec: &AutoscalingPolicySpec,
        (current, pods_per_replica): (i32, i32),
        inputs: &[Result<MetricInput, MetricError>],
        now: Duration,
        front: Option<&Front>,
    ) -> Outcome {
        let min_replicas = spec.min_replicas.max(1);
        let tolerance = f64::from(spec.behavior.tolerance_percent) / 100.0;
        let unit = pods_per_replica.max(1);
        let in_units = |recommendation: replicas::Recommendation| replicas::Recommendation {
            replicas: recommendation.replicas / unit + i32::from(recommendation.replicas % unit != 0),
            ..recommendation
        };
        let mut values = Vec::with_capacity(spec.metrics.len());
        let mut recommendations = Vec::with_capacity(spec.metrics.len());
        for (metric, input) in spec.metrics.iter().zip(inputs) {
            let result = input
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|input| replicas::recommend(input, current.saturating_mul(unit), tolerance))
                .map(in_units);
            values.push(MetricValue {
                metric_type: metric.metric_type,
                value: result
                    .as_ref()
                    .map(|r| quantity::format(r.value))
                    .unwrap_or_default(),
                target: target_text(metric),
                replicas: result.as_ref().ok().map(|r| r.replicas),
                error: result.as_ref().err().map(ToString::to_string),
            });
            recommendations.push(result);
        }
        let mut outcome = Outcome {
            desired: current,
            reason: Reason::Steady,
            metrics: values,
            raw: None,
            stabilized: None,
            limit: Limit::None,
            metrics_error: None,
            zero: None,
        };

        // As the HPA: all metrics failing, or some failing while the rest ask for fewer replicas,
        // leaves the count alone (a missing metric might have asked for more).
        let proposal = recommendations
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|r| r.replicas)
            .max();
        // No ready pod is no failure of a metric source: the count just holds while pods start, or
        // while the first rate window fills.
        let failures: Vec<String> = recommendations
            .iter()
            .zip(&spec.metrics)
            .filter_map(|(result, metric)| match result {
                Err(MetricError::NoReadyPods | MetricError::WindowFilling) | Ok(_) => None,
                Err(error) => Some(format!("{}: {error}", metric_name(metric))),
            })
            .collect();
        let usable = match proposal {
            Some(replicas) if failures.is_empty() || replicas >= current => Some(replicas),
            _ => None,
        };
        let starting = usable.is_none() && failures.is_empty();
        if usable.is_some() || starting {
            self.failing_since = None;
        } else {
            let since = *self.failing_since.get_or_insert(now);
            let failing_for = now.saturating_sub(since);
            outcome.metrics_error = Some((
                if failures.is_empty() {
                    "no metric gave a value".to_owned()
                } else {
                    failures.join("; ")
                },
                failing_for,
            ));
        }

        let down = behavior::scale_down(spec.behavior.scale_down.as_ref());
        outcome.zero = zero::zero_move(current, spec.min_replicas, down.stabilization, front);
        match outcome.zero {
            Some(ZeroMove::FromZero { .. }) => {
                outcome.desired = min_replicas;
                outcome.reason = Reason::ScaleFromZero;
                return outcome;
            }
            Some(ZeroMove::ToZero { .. }) => {
                outcome.desired = 0;
                outcome.reason = Reason::ScaleToZero;
                return outcome;
            }
            Some(ZeroMove::StayAtZero) | None => {}
        }
        if current == 0 {
            outcome.reason = Reason::ScaledToZero;
            return outcome;
        }
        if current > spec.max_replicas {
            outcome.desired = spec.max_replicas;
            outcome.reason = Reason::AboveMaxReplicas;
            outcome.limit = Limit::MaxReplicas;
            return outcome;
        }
        if current < min_replicas {
            outcome.desired = min_replicas;
            outcome.reason = Reason::BelowMinReplicas;
            outcome.limit = Limit::MinReplicas;
            return outcome;
        }
        let Some(raw) = usable else {
            if starting {
                return outcome;
            }
            match (&spec.fallback, &outcome.metrics_error) {
                (Some(fallback), Some((_, failing_for)))
                    if *failing_for
                        >= Duration::from_secs(u64::try_from(fallback.after_seconds).unwrap_or(0)) =>
                {
                    outcome.desired = fallback.replicas.clamp(min_replicas, spec.max_replicas);
                    outcome.reason = Reason::Fallback;
                }
                _ => outcome.reason = Reason::MetricsUnavailable,
            }
            return outcome;
        };
        let up = behavior::scale_up(spec.behavior.scale_up.as_ref());
        let stabilized = self.history.stabilize(now, current, raw, &up, &down);
        let (desired, limit) = self.history.limit(
            now,
            current,
            stabilized,
            (min_replicas, spec.max_replicas),
            &up,
            &down,
        );
        outcome.raw = Some(raw);
        outcome.stabilized = Some(stabilized);
        outcome.desired = desired;
        outcome.limit = limit;
        outcome.reason = match desired.cmp(&current) {
            std::cmp::Ordering::Greater => Reason::ScaleUp,
            std::cmp::Ordering::Less => Reason::ScaleDown,
            std::cmp::Ordering::Equal => Reason::Steady,
        };
        outcome
    }

    /// Records that the target's replicas were written, for the rate policies.
    pub fn scaled(&mut self, now: Duration, from: i32, to: i32) {
        self.history.record_scale(now, from, to);
    }
}

/// One line for `kubectl get asp`: `2→4 ScaleUp (requestRate 18/5)`.
pub fn summary(spec: &AutoscalingPolicySpec, from: i32, outcome: &Outcome) -> String {
    let deciding = spec
        .metrics
        .iter()
        .zip(&outcome.metrics)
        .filter(|(_, value)| value.replicas.is_some() && value.replicas == outcome.raw)
        .map(|(metric, value)| format!("{} {}/{}", metric_name(metric), value.value, value.target))
        .next();
    let mut line = format!("{from}→{} {}", outcome.desired, outcome.reason.as_str());
    match (outcome.reason, outcome.zero) {
        (Reason::ScaleFromZero, Some(ZeroMove::FromZero { held })) => {
            line.push_str(&format!(" ({} requests held)", quantity::format(held)));
        }
        (Reason::ScaleToZero, Some(ZeroMove::ToZero { idle_for })) => {
            line.push_str(&format!(" (no requests for {}s)", idle_for.as_secs()));
        }
        _ => {}
    }
    if let Some(deciding) = deciding.filter(|_| matches!(outcome.reason, Reason::ScaleUp | Reason::ScaleDown))
    {
        line.push_str(&format!(" ({deciding})"));
    }
    if let Some(limit) = outcome.limit.describe() {
        line.push_str(&format!(", limited by {limit}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{
        replicas::{PodState, PodValue},
        *,
    };

    fn spec(patch: serde_json::Value) -> AutoscalingPolicySpec {
        let mut base = json!({
            "scaleTargetRef": {"kind": "ReplicatedService", "name": "web"},
            "minReplicas": 1, "maxReplicas": 10,
            "metrics": [{"type": "requestRate", "target": {"type": "AverageValue", "averageValue": "10"}}],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}},
        });
        if let (Some(base), Some(patch)) = (base.as_object_mut(), patch.as_object()) {
            for (key, value) in patch {
                base.insert(key.clone(), value.clone());
            }
        }
        serde_json::from_value(base).unwrap()
    }

    fn rate(per_pod: &[f64]) -> Result<MetricInput, MetricError> {
        Ok(MetricInput::PerPod {
            pods: per_pod
                .iter()
                .map(|value| PodValue {
                    state: PodState::Ready,
                    value: Some(*value),
                    request: None,
                })
                .collect(),
            target: 10.0,
            utilization: false,
        })
    }

    fn failing() -> Result<MetricInput, MetricError> {
        Err(MetricError::Unavailable("connection refused".to_owned()))
    }

    fn at(seconds: u64) -> Duration {
        Duration::from_secs(1000 + seconds)
    }

    #[test]
    fn a_load_step_scales_up_and_the_decision_says_which_metric_and_limit() {
        let spec = spec(json!({}));
        let mut state = PolicyState::default();
        // 2 replicas at 40 rps each against 10: 8 wanted; the default +100%/+4 pods allows 6.
        let outcome = state.decide(&spec, (2, 1), &[rate(&[40.0, 40.0])], at(0));
        assert_eq!(outcome.reason, Reason::ScaleUp);
        assert_eq!(
            (outcome.raw, outcome.stabilized, outcome.desired),
            (Some(8), Some(8), 6)
        );
        assert_eq!(
            outcome.limit.describe().as_deref(),
            Some("scaleUp policy 4 Pods per 15s")
        );
        assert_eq!(outcome.metrics[0].value, "40");
        assert_eq!(outcome.metrics[0].replicas, Some(8));
        assert_eq!(
            summary(&spec, 2, &outcome),
            "2→6 ScaleUp (requestRate 40/10), limited by scaleUp policy 4 Pods per 15s"
        );
    }

    #[test]
    fn replicas_per_shard_follow_the_pods_of_every_shard() {
        // 3 shards of 2 replicas at twice the target: 12 pods wanted, 4 per shard.
        let spec = spec(json!({"scaleTargetRef": {"kind": "ShardedService", "name": "cache"}}));
        let outcome = PolicyState::default().decide(&spec, (2, 3), &[rate(&[20.0; 6])], at(0));
        assert_eq!((outcome.raw, outcome.desired), (Some(4), 4));
        assert_eq!(outcome.metrics[0].replicas, Some(4));
    }

    #[test]
    fn the_largest_recommendation_of_several_metrics_wins() {
        let spec = spec(json!({"metrics": [
            {"type": "requestRate", "target": {"type": "AverageValue", "averageValue": "10"}},
            {"type": "latency", "percentile": 99, "target": {"type": "Value", "value": "100"}},
        ]}));
        let latency = Ok(MetricInput::Whole {
            value: 300.0,
            target: 100.0,
            average: false,
            ready_pods: 2,
        });
        let outcome = PolicyState::default().decide(&spec, (2, 1), &[rate(&[10.0, 10.0]), latency], at(0));
        assert_eq!((outcome.raw, outcome.desired), (Some(6), 6));
    }

    #[test]
    fn missing_metrics_hold_the_count_then_fall_back_after_the_configured_time() {
        let spec = spec(json!({"fallback": {"replicas": 4, "afterSeconds": 10}}));
        let mut state = PolicyState::default();
        let script = [
            (0, failing(), 2, Reason::MetricsUnavailable),
            (9, failing(), 2, Reason::MetricsUnavailable),
            (10, failing(), 4, Reason::Fallback),
            // Metrics back: the algorithm decides again, from the fallback count.
            (11, rate(&[10.0; 4]), 4, Reason::Steady),
        ];
        let mut current = 2;
        for (second, input, expected, reason) in script {
            let outcome = state.decide(&spec, (current, 1), &[input], at(second));
            assert_eq!(
                (outcome.desired, outcome.reason),
                (expected, reason),
                "at {second}s"
            );
            current = outcome.desired;
        }
    }

    #[test]
    fn pods_that_are_not_ready_yet_hold_the_count_without_starting_the_fallback_clock() {
        let spec = spec(json!({"fallback": {"replicas": 4, "afterSeconds": 1}}));
        let starting = Err(MetricError::NoReadyPods);
        let mut state = PolicyState::default();
        for second in 0..5 {
            let outcome = state.decide(&spec, (2, 1), std::slice::from_ref(&starting), at(second));
            assert_eq!(
                (outcome.desired, outcome.reason),
                (2, Reason::Steady),
                "at {second}s"
            );
            assert_eq!(outcome.metrics_error, None);
        }
    }

    #[test]
    fn a_failing_metric_blocks_a_scale_down_but_not_a_scale_up() {
        // As the HPA: the metric that cannot be read might have asked for more replicas.
        let spec = spec(json!({"metrics": [
            {"type": "requestRate", "target": {"type": "AverageValue", "averageValue": "10"}},
            {"type": "prometheus", "prometheus": {"address": "http://p:9090", "query": "q"},
             "target": {"type": "Value", "value": "1"}},
        ]}));
        let down = PolicyState::default().decide(&spec, (4, 1), &[rate(&[1.0; 4]), failing()], at(0));
        assert_eq!((down.desired, down.reason), (4, Reason::MetricsUnavailable));
        let up = PolicyState::default().decide(&spec, (2, 1), &[rate(&[20.0; 2]), failing()], at(0));
        assert_eq!((up.desired, up.reason), (4, Reason::ScaleUp));
    }

    #[test]
    fn a_target_outside_the_bounds_is_brought_inside_at_once() {
        let spec = spec(json!({"minReplicas": 2, "maxReplicas": 5}));
        let mut state = PolicyState::default();
        let below = state.decide(&spec, (1, 1), &[rate(&[0.0])], at(0));
        assert_eq!((below.desired, below.reason), (2, Reason::BelowMinReplicas));
        let above = state.decide(&spec, (9, 1), &[rate(&[100.0; 9])], at(0));
        assert_eq!((above.desired, above.reason), (5, Reason::AboveMaxReplicas));
        let zero = state.decide(&spec, (0, 1), &[rate(&[])], at(0));
        assert_eq!((zero.desired, zero.reason), (0, Reason::ScaledToZero));
    }

    #[test]
    fn a_drop_scales_down_stepwise_within_the_window_and_policy() {
        // scaleDown: 5 s window, 1 pod per 2 s. Load drops to 0 at t=0 from 4 replicas.
        let spec = spec(json!({"behavior": {"scaleDown": {
            "stabilizationWindowSeconds": 5,
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 2}],
        }}}));
        let mut state = PolicyState::default();
        let mut current = 4;
        state.decide(&spec, (current, 1), &[rate(&[10.0; 4])], at(0));
        let mut seen = Vec::new();
        for second in 1..=12 {
            let outcome = state.decide(&spec, (current, 1), &[rate(&[0.0; 4])], at(second));
            if outcome.desired != current {
                state.scaled(at(second), current, outcome.desired);
                seen.push((second, outcome.desired, outcome.limit.describe()));
                current = outcome.desired;
            }
        }
        let policy = Some("scaleDown policy 1 Pods per 2s".to_owned());
        assert_eq!(
            seen,
            vec![
                (5, 3, policy.clone()),
                (7, 2, policy),
                (9, 1, Some("minReplicas".to_owned()))
            ]
        );
    }

    #[test]
    fn a_policy_that_allows_zero_moves_to_and_from_zero_on_the_fronts_traffic_only() {
        let spec = spec(json!({
            "minReplicas": 0,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 30}},
        }));
        let front = |held: f64, idle: u64| Front {
            held,
            idle_for: Some(Duration::from_secs(idle)),
        };
        let no_pods = || Err(MetricError::NoReadyPods);
        let mut state = PolicyState::default();
        // (second, current, input, front, desired, reason, summary of a change)
        type Step = (
            u64,
            i32,
            Result<MetricInput, MetricError>,
            Front,
            i32,
            Reason,
            Option<&'static str>,
        );
        let script: Vec<Step> = vec![
            (0, 0, no_pods(), front(0.0, 500), 0, Reason::ScaledToZero, None),
            (
                1,
                0,
                no_pods(),
                front(3.0, 0),
                1,
                Reason::ScaleFromZero,
                Some("0→1 ScaleFromZero (3 requests held)"),
            ),
            // No request for a while, but less than the window: the metrics keep one replica,
            // even though a request rate of 0 asks for none.
            (20, 1, rate(&[0.0]), front(0.0, 19), 1, Reason::Steady, None),
            (
                31,
                1,
                rate(&[0.0]),
                front(0.0, 30),
                0,
                Reason::ScaleToZero,
                Some("1→0 ScaleToZero (no requests for 30s)"),
            ),
        ];
        for (second, current, input, front, desired, reason, summary_line) in script {
            let outcome = state.decide_with_front(&spec, (current, 1), &[input], at(second), Some(&front));
            assert_eq!(
                (outcome.desired, outcome.reason),
                (desired, reason),
                "at {second}s"
            );
            if let Some(line) = summary_line {
                assert_eq!(summary(&spec, current, &outcome), line, "at {second}s");
            }
        }
    }

    #[test]
    fn the_metrics_alone_scale_a_policy_that_allows_zero_down_to_one_not_zero() {
        let spec = spec(json!({"minReplicas": 0}));
        // Traffic was seen at this very poll: not idle.
        let busy = Front {
            held: 0.0,
            idle_for: Some(Duration::ZERO),
        };
        let outcome =
            PolicyState::default().decide_with_front(&spec, (3, 1), &[rate(&[0.0; 3])], at(0), Some(&busy));
        assert_eq!((outcome.desired, outcome.reason), (1, Reason::ScaleDown));
        assert_eq!(outcome.limit.describe().as_deref(), Some("minReplicas"));
    }
}
