//! The front tier of a ReplicatedService as its spec asks for it, apart from rollouts and scaling
//! to zero: whether the request splitter must stand in front of the service, and what the spec adds
//! to the splitter's document, its Role and its Deployment — per-pod endpoints for session
//! affinity, rate limits, the shared HTTP cache (`spec.cache`) and TLS termination with the
//! certificate of a Secret (`spec.tls`). Pure.

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector},
    rbac::v1::{PolicyRule, Role},
};
use outrigger_api::{
    rate_limits::{RateLimit, RateLimits},
    schema::parse_duration,
    ReplicatedServiceSpec,
};
use outrigger_contract::splitter::{
    CacheConfig, EndpointDiscoveryConfig, RateLimitsConfig, RouteRateLimitConfig, SplitterConfig, TlsConfig,
    TokenBucketConfig,
};

use crate::{canary, conditions::ChildFailure, owner::Owner};

/// Whether the spec needs the request splitter in front of the service even without a rollout or
/// scaling to zero: session affinity (kept per pod by the splitter, which kube-proxy cannot do),
/// rate limits (counted by the splitter), the shared cache and TLS termination.
pub fn needs_front_tier(spec: &ReplicatedServiceSpec) -> bool {
    spec.session_affinity.is_some()
        || spec.rate_limits.is_some()
        || spec.cache.is_some()
        || spec.tls.is_some()
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

/// The keys of a `kubernetes.io/tls` Secret.
pub const TLS_KEYS: [&str; 2] = ["tls.crt", "tls.key"];

/// What is wrong with the TLS Secret `spec.tls` names, given the keys it holds (`None`: it does not
/// exist). The front splitter keeps serving with the last good certificate it had; this makes the
/// service `Degraded` meanwhile.
pub fn tls_secret_failure<'a>(
    spec: &ReplicatedServiceSpec,
    keys: Option<impl IntoIterator<Item = &'a str>>,
) -> Option<ChildFailure> {
    let tls = spec.tls.as_ref()?;
    let Some(keys) = keys else {
        return Some(ChildFailure {
            reason: "TlsSecretMissing",
            message: format!("spec.tls.secretName: Secret {:?} does not exist", tls.secret_name),
        });
    };
    let keys: Vec<&str> = keys.into_iter().collect();
    let missing: Vec<&str> = TLS_KEYS.into_iter().filter(|key| !keys.contains(key)).collect();
    (!missing.is_empty()).then(|| ChildFailure {
        reason: "TlsSecretInvalid",
        message: format!(
            "spec.tls.secretName: Secret {:?} has no {}",
            tls.secret_name,
            missing.join(" or ")
        ),
    })
}

/// Adds the cache and TLS settings of `spec` to the front splitter's document.
pub fn configure(namespace: &str, spec: &ReplicatedServiceSpec, config: &mut SplitterConfig) {
    config.cache = spec.cache.as_ref().map(|cache| {
        let mut config = CacheConfig::new(u64::try_from(cache.max_bytes).unwrap_or(0));
        if let Some(max_object_bytes) = cache.max_object_bytes {
            config.max_object_bytes = u64::try_from(max_object_bytes).unwrap_or(0);
        }
        config
    });
    config.tls = spec
        .tls
        .as_ref()
        .map(|tls| TlsConfig::secret(format!("{namespace}/{}", tls.secret_name)));
}

/// The front splitter's Role with what the edge features need: `get`, `list` and `watch` on exactly
/// the TLS Secret (the splitter watches it by a field selector on its name, which `resourceNames`
/// admits), and `create` and `patch` on Events, which report a certificate the splitter rejected.
pub fn with_access(mut role: Role, spec: &ReplicatedServiceSpec) -> Role {
    let Some(tls) = &spec.tls else {
        return role;
    };
    let rule = |resource: &str, names: Option<Vec<String>>, verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec![resource.to_owned()]),
        resource_names: names,
        verbs: verbs.iter().map(|verb| (*verb).to_owned()).collect(),
        ..PolicyRule::default()
    };
    let rules = role.rules.get_or_insert_with(Vec::new);
    rules.push(rule(
        "secrets",
        Some(vec![tls.secret_name.clone()]),
        &["get", "list", "watch"],
    ));
    rules.push(rule("events", None, &["create", "patch"]));
    role
}

