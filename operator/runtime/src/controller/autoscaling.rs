//! The AutoscalingPolicy controller. The reconcile only validates the policy and makes sure one
//! poller runs for it; the poller reads the target, its pods and the metrics every second, asks the
//! pure algorithm (`outrigger_core::autoscaling`) for the replicas, and writes the target's scale
//! only when they change. Status is written when a decision or a condition changes, and the
//! observed metrics at most every [`STATUS_REFRESH`].
//!
//! One owner of replicas: while a HorizontalPodAutoscaler names the same target, or while another
//! writer has changed the replicas since the policy last wrote them, the poller only reports.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        autoscaling::v1::{HorizontalPodAutoscaler, Scale, ScaleSpec},
        core::v1::Pod,
    },
    apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{
    api::{Api, ListParams, Patch, PatchParams, PostParams},
    core::DeserializeGuard,
    runtime::{
        controller::Action,
        events::EventType,
        reflector::{ObjectRef, Store},
        watcher, Controller,
    },
    Resource, ResourceExt,
};
use outrigger_api::{
    autoscaling::{
        condition_type as asp_condition, AutoscalingPolicySpec, MetricType, ScaleDimension, ScaleTargetKind,
        ScalingDecision, TargetType,
    },
    common::condition_type,
    AutoscalingPolicy, AutoscalingPolicyStatus, ReplicatedService, ShardedService,
};
use outrigger_core::{
    autoscaling::{
        self as algorithm,
        replicas::{MetricError, MetricInput, PodState, PodValue},
        samples::{self, SplitterCounters, Traffic, Usage, Window},
        target_of,
        zero::{self, FrontReading, Idleness, ZeroMove},
        Outcome, PolicyState, Reason, DECISION_LIMIT,
    },
    canary,
    conditions::DesiredCondition,
    labels,
    replicated::HoldConfig,
    validate,
};
use serde_json::json;

use super::{error_action, rollout, status, Context, Error, RESYNC};

const CONTROLLER: &str = "autoscalingpolicy";
/// The field manager of replica writes, so other writers can tell them apart.
pub const FIELD_MANAGER: &str = "outrigger-autoscaler";
/// How often a policy's metrics are read.
const POLL: Duration = Duration::from_secs(1);
/// Counters become rates over this much time: long enough to smooth single requests, short enough
/// that a load step shows within a few polls.
const RATE_WINDOW: Duration = Duration::from_secs(3);
/// A pod has a rate once its samples cover this much of the window (half a poll short of it, for
/// the scrapes' jitter), so that every pod's rate covers the same time.
const FULL_WINDOW: Duration = match POLL.checked_div(2) {
    Some(half_poll) => RATE_WINDOW.saturating_sub(half_poll),
    None => RATE_WINDOW,
};

/// Added to the controller's clock so that windows measured back from its first ticks never
/// reach below zero.
const CLOCK_OFFSET: Duration = Duration::from_secs(3600);
/// How long one sidecar or kubelet may take to answer within a poll.
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(800);
/// The observed metrics in status are refreshed at most this often (decisions are written at once).
const STATUS_REFRESH: Duration = Duration::from_secs(15);
/// HorizontalPodAutoscalers are looked for this often.
const HPA_CHECK: Duration = Duration::from_secs(5);
/// After another writer changed the replicas, the policy leaves them alone this long.
const OTHER_WRITER_HOLD: Duration = Duration::from_secs(120);

/// The running pollers, by `namespace/name`, with the uid of the policy each polls.
#[derive(Default)]
pub struct Pollers(Mutex<HashMap<String, (String, tokio::task::JoinHandle<()>)>>);

impl Pollers {
    /// Starts a poller for the policy unless one runs for this very object (a policy deleted and
    /// created again under the same name gets a new one at once).
    fn ensure(&self, key: &str, uid: &str, start: impl FnOnce() -> tokio::task::JoinHandle<()>) {
        if let Ok(mut pollers) = self.0.lock() {
            let running = pollers
                .get(key)
                .is_some_and(|(polled, task)| polled == uid && !task.is_finished());
            if !running {
                if let Some((_, old)) = pollers.insert(key.to_owned(), (uid.to_owned(), start())) {
                    old.abort();
                }
            }
        }
    }

    fn stop(&self, key: &str) {
        if let Ok(mut pollers) = self.0.lock() {
            if let Some((_, task)) = pollers.remove(key) {
                task.abort();
            }
        }
    }

    fn stop_all(&self) {
        if let Ok(mut pollers) = self.0.lock() {
            for (_, (_, task)) in pollers.drain() {
                task.abort();
            }
        }
    }
}

type Policies = Store<DeserializeGuard<AutoscalingPolicy>>;

/// Runs the controller until `shutdown` completes, then stops every poller.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let controller = Controller::new(
        ctx.api::<DeserializeGuard<AutoscalingPolicy>>(),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(shutdown);
    let store = controller.store();
    let pollers = ctx.autoscalers.clone();
    controller
        .run(
            move |guard, ctx| reconcile(guard, ctx, store.clone()),
            |object, error, ctx| error_action(&ctx, CONTROLLER, &key_of(&*object), error),
            ctx,
        )
        .for_each(|_| futures::future::ready(()))
        .await;
    pollers.stop_all();
}

fn key_of(object: &impl ResourceExt) -> String {
    format!("{}/{}", object.namespace().unwrap_or_default(), object.name_any())
}

