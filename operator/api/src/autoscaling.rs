//! `AutoscalingPolicy`: HPA-like scaling fed by the sidecars' own metrics.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::Condition;

/// Scales a ReplicatedService (its replicas) or a ShardedService (replicas per shard, or the shard
/// count) from cpu, memory and network use, from request rate, latency and concurrency measured by
/// the request-splitter sidecars, or from a Prometheus query, with HPA v2 semantics. The operator
/// polls the metrics every second and writes the target's replicas only when they change.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "outrigger.dev",
    version = "v1alpha1",
    kind = "AutoscalingPolicy",
    namespaced,
    shortname = "asp",
    category = "outrigger",
    status = "AutoscalingPolicyStatus",
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.scaleTargetRef.name",
        description = "Scaled object"
    ),
    printcolumn(
        name = "Min",
        type_ = "integer",
        json_path = ".spec.minReplicas",
        description = "Minimum replicas"
    ),
    printcolumn(
        name = "Max",
        type_ = "integer",
        json_path = ".spec.maxReplicas",
        description = "Maximum replicas"
    ),
    printcolumn(
        name = "Current",
        type_ = "integer",
        json_path = ".status.currentReplicas",
        description = "Current replicas"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredReplicas",
        description = "Desired replicas"
    ),
    printcolumn(
        name = "Last-Scale",
        type_ = "string",
        json_path = ".status.decisions[0].summary",
        description = "The latest scaling decision"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why the policy is or is not scaling"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingPolicySpec {
    /// The object to scale; it must serve the scale subresource.
    pub scale_target_ref: ScaleTargetRef,
    /// Fewest replicas the policy scales to. 0 (a ReplicatedService only) scales the service to
    /// zero after no request for the scale-down stabilization window; the request splitter in
    /// front of it holds requests meanwhile, and the first one scales it to one replica at once.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0, max = 10000))]
    pub min_replicas: i32,
    /// Most replicas the policy scales to; must not be below `minReplicas`.
    #[schemars(range(min = 1, max = 10000))]
    pub max_replicas: i32,
    /// Metrics to scale on; the largest replica count any of them asks for wins.
    #[schemars(length(min = 1, max = 16))]
    pub metrics: Vec<MetricSpec>,
    /// How fast to scale up and down.
    #[serde(default)]
    pub behavior: ScalingBehavior,
    /// Replicas to hold while metrics are missing (sidecars unreachable, query failing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
}

fn default_min_replicas() -> i32 {
    1
}

/// The object an AutoscalingPolicy scales.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTargetRef {
    /// API version of the target: `outrigger.dev/v1alpha1`.
    #[serde(default = "default_target_api_version")]
    #[schemars(pattern(r"^outrigger\.dev/v1alpha1$"))]
    pub api_version: String,
    /// Kind of the target: `ReplicatedService` or `ShardedService`, the kinds the operator scales.
    pub kind: ScaleTargetKind,
    /// Name of the target, in the policy's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// What to scale: `replicas` (of a ReplicatedService, or per shard of a ShardedService) or
    /// `shards` (the shard count of a ShardedService, through its scale subresource).
    #[serde(default)]
    pub dimension: ScaleDimension,
}

/// Kinds an AutoscalingPolicy can scale.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ScaleTargetKind {
    ReplicatedService,
    ShardedService,
}

impl ScaleTargetKind {
    /// The kind's name as written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            ScaleTargetKind::ReplicatedService => "ReplicatedService",
            ScaleTargetKind::ShardedService => "ShardedService",
        }
    }
}

/// Which count of the target a policy scales.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ScaleDimension {
    #[default]
    Replicas,
    Shards,
}

fn default_target_api_version() -> String {
    crate::API_VERSION.to_owned()
}

/// One metric and its target.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricSpec {
    /// What is measured: `cpu`, `memory`, `network` (bytes per second), `requestRate` (requests
    /// per second per replica), `latency` (at `percentile`), `concurrency` (in-flight requests per
    /// replica) or `prometheus` (the value of `prometheus.query`).
    #[serde(rename = "type")]
    pub metric_type: MetricType,
    /// The value the policy keeps the metric at.
    pub target: MetricTarget,
    /// With `latency`: the percentile to hold at the target, e.g. 99.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 99))]
    pub percentile: Option<i32>,
    /// With `prometheus`: where to ask and what.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusQuery>,
}

/// Kinds of scaling metric.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum MetricType {
    Cpu,
    Memory,
    Network,
    RequestRate,
    Latency,
    Concurrency,
    Prometheus,
}

/// Target value of a metric, as in HPA v2.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricTarget {
    /// `Utilization` (percent of requests, for cpu and memory), `AverageValue` (per replica) or
    /// `Value` (for the whole target).
    #[serde(rename = "type")]
    pub target_type: TargetType,
    /// With `Utilization`: percent of the containers' requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub average_utilization: Option<i32>,
    /// With `AverageValue`: value per replica (a quantity such as `100`, `250m` or `10Mi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$"))]
    pub average_value: Option<String>,
    /// With `Value`: value for the whole target (a quantity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$"))]
    pub value: Option<String>,
}

