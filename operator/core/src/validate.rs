//! Checks the API server's schema cannot express (no CEL before Kubernetes 1.25): cross-field rules,
//! references between parts of a spec, durations and regular expressions.
//!
//! Every check reports the field path and what is wrong, the way the API server does, and all
//! problems are reported at once so a user fixes them in one round.

use std::{collections::BTreeSet, time::Duration};

use k8s_openapi::api::core::v1::PodTemplateSpec;
use outrigger_api::{
    autoscaling::{AutoscalingPolicySpec, MetricType, ScaleDimension, ScaleTargetKind, TargetType},
    common::{AffinitySource, PortProtocol, ServicePort, SessionAffinity, SidecarSpec},
    replicated::ReplicatedServiceSpec,
    rollout::{AnalysisMetricType, AnalysisSpec, CanaryStep, RolloutStrategySpec, RouteMatch, Strategy},
    schema::parse_duration,
    sharded::{ShardedServiceSpec, ShardingFunction},
};

/// One problem with a spec: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// All problems found in a spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct InvalidSpec(pub Vec<FieldError>);

#[derive(Default)]
struct Problems(Vec<FieldError>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    fn finish(self) -> Result<(), InvalidSpec> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(InvalidSpec(self.0))
        }
    }
}

/// Validates a ReplicatedService spec.
pub fn replicated_service(spec: &ReplicatedServiceSpec) -> Result<(), InvalidSpec> {
    let mut problems = Problems::default();
    pod_template(&mut problems, "spec.template", &spec.template);
    ports(&mut problems, &spec.ports);
    sidecars(&mut problems, &spec.sidecars, &spec.template);
    if let Some(affinity) = &spec.session_affinity {
        session_affinity(&mut problems, affinity);
    }
    if let Some(limits) = &spec.rate_limits {
        rate_limits(&mut problems, limits, spec.ports.first());
    }
    if let Some(Err(error)) = crate::canary::injected_splitter(spec) {
        let index = spec
            .sidecars
            .iter()
            .position(|s| s.name == outrigger_api::common::SidecarKind::RequestSplitter)
            .unwrap_or(0);
        problems.add(
            format!("spec.sidecars[{index}].settings.{}", error.setting),
            error.message,
        );
    }
    if let Some(cache) = &spec.cache {
        if cache
            .max_object_bytes
            .is_some_and(|largest| largest > cache.max_bytes)
        {
            problems.add("spec.cache.maxObjectBytes", "must be at most spec.cache.maxBytes");
        }
    }
    if spec.cache.is_some() || spec.tls.is_some() {
        match spec.ports.first() {
            None => problems.add(
                "spec.ports",
                "a service with a cache or tls needs a port: the front tier serves the first one",
            ),
            Some(port) if port.protocol != PortProtocol::Tcp => problems.add(
                "spec.ports[0].protocol",
                "a service with a cache or tls serves HTTP on its first port, which must be TCP",
            ),
            Some(_) => {}
        }
    }
    if spec.rollout_strategy_ref.is_some() {
        match spec.ports.first() {
            None => problems.add(
                "spec.ports",
                "a service with a rolloutStrategyRef needs a port: the request splitter serves the first one",
            ),
            Some(port) if port.protocol != PortProtocol::Tcp => problems.add(
                "spec.ports[0].protocol",
                "a service with a rolloutStrategyRef splits HTTP on its first port, which must be TCP",
            ),
            Some(_) => {}
        }
    }
    problems.finish()
}

/// Validates a ShardedService spec.
pub fn sharded_service(spec: &ShardedServiceSpec) -> Result<(), InvalidSpec> {
    let mut problems = Problems::default();
    pod_template(&mut problems, "spec.template", &spec.template);
    sidecars(&mut problems, &spec.sidecars, &spec.template);
    let sharding = &spec.sharding;
    if let Some(tag) = &sharding.hash_tag {
        let mut chars = tag.chars();
        if let (Some(open), Some(close)) = (chars.next(), chars.next()) {
            if open == close {
                problems.add(
                    "spec.sharding.hashTag",
                    format!("{tag:?} must be two different characters, e.g. \"{{}}\""),
                );
            }
        }
    }
    match sharding.function {
        ShardingFunction::KeyRange => {
            if sharding.key_ranges.is_empty() {
                problems.add("spec.sharding.keyRanges", "required when function is keyRange");
            }
            let mut owners = BTreeSet::new();
            for (index, range) in sharding.key_ranges.iter().enumerate() {
                owners.insert(range.shard);
                if range.shard >= spec.shards {
                    problems.add(
                        format!("spec.sharding.keyRanges[{index}].shard"),
                        format!(
                            "shard {} does not exist (spec.shards is {})",
                            range.shard, spec.shards
                        ),
                    );
                }
                if let (Some(start), Some(end)) = (&range.start, &range.end) {
                    if start >= end {
                        problems.add(
                            format!("spec.sharding.keyRanges[{index}]"),
                            format!("start {start:?} must sort before end {end:?}"),
                        );
                    }
                }
            }
        }
        _ if !sharding.key_ranges.is_empty() => {
            problems.add(
                "spec.sharding.keyRanges",
                "only allowed when function is keyRange",
            );
        }
        _ => {}
    }
    if let Some(storage) = &spec.storage {
        if let Some(pod) = &spec.template.spec {
            if pod.containers.is_empty() {
                problems.add("spec.storage", "needs a container to mount the volume in");
            }
        }
        if storage.mount_path == "/" {
            problems.add("spec.storage.mountPath", "must not be /");
        }
    }
    problems.finish()
}

