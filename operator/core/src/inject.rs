//! Sidecar injection: which sidecars a pod gets, and the mutated pod. Pure: the webhook is a thin
//! HTTP shell that resolves the owner, calls [`plan`] and [`mutate`], and diffs the result into a
//! JSON patch.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector, Pod, Probe,
    ResourceRequirements, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::{api::resource::Quantity, util::intstr::IntOrString};
use outrigger_api::common::{SidecarKind, SidecarSpec};

use crate::labels;

/// Annotation recording what was injected; its presence makes injection a no-op.
pub const INJECTED: &str = "outrigger.dev/injected";
/// Volume holding the service's sidecar configuration, mounted read-only at [`CONFIG_DIR`].
pub const CONFIG_VOLUME: &str = "outrigger-config";
/// Volume shared by the app and the log adapter.
pub const LOGS_VOLUME: &str = "outrigger-logs";
pub const CONFIG_DIR: &str = "/etc/outrigger";
pub const LOGS_DIR: &str = "/var/log/outrigger";

/// Why a pod cannot be injected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error("unknown sidecar {name:?} in annotation {annotation}; known sidecars: {known}")]
    UnknownSidecar {
        name: String,
        annotation: &'static str,
        known: String,
    },
    #[error("the pod already has a {what} named {name:?}, which the {sidecar} sidecar needs; rename it")]
    NameClash {
        what: &'static str,
        name: String,
        sidecar: String,
    },
}

/// Operator-wide defaults for every sidecar.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SidecarDefaults {
    /// Image per sidecar; missing ones use `outrigger/<name>:<tag>`.
    pub images: BTreeMap<SidecarKind, String>,
    pub image_tag: String,
    /// Requests and limits of every sidecar, so injected pods fit namespaces whose ResourceQuota
    /// demands them.
    pub resources: Option<ResourceRequirements>,
    /// Per sidecar: requests and limits that replace those of `resources`, resource by resource.
    pub resources_for: BTreeMap<SidecarKind, ResourceRequirements>,
}

/// The default requests and limits of a sidecar. Measured: the request splitter and the other
/// sidecars idle at about 7 MiB RSS and a few millicores. Requests leave four times that memory
/// (buffers of a few busy connections) at 10m CPU, so many pods still pack onto a node; limits
/// leave room for bursts (the splitter buffers retried bodies and mirrors) without letting a
/// sidecar starve its app.
pub fn default_sidecar_resources() -> ResourceRequirements {
    let quantities = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
        ])
    };
    ResourceRequirements {
        requests: Some(quantities("10m", "32Mi")),
        limits: Some(quantities("500m", "128Mi")),
        ..ResourceRequirements::default()
    }
}

/// `base` with each request and limit that `overrides` names replaced.
fn overlay(base: Option<&ResourceRequirements>, overrides: &ResourceRequirements) -> ResourceRequirements {
    let mut merged = base.cloned().unwrap_or_default();
    for (target, source) in [
        (&mut merged.requests, &overrides.requests),
        (&mut merged.limits, &overrides.limits),
    ] {
        if let Some(source) = source {
            target
                .get_or_insert_with(BTreeMap::new)
                .extend(source.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    merged
}

impl SidecarDefaults {
    /// The requests and limits of `kind`: the operator-wide ones with its own overrides on top.
    pub fn resources(&self, kind: SidecarKind) -> Option<ResourceRequirements> {
        match self.resources_for.get(&kind) {
            Some(overrides) => Some(overlay(self.resources.as_ref(), overrides)),
            None => self.resources.clone(),
        }
    }

    pub fn image(&self, kind: SidecarKind) -> String {
        self.images.get(&kind).cloned().unwrap_or_else(|| {
            let tag = if self.image_tag.is_empty() {
                "latest"
            } else {
                self.image_tag.as_str()
            };
            format!("outrigger/{kind}:{tag}")
        })
    }
}

/// The admin port (`/metrics`, `/healthz`, `/readyz`) of each sidecar, distinct so several fit in one pod.
pub fn admin_port(kind: SidecarKind) -> i32 {
    match kind {
        SidecarKind::ConfigSync => 9901,
        SidecarKind::ShardingAmbassador => 9902,
        SidecarKind::RequestSplitter => 9903,
        SidecarKind::LogAdapter => 9904,
        SidecarKind::MetricsAdapter => 9905,
        SidecarKind::HealthAdapter => 9906,
    }
}

fn short_code(kind: SidecarKind) -> &'static str {
    match kind {
        SidecarKind::ConfigSync => "cs",
        SidecarKind::ShardingAmbassador => "sa",
        SidecarKind::RequestSplitter => "rs",
        SidecarKind::LogAdapter => "la",
        SidecarKind::MetricsAdapter => "ma",
        SidecarKind::HealthAdapter => "ha",
    }
}

/// One sidecar to inject, fully resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct SidecarToInject {
    pub kind: SidecarKind,
    pub image: String,
    pub resources: Option<ResourceRequirements>,
    pub settings: BTreeMap<String, String>,
}

/// Everything injection needs for one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub sidecars: Vec<SidecarToInject>,
    /// ConfigMap mounted at [`CONFIG_DIR`]; an empty directory when `None`.
    pub config_map: Option<String>,
    /// The cluster runs sidecars natively (Kubernetes 1.29+): init containers with
    /// `restartPolicy: Always`, started and ready before the app.
    pub native_sidecars: bool,
}

