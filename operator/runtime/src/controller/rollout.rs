//! The rollout step of a ReplicatedService reconcile: read the live tracks and the splitter, take
//! an analysis measurement from the splitters' metrics when one is due, and ask the pure state
//! machine (`outrigger_core::rollout`) what to make true. Applying that is the caller's build and
//! apply steps; afterwards [`announce`] publishes the new decisions as Events and clears a handled
//! manual control.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header::HOST, Request};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Pod},
    jiff::Timestamp,
};
use kube::{
    api::{Api, ListParams, Patch, PatchParams},
    runtime::events::EventType,
    ResourceExt,
};
use outrigger_api::{
    rollout::{
        AnalysisMetricType, AnalysisSpec, CanaryStep, CanaryStrategy, RolloutDecision, RolloutPhase,
        RolloutStatus,
    },
    schema::parse_duration,
    ReplicatedService, RolloutStrategy,
};
use outrigger_core::{
    analysis::{self, Snapshot},
    canary, config_rollout, labels,
    owner::content_hash,
    rollout::{self, Control, Decision, Observation, CONTROL_ANNOTATION},
};
use outrigger_sidecar_runtime::encode::percent_encode;
use serde_json::json;

use super::{cache::Children, config_rollout::ConfigRead, Context, Error};

/// Largest `/metrics` answer read from a splitter.
const METRICS_LIMIT: usize = 4 << 20;
/// How long one splitter may take to answer a scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why scraping one splitter failed; the measurement goes on without it.
#[derive(Debug, thiserror::Error)]
pub(super) enum ScrapeError {
    #[error("connecting: {0}")]
    Connect(#[source] std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[source] hyper::Error),
    #[error("building the request: {0}")]
    Request(#[source] http::Error),
    #[error("answered {0}")]
    Status(http::StatusCode),
    #[error("reading the body: {0}")]
    Body(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// The analysis baseline of one service: the splitters' counters at the start of the interval
/// being measured. Kept in memory; after a restart or a leader change the next scrape starts a
/// fresh interval.
#[derive(Debug)]
struct Baseline {
    revision: String,
    step: i32,
    taken: Instant,
    snapshot: Snapshot,
}

/// The baselines of every service being analysed, by `namespace/name`.
#[derive(Debug, Default)]
pub struct Baselines(Mutex<HashMap<String, Baseline>>);

impl Baselines {
    fn take(&self, key: &str) -> Option<Baseline> {
        self.0.lock().ok().and_then(|mut map| map.remove(key))
    }

    fn put(&self, key: String, baseline: Baseline) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(key, baseline);
        }
    }
}

/// What the rollout step decided, with what the build needs from the reads.
pub struct Rollout {
    pub plan: CanaryStrategy,
    /// Replicas of the new version before a blue-green switch; `None` for a canary.
    pub preview_replicas: Option<i32>,
    pub decision: Decision,
    pub live_stable: Option<Deployment>,
    /// Every pod of the canary runs the desired template and one is ready: it can take traffic,
    /// also while it grows or shrinks.
    pub canary_serving: bool,
    /// The splitter has a ready replica.
    pub splitter_ready: bool,
    pub control: Control,
    /// The raw control annotation, when present (to clear it, and to report a value not understood).
    pub control_annotation: Option<String>,
    /// The decision is about the synced ConfigMaps, not the template: the canary track is a set of
    /// the stable Deployment's pods (`outrigger_core::config_rollout`).
    pub config_mode: bool,
}

impl Rollout {
    /// Whether the splitter should send anything to the canary track.
    pub fn canary_serves(&self) -> bool {
        self.decision.canary && self.canary_serving && self.decision.status.phase != RolloutPhase::Aborted
    }

    /// The live stable Deployment's template and revision.
    pub fn live_stable_template(&self) -> Option<(&k8s_openapi::api::core::v1::PodTemplateSpec, &str)> {
        let stable = self.live_stable.as_ref()?;
        let revision = stable.labels().get(labels::TEMPLATE_HASH)?;
        Some((&stable.spec.as_ref()?.template, revision.as_str()))
    }
}

/// A Deployment whose controller has caught up with its spec: every replica runs the current
/// template and is ready, and no old replica is left.
fn settled(deployment: &Deployment) -> Option<i32> {
    let wanted = deployment.spec.as_ref()?.replicas.unwrap_or(1);
    let status = deployment.status.as_ref()?;
    let caught_up = status.observed_generation >= deployment.metadata.generation
        && status.updated_replicas.unwrap_or(0) >= wanted
        && status.replicas.unwrap_or(0) == wanted
        && status.ready_replicas.unwrap_or(0) >= wanted;
    caught_up.then_some(status.ready_replicas.unwrap_or(0))
}

/// A Deployment whose pods all run its current template, at least one of them ready; unlike
/// [`settled`], it may still be adding or removing replicas.
fn serving(deployment: &Deployment) -> bool {
    let Some(status) = deployment.status.as_ref() else {
        return false;
    };
    status.observed_generation >= deployment.metadata.generation
        && status.updated_replicas.unwrap_or(0) >= status.replicas.unwrap_or(0)
        && status.ready_replicas.unwrap_or(0) > 0
}

fn revision_of(deployment: &Deployment) -> Option<String> {
    deployment.labels().get(labels::TEMPLATE_HASH).cloned()
}

/// The analysis to measure now: the current step's, or else the strategy's background analysis
/// while the canary receives traffic (live or mirrored).
fn analysis_step<'a>(plan: &'a CanaryStrategy, status: &RolloutStatus) -> Option<&'a AnalysisSpec> {
    let step = usize::try_from(status.current_step?).ok()?;
    match plan.steps.get(step) {
        Some(CanaryStep::Analysis(analysis)) => Some(analysis),
        _ if status.canary_weight > 0 || status.mirror_percent > 0 => plan.analysis.as_ref(),
        _ => None,
    }
}

