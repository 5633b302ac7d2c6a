//! Command line of `outrigger-request-splitter`: the runtime's shared groups, flattened, plus the
//! splitter's own `--workers`. The splitter's own environment variables carry its prefix
//! (`OUTRIGGER_SPLITTER_CONFIGMAP`, `OUTRIGGER_SPLITTER_DRAIN_TIMEOUT`, …, see
//! [`outrigger_sidecar_runtime::args::with_env_prefix`]); what injection sets for every sidecar of
//! a pod keeps one name (`OUTRIGGER_CONFIG_DIR`, `OUTRIGGER_ADMIN_ADDR`, `OUTRIGGER_LOG`,
//! `OUTRIGGER_LOG_FORMAT`).

use clap::Parser;
use outrigger_sidecar_runtime::{
    args::{self, AdminArgs, ApiServerArgs, ConfigSourceArgs, DrainArgs, LogArgs},
    telemetry::TelemetryError,
};

use crate::run::{run, ConfigMapOptions, Options, RunError};

/// File name of the configuration inside `--config-dir` (the key in the injected ConfigMap), and
/// the default `--configmap-key`.
pub const INJECTED_CONFIG_KEY: &str = "request-splitter.json";

/// The prefix of the splitter's own environment variables: `OUTRIGGER_SPLITTER_…`.
pub const ENV_PREFIX: &str = "SPLITTER";

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
    #[command(flatten)]
    source: ConfigSourceArgs,
    #[command(flatten)]
    api: ApiServerArgs,
    #[command(flatten)]
    admin: AdminArgs,
    /// Threads serving clients, each with its own runtime, listening socket and backend
    /// connections (like nginx's worker processes); 1 runs everything on one thread.
    #[arg(long, env = "OUTRIGGER_SPLITTER_WORKERS", default_value_t = 1)]
    workers: usize,
    #[command(flatten)]
    drain: DrainArgs,
    #[command(flatten)]
    log: LogArgs,
}

impl Cli {
    /// Parses the process's arguments and environment (exits with a message when they are wrong).
    pub fn from_env() -> Cli {
        args::parse_with_env_prefix(ENV_PREFIX)
    }

    /// Runs the splitter until SIGTERM.
    pub fn run(self) -> Result<(), CliError> {
        let Self {
            source,
            api,
            admin,
            workers,
            drain,
            log,
        } = self;
        log.init()?;
        let source = source.resolve(INJECTED_CONFIG_KEY);
        let drain = outrigger_sidecar_runtime::shutdown::DrainTiming::from(drain);
        let options = Options {
            config_file: source.file,
            configmap: source.configmap.map(|reference| ConfigMapOptions {
                reference,
                key: source.configmap_key,
                api: api.into(),
            }),
            admin_addr: admin.admin_addr,
            poll_interval: source.poll_interval,
            drain_timeout: drain.timeout,
            drain_delay: drain.delay,
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

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;

    // The operator's injection, the cluster tests and the docs set these names; they must keep
    // working now that the flags come from the runtime's groups.
    #[test]
    fn every_flag_keeps_its_name_and_environment_variable() {
        Cli::command().debug_assert();
        let command = args::with_env_prefix(Cli::command(), ENV_PREFIX);
        let expected = [
            ("config", "OUTRIGGER_SPLITTER_CONFIG"),
            ("config-dir", "OUTRIGGER_CONFIG_DIR"),
            ("configmap", "OUTRIGGER_SPLITTER_CONFIGMAP"),
            ("configmap-key", "OUTRIGGER_SPLITTER_CONFIGMAP_KEY"),
            ("api-server", "OUTRIGGER_SPLITTER_API_SERVER"),
            ("api-token-file", "OUTRIGGER_SPLITTER_API_TOKEN_FILE"),
            ("api-ca-file", "OUTRIGGER_SPLITTER_API_CA_FILE"),
            ("admin-addr", "OUTRIGGER_ADMIN_ADDR"),
            ("workers", "OUTRIGGER_SPLITTER_WORKERS"),
            ("config-poll-interval", "OUTRIGGER_SPLITTER_CONFIG_POLL"),
            ("drain-timeout", "OUTRIGGER_SPLITTER_DRAIN_TIMEOUT"),
            ("drain-delay", "OUTRIGGER_SPLITTER_DRAIN_DELAY"),
            ("log", "OUTRIGGER_LOG"),
            ("log-format", "OUTRIGGER_LOG_FORMAT"),
        ];
        for (flag, env) in expected {
            let arg = command
                .get_arguments()
                .find(|arg| arg.get_long() == Some(flag))
                .unwrap_or_else(|| panic!("no --{flag}"));
            assert_eq!(arg.get_env().and_then(|env| env.to_str()), Some(env), "--{flag}");
        }
        let flags = command
            .get_arguments()
            .filter(|arg| arg.get_long().is_some())
            .count();
        assert_eq!(flags, expected.len(), "a flag without a checked name");
    }

    #[test]
    fn the_configmap_key_defaults_to_the_injected_file_name() {
        let matches = Cli::command()
            .try_get_matches_from([
                "outrigger-request-splitter",
                "--configmap",
                "shop/cm",
                "--drain-delay",
                "5s",
            ])
            .unwrap();
        let Cli { source, drain, .. } = Cli::from_arg_matches(&matches).unwrap();
        let settings = source.resolve(INJECTED_CONFIG_KEY);
        assert_eq!(settings.configmap_key, "request-splitter.json");
        assert_eq!(settings.poll_interval, std::time::Duration::from_secs(2));
        assert_eq!(drain.drain_delay.0, std::time::Duration::from_secs(5));
        assert_eq!(drain.drain_timeout.0, std::time::Duration::from_secs(25));
    }
}