/// The kind of name a child gets, with the limit Kubernetes puts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NameRule {
    /// Service names: a DNS-1035 label (a lowercase letter first, then letters, digits and `-`, at
    /// most 63 characters).
    Dns1035Label,
    /// StatefulSet names: the StatefulSet controller labels every pod with
    /// `controller-revision-hash=<name>-<10 characters>`, a label value of at most 63 characters.
    StatefulSet,
    /// Label values: at most 63 characters.
    LabelValue,
    /// Other names (Deployments, ConfigMaps, ServiceAccounts, Roles): a DNS-1123 subdomain, at
    /// most 253 characters.
    Dns1123Subdomain,
}

impl NameRule {
    fn limit(self) -> usize {
        match self {
            NameRule::Dns1035Label | NameRule::LabelValue => 63,
            NameRule::StatefulSet => 52,
            NameRule::Dns1123Subdomain => 253,
        }
    }

    /// What is wrong with `name` under this rule, if anything.
    fn check(self, name: &str) -> Option<String> {
        if name.len() > self.limit() {
            return Some(format!("is {} characters, {} at most", name.len(), self.limit()));
        }
        if self == NameRule::Dns1035Label {
            let bytes = name.as_bytes();
            let starts_with_letter = bytes.first().is_some_and(u8::is_ascii_lowercase);
            let ends_alphanumeric = bytes
                .last()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            let charset = bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
            if !(starts_with_letter && ends_alphanumeric && charset) {
                return Some(
                    "is not a DNS-1035 label (a lowercase letter first, then lowercase letters, digits and '-')"
                        .to_owned(),
                );
            }
        }
        None
    }
}

/// Checks the names of the children a service named `name` would get, so a name Kubernetes would
/// refuse on every write is refused once, up front, with the child and the limit it breaks.
fn child_names(problems: &mut Problems, name: &str, children: &[(&str, String, NameRule)]) {
    for (what, child, rule) in children {
        if let Some(problem) = rule.check(child) {
            let limit = rule.limit();
            let room = limit.saturating_sub(child.len().saturating_sub(name.len()));
            let hint = if child.len() > limit {
                format!("; shorten the name to at most {room} characters")
            } else {
                String::new()
            };
            problems.add("metadata.name", format!("{what} {child:?} {problem}{hint}"));
        }
    }
}

/// Validates the names of the children of a ReplicatedService named `name`: its Service (and the
/// track Services of a rollout) must be DNS-1035 labels, and the name is a label value on every
/// child and pod.
pub fn replicated_service_name(name: &str, spec: &ReplicatedServiceSpec) -> Result<(), InvalidSpec> {
    let mut problems = Problems::default();
    let mut children = vec![
        ("the label value", name.to_owned(), NameRule::LabelValue),
        ("the Service", name.to_owned(), NameRule::Dns1035Label),
    ];
    if spec.rollout_strategy_ref.is_some() {
        for track in [crate::analysis::STABLE, crate::analysis::CANARY] {
            children.push((
                "the track Service",
                crate::canary::track_service_name(name, track),
                NameRule::Dns1035Label,
            ));
        }
        for (what, child) in [
            (
                "the canary Deployment",
                crate::canary::canary_deployment_name(name),
            ),
            ("the splitter Deployment", crate::canary::splitter_name(name)),
        ] {
            children.push((what, child, NameRule::Dns1123Subdomain));
        }
    }
    child_names(&mut problems, name, &children);
    problems.finish()
}

/// Validates the names of the children of a ShardedService named `name`: the headless Service of
/// every shard must be a DNS-1035 label, every shard's StatefulSet name short enough for its pods'
/// revision label, and the name is a label value on every child and pod.
pub fn sharded_service_name(name: &str, spec: &ShardedServiceSpec) -> Result<(), InvalidSpec> {
    let mut problems = Problems::default();
    // The last shard has the longest name.
    let last = crate::sharded::shard_name(name, spec.shards.saturating_sub(1).max(0));
    let children = [
        ("the label value", name.to_owned(), NameRule::LabelValue),
        ("the shard Service", last.clone(), NameRule::Dns1035Label),
        ("the shard StatefulSet", last, NameRule::StatefulSet),
    ];
    child_names(&mut problems, name, &children);
    problems.finish()
}

/// The problems of every result together.
pub fn all(results: impl IntoIterator<Item = Result<(), InvalidSpec>>) -> Result<(), InvalidSpec> {
    let problems: Vec<FieldError> = results
        .into_iter()
        .filter_map(Result::err)
        .flat_map(|InvalidSpec(errors)| errors)
        .collect();
    Problems(problems).finish()
}

