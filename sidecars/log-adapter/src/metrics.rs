//! Prometheus metrics: the tailer's counters, published after each look.

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::{Registry, Unit},
};

use crate::tail::Stats;

/// The adapter's metrics, registered under `log_adapter_`.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    lines: Counter,
    records: Counter,
    read_bytes: Counter,
    written_bytes: Counter,
    batches: Counter,
    parse_errors: Counter,
    truncated_lines: Counter,
    rotations: Counter,
    truncations: Counter,
    unreadable_files: Counter,
    sink_errors: Counter,
    checkpoint_errors: Counter,
    open_files: Gauge,
    last: Stats,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics::default();
        let registry = registry.sub_registry_with_prefix("log_adapter");
        registry.register("lines", "Lines read from log files", metrics.lines.clone());
        registry.register("records", "Records written to the sink", metrics.records.clone());
        registry.register_with_unit(
            "read",
            "Bytes read from log files",
            Unit::Bytes,
            metrics.read_bytes.clone(),
        );
        registry.register_with_unit(
            "written",
            "Bytes of records written to the sink",
            Unit::Bytes,
            metrics.written_bytes.clone(),
        );
        registry.register("batches", "Batches written to the sink", metrics.batches.clone());
        registry.register(
            "parse_errors",
            "Lines passed through unparsed",
            metrics.parse_errors.clone(),
        );
        registry.register(
            "truncated_lines",
            "Records cut at the line limit",
            metrics.truncated_lines.clone(),
        );
        registry.register(
            "rotations",
            "Files rotated away or deleted",
            metrics.rotations.clone(),
        );
        registry.register(
            "truncations",
            "Files truncated in place",
            metrics.truncations.clone(),
        );
        registry.register(
            "unreadable_files",
            "Files that could not be opened or read",
            metrics.unreadable_files.clone(),
        );
        registry.register(
            "sink_errors",
            "Failed batch writes (retried)",
            metrics.sink_errors.clone(),
        );
        registry.register(
            "checkpoint_errors",
            "Failed checkpoint writes",
            metrics.checkpoint_errors.clone(),
        );
        registry.register("open_files", "Log files open", metrics.open_files.clone());
        metrics
    }

    /// Adds what changed since the last call.
    pub fn publish(&mut self, stats: &Stats, open_files: usize) {
        let last = self.last;
        for (counter, now, before) in [
            (&self.lines, stats.lines, last.lines),
            (&self.records, stats.records, last.records),
            (&self.read_bytes, stats.bytes_read, last.bytes_read),
            (&self.written_bytes, stats.bytes_written, last.bytes_written),
            (&self.batches, stats.batches, last.batches),
            (&self.parse_errors, stats.parse_errors, last.parse_errors),
            (&self.truncated_lines, stats.truncated, last.truncated),
            (&self.rotations, stats.rotations, last.rotations),
            (&self.truncations, stats.truncations, last.truncations),
            (&self.unreadable_files, stats.unreadable, last.unreadable),
            (&self.sink_errors, stats.sink_errors, last.sink_errors),
            (
                &self.checkpoint_errors,
                stats.checkpoint_errors,
                last.checkpoint_errors,
            ),
        ] {
            counter.inc_by(now.saturating_sub(before));
        }
        self.open_files.set(i64::try_from(open_files).unwrap_or(i64::MAX));
        self.last = *stats;
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn published_stats_appear_as_counters_with_units() {
        let mut registry = Registry::default();
        let mut metrics = Metrics::register(&mut registry);
        let mut stats = Stats {
            lines: 5,
            bytes_read: 100,
            ..Stats::default()
        };
        metrics.publish(&stats, 2);
        stats.lines = 7;
        metrics.publish(&stats, 1);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(text.contains("log_adapter_lines_total 7"), "{text}");
        assert!(text.contains("log_adapter_read_bytes_total 100"), "{text}");
        assert!(text.contains("log_adapter_open_files 1"), "{text}");
    }
}
