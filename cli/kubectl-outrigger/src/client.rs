//! The thin client: reads Outrigger objects, annotates them, and scrapes the ambassadors through
//! the API server's pod proxy. No formatting here.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{
    api::{Api, ListParams, Patch, PatchParams},
    Client,
};
use outrigger_api::{AutoscalingPolicy, ReplicatedService, RolloutStrategy, ShardedService};
use serde_json::json;

use crate::render::shards::{parse_ambassador_metrics, AmbassadorReport};

/// The annotation a rollout's manual controls are written to.
pub const CONTROL_ANNOTATION: &str = "outrigger.dev/rollout";
/// The annotation a client pod names its ShardedService with.
pub const SHARDED_SERVICE_ANNOTATION: &str = "outrigger.dev/sharded-service";
/// The sharding ambassador's admin port unless its container says otherwise.
const AMBASSADOR_ADMIN_PORT: u16 = 9902;
/// Ambassadors scraped at most, so a namespace of many clients stays quick.
const MAX_AMBASSADORS: usize = 20;
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the cluster: {0} (is KUBECONFIG set? `eval \"$(hack/cluster.sh env)\"` for the local one)")]
    Connect(#[source] kube::Error),
    #[error("{kind} {name:?} not found in namespace {namespace:?}")]
    NotFound {
        kind: &'static str,
        name: String,
        namespace: String,
    },
    #[error("ReplicatedService {0:?} has no spec.rolloutStrategyRef: it has no rollout to control")]
    NoStrategy(String),
    #[error("the API server refused the request: {0}")]
    Api(#[source] kube::Error),
}

/// A client bound to one namespace.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    pub namespace: String,
}

impl Cluster {
    pub async fn connect(namespace: Option<String>) -> Result<Cluster, Error> {
        let client = Client::try_default().await.map_err(Error::Connect)?;
        let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
        Ok(Cluster { client, namespace })
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn get<K>(&self, kind: &'static str, name: &str) -> Result<K, Error>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        self.api::<K>()
            .get_opt(name)
            .await
            .map_err(Error::Api)?
            .ok_or_else(|| Error::NotFound {
                kind,
                name: name.to_owned(),
                namespace: self.namespace.clone(),
            })
    }

    /// The service and the strategy it names (absent when it names none or a missing one).
    pub async fn rollout(&self, name: &str) -> Result<(ReplicatedService, Option<RolloutStrategy>), Error> {
        let service: ReplicatedService = self.get("ReplicatedService", name).await?;
        let strategy = match &service.spec.rollout_strategy_ref {
            Some(reference) => self
                .api::<RolloutStrategy>()
                .get_opt(&reference.name)
                .await
                .map_err(Error::Api)?,
            None => None,
        };
        Ok((service, strategy))
    }

    /// Writes a manual control (`promote`, `abort`, `pause`, `resume`); the operator removes it
    /// once handled.
    pub async fn control(&self, name: &str, value: &str) -> Result<ReplicatedService, Error> {
        let service: ReplicatedService = self.get("ReplicatedService", name).await?;
        if service.spec.rollout_strategy_ref.is_none() {
            return Err(Error::NoStrategy(name.to_owned()));
        }
        let patch = json!({"metadata": {"annotations": {CONTROL_ANNOTATION: value}}});
        self.api::<ReplicatedService>()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(Error::Api)
    }

    pub async fn sharded(&self, name: &str) -> Result<(ShardedService, Vec<AmbassadorReport>), Error> {
        let service: ShardedService = self.get("ShardedService", name).await?;
        let pods = self
            .api::<Pod>()
            .list(&ListParams::default())
            .await
            .map_err(Error::Api)?;
        let mut reports = Vec::new();
        for pod in pods
            .items
            .iter()
            .filter(|p| names_service(p, name))
            .take(MAX_AMBASSADORS)
        {
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            let metrics = self.scrape(&pod_name, ambassador_port(pod)).await;
            reports.push(AmbassadorReport {
                pod: pod_name,
                metrics: metrics.map(|text| parse_ambassador_metrics(&text)),
            });
        }
        Ok((service, reports))
    }

    async fn scrape(&self, pod: &str, port: u16) -> Result<String, String> {
        let path = format!(
            "/api/v1/namespaces/{}/pods/{pod}:{port}/proxy/metrics",
            self.namespace
        );
        let request = http::Request::get(path)
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(SCRAPE_TIMEOUT, self.client.request_text(request)).await {
            Ok(Ok(text)) => Ok(text),
            Ok(Err(error)) => Err(short(&error.to_string())),
            Err(_) => Err(format!("no answer within {}s", SCRAPE_TIMEOUT.as_secs())),
        }
    }

    pub async fn scaling(&self, name: &str) -> Result<AutoscalingPolicy, Error> {
        self.get("AutoscalingPolicy", name).await
    }
}

/// Whether a pod's annotation names the service (`cache` or `cache:6380`).
fn names_service(pod: &Pod, service: &str) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SHARDED_SERVICE_ANNOTATION))
        .is_some_and(|value| value.split(':').next() == Some(service))
        && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// The ambassador's admin port: its `OUTRIGGER_ADMIN_PORT`, else the default.
fn ambassador_port(pod: &Pod) -> u16 {
    let spec = pod.spec.as_ref();
    spec.into_iter()
        .flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()))
        .filter(|c| c.name == "sharding-ambassador")
        .flat_map(|c| c.env.iter().flatten())
        .find(|e| e.name == "OUTRIGGER_ADMIN_PORT")
        .and_then(|e| e.value.as_deref()?.parse().ok())
        .unwrap_or(AMBASSADOR_ADMIN_PORT)
}

fn short(error: &str) -> String {
    error.lines().next().unwrap_or(error).chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotation: Option<&str>, phase: &str, admin_port: Option<&str>) -> Pod {
        let mut value = json!({
            "metadata": {"name": "client"},
            "spec": {"containers": [{"name": "app"}, {"name": "sharding-ambassador", "env": []}]},
            "status": {"phase": phase},
        });
        if let Some(annotation) = annotation {
            value["metadata"]["annotations"] = json!({SHARDED_SERVICE_ANNOTATION: annotation});
        }
        if let Some(port) = admin_port {
            value["spec"]["containers"][1]["env"] = json!([{"name": "OUTRIGGER_ADMIN_PORT", "value": port}]);
        }
        serde_json::from_value(value).unwrap_or_default()
    }

    #[test]
    fn a_running_pod_naming_the_service_with_or_without_a_port_is_its_client() {
        assert!(names_service(&pod(Some("cache"), "Running", None), "cache"));
        assert!(names_service(&pod(Some("cache:6380"), "Running", None), "cache"));
        assert!(!names_service(&pod(Some("cache-2"), "Running", None), "cache"));
        assert!(!names_service(&pod(Some("cache"), "Pending", None), "cache"));
        assert!(!names_service(&pod(None, "Running", None), "cache"));
    }

    #[test]
    fn the_ambassador_is_scraped_on_its_own_admin_port() {
        assert_eq!(ambassador_port(&pod(Some("cache"), "Running", None)), 9902);
        assert_eq!(
            ambassador_port(&pod(Some("cache"), "Running", Some("9999"))),
            9999
        );
        assert_eq!(
            ambassador_port(&pod(Some("cache"), "Running", Some("nope"))),
            9902
        );
    }
}
