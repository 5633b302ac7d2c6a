//! The ReplicatedService controller.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Service},
};
use kube::{
    api::Api,
    core::DeserializeGuard,
    runtime::{controller::Action, reflector::ObjectRef, watcher, Controller},
    Resource, ResourceExt,
};
use outrigger_api::{
    common::LocalObjectReference, ReplicatedService, ReplicatedServiceStatus, RolloutStrategy,
};
use outrigger_core::{labels, replicated, validate};

use super::{
    apply::{to_apply_value, typed, Applier},
    error_action, status, Context, Error, RESYNC,
};
use crate::metrics::ControllerLabels;

const CONTROLLER: &str = "replicatedservice";

/// Runs the controller until `shutdown` completes.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let owned =
        watcher::Config::default().labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE));
    let controller = Controller::new(
        ctx.api::<DeserializeGuard<ReplicatedService>>(),
        watcher::Config::default(),
    )
    .owns(ctx.api::<Deployment>(), owned.clone())
    .owns(ctx.api::<Service>(), owned.clone())
    .owns(ctx.api::<ConfigMap>(), owned)
    .graceful_shutdown_on(shutdown);
    let store = controller.store();
    // A service waiting for a missing RolloutStrategy goes on as soon as it appears or changes.
    let referrers = store.clone();
    let controller = controller.watches(
        ctx.api::<RolloutStrategy>(),
        watcher::Config::default(),
        move |strategy| {
            let namespace = strategy.namespace();
            let name = strategy.name_any();
            referrers
                .state()
                .into_iter()
                .filter(|guard| {
                    guard.namespace() == namespace
                        && guard.0.as_ref().is_ok_and(|rsvc| {
                            rsvc.spec
                                .rollout_strategy_ref
                                .as_ref()
                                .is_some_and(|r| r.name == name)
                        })
                })
                .map(|guard| ObjectRef::from_obj(&*guard))
                .collect::<Vec<_>>()
        },
    );
    let managed = ctx
        .metrics
        .managed
        .get_or_create(&ControllerLabels {
            controller: CONTROLLER,
        })
        .clone();
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|_| {
            managed.set(i64::try_from(store.state().len()).unwrap_or(i64::MAX));
            futures::future::ready(())
        })
        .await;
}

fn key(object: &DeserializeGuard<ReplicatedService>) -> String {
    format!("{}/{}", object.namespace().unwrap_or_default(), object.name_any())
}

fn error_policy(
    object: Arc<DeserializeGuard<ReplicatedService>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    error_action(&ctx, CONTROLLER, &key(&object), error)
}

#[tracing::instrument(skip_all, fields(namespace = %guard.namespace().unwrap_or_default(), name = %guard.name_any()))]
async fn reconcile(
    guard: Arc<DeserializeGuard<ReplicatedService>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let run = async {
        match &guard.0 {
            Ok(rsvc) => reconcile_valid(rsvc, &ctx).await,
            Err(invalid) => {
                super::validity::report_undecodable::<ReplicatedService>(&ctx, CONTROLLER, invalid).await
            }
        }
    };
    ctx.measured(CONTROLLER, &key(&guard), run).await
}

async fn reconcile_valid(rsvc: &ReplicatedService, ctx: &Context) -> Result<Action, Error> {
    if rsvc.meta().deletion_timestamp.is_some() {
        // Children are garbage-collected through their owner references.
        return Ok(Action::await_change());
    }
    match apply_children(rsvc, ctx).await {
        Ok(observed) => {
            let status = ReplicatedServiceStatus {
                observed_generation: rsvc.metadata.generation,
                conditions: status::merged_conditions(
                    current_conditions(rsvc),
                    &replicated::conditions(rsvc.spec.replicas, &observed.replicas),
                    rsvc.metadata.generation,
                ),
                replicas: observed.replicas.replicas,
                ready_replicas: observed.replicas.ready,
                updated_replicas: observed.replicas.updated,
                selector: Some(observed.selector),
                rollout: rsvc.status.as_ref().and_then(|s| s.rollout.clone()),
            };
            status::write(ctx, CONTROLLER, rsvc, rsvc.status.as_ref(), &status).await?;
            Ok(Action::requeue(RESYNC))
        }
        Err(error) if error.needs_user_change() => {
            tracing::info!(%error, "Spec cannot be reconciled; waiting for a change.");
            let mut status = rsvc.status.clone().unwrap_or_default();
            status.observed_generation = rsvc.metadata.generation;
            status.conditions = status::merged_conditions(
                current_conditions(rsvc),
                &status::blocked_conditions(&error),
                rsvc.metadata.generation,
            );
            status::write(ctx, CONTROLLER, rsvc, rsvc.status.as_ref(), &status).await?;
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
    selector: String,
}

async fn apply_children(rsvc: &ReplicatedService, ctx: &Context) -> Result<Observed, Error> {
    let namespace = rsvc.namespace().unwrap_or_default();
    // Read: what the spec refers to.
    if let Some(LocalObjectReference { name }) = &rsvc.spec.rollout_strategy_ref {
        let strategies: Api<RolloutStrategy> = Api::namespaced(ctx.client.clone(), &namespace);
        if strategies.get_opt(name).await?.is_none() {
            return Err(Error::MissingReference(format!(
                "spec.rolloutStrategyRef: RolloutStrategy {name:?} does not exist in namespace {namespace}"
            )));
        }
    }
    // Validate and build: pure.
    validate::replicated_service(&rsvc.spec)?;
    let children = replicated::build(rsvc, ctx.pdb_api)?;

    // Apply.
    let uid = rsvc.uid().unwrap_or_default();
    let applier = Applier {
        client: &ctx.client,
        metrics: &ctx.metrics,
        controller: CONTROLLER,
        owner_uid: &uid,
    };
    applier.apply(to_apply_value(&children.config_map)?).await?;
    applier.apply(to_apply_value(&children.service)?).await?;
    let mut deployments = Vec::new();
    for deployment in &children.deployments {
        deployments.push(typed::<Deployment>(
            applier.apply(to_apply_value(deployment)?).await?,
        )?);
    }
    let selector = format!("{}={}", labels::REPLICATED_SERVICE, rsvc.name_any());
    let keep: Vec<String> = children
        .deployments
        .iter()
        .filter_map(|d| d.metadata.name.clone())
        .collect();
    applier
        .prune("apps/v1", "Deployment", &namespace, &selector, &keep)
        .await?;
    if let Some(pdb) = &children.pod_disruption_budget {
        applier.apply(pdb.clone()).await?;
    }
    Ok(Observed {
        replicas: replicated::observe(&deployments),
        selector: children.selector,
    })
}
