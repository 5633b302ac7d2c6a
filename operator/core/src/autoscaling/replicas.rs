//! The replica calculation of the Kubernetes HPA (`replica_calculator.go`): from one metric's
//! values and target, the replicas that metric asks for. `desired = ceil(current × value / target)`
//! within a tolerance, with pods missing metrics and pods not yet ready set aside and filled in the
//! direction that dampens the change.

/// How a pod counts in a per-pod calculation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PodState {
    /// Running and ready.
    Ready,
    /// Running but not (yet) ready: its value is set aside, and counted as 0 on a scale-up.
    Unready,
    /// Pending, failed or being deleted: not counted at all.
    #[default]
    Ignored,
}

/// One pod's value of a per-pod metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PodValue {
    pub state: PodState,
    /// The measured value, `None` when the pod has none (a missing metric).
    pub value: Option<f64>,
    /// With a `Utilization` target: the pod's request of the resource.
    pub request: Option<f64>,
}

/// One metric as the calculation needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricInput {
    /// Per-pod values against an average value per pod (`AverageValue`), or against a percent of
    /// the pods' requests (`Utilization`, then `target` is that percent).
    PerPod {
        pods: Vec<PodValue>,
        target: f64,
        utilization: bool,
    },
    /// One value for the whole target against a `Value` (`ceil(ready × value / target)`, like an
    /// HPA Object metric) or an `AverageValue` (`ceil(value / target)`, like an External metric).
    Whole {
        value: f64,
        target: f64,
        average: bool,
        ready_pods: i32,
    },
}

/// The replicas one metric asks for, and the value it saw (the average or utilization for per-pod
/// metrics, computed from the pods with metrics, before any filling in).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recommendation {
    pub replicas: i32,
    pub value: f64,
}

/// Why a metric gives no recommendation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    #[error("no ready pod has a value")]
    NoReadyPodMetrics,
    #[error("a pod has no request for the resource, so its utilization is unknown")]
    MissingRequest,
    /// Not a failure of the metric: the target's pods are starting (or all unready).
    #[error("no ready pods")]
    NoReadyPods,
    /// Not a failure either: the sources answer, but have not been watched for a whole rate
    /// window yet.
    #[error("the rate window is still filling")]
    WindowFilling,
    #[error("the target is not positive")]
    BadTarget,
    #[error("{0}")]
    Unavailable(String),
}

fn ceil_replicas(value: f64) -> i32 {
    // A ratio such as 0.3 / 0.1 lands a hair above the whole number it means; that hair must not
    // add a replica.
    let ceiled = (value - 1e-9).ceil();
    if ceiled >= f64::from(i32::MAX) {
        i32::MAX
    } else if ceiled <= 0.0 {
        0
    } else {
        // In range and whole: the cast is exact.
        #[allow(clippy::cast_possible_truncation)]
        let replicas = ceiled as i32;
        replicas
    }
}

/// The replicas `input` asks for, given `current` replicas and the `tolerance` (0.1 for 10%).
pub fn recommend(input: &MetricInput, current: i32, tolerance: f64) -> Result<Recommendation, MetricError> {
    match input {
        MetricInput::PerPod {
            pods,
            target,
            utilization,
        } => per_pod(pods, *target, *utilization, current, tolerance),
        MetricInput::Whole {
            value,
            target,
            average,
            ready_pods,
        } => whole(*value, *target, *average, *ready_pods, current, tolerance),
    }
}

/// `(value, request)` of the pods counted in a ratio.
type Counted = Vec<(f64, Option<f64>)>;

/// The usage ratio of `counted` against the target, and the value shown (average or utilization).
fn ratio(counted: &Counted, target: f64, utilization: bool) -> Result<(f64, f64), MetricError> {
    let sum: f64 = counted.iter().map(|(value, _)| value).sum();
    if utilization {
        let requests = counted
            .iter()
            .map(|(_, request)| request.filter(|r| *r > 0.0))
            .sum::<Option<f64>>()
            .ok_or(MetricError::MissingRequest)?;
        let percent = sum * 100.0 / requests;
        Ok((percent / target, percent))
    } else {
        #[allow(clippy::cast_precision_loss)] // pod counts are far below 2^52
        let average = sum / counted.len() as f64;
        Ok((average / target, average))
    }
}

