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
use outrigger_contract::config_sync::{ConfigSyncSettings, Reload};
use outrigger_contract::sidecars::{HEALTH_PROBE_APP_SETTING, HEALTH_PROBE_PORT};

use crate::labels;

/// Annotation recording what was injected; its presence makes injection a no-op.
pub const INJECTED: &str = "outrigger.dev/injected";
/// Volume holding the service's sidecar configuration, mounted read-only at [`CONFIG_DIR`].
pub const CONFIG_VOLUME: &str = "outrigger-config";
/// Volume shared by the app and the log adapter.
pub const LOGS_VOLUME: &str = "outrigger-logs";
/// Volume the config sync sidecar writes into and the app reads from.
pub const CONFIG_SYNC_VOLUME: &str = "outrigger-config-sync";
pub const CONFIG_DIR: &str = "/etc/outrigger";
/// Annotation on a client pod (or a pod template): the ShardedService it reaches through a
/// sharding ambassador on loopback, `<name>` or `<name>:<local port>` (default 6379).
pub const SHARDED_SERVICE_ANNOTATION: &str = "outrigger.dev/sharded-service";
/// Label injection puts on a client pod of a ShardedService: its name. The ShardedService
/// controller finds its clients' ServiceAccounts by it, to let them read the shard map.
pub const SHARDED_CLIENT_LABEL: &str = "outrigger.dev/sharded-client";
/// Port the ambassador listens on, on loopback, when the annotation names none.
pub const DEFAULT_AMBASSADOR_PORT: u16 = 6379;
/// Sidecar settings of the sharding ambassador: the ShardedService and the loopback port.
pub const SETTING_SHARDED_SERVICE: &str = "shardedService";
pub const SETTING_LOCAL_PORT: &str = "localPort";
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
    #[error("annotation {annotation} must be `<ShardedService name>` or `<name>:<port>`, not {value:?}")]
    ShardedServiceAnnotation { annotation: &'static str, value: String },
    #[error("the {sidecar} sidecar's settings are invalid: {message}")]
    Settings { sidecar: String, message: String },
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
    /// UID of the owning service: the sidecars' Events name it, and `kubectl describe` matches on it.
    pub owner_uid: Option<String>,
}

/// What the pod's owner asks for, when it is a ReplicatedService or ShardedService.
#[derive(Debug, Clone, Copy)]
pub struct OwnerSidecars<'a> {
    pub sidecars: &'a [SidecarSpec],
    pub config_map: &'a str,
    pub uid: Option<&'a str>,
}

/// The sidecars that write Events about the pod's owner (the health adapter's transitions, the log
/// adapter's sink and file trouble): injection gives them the owner, and the operator's Role lets
/// the pods' ServiceAccount create and patch Events.
pub const EVENT_WRITERS: [SidecarKind; 2] = [SidecarKind::HealthAdapter, SidecarKind::LogAdapter];

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

/// Annotation on a plain pod holding one sidecar's settings as a JSON object of strings
/// (`outrigger.dev/config-sync-settings: '{"configMaps":"app"}'`).
pub fn settings_annotation(kind: SidecarKind) -> String {
    format!("outrigger.dev/{kind}-settings")
}

fn annotated_settings(pod: &Pod, kind: SidecarKind) -> BTreeMap<String, String> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(&settings_annotation(kind)))
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default()
}

/// Decides what to inject: the owner's `spec.sidecars` when the pod belongs to a service, otherwise
/// the annotation. `None` when there is nothing to inject.
pub fn plan(
    pod: &Pod,
    owner: Option<OwnerSidecars<'_>>,
    defaults: &SidecarDefaults,
    native_sidecars: bool,
) -> Result<Option<Plan>, InjectError> {
    let owner_uid = owner.and_then(|owner| owner.uid).map(str::to_owned);
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
                    settings: annotated_settings(pod, kind),
                })
                .collect(),
            None,
        ),
    };
    let mut sidecars = sidecars;
    if let Some(client) = sharded_client(pod)? {
        match sidecars
            .iter_mut()
            .find(|s| s.kind == SidecarKind::ShardingAmbassador)
        {
            // The owner's own ambassador entry (image, resources) learns which service it serves.
            Some(ambassador) => client.fill(&mut ambassador.settings),
            None => {
                let mut settings = BTreeMap::new();
                client.fill(&mut settings);
                sidecars.push(SidecarToInject {
                    kind: SidecarKind::ShardingAmbassador,
                    image: defaults.image(SidecarKind::ShardingAmbassador),
                    resources: defaults.resources(SidecarKind::ShardingAmbassador),
                    settings,
                });
            }
        }
    }
    Ok((!sidecars.is_empty()).then_some(Plan {
        sidecars,
        config_map,
        native_sidecars,
        owner_uid,
    }))
}

