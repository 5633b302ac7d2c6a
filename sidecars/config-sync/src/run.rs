//! Wiring over the sidecar runtime: the settings, the admin server, one watch per named object
//! feeding the engine, the pod annotation the outcomes go to, and the stop on SIGTERM.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use outrigger_contract::config_sync::{
    ConfigSyncSettings, ConfigSyncStatus, SettingsError, STATUS_ANNOTATION,
};
use outrigger_sidecar_runtime::{
    admin::{self, AdminError, AdminState},
    apiserver::{
        watcher::Event, Api, ApiClient, ApiError, ApiServerOptions, ConfigMap, Secret, Selector, WatchError,
        Watcher,
    },
    encode::percent_encode,
    metrics::{self, WatchMetrics},
    shutdown,
};
use tokio::sync::watch;

use crate::{
    engine::{Engine, Mailbox, Reporter},
    metrics::Metrics,
    sources::{Kind, Seen, Update},
    writer::{AtomicWriter, FileSet},
};

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("connecting to the Kubernetes API: {0}")]
    ApiClient(#[source] ApiError),
}

impl RunError {
    pub fn category(&self) -> &'static str {
        match self {
            RunError::Settings(_) => "settings",
            RunError::Admin(_) => "admin",
            RunError::ApiClient(_) => "api",
        }
    }
}

/// What the command line resolved to.
#[derive(Debug, Clone)]
pub struct Options {
    pub settings: String,
    pub dir: PathBuf,
    pub namespace: String,
    pub pod_name: Option<String>,
    pub admin_addr: SocketAddr,
    pub api: ApiServerOptions,
}

/// Runs until SIGTERM.
pub async fn run(options: Options) -> Result<(), RunError> {
    let Options {
        settings,
        dir,
        namespace,
        pod_name,
        admin_addr,
        api,
    } = options;
    let settings = Arc::new(ConfigSyncSettings::from_json(&settings)?);
    let mut registry = metrics::registry("outrigger_config_sync");
    let metrics = Metrics::register(&mut registry);
    let watch_metrics = WatchMetrics::register(&mut registry);
    let client = ApiClient::new(&api)
        .map_err(RunError::ApiClient)?
        .with_user_agent(concat!("outrigger-config-sync/", env!("CARGO_PKG_VERSION")));

    let last_status: Arc<Mutex<Option<ConfigSyncStatus>>> = Arc::default();
    let view = {
        let settings = settings.clone();
        let last_status = last_status.clone();
        Arc::new(move || {
            let status = last_status.lock().unwrap_or_else(PoisonError::into_inner).clone();
            serde_json::to_string_pretty(&serde_json::json!({"settings": *settings, "status": status}))
                .unwrap_or_default()
        })
    };
    let admin_state = AdminState::new(registry).with_config(view);
    let listener = admin::bind(admin_addr).await?;
    let (stop, stopped) = watch::channel(false);
    let admin_task = {
        let admin_state = admin_state.clone();
        let mut stopped = stopped.clone();
        tokio::spawn(admin::serve(listener, admin_state, async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }))
    };

    let mailbox = Arc::new(Mailbox::default());
    let mut tasks = Vec::new();
    for name in &settings.config_maps {
        let watcher = Watcher::new(
            Api::configmaps(client.clone(), &namespace),
            Selector::Named(name.clone()),
        )
        .with_metrics(watch_metrics.clone());
        let (events, refusals) = (mailbox.clone(), mailbox.clone());
        let (name, refused) = (name.clone(), name.clone());
        tasks.push(tokio::spawn(watcher.run_with_failures(
            move |event| events.post(update(Kind::ConfigMap, &name, event, configmap_files)),
            move |error| post_refusal(&refusals, Kind::ConfigMap, &refused, error),
            stopped.clone(),
        )));
    }
    for name in &settings.secrets {
        let watcher = Watcher::new(
            Api::secrets(client.clone(), &namespace),
            Selector::Named(name.clone()),
        )
        .with_metrics(watch_metrics.clone());
        let (events, refusals) = (mailbox.clone(), mailbox.clone());
        let (name, refused) = (name.clone(), name.clone());
        tasks.push(tokio::spawn(watcher.run_with_failures(
            move |event| events.post(update(Kind::Secret, &name, event, secret_files)),
            move |error| post_refusal(&refusals, Kind::Secret, &refused, error),
            stopped.clone(),
        )));
    }

    if let Some(name) = &settings.rollout_config_map {
        let watcher = Watcher::new(
            Api::configmaps(client.clone(), &namespace),
            Selector::Named(name.clone()),
        )
        .with_metrics(watch_metrics.clone());
        let (events, refusals) = (mailbox.clone(), mailbox.clone());
        let (name, refused) = (name.clone(), name.clone());
        tasks.push(tokio::spawn(watcher.run_with_failures(
            move |event| events.post(update(Kind::Rollout, &name, event, configmap_files)),
            move |error| post_refusal(&refusals, Kind::Rollout, &refused, error),
            stopped.clone(),
        )));
    }

    let reporter = PodAnnotation {
        client,
        pod_path: pod_name.as_ref().map(|pod| {
            format!(
                "/api/v1/namespaces/{}/pods/{}",
                percent_encode(&namespace),
                percent_encode(pod)
            )
        }),
        last_status,
    };
    let engine = Engine::new(
        settings.clone(),
        pod_name.clone(),
        AtomicWriter::new(dir, settings.file_mode),
        admin_state.clone(),
        metrics,
        reporter,
    );
    tracing::info!(
        config_maps = ?settings.config_maps,
        secrets = ?settings.secrets,
        rollout = ?settings.rollout_config_map,
        "Watching the sources."
    );
    let engine_task = tokio::spawn(engine.run(mailbox, stopped));

    shutdown::signal().await;
    tracing::info!("Stopping.");
    admin_state.set_ready(false);
    let _ = stop.send(true);
    for task in tasks {
        let _ = task.await;
    }
    let _ = engine_task.await;
    let _ = admin_task.await;
    Ok(())
}