async fn reconcile(
    guard: Arc<DeserializeGuard<AutoscalingPolicy>>,
    ctx: Arc<Context>,
    store: Policies,
) -> Result<Action, Error> {
    let key = key_of(&*guard);
    let run = async {
        let policy = match &guard.0 {
            Ok(policy) => policy,
            Err(invalid) => {
                ctx.autoscalers.stop(&key);
                return super::validity::report_undecodable::<AutoscalingPolicy>(&ctx, CONTROLLER, invalid)
                    .await;
            }
        };
        if policy.metadata.deletion_timestamp.is_some() {
            ctx.autoscalers.stop(&key);
            return Ok(Action::await_change());
        }
        if let Err(invalid) = validate::autoscaling_policy(&policy.spec) {
            ctx.autoscalers.stop(&key);
            let error = Error::InvalidSpec(invalid);
            let mut status = policy.status.clone().unwrap_or_default();
            status.observed_generation = policy.metadata.generation;
            status.conditions = status::merged_conditions(
                &status.conditions,
                &status::blocked_conditions(&error),
                policy.metadata.generation,
            );
            status::write(&ctx, CONTROLLER, policy, policy.status.as_ref(), &status).await?;
            ctx.count_error(CONTROLLER, &error);
            return Ok(Action::await_change());
        }
        let reference = ObjectRef::from_obj(&*guard);
        let poller_ctx = ctx.clone();
        let uid = policy.uid().unwrap_or_default();
        ctx.autoscalers.ensure(&key, &uid, move || {
            tokio::spawn(poll(poller_ctx, store, reference))
        });
        // A poller that stopped (its policy briefly invalid, or gone and re-created) is restarted
        // by the next reconcile at the latest.
        Ok(Action::requeue(RESYNC))
    };
    ctx.measured(CONTROLLER, &key, None, run).await
}

/// The ReplicatedService a policy scales, for the ReplicatedService controller's watch of
/// policies: a policy that may scale it to zero puts the request splitter in front of it.
pub fn scaled_service(
    guard: DeserializeGuard<AutoscalingPolicy>,
) -> Option<ObjectRef<super::cache::Stored<ReplicatedService>>> {
    let policy = guard.0.ok()?;
    let target = &policy.spec.scale_target_ref;
    (target.kind == ScaleTargetKind::ReplicatedService)
        .then(|| ObjectRef::new(&target.name).within(&policy.namespace().unwrap_or_default()))
}

/// A filter of the policy watch for the ReplicatedService controller: passes a policy's event
/// when its spec changed (a new generation) or it is gone, not when only its status did, which the
/// pollers write every few seconds.
pub fn spec_changes(
    store: Store<DeserializeGuard<AutoscalingPolicy>>,
) -> impl FnMut(&Result<DeserializeGuard<AutoscalingPolicy>, watcher::Error>) -> futures::future::Ready<bool>
{
    let mut seen: HashMap<String, Option<i64>> = HashMap::new();
    move |event| {
        let Ok(guard) = event else {
            return futures::future::ready(true);
        };
        let uid = guard.uid().unwrap_or_default();
        // The reflector updates the store before the event passes: a policy missing is deleted.
        if store.get(&ObjectRef::from_obj(guard)).is_none() {
            seen.remove(&uid);
            return futures::future::ready(true);
        }
        let generation = guard.meta().generation;
        futures::future::ready(seen.insert(uid, generation) != Some(generation))
    }
}

/// How the splitter in front of `namespace/service` holds requests, when a policy may scale the
/// service to zero (see `outrigger_core::autoscaling::zero`).
pub fn hold_for(
    policies: &Store<DeserializeGuard<AutoscalingPolicy>>,
    namespace: &str,
    service: &str,
) -> Option<HoldConfig> {
    policies
        .state()
        .iter()
        .filter_map(|guard| guard.0.as_ref().ok())
        .any(|policy| zero::may_scale_to_zero(policy, namespace, service))
        .then(HoldConfig::default)
}

/// What one poller remembers between polls.
struct Poller {
    ctx: Arc<Context>,
    state: PolicyState,
    traffic: HashMap<String, Window<SplitterCounters>>,
    network: HashMap<String, Window<f64>>,
    /// With `minReplicas: 0`: when the front request splitters last saw traffic.
    idleness: Idleness,
    /// The replicas this poller last wrote.
    written: Option<i32>,
    /// Since when another writer holds the replicas, and who.
    other_writer: Option<(tokio::time::Instant, String)>,
    hpa: Option<String>,
    hpa_checked: Option<tokio::time::Instant>,
    status: AutoscalingPolicyStatus,
    status_written: Option<tokio::time::Instant>,
    origin: tokio::time::Instant,
}

/// Polls one policy until it disappears, becomes invalid, or its uid changes.
async fn poll(ctx: Arc<Context>, store: Policies, reference: ObjectRef<DeserializeGuard<AutoscalingPolicy>>) {
    let key = format!(
        "{}/{}",
        reference.namespace.clone().unwrap_or_default(),
        reference.name
    );
    let Some(uid) = store.get(&reference).and_then(|guard| guard.uid()) else {
        return;
    };
    let initial = store
        .get(&reference)
        .and_then(|guard| guard.0.as_ref().ok().and_then(|p| p.status.clone()))
        .unwrap_or_default();
    let mut poller = Poller {
        ctx,
        state: PolicyState::default(),
        traffic: HashMap::new(),
        network: HashMap::new(),
        idleness: Idleness::default(),
        written: None,
        other_writer: None,
        hpa: None,
        hpa_checked: None,
        status: initial,
        status_written: None,
        origin: tokio::time::Instant::now(),
    };
    tracing::info!(policy = %key, "Autoscaling poller started.");
    let mut ticks = tokio::time::interval(POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(guard) = store.get(&reference) else { break };
        let Ok(policy) = &guard.0 else { break };
        if policy.uid().as_deref() != Some(uid.as_str())
            || validate::autoscaling_policy(&policy.spec).is_err()
        {
            break;
        }
        if let Err(error) = poller.tick(policy).await {
            tracing::warn!(%error, policy = %key, category = error.category(), "Autoscaling poll failed.");
            poller.ctx.count_error(CONTROLLER, &error);
        }
    }
    tracing::info!(policy = %key, "Autoscaling poller stopped.");
}

