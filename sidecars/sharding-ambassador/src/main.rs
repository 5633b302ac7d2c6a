use std::{process::ExitCode, time::Duration};

use outrigger_sharding_ambassador::{cli::Cli, run};
use outrigger_sidecar_runtime::wait_ready;

// Accepting, the admin server and the shard map source run here; clients are served on the
// worker threads (`workers`), each its own single-threaded runtime.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // `wait-ready` is the postStart hook injection adds: the app starts once the ambassador is ready.
    if std::env::args().nth(1).as_deref() == Some(wait_ready::COMMAND) {
        return ExitCode::from(u8::try_from(wait_ready::run(None, Duration::from_secs(120))).unwrap_or(1));
    }
    let (log, options) = Cli::from_env().into_options();
    if let Err(error) = log.init() {
        eprintln!("{error}");
        return ExitCode::FAILURE;
    }
    match run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "Sharding ambassador failed.");
            ExitCode::FAILURE
        }
    }
}
