//! Wires the splitter together: configuration sources, the admin server, the proxy listener, the
//! mirror queue, reloads and the drain on shutdown.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

#[cfg(feature = "configmap")]
use outrigger_sidecar_runtime::metrics::WatchMetrics;
use outrigger_sidecar_runtime::{
    admin::{self, AdminError, AdminState},
    apiserver::{resource::ObjectRefError, ApiError, ApiServerOptions},
    config::{
        file::FileLayer,
        layers::{self, ConfigMapSpec, LayerOptions, StartError, Started},
        log_outcome, Applied, ReloadError, Source,
    },
    shutdown::{self, DrainTiming},
};
use outrigger_sidecar_runtime::{
    apiserver::{ApiClient, ObjectRef},
    events::{EventMetrics, Recorder},
};
use prometheus_client::registry::Registry;
use tokio::{
    net::TcpSocket,
    sync::{watch, Notify, Semaphore},
    task::JoinHandle,
};

use crate::{
    cache::{Cache, CacheMetrics},
    certificates::{self, TlsMetrics},
    config::SplitterConfig,
    discovery,
    metrics::Metrics,
    routing::{health::RetryBudget, hold::HoldQueue},
    store::ConfigStore,
    transport::mirror::MirrorQueue,
    transport::proxy::Shared,
    transport::server::{self, Connections, Readiness},
    transport::tls::{self, Certificates, TlsError},
    transport::upstream,
};

/// Pending connections the kernel queues per listening socket.
const LISTEN_BACKLOG: u32 = 1024;

