//! The contract between the operator and the sidecars: every document the operator writes for a
//! sidecar (the request splitter's configuration, the shard map, the settings every attached sidecar
//! reads) as Rust types that the writer
//! serializes and the reader parses, so the two sides cannot drift apart field by field.
//!
//! The enums a user writes in a custom resource and the operator copies into a document (where a
//! stickiness key comes from, what a route matches) are declared here once; the operator's API
//! crate re-uses them in its CRDs. Every document carries an `apiVersion` ([`ApiVersion`]), and
//! [`schema`] renders the JSON Schema of each one, committed under `contract/schemas/`.
//!
//! Dependencies stay at serde, serde_json and schemars, so any sidecar can read its document without
//! a Kubernetes client.

pub mod config_sync;
pub mod duration;
pub mod json;
pub mod rate_limit;
pub mod routing;
pub mod schema;
pub mod shard_map;
pub mod sidecars;
pub mod splitter;
mod version;

pub use routing::{AffinitySource, RouteMatch, SessionAffinity, ValueMatch};
pub use version::{ApiVersion, API_VERSION};