/// Shortest and longest time until the next reconcile of a rollout: a decision that asks to look
/// again at once still waits half a second (the API server is not polled in a loop), and one that
/// asks nothing comes back at the resync.
const REQUEUE_MIN: Duration = Duration::from_millis(500);

/// When to reconcile a rolling service again, from what its decision asked for.
pub fn requeue_after(decided: Option<Duration>) -> Duration {
    decided.map_or(super::RESYNC, |after| after.clamp(REQUEUE_MIN, super::RESYNC))
}

/// How much longer to wait before the next analysis measurement, `None` when it is due: once 90%
/// of the interval has passed since the baseline (a reconcile a little early, woken by a watch
/// event, measures rather than waiting a whole further interval).
fn measurement_wait(since_baseline: Duration, interval: Duration) -> Option<Duration> {
    (since_baseline < interval.mul_f64(0.9)).then(|| interval.saturating_sub(since_baseline))
}

/// The sooner of the decision's requeue and the next measurement.
fn sooner(decided: Option<Duration>, measurement: Option<Duration>) -> Option<Duration> {
    match (decided, measurement) {
        (Some(decided), Some(measurement)) => Some(decided.min(measurement)),
        (decided, measurement) => decided.or(measurement),
    }
}

/// The service's splitter has a ready replica (in the controller's cache).
pub fn splitter_ready(children: &Children, namespace: &str, service: &str) -> bool {
    ready(
        children
            .deployment(namespace, &canary::splitter_name(service))
            .as_ref(),
    )
}

fn ready(splitter: Option<&Deployment>) -> bool {
    splitter
        .and_then(|splitter| splitter.status.as_ref()?.ready_replicas)
        .is_some_and(|ready| ready > 0)
}

