//! Wires the splitter together: configuration sources, the admin server, the proxy listener, the
//! mirror queue, reloads and the drain on shutdown.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use outrigger_sidecar_common::{
    admin::{self, AdminError, AdminState},
    shutdown,
};
use prometheus_client::registry::Registry;
use tokio::{
    net::TcpSocket,
    sync::{watch, Notify, Semaphore},
    task::JoinHandle,
};

#[cfg(feature = "configmap")]
use crate::configmap::{self, ConfigMapError, ConfigMapRef};
use crate::{
    apiserver::ApiServerOptions,
    config::ConfigError,
    health::RetryBudget,
    metrics::Metrics,
    mirror::MirrorQueue,
    proxy::Shared,
    reload,
    server::{self, Connections, Readiness},
    store::{Applied, ConfigStore},
    tls::{self, TlsError},
    upstream,
};

/// Pending connections the kernel queues per listening socket.
const LISTEN_BACKLOG: u32 = 1024;

/// Why the splitter could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("neither a configuration file nor a ConfigMap was given")]
    NoSource,
    #[error("the configuration file is not usable: {0}")]
    InitialConfig(#[source] ConfigError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("binding the proxy listener to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("starting worker thread {index}: {source}")]
    Worker { index: usize, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[cfg(feature = "configmap")]
    #[error(transparent)]
    ConfigMap(Box<ConfigMapError>),
    #[error("this build has no ConfigMap support (feature `configmap`)")]
    ConfigMapUnsupported,
}

#[cfg(feature = "configmap")]
impl From<ConfigMapError> for RunError {
    fn from(error: ConfigMapError) -> Self {
        RunError::ConfigMap(Box::new(error))
    }
}

/// Where the configuration comes from and how the process behaves.
#[derive(Debug, Clone)]
pub struct Options {
    pub config_file: Option<PathBuf>,
    /// A ConfigMap to watch.
    pub configmap: Option<ConfigMapOptions>,
    pub admin_addr: SocketAddr,
    pub poll_interval: Duration,
    /// Longest wait for open connections to finish after SIGTERM.
    pub drain_timeout: Duration,
    /// Time between failing readiness and closing the listener, so load balancers stop sending.
    pub drain_delay: Duration,
    /// Threads serving clients, each with its own runtime, listening socket (`SO_REUSEPORT`) and
    /// backend connections; the calling runtime is the first.
    pub workers: usize,
}

/// The ConfigMap to watch and how to reach the API server.
#[derive(Debug, Clone)]
pub struct ConfigMapOptions {
    /// `namespace/name`.
    pub reference: String,
    /// Key holding the JSON document.
    pub key: String,
    pub api: ApiServerOptions,
}

/// A started splitter.
pub struct Running {
    /// Where the proxy listens.
    pub addr: SocketAddr,
    /// Where the admin server listens.
    pub admin_addr: SocketAddr,
    store: Arc<ConfigStore>,
    admin: AdminState,
    connections: Arc<Connections>,
    shutdown: watch::Sender<bool>,
    reload_now: Arc<Notify>,
    config_file: Option<PathBuf>,
    file_lock: reload::FileLock,
    server: JoinHandle<()>,
    workers: Vec<std::thread::JoinHandle<()>>,
    /// Tells the extra workers' runtimes to stop once the drain is over.
    terminate: watch::Sender<bool>,
    background: Vec<JoinHandle<()>>,
    drain_timeout: Duration,
    drain_delay: Duration,
}

/// Starts everything and returns once the proxy is listening (and ready).
pub async fn start(options: Options) -> Result<Running, RunError> {
    let Options {
        config_file,
        configmap,
        admin_addr,
        poll_interval,
        drain_timeout,
        drain_delay,
        workers,
    } = options;
    if config_file.is_none() && configmap.is_none() {
        return Err(RunError::NoSource);
    }
    let workers = workers.max(1);
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let store = Arc::new(ConfigStore::with_workers(metrics.clone(), workers));
    let mut fingerprint = None;
    if let Some(path) = &config_file {
        let (read, outcome) = reload::load_file_with_fingerprint(&store, path);
        reload::log_outcome(crate::store::Source::File, &outcome);
        outcome.map_err(RunError::InitialConfig)?;
        fingerprint = read;
    }
    let (shutdown_sender, shutdown_receiver) = watch::channel(false);
    let mut background = Vec::new();

    let admin_listener = admin::bind(admin_addr).await?;
    let admin_addr = admin_listener.local_addr().unwrap_or(admin_addr);
    let config_store = store.clone();
    let admin = AdminState::new(registry).with_routes(Arc::new(move |path| match path {
        "/config" => Some((
            "application/json",
            config_store
                .current()
                .map_or_else(|| "null".to_owned(), |active| active.json.clone()),
        )),
        _ => None,
    }));
    background.push(tokio::spawn(admin::serve(admin_listener, admin.clone(), {
        let mut stop = shutdown_receiver.clone();
        async move {
            let _ = stop.wait_for(|stop| *stop).await;
        }
    })));

    if let Some(configmap) = configmap {
        background.push(start_configmap_watch(
            &store,
            configmap,
            shutdown_receiver.clone(),
        )?);
    }
    let Some(active) = store.wait_for_first().await else {
        return Err(RunError::NoSource);
    };

    let requested = active.config.listen;
    let bind_error = |source| RunError::Bind {
        addr: requested,
        source,
    };
    let mut sockets = bind_sockets(requested, workers).map_err(bind_error)?.into_iter();
    let first = sockets
        .next()
        .ok_or_else(|| bind_error(std::io::ErrorKind::AddrNotAvailable.into()))?;
    let addr = first.local_addr().unwrap_or(requested);
    let listener = first.listen(LISTEN_BACKLOG).map_err(bind_error)?;
    let acceptor = active.config.tls.as_ref().map(tls::acceptor).transpose()?;
    let limits = &active.config.limits;
    let mirror = MirrorQueue::start(
        limits.mirror_queue as usize,
        limits.mirror_in_flight as usize,
        metrics.clone(),
    );
    let readiness = Readiness::new(admin.clone(), metrics.accept_paused.clone());
    let connections = Connections::new(metrics.active_connections.clone(), readiness);
    let limit = Arc::new(Semaphore::new(limits.max_connections as usize));
    let shared = Arc::new(Shared {
        store: store.clone(),
        metrics,
        budget: RetryBudget::default(),
        mirror,
    });
    let server = tokio::spawn(server::serve(
        listener,
        shared.clone(),
        acceptor.clone(),
        limit.clone(),
        connections.clone(),
        shutdown_receiver.clone(),
    ));
    let (terminate, terminated) = watch::channel(false);
    let mut worker_threads = Vec::new();
    for (offset, socket) in sockets.enumerate() {
        let index = offset + 1;
        let worker = Worker {
            index,
            socket,
            shared: shared.clone(),
            tls: acceptor.clone(),
            limit: limit.clone(),
            connections: connections.clone(),
            shutdown: shutdown_receiver.clone(),
            terminated: terminated.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("splitter-worker-{index}"))
            .spawn(move || worker.run())
            .map_err(|source| RunError::Worker { index, source })?;
        worker_threads.push(thread);
    }
    let reload_now = Arc::new(Notify::new());
    let file_lock = reload::FileLock::default();
    if let Some(path) = &config_file {
        background.push(tokio::spawn(reload::watch_file(
            store.clone(),
            path.clone(),
            file_lock.clone(),
            fingerprint,
            poll_interval,
            reload_now.clone(),
            shutdown_receiver.clone(),
        )));
    }
    connections.readiness().set_serving(true);
    tracing::info!(
        %addr,
        %admin_addr,
        workers,
        generation = active.generation,
        tls = active.config.tls.is_some(),
        "Request splitter listening."
    );
    Ok(Running {
        addr,
        admin_addr,
        store,
        admin,
        connections,
        shutdown: shutdown_sender,
        reload_now,
        config_file,
        file_lock,
        server,
        workers: worker_threads,
        terminate,
        background,
        drain_timeout,
        drain_delay,
    })
}

/// Binds one listening socket per worker; with several, all on the same address with
/// `SO_REUSEPORT`, so that the kernel spreads new connections over the workers.
fn bind_sockets(addr: SocketAddr, count: usize) -> std::io::Result<Vec<TcpSocket>> {
    let mut addr = addr;
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        if count > 1 {
            socket.set_reuseport(true)?;
        }
        socket.bind(addr)?;
        // The first socket fixes the port when port 0 was asked for.
        addr = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// An extra worker: a thread with its own single-threaded runtime and listening socket.
struct Worker {
    index: usize,
    socket: TcpSocket,
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limit: Arc<Semaphore>,
    connections: Arc<Connections>,
    shutdown: watch::Receiver<bool>,
    terminated: watch::Receiver<bool>,
}

impl Worker {
    fn run(self) {
        let Worker {
            index,
            socket,
            shared,
            tls,
            limit,
            connections,
            shutdown,
            mut terminated,
        } = self;
        upstream::set_worker(index);
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(%error, worker = index, "Cannot start a worker's runtime; it serves nothing.");
                return;
            }
        };
        runtime.block_on(async move {
            match socket.listen(LISTEN_BACKLOG) {
                Ok(listener) => server::serve(listener, shared, tls, limit, connections, shutdown).await,
                Err(error) => {
                    tracing::error!(%error, worker = index, "A worker cannot listen; it serves nothing.");
                }
            }
            // The listener is closed; the runtime keeps running the worker's connections until the
            // drain is over.
            let _ = terminated.wait_for(|stop| *stop).await;
        });
    }
}

