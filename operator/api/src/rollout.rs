//! `RolloutStrategy`: a reusable progressive-delivery recipe referenced by services, and the
//! rollout progress a service reports.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::Condition;
/// Declared with the splitter's document, which carries a route's match unchanged.
pub use outrigger_contract::{RouteMatch, ValueMatch};

/// How changes of a service's pod template reach users: canary steps driven through the request
/// splitter (with header routes, mirroring and automated analysis) or blue-green.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "outrigger.dev",
    version = "v1alpha1",
    kind = "RolloutStrategy",
    namespaced,
    shortname = "rost",
    category = "outrigger",
    status = "RolloutStrategyStatus",
    printcolumn(
        name = "Valid",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the strategy is valid"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStrategySpec {
    /// Exactly one of `canary` or `blueGreen`.
    pub strategy: Strategy,
}

/// The kind of rollout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Strategy {
    /// Shift traffic to the new version step by step, judging it on live metrics.
    Canary(CanaryStrategy),
    /// Run the new version next to the old one with no traffic, then switch all at once.
    BlueGreen(BlueGreenStrategy),
}

/// A canary rollout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStrategy {
    /// Steps run in order; after the last one the canary is promoted.
    #[schemars(length(min = 1, max = 64))]
    pub steps: Vec<CanaryStep>,
    /// Requests matching any of these routes go to the canary from the first step on, whatever
    /// the weight (for testers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub routes: Vec<CanaryRoute>,
    /// Analysis that runs in the background for the whole rollout, in addition to analysis steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSpec>,
    /// What happens when analysis fails.
    #[serde(default)]
    pub rollback: RollbackPolicy,
    /// Seconds to keep the previous version's replicas after promotion or abort, so in-flight
    /// requests drain.
    #[serde(default = "default_scale_down_delay_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_delay_seconds: i32,
}

fn default_scale_down_delay_seconds() -> i32 {
    30
}

/// One canary step: exactly one of `setWeight`, `setMirror`, `pause` or `analysis`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum CanaryStep {
    /// Percent of requests (0-100) the canary serves from this step on.
    SetWeight(#[schemars(range(min = 0, max = 100))] i32),
    /// Percent of requests (0-100) copied to the canary as a shadow experiment; clients only ever
    /// see the stable response.
    SetMirror(#[schemars(range(min = 0, max = 100))] i32),
    /// Wait: for `duration`, or until promoted by a person when no duration is given.
    Pause(PauseStep),
    /// Judge the canary on live metrics before going on.
    Analysis(AnalysisSpec),
}

/// A pause step.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PauseStep {
    /// How long to wait (`30s`, `5m`, `1h`); without it the rollout waits to be promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^([0-9]+(ms|s|m|h))+$"))]
    pub duration: Option<String>,
}

/// A request route to the canary.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryRoute {
    /// Name of the route, for status and metrics.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// What a request must carry: exactly one of `header` or `cookie`.
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
}

/// Automated analysis of the canary against thresholds and against stable.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisSpec {
    /// How often metrics are measured and judged.
    #[serde(default = "default_analysis_interval")]
    #[schemars(pattern(r"^([0-9]+(ms|s|m|h))+$"))]
    pub interval: String,
    /// Measurements that must pass before the analysis succeeds.
    #[serde(default = "default_success_count")]
    #[schemars(range(min = 1, max = 100))]
    pub count: i32,
    /// Failed measurements that fail the analysis (and roll back).
    #[serde(default = "default_failure_limit")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_limit: i32,
    /// Requests the canary must have served in an interval before it is judged; fewer makes the
    /// measurement inconclusive.
    #[serde(default = "default_min_request_count")]
    #[schemars(range(min = 1, max = 1000000))]
    pub min_request_count: i32,
    /// Inconclusive measurements in a row after which the rollout pauses for a person.
    #[serde(default = "default_inconclusive_limit")]
    #[schemars(range(min = 1, max = 100))]
    pub inconclusive_limit: i32,
    /// Metrics and their thresholds; all must pass.
    #[schemars(length(min = 1, max = 16))]
    pub metrics: Vec<AnalysisMetric>,
}

fn default_analysis_interval() -> String {
    "10s".to_owned()
}

fn default_success_count() -> i32 {
    3
}

fn default_failure_limit() -> i32 {
    1
}

fn default_min_request_count() -> i32 {
    20
}

fn default_inconclusive_limit() -> i32 {
    3
}

