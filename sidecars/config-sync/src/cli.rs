//! Command line of `outrigger-config-sync`: the runtime's shared groups, the settings injection
//! hands over, and where the files go.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use outrigger_sidecar_runtime::args::{self, AdminArgs, ApiServerArgs, LogArgs};

use crate::run::{self, Options};

#[derive(Debug, Parser)]
#[command(name = "outrigger-config-sync", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub api: ApiServerArgs,
    /// The settings, a JSON object of strings (`{"configMaps":"app","reloadUrl":"http://…"}`), as
    /// injection passes `spec.sidecars[].settings`.
    #[arg(long, env = "OUTRIGGER_SETTINGS", hide_env_values = true)]
    pub settings: String,
    /// Directory of the shared volume the files are written into.
    #[arg(long, env = "OUTRIGGER_CONFIG_SYNC_DIR")]
    pub dir: PathBuf,
    /// Namespace of the objects (and of the pod).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// The pod's name; with it, each outcome is written into the pod's annotation
    /// `outrigger.dev/config-sync-status`.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
}

impl Cli {
    pub fn from_env() -> Cli {
        args::parse_with_env_prefix("CONFIG_SYNC")
    }

    /// Runs the sidecar until SIGTERM; the exit code says how it ended.
    pub fn run(self) -> ExitCode {
        let Cli {
            log,
            admin,
            api,
            settings,
            dir,
            namespace,
            pod_name,
        } = self;
        if let Err(error) = log.init() {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
        let options = Options {
            settings,
            dir,
            namespace,
            pod_name,
            admin_addr: admin.admin_addr,
            api: api.into(),
        };
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(%error, "Cannot start the async runtime.");
                return ExitCode::FAILURE;
            }
        };
        match runtime.block_on(run::run(options)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, category = error.category(), "The config sync sidecar stopped.");
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        args::with_env_prefix(Cli::command(), "CONFIG_SYNC").debug_assert();
    }
}