/// The target as the poller needs it.
struct Target {
    kind: ScaleTargetKind,
    dimension: ScaleDimension,
    name: String,
    metadata: ObjectMeta,
    current: i32,
    /// Pods one unit of `current` stands for (see `PolicyState::decide`).
    pods_per_replica: i32,
    pod_label: &'static str,
}

impl Target {
    /// The spec field the policy writes, as in managedFields.
    fn field(&self) -> &'static str {
        match (self.kind, self.dimension) {
            (ScaleTargetKind::ShardedService, ScaleDimension::Replicas) => "replicasPerShard",
            (ScaleTargetKind::ShardedService, ScaleDimension::Shards) => "shards",
            (ScaleTargetKind::ReplicatedService, _) => "replicas",
        }
    }
}

/// Why the policy does not write the target now.
enum Hold {
    TargetNotFound(String),
    Hpa(String),
    OtherWriter(String),
}

impl Poller {
    /// Time since the poller started, plus an hour so every window fits before it.
    fn now(&self) -> Duration {
        self.origin.elapsed() + CLOCK_OFFSET
    }

    async fn read_target(
        &self,
        namespace: &str,
        spec: &AutoscalingPolicySpec,
    ) -> Result<Option<Target>, Error> {
        let reference = &spec.scale_target_ref;
        let client = self.ctx.client.clone();
        Ok(match reference.kind {
            ScaleTargetKind::ReplicatedService => Api::<ReplicatedService>::namespaced(client, namespace)
                .get_opt(&reference.name)
                .await?
                .map(|rsvc| Target {
                    kind: reference.kind,
                    dimension: reference.dimension,
                    name: reference.name.clone(),
                    current: rsvc.spec.replicas,
                    pods_per_replica: 1,
                    metadata: rsvc.metadata,
                    pod_label: labels::REPLICATED_SERVICE,
                }),
            ScaleTargetKind::ShardedService => Api::<ShardedService>::namespaced(client, namespace)
                .get_opt(&reference.name)
                .await?
                .map(|shsvc| Target {
                    kind: reference.kind,
                    dimension: reference.dimension,
                    name: reference.name.clone(),
                    current: match reference.dimension {
                        ScaleDimension::Replicas => shsvc.spec.replicas_per_shard,
                        ScaleDimension::Shards => shsvc.spec.shards,
                    },
                    pods_per_replica: match reference.dimension {
                        ScaleDimension::Replicas => shsvc.spec.shards,
                        ScaleDimension::Shards => shsvc.spec.replicas_per_shard,
                    },
                    metadata: shsvc.metadata,
                    pod_label: labels::SHARDED_SERVICE,
                }),
        })
    }

    /// A HorizontalPodAutoscaler naming the target, looked up every [`HPA_CHECK`].
    async fn hpa_for(&mut self, namespace: &str, target: &Target) -> Result<Option<String>, Error> {
        if self.hpa_checked.is_some_and(|at| at.elapsed() < HPA_CHECK) {
            return Ok(self.hpa.clone());
        }
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(self.ctx.client.clone(), namespace);
        let list = match hpas.list(&ListParams::default()).await {
            Ok(list) => list,
            // Without the right to look, the policy still scales; the log says what it cannot see.
            Err(kube::Error::Api(status)) if status.code == 403 => {
                tracing::warn!(
                    namespace,
                    "Not allowed to list HorizontalPodAutoscalers; an HPA on the target would go unnoticed."
                );
                self.hpa_checked = Some(tokio::time::Instant::now());
                return Ok(None);
            }
            Err(error) => return Err(error.into()),
        };
        let found = list.into_iter().find(|hpa| {
            hpa.spec.as_ref().is_some_and(|spec| {
                spec.scale_target_ref.kind == target.kind.as_str()
                    && spec.scale_target_ref.name == target.name
                    && spec
                        .scale_target_ref
                        .api_version
                        .as_deref()
                        .is_none_or(|v| v.starts_with(outrigger_api::GROUP))
            })
        });
        self.hpa = found.map(|hpa| hpa.name_any());
        self.hpa_checked = Some(tokio::time::Instant::now());
        Ok(self.hpa.clone())
    }

    /// Another writer changed the replicas since this poller wrote them: held for
    /// [`OTHER_WRITER_HOLD`] from when that was noticed, then the policy takes over again.
    fn other_writer(&mut self, target: &Target) -> Option<String> {
        if let Some(written) = self.written {
            if written != target.current {
                let who = writer_of(&target.metadata, target.field())
                    .unwrap_or_else(|| "another writer".to_owned());
                self.other_writer = Some((tokio::time::Instant::now(), who));
                self.written = None;
            }
        }
        match &self.other_writer {
            Some((since, who)) if since.elapsed() < OTHER_WRITER_HOLD => Some(format!(
                "{who} changed spec.{} of {} {} (to {}); the policy leaves the replicas alone for {}s after that",
                target.field(),
                target.kind.as_str(),
                target.name,
                target.current,
                OTHER_WRITER_HOLD.as_secs()
            )),
            _ => {
                self.other_writer = None;
                None
            }
        }
    }

