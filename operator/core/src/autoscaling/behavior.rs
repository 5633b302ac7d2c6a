//! HPA v2 `behavior` (`horizontal.go`): stabilization windows over past recommendations, and rate
//! policies (`Pods` / `Percent` per period, `selectPolicy`) over past scale events. The history is
//! in memory, as in the HPA controller; times are offsets from any fixed origin.

use std::time::Duration;

use outrigger_api::autoscaling::{ScalingPolicyType, ScalingRules, SelectPolicy};

/// One rate policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RatePolicy {
    pub kind: ScalingPolicyType,
    pub value: i32,
    pub period: Duration,
}

impl std::fmt::Display for RatePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.kind {
            ScalingPolicyType::Pods => " Pods",
            ScalingPolicyType::Percent => "%",
        };
        write!(f, "{}{unit} per {}s", self.value, self.period.as_secs())
    }
}

/// The rules of one direction, with the HPA defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub stabilization: Duration,
    pub select: SelectPolicy,
    pub policies: Vec<RatePolicy>,
}

fn secs(value: i32) -> Duration {
    Duration::from_secs(u64::try_from(value).unwrap_or(0))
}

fn policies(spec: Option<&ScalingRules>, defaults: &[(ScalingPolicyType, i32, i32)]) -> Vec<RatePolicy> {
    let given = spec.map(|rules| rules.policies.as_slice()).unwrap_or_default();
    if given.is_empty() {
        return defaults
            .iter()
            .map(|(kind, value, period)| RatePolicy {
                kind: *kind,
                value: *value,
                period: secs(*period),
            })
            .collect();
    }
    given
        .iter()
        .map(|policy| RatePolicy {
            kind: policy.policy_type,
            value: policy.value,
            period: secs(policy.period_seconds),
        })
        .collect()
}

/// Scale-up rules; HPA's defaults: no stabilization, the larger of +100% and +4 pods per 15 s.
pub fn scale_up(spec: Option<&ScalingRules>) -> Rules {
    Rules {
        stabilization: secs(spec.and_then(|r| r.stabilization_window_seconds).unwrap_or(0)),
        select: spec.map_or(SelectPolicy::Max, |r| r.select_policy),
        policies: policies(
            spec,
            &[
                (ScalingPolicyType::Percent, 100, 15),
                (ScalingPolicyType::Pods, 4, 15),
            ],
        ),
    }
}

/// Scale-down rules; HPA's defaults: 300 s stabilization, up to -100% per 15 s.
pub fn scale_down(spec: Option<&ScalingRules>) -> Rules {
    Rules {
        stabilization: secs(spec.and_then(|r| r.stabilization_window_seconds).unwrap_or(300)),
        select: spec.map_or(SelectPolicy::Max, |r| r.select_policy),
        policies: policies(spec, &[(ScalingPolicyType::Percent, 100, 15)]),
    }
}

/// What bounded a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limit {
    /// The stabilized recommendation was written as it was.
    None,
    MaxReplicas,
    MinReplicas,
    ScaleUpPolicy(RatePolicy),
    ScaleDownPolicy(RatePolicy),
    ScaleUpDisabled,
    ScaleDownDisabled,
}

impl Limit {
    /// How a decision record names it; `None` when nothing limited the change.
    pub fn describe(&self) -> Option<String> {
        match self {
            Limit::None => None,
            Limit::MaxReplicas => Some("maxReplicas".to_owned()),
            Limit::MinReplicas => Some("minReplicas".to_owned()),
            Limit::ScaleUpPolicy(policy) => Some(format!("scaleUp policy {policy}")),
            Limit::ScaleDownPolicy(policy) => Some(format!("scaleDown policy {policy}")),
            Limit::ScaleUpDisabled => Some("scaleUp selectPolicy Disabled".to_owned()),
            Limit::ScaleDownDisabled => Some("scaleDown selectPolicy Disabled".to_owned()),
        }
    }
}