/// The ShardedService a client pod names, and the loopback port its ambassador listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardedClient {
    pub service: String,
    pub local_port: u16,
}

impl ShardedClient {
    fn fill(&self, settings: &mut BTreeMap<String, String>) {
        settings.insert(SETTING_SHARDED_SERVICE.to_owned(), self.service.clone());
        settings
            .entry(SETTING_LOCAL_PORT.to_owned())
            .or_insert_with(|| self.local_port.to_string());
    }
}

/// The pod's [`SHARDED_SERVICE_ANNOTATION`], if any.
pub fn sharded_client(pod: &Pod) -> Result<Option<ShardedClient>, InjectError> {
    let Some(value) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SHARDED_SERVICE_ANNOTATION))
        .map(|value| value.trim())
        .filter(|value| !value.is_empty())
    else {
        return Ok(None);
    };
    let invalid = || InjectError::ShardedServiceAnnotation {
        annotation: SHARDED_SERVICE_ANNOTATION,
        value: value.to_owned(),
    };
    let (service, local_port) = match value.split_once(':') {
        Some((service, port)) => (
            service,
            port.parse::<u16>()
                .ok()
                .filter(|port| *port > 0)
                .ok_or_else(invalid)?,
        ),
        None => (value, DEFAULT_AMBASSADOR_PORT),
    };
    // A DNS label: the ConfigMap `<service>-shard-map` must be a valid name.
    let valid_name = !service.is_empty()
        && service.len() <= 53
        && service
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !service.starts_with('-')
        && !service.ends_with('-');
    if !valid_name {
        return Err(invalid());
    }
    Ok(Some(ShardedClient {
        service: service.to_owned(),
        local_port,
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
    let config_sync = plan
        .sidecars
        .iter()
        .find(|s| s.kind == SidecarKind::ConfigSync)
        .map(|sidecar| {
            ConfigSyncSettings::from_settings(&sidecar.settings).map_err(|error| InjectError::Settings {
                sidecar: sidecar.kind.to_string(),
                message: error.to_string(),
            })
        })
        .transpose()?;
    for volume in [CONFIG_VOLUME, LOGS_VOLUME, CONFIG_SYNC_VOLUME] {
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
    // Asked by its settings, the health adapter answers the app's probes: its checks (with
    // hysteresis, and dependencies kept out of liveness) decide, not a single endpoint of the app.
    if plan.sidecars.iter().any(probes_through_health_adapter) {
        for container in &mut spec.containers {
            point_probes_at_health_adapter(container);
        }
    }
    if let Some(settings) = &config_sync {
        // Secrets are written too, so with any Secret the volume never touches the node's disk.
        volumes.push(Volume {
            name: CONFIG_SYNC_VOLUME.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: settings.has_secrets().then(|| "Memory".to_owned()),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        });
        for container in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            container
                .volume_mounts
                .get_or_insert_with(Vec::new)
                .push(VolumeMount {
                    name: CONFIG_SYNC_VOLUME.to_owned(),
                    mount_path: settings.mount_path.clone(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                });
        }
        if matches!(settings.reload, Reload::Signal { .. }) {
            // The sidecar finds the app's process by name in /proc and signals it.
            spec.share_process_namespace = Some(true);
        }
    }
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

    let container = spec.containers.first().map(|c| c.name.clone());
    let service = owner_of(&pod).map(|(kind, name)| format!("{kind}/{name}"));
    let source = LogSource {
        container,
        owner_uid: service.as_ref().and(plan.owner_uid.clone()),
        owner: service.or_else(|| controller_of(&pod)),
    };
    let spec = pod.spec.get_or_insert_with(Default::default);
    let sidecars: Vec<Container> = plan
        .sidecars
        .iter()
        .map(|s| {
            let mut container = sidecar_container(s, plan.native_sidecars, &source);
            if let (SidecarKind::ConfigSync, Some(settings)) = (s.kind, &config_sync) {
                config_sync_container(&mut container, settings);
            }
            container
        })
        .collect();
    if plan.native_sidecars {
        spec.init_containers.get_or_insert_with(Vec::new).extend(sidecars);
    } else {
        // The kubelet starts containers in order and waits for each postStart hook, so sidecars placed
        // first with a hook that waits for their readiness are up before the app starts.
        let apps = std::mem::take(&mut spec.containers);
        spec.containers = sidecars.into_iter().chain(apps).collect();
    }
    if let Some(service) = plan
        .sidecars
        .iter()
        .find(|s| s.kind == SidecarKind::ShardingAmbassador)
        .and_then(|s| s.settings.get(SETTING_SHARDED_SERVICE))
    {
        pod.metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(SHARDED_CLIENT_LABEL.to_owned(), service.clone());
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

/// Whether this sidecar is a health adapter whose settings ask for the app's probes.
fn probes_through_health_adapter(sidecar: &SidecarToInject) -> bool {
    sidecar.kind == SidecarKind::HealthAdapter
        && sidecar
            .settings
            .get(HEALTH_PROBE_APP_SETTING)
            .is_some_and(|value| value.trim().eq_ignore_ascii_case("true"))
}

/// Replaces an app container's liveness, readiness and startup probes with HTTP probes of the
/// health adapter's endpoints on [`HEALTH_PROBE_PORT`] (the pod shares one network namespace).
fn point_probes_at_health_adapter(container: &mut Container) {
    let probe = |path: &str, failure_threshold: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(i32::from(HEALTH_PROBE_PORT)),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(2),
        timeout_seconds: Some(1),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    };
    container.liveness_probe = Some(probe("/livez", 3));
    container.readiness_probe = Some(probe("/readyz", 1));
    // Up to five minutes to start; liveness counts only after.
    container.startup_probe = Some(probe("/startupz", 150));
}

/// What the sharding ambassador of a client pod needs beyond the common variables: where to listen
/// and which shard map to watch (through the API server: the kubelet's volume lags by a minute).
fn ambassador_env(sidecar: &SidecarToInject) -> Vec<(&'static str, String)> {
    if sidecar.kind != SidecarKind::ShardingAmbassador {
        return Vec::new();
    }
    let mut env = Vec::new();
    let port = sidecar
        .settings
        .get(SETTING_LOCAL_PORT)
        .and_then(|port| port.parse::<u16>().ok())
        .unwrap_or(DEFAULT_AMBASSADOR_PORT);
    env.push(("OUTRIGGER_SHARDING_LISTEN", format!("127.0.0.1:{port}")));
    if let Some(service) = sidecar.settings.get(SETTING_SHARDED_SERVICE) {
        // `$(POD_NAMESPACE)` is expanded by the kubelet from the variable set before it.
        env.push((
            "OUTRIGGER_SHARDING_CONFIGMAP",
            format!("$(POD_NAMESPACE)/{}", crate::sharded::shard_map_name(service)),
        ));
    }
    env
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

/// The config sync sidecar's additions: the shared volume, writable, where the app sees it; the user
/// (and so the files' owner) the settings name.
fn config_sync_container(container: &mut Container, settings: &ConfigSyncSettings) {
    container
        .volume_mounts
        .get_or_insert_with(Vec::new)
        .push(VolumeMount {
            name: CONFIG_SYNC_VOLUME.to_owned(),
            mount_path: settings.mount_path.clone(),
            ..VolumeMount::default()
        });
    container.env.get_or_insert_with(Vec::new).push(EnvVar {
        name: "OUTRIGGER_CONFIG_SYNC_DIR".to_owned(),
        value: Some(settings.mount_path.clone()),
        ..EnvVar::default()
    });
    if let Some(security) = container.security_context.as_mut() {
        if let Some(user) = settings.run_as_user {
            security.run_as_user = Some(user);
            security.run_as_non_root = Some(user != 0);
        }
        if let Some(group) = settings.run_as_group {
            security.run_as_group = Some(group);
        }
    }
}

/// Who writes the logs the log adapter reads: its records carry these, with the pod, namespace and
/// node from the downward API. The sidecars that write Events name the owner in them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct LogSource {
    /// The app container (the pod's first): all of the pod's containers share one log volume.
    container: Option<String>,
    /// `Kind/name` of the owning service, else of the pod's controller.
    owner: Option<String>,
    /// UID of the owning service (not of a plain pod's controller).
    owner_uid: Option<String>,
}

/// `Kind/name` of the pod's controller (a plain pod of a ReplicaSet, a Job...).
fn controller_of(pod: &Pod) -> Option<String> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|reference| reference.controller == Some(true))
        .map(|reference| format!("{}/{}", reference.kind, reference.name))
}

/// What the sidecars that write Events read (the runtime's `events` module): the pod, its node
/// and its owner. The log adapter also adds these to its records (its `enrich` module), with the
/// app container.
fn reporting_env(kind: SidecarKind, source: &LogSource) -> Vec<EnvVar> {
    let mut env = vec![
        field_env("OUTRIGGER_POD_NAME", "metadata.name"),
        field_env("OUTRIGGER_POD_NAMESPACE", "metadata.namespace"),
        field_env("OUTRIGGER_POD_UID", "metadata.uid"),
        field_env("OUTRIGGER_NODE_NAME", "spec.nodeName"),
    ];
    let container = source
        .container
        .as_ref()
        .filter(|_| kind == SidecarKind::LogAdapter);
    for (name, value) in [
        ("OUTRIGGER_CONTAINER_NAME", container),
        ("OUTRIGGER_OWNER", source.owner.as_ref()),
        ("OUTRIGGER_OWNER_UID", source.owner_uid.as_ref()),
    ] {
        if let Some(value) = value {
            env.push(value_env(name, value.clone()));
        }
    }
    env
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn value_env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..EnvVar::default()
    }
}

fn sidecar_container(sidecar: &SidecarToInject, native: bool, source: &LogSource) -> Container {
    let port = admin_port(sidecar.kind);
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        value_env("OUTRIGGER_ADMIN_PORT", port.to_string()),
        value_env("OUTRIGGER_ADMIN_ADDR", format!("0.0.0.0:{port}")),
        value_env("OUTRIGGER_CONFIG_DIR", CONFIG_DIR.to_owned()),
    ];
    if EVENT_WRITERS.contains(&sidecar.kind) {
        env.extend(reporting_env(sidecar.kind, source));
    }
    let settings = serde_json::to_string(&sidecar.settings).unwrap_or_else(|_| "{}".to_owned());
    let binary = format!("/outrigger-{}", sidecar.kind);
    let is_outrigger_image = sidecar.image.starts_with(&format!("outrigger/{}:", sidecar.kind));
    Container {
        name: sidecar.kind.to_string(),
        image: Some(sidecar.image.clone()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        env: Some({
            env.extend(
                ambassador_env(sidecar)
                    .into_iter()
                    .map(|(name, value)| value_env(name, value)),
            );
            env.push(value_env("OUTRIGGER_SETTINGS", settings));
            env
        }),
        ports: Some(
            std::iter::once(ContainerPort {
                name: Some(format!("{}-admin", short_code(sidecar.kind))),
                container_port: port,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            })
            .chain(
                (sidecar.kind == SidecarKind::HealthAdapter).then(|| ContainerPort {
                    name: Some("ha-probe".to_owned()),
                    container_port: i32::from(HEALTH_PROBE_PORT),
                    protocol: Some("TCP".to_owned()),
                    ..ContainerPort::default()
                }),
            )
            .collect(),
        ),
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
            uid: Some("0a1b"),
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
    fn the_log_adapter_learns_who_writes_the_logs_and_shares_their_volume() {
        let plan = owner_plan(&["log-adapter"], false);
        let service_pod = pod(json!({"metadata": {"labels": {
            labels::MANAGED_BY: labels::MANAGED_BY_VALUE,
            labels::REPLICATED_SERVICE: "web",
        }}}));
        let spec = mutate(&service_pod, &plan).unwrap().spec.unwrap();
        let adapter = &spec.containers[0];
        let env: BTreeMap<&str, String> = adapter
            .env
            .iter()
            .flatten()
            .map(|var| {
                let value = var.value.clone().unwrap_or_else(|| {
                    let field = var.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
                    format!("field:{}", field.field_path)
                });
                (var.name.as_str(), value)
            })
            .collect();
        for (name, value) in [
            ("OUTRIGGER_POD_NAME", "field:metadata.name"),
            ("OUTRIGGER_POD_NAMESPACE", "field:metadata.namespace"),
            ("OUTRIGGER_NODE_NAME", "field:spec.nodeName"),
            ("OUTRIGGER_CONTAINER_NAME", "app"),
            ("OUTRIGGER_OWNER", "ReplicatedService/web"),
            ("OUTRIGGER_OWNER_UID", "0a1b"),
        ] {
            assert_eq!(env.get(name).map(String::as_str), Some(value), "{name}");
        }
        let mounted = |container: &Container| {
            container
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == LOGS_VOLUME && m.mount_path == LOGS_DIR)
        };
        assert!(mounted(adapter) && mounted(&spec.containers[1]));

        // A plain pod names its controller; other sidecars get none of these variables.
        let plain = pod(json!({"metadata": {"ownerReferences": [{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9", "uid": "u", "controller": true,
        }]}}));
        let spec = mutate(&plain, &owner_plan(&["request-splitter", "log-adapter"], false))
            .unwrap()
            .spec
            .unwrap();
        let owner = |container: &Container| {
            container
                .env
                .iter()
                .flatten()
                .find(|var| var.name == "OUTRIGGER_OWNER")
                .and_then(|var| var.value.clone())
        };
        assert_eq!(
            owner(&spec.containers[1]).as_deref(),
            Some("ReplicaSet/web-7d4b9")
        );
        assert_eq!(owner(&spec.containers[0]), None);
    }

    /// The variables injection gives a container, values or `field:` paths.
    fn variables_of(container: &Container) -> BTreeMap<String, String> {
        container
            .env
            .iter()
            .flatten()
            .map(|var| {
                let value = var.value.clone().unwrap_or_else(|| {
                    let field = var.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
                    format!("field:{}", field.field_path)
                });
                (var.name.clone(), value)
            })
            .collect()
    }

    #[test]
    fn sidecars_that_write_events_learn_their_pod_and_owner() {
        let service_pod = pod(json!({"metadata": {"labels": {
            labels::MANAGED_BY: labels::MANAGED_BY_VALUE,
            labels::SHARDED_SERVICE: "cache",
        }}}));
        let plain_pod = pod(json!({"metadata": {"ownerReferences": [{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9", "uid": "u", "controller": true,
        }]}}));
        let reporting = [
            ("OUTRIGGER_POD_NAME", "field:metadata.name"),
            ("OUTRIGGER_POD_NAMESPACE", "field:metadata.namespace"),
            ("OUTRIGGER_POD_UID", "field:metadata.uid"),
            ("OUTRIGGER_NODE_NAME", "field:spec.nodeName"),
        ];
        // (sidecar, pod, the owner and its UID it is told; `None`: told nothing)
        type Case<'a> = (&'a str, &'a Pod, Option<(&'a str, Option<&'a str>)>);
        let cases: [Case; 4] = [
            (
                "health-adapter",
                &service_pod,
                Some(("ShardedService/cache", Some("0a1b"))),
            ),
            (
                "log-adapter",
                &service_pod,
                Some(("ShardedService/cache", Some("0a1b"))),
            ),
            // A plain pod's Events are about the pod itself: the controller has no UID here.
            ("health-adapter", &plain_pod, Some(("ReplicaSet/web-7d4b9", None))),
            ("metrics-adapter", &service_pod, None),
        ];
        for (kind, pod, owner) in cases {
            let spec = mutate(pod, &owner_plan(&[kind], false)).unwrap().spec.unwrap();
            let env = variables_of(&spec.containers[0]);
            let get = |name: &str| env.get(name).map(String::as_str);
            match owner {
                Some((owner, uid)) => {
                    for (name, value) in reporting {
                        assert_eq!(get(name), Some(value), "{kind}: {name}");
                    }
                    assert_eq!(get("OUTRIGGER_OWNER"), Some(owner), "{kind}");
                    assert_eq!(get("OUTRIGGER_OWNER_UID"), uid, "{kind}");
                }
                None => {
                    for name in ["OUTRIGGER_POD_UID", "OUTRIGGER_OWNER", "OUTRIGGER_OWNER_UID"] {
                        assert_eq!(get(name), None, "{kind}: {name}");
                    }
                }
            }
            assert_eq!(
                get("OUTRIGGER_CONTAINER_NAME").is_some(),
                kind == "log-adapter",
                "{kind}: only the log adapter names the app container"
            );
        }
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
                uid: None,
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
    fn a_health_adapter_asked_to_answers_the_apps_probes_and_otherwise_leaves_them() {
        let app_probe = json!({"spec": {"containers": [{"name": "app", "image": "app:1",
            "livenessProbe": {"httpGet": {"path": "/own", "port": 8080}}}]}});
        let plan_with = |settings: Value| {
            let sidecars: Vec<SidecarSpec> =
                serde_json::from_value(json!([{"name": "health-adapter", "settings": settings}])).unwrap();
            plan(
                &pod(json!({})),
                Some(OwnerSidecars {
                    sidecars: &sidecars,
                    config_map: "c",
                    uid: None,
                }),
                &SidecarDefaults::default(),
                false,
            )
            .unwrap()
            .unwrap()
        };
        let injected = mutate(&pod(app_probe.clone()), &plan_with(json!({"probeApp": "true"}))).unwrap();
        let spec = injected.spec.unwrap();
        let app = spec.containers.iter().find(|c| c.name == "app").unwrap();
        let target = |probe: &Option<Probe>| {
            let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
            (get.path.clone().unwrap(), get.port.clone())
        };
        let port = IntOrString::Int(i32::from(HEALTH_PROBE_PORT));
        assert_eq!(target(&app.liveness_probe), ("/livez".to_owned(), port.clone()));
        assert_eq!(target(&app.readiness_probe), ("/readyz".to_owned(), port.clone()));
        assert_eq!(target(&app.startup_probe), ("/startupz".to_owned(), port));
        let adapter = spec
            .containers
            .iter()
            .find(|c| c.name == "health-adapter")
            .unwrap();
        assert_eq!(
            target(&adapter.readiness_probe),
            (
                "/readyz".to_owned(),
                IntOrString::Int(admin_port(SidecarKind::HealthAdapter))
            ),
            "the adapter's own readiness stays on its admin port"
        );
        assert!(adapter
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .any(|p| p.container_port == i32::from(HEALTH_PROBE_PORT)));

        let injected = mutate(&pod(app_probe), &plan_with(json!({}))).unwrap();
        let app = injected
            .spec
            .unwrap()
            .containers
            .into_iter()
            .find(|c| c.name == "app")
            .unwrap();
        assert_eq!(
            target(&app.liveness_probe).0,
            "/own",
            "not asked: the app keeps its probes"
        );
        assert!(app.startup_probe.is_none());
    }

    #[test]
    fn config_sync_shares_a_volume_with_the_app_in_memory_for_secrets_and_its_process_namespace_for_signals()
    {
        let sidecars: Vec<SidecarSpec> = serde_json::from_value(json!([{"name": "config-sync", "settings": {
            "configMaps": "app", "secrets": "db", "mountPath": "/etc/app", "reloadProcess": "app",
            "runAsUser": "1000", "runAsGroup": "2000",
        }}]))
        .unwrap();
        let plan = plan(
            &pod(json!({})),
            Some(OwnerSidecars {
                sidecars: &sidecars,
                config_map: "web-outrigger",
                uid: None,
            }),
            &SidecarDefaults::default(),
            false,
        )
        .unwrap()
        .unwrap();
        let spec = mutate(&pod(json!({})), &plan).unwrap().spec.unwrap();
        assert_eq!(spec.share_process_namespace, Some(true));
        let volume = spec
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == CONFIG_SYNC_VOLUME)
            .unwrap();
        assert_eq!(volume.empty_dir.unwrap().medium.as_deref(), Some("Memory"));
        let (sidecar, app) = (&spec.containers[0], &spec.containers[1]);
        let mount = |c: &Container| {
            c.volume_mounts
                .iter()
                .flatten()
                .find(|m| m.name == CONFIG_SYNC_VOLUME)
                .map(|m| (m.mount_path.clone(), m.read_only))
        };
        assert_eq!(mount(app), Some(("/etc/app".to_owned(), Some(true))));
        assert_eq!(mount(sidecar), Some(("/etc/app".to_owned(), None)));
        let security = sidecar.security_context.as_ref().unwrap();
        assert_eq!(
            (security.run_as_user, security.run_as_group),
            (Some(1000), Some(2000))
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
            uid: None,
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
            uid: None,
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
    fn config_sync_on_a_plain_pod_reads_its_settings_from_an_annotation_and_bad_ones_are_refused() {
        let annotated = pod(json!({"metadata": {"annotations": {
            "outrigger.dev/inject": "config-sync",
            "outrigger.dev/config-sync-settings": "{\"configMaps\": \"app\"}",
        }}}));
        let plan = plan(&annotated, None, &SidecarDefaults::default(), false)
            .unwrap()
            .unwrap();
        let spec = mutate(&annotated, &plan).unwrap().spec.unwrap();
        assert_eq!(spec.share_process_namespace, None);
        let bare = pod(json!({"metadata": {"annotations": {"outrigger.dev/inject": "config-sync"}}}));
        let plan = super::plan(&bare, None, &SidecarDefaults::default(), false)
            .unwrap()
            .unwrap();
        assert!(matches!(mutate(&bare, &plan), Err(InjectError::Settings { .. })));
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

    fn env_of<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
        container
            .env
            .as_ref()?
            .iter()
            .find(|e| e.name == name)?
            .value
            .as_deref()
    }

    #[test]
    fn a_client_pod_naming_its_sharded_service_gets_an_ambassador_on_loopback_watching_the_shard_map() {
        let client = pod(json!({"metadata": {"annotations": {"outrigger.dev/sharded-service": "cache"}}}));
        let defaults = SidecarDefaults {
            image_tag: "dev".into(),
            ..Default::default()
        };
        let plan = plan(&client, None, &defaults, false).unwrap().unwrap();
        let injected = mutate(&client, &plan).unwrap();
        assert_eq!(
            injected.metadata.labels.as_ref().unwrap()[SHARDED_CLIENT_LABEL],
            "cache",
            "the ShardedService finds its clients by this label"
        );
        let spec = injected.spec.unwrap();
        assert_eq!(names(&spec.containers), ["sharding-ambassador", "app"]);
        let ambassador = &spec.containers[0];
        assert_eq!(
            ambassador.image.as_deref(),
            Some("outrigger/sharding-ambassador:dev")
        );
        assert_eq!(
            env_of(ambassador, "OUTRIGGER_SHARDING_LISTEN"),
            Some("127.0.0.1:6379")
        );
        assert_eq!(
            env_of(ambassador, "OUTRIGGER_SHARDING_CONFIGMAP"),
            Some("$(POD_NAMESPACE)/cache-shard-map")
        );
        let names: Vec<&str> = ambassador
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        let position = |name: &str| names.iter().position(|n| *n == name).unwrap();
        assert!(
            position("POD_NAMESPACE") < position("OUTRIGGER_SHARDING_CONFIGMAP"),
            "the kubelet expands only variables defined before"
        );
    }

    #[test]
    fn an_owners_ambassador_entry_learns_the_service_and_a_port_from_the_annotation() {
        let client =
            pod(json!({"metadata": {"annotations": {"outrigger.dev/sharded-service": "sessions:6380"}}}));
        let sidecars = specs(&["sharding-ambassador", "log-adapter"]);
        let owner = OwnerSidecars {
            sidecars: &sidecars,
            config_map: "web-outrigger",
            uid: None,
        };
        let plan = plan(&client, Some(owner), &SidecarDefaults::default(), true)
            .unwrap()
            .unwrap();
        assert_eq!(plan.sidecars.len(), 2, "no second ambassador");
        let init = mutate(&client, &plan)
            .unwrap()
            .spec
            .unwrap()
            .init_containers
            .unwrap();
        assert_eq!(
            env_of(&init[0], "OUTRIGGER_SHARDING_LISTEN"),
            Some("127.0.0.1:6380")
        );
        assert_eq!(
            env_of(&init[0], "OUTRIGGER_SHARDING_CONFIGMAP"),
            Some("$(POD_NAMESPACE)/sessions-shard-map")
        );
    }

    #[test]
    fn a_malformed_sharded_service_annotation_is_refused() {
        for value in ["cache:0", "cache:http", "Cache", "-cache", "a/b"] {
            let client = pod(json!({"metadata": {"annotations": {"outrigger.dev/sharded-service": value}}}));
            assert!(
                matches!(
                    plan(&client, None, &SidecarDefaults::default(), false),
                    Err(InjectError::ShardedServiceAnnotation { .. })
                ),
                "{value}"
            );
        }
    }
}
