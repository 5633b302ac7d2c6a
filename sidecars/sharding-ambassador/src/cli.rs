//! Command line of `outrigger-sharding-ambassador`: the runtime's shared groups, flattened, plus the
//! ambassador's own listener and shard-connection flags. Its own environment variables carry its
//! prefix (`OUTRIGGER_SHARDING_CONFIGMAP`, `OUTRIGGER_SHARDING_LISTEN`, …, see
//! [`outrigger_sidecar_runtime::args::with_env_prefix`]); what injection sets for every sidecar of
//! a pod keeps one name (`OUTRIGGER_ADMIN_ADDR`, `OUTRIGGER_LOG`, `OUTRIGGER_LOG_FORMAT`).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use clap::{CommandFactory, FromArgMatches, Parser};
use outrigger_contract::duration::ConfigDuration;
use outrigger_sidecar_runtime::{
    args::{self, AdminArgs, ApiServerArgs, ConfigSourceArgs, DrainArgs, LogArgs},
    shutdown::DrainTiming,
};

use crate::{
    client::ClientSettings,
    http::HttpSettings,
    metrics::Metrics,
    run::{ConfigMapOptions, Options},
    shard::ShardSettings,
};

/// The shard map's file name inside `--config-dir` and the default `--configmap-key`: the key the
/// operator writes in `<service>-shard-map`.
pub const SHARD_MAP_KEY: &str = outrigger_contract::shard_map::SHARD_MAP_KEY;

/// The prefix of the ambassador's own environment variables: `OUTRIGGER_SHARDING_…`.
pub const ENV_PREFIX: &str = "SHARDING";

/// The admin port of the ambassador, apart from the request splitter's 9901 so both fit in a pod.
pub const DEFAULT_ADMIN_ADDR: &str = "0.0.0.0:9902";

/// Routes Redis commands to the shard owning each key, placing keys as a twemproxy ketama pool.
#[derive(Debug, Clone, Parser)]
#[command(name = "outrigger-sharding-ambassador", version)]
pub struct Cli {
    /// Address clients connect to.
    #[arg(long, env = "OUTRIGGER_SHARDING_LISTEN", default_value = "127.0.0.1:6379")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub source: ConfigSourceArgs,
    #[command(flatten)]
    pub api: ApiServerArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub shards: ShardArgs,
    #[command(flatten)]
    pub drain: DrainArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Clients and shard connections.
#[derive(Debug, Clone, clap::Args)]
pub struct ShardArgs {
    /// Clients served at once; more wait in the listen backlog.
    #[arg(long, env = "OUTRIGGER_SHARDING_MAX_CLIENTS", default_value_t = 10_000)]
    pub max_clients: usize,
    /// Connect timeout to a shard.
    #[arg(long, env = "OUTRIGGER_SHARDING_CONNECT_TIMEOUT", default_value = "500ms")]
    pub connect_timeout: ConfigDuration,
    /// How long a shard may take to answer a written command.
    #[arg(long, env = "OUTRIGGER_SHARDING_REQUEST_TIMEOUT", default_value = "1s")]
    pub request_timeout: ConfigDuration,
    /// Failures in a row that eject a shard.
    #[arg(long, env = "OUTRIGGER_SHARDING_FAILURE_LIMIT", default_value_t = 3)]
    pub failure_limit: u32,
    /// How long an ejected shard is left alone.
    #[arg(long, env = "OUTRIGGER_SHARDING_RETRY_INTERVAL", default_value = "5s")]
    pub retry_interval: ConfigDuration,
    /// Worker threads serving clients, each with its own shard connections; 0 is one per core.
    ///
    /// One by default: the ambassador shares its pod, and usually its cores, with the application
    /// that sends it the commands, and a second worker there competes with the application for
    /// the core it would use (on two cores, plain throughput fell to 0.8x; `docs/benchmarks.md`).
    #[arg(long, env = "OUTRIGGER_SHARDING_WORKERS", default_value_t = 1)]
    pub workers: usize,
}

impl Cli {
    /// The command, with the ambassador's prefix on its own variables, its admin port, and
    /// `--shard-map` kept as the name of `--config`.
    pub fn command_with_defaults() -> clap::Command {
        args::with_env_prefix(Cli::command(), ENV_PREFIX)
            .mut_arg("config", |arg| arg.visible_alias("shard-map"))
            .mut_arg("admin_addr", |arg| arg.default_value(DEFAULT_ADMIN_ADDR))
    }

    /// Parses the process's arguments and environment (exits with a message when they are wrong).
    pub fn from_env() -> Cli {
        let matches = Cli::command_with_defaults().get_matches();
        match Cli::from_arg_matches(&matches) {
            Ok(cli) => cli,
            Err(error) => error.exit(),
        }
    }

