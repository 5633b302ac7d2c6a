//! The controllers' caches: the stores of the watches each controller runs anyway (its children,
//! and what its objects refer to). A reconcile reads children from here, never with a GET or LIST
//! of its own; only a child missing from the cache (not created yet, or not ours) is read from the
//! API server, to tell the two apart.
//!
//! Children are cached slim ([`outrigger_core::owned::slim`]): only what the operator's field
//! manager owns, the identity, fencing and ownership metadata, the status and the few fields the API
//! server fills that a reconcile reads, kept as JSON text. That is all the apply comparison and the
//! observers read, and a tenth of a whole typed object: 10,000 services fit in one operator.

use std::{
    borrow::Cow,
    collections::HashMap,
    fmt::Debug,
    marker::PhantomData,
    sync::{Arc, RwLock},
};

use futures::{Stream, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{
    api::Api,
    core::{error_boundary::InvalidObject, ApiResource, DeserializeGuard},
    runtime::{
        reflector::{self, Store},
        watcher, WatchStreamExt,
    },
    Resource, ResourceExt,
};
use outrigger_core::{
    labels::{self, FIELD_MANAGER},
    owned,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;

use super::Error;

/// How long a reconcile waits for the caches to be filled after a start.
pub const FILL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Objects per page of a watch's initial LIST: each page is decoded whole before it is cached, so a
/// smaller page lowers the peak after a start (10,000 objects are 100 requests per kind).
const PAGE_SIZE: u32 = 100;

/// The annotation `kubectl apply` keeps a copy of the whole object in; never read by the operator.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Fields the API server fills that a reconcile reads besides the status: the address of a Service
/// (a rollout's track Services are the splitter's endpoints).
const SERVER_FILLED: &[&str] = &["/spec/clusterIP"];

/// Drops what the operator never reads of an object it keeps whole: the managed fields and
/// `kubectl apply`'s copy of the object, which are most of its size.
fn forget_unread(meta: &mut kube::api::ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// An object of a controller's own kind as its store keeps it: its name, what the watch mappers
/// look up (the names it refers to), and the rest as JSON text, decoded for each reconcile. A typed
/// ReplicatedService, with its pod template, is several times the size of its text.
#[derive(Clone, Debug)]
pub struct Stored<K> {
    metadata: ObjectMeta,
    body: Result<Box<str>, InvalidObject>,
    references: References,
    kind: PhantomData<fn() -> K>,
}

/// What an object refers to, as the watch mappers of its controller look it up.
#[derive(Clone, Debug, Default)]
pub struct References {
    /// The RolloutStrategy named by a ReplicatedService.
    pub strategy: Option<String>,
    /// The ConfigMaps its config sync sidecars sync.
    pub config_maps: Vec<String>,
}

/// A kind a controller reconciles, kept as [`Stored`].
pub trait Reconciled:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug + Send + Sync + 'static
{
    /// What the object refers to, for the watch mappers.
    fn references(&self) -> References {
        References::default()
    }
}

impl<K: Reconciled> Stored<K> {
    fn new(DeserializeGuard(object): DeserializeGuard<K>) -> Self {
        let (metadata, references, body) = match object {
            Ok(mut object) => {
                forget_unread(object.meta_mut());
                let metadata = object.meta();
                // The watch resumes from the resourceVersion of the last object it delivered:
                // without it every event ends the watch and lists the whole kind again.
                let metadata = ObjectMeta {
                    name: metadata.name.clone(),
                    namespace: metadata.namespace.clone(),
                    resource_version: metadata.resource_version.clone(),
                    ..ObjectMeta::default()
                };
                let body = serde_json::to_string(&object).map(String::into_boxed_str);
                let body = body.map_err(|error| InvalidObject {
                    error: error.to_string(),
                    metadata: metadata.clone(),
                });
                (metadata, object.references(), body)
            }
            Err(invalid) => (invalid.metadata.clone(), References::default(), Err(invalid)),
        };
        Stored {
            metadata,
            body,
            references,
            kind: PhantomData,
        }
    }

    /// The object, decoded; an object that could not be decoded stays what the API server sent.
    pub fn decode(&self) -> DeserializeGuard<K> {
        DeserializeGuard(match &self.body {
            Ok(text) => serde_json::from_str(text).map_err(|error| InvalidObject {
                error: error.to_string(),
                metadata: self.metadata.clone(),
            }),
            Err(invalid) => Err(invalid.clone()),
        })
    }

    /// What the object refers to (nothing when it could not be decoded).
    pub fn references(&self) -> &References {
        &self.references
    }
}

impl<K: Reconciled> Resource for Stored<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl<'de, K: Reconciled> Deserialize<'de> for Stored<K> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        DeserializeGuard::<K>::deserialize(deserializer).map(Stored::new)
    }
}

/// The watch of a controller's own kind: its store keeps every object as [`Stored`]; the stream
/// triggers the reconciles (`Controller::for_stream`).
pub fn watch_reconciled<K: Reconciled>(
    api: Api<Stored<K>>,
    config: watcher::Config,
) -> (
    Store<Stored<K>>,
    impl Stream<Item = Result<Stored<K>, watcher::Error>> + Send + 'static,
) {
    let (store, writer) = reflector::store();
    let stream = watcher(api, config.page_size(PAGE_SIZE))
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    (store, stream)
}

/// Watches `api`, keeping every object whole (without what it never reads) in the returned store:
/// for the objects a reconcile reads typed (RolloutStrategies, pods, Events); the stream triggers
/// the owners.
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
    let stream = watcher(api, config.page_size(PAGE_SIZE))
        .default_backoff()
        .modify(|object: &mut K| forget_unread(object.meta_mut()))
        .reflect(writer)
        .touched_objects();
    (store, stream)
}

