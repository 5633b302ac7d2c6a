//! `scaling`: an AutoscalingPolicy's metrics against their targets and its recent decisions.

use k8s_openapi::jiff::Timestamp;
use outrigger_api::{autoscaling::MetricValue, AutoscalingPolicy};

use super::{
    conditions,
    text::{age, field, heading, optional, Table},
    wire_name,
};

/// Everything `scaling` shows.
#[derive(Debug, Clone)]
pub struct ScalingView<'a> {
    pub policy: &'a AutoscalingPolicy,
    pub now: Timestamp,
    pub width: usize,
}

pub fn render(view: &ScalingView<'_>) -> String {
    let ScalingView { policy, now, width } = *view;
    let spec = &policy.spec;
    let status = policy.status.clone().unwrap_or_default();
    let mut out = String::new();
    out += &field("Name", policy.metadata.name.as_deref().unwrap_or("?"), width);
    out += &field(
        "Namespace",
        policy.metadata.namespace.as_deref().unwrap_or("default"),
        width,
    );
    out += &field(
        "Target",
        &format!(
            "{}/{} ({})",
            spec.scale_target_ref.kind.as_str(),
            spec.scale_target_ref.name,
            wire_name(&spec.scale_target_ref.dimension)
        ),
        width,
    );
    out += &field(
        "Replicas",
        &format!(
            "{} now, {} wanted (min {}, max {})",
            status.current_replicas, status.desired_replicas, spec.min_replicas, spec.max_replicas
        ),
        width,
    );
    out += &field(
        "Last scale",
        &status
            .last_scale_time
            .as_ref()
            .map_or_else(|| "never".to_owned(), |t| format!("{} ago", age(t, now))),
        width,
    );
    out += &field("Conditions", &conditions(&status.conditions), width);

    out += &heading("Metrics (last poll)");
    if status.current_metrics.is_empty() {
        out += "  none read yet\n";
    } else {
        out += &metrics_table(&status.current_metrics).render(2, width);
    }

    out += &heading("Decisions (newest first)");
    if status.decisions.is_empty() {
        out += "  no change of replicas yet\n";
        return out;
    }
    let mut table = Table::new(&[
        "AGE",
        "CHANGE",
        "REASON",
        "RAW",
        "STABILIZED",
        "LIMITED BY",
        "METRICS",
    ]);
    for d in &status.decisions {
        let metrics: Vec<String> = d
            .metrics
            .iter()
            .map(|m| {
                format!(
                    "{} {}/{}",
                    wire_name(&m.metric_type),
                    if m.value.is_empty() { "?" } else { &m.value },
                    m.target
                )
            })
            .collect();
        table.row(vec![
            age(&d.at, now),
            format!("{} -> {}", d.from_replicas, d.to_replicas),
            d.reason.clone(),
            optional(d.raw_recommendation),
            optional(d.stabilized_recommendation),
            optional(d.limited_by.as_deref()),
            metrics.join(", "),
        ]);
    }
    out += &table.render_wrapped(2, width);
    out
}

fn metrics_table(metrics: &[MetricValue]) -> Table {
    let mut table = Table::new(&["METRIC", "VALUE", "TARGET", "WANTS", "ERROR"]);
    for m in metrics {
        table.row(vec![
            wire_name(&m.metric_type),
            if m.value.is_empty() {
                "-".to_owned()
            } else {
                m.value.clone()
            },
            if m.target.is_empty() {
                "-".to_owned()
            } else {
                m.target.clone()
            },
            optional(m.replicas),
            m.error.clone().unwrap_or_default(),
        ]);
    }
    table
}
