//! All CRDs of the API, and their rendering as the YAML committed under `crds/`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{AutoscalingPolicy, ReplicatedService, RolloutStrategy, ShardedService};

/// Every CRD of the `outrigger.dev` group, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![ReplicatedService::crd(), ShardedService::crd(), AutoscalingPolicy::crd(), RolloutStrategy::crd()]
}

/// Renders one CRD as a YAML document.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(crd)
}

/// The file name a CRD is committed under (`crds/<plural>.<group>.yaml`).
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// All CRDs as one multi-document YAML stream.
pub fn all_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in all() {
        out.push_str("---\n");
        out.push_str(&to_yaml(&crd)?);
    }
    Ok(out)
}
