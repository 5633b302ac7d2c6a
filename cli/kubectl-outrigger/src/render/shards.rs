//! `shards`: a ShardedService's shard map, every shard's readiness, and how evenly the clients'
//! sharding ambassadors spread their traffic (their `/metrics`).

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use outrigger_api::ShardedService;

use super::{
    conditions,
    text::{age, bar, field, fit, heading, number, optional, Table},
    wire_name,
};

/// What one client pod's ambassador reported.
#[derive(Debug, Clone, PartialEq)]
pub struct AmbassadorReport {
    pub pod: String,
    /// Its metrics, or why they could not be read.
    pub metrics: Result<AmbassadorMetrics, String>,
}

/// The figures of an ambassador's `/metrics` this view shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AmbassadorMetrics {
    /// `outrigger_sharding_key_skew_ratio`: the busiest shard's operations over the mean.
    pub skew: Option<f64>,
    /// `outrigger_sharding_shard_operations_total`, summed over results, by shard.
    pub operations: BTreeMap<String, f64>,
    /// `outrigger_sharding_shard_map_shards`.
    pub map_shards: Option<f64>,
}

/// Reads the figures out of a Prometheus text exposition.
pub fn parse_ambassador_metrics(exposition: &str) -> AmbassadorMetrics {
    let mut metrics = AmbassadorMetrics::default();
    for line in exposition.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        match name {
            "outrigger_sharding_key_skew_ratio" => metrics.skew = Some(value),
            "outrigger_sharding_shard_map_shards" => metrics.map_shards = Some(value),
            "outrigger_sharding_shard_operations_total" => {
                if let Some(shard) = label(labels, "shard") {
                    *metrics.operations.entry(shard).or_default() += value;
                }
            }
            _ => {}
        }
    }
    metrics
}

/// The value of label `name` in `a="x",b="y"` (values in these metrics hold no quotes or commas).
fn label(labels: &str, name: &str) -> Option<String> {
    labels.split(',').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key.trim() == name).then(|| value.trim().trim_matches('"').to_owned())
    })
}

/// Everything `shards` shows.
#[derive(Debug, Clone)]
pub struct ShardsView<'a> {
    pub service: &'a ShardedService,
    pub ambassadors: &'a [AmbassadorReport],
    pub now: Timestamp,
    pub width: usize,
}

pub fn render(view: &ShardsView<'_>) -> String {
    let ShardsView {
        service,
        ambassadors,
        now,
        width,
    } = *view;
    let name = service.metadata.name.as_deref().unwrap_or("?");
    let status = service.status.clone().unwrap_or_default();
    let spec = &service.spec;
    let mut out = String::new();
    out += &field("Name", name, width);
    out += &field(
        "Namespace",
        service.metadata.namespace.as_deref().unwrap_or("default"),
        width,
    );
    out += &field(
        "Shards",
        &format!(
            "{} desired, {} exist, {} ready; the shard map routes over {}",
            spec.shards, status.shards, status.ready_shards, status.ring_shards
        ),
        width,
    );
    out += &field(
        "Replicas",
        &format!(
            "{} per shard, {}/{} ready in all",
            spec.replicas_per_shard, status.ready_replicas, status.replicas
        ),
        width,
    );
    let mut sharding = format!(
        "{} over {} ({}), {} port {}",
        wire_name(&spec.sharding.function),
        wire_name(&spec.sharding.hash),
        match &spec.sharding.hash_tag {
            Some(tag) => format!("hash tag {tag}"),
            None => "no hash tag".to_owned(),
        },
        wire_name(&spec.protocol),
        spec.port
    );
    if wire_name(&spec.sharding.function) == "ketama" {
        sharding += &format!(", {} points per shard", spec.sharding.virtual_nodes);
    }
    out += &field("Sharding", &sharding, width);
    out += &field("Conditions", &conditions(&status.conditions), width);
    if let Some(reshard) = &status.resharding {
        let since = reshard
            .migration_started_at
            .as_ref()
            .map(|t| format!(", started {} ago", age(t, now)))
            .unwrap_or_default();
        #[allow(clippy::cast_precision_loss)]
        let progress = bar(reshard.elapsed_seconds as f64, reshard.window_seconds as f64, 20);
        out += &field(
            "Resharding",
            &format!(
                "{} -> {} shards, {:?} {progress} {}s of {}s window{since}",
                reshard.from_shards,
                reshard.to_shards,
                reshard.phase,
                reshard.elapsed_seconds,
                reshard.window_seconds
            ),
            width,
        );
    }

    let mut totals: BTreeMap<&str, f64> = BTreeMap::new();
    for report in ambassadors {
        if let Ok(m) = &report.metrics {
            for (shard, ops) in &m.operations {
                *totals.entry(shard.as_str()).or_default() += ops;
            }
        }
    }
    let all: f64 = totals.values().sum();

    out += &heading("Shard map");
    let mut table = Table::new(&["SHARD", "READY", "PRIMARY", "OPERATIONS", "SHARE", ""]);
    for shard in &status.shard_statuses {
        let ops = totals.get(shard.name.as_str()).copied();
        let share = ops.filter(|_| all > 0.0).map(|o| o / all * 100.0);
        table.row(vec![
            shard.name.clone(),
            format!("{}/{}", shard.ready_replicas, shard.replicas),
            optional(shard.primary.as_deref()),
            optional(ops.map(number)),
            optional(share.map(|s| format!("{s:.1}%"))),
            share.map(|s| bar(s, 100.0, 20)).unwrap_or_default(),
        ]);
    }
    if status.shard_statuses.is_empty() {
        out += "  no shard reported yet\n";
    } else {
        out += &table.render(2, width);
    }

    out += &heading("Key skew by client ambassador (busiest shard over the mean; 1.00 is even)");
    if ambassadors.is_empty() {
        out += &fit(
            &format!("  no client pod names this service (annotation outrigger.dev/sharded-service: {name})"),
            width,
        );
        out.push('\n');
        return out;
    }
    let mut table = Table::new(&["POD", "SKEW", "SHARDS IN MAP", "OPERATIONS", "NOTE"]);
    for report in ambassadors {
        match &report.metrics {
            Ok(m) => table.row(vec![
                report.pod.clone(),
                optional(m.skew.map(|s| format!("{s:.2}"))),
                optional(m.map_shards.map(number)),
                number(m.operations.values().sum()),
                match m.skew {
                    Some(s) if s >= 1.5 => "uneven: look for hot keys".to_owned(),
                    Some(_) => String::new(),
                    None => "no traffic yet".to_owned(),
                },
            ]),
            Err(error) => table.row(vec![
                report.pod.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                format!("unreadable: {error}"),
            ]),
        }
    }
    out += &table.render(2, width);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_gives_skew_map_size_and_operations_per_shard() {
        let text = "# HELP x\n\
            outrigger_sharding_shard_operations_total{shard=\"c-0\",result=\"ok\"} 10\n\
            outrigger_sharding_shard_operations_total{result=\"error\",shard=\"c-0\"} 2\n\
            outrigger_sharding_shard_operations_total{shard=\"c-1\",result=\"ok\"} 6\n\
            outrigger_sharding_key_skew_ratio 1.5\n\
            outrigger_sharding_shard_map_shards 2\n\
            garbage line\n";
        let m = parse_ambassador_metrics(text);
        assert_eq!(m.skew, Some(1.5));
        assert_eq!(m.map_shards, Some(2.0));
        assert_eq!(m.operations.get("c-0"), Some(&12.0));
        assert_eq!(m.operations.get("c-1"), Some(&6.0));
    }
}
