//! The front tier of a ReplicatedService as its spec asks for it, apart from rollouts and scaling
//! to zero: whether the request splitter must stand in front of the service, and what the spec adds
//! to the splitter's document (per-pod endpoints for session affinity, rate limits). Pure.

use outrigger_api::{
    rate_limits::{RateLimit, RateLimits},
    schema::parse_duration,
    ReplicatedServiceSpec,
};
use outrigger_contract::splitter::{
    EndpointDiscoveryConfig, RateLimitsConfig, RouteRateLimitConfig, SplitterConfig, TokenBucketConfig,
};

use crate::canary;

/// Whether the spec needs the request splitter in front of the service even without a rollout or
/// scaling to zero: session affinity (kept per pod by the splitter, which kube-proxy cannot do)
/// and rate limits (counted by the splitter).
pub fn front_tier_wanted(spec: &ReplicatedServiceSpec) -> bool {
    spec.session_affinity.is_some() || spec.rate_limits.is_some()
}

/// Adds to the splitter's document of service `service` in `namespace` what the spec asks for:
/// with session affinity, every track backend discovers its ready pods (so a sticky key stays on
/// one pod); with rate limits, the limits divided among `splitter_replicas`.
pub fn apply_to_splitter_config(
    config: &mut SplitterConfig,
    namespace: &str,
    service: &str,
    spec: &ReplicatedServiceSpec,
    splitter_replicas: i32,
) {
    if spec.session_affinity.is_some() {
        for backend in &mut config.backends {
            backend.discovery = Some(EndpointDiscoveryConfig {
                namespace: namespace.to_owned(),
                service: canary::track_service_name(service, &backend.name),
            });
        }
    }
    config.rate_limits = spec
        .rate_limits
        .as_ref()
        .map(|limits| per_replica(limits, splitter_replicas));
}

/// The splitter's rate limits: each service-wide rate (`requests` per `period`, in requests per
/// second) and burst divided by the number of splitter replicas (a burst rounded up, at least 1).
pub fn per_replica(limits: &RateLimits, splitter_replicas: i32) -> RateLimitsConfig {
    let replicas = splitter_replicas.max(1);
    let bucket = |limit: &RateLimit| {
        let burst = limit.burst.unwrap_or(limit.requests).max(1);
        // Validation admits periods of 1s to 24h; anything else counts per second.
        let period = parse_duration(&limit.period)
            .ok()
            .filter(|period| !period.is_zero())
            .map_or(1.0, |period| period.as_secs_f64());
        TokenBucketConfig {
            requests_per_second: f64::from(limit.requests) / period / f64::from(replicas),
            burst: u32::try_from((burst + replicas - 1) / replicas)
                .unwrap_or(1)
                .max(1),
        }
    };
    let mut config = RateLimitsConfig::new(
        limits.anonymous.as_ref().map(bucket),
        limits.identified.as_ref().map(bucket),
    );
    config.key = limits.key.clone().unwrap_or_default();
    config.identity_header = limits.identity_header.clone();
    config.routes = limits
        .routes
        .iter()
        .map(|route| RouteRateLimitConfig {
            path_prefix: route.path_prefix.clone(),
            anonymous: route.anonymous.as_ref().map(bucket),
            identified: route.identified.as_ref().map(bucket),
        })
        .collect();
    if let Some(max_keys) = limits.max_keys.and_then(|keys| u32::try_from(keys).ok()) {
        config.max_keys = max_keys;
    }
    config
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, net::SocketAddr};

    use outrigger_contract::splitter::{BackendConfig, RateLimitKey};
    use serde_json::{json, Value};

    use super::*;

    fn spec(extra: Value) -> ReplicatedServiceSpec {
        let mut spec = json!({"template": {"spec": {"containers": [{"name": "app", "image": "a"}]}}});
        for (key, value) in extra.as_object().unwrap() {
            spec[key] = value.clone();
        }
        serde_json::from_value(spec).unwrap()
    }

    fn two_tracks() -> SplitterConfig {
        let mut config = SplitterConfig::new(
            SocketAddr::from(([0, 0, 0, 0], 8080)),
            vec![
                BackendConfig::new("stable", vec!["10.96.0.5:80".to_owned()]),
                BackendConfig::new("canary", vec!["10.96.0.6:80".to_owned()]),
            ],
        );
        config.weights = BTreeMap::from([("stable".to_owned(), 90), ("canary".to_owned(), 10)]);
        config
    }

    #[test]
    fn affinity_and_rate_limits_each_want_the_front_tier_and_a_plain_service_does_not() {
        assert!(!front_tier_wanted(&spec(json!({}))));
        assert!(front_tier_wanted(&spec(
            json!({"sessionAffinity": {"source": "header", "name": "x-user"}})
        )));
        assert!(front_tier_wanted(&spec(
            json!({"rateLimits": {"anonymous": {"requests": 5}}})
        )));
    }

    #[test]
    fn with_affinity_each_track_discovers_the_pods_of_its_own_service() {
        let mut config = two_tracks();
        let spec = spec(json!({"sessionAffinity": {"source": "cookie", "name": "sid"}}));
        apply_to_splitter_config(&mut config, "shop", "web", &spec, 2);
        let discovered: Vec<_> = config
            .backends
            .iter()
            .map(|backend| backend.discovery.clone().unwrap().service)
            .collect();
        assert_eq!(discovered, ["web-stable", "web-canary"]);
        assert_eq!(config.backends[0].discovery.as_ref().unwrap().namespace, "shop");
        // The track Services' addresses stay, for when no pod is known.
        assert_eq!(config.backends[0].endpoints, ["10.96.0.5:80"]);
        assert!(config.rate_limits.is_none());
    }

    #[test]
    fn without_affinity_the_backends_keep_their_service_addresses_only() {
        let mut config = two_tracks();
        apply_to_splitter_config(&mut config, "shop", "web", &spec(json!({})), 1);
        assert!(config.backends.iter().all(|backend| backend.discovery.is_none()));
    }

    #[test]
    fn service_wide_limits_are_divided_among_the_splitter_replicas() {
        let spec = spec(json!({"rateLimits": {
            "identityHeader": "x-api-key",
            "anonymous": {"requests": 10, "burst": 5},
            "identified": {"requests": 100},
            "routes": [{"pathPrefix": "/search", "anonymous": {"requests": 60, "period": "1m"}}],
            "maxKeys": 5000,
        }}));
        let mut config = two_tracks();
        apply_to_splitter_config(&mut config, "shop", "web", &spec, 2);
        let limits = config.rate_limits.unwrap();
        let bucket = |requests_per_second, burst| {
            Some(TokenBucketConfig {
                requests_per_second,
                burst,
            })
        };
        assert_eq!(limits.anonymous, bucket(5.0, 3));
        assert_eq!(limits.identified, bucket(50.0, 50));
        assert_eq!(limits.routes[0].anonymous, bucket(0.5, 30));
        assert_eq!(limits.routes[0].identified, None);
        assert_eq!(limits.identity_header.as_deref(), Some("x-api-key"));
        assert_eq!(limits.key, RateLimitKey::default());
        assert_eq!(limits.max_keys, 5000);
        let one = per_replica(spec.rate_limits.as_ref().unwrap(), 1);
        assert_eq!(one.anonymous, bucket(10.0, 5));
    }
}