/// Past recommendations and scale events of one policy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    recommendations: Vec<(Duration, i32)>,
    scale_ups: Vec<(Duration, i32)>,
    scale_downs: Vec<(Duration, i32)>,
}

fn within(at: Duration, now: Duration, window: Duration) -> bool {
    now.saturating_sub(window) < at
}

impl History {
    /// Records `desired` (the raw recommendation) and returns the stabilized one: the lowest
    /// recommendation within the scale-up window and the highest within the scale-down window
    /// bound how far `current` moves.
    pub fn stabilize(&mut self, now: Duration, current: i32, desired: i32, up: &Rules, down: &Rules) -> i32 {
        let keep = up.stabilization.max(down.stabilization);
        self.recommendations.retain(|(at, _)| within(*at, now, keep));
        self.recommendations.push((now, desired));
        let mut up_recommendation = desired;
        let mut down_recommendation = desired;
        for (at, recommendation) in &self.recommendations {
            if within(*at, now, up.stabilization) || *at == now {
                up_recommendation = up_recommendation.min(*recommendation);
            }
            if within(*at, now, down.stabilization) || *at == now {
                down_recommendation = down_recommendation.max(*recommendation);
            }
        }
        current.max(up_recommendation).min(down_recommendation)
    }

    fn change_in(events: &[(Duration, i32)], now: Duration, period: Duration) -> i32 {
        events
            .iter()
            .filter(|(at, _)| within(*at, now, period))
            .map(|(_, change)| *change)
            .sum()
    }

    /// Bounds `desired` by `min`/`max` and the rate policies; returns the replicas to write and
    /// what limited them.
    pub fn limit(
        &self,
        now: Duration,
        current: i32,
        desired: i32,
        (min, max): (i32, i32),
        up: &Rules,
        down: &Rules,
    ) -> (i32, Limit) {
        if desired > current {
            let (rate_limit, policy) = self.scale_up_limit(now, current, up);
            let rate_limit = rate_limit.max(current);
            let (allowed, reason) = if max > rate_limit {
                let limit = match policy {
                    Some(policy) => Limit::ScaleUpPolicy(policy),
                    None => Limit::ScaleUpDisabled,
                };
                (rate_limit, limit)
            } else {
                (max, Limit::MaxReplicas)
            };
            if desired > allowed {
                return (allowed, reason);
            }
        } else if desired < current {
            let (rate_limit, policy) = self.scale_down_limit(now, current, down);
            let rate_limit = rate_limit.min(current);
            let (allowed, reason) = if min < rate_limit {
                let limit = match policy {
                    Some(policy) => Limit::ScaleDownPolicy(policy),
                    None => Limit::ScaleDownDisabled,
                };
                (rate_limit, limit)
            } else {
                (min, Limit::MinReplicas)
            };
            if desired < allowed {
                return (allowed, reason);
            }
        }
        (desired, Limit::None)
    }

    /// The replicas at the start of `period`: what the events within it changed, undone.
    fn period_start(&self, now: Duration, current: i32, period: Duration) -> i32 {
        current - Self::change_in(&self.scale_ups, now, period)
            + Self::change_in(&self.scale_downs, now, period)
    }

    fn scale_up_limit(&self, now: Duration, current: i32, rules: &Rules) -> (i32, Option<RatePolicy>) {
        if rules.select == SelectPolicy::Disabled {
            return (current, None);
        }
        let mut best: Option<(i32, RatePolicy)> = None;
        for policy in &rules.policies {
            let start = self.period_start(now, current, policy.period);
            let proposed = match policy.kind {
                ScalingPolicyType::Pods => start.saturating_add(policy.value),
                ScalingPolicyType::Percent => {
                    // Rounded up, or a small target would never grow.
                    let grown = (f64::from(start) * (1.0 + f64::from(policy.value) / 100.0)).ceil();
                    #[allow(clippy::cast_possible_truncation)]
                    let grown = grown.min(f64::from(i32::MAX)) as i32;
                    grown
                }
            };
            let better = match (&best, rules.select) {
                (None, _) => true,
                (Some((value, _)), SelectPolicy::Min) => proposed < *value,
                (Some((value, _)), _) => proposed > *value,
            };
            if better {
                best = Some((proposed, *policy));
            }
        }
        best.map_or((current, None), |(value, policy)| (value, Some(policy)))
    }