    async fn tick(&mut self, policy: &AutoscalingPolicy) -> Result<(), Error> {
        let namespace = policy.namespace().unwrap_or_default();
        let spec = &policy.spec;
        let now = self.now();
        let Some(target) = self.read_target(&namespace, spec).await? else {
            let message = format!(
                "{} {:?} does not exist in namespace {namespace}",
                spec.scale_target_ref.kind.as_str(),
                spec.scale_target_ref.name
            );
            return self
                .write_status(policy, None, None, Some(Hold::TargetNotFound(message)), None)
                .await;
        };
        let hold = match self.hpa_for(&namespace, &target).await? {
            Some(hpa) => Some(Hold::Hpa(format!(
                "HorizontalPodAutoscaler {hpa} also scales {} {}; the policy only reports until it is removed",
                target.kind.as_str(),
                target.name
            ))),
            None => self.other_writer(&target).map(Hold::OtherWriter),
        };

        let inputs = self.measure(&namespace, spec, &target).await;
        let front = if spec.min_replicas == 0 && target.kind == ScaleTargetKind::ReplicatedService {
            let reading = self.scrape_front(&namespace, &target.name).await;
            Some(self.idleness.observe(now, reading))
        } else {
            None
        };
        let outcome = self.state.decide_with_front(
            spec,
            (target.current, target.pods_per_replica),
            &inputs,
            now,
            front.as_ref(),
        );
        tracing::debug!(
            policy = %policy.name_any(),
            current = target.current,
            desired = outcome.desired,
            reason = outcome.reason.as_str(),
            "Polled."
        );
        let mut decision = None;
        if outcome.desired != target.current && hold.is_none() {
            self.scale(&namespace, &target, outcome.desired).await?;
            self.state.scaled(now, target.current, outcome.desired);
            self.written = Some(outcome.desired);
            decision = Some(ScalingDecision {
                at: Time(Timestamp::now()),
                from_replicas: target.current,
                to_replicas: outcome.desired,
                reason: outcome.reason.as_str().to_owned(),
                metrics: outcome.metrics.clone(),
                raw_recommendation: outcome.raw,
                stabilized_recommendation: outcome.stabilized,
                limited_by: outcome.limit.describe(),
                summary: algorithm::summary(spec, target.current, &outcome),
            });
        }
        self.write_status(policy, Some(&target), Some(&outcome), hold, decision)
            .await
    }

