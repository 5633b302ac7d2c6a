//! Accepts clients, at most `max_clients` at once.

use std::{future::Future, sync::Arc};

use tokio::{
    net::TcpListener,
    sync::{watch, Semaphore},
};
use tracing::{debug, info, warn};

use crate::{
    client::{self, ClientSettings},
    metrics::CategoryLabels,
    topology::Topology,
};

/// Serves clients on `listener` until `shutdown` completes. Clients already connected are left to
/// finish on their own tasks.
pub async fn serve(
    listener: TcpListener,
    topology: watch::Receiver<Arc<Topology>>,
    settings: Arc<ClientSettings>,
    max_clients: usize,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(max_clients.max(1)));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // The permit is taken before accepting, so a full house leaves clients in the backlog.
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "Accept failed.");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (topology, settings) = (topology.clone(), settings.clone());
        tokio::spawn(async move {
            let metrics = settings.metrics.clone();
            metrics.clients.inc();
            match client::serve(stream, topology, settings).await {
                Ok(()) => debug!(%peer, "Client disconnected."),
                Err(error) => {
                    metrics
                        .client_errors
                        .get_or_create(&CategoryLabels {
                            category: error.category(),
                        })
                        .inc();
                    info!(%peer, %error, category = error.category(), "Client dropped.");
                }
            }
            metrics.clients.dec();
            drop(permit);
        });
    }
}