/// Watches the children of `resource` in `api` (typed, or dynamic for a kind known only at run
/// time: the PodDisruptionBudget API the cluster serves), keeping each one slim in the returned
/// store; the stream triggers the owners.
pub fn watch_children<K>(
    api: Api<K>,
    resource: &ApiResource,
    config: watcher::Config,
) -> (
    Slim,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug + Send + Sync + 'static,
{
    let (store, mut writer) = slim_store(resource);
    let stream = watcher(api, config.page_size(PAGE_SIZE))
        .default_backoff()
        .map_ok(move |event| {
            writer.apply(&event);
            event
        })
        .touched_objects();
    (store, stream)
}

/// An empty store of slim `resource` objects, and its writer.
fn slim_store(resource: &ApiResource) -> (Slim, SlimWriter) {
    let (ready, ready_rx) = tokio::sync::watch::channel(false);
    let store = Slim {
        objects: Arc::default(),
        ready: ready_rx,
    };
    let writer = SlimWriter {
        store: store.objects.clone(),
        buffer: HashMap::new(),
        ready,
        api_version: Value::from(resource.api_version.clone()),
        kind: Value::from(resource.kind.clone()),
    };
    (store, writer)
}

type Key = (String, String);

fn key_of<K: Resource>(object: &K) -> Key {
    (object.namespace().unwrap_or_default(), object.name_any())
}

/// A store of slim children: their JSON text by namespace and name.
#[derive(Clone)]
pub struct Slim {
    objects: Arc<RwLock<HashMap<Key, Box<str>>>>,
    /// True once the first complete list is in.
    ready: tokio::sync::watch::Receiver<bool>,
}

impl Slim {
    /// The child `namespace/name` as cached (slim), with its apiVersion and kind.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Value> {
        let objects = self.objects.read().ok()?;
        let text = objects.get(&(namespace.to_owned(), name.to_owned()))?;
        serde_json::from_str(text).ok()
    }

    async fn wait_until_ready(&self) {
        let mut ready = self.ready.clone();
        // An error is a dropped writer: the controller is stopping.
        let _ = ready.wait_for(|ready| *ready).await;
    }
}

