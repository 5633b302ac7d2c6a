//! Canary analysis from the request splitters' own metrics: parse their Prometheus text, take the
//! difference between two scrapes (one analysis interval), and judge the canary against the
//! thresholds and against stable over the same interval. Pure.

use std::collections::BTreeMap;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use outrigger_api::rollout::{
    AnalysisMetric, AnalysisMetricType, AnalysisResult, AnalysisSpec, AnalysisVerdict, MetricMeasurement,
};

/// Backend names the operator gives the tracks in the splitter configuration.
pub const STABLE: &str = "stable";
pub const CANARY: &str = "canary";

/// Traffic counters of one backend: requests by status class and a latency histogram.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackendCounters {
    pub requests: f64,
    pub errors: f64,
    /// Cumulative latency buckets: upper bound in seconds → count.
    pub latency_buckets: Vec<(f64, f64)>,
}

/// What one scrape of every splitter pod adds up to, per backend: live traffic, and mirrored
/// (shadow) traffic for experiments.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub live: BTreeMap<String, BackendCounters>,
    pub shadow: BTreeMap<String, BackendCounters>,
    /// Values of `prometheus` metrics at the time of the snapshot, by metric name.
    pub external: BTreeMap<String, f64>,
}

/// The value of a Prometheus instant query (`/api/v1/query`): a scalar, or a vector of exactly one
/// sample.
pub fn prometheus_value(body: &str) -> Result<f64, String> {
    let answer: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    if answer["status"] != "success" {
        return Err(format!(
            "the query failed: {}",
            answer["error"].as_str().unwrap_or("no error message")
        ));
    }
    let data = &answer["data"];
    let value = match data["resultType"].as_str() {
        Some("scalar") => &data["result"][1],
        Some("vector") => match data["result"].as_array().map(Vec::as_slice) {
            Some([sample]) => &sample["value"][1],
            Some(samples) => return Err(format!("the query returned {} samples, not one", samples.len())),
            None => return Err("no result".to_owned()),
        },
        other => return Err(format!("result type {other:?}; expected scalar or vector")),
    };
    value
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .ok_or_else(|| format!("{value} is not a finite number"))
}

fn labels(text: &str) -> BTreeMap<&str, &str> {
    text.split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.trim(), value.trim().trim_matches('"')))
        .collect()
}

/// The upper bound of a histogram bucket sample (`le`, with `+Inf`).
fn bucket_bound(labels: &BTreeMap<&str, &str>) -> Option<f64> {
    labels.get("le").and_then(|le| {
        if *le == "+Inf" {
            Some(f64::INFINITY)
        } else {
            le.parse().ok()
        }
    })
}

fn add_bucket(buckets: &mut Vec<(f64, f64)>, bound: f64, count: f64) {
    match buckets
        .iter_mut()
        .find(|(b, _)| (*b - bound).abs() < f64::EPSILON || (b.is_infinite() && bound.is_infinite()))
    {
        Some((_, existing)) => *existing += count,
        None => {
            buckets.push((bound, count));
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
    }
}

impl Snapshot {
    /// Adds one splitter's `/metrics` text to the snapshot.
    pub fn add_scrape(&mut self, text: &str) {
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else { continue };
            let (name, label_text) = series
                .split_once('{')
                .map_or((series, ""), |(n, l)| (n, l.trim_end_matches('}')));
            let labels = labels(label_text);
            let Some(backend) = labels.get("backend").map(|b| (*b).to_owned()) else {
                continue;
            };
            match name {
                "outrigger_splitter_requests_total" => {
                    let counters = self.live.entry(backend).or_default();
                    counters.requests += value;
                    if labels.get("class") == Some(&"5xx") {
                        counters.errors += value;
                    }
                }
                "outrigger_splitter_response_latency_seconds_bucket" => {
                    let bound = bucket_bound(&labels);
                    if let Some(bound) = bound {
                        add_bucket(
                            &mut self.live.entry(backend).or_default().latency_buckets,
                            bound,
                            value,
                        );
                    }
                }
                "outrigger_splitter_mirror_responses_total" if labels.get("role") == Some(&"shadow") => {
                    let counters = self.shadow.entry(backend).or_default();
                    counters.requests += value;
                    if matches!(labels.get("class"), Some(&"5xx") | Some(&"error")) {
                        counters.errors += value;
                    }
                }
                "outrigger_splitter_mirror_latency_seconds_bucket"
                    if labels.get("role") == Some(&"shadow") =>
                {
                    let bound = bucket_bound(&labels);
                    if let Some(bound) = bound {
                        add_bucket(
                            &mut self.shadow.entry(backend).or_default().latency_buckets,
                            bound,
                            value,
                        );
                    }
                }
                _ => {}
            }
        }
    }
}

