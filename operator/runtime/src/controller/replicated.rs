//! The ReplicatedService controller.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount},
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    api::{Api, DynamicObject},
    core::{DeserializeGuard, PartialObjectMeta},
    runtime::{
        controller::Action,
        reflector::{ObjectRef, Store},
        watcher, Controller, WatchStreamExt,
    },
    Resource, ResourceExt,
};
use outrigger_api::{
    common::LocalObjectReference, AutoscalingPolicy, ReplicatedService, ReplicatedServiceStatus,
    RolloutStrategy,
};
use outrigger_core::{
    canary::{self, Traffic},
    config_rollout as core_config_rollout, edge, labels,
    owner::Owner,
    replicated::{self, RolloutInputs, Write, ZeroInputs},
    validate,
};

use super::{
    apply::{resource_for, to_apply_value, typed, Applier},
    autoscaling,
    cache::{self, Children, Stored},
    config_rollout, config_sync, error_action,
    rollout::{self, Rollout},
    status, Context, Error, RESYNC,
};
use crate::metrics::ControllerLabels;

const CONTROLLER: &str = "replicatedservice";

/// The context of this controller's reconciles: the shared one, and the caches of its watches.
pub struct Replicated {
    ctx: Arc<Context>,
    children: Children,
    strategies: Store<RolloutStrategy>,
    /// AutoscalingPolicies: one that may scale a service to zero puts the splitter in front of it.
    policies: Store<DeserializeGuard<AutoscalingPolicy>>,
}

impl std::ops::Deref for Replicated {
    type Target = Context;

    fn deref(&self) -> &Context {
        &self.ctx
    }
}

/// Runs the controller until `shutdown` completes.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    // Only the children of ReplicatedServices: the ShardedService controller caches its own.
    let owned = || cache::children_of(labels::REPLICATED_SERVICE);
    let (deployments, deployment_events) = cache::watch_typed_children(ctx.api::<Deployment>(), owned());
    let (services, service_events) = cache::watch_typed_children(ctx.api::<Service>(), owned());
    let (config_maps, config_map_events) = cache::watch_typed_children(ctx.api::<ConfigMap>(), owned());
    let (accounts, account_events) = cache::watch_typed_children(ctx.api::<ServiceAccount>(), owned());
    let (roles, role_events) = cache::watch_typed_children(ctx.api::<Role>(), owned());
    let (bindings, binding_events) = cache::watch_typed_children(ctx.api::<RoleBinding>(), owned());
    let (strategies, strategy_events) =
        cache::watch(ctx.api::<RolloutStrategy>(), watcher::Config::default());
    let (policies, policy_events) = cache::watch(
        ctx.api::<DeserializeGuard<AutoscalingPolicy>>(),
        watcher::Config::default(),
    );
    let (services_store, service_triggers) =
        cache::watch_reconciled(ctx.api::<Stored<ReplicatedService>>(), watcher::Config::default());
    let mut controller = Controller::for_stream(service_triggers, services_store)
        .with_config(super::controller_config())
        .owns_stream(deployment_events)
        .owns_stream(service_events)
        .owns_stream(config_map_events)
        .owns_stream(account_events)
        .owns_stream(role_events)
        .owns_stream(binding_events);
    let mut pod_disruption_budgets = None;
    if let Some(api_version) = ctx.pdb_api.api_version() {
        let resource = resource_for(api_version, "PodDisruptionBudget");
        let api: Api<DynamicObject> = match &ctx.watch_namespace {
            Some(namespace) => Api::namespaced_with(ctx.client.clone(), namespace, &resource),
            None => Api::all_with(ctx.client.clone(), &resource),
        };
        let (store, events) = cache::watch_children(api, &resource, owned());
        controller = controller.owns_stream_with(events, resource);
        pod_disruption_budgets = Some(store);
    }
    let controller = controller.graceful_shutdown_on(shutdown);
    let store = controller.store();
    // A service waiting for a missing RolloutStrategy goes on as soon as it appears or changes.
    let referrers = store.clone();
    let controller = controller.watches_stream(strategy_events, move |strategy: RolloutStrategy| {
        let namespace = strategy.namespace();
        let name = strategy.name_any();
        referrers
            .state()
            .into_iter()
            .filter(|stored| {
                stored.namespace() == namespace && stored.references().strategy.as_ref() == Some(&name)
            })
            .map(|stored| ObjectRef::from_obj(&*stored))
            .collect::<Vec<_>>()
    });
    // An edit of a ConfigMap the config sync sidecars of a service with a strategy sync is a config
    // rollout to start (the ConfigMaps are the user's, not children; their metadata is enough).
    let syncing = store.clone();
    let controller = controller.watches_stream(
        watcher(
            ctx.api::<PartialObjectMeta<ConfigMap>>(),
            watcher::Config::default(),
        )
        .default_backoff()
        .touched_objects(),
        move |config_map: PartialObjectMeta<ConfigMap>| {
            // The operator's own ConfigMaps (a child of every service) are nobody's synced config:
            // not looked up among every service at each one's write.
            if config_map.labels().get(labels::MANAGED_BY).map(String::as_str)
                == Some(labels::MANAGED_BY_VALUE)
            {
                return Vec::new();
            }
            let namespace = config_map.namespace();
            let name = config_map.name_any();
            syncing
                .state()
                .into_iter()
                .filter(|stored| {
                    stored.namespace() == namespace && stored.references().config_maps.contains(&name)
                })
                .map(|stored| ObjectRef::from_obj(&*stored))
                .collect::<Vec<_>>()
        },
    );
    let controller = controller.watches_stream(
        policy_events.filter(autoscaling::spec_changes(policies.clone())),
        autoscaling::scaled_service,
    );
    // The config sync sidecars report in their pods' annotations; a change there updates the
    // ConfigSynced condition.
    let controller = controller.watches(
        ctx.api::<Pod>(),
        watcher::Config::default().labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE)),
        |pod| {
            let namespace = pod.namespace()?;
            let name = pod.labels().get(labels::REPLICATED_SERVICE)?.clone();
            Some(ObjectRef::<Stored<ReplicatedService>>::new(&name).within(&namespace))
        },
    );
    let managed = ctx
        .metrics
        .managed
        .get_or_create(&ControllerLabels {
            controller: CONTROLLER,
        })
        .clone();
    let context = Arc::new(Replicated {
        ctx,
        children: Children {
            deployments: Some(deployments),
            services: Some(services),
            config_maps: Some(config_maps),
            service_accounts: Some(accounts),
            roles: Some(roles),
            role_bindings: Some(bindings),
            pod_disruption_budgets,
            ..Children::default()
        },
        strategies,
        policies,
    });
    controller
        .run(reconcile, error_policy, context)
        .for_each(|result| {
            if let Err(error) = &result {
                tracing::warn!(?error, "controller stream error");
            }
            managed.set(i64::try_from(store.len()).unwrap_or(i64::MAX));
            futures::future::ready(())
        })
        .await;
}