/// Validates an AutoscalingPolicy spec.
pub fn autoscaling_policy(spec: &AutoscalingPolicySpec) -> Result<(), InvalidSpec> {
    let mut problems = Problems::default();
    if spec.scale_target_ref.dimension == ScaleDimension::Shards
        && spec.scale_target_ref.kind != ScaleTargetKind::ShardedService
    {
        problems.add(
            "spec.scaleTargetRef.dimension",
            "shards applies to a ShardedService only",
        );
    }
    if spec.min_replicas == 0 && spec.scale_target_ref.kind != ScaleTargetKind::ReplicatedService {
        // Requests are held while the first replica starts by the request splitter in front of a
        // ReplicatedService; a ShardedService's clients connect to its shards directly.
        problems.add(
            "spec.minReplicas",
            "must be at least 1 for a ShardedService (only a ReplicatedService scales to zero)",
        );
    }
    if spec.max_replicas < spec.min_replicas {
        problems.add(
            "spec.maxReplicas",
            format!(
                "{} must not be below spec.minReplicas ({})",
                spec.max_replicas, spec.min_replicas
            ),
        );
    }
    for (index, metric) in spec.metrics.iter().enumerate() {
        let field = format!("spec.metrics[{index}]");
        let target = &metric.target;
        match target.target_type {
            TargetType::Utilization => {
                if !matches!(metric.metric_type, MetricType::Cpu | MetricType::Memory) {
                    problems.add(
                        format!("{field}.target.type"),
                        "Utilization applies to cpu and memory only",
                    );
                }
                if target.average_utilization.is_none() {
                    problems.add(
                        format!("{field}.target.averageUtilization"),
                        "required for type Utilization",
                    );
                }
            }
            TargetType::AverageValue if target.average_value.is_none() => {
                problems.add(
                    format!("{field}.target.averageValue"),
                    "required for type AverageValue",
                );
            }
            TargetType::Value if target.value.is_none() => {
                problems.add(format!("{field}.target.value"), "required for type Value");
            }
            _ => {}
        }
        if metric.metric_type == MetricType::Latency && target.target_type != TargetType::Value {
            // A latency percentile is one number for the whole target, not a sum over replicas.
            problems.add(format!("{field}.target.type"), "latency takes a Value target");
        }
        if metric.metric_type == MetricType::Latency && metric.percentile.is_none() {
            problems.add(format!("{field}.percentile"), "required for latency, e.g. 99");
        }
        if metric.metric_type != MetricType::Latency && metric.percentile.is_some() {
            problems.add(format!("{field}.percentile"), "only applies to latency");
        }
        if (metric.metric_type == MetricType::Prometheus) != metric.prometheus.is_some() {
            problems.add(
                format!("{field}.prometheus"),
                "required for type prometheus, and only allowed there",
            );
        }
    }
    if let Some(fallback) = &spec.fallback {
        if fallback.replicas < spec.min_replicas || fallback.replicas > spec.max_replicas {
            problems.add(
                "spec.fallback.replicas",
                format!(
                    "{} must lie within minReplicas..maxReplicas ({}..{})",
                    fallback.replicas, spec.min_replicas, spec.max_replicas
                ),
            );
        }
    }
    problems.finish()
}

/// Validates a RolloutStrategy spec.
pub fn rollout_strategy(spec: &RolloutStrategySpec) -> Result<(), InvalidSpec> {
    let mut problems = Problems::default();
    match &spec.strategy {
        Strategy::Canary(canary) => {
            let mut route_names = BTreeSet::new();
            for (index, route) in canary.routes.iter().enumerate() {
                let field = format!("spec.strategy.canary.routes[{index}]");
                if !route_names.insert(route.name.as_str()) {
                    problems.add(
                        format!("{field}.name"),
                        format!("duplicate route name {:?}", route.name),
                    );
                }
                let (kind, matcher) = match &route.matcher {
                    RouteMatch::Header(matcher) => ("header", matcher),
                    RouteMatch::Cookie(matcher) => ("cookie", matcher),
                };
                if matcher.exact.is_some() && matcher.regex.is_some() {
                    problems.add(format!("{field}.match.{kind}"), "set exact or regex, not both");
                }
                if let Some(pattern) = &matcher.regex {
                    if let Err(error) = regex::Regex::new(pattern) {
                        problems.add(
                            format!("{field}.match.{kind}.regex"),
                            format!("invalid regular expression: {error}"),
                        );
                    }
                }
            }
            for (index, step) in canary.steps.iter().enumerate() {
                let field = format!("spec.strategy.canary.steps[{index}]");
                match step {
                    CanaryStep::Pause(pause) => {
                        if let Some(duration) = &pause.duration {
                            duration_field(&mut problems, &format!("{field}.pause.duration"), duration);
                        }
                    }
                    CanaryStep::Analysis(analysis) => {
                        analysis_spec(&mut problems, &format!("{field}.analysis"), analysis)
                    }
                    CanaryStep::SetWeight(_) | CanaryStep::SetMirror(_) => {}
                }
            }
            if let Some(analysis) = &canary.analysis {
                analysis_spec(&mut problems, "spec.strategy.canary.analysis", analysis);
            }
            duration_field(
                &mut problems,
                "spec.strategy.canary.rollback.stepInterval",
                &canary.rollback.step_interval,
            );
        }
        Strategy::BlueGreen(blue_green) => {
            if let Some(analysis) = &blue_green.pre_promotion_analysis {
                analysis_spec(
                    &mut problems,
                    "spec.strategy.blueGreen.prePromotionAnalysis",
                    analysis,
                );
            }
        }
    }
    problems.finish()
}

