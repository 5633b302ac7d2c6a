//! The sharding ambassador: a Redis proxy on loopback that sends every key to the shard owning it
//! on a twemproxy-compatible ketama ring, built from the operator's shard map.
//!
//! - [`resp`]: the RESP2 codec (sans-IO);
//! - [`routing`]: what to do with a command (pure); [`migration`]: what a reshard adds around it
//!   (pure);
//! - [`http`]: HTTP sharding, when the shard map's protocol is `http` (key extraction pure);
//! - [`shard`], [`client`], [`server`], [`workers`]: how bytes move, on single-threaded worker
//!   runtimes (one by default); [`memory`]: what a worker without clients gives back;
//! - [`auth`]: the shards' password, from the Secret the shard map names;
//! - [`shardmap`]: the shard map document, read from the runtime's config source by [`run`];
//! - [`topology`]: the ring and shard connections in force, handed to clients through a `watch`;
//! - [`metrics`] and [`hotkeys`]: Prometheus metrics (per shard, skew, a bounded top-k of hot
//!   keys), served with `/healthz`, `/readyz` and `/config` by the runtime's admin server;
//! - [`cli`]: the runtime's flag groups and the ambassador's own.

pub mod auth;
pub mod cli;
pub mod client;
pub mod deadline;
pub mod hotkeys;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod migration;
pub mod resp;
pub mod routing;
pub mod run;
pub mod server;
pub mod shard;
pub mod shardmap;
pub mod topology;
pub mod workers;

pub use run::{run, RunError};
