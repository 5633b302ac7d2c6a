//! The sharding ambassador: a Redis proxy on loopback that sends every key to the shard owning it
//! on a twemproxy-compatible ketama ring, built from the operator's shard map.
//!
//! - [`resp`]: the RESP2 codec (sans-IO);
//! - [`routing`]: what to do with a command (pure);
//! - [`shard`], [`client`], [`server`]: how bytes move;
//! - [`shardmap`]: the shard map document; [`source`]: where it comes from (a file);
//! - [`topology`]: the ring and shard connections in force, handed to clients through a `watch`;
//! - [`metrics`]: Prometheus metrics, served with `/healthz` and `/readyz` by the admin server.

pub mod cli;
pub mod client;
pub mod metrics;
pub mod resp;
pub mod routing;
pub mod server;
pub mod shard;
pub mod shardmap;
pub mod source;
pub mod topology;

use std::{sync::Arc, time::Duration};

use outrigger_sidecar_runtime::{
    admin::{self, AdminState},
    shutdown,
};
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::watch};
use tracing::info;

use crate::{cli::Args, metrics::Metrics, topology::Topology};

/// Why the ambassador stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
}

/// Runs the ambassador until SIGINT or SIGTERM.
pub async fn run(args: Args) -> Result<(), RunError> {
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let admin_state = AdminState::new(registry);
    let shard_settings = Arc::new(args.shard_settings(&metrics));
    let client_settings = Arc::new(args.client_settings(&metrics));
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| RunError::Listen {
            address: args.listen,
            source,
        })?;
    let admin_listener = admin::bind(args.admin_addr).await?;
    let (sender, receiver) = watch::channel(Arc::new(Topology::empty()));
    tokio::spawn(source::watch_file(
        args.shard_map.clone(),
        Duration::from_millis(args.shard_map_poll_ms.max(10)),
        shard_settings,
        sender,
    ));
    tokio::spawn(follow_readiness(receiver.clone(), admin_state.clone()));
    tokio::spawn(admin::serve(admin_listener, admin_state, shutdown::signal()));
    info!(listen = %args.listen, admin = %args.admin_addr, shard_map = %args.shard_map.display(), "Sharding ambassador listening.");
    server::serve(
        listener,
        receiver,
        client_settings,
        args.server_limits(),
        shutdown::signal(),
    )
    .await;
    info!("Sharding ambassador stopped.");
    Ok(())
}

/// Ready while a shard map with at least one shard is in force.
async fn follow_readiness(mut topology: watch::Receiver<Arc<Topology>>, admin: AdminState) {
    loop {
        let ready = !topology.borrow_and_update().shards().is_empty();
        admin.set_ready(ready);
        if topology.changed().await.is_err() {
            return;
        }
    }
}
