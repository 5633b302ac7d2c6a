//! Command line of `outrigger-operator`.

use std::{io::Write, net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use outrigger_sidecar_common::telemetry::{self, LogFormat};

use crate::{
    leader::ElectionConfig,
    run::{run, RunConfig},
};

/// The Outrigger operator.
#[derive(Debug, Parser)]
#[command(name = "outrigger-operator", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print every CustomResourceDefinition as YAML (or write one file per CRD with --dir).
    Crd {
        /// Write `<name>.yaml` files into this directory instead of printing one stream.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run the controllers (on the elected leader) and the admin server.
    Run(RunArgs),
}

/// Arguments of `run`.
#[derive(Debug, Args)]
struct RunArgs {
    /// Address of the admin server (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "OUTRIGGER_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    admin_addr: SocketAddr,
    /// Log filter, in RUST_LOG syntax.
    #[arg(long, env = "OUTRIGGER_LOG", default_value = "info,kube_runtime=warn")]
    log: String,
    /// Log format: `json` or `text`.
    #[arg(long, env = "OUTRIGGER_LOG_FORMAT", default_value = "json")]
    log_format: LogFormat,
    /// Run without leader election (a single replica only).
    #[arg(long, env = "OUTRIGGER_NO_LEADER_ELECTION")]
    no_leader_election: bool,
    /// Namespace of the leader Lease (the operator's own namespace).
    #[arg(long, env = "OUTRIGGER_NAMESPACE", default_value = "outrigger-system")]
    namespace: String,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "OUTRIGGER_LEASE_NAME",
        default_value = "outrigger-operator-leader"
    )]
    lease_name: String,
    /// This replica's identity in the Lease; defaults to the pod / host name and process id.
    #[arg(long, env = "OUTRIGGER_IDENTITY")]
    identity: Option<String>,
    /// Seconds a lease is valid without renewal (the longest failover takes).
    #[arg(long, env = "OUTRIGGER_LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,
    /// Watch and manage only this namespace instead of the whole cluster.
    #[arg(long, env = "OUTRIGGER_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
}

impl Cli {
    /// Runs the chosen command.
    pub async fn run(self) -> anyhow::Result<()> {
        let Self { command } = self;
        match command {
            Command::Crd { dir } => print_crds(dir),
            Command::Run(args) => args.run().await,
        }
    }
}

impl RunArgs {
    async fn run(self) -> anyhow::Result<()> {
        let Self {
            admin_addr,
            log,
            log_format,
            no_leader_election,
            namespace,
            lease_name,
            identity,
            lease_seconds,
            watch_namespace,
        } = self;
        telemetry::init(&log, log_format)?;
        let identity = identity.unwrap_or_else(default_identity);
        let lease_duration = Duration::from_secs(lease_seconds.max(3));
        let election = (!no_leader_election).then(|| ElectionConfig {
            namespace,
            lease_name,
            identity,
            lease_duration,
            renew_interval: lease_duration / 3,
            retry_interval: lease_duration / 5,
        });
        run(RunConfig {
            admin_addr,
            election,
            watch_namespace,
        })
        .await
    }
}

fn default_identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .or_else(|_| std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()))
        .unwrap_or_else(|_| "outrigger".to_owned());
    format!("{host}-{}", std::process::id())
}

fn print_crds(dir: Option<PathBuf>) -> anyhow::Result<()> {
    match dir {
        None => {
            let yaml = outrigger_api::crd::all_yaml().context("rendering CRDs")?;
            std::io::stdout()
                .write_all(yaml.as_bytes())
                .context("writing CRDs to stdout")?;
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for crd in outrigger_api::crd::all() {
                let path = dir.join(outrigger_api::crd::file_name(&crd));
                let yaml = outrigger_api::crd::to_yaml(&crd).context("rendering CRD")?;
                std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}
