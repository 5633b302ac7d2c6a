use std::{process::ExitCode, time::Duration};

use clap::Parser;
use outrigger_sidecar_runtime::wait_ready;

mod cli;

fn main() -> ExitCode {
    // `wait-ready` is the postStart hook injection adds: it holds the app back until this
    // sidecar's own /readyz answers (it does once it serves probes, whatever the app's health).
    if std::env::args().nth(1).as_deref() == Some(wait_ready::COMMAND) {
        return ExitCode::from(u8::try_from(wait_ready::run(None, Duration::from_secs(120))).unwrap_or(1));
    }
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "Health adapter failed.");
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}
