//! The ShardedService controller.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{ConfigMap, Event, Service},
};
use kube::{
    core::DeserializeGuard,
    runtime::{
        controller::Action,
        reflector::{ObjectRef, Store},
        watcher, Controller,
    },
    Resource, ResourceExt,
};
use outrigger_api::{ShardedService, ShardedServiceStatus};
use outrigger_core::{labels, sharded, validate};

use super::{
    apply::{to_apply_value, typed, Applier},
    cache::{self, Children},
    error_action, status, Context, Error, RESYNC,
};
use crate::metrics::ControllerLabels;

const CONTROLLER: &str = "shardedservice";

/// The context of this controller's reconciles: the shared one, and the caches of its watches.
pub struct Sharded {
    ctx: Arc<Context>,
    children: Children,
    /// `FailedCreate` Events about StatefulSets: how a shard that cannot create pods says why.
    failed_creates: Store<Event>,
}

impl std::ops::Deref for Sharded {
    type Target = Context;

    fn deref(&self) -> &Context {
        &self.ctx
    }
}

/// Runs the controller until `shutdown` completes.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    // Only the children of ShardedServices: the ReplicatedService controller caches its own.
    let owned = || {
        watcher::Config::default().labels(&format!(
            "{}={},{}",
            labels::MANAGED_BY,
            labels::MANAGED_BY_VALUE,
            labels::SHARDED_SERVICE
        ))
    };
    let (stateful_sets, stateful_set_events) = cache::watch(ctx.api::<StatefulSet>(), owned());
    let (services, service_events) = cache::watch(ctx.api::<Service>(), owned());
    let (config_maps, config_map_events) = cache::watch(ctx.api::<ConfigMap>(), owned());
    let (failed_creates, failed_create_events) = cache::watch(
        ctx.api::<Event>(),
        watcher::Config::default().fields("involvedObject.kind=StatefulSet,reason=FailedCreate"),
    );
    let controller = Controller::new(
        ctx.api::<DeserializeGuard<ShardedService>>(),
        watcher::Config::default(),
    )
    .owns_stream(stateful_set_events)
    .owns_stream(service_events)
    .owns_stream(config_map_events)
    .watches_stream(failed_create_events, |event: Event| {
        let namespace = event.involved_object.namespace.unwrap_or_default();
        let shard = event.involved_object.name.unwrap_or_default();
        sharded::service_of_shard(&shard).map(|service| ObjectRef::new(service).within(&namespace))
    })
    .graceful_shutdown_on(shutdown);
    let store = controller.store();
    let managed = ctx
        .metrics
        .managed
        .get_or_create(&ControllerLabels {
            controller: CONTROLLER,
        })
        .clone();
    let context = Arc::new(Sharded {
        ctx,
        children: Children {
            stateful_sets: Some(stateful_sets),
            services: Some(services),
            config_maps: Some(config_maps),
            ..Children::default()
        },
        failed_creates,
    });
    controller
        .run(reconcile, error_policy, context)
        .for_each(|_| {
            managed.set(i64::try_from(store.state().len()).unwrap_or(i64::MAX));
            futures::future::ready(())
        })
        .await;
}

fn key(object: &DeserializeGuard<ShardedService>) -> String {
    format!("{}/{}", object.namespace().unwrap_or_default(), object.name_any())
}

fn error_policy(object: Arc<DeserializeGuard<ShardedService>>, error: &Error, ctx: Arc<Sharded>) -> Action {
    error_action(&ctx, CONTROLLER, &key(&object), error)
}

#[tracing::instrument(skip_all, fields(namespace = %guard.namespace().unwrap_or_default(), name = %guard.name_any()))]
async fn reconcile(guard: Arc<DeserializeGuard<ShardedService>>, ctx: Arc<Sharded>) -> Result<Action, Error> {
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

async fn reconcile_valid(shsvc: &ShardedService, ctx: &Sharded) -> Result<Action, Error> {
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
                    &sharded::conditions(
                        shsvc.spec.replicas_per_shard,
                        &shards,
                        &sharded::failures(&stateful_sets, &failed_creates(ctx, shsvc)),
                    ),
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

/// The cached `FailedCreate` Events about the shards of `shsvc`.
fn failed_creates(ctx: &Sharded, shsvc: &ShardedService) -> Vec<Event> {
    let (namespace, name) = (shsvc.namespace(), shsvc.name_any());
    ctx.failed_creates
        .state()
        .iter()
        .filter(|event| {
            event.involved_object.namespace == namespace
                && event
                    .involved_object
                    .name
                    .as_deref()
                    .and_then(sharded::service_of_shard)
                    == Some(name.as_str())
        })
        .map(|event| (**event).clone())
        .collect()
}

async fn apply_children(shsvc: &ShardedService, ctx: &Sharded) -> Result<(Vec<StatefulSet>, String), Error> {
    ctx.children.ready().await?;
    let namespace = shsvc.namespace().unwrap_or_default();
    let name = shsvc.name_any();
    validate::all([
        validate::sharded_service(&shsvc.spec),
        validate::sharded_service_name(&name, &shsvc.spec),
    ])?;
    let children = sharded::build(shsvc)?;

    let uid = shsvc.uid().unwrap_or_default();
    let applier = Applier {
        client: &ctx.client,
        metrics: &ctx.metrics,
        controller: CONTROLLER,
        owner_uid: &uid,
        cache: &ctx.children,
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
    // Shards beyond the spec: from the first one not desired, up to the last the cache holds.
    let mut beyond = Vec::new();
    for index in shsvc.spec.shards.max(0).. {
        let shard = sharded::shard_name(&name, index);
        let cached = ["StatefulSet", "Service"]
            .iter()
            .any(|kind| ctx.children.get(kind, &namespace, &shard).is_some());
        if !cached {
            break;
        }
        beyond.push(shard);
    }
    applier
        .prune("apps/v1", "StatefulSet", &namespace, &beyond, &[])
        .await?;
    applier.prune("v1", "Service", &namespace, &beyond, &[]).await?;
    Ok((stateful_sets, children.selector))
}
