//! The controller for RolloutStrategy, whose reconcile is validation (the rollouts of the services
//! that reference it use it): it reports a `Ready` condition saying whether the spec is valid, so a
//! mistake shows up on the object itself. AutoscalingPolicy has its own controller (`autoscaling`).

use std::sync::Arc;

use futures::StreamExt;
use kube::{
    api::{Api, DynamicObject, Patch, PatchParams},
    core::{error_boundary::InvalidObject, DeserializeGuard},
    runtime::{controller::Action, watcher, Controller},
    CustomResourceExt, Resource, ResourceExt,
};
use outrigger_api::{
    common::{condition_type, Condition},
    RolloutStrategy, RolloutStrategyStatus,
};
use outrigger_core::{conditions::DesiredCondition, validate};
use serde_json::json;

use super::{error_action, status, Context, Error};

/// Runs the controller until `shutdown` completes.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    Controller::new(
        ctx.api::<DeserializeGuard<RolloutStrategy>>(),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(shutdown)
    .run(
        reconcile_strategy,
        |object, error, ctx| error_action(&ctx, "rolloutstrategy", &object.name_any(), error),
        ctx,
    )
    .for_each(|_| futures::future::ready(()))
    .await;
}

fn validity_conditions(result: Result<(), validate::InvalidSpec>) -> Vec<DesiredCondition> {
    match result {
        Ok(()) => vec![DesiredCondition::new(
            condition_type::READY,
            true,
            "Valid",
            "the spec is valid",
        )],
        Err(invalid) => vec![DesiredCondition::new(
            condition_type::READY,
            false,
            "InvalidSpec",
            invalid.to_string(),
        )],
    }
}

async fn reconcile_strategy(
    guard: Arc<DeserializeGuard<RolloutStrategy>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let strategy = match &guard.0 {
        Ok(strategy) => strategy,
        Err(invalid) => return report_undecodable::<RolloutStrategy>(&ctx, "rolloutstrategy", invalid).await,
    };
    let current = strategy
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let status = RolloutStrategyStatus {
        observed_generation: strategy.metadata.generation,
        conditions: status::merged_conditions(
            current,
            &validity_conditions(validate::rollout_strategy(&strategy.spec)),
            strategy.metadata.generation,
        ),
    };
    status::write(
        &ctx,
        "rolloutstrategy",
        strategy,
        strategy.status.as_ref(),
        &status,
    )
    .await?;
    Ok(Action::await_change())
}

/// An object the API server accepted but the operator cannot decode (for example a pod template
/// whose fields have the wrong types, which the open template schema lets through): reported as
/// not Ready and Degraded, and left alone until it changes.
pub async fn report_undecodable<K>(
    ctx: &Context,
    controller: &'static str,
    invalid: &InvalidObject,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()> + CustomResourceExt,
{
    let namespace = invalid.metadata.namespace.clone().unwrap_or_default();
    let name = invalid.metadata.name.clone().unwrap_or_default();
    tracing::warn!(error = %invalid.error, namespace = %namespace, name = %name, "Object cannot be decoded.");
    let resource = kube::core::ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &namespace, &resource);
    let live = api.get_status(&name).await?;
    let current: Vec<Condition> =
        serde_json::from_value(live.data["status"]["conditions"].clone()).unwrap_or_default();
    let message = format!("the spec cannot be decoded: {}", invalid.error);
    let desired = [
        DesiredCondition::new(condition_type::READY, false, "InvalidSpec", message.clone()),
        DesiredCondition::new(condition_type::DEGRADED, true, "InvalidSpec", message),
    ];
    let conditions = status::merged_conditions(&current, &desired, invalid.metadata.generation);
    let unchanged = current.len() == conditions.len()
        && current
            .iter()
            .zip(&conditions)
            .all(|(a, b)| a.status == b.status && a.message == b.message && a.reason == b.reason);
    if !unchanged {
        ctx.metrics.count_write(controller, "status");
        let patch = json!({
            "metadata": {"resourceVersion": live.metadata.resource_version},
            "status": {"observedGeneration": invalid.metadata.generation, "conditions": conditions},
        });
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(Action::await_change())
}
