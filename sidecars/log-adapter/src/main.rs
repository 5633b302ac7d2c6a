use std::time::Duration;

use outrigger_sidecar_runtime::wait_ready;

mod cli;

fn main() -> anyhow::Result<()> {
    // `wait-ready` is the postStart hook injection adds: it holds the app back until this sidecar's
    // /readyz answers.
    if std::env::args().nth(1).as_deref() == Some(wait_ready::COMMAND) {
        std::process::exit(wait_ready::run(None, Duration::from_secs(120)));
    }
    cli::Cli::from_env().run()?;
    Ok(())
}