/// Reads, measures and decides.
pub async fn decide(
    rsvc: &ReplicatedService,
    strategy: &RolloutStrategy,
    ctx: &Context,
    children: &Children,
    config: Option<&ConfigRead>,
) -> Result<Rollout, Error> {
    let namespace = rsvc.namespace().unwrap_or_default();
    let name = rsvc.name_any();
    let plan = rollout::canary_plan(&strategy.spec.strategy);
    // The tracks as the controller's cache holds them (the watch that triggers this reconcile).
    let live_stable = children.deployment(&namespace, &name);
    let live_canary = children.deployment(&namespace, &canary::canary_deployment_name(&name));
    let live_splitter = children.deployment(&namespace, &canary::splitter_name(&name));

    let mut desired_revision = content_hash(&rsvc.spec.template)?;
    // The canary counts only once it runs the desired template.
    let current_canary = live_canary
        .as_ref()
        .filter(|canary| revision_of(canary).as_deref() == Some(desired_revision.as_str()));
    let mut canary_serving = current_canary.is_some_and(serving);
    let mut canary_ready_replicas = current_canary.and_then(settled).unwrap_or(0);
    let mut stable_revision = live_stable.as_ref().and_then(revision_of);
    // Once the template has settled (no canary Deployment left), the rollout is the ConfigMaps':
    // the same state machine, over config revisions, with canary pods instead of a canary
    // Deployment. A template change ends it, and a config edit waits for a template rollout.
    let template_settled =
        stable_revision.as_deref() == Some(desired_revision.as_str()) && live_canary.is_none();
    let config_mode = match config.filter(|_| template_settled) {
        Some(
            read @ ConfigRead {
                live: Some(live),
                document,
                ..
            },
        ) => {
            let observed = config_rollout::observe(document.as_ref(), live, &read.views());
            desired_revision = config_rollout::rollout_revision(&observed.live_revision);
            stable_revision = Some(config_rollout::rollout_revision(&observed.stable_revision));
            canary_serving = observed.canary_serving;
            canary_ready_replicas = observed.canary_ready;
            true
        }
        _ => false,
    };
    let stable_ready = live_stable
        .as_ref()
        .and_then(settled)
        .is_some_and(|ready| ready >= rsvc.spec.replicas);
    let splitter_ready = ready(live_splitter.as_ref());
    let control_annotation = rsvc.annotations().get(CONTROL_ANNOTATION).cloned();
    let control = Control::parse(control_annotation.as_deref());
    let previous = rsvc.status.as_ref().and_then(|status| status.rollout.as_ref());

    let key = format!("{namespace}/{name}");
    let measuring = previous.and_then(|previous| {
        let analysis = analysis_step(&plan, previous)?;
        let in_progress = previous.phase == RolloutPhase::Progressing
            && previous.canary_revision.as_deref() == Some(desired_revision.as_str())
            && canary_ready_replicas > 0;
        in_progress.then_some((analysis, previous))
    });
    let mut measurement = None;
    let mut next_measurement_in = None;
    match measuring {
        Some((analysis, previous)) => {
            let step = previous.current_step.unwrap_or(0);
            let interval = parse_duration(&analysis.interval).unwrap_or(Duration::from_secs(10));
            let baseline = ctx
                .baselines
                .take(&key)
                .filter(|b| b.revision == desired_revision && b.step == step);
            let wait = baseline
                .as_ref()
                .and_then(|baseline| measurement_wait(baseline.taken.elapsed(), interval));
            match baseline {
                // Not a whole interval yet: keep waiting.
                Some(baseline) if wait.is_some() => {
                    next_measurement_in = wait;
                    ctx.baselines.put(key.clone(), baseline);
                }
                baseline => {
                    let (mut snapshot, scraped) = scrape(ctx, &namespace, &name).await;
                    query_prometheus(analysis, &mut snapshot).await;
                    if scraped > 0 {
                        if let Some(before) = &baseline {
                            let experiment = previous.canary_weight == 0 && previous.mirror_percent > 0;
                            let result = analysis::judge(
                                analysis,
                                &before.snapshot,
                                &snapshot,
                                experiment,
                                Timestamp::now(),
                            );
                            tracing::info!(verdict = ?result.verdict, step, "Measured the canary.");
                            measurement = Some(result);
                        }
                        ctx.baselines.put(
                            key.clone(),
                            Baseline {
                                revision: desired_revision.clone(),
                                step,
                                taken: Instant::now(),
                                snapshot,
                            },
                        );
                    }
                    next_measurement_in = Some(interval);
                }
            }
        }
        None => drop(ctx.baselines.take(&key)),
    }

    let observation = Observation {
        now: Timestamp::now(),
        stable_revision,
        desired_revision,
        canary_ready_replicas,
        service_replicas: rsvc.spec.replicas,
        stable_ready,
        control,
        measurement,
    };
    let mut decision = rollout::next(&plan, previous, &observation);
    // Still measuring at the same step: come back when the interval is over, not a whole interval
    // after this (possibly early) reconcile.
    let same_step = decision.status.current_step.is_some()
        && previous.and_then(|p| p.current_step) == decision.status.current_step
        && decision.status.phase == RolloutPhase::Progressing;
    if same_step {
        decision.requeue_after = sooner(decision.requeue_after, next_measurement_in);
    }
    Ok(Rollout {
        plan,
        preview_replicas: rollout::preview_replicas(&strategy.spec.strategy, rsvc.spec.replicas),
        decision,
        live_stable,
        canary_serving,
        splitter_ready,
        control,
        control_annotation,
        config_mode,
    })
}

