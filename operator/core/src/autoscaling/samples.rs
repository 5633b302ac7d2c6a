//! What the poller reads, turned into per-pod values: the request splitter's `/metrics` text, the
//! kubelet's summary API, and pods' readiness and requests. Counters become rates over a short
//! sliding window of samples.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use k8s_openapi::api::core::v1::Pod;

use super::{quantity, replicas::PodState};
use crate::analysis::BackendCounters;

/// Counters of one request splitter, summed over its backends (live traffic only).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SplitterCounters {
    pub requests: f64,
    /// Sum of response latencies in seconds (`..._response_latency_seconds_sum`).
    pub latency_sum: f64,
    /// Cumulative latency buckets: upper bound in seconds → count.
    pub buckets: Vec<(f64, f64)>,
    /// Requests held now, waiting for an endpoint (a splitter in front of a service at zero).
    pub held: f64,
}

/// Adds up one splitter's `/metrics` text.
pub fn parse_splitter(text: &str) -> SplitterCounters {
    let mut counters = SplitterCounters::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, labels) = series
            .split_once('{')
            .map_or((series, ""), |(n, l)| (n, l.trim_end_matches('}')));
        match name {
            "outrigger_splitter_requests_total" => counters.requests += value,
            "outrigger_splitter_response_latency_seconds_sum" => counters.latency_sum += value,
            "outrigger_splitter_held_requests" => counters.held += value,
            "outrigger_splitter_response_latency_seconds_bucket" => {
                let bound = labels
                    .split(',')
                    .filter_map(|pair| pair.split_once('='))
                    .find(|(key, _)| key.trim() == "le")
                    .and_then(|(_, le)| match le.trim().trim_matches('"') {
                        "+Inf" => Some(f64::INFINITY),
                        le => le.parse().ok(),
                    });
                if let Some(bound) = bound {
                    match counters.buckets.iter_mut().find(|(b, _)| *b == bound) {
                        Some((_, count)) => *count += value,
                        None => {
                            counters.buckets.push((bound, value));
                            counters.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    counters
}

/// Traffic of one pod over the window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Traffic {
    /// Requests per second.
    pub request_rate: f64,
    /// Requests in flight on average (latency-seconds per second, by Little's law).
    pub concurrency: f64,
    /// Latency buckets of the requests within the window.
    pub buckets: Vec<(f64, f64)>,
}

/// A sample and when it was taken.
type Sample<T> = (Duration, T);

/// The samples of one pod within the last `span`.
#[derive(Debug, Clone, Default)]
pub struct Window<T> {
    samples: VecDeque<Sample<T>>,
}

impl<T> Window<T> {
    /// Adds a sample taken at `now` and forgets those older than `span` (keeping one older sample,
    /// so the window always covers `span` once it is that old).
    pub fn push(&mut self, now: Duration, sample: T, span: Duration) {
        self.samples.push_back((now, sample));
        while self
            .samples
            .get(1)
            .is_some_and(|(at, _)| now.saturating_sub(*at) >= span)
        {
            self.samples.pop_front();
        }
    }

    /// Forgets every sample (a counter went backwards: the process restarted).
    pub fn reset_to_last(&mut self) {
        while self.samples.len() > 1 {
            self.samples.pop_front();
        }
    }

    /// The oldest and newest sample, once they are at least `full` apart.
    ///
    /// A pod's window younger than the others would average over a different stretch of time:
    /// right after a scale-up the old pod's window still holds the time it carried all the
    /// traffic while the new pod's holds only its share, and their per-pod average reads as more
    /// traffic than there is. So every rate waits for a full window.
    fn ends(&self, full: Duration) -> Option<(&Sample<T>, &Sample<T>)> {
        let first = self.samples.front()?;
        let last = self.samples.back()?;
        (last.0 > first.0 && last.0.saturating_sub(first.0) >= full).then_some((first, last))
    }
}

impl Window<SplitterCounters> {
    /// Rates between the oldest and newest sample; `None` until they are `full` apart.
    pub fn traffic(&mut self, full: Duration) -> Option<Traffic> {
        let ((t0, first), (t1, last)) = self.ends(full)?;
        if last.requests < first.requests {
            self.reset_to_last();
            return None;
        }
        let seconds = t1.saturating_sub(*t0).as_secs_f64();
        let buckets = last
            .buckets
            .iter()
            .map(|(bound, count)| {
                let before = first
                    .buckets
                    .iter()
                    .find(|(b, _)| b == bound)
                    .map_or(0.0, |(_, c)| *c);
                (*bound, (count - before).max(0.0))
            })
            .collect();
        Some(Traffic {
            request_rate: (last.requests - first.requests) / seconds,
            concurrency: (last.latency_sum - first.latency_sum).max(0.0) / seconds,
            buckets,
        })
    }
}

impl Window<f64> {
    /// The counter's rate per second between the oldest and newest sample, once they are `full`
    /// apart.
    pub fn rate(&mut self, full: Duration) -> Option<f64> {
        let ((t0, first), (t1, last)) = self.ends(full)?;
        if last < first {
            self.reset_to_last();
            return None;
        }
        Some((last - first) / t1.saturating_sub(*t0).as_secs_f64())
    }
}

/// The latency at `percentile` in milliseconds over the merged buckets of every pod; 0 without
/// requests (nothing was slow).
pub fn merged_latency_ms<'a>(buckets: impl IntoIterator<Item = &'a [(f64, f64)]>, percentile: f64) -> f64 {
    let mut merged = BackendCounters::default();
    for pod in buckets {
        for (bound, count) in pod {
            match merged.latency_buckets.iter_mut().find(|(b, _)| b == bound) {
                Some((_, total)) => *total += count,
                None => {
                    merged.latency_buckets.push((*bound, *count));
                    merged.latency_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                }
            }
        }
    }
    merged.latency_ms(percentile).unwrap_or(0.0)
}

/// Usage of one pod in the kubelet's summary.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// CPU in cores.
    pub cpu: Option<f64>,
    /// Working set in bytes.
    pub memory: Option<f64>,
    /// Bytes received and sent since the pod started (a counter).
    pub network_bytes: Option<f64>,
}

/// The pods' usage in a kubelet summary (`/stats/summary`), by `(namespace, name)`.
pub fn parse_summary(body: &str) -> Result<BTreeMap<(String, String), Usage>, String> {
    let summary: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("summary is not JSON: {e}"))?;
    let mut usage = BTreeMap::new();
    for pod in summary["pods"].as_array().into_iter().flatten() {
        let key = (
            pod["podRef"]["namespace"].as_str().unwrap_or_default().to_owned(),
            pod["podRef"]["name"].as_str().unwrap_or_default().to_owned(),
        );
        let containers = pod["containers"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let sum = |path: [&str; 2]| -> Option<f64> {
            containers
                .iter()
                .map(|c| c[path[0]][path[1]].as_f64())
                .sum::<Option<f64>>()
                .filter(|_| !containers.is_empty())
        };
        let network = &pod["network"];
        let network_bytes = match (network["rxBytes"].as_f64(), network["txBytes"].as_f64()) {
            (Some(rx), Some(tx)) => Some(rx + tx),
            _ => None,
        };
        usage.insert(
            key,
            Usage {
                cpu: sum(["cpu", "usageNanoCores"]).map(|nano| nano / 1e9),
                memory: sum(["memory", "workingSetBytes"]),
                network_bytes,
            },
        );
    }
    Ok(usage)
}

/// How a pod counts (HPA's grouping): pending, failed or deleted pods are ignored, running ones
/// are ready or not by their Ready condition.
pub fn pod_state(pod: &Pod) -> PodState {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref());
    if pod.metadata.deletion_timestamp.is_some() || phase != Some("Running") {
        return PodState::Ignored;
    }
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if ready {
        PodState::Ready
    } else {
        PodState::Unready
    }
}