/// What the pod's owner asks for, when it is a ReplicatedService or ShardedService.
#[derive(Debug, Clone, Copy)]
pub struct OwnerSidecars<'a> {
    pub sidecars: &'a [SidecarSpec],
    pub config_map: &'a str,
}

/// Which ReplicatedService or ShardedService (by name) a pod belongs to, from its labels.
pub fn owner_of(pod: &Pod) -> Option<(&'static str, String)> {
    let labels = pod.metadata.labels.as_ref()?;
    if labels.get(labels::MANAGED_BY).map(String::as_str) != Some(labels::MANAGED_BY_VALUE) {
        return None;
    }
    if let Some(name) = labels.get(labels::REPLICATED_SERVICE) {
        return Some(("ReplicatedService", name.clone()));
    }
    labels
        .get(labels::SHARDED_SERVICE)
        .map(|name| ("ShardedService", name.clone()))
}

/// Sidecars named by the pod's `outrigger.dev/inject` annotation (`request-splitter,log-adapter`).
pub fn annotated_sidecars(pod: &Pod) -> Result<Vec<SidecarKind>, InjectError> {
    let Some(value) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(labels::INJECT))
    else {
        return Ok(Vec::new());
    };
    let mut kinds = Vec::new();
    for name in value
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty() && *n != "none")
    {
        let kind = SidecarKind::parse(name).ok_or_else(|| InjectError::UnknownSidecar {
            name: name.to_owned(),
            annotation: labels::INJECT,
            known: SidecarKind::ALL.map(SidecarKind::as_str).join(", "),
        })?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok(kinds)
}

/// Decides what to inject: the owner's `spec.sidecars` when the pod belongs to a service, otherwise
/// the annotation. `None` when there is nothing to inject.
pub fn plan(
    pod: &Pod,
    owner: Option<OwnerSidecars<'_>>,
    defaults: &SidecarDefaults,
    native_sidecars: bool,
) -> Result<Option<Plan>, InjectError> {
    let (sidecars, config_map): (Vec<SidecarToInject>, Option<String>) = match owner {
        Some(owner) => (
            owner
                .sidecars
                .iter()
                .map(|spec| SidecarToInject {
                    kind: spec.name,
                    image: spec.image.clone().unwrap_or_else(|| defaults.image(spec.name)),
                    resources: spec.resources.clone().or_else(|| defaults.resources(spec.name)),
                    settings: spec.settings.clone(),
                })
                .collect(),
            Some(owner.config_map.to_owned()),
        ),
        None => (
            annotated_sidecars(pod)?
                .into_iter()
                .map(|kind| SidecarToInject {
                    kind,
                    image: defaults.image(kind),
                    resources: defaults.resources(kind),
                    settings: BTreeMap::new(),
                })
                .collect(),
            None,
        ),
    };
    Ok((!sidecars.is_empty()).then_some(Plan {
        sidecars,
        config_map,
        native_sidecars,
    }))
}

/// Whether the pod was injected already (a reinvocation, or a pod re-submitted as is).
pub fn already_injected(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(INJECTED))
}