/// How a metric target is expressed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TargetType {
    Utilization,
    AverageValue,
    Value,
}

/// A Prometheus query whose value is the metric.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusQuery {
    /// Base URL of the Prometheus server, e.g. `http://prometheus.monitoring:9090`.
    #[schemars(pattern(r"^https?://"))]
    pub address: String,
    /// PromQL query returning a single scalar or one-sample vector.
    #[schemars(length(min = 1))]
    pub query: String,
}

/// Scaling behavior, as in HPA v2.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingBehavior {
    /// Relative difference (percent) between current and target below which no scaling happens.
    #[serde(default = "default_tolerance_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub tolerance_percent: i32,
    /// Rules for scaling up. Default: no stabilization, at most double or +4 pods per 15 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up: Option<ScalingRules>,
    /// Rules for scaling down. Default: 300 s stabilization, up to 100% per 15 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScalingRules>,
}

impl Default for ScalingBehavior {
    fn default() -> Self {
        ScalingBehavior {
            tolerance_percent: default_tolerance_percent(),
            scale_up: None,
            scale_down: None,
        }
    }
}

fn default_tolerance_percent() -> i32 {
    10
}

/// Rules for one scaling direction.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    /// Seconds of past recommendations considered, so brief dips or spikes do not flap the count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_window_seconds: Option<i32>,
    /// Which policy wins when several apply: `Max`, `Min`, or `Disabled` (no scaling this way).
    #[serde(default)]
    pub select_policy: SelectPolicy,
    /// Limits on how much may change per period.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub policies: Vec<ScalingPolicy>,
}

/// Choice among scaling policies.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SelectPolicy {
    #[default]
    Max,
    Min,
    Disabled,
}

/// A limit on change per period.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPolicy {
    /// `Pods` (absolute) or `Percent` (of current replicas).
    #[serde(rename = "type")]
    pub policy_type: ScalingPolicyType,
    /// Amount of change allowed per period.
    #[schemars(range(min = 1, max = 10000))]
    pub value: i32,
    /// Length of the period in seconds.
    #[schemars(range(min = 1, max = 1800))]
    pub period_seconds: i32,
}

/// Unit of a scaling policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ScalingPolicyType {
    Pods,
    Percent,
}

/// What to do when metrics are missing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Fallback {
    /// Replicas to hold.
    #[schemars(range(min = 0, max = 10000))]
    pub replicas: i32,
    /// Seconds of missing metrics before falling back.
    #[serde(default = "default_fallback_after_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub after_seconds: i32,
}

fn default_fallback_after_seconds() -> i32 {
    60
}

/// Observed state of an AutoscalingPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingPolicyStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (metrics available, target reachable), `Degraded` (fallback in use), with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Replicas of the target when last observed.
    #[serde(default)]
    pub current_replicas: i32,
    /// Replicas the policy last asked for.
    #[serde(default)]
    pub desired_replicas: i32,
    /// When the policy last changed the target's replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// Last observed value of every metric, with the replicas it asks for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub current_metrics: Vec<MetricValue>,
    /// The latest scaling decisions, newest first (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<ScalingDecision>,
}

/// Condition types of an AutoscalingPolicy, besides `Ready` and `Degraded`.
pub mod condition_type {
    /// The policy may write the target's replicas (False while another writer owns them).
    pub const SCALING_ACTIVE: &str = "ScalingActive";
    /// Every metric could be read at the last poll.
    pub const METRICS_AVAILABLE: &str = "MetricsAvailable";
}

/// An observed metric value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricValue {
    /// Which metric.
    #[serde(rename = "type")]
    pub metric_type: MetricType,
    /// The observed value (per replica for `AverageValue`, percent for `Utilization`), as a
    /// quantity string; absent when it could not be read.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    /// The target the value is compared with.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// Replicas this metric alone asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Why the metric could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One change of the target's replicas and why it was made.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingDecision {
    /// When the decision was made.
    pub at: Time,
    /// Replicas before.
    pub from_replicas: i32,
    /// Replicas written.
    pub to_replicas: i32,
    /// `ScaleUp`, `ScaleDown`, `Fallback`, `BelowMinReplicas` or `AboveMaxReplicas`.
    pub reason: String,
    /// Every metric's value and the replicas it asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricValue>,
    /// The largest replica count any metric asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_recommendation: Option<i32>,
    /// The recommendation after the stabilization windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stabilized_recommendation: Option<i32>,
    /// What limited the change, when something did: a scaling policy (`scaleUp policy 4 Pods per 15s`),
    /// `minReplicas` or `maxReplicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limited_by: Option<String>,
    /// One line for `kubectl get asp`, e.g. `2→4 ScaleUp (requestRate 18/5)`.
    pub summary: String,
}