    /// Writes the target's replicas: the scale subresource (fenced by the resourceVersion just
    /// read), or `spec.replicasPerShard` of a ShardedService, which its scale does not cover.
    async fn scale(&self, namespace: &str, target: &Target, replicas: i32) -> Result<(), Error> {
        let client = self.ctx.client.clone();
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        let scale = Scale {
            metadata: ObjectMeta {
                name: Some(target.name.clone()),
                namespace: Some(namespace.to_owned()),
                resource_version: target.metadata.resource_version.clone(),
                ..ObjectMeta::default()
            },
            spec: Some(ScaleSpec {
                replicas: Some(replicas),
            }),
            status: None,
        };
        self.ctx.metrics.count_write(CONTROLLER, "scale");
        match (target.kind, target.dimension) {
            (ScaleTargetKind::ReplicatedService, _) => {
                Api::<ReplicatedService>::namespaced(client, namespace)
                    .replace_scale(&target.name, &params, &scale)
                    .await?;
            }
            (ScaleTargetKind::ShardedService, ScaleDimension::Shards) => {
                Api::<ShardedService>::namespaced(client, namespace)
                    .replace_scale(&target.name, &params, &scale)
                    .await?;
            }
            (ScaleTargetKind::ShardedService, ScaleDimension::Replicas) => {
                let patch = json!({
                    "metadata": {"resourceVersion": target.metadata.resource_version},
                    "spec": {"replicasPerShard": replicas},
                });
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..PatchParams::default()
                };
                Api::<ShardedService>::namespaced(client, namespace)
                    .patch(&target.name, &params, &Patch::Merge(&patch))
                    .await?;
            }
        }
        tracing::info!(target = %target.name, from = target.current, to = replicas, "Scaled.");
        Ok(())
    }

    /// Reads what the metrics need and turns it into one input per metric.
    async fn measure(
        &mut self,
        namespace: &str,
        spec: &AutoscalingPolicySpec,
        target: &Target,
    ) -> Vec<Result<MetricInput, MetricError>> {
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), namespace);
        let selector = format!("{}={}", target.pod_label, target.name);
        let pods = match pods.list(&ListParams::default().labels(&selector)).await {
            Ok(list) => list.items,
            Err(error) => {
                let message = format!("listing the target's pods: {error}");
                return spec
                    .metrics
                    .iter()
                    .map(|_| Err(MetricError::Unavailable(message.clone())))
                    .collect();
            }
        };
        let wants = |types: &[MetricType]| spec.metrics.iter().any(|m| types.contains(&m.metric_type));
        let traffic = if wants(&[
            MetricType::RequestRate,
            MetricType::Latency,
            MetricType::Concurrency,
        ]) {
            self.scrape_splitters(&pods).await
        } else {
            HashMap::new()
        };
        let usage = if wants(&[MetricType::Cpu, MetricType::Memory, MetricType::Network]) {
            Some(self.kubelet_usage(namespace, &pods).await)
        } else {
            None
        };
        let mut prometheus = Vec::with_capacity(spec.metrics.len());
        for metric in &spec.metrics {
            prometheus.push(match &metric.prometheus {
                Some(query) if metric.metric_type == MetricType::Prometheus => {
                    Some(rollout::prometheus_query(&query.address, &query.query).await)
                }
                _ => None,
            });
        }
        let readings: Vec<PodReading> = pods
            .iter()
            .map(|pod| {
                let uid = pod.uid().unwrap_or_default();
                let (usage, network_rate) = usage
                    .as_ref()
                    .and_then(|u| u.as_ref().ok())
                    .and_then(|u| u.get(&uid))
                    .copied()
                    .unwrap_or_default();
                PodReading {
                    state: samples::pod_state(pod),
                    splitter_answered: traffic.contains_key(&uid),
                    traffic: traffic.get(&uid).cloned().flatten(),
                    usage,
                    network_rate,
                    cpu_request: samples::pod_request(pod, "cpu"),
                    memory_request: samples::pod_request(pod, "memory"),
                }
            })
            .collect();
        let usage_error = usage.and_then(Result::err);
        inputs(spec, &readings, usage_error.as_deref(), &prometheus)
    }

    /// Scrapes every running pod's request splitter at once; returns, by pod uid, each splitter
    /// that answered and its traffic over the rate window once the window is full.
    ///
    /// Each sample is timed by its own scrape (the midpoint of request and answer), not by the
    /// tick: the API reads before the scrape take a varying time on a busy node, and over a
    /// 3-second window a second's error there reads as a third more or less traffic.
    async fn scrape_splitters(&mut self, pods: &[Pod]) -> HashMap<String, Option<Traffic>> {
        let origin = self.origin;
        let port = u16::try_from(canary::splitter_admin_port()).unwrap_or(9903);
        let scrapes = pods.iter().filter_map(|pod| {
            let ip = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
            let uid = pod.uid()?;
            if samples::pod_state(pod) == PodState::Ignored {
                return None;
            }
            Some(async move {
                let address = SocketAddr::new(ip, port);
                let sent = origin.elapsed();
                let text = tokio::time::timeout(SCRAPE_TIMEOUT, rollout::http_get(address, "/metrics")).await;
                let taken = (sent + origin.elapsed()) / 2 + CLOCK_OFFSET;
                (uid, text, taken)
            })
        });
        let results = futures::future::join_all(scrapes).await;
        let mut traffic = HashMap::new();
        let live: Vec<String> = pods.iter().filter_map(ResourceExt::uid).collect();
        self.traffic.retain(|uid, _| live.contains(uid));
        for (uid, result, taken) in results {
            match result {
                Ok(Ok(text)) => {
                    let window = self.traffic.entry(uid.clone()).or_default();
                    window.push(taken, samples::parse_splitter(&text), RATE_WINDOW);
                    traffic.insert(uid, window.traffic(FULL_WINDOW));
                }
                Ok(Err(error)) => tracing::debug!(%error, pod = %uid, "Scraping a request splitter failed."),
                Err(_) => tracing::debug!(pod = %uid, "Scraping a request splitter timed out."),
            }
        }
        traffic
    }

    /// What the request splitters in front of the service report: requests held and answered,
    /// summed over the splitter pods that answered; `None` when none did.
    async fn scrape_front(&self, namespace: &str, service: &str) -> Option<FrontReading> {
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), namespace);
        let selector = format!("{}={service}", canary::SPLITTER_LABEL);
        let pods = match pods.list(&ListParams::default().labels(&selector)).await {
            Ok(list) => list.items,
            Err(error) => {
                tracing::debug!(%error, service, "Listing the front request splitters failed.");
                return None;
            }
        };
        let port = u16::try_from(canary::splitter_admin_port()).unwrap_or(9903);
        let scrapes = pods.iter().filter_map(|pod| {
            if samples::pod_state(pod) == PodState::Ignored {
                return None;
            }
            let ip = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
            Some(tokio::time::timeout(
                SCRAPE_TIMEOUT,
                rollout::http_get(SocketAddr::new(ip, port), "/metrics"),
            ))
        });
        let answers: Vec<SplitterCounters> = futures::future::join_all(scrapes)
            .await
            .into_iter()
            .filter_map(|answer| answer.ok()?.ok())
            .map(|text| samples::parse_splitter(&text))
            .collect();
        (!answers.is_empty()).then(|| FrontReading {
            held: answers.iter().map(|c| c.held).sum(),
            answered: answers.iter().map(|c| c.requests).sum(),
        })
    }

    /// Per-pod usage from the kubelet summary of every node the pods run on, through the API
    /// server's node proxy (what metrics-server reads), with the network counter as a rate.
    async fn kubelet_usage(
        &mut self,
        namespace: &str,
        pods: &[Pod],
    ) -> Result<HashMap<String, (Usage, Option<f64>)>, String> {
        let mut nodes: Vec<&str> = pods
            .iter()
            .filter_map(|pod| pod.spec.as_ref()?.node_name.as_deref())
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        let mut by_name: BTreeMap<(String, String), Usage> = BTreeMap::new();
        let mut failures = Vec::new();
        for node in nodes {
            let request = http::Request::get(format!("/api/v1/nodes/{node}/proxy/stats/summary"))
                .body(Vec::new())
                .map_err(|e| e.to_string())?;
            match tokio::time::timeout(SCRAPE_TIMEOUT * 2, self.ctx.client.request_text(request)).await {
                Ok(Ok(body)) => match samples::parse_summary(&body) {
                    Ok(usage) => by_name.extend(usage),
                    Err(error) => failures.push(format!("node {node}: {error}")),
                },
                Ok(Err(error)) => failures.push(format!("node {node}: {error}")),
                Err(_) => failures.push(format!("node {node}: no answer within {:?}", SCRAPE_TIMEOUT * 2)),
            }
        }
        if by_name.is_empty() && !failures.is_empty() {
            return Err(format!("reading the kubelet summary: {}", failures.join("; ")));
        }
        // Timed by the answers, as the splitter scrapes are, not by the tick.
        let now = self.now();
        let live: Vec<String> = pods.iter().filter_map(ResourceExt::uid).collect();
        self.network.retain(|uid, _| live.contains(uid));
        let mut usage = HashMap::new();
        for pod in pods {
            let (Some(uid), Some(name)) = (pod.uid(), pod.metadata.name.clone()) else {
                continue;
            };
            let Some(found) = by_name.get(&(namespace.to_owned(), name)) else {
                continue;
            };
            let rate = found.network_bytes.and_then(|bytes| {
                let window = self.network.entry(uid.clone()).or_default();
                window.push(now, bytes, RATE_WINDOW);
                window.rate(FULL_WINDOW)
            });
            usage.insert(uid, (*found, rate));
        }
        Ok(usage)
    }

    /// Writes the status when a decision was made or a condition changed, and the observed metrics
    /// every [`STATUS_REFRESH`]; publishes an Event for each decision and condition change.
    async fn write_status(
        &mut self,
        policy: &AutoscalingPolicy,
        target: Option<&Target>,
        outcome: Option<&Outcome>,
        hold: Option<Hold>,
        decision: Option<ScalingDecision>,
    ) -> Result<(), Error> {
        let mut status = self.status.clone();
        status.observed_generation = policy.metadata.generation;
        if let Some(target) = target {
            status.current_replicas = decision.as_ref().map_or(target.current, |d| d.to_replicas);
        }
        if let Some(outcome) = outcome {
            status.desired_replicas = outcome.desired;
            status.current_metrics = outcome.metrics.clone();
        }
        if let Some(decision) = &decision {
            status.last_scale_time = Some(decision.at.clone());
            status.decisions.insert(0, decision.clone());
            status.decisions.truncate(DECISION_LIMIT);
        }
        status.conditions = status::merged_conditions(
            &self.status.conditions,
            &conditions(outcome, hold.as_ref()),
            policy.metadata.generation,
        );

        let changed = |a: &AutoscalingPolicyStatus, b: &AutoscalingPolicyStatus| {
            let strip = |s: &AutoscalingPolicyStatus| AutoscalingPolicyStatus {
                current_metrics: Vec::new(),
                ..s.clone()
            };
            strip(a) != strip(b)
        };
        let refresh_due = self
            .status_written
            .is_none_or(|at| at.elapsed() >= STATUS_REFRESH)
            && status.current_metrics != self.status.current_metrics;
        if !changed(&status, &self.status) && !refresh_due {
            return Ok(());
        }
        let api: Api<AutoscalingPolicy> =
            Api::namespaced(self.ctx.client.clone(), &policy.namespace().unwrap_or_default());
        self.ctx.metrics.count_write(CONTROLLER, "status");
        api.patch_status(
            &policy.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": status })),
        )
        .await?;
        self.status_written = Some(tokio::time::Instant::now());

        if let Some(decision) = &decision {
            let type_ = if decision.reason == Reason::Fallback.as_str() {
                EventType::Warning
            } else {
                EventType::Normal
            };
            self.ctx
                .event(policy, type_, &decision.reason, decision.summary.clone())
                .await;
        }
        for condition in &status.conditions {
            let before = self.status.conditions.iter().find(|c| c.type_ == condition.type_);
            let flipped = before.is_none_or(|b| b.status != condition.status || b.reason != condition.reason);
            let noteworthy =
                condition.type_ != condition_type::READY && condition.type_ != condition_type::DEGRADED;
            if flipped && noteworthy && !(before.is_none() && condition.status == "True") {
                let type_ = if condition.status == "True" {
                    EventType::Normal
                } else {
                    EventType::Warning
                };
                self.ctx
                    .event(policy, type_, &condition.reason, condition.message.clone())
                    .await;
            }
        }
        self.status = status;
        Ok(())
    }
}

