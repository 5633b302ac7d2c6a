//! The config sync sidecar's part of a service's reconcile: the Role and RoleBinding letting the
//! pods read exactly the named ConfigMaps and Secrets (applied with the other children; the same
//! Role lets the health and log adapters write Events), and the `ConfigSynced` condition read from
//! the status annotation each pod's sidecar writes, with a Warning Event when it turns to a new
//! problem.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use kube::{
    api::{Api, ListParams},
    runtime::events::EventType,
    Resource,
};
use outrigger_api::common::{Condition, SidecarSpec};
use outrigger_core::{
    conditions::DesiredCondition,
    config_sync::{self, CONDITION},
    owner::Owner,
};

use super::{
    apply::{to_apply_value, Applier},
    Context, Error,
};

/// Applies the sidecars' Role and RoleBinding when the service attaches a sidecar that needs them;
/// returns their name, to keep them from being pruned. Settings were validated with the spec.
pub async fn apply_access(
    applier: &Applier<'_>,
    owner: &Owner,
    owner_labels: &BTreeMap<String, String>,
    sidecars: &[SidecarSpec],
    template: &PodTemplateSpec,
) -> Result<Option<String>, Error> {
    let Some(needs) = config_sync::sidecar_access(sidecars) else {
        return Ok(None);
    };
    let (role, binding) = config_sync::access(
        owner,
        owner_labels,
        &needs,
        &config_sync::service_account(template),
    );
    applier.apply(to_apply_value(&role)?).await?;
    applier.apply(to_apply_value(&binding)?).await?;
    Ok(role.metadata.name)
}

/// The `ConfigSynced` condition from the pods matching `selector`, when the service attaches the
/// sidecar.
pub async fn condition(
    ctx: &Context,
    namespace: &str,
    selector: &str,
    sidecars: &[SidecarSpec],
) -> Result<Option<DesiredCondition>, Error> {
    if config_sync::settings(sidecars).is_none() {
        return Ok(None);
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let pods = pods.list(&ListParams::default().labels(selector)).await?;
    Ok(Some(config_sync::condition(&config_sync::reports(&pods.items))))
}

/// Publishes a Warning Event when the condition turned to a problem it did not show before.
pub async fn announce<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    object: &K,
    previous: &[Condition],
    condition: Option<&DesiredCondition>,
) {
    let Some(condition) = condition else {
        return;
    };
    let previous_message = previous
        .iter()
        .find(|c| c.type_ == CONDITION)
        .map(|c| c.message.as_str());
    if let Some((_, reason, note)) = config_sync::event(previous_message, condition) {
        ctx.event(object, EventType::Warning, reason, note).await;
    }
}
