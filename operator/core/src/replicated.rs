//! Desired children of a ReplicatedService, and its status from what was observed. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    core::v1::ServiceAccount,
    rbac::v1::{Role, RoleBinding},
};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        core::v1::{
            ConfigMap, HTTPGetAction, PodTemplateSpec, Probe, ResourceRequirements, Service,
            ServicePort as CoreServicePort, ServiceSpec, TCPSocketAction,
        },
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use outrigger_api::{
    common::{condition_type, PortProtocol, SessionAffinity, SidecarSpec},
    replicated::Readiness,
    rollout::CanaryStrategy,
    ReplicatedService,
};
/// How the splitter in front of a service that may scale to zero holds requests.
pub use outrigger_contract::splitter::HoldConfig;
use outrigger_contract::{
    sidecars::{SidecarsConfig, TrackConfig, SIDECARS_CONFIG_KEY},
    ApiVersion,
};
use serde_json::{json, Value};

use crate::{
    analysis::{CANARY, STABLE},
    canary,
    conditions::{degraded, ChildFailure, DesiredCondition},
    edge, labels,
    owner::{child_meta, content_hash, BuildError, Owner},
    rollout::{self, Decision},
};

/// Key of the sidecar configuration inside the service's ConfigMap.
pub const SIDECAR_CONFIG_KEY: &str = SIDECARS_CONFIG_KEY;

/// Which PodDisruptionBudget API the cluster serves (discovered by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PdbApi {
    PolicyV1,
    PolicyV1beta1,
    None,
}

impl PdbApi {
    /// The apiVersion of PodDisruptionBudgets, when the cluster serves them.
    pub fn api_version(self) -> Option<&'static str> {
        match self {
            PdbApi::PolicyV1 => Some("policy/v1"),
            PdbApi::PolicyV1beta1 => Some("policy/v1beta1"),
            PdbApi::None => None,
        }
    }
}

/// Every name a child of a ReplicatedService may have, by kind: what pruning looks for (in the
/// controller's cache, by name, so a reconcile never lists children).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PossibleChildren {
    pub deployments: Vec<String>,
    pub services: Vec<String>,
    pub config_maps: Vec<String>,
    /// The splitter's ServiceAccount, Role and RoleBinding.
    pub identity: Vec<String>,
}

impl PossibleChildren {
    /// The names of `kind`; none for a kind a ReplicatedService never owns.
    pub fn of(&self, kind: &str) -> &[String] {
        match kind {
            "Deployment" => &self.deployments,
            "Service" => &self.services,
            "ConfigMap" => &self.config_maps,
            "ServiceAccount" | "Role" | "RoleBinding" => &self.identity,
            _ => &[],
        }
    }
}

/// The names the children of the ReplicatedService `service` may have.
pub fn possible_children(service: &str) -> PossibleChildren {
    let splitter = canary::splitter_name(service);
    PossibleChildren {
        deployments: vec![
            service.to_owned(),
            canary::canary_deployment_name(service),
            splitter.clone(),
        ],
        services: vec![
            service.to_owned(),
            canary::track_service_name(service, STABLE),
            canary::track_service_name(service, CANARY),
        ],
        config_maps: vec![
            config_map_name(service),
            splitter.clone(),
            outrigger_contract::config_sync::rollout_config_map_name(service),
        ],
        identity: vec![
            splitter,
            crate::config_sync::access_name(service),
            crate::config_sync::former_access_name(service),
        ],
    }
}

/// Everything a ReplicatedService should own.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    /// Stable first, then the canary while one runs.
    pub deployments: Vec<Deployment>,
    pub service: Service,
    pub config_map: ConfigMap,
    /// As JSON, because its API version depends on the cluster.
    pub pod_disruption_budget: Option<Value>,
    /// Label selector of all replicas, for status and the scale subresource.
    pub selector: String,
    /// The request splitter and track Services, when the service rolls out through a strategy.
    pub rollout: Option<RolloutChildren>,
}

/// What a rollout adds to the build: the state machine's decision, and what was read for it.
#[derive(Debug, Clone, Copy)]
pub struct RolloutInputs<'a> {
    pub strategy: &'a CanaryStrategy,
    pub decision: &'a Decision,
    /// Replicas of the new version before a blue-green switch; `None` for a canary.
    pub preview_replicas: Option<i32>,
    /// Template and revision the live stable Deployment runs, when it exists.
    pub live_stable: Option<(&'a PodTemplateSpec, &'a str)>,
    pub splitter_image: &'a str,
    /// Requests and limits of the splitter's container (a ResourceQuota may demand them).
    pub splitter_resources: Option<&'a ResourceRequirements>,
    /// The splitter has ready replicas, so the service's Service may send clients to it.
    pub splitter_ready: bool,
    /// The rollout is of the synced ConfigMaps (`config_rollout`): stable keeps every replica and
    /// no canary Deployment runs.
    pub config_mode: bool,
    /// The service rolls out config changes too: its track Services select pods by the track label
    /// the operator keeps on each pod (`config_rollout::CONFIG_TRACK`).
    pub config_tracks: bool,
}

/// What scaling to zero adds to the build: the request splitter fronts the service, with or
/// without a rollout, so that requests wait in it while no replica runs.
#[derive(Debug, Clone, Copy)]
pub struct ZeroInputs<'a> {
    pub splitter_image: &'a str,
    pub splitter_resources: Option<&'a ResourceRequirements>,
    /// The splitter has ready replicas, so the service's Service may send clients to it.
    pub splitter_ready: bool,
    /// How the splitter holds requests while the service has no replica.
    pub hold: &'a HoldConfig,
}

/// The splitter in front of a service whose spec asks for one ([`edge::needs_front_tier`]: session
/// affinity, rate limits) when neither a rollout nor scaling to zero puts it there.
#[derive(Debug, Clone, Copy)]
pub struct EdgeInputs<'a> {
    pub splitter_image: &'a str,
    pub splitter_resources: Option<&'a ResourceRequirements>,
    /// The splitter has ready replicas, so the service's Service may send clients to it.
    pub splitter_ready: bool,
}