/// The conditions after a poll.
fn conditions(outcome: Option<&Outcome>, hold: Option<&Hold>) -> Vec<DesiredCondition> {
    let scaling = match hold {
        Some(Hold::TargetNotFound(message)) => (false, "TargetNotFound", message.clone()),
        Some(Hold::Hpa(message)) => (false, "HorizontalPodAutoscalerPresent", message.clone()),
        Some(Hold::OtherWriter(message)) => (false, "ReplicasWrittenElsewhere", message.clone()),
        None if outcome.is_some_and(|o| o.zero == Some(ZeroMove::StayAtZero)) => (
            true,
            "ScaledToZero",
            "no request for the scale-down stabilization window; the request splitter holds the next \
             requests, and the first scales the target to one replica"
                .to_owned(),
        ),
        None if outcome.is_some_and(|o| o.reason == Reason::ScaledToZero) => (
            false,
            "ScaledToZero",
            "the target has 0 replicas; the policy leaves it there".to_owned(),
        ),
        None => (
            true,
            "ScalingActive",
            "the policy writes the target's replicas".to_owned(),
        ),
    };
    let metrics = match outcome.and_then(|o| o.metrics_error.as_ref().map(|e| (o, e))) {
        // The messages do not count seconds: a status rewritten every poll would be noise.
        Some((outcome, (error, _))) if outcome.reason == Reason::Fallback => (
            false,
            "FallbackActive",
            format!(
                "metrics missing for longer than fallback.afterSeconds, holding the fallback of {} replicas: {error}",
                outcome.desired
            ),
        ),
        Some((_, (error, _))) => (false, "MetricsFailing", format!("metrics missing: {error}")),
        None if outcome.is_none() => (false, "NotMeasured", "the target was not found".to_owned()),
        None => (true, "MetricsAvailable", "every metric has a value".to_owned()),
    };
    let ready = if !scaling.0 {
        (false, scaling.1, scaling.2.clone())
    } else if !metrics.0 {
        (false, metrics.1, metrics.2.clone())
    } else {
        (
            true,
            "Scaling",
            "metrics available and the policy writes the replicas".to_owned(),
        )
    };
    let degraded = matches!(metrics.1, "FallbackActive")
        || matches!(
            scaling.1,
            "HorizontalPodAutoscalerPresent" | "ReplicasWrittenElsewhere" | "TargetNotFound"
        );
    vec![
        DesiredCondition::new(condition_type::READY, ready.0, ready.1, ready.2.clone()),
        DesiredCondition::new(asp_condition::SCALING_ACTIVE, scaling.0, scaling.1, scaling.2),
        DesiredCondition::new(asp_condition::METRICS_AVAILABLE, metrics.0, metrics.1, metrics.2),
        if degraded {
            DesiredCondition::new(condition_type::DEGRADED, true, ready.1, ready.2)
        } else {
            DesiredCondition::new(condition_type::DEGRADED, false, "AsExpected", "nothing is wrong")
        },
    ]
}

