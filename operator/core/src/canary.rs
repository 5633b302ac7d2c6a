//! Desired objects of a ReplicatedService that rolls out through a RolloutStrategy: a stable and a
//! canary track (Deployment and Service each), and the request splitter in front of them with its
//! configuration and the identity it reads that configuration with. Pure.

use std::{collections::BTreeMap, net::SocketAddr};

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        core::v1::{
            ConfigMap, Container, ContainerPort, EnvVar, HTTPGetAction, PodSpec, PodTemplateSpec, Probe,
            Service, ServiceAccount, ServicePort as CoreServicePort, ServiceSpec,
        },
        rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use outrigger_api::{
    common::{SessionAffinity, SidecarKind},
    rollout::CanaryStrategy,
    ReplicatedServiceSpec,
};
use outrigger_contract::splitter::{
    BackendConfig, MirrorConfig, RouteConfig, SplitterConfig, StickinessConfig, CONFIG_KEY,
};

use crate::{
    analysis::{CANARY, STABLE},
    inject::admin_port,
    inject::restricted_security_context,
    labels,
    owner::child_meta,
    owner::Owner,
};

/// Key of the splitter's configuration in its ConfigMap.
pub const SPLITTER_CONFIG_KEY: &str = CONFIG_KEY;
/// Port the splitter proxies on.
pub const SPLITTER_PORT: i32 = SPLITTER_LISTEN_PORT as i32;
const SPLITTER_LISTEN_PORT: u16 = 8080;
/// Label selecting a service's splitter pods.
pub const SPLITTER_LABEL: &str = "outrigger.dev/splitter";

pub fn splitter_name(service: &str) -> String {
    format!("{service}-splitter")
}

pub fn track_service_name(service: &str, track: &str) -> String {
    format!("{service}-{track}")
}

pub fn canary_deployment_name(service: &str) -> String {
    format!("{service}-canary")
}

/// The admin port of the standalone splitter (`/metrics` is scraped there for analysis).
pub fn splitter_admin_port() -> i32 {
    admin_port(outrigger_api::common::SidecarKind::RequestSplitter)
}

fn meta(owner: &Owner, name: &str, extra: &[(&str, &str)]) -> ObjectMeta {
    let mut labels = labels::owned_by(labels::REPLICATED_SERVICE, &owner.name);
    labels.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    child_meta(owner, name, &labels)
}