/// The pod with the sidecars, volumes and annotations of `plan` added. Idempotent: an injected pod
/// comes back unchanged. Refuses (never overwrites) user containers and volumes with our names.
pub fn mutate(pod: &Pod, plan: &Plan) -> Result<Pod, InjectError> {
    if already_injected(pod) {
        return Ok(pod.clone());
    }
    let mut pod = pod.clone();
    let spec = pod.spec.get_or_insert_with(Default::default);
    let taken_containers: Vec<String> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c| c.name.clone())
        .collect();
    let taken_volumes: Vec<String> = spec.volumes.iter().flatten().map(|v| v.name.clone()).collect();
    let has_log_adapter = plan.sidecars.iter().any(|s| s.kind == SidecarKind::LogAdapter);
    let first_sidecar = plan
        .sidecars
        .first()
        .map(|s| s.kind.to_string())
        .unwrap_or_default();
    for sidecar in &plan.sidecars {
        if taken_containers.iter().any(|name| name == sidecar.kind.as_str()) {
            return Err(InjectError::NameClash {
                what: "container",
                name: sidecar.kind.to_string(),
                sidecar: sidecar.kind.to_string(),
            });
        }
    }
    for volume in [CONFIG_VOLUME, LOGS_VOLUME] {
        if taken_volumes.iter().any(|name| name == volume) {
            return Err(InjectError::NameClash {
                what: "volume",
                name: volume.to_owned(),
                sidecar: first_sidecar,
            });
        }
    }

    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    volumes.push(Volume {
        name: CONFIG_VOLUME.to_owned(),
        config_map: plan.config_map.as_ref().map(|name| ConfigMapVolumeSource {
            name: name.clone(),
            optional: Some(true),
            ..ConfigMapVolumeSource::default()
        }),
        empty_dir: plan.config_map.is_none().then(EmptyDirVolumeSource::default),
        ..Volume::default()
    });
    volumes.push(Volume {
        name: LOGS_VOLUME.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    });
    if has_log_adapter {
        for container in &mut spec.containers {
            container
                .volume_mounts
                .get_or_insert_with(Vec::new)
                .push(VolumeMount {
                    name: LOGS_VOLUME.to_owned(),
                    mount_path: LOGS_DIR.to_owned(),
                    ..VolumeMount::default()
                });
        }
    }

    let sidecars: Vec<Container> = plan
        .sidecars
        .iter()
        .map(|s| sidecar_container(s, plan.native_sidecars))
        .collect();
    if plan.native_sidecars {
        spec.init_containers.get_or_insert_with(Vec::new).extend(sidecars);
    } else {
        // The kubelet starts containers in order and waits for each postStart hook, so sidecars placed
        // first with a hook that waits for their readiness are up before the app starts.
        let apps = std::mem::take(&mut spec.containers);
        spec.containers = sidecars.into_iter().chain(apps).collect();
    }
    pod.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(
        INJECTED.to_owned(),
        plan.sidecars
            .iter()
            .map(|s| s.kind.as_str())
            .collect::<Vec<_>>()
            .join(","),
    );
    Ok(pod)
}

/// The security context of every container the operator adds: non-root, read-only root filesystem,
/// no privilege escalation, all capabilities dropped.
pub fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65534),
        run_as_group: Some(65534),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

