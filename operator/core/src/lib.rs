//! Pure domain logic of the Outrigger operator: everything that can be decided without a client.
//!
//! The reconcile pipeline calls into this crate for its pure steps: [`validate`] the spec, build the
//! desired objects, compute [`conditions`]. Nothing here does I/O, so all of it is unit-tested on
//! fixtures.

pub mod analysis;
pub mod autoscaling;
pub mod canary;
pub mod conditions;
pub mod config_rollout;
pub mod config_sync;
pub mod edge;
pub mod inject;
pub mod labels;
pub mod owned;
pub mod owner;
pub mod replicated;
pub mod reshard;
pub mod rollout;
pub mod sharded;
pub mod subset;
pub mod validate;
pub mod webhook_config;