fn analysis_spec(problems: &mut Problems, field: &str, analysis: &AnalysisSpec) {
    duration_field(problems, &format!("{field}.interval"), &analysis.interval);
    let mut names = BTreeSet::new();
    for (index, metric) in analysis.metrics.iter().enumerate() {
        let metric_field = format!("{field}.metrics[{index}]");
        if !names.insert(metric.name.as_str()) {
            problems.add(
                format!("{metric_field}.name"),
                format!("duplicate metric name {:?}", metric.name),
            );
        }
        if metric.min.is_none() && metric.max.is_none() && metric.max_degradation_percent.is_none() {
            problems.add(
                metric_field.clone(),
                "needs a threshold: min, max or maxDegradationPercent",
            );
        }
        if let (Some(min), Some(max)) = (metric.min, metric.max) {
            if min > max {
                problems.add(format!("{metric_field}.min"), format!("{min} is above max {max}"));
            }
        }
        match metric.metric_type {
            AnalysisMetricType::Latency if metric.percentile.is_none() => {
                problems.add(
                    format!("{metric_field}.percentile"),
                    "required for latency, e.g. 99",
                );
            }
            AnalysisMetricType::Prometheus if metric.prometheus.is_none() => {
                problems.add(
                    format!("{metric_field}.prometheus"),
                    "required for type prometheus",
                );
            }
            AnalysisMetricType::SuccessRate => {
                for (name, value) in [("min", metric.min), ("max", metric.max)] {
                    if value.is_some_and(|v| !(0.0..=100.0).contains(&v)) {
                        problems.add(
                            format!("{metric_field}.{name}"),
                            "a success rate is a percentage (0-100)",
                        );
                    }
                }
            }
            _ => {}
        }
    }
}

fn duration_field(problems: &mut Problems, field: &str, value: &str) {
    if let Err(error) = parse_duration(value) {
        problems.add(field, error.to_string());
    }
}

fn pod_template(problems: &mut Problems, field: &str, template: &PodTemplateSpec) {
    let Some(pod) = &template.spec else {
        problems.add(
            format!("{field}.spec"),
            "required: the pod template needs a spec with containers",
        );
        return;
    };
    if pod.containers.is_empty() {
        problems.add(
            format!("{field}.spec.containers"),
            "at least one container is required",
        );
    }
    let mut names = BTreeSet::new();
    for (index, container) in pod.containers.iter().enumerate() {
        if container.name.is_empty() {
            problems.add(format!("{field}.spec.containers[{index}].name"), "required");
        } else if !names.insert(container.name.as_str()) {
            problems.add(
                format!("{field}.spec.containers[{index}].name"),
                format!("duplicate container name {:?}", container.name),
            );
        }
        if container.image.as_deref().unwrap_or_default().is_empty() {
            problems.add(format!("{field}.spec.containers[{index}].image"), "required");
        }
    }
}

fn ports(problems: &mut Problems, ports: &[ServicePort]) {
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (index, port) in ports.iter().enumerate() {
        if !names.insert(port.name.as_str()) {
            problems.add(
                format!("spec.ports[{index}].name"),
                format!("duplicate port name {:?}", port.name),
            );
        }
        if !numbers.insert((port.port, port.protocol)) {
            problems.add(
                format!("spec.ports[{index}].port"),
                format!("duplicate port {}", port.port),
            );
        }
    }
}

fn sidecars(problems: &mut Problems, sidecars: &[SidecarSpec], template: &PodTemplateSpec) {
    let mut seen = BTreeSet::new();
    let app_containers: BTreeSet<&str> = template
        .spec
        .iter()
        .flat_map(|pod| pod.containers.iter().chain(pod.init_containers.iter().flatten()))
        .map(|container| container.name.as_str())
        .collect();
    for (index, sidecar) in sidecars.iter().enumerate() {
        if !seen.insert(sidecar.name) {
            problems.add(
                format!("spec.sidecars[{index}].name"),
                format!("{} is attached twice", sidecar.name),
            );
        }
        if sidecar.name == outrigger_api::common::SidecarKind::ConfigSync {
            if let Err(error) =
                outrigger_contract::config_sync::ConfigSyncSettings::from_settings(&sidecar.settings)
            {
                problems.add(
                    format!("spec.sidecars[{index}].settings.{}", error.key),
                    error.message,
                );
            }
        }
        if app_containers.contains(sidecar.name.as_str()) {
            problems.add(
                format!("spec.sidecars[{index}].name"),
                format!("the pod template already has a container named {}", sidecar.name),
            );
        }
    }
}

