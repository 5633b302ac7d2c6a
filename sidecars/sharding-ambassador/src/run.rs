//! Wires the ambassador over the sidecar runtime: the shard map from the runtime's config source (a
//! mounted file and/or a watched ConfigMap key, the last good map kept), the admin server with
//! `/config`, the client listener and the drain on SIGTERM.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use outrigger_contract::shard_map::ShardMap;
use outrigger_sidecar_runtime::{
    admin::{self, AdminError, AdminState},
    apiserver::{resource::ObjectRefError, ApiClient, ApiError, ApiServerOptions, ObjectRef},
    config::{
        self,
        layers::{self, ConfigMapSpec, LayerOptions, StartError},
        BoxError, ConfigSource, Versioned,
    },
    metrics::{ReloadMetrics, WatchMetrics},
    shutdown::{self, DrainTiming},
};
use prometheus_client::registry::Registry;
use tokio::{
    net::TcpListener,
    sync::{watch, Notify},
};
use tracing::{info, warn};

use crate::{
    auth::SecretFollower,
    cli::ShardArgs,
    metrics::Metrics,
    server::{self, ServerLimits},
    shard::ShardSettings,
    shardmap,
    topology::Topology,
    workers::{Follower, WorkerError, Workers},
};

/// Why the ambassador could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("neither a shard map file nor a ConfigMap was given")]
    NoSource,
    #[error("the shard map file is not usable: {0}")]
    InitialMap(#[source] config::ReloadError),
    #[error("a ConfigMap is named namespace/name: {0}")]
    ConfigMapReference(#[source] ObjectRefError),
    #[error("connecting to the Kubernetes API: {0}")]
    ApiClient(#[source] Box<ApiError>),
    #[error(transparent)]
    Workers(#[from] WorkerError),
}

/// Where the shard map comes from and how the process behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where clients connect.
    pub listen: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The shard map file, if any.
    pub file: Option<PathBuf>,
    /// The shard map's ConfigMap, if any; merged over the file.
    pub configmap: Option<ConfigMapOptions>,
    /// How often the file is checked.
    pub poll_interval: Duration,
    pub shards: ShardArgs,
    pub drain: DrainTiming,
}

/// The ConfigMap to watch and how to reach the API server.
#[derive(Debug, Clone)]
pub struct ConfigMapOptions {
    /// `namespace/name`.
    pub reference: String,
    /// Key holding the shard map.
    pub key: String,
    pub api: ApiServerOptions,
}

/// Runs the ambassador until SIGINT or SIGTERM, then drains.
pub async fn run(options: Options) -> Result<(), RunError> {
    let Options {
        listen,
        admin_addr,
        file,
        configmap,
        poll_interval,
        shards,
        drain,
    } = options;
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let own = registry.sub_registry_with_prefix("outrigger_sharding");
    let documents = Arc::new(ConfigSource::new(ReloadMetrics::register(own), |value| {
        let map: ShardMap = config::deserialize(value)?;
        shardmap::validate(&map)?;
        Ok::<_, BoxError>(map)
    }));
    let configmap = configmap
        .map(|options| configmap_spec(options, own))
        .transpose()?;
    // The password Secret the map names is read like the map: same client, same namespace.
    let secret_api = configmap
        .as_ref()
        .map(|spec| (spec.client.clone(), spec.reference.namespace.clone()));

    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| RunError::Listen {
            address: listen,
            source,
        })?;
    let admin_listener = admin::bind(admin_addr).await?;
    let admin_state = AdminState::new(registry).with_config(Arc::new({
        let documents = documents.clone();
        move || documents.status_json()
    }));

    let (stop, stopped) = watch::channel(false);
    let reload_now = Arc::new(Notify::new());
    let layers = LayerOptions {
        file: file.clone(),
        configmap,
        poll_interval,
    };
    let started = layers::start(&documents, layers, reload_now.clone(), stopped)
        .await
        .map_err(|error| match error {
            StartError::NoSource => RunError::NoSource,
            StartError::InitialFile(error) => RunError::InitialMap(error),
        })?;
    let hangup = shutdown::reload_on_hangup(reload_now);

    let (password, passwords) = watch::channel(None);
    let settings = Arc::new(ShardSettings {
        password: passwords,
        ..shards.shard_settings(&metrics)
    });
    // One watch of the password Secret for the whole process, apart from the topologies: every
    // worker's shard connections read the password from the shared `settings`.
    let password_follower = tokio::spawn(follow_password(
        documents.subscribe(),
        SecretFollower::new(secret_api, password, metrics.clone()),
    ));
    // Every worker follows the shard map and builds its own topology (the previous ring of a
    // reshard included), with its own connections.
    let follower: Follower = {
        let (documents, admin_state) = (documents.clone(), admin_state.clone());
        Arc::new(move |topology| {
            Box::pin(follow_shard_map(
                documents.subscribe(),
                settings.clone(),
                topology,
                admin_state.clone(),
            ))
        })
    };
    let workers = Workers::start(shards.worker_count(), &follower)?;
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        admin_state.clone(),
        shutdown::signal(),
    ));
    info!(%listen, admin = %admin_addr, file = ?file, workers = workers.len(), "Sharding ambassador listening.");

    let draining = {
        let (admin_state, workers) = (admin_state.clone(), &workers);
        async move {
            shutdown::signal().await;
            info!("Shutting down: draining clients.");
            // The map stops changing readiness before the drain fails it.
            workers.stop_following();
            admin_state.set_ready(false);
            tokio::time::sleep(drain.delay).await;
        }
    };
    let limits = ServerLimits {
        max_clients: shards.max_clients,
        drain: drain.timeout,
    };
    let http = server::HttpMode {
        documents: documents.subscribe(),
        settings: Arc::new(shards.http_settings(&metrics)),
    };
    server::serve_on_workers(
        listener,
        &workers,
        Arc::new(shards.client_settings(&metrics)),
        http,
        limits,
        draining,
    )
    .await;
    let _ = stop.send(true);
    hangup.abort();
    password_follower.abort();
    admin_task.abort();
    for task in started.tasks {
        let _ = task.await;
    }
    info!("Sharding ambassador stopped.");
    Ok(())
}