/// The manager that owns `spec.<field>` in the target's managedFields, other than the autoscaler.
fn writer_of(metadata: &ObjectMeta, field: &str) -> Option<String> {
    let owns = |entry: &ManagedFieldsEntry| {
        entry
            .fields_v1
            .as_ref()
            .is_some_and(|fields| fields.0["f:spec"][format!("f:{field}")].is_object())
    };
    metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|entry| entry.manager.as_deref() != Some(FIELD_MANAGER) && owns(entry))
        .max_by_key(|entry| entry.time.as_ref().map(|t| t.0))
        .and_then(|entry| entry.manager.clone())
}

/// What the poller measured of one pod.
#[derive(Debug, Clone, Default)]
struct PodReading {
    state: PodState,
    splitter_answered: bool,
    /// `None` also while the splitter's rate window is filling.
    traffic: Option<Traffic>,
    usage: Usage,
    network_rate: Option<f64>,
    cpu_request: Option<f64>,
    memory_request: Option<f64>,
}

/// One algorithm input per metric of the spec, from the pods' readings, the kubelet's answer and
/// the Prometheus answers. Pure.
fn inputs(
    spec: &AutoscalingPolicySpec,
    pods: &[PodReading],
    usage_error: Option<&str>,
    prometheus: &[Option<Result<f64, String>>],
) -> Vec<Result<MetricInput, MetricError>> {
    let ready_pods =
        i32::try_from(pods.iter().filter(|p| p.state == PodState::Ready).count()).unwrap_or(i32::MAX);
    let no_sidecar = || {
        MetricError::Unavailable(format!(
            "no pod's request splitter answered on port {}",
            canary::splitter_admin_port()
        ))
    };
    spec.metrics
        .iter()
        .enumerate()
        .map(|(index, metric)| {
            let (target, target_type) = target_of(metric).ok_or(MetricError::BadTarget)?;
            let per_pod = |value: &dyn Fn(&PodReading) -> Option<f64>,
                           request: &dyn Fn(&PodReading) -> Option<f64>| {
                let values: Vec<PodValue> = pods
                    .iter()
                    .map(|pod| PodValue {
                        state: pod.state,
                        value: value(pod),
                        request: request(pod),
                    })
                    .collect();
                match target_type {
                    TargetType::Value => MetricInput::Whole {
                        value: values
                            .iter()
                            .filter(|v| v.state != PodState::Ignored)
                            .filter_map(|v| v.value)
                            .sum(),
                        target,
                        average: false,
                        ready_pods,
                    },
                    TargetType::Utilization | TargetType::AverageValue => MetricInput::PerPod {
                        pods: values,
                        target,
                        utilization: target_type == TargetType::Utilization,
                    },
                }
            };
            let any_answered = pods.iter().any(|p| p.splitter_answered);
            let any_traffic = pods.iter().any(|p| p.traffic.is_some());
            match metric.metric_type {
                // Pods starting: nothing to measure yet, and no failure of the source either.
                MetricType::Prometheus => {}
                _ if ready_pods == 0 => return Err(MetricError::NoReadyPods),
                _ => {}
            }
            match metric.metric_type {
                MetricType::Cpu | MetricType::Memory | MetricType::Network if usage_error.is_some() => Err(
                    MetricError::Unavailable(usage_error.unwrap_or_default().to_owned()),
                ),
                MetricType::Cpu => Ok(per_pod(&|p| p.usage.cpu, &|p| p.cpu_request)),
                MetricType::Memory => Ok(per_pod(&|p| p.usage.memory, &|p| p.memory_request)),
                MetricType::Network
                    if pods.iter().all(|p| p.network_rate.is_none())
                        && pods.iter().any(|p| p.usage.network_bytes.is_some()) =>
                {
                    Err(MetricError::WindowFilling)
                }
                MetricType::Network => Ok(per_pod(&|p| p.network_rate, &|_| None)),
                MetricType::RequestRate | MetricType::Concurrency | MetricType::Latency if !any_answered => {
                    Err(no_sidecar())
                }
                MetricType::RequestRate | MetricType::Concurrency | MetricType::Latency if !any_traffic => {
                    Err(MetricError::WindowFilling)
                }
                MetricType::RequestRate => {
                    Ok(per_pod(&|p| p.traffic.as_ref().map(|t| t.request_rate), &|_| {
                        None
                    }))
                }
                MetricType::Concurrency => {
                    Ok(per_pod(&|p| p.traffic.as_ref().map(|t| t.concurrency), &|_| None))
                }
                MetricType::Latency => Ok(MetricInput::Whole {
                    value: samples::merged_latency_ms(
                        pods.iter()
                            .filter(|p| p.state != PodState::Ignored)
                            .filter_map(|p| p.traffic.as_ref().map(|t| t.buckets.as_slice())),
                        f64::from(metric.percentile.unwrap_or(99)),
                    ),
                    target,
                    average: false,
                    ready_pods,
                }),
                MetricType::Prometheus => match prometheus.get(index).cloned().flatten() {
                    Some(Ok(value)) => Ok(MetricInput::Whole {
                        value,
                        target,
                        average: target_type == TargetType::AverageValue,
                        ready_pods,
                    }),
                    Some(Err(error)) => Err(MetricError::Unavailable(format!("Prometheus query: {error}"))),
                    None => Err(MetricError::Unavailable("no query".to_owned())),
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(metrics: serde_json::Value) -> AutoscalingPolicySpec {
        serde_json::from_value(json!({
            "scaleTargetRef": {"kind": "ReplicatedService", "name": "web"},
            "maxReplicas": 10,
            "metrics": metrics,
        }))
        .unwrap()
    }

    fn serving(request_rate: f64) -> PodReading {
        PodReading {
            state: PodState::Ready,
            splitter_answered: true,
            traffic: Some(Traffic {
                request_rate,
                concurrency: request_rate / 10.0,
                buckets: vec![(0.1, 1.0), (f64::INFINITY, 1.0)],
            }),
            ..PodReading::default()
        }
    }

    #[test]
    fn sidecar_metrics_become_per_pod_inputs_and_latency_one_value() {
        let spec = spec(json!([
            {"type": "requestRate", "target": {"type": "AverageValue", "averageValue": "5"}},
            {"type": "concurrency", "target": {"type": "Value", "value": "4"}},
            {"type": "latency", "percentile": 50, "target": {"type": "Value", "value": "100"}},
        ]));
        let inputs = inputs(&spec, &[serving(10.0), serving(30.0)], None, &[None, None, None]);
        match &inputs[0] {
            Ok(MetricInput::PerPod { pods, target, .. }) => {
                assert_eq!(*target, 5.0);
                assert_eq!(
                    pods.iter().map(|p| p.value).collect::<Vec<_>>(),
                    [Some(10.0), Some(30.0)]
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(inputs[1], Ok(MetricInput::Whole { value, ready_pods: 2, .. }) if value == 4.0));
        assert!(matches!(inputs[2], Ok(MetricInput::Whole { value, .. }) if (value - 50.0).abs() < 1e-9));
    }

    #[test]
    fn silent_sidecars_failed_queries_and_kubelets_are_errors_that_name_the_source() {
        let spec = spec(json!([
            {"type": "requestRate", "target": {"type": "AverageValue", "averageValue": "5"}},
            {"type": "prometheus", "prometheus": {"address": "http://127.0.0.1:1", "query": "q"},
             "target": {"type": "Value", "value": "1"}},
            {"type": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}},
        ]));
        let quiet = PodReading {
            state: PodState::Ready,
            ..PodReading::default()
        };
        let inputs = inputs(
            &spec,
            &[quiet],
            Some("reading the kubelet summary: forbidden"),
            &[None, Some(Err("connection refused".to_owned())), None],
        );
        let errors: Vec<String> = inputs
            .iter()
            .map(|i| i.as_ref().unwrap_err().to_string())
            .collect();
        assert_eq!(
            errors,
            [
                "no pod's request splitter answered on port 9903",
                "Prometheus query: connection refused",
                "reading the kubelet summary: forbidden",
            ]
        );
    }

    #[test]
    fn sidecars_that_answer_before_their_window_is_full_hold_the_count_without_failing() {
        let spec = spec(json!([
            {"type": "requestRate", "target": {"type": "AverageValue", "averageValue": "5"}},
        ]));
        let filling = PodReading {
            state: PodState::Ready,
            splitter_answered: true,
            ..PodReading::default()
        };
        assert_eq!(
            inputs(&spec, &[filling.clone(), filling], None, &[None]),
            [Err(MetricError::WindowFilling)]
        );
        // The kubelet's byte counters fill the same kind of window.
        let spec = self::spec(json!([
            {"type": "network", "target": {"type": "AverageValue", "averageValue": "1000"}},
        ]));
        let counted = PodReading {
            state: PodState::Ready,
            usage: Usage {
                network_bytes: Some(5000.0),
                ..Usage::default()
            },
            ..PodReading::default()
        };
        assert_eq!(
            inputs(&spec, &[counted], None, &[None]),
            [Err(MetricError::WindowFilling)]
        );
    }

    #[test]
    fn the_writer_of_a_field_is_found_in_managed_fields_except_the_autoscaler() {
        let metadata: ObjectMeta = serde_json::from_value(json!({"managedFields": [
            {"manager": "kubectl-create", "operation": "Update", "time": "2026-01-01T00:00:00Z",
             "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:template": {}}}},
            {"manager": FIELD_MANAGER, "operation": "Update", "time": "2026-01-01T00:01:00Z",
             "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
            {"manager": "argocd", "operation": "Update", "time": "2026-01-01T00:02:00Z",
             "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
        ]}))
        .unwrap();
        assert_eq!(writer_of(&metadata, "replicas").as_deref(), Some("argocd"));
        assert_eq!(writer_of(&metadata, "shards"), None);
    }

    #[test]
    fn conditions_say_why_the_policy_does_not_scale() {
        let hold = Hold::Hpa("HorizontalPodAutoscaler web also scales ReplicatedService web".to_owned());
        let desired = conditions(None, Some(&hold));
        let find = |type_: &str| desired.iter().find(|c| c.type_ == type_).unwrap();
        assert!(!find(condition_type::READY).status);
        assert_eq!(
            find(asp_condition::SCALING_ACTIVE).reason,
            "HorizontalPodAutoscalerPresent"
        );
        assert!(find(condition_type::DEGRADED).status);
    }
}
