//! The canary rollout state machine: from the strategy, the previous progress and what was just
//! observed, the next progress — weights, mirroring, promotion, rollback. Pure: the controller
//! reads the observation (revisions, canary readiness, manual controls, analysis measurements),
//! calls [`next`], and applies the decision.

use std::time::Duration;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use outrigger_api::{
    rollout::{
        AnalysisResult, AnalysisSpec, AnalysisVerdict, CanaryStep, CanaryStrategy, PauseStep, RollbackPolicy,
        RolloutDecision, RolloutPhase, RolloutStatus, Strategy,
    },
    schema::parse_duration,
};

/// Annotation carrying a manual control: `promote`, `abort`, `pause` or `resume`.
pub const CONTROL_ANNOTATION: &str = "outrigger.dev/rollout";
/// Decisions kept in `status.rollout.history`.
pub const HISTORY_LIMIT: usize = 10;

/// A person's instruction, from [`CONTROL_ANNOTATION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Control {
    #[default]
    None,
    /// Skip the remaining steps and make the canary stable.
    Promote,
    /// Roll back now.
    Abort,
    /// Hold at the current step.
    Pause,
    /// Go on from a pause.
    Resume,
}

impl Control {
    pub fn parse(value: Option<&str>) -> Control {
        match value.map(str::trim) {
            Some("promote") => Control::Promote,
            Some("abort") => Control::Abort,
            Some("pause") => Control::Pause,
            Some("resume") => Control::Resume,
            _ => Control::None,
        }
    }
}

/// What the controller observed for this reconcile.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub now: Timestamp,
    /// Template hash the stable track runs (`None` before the first deployment).
    pub stable_revision: Option<String>,
    /// Template hash of the service's current spec.
    pub desired_revision: String,
    /// Ready replicas of the canary track once it has settled at the desired revision, all its
    /// replicas ready (0 before): nothing moves before then, and a weight moves only when the
    /// canary has the replicas to carry it.
    pub canary_ready_replicas: i32,
    /// The service's replica count.
    pub service_replicas: i32,
    /// The stable track runs its current template at the service's full replica count, all ready:
    /// it can carry all traffic.
    pub stable_ready: bool,
    pub control: Control,
    /// An analysis measurement taken since the previous reconcile, if one is due.
    pub measurement: Option<AnalysisResult>,
}

/// What the controller should make true.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub status: RolloutStatus,
    /// The desired revision becomes the stable one now (first deployment, or promotion).
    pub promote: bool,
    /// A canary track should exist.
    pub canary: bool,
    /// When to look again at the latest (a timed pause, an analysis interval, a rollback step).
    pub requeue_after: Option<Duration>,
}

impl Decision {
    /// Keep the canary track, promote nothing, and look again after `requeue_after` (or on the next
    /// change).
    fn hold(status: RolloutStatus, requeue_after: Option<Duration>) -> Decision {
        Decision {
            status,
            promote: false,
            canary: true,
            requeue_after,
        }
    }
}

/// Failed analysis (of a step or in the background): roll back, or pause for a person when
/// automatic rollback is off.
fn analysis_failed(
    strategy: &CanaryStrategy,
    mut status: RolloutStatus,
    observed: &Observation,
    reason: String,
) -> Decision {
    if strategy.rollback.automatic {
        status.phase = RolloutPhase::RollingBack;
        record(&mut status, observed.now, "Rollback", reason);
        return roll_back(strategy, status, observed, true);
    }
    status.phase = RolloutPhase::Paused;
    record(&mut status, observed.now, "Pause", reason);
    Decision::hold(status, None)
}

fn time(now: Timestamp) -> Time {
    Time(now)
}

fn elapsed(since: Option<&Time>, now: Timestamp) -> Duration {
    since.map_or(Duration::ZERO, |Time(start)| {
        Duration::try_from(now.duration_since(*start)).unwrap_or(Duration::ZERO)
    })
}

fn record(status: &mut RolloutStatus, now: Timestamp, decision: &str, reason: String) {
    status.history.push(RolloutDecision {
        at: time(now),
        step: status.current_step,
        decision: decision.to_owned(),
        reason: reason.clone(),
    });
    if status.history.len() > HISTORY_LIMIT {
        let excess = status.history.len() - HISTORY_LIMIT;
        status.history.drain(..excess);
    }
    status.message = Some(reason);
}

fn enter_step(status: &mut RolloutStatus, step: i32, now: Timestamp) {
    status.current_step = Some(step);
    status.step_started_at = Some(time(now));
    status.analysis_successes = 0;
    status.analysis_failures = 0;
    status.analysis_inconclusive = 0;
}

/// How long the previous version's replicas stay after promotion or rollback.
fn scale_down_delay(strategy: &CanaryStrategy) -> Duration {
    Duration::from_secs(u64::try_from(strategy.scale_down_delay_seconds).unwrap_or(0))
}