fn configmap_spec(options: ConfigMapOptions, registry: &mut Registry) -> Result<ConfigMapSpec, RunError> {
    let ConfigMapOptions { reference, key, api } = options;
    let reference: ObjectRef = reference.parse().map_err(RunError::ConfigMapReference)?;
    let client = ApiClient::new(&api)
        .map_err(|error| RunError::ApiClient(Box::new(error)))?
        .with_user_agent(concat!(
            "outrigger-sharding-ambassador/",
            env!("CARGO_PKG_VERSION")
        ));
    Ok(ConfigMapSpec {
        reference,
        key,
        client,
        metrics: WatchMetrics::register(registry),
    })
}

/// Builds a topology from every accepted shard map, keeping the connections of shards whose name
/// and primary did not change, so a new map never drops the other shards' clients. Ready while a
/// map with at least one shard is in force.
async fn follow_shard_map(
    mut documents: watch::Receiver<Option<Arc<Versioned<ShardMap>>>>,
    settings: Arc<ShardSettings>,
    topology: watch::Sender<Arc<Topology>>,
    admin: AdminState,
) {
    loop {
        let accepted = documents.borrow_and_update().clone();
        if let Some(accepted) = accepted {
            // Validated when accepted; validating again only turns the document into a ring.
            match shardmap::validate(&accepted.document) {
                Ok(spec) => {
                    let next = Topology::build(&spec, &topology.borrow(), &settings);
                    let (shards, previous_shards) = (next.shards().len(), next.previous_shards());
                    let gauge = |count: usize| i64::try_from(count).unwrap_or(i64::MAX);
                    settings.metrics.shards.set(gauge(shards));
                    settings.metrics.previous_shards.set(gauge(previous_shards));
                    settings
                        .metrics
                        .set_shards_in_force(spec.shards.iter().map(|shard| shard.name.clone()));
                    // Clients pick the new topology up at their next command; commands already
                    // sent keep the handles they were given, so a swap drops nothing in flight.
                    topology.send_replace(Arc::new(next));
                    admin.set_ready(shards > 0);
                    info!(
                        generation = accepted.generation,
                        shards, previous_shards, "Shard map in force."
                    );
                }
                Err(error) => {
                    warn!(%error, category = error.category(), "Shard map accepted but not routable; keeping the last one.");
                }
            }
        }
        if documents.changed().await.is_err() {
            return;
        }
    }
}

/// Follows the password Secret each accepted shard map names (the watch restarts when the map
/// names another one, and stops when it names none).
async fn follow_password(
    mut documents: watch::Receiver<Option<Arc<Versioned<ShardMap>>>>,
    mut secrets: SecretFollower,
) {
    loop {
        let accepted = documents.borrow_and_update().clone();
        if let Some(accepted) = accepted {
            secrets.follow(accepted.document.auth.as_ref());
        }
        if documents.changed().await.is_err() {
            return;
        }
    }
}