fn session_affinity(problems: &mut Problems, affinity: &SessionAffinity) {
    match affinity.source {
        AffinitySource::Header | AffinitySource::Cookie if affinity.name.is_none() => {
            problems.add(
                "spec.sessionAffinity.name",
                "required when source is header or cookie",
            );
        }
        AffinitySource::SourceIp if affinity.name.is_some() => {
            problems.add("spec.sessionAffinity.name", "not allowed when source is sourceIP");
        }
        _ => {}
    }
}

fn rate_limits(
    problems: &mut Problems,
    limits: &outrigger_api::rate_limits::RateLimits,
    first_port: Option<&ServicePort>,
) {
    const FIELD: &str = "spec.rateLimits";
    match first_port {
        None => problems.add(
            "spec.ports",
            "rate limits need a port: the request splitter in front of the service serves the first one",
        ),
        Some(port) if port.protocol != PortProtocol::Tcp => problems.add(
            "spec.ports[0].protocol",
            "rate limits are counted on HTTP requests on the first port, which must be TCP",
        ),
        Some(_) => {}
    }
    if let Some(key) = &limits.key {
        match (key.source, key.name.as_deref()) {
            (AffinitySource::Header | AffinitySource::Cookie, None) => {
                problems.add(
                    format!("{FIELD}.key.name"),
                    "required when source is header or cookie",
                );
            }
            (AffinitySource::SourceIp, Some(_)) => {
                problems.add(format!("{FIELD}.key.name"), "not allowed when source is sourceIP");
            }
            _ => {}
        }
    }
    let identified = limits.identified.is_some() || limits.routes.iter().any(|r| r.identified.is_some());
    if identified && limits.identity_header.is_none() {
        problems.add(
            format!("{FIELD}.identityHeader"),
            "required with identified limits: it is what tells an identified request",
        );
    }
    let bucket =
        |problems: &mut Problems, path: String, limit: Option<&outrigger_api::rate_limits::RateLimit>| {
            let Some(limit) = limit else { return };
            if limit.requests < 1 {
                problems.add(format!("{path}.requests"), "must be at least 1");
            }
            match parse_duration(&limit.period) {
                Ok(period) if (Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&period) => {}
                Ok(_) => problems.add(format!("{path}.period"), "must be between 1s and 24h"),
                Err(error) => problems.add(format!("{path}.period"), error.to_string()),
            }
            if limit.burst.is_some_and(|burst| burst < 1) {
                problems.add(format!("{path}.burst"), "must be at least 1");
            }
        };
    bucket(problems, format!("{FIELD}.anonymous"), limits.anonymous.as_ref());
    bucket(
        problems,
        format!("{FIELD}.identified"),
        limits.identified.as_ref(),
    );
    let mut seen = BTreeSet::new();
    for (index, route) in limits.routes.iter().enumerate() {
        let path = format!("{FIELD}.routes[{index}]");
        bucket(problems, format!("{path}.anonymous"), route.anonymous.as_ref());
        bucket(problems, format!("{path}.identified"), route.identified.as_ref());
        if !route.path_prefix.starts_with('/') {
            problems.add(format!("{path}.pathPrefix"), "must start with /");
        }
        if !seen.insert(route.path_prefix.as_str()) {
            problems.add(
                format!("{path}.pathPrefix"),
                format!("{:?} is given by an earlier route", route.path_prefix),
            );
        }
        if route.anonymous.is_none() && route.identified.is_none() {
            problems.add(path, "a route needs an anonymous or an identified limit");
        }
    }
}

#[cfg(test)]
mod tests {
    use outrigger_contract::json::merge_patch;
    use serde_json::{json, Value};

    use super::*;

    fn merged(mut base: Value, patch: Value) -> Value {
        merge_patch(&mut base, &patch);
        base
    }

    fn template() -> Value {
        json!({"spec": {"containers": [{"name": "app", "image": "app:1"}]}})
    }

    fn rsvc(patch: Value) -> ReplicatedServiceSpec {
        serde_json::from_value(merged(json!({"replicas": 2, "template": template()}), patch)).unwrap()
    }

    fn shsvc(patch: Value) -> ShardedServiceSpec {
        serde_json::from_value(merged(
            json!({"shards": 3, "protocol": "redis", "port": 6379, "template": template()}),
            patch,
        ))
        .unwrap()
    }

    fn asp(patch: Value) -> AutoscalingPolicySpec {
        let base = json!({
            "scaleTargetRef": {"kind": "ReplicatedService", "name": "web"},
            "minReplicas": 1, "maxReplicas": 5,
            "metrics": [{"type": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}]
        });
        serde_json::from_value(merged(base, patch)).unwrap()
    }

    fn rost(steps: Value, extra: Value) -> RolloutStrategySpec {
        let canary = merged(json!({"steps": steps}), extra);
        serde_json::from_value(json!({"strategy": {"canary": canary}})).unwrap()
    }