fn key(object: &Stored<ReplicatedService>) -> String {
    format!("{}/{}", object.namespace().unwrap_or_default(), object.name_any())
}

fn error_policy(object: Arc<Stored<ReplicatedService>>, error: &Error, ctx: Arc<Replicated>) -> Action {
    error_action(&ctx, CONTROLLER, &key(&object), error)
}

#[tracing::instrument(skip_all, fields(namespace = %stored.namespace().unwrap_or_default(), name = %stored.name_any()))]
async fn reconcile(stored: Arc<Stored<ReplicatedService>>, ctx: Arc<Replicated>) -> Result<Action, Error> {
    let guard = stored.decode();
    let run = async {
        match &guard.0 {
            Ok(rsvc) => reconcile_valid(rsvc, &ctx).await,
            Err(invalid) => {
                super::validity::report_undecodable::<ReplicatedService>(&ctx, CONTROLLER, invalid).await
            }
        }
    };
    ctx.measured(
        CONTROLLER,
        &key(&stored),
        stored.meta().resource_version.as_deref(),
        run,
    )
    .await
}

impl cache::Reconciled for ReplicatedService {
    /// The strategy it names, and with one, the ConfigMaps its config sync sidecars sync: an edit
    /// of one is a config rollout to start.
    fn references(&self) -> cache::References {
        let strategy = self.spec.rollout_strategy_ref.as_ref().map(|r| r.name.clone());
        let config_maps = match strategy {
            Some(_) => outrigger_core::config_sync::settings(&self.spec.sidecars)
                .and_then(Result::ok)
                .map(|settings| settings.config_maps)
                .unwrap_or_default(),
            None => Vec::new(),
        };
        cache::References {
            strategy,
            config_maps,
        }
    }
}