fn sidecar_container(sidecar: &SidecarToInject, native: bool) -> Container {
    let port = admin_port(sidecar.kind);
    let field_env = |name: &str, path: &str| EnvVar {
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
    let value_env = |name: &str, value: String| EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..EnvVar::default()
    };
    let settings = serde_json::to_string(&sidecar.settings).unwrap_or_else(|_| "{}".to_owned());
    let binary = format!("/outrigger-{}", sidecar.kind);
    let is_outrigger_image = sidecar.image.starts_with(&format!("outrigger/{}:", sidecar.kind));
    Container {
        name: sidecar.kind.to_string(),
        image: Some(sidecar.image.clone()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            value_env("OUTRIGGER_ADMIN_PORT", port.to_string()),
            value_env("OUTRIGGER_ADMIN_ADDR", format!("0.0.0.0:{port}")),
            value_env("OUTRIGGER_CONFIG_DIR", CONFIG_DIR.to_owned()),
            value_env("OUTRIGGER_SETTINGS", settings),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some(format!("{}-admin", short_code(sidecar.kind))),
            container_port: port,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/readyz".to_owned()),
                port: IntOrString::Int(port),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(2),
            ..Probe::default()
        }),
        // Our own images can wait for their readiness; a user-supplied image is started in order only.
        lifecycle: (!native && is_outrigger_image).then(|| Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec![binary, "wait-ready".to_owned()]),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        restart_policy: native.then(|| "Always".to_owned()),
        resources: sidecar.resources.clone(),
        security_context: Some(restricted_security_context()),
        volume_mounts: Some(vec![
            VolumeMount {
                name: CONFIG_VOLUME.to_owned(),
                mount_path: CONFIG_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: LOGS_VOLUME.to_owned(),
                mount_path: LOGS_DIR.to_owned(),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn pod(extra: Value) -> Pod {
        let mut base = json!({
            "metadata": {"name": "p", "labels": {"app": "x"}},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]},
        });
        merge(&mut base, &extra);
        serde_json::from_value(base).unwrap()
    }

    fn merge(target: &mut Value, patch: &Value) {
        match (target, patch) {
            (Value::Object(t), Value::Object(p)) => {
                for (k, v) in p {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
            (t, p) => *t = p.clone(),
        }
    }

    fn specs(kinds: &[&str]) -> Vec<SidecarSpec> {
        kinds
            .iter()
            .map(|k| serde_json::from_value(json!({"name": k})).unwrap())
            .collect()
    }

    fn owner_plan(kinds: &[&str], native: bool) -> Plan {
        let sidecars = specs(kinds);
        let owner = OwnerSidecars {
            sidecars: &sidecars,
            config_map: "web-outrigger",
        };
        plan(
            &pod(json!({})),
            Some(owner),
            &SidecarDefaults {
                image_tag: "dev".into(),
                ..Default::default()
            },
            native,
        )
        .unwrap()
        .unwrap()
    }

    fn names(containers: &[Container]) -> Vec<&str> {
        containers.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn sidecars_go_before_the_app_with_shared_volumes_and_a_restrictive_security_context() {
        let plan = owner_plan(&["request-splitter", "log-adapter"], false);
        let injected = mutate(&pod(json!({})), &plan).unwrap();
        let spec = injected.spec.unwrap();
        assert_eq!(
            names(&spec.containers),
            ["request-splitter", "log-adapter", "app"]
        );
        let splitter = &spec.containers[0];
        assert_eq!(splitter.image.as_deref(), Some("outrigger/request-splitter:dev"));
        let security = splitter.security_context.as_ref().unwrap();
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(
            security.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        let hook = splitter
            .lifecycle
            .as_ref()
            .unwrap()
            .post_start
            .as_ref()
            .unwrap()
            .exec
            .as_ref()
            .unwrap();
        assert_eq!(hook.command.as_deref().unwrap()[1], "wait-ready");
        let volumes: Vec<_> = spec
            .volumes
            .unwrap()
            .into_iter()
            .map(|v| (v.name, v.config_map.map(|c| c.name)))
            .collect();
        assert_eq!(
            volumes,
            [
                (CONFIG_VOLUME.to_owned(), Some("web-outrigger".to_owned())),
                (LOGS_VOLUME.to_owned(), None)
            ]
        );
        let app_mounts = spec.containers[2].volume_mounts.as_ref().unwrap();
        assert_eq!(
            app_mounts[0].mount_path, LOGS_DIR,
            "the app shares the log directory with the log adapter"
        );
        assert_eq!(
            injected.metadata.annotations.unwrap()[INJECTED],
            "request-splitter,log-adapter"
        );
    }

    #[test]
    fn native_sidecars_become_init_containers_that_keep_running() {
        let injected = mutate(&pod(json!({})), &owner_plan(&["request-splitter"], true)).unwrap();
        let spec = injected.spec.unwrap();
        assert_eq!(names(&spec.containers), ["app"]);
        let init = spec.init_containers.unwrap();
        assert_eq!(names(&init), ["request-splitter"]);
        assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));
        assert!(init[0].lifecycle.is_none());
    }

    #[test]
    fn injecting_twice_changes_nothing() {
        let plan = owner_plan(&["request-splitter"], false);
        let once = mutate(&pod(json!({})), &plan).unwrap();
        assert_eq!(mutate(&once, &plan).unwrap(), once);
    }

    #[test]
    fn user_containers_and_volumes_with_our_names_are_refused_not_overwritten() {
        let plan = owner_plan(&["request-splitter"], false);
        let clash = pod(json!({"spec": {"containers": [{"name": "request-splitter", "image": "mine"}]}}));
        assert!(matches!(
            mutate(&clash, &plan),
            Err(InjectError::NameClash {
                what: "container",
                ..
            })
        ));
        let clash = pod(json!({"spec": {"volumes": [{"name": "outrigger-config", "emptyDir": {}}]}}));
        let error = mutate(&clash, &plan).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the pod already has a volume named \"outrigger-config\", which the request-splitter sidecar needs; rename it"
        );
    }

    #[test]
    fn annotations_name_the_sidecars_of_plain_pods_and_unknown_names_are_refused() {
        let annotated = pod(
            json!({"metadata": {"annotations": {"outrigger.dev/inject": "log-adapter, metrics-adapter"}}}),
        );
        let plan = plan(&annotated, None, &SidecarDefaults::default(), false)
            .unwrap()
            .unwrap();
        assert_eq!(
            plan.sidecars.iter().map(|s| s.kind).collect::<Vec<_>>(),
            [SidecarKind::LogAdapter, SidecarKind::MetricsAdapter]
        );
        assert_eq!(plan.config_map, None);

        let unknown =
            pod(json!({"metadata": {"annotations": {"outrigger.dev/inject": "log-adapter,teleporter"}}}));
        let error = super::plan(&unknown, None, &SidecarDefaults::default(), false).unwrap_err();
        assert!(
            error.to_string().starts_with("unknown sidecar \"teleporter\""),
            "{error}"
        );

        assert_eq!(
            super::plan(&pod(json!({})), None, &SidecarDefaults::default(), false).unwrap(),
            None
        );
    }

    #[test]
    fn owner_settings_images_and_resources_override_the_defaults() {
        let sidecars: Vec<SidecarSpec> = serde_json::from_value(json!([
            {"name": "request-splitter", "image": "mine:1", "settings": {"listenPort": "8000"}},
        ]))
        .unwrap();
        let defaults = SidecarDefaults {
            images: BTreeMap::from([(SidecarKind::RequestSplitter, "registry/rs:2".to_owned())]),
            ..Default::default()
        };
        let plan = plan(
            &pod(json!({})),
            Some(OwnerSidecars {
                sidecars: &sidecars,
                config_map: "c",
            }),
            &defaults,
            false,
        )
        .unwrap()
        .unwrap();
        let container = &mutate(&pod(json!({})), &plan).unwrap().spec.unwrap().containers[0];
        assert_eq!(container.image.as_deref(), Some("mine:1"));
        let settings = container
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "OUTRIGGER_SETTINGS")
            .unwrap();
        assert_eq!(settings.value.as_deref(), Some(r#"{"listenPort":"8000"}"#));
        assert!(
            container.lifecycle.is_none(),
            "a user image may not have the wait-ready command"
        );
    }

    #[test]
    fn sidecars_get_the_default_requests_and_limits_with_per_sidecar_overrides_on_top() {
        let defaults = SidecarDefaults {
            resources: Some(default_sidecar_resources()),
            resources_for: BTreeMap::from([(
                SidecarKind::RequestSplitter,
                serde_json::from_value(json!({"limits": {"memory": "256Mi"}})).unwrap(),
            )]),
            ..Default::default()
        };
        let sidecars = specs(&["request-splitter", "log-adapter"]);
        let owner = OwnerSidecars {
            sidecars: &sidecars,
            config_map: "c",
        };
        let plan = plan(&pod(json!({})), Some(owner), &defaults, false)
            .unwrap()
            .unwrap();
        let containers = mutate(&pod(json!({})), &plan).unwrap().spec.unwrap().containers;
        let resources = |index: usize| serde_json::to_value(&containers[index].resources).unwrap();
        assert_eq!(
            resources(0),
            json!({"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}})
        );
        assert_eq!(
            resources(1),
            json!({"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "500m", "memory": "128Mi"}})
        );
    }

    #[test]
    fn resources_in_the_services_spec_replace_the_defaults() {
        let defaults = SidecarDefaults {
            resources: Some(default_sidecar_resources()),
            ..Default::default()
        };
        let sidecars: Vec<SidecarSpec> = serde_json::from_value(json!([
            {"name": "log-adapter", "resources": {"limits": {"cpu": "1"}}},
        ]))
        .unwrap();
        let owner = OwnerSidecars {
            sidecars: &sidecars,
            config_map: "c",
        };
        let plan = plan(&pod(json!({})), Some(owner), &defaults, false)
            .unwrap()
            .unwrap();
        assert_eq!(
            serde_json::to_value(&plan.sidecars[0].resources).unwrap(),
            json!({"limits": {"cpu": "1"}})
        );
    }

    #[test]
    fn pods_of_services_are_recognised_by_their_labels() {
        let owned = pod(
            json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "outrigger", "outrigger.dev/replicatedservice": "web"}}}),
        );
        assert_eq!(owner_of(&owned), Some(("ReplicatedService", "web".to_owned())));
        let forged = pod(json!({"metadata": {"labels": {"outrigger.dev/replicatedservice": "web"}}}));
        assert_eq!(owner_of(&forged), None);
    }
}