/// Fills a [`Slim`] store from a watch, as kube's reflector does: a re-list replaces the whole
/// store once it is complete.
struct SlimWriter {
    store: Arc<RwLock<HashMap<Key, Box<str>>>>,
    buffer: HashMap<Key, Box<str>>,
    ready: tokio::sync::watch::Sender<bool>,
    api_version: Value,
    kind: Value,
}

impl SlimWriter {
    fn slim<K: Serialize>(&self, object: &K) -> Option<Box<str>> {
        let whole = serde_json::to_value(object).ok()?;
        let mut slim = owned::slim(&whole, FIELD_MANAGER, SERVER_FILLED);
        // Objects of a list may come without apiVersion and kind; the desired object has them.
        slim["apiVersion"] = self.api_version.clone();
        slim["kind"] = self.kind.clone();
        Some(slim.to_string().into_boxed_str())
    }

    fn apply<K: Resource + Serialize>(&mut self, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Apply(object) => {
                if let (Some(slim), Ok(mut store)) = (self.slim(object), self.store.write()) {
                    store.insert(key_of(object), slim);
                }
            }
            watcher::Event::Delete(object) => {
                if let Ok(mut store) = self.store.write() {
                    store.remove(&key_of(object));
                }
            }
            watcher::Event::Init => self.buffer = HashMap::new(),
            watcher::Event::InitApply(object) => {
                if let Some(slim) = self.slim(object) {
                    self.buffer.insert(key_of(object), slim);
                }
            }
            watcher::Event::InitDone => {
                if let Ok(mut store) = self.store.write() {
                    *store = std::mem::take(&mut self.buffer);
                }
                self.ready.send_replace(true);
            }
        }
    }
}

/// The stores of the child kinds one controller watches; a kind it does not own stays `None`.
#[derive(Clone, Default)]
pub struct Children {
    pub deployments: Option<Slim>,
    pub stateful_sets: Option<Slim>,
    pub services: Option<Slim>,
    pub config_maps: Option<Slim>,
    pub service_accounts: Option<Slim>,
    pub roles: Option<Slim>,
    pub role_bindings: Option<Slim>,
    pub pod_disruption_budgets: Option<Slim>,
}

impl Children {
    fn store(&self, kind: &str) -> Option<&Slim> {
        match kind {
            "Deployment" => self.deployments.as_ref(),
            "StatefulSet" => self.stateful_sets.as_ref(),
            "Service" => self.services.as_ref(),
            "ConfigMap" => self.config_maps.as_ref(),
            "ServiceAccount" => self.service_accounts.as_ref(),
            "Role" => self.roles.as_ref(),
            "RoleBinding" => self.role_bindings.as_ref(),
            "PodDisruptionBudget" => self.pod_disruption_budgets.as_ref(),
            _ => None,
        }
    }

    /// The cached child of `kind`, as JSON (slim); `None` when the cache does not hold it.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        self.store(kind)?.get(namespace, name)
    }

    /// Waits until every store has had its first complete list, so a reconcile right after a start
    /// finds the children that exist instead of reading each one (the controller drives the
    /// watches while its reconciles wait here). A store still empty after [`FILL_TIMEOUT`] (its
    /// watch failing, e.g. for want of RBAC) fails the reconcile, to be retried: deciding from a
    /// cache that is not filled would take existing children for missing ones.
    pub async fn ready(&self) -> Result<(), Error> {
        for (kind, store) in [
            ("Deployments", &self.deployments),
            ("StatefulSets", &self.stateful_sets),
            ("Services", &self.services),
            ("ConfigMaps", &self.config_maps),
            ("ServiceAccounts", &self.service_accounts),
            ("Roles", &self.roles),
            ("RoleBindings", &self.role_bindings),
            ("PodDisruptionBudgets", &self.pod_disruption_budgets),
        ] {
            let Some(store) = store else {
                continue;
            };
            if tokio::time::timeout(FILL_TIMEOUT, store.wait_until_ready())
                .await
                .is_err()
            {
                return Err(Error::CacheNotFilled(kind));
            }
        }
        Ok(())
    }

    /// The cached Deployment `namespace/name` (slim: the fields the operator applied, and status).
    pub fn deployment(&self, namespace: &str, name: &str) -> Option<Deployment> {
        let value = self.deployments.as_ref()?.get(namespace, name)?;
        serde_json::from_value(value).ok()
    }
}

