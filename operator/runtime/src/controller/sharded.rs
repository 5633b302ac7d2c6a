//! The ShardedService controller.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{ConfigMap, Service},
};
use kube::{
    core::DeserializeGuard,
    runtime::{controller::Action, watcher, Controller},
    Resource, ResourceExt,
};
use outrigger_api::{ShardedService, ShardedServiceStatus};
use outrigger_core::{labels, sharded, validate};

use super::{
    apply::{to_apply_value, typed, Applier},
    error_action, status, Context, Error, RESYNC,
};
use crate::metrics::ControllerLabels;

const CONTROLLER: &str = "shardedservice";

/// Runs the controller until `shutdown` completes.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let owned =
        watcher::Config::default().labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE));
    let controller = Controller::new(
        ctx.api::<DeserializeGuard<ShardedService>>(),
        watcher::Config::default(),
    )
    .owns(ctx.api::<StatefulSet>(), owned.clone())
    .owns(ctx.api::<Service>(), owned.clone())
    .owns(ctx.api::<ConfigMap>(), owned)
    .graceful_shutdown_on(shutdown);
    let store = controller.store();
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

fn key(object: &DeserializeGuard<ShardedService>) -> String {
    format!("{}/{}", object.namespace().unwrap_or_default(), object.name_any())
}

fn error_policy(object: Arc<DeserializeGuard<ShardedService>>, error: &Error, ctx: Arc<Context>) -> Action {
    error_action(&ctx, CONTROLLER, &key(&object), error)
}

#[tracing::instrument(skip_all, fields(namespace = %guard.namespace().unwrap_or_default(), name = %guard.name_any()))]
async fn reconcile(guard: Arc<DeserializeGuard<ShardedService>>, ctx: Arc<Context>) -> Result<Action, Error> {
    let run = async {
        match &guard.0 {
            Ok(shsvc) => reconcile_valid(shsvc, &ctx).await,
            Err(invalid) => {
                super::validity::report_undecodable::<ShardedService>(&ctx, CONTROLLER, invalid).await
            }
        }
    };
    ctx.measured(CONTROLLER, &key(&guard), run).await
}

async fn reconcile_valid(shsvc: &ShardedService, ctx: &Context) -> Result<Action, Error> {
    if shsvc.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let current_conditions = shsvc
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    match apply_children(shsvc, ctx).await {
        Ok((stateful_sets, selector)) => {
            let shards = sharded::shard_statuses(&shsvc.name_any(), shsvc.spec.shards, &stateful_sets);
            let status = ShardedServiceStatus {
                observed_generation: shsvc.metadata.generation,
                conditions: status::merged_conditions(
                    current_conditions,
                    &sharded::conditions(shsvc.spec.replicas_per_shard, &shards),
                    shsvc.metadata.generation,
                ),
                shards: i32::try_from(shards.iter().filter(|s| s.replicas > 0).count()).unwrap_or(i32::MAX),
                ready_shards: i32::try_from(
                    shards
                        .iter()
                        .filter(|s| s.ready_replicas >= shsvc.spec.replicas_per_shard)
                        .count(),
                )
                .unwrap_or(i32::MAX),
                replicas: shards.iter().map(|s| s.replicas).sum(),
                ready_replicas: shards.iter().map(|s| s.ready_replicas).sum(),
                selector: Some(selector),
                shard_statuses: shards,
            };
            status::write(ctx, CONTROLLER, shsvc, shsvc.status.as_ref(), &status).await?;
            Ok(Action::requeue(RESYNC))
        }
        Err(error) if error.shown_on_status() => {
            let mut status = shsvc.status.clone().unwrap_or_default();
            status.observed_generation = shsvc.metadata.generation;
            status.conditions = status::merged_conditions(
                current_conditions,
                &status::blocked_conditions(&error),
                shsvc.metadata.generation,
            );
            status::write(ctx, CONTROLLER, shsvc, shsvc.status.as_ref(), &status).await?;
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

async fn apply_children(shsvc: &ShardedService, ctx: &Context) -> Result<(Vec<StatefulSet>, String), Error> {
    let namespace = shsvc.namespace().unwrap_or_default();
    validate::all([
        validate::sharded_service(&shsvc.spec),
        validate::sharded_service_name(&shsvc.name_any(), &shsvc.spec),
    ])?;
    let children = sharded::build(shsvc)?;

    let uid = shsvc.uid().unwrap_or_default();
    let applier = Applier {
        client: &ctx.client,
        metrics: &ctx.metrics,
        controller: CONTROLLER,
        owner_uid: &uid,
    };
    // The map goes first: the ambassadors learn the new shards while they start, and a shrink only
    // deletes shards after no map points at them.
    applier.apply(to_apply_value(&children.shard_map)?).await?;
    for service in &children.services {
        applier.apply(to_apply_value(service)?).await?;
    }
    let mut stateful_sets = Vec::new();
    for sts in &children.stateful_sets {
        stateful_sets.push(typed::<StatefulSet>(applier.apply(to_apply_value(sts)?).await?)?);
    }
    let selector = format!("{}={}", labels::SHARDED_SERVICE, shsvc.name_any());
    let keep: Vec<String> = children
        .stateful_sets
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    applier
        .prune("apps/v1", "StatefulSet", &namespace, &selector, &keep)
        .await?;
    applier
        .prune("v1", "Service", &namespace, &selector, &keep)
        .await?;
    Ok((stateful_sets, children.selector))
}