fn delta(now: &BackendCounters, before: Option<&BackendCounters>) -> BackendCounters {
    let Some(before) = before else { return now.clone() };
    // A counter that went down means a splitter restarted: count from zero.
    if now.requests < before.requests {
        return now.clone();
    }
    BackendCounters {
        requests: now.requests - before.requests,
        errors: (now.errors - before.errors).max(0.0),
        latency_buckets: now
            .latency_buckets
            .iter()
            .map(|(bound, count)| {
                let previous = before
                    .latency_buckets
                    .iter()
                    .find(|(b, _)| b == bound)
                    .map_or(0.0, |(_, c)| *c);
                (*bound, (count - previous).max(0.0))
            })
            .collect(),
    }
}

impl BackendCounters {
    /// Percent of requests that were not 5xx.
    pub fn success_rate(&self) -> Option<f64> {
        (self.requests > 0.0).then(|| 100.0 * (self.requests - self.errors) / self.requests)
    }

    /// Latency at `percentile` in milliseconds, interpolated within the bucket.
    pub fn latency_ms(&self, percentile: f64) -> Option<f64> {
        let total = self.latency_buckets.last().map(|(_, c)| *c)?;
        if total <= 0.0 {
            return None;
        }
        let rank = total * percentile / 100.0;
        let mut lower = (0.0, 0.0);
        for (bound, count) in &self.latency_buckets {
            if *count >= rank {
                if bound.is_infinite() {
                    return Some(lower.0 * 1000.0);
                }
                let width = count - lower.1;
                let fraction = if width > 0.0 {
                    (rank - lower.1) / width
                } else {
                    1.0
                };
                return Some((lower.0 + (bound - lower.0) * fraction) * 1000.0);
            }
            lower = (*bound, *count);
        }
        None
    }
}

/// Judges the canary over the interval between `before` and `now`. Experiments (canary weight 0,
/// mirroring on) judge the canary on its shadow responses.
pub fn judge(
    spec: &AnalysisSpec,
    before: &Snapshot,
    now: &Snapshot,
    experiment: bool,
    at: Timestamp,
) -> AnalysisResult {
    let source = |snapshot: &Snapshot, backend: &str| -> Option<BackendCounters> {
        let map = if experiment && backend == CANARY {
            &snapshot.shadow
        } else {
            &snapshot.live
        };
        map.get(backend).cloned()
    };
    let window = |backend: &str| {
        source(now, backend)
            .map(|n| delta(&n, source(before, backend).as_ref()))
            .unwrap_or_default()
    };
    let (canary, stable) = (window(CANARY), window(STABLE));
    let canary_requests = canary.requests.round() as i64;
    let metrics: Vec<MetricMeasurement> = spec
        .metrics
        .iter()
        .map(|metric| {
            let external = now.external.get(&metric.name).copied();
            measure(
                metric,
                &canary,
                &stable,
                external,
                canary_requests,
                spec.min_request_count,
            )
        })
        .collect();
    let verdict = if metrics.iter().any(|m| m.verdict == AnalysisVerdict::Failed) {
        AnalysisVerdict::Failed
    } else if metrics.iter().any(|m| m.verdict == AnalysisVerdict::Inconclusive) {
        AnalysisVerdict::Inconclusive
    } else {
        AnalysisVerdict::Successful
    };
    AnalysisResult {
        verdict,
        measured_at: Time(at),
        metrics,
    }
}

/// Reads one metric's value from a backend's counters.
type Reading = Box<dyn Fn(&BackendCounters) -> Option<f64>>;