/// The API resource of a typed kind, for [`watch_children`].
pub fn resource_of<K: Resource<DynamicType = ()>>() -> ApiResource {
    ApiResource::erase::<K>(&())
}

/// [`watch_children`] of a typed kind.
pub fn watch_typed_children<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Slim,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug + Send + Sync + 'static,
{
    watch_children(api, &resource_of::<K>(), config)
}

/// The objects this operator builds for one owner kind: its managed-by label and the owner kind's
/// label (`owner_label`, e.g. `outrigger.dev/replicatedservice`), which every child carries.
pub fn children_of(owner_label: &str) -> watcher::Config {
    watcher::Config::default().labels(&format!(
        "{}={},{owner_label}",
        labels::MANAGED_BY,
        labels::MANAGED_BY_VALUE,
    ))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Service;
    use serde_json::json;

    use super::*;

    fn service(namespace: &str, name: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "namespace": namespace,
                "resourceVersion": "7",
                "managedFields": [{"manager": FIELD_MANAGER, "operation": "Apply", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": {"f:selector": {}}}}],
            },
            "spec": {"clusterIP": "10.0.0.9", "selector": {"app": name}, "sessionAffinity": "None"},
        }))
        .unwrap()
    }

    #[test]
    fn a_stored_object_keeps_its_resource_version_for_the_watch_to_resume_from() {
        let object: outrigger_api::ReplicatedService = serde_json::from_value(json!({
            "apiVersion": "outrigger.dev/v1alpha1",
            "kind": "ReplicatedService",
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "42"},
            "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:1"}]}}},
        }))
        .unwrap();
        let stored = Stored::new(DeserializeGuard(Ok(object)));
        assert_eq!(stored.meta().resource_version.as_deref(), Some("42"));
        assert_eq!(stored.meta().name.as_deref(), Some("web"));
        assert_eq!(
            stored.decode().0.unwrap().metadata.resource_version.as_deref(),
            Some("42")
        );
    }

    fn services() -> (Children, SlimWriter) {
        let (store, writer) = slim_store(&resource_of::<Service>());
        let children = Children {
            services: Some(store),
            ..Children::default()
        };
        (children, writer)
    }

    #[test]
    fn a_cached_child_is_found_by_kind_namespace_and_name_with_its_api_version_and_kind() {
        let (children, mut writer) = services();
        writer.apply(&watcher::Event::Apply(service("shop", "web")));
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
        assert_eq!(children.get("Service", "other", "web"), None);
        assert_eq!(
            children.get("Deployment", "shop", "web"),
            None,
            "a kind not cached"
        );
    }

    #[test]
    fn a_cached_child_holds_what_the_operator_applied_and_its_address_and_nothing_else() {
        let (children, mut writer) = services();
        writer.apply(&watcher::Event::Apply(service("shop", "web")));
        let cached = children.get("Service", "shop", "web").unwrap();
        assert_eq!(
            cached["spec"],
            json!({"clusterIP": "10.0.0.9", "selector": {"app": "web"}})
        );
        assert_eq!(cached["metadata"].get("managedFields"), None);
    }

    #[tokio::test]
    async fn a_relist_replaces_the_store_only_once_complete_and_the_first_one_makes_it_ready() {
        let (children, mut writer) = services();
        writer.apply(&watcher::Event::<Service>::Init);
        writer.apply(&watcher::Event::InitApply(service("shop", "a")));
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(10), children.ready())
                .await
                .is_err(),
            "not ready while the first list is incomplete"
        );
        writer.apply(&watcher::Event::<Service>::InitDone);
        assert!(children.ready().await.is_ok());
        writer.apply(&watcher::Event::<Service>::Init);
        writer.apply(&watcher::Event::InitApply(service("shop", "b")));
        assert!(
            children.get("Service", "shop", "a").is_some(),
            "kept until the re-list is complete"
        );
        writer.apply(&watcher::Event::<Service>::InitDone);
        assert_eq!(
            (
                children.get("Service", "shop", "a").is_some(),
                children.get("Service", "shop", "b").is_some()
            ),
            (false, true)
        );
        writer.apply(&watcher::Event::Delete(service("shop", "b")));
        assert_eq!(children.get("Service", "shop", "b"), None);
    }

    fn replicated_service(spec: Value) -> Value {
        json!({
            "apiVersion": "outrigger.dev/v1alpha1",
            "kind": "ReplicatedService",
            "metadata": {
                "name": "web",
                "namespace": "shop",
                "resourceVersion": "9",
                "annotations": {LAST_APPLIED: "{\"a whole copy\": true}", "team": "a"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsV1": {"f:spec": {}}}],
            },
            "spec": spec,
        })
    }

    fn spec() -> Value {
        json!({
            "replicas": 0,
            "template": {"spec": {"containers": [{"name": "app", "image": "app:1"}]}},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
            "rolloutStrategyRef": {"name": "canary"},
            "sidecars": [{"name": "config-sync", "settings": {"configMaps": "app,flags"}}],
        })
    }

    #[test]
    fn a_stored_service_decodes_to_itself_without_what_is_never_read() {
        use outrigger_api::ReplicatedService;
        let stored: Stored<ReplicatedService> = serde_json::from_value(replicated_service(spec())).unwrap();
        assert_eq!(
            (stored.name_any(), stored.namespace()),
            ("web".to_owned(), Some("shop".to_owned()))
        );
        let DeserializeGuard(Ok(rsvc)) = stored.decode() else {
            panic!("decodes")
        };
        assert_eq!(rsvc.spec.replicas, 0);
        assert_eq!(
            rsvc.metadata.resource_version.as_deref(),
            Some("9"),
            "status writes fence on it"
        );
        assert_eq!(rsvc.metadata.managed_fields, None);
        assert_eq!(
            rsvc.metadata
                .annotations
                .unwrap_or_default()
                .into_keys()
                .collect::<Vec<_>>(),
            ["team"]
        );
    }

    #[test]
    fn a_stored_service_names_its_strategy_and_synced_config_maps_without_being_decoded() {
        use outrigger_api::ReplicatedService;
        let stored: Stored<ReplicatedService> = serde_json::from_value(replicated_service(spec())).unwrap();
        assert_eq!(stored.references().strategy.as_deref(), Some("canary"));
        assert_eq!(stored.references().config_maps, ["app", "flags"]);
        let mut without_strategy = spec();
        without_strategy["rolloutStrategyRef"] = Value::Null;
        let stored: Stored<ReplicatedService> =
            serde_json::from_value(replicated_service(without_strategy)).unwrap();
        assert!(
            stored.references().config_maps.is_empty(),
            "without a strategy a config edit is no rollout"
        );
    }

    #[test]
    fn an_undecodable_service_is_stored_as_invalid_with_its_name() {
        use outrigger_api::ReplicatedService;
        let stored: Stored<ReplicatedService> =
            serde_json::from_value(replicated_service(json!({"replicas": "three"}))).unwrap();
        assert_eq!(stored.name_any(), "web");
        let DeserializeGuard(Err(invalid)) = stored.decode() else {
            panic!("invalid")
        };
        assert_eq!(invalid.metadata.name.as_deref(), Some("web"));
    }
}
