//! Endpoint discovery: the ready pods behind a Kubernetes Service, read from its EndpointSlices
//! through the runtime's API client, for backends whose document says `discovery`. Each pod is one
//! endpoint, placed on the backend's hash ring by its name (the slice's `targetRef`), not its
//! address: a pod that turns unready leaves the ring, and comes back to the same points when it is
//! ready again, so its sticky clients return to it.
//!
//! The watches follow the configuration: the store says which Services its generation discovers
//! (through a `watch` channel), and a change of their ready pods makes the store rebuild the
//! generation's backends (same document, same generation number, connection pools and endpoint
//! health kept).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use outrigger_contract::rate_limit::EndpointDiscoveryConfig;
use outrigger_sidecar_runtime::apiserver::{
    discovery::endpoint_slice_version, watcher::Event, Api, ApiClient, EndpointSlice, EndpointSliceVersion,
    Selector, Watcher,
};
use tokio::{sync::watch, task::JoinHandle};

/// The label an EndpointSlice names its Service with.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Wait between attempts to learn which EndpointSlice version the API server serves.
const DISCOVERY_RETRY: Duration = Duration::from_secs(5);

/// One ready pod of a Service: its name (the ring's node) and `ip:port`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodEndpoint {
    pub name: String,
    pub address: String,
}

/// The ready pods of every discovered Service, as last read.
#[derive(Debug, Default)]
pub struct Discovered {
    pods: Mutex<HashMap<EndpointDiscoveryConfig, Vec<PodEndpoint>>>,
}

impl Discovered {
    /// The ready pods of `service`, when its slices have been read.
    pub fn pods(&self, service: &EndpointDiscoveryConfig) -> Option<Vec<PodEndpoint>> {
        self.lock().get(service).cloned()
    }

    /// Records the ready pods of `service`; true when they changed.
    pub fn set(&self, service: &EndpointDiscoveryConfig, pods: Vec<PodEndpoint>) -> bool {
        let mut all = self.lock();
        if all.get(service) == Some(&pods) {
            return false;
        }
        all.insert(service.clone(), pods);
        true
    }

    /// Forgets a Service no longer discovered.
    pub fn forget(&self, service: &EndpointDiscoveryConfig) {
        self.lock().remove(service);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<EndpointDiscoveryConfig, Vec<PodEndpoint>>> {
        self.pods.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The ready endpoints of a Service's slices, one per pod, sorted by name. An endpoint is named by
/// its `targetRef` (the pod), else its hostname, else its address; its port is the slice's first.
pub fn ready_pods<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>) -> Vec<PodEndpoint> {
    let mut pods = BTreeMap::new();
    for slice in slices {
        let Some(port) = slice
            .ports
            .iter()
            .flatten()
            .filter(|port| port.protocol.as_deref().is_none_or(|protocol| protocol == "TCP"))
            .find_map(|port| port.port)
        else {
            continue;
        };
        for endpoint in slice.endpoints.iter().filter(|endpoint| endpoint.is_ready()) {
            let Some(ip) = endpoint.addresses.first() else {
                continue;
            };
            let address = if ip.contains(':') {
                format!("[{ip}]:{port}")
            } else {
                format!("{ip}:{port}")
            };
            let name = endpoint
                .target_ref
                .as_ref()
                .and_then(|target| target.name.clone())
                .or_else(|| endpoint.hostname.clone())
                .unwrap_or_else(|| ip.clone());
            pods.entry(name).or_insert(address);
        }
    }
    pods.into_iter()
        .map(|(name, address)| PodEndpoint { name, address })
        .collect()
}

/// Starts the task that keeps one EndpointSlice watch per Service in `wanted`, recording their
/// ready pods in `discovered` and calling `changed` after each change. Without a client (no API
/// server configured) it only says, once, that the static endpoints serve.
pub fn start(
    client: Option<ApiClient>,
    discovered: Arc<Discovered>,
    mut wanted: watch::Receiver<BTreeSet<EndpointDiscoveryConfig>>,
    changed: Arc<dyn Fn() + Send + Sync>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut version: Option<EndpointSliceVersion> = None;
        let mut watches: HashMap<EndpointDiscoveryConfig, JoinHandle<()>> = HashMap::new();
        let mut warned = false;
        loop {
            let services = wanted.borrow_and_update().clone();
            for gone in watches
                .keys()
                .filter(|service| !services.contains(*service))
                .cloned()
                .collect::<Vec<_>>()
            {
                if let Some(task) = watches.remove(&gone) {
                    task.abort();
                }
                discovered.forget(&gone);
                changed();
            }
            let new: Vec<_> = services
                .iter()
                .filter(|service| !watches.contains_key(*service))
                .cloned()
                .collect();
            if !new.is_empty() {
                match &client {
                    None if !warned => {
                        warned = true;
                        tracing::warn!(
                            "Endpoint discovery needs the Kubernetes API (--configmap); the backends' static endpoints serve."
                        );
                    }
                    None => {}
                    Some(client) => {
                        let version = match version {
                            Some(version) => version,
                            None => {
                                let found = learn_version(client, shutdown.clone()).await;
                                let Some(found) = found else { return };
                                version = Some(found);
                                found
                            }
                        };
                        for service in new {
                            let task = tokio::spawn(watch_service(
                                client.clone(),
                                version,
                                service.clone(),
                                discovered.clone(),
                                changed.clone(),
                                shutdown.clone(),
                            ));
                            watches.insert(service, task);
                        }
                    }
                }
            }
            if wanted.changed().await.is_err() {
                break;
            }
        }
        for task in watches.into_values() {
            task.abort();
        }
    })
}

