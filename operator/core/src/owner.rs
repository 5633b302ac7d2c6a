//! What the builders need to know about the owning resource.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

/// Why desired objects could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("object has no {0} (not read from the API server?)")]
    MissingMetadata(&'static str),
    #[error("serializing {what}: {message}")]
    Serialize { what: &'static str, message: String },
}

/// Name, namespace and controller owner reference of an owner.
#[derive(Debug, Clone, PartialEq)]
pub struct Owner {
    pub name: String,
    pub namespace: String,
    pub reference: OwnerReference,
}

impl Owner {
    /// Reads them from an object as served by the API server.
    pub fn of<K: Resource<DynamicType = ()>>(object: &K) -> Result<Owner, BuildError> {
        let namespace = object
            .namespace()
            .ok_or(BuildError::MissingMetadata("namespace"))?;
        let reference = object
            .controller_owner_ref(&())
            .ok_or(BuildError::MissingMetadata("uid"))?;
        Ok(Owner {
            name: object.name_any(),
            namespace,
            reference,
        })
    }
}

/// Metadata of a child of `owner`: name, namespace, labels and the controller owner reference.
pub fn child_meta(owner: &Owner, name: &str, labels: &BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(owner.namespace.clone()),
        labels: Some(labels.clone()),
        owner_references: Some(vec![owner.reference.clone()]),
        ..ObjectMeta::default()
    }
}

/// A short stable hash of any serializable value (hex of FNV-1a 64 over its JSON).
pub fn content_hash<T: serde::Serialize>(value: &T) -> Result<String, BuildError> {
    let json = serde_json::to_vec(value).map_err(|error| BuildError::Serialize {
        what: "content hash",
        message: error.to_string(),
    })?;
    Ok(format!("{:016x}", outrigger_hashring::fnv1a64(&json)))
}

/// A pod template with the defaults server-side apply needs spelled out: container ports are keyed
/// by port and protocol, and an apply that omits the protocol is refused by some API servers.
pub fn normalized_template(
    template: &k8s_openapi::api::core::v1::PodTemplateSpec,
) -> k8s_openapi::api::core::v1::PodTemplateSpec {
    let mut template = template.clone();
    if let Some(pod) = template.spec.as_mut() {
        let containers = pod
            .containers
            .iter_mut()
            .chain(pod.init_containers.iter_mut().flatten());
        for port in containers.flat_map(|c| c.ports.iter_mut().flatten()) {
            port.protocol.get_or_insert_with(|| "TCP".to_owned());
        }
    }
    template
}
