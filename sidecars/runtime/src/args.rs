//! The command-line groups every sidecar flattens into its own `Parser`, each flag with an `env`
//! fallback:
//!
//! | group | flags | environment |
//! |---|---|---|
//! | [`LogArgs`] | `--log`, `--log-format` | `OUTRIGGER_LOG`, `OUTRIGGER_LOG_FORMAT` |
//! | [`AdminArgs`] | `--admin-addr` | `OUTRIGGER_ADMIN_ADDR` |
//! | [`ApiServerArgs`] | `--api-server`, `--api-token-file`, `--api-ca-file` | `OUTRIGGER_API_SERVER`, `OUTRIGGER_API_TOKEN_FILE`, `OUTRIGGER_API_CA_FILE` |
//! | [`ConfigSourceArgs`] | `--config`, `--config-dir`, `--configmap`, `--configmap-key`, `--config-poll-interval` | `OUTRIGGER_CONFIG`, `OUTRIGGER_CONFIG_DIR`, `OUTRIGGER_CONFIGMAP`, `OUTRIGGER_CONFIGMAP_KEY`, `OUTRIGGER_CONFIG_POLL` |
//! | [`DrainArgs`] | `--drain-delay`, `--drain-timeout` | `OUTRIGGER_DRAIN_DELAY`, `OUTRIGGER_DRAIN_TIMEOUT` |
//!
//! What injection sets for every sidecar of a pod (log, admin address, config dir) keeps one name.
//! What belongs to one sidecar can carry its name: [`with_env_prefix`] renames the variables of
//! [`PER_BINARY_ENV`] from `OUTRIGGER_X` to `OUTRIGGER_<BINARY>_X` (the request splitter reads
//! `OUTRIGGER_SPLITTER_CONFIGMAP`, `OUTRIGGER_SPLITTER_DRAIN_TIMEOUT`, …).

use std::{net::SocketAddr, path::PathBuf};

use crate::{
    duration::ConfigDuration,
    shutdown::DrainTiming,
    telemetry::{self, LogFormat, TelemetryError},
};

/// Variables [`with_env_prefix`] gives a binary's own prefix.
pub const PER_BINARY_ENV: &[&str] = &[
    "OUTRIGGER_CONFIG",
    "OUTRIGGER_CONFIGMAP",
    "OUTRIGGER_CONFIGMAP_KEY",
    "OUTRIGGER_CONFIG_POLL",
    "OUTRIGGER_API_SERVER",
    "OUTRIGGER_API_TOKEN_FILE",
    "OUTRIGGER_API_CA_FILE",
    "OUTRIGGER_DRAIN_DELAY",
    "OUTRIGGER_DRAIN_TIMEOUT",
];

/// Renames the environment fallbacks of [`PER_BINARY_ENV`] to `OUTRIGGER_<binary>_…` (`binary` in
/// upper case, such as `SPLITTER`). Call on `Cli::command()` before parsing.
pub fn with_env_prefix(command: clap::Command, binary: &str) -> clap::Command {
    command.mut_args(|arg| {
        let renamed = arg
            .get_env()
            .and_then(|env| env.to_str())
            .filter(|env| PER_BINARY_ENV.contains(env))
            .and_then(|env| env.strip_prefix("OUTRIGGER_"))
            .map(|rest| format!("OUTRIGGER_{binary}_{rest}"));
        match renamed {
            // clap keeps `&'static str` names without its `string` feature; a handful of short
            // names, leaked once at start-up.
            Some(name) => arg.env(&*Box::leak(name.into_boxed_str())),
            None => arg,
        }
    })
}

/// Parses the process arguments of `P` after [`with_env_prefix`], exiting with clap's message on
/// an error (as `Parser::parse` does).
pub fn parse_with_env_prefix<P: clap::Parser>(binary: &str) -> P {
    let matches = with_env_prefix(P::command(), binary).get_matches();
    match P::from_arg_matches(&matches) {
        Ok(parsed) => parsed,
        Err(error) => error.exit(),
    }
}

