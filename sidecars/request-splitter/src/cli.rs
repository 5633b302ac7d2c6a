//! Command line of `outrigger-request-splitter`.

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;
use outrigger_sidecar_common::telemetry::{self, LogFormat, TelemetryError};

use crate::{
    apiserver::ApiServerOptions,
    config::ConfigDuration,
    run::{run, ConfigMapOptions, Options, RunError},
};

/// File name of the configuration inside `--config-dir` (the key in the injected ConfigMap).
pub const INJECTED_CONFIG_KEY: &str = "request-splitter.json";

/// Why the command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    #[error("starting the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Run(#[from] RunError),
}

/// The request-splitting ambassador: weighted, sticky, header-routed and mirrored HTTP splitting
/// across named backends.
#[derive(Debug, Parser)]
#[command(name = "outrigger-request-splitter", version, about)]
pub struct Cli {
    /// Configuration file (JSON), re-read when it changes.
    #[arg(long, env = "OUTRIGGER_SPLITTER_CONFIG")]
    config: Option<PathBuf>,
    /// Directory of the sidecar configuration mounted by injection; without --config,
    /// `<dir>/request-splitter.json` is the configuration file when it exists.
    #[arg(long, env = "OUTRIGGER_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// Also watch this ConfigMap (`namespace/name`); its key is merged over the file.
    #[arg(long, env = "OUTRIGGER_SPLITTER_CONFIGMAP")]
    configmap: Option<String>,
    /// Key of the ConfigMap that holds the JSON document.
    #[arg(
        long,
        env = "OUTRIGGER_SPLITTER_CONFIGMAP_KEY",
        default_value = "request-splitter.json"
    )]
    configmap_key: String,
    #[command(flatten)]
    api: ApiArgs,
    /// Address of the admin server (`/metrics`, `/healthz`, `/readyz`, `/config`).
    #[arg(long, env = "OUTRIGGER_ADMIN_ADDR", default_value = "0.0.0.0:9901")]
    admin_addr: SocketAddr,
    /// Threads serving clients, each with its own runtime, listening socket and backend
    /// connections (like nginx's worker processes); 1 runs everything on one thread.
    #[arg(long, env = "OUTRIGGER_SPLITTER_WORKERS", default_value_t = 1)]
    workers: usize,
    /// How often the configuration file is checked for changes.
    #[arg(long, env = "OUTRIGGER_SPLITTER_CONFIG_POLL", default_value = "2s")]
    config_poll_interval: ConfigDuration,
    /// Longest wait for open connections after SIGTERM.
    #[arg(long, env = "OUTRIGGER_SPLITTER_DRAIN_TIMEOUT", default_value = "25s")]
    drain_timeout: ConfigDuration,
    /// Wait between failing readiness and closing the listener after SIGTERM.
    #[arg(long, env = "OUTRIGGER_SPLITTER_DRAIN_DELAY", default_value = "0s")]
    drain_delay: ConfigDuration,
    /// Log filter, in RUST_LOG syntax (`access=off` silences the access log).
    #[arg(long, env = "OUTRIGGER_LOG", default_value = "info")]
    log: String,
    /// Log format: `json` or `text`.
    #[arg(long, env = "OUTRIGGER_LOG_FORMAT", default_value = "json")]
    log_format: LogFormat,
}

/// How the ConfigMap watch reaches the Kubernetes API. In a pod none is needed: the API server,
/// token and CA come from the service account.
#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// API server URL (`https://host:port`); default
    /// `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`.
    #[arg(long, env = "OUTRIGGER_SPLITTER_API_SERVER")]
    api_server: Option<String>,
    /// File holding the bearer token, read again every minute and after a 401; default the
    /// service account's token.
    #[arg(long, env = "OUTRIGGER_SPLITTER_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
    /// PEM CA bundle that signs the API server's certificate; default the service account's
    /// `ca.crt`.
    #[arg(long, env = "OUTRIGGER_SPLITTER_API_CA_FILE")]
    api_ca_file: Option<PathBuf>,
}

impl From<ApiArgs> for ApiServerOptions {
    fn from(args: ApiArgs) -> Self {
        let ApiArgs {
            api_server,
            api_token_file,
            api_ca_file,
        } = args;
        ApiServerOptions {
            server: api_server,
            token_file: api_token_file,
            ca_file: api_ca_file,
        }
    }
}

impl Cli {
    /// Runs the splitter until SIGTERM.
    pub fn run(self) -> Result<(), CliError> {
        let Self {
            config,
            config_dir,
            configmap,
            configmap_key,
            api,
            admin_addr,
            workers,
            config_poll_interval,
            drain_timeout,
            drain_delay,
            log,
            log_format,
        } = self;
        telemetry::init(&log, log_format)?;
        let config = config.or_else(|| {
            config_dir
                .map(|dir| dir.join(INJECTED_CONFIG_KEY))
                .filter(|path| path.exists())
        });
        let options = Options {
            config_file: config,
            configmap: configmap.map(|reference| ConfigMapOptions {
                reference,
                key: configmap_key,
                api: api.into(),
            }),
            admin_addr,
            poll_interval: config_poll_interval.0,
            drain_timeout: drain_timeout.0,
            drain_delay: drain_delay.0,
            workers,
        };
        // The first worker is this thread; `run` starts the others, each with a runtime of its own.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CliError::Runtime)?;
        runtime.block_on(run(options))?;
        Ok(())
    }
}