fn interval(analysis: &AnalysisSpec) -> Duration {
    parse_duration(&analysis.interval).unwrap_or(Duration::from_secs(10))
}

/// The canary steps a strategy runs. A canary runs as written. Blue-green runs as a canary that
/// mirrors all traffic to the new version while its pre-promotion analysis judges it, waits to be
/// promoted unless `autoPromotion` is set, then switches all traffic at once.
pub fn canary_plan(strategy: &Strategy) -> CanaryStrategy {
    match strategy {
        Strategy::Canary(canary) => canary.clone(),
        Strategy::BlueGreen(blue_green) => {
            let mut steps = Vec::new();
            if let Some(analysis) = &blue_green.pre_promotion_analysis {
                steps.extend([
                    CanaryStep::SetMirror(100),
                    CanaryStep::Analysis(analysis.clone()),
                    CanaryStep::SetMirror(0),
                ]);
            }
            if !blue_green.auto_promotion {
                steps.push(CanaryStep::Pause(PauseStep::default()));
            }
            steps.push(CanaryStep::SetWeight(100));
            CanaryStrategy {
                steps,
                routes: Vec::new(),
                analysis: None,
                rollback: RollbackPolicy::default(),
                scale_down_delay_seconds: blue_green.scale_down_delay_seconds,
            }
        }
    }
}

