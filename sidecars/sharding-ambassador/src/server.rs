//! Accepts clients, at most `max_clients` at once, and serves them on this runtime or hands them
//! to the worker threads.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{watch, OwnedSemaphorePermit, Semaphore},
};
use tracing::{debug, info, warn};

use outrigger_contract::shard_map::ShardProtocol;

use crate::{
    client::{self, ClientSettings},
    http::{self, HttpSettings},
    metrics::CategoryLabels,
    topology::Topology,
    workers::Workers,
};

/// Serves clients on `listener` until `shutdown` completes, then stops accepting and gives the
/// clients already connected up to `drain` to disconnect before returning. Clients are served on
/// the runtime this runs on.
pub async fn serve(
    listener: TcpListener,
    topology: watch::Receiver<Arc<Topology>>,
    settings: Arc<ClientSettings>,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    accept(listener, limits, shutdown, |stream, peer, permit| {
        tokio::spawn(client_task(
            stream,
            peer,
            topology.clone(),
            settings.clone(),
            permit,
        ));
    })
    .await;
}

/// As [`serve`], with every client handed to one of the `workers` in turn and served there, on
/// the worker's own topology: as Redis, or as HTTP when the shard map in force when it connects
/// says `protocol: http`.
pub async fn serve_on_workers(
    listener: TcpListener,
    workers: &Workers,
    settings: Arc<ClientSettings>,
    http: HttpMode,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    accept(listener, limits, shutdown, |stream, peer, permit| {
        let settings = settings.clone();
        let protocol = http.documents.borrow().as_ref().map(|map| map.document.protocol);
        if protocol == Some(ShardProtocol::Http) {
            let (documents, http) = (http.documents.clone(), http.settings.clone());
            workers.dispatch(
                stream,
                Box::new(move |stream, topology| {
                    Box::pin(http_task(stream, peer, topology, documents, http, permit))
                }),
            );
            return;
        }
        workers.dispatch(
            stream,
            Box::new(move |stream, topology| Box::pin(client_task(stream, peer, topology, settings, permit))),
        );
    })
    .await;
}

/// What HTTP clients need: the shard map documents (for the protocol and the key source) and the
/// forwarding settings.
#[derive(Debug, Clone)]
pub struct HttpMode {
    pub documents: http::Documents,
    pub settings: Arc<HttpSettings>,
}

/// Serves one HTTP client, counts it, and frees its place when it leaves.
async fn http_task(
    stream: TcpStream,
    peer: SocketAddr,
    topology: watch::Receiver<Arc<Topology>>,
    documents: http::Documents,
    settings: Arc<HttpSettings>,
    permit: OwnedSemaphorePermit,
) {
    let metrics = settings.metrics.clone();
    metrics.clients.inc();
    if let Err(error) = http::serve(stream, topology, documents, settings).await {
        metrics
            .client_errors
            .get_or_create(&CategoryLabels { category: "http" })
            .inc();
        debug!(%peer, %error, "HTTP client dropped.");
    }
    metrics.clients.dec();
    drop(permit);
}

async fn accept(
    listener: TcpListener,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
    mut spawn: impl FnMut(TcpStream, SocketAddr, OwnedSemaphorePermit),
) {
    let max_clients = limits.max_clients.clamp(1, Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(max_clients));
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
        spawn(stream, peer, permit);
    }
    drop(listener);
    let clients = u32::try_from(max_clients).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(limits.drain, permits.acquire_many(clients))
        .await
        .is_ok();
    info!(drained, "Drain finished; clients still connected are cut.");
}

/// Serves one client, counts it, and frees its place when it leaves.
async fn client_task(
    stream: TcpStream,
    peer: SocketAddr,
    topology: watch::Receiver<Arc<Topology>>,
    settings: Arc<ClientSettings>,
    permit: OwnedSemaphorePermit,
) {
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
}

/// How many clients at once, and how long they get to leave at shutdown.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub max_clients: usize,
    pub drain: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_clients: 10_000,
            drain: Duration::from_secs(5),
        }
    }
}
