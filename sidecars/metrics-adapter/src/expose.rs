//! Exposition: the Prometheus text format 0.0.4 or OpenMetrics 1.0, chosen by the scraper's
//! `Accept` header.

use std::fmt::Write;

use crate::model::{Family, Kind, Sample};

pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The wire format of a scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the scraper lists it with a non-zero weight, the text format otherwise.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            if parts.next() != Some("application/openmetrics-text") {
                continue;
            }
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f64>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            if !refused {
                return Format::OpenMetrics;
            }
        }
        Format::Text
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => TEXT_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// A family to write: name, help and type from `family`, samples from `parts` (several collectors
/// may contribute to one family, and a budget may cut one short).
#[derive(Debug, Clone)]
pub struct View<'a> {
    pub family: &'a Family,
    pub parts: Vec<&'a [Sample]>,
}

impl<'a> View<'a> {
    pub fn whole(family: &'a Family) -> View<'a> {
        View {
            family,
            parts: vec![&family.samples],
        }
    }
}

/// Writes `families` to `out` (cleared first, so a scrape can reuse its buffer).
pub fn encode(out: &mut String, views: &[View<'_>], format: Format) {
    out.clear();
    for view in views {
        let family = view.family;
        if view.parts.iter().all(|p| p.is_empty()) {
            continue;
        }
        let (name, kind) = match (format, family.kind) {
            // OpenMetrics names a counter family without the `_total` its samples carry; a counter
            // whose samples lack it is not a valid OpenMetrics counter, so it goes out as unknown.
            (Format::OpenMetrics, Kind::Counter) => match family.name.strip_suffix("_total") {
                Some(base) if view.parts.iter().all(|p| p.iter().all(|s| s.name == family.name)) => {
                    (base, "counter")
                }
                _ => (family.name.as_str(), "unknown"),
            },
            (Format::OpenMetrics, Kind::Untyped) => (family.name.as_str(), "unknown"),
            (_, kind) => (family.name.as_str(), kind.as_text()),
        };
        out.push_str("# HELP ");
        out.push_str(name);
        out.push(' ');
        escape_help(out, &family.help, format);
        out.push_str("\n# TYPE ");
        out.push_str(name);
        out.push(' ');
        out.push_str(kind);
        out.push('\n');
        for sample in view.parts.iter().flat_map(|p| p.iter()) {
            out.push_str(&sample.name);
            if !sample.labels.is_empty() {
                out.push('{');
                for (i, (label, value)) in sample.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(label);
                    out.push_str("=\"");
                    escape_label(out, value);
                    out.push('"');
                }
                out.push('}');
            }
            out.push(' ');
            write_value(out, sample.value);
            out.push('\n');
        }
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
}

fn escape_help(out: &mut String, help: &str, format: Format) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if format == Format::OpenMetrics => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

fn escape_label(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// Writes a sample value: integers without a fraction, `+Inf`, `-Inf`, `NaN` as both formats
/// spell them.
pub fn write_value(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        // Exact: the value is an integer well inside i64.
        #[allow(clippy::cast_possible_truncation)]
        let integer = value as i64;
        let _ = write!(out, "{integer}");
    } else {
        let _ = write!(out, "{value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn families() -> Vec<Family> {
        let mut requests = Family::new(
            "app_requests_total",
            "Requests \"served\"\nby route",
            Kind::Counter,
        );
        requests.push(vec![("route".into(), "/a\"b\\".into())], 3.0);
        let mut latency = Family::new("app_latency_seconds", "Latency", Kind::Histogram);
        for (le, n) in [("0.1", 1.0), ("+Inf", 2.0)] {
            latency.samples.push(Sample {
                name: "app_latency_seconds_bucket".into(),
                labels: vec![("le".into(), le.into())],
                value: n,
            });
        }
        latency.samples.push(Sample {
            name: "app_latency_seconds_sum".into(),
            labels: vec![],
            value: 0.25,
        });
        latency.samples.push(Sample {
            name: "app_latency_seconds_count".into(),
            labels: vec![],
            value: 2.0,
        });
        vec![
            requests,
            latency,
            Family::single("legacy_hits", "Hits", Kind::Counter, 1.0),
            Family::single("app_up", "Up", Kind::Gauge, f64::NAN),
        ]
    }

    #[test]
    fn text_format_keeps_counter_names_and_escapes_labels() {
        let families = families();
        let mut out = String::new();
        encode(
            &mut out,
            &families.iter().map(View::whole).collect::<Vec<_>>(),
            Format::Text,
        );
        assert!(out.starts_with(
            "# HELP app_requests_total Requests \"served\"\\nby route\n# TYPE app_requests_total counter\n\
             app_requests_total{route=\"/a\\\"b\\\\\"} 3\n"
        ), "{out}");
        assert!(out.contains("app_latency_seconds_bucket{le=\"+Inf\"} 2\napp_latency_seconds_sum 0.25\n"));
        assert!(out.contains("# TYPE legacy_hits counter\nlegacy_hits 1\n"));
        assert!(out.ends_with("app_up NaN\n"));
    }

    #[test]
    fn openmetrics_names_counter_families_without_total_and_ends_with_eof() {
        let families = families();
        let mut out = String::new();
        encode(
            &mut out,
            &families.iter().map(View::whole).collect::<Vec<_>>(),
            Format::OpenMetrics,
        );
        assert!(
            out.contains("# TYPE app_requests counter\napp_requests_total{"),
            "{out}"
        );
        assert!(
            out.contains("# HELP app_requests Requests \\\"served\\\"\\nby route\n"),
            "{out}"
        );
        assert!(out.contains("# TYPE legacy_hits unknown\n"), "{out}");
        assert!(out.ends_with("# EOF\n"));
    }

    #[test]
    fn openmetrics_is_chosen_only_when_the_scraper_accepts_it() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Text);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0")),
            Format::Text
        );
        assert_eq!(Format::negotiate(None), Format::Text);
    }

    #[test]
    fn values_print_as_integers_when_whole() {
        let mut out = String::new();
        for v in [1.0, -2.0, 0.5, 1.796e9, f64::INFINITY, 4e-6] {
            write_value(&mut out, v);
            out.push(' ');
        }
        assert_eq!(out, "1 -2 0.5 1796000000 +Inf 0.000004 ");
    }
}