    /// Splits the command line into the logging set-up and what [`crate::run::run`] needs.
    pub fn into_options(self) -> (LogArgs, Options) {
        let Self {
            listen,
            source,
            api,
            admin,
            shards,
            drain,
            log,
        } = self;
        let source = source.resolve(SHARD_MAP_KEY);
        let options = Options {
            listen,
            admin_addr: admin.admin_addr,
            file: source.file,
            configmap: source.configmap.map(|reference| ConfigMapOptions {
                reference,
                key: source.configmap_key,
                api: api.into(),
            }),
            poll_interval: source.poll_interval,
            shards,
            drain: DrainTiming::from(drain),
        };
        (log, options)
    }
}

/// Most worker threads `--workers 0` starts, however many cores there are: an ambassador shares
/// its pod with the application.
const MAX_DEFAULT_WORKERS: usize = 4;

impl ShardArgs {
    /// The worker threads to start: `--workers`, or one per core the process may use (at most
    /// [`MAX_DEFAULT_WORKERS`]).
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism()
                .map_or(1, std::num::NonZeroUsize::get)
                .min(MAX_DEFAULT_WORKERS),
            count => count,
        }
    }

    /// The settings of shard connections.
    pub fn shard_settings(&self, metrics: &Arc<Metrics>) -> ShardSettings {
        ShardSettings {
            metrics: metrics.clone(),
            connect_timeout: self.connect_timeout.0,
            request_timeout: self.request_timeout.0,
            failure_limit: self.failure_limit.max(1),
            retry_interval: self.retry_interval.0,
            ..ShardSettings::default()
        }
    }

    /// The settings of HTTP forwarding, when the shard map's protocol is `http`.
    pub fn http_settings(&self, metrics: &Arc<Metrics>) -> HttpSettings {
        HttpSettings {
            metrics: metrics.clone(),
            connect_timeout: self.connect_timeout.0,
            request_timeout: self.request_timeout.0,
            ..HttpSettings::default()
        }
    }

    /// The settings of client connections.
    pub fn client_settings(&self, metrics: &Arc<Metrics>) -> ClientSettings {
        ClientSettings {
            metrics: metrics.clone(),
            // A reply is awaited a little longer than the shard may take to connect and answer,
            // so the shard's own error, which names the cause, normally comes first.
            reply_timeout: self.connect_timeout.0 + self.request_timeout.0 + Duration::from_secs(1),
            ..ClientSettings::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Injection, the cluster tests, the bench script and the docs use these names.
    #[test]
    fn every_flag_keeps_its_name_and_environment_variable() {
        Cli::command().debug_assert();
        let command = Cli::command_with_defaults();
        let expected = [
            ("listen", "OUTRIGGER_SHARDING_LISTEN"),
            ("config", "OUTRIGGER_SHARDING_CONFIG"),
            ("config-dir", "OUTRIGGER_CONFIG_DIR"),
            ("configmap", "OUTRIGGER_SHARDING_CONFIGMAP"),
            ("configmap-key", "OUTRIGGER_SHARDING_CONFIGMAP_KEY"),
            ("config-poll-interval", "OUTRIGGER_SHARDING_CONFIG_POLL"),
            ("api-server", "OUTRIGGER_SHARDING_API_SERVER"),
            ("api-token-file", "OUTRIGGER_SHARDING_API_TOKEN_FILE"),
            ("api-ca-file", "OUTRIGGER_SHARDING_API_CA_FILE"),
            ("admin-addr", "OUTRIGGER_ADMIN_ADDR"),
            ("max-clients", "OUTRIGGER_SHARDING_MAX_CLIENTS"),
            ("connect-timeout", "OUTRIGGER_SHARDING_CONNECT_TIMEOUT"),
            ("request-timeout", "OUTRIGGER_SHARDING_REQUEST_TIMEOUT"),
            ("failure-limit", "OUTRIGGER_SHARDING_FAILURE_LIMIT"),
            ("retry-interval", "OUTRIGGER_SHARDING_RETRY_INTERVAL"),
            ("workers", "OUTRIGGER_SHARDING_WORKERS"),
            ("drain-delay", "OUTRIGGER_SHARDING_DRAIN_DELAY"),
            ("drain-timeout", "OUTRIGGER_SHARDING_DRAIN_TIMEOUT"),
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
    fn a_configmap_alone_is_read_at_the_shard_map_key_and_admin_keeps_its_own_port() {
        let matches = Cli::command_with_defaults()
            .try_get_matches_from([
                "outrigger-sharding-ambassador",
                "--configmap",
                "shop/cache-shard-map",
            ])
            .unwrap();
        let (_, options) = Cli::from_arg_matches(&matches).unwrap().into_options();
        let configmap = options.configmap.unwrap();
        assert_eq!(configmap.reference, "shop/cache-shard-map");
        assert_eq!(configmap.key, "shard-map.json");
        assert_eq!(options.file, None);
        assert_eq!(options.admin_addr.port(), 9902);
        assert_eq!(options.listen.to_string(), "127.0.0.1:6379");
    }

    #[test]
    fn the_old_shard_map_flag_still_names_the_file() {
        let matches = Cli::command_with_defaults()
            .try_get_matches_from(["outrigger-sharding-ambassador", "--shard-map", "/etc/map.json"])
            .unwrap();
        let (_, options) = Cli::from_arg_matches(&matches).unwrap().into_options();
        assert_eq!(options.file, Some("/etc/map.json".into()));
    }
}