/// Logging.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log filter, in RUST_LOG syntax (`info`, `outrigger=debug`, `access=off`).
    #[arg(long = "log", env = "OUTRIGGER_LOG", default_value = "info")]
    pub log: String,
    /// Log format: `json` or `text`.
    #[arg(long, env = "OUTRIGGER_LOG_FORMAT", default_value = "json")]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Installs the global subscriber.
    pub fn init(self) -> Result<(), TelemetryError> {
        let Self { log, log_format } = self;
        telemetry::init(&log, log_format)
    }

    /// Installs the global subscriber, writing to stderr (see [`telemetry::init_stderr`]).
    pub fn init_stderr(self) -> Result<(), TelemetryError> {
        let Self { log, log_format } = self;
        telemetry::init_stderr(&log, log_format)
    }
}

/// The admin server.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Address of the admin server (`/metrics`, `/healthz`, `/readyz`, `/config`).
    #[arg(long, env = "OUTRIGGER_ADMIN_ADDR", default_value = "0.0.0.0:9901")]
    pub admin_addr: SocketAddr,
}

/// How to reach the Kubernetes API. In a pod none is needed: the API server, token and CA come
/// from the service account.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ApiServerArgs {
    /// API server URL (`https://host:port`); default
    /// `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`.
    #[arg(long, env = "OUTRIGGER_API_SERVER")]
    pub api_server: Option<String>,
    /// File holding the bearer token, read again every minute and after a 401; default the
    /// service account's token.
    #[arg(long, env = "OUTRIGGER_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// PEM CA bundle that signs the API server's certificate; default the service account's
    /// `ca.crt`.
    #[arg(long, env = "OUTRIGGER_API_CA_FILE")]
    pub api_ca_file: Option<PathBuf>,
}

#[cfg(feature = "apiserver")]
impl From<ApiServerArgs> for crate::apiserver::ApiServerOptions {
    fn from(args: ApiServerArgs) -> Self {
        let ApiServerArgs {
            api_server,
            api_token_file,
            api_ca_file,
        } = args;
        crate::apiserver::ApiServerOptions {
            server: api_server,
            token_file: api_token_file,
            ca_file: api_ca_file,
        }
    }
}

/// Where the sidecar's configuration comes from: a file, a ConfigMap key merged over it, or both.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigSourceArgs {
    /// Configuration file (JSON), re-read when it changes. Replace it by writing a new file and
    /// renaming it over the old one: a file rewritten in place can be read half-written.
    #[arg(long, env = "OUTRIGGER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory of the sidecar configuration mounted by injection; without --config,
    /// `<dir>/<sidecar>.json` is the configuration file when it exists.
    #[arg(long, env = "OUTRIGGER_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// Also watch this ConfigMap (`namespace/name`); its key is merged over the file.
    #[arg(long, env = "OUTRIGGER_CONFIGMAP")]
    pub configmap: Option<String>,
    /// Key of the ConfigMap that holds the JSON document; default `<sidecar>.json`.
    #[arg(long, env = "OUTRIGGER_CONFIGMAP_KEY")]
    pub configmap_key: Option<String>,
    /// How often the configuration file is checked for changes.
    #[arg(long, env = "OUTRIGGER_CONFIG_POLL", default_value = "2s")]
    pub config_poll_interval: ConfigDuration,
}

/// [`ConfigSourceArgs`] with the sidecar's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSourceSettings {
    /// The file, if any: `--config`, else `<config dir>/<file name>` when it exists.
    pub file: Option<PathBuf>,
    /// `namespace/name` of the ConfigMap, if any.
    pub configmap: Option<String>,
    /// The key of the ConfigMap holding the document.
    pub configmap_key: String,
    pub poll_interval: std::time::Duration,
}