/// The splitter in front of the service, from a rollout's inputs or scaling to zero's.
#[derive(Debug, Clone, Copy)]
struct FrontInputs<'a> {
    image: &'a str,
    resources: Option<&'a ResourceRequirements>,
    ready: bool,
    /// The track Services select on the config track label (see [`RolloutInputs::config_tracks`]).
    config_tracks: bool,
}

/// The request splitter in front of the tracks, and the Services it reaches them through. Its
/// ConfigMap is built with [`canary::splitter_config_map`] once the track Services' addresses are
/// known.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutChildren {
    pub stable_service: Service,
    pub canary_service: Service,
    pub splitter: Deployment,
    pub splitter_account: ServiceAccount,
    pub splitter_role: Role,
    pub splitter_role_binding: RoleBinding,
}

/// Name of the ConfigMap the sidecars of a service watch.
pub fn config_map_name(service: &str) -> String {
    format!("{service}-outrigger")
}

/// Builds the desired children. With `rollout`, stable keeps its live template until promotion,
/// a canary Deployment runs the spec's template while the decision wants one, and the request
/// splitter fronts both tracks once it is ready.
pub fn build(
    rsvc: &ReplicatedService,
    pdb_api: PdbApi,
    rollout: Option<&RolloutInputs<'_>>,
) -> Result<Children, BuildError> {
    build_fronted(rsvc, pdb_api, rollout, None)
}

/// As [`build`], for a service an AutoscalingPolicy may scale to zero (`zero`): the request
/// splitter fronts it even without a rollout.
pub fn build_fronted(
    rsvc: &ReplicatedService,
    pdb_api: PdbApi,
    rollout: Option<&RolloutInputs<'_>>,
    zero: Option<&ZeroInputs<'_>>,
) -> Result<Children, BuildError> {
    build_edged(rsvc, pdb_api, rollout, zero, None)
}

/// As [`build_fronted`], with the splitter also in front of a service whose spec asks for it
/// ([`edge::needs_front_tier`]) when `edge` says how to run it.
pub fn build_edged(
    rsvc: &ReplicatedService,
    pdb_api: PdbApi,
    rollout: Option<&RolloutInputs<'_>>,
    zero: Option<&ZeroInputs<'_>>,
    edge: Option<&EdgeInputs<'_>>,
) -> Result<Children, BuildError> {
    let owner = Owner::of(rsvc)?;
    let spec = &rsvc.spec;
    let owner_labels = labels::owned_by(labels::REPLICATED_SERVICE, &owner.name);
    let pod_selector = BTreeMap::from([(labels::REPLICATED_SERVICE.to_owned(), owner.name.clone())]);

    let (stable_replicas, canary_replicas) = match rollout {
        Some(inputs) if inputs.config_mode => (spec.replicas, 0),
        Some(inputs) => rollout::replica_split(
            spec.replicas,
            Some(&inputs.decision.status),
            inputs.decision.canary,
            inputs.preview_replicas,
            rollout::upcoming_weight(inputs.strategy, &inputs.decision.status),
        ),
        None => (spec.replicas, 0),
    };
    // Stable runs the spec's template, unless a rollout holds it at the live one until promotion.
    let held = rollout
        .filter(|inputs| !inputs.decision.promote)
        .and_then(|inputs| inputs.live_stable);
    let (stable_template, stable_revision) = match held {
        Some((template, revision)) => (template, Some(revision)),
        None => (&spec.template, None),
    };
    let mut deployments = vec![deployment(
        &owner,
        &owner_labels,
        Track {
            name: STABLE,
            deployment: &owner.name,
            revision: stable_revision,
        },
        stable_replicas,
        stable_template,
        spec.readiness.as_ref(),
    )?];
    if rollout.is_some_and(|inputs| inputs.decision.canary && !inputs.config_mode) {
        deployments.push(deployment(
            &owner,
            &owner_labels,
            Track {
                name: CANARY,
                deployment: &canary::canary_deployment_name(&owner.name),
                revision: None,
            },
            canary_replicas,
            &spec.template,
            spec.readiness.as_ref(),
        )?);
    }

    let front = match (rollout, zero) {
        (Some(inputs), _) => Some(FrontInputs {
            image: inputs.splitter_image,
            resources: inputs.splitter_resources,
            ready: inputs.splitter_ready,
            config_tracks: inputs.config_tracks,
        }),
        (None, Some(inputs)) => Some(FrontInputs {
            image: inputs.splitter_image,
            resources: inputs.splitter_resources,
            ready: inputs.splitter_ready,
            config_tracks: false,
        }),
        (None, None) => edge
            .filter(|_| edge::needs_front_tier(spec))
            .map(|inputs| FrontInputs {
                image: inputs.splitter_image,
                resources: inputs.splitter_resources,
                ready: inputs.splitter_ready,
                config_tracks: false,
            }),
    };
    let rollout_children = front.and_then(|inputs| {
        let port = spec.ports.first()?;
        let target_port = first_target_port(spec)?;
        let (splitter_account, splitter_role, splitter_role_binding) = canary::splitter_identity(&owner);
        Some((
            inputs,
            port.port,
            RolloutChildren {
                stable_service: canary::track_service(
                    &owner,
                    STABLE,
                    port.port,
                    target_port,
                    inputs.config_tracks,
                ),
                canary_service: canary::track_service(
                    &owner,
                    CANARY,
                    port.port,
                    target_port,
                    inputs.config_tracks,
                ),
                splitter: crate::edge::with_event_origin(
                    with_resources(
                        canary::splitter_deployment(&owner, inputs.image, splitter_replicas(spec.replicas)),
                        inputs.resources,
                    ),
                    &owner,
                    spec,
                ),
                splitter_account,
                splitter_role: crate::edge::with_access(splitter_role, spec),
                splitter_role_binding,
            },
        ))
    });
    let service = match &rollout_children {
        Some((inputs, port, _)) if inputs.ready => canary::front_service(&owner, *port),
        _ => service(&owner, &owner_labels, &pod_selector, spec),
    };
    let mut config_data = BTreeMap::from([(
        SIDECAR_CONFIG_KEY.to_owned(),
        sidecar_config_json(&owner, spec.session_affinity.as_ref(), &spec.sidecars)?,
    )]);
    if let Some(Ok(splitter)) = canary::injected_splitter(spec) {
        config_data.insert(
            canary::SPLITTER_CONFIG_KEY.to_owned(),
            serde_json::to_string_pretty(&canary::injected_splitter_config(splitter)).map_err(|error| {
                BuildError::Serialize {
                    what: "injected splitter config",
                    message: error.to_string(),
                }
            })?,
        );
    }
    let config_map = ConfigMap {
        metadata: child_meta(&owner, &config_map_name(&owner.name), &owner_labels),
        data: Some(config_data),
        ..ConfigMap::default()
    };
    let pod_disruption_budget = pdb_api.api_version().map(|api_version| {
        json!({
            "apiVersion": api_version,
            "kind": "PodDisruptionBudget",
            "metadata": child_meta(&owner, &owner.name, &owner_labels),
            "spec": {
                "maxUnavailable": 1,
                "selector": {"matchLabels": pod_selector},
            },
        })
    });
    Ok(Children {
        deployments,
        service,
        config_map,
        pod_disruption_budget,
        selector: labels::selector_string(&pod_selector),
        rollout: rollout_children.map(|(_, _, children)| children),
    })
}

