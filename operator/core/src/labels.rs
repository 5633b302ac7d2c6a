//! Labels and annotations the operator puts on what it manages.

use std::collections::BTreeMap;

/// Field manager of every server-side apply the operator does.
pub const FIELD_MANAGER: &str = "outrigger-operator";

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "outrigger";
pub const NAME: &str = "app.kubernetes.io/name";
/// Set on children and pods of a ReplicatedService: its name.
pub const REPLICATED_SERVICE: &str = "outrigger.dev/replicatedservice";
/// Set on children and pods of a ShardedService: its name.
pub const SHARDED_SERVICE: &str = "outrigger.dev/shardedservice";
/// Index of the shard a pod or child belongs to.
pub const SHARD: &str = "outrigger.dev/shard";
/// `stable` or `canary`.
pub const TRACK: &str = "outrigger.dev/track";
/// Hash of the pod template a Deployment runs (rollouts compare revisions by it).
pub const TEMPLATE_HASH: &str = "outrigger.dev/template-hash";
/// Annotation on pods: comma-separated sidecars to inject (for pods not owned by a service).
pub const INJECT: &str = "outrigger.dev/inject";

/// Labels common to every child of the named owner.
pub fn owned_by(owner_label: &str, owner: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_owned(), MANAGED_BY_VALUE.to_owned()),
        (NAME.to_owned(), owner.to_owned()),
        (owner_label.to_owned(), owner.to_owned()),
    ])
}

/// A label selector in the string form of the scale subresource (`a=b,c=d`).
pub fn selector_string(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
