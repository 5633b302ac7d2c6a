//! Command line of `outrigger-health-adapter`, and the wiring: settings, the check loops, the
//! probe server, the admin server, signals.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use clap::Parser;
use outrigger_health_adapter::{
    metrics::Metrics,
    run::{self, Shared},
    server,
    settings::{Settings, SettingsError},
    state::Health,
};
use outrigger_sidecar_runtime::{
    admin::{self, AdminError, AdminState},
    args::{ApiServerArgs, LogArgs},
    events::{EventMetrics, Recorder},
    settings, shutdown,
    telemetry::TelemetryError,
};
use prometheus_client::registry::Registry;
use tracing::{info, warn};

/// Why the command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("reading {path}: {message}")]
    SidecarsDocument { path: PathBuf, message: String },
    #[error("binding the probe server to {address}: {source}")]
    Probe {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// The health adapter: checks the app and its dependencies and answers the kubelet's probes.
#[derive(Debug, Parser)]
#[command(name = "outrigger-health-adapter", version, about)]
pub struct Cli {
    /// Settings from the service's spec, a JSON object of strings (set by injection).
    #[arg(long, env = "OUTRIGGER_SETTINGS", default_value = "", hide_env_values = true)]
    settings: String,
    /// Directory of the service's mounted configuration; without `--settings`, this sidecar's
    /// entry of its `sidecars.json` gives the settings.
    #[arg(long, env = "OUTRIGGER_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// Address of the probe endpoints (`/livez`, `/readyz`, `/startupz`); wins over the
    /// `probeAddr` setting.
    #[arg(long, env = "OUTRIGGER_PROBE_ADDR")]
    probe_addr: Option<SocketAddr>,
    /// Address of the admin server (`/metrics`, `/healthz`, `/readyz` of the adapter itself).
    #[arg(long, env = "OUTRIGGER_ADMIN_ADDR", default_value = "0.0.0.0:9906")]
    admin_addr: SocketAddr,
    /// The API server Events are written to (in a pod, nothing to set).
    #[command(flatten)]
    api: ApiServerArgs,
    #[command(flatten)]
    log: LogArgs,
}

impl Cli {
    /// Runs until SIGTERM.
    pub async fn run(self) -> Result<(), CliError> {
        let Self {
            settings,
            config_dir,
            probe_addr,
            admin_addr,
            api,
            log,
        } = self;
        log.init()?;
        let settings = match settings_from_document(&settings, config_dir.as_deref())? {
            Some(map) => Settings::from_map(&map)?,
            None => Settings::from_json(&settings)?,
        };
        if !settings.unknown.is_empty() {
            warn!(keys = ?settings.unknown, "Ignoring settings this health adapter does not know.");
        }
        let probe_addr = probe_addr.unwrap_or(settings.probe_addr);
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let (events, poster) = Recorder::from_env(
            "outrigger-health-adapter",
            &api.into(),
            EventMetrics::register(registry.sub_registry_with_prefix("health_adapter")),
        );
        if let Some(poster) = poster {
            tokio::spawn(poster.run());
        }
        let admin_state = AdminState::new(registry);
        let admin_listener = admin::bind(admin_addr).await?;
        let probe_listener = tokio::net::TcpListener::bind(probe_addr)
            .await
            .map_err(|source| CliError::Probe {
                address: probe_addr,
                source,
            })?;
        let checks = settings.checks.len();
        let shared = Shared::new(Health::new(settings.checks), metrics, events);
        run::spawn_checks(&shared);
        // The adapter's own readiness says it serves probes, never the app's health: the app
        // waits for it (the wait-ready hook) and must not wait for itself.
        admin_state.set_ready(true);
        tokio::spawn(admin::serve(admin_listener, admin_state, shutdown::signal()));
        info!(probe = %probe_addr, admin = %admin_addr, checks, "Health adapter listening.");
        server::serve(probe_listener, shared, shutdown::signal()).await;
        info!("Health adapter stopped.");
        Ok(())
    }
}

/// This sidecar's settings from the mounted `sidecars.json`, when no settings were given and the
/// document is there.
fn settings_from_document(
    settings: &str,
    config_dir: Option<&Path>,
) -> Result<Option<BTreeMap<String, String>>, CliError> {
    let Some(dir) = config_dir.filter(|_| settings.trim().is_empty()) else {
        return Ok(None);
    };
    settings::from_sidecars_document(dir, "health-adapter").map_err(|error| CliError::SidecarsDocument {
        path: error.path,
        message: error.message,
    })
}
