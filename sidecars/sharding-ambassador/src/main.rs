use std::process::ExitCode;

use clap::Parser;
use outrigger_sharding_ambassador::{cli::Args, run};

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(error) = outrigger_sidecar_runtime::telemetry::init(&args.log_level, args.log_format) {
        eprintln!("{error}");
        return ExitCode::FAILURE;
    }
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "Sharding ambassador failed.");
            ExitCode::FAILURE
        }
    }
}
