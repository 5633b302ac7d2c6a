//! Backends at run time: endpoints with their health, the hash ring that keeps a sticky client on
//! one endpoint, round-robin for everyone else, and the pooled keep-alive client per protocol.
//! Clients and endpoint health outlive a configuration generation, so a reload keeps pooled
//! connections and ejections.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use http::uri::Authority;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};
use outrigger_hashring::HashRing;

use crate::{
    body::RequestBody,
    config::{parse_endpoint, BackendConfig, UpstreamProtocol},
    health::EndpointHealth,
    metrics::{BackendMetrics, Metrics},
    routing::mix,
};

pub type HttpClient = Client<HttpConnector, RequestBody>;

/// One endpoint of a backend.
#[derive(Debug)]
pub struct Endpoint {
    pub address: String,
    pub authority: Authority,
    pub health: Arc<EndpointHealth>,
}

/// One backend of a configuration generation.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    ring: HashRing,
    next: AtomicUsize,
    pub client: HttpClient,
    pub protocol: UpstreamProtocol,
    pub timeout: Duration,
    pub max_retries: u32,
    pub metrics: BackendMetrics,
}

impl Backend {
    /// An endpoint to try: for a sticky key its place on the ring, otherwise the next in turn;
    /// never an ejected one or one in `tried`. `None` when none is left.
    pub fn pick(&self, key_hash: Option<u64>, now: u64, tried: impl Fn(usize) -> bool) -> Option<usize> {
        let usable = |index: usize| !tried(index) && self.endpoints[index].health.is_available(now);
        if let Some(hash) = key_hash {
            // A few rehashes find the key's next choice on the ring when its first is unusable, so
            // the clients of an ejected endpoint spread instead of piling onto one neighbour.
            let mut hash = hash;
            for _ in 0..3 {
                if let Some(index) = self
                    .ring
                    .node_for_hash(hash)
                    .and_then(|node| self.endpoints.iter().position(|e| e.address == node))
                {
                    if usable(index) {
                        return Some(index);
                    }
                }
                hash = mix(hash.wrapping_add(1));
            }
        }
        let count = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..count)
            .map(|offset| (start + offset) % count)
            .find(|index| usable(*index))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ClientKey {
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
}

/// What outlives configuration generations: endpoint health and pooled clients.
#[derive(Default)]
pub struct Resources {
    inner: Mutex<ResourceMaps>,
}

#[derive(Default)]
struct ResourceMaps {
    health: HashMap<(String, String), Arc<EndpointHealth>>,
    clients: HashMap<ClientKey, HttpClient>,
}

/// How long an idle pooled connection to a backend is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

impl Resources {
    /// Builds the backends of a new generation, reusing the health and clients of endpoints and
    /// settings that stay, and forgetting the rest (old generations still in use keep their own).
    pub fn backends(&self, configs: &[BackendConfig], virtual_nodes: u32, metrics: &Metrics) -> Vec<Backend> {
        let mut guard = match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let maps = &mut *guard;
        let mut health = HashMap::new();
        let mut clients = HashMap::new();
        let mut backends = Vec::with_capacity(configs.len());
        for config in configs {
            let key = ClientKey {
                protocol: config.protocol,
                connect_timeout: config.connect_timeout.0,
            };
            let client = maps
                .clients
                .remove(&key)
                .or_else(|| clients.get(&key).cloned())
                .unwrap_or_else(|| new_client(key));
            clients.insert(key, client.clone());
            let endpoints = config
                .endpoints
                .iter()
                .filter_map(|address| {
                    let authority = parse_endpoint(address).ok()?;
                    let id = (config.name.clone(), address.clone());
                    let state = maps.health.remove(&id).unwrap_or_default();
                    health.insert(id, state.clone());
                    Some(Endpoint {
                        address: address.clone(),
                        authority,
                        health: state,
                    })
                })
                .collect();
            backends.push(Backend {
                name: config.name.clone(),
                endpoints,
                ring: HashRing::new(&config.endpoints, virtual_nodes),
                next: AtomicUsize::new(0),
                client,
                protocol: config.protocol,
                timeout: config.timeout.0,
                max_retries: config.max_retries,
                metrics: metrics.backend(&config.name),
            });
        }
        maps.health = health;
        maps.clients = clients;
        backends
    }
}

fn new_client(key: ClientKey) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(key.connect_timeout));
    connector.set_keepalive(Some(Duration::from_secs(60)));
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .http2_only(key.protocol == UpstreamProtocol::H2c)
        .build(connector)
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;
    use serde_json::json;

    use super::*;
    use crate::config::{ConfigDuration, OutlierConfig, SplitterConfig};

    fn backends(resources: &Resources, endpoints: &[&str]) -> Vec<Backend> {
        let config = SplitterConfig::from_value(json!({
            "backends": [{"name": "stable", "endpoints": endpoints}]
        }))
        .unwrap();
        let metrics = Metrics::register(&mut Registry::default());
        resources.backends(&config.backends, 160, &metrics)
    }

    #[tokio::test]
    async fn round_robin_skips_ejected_and_tried_endpoints() {
        let resources = Resources::default();
        let backend = &backends(&resources, &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"])[0];
        let picks: Vec<_> = (0..6)
            .map(|_| backend.pick(None, 0, |_| false).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let policy = OutlierConfig {
            consecutive_failures: 1,
            base_ejection_time: ConfigDuration(Duration::from_secs(1)),
            max_ejection_time: ConfigDuration(Duration::from_secs(1)),
        };
        backend.endpoints[1].health.record_failure(0, &policy);
        assert!((0..6).all(|_| backend.pick(None, 0, |_| false) != Some(1)));
        assert_eq!(backend.pick(None, 0, |index| index != 2), Some(2));
        assert_eq!(backend.pick(None, 0, |index| index != 1), None);
    }

    #[tokio::test]
    async fn a_sticky_key_keeps_its_endpoint_and_moves_only_while_it_is_ejected() {
        let resources = Resources::default();
        let backend = &backends(&resources, &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"])[0];
        let home = backend.pick(Some(42), 0, |_| false).unwrap();
        assert!((0..20).all(|_| backend.pick(Some(42), 0, |_| false) == Some(home)));
        let elsewhere = backend.pick(Some(42), 0, |index| index == home).unwrap();
        assert_ne!(elsewhere, home);
    }

    #[tokio::test]
    async fn endpoint_health_survives_a_rebuild_of_the_backends() {
        let resources = Resources::default();
        let first = backends(&resources, &["127.0.0.1:1", "127.0.0.1:2"]);
        let second = backends(&resources, &["127.0.0.1:2", "127.0.0.1:9"]);
        assert!(Arc::ptr_eq(
            &first[0].endpoints[1].health,
            &second[0].endpoints[0].health
        ));
        assert!(!Arc::ptr_eq(
            &first[0].endpoints[0].health,
            &second[0].endpoints[1].health
        ));
    }
}