/// A metric the canary is judged on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisMetric {
    /// Name of the metric, for status and events.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// `successRate` (percent of non-5xx responses), `latency` (milliseconds at `percentile`),
    /// both read from the request splitters, or `prometheus` (the value of `prometheus.query`).
    #[serde(rename = "type")]
    pub metric_type: AnalysisMetricType,
    /// With `latency`: which percentile, e.g. 99.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 99))]
    pub percentile: Option<i32>,
    /// The canary fails when its value is below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// The canary fails when its value is above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// The canary fails when it is worse than stable by more than this many percent (relative),
    /// measured over the same interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1000.0))]
    pub max_degradation_percent: Option<f64>,
    /// With `prometheus`: where to ask and what.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<crate::autoscaling::PrometheusQuery>,
}

/// Kinds of analysis metric.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AnalysisMetricType {
    SuccessRate,
    Latency,
    Prometheus,
}

/// What to do when analysis fails.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackPolicy {
    /// Roll back by itself on failed analysis; when false the rollout pauses instead.
    #[serde(default = "default_true")]
    pub automatic: bool,
    /// Move the weight back in steps of this many percent per `stepInterval` instead of at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub step_percent: Option<i32>,
    /// Time between gradual rollback steps.
    #[serde(default = "default_rollback_step_interval")]
    #[schemars(pattern(r"^([0-9]+(ms|s|m|h))+$"))]
    pub step_interval: String,
}

impl Default for RollbackPolicy {
    fn default() -> Self {
        RollbackPolicy {
            automatic: true,
            step_percent: None,
            step_interval: default_rollback_step_interval(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_rollback_step_interval() -> String {
    "5s".to_owned()
}

/// A blue-green rollout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenStrategy {
    /// Switch to the new version as soon as it is ready (and pre-promotion analysis passed);
    /// otherwise wait to be promoted.
    #[serde(default)]
    pub auto_promotion: bool,
    /// Replicas of the new version before the switch; defaults to the service's replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub preview_replicas: Option<i32>,
    /// Analysis of the new version (reached through header routes or mirroring) before the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_promotion_analysis: Option<AnalysisSpec>,
    /// Seconds to keep the old version after the switch, for a fast way back.
    #[serde(default = "default_scale_down_delay_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_delay_seconds: i32,
}

/// Observed state of a RolloutStrategy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStrategyStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` when the strategy is valid, with the reason when it is not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Progress of a rollout, reported in the service's status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// `Healthy`, `Progressing`, `Paused`, `RollingBack`, `Aborted` or `Promoted`.
    pub phase: RolloutPhase,
    /// Index of the step being run, from 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step: Option<i32>,
    /// Percent of requests the canary serves.
    #[serde(default)]
    pub canary_weight: i32,
    /// Percent of requests mirrored to the canary.
    #[serde(default)]
    pub mirror_percent: i32,
    /// Hash of the stable pod template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_revision: Option<String>,
    /// Hash of the canary pod template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_revision: Option<String>,
    /// When the current step started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Time>,
    /// Why the rollout is where it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The most recent analysis measurement, with its numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_analysis: Option<AnalysisResult>,
    /// Successful measurements so far in the current analysis step.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub analysis_successes: i32,
    /// Failed measurements so far in the current analysis step.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub analysis_failures: i32,
    /// Inconclusive measurements in a row in the current analysis step.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub analysis_inconclusive: i32,
    /// The latest decisions, newest last, each with its inputs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RolloutDecision>,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(value: &i32) -> bool {
    *value == 0
}

/// Phase of a rollout.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RolloutPhase {
    #[default]
    Healthy,
    Progressing,
    Paused,
    RollingBack,
    Aborted,
    Promoted,
}

/// Outcome of an analysis measurement.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisResult {
    /// `Successful`, `Failed` or `Inconclusive`.
    pub verdict: AnalysisVerdict,
    /// When it was measured.
    pub measured_at: Time,
    /// Every metric's numbers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricMeasurement>,
}

/// Verdict of an analysis.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AnalysisVerdict {
    Successful,
    Failed,
    Inconclusive,
}

/// One metric of an analysis measurement.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricMeasurement {
    /// Metric name from the strategy.
    pub name: String,
    /// The canary's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<f64>,
    /// Stable's value over the same interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<f64>,
    /// Requests the canary served in the interval.
    #[serde(default)]
    pub canary_requests: i64,
    /// The threshold as written, e.g. `min 99` or `max 250`.
    pub threshold: String,
    /// This metric's verdict.
    pub verdict: AnalysisVerdict,
}

/// A recorded rollout decision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutDecision {
    /// When it was taken.
    pub at: Time,
    /// Step index at the time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<i32>,
    /// What was decided, e.g. `SetWeight`, `Promote`, `Rollback`.
    pub decision: String,
    /// Why, with the numbers it was based on.
    pub reason: String,
}
