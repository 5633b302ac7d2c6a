//! The edge features of a ReplicatedService's front tier (the request splitter Deployment in front
//! of its replicas): the shared HTTP cache (`spec.cache`) and TLS termination with the certificate
//! of a Secret (`spec.tls`). Pure: what they add to the splitter's document, its Role and its
//! Deployment.

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector},
    rbac::v1::{PolicyRule, Role},
};
use outrigger_api::ReplicatedServiceSpec;
use outrigger_contract::splitter::{CacheConfig, SplitterConfig, TlsConfig};

use crate::{conditions::ChildFailure, owner::Owner};

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

/// Whether the spec asks for something only the front tier does, so that the splitter fronts the
/// service even without a rollout or scaling to zero.
pub fn needs_front_tier(spec: &ReplicatedServiceSpec) -> bool {
    spec.cache.is_some() || spec.tls.is_some()
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
mod tests {
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
