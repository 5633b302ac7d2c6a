//! The command line: `kubectl outrigger <command>`.

use clap::{Parser, Subcommand};

/// Outrigger at a glance: rollouts, shard maps and autoscaling decisions, and the rollout controls.
#[derive(Debug, Parser)]
#[command(name = "kubectl outrigger", version)]
pub struct Args {
    /// Namespace (default: the kubeconfig context's).
    #[arg(short, long, global = true, env = "OUTRIGGER_NAMESPACE")]
    pub namespace: Option<String>,
    /// Longest line printed (default: $COLUMNS, else 120).
    #[arg(long, global = true, env = "COLUMNS", default_value_t = 120)]
    pub width: usize,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show an object.
    Get {
        #[command(subcommand)]
        what: Get,
    },
    /// Skip the remaining steps and make the canary stable.
    Promote { name: String },
    /// Roll the canary back now.
    Abort { name: String },
    /// Hold the rollout at its current step.
    Pause { name: String },
    /// Go on from a pause.
    Resume { name: String },
    /// A ShardedService's shard map, readiness per shard and the key skew its clients see.
    Shards {
        name: String,
        #[command(flatten)]
        watch: Watch,
    },
    /// An AutoscalingPolicy's metrics and recent decisions.
    Scaling {
        name: String,
        #[command(flatten)]
        watch: Watch,
    },
    /// Print an example manifest (`web`, `cache`, `autoscaling`); without a name, list them.
    Example { name: Option<String> },
}

#[derive(Debug, Subcommand)]
pub enum Get {
    /// A ReplicatedService's rollout: steps, traffic, analysis and decisions.
    #[command(alias = "rollouts", alias = "ro")]
    Rollout {
        name: String,
        #[command(flatten)]
        watch: Watch,
        /// With --watch: stop once a running rollout is promoted, aborted or back to healthy.
        #[arg(long)]
        until_finished: bool,
    },
}

#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Watch {
    /// Keep watching, redrawing on every change.
    #[arg(short, long)]
    pub watch: bool,
    /// Seconds between looks while watching.
    #[arg(long, default_value_t = 1)]
    pub interval: u64,
}