/// A Service selecting one track's pods on the service's first port: by their Deployment's track,
/// or, while the synced ConfigMaps roll out (`by_config_track`), by the config track the operator
/// labels each pod with.
pub fn track_service(
    owner: &Owner,
    track: &str,
    port: i32,
    target_port: i32,
    by_config_track: bool,
) -> Service {
    let track_label = if by_config_track {
        crate::config_rollout::CONFIG_TRACK
    } else {
        labels::TRACK
    };
    Service {
        metadata: meta(
            owner,
            &track_service_name(&owner.name, track),
            &[(labels::TRACK, track)],
        ),
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([
                (labels::REPLICATED_SERVICE.to_owned(), owner.name.clone()),
                (track_label.to_owned(), track.to_owned()),
            ])),
            ports: Some(vec![CoreServicePort {
                name: Some("http".to_owned()),
                port,
                target_port: Some(IntOrString::Int(target_port)),
                protocol: Some("TCP".to_owned()),
                ..CoreServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The front Service: the service's name, selecting the splitter pods.
pub fn front_service(owner: &Owner, port: i32) -> Service {
    Service {
        metadata: meta(owner, &owner.name, &[]),
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([(SPLITTER_LABEL.to_owned(), owner.name.clone())])),
            ports: Some(vec![CoreServicePort {
                name: Some("http".to_owned()),
                port,
                target_port: Some(IntOrString::Int(SPLITTER_PORT)),
                protocol: Some("TCP".to_owned()),
                ..CoreServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// Traffic settings of the splitter for the current rollout state.
#[derive(Debug, Clone, PartialEq)]
pub struct Traffic<'a> {
    pub stable_endpoint: String,
    /// `None` while there is no ready canary.
    pub canary_endpoint: Option<String>,
    pub canary_weight: i32,
    pub mirror_percent: i32,
    pub strategy: &'a CanaryStrategy,
    pub affinity: Option<&'a SessionAffinity>,
}

fn front_backend(name: &str, endpoint: &str) -> BackendConfig {
    BackendConfig {
        max_retries: 1,
        ..BackendConfig::new(name, vec![endpoint.to_owned()])
    }
}

/// The configuration of a splitter in front of a service that does not roll out (one an
/// AutoscalingPolicy may scale to zero): the stable track alone, with the service's stickiness.
pub fn stable_splitter_config(stable_endpoint: &str, affinity: Option<&SessionAffinity>) -> SplitterConfig {
    let mut config = SplitterConfig::new(
        SocketAddr::from(([0, 0, 0, 0], SPLITTER_LISTEN_PORT)),
        vec![front_backend(STABLE, stable_endpoint)],
    );
    config.access_log = false;
    config.stickiness = affinity.map(stickiness);
    config
}

fn stickiness(affinity: &SessionAffinity) -> StickinessConfig {
    let mut stickiness = StickinessConfig::new(affinity.source, affinity.name.clone());
    // The CRD bounds virtualNodes to 1-1000, so the conversion keeps every admitted value.
    if let Ok(virtual_nodes) = u32::try_from(affinity.virtual_nodes) {
        stickiness.virtual_nodes = virtual_nodes;
    }
    stickiness
}

/// The splitter's configuration document.
pub fn splitter_config(traffic: &Traffic<'_>) -> SplitterConfig {
    let backend = front_backend;
    let mut config = stable_splitter_config(&traffic.stable_endpoint, traffic.affinity);
    if let Some(canary) = &traffic.canary_endpoint {
        config.backends.push(backend(CANARY, canary));
        let weight = i64::from(traffic.canary_weight.clamp(0, 100));
        config.weights = BTreeMap::from([(STABLE.to_owned(), 100 - weight), (CANARY.to_owned(), weight)]);
        config.routes = traffic
            .strategy
            .routes
            .iter()
            .map(|route| RouteConfig {
                name: route.name.clone(),
                matcher: route.matcher.clone(),
                backend: CANARY.to_owned(),
            })
            .collect();
        if traffic.mirror_percent > 0 {
            config.mirror = Some(MirrorConfig {
                backend: CANARY.to_owned(),
                percent: f64::from(traffic.mirror_percent.clamp(0, 100)),
            });
        }
    }
    config
}

/// Port an injected request splitter listens on when its `listenPort` setting does not say.
pub const INJECTED_SPLITTER_PORT: i32 = INJECTED_SPLITTER_LISTEN_PORT as i32;
const INJECTED_SPLITTER_LISTEN_PORT: u16 = 15001;

/// Where a request splitter injected into a service's pods listens, and the app port it forwards to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InjectedSplitter {
    pub listen_port: i32,
    pub app_port: i32,
}

/// A problem with the injected splitter's settings: the setting and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    pub setting: &'static str,
    pub message: String,
}

fn port_setting(
    settings: &BTreeMap<String, String>,
    setting: &'static str,
) -> Result<Option<i32>, SettingError> {
    settings
        .get(setting)
        .map(|value| match value.trim().parse::<i32>() {
            Ok(port) if (1..=65535).contains(&port) => Ok(port),
            _ => Err(SettingError {
                setting,
                message: format!("{value:?} is not a port number (1-65535)"),
            }),
        })
        .transpose()
}

/// The injected request splitter of a ReplicatedService, when `spec.sidecars` attaches one:
/// `listenPort` (default [`INJECTED_SPLITTER_PORT`]) and `appPort` (default: the first port's
/// target, else the first container port, else 8080).
pub fn injected_splitter(spec: &ReplicatedServiceSpec) -> Option<Result<InjectedSplitter, SettingError>> {
    let sidecar = spec
        .sidecars
        .iter()
        .find(|s| s.name == SidecarKind::RequestSplitter)?;
    let first_container_port = || {
        spec.template
            .spec
            .as_ref()?
            .containers
            .first()?
            .ports
            .as_ref()?
            .first()
            .map(|p| p.container_port)
    };
    let resolve = || {
        let listen_port = port_setting(&sidecar.settings, "listenPort")?.unwrap_or(INJECTED_SPLITTER_PORT);
        let app_port = port_setting(&sidecar.settings, "appPort")?
            .or_else(|| spec.ports.first().map(|p| p.target_port.unwrap_or(p.port)))
            .or_else(first_container_port)
            .unwrap_or(SPLITTER_PORT);
        if listen_port == app_port {
            return Err(SettingError {
                setting: "listenPort",
                message: format!(
                    "{listen_port} is also the app's port; the splitter needs a port of its own"
                ),
            });
        }
        Ok(InjectedSplitter {
            listen_port,
            app_port,
        })
    };
    Some(resolve())
}

/// The injected splitter's configuration: listen on its port, forward to the app on loopback.
pub fn injected_splitter_config(splitter: InjectedSplitter) -> SplitterConfig {
    // `injected_splitter` admits only ports from 1 to 65535, so the conversion keeps the port.
    let listen_port = u16::try_from(splitter.listen_port).unwrap_or(INJECTED_SPLITTER_LISTEN_PORT);
    SplitterConfig::new(
        SocketAddr::from(([0, 0, 0, 0], listen_port)),
        vec![BackendConfig {
            max_retries: 1,
            ..BackendConfig::new("app", vec![format!("127.0.0.1:{}", splitter.app_port)])
        }],
    )
}

/// The splitter's ConfigMap.
pub fn splitter_config_map(owner: &Owner, config: &SplitterConfig) -> ConfigMap {
    ConfigMap {
        metadata: meta(owner, &splitter_name(&owner.name), &[]),
        data: Some(BTreeMap::from([(
            SPLITTER_CONFIG_KEY.to_owned(),
            serde_json::to_string_pretty(config).unwrap_or_default(),
        )])),
        ..ConfigMap::default()
    }
}

/// The identity the splitter watches its ConfigMap with: a ServiceAccount, a Role that reads
/// ConfigMaps and lists and watches EndpointSlices in the namespace, and the binding.
pub fn splitter_identity(owner: &Owner) -> (ServiceAccount, Role, RoleBinding) {
    let name = splitter_name(&owner.name);
    let account = ServiceAccount {
        metadata: meta(owner, &name, &[]),
        ..ServiceAccount::default()
    };
    let role = Role {
        metadata: meta(owner, &name, &[]),
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["configmaps".to_owned()]),
                verbs: vec!["get".to_owned(), "list".to_owned(), "watch".to_owned()],
                ..PolicyRule::default()
            },
            // The ready pods of the track Services, for per-pod session affinity.
            PolicyRule {
                api_groups: Some(vec!["discovery.k8s.io".to_owned()]),
                resources: Some(vec!["endpointslices".to_owned()]),
                verbs: vec!["list".to_owned(), "watch".to_owned()],
                ..PolicyRule::default()
            },
        ]),
    };
    let binding = RoleBinding {
        metadata: meta(owner, &name, &[]),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name,
            namespace: Some(owner.namespace.clone()),
            ..Subject::default()
        }]),
    };
    (account, role, binding)
}

