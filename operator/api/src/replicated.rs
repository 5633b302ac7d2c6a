//! `ReplicatedService`: a stateless, load-balanced service.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    common::{Condition, LocalObjectReference, ServicePort, SessionAffinity, SidecarSpec},
    rate_limits::RateLimits,
    rollout::RolloutStatus,
};

/// A stateless service of identical replicas behind one load-balanced Service, with optional session
/// affinity, attached sidecars and progressive rollouts.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "outrigger.dev",
    version = "v1alpha1",
    kind = "ReplicatedService",
    namespaced,
    shortname = "rsvc",
    category = "outrigger",
    status = "ReplicatedServiceStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Desired replicas"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Ready replicas"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why the service is or is not ready"
    ),
    printcolumn(
        name = "Rollout",
        type_ = "string",
        json_path = ".status.rollout.phase",
        description = "Rollout phase"
    ),
    printcolumn(
        name = "Canary%",
        type_ = "integer",
        json_path = ".status.rollout.canaryWeight",
        description = "Share of traffic the canary receives"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ReplicatedServiceSpec {
    /// Number of replicas. Also settable through the scale subresource (`kubectl scale`) and by an
    /// AutoscalingPolicy.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 10000))]
    pub replicas: i32,
    /// Pod template of the replicas.
    #[schemars(schema_with = "crate::schema::pod_template")]
    pub template: PodTemplateSpec,
    /// Ports the Service exposes. At least one port is needed for traffic to reach the replicas.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub ports: Vec<ServicePort>,
    /// How the operator decides a replica is ready to receive traffic, when the pod template has
    /// no readiness probe of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Readiness>,
    /// Keep each client on one replica by consistent hashing of a client key. Realised by the
    /// request splitter sidecar, not by kube-proxy's IP affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,
    /// Sidecars to attach to every replica.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 6))]
    pub sidecars: Vec<SidecarSpec>,
    /// RolloutStrategy (same namespace) that drives changes of the pod template. Without it, a
    /// change replaces replicas with a plain rolling update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_strategy_ref: Option<LocalObjectReference>,
    /// Rate limits per client, enforced by the request splitter in front of the service; the
    /// limits are service-wide and divided among the splitter replicas (see `RateLimits`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<RateLimits>,
    /// A shared HTTP cache in the front tier (the request splitter Deployment in front of the
    /// replicas): GET and HEAD responses kept by `Cache-Control`, `Expires` and `Vary`,
    /// revalidated with `ETag` or `Last-Modified`, concurrent misses for one URL sent to the
    /// replicas once. Needs a TCP port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<EdgeCache>,
    /// TLS termination in the front tier, with the certificate of a `kubernetes.io/tls` Secret of
    /// the namespace; a changed Secret takes effect for new connections without a restart. Needs a
    /// TCP port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<EdgeTls>,
}

/// The front tier's HTTP cache.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EdgeCache {
    /// Most bytes the cache holds per front replica (bodies, headers and keys), from 1 MiB
    /// (1048576) to 64 GiB; the least recently used responses are evicted beyond it. The front
    /// Deployment's memory limit, if any, must leave room for it.
    #[schemars(range(min = 1_048_576, max = 68_719_476_736_i64))]
    pub max_bytes: i64,
    /// Largest response body stored, from 1 KiB (1024) to `maxBytes`; larger responses pass
    /// through. Default 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1_024, max = 68_719_476_736_i64))]
    pub max_object_bytes: Option<i64>,
}

/// TLS termination in the front tier.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EdgeTls {
    /// A `kubernetes.io/tls` Secret in the service's namespace (keys `tls.crt` and `tls.key`).
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

fn default_replicas() -> i32 {
    1
}

/// Readiness check of a replica.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    /// HTTP path to GET; a 2xx or 3xx answer means ready. Without a path, a TCP connect is the check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^/"))]
    pub http_path: Option<String>,
    /// Container port to check.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Seconds between checks.
    #[serde(default = "default_period_seconds")]
    #[schemars(range(min = 1, max = 300))]
    pub period_seconds: i32,
    /// Consecutive failures before the replica is taken out of the load balancer.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = 30))]
    pub failure_threshold: i32,
    /// Seconds a replica must be ready before it counts as available.
    #[serde(default)]
    #[schemars(range(min = 0, max = 3600))]
    pub min_ready_seconds: i32,
}

fn default_period_seconds() -> i32 {
    5
}

fn default_failure_threshold() -> i32 {
    3
}

/// Observed state of a ReplicatedService.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicatedServiceStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`, with reasons and messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Replicas that exist, across stable and canary tracks.
    #[serde(default)]
    pub replicas: i32,
    /// Replicas that pass their readiness check.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Replicas running the current pod template.
    #[serde(default)]
    pub updated_replicas: i32,
    /// Label selector of the replicas, in string form, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Progress of the current rollout, when a RolloutStrategy is referenced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
}
