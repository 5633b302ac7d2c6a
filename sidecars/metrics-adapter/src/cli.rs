//! Command line of `outrigger-metrics-adapter`, and the wiring: settings, the StatsD socket, the
//! HTTP server, signals.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use clap::Parser;
use outrigger_metrics_adapter::{
    adapter::Adapter,
    server,
    settings::{Settings, SettingsError},
    statsd::{self, Table},
};
use outrigger_sidecar_runtime::{
    admin::{self, AdminError, AdminState},
    args::LogArgs,
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
    #[error("binding the StatsD socket to {address}: {source}")]
    Statsd {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// The metrics adapter: Redis, JSON-over-HTTP, StatsD and Prometheus collectors on the pod's
/// loopback, served as one Prometheus endpoint.
#[derive(Debug, Parser)]
#[command(name = "outrigger-metrics-adapter", version, about)]
pub struct Cli {
    /// Settings from the service's spec, a JSON object of strings (set by injection).
    #[arg(long, env = "OUTRIGGER_SETTINGS", default_value = "", hide_env_values = true)]
    settings: String,
    /// Directory of the service's mounted configuration; without `--settings`, this sidecar's
    /// entry of its `sidecars.json` gives the settings.
    #[arg(long, env = "OUTRIGGER_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// Address of the HTTP server (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "OUTRIGGER_ADMIN_ADDR", default_value = "0.0.0.0:9905")]
    admin_addr: SocketAddr,
    #[command(flatten)]
    log: LogArgs,
}

impl Cli {
    /// Runs until SIGTERM.
    pub async fn run(self) -> Result<(), CliError> {
        let Self {
            settings,
            config_dir,
            admin_addr,
            log,
        } = self;
        log.init()?;
        let settings = match settings_from_document(&settings, config_dir.as_deref())? {
            Some(map) => Settings::from_map(&map)?,
            None => Settings::from_json(&settings)?,
        };
        if !settings.unknown.is_empty() {
            warn!(keys = ?settings.unknown, "Ignoring settings this metrics adapter does not know.");
        }
        let table = match &settings.statsd {
            Some(statsd_settings) => {
                let socket = tokio::net::UdpSocket::bind(statsd_settings.listen)
                    .await
                    .map_err(|source| CliError::Statsd {
                        address: statsd_settings.listen,
                        source,
                    })?;
                let table = Arc::new(Mutex::new(Table::new(
                    statsd_settings.mapper.clone(),
                    statsd_settings.buckets.clone(),
                    statsd_settings.max_series,
                )));
                tokio::spawn(statsd::serve(socket, table.clone()));
                Some(table)
            }
            None => None,
        };
        let adapter = Arc::new(Adapter::new(&settings, table));
        // The adapter's own metrics are part of every scrape; the admin registry stays empty.
        let admin_state = AdminState::new(Registry::default());
        let listener = admin::bind(admin_addr).await?;
        admin_state.set_ready(true);
        info!(
            address = %admin_addr,
            redis = ?settings.redis,
            json = settings.json.len(),
            prometheus = settings.prometheus.len(),
            statsd = ?settings.statsd.as_ref().map(|s| s.listen),
            "Metrics adapter listening."
        );
        server::serve(listener, adapter, admin_state, shutdown::signal()).await;
        info!("Metrics adapter stopped.");
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
    settings::from_sidecars_document(dir, "metrics-adapter").map_err(|error| CliError::SidecarsDocument {
        path: error.path,
        message: error.message,
    })
}
