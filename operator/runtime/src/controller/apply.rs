//! Writing children: server-side apply only when the live object (as cached) differs, pruning of
//! children no longer desired (found in the cache), and status writes only when the status changed. Every write carries the
//! resourceVersion it was based on, so a stale writer (a deposed leader) is rejected with 409.

use kube::{
    api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions},
    core::{ApiResource, GroupVersionKind},
    Client,
};
use outrigger_core::{labels::FIELD_MANAGER, owned, subset::is_subset};
use serde_json::Value;

use super::{cache::Children, Error};
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
    /// The controller's caches of its children, read instead of the API server.
    pub cache: &'a Children,
}

fn controlled_by(object: &Value, uid: &str) -> bool {
    object["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|owner| owner["controller"] == Value::Bool(true) && owner["uid"] == uid)
}

impl Applier<'_> {
    fn api(&self, api_version: &str, kind: &str, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, &resource_for(api_version, kind))
    }

    /// Makes the live object hold `desired` (which has apiVersion, kind, metadata.name and
    /// metadata.namespace), writing only when it does not already. Returns the live object.
    pub async fn apply(&self, mut desired: Value) -> Result<DynamicObject, Error> {
        let field = |path: &str| {
            desired
                .pointer(path)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let (api_version, kind) = (field("/apiVersion"), field("/kind"));
        let (name, namespace) = (field("/metadata/name"), field("/metadata/namespace"));
        let api = self.api(&api_version, &kind, &namespace);
        // From the cache; only a child it does not hold is read, to tell "not created yet" from
        // "someone else's object of the same name".
        let live = match self.cache.get(&kind, &namespace, &name) {
            Some(cached) => Some(cached),
            None => {
                self.metrics.count_read(self.controller, "get");
                api.get_opt(&name).await?.map(serde_json::to_value).transpose()?
            }
        };
        if let Some(live) = live {
            if !controlled_by(&live, self.owner_uid) {
                return Err(Error::NameClash { kind, name });
            }
            if is_subset(&owned::comparable(&desired), &live) {
                return Ok(serde_json::from_value(live)?);
            }
            // Fencing: apply only onto the version we just compared against.
            desired["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"].clone();
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

    /// Deletes the children of `kind` among `candidates` (every name a child of this kind may
    /// have) that are not in `keep` and that this owner controls, as the cache holds them.
    pub async fn prune(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        candidates: &[String],
        keep: &[String],
    ) -> Result<(), Error> {
        for name in candidates.iter().filter(|name| !keep.contains(name)) {
            let Some(child) = self.cache.get(kind, namespace, name) else {
                continue;
            };
            let deleting = !child["metadata"]["deletionTimestamp"].is_null();
            if !controlled_by(&child, self.owner_uid) || deleting {
                continue;
            }
            self.metrics.count_write(self.controller, "delete");
            tracing::info!(kind, child = %name, "Deleting child no longer desired.");
            let text = |key: &str| child["metadata"][key].as_str().map(str::to_owned);
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: text("uid"),
                    resource_version: text("resourceVersion"),
                }),
                propagation_policy: Some(kube::api::PropagationPolicy::Background),
                ..DeleteParams::default()
            };
            match self.api(api_version, kind, namespace).delete(name, &params).await {
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