    fn scale_down_limit(&self, now: Duration, current: i32, rules: &Rules) -> (i32, Option<RatePolicy>) {
        if rules.select == SelectPolicy::Disabled {
            return (current, None);
        }
        let mut best: Option<(i32, RatePolicy)> = None;
        for policy in &rules.policies {
            let start = self.period_start(now, current, policy.period);
            let proposed = match policy.kind {
                ScalingPolicyType::Pods => start - policy.value,
                ScalingPolicyType::Percent => {
                    // Truncated, as the HPA does.
                    #[allow(clippy::cast_possible_truncation)]
                    let shrunk = (f64::from(start) * (1.0 - f64::from(policy.value) / 100.0)) as i32;
                    shrunk
                }
            };
            let better = match (&best, rules.select) {
                (None, _) => true,
                (Some((value, _)), SelectPolicy::Min) => proposed > *value,
                (Some((value, _)), _) => proposed < *value,
            };
            if better {
                best = Some((proposed, *policy));
            }
        }
        best.map_or((current, None), |(value, policy)| (value, Some(policy)))
    }

    /// Records a write of the target's replicas, for the rate policies.
    pub fn record_scale(&mut self, now: Duration, from: i32, to: i32) {
        // Policy periods are at most 30 minutes (the CRD's bound).
        let keep = Duration::from_secs(1800);
        self.scale_ups.retain(|(at, _)| within(*at, now, keep));
        self.scale_downs.retain(|(at, _)| within(*at, now, keep));
        if to > from {
            self.scale_ups.push((now, to - from));
        } else if to < from {
            self.scale_downs.push((now, from - to));
        }
    }
}

#[cfg(test)]
mod tests {
    use outrigger_api::autoscaling::ScalingPolicy;

    use super::*;

    fn rules(window: i32, select: SelectPolicy, policies: &[(ScalingPolicyType, i32, i32)]) -> Rules {
        let spec = ScalingRules {
            stabilization_window_seconds: Some(window),
            select_policy: select,
            policies: policies
                .iter()
                .map(|(policy_type, value, period_seconds)| ScalingPolicy {
                    policy_type: *policy_type,
                    value: *value,
                    period_seconds: *period_seconds,
                })
                .collect(),
        };
        Rules {
            stabilization: secs(window),
            ..scale_down(Some(&spec))
        }
    }

    fn at(seconds: u64) -> Duration {
        Duration::from_secs(1000 + seconds)
    }

    const BOUNDS: (i32, i32) = (1, 1000);

    #[test]
    fn scale_down_policies_pick_the_largest_or_smallest_change_as_in_the_hpa_documentation() {
        // behavior.scaleDown: policies Pods 4 / 60 s and Percent 10 / 60 s. With selectPolicy Max
        // 80 replicas first lose 8 (10%), and from 40 replicas down the Pods policy removes 4;
        // with Min the smaller change, 4 pods, applies at 80.
        use ScalingPolicyType::{Percent, Pods};
        let both = [(Pods, 4, 60), (Percent, 10, 60)];
        let up = scale_up(None);
        let cases = [
            (
                "Max at 80 removes 10%",
                SelectPolicy::Max,
                80,
                72,
                "scaleDown policy 10% per 60s",
            ),
            (
                "Max at 40: both remove 4",
                SelectPolicy::Max,
                40,
                36,
                "scaleDown policy 4 Pods per 60s",
            ),
            (
                "Max at 30 removes 4 pods",
                SelectPolicy::Max,
                30,
                26,
                "scaleDown policy 4 Pods per 60s",
            ),
            (
                "Min at 80 removes 4 pods",
                SelectPolicy::Min,
                80,
                76,
                "scaleDown policy 4 Pods per 60s",
            ),
            (
                "Min at 30 removes 10%",
                SelectPolicy::Min,
                30,
                27,
                "scaleDown policy 10% per 60s",
            ),
        ];
        for (name, select, current, expected, limited_by) in cases {
            let down = rules(0, select, &both);
            let (replicas, limit) = History::default().limit(at(0), current, 1, BOUNDS, &up, &down);
            assert_eq!(replicas, expected, "{name}");
            assert_eq!(limit.describe().as_deref(), Some(limited_by), "{name}");
        }
    }