/// Adds up the `/metrics` of every running splitter pod of the service. Returns how many answered.
async fn scrape(ctx: &Context, namespace: &str, service: &str) -> (Snapshot, usize) {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let selector = format!("{}={service}", canary::SPLITTER_LABEL);
    let mut snapshot = Snapshot::default();
    let mut scraped = 0;
    let list = match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => list,
        Err(error) => {
            tracing::warn!(%error, "Listing the splitter pods failed; no measurement this time.");
            return (snapshot, 0);
        }
    };
    let port = u16::try_from(canary::splitter_admin_port()).unwrap_or(9903);
    for pod in list {
        let Some(ip) = pod
            .status
            .as_ref()
            .filter(|status| status.phase.as_deref() == Some("Running"))
            .and_then(|status| status.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok())
        else {
            continue;
        };
        let address = SocketAddr::new(ip, port);
        match tokio::time::timeout(SCRAPE_TIMEOUT, http_get(address, "/metrics")).await {
            Ok(Ok(text)) => {
                snapshot.add_scrape(&text);
                scraped += 1;
            }
            Ok(Err(error)) => tracing::warn!(%error, pod = %pod.name_any(), "Scraping a splitter failed."),
            Err(_) => tracing::warn!(
                error = %ScrapeError::Timeout(SCRAPE_TIMEOUT),
                pod = %pod.name_any(),
                "Scraping a splitter failed."
            ),
        }
    }
    (snapshot, scraped)
}

/// Asks Prometheus for the value of every `prometheus` metric of `analysis`. A query that fails
/// leaves its metric out, which makes it inconclusive; the reason is logged.
async fn query_prometheus(analysis: &AnalysisSpec, snapshot: &mut Snapshot) {
    for metric in &analysis.metrics {
        let Some(prometheus) = metric
            .prometheus
            .as_ref()
            .filter(|_| metric.metric_type == AnalysisMetricType::Prometheus)
        else {
            continue;
        };
        let answer = prometheus_query(&prometheus.address, &prometheus.query);
        match answer.await {
            Ok(value) => {
                snapshot.external.insert(metric.name.clone(), value);
            }
            Err(error) => {
                tracing::warn!(%error, metric = %metric.name, "Querying Prometheus failed; the metric is inconclusive.")
            }
        }
    }
}

