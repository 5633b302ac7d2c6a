//! Types shared by several resources: conditions, ports, sidecar attachment, references.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
/// Declared with the documents the operator writes for the sidecars, which carry them unchanged.
pub use outrigger_contract::{AffinitySource, SessionAffinity};

/// Condition types every Outrigger resource reports.
pub mod condition_type {
    /// The resource's workloads serve traffic as specified.
    pub const READY: &str = "Ready";
    /// A change is being rolled out.
    pub const PROGRESSING: &str = "Progressing";
    /// The resource cannot reach its desired state (invalid spec, failing children).
    pub const DEGRADED: &str = "Degraded";
}

/// A port the service exposes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Name of the port, unique within the service (a DNS label such as `http` or `metrics`).
    #[schemars(length(min = 1, max = 15), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Port the Service listens on.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Container port the traffic goes to; defaults to `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub target_port: Option<i32>,
    /// Transport protocol.
    #[serde(default)]
    pub protocol: PortProtocol,
}

/// Transport protocol of a port.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
pub enum PortProtocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

/// The sidecar containers Outrigger can attach to a pod.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SidecarKind {
    /// Syncs ConfigMaps / API objects into files atomically, with reload and rollback.
    ConfigSync,
    /// Redis- or HTTP-speaking ambassador that routes keys to shards by consistent hashing.
    ShardingAmbassador,
    /// Weighted canary / sticky / header-routed / mirrored request splitting.
    RequestSplitter,
    /// Turns the app's heterogeneous logs into structured JSON.
    LogAdapter,
    /// Exposes the app's own stats as Prometheus metrics.
    MetricsAdapter,
    /// Translates the app's health signals into readiness and liveness endpoints.
    HealthAdapter,
}

impl SidecarKind {
    /// Every kind, in the order sidecars are placed in a pod.
    pub const ALL: [SidecarKind; 6] = [
        SidecarKind::ConfigSync,
        SidecarKind::ShardingAmbassador,
        SidecarKind::RequestSplitter,
        SidecarKind::LogAdapter,
        SidecarKind::MetricsAdapter,
        SidecarKind::HealthAdapter,
    ];

    /// The name used in annotations, container names and images (`request-splitter`).
    pub fn as_str(self) -> &'static str {
        match self {
            SidecarKind::ConfigSync => "config-sync",
            SidecarKind::ShardingAmbassador => "sharding-ambassador",
            SidecarKind::RequestSplitter => "request-splitter",
            SidecarKind::LogAdapter => "log-adapter",
            SidecarKind::MetricsAdapter => "metrics-adapter",
            SidecarKind::HealthAdapter => "health-adapter",
        }
    }

    /// Parses the annotation / container name form.
    pub fn parse(name: &str) -> Option<SidecarKind> {
        SidecarKind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

impl std::fmt::Display for SidecarKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A sidecar to attach to every pod of the service, with its settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// Which sidecar: `config-sync`, `sharding-ambassador`, `request-splitter`, `log-adapter`,
    /// `metrics-adapter` or `health-adapter`.
    pub name: SidecarKind,
    /// Image to run; defaults to the operator-wide image for this sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Compute resources of the sidecar container; defaults to the operator-wide defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Settings handed to the sidecar as its configuration (keys are documented per sidecar),
    /// for example `listenPort: "8080"` for the request splitter.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, String>,
}

/// Reference to an object in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct LocalObjectReference {
    /// Name of the referenced object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}