async fn reconcile_valid(rsvc: &ReplicatedService, ctx: &Replicated) -> Result<Action, Error> {
    if rsvc.meta().deletion_timestamp.is_some() {
        // Children are garbage-collected through their owner references.
        return Ok(Action::await_change());
    }
    match apply_children(rsvc, ctx).await {
        Ok(observed) => {
            let previous_rollout = rsvc.status.as_ref().and_then(|s| s.rollout.as_ref());
            let config_synced = config_sync::condition(
                ctx,
                &rsvc.namespace().unwrap_or_default(),
                &observed.selector,
                &rsvc.spec.sidecars,
            )
            .await?;
            let mut desired =
                replicated::conditions(rsvc.spec.replicas, &observed.replicas, &observed.failures);
            desired.extend(config_synced.clone());
            let status = ReplicatedServiceStatus {
                observed_generation: rsvc.metadata.generation,
                conditions: status::merged_conditions(
                    current_conditions(rsvc),
                    &desired,
                    rsvc.metadata.generation,
                ),
                replicas: observed.replicas.replicas,
                ready_replicas: observed.replicas.ready,
                updated_replicas: observed.replicas.updated,
                selector: Some(observed.selector),
                rollout: observed.rollout.as_ref().map(|r| r.decision.status.clone()),
            };
            let written = status::write(ctx, CONTROLLER, rsvc, rsvc.status.as_ref(), &status).await?;
            config_sync::announce(ctx, rsvc, current_conditions(rsvc), config_synced.as_ref()).await;
            let requeue = match &observed.rollout {
                Some(rollout) => {
                    // The status write moved the resourceVersion; clearing the control fences on it.
                    let version = written.or_else(|| rsvc.metadata.resource_version.clone());
                    rollout::announce(ctx, rsvc, version, rollout, previous_rollout).await?;
                    rollout::requeue_after(rollout.decision.requeue_after)
                }
                None => RESYNC,
            };
            Ok(Action::requeue(requeue))
        }
        Err(error) if error.shown_on_status() => {
            let mut status = rsvc.status.clone().unwrap_or_default();
            status.observed_generation = rsvc.metadata.generation;
            status.conditions = status::merged_conditions(
                current_conditions(rsvc),
                &status::blocked_conditions(&error),
                rsvc.metadata.generation,
            );
            status::write(ctx, CONTROLLER, rsvc, rsvc.status.as_ref(), &status).await?;
            if !error.needs_user_change() {
                // A refusal may end without a change of the object (a quota raised): retried with backoff.
                return Err(error);
            }
            tracing::info!(%error, "Spec cannot be reconciled; waiting for a change.");
            ctx.count_error(CONTROLLER, &error);
            Ok(Action::await_change())
        }
        Err(error) => Err(error),
    }
}

fn current_conditions(rsvc: &ReplicatedService) -> &[outrigger_api::common::Condition] {
    rsvc.status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default()
}

struct Observed {
    replicas: replicated::ObservedReplicas,
    /// Children that report they cannot do their work.
    failures: Vec<outrigger_core::conditions::ChildFailure>,
    selector: String,
    rollout: Option<Rollout>,
}

/// The RolloutStrategy a service refers to, from the cache; a missing or invalid one waits for a
/// change.
fn strategy_of(rsvc: &ReplicatedService, ctx: &Replicated) -> Result<Option<Arc<RolloutStrategy>>, Error> {
    let Some(LocalObjectReference { name }) = &rsvc.spec.rollout_strategy_ref else {
        return Ok(None);
    };
    let namespace = rsvc.namespace().unwrap_or_default();
    let Some(strategy) = ctx.strategies.get(&ObjectRef::new(name).within(&namespace)) else {
        return Err(Error::MissingReference(format!(
            "spec.rolloutStrategyRef: RolloutStrategy {name:?} does not exist in namespace {namespace}"
        )));
    };
    if let Err(invalid) = validate::rollout_strategy(&strategy.spec) {
        return Err(Error::MissingReference(format!(
            "spec.rolloutStrategyRef: RolloutStrategy {name:?} is invalid: {invalid}"
        )));
    }
    Ok(Some(strategy))
}