/// A watch event as the engine's update for one named object.
fn update<K>(kind: Kind, name: &str, event: Event<K>, files: fn(&K) -> FileSet) -> Update {
    let seen = match event {
        Event::Restarted(objects) => objects
            .first()
            .map_or(Seen::Absent, |object| Seen::Present(files(object))),
        Event::Applied(object) => Seen::Present(files(&object)),
        Event::Deleted(_) => Seen::Absent,
    };
    Update {
        kind,
        name: name.to_owned(),
        seen,
    }
}

/// A refused read or watch is news for the engine (the object cannot be read, and why); other
/// failures are only retried. The watcher reads again after a refusal, so access granted later
/// arrives as a fresh read.
fn post_refusal(mailbox: &Mailbox, kind: Kind, name: &str, error: &WatchError) {
    if !error.is_denied() {
        return;
    }
    let why = match error {
        WatchError::Api {
            source: ApiError::Status { details, .. },
            ..
        }
        | WatchError::Status { status: details, .. } => details.to_string(),
        other => other.to_string(),
    };
    mailbox.post(Update {
        kind,
        name: name.to_owned(),
        seen: Seen::Unreadable(why),
    });
}

fn configmap_files(configmap: &ConfigMap) -> FileSet {
    configmap
        .data
        .iter()
        .flatten()
        .map(|(key, value)| (key.clone(), value.clone().into_bytes()))
        .collect()
}

fn secret_files(secret: &Secret) -> FileSet {
    secret
        .data
        .iter()
        .flatten()
        .filter_map(|(key, _)| match secret.decoded(key) {
            Some(value) => Some((key.clone(), value)),
            None => {
                tracing::warn!(key = %key, "A Secret value is not valid base64; leaving it out.");
                None
            }
        })
        .collect()
}

/// Reports each outcome in the pod's annotation, where the operator reads it into the owner's
/// status, condition and Events.
struct PodAnnotation {
    client: ApiClient,
    pod_path: Option<String>,
    last_status: Arc<Mutex<Option<ConfigSyncStatus>>>,
}

/// Attempts at writing one status.
const PATCH_ATTEMPTS: u32 = 3;

impl Reporter for PodAnnotation {
    async fn report(&mut self, status: &ConfigSyncStatus) {
        *self.last_status.lock().unwrap_or_else(PoisonError::into_inner) = Some(status.clone());
        let Some(path) = &self.pod_path else {
            return;
        };
        let Ok(text) = serde_json::to_string(status) else {
            return;
        };
        let patch = serde_json::json!({"metadata": {"annotations": {STATUS_ANNOTATION: text}}});
        for attempt in 1..=PATCH_ATTEMPTS {
            match self.client.merge_patch(path, &patch).await {
                Ok(()) => return,
                Err(error) if attempt < PATCH_ATTEMPTS => {
                    tracing::debug!(%error, attempt, "Writing the status annotation failed; retrying.");
                    tokio::time::sleep(Duration::from_millis(500) * attempt).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "Writing the status annotation failed; the next outcome will try again.");
                }
            }
        }
    }
}