/// The splitter Deployment.
pub fn splitter_deployment(owner: &Owner, image: &str, replicas: i32) -> Deployment {
    let name = splitter_name(&owner.name);
    let selector = BTreeMap::from([(SPLITTER_LABEL.to_owned(), owner.name.clone())]);
    let admin = splitter_admin_port();
    let mut pod_labels = labels::owned_by(SPLITTER_LABEL, &owner.name);
    pod_labels.extend(selector.clone());
    Deployment {
        metadata: meta(owner, &name, &[]),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(name.clone()),
                    containers: vec![Container {
                        name: "request-splitter".to_owned(),
                        image: Some(image.to_owned()),
                        image_pull_policy: Some("IfNotPresent".to_owned()),
                        args: Some(vec![
                            "--configmap".to_owned(),
                            format!("{}/{name}", owner.namespace),
                            "--admin-addr".to_owned(),
                            format!("0.0.0.0:{admin}"),
                            "--drain-delay".to_owned(),
                            "2s".to_owned(),
                        ]),
                        env: Some(vec![EnvVar {
                            name: "OUTRIGGER_ADMIN_PORT".to_owned(),
                            value: Some(admin.to_string()),
                            ..EnvVar::default()
                        }]),
                        ports: Some(vec![
                            ContainerPort {
                                name: Some("http".to_owned()),
                                container_port: SPLITTER_PORT,
                                protocol: Some("TCP".to_owned()),
                                ..ContainerPort::default()
                            },
                            ContainerPort {
                                name: Some("admin".to_owned()),
                                container_port: admin,
                                protocol: Some("TCP".to_owned()),
                                ..ContainerPort::default()
                            },
                        ]),
                        readiness_probe: Some(Probe {
                            http_get: Some(HTTPGetAction {
                                path: Some("/readyz".to_owned()),
                                port: IntOrString::Int(admin),
                                ..HTTPGetAction::default()
                            }),
                            period_seconds: Some(2),
                            ..Probe::default()
                        }),
                        security_context: Some(restricted_security_context()),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use outrigger_api::common::AffinitySource;
    use outrigger_contract::{RouteMatch, ValueMatch};
    use serde_json::{json, Value};

    use super::*;

    fn strategy() -> CanaryStrategy {
        serde_json::from_value(json!({
            "steps": [{"setWeight": 10}],
            "routes": [{"name": "testers", "match": {"header": {"name": "x-canary", "exact": "always"}}}],
        }))
        .unwrap()
    }

    #[test]
    fn the_injected_splitter_listens_on_its_port_and_forwards_to_the_app() {
        let spec = |sidecar: Value, ports: Value| -> ReplicatedServiceSpec {
            serde_json::from_value(json!({
                "template": {"spec": {"containers": [{"name": "app", "image": "a", "ports": [{"containerPort": 9000}]}]}},
                "ports": ports,
                "sidecars": [sidecar],
            }))
            .unwrap()
        };
        let port = |listen_port, app_port| {
            Some(Ok(InjectedSplitter {
                listen_port,
                app_port,
            }))
        };
        let cases = [
            (
                "defaults",
                json!({"name": "request-splitter"}),
                json!([]),
                port(15001, 9000),
            ),
            (
                "the service's target port",
                json!({"name": "request-splitter"}),
                json!([{"name": "http", "port": 80, "targetPort": 8080}]),
                port(15001, 8080),
            ),
            (
                "settings",
                json!({"name": "request-splitter", "settings": {"listenPort": "8000", "appPort": "7000"}}),
                json!([]),
                port(8000, 7000),
            ),
            ("another sidecar", json!({"name": "log-adapter"}), json!([]), None),
        ];
        for (name, sidecar, ports, expected) in cases {
            assert_eq!(injected_splitter(&spec(sidecar, ports)), expected, "{name}");
        }
        let bad = injected_splitter(&spec(
            json!({"name": "request-splitter", "settings": {"listenPort": "http"}}),
            json!([]),
        ));
        assert!(matches!(
            bad,
            Some(Err(SettingError {
                setting: "listenPort",
                ..
            }))
        ));
        let clash = injected_splitter(&spec(
            json!({"name": "request-splitter", "settings": {"listenPort": "9000"}}),
            json!([]),
        ));
        assert!(matches!(
            clash,
            Some(Err(SettingError {
                setting: "listenPort",
                ..
            }))
        ));
        let config = injected_splitter_config(InjectedSplitter {
            listen_port: 8000,
            app_port: 8080,
        });
        assert_eq!(config.listen, SocketAddr::from(([0, 0, 0, 0], 8000)));
        assert_eq!(
            config.backends,
            [BackendConfig {
                max_retries: 1,
                ..BackendConfig::new("app", vec!["127.0.0.1:8080".to_owned()])
            }]
        );
    }

    #[test]
    fn without_a_canary_everything_goes_to_stable() {
        let strategy = strategy();
        let config = splitter_config(&Traffic {
            stable_endpoint: "10.96.0.5:80".into(),
            canary_endpoint: None,
            canary_weight: 30,
            mirror_percent: 10,
            strategy: &strategy,
            affinity: None,
        });
        assert_eq!(config.backends.len(), 1);
        assert!(config.weights.is_empty() && config.routes.is_empty() && config.mirror.is_none());
    }

    #[test]
    fn with_a_canary_weights_routes_mirror_and_stickiness_are_set() {
        let strategy = strategy();
        let affinity: SessionAffinity =
            serde_json::from_value(json!({"source": "cookie", "name": "sid"})).unwrap();
        let config = splitter_config(&Traffic {
            stable_endpoint: "10.96.0.5:80".into(),
            canary_endpoint: Some("10.96.0.6:80".into()),
            canary_weight: 30,
            mirror_percent: 20,
            strategy: &strategy,
            affinity: Some(&affinity),
        });
        assert_eq!(
            config.weights,
            BTreeMap::from([("stable".to_owned(), 70), ("canary".to_owned(), 30)])
        );
        assert_eq!(
            config.routes,
            [RouteConfig {
                name: "testers".to_owned(),
                matcher: RouteMatch::Header(ValueMatch {
                    name: "x-canary".to_owned(),
                    exact: Some("always".to_owned()),
                    regex: None,
                }),
                backend: "canary".to_owned(),
            }]
        );
        assert_eq!(
            config.mirror,
            Some(MirrorConfig {
                backend: "canary".to_owned(),
                percent: 20.0
            })
        );
        assert_eq!(
            config.stickiness,
            Some(StickinessConfig::new(
                AffinitySource::Cookie,
                Some("sid".to_owned())
            ))
        );
    }
}