/// Computes the next step of a rollout.
pub fn next(strategy: &CanaryStrategy, previous: Option<&RolloutStatus>, observed: &Observation) -> Decision {
    let now = observed.now;
    let desired = observed.desired_revision.clone();
    // First deployment, or nothing to roll out: the desired template simply is stable.
    if observed.stable_revision.is_none() || observed.stable_revision.as_deref() == Some(desired.as_str()) {
        if let Some(promoted) = previous.filter(|p| {
            p.phase == RolloutPhase::Promoted && p.canary_revision.as_deref() == Some(desired.as_str())
        }) {
            return drain_after_promotion(strategy, promoted.clone(), observed);
        }
        let mut status = RolloutStatus {
            phase: RolloutPhase::Healthy,
            stable_revision: Some(desired.clone()),
            history: previous.map(|p| p.history.clone()).unwrap_or_default(),
            message: previous.and_then(|p| p.message.clone()),
            ..RolloutStatus::default()
        };
        if previous.is_some_and(|p| p.phase == RolloutPhase::Promoted) {
            status.phase = RolloutPhase::Promoted;
        }
        return Decision {
            status,
            promote: observed.stable_revision.is_none(),
            canary: false,
            requeue_after: None,
        };
    }

    let mut status = match previous {
        Some(previous) if previous.canary_revision.as_deref() == Some(desired.as_str()) => previous.clone(),
        // A new revision (or one replacing a canary in flight) starts at step 0.
        _ => {
            let mut status = RolloutStatus {
                phase: RolloutPhase::Progressing,
                stable_revision: observed.stable_revision.clone(),
                canary_revision: Some(desired.clone()),
                history: previous.map(|p| p.history.clone()).unwrap_or_default(),
                ..RolloutStatus::default()
            };
            enter_step(&mut status, 0, now);
            record(
                &mut status,
                now,
                "Start",
                format!(
                    "new revision {desired} replaces {}",
                    observed.stable_revision.clone().unwrap_or_default()
                ),
            );
            status
        }
    };

    // Manual controls come first.
    let mut rollback_starts = false;
    match observed.control {
        Control::Abort if !matches!(status.phase, RolloutPhase::RollingBack | RolloutPhase::Aborted) => {
            status.phase = RolloutPhase::RollingBack;
            rollback_starts = true;
            record(&mut status, now, "Abort", "aborted by a person".to_owned());
        }
        Control::Promote if !matches!(status.phase, RolloutPhase::RollingBack | RolloutPhase::Aborted) => {
            return promote(status, now, "promoted by a person".to_owned());
        }
        Control::Pause if status.phase == RolloutPhase::Progressing => {
            status.phase = RolloutPhase::Paused;
            record(&mut status, now, "Pause", "paused by a person".to_owned());
        }
        Control::Resume if status.phase == RolloutPhase::Paused => {
            status.phase = RolloutPhase::Progressing;
            let step = status.current_step.unwrap_or(0);
            // Resuming a pause without duration (or after failed analysis) moves past that step.
            let waiting_step = strategy.steps.get(usize::try_from(step).unwrap_or(0));
            if matches!(
                waiting_step,
                Some(CanaryStep::Pause(_)) | Some(CanaryStep::Analysis(_))
            ) {
                enter_step(&mut status, step + 1, now);
            }
            record(&mut status, now, "Resume", "resumed by a person".to_owned());
        }
        _ => {}
    }

    match status.phase {
        RolloutPhase::RollingBack => return roll_back(strategy, status, observed, rollback_starts),
        RolloutPhase::Aborted => {
            // Held at the stable revision until the template changes again.
            status.canary_weight = 0;
            status.mirror_percent = 0;
            let keep = elapsed(status.step_started_at.as_ref(), now) < scale_down_delay(strategy);
            return Decision {
                status,
                promote: false,
                canary: keep,
                requeue_after: keep.then(|| Duration::from_secs(1)),
            };
        }
        RolloutPhase::Paused => return Decision::hold(status, None),
        _ => {}
    }

    // Background analysis judges every step that is not an analysis step of its own.
    if let (Some(background), Some(measurement)) = (&strategy.analysis, &observed.measurement) {
        let step = strategy
            .steps
            .get(usize::try_from(status.current_step.unwrap_or(0)).unwrap_or(usize::MAX));
        if !matches!(step, Some(CanaryStep::Analysis(_))) {
            status.last_analysis = Some(measurement.clone());
            if measurement.verdict == AnalysisVerdict::Failed {
                status.analysis_failures += 1;
            }
            if status.analysis_failures >= background.failure_limit {
                let reason = format!("background analysis failed: {}", describe(measurement));
                return analysis_failed(strategy, status, observed, reason);
            }
        }
    }

    // Progressing: run steps until one has to wait.
    loop {
        let index = status.current_step.unwrap_or(0);
        let Some(step) = strategy.steps.get(usize::try_from(index).unwrap_or(usize::MAX)) else {
            return promote(status, now, "all steps passed".to_owned());
        };
        // Nothing moves before the canary's replicas are ready.
        if observed.canary_ready_replicas == 0 {
            status.message = Some("waiting for the canary replicas to be ready".to_owned());
            return Decision::hold(status, Some(Duration::from_secs(2)));
        }
        match step {
            CanaryStep::SetWeight(weight) => {
                // Traffic moves only onto replicas that are there: the canary first grows to its
                // size at the new weight (a blue-green preview to full size), then the weight moves.
                let needed = canary_size(observed.service_replicas, *weight);
                if *weight > status.canary_weight && observed.canary_ready_replicas < needed {
                    status.message = Some(format!(
                        "scaling the canary to {needed} replicas before it takes {weight}% of traffic"
                    ));
                    return Decision::hold(status, Some(Duration::from_secs(2)));
                }
                status.canary_weight = *weight;
                record(&mut status, now, "SetWeight", format!("canary weight {weight}%"));
                enter_step(&mut status, index + 1, now);
            }
            CanaryStep::SetMirror(percent) => {
                status.mirror_percent = *percent;
                record(
                    &mut status,
                    now,
                    "SetMirror",
                    format!("mirroring {percent}% to the canary"),
                );
                enter_step(&mut status, index + 1, now);
            }
            CanaryStep::Pause(pause) => match pause.duration.as_deref().map(parse_duration) {
                Some(Ok(duration)) => {
                    let waited = elapsed(status.step_started_at.as_ref(), now);
                    if waited < duration {
                        status.message = Some(format!("pausing for {duration:?}"));
                        let remaining = duration - waited;
                        return Decision::hold(
                            status,
                            Some(
                                strategy
                                    .analysis
                                    .as_ref()
                                    .map_or(remaining, |a| interval(a).min(remaining)),
                            ),
                        );
                    }
                    enter_step(&mut status, index + 1, now);
                }
                _ => {
                    status.phase = RolloutPhase::Paused;
                    record(
                        &mut status,
                        now,
                        "Pause",
                        format!("step {index}: waiting to be promoted or resumed"),
                    );
                    return Decision::hold(status, None);
                }
            },
            CanaryStep::Analysis(analysis) => {
                if let Some(measurement) = &observed.measurement {
                    match measurement.verdict {
                        AnalysisVerdict::Successful => {
                            status.analysis_successes += 1;
                            status.analysis_inconclusive = 0;
                        }
                        AnalysisVerdict::Failed => {
                            status.analysis_failures += 1;
                            status.analysis_inconclusive = 0;
                        }
                        AnalysisVerdict::Inconclusive => status.analysis_inconclusive += 1,
                    }
                    status.last_analysis = Some(measurement.clone());
                }
                let numbers = status.last_analysis.as_ref().map(describe).unwrap_or_default();
                if status.analysis_failures >= analysis.failure_limit {
                    let reason = format!("analysis failed: {numbers}");
                    return analysis_failed(strategy, status, observed, reason);
                }
                if status.analysis_inconclusive >= analysis.inconclusive_limit {
                    status.phase = RolloutPhase::Paused;
                    let reason = format!(
                        "analysis inconclusive {} times in a row: {numbers}",
                        status.analysis_inconclusive
                    );
                    record(&mut status, now, "Pause", reason);
                    return Decision::hold(status, None);
                }
                if status.analysis_successes >= analysis.count {
                    let reason = format!("{} successful measurements: {numbers}", status.analysis_successes);
                    record(&mut status, now, "AnalysisPassed", reason);
                    enter_step(&mut status, index + 1, now);
                    continue;
                }
                return Decision::hold(status, Some(interval(analysis)));
            }
        }
    }
}

