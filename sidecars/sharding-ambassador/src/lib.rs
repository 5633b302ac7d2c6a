//! The sharding ambassador: a Redis proxy on loopback that sends every key to the shard owning it
//! on a twemproxy-compatible ketama ring, built from the operator's shard map.
//!
//! - [`resp`]: the RESP2 codec (sans-IO);
//! - [`routing`]: what to do with a command (pure); [`migration`]: what a reshard adds around it
//!   (pure);
//! - [`shard`], [`client`], [`server`]: how bytes move;
//! - [`auth`]: the shards' password, from the Secret the shard map names;
//! - [`shardmap`]: the shard map document, read from the runtime's config source by [`run`];
//! - [`topology`]: the ring and shard connections in force, handed to clients through a `watch`;
//! - [`metrics`]: Prometheus metrics, served with `/healthz`, `/readyz` and `/config` by the
//!   runtime's admin server; [`cli`]: the runtime's flag groups and the ambassador's own.

pub mod auth;
pub mod cli;
pub mod client;
pub mod metrics;
pub mod migration;
pub mod resp;
pub mod routing;
pub mod run;
pub mod server;
pub mod shard;
pub mod shardmap;
pub mod topology;

pub use run::{run, RunError};
