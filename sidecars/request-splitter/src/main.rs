use clap::Parser;
use outrigger_request_splitter::cli::Cli;

fn main() -> anyhow::Result<()> {
    Cli::parse().run()?;
    Ok(())
}