    fn fields(result: Result<(), InvalidSpec>) -> Vec<String> {
        result
            .err()
            .map(|InvalidSpec(errors)| errors.into_iter().map(|e| e.field).collect())
            .unwrap_or_default()
    }

    #[test]
    fn replicated_service_cases() {
        let cases: Vec<(&str, Value, Vec<&str>)> = vec![
            ("valid", json!({}), vec![]),
            (
                "a cache with a port",
                json!({"ports": [{"name": "http", "port": 80}], "cache": {"maxBytes": 1_048_576, "maxObjectBytes": 1024}}),
                vec![],
            ),
            (
                "objects larger than the cache",
                json!({"ports": [{"name": "http", "port": 80}], "cache": {"maxBytes": 1_048_576, "maxObjectBytes": 2_097_152}}),
                vec!["spec.cache.maxObjectBytes"],
            ),
            (
                "tls without a port",
                json!({"tls": {"secretName": "web-tls"}}),
                vec!["spec.ports"],
            ),
            (
                "a cache on a UDP port",
                json!({"ports": [{"name": "dns", "port": 53, "protocol": "UDP"}], "cache": {"maxBytes": 1_048_576}}),
                vec!["spec.ports[0].protocol"],
            ),
            (
                "no containers",
                json!({"template": {"spec": {"containers": []}}}),
                vec!["spec.template.spec.containers"],
            ),
            (
                "no pod spec",
                json!({"template": {"spec": null}}),
                vec!["spec.template.spec"],
            ),
            (
                "duplicate containers",
                json!({"template": {"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "a", "image": "y"}]}}}),
                vec!["spec.template.spec.containers[1].name"],
            ),
            (
                "missing image",
                json!({"template": {"spec": {"containers": [{"name": "a"}]}}}),
                vec!["spec.template.spec.containers[0].image"],
            ),
            (
                "duplicate ports",
                json!({"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 80}]}),
                vec!["spec.ports[1].name", "spec.ports[1].port"],
            ),
            (
                "header affinity without name",
                json!({"sessionAffinity": {"source": "header"}}),
                vec!["spec.sessionAffinity.name"],
            ),
            (
                "source ip with name",
                json!({"sessionAffinity": {"source": "sourceIP", "name": "x"}}),
                vec!["spec.sessionAffinity.name"],
            ),
            (
                "cookie affinity",
                json!({"sessionAffinity": {"source": "cookie", "name": "sid"}}),
                vec![],
            ),
            (
                "splitter listen port not a number",
                json!({"sidecars": [{"name": "request-splitter", "settings": {"listenPort": "http"}}]}),
                vec!["spec.sidecars[0].settings.listenPort"],
            ),
            (
                "rollout without a port",
                json!({"ports": [], "rolloutStrategyRef": {"name": "canary"}}),
                vec!["spec.ports"],
            ),
            (
                "rollout on a UDP port",
                json!({"ports": [{"name": "dns", "port": 53, "protocol": "UDP"}], "rolloutStrategyRef": {"name": "canary"}}),
                vec!["spec.ports[0].protocol"],
            ),
            (
                "rate limits",
                json!({"ports": [{"name": "http", "port": 80}], "rateLimits": {
                    "key": {"source": "header", "name": "x-client"},
                    "identityHeader": "x-api-key",
                    "anonymous": {"requests": 5, "burst": 10},
                    "identified": {"requests": 50, "period": "1m"},
                    "routes": [{"pathPrefix": "/search", "anonymous": {"requests": 1}}],
                }}),
                vec![],
            ),
            (
                "rate limits without a port",
                json!({"rateLimits": {"anonymous": {"requests": 5}}}),
                vec!["spec.ports"],
            ),
            (
                "bad rate limits",
                json!({"ports": [{"name": "http", "port": 80}], "rateLimits": {
                    "key": {"source": "cookie"},
                    "anonymous": {"requests": 0, "burst": 0, "period": "2h"},
                    "routes": [
                        {"pathPrefix": "search", "identified": {"requests": 2, "period": "500ms"}},
                        {"pathPrefix": "search"},
                    ],
                }}),
                vec![
                    "spec.rateLimits.key.name",
                    "spec.rateLimits.identityHeader",
                    "spec.rateLimits.anonymous.requests",
                    "spec.rateLimits.anonymous.burst",
                    "spec.rateLimits.routes[0].identified.period",
                    "spec.rateLimits.routes[0].pathPrefix",
                    "spec.rateLimits.routes[1].pathPrefix",
                    "spec.rateLimits.routes[1].pathPrefix",
                    "spec.rateLimits.routes[1]",
                ],
            ),
            (
                "sidecar twice",
                json!({"sidecars": [{"name": "log-adapter"}, {"name": "log-adapter"}]}),
                vec!["spec.sidecars[1].name"],
            ),
            (
                "sidecar clashes with app container",
                json!({"template": {"spec": {"containers": [{"name": "log-adapter", "image": "x"}]}}, "sidecars": [{"name": "log-adapter"}]}),
                vec!["spec.sidecars[0].name"],
            ),
        ];
        for (name, patch, expected) in cases {
            assert_eq!(fields(replicated_service(&rsvc(patch))), expected, "{name}");
        }
    }

    #[test]
    fn sharded_service_cases() {
        let cases: Vec<(&str, Value, Vec<&str>)> = vec![
            ("valid", json!({}), vec![]),
            (
                "same hash tag characters",
                json!({"sharding": {"hashTag": "||"}}),
                vec!["spec.sharding.hashTag"],
            ),
            (
                "key range without ranges",
                json!({"sharding": {"function": "keyRange"}}),
                vec!["spec.sharding.keyRanges"],
            ),
            (
                "key range to a missing shard",
                json!({"sharding": {"function": "keyRange", "keyRanges": [{"shard": 3, "start": "a", "end": "m"}]}}),
                vec!["spec.sharding.keyRanges[0].shard"],
            ),
            (
                "inverted key range",
                json!({"sharding": {"function": "keyRange", "keyRanges": [{"shard": 0, "start": "m", "end": "a"}]}}),
                vec!["spec.sharding.keyRanges[0]"],
            ),
            (
                "ranges with ketama",
                json!({"sharding": {"keyRanges": [{"shard": 0}]}}),
                vec!["spec.sharding.keyRanges"],
            ),
            (
                "storage at root",
                json!({"storage": {"size": "1Gi", "mountPath": "/"}}),
                vec!["spec.storage.mountPath"],
            ),
        ];
        for (name, patch, expected) in cases {
            assert_eq!(fields(sharded_service(&shsvc(patch))), expected, "{name}");
        }
    }

    #[test]
    fn autoscaling_policy_cases() {
        let cases: Vec<(&str, Value, Vec<&str>)> = vec![
            ("valid", json!({}), vec![]),
            (
                "max below min",
                json!({"minReplicas": 5, "maxReplicas": 2}),
                vec!["spec.maxReplicas"],
            ),
            (
                "utilization of request rate",
                json!({"metrics": [{"type": "requestRate", "target": {"type": "Utilization", "averageUtilization": 50}}]}),
                vec!["spec.metrics[0].target.type"],
            ),
            (
                "utilization without value",
                json!({"metrics": [{"type": "cpu", "target": {"type": "Utilization"}}]}),
                vec!["spec.metrics[0].target.averageUtilization"],
            ),
            (
                "average value missing",
                json!({"metrics": [{"type": "requestRate", "target": {"type": "AverageValue"}}]}),
                vec!["spec.metrics[0].target.averageValue"],
            ),
            (
                "latency without percentile",
                json!({"metrics": [{"type": "latency", "target": {"type": "Value", "value": "100"}}]}),
                vec!["spec.metrics[0].percentile"],
            ),
            (
                "percentile on cpu",
                json!({"metrics": [{"type": "cpu", "percentile": 99, "target": {"type": "Utilization", "averageUtilization": 50}}]}),
                vec!["spec.metrics[0].percentile"],
            ),
            (
                "prometheus without query",
                json!({"metrics": [{"type": "prometheus", "target": {"type": "Value", "value": "1"}}]}),
                vec!["spec.metrics[0].prometheus"],
            ),
            (
                "fallback out of range",
                json!({"fallback": {"replicas": 9}}),
                vec!["spec.fallback.replicas"],
            ),
            (
                "shard count of a replicated service",
                json!({"scaleTargetRef": {"dimension": "shards"}}),
                vec!["spec.scaleTargetRef.dimension"],
            ),
            (
                "shard count of a sharded service",
                json!({"scaleTargetRef": {"kind": "ShardedService", "dimension": "shards"}}),
                vec![],
            ),
            (
                "a replicated service scaled to zero",
                json!({"minReplicas": 0}),
                vec![],
            ),
            (
                "a sharded service scaled to zero",
                json!({"minReplicas": 0, "scaleTargetRef": {"kind": "ShardedService", "name": "cache"}}),
                vec!["spec.minReplicas"],
            ),
            (
                "latency per replica",
                json!({"metrics": [{"type": "latency", "percentile": 99, "target": {"type": "AverageValue", "averageValue": "100"}}]}),
                vec!["spec.metrics[0].target.type"],
            ),
        ];
        for (name, patch, expected) in cases {
            assert_eq!(fields(autoscaling_policy(&asp(patch))), expected, "{name}");
        }
    }

    #[test]
    fn rollout_strategy_cases() {
        let ok_metric = json!({"name": "sr", "type": "successRate", "min": 99});
        let cases: Vec<(&str, Value, Value, Vec<&str>)> = vec![
            (
                "valid",
                json!([{"setWeight": 10}, {"pause": {"duration": "1m"}}]),
                json!({}),
                vec![],
            ),
            (
                "analysis metric without threshold",
                json!([{"analysis": {"metrics": [{"name": "sr", "type": "successRate"}]}}]),
                json!({}),
                vec!["spec.strategy.canary.steps[0].analysis.metrics[0]"],
            ),
            (
                "min above max",
                json!([{"analysis": {"metrics": [{"name": "l", "type": "latency", "percentile": 99, "min": 5, "max": 1}]}}]),
                json!({}),
                vec!["spec.strategy.canary.steps[0].analysis.metrics[0].min"],
            ),
            (
                "latency without percentile",
                json!([{"analysis": {"metrics": [{"name": "l", "type": "latency", "max": 100}]}}]),
                json!({}),
                vec!["spec.strategy.canary.steps[0].analysis.metrics[0].percentile"],
            ),
            (
                "success rate above 100",
                json!([{"analysis": {"metrics": [{"name": "sr", "type": "successRate", "min": 150}]}}]),
                json!({}),
                vec!["spec.strategy.canary.steps[0].analysis.metrics[0].min"],
            ),
            (
                "duplicate metric names",
                json!([{"analysis": {"metrics": [ok_metric.clone(), ok_metric.clone()]}}]),
                json!({}),
                vec!["spec.strategy.canary.steps[0].analysis.metrics[1].name"],
            ),
            (
                "bad regex route",
                json!([{"setWeight": 5}]),
                json!({"routes": [{"name": "t", "match": {"header": {"name": "x", "regex": "(unclosed"}}}]}),
                vec!["spec.strategy.canary.routes[0].match.header.regex"],
            ),
            (
                "exact and regex",
                json!([{"setWeight": 5}]),
                json!({"routes": [{"name": "t", "match": {"cookie": {"name": "x", "exact": "a", "regex": "a"}}}]}),
                vec!["spec.strategy.canary.routes[0].match.cookie"],
            ),
            (
                "duplicate routes",
                json!([{"setWeight": 5}]),
                json!({"routes": [{"name": "t", "match": {"header": {"name": "x"}}}, {"name": "t", "match": {"header": {"name": "y"}}}]}),
                vec!["spec.strategy.canary.routes[1].name"],
            ),
            (
                "background analysis checked too",
                json!([{"setWeight": 5}]),
                json!({"analysis": {"interval": "10x", "metrics": [ok_metric]}}),
                vec!["spec.strategy.canary.analysis.interval"],
            ),
        ];
        for (name, steps, extra, expected) in cases {
            assert_eq!(fields(rollout_strategy(&rost(steps, extra))), expected, "{name}");
        }
    }

    #[test]
    fn a_replicated_service_name_too_long_for_its_children_is_refused_naming_each_child() {
        let name = "a".repeat(70);
        let error = replicated_service_name(&name, &rsvc(json!({}))).unwrap_err();
        assert!(error.0.iter().all(|e| e.field == "metadata.name"));
        let message = error.to_string();
        assert!(message.contains("the Service"), "{message}");
        assert!(message.contains("is 70 characters, 63 at most"), "{message}");
        assert_eq!(replicated_service_name(&"a".repeat(63), &rsvc(json!({}))), Ok(()));
    }

    #[test]
    fn a_rollout_needs_room_for_the_track_service_suffix() {
        let name = "a".repeat(60);
        let spec = rsvc(json!({"rolloutStrategyRef": {"name": "canary"}}));
        let message = replicated_service_name(&name, &spec).unwrap_err().to_string();
        assert!(
            message.contains(&format!("the track Service \"{name}-canary\" is 67 characters, 63 at most; shorten the name to at most 56 characters")),
            "{message}"
        );
        assert_eq!(replicated_service_name(&"a".repeat(56), &spec), Ok(()));
    }

    #[test]
    fn a_service_name_with_a_dot_or_a_leading_digit_is_not_a_dns_1035_label() {
        for name in ["web.v2", "2web"] {
            let error = replicated_service_name(name, &rsvc(json!({}))).unwrap_err();
            assert!(error.to_string().contains("DNS-1035"), "{name}: {error}");
        }
    }

    #[test]
    fn a_sharded_service_name_leaves_room_for_the_last_shard_and_its_revision_label() {
        // 3 shards: the last StatefulSet is "<name>-shard-2", 8 characters longer than the name.
        assert_eq!(sharded_service_name(&"s".repeat(44), &shsvc(json!({}))), Ok(()));
        let message = sharded_service_name(&"s".repeat(45), &shsvc(json!({})))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("the shard StatefulSet") && message.contains("53 characters, 52 at most"),
            "{message}"
        );
        // Shard 10 is one character longer than shard 9.
        assert_eq!(
            sharded_service_name(&"s".repeat(44), &shsvc(json!({"shards": 10}))),
            Ok(())
        );
        assert!(sharded_service_name(&"s".repeat(44), &shsvc(json!({"shards": 11}))).is_err());
    }

    #[test]
    fn the_error_message_lists_every_problem_with_its_field() {
        let error = replicated_service(&rsvc(json!({
            "template": {"spec": {"containers": []}},
            "sessionAffinity": {"source": "cookie"}
        })))
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "spec.template.spec.containers: at least one container is required; \
             spec.sessionAffinity.name: required when source is header or cookie"
        );
    }
}
