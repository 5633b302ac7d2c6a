//! Prometheus metrics: the tailer's counters, published after each look, and the sink's write
//! latency and lag, observed after each batch. Labels are fixed sets: `format` (the parsers'
//! names) and `result` (`ok`, `error`).

use outrigger_sidecar_runtime::metrics::{histogram_family, Buckets, ResultLabels};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::{
    parse::Format,
    sink::http::HttpSinkMetrics,
    tail::{Flushed, Gauges, Stats},
};

/// `format`: the format a line was taken for.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FormatLabels {
    pub format: &'static str,
}

/// The adapter's metrics, registered under `log_adapter_` (the binary's registry adds
/// `outrigger_`).
#[derive(Debug, Clone)]
pub struct Metrics {
    lines: Counter,
    records: Counter,
    records_written: Counter,
    read_bytes: Counter,
    written_bytes: Counter,
    batches: Counter,
    parse_errors: Family<FormatLabels, Counter>,
    truncated_lines: Counter,
    rotations: Counter,
    truncations: Counter,
    unreadable_files: Counter,
    sink_errors: Counter,
    checkpoint_errors: Counter,
    open_files: Gauge,
    bytes_behind: Gauge,
    sink_write: Family<ResultLabels, Histogram, Buckets>,
    sink_lag: Gauge<f64, std::sync::atomic::AtomicU64>,
    http: HttpSinkMetrics,
    last: Stats,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            lines: Counter::default(),
            records: Counter::default(),
            records_written: Counter::default(),
            read_bytes: Counter::default(),
            written_bytes: Counter::default(),
            batches: Counter::default(),
            parse_errors: Family::default(),
            truncated_lines: Counter::default(),
            rotations: Counter::default(),
            truncations: Counter::default(),
            unreadable_files: Counter::default(),
            sink_errors: Counter::default(),
            checkpoint_errors: Counter::default(),
            open_files: Gauge::default(),
            bytes_behind: Gauge::default(),
            sink_write: histogram_family(SINK_WRITE_SECONDS),
            sink_lag: Gauge::default(),
            http: HttpSinkMetrics::default(),
            last: Stats::default(),
        }
    }
}

/// Buckets of a batch write, in seconds: 1 ms (stdout) to a minute (an HTTP sink retrying).
const SINK_WRITE_SECONDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics::default();
        let registry = registry.sub_registry_with_prefix("log_adapter");
        registry.register("lines", "Lines read from log files", metrics.lines.clone());
        registry.register(
            "records",
            "Records made from the lines (stack traces join several lines)",
            metrics.records.clone(),
        );
        registry.register(
            "records_written",
            "Records the sink acknowledged",
            metrics.records_written.clone(),
        );
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
            "Lines passed through unparsed, by the format they were taken for",
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
        registry.register_with_unit(
            "behind",
            "Bytes of the open files the sink has not acknowledged yet",
            Unit::Bytes,
            metrics.bytes_behind.clone(),
        );
        registry.register_with_unit(
            "sink_write_duration",
            "Time to hand a batch to the sink, retries within the sink included, by result (ok, error)",
            Unit::Seconds,
            metrics.sink_write.clone(),
        );
        registry.register_with_unit(
            "sink_lag",
            "From reading the oldest record of the last acknowledged batch to its acknowledgment",
            Unit::Seconds,
            metrics.sink_lag.clone(),
        );
        metrics.http.register_into(registry);
        metrics
    }

    /// The HTTP sink's counters, registered with these.
    pub fn http_sink(&self) -> HttpSinkMetrics {
        self.http.clone()
    }

    /// Adds what changed since the last call and sets the gauges.
    pub fn publish(&mut self, stats: &Stats, gauges: Gauges) {
        let last = self.last;
        for (counter, now, before) in [
            (&self.lines, stats.lines, last.lines),
            (&self.records, stats.records, last.records),
            (&self.records_written, stats.records_written, last.records_written),
            (&self.read_bytes, stats.bytes_read, last.bytes_read),
            (&self.written_bytes, stats.bytes_written, last.bytes_written),
            (&self.batches, stats.batches, last.batches),
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
        for format in Format::ALL {
            let (now, before) = (
                stats.parse_errors_by_format[format.index()],
                last.parse_errors_by_format[format.index()],
            );
            if now > before {
                self.parse_errors
                    .get_or_create(&FormatLabels {
                        format: format.name(),
                    })
                    .inc_by(now - before);
            }
        }
        self.open_files
            .set(i64::try_from(gauges.open_files).unwrap_or(i64::MAX));
        self.bytes_behind
            .set(i64::try_from(gauges.bytes_behind).unwrap_or(i64::MAX));
        self.last = *stats;
    }

    /// Records one batch write.
    pub fn observe_flush(&self, flushed: &Flushed) {
        let result = if flushed.ok { "ok" } else { "error" };
        self.sink_write
            .get_or_create(&ResultLabels { result })
            .observe(flushed.took.as_secs_f64());
        if let Some(lag) = flushed.lag {
            self.sink_lag.set(lag.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
        stats.parse_errors_by_format[Format::Json.index()] = 2;
        metrics.publish(
            &stats,
            Gauges {
                open_files: 2,
                bytes_behind: 10,
            },
        );
        stats.lines = 7;
        stats.parse_errors_by_format[Format::Json.index()] = 3;
        metrics.publish(
            &stats,
            Gauges {
                open_files: 1,
                bytes_behind: 0,
            },
        );
        metrics.observe_flush(&Flushed {
            took: Duration::from_millis(3),
            ok: true,
            lag: Some(Duration::from_millis(1500)),
        });
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for sample in [
            "log_adapter_lines_total 7",
            "log_adapter_read_bytes_total 100",
            "log_adapter_open_files 1",
            "log_adapter_behind_bytes 0",
            "log_adapter_parse_errors_total{format=\"json\"} 3",
            "log_adapter_sink_write_duration_seconds_count{result=\"ok\"} 1",
            "log_adapter_sink_lag_seconds 1.5",
        ] {
            assert!(text.contains(sample), "{sample} in {text}");
        }
    }
}