/// Why the splitter could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("neither a configuration file nor a ConfigMap was given")]
    NoSource,
    #[error("the configuration file is not usable: {0}")]
    InitialConfig(#[source] ReloadError),
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
    #[error("a ConfigMap is named namespace/name: {0}")]
    ConfigMapReference(#[source] ObjectRefError),
    #[error("connecting to the Kubernetes API: {0}")]
    ApiClient(#[source] Box<ApiError>),
    #[error("this build has no ConfigMap support (feature `configmap`)")]
    ConfigMapUnsupported,
    #[error("tls.secret is not namespace/name: {0}")]
    TlsSecretReference(#[source] ObjectRefError),
    #[error("tls.secret needs the Kubernetes API: run with --configmap")]
    TlsSecretWithoutApi,
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
    file: Option<FileLayer<SplitterConfig>>,
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
    let workers = workers.max(1);
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let cache = Cache::new(CacheMetrics::register(&mut registry));
    let tls_metrics = TlsMetrics::register(&mut registry);
    let event_metrics = EventMetrics::register(registry.sub_registry_with_prefix("outrigger_splitter"));
    let api_options = configmap.as_ref().map(|configmap| configmap.api.clone());
    let store = Arc::new(ConfigStore::with_workers(metrics.clone(), workers));
    let (shutdown_sender, shutdown_receiver) = watch::channel(false);
    let reload_now = Arc::new(Notify::new());
    let configmap = configmap
        .map(|configmap| configmap_spec(configmap, &mut registry))
        .transpose()?;
    // Backends that discover their pods read EndpointSlices with the ConfigMap's client.
    let discovery = discovery::start(
        configmap.as_ref().map(|spec| spec.client.clone()),
        store.discovered(),
        store.discovered_services(),
        {
            let store = store.clone();
            Arc::new(move || store.refresh_endpoints())
        },
        shutdown_receiver.clone(),
    );
    let layers = LayerOptions {
        file: config_file,
        configmap,
        poll_interval,
    };
    let Started {
        file,
        tasks: mut background,
    } = layers::start(
        store.source(),
        layers,
        reload_now.clone(),
        shutdown_receiver.clone(),
    )
    .await
    .map_err(|error| {
        discovery.abort();
        match error {
            StartError::NoSource => RunError::NoSource,
            StartError::InitialFile(error) => RunError::InitialConfig(error),
        }
    })?;
    background.push(discovery);

    let admin_listener = admin::bind(admin_addr).await?;
    let admin_addr = admin_listener.local_addr().unwrap_or(admin_addr);
    let source = store.source().clone();
    let admin = AdminState::new(registry)
        .with_config(Arc::new(move || source.status_json()))
        .with_actions(purge_action(cache.clone()));
    background.push(tokio::spawn(admin::serve(admin_listener, admin.clone(), {
        let mut stop = shutdown_receiver.clone();
        async move {
            let _ = stop.wait_for(|stop| *stop).await;
        }
    })));

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
    let acceptor = match &active.config.tls {
        Some(config) => {
            let certificates = Certificates::new();
            match &config.secret {
                None => certificates.set(tls::from_files(config)?),
                Some(reference) => {
                    let reference: ObjectRef = reference.parse().map_err(RunError::TlsSecretReference)?;
                    let api = api_options.as_ref().ok_or(RunError::TlsSecretWithoutApi)?;
                    let client = ApiClient::new(api)
                        .map_err(|error| RunError::ApiClient(Box::new(error)))?
                        .with_user_agent(concat!("outrigger-request-splitter/", env!("CARGO_PKG_VERSION")));
                    let (events, poster) =
                        Recorder::from_env("outrigger-request-splitter", api, event_metrics.clone());
                    background.extend(poster.map(|poster| tokio::spawn(poster.run())));
                    background.push(certificates::watch_secret(
                        client,
                        reference,
                        certificates.clone(),
                        tls_metrics.clone(),
                        events,
                        shutdown_receiver.clone(),
                    ));
                }
            }
            Some(tls::acceptor(certificates)?)
        }
        None => None,
    };
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
        hold: HoldQueue::new(&metrics),
        metrics,
        budget: RetryBudget::default(),
        mirror,
        cache,
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
        file,
        server,
        workers: worker_threads,
        terminate,
        background,
        drain_timeout,
        drain_delay,
    })
}

/// `POST /cache/purge` removes every cached response, `POST /cache/purge/<path prefix>` those whose
/// path starts with `/<path prefix>`.
fn purge_action(cache: Arc<Cache>) -> admin::ExtraRoutes {
    Arc::new(move |path: &str| {
        let prefix = path.strip_prefix("/cache/purge")?;
        if !(prefix.is_empty() || prefix.starts_with('/')) {
            return None;
        }
        let purged = cache.purge(prefix);
        tracing::info!(prefix, purged, "Purged the cache.");
        Some(("application/json", format!("{{\"purged\":{purged}}}\n")))
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
fn configmap_spec(options: ConfigMapOptions, registry: &mut Registry) -> Result<ConfigMapSpec, RunError> {
    let ConfigMapOptions { reference, key, api } = options;
    let reference: ObjectRef = reference.parse().map_err(RunError::ConfigMapReference)?;
    let client = ApiClient::new(&api)
        .map_err(|error| RunError::ApiClient(Box::new(error)))?
        .with_user_agent(concat!("outrigger-request-splitter/", env!("CARGO_PKG_VERSION")));
    let metrics = WatchMetrics::register(registry.sub_registry_with_prefix("outrigger_splitter"));
    Ok(ConfigMapSpec {
        reference,
        key,
        client,
        metrics,
    })
}

#[cfg(not(feature = "configmap"))]
fn configmap_spec(_options: ConfigMapOptions, _registry: &mut Registry) -> Result<ConfigMapSpec, RunError> {
    Err(RunError::ConfigMapUnsupported)
}

impl Running {
    /// The configuration store (for tests and tools).
    pub fn store(&self) -> &Arc<ConfigStore> {
        &self.store
    }

    /// Reads the configuration file now, as the poller would (one at a time with it), and returns
    /// the outcome.
    pub async fn reload_file(&self) -> Option<Result<Applied, ReloadError>> {
        let (_, outcome) = self.file.as_ref()?.reload().await;
        log_outcome(Source::File, &outcome);
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
            admin,
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
        // Readiness fails first through the splitter's own flag, so that an accept pause ending
        // during the drain cannot make the splitter ready again.
        connections.readiness().set_serving(false);
        let timing = DrainTiming {
            delay: drain_delay,
            timeout: drain_timeout,
        };
        let close = async {
            let _ = shutdown.send(true);
            let _ = server.await;
        };
        let drained = shutdown::drain(&admin, timing, close, connections.all_closed()).await;
        // Tunnels are not waited for (see `Connections`).
        let left = connections.serving();
        if !drained {
            tracing::warn!(
                open_connections = left,
                "Connections still open at the drain deadline."
            );
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
    let hangup = shutdown::reload_on_hangup(running.reload_now.clone());
    shutdown::signal().await;
    tracing::info!(
        open_connections = running.open_connections(),
        "Shutting down: draining connections."
    );
    hangup.abort();
    running.shutdown().await;
    Ok(())
}
