//! `get rollout`: a ReplicatedService's rollout, with its strategy's steps, the traffic split, the
//! last analysis against its thresholds and the decisions taken.

use k8s_openapi::jiff::Timestamp;
use outrigger_api::{
    rollout::{AnalysisSpec, CanaryStep, RolloutPhase, RolloutStatus, Strategy},
    ReplicatedService, RolloutStrategy,
};

use super::{
    conditions,
    text::{age, bar, field, fit, heading, number, optional, Table},
};

/// Everything `get rollout` shows, as read from the cluster.
#[derive(Debug, Clone)]
pub struct RolloutView<'a> {
    pub service: &'a ReplicatedService,
    /// The strategy the service names, when it exists.
    pub strategy: Option<&'a RolloutStrategy>,
    pub now: Timestamp,
    /// Terminal width: no line is longer.
    pub width: usize,
}

const BAR_CELLS: usize = 40;

/// The whole view as text.
pub fn render(view: &RolloutView<'_>) -> String {
    let RolloutView {
        service,
        strategy,
        now,
        width,
    } = *view;
    let name = service.metadata.name.as_deref().unwrap_or("?");
    let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
    let status = service.status.clone().unwrap_or_default();
    let rollout = status.rollout.clone();
    let mut out = String::new();
    out += &field("Name", name, width);
    out += &field("Namespace", namespace, width);
    let phase = rollout.as_ref().map_or(RolloutPhase::Healthy, |r| r.phase);
    out += &field("Status", &phase_line(phase), width);
    if let Some(message) = rollout.as_ref().and_then(|r| r.message.as_deref()) {
        out += &field("Message", message, width);
    }
    let strategy_name = service
        .spec
        .rollout_strategy_ref
        .as_ref()
        .map(|r| r.name.as_str());
    let kind = match strategy.map(|s| &s.spec.strategy) {
        Some(Strategy::Canary(_)) => "Canary",
        Some(Strategy::BlueGreen(_)) => "BlueGreen",
        None => "-",
    };
    out += &field(
        "Strategy",
        &match strategy_name {
            Some(n) if strategy.is_some() => format!("{kind} ({n})"),
            Some(n) => format!("{n} (not found)"),
            None => "none: every change is a plain Deployment update".to_owned(),
        },
        width,
    );
    out += &field(
        "Replicas",
        &format!(
            "{} desired, {} ready, {} updated",
            service.spec.replicas, status.ready_replicas, status.updated_replicas
        ),
        width,
    );
    out += &field("Conditions", &conditions(&status.conditions), width);
    let Some(rollout) = rollout else {
        out += "\nNo rollout has run yet: change the template (e.g. its image) to start one.\n";
        return out;
    };
    out += &field(
        "Revisions",
        &format!(
            "stable {}, canary {}",
            optional(rollout.stable_revision.as_deref()),
            optional(rollout.canary_revision.as_deref())
        ),
        width,
    );

    out += &heading("Traffic");
    let stable = 100 - rollout.canary_weight;
    out += &fit(
        &format!(
            "  stable {stable:>3}% {} canary {:>3}%",
            bar(f64::from(stable), 100.0, BAR_CELLS),
            rollout.canary_weight
        ),
        width,
    );
    out.push('\n');
    out += &fit(
        &format!(
            "  mirror {:>3}% of requests copied to the canary (clients see stable's answers)",
            rollout.mirror_percent
        ),
        width,
    );
    out.push('\n');

    let steps = match strategy.map(|s| &s.spec.strategy) {
        Some(Strategy::Canary(canary)) => canary.steps.as_slice(),
        _ => &[],
    };
    if !steps.is_empty() {
        out += &render_steps(steps, &rollout, now, width);
    }
    out += &render_analysis(steps, &rollout, now, width);
    out += &render_history(&rollout, now, width);
    out
}

fn phase_line(phase: RolloutPhase) -> String {
    let what = match phase {
        RolloutPhase::Healthy => "Healthy (stable serves everything)",
        RolloutPhase::Progressing => "Progressing",
        RolloutPhase::Paused => "Paused (`kubectl outrigger resume` or `promote` to go on)",
        RolloutPhase::RollingBack => "RollingBack (traffic moving back to stable)",
        RolloutPhase::Aborted => "Aborted (the canary was rolled back)",
        RolloutPhase::Promoted => "Promoted (the canary became stable)",
    };
    what.to_owned()
}