/// The front splitter's Deployment with what its Events need: the pod's name and namespace, and the
/// service the Events are about.
pub fn with_event_origin(
    mut deployment: Deployment,
    owner: &Owner,
    spec: &ReplicatedServiceSpec,
) -> Deployment {
    if spec.tls.is_none() {
        return deployment;
    }
    let field = |name: &str, path: &str| EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let value = |name: &str, value: String| EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..EnvVar::default()
    };
    let containers = deployment
        .spec
        .as_mut()
        .and_then(|spec| spec.template.spec.as_mut())
        .map(|pod| pod.containers.iter_mut());
    for container in containers.into_iter().flatten() {
        let env = container.env.get_or_insert_with(Vec::new);
        env.extend([
            field("OUTRIGGER_POD_NAME", "metadata.name"),
            field("OUTRIGGER_POD_NAMESPACE", "metadata.namespace"),
            value("OUTRIGGER_OWNER", format!("ReplicatedService/{}", owner.name)),
            value("OUTRIGGER_OWNER_UID", owner.reference.uid.clone()),
        ]);
    }
    deployment
}

#[cfg(test)]
mod affinity_and_rate_limit_tests {
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
        assert!(!needs_front_tier(&spec(json!({}))));
        assert!(needs_front_tier(&spec(
            json!({"sessionAffinity": {"source": "header", "name": "x-user"}})
        )));
        assert!(needs_front_tier(&spec(
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

#[cfg(test)]
mod cache_and_tls_tests {
    use serde_json::{json, Value};

    use super::*;

    fn spec(extra: Value) -> ReplicatedServiceSpec {
        let mut spec = json!({
            "template": {"spec": {"containers": [{"name": "app", "image": "app:1"}]}},
            "ports": [{"name": "http", "port": 80}],
        });
        for (key, value) in extra.as_object().unwrap() {
            spec[key] = value.clone();
        }
        serde_json::from_value(spec).unwrap()
    }

    #[test]
    fn a_cache_or_tls_puts_the_splitter_in_front() {
        assert!(!needs_front_tier(&spec(json!({}))));
        assert!(needs_front_tier(&spec(json!({"cache": {"maxBytes": 1_048_576}}))));
        assert!(needs_front_tier(&spec(json!({"tls": {"secretName": "web-tls"}}))));
    }

    #[test]
    fn the_splitter_document_gets_the_cache_and_the_secret() {
        let spec = spec(json!({
            "cache": {"maxBytes": 67_108_864, "maxObjectBytes": 65_536},
            "tls": {"secretName": "web-tls"},
        }));
        let mut config = SplitterConfig::new(([0, 0, 0, 0], 8080).into(), Vec::new());
        configure("shop", &spec, &mut config);
        assert_eq!(
            config.cache,
            Some(CacheConfig {
                max_bytes: 67_108_864,
                max_object_bytes: 65_536
            })
        );
        assert_eq!(config.tls, Some(TlsConfig::secret("shop/web-tls")));
        let mut config = SplitterConfig::new(([0, 0, 0, 0], 8080).into(), Vec::new());
        configure("shop", &spec_without_edge(), &mut config);
        assert_eq!((config.cache, config.tls), (None, None));
    }

    fn spec_without_edge() -> ReplicatedServiceSpec {
        spec(json!({}))
    }

    #[test]
    fn a_missing_or_incomplete_tls_secret_is_a_failure_naming_the_field() {
        let with_tls = spec(json!({"tls": {"secretName": "web-tls"}}));
        let missing = tls_secret_failure(&with_tls, None::<Vec<&str>>).unwrap();
        assert_eq!(missing.reason, "TlsSecretMissing");
        assert!(
            missing.message.starts_with("spec.tls.secretName"),
            "{}",
            missing.message
        );
        let partial = tls_secret_failure(&with_tls, Some(["tls.crt"])).unwrap();
        assert_eq!(partial.reason, "TlsSecretInvalid");
        assert!(partial.message.ends_with("has no tls.key"), "{}", partial.message);
        assert_eq!(tls_secret_failure(&with_tls, Some(["tls.crt", "tls.key"])), None);
        assert_eq!(tls_secret_failure(&spec(json!({})), None::<Vec<&str>>), None);
    }

    #[test]
    fn the_role_reads_exactly_the_tls_secret_and_writes_events() {
        let role = with_access(Role::default(), &spec(json!({"tls": {"secretName": "web-tls"}})));
        let rules = role.rules.unwrap();
        assert_eq!(rules[0].resources.as_deref(), Some(&["secrets".to_owned()][..]));
        assert_eq!(
            rules[0].resource_names.as_deref(),
            Some(&["web-tls".to_owned()][..])
        );
        assert_eq!(rules[0].verbs, ["get", "list", "watch"]);
        assert_eq!(rules[1].resources.as_deref(), Some(&["events".to_owned()][..]));
        assert_eq!(rules[1].verbs, ["create", "patch"]);
        let untouched = with_access(Role::default(), &spec(json!({"cache": {"maxBytes": 1_048_576}})));
        assert_eq!(untouched.rules, None);
    }
}