/// The value of one Prometheus instant query (a scalar or a one-sample vector); shared with the
/// autoscaler.
pub(super) async fn prometheus_query(address: &str, query: &str) -> Result<f64, String> {
    let rest = address
        .strip_prefix("http://")
        .ok_or_else(|| "only http:// Prometheus addresses are supported".to_owned())?;
    let (authority, prefix) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let path = format!(
        "/{}api/v1/query?query={}",
        if prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", prefix.trim_end_matches('/'))
        },
        percent_encode(query)
    );
    let address = tokio::net::lookup_host(if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    })
    .await
    .map_err(|e| e.to_string())?
    .next()
    .ok_or_else(|| format!("{authority} has no address"))?;
    let body = tokio::time::timeout(SCRAPE_TIMEOUT, http_get(address, &path))
        .await
        .map_err(|_| ScrapeError::Timeout(SCRAPE_TIMEOUT).to_string())?
        .map_err(|e| e.to_string())?;
    analysis::prometheus_value(&body)
}

/// GETs `path` from `address` over plain HTTP/1.1; also used by the autoscaler.
pub(super) async fn http_get(address: SocketAddr, path: &str) -> Result<String, ScrapeError> {
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(ScrapeError::Connect)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(ScrapeError::Http)?;
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(HOST, address.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(ScrapeError::Request)?;
    let response = sender.send_request(request).await.map_err(ScrapeError::Http)?;
    if !response.status().is_success() {
        return Err(ScrapeError::Status(response.status()));
    }
    let body = Limited::new(response.into_body(), METRICS_LIMIT)
        .collect()
        .await
        .map_err(|error| ScrapeError::Body(error.to_string()))?
        .to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The Event reason and type of a recorded decision.
fn event_of(decision: &RolloutDecision) -> (String, EventType) {
    let warning = matches!(decision.decision.as_str(), "Rollback" | "Abort")
        || (decision.decision == "Pause" && decision.reason.starts_with("analysis"));
    let type_ = if warning {
        EventType::Warning
    } else {
        EventType::Normal
    };
    (format!("Rollout{}", decision.decision), type_)
}

/// After the status is written: an Event per new decision, and the manual control cleared (a value
/// that is not a control is reported and cleared too), fenced by `resource_version`, the version the
/// reconcile read or its status write produced.
pub async fn announce(
    ctx: &Context,
    rsvc: &ReplicatedService,
    resource_version: Option<String>,
    rollout: &Rollout,
    previous: Option<&RolloutStatus>,
) -> Result<(), Error> {
    let seen = previous.map(|p| p.history.as_slice()).unwrap_or_default();
    for decision in rollout
        .decision
        .status
        .history
        .iter()
        .filter(|d| !seen.contains(d))
    {
        let (reason, type_) = event_of(decision);
        ctx.event(rsvc, type_, &reason, decision.reason.clone()).await;
    }
    let Some(value) = &rollout.control_annotation else {
        return Ok(());
    };
    if rollout.control == Control::None {
        ctx.event(
            rsvc,
            EventType::Warning,
            "InvalidRolloutControl",
            format!("{CONTROL_ANNOTATION}={value:?} is not one of promote, abort, pause, resume; ignored"),
        )
        .await;
    }
    let api: Api<ReplicatedService> =
        Api::namespaced(ctx.client.clone(), &rsvc.namespace().unwrap_or_default());
    // Fenced like every other write: a person's newer control is not cleared unseen.
    let patch = json!({"metadata": {
        "resourceVersion": resource_version,
        "annotations": {CONTROL_ANNOTATION: null},
    }});
    ctx.metrics.count_write("replicatedservice", "annotation");
    api.patch(&rsvc.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
    use kube::api::ObjectMeta;

    use super::*;

    fn deployment(replicas: i32, generation: i64, status: DeploymentStatus) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                generation: Some(generation),
                ..ObjectMeta::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                ..DeploymentSpec::default()
            }),
            status: Some(status),
        }
    }

    fn status(observed: i64, replicas: i32, updated: i32, ready: i32) -> DeploymentStatus {
        DeploymentStatus {
            observed_generation: Some(observed),
            replicas: Some(replicas),
            updated_replicas: Some(updated),
            ready_replicas: Some(ready),
            ..DeploymentStatus::default()
        }
    }

    #[test]
    fn a_deployment_is_settled_only_when_every_replica_runs_its_template_and_is_ready() {
        let cases = [
            ("caught up", deployment(3, 2, status(2, 3, 3, 3)), Some(3)),
            ("spec not yet seen", deployment(3, 3, status(2, 3, 3, 3)), None),
            ("old replica left", deployment(3, 2, status(2, 4, 3, 4)), None),
            ("not all ready", deployment(3, 2, status(2, 3, 3, 2)), None),
            ("not all updated", deployment(3, 2, status(2, 3, 2, 3)), None),
        ];
        for (name, deployment, expected) in cases {
            assert_eq!(settled(&deployment), expected, "{name}");
        }
    }

    #[test]
    fn a_rollout_is_looked_at_again_no_sooner_than_half_a_second_and_no_later_than_the_resync() {
        let ms = Duration::from_millis;
        assert_eq!(requeue_after(Some(ms(0))), ms(500));
        assert_eq!(requeue_after(Some(ms(1500))), ms(1500));
        assert_eq!(
            requeue_after(Some(Duration::from_secs(3600))),
            super::super::RESYNC
        );
        assert_eq!(requeue_after(None), super::super::RESYNC);
    }

    #[test]
    fn a_measurement_is_due_after_ninety_percent_of_its_interval() {
        let s = Duration::from_secs;
        assert_eq!(measurement_wait(s(0), s(10)), Some(s(10)));
        assert_eq!(measurement_wait(s(4), s(10)), Some(s(6)));
        assert_eq!(
            measurement_wait(Duration::from_millis(8999), s(10)),
            Some(Duration::from_millis(1001))
        );
        assert_eq!(
            measurement_wait(s(9), s(10)),
            None,
            "early by a tenth: measured now"
        );
        assert_eq!(measurement_wait(s(30), s(10)), None);
    }

    #[test]
    fn the_next_measurement_brings_a_later_requeue_forward_but_never_delays_one() {
        let s = Duration::from_secs;
        assert_eq!(
            sooner(Some(s(30)), Some(s(6))),
            Some(s(6)),
            "a pause of 30 s still measures at 6 s"
        );
        assert_eq!(sooner(Some(s(2)), Some(s(6))), Some(s(2)));
        assert_eq!(sooner(None, Some(s(6))), Some(s(6)));
        assert_eq!(sooner(Some(s(2)), None), Some(s(2)));
        assert_eq!(sooner(None, None), None);
    }

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            percent_encode("sum(rate(x{a=\"b\"}[1m]))"),
            "sum%28rate%28x%7Ba%3D%22b%22%7D%5B1m%5D%29%29"
        );
    }

    #[test]
    fn failures_and_person_stops_are_warnings() {
        let decision = |decision: &str, reason: &str| RolloutDecision {
            at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::UNIX_EPOCH),
            step: None,
            decision: decision.to_owned(),
            reason: reason.to_owned(),
        };
        let cases = [
            (decision("Rollback", "analysis failed"), "RolloutRollback", true),
            (decision("Abort", "aborted by a person"), "RolloutAbort", true),
            (
                decision("Pause", "analysis inconclusive 3 times"),
                "RolloutPause",
                true,
            ),
            (decision("Pause", "paused by a person"), "RolloutPause", false),
            (
                decision("SetWeight", "canary weight 20%"),
                "RolloutSetWeight",
                false,
            ),
            (decision("Promote", "all steps passed"), "RolloutPromote", false),
        ];
        for (decision, reason, warning) in cases {
            let (got_reason, type_) = event_of(&decision);
            assert_eq!(got_reason, reason);
            assert_eq!(type_ == EventType::Warning, warning, "{reason}");
        }
    }
}
