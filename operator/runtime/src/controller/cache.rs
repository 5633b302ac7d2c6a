//! The controllers' caches: the stores of the watches each controller runs anyway (its children,
//! and what its objects refer to). A reconcile reads children from here, never with a GET or LIST
//! of its own; only a child missing from the cache (not created yet, or not ours) is read from the
//! API server, to tell the two apart.

use std::fmt::Debug;

use futures::Stream;
use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    core::v1::{ConfigMap, Service, ServiceAccount},
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    api::{Api, DynamicObject},
    core::ApiResource,
    runtime::{
        reflector::{self, store::Writer, ObjectRef, Store},
        watcher, WatchStreamExt,
    },
    Resource,
};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

use super::Error;

/// How long a reconcile waits for the caches to be filled after a start.
pub const FILL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Watches `api`, keeping every object (without its managed fields, which the operator never reads
/// and which are most of an object's size) in the returned store; the stream triggers the owners.
pub fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    (store, cached(api, config, writer))
}

/// [`watch`] for a kind known only at run time (the PodDisruptionBudget API the cluster serves).
pub fn watch_dynamic(
    api: Api<DynamicObject>,
    resource: &ApiResource,
    config: watcher::Config,
) -> (
    Store<DynamicObject>,
    impl Stream<Item = Result<DynamicObject, watcher::Error>> + Send + 'static,
) {
    let writer = Writer::new(resource.clone());
    (writer.as_reader(), cached(api, config, writer))
}

fn cached<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    watcher(api, config)
        .default_backoff()
        .modify(|object: &mut K| object.meta_mut().managed_fields = None)
        .reflect(writer)
        .touched_objects()
}

/// The stores of the child kinds one controller watches; a kind it does not own stays `None`.
#[derive(Clone, Default)]
pub struct Children {
    pub deployments: Option<Store<Deployment>>,
    pub stateful_sets: Option<Store<StatefulSet>>,
    pub services: Option<Store<Service>>,
    pub config_maps: Option<Store<ConfigMap>>,
    pub service_accounts: Option<Store<ServiceAccount>>,
    pub roles: Option<Store<Role>>,
    pub role_bindings: Option<Store<RoleBinding>>,
    pub pod_disruption_budgets: Option<(Store<DynamicObject>, ApiResource)>,
}

fn typed<K>(store: Option<&Store<K>>, namespace: &str, name: &str) -> Option<Value>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + 'static,
{
    let object = store?.get(&ObjectRef::new(name).within(namespace))?;
    serde_json::to_value(&*object).ok()
}

impl Children {
    /// The cached child of `kind`, as JSON; `None` when the cache does not hold it.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        match kind {
            "Deployment" => typed(self.deployments.as_ref(), namespace, name),
            "StatefulSet" => typed(self.stateful_sets.as_ref(), namespace, name),
            "Service" => typed(self.services.as_ref(), namespace, name),
            "ConfigMap" => typed(self.config_maps.as_ref(), namespace, name),
            "ServiceAccount" => typed(self.service_accounts.as_ref(), namespace, name),
            "Role" => typed(self.roles.as_ref(), namespace, name),
            "RoleBinding" => typed(self.role_bindings.as_ref(), namespace, name),
            "PodDisruptionBudget" => {
                let (store, resource) = self.pod_disruption_budgets.as_ref()?;
                let object = store.get(&ObjectRef::new_with(name, resource.clone()).within(namespace))?;
                let mut value = serde_json::to_value(&*object).ok()?;
                // Objects of a list come without apiVersion and kind; the desired object has them.
                value["apiVersion"] = Value::from(resource.api_version.clone());
                value["kind"] = Value::from(resource.kind.clone());
                Some(value)
            }
            _ => None,
        }
    }

    /// Waits until every store has had its first complete list, so a reconcile right after a start
    /// finds the children that exist instead of reading each one (the controller drives the
    /// watches while its reconciles wait here). A store still empty after [`FILL_TIMEOUT`] (its
    /// watch failing, e.g. for want of RBAC) fails the reconcile, to be retried: deciding from a
    /// cache that is not filled would take existing children for missing ones.
    pub async fn ready(&self) -> Result<(), Error> {
        async fn filled<K>(store: Option<&Store<K>>, kind: &'static str) -> Result<(), Error>
        where
            K: Resource + Clone + 'static,
            K::DynamicType: Eq + std::hash::Hash + Clone,
        {
            let Some(store) = store else {
                return Ok(());
            };
            match tokio::time::timeout(FILL_TIMEOUT, store.wait_until_ready()).await {
                // A dropped writer: the controller is stopping.
                Ok(_) => Ok(()),
                Err(_) => Err(Error::CacheNotFilled(kind)),
            }
        }
        filled(self.deployments.as_ref(), "Deployments").await?;
        filled(self.stateful_sets.as_ref(), "StatefulSets").await?;
        filled(self.services.as_ref(), "Services").await?;
        filled(self.config_maps.as_ref(), "ConfigMaps").await?;
        filled(self.service_accounts.as_ref(), "ServiceAccounts").await?;
        filled(self.roles.as_ref(), "Roles").await?;
        filled(self.role_bindings.as_ref(), "RoleBindings").await?;
        let pdbs = self.pod_disruption_budgets.as_ref().map(|(store, _)| store);
        filled(pdbs, "PodDisruptionBudgets").await
    }

    /// The cached Deployment `namespace/name`.
    pub fn deployment(&self, namespace: &str, name: &str) -> Option<Deployment> {
        let store = self.deployments.as_ref()?;
        store
            .get(&ObjectRef::new(name).within(namespace))
            .map(|deployment| (*deployment).clone())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn service(namespace: &str, name: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": "7"},
            "spec": {"clusterIP": "10.0.0.9"},
        }))
        .unwrap()
    }

    #[test]
    fn a_cached_child_is_found_by_kind_namespace_and_name_with_its_api_version_and_kind() {
        let (store, mut writer) = reflector::store::<Service>();
        writer.apply_watcher_event(&watcher::Event::Apply(service("shop", "web")));
        let children = Children {
            services: Some(store),
            ..Children::default()
        };
        let cached = children.get("Service", "shop", "web").unwrap();
        assert_eq!(
            (
                &cached["apiVersion"],
                &cached["kind"],
                &cached["metadata"]["resourceVersion"]
            ),
            (&json!("v1"), &json!("Service"), &json!("7")),
            "compared with the desired object, and fenced on its resourceVersion"
        );
        assert_eq!(cached["spec"]["clusterIP"], "10.0.0.9");
        assert_eq!(children.get("Service", "other", "web"), None);
        assert_eq!(
            children.get("Deployment", "shop", "web"),
            None,
            "a kind not cached"
        );
    }
}