/// Asks discovery until it answers (or the process stops: `None`).
async fn learn_version(
    client: &ApiClient,
    mut shutdown: watch::Receiver<bool>,
) -> Option<EndpointSliceVersion> {
    loop {
        match endpoint_slice_version(client).await {
            Ok(version) => {
                tracing::info!(version = version.group_version(), "Watching EndpointSlices.");
                return Some(version);
            }
            Err(error) => {
                tracing::warn!(%error, "Cannot tell which EndpointSlice version the API server serves; retrying.");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(DISCOVERY_RETRY) => {}
            _ = shutdown.wait_for(|stop| *stop) => return None,
        }
    }
}

async fn watch_service(
    client: ApiClient,
    version: EndpointSliceVersion,
    service: EndpointDiscoveryConfig,
    discovered: Arc<Discovered>,
    changed: Arc<dyn Fn() + Send + Sync>,
    shutdown: watch::Receiver<bool>,
) {
    let api = Api::endpoint_slices(client, &service.namespace, version);
    let selector = Selector::Labels(Some(format!("{SERVICE_NAME_LABEL}={}", service.service)));
    let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
    let sink = |event: Event<EndpointSlice>| {
        let name = |slice: &EndpointSlice| slice.metadata.name.clone().unwrap_or_default();
        match event {
            Event::Restarted(all) => {
                slices = all.into_iter().map(|slice| (name(&slice), slice)).collect();
            }
            Event::Applied(slice) => {
                slices.insert(name(&slice), slice);
            }
            Event::Deleted(slice) => {
                slices.remove(&name(&slice));
            }
        }
        let pods = ready_pods(slices.values());
        let count = pods.len();
        if discovered.set(&service, pods) {
            tracing::info!(
                namespace = %service.namespace,
                service = %service.service,
                ready_pods = count,
                "The ready pods of a discovered Service changed."
            );
            changed();
        }
    };
    Watcher::new(api, selector).run(sink, shutdown).await;
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn slice(value: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn ready_pods_are_named_by_their_pod_and_unready_ones_are_left_out() {
        let slices = [
            slice(json!({
                "metadata": {"name": "web-stable-a"},
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [
                    {"addresses": ["172.17.0.9"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "web-b"}},
                    {"addresses": ["172.17.0.7"], "conditions": {"ready": false}, "targetRef": {"kind": "Pod", "name": "web-c"}},
                    {"addresses": ["172.17.0.8"], "targetRef": {"kind": "Pod", "name": "web-a"}},
                ],
            })),
            slice(json!({
                "metadata": {"name": "web-stable-b"},
                "ports": [{"port": 9090}],
                "endpoints": [{"addresses": ["fd00::1"], "hostname": "web-d"}, {"addresses": ["10.0.0.1"]}],
            })),
            slice(json!({"metadata": {"name": "no-ports"}, "endpoints": [{"addresses": ["10.9.9.9"]}]})),
        ];
        let pod = |name: &str, address: &str| PodEndpoint {
            name: name.to_owned(),
            address: address.to_owned(),
        };
        assert_eq!(
            ready_pods(&slices),
            [
                pod("10.0.0.1", "10.0.0.1:9090"),
                pod("web-a", "172.17.0.8:8080"),
                pod("web-b", "172.17.0.9:8080"),
                pod("web-d", "[fd00::1]:9090"),
            ]
        );
    }

    #[test]
    fn the_same_pods_read_again_are_no_change() {
        let discovered = Discovered::default();
        let service = EndpointDiscoveryConfig {
            namespace: "shop".to_owned(),
            service: "web-stable".to_owned(),
        };
        let pods = vec![PodEndpoint {
            name: "web-a".to_owned(),
            address: "10.0.0.1:8080".to_owned(),
        }];
        assert!(discovered.set(&service, pods.clone()));
        assert!(!discovered.set(&service, pods.clone()));
        assert_eq!(discovered.pods(&service), Some(pods));
        discovered.forget(&service);
        assert_eq!(discovered.pods(&service), None);
    }
}
