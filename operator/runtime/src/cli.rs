//! Command line of `outrigger-operator`.

use std::{io::Write, path::PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};

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
}

impl Cli {
    /// Runs the chosen command.
    pub async fn run(self) -> anyhow::Result<()> {
        let Self { command } = self;
        match command {
            Command::Crd { dir } => print_crds(dir),
        }
    }
}

fn print_crds(dir: Option<PathBuf>) -> anyhow::Result<()> {
    match dir {
        None => {
            let yaml = outrigger_api::crd::all_yaml().context("rendering CRDs")?;
            std::io::stdout().write_all(yaml.as_bytes()).context("writing CRDs to stdout")?;
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
