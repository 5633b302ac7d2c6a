//! The `outrigger.dev/v1alpha1` API: custom resource types only.
//!
//! Doc comments on every field become the schema descriptions `kubectl explain` shows, and the
//! `#[schemars(...)]` bounds become the server-side validation the API server enforces.
//! This crate has no client, so the operator's pure logic can depend on it. The enums a resource
//! shares with a document the operator writes for a sidecar (affinity source, route match, shard
//! function) are declared in `outrigger-contract` and re-exported here; sidecars depend on that
//! crate, not on this one.

pub mod autoscaling;
pub mod common;
pub mod crd;
pub mod rate_limits;
pub mod replicated;
pub mod rollout;
pub mod schema;
pub mod sharded;

pub use autoscaling::{AutoscalingPolicy, AutoscalingPolicySpec, AutoscalingPolicyStatus};
pub use replicated::{ReplicatedService, ReplicatedServiceSpec, ReplicatedServiceStatus};
pub use rollout::{RolloutStrategy, RolloutStrategySpec, RolloutStrategyStatus};
pub use sharded::{ShardedService, ShardedServiceSpec, ShardedServiceStatus};

/// The API group of every Outrigger resource.
pub const GROUP: &str = "outrigger.dev";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in manifests.
pub const API_VERSION: &str = "outrigger.dev/v1alpha1";
