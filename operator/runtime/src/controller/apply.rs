//! Writing children: server-side apply only when the live object differs, pruning of children no
//! longer desired, and status writes only when the status changed. Every write carries the
//! resourceVersion it was based on, so a stale writer (a deposed leader) is rejected with 409.

use kube::{
    api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions},
    core::{ApiResource, GroupVersionKind},
    Client,
};
use outrigger_core::{labels::FIELD_MANAGER, subset::is_subset};
use serde_json::Value;

use super::Error;
use crate::metrics::Metrics;

/// The API resource of a child kind the operator manages.
pub fn resource_for(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = match kind {
        "Deployment" => "deployments",
        "StatefulSet" => "statefulsets",
        "Service" => "services",
        "ConfigMap" => "configmaps",
        "PodDisruptionBudget" => "poddisruptionbudgets",
        "ServiceAccount" => "serviceaccounts",
        "Role" => "roles",
        "RoleBinding" => "rolebindings",
        other => return ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, other)),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// Applies children on behalf of one controller.
pub struct Applier<'a> {
    pub client: &'a Client,
    pub metrics: &'a Metrics,
    pub controller: &'static str,
    /// UID of the owner: a live object controlled by anything else is never taken over.
    pub owner_uid: &'a str,
}

impl Applier<'_> {
    /// Makes the live object hold `desired` (which has apiVersion, kind, metadata.name and
    /// metadata.namespace), writing only when it does not already. Returns the live object.
    pub async fn apply(&self, mut desired: Value) -> Result<DynamicObject, Error> {
        let api_version = desired["apiVersion"].as_str().unwrap_or_default().to_owned();
        let kind = desired["kind"].as_str().unwrap_or_default().to_owned();
        let name = desired["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let namespace = desired["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &namespace,
            &resource_for(&api_version, &kind),
        );
        let live = api.get_opt(&name).await?;
        if let Some(live) = &live {
            let controlled_by_us = live
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|owner| owner.controller == Some(true) && owner.uid == self.owner_uid);
            if !controlled_by_us {
                return Err(Error::NameClash { kind, name });
            }
            if is_subset(&desired, &serde_json::to_value(live)?) {
                return Ok(live.clone());
            }
            // Fencing: apply only onto the version we just compared against.
            desired["metadata"]["resourceVersion"] = Value::from(live.metadata.resource_version.clone());
        }
        self.metrics.count_write(self.controller, "apply");
        tracing::debug!(kind = %kind, child = %name, "Applying child.");
        let applied = api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&desired),
            )
            .await?;
        Ok(applied)
    }

    /// Deletes the children of `kind` in `namespace` matching `selector` whose names are not in
    /// `keep` and that this owner controls.
    pub async fn prune(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        selector: &str,
        keep: &[String],
    ) -> Result<(), Error> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &resource_for(api_version, kind));
        let children = api.list(&ListParams::default().labels(selector)).await?;
        for child in children {
            let name = child.metadata.name.clone().unwrap_or_default();
            let ours = child
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|owner| owner.controller == Some(true) && owner.uid == self.owner_uid);
            if keep.contains(&name) || !ours || child.metadata.deletion_timestamp.is_some() {
                continue;
            }
            self.metrics.count_write(self.controller, "delete");
            tracing::info!(kind, child = %name, "Deleting child no longer desired.");
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: child.metadata.uid.clone(),
                    resource_version: child.metadata.resource_version.clone(),
                }),
                propagation_policy: Some(kube::api::PropagationPolicy::Background),
                ..DeleteParams::default()
            };
            match api.delete(&name, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }
}

/// Serializes a typed child with its apiVersion and kind, ready for [`Applier::apply`].
pub fn to_apply_value<K>(object: &K) -> Result<Value, Error>
where
    K: kube::Resource<DynamicType = ()> + serde::Serialize,
{
    let mut value = serde_json::to_value(object)?;
    value["apiVersion"] = Value::from(K::api_version(&()).into_owned());
    value["kind"] = Value::from(K::kind(&()).into_owned());
    if let Some(object) = value.as_object_mut() {
        object.remove("status");
    }
    Ok(value)
}

/// Decodes a live child into its typed form.
pub fn typed<K: serde::de::DeserializeOwned>(object: DynamicObject) -> Result<K, Error> {
    Ok(serde_json::from_value(serde_json::to_value(object)?)?)
}
