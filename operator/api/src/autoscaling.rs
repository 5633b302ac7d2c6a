//! `AutoscalingPolicy`: HPA-like scaling fed by the sidecars' own metrics.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::Condition;

/// Scales a ReplicatedService, ShardedService or any object with a scale subresource, from cpu,
/// memory and network use, from request rate, latency and concurrency measured by the sidecars, or
/// from a Prometheus query, with HPA v2-style behavior.
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
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingPolicySpec {
    /// The object to scale; it must serve the scale subresource.
    pub scale_target_ref: ScaleTargetRef,
    /// Fewest replicas the policy scales to.
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
    /// API version of the target.
    #[serde(default = "default_target_api_version")]
    #[schemars(length(min = 1))]
    pub api_version: String,
    /// Kind of the target, e.g. `ReplicatedService`, `ShardedService` or `Deployment`.
    #[schemars(length(min = 1))]
    pub kind: String,
    /// Name of the target, in the policy's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
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
    /// Last observed value of every metric.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub current_metrics: Vec<MetricValue>,
}

/// An observed metric value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricValue {
    /// Which metric.
    #[serde(rename = "type")]
    pub metric_type: MetricType,
    /// The observed value, as a quantity string.
    pub value: String,
}