/// The Deployment with `resources` on its containers.
fn with_resources(mut deployment: Deployment, resources: Option<&ResourceRequirements>) -> Deployment {
    let containers = deployment
        .spec
        .iter_mut()
        .filter_map(|spec| spec.template.spec.as_mut())
        .flat_map(|pod| pod.containers.iter_mut());
    for container in containers {
        container.resources = resources.cloned();
    }
    deployment
}

/// One write of a ReplicatedService reconcile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Write<'a> {
    ConfigMap(&'a ConfigMap),
    ServiceAccount(&'a ServiceAccount),
    Role(&'a Role),
    RoleBinding(&'a RoleBinding),
    /// A track's Service; the splitter reaches the track at its address.
    TrackService(&'a Service),
    /// The splitter's ConfigMap, built from the track Services' addresses once they are applied
    /// (`canary::splitter_config_map`).
    SplitterConfig,
    Deployment(&'a Deployment),
    /// The Service clients use: to the pods, or to the splitter once it is ready.
    Service(&'a Service),
    /// Deleting the children no longer desired.
    Prune,
    PodDisruptionBudget(&'a Value),
}

impl Write<'_> {
    /// `Kind name`, for logs and tests.
    pub fn describe(&self) -> String {
        let named =
            |kind: &str, meta: &ObjectMeta| format!("{kind} {}", meta.name.as_deref().unwrap_or_default());
        match self {
            Write::ConfigMap(object) => named("ConfigMap", &object.metadata),
            Write::ServiceAccount(object) => named("ServiceAccount", &object.metadata),
            Write::Role(object) => named("Role", &object.metadata),
            Write::RoleBinding(object) => named("RoleBinding", &object.metadata),
            Write::TrackService(object) | Write::Service(object) => named("Service", &object.metadata),
            Write::SplitterConfig => "splitter ConfigMap".to_owned(),
            Write::Deployment(object) => named("Deployment", &object.metadata),
            Write::Prune => "prune".to_owned(),
            Write::PodDisruptionBudget(object) => format!(
                "PodDisruptionBudget {}",
                object["metadata"]["name"].as_str().unwrap_or_default()
            ),
        }
    }
}

/// The writes of a reconcile, in the order the API server must see them:
/// - the sidecars' ConfigMap first, so new pods start with their configuration;
/// - the splitter's identity, the track Services, the splitter's configuration and the splitter
///   before the service's Service, which may send clients to the splitter;
/// - the Service before the Deployments, whose new pods it then reaches at once;
/// - pruning after everything desired exists, so a track is deleted only once nothing points at it;
/// - the PodDisruptionBudget last: it selects the pods that the Deployments define.
pub fn writes(children: &Children) -> Vec<Write<'_>> {
    let mut writes = vec![Write::ConfigMap(&children.config_map)];
    if let Some(front) = &children.rollout {
        writes.extend([
            Write::ServiceAccount(&front.splitter_account),
            Write::Role(&front.splitter_role),
            Write::RoleBinding(&front.splitter_role_binding),
            Write::TrackService(&front.stable_service),
            Write::TrackService(&front.canary_service),
            Write::SplitterConfig,
            Write::Deployment(&front.splitter),
        ]);
    }
    writes.push(Write::Service(&children.service));
    writes.extend(children.deployments.iter().map(Write::Deployment));
    writes.push(Write::Prune);
    writes.extend(
        children
            .pod_disruption_budget
            .as_ref()
            .map(Write::PodDisruptionBudget),
    );
    writes
}

/// Splitter replicas: two, for availability, once the service itself has more than one replica.
pub fn splitter_replicas(service_replicas: i32) -> i32 {
    if service_replicas > 1 {
        2
    } else {
        1
    }
}

/// One track's Deployment: its track label, its name, and the revision of its template when the
/// template is a live one (whose hash no longer matches the spec it came from).
struct Track<'a> {
    name: &'a str,
    deployment: &'a str,
    revision: Option<&'a str>,
}

fn deployment(
    owner: &Owner,
    owner_labels: &BTreeMap<String, String>,
    track: Track<'_>,
    replicas: i32,
    template: &PodTemplateSpec,
    readiness: Option<&Readiness>,
) -> Result<Deployment, BuildError> {
    let template_hash = match track.revision {
        Some(revision) => revision.to_owned(),
        None => content_hash(template)?,
    };
    let (name, track) = (track.deployment, track.name);
    let selector = BTreeMap::from([
        (labels::REPLICATED_SERVICE.to_owned(), owner.name.clone()),
        (labels::TRACK.to_owned(), track.to_owned()),
    ]);
    let mut template = crate::owner::normalized_template(template);
    let metadata = template.metadata.get_or_insert_with(ObjectMeta::default);
    let pod_labels = metadata.labels.get_or_insert_with(BTreeMap::new);
    pod_labels.extend(owner_labels.clone());
    pod_labels.extend(selector.clone());
    if let (Some(readiness), Some(pod)) = (readiness, template.spec.as_mut()) {
        if let Some(first) = pod.containers.first_mut() {
            if first.readiness_probe.is_none() {
                first.readiness_probe = Some(probe(readiness));
            }
        }
    }
    let mut deployment_labels = owner_labels.clone();
    deployment_labels.insert(labels::TRACK.to_owned(), track.to_owned());
    deployment_labels.insert(labels::TEMPLATE_HASH.to_owned(), template_hash);
    Ok(Deployment {
        metadata: child_meta(owner, name, &deployment_labels),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            template,
            min_ready_seconds: readiness
                .map(|r| r.min_ready_seconds)
                .filter(|seconds| *seconds > 0),
            ..DeploymentSpec::default()
        }),
        status: None,
    })
}

fn probe(readiness: &Readiness) -> Probe {
    let port = IntOrString::Int(readiness.port);
    let (http_get, tcp_socket) = match &readiness.http_path {
        Some(path) => (
            Some(HTTPGetAction {
                path: Some(path.clone()),
                port,
                ..HTTPGetAction::default()
            }),
            None,
        ),
        None => (
            None,
            Some(TCPSocketAction {
                port,
                ..TCPSocketAction::default()
            }),
        ),
    };
    Probe {
        http_get,
        tcp_socket,
        period_seconds: Some(readiness.period_seconds),
        failure_threshold: Some(readiness.failure_threshold),
        ..Probe::default()
    }
}

/// Where the first Service port sends traffic: to the injected request splitter when the pods have
/// one, so every request passes through it, otherwise to the app.
fn first_target_port(spec: &outrigger_api::ReplicatedServiceSpec) -> Option<i32> {
    let port = spec.ports.first()?;
    Some(match canary::injected_splitter(spec) {
        Some(Ok(splitter)) => splitter.listen_port,
        _ => port.target_port.unwrap_or(port.port),
    })
}

fn service(
    owner: &Owner,
    owner_labels: &BTreeMap<String, String>,
    pod_selector: &BTreeMap<String, String>,
    spec: &outrigger_api::ReplicatedServiceSpec,
) -> Service {
    let ports: Vec<CoreServicePort> = spec
        .ports
        .iter()
        .enumerate()
        .map(|(index, port)| CoreServicePort {
            name: Some(port.name.clone()),
            port: port.port,
            target_port: Some(IntOrString::Int(
                match (index, port.protocol) {
                    (0, PortProtocol::Tcp) => first_target_port(spec),
                    _ => None,
                }
                .unwrap_or(port.target_port.unwrap_or(port.port)),
            )),
            protocol: Some(
                match port.protocol {
                    PortProtocol::Tcp => "TCP",
                    PortProtocol::Udp => "UDP",
                }
                .to_owned(),
            ),
            ..CoreServicePort::default()
        })
        .collect();
    // A Service without ports must be headless; it still gives the replicas DNS names.
    let cluster_ip = ports.is_empty().then(|| "None".to_owned());
    Service {
        metadata: child_meta(owner, &owner.name, owner_labels),
        spec: Some(ServiceSpec {
            selector: Some(pod_selector.clone()),
            ports: (!ports.is_empty()).then_some(ports),
            cluster_ip,
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The configuration the sidecars of a ReplicatedService read from its ConfigMap.
fn sidecar_config_json(
    owner: &Owner,
    affinity: Option<&SessionAffinity>,
    sidecars: &[SidecarSpec],
) -> Result<String, BuildError> {
    let config = SidecarsConfig {
        api_version: ApiVersion::default(),
        service: owner.name.clone(),
        namespace: owner.namespace.clone(),
        session_affinity: affinity.cloned(),
        sidecars: sidecars
            .iter()
            .map(|sidecar| (sidecar.name.as_str().to_owned(), sidecar.settings.clone()))
            .collect(),
        tracks: BTreeMap::from([(STABLE.to_owned(), TrackConfig { weight: 100 })]),
    };
    config.to_json().map_err(|error| BuildError::Serialize {
        what: "sidecar config",
        message: error.to_string(),
    })
}

/// Replica counts observed on the Deployments of a service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObservedReplicas {
    pub replicas: i32,
    pub ready: i32,
    pub updated: i32,
    pub available: i32,
    /// Every Deployment's controller has seen its latest spec.
    pub all_observed: bool,
}

/// Sums what the Deployments report.
pub fn observe(deployments: &[Deployment]) -> ObservedReplicas {
    let mut observed = ObservedReplicas {
        all_observed: true,
        ..ObservedReplicas::default()
    };
    for deployment in deployments {
        let status = deployment.status.clone().unwrap_or_default();
        observed.replicas += status.replicas.unwrap_or(0);
        observed.ready += status.ready_replicas.unwrap_or(0);
        observed.updated += status.updated_replicas.unwrap_or(0);
        observed.available += status.available_replicas.unwrap_or(0);
        observed.all_observed &= status.observed_generation >= deployment.metadata.generation;
    }
    observed
}

/// The failures the Deployments report: a ReplicaSet that cannot create pods (the Deployment
/// controller copies its `FailedCreate` as the `ReplicaFailure` condition, e.g. a pod forbidden by
/// a ResourceQuota), and a rollout that passed its progress deadline.
pub fn failures(deployments: &[Deployment]) -> Vec<ChildFailure> {
    let mut failures = Vec::new();
    for deployment in deployments {
        let name = deployment.metadata.name.as_deref().unwrap_or_default();
        let conditions = deployment
            .status
            .iter()
            .flat_map(|status| status.conditions.iter().flatten());
        for condition in conditions {
            let reason = match (condition.type_.as_str(), condition.status.as_str()) {
                ("ReplicaFailure", "True") => "ReplicaFailure",
                ("Progressing", "False")
                    if condition.reason.as_deref() == Some("ProgressDeadlineExceeded") =>
                {
                    "ProgressDeadlineExceeded"
                }
                _ => continue,
            };
            failures.push(ChildFailure {
                reason,
                message: format!(
                    "Deployment {name}: {}: {}",
                    condition.reason.as_deref().unwrap_or(reason),
                    condition.message.as_deref().unwrap_or_default()
                ),
            });
        }
    }
    failures
}

/// The conditions of a valid ReplicatedService given what its Deployments report.
pub fn conditions(
    desired_replicas: i32,
    observed: &ObservedReplicas,
    failures: &[ChildFailure],
) -> Vec<DesiredCondition> {
    let settled = observed.all_observed
        && observed.updated >= desired_replicas
        && observed.replicas == desired_replicas;
    let ready = observed.ready >= desired_replicas && observed.available >= desired_replicas;
    let (ready_reason, ready_message) = if desired_replicas == 0 {
        ("ScaledToZero", "no replicas requested".to_owned())
    } else if ready {
        (
            "Available",
            format!("{} of {desired_replicas} replicas ready", observed.ready),
        )
    } else {
        (
            "ReplicasNotReady",
            format!("{} of {desired_replicas} replicas ready", observed.ready),
        )
    };
    vec![
        DesiredCondition::new(condition_type::READY, ready, ready_reason, ready_message),
        if settled {
            DesiredCondition::new(
                condition_type::PROGRESSING,
                false,
                "Settled",
                "all replicas run the current template",
            )
        } else {
            DesiredCondition::new(
                condition_type::PROGRESSING,
                true,
                "Updating",
                format!(
                    "{} of {desired_replicas} replicas updated",
                    observed.updated.min(desired_replicas)
                ),
            )
        },
        degraded(failures),
    ]
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::DeploymentStatus;
    use serde_json::json;

    use super::*;

    fn rsvc(spec: Value) -> ReplicatedService {
        serde_json::from_value(json!({
            "apiVersion": "outrigger.dev/v1alpha1",
            "kind": "ReplicatedService",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn base_spec() -> Value {
        json!({
            "replicas": 3,
            "template": {"metadata": {"labels": {"team": "a"}}, "spec": {"containers": [{"name": "app", "image": "app:1"}]}},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
        })
    }

    #[test]
    fn builds_a_deployment_service_and_config_map_owned_by_the_service() {
        let children = build(&rsvc(base_spec()), PdbApi::PolicyV1beta1, None).unwrap();
        let deployment = &children.deployments[0];
        assert_eq!(deployment.metadata.name.as_deref(), Some("web"));
        assert_eq!(deployment.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(
            deployment.metadata.owner_references.as_ref().unwrap()[0].uid,
            "u-1"
        );
        assert_eq!(
            deployment.metadata.owner_references.as_ref().unwrap()[0].controller,
            Some(true)
        );
        let spec = deployment.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        let pod_labels = spec.template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        assert_eq!(pod_labels["team"], "a", "user labels are kept");
        assert_eq!(pod_labels[labels::REPLICATED_SERVICE], "web");
        assert_eq!(pod_labels[labels::TRACK], "stable");
        for (key, value) in spec.selector.match_labels.as_ref().unwrap() {
            assert_eq!(&pod_labels[key], value, "selector must match the pod labels");
        }

        let service = children.service.spec.as_ref().unwrap();
        assert_eq!(
            service.selector.as_ref().unwrap()[labels::REPLICATED_SERVICE],
            "web"
        );
        let port = &service.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.port, port.target_port.clone()),
            (80, Some(IntOrString::Int(8080)))
        );

        assert_eq!(
            children.config_map.metadata.name.as_deref(),
            Some("web-outrigger")
        );
        let config: Value =
            serde_json::from_str(&children.config_map.data.as_ref().unwrap()[SIDECAR_CONFIG_KEY]).unwrap();
        assert_eq!(config["tracks"]["stable"]["weight"], 100);
        assert_eq!(children.selector, "outrigger.dev/replicatedservice=web");
        assert_eq!(
            children.pod_disruption_budget.unwrap()["apiVersion"],
            "policy/v1beta1"
        );
    }

    fn planned(children: &Children) -> Vec<String> {
        writes(children).iter().map(Write::describe).collect()
    }

    fn position(plan: &[String], write: &str) -> usize {
        plan.iter()
            .position(|w| w == write)
            .unwrap_or_else(|| panic!("{write} is not planned: {plan:?}"))
    }

    #[test]
    fn a_rollout_configures_and_starts_the_splitter_before_the_service_sends_clients_to_it() {
        let mut children = build_during_rollout("Progressing", 20, false, None, true);
        children.pod_disruption_budget = Some(json!({"metadata": {"name": "web"}}));
        let plan = planned(&children);
        assert_eq!(
            plan,
            [
                "ConfigMap web-outrigger",
                "ServiceAccount web-splitter",
                "Role web-splitter",
                "RoleBinding web-splitter",
                "Service web-stable",
                "Service web-canary",
                "splitter ConfigMap",
                "Deployment web-splitter",
                "Service web",
                "Deployment web",
                "Deployment web-canary",
                "prune",
                "PodDisruptionBudget web",
            ]
        );
        let service = position(&plan, "Service web");
        for before in [
            "Service web-stable",
            "Service web-canary",
            "splitter ConfigMap",
            "Deployment web-splitter",
        ] {
            assert!(position(&plan, before) < service, "{before} before the Service");
        }
        assert!(position(&plan, "Role web-splitter") < position(&plan, "Deployment web-splitter"));
    }

    #[test]
    fn the_front_splitter_of_a_tls_service_reads_its_secret_and_names_its_service_in_events() {
        let mut spec = base_spec();
        spec["tls"] = json!({"secretName": "web-tls"});
        let hold = HoldConfig::default();
        let front = ZeroInputs {
            splitter_image: "splitter:edge",
            splitter_resources: None,
            splitter_ready: true,
            hold: &hold,
        };
        let children = build_fronted(&rsvc(spec), PdbApi::None, None, Some(&front)).unwrap();
        let front = children.rollout.expect("the splitter in front");
        let rules = front.splitter_role.rules.unwrap();
        assert!(rules.iter().any(|rule| {
            rule.resources.as_deref() == Some(&["secrets".to_owned()][..])
                && rule.resource_names.as_deref() == Some(&["web-tls".to_owned()][..])
        }));
        let pod = front.splitter.spec.unwrap().template.spec.unwrap();
        let env = pod.containers[0].env.clone().unwrap();
        let owner = env.iter().find(|var| var.name == "OUTRIGGER_OWNER").unwrap();
        assert_eq!(owner.value.as_deref(), Some("ReplicatedService/web"));
    }

    #[test]
    fn a_service_that_may_scale_to_zero_is_fronted_by_the_splitter_without_a_rollout() {
        let mut spec = base_spec();
        spec["replicas"] = json!(0);
        let hold = HoldConfig::default();
        for splitter_ready in [false, true] {
            let zero = ZeroInputs {
                splitter_image: "splitter:zero",
                splitter_resources: None,
                splitter_ready,
                hold: &hold,
            };
            let children = build_fronted(&rsvc(spec.clone()), PdbApi::None, None, Some(&zero)).unwrap();
            let [stable] = children.deployments.as_slice() else {
                panic!("only the stable track expected")
            };
            assert_eq!(stable.spec.as_ref().unwrap().replicas, Some(0));
            let front = children
                .rollout
                .as_ref()
                .expect("the splitter and the track Services");
            let splitter = front.splitter.spec.as_ref().unwrap();
            assert_eq!(splitter.replicas, Some(1), "one splitter holds requests at zero");
            let selector = children.service.spec.as_ref().unwrap().selector.clone().unwrap();
            assert_eq!(
                selector.contains_key(canary::SPLITTER_LABEL),
                splitter_ready,
                "clients reach the splitter once it is ready, the pods before"
            );
        }
        let plan = planned(&build_fronted(&rsvc(spec), PdbApi::None, None, None).unwrap());
        assert!(
            !plan.iter().any(|write| write.contains("splitter")),
            "no splitter without a rollout or a policy that allows zero: {plan:?}"
        );
    }

    #[test]
    fn session_affinity_or_rate_limits_front_the_service_without_a_rollout() {
        let edge = EdgeInputs {
            splitter_image: "splitter:edge",
            splitter_resources: None,
            splitter_ready: true,
        };
        let fronted = |extra: Value| {
            build_edged(&rsvc(merged_spec(extra)), PdbApi::None, None, None, Some(&edge))
                .unwrap()
                .rollout
                .is_some()
        };
        assert!(fronted(
            json!({"sessionAffinity": {"source": "header", "name": "x-user"}})
        ));
        assert!(fronted(json!({"rateLimits": {"anonymous": {"requests": 5}}})));
        assert!(!fronted(json!({})), "a plain service keeps kube-proxy alone");
        let children = build_edged(
            &rsvc(merged_spec(json!({"sessionAffinity": {"source": "sourceIP"}}))),
            PdbApi::None,
            None,
            None,
            Some(&edge),
        )
        .unwrap();
        let rules = children.rollout.unwrap().splitter_role.rules.unwrap();
        assert!(
            rules.iter().any(|rule| {
                rule.resources.as_deref() == Some(&["endpointslices".to_owned()][..])
                    && rule.verbs == ["list", "watch"]
            }),
            "the splitter may watch the tracks' EndpointSlices: {rules:?}"
        );
    }

    fn merged_spec(extra: Value) -> Value {
        let mut spec = base_spec();
        for (key, value) in extra.as_object().unwrap() {
            spec[key] = value.clone();
        }
        spec
    }

    #[test]
    fn the_splitter_in_front_of_a_service_without_a_rollout_sends_everything_to_stable() {
        let config = canary::stable_splitter_config("10.0.0.1:80", None);
        assert_eq!(config.backends.len(), 1);
        assert_eq!(config.backends[0].name, STABLE);
        assert_eq!(config.backends[0].endpoints, ["10.0.0.1:80"]);
        assert_eq!(config.weight_vector(), [100]);
        assert_eq!(config.hold, None, "the controller adds the hold settings");
    }

    #[test]
    fn pruning_comes_after_every_desired_child_and_before_the_disruption_budget() {
        let children = build(&rsvc(base_spec()), PdbApi::PolicyV1, None).unwrap();
        let plan = planned(&children);
        assert_eq!(
            plan,
            [
                "ConfigMap web-outrigger",
                "Service web",
                "Deployment web",
                "prune",
                "PodDisruptionBudget web",
            ]
        );
        let prune = position(&plan, "prune");
        assert!(plan[..prune].iter().all(|w| w != "PodDisruptionBudget web"));
        assert_eq!(prune, plan.len() - 2);
    }

    #[test]
    fn every_child_a_rollout_builds_is_among_the_possible_children_that_pruning_looks_for() {
        let children = build_during_rollout("Progressing", 20, false, None, true);
        let possible = possible_children("web");
        let rollout = children.rollout.as_ref().unwrap();
        let name = |meta: &ObjectMeta| meta.name.clone().unwrap();
        for (kind, meta) in [
            ("Deployment", &children.deployments[0].metadata),
            ("Deployment", &children.deployments[1].metadata),
            ("Deployment", &rollout.splitter.metadata),
            ("Service", &children.service.metadata),
            ("Service", &rollout.stable_service.metadata),
            ("Service", &rollout.canary_service.metadata),
            ("ConfigMap", &children.config_map.metadata),
            ("ServiceAccount", &rollout.splitter_account.metadata),
            ("Role", &rollout.splitter_role.metadata),
            ("RoleBinding", &rollout.splitter_role_binding.metadata),
        ] {
            assert!(possible.of(kind).contains(&name(meta)), "{kind} {}", name(meta));
        }
        assert!(possible.of("ConfigMap").contains(&canary::splitter_name("web")));
    }

    #[test]
    fn replica_change_touches_only_the_deployment_replicas() {
        let before = build(&rsvc(base_spec()), PdbApi::None, None).unwrap();
        let mut spec = base_spec();
        spec["replicas"] = json!(5);
        let after = build(&rsvc(spec), PdbApi::None, None).unwrap();
        assert_eq!(after.deployments[0].spec.as_ref().unwrap().replicas, Some(5));
        assert_eq!(before.service, after.service);
        assert_eq!(before.config_map, after.config_map);
        assert_eq!(
            before.deployments[0].metadata, after.deployments[0].metadata,
            "template hash unchanged"
        );
    }

    #[test]
    fn template_change_changes_the_template_hash() {
        let before = build(&rsvc(base_spec()), PdbApi::None, None).unwrap();
        let mut spec = base_spec();
        spec["template"]["spec"]["containers"][0]["image"] = json!("app:2");
        let after = build(&rsvc(spec), PdbApi::None, None).unwrap();
        let hash =
            |c: &Children| c.deployments[0].metadata.labels.as_ref().unwrap()[labels::TEMPLATE_HASH].clone();
        assert_ne!(hash(&before), hash(&after));
    }

    #[test]
    fn readiness_becomes_a_probe_only_when_the_container_has_none() {
        let mut spec = base_spec();
        spec["readiness"] = json!({"httpPath": "/ready", "port": 8080, "minReadySeconds": 5});
        let children = build(&rsvc(spec.clone()), PdbApi::None, None).unwrap();
        let deployment = children.deployments[0].spec.as_ref().unwrap();
        let probe = deployment.template.spec.as_ref().unwrap().containers[0]
            .readiness_probe
            .as_ref()
            .unwrap();
        assert_eq!(probe.http_get.as_ref().unwrap().path.as_deref(), Some("/ready"));
        assert_eq!(deployment.min_ready_seconds, Some(5));

        spec["template"]["spec"]["containers"][0]["readinessProbe"] = json!({"exec": {"command": ["true"]}});
        let children = build(&rsvc(spec), PdbApi::None, None).unwrap();
        let probe = children.deployments[0]
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .readiness_probe
            .clone()
            .unwrap();
        assert!(probe.exec.is_some() && probe.http_get.is_none());
    }

    #[test]
    fn no_ports_gives_a_headless_service() {
        let mut spec = base_spec();
        spec["ports"] = json!([]);
        let service = build(&rsvc(spec), PdbApi::None, None)
            .unwrap()
            .service
            .spec
            .unwrap();
        assert_eq!(service.cluster_ip.as_deref(), Some("None"));
        assert!(service.ports.is_none());
    }

    #[test]
    fn an_object_without_uid_cannot_own_children() {
        let mut object = rsvc(base_spec());
        object.metadata.uid = None;
        assert_eq!(
            build(&object, PdbApi::None, None).unwrap_err(),
            BuildError::MissingMetadata("uid")
        );
    }

    fn observed_deployment(
        generation: i64,
        observed: i64,
        replicas: i32,
        ready: i32,
        updated: i32,
    ) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                generation: Some(generation),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(DeploymentStatus {
                observed_generation: Some(observed),
                replicas: Some(replicas),
                ready_replicas: Some(ready),
                updated_replicas: Some(updated),
                available_replicas: Some(ready),
                ..DeploymentStatus::default()
            }),
        }
    }

    #[test]
    fn status_cases() {
        let cases = [
            ("all ready", observed_deployment(2, 2, 3, 3, 3), 3, (true, false)),
            ("starting", observed_deployment(1, 1, 3, 1, 3), 3, (false, false)),
            ("rolling", observed_deployment(3, 3, 4, 3, 1), 3, (true, true)),
            (
                "not yet observed",
                observed_deployment(3, 2, 3, 3, 3),
                3,
                (true, true),
            ),
            (
                "scaled to zero",
                observed_deployment(1, 1, 0, 0, 0),
                0,
                (true, false),
            ),
        ];
        for (name, deployment, desired, (ready, progressing)) in cases {
            let conditions = conditions(desired, &observe(&[deployment]), &[]);
            assert_eq!(conditions[0].status, ready, "{name} ready");
            assert_eq!(conditions[1].status, progressing, "{name} progressing");
        }
    }

    #[test]
    fn a_replica_set_that_cannot_create_pods_makes_the_service_degraded_with_its_message() {
        let mut deployment = observed_deployment(1, 1, 0, 0, 0);
        deployment.metadata.name = Some("web".to_owned());
        deployment.status.as_mut().unwrap().conditions = Some(
            serde_json::from_value(json!([
                {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"},
                {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                 "message": "pods \"web-1\" is forbidden: failed quota: q: must specify limits.cpu"},
            ]))
            .unwrap(),
        );
        let failures = failures(&[deployment.clone()]);
        let conditions = conditions(2, &observe(&[deployment]), &failures);
        let degraded = &conditions[2];
        assert!(degraded.status);
        assert_eq!(degraded.reason, "ReplicaFailure");
        assert_eq!(
            degraded.message,
            "Deployment web: FailedCreate: pods \"web-1\" is forbidden: failed quota: q: must specify limits.cpu"
        );
    }

    #[test]
    fn a_deployment_past_its_progress_deadline_makes_the_service_degraded() {
        let mut deployment = observed_deployment(1, 1, 1, 0, 1);
        deployment.metadata.name = Some("web-canary".to_owned());
        deployment.status.as_mut().unwrap().conditions = Some(
            serde_json::from_value(json!([
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                 "message": "ReplicaSet \"web-canary-1\" has timed out progressing."},
            ]))
            .unwrap(),
        );
        let failures = failures(&[deployment]);
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].reason, "ProgressDeadlineExceeded");
        assert!(failures[0].message.starts_with("Deployment web-canary: "));
        assert!(!degraded(&[]).status, "no failure, not degraded");
    }

    fn canary_status(phase: &str, weight: i32) -> outrigger_api::rollout::RolloutStatus {
        serde_json::from_value(json!({"phase": phase, "canaryWeight": weight})).unwrap()
    }

    fn rollout_spec() -> Value {
        let mut spec = base_spec();
        spec["replicas"] = json!(5);
        spec["template"]["spec"]["containers"][0]["image"] = json!("app:2");
        spec["rolloutStrategyRef"] = json!({"name": "canary"});
        spec
    }

    /// A one-step canary strategy, and the template the live stable Deployment runs.
    fn strategy_and_live_stable() -> (CanaryStrategy, PodTemplateSpec) {
        (
            serde_json::from_value(json!({"steps": [{"setWeight": 20}]})).unwrap(),
            serde_json::from_value(json!({"spec": {"containers": [{"name": "app", "image": "app:1"}]}}))
                .unwrap(),
        )
    }

    /// The children of `rollout_spec()` while a rollout in `phase` at `weight` runs.
    fn build_during_rollout(
        phase: &str,
        weight: i32,
        promote: bool,
        preview_replicas: Option<i32>,
        splitter_ready: bool,
    ) -> Children {
        let (strategy, live) = strategy_and_live_stable();
        let resources = crate::inject::default_sidecar_resources();
        let decision = Decision {
            status: canary_status(phase, weight),
            promote,
            canary: true,
            requeue_after: None,
        };
        let inputs = RolloutInputs {
            strategy: &strategy,
            decision: &decision,
            preview_replicas,
            live_stable: Some((&live, "rev-1")),
            splitter_image: "outrigger/request-splitter:dev",
            splitter_resources: Some(&resources),
            splitter_ready,
            config_mode: false,
            config_tracks: false,
        };
        build(&rsvc(rollout_spec()), PdbApi::None, Some(&inputs)).unwrap()
    }

    #[test]
    fn during_a_rollout_stable_keeps_its_live_template_and_the_canary_runs_the_spec() {
        let image = |d: &Deployment| {
            d.spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap()
                .containers[0]
                .image
                .clone()
                .unwrap()
        };
        for splitter_ready in [false, true] {
            let children = build_during_rollout("Progressing", 20, false, None, splitter_ready);
            let [stable, canary] = children.deployments.as_slice() else {
                panic!("two tracks expected")
            };
            assert_eq!(
                (image(stable), image(canary)),
                ("app:1".to_owned(), "app:2".to_owned())
            );
            assert_eq!(
                stable.metadata.labels.as_ref().unwrap()[labels::TEMPLATE_HASH],
                "rev-1"
            );
            assert_eq!(canary.metadata.name.as_deref(), Some("web-canary"));
            let replicas = |d: &Deployment| d.spec.as_ref().unwrap().replicas.unwrap();
            assert_eq!(
                (replicas(stable), replicas(canary)),
                (4, 1),
                "the canary in proportion to 20%"
            );
            let rollout = children.rollout.as_ref().unwrap();
            let splitter = rollout.splitter.spec.as_ref().unwrap();
            assert_eq!(splitter.replicas, Some(2));
            assert_eq!(
                splitter.template.spec.as_ref().unwrap().containers[0].resources,
                Some(crate::inject::default_sidecar_resources()),
                "the splitter fits a namespace whose quota demands requests and limits"
            );
            let names = [&rollout.stable_service, &rollout.canary_service].map(|s| s.metadata.name.clone());
            assert_eq!(
                names,
                [Some("web-stable".to_owned()), Some("web-canary".to_owned())]
            );
            let selector = children.service.spec.unwrap().selector.unwrap();
            assert_eq!(
                selector.contains_key(canary::SPLITTER_LABEL),
                splitter_ready,
                "clients go to the splitter only once it is ready"
            );
        }
    }

    #[test]
    fn a_blue_green_preview_runs_at_its_own_size_beside_a_full_stable() {
        let children = build_during_rollout("Progressing", 0, false, Some(3), true);
        let replicas: Vec<_> = children
            .deployments
            .iter()
            .map(|d| d.spec.as_ref().unwrap().replicas.unwrap())
            .collect();
        assert_eq!(replicas, [5, 3]);
    }

    #[test]
    fn promotion_gives_stable_the_spec_template_at_full_size() {
        let children = build_during_rollout("Promoted", 20, true, None, true);
        let stable = &children.deployments[0];
        let spec = stable.spec.as_ref().unwrap();
        assert_eq!(
            spec.template.spec.as_ref().unwrap().containers[0]
                .image
                .as_deref(),
            Some("app:2")
        );
        assert_eq!(spec.replicas, Some(5));
        assert_ne!(
            stable.metadata.labels.as_ref().unwrap()[labels::TEMPLATE_HASH],
            "rev-1"
        );
    }
}