/// The pod's total request of `resource` (`cpu` in cores, `memory` in bytes); `None` when a
/// container has none, as HPA needs every container's request for a utilization.
pub fn pod_request(pod: &Pod, resource: &str) -> Option<f64> {
    let containers = &pod.spec.as_ref()?.containers;
    if containers.is_empty() {
        return None;
    }
    containers
        .iter()
        .map(|container| {
            container
                .resources
                .as_ref()?
                .requests
                .as_ref()?
                .get(resource)
                .and_then(|q| quantity::parse(&q.0))
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"# HELP outrigger_splitter_requests Requests answered
# TYPE outrigger_splitter_requests counter
outrigger_splitter_requests_total{backend="app",class="2xx"} 90
outrigger_splitter_requests_total{backend="app",class="5xx"} 10
outrigger_splitter_response_latency_seconds_sum{backend="app"} 5.5
outrigger_splitter_response_latency_seconds_count{backend="app"} 100
outrigger_splitter_response_latency_seconds_bucket{le="0.01",backend="app"} 50
outrigger_splitter_response_latency_seconds_bucket{le="0.1",backend="app"} 90
outrigger_splitter_response_latency_seconds_bucket{le="+Inf",backend="app"} 100
outrigger_splitter_active_connections 3
outrigger_splitter_held_requests 2
"#;

    #[test]
    fn a_splitter_scrape_adds_up_requests_latency_and_buckets() {
        let counters = parse_splitter(SCRAPE);
        assert_eq!(counters.requests, 100.0);
        assert_eq!(counters.held, 2.0);
        assert_eq!(counters.latency_sum, 5.5);
        assert_eq!(
            counters.buckets,
            vec![(0.01, 50.0), (0.1, 90.0), (f64::INFINITY, 100.0)]
        );
    }

    fn counters(requests: f64, latency_sum: f64) -> SplitterCounters {
        SplitterCounters {
            requests,
            latency_sum,
            buckets: vec![(0.1, requests), (f64::INFINITY, requests)],
            held: 0.0,
        }
    }

    #[test]
    fn traffic_is_the_rate_over_the_window_and_concurrency_follows_littles_law() {
        let mut window = Window::default();
        let (span, full) = (Duration::from_secs(3), Duration::from_secs(2));
        window.push(Duration::from_secs(10), counters(100.0, 10.0), span);
        assert_eq!(window.traffic(full), None, "one sample has no rate");
        window.push(Duration::from_secs(11), counters(120.0, 11.0), span);
        assert_eq!(
            window.traffic(full),
            None,
            "a window shorter than full has no rate yet"
        );
        window.push(Duration::from_secs(12), counters(140.0, 12.0), span);
        let traffic = window.traffic(full).unwrap();
        assert_eq!(traffic.request_rate, 20.0);
        assert_eq!(traffic.concurrency, 1.0);
        assert_eq!(traffic.buckets, vec![(0.1, 40.0), (f64::INFINITY, 40.0)]);
        // Older samples leave the window.
        window.push(Duration::from_secs(14), counters(200.0, 12.0), span);
        window.push(Duration::from_secs(15), counters(260.0, 12.0), span);
        assert_eq!(
            window.traffic(full).unwrap().request_rate,
            40.0,
            "(260 - 140) / 3 s"
        );
    }

    #[test]
    fn after_a_scale_up_the_pods_rates_cover_the_same_time_and_add_up_to_the_load() {
        // 15 requests/s: all to the old pod until second 11, then half each. A new pod's short
        // window beside the old pod's long one would read 10.8 per pod on average; both waiting
        // for a full window read 7.5.
        let (span, full) = (Duration::from_secs(3), Duration::from_millis(2500));
        let (mut old, mut new) = (Window::default(), Window::default());
        let mut old_requests = 0.0;
        let mut new_requests = 0.0;
        let mut rates = Vec::new();
        for second in 8..=16_u64 {
            let at = Duration::from_secs(second);
            old.push(at, counters(old_requests, 0.0), span);
            if second >= 11 {
                new.push(at, counters(new_requests, 0.0), span);
            }
            let pods: Vec<f64> = [old.traffic(full), new.traffic(full)]
                .into_iter()
                .flatten()
                .map(|t| t.request_rate)
                .collect();
            rates.push((second, pods));
            if second >= 11 {
                old_requests += 7.5;
                new_requests += 7.5;
            } else {
                old_requests += 15.0;
            }
        }
        let expected: Vec<(u64, Vec<f64>)> = vec![
            (8, vec![]),
            (9, vec![]),
            (10, vec![]),
            (11, vec![15.0]),
            // The old pod's window still holds the seconds it carried everything; the new pod has
            // no rate until its window is as long.
            (12, vec![12.5]),
            (13, vec![10.0]),
            (14, vec![7.5, 7.5]),
            (15, vec![7.5, 7.5]),
            (16, vec![7.5, 7.5]),
        ];
        assert_eq!(rates, expected);
    }

    #[test]
    fn a_restarted_splitter_starts_a_new_window() {
        let mut window = Window::default();
        let (span, full) = (Duration::from_secs(3), Duration::from_secs(2));
        window.push(Duration::from_secs(1), counters(500.0, 1.0), span);
        window.push(Duration::from_secs(2), counters(3.0, 1.0), span);
        window.push(Duration::from_secs(3), counters(13.0, 1.0), span);
        window.push(Duration::from_secs(4), counters(23.0, 1.0), span);
        assert_eq!(window.traffic(full), None, "the counter went backwards");
        window.push(Duration::from_secs(5), counters(33.0, 1.0), span);
        window.push(Duration::from_secs(6), counters(43.0, 1.0), span);
        assert_eq!(window.traffic(full).unwrap().request_rate, 10.0);
    }

    #[test]
    fn latency_percentiles_merge_every_pods_buckets_and_idle_is_zero() {
        let fast: Vec<(f64, f64)> = vec![(0.01, 10.0), (0.1, 10.0), (f64::INFINITY, 10.0)];
        let slow: Vec<(f64, f64)> = vec![(0.01, 0.0), (0.1, 10.0), (f64::INFINITY, 10.0)];
        let p50 = merged_latency_ms([fast.as_slice(), slow.as_slice()], 50.0);
        assert!((p50 - 10.0).abs() < 1e-9, "{p50}");
        assert!(merged_latency_ms([fast.as_slice(), slow.as_slice()], 99.0) > 90.0);
        assert_eq!(merged_latency_ms(std::iter::empty::<&[(f64, f64)]>(), 99.0), 0.0);
    }

    #[test]
    fn the_kubelet_summary_gives_cpu_memory_and_network_per_pod() {
        let body = serde_json::json!({"pods": [{
            "podRef": {"name": "web-1", "namespace": "ns"},
            "containers": [
                {"name": "app", "cpu": {"usageNanoCores": 250_000_000}, "memory": {"workingSetBytes": 1000}},
                {"name": "splitter", "cpu": {"usageNanoCores": 50_000_000}, "memory": {"workingSetBytes": 24}}
            ],
            "network": {"rxBytes": 10, "txBytes": 5}
        }]})
        .to_string();
        let usage = parse_summary(&body).unwrap();
        let pod = usage[&("ns".to_owned(), "web-1".to_owned())];
        assert!((pod.cpu.unwrap() - 0.3).abs() < 1e-9);
        assert_eq!(pod.memory, Some(1024.0));
        assert_eq!(pod.network_bytes, Some(15.0));
        assert!(parse_summary("nope").is_err());
    }

    #[test]
    fn pods_count_as_ready_unready_or_ignored() {
        let pod = |phase: &str, ready: &str, deleting: bool| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "deletionTimestamp": deleting.then_some("2026-01-01T00:00:00Z")},
                "status": {"phase": phase, "conditions": [{"type": "Ready", "status": ready}]}
            }))
            .unwrap()
        };
        assert_eq!(pod_state(&pod("Running", "True", false)), PodState::Ready);
        assert_eq!(pod_state(&pod("Running", "False", false)), PodState::Unready);
        assert_eq!(pod_state(&pod("Pending", "False", false)), PodState::Ignored);
        assert_eq!(pod_state(&pod("Running", "True", true)), PodState::Ignored);
    }

    #[test]
    fn a_pods_request_needs_every_container_to_have_one() {
        let pod = |requests: serde_json::Value| -> Pod {
            serde_json::from_value(serde_json::json!({"spec": {"containers": requests}})).unwrap()
        };
        let both = pod(serde_json::json!([
            {"name": "a", "resources": {"requests": {"cpu": "250m"}}},
            {"name": "b", "resources": {"requests": {"cpu": "250m"}}}
        ]));
        assert_eq!(pod_request(&both, "cpu"), Some(0.5));
        let one = pod(serde_json::json!([
            {"name": "a", "resources": {"requests": {"cpu": "250m"}}},
            {"name": "b"}
        ]));
        assert_eq!(pod_request(&one, "cpu"), None);
    }
}