async fn apply_children(rsvc: &ReplicatedService, ctx: &Replicated) -> Result<Observed, Error> {
    ctx.children.ready().await?;
    if tokio::time::timeout(cache::FILL_TIMEOUT, ctx.strategies.wait_until_ready())
        .await
        .is_err()
    {
        return Err(Error::CacheNotFilled("RolloutStrategies"));
    }
    let namespace = rsvc.namespace().unwrap_or_default();
    let name = rsvc.name_any();
    // Read what the spec refers to, validate (pure), and decide the rollout's next step.
    validate::all([
        validate::replicated_service(&rsvc.spec),
        validate::replicated_service_name(&name, &rsvc.spec),
    ])?;
    let strategy = strategy_of(rsvc, ctx)?;
    let config_read = match &strategy {
        Some(_) => config_rollout::read(rsvc, ctx).await?,
        None => None,
    };
    let rollout = match &strategy {
        Some(strategy) => {
            Some(rollout::decide(rsvc, strategy, ctx, &ctx.children, config_read.as_ref()).await?)
        }
        None => None,
    };
    let hold = autoscaling::hold_for(&ctx.policies, &namespace, &name);
    let zero = hold.as_ref().map(|hold| ZeroInputs {
        splitter_image: &ctx.splitter_image,
        splitter_resources: ctx.splitter_resources.as_ref(),
        splitter_ready: rollout::splitter_ready(&ctx.children, &namespace, &name),
        hold,
    });
    let inputs = rollout.as_ref().map(|rollout| RolloutInputs {
        strategy: &rollout.plan,
        decision: &rollout.decision,
        preview_replicas: rollout.preview_replicas,
        live_stable: rollout.live_stable_template(),
        splitter_image: &ctx.splitter_image,
        splitter_resources: ctx.splitter_resources.as_ref(),
        splitter_ready: rollout.splitter_ready,
        config_mode: rollout.config_mode,
        config_tracks: config_read.is_some(),
    });
    let edge_inputs = replicated::EdgeInputs {
        splitter_image: &ctx.splitter_image,
        splitter_resources: ctx.splitter_resources.as_ref(),
        splitter_ready: rollout::splitter_ready(&ctx.children, &namespace, &name),
    };
    // Build: pure.
    let children = replicated::build_edged(
        rsvc,
        ctx.pdb_api,
        inputs.as_ref(),
        zero.as_ref(),
        Some(&edge_inputs),
    )?;

    // Apply, in the order of the plan (`replicated::writes`, which says why).
    let uid = rsvc.uid().unwrap_or_default();
    let applier = Applier {
        client: &ctx.client,
        metrics: &ctx.metrics,
        controller: CONTROLLER,
        owner_uid: &uid,
        cache: &ctx.children,
    };
    let splitter_name = canary::splitter_name(&name);
    let mut keep = Kept::default();
    keep.identity.extend(
        config_sync::apply_access(
            &applier,
            &Owner::of(rsvc)?,
            &labels::owned_by(labels::REPLICATED_SERVICE, &name),
            &core_config_rollout::sidecars_for(&name, strategy.is_some(), &rsvc.spec.sidecars),
            &rsvc.spec.template,
        )
        .await?,
    );
    // Config rollouts: the document every sidecar of the service watches, then the pods' tracks
    // (the track Services select on them).
    if let Some(read) = &config_read {
        let config_rollout = rollout.as_ref().filter(|rollout| rollout.config_mode);
        let plan = core_config_rollout::plan(
            read.document.as_ref(),
            read.live.as_ref(),
            config_rollout.map(|rollout| &rollout.decision),
            config_rollout.map_or(0, |rollout| {
                core_config_rollout::canary_count(&rollout.plan, &rollout.decision, rsvc.spec.replicas)
            }),
            &read.views(),
        );
        let document = core_config_rollout::document_config_map(&Owner::of(rsvc)?, &plan.document)?;
        applier.apply(to_apply_value(&document)?).await?;
        keep.config_maps.extend(document.metadata.name.clone());
        config_rollout::label_pods(ctx, &namespace, read, &plan).await?;
    }
    let mut endpoints = Vec::new();
    let (mut deployments, mut splitter) = (Vec::new(), None);
    for write in replicated::writes(&children) {
        match write {
            Write::ConfigMap(config_map) => {
                applier.apply(to_apply_value(config_map)?).await?;
                keep.config_maps.extend(config_map.metadata.name.clone());
            }
            Write::ServiceAccount(account) => {
                applier.apply(to_apply_value(account)?).await?;
                keep.identity.extend(account.metadata.name.clone());
            }
            Write::Role(role) => drop(applier.apply(to_apply_value(role)?).await?),
            Write::RoleBinding(binding) => drop(applier.apply(to_apply_value(binding)?).await?),
            Write::TrackService(service) => {
                let live = applier.apply(to_apply_value(service)?).await?;
                let ip = live.data["spec"]["clusterIP"].as_str().unwrap_or_default();
                let port = live.data["spec"]["ports"][0]["port"].as_i64().unwrap_or_default();
                endpoints.push(format!("{ip}:{port}"));
                keep.services.extend(service.metadata.name.clone());
            }
            Write::SplitterConfig => {
                let [stable, canary_endpoint, ..] = endpoints.as_slice() else {
                    continue;
                };
                let mut config = match &rollout {
                    Some(rollout) => canary::splitter_config(&Traffic {
                        stable_endpoint: stable.clone(),
                        canary_endpoint: rollout.canary_serves().then(|| canary_endpoint.clone()),
                        canary_weight: rollout.decision.status.canary_weight,
                        mirror_percent: rollout.decision.status.mirror_percent,
                        strategy: &rollout.plan,
                        affinity: rsvc.spec.session_affinity.as_ref(),
                    }),
                    None => canary::stable_splitter_config(stable, rsvc.spec.session_affinity.as_ref()),
                };
                config.hold = hold.clone();
                outrigger_core::edge::apply_to_splitter_config(
                    &mut config,
                    &namespace,
                    &name,
                    &rsvc.spec,
                    replicated::splitter_replicas(rsvc.spec.replicas),
                );
                edge::configure(&namespace, &rsvc.spec, &mut config);
                let config_map = canary::splitter_config_map(&Owner::of(rsvc)?, &config);
                applier.apply(to_apply_value(&config_map)?).await?;
                keep.config_maps.extend(config_map.metadata.name.clone());
            }
            Write::Deployment(deployment) => {
                let live = typed::<Deployment>(applier.apply(to_apply_value(deployment)?).await?)?;
                keep.deployments.extend(deployment.metadata.name.clone());
                if deployment.metadata.name.as_deref() == Some(splitter_name.as_str()) {
                    splitter = Some(live);
                } else {
                    deployments.push(live);
                }
            }
            Write::Service(service) => {
                applier.apply(to_apply_value(service)?).await?;
                keep.services.extend(service.metadata.name.clone());
            }
            Write::Prune => {
                let possible = replicated::possible_children(&name);
                for (api_version, kind, names) in [
                    ("apps/v1", "Deployment", &keep.deployments),
                    ("v1", "Service", &keep.services),
                    ("v1", "ConfigMap", &keep.config_maps),
                    ("v1", "ServiceAccount", &keep.identity),
                    ("rbac.authorization.k8s.io/v1", "Role", &keep.identity),
                    ("rbac.authorization.k8s.io/v1", "RoleBinding", &keep.identity),
                ] {
                    applier
                        .prune(api_version, kind, &namespace, possible.of(kind), names)
                        .await?;
                }
            }
            Write::PodDisruptionBudget(pdb) => drop(applier.apply(pdb.clone()).await?),
        }
    }
    let mut failures =
        replicated::failures(&deployments.iter().chain(&splitter).cloned().collect::<Vec<_>>());
    failures.extend(tls_secret_failure(rsvc, ctx, &namespace).await?);
    Ok(Observed {
        replicas: replicated::observe(&deployments),
        failures,
        selector: children.selector,
        rollout,
    })
}

/// What is wrong with the TLS Secret the service names, read now (Secrets are not watched: a fixed
/// Secret clears the condition at the next reconcile or resync).
async fn tls_secret_failure(
    rsvc: &ReplicatedService,
    ctx: &Replicated,
    namespace: &str,
) -> Result<Option<outrigger_core::conditions::ChildFailure>, Error> {
    let Some(tls) = &rsvc.spec.tls else {
        return Ok(None);
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let secret = secrets.get_opt(&tls.secret_name).await?;
    let keys = secret.as_ref().map(|secret| {
        secret
            .data
            .iter()
            .flatten()
            .filter(|(_, value)| !value.0.is_empty())
            .map(|(key, _)| key.as_str())
            .collect::<Vec<_>>()
    });
    Ok(edge::tls_secret_failure(&rsvc.spec, keys))
}

/// Names of the children to keep, by kind; the other possible children are pruned.
#[derive(Default)]
struct Kept {
    deployments: Vec<String>,
    services: Vec<String>,
    config_maps: Vec<String>,
    identity: Vec<String>,
}