/// Promotion: the canary's template becomes stable's. The canary keeps its share of traffic until
/// stable runs the promoted template everywhere, then drains (see [`drain_after_promotion`]).
fn promote(mut status: RolloutStatus, now: Timestamp, reason: String) -> Decision {
    status.phase = RolloutPhase::Promoted;
    status.mirror_percent = 0;
    status.stable_revision = status.canary_revision.clone();
    status.current_step = None;
    status.step_started_at = None;
    record(&mut status, now, "Promote", reason);
    Decision {
        status,
        promote: true,
        canary: true,
        requeue_after: Some(Duration::from_secs(2)),
    }
}

/// After promotion: wait for stable to run the promoted template, then move the canary's traffic
/// to stable, and remove the canary once its in-flight requests had `scaleDownDelaySeconds` to
/// finish.
fn drain_after_promotion(
    strategy: &CanaryStrategy,
    mut status: RolloutStatus,
    observed: &Observation,
) -> Decision {
    let now = observed.now;
    if status.step_started_at.is_none() {
        if !observed.stable_ready {
            status.message = Some("promoted; waiting for stable to run the promoted revision".to_owned());
            return Decision::hold(status, Some(Duration::from_secs(2)));
        }
        status.canary_weight = 0;
        status.step_started_at = Some(time(now));
        record(
            &mut status,
            now,
            "Drain",
            "stable runs the promoted revision; canary traffic moved to stable".to_owned(),
        );
    }
    let delay = scale_down_delay(strategy);
    let waited = elapsed(status.step_started_at.as_ref(), now);
    if waited < delay {
        return Decision::hold(status, Some(delay - waited));
    }
    status.canary_revision = None;
    status.step_started_at = None;
    Decision {
        status,
        promote: false,
        canary: false,
        requeue_after: None,
    }
}

/// One rollback step; `starting` when the rollback began in this very reconcile (the first step
/// down happens as soon as stable is back at full size, the next ones one interval apart).
fn roll_back(
    strategy: &CanaryStrategy,
    mut status: RolloutStatus,
    observed: &Observation,
    starting: bool,
) -> Decision {
    let now = observed.now;
    status.mirror_percent = 0;
    if status.canary_weight > 0 && !observed.stable_ready {
        // Traffic moves back only to a stable track that can carry it.
        status.message = Some("scaling stable back up before moving traffic back".to_owned());
        status.step_started_at = None;
        return Decision::hold(status, Some(Duration::from_secs(1)));
    }
    let step_interval = parse_duration(&strategy.rollback.step_interval).unwrap_or(Duration::from_secs(5));
    match strategy.rollback.step_percent {
        Some(step) if status.canary_weight > 0 => {
            // Gradually: one step per interval since the last change.
            let first = starting || status.step_started_at.is_none();
            if first || elapsed(status.step_started_at.as_ref(), now) >= step_interval {
                status.canary_weight = (status.canary_weight - step).max(0);
                status.step_started_at = Some(time(now));
            }
        }
        _ => status.canary_weight = 0,
    }
    if status.canary_weight == 0 {
        status.phase = RolloutPhase::Aborted;
        status.step_started_at = Some(time(now));
        let delay = scale_down_delay(strategy);
        return Decision {
            status,
            promote: false,
            canary: !delay.is_zero(),
            requeue_after: (!delay.is_zero()).then_some(delay),
        };
    }
    Decision::hold(status, Some(step_interval))
}