fn per_pod(
    pods: &[PodValue],
    target: f64,
    utilization: bool,
    current: i32,
    tolerance: f64,
) -> Result<Recommendation, MetricError> {
    if target <= 0.0 {
        return Err(MetricError::BadTarget);
    }
    let mut counted: Counted = Vec::new();
    let mut missing = Vec::new();
    let mut unready = Vec::new();
    for pod in pods {
        match (pod.state, pod.value) {
            (PodState::Ignored, _) => {}
            (_, None) => missing.push(pod),
            (PodState::Unready, Some(_)) => unready.push(pod),
            (PodState::Ready, Some(value)) => counted.push((value, pod.request)),
        }
    }
    if counted.is_empty() {
        if !pods.iter().any(|pod| pod.state == PodState::Ready) {
            return Err(MetricError::NoReadyPods);
        }
        return Err(MetricError::NoReadyPodMetrics);
    }
    let ready_count = i32::try_from(counted.len()).unwrap_or(i32::MAX);
    let (usage_ratio, value) = ratio(&counted, target, utilization)?;
    let rebalance_unready = !unready.is_empty() && usage_ratio > 1.0;
    if !rebalance_unready && missing.is_empty() {
        if (1.0 - usage_ratio).abs() <= tolerance {
            return Ok(Recommendation {
                replicas: current,
                value,
            });
        }
        return Ok(Recommendation {
            replicas: ceil_replicas(usage_ratio * f64::from(ready_count)),
            value,
        });
    }
    // Missing pods count as at target (100% of their request for utilization) on a scale-down and
    // as 0 on a scale-up; unready pods count as 0 on a scale-up. Both dampen the change.
    for pod in &missing {
        let filled = match (usage_ratio < 1.0, utilization) {
            (true, true) => pod.request.unwrap_or(0.0),
            (true, false) => target,
            (false, _) => 0.0,
        };
        counted.push((filled, pod.request));
    }
    if rebalance_unready {
        counted.extend(unready.iter().map(|pod| (0.0, pod.request)));
    }
    let (new_ratio, _) = ratio(&counted, target, utilization)?;
    if (1.0 - new_ratio).abs() <= tolerance
        || (usage_ratio < 1.0 && new_ratio > 1.0)
        || (usage_ratio > 1.0 && new_ratio < 1.0)
    {
        // Too small a change, or the filling in turned the direction around.
        return Ok(Recommendation {
            replicas: current,
            value,
        });
    }
    #[allow(clippy::cast_precision_loss)]
    let replicas = ceil_replicas(new_ratio * counted.len() as f64);
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(Recommendation {
            replicas: current,
            value,
        });
    }
    Ok(Recommendation { replicas, value })
}

