//! The sharding ambassador: a Redis proxy on loopback that sends every key to the shard owning it
//! on a twemproxy-compatible ketama ring, built from the operator's shard map.
//!
//! - [`resp`]: the RESP2 codec (sans-IO);
//! - [`routing`]: what to do with a command (pure);
//! - [`shard`], [`client`], [`server`]: how bytes move;
//! - [`shardmap`]: the shard map document; [`source`]: where it comes from (a file);
//! - [`topology`]: the ring and shard connections in force, handed to clients through a `watch`.

pub mod cli;
pub mod client;
pub mod resp;
pub mod routing;
pub mod server;
pub mod shard;
pub mod shardmap;
pub mod source;
pub mod topology;

use std::{sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch};
use tracing::info;

use crate::{cli::Args, topology::Topology};

/// Why the ambassador stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Runs the ambassador until SIGINT or SIGTERM.
pub async fn run(args: Args) -> Result<(), RunError> {
    let shard_settings = Arc::new(args.shard_settings());
    let client_settings = Arc::new(args.client_settings());
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| RunError::Listen {
            address: args.listen,
            source,
        })?;
    let (sender, receiver) = watch::channel(Arc::new(Topology::empty()));
    tokio::spawn(source::watch_file(
        args.shard_map.clone(),
        Duration::from_millis(args.shard_map_poll_ms.max(10)),
        shard_settings,
        sender,
    ));
    info!(listen = %args.listen, shard_map = %args.shard_map.display(), "Sharding ambassador listening.");
    server::serve(
        listener,
        receiver,
        client_settings,
        args.max_clients,
        outrigger_sidecar_common::shutdown::signal(),
    )
    .await;
    info!("Sharding ambassador stopped.");
    Ok(())
}