    #[test]
    fn changes_within_a_period_count_against_its_policy() {
        // Pods 4 / 60 s: after removing 4 at t=0, nothing more until the minute is over.
        let down = rules(0, SelectPolicy::Max, &[(ScalingPolicyType::Pods, 4, 60)]);
        let up = scale_up(None);
        let mut history = History::default();
        history.record_scale(at(0), 20, 16);
        assert_eq!(history.limit(at(30), 16, 1, BOUNDS, &up, &down).0, 16);
        assert_eq!(history.limit(at(61), 16, 1, BOUNDS, &up, &down).0, 12);
    }

    #[test]
    fn default_scale_up_doubles_or_adds_four_pods_per_15_seconds() {
        let (up, down) = (scale_up(None), scale_down(None));
        let history = History::default();
        // From 1: +100% is 2, +4 pods is 5: Max picks 5. From 10: +100% is 20.
        assert_eq!(history.limit(at(0), 1, 50, BOUNDS, &up, &down).0, 5);
        assert_eq!(history.limit(at(0), 10, 50, BOUNDS, &up, &down).0, 20);
        assert_eq!(
            history.limit(at(0), 10, 15, BOUNDS, &up, &down),
            (15, Limit::None)
        );
        assert_eq!(
            history.limit(at(0), 10, 50, (1, 12), &up, &down),
            (12, Limit::MaxReplicas)
        );
        assert_eq!(
            history.limit(at(0), 10, 1, (3, 12), &up, &down),
            (3, Limit::MinReplicas)
        );
    }

    #[test]
    fn disabled_directions_never_move() {
        let disabled = rules(0, SelectPolicy::Disabled, &[]);
        let history = History::default();
        assert_eq!(
            history.limit(at(0), 5, 2, BOUNDS, &scale_up(None), &disabled),
            (5, Limit::ScaleDownDisabled)
        );
        assert_eq!(
            history.limit(at(0), 5, 9, BOUNDS, &disabled, &scale_down(None)),
            (5, Limit::ScaleUpDisabled)
        );
    }

    #[test]
    fn the_scale_down_window_keeps_the_highest_recent_recommendation() {
        // stabilizationWindowSeconds: 300 — a dip shorter than five minutes changes nothing.
        let (up, down) = (scale_up(None), scale_down(None));
        let mut history = History::default();
        let script = [
            (0, 10, 10),
            (60, 4, 10),
            (200, 6, 10),
            (299, 5, 10),
            (301, 5, 6),
            (501, 5, 5),
        ];
        for (second, desired, expected) in script {
            assert_eq!(
                history.stabilize(at(second), 10, desired, &up, &down),
                expected,
                "at {second}s desired {desired}"
            );
        }
    }

    #[test]
    fn the_scale_up_window_keeps_the_lowest_recent_recommendation() {
        let up = rules(60, SelectPolicy::Max, &[]);
        let down = rules(0, SelectPolicy::Max, &[]);
        let mut history = History::default();
        let script = [(0, 3, 3), (10, 8, 3), (50, 9, 3), (61, 9, 8), (71, 9, 9)];
        for (second, desired, expected) in script {
            assert_eq!(
                history.stabilize(at(second), 3, desired, &up, &down),
                expected,
                "at {second}s desired {desired}"
            );
        }
    }
}