fn describe(result: &AnalysisResult) -> String {
    result
        .metrics
        .iter()
        .map(|m| {
            let value = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}"));
            format!(
                "{} canary {} vs stable {} ({}, {} requests)",
                m.name,
                value(m.canary),
                value(m.stable),
                m.threshold,
                m.canary_requests
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Replicas of the stable and canary tracks: the canary in proportion to its weight (at least one
/// while it exists), stable the rest — except while rolling back or after promotion, when stable
/// is back at full size before traffic moves to it. `upcoming` is a weight the rollout waits to
/// set (see [`upcoming_weight`]): the canary grows to it first, and stable shrinks only after.
pub fn replica_split(
    total: i32,
    status: Option<&RolloutStatus>,
    canary: bool,
    preview: Option<i32>,
    upcoming: Option<i32>,
) -> (i32, i32) {
    let Some(status) = status.filter(|_| canary) else {
        return (total, 0);
    };
    let weight = status.canary_weight.clamp(0, 100);
    let sized_for = upcoming.map_or(weight, |upcoming| upcoming.clamp(0, 100).max(weight));
    match (status.phase, preview) {
        (RolloutPhase::RollingBack | RolloutPhase::Aborted | RolloutPhase::Promoted, _) => {
            (total, canary_size(total, weight))
        }
        // Blue-green: the old version keeps every replica until the switch is over, and the new
        // one runs at its preview size until it is about to take all traffic.
        (_, Some(preview)) if sized_for < 100 => (total, preview.max(1)),
        (_, Some(_)) => (total, total),
        _ => (
            (total - total * weight / 100).max(if weight < 100 { 1 } else { 0 }),
            canary_size(total, sized_for),
        ),
    }
}

/// Replicas the canary needs to carry `weight` percent of the traffic of `total` (at least one).
pub fn canary_size(total: i32, weight: i32) -> i32 {
    ((total * weight.clamp(0, 100) + 99) / 100).max(1)
}

/// The weight of the step a progressing rollout waits at, when it raises the canary's share.
pub fn upcoming_weight(plan: &CanaryStrategy, status: &RolloutStatus) -> Option<i32> {
    if status.phase != RolloutPhase::Progressing {
        return None;
    }
    let step = plan.steps.get(usize::try_from(status.current_step?).ok()?)?;
    match step {
        CanaryStep::SetWeight(weight) if *weight > status.canary_weight => Some(*weight),
        _ => None,
    }
}

/// Replicas of the new version before a blue-green switch (`previewReplicas`, by default the
/// service's); `None` for a canary, whose replicas follow its weight.
pub fn preview_replicas(strategy: &Strategy, service_replicas: i32) -> Option<i32> {
    match strategy {
        Strategy::Canary(_) => None,
        Strategy::BlueGreen(blue_green) => Some(blue_green.preview_replicas.unwrap_or(service_replicas)),
    }
}

#[cfg(test)]
mod tests {
    use outrigger_api::rollout::MetricMeasurement;
    use serde_json::json;

    use super::*;

    fn strategy(steps: serde_json::Value) -> CanaryStrategy {
        serde_json::from_value(json!({"steps": steps, "scaleDownDelaySeconds": 0})).unwrap()
    }

    fn observe(now: i64, stable: &str, desired: &str) -> Observation {
        Observation {
            now: Timestamp::from_second(1_000_000 + now).unwrap(),
            stable_revision: Some(stable.to_owned()),
            desired_revision: desired.to_owned(),
            // Ready enough for any weight; the growth before a weight moves has its own test.
            canary_ready_replicas: 10,
            service_replicas: 10,
            stable_ready: true,
            control: Control::None,
            measurement: None,
        }
    }

    fn measurement(verdict: AnalysisVerdict) -> AnalysisResult {
        AnalysisResult {
            verdict,
            measured_at: Time(Timestamp::UNIX_EPOCH),
            metrics: vec![MetricMeasurement {
                name: "success-rate".into(),
                canary: Some(80.0),
                stable: Some(100.0),
                canary_requests: 100,
                threshold: "min 99".into(),
                verdict,
            }],
        }
    }

    #[test]
    fn first_deployment_and_unchanged_templates_are_simply_stable() {
        let s = strategy(json!([{"setWeight": 10}]));
        let mut first = observe(0, "", "a");
        first.stable_revision = None;
        let decision = next(&s, None, &first);
        assert!(decision.promote && !decision.canary);
        assert_eq!(decision.status.phase, RolloutPhase::Healthy);
        let decision = next(&s, Some(&decision.status), &observe(1, "a", "a"));
        assert!(!decision.promote && !decision.canary);
    }

    #[test]
    fn a_healthy_canary_walks_every_step_and_is_promoted() {
        let s = strategy(
            json!([{"setWeight": 10}, {"pause": {"duration": "30s"}}, {"setWeight": 50}, {"pause": {"duration": "10s"}}]),
        );
        let d = next(&s, None, &observe(0, "a", "b"));
        assert_eq!(
            (d.status.phase, d.status.canary_weight, d.status.current_step),
            (RolloutPhase::Progressing, 10, Some(1))
        );
        assert_eq!(d.requeue_after, Some(Duration::from_secs(30)));
        let d = next(&s, Some(&d.status), &observe(20, "a", "b"));
        assert_eq!(d.status.canary_weight, 10, "still pausing");
        assert_eq!(d.requeue_after, Some(Duration::from_secs(10)));
        let d = next(&s, Some(&d.status), &observe(30, "a", "b"));
        assert_eq!((d.status.canary_weight, d.status.current_step), (50, Some(3)));
        let d = next(&s, Some(&d.status), &observe(40, "a", "b"));
        assert!(
            d.promote && d.canary,
            "the canary serves until stable runs its template"
        );
        assert_eq!(d.status.phase, RolloutPhase::Promoted);
        assert_eq!(d.status.stable_revision.as_deref(), Some("b"));
        assert_eq!(d.status.canary_weight, 50);
        let mut rolling = observe(41, "b", "b");
        rolling.stable_ready = false;
        let d = next(&s, Some(&d.status), &rolling);
        assert!(!d.promote && d.canary);
        assert_eq!(
            d.status.canary_weight, 50,
            "stable is still replacing its replicas"
        );
        let d = next(&s, Some(&d.status), &observe(42, "b", "b"));
        assert!(
            !d.canary,
            "no scale-down delay: the canary goes once its traffic moved"
        );
        assert_eq!(
            (d.status.phase, d.status.canary_weight),
            (RolloutPhase::Promoted, 0)
        );
        let d = next(&s, Some(&d.status), &observe(43, "b", "b"));
        assert!(!d.canary && !d.promote);
        let decisions: Vec<_> = d.status.history.iter().map(|h| h.decision.as_str()).collect();
        assert_eq!(decisions, ["Start", "SetWeight", "SetWeight", "Promote", "Drain"]);
    }

    #[test]
    fn nothing_moves_until_the_canary_is_ready() {
        let s = strategy(json!([{"setWeight": 10}]));
        let mut observed = observe(0, "a", "b");
        observed.canary_ready_replicas = 0;
        let d = next(&s, None, &observed);
        assert_eq!((d.status.canary_weight, d.status.current_step), (0, Some(0)));
        assert!(d.canary);
    }

    #[test]
    fn failed_analysis_rolls_back_and_explains_with_numbers() {
        let s = strategy(
            json!([{"setWeight": 20}, {"analysis": {"interval": "5s", "metrics": [{"name": "success-rate", "type": "successRate", "min": 99}]}}]),
        );
        let d = next(&s, None, &observe(0, "a", "b"));
        assert_eq!(d.requeue_after, Some(Duration::from_secs(5)));
        let mut observed = observe(5, "a", "b");
        observed.measurement = Some(measurement(AnalysisVerdict::Failed));
        let d = next(&s, Some(&d.status), &observed);
        assert_eq!(
            (d.status.phase, d.status.canary_weight),
            (RolloutPhase::Aborted, 0)
        );
        assert!(!d.promote && !d.canary);
        let rollback = d
            .status
            .history
            .iter()
            .find(|h| h.decision == "Rollback")
            .unwrap();
        assert!(
            rollback
                .reason
                .contains("canary 80.00 vs stable 100.00 (min 99, 100 requests)"),
            "{}",
            rollback.reason
        );
    }

    #[test]
    fn gradual_rollback_steps_the_weight_down_with_stable_at_full_size() {
        let mut s = strategy(
            json!([{"setWeight": 60}, {"analysis": {"metrics": [{"name": "success-rate", "type": "successRate", "min": 99}]}}]),
        );
        s.rollback.step_percent = Some(25);
        s.rollback.step_interval = "2s".into();
        let d = next(&s, None, &observe(0, "a", "b"));
        let mut observed = observe(1, "a", "b");
        observed.measurement = Some(measurement(AnalysisVerdict::Failed));
        let d = next(&s, Some(&d.status), &observed);
        assert_eq!(
            (d.status.phase, d.status.canary_weight),
            (RolloutPhase::RollingBack, 35)
        );
        assert_eq!(
            replica_split(4, Some(&d.status), d.canary, None, None),
            (4, 2),
            "stable is back at full size first"
        );
        let d = next(&s, Some(&d.status), &observe(2, "a", "b"));
        assert_eq!(d.status.canary_weight, 35, "one step per interval");
        let d = next(&s, Some(&d.status), &observe(3, "a", "b"));
        assert_eq!(d.status.canary_weight, 10);
        let d = next(&s, Some(&d.status), &observe(5, "a", "b"));
        assert_eq!(
            (d.status.phase, d.status.canary_weight),
            (RolloutPhase::Aborted, 0)
        );
    }

    #[test]
    fn an_abort_moves_traffic_back_only_once_stable_is_back_at_full_size() {
        let s = strategy(json!([{"setWeight": 40}, {"pause": {}}]));
        let d = next(&s, None, &observe(0, "a", "b"));
        assert_eq!(replica_split(5, Some(&d.status), d.canary, None, None), (3, 2));
        let mut abort = observe(1, "a", "b");
        abort.control = Control::Abort;
        abort.stable_ready = false;
        let d = next(&s, Some(&d.status), &abort);
        assert_eq!(
            (d.status.phase, d.status.canary_weight),
            (RolloutPhase::RollingBack, 40)
        );
        assert_eq!(
            replica_split(5, Some(&d.status), d.canary, None, None),
            (5, 2),
            "stable scales up first"
        );
        let mut scaling = observe(2, "a", "b");
        scaling.stable_ready = false;
        let d = next(&s, Some(&d.status), &scaling);
        assert_eq!(d.status.canary_weight, 40);
        let d = next(&s, Some(&d.status), &observe(3, "a", "b"));
        assert_eq!(
            (d.status.phase, d.status.canary_weight),
            (RolloutPhase::Aborted, 0)
        );
    }

    #[test]
    fn inconclusive_analysis_pauses_for_a_person_and_resume_goes_on() {
        let s = strategy(
            json!([{"analysis": {"inconclusiveLimit": 2, "metrics": [{"name": "success-rate", "type": "successRate", "min": 99}]}}, {"setWeight": 30}]),
        );
        let mut status = next(&s, None, &observe(0, "a", "b")).status;
        for second in 1..=2 {
            let mut observed = observe(second, "a", "b");
            observed.measurement = Some(measurement(AnalysisVerdict::Inconclusive));
            status = next(&s, Some(&status), &observed).status;
        }
        assert_eq!(status.phase, RolloutPhase::Paused);
        let mut observed = observe(3, "a", "b");
        observed.control = Control::Resume;
        let d = next(&s, Some(&status), &observed);
        assert!(
            d.promote,
            "resuming skips the analysis step, and the last step promotes"
        );
    }

    #[test]
    fn manual_abort_promote_and_pause() {
        let s = strategy(json!([{"setWeight": 10}, {"pause": {}}]));
        let paused = next(&s, None, &observe(0, "a", "b")).status;
        assert_eq!(
            paused.phase,
            RolloutPhase::Paused,
            "a pause without duration waits for a person"
        );

        let mut promote = observe(1, "a", "b");
        promote.control = Control::Promote;
        assert!(next(&s, Some(&paused), &promote).promote);

        let mut abort = observe(1, "a", "b");
        abort.control = Control::Abort;
        let d = next(&s, Some(&paused), &abort);
        assert_eq!(
            (d.status.phase, d.status.canary_weight),
            (RolloutPhase::Aborted, 0)
        );

        let s = strategy(json!([{"setWeight": 10}, {"pause": {"duration": "1m"}}]));
        let progressing = next(&s, None, &observe(0, "a", "b")).status;
        let mut pause = observe(1, "a", "b");
        pause.control = Control::Pause;
        let d = next(&s, Some(&progressing), &pause);
        assert_eq!(d.status.phase, RolloutPhase::Paused);
    }

    #[test]
    fn a_new_revision_during_a_rollout_starts_over() {
        let s = strategy(json!([{"setWeight": 10}, {"pause": {}}]));
        let status = next(&s, None, &observe(0, "a", "b")).status;
        let d = next(&s, Some(&status), &observe(1, "a", "c"));
        assert_eq!(d.status.canary_revision.as_deref(), Some("c"));
        assert_eq!(d.status.current_step, Some(1));
    }

    #[test]
    fn blue_green_mirrors_for_its_analysis_waits_to_be_promoted_then_switches_at_once() {
        let strategy: Strategy = serde_json::from_value(json!({"blueGreen": {
            "prePromotionAnalysis": {"metrics": [{"name": "success-rate", "type": "successRate", "min": 99}]},
        }}))
        .unwrap();
        let plan = canary_plan(&strategy);
        let kinds: Vec<_> = plan
            .steps
            .iter()
            .map(|step| match step {
                CanaryStep::SetMirror(p) => format!("mirror {p}"),
                CanaryStep::Analysis(_) => "analysis".to_owned(),
                CanaryStep::Pause(_) => "pause".to_owned(),
                CanaryStep::SetWeight(w) => format!("weight {w}"),
            })
            .collect();
        assert_eq!(
            kinds,
            ["mirror 100", "analysis", "mirror 0", "pause", "weight 100"]
        );
        let automatic: Strategy =
            serde_json::from_value(json!({"blueGreen": {"autoPromotion": true}})).unwrap();
        assert!(matches!(
            canary_plan(&automatic).steps.as_slice(),
            [CanaryStep::SetWeight(100)]
        ));
    }

    #[test]
    fn traffic_moves_only_once_the_canary_has_grown_to_carry_it() {
        let s = strategy(json!([{"setWeight": 20}, {"setWeight": 100}]));
        let at = |now, ready| {
            let mut observed = observe(now, "a", "b");
            observed.canary_ready_replicas = ready;
            observed
        };
        let split = |d: &Decision| {
            let upcoming = upcoming_weight(&s, &d.status);
            replica_split(10, Some(&d.status), d.canary, None, upcoming)
        };
        let d = next(&s, None, &at(0, 1));
        assert_eq!(d.status.canary_weight, 0, "one replica cannot carry 20%");
        assert_eq!(split(&d), (10, 2), "the canary grows first");
        let d = next(&s, Some(&d.status), &at(1, 2));
        assert_eq!((d.status.canary_weight, d.status.current_step), (20, Some(1)));
        assert_eq!(split(&d), (8, 10), "stable shrinks only after the weight moved");
        let d = next(&s, Some(&d.status), &at(2, 9));
        assert_eq!(d.status.canary_weight, 20);
        let d = next(&s, Some(&d.status), &at(3, 10));
        assert!(d.promote);

        // Blue-green: the preview grows to full size before the switch.
        let blue_green: Strategy =
            serde_json::from_value(json!({"blueGreen": {"autoPromotion": true, "previewReplicas": 2}}))
                .unwrap();
        let plan = canary_plan(&blue_green);
        let mut observed = observe(0, "a", "b");
        observed.service_replicas = 4;
        observed.canary_ready_replicas = 2;
        let d = next(&plan, None, &observed);
        assert_eq!(d.status.canary_weight, 0);
        let upcoming = upcoming_weight(&plan, &d.status);
        assert_eq!(upcoming, Some(100));
        assert_eq!(
            replica_split(4, Some(&d.status), d.canary, Some(2), upcoming),
            (4, 4)
        );
        observed.canary_ready_replicas = 4;
        let d = next(&plan, Some(&d.status), &observed);
        assert!(d.promote && d.status.canary_weight == 100);
    }

    #[test]
    fn background_analysis_rolls_back_during_a_pause() {
        let s: CanaryStrategy = serde_json::from_value(json!({
            "steps": [{"setWeight": 20}, {"pause": {"duration": "10m"}}],
            "analysis": {"interval": "5s", "metrics": [{"name": "success-rate", "type": "successRate", "min": 99}]},
            "scaleDownDelaySeconds": 0,
        }))
        .unwrap();
        let d = next(&s, None, &observe(0, "a", "b"));
        assert_eq!(
            d.requeue_after,
            Some(Duration::from_secs(5)),
            "measured while pausing"
        );
        let mut passing = observe(5, "a", "b");
        passing.measurement = Some(measurement(AnalysisVerdict::Successful));
        let d = next(&s, Some(&d.status), &passing);
        assert_eq!(
            (d.status.phase, d.status.canary_weight),
            (RolloutPhase::Progressing, 20)
        );
        let mut failing = observe(10, "a", "b");
        failing.measurement = Some(measurement(AnalysisVerdict::Failed));
        let d = next(&s, Some(&d.status), &failing);
        assert_eq!(
            (d.status.phase, d.status.canary_weight),
            (RolloutPhase::Aborted, 0)
        );
        assert!(d
            .status
            .message
            .unwrap()
            .starts_with("background analysis failed"));
    }

    #[test]
    fn history_is_bounded() {
        let mut status = RolloutStatus::default();
        for n in 0..25 {
            record(&mut status, Timestamp::UNIX_EPOCH, "SetWeight", n.to_string());
        }
        assert_eq!(status.history.len(), HISTORY_LIMIT);
        assert_eq!(status.history[0].reason, "15");
    }

    #[test]
    fn replicas_follow_the_weight() {
        let status = |weight, phase| RolloutStatus {
            canary_weight: weight,
            phase,
            ..RolloutStatus::default()
        };
        let cases = [
            (10, 0, RolloutPhase::Progressing, true, None, (10, 1)),
            (10, 10, RolloutPhase::Progressing, true, None, (9, 1)),
            (10, 50, RolloutPhase::Progressing, true, None, (5, 5)),
            (4, 30, RolloutPhase::Progressing, true, None, (3, 2)),
            (10, 100, RolloutPhase::Progressing, true, None, (0, 10)),
            (10, 30, RolloutPhase::RollingBack, true, None, (10, 3)),
            (10, 30, RolloutPhase::Progressing, false, None, (10, 0)),
            // Blue-green: full size on both sides until the switch is over.
            (4, 0, RolloutPhase::Progressing, true, Some(4), (4, 4)),
            (4, 0, RolloutPhase::Paused, true, Some(2), (4, 2)),
            (4, 0, RolloutPhase::Progressing, true, Some(0), (4, 1)),
            (4, 100, RolloutPhase::Progressing, true, Some(2), (4, 4)),
            (4, 100, RolloutPhase::Promoted, true, Some(2), (4, 4)),
            (4, 0, RolloutPhase::Aborted, true, Some(4), (4, 1)),
            (4, 0, RolloutPhase::Progressing, false, Some(4), (4, 0)),
        ];
        for (total, weight, phase, canary, preview, expected) in cases {
            assert_eq!(
                replica_split(total, Some(&status(weight, phase)), canary, preview, None),
                expected,
                "{total} {weight} {phase:?} {preview:?}"
            );
        }
    }
}