#[cfg(feature = "configmap")]
fn start_configmap_watch(
    store: &Arc<ConfigStore>,
    options: ConfigMapOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, RunError> {
    let ConfigMapOptions { reference, key, api } = options;
    let reference: ConfigMapRef = reference.parse()?;
    let client = configmap::client(&api)?;
    tracing::info!(
        configmap = %reference,
        key = %key,
        api_server = %client.authority(),
        "Watching a ConfigMap for configuration."
    );
    Ok(tokio::spawn(configmap::watch(
        client,
        store.clone(),
        reference,
        key,
        shutdown,
    )))
}

#[cfg(not(feature = "configmap"))]
fn start_configmap_watch(
    _store: &Arc<ConfigStore>,
    _options: ConfigMapOptions,
    _shutdown: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, RunError> {
    Err(RunError::ConfigMapUnsupported)
}

impl Running {
    /// The configuration store (for tests and tools).
    pub fn store(&self) -> &Arc<ConfigStore> {
        &self.store
    }

    /// Reads the configuration file now, as the poller would (one at a time with it), and returns
    /// the outcome.
    pub async fn reload_file(&self) -> Option<Result<Applied, ConfigError>> {
        let path = self.config_file.as_ref()?;
        let outcome = reload::reload_file(&self.store, path, &self.file_lock).await;
        reload::log_outcome(crate::store::Source::File, &outcome);
        Some(outcome)
    }

    /// Asks the file poller to reload at once (what SIGHUP does).
    pub fn trigger_reload(&self) {
        self.reload_now.notify_one();
    }

    /// Client connections open now, upgraded ones (tunnels) included.
    pub fn open_connections(&self) -> usize {
        self.connections.open()
    }

    /// The admin state behind `/readyz` and `/metrics`, for a caller in the same process that
    /// cannot open a connection (out of file descriptors).
    pub fn admin(&self) -> &AdminState {
        &self.admin
    }

    /// Drains: fails readiness, waits `drain_delay`, closes the listener, lets open connections
    /// finish for at most `drain_timeout`. Returns the connections still open at the deadline.
    pub async fn shutdown(self) -> usize {
        let Running {
            connections,
            shutdown,
            server,
            workers,
            terminate,
            background,
            drain_timeout,
            drain_delay,
            ..
        } = self;
        connections.readiness().set_serving(false);
        tokio::time::sleep(drain_delay).await;
        let _ = shutdown.send(true);
        let _ = server.await;
        let drained = tokio::time::timeout(drain_timeout, connections.all_closed()).await;
        // Tunnels are not waited for (see `Connections`).
        let left = connections.serving();
        match drained {
            Ok(()) => tracing::info!("Drained every connection."),
            Err(_) => tracing::warn!(
                open_connections = left,
                "Drain deadline reached; closing the rest."
            ),
        }
        let _ = terminate.send(true);
        let _ = tokio::task::spawn_blocking(move || {
            for worker in workers {
                let _ = worker.join();
            }
        })
        .await;
        for task in background {
            task.abort();
        }
        left
    }
}

/// Runs until SIGTERM or SIGINT, then drains. SIGHUP reloads the configuration file.
pub async fn run(options: Options) -> Result<(), RunError> {
    let running = start(options).await?;
    let hangup = spawn_hangup_listener(running.reload_now.clone());
    shutdown::signal().await;
    tracing::info!(
        open_connections = running.open_connections(),
        "Shutting down: draining connections."
    );
    hangup.abort();
    running.shutdown().await;
    Ok(())
}

fn spawn_hangup_listener(reload_now: Arc<Notify>) -> JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hangup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the configuration file.");
                reload_now.notify_one();
            }
        }
        #[cfg(not(unix))]
        drop(reload_now);
    })
}