impl ConfigSourceArgs {
    /// Fills in the defaults of the sidecar whose document is `file_name` (such as
    /// `request-splitter.json`: the file in the config dir and the ConfigMap key).
    pub fn resolve(self, file_name: &str) -> ConfigSourceSettings {
        let Self {
            config,
            config_dir,
            configmap,
            configmap_key,
            config_poll_interval,
        } = self;
        let file = config.or_else(|| {
            config_dir
                .map(|dir| dir.join(file_name))
                .filter(|path| path.exists())
        });
        ConfigSourceSettings {
            file,
            configmap,
            configmap_key: configmap_key.unwrap_or_else(|| file_name.to_owned()),
            poll_interval: config_poll_interval.0,
        }
    }
}

/// The drain after SIGTERM.
#[derive(Debug, Clone, clap::Args)]
pub struct DrainArgs {
    /// Wait between failing readiness and closing the listener after SIGTERM.
    #[arg(long, env = "OUTRIGGER_DRAIN_DELAY", default_value = "0s")]
    pub drain_delay: ConfigDuration,
    /// Longest wait for open connections after SIGTERM.
    #[arg(long, env = "OUTRIGGER_DRAIN_TIMEOUT", default_value = "25s")]
    pub drain_timeout: ConfigDuration,
}

impl From<DrainArgs> for DrainTiming {
    fn from(args: DrainArgs) -> Self {
        let DrainArgs {
            drain_delay,
            drain_timeout,
        } = args;
        DrainTiming {
            delay: drain_delay.0,
            timeout: drain_timeout.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches, Parser};

    use super::*;

    #[derive(Debug, Parser)]
    struct Example {
        #[command(flatten)]
        log: LogArgs,
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        api: ApiServerArgs,
        #[command(flatten)]
        source: ConfigSourceArgs,
        #[command(flatten)]
        drain: DrainArgs,
    }

    fn env_of(command: &clap::Command, id: &str) -> Option<String> {
        command
            .get_arguments()
            .find(|arg| arg.get_id() == id)
            .and_then(|arg| arg.get_env())
            .map(|env| env.to_string_lossy().into_owned())
    }

    #[test]
    fn a_binary_prefix_renames_its_own_variables_and_keeps_the_pod_wide_ones() {
        Example::command().debug_assert();
        let command = with_env_prefix(Example::command(), "SPLITTER");
        for (id, env) in [
            ("configmap", "OUTRIGGER_SPLITTER_CONFIGMAP"),
            ("api_token_file", "OUTRIGGER_SPLITTER_API_TOKEN_FILE"),
            ("drain_timeout", "OUTRIGGER_SPLITTER_DRAIN_TIMEOUT"),
            ("config_poll_interval", "OUTRIGGER_SPLITTER_CONFIG_POLL"),
            ("config_dir", "OUTRIGGER_CONFIG_DIR"),
            ("admin_addr", "OUTRIGGER_ADMIN_ADDR"),
            ("log", "OUTRIGGER_LOG"),
        ] {
            assert_eq!(env_of(&command, id).as_deref(), Some(env), "{id}");
        }
    }

    #[test]
    fn flags_parse_into_settings_with_the_sidecars_defaults() {
        let matches = Example::command()
            .try_get_matches_from([
                "example",
                "--configmap",
                "shop/cm",
                "--config-poll-interval",
                "250ms",
                "--drain-timeout",
                "1m30s",
            ])
            .unwrap();
        let Example { source, drain, .. } = Example::from_arg_matches(&matches).unwrap();
        let settings = source.resolve("log-adapter.json");
        assert_eq!(settings.configmap.as_deref(), Some("shop/cm"));
        assert_eq!(settings.configmap_key, "log-adapter.json");
        assert_eq!(settings.poll_interval, std::time::Duration::from_millis(250));
        assert_eq!(
            DrainTiming::from(drain).timeout,
            std::time::Duration::from_secs(90)
        );
    }
}