fn describe_step(step: &CanaryStep) -> String {
    match step {
        CanaryStep::SetWeight(w) => format!("setWeight {w}%"),
        CanaryStep::SetMirror(m) => format!("setMirror {m}%"),
        CanaryStep::Pause(p) => match &p.duration {
            Some(d) => format!("pause {d}"),
            None => "pause (until promoted)".to_owned(),
        },
        CanaryStep::Analysis(a) => {
            let metrics: Vec<&str> = a.metrics.iter().map(|m| m.name.as_str()).collect();
            format!(
                "analysis every {} x{} ({})",
                a.interval,
                a.count,
                metrics.join(", ")
            )
        }
    }
}

fn render_steps(steps: &[CanaryStep], rollout: &RolloutStatus, now: Timestamp, width: usize) -> String {
    #[allow(clippy::cast_sign_loss)]
    let current = rollout.current_step.map(|s| s.max(0) as usize);
    let finished = matches!(rollout.phase, RolloutPhase::Healthy | RolloutPhase::Promoted)
        && current.is_none_or(|c| c >= steps.len());
    let done = match (finished, current) {
        (true, _) => steps.len(),
        (false, Some(c)) => c.min(steps.len()),
        (false, None) => 0,
    };
    let mut out = heading(&format!("Steps ({done}/{} done)", steps.len()));
    #[allow(clippy::cast_precision_loss)]
    let progress = bar(done as f64, steps.len() as f64, BAR_CELLS);
    out += &format!("  {progress}\n");
    let mut table = Table::new(&["", "#", "STEP", "STATE"]);
    for (i, step) in steps.iter().enumerate() {
        let (mark, state) = if i < done {
            ("x", "done".to_owned())
        } else if Some(i) == current && !finished {
            let since = rollout
                .step_started_at
                .as_ref()
                .map(|t| format!(" for {}", age(t, now)))
                .unwrap_or_default();
            let state = match rollout.phase {
                RolloutPhase::Paused => format!("paused{since}"),
                RolloutPhase::RollingBack | RolloutPhase::Aborted => "rolled back from here".to_owned(),
                _ => format!("running{since}"),
            };
            (">", state)
        } else {
            (" ", String::new())
        };
        table.row(vec![
            format!("[{mark}]"),
            i.to_string(),
            describe_step(step),
            state,
        ]);
    }
    out += &table.render(2, width);
    out
}

fn render_analysis(steps: &[CanaryStep], rollout: &RolloutStatus, now: Timestamp, width: usize) -> String {
    let Some(last) = &rollout.last_analysis else {
        return String::new();
    };
    let mut out = heading(&format!(
        "Analysis ({:?}, measured {} ago)",
        last.verdict,
        age(&last.measured_at, now)
    ));
    let spec: Option<&AnalysisSpec> = rollout
        .current_step
        .and_then(|i| usize::try_from(i).ok())
        .and_then(|i| steps.get(i))
        .and_then(|step| match step {
            CanaryStep::Analysis(a) => Some(a),
            _ => None,
        });
    let tally = match spec {
        Some(a) => format!(
            "  this step: {} of {} successful, {} failed (limit {}), {} inconclusive in a row (limit {})\n",
            rollout.analysis_successes,
            a.count,
            rollout.analysis_failures,
            a.failure_limit,
            rollout.analysis_inconclusive,
            a.inconclusive_limit
        ),
        None => format!(
            "  successful {}, failed {}, inconclusive in a row {}\n",
            rollout.analysis_successes, rollout.analysis_failures, rollout.analysis_inconclusive
        ),
    };
    out += &fit(tally.trim_end(), width);
    out.push('\n');
    let mut table = Table::new(&["METRIC", "CANARY", "STABLE", "THRESHOLD", "REQUESTS", "VERDICT"]);
    for m in &last.metrics {
        table.row(vec![
            m.name.clone(),
            optional(m.canary.map(number)),
            optional(m.stable.map(number)),
            m.threshold.clone(),
            m.canary_requests.to_string(),
            format!("{:?}", m.verdict),
        ]);
    }
    out += &table.render(2, width);
    out
}

fn render_history(rollout: &RolloutStatus, now: Timestamp, width: usize) -> String {
    if rollout.history.is_empty() {
        return String::new();
    }
    let mut out = heading("History (oldest first)");
    let mut table = Table::new(&["AGE", "STEP", "DECISION", "REASON"]);
    for decision in &rollout.history {
        table.row(vec![
            age(&decision.at, now),
            optional(decision.step),
            decision.decision.clone(),
            decision.reason.clone(),
        ]);
    }
    out += &table.render_wrapped(2, width);
    out
}