fn measure(
    metric: &AnalysisMetric,
    canary: &BackendCounters,
    stable: &BackendCounters,
    external: Option<f64>,
    canary_requests: i64,
    min_requests: i32,
) -> MetricMeasurement {
    let (value_of, higher_is_better): (Reading, bool) = match metric.metric_type {
        AnalysisMetricType::SuccessRate => (Box::new(BackendCounters::success_rate), true),
        AnalysisMetricType::Latency => {
            let percentile = f64::from(metric.percentile.unwrap_or(99));
            (
                Box::new(move |c: &BackendCounters| c.latency_ms(percentile)),
                false,
            )
        }
        // A query's value describes the canary (the query selects it); there is no stable value.
        AnalysisMetricType::Prometheus => (Box::new(move |_: &BackendCounters| external), true),
    };
    let canary_value = value_of(canary);
    let stable_value = match metric.metric_type {
        AnalysisMetricType::Prometheus => None,
        _ => value_of(stable),
    };
    let mut threshold = Vec::new();
    if let Some(min) = metric.min {
        threshold.push(format!("min {min}"));
    }
    if let Some(max) = metric.max {
        threshold.push(format!("max {max}"));
    }
    if let Some(degradation) = metric.max_degradation_percent {
        threshold.push(format!("at most {degradation}% worse than stable"));
    }
    let verdict = match canary_value {
        _ if canary_requests < i64::from(min_requests) => AnalysisVerdict::Inconclusive,
        None => AnalysisVerdict::Inconclusive,
        Some(value) => {
            let below_min = metric.min.is_some_and(|min| value < min);
            let above_max = metric.max.is_some_and(|max| value > max);
            let degraded = match (metric.max_degradation_percent, stable_value) {
                (Some(limit), Some(stable)) if higher_is_better => value < stable * (1.0 - limit / 100.0),
                (Some(limit), Some(stable)) => value > stable * (1.0 + limit / 100.0),
                _ => false,
            };
            if below_min || above_max || degraded {
                AnalysisVerdict::Failed
            } else {
                AnalysisVerdict::Successful
            }
        }
    };
    MetricMeasurement {
        name: metric.name.clone(),
        canary: canary_value,
        stable: stable_value,
        canary_requests,
        threshold: threshold.join(", "),
        verdict,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn scrape(stable: (u64, u64), canary: (u64, u64), canary_fast: u64) -> String {
        // (ok, 5xx) per backend; canary latency: `canary_fast` requests under 10 ms, the rest under 1 s.
        let (stable_ok, stable_err) = stable;
        let (canary_ok, canary_err) = canary;
        let canary_total = canary_ok + canary_err;
        format!(
            "# TYPE outrigger_splitter_requests counter\n\
             outrigger_splitter_requests_total{{backend=\"stable\",class=\"2xx\"}} {stable_ok}\n\
             outrigger_splitter_requests_total{{backend=\"stable\",class=\"5xx\"}} {stable_err}\n\
             outrigger_splitter_requests_total{{backend=\"canary\",class=\"2xx\"}} {canary_ok}\n\
             outrigger_splitter_requests_total{{backend=\"canary\",class=\"5xx\"}} {canary_err}\n\
             outrigger_splitter_response_latency_seconds_bucket{{backend=\"canary\",le=\"0.01\"}} {canary_fast}\n\
             outrigger_splitter_response_latency_seconds_bucket{{backend=\"canary\",le=\"1.0\"}} {canary_total}\n\
             outrigger_splitter_response_latency_seconds_bucket{{backend=\"canary\",le=\"+Inf\"}} {canary_total}\n"
        )
    }

    fn snapshot(texts: &[String]) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for text in texts {
            snapshot.add_scrape(text);
        }
        snapshot
    }

    fn spec(metrics: serde_json::Value) -> AnalysisSpec {
        serde_json::from_value(json!({"minRequestCount": 50, "metrics": metrics})).unwrap()
    }

    fn at() -> Timestamp {
        Timestamp::UNIX_EPOCH
    }

    #[test]
    fn prometheus_answers_are_read_as_one_number_or_refused_with_a_reason() {
        let cases = [
            (
                r#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"0.25"]}}"#,
                Ok(0.25),
            ),
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.5,"99.5"]}]}}"#,
                Ok(99.5),
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(prometheus_value(body), expected, "{body}");
        }
        for (body, reason) in [
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
                "0 samples",
            ),
            (
                r#"{"status":"error","error":"parse error at char 3"}"#,
                "parse error",
            ),
            (
                r#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"NaN"]}}"#,
                "finite",
            ),
            ("<html>", "not JSON"),
        ] {
            let error = prometheus_value(body).unwrap_err();
            assert!(error.contains(reason), "{body}: {error}");
        }
    }

    #[test]
    fn a_prometheus_metric_is_judged_on_the_queried_value_once_the_canary_has_traffic() {
        let spec = spec(json!([{"name": "errors", "type": "prometheus", "max": 1.0,
            "prometheus": {"address": "http://127.0.0.1:9090", "query": "x"}}]));
        let before = snapshot(&[scrape((1000, 0), (100, 0), 100)]);
        let mut now = snapshot(&[scrape((1900, 0), (200, 0), 200)]);
        now.external.insert("errors".into(), 3.0);
        let result = judge(&spec, &before, &now, false, at());
        assert_eq!(result.verdict, AnalysisVerdict::Failed);
        assert_eq!(
            (result.metrics[0].canary, result.metrics[0].stable),
            (Some(3.0), None)
        );
        now.external.insert("errors".into(), 0.5);
        assert_eq!(
            judge(&spec, &before, &now, false, at()).verdict,
            AnalysisVerdict::Successful
        );
        now.external.clear();
        assert_eq!(
            judge(&spec, &before, &now, false, at()).verdict,
            AnalysisVerdict::Inconclusive,
            "an unanswered query is inconclusive"
        );
    }

    #[test]
    fn a_canary_failing_twenty_percent_fails_the_success_rate() {
        let spec = spec(json!([{"name": "sr", "type": "successRate", "min": 99}]));
        let before = snapshot(&[scrape((1000, 0), (100, 0), 100)]);
        let now = snapshot(&[scrape((1900, 0), (180, 20), 200)]);
        let result = judge(&spec, &before, &now, false, at());
        assert_eq!(result.verdict, AnalysisVerdict::Failed);
        let metric = &result.metrics[0];
        assert_eq!(metric.canary_requests, 100);
        assert!((metric.canary.unwrap() - 80.0).abs() < 1e-9);
        assert_eq!(metric.stable, Some(100.0));
        assert_eq!(metric.threshold, "min 99");
    }

    #[test]
    fn too_few_requests_is_inconclusive_and_a_healthy_canary_passes() {
        let spec =
            spec(json!([{"name": "sr", "type": "successRate", "min": 99, "maxDegradationPercent": 1}]));
        let before = snapshot(&[scrape((0, 0), (0, 0), 0)]);
        let few = snapshot(&[scrape((100, 0), (10, 0), 10)]);
        assert_eq!(
            judge(&spec, &before, &few, false, at()).verdict,
            AnalysisVerdict::Inconclusive
        );
        let many = snapshot(&[scrape((900, 0), (100, 0), 100)]);
        assert_eq!(
            judge(&spec, &before, &many, false, at()).verdict,
            AnalysisVerdict::Successful
        );
    }

    #[test]
    fn scrapes_of_several_splitters_add_up_and_restarts_count_from_zero() {
        let spec = spec(json!([{"name": "sr", "type": "successRate", "min": 99}]));
        let before = snapshot(&[scrape((500, 0), (500, 0), 500), scrape((500, 0), (500, 0), 500)]);
        // The second splitter restarted: its counters are lower than before.
        let now = snapshot(&[scrape((600, 0), (550, 0), 550), scrape((10, 0), (40, 10), 50)]);
        let result = judge(&spec, &before, &now, false, at());
        // Summed counters went down (1000 → 600), so the whole window counts from zero.
        assert_eq!(result.metrics[0].canary_requests, 600);
        assert_eq!(result.verdict, AnalysisVerdict::Failed);
    }

    #[test]
    fn latency_percentiles_come_from_the_histogram() {
        let spec = spec(json!([{"name": "p99", "type": "latency", "percentile": 99, "max": 100}]));
        let before = snapshot(&[scrape((0, 0), (0, 0), 0)]);
        let fast = snapshot(&[scrape((0, 0), (100, 0), 100)]);
        let result = judge(&spec, &before, &fast, false, at());
        assert_eq!(result.verdict, AnalysisVerdict::Successful);
        assert!(result.metrics[0].canary.unwrap() <= 10.0);
        let slow = snapshot(&[scrape((0, 0), (100, 0), 50)]);
        assert_eq!(
            judge(&spec, &before, &slow, false, at()).verdict,
            AnalysisVerdict::Failed
        );
    }

    #[test]
    fn experiments_judge_the_canary_on_its_shadow_responses() {
        let spec = spec(json!([{"name": "sr", "type": "successRate", "min": 95}]));
        let text = "outrigger_splitter_requests_total{backend=\"stable\",class=\"2xx\"} 1000\n\
                    outrigger_splitter_mirror_responses_total{backend=\"canary\",role=\"shadow\",class=\"2xx\"} 80\n\
                    outrigger_splitter_mirror_responses_total{backend=\"canary\",role=\"shadow\",class=\"5xx\"} 20\n\
                    outrigger_splitter_mirror_responses_total{backend=\"canary\",role=\"primary\",class=\"2xx\"} 100\n";
        let result = judge(
            &spec,
            &Snapshot::default(),
            &snapshot(&[text.to_owned()]),
            true,
            at(),
        );
        assert_eq!(result.verdict, AnalysisVerdict::Failed);
        assert_eq!(result.metrics[0].canary_requests, 100);
    }
}
