//! The splitter's Prometheus metrics, registered under `outrigger_splitter_`. Labels are bounded:
//! backend and route names come from the configuration, everything else is a fixed set. Paths,
//! endpoints and error strings never become labels.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub backend: String,
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub backend: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabels {
    pub backend: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CompareLabels {
    pub backend: String,
    pub role: &'static str,
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    pub backend: String,
    pub role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitLabels {
    pub tier: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HoldLabels {
    pub outcome: &'static str,
}

/// The reload families are the runtime's: its config source counts into them.
pub use outrigger_sidecar_runtime::metrics::ReloadLabels;

/// Status classes, the `class` label. `error` is a request that got no response at all.
pub const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// The class index of a status code.
pub fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

fn latency_buckets() -> Histogram {
    Histogram::new([
        0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

fn cold_start_buckets() -> Histogram {
    // A cold start is a pod's start: from a fraction of a second (image present, fast app) to the
    // hold timeout.
    Histogram::new([
        0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0,
    ])
}

/// Every metric of the splitter; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<BackendLabels, Histogram, fn() -> Histogram>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub retries: Family<BackendLabels, Counter>,
    pub retry_budget_exhausted: Counter,
    pub ejections: Family<BackendLabels, Counter>,
    pub local_responses: Family<ReasonLabels, Counter>,
    pub route_matches: Family<RouteLabels, Counter>,
    pub mirror_requests: Family<MirrorLabels, Counter>,
    pub mirror_compared: Family<CompareLabels, Counter>,
    pub mirror_latency: Family<RoleLabels, Histogram, fn() -> Histogram>,
    pub mirror_divergence: Family<BackendLabels, Counter>,
    pub active_connections: Gauge,
    pub connections: Counter,
    pub connections_rejected: Counter,
    pub client_errors: Family<ReasonLabels, Counter>,
    pub accept_paused: Gauge,
    pub config_generation: Gauge,
    pub config_reloads: Family<ReloadLabels, Counter>,
    pub config_last_reload_ok: Gauge,
    pub held_requests: Gauge,
    pub held_outcomes: Family<HoldLabels, Counter>,
    pub cold_start: Histogram,
    /// Requests a rate limit applied to, by tier and result (`allowed`, `limited`).
    pub rate_limit_decisions: Family<RateLimitLabels, Counter>,
    /// Rate-limit buckets held now.
    pub rate_limit_buckets: Gauge,
    /// Buckets dropped to stay within `maxKeys`, by reason (`idle`, `full`).
    pub rate_limit_evictions: Family<ReasonLabels, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_buckets),
            upstream_errors: Family::default(),
            retries: Family::default(),
            retry_budget_exhausted: Counter::default(),
            ejections: Family::default(),
            local_responses: Family::default(),
            route_matches: Family::default(),
            mirror_requests: Family::default(),
            mirror_compared: Family::default(),
            mirror_latency: Family::new_with_constructor(latency_buckets),
            mirror_divergence: Family::default(),
            active_connections: Gauge::default(),
            connections: Counter::default(),
            connections_rejected: Counter::default(),
            client_errors: Family::default(),
            accept_paused: Gauge::default(),
            config_generation: Gauge::default(),
            config_reloads: Family::default(),
            config_last_reload_ok: Gauge::default(),
            held_requests: Gauge::default(),
            held_outcomes: Family::default(),
            cold_start: cold_start_buckets(),
            rate_limit_decisions: Family::default(),
            rate_limit_buckets: Gauge::default(),
            rate_limit_evictions: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("outrigger_splitter");
        r.register(
            "requests",
            "Requests answered, by the backend that served them (or was chosen) and status class",
            metrics.requests.clone(),
        );
        r.register_with_unit(
            "response_latency",
            "Time from receiving a request to sending the response headers, by backend",
            Unit::Seconds,
            metrics.latency.clone(),
        );
        r.register(
            "upstream_errors",
            "Failed attempts to a backend, by kind: connect, reset, timeout",
            metrics.upstream_errors.clone(),
        );
        r.register("retries", "Retried attempts, by backend", metrics.retries.clone());
        r.register(
            "retry_budget_exhausted",
            "Retries not made because the retry budget was spent",
            metrics.retry_budget_exhausted.clone(),
        );
        r.register(
            "endpoint_ejections",
            "Endpoints ejected by outlier detection, by backend",
            metrics.ejections.clone(),
        );
        r.register(
            "local_responses",
            "Responses made by the splitter itself (no backend could serve), by reason",
            metrics.local_responses.clone(),
        );
        r.register(
            "route_matches",
            "Requests sent by a route, by route",
            metrics.route_matches.clone(),
        );
        r.register(
            "mirror_requests",
            "Requests picked for mirroring, by outcome: queued, queue_full, body_too_large",
            metrics.mirror_requests.clone(),
        );
        r.register(
            "mirror_responses",
            "Responses to mirrored requests, primary next to shadow, by role and status class",
            metrics.mirror_compared.clone(),
        );
        r.register_with_unit(
            "mirror_latency",
            "Latency of mirrored requests, primary next to shadow, by role",
            Unit::Seconds,
            metrics.mirror_latency.clone(),
        );
        r.register(
            "mirror_divergence",
            "Mirrored requests whose shadow status differed from the primary's",
            metrics.mirror_divergence.clone(),
        );
        r.register(
            "active_connections",
            "Client connections open now",
            metrics.active_connections.clone(),
        );
        r.register(
            "connections",
            "Client connections accepted",
            metrics.connections.clone(),
        );
        r.register(
            "connections_rejected",
            "Client connections refused because maxConnections were open",
            metrics.connections_rejected.clone(),
        );
        r.register(
            "client_errors",
            "Failures put down to the client, by reason: malformed, headers_too_large, too_many_headers, header_timeout, tls_handshake, request_body, request_body_timeout, connect_method",
            metrics.client_errors.clone(),
        );
        r.register(
            "accept_paused",
            "Listeners not accepting connections for lack of file descriptors (readiness fails meanwhile)",
            metrics.accept_paused.clone(),
        );
        r.register(
            "config_generation",
            "Generation of the configuration in effect (1 for the first)",
            metrics.config_generation.clone(),
        );
        r.register(
            "config_reloads",
            "Configuration reloads, by source (file, configmap) and result (applied, unchanged, rejected)",
            metrics.config_reloads.clone(),
        );
        r.register(
            "config_last_reload_successful",
            "1 when the last configuration seen was applied, 0 when it was rejected",
            metrics.config_last_reload_ok.clone(),
        );
        r.register(
            "held_requests",
            "Requests held now, waiting for their backend to have an endpoint (a service scaled to zero)",
            metrics.held_requests.clone(),
        );
        r.register(
            "held",
            "Requests that were held, by outcome: served, timeout, queue_full",
            metrics.held_outcomes.clone(),
        );
        r.register(
            "rate_limit_decisions",
            "Requests a rate limit applied to, by tier (anonymous, identified) and result (allowed, limited)",
            metrics.rate_limit_decisions.clone(),
        );
        r.register(
            "rate_limit_buckets",
            "Rate-limit buckets (client keys per prefix and tier) held now",
            metrics.rate_limit_buckets.clone(),
        );
        r.register(
            "rate_limit_evictions",
            "Rate-limit buckets dropped to stay within maxKeys, by reason (idle, full)",
            metrics.rate_limit_evictions.clone(),
        );
        r.register_with_unit(
            "cold_start",
            "Time from the first request held while none was to the first answer an endpoint gave one",
            Unit::Seconds,
            metrics.cold_start.clone(),
        );
        metrics
    }

    /// Pre-resolved handles for one backend, so the request path does no label lookups.
    pub fn backend(&self, name: &str) -> BackendMetrics {
        let backend = || BackendLabels {
            backend: name.to_owned(),
        };
        let [connect, reset, timeout] = UPSTREAM_ERROR_KINDS;
        let error = |kind| {
            self.upstream_errors.get_or_create_owned(&UpstreamErrorLabels {
                backend: name.to_owned(),
                kind,
            })
        };
        BackendMetrics {
            requests: CLASSES.map(|class| {
                self.requests.get_or_create_owned(&RequestLabels {
                    backend: name.to_owned(),
                    class,
                })
            }),
            latency: self.latency.get_or_create_owned(&backend()),
            retries: self.retries.get_or_create_owned(&backend()),
            ejections: self.ejections.get_or_create_owned(&backend()),
            connect_errors: error(connect),
            reset_errors: error(reset),
            timeouts: error(timeout),
        }
    }
}

/// Outcomes of `mirror_requests`.
pub const MIRROR_OUTCOMES: [&str; 3] = ["queued", "queue_full", "body_too_large"];
/// Roles of the mirror comparisons.
pub const MIRROR_ROLES: [&str; 2] = ["primary", "shadow"];
/// Kinds of `upstream_errors`.
const UPSTREAM_ERROR_KINDS: [&str; 3] = ["connect", "reset", "timeout"];

impl Metrics {
    /// Removes every series of a backend that a reload took away, so that `/metrics` lists only
    /// the backends in effect. A request still finishing on the old generation counts into
    /// handles no longer exported.
    pub fn remove_backend(&self, name: &str) {
        let backend = name.to_owned();
        let labels = BackendLabels {
            backend: backend.clone(),
        };
        for class in CLASSES {
            self.requests.remove(&RequestLabels {
                backend: backend.clone(),
                class,
            });
        }
        for kind in UPSTREAM_ERROR_KINDS {
            self.upstream_errors.remove(&UpstreamErrorLabels {
                backend: backend.clone(),
                kind,
            });
        }
        self.latency.remove(&labels);
        self.retries.remove(&labels);
        self.ejections.remove(&labels);
        self.mirror_divergence.remove(&labels);
        for outcome in MIRROR_OUTCOMES {
            self.mirror_requests.remove(&MirrorLabels {
                backend: backend.clone(),
                outcome,
            });
        }
        for role in MIRROR_ROLES {
            self.mirror_latency.remove(&RoleLabels {
                backend: backend.clone(),
                role,
            });
            for class in CLASSES {
                self.mirror_compared.remove(&CompareLabels {
                    backend: backend.clone(),
                    role,
                    class,
                });
            }
        }
    }
}

/// One backend's metric handles.
#[derive(Clone, Debug)]
pub struct BackendMetrics {
    pub requests: [Counter; 6],
    pub latency: Histogram,
    pub retries: Counter,
    pub ejections: Counter,
    pub connect_errors: Counter,
    pub reset_errors: Counter,
    pub timeouts: Counter,
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn backend_handles_feed_the_labelled_families() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let canary = metrics.backend("canary");
        canary.requests[class_index(503)].inc();
        canary.latency.observe(0.002);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("outrigger_splitter_requests_total{backend=\"canary\",class=\"5xx\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("outrigger_splitter_response_latency_seconds_count{backend=\"canary\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn a_removed_backend_leaves_no_series_behind() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let canary = metrics.backend("canary");
        let stable = metrics.backend("stable");
        canary.requests[1].inc();
        canary.timeouts.inc();
        stable.requests[1].inc();
        metrics
            .mirror_requests
            .get_or_create(&MirrorLabels {
                backend: "canary".to_owned(),
                outcome: "queued",
            })
            .inc();
        metrics.remove_backend("canary");
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(!text.contains("canary"), "{text}");
        assert!(text.contains("backend=\"stable\""), "{text}");
    }
}