fn whole(
    value: f64,
    target: f64,
    average: bool,
    ready_pods: i32,
    current: i32,
    tolerance: f64,
) -> Result<Recommendation, MetricError> {
    if target <= 0.0 {
        return Err(MetricError::BadTarget);
    }
    let unchanged = Recommendation {
        replicas: current,
        value,
    };
    if average {
        if current > 0 && (1.0 - value / (target * f64::from(current))).abs() <= tolerance {
            return Ok(unchanged);
        }
        return Ok(Recommendation {
            replicas: ceil_replicas(value / target),
            value,
        });
    }
    let usage_ratio = value / target;
    if current == 0 {
        return Ok(Recommendation {
            replicas: ceil_replicas(usage_ratio),
            value,
        });
    }
    if (1.0 - usage_ratio).abs() <= tolerance {
        return Ok(unchanged);
    }
    if ready_pods <= 0 {
        // The value is known, but not how many pods produce it: no change until one is ready.
        return Err(MetricError::NoReadyPods);
    }
    Ok(Recommendation {
        replicas: ceil_replicas(usage_ratio * f64::from(ready_pods)),
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOLERANCE: f64 = 0.1;

    fn ready(value: f64) -> PodValue {
        PodValue {
            state: PodState::Ready,
            value: Some(value),
            request: Some(1.0),
        }
    }

    fn unready(value: f64) -> PodValue {
        PodValue {
            state: PodState::Unready,
            ..ready(value)
        }
    }

    fn missing() -> PodValue {
        PodValue {
            value: None,
            ..ready(0.0)
        }
    }

    fn average(pods: Vec<PodValue>, target: f64) -> MetricInput {
        MetricInput::PerPod {
            pods,
            target,
            utilization: false,
        }
    }

    #[test]
    fn replicas_follow_the_ratio_of_value_to_target_as_in_the_hpa_documentation() {
        // "if the current metric value is 200m, and the desired value is 100m, the number of
        // replicas will be doubled [...] If the current value is instead 50m, you'll halve".
        let cases: Vec<(&str, MetricInput, i32, i32)> = vec![
            (
                "200m against 100m doubles",
                average(vec![ready(0.2); 2], 0.1),
                2,
                4,
            ),
            (
                "50m against 100m halves",
                average(vec![ready(0.05); 4], 0.1),
                4,
                2,
            ),
            (
                "within the 0.1 tolerance nothing changes",
                average(vec![ready(0.108); 3], 0.1),
                3,
                3,
            ),
            (
                "just beyond the tolerance scales",
                average(vec![ready(0.12); 3], 0.1),
                3,
                4,
            ),
            (
                "an uneven load averages over the ready pods",
                average(vec![ready(30.0), ready(10.0)], 10.0),
                2,
                4,
            ),
            (
                "pending or deleted pods are not counted",
                average(
                    vec![
                        ready(20.0),
                        PodValue {
                            state: PodState::Ignored,
                            ..missing()
                        },
                    ],
                    10.0,
                ),
                2,
                2,
            ),
        ];
        for (name, input, current, expected) in cases {
            assert_eq!(
                recommend(&input, current, TOLERANCE).map(|r| r.replicas),
                Ok(expected),
                "{name}"
            );
        }
    }

    #[test]
    fn missing_and_unready_pods_dampen_the_change_as_in_the_hpa_documentation() {
        // Missing metrics count as 0 on a scale-up and as the target on a scale-down; unready pods
        // count as 0 on a scale-up; a change of direction after filling in means no change.
        let cases: Vec<(&str, Vec<PodValue>, i32, i32)> = vec![
            // Ratio 2 over 2 pods; with 2 missing at 0 the average is 10/10: no change.
            (
                "scale-up with missing pods counted as 0",
                vec![ready(20.0), ready(20.0), missing(), missing()],
                4,
                4,
            ),
            // 30,30 → ratio 3; missing at 0: (60/3)/10 = 2 → ceil(2×3) = 6.
            (
                "scale-up reduced by a missing pod",
                vec![ready(30.0), ready(30.0), missing()],
                3,
                6,
            ),
            // 2,2 → ratio 0.2; missing at target: (14/3)/10 → ceil(0.47×3) = 2.
            (
                "scale-down with a missing pod at target",
                vec![ready(2.0), ready(2.0), missing()],
                3,
                2,
            ),
            // 30 ready → ratio 3; unready at 0: 30/2/10 = 1.5 → 3.
            (
                "scale-up with an unready pod at 0",
                vec![ready(30.0), unready(50.0)],
                2,
                3,
            ),
            // Scale-down: an unready pod is just left out: ratio 0.2 over 1 pod.
            (
                "scale-down ignores unready pods",
                vec![ready(2.0), unready(50.0)],
                2,
                1,
            ),
            // 12 → ratio 1.2, with two missing at 0: 4/10 → direction flips: no change.
            (
                "filling in that flips the direction changes nothing",
                vec![ready(12.0), missing(), missing()],
                3,
                3,
            ),
        ];
        for (name, pods, current, expected) in cases {
            assert_eq!(
                recommend(&average(pods, 10.0), current, TOLERANCE).map(|r| r.replicas),
                Ok(expected),
                "{name}"
            );
        }
    }

    #[test]
    fn utilization_is_usage_over_requests_in_percent() {
        let pod = |usage: f64, request: Option<f64>| PodValue {
            state: PodState::Ready,
            value: Some(usage),
            request,
        };
        let input = MetricInput::PerPod {
            pods: vec![pod(0.4, Some(0.5)), pod(0.6, Some(0.5))],
            target: 50.0,
            utilization: true,
        };
        // 1.0 / 1.0 = 100% against 50%: double.
        assert_eq!(
            recommend(&input, 2, TOLERANCE),
            Ok(Recommendation {
                replicas: 4,
                value: 100.0
            })
        );
        let no_request = MetricInput::PerPod {
            pods: vec![pod(0.4, None)],
            target: 50.0,
            utilization: true,
        };
        assert_eq!(
            recommend(&no_request, 1, TOLERANCE),
            Err(MetricError::MissingRequest)
        );
    }

    #[test]
    fn whole_target_values_scale_like_object_and_external_metrics() {
        let value = |value: f64, target: f64, ready_pods: i32| MetricInput::Whole {
            value,
            target,
            average: false,
            ready_pods,
        };
        let per_replica = |value: f64, target: f64| MetricInput::Whole {
            value,
            target,
            average: true,
            ready_pods: 3,
        };
        let cases: Vec<(&str, MetricInput, i32, Result<i32, MetricError>)> = vec![
            (
                "value twice the target over 3 ready pods",
                value(500.0, 250.0, 3),
                3,
                Ok(6),
            ),
            ("value within tolerance", value(260.0, 250.0, 3), 3, Ok(3)),
            (
                "no ready pods",
                value(500.0, 250.0, 0),
                3,
                Err(MetricError::NoReadyPods),
            ),
            (
                "average value: total over target",
                per_replica(1000.0, 100.0),
                3,
                Ok(10),
            ),
            (
                "average value within tolerance",
                per_replica(310.0, 100.0),
                3,
                Ok(3),
            ),
            (
                "no ready pod has a value",
                average(vec![missing()], 1.0),
                1,
                Err(MetricError::NoReadyPodMetrics),
            ),
        ];
        for (name, input, current, expected) in cases {
            assert_eq!(
                recommend(&input, current, TOLERANCE).map(|r| r.replicas),
                expected,
                "{name}"
            );
        }
    }
}
