use std::time::Duration;

use outrigger_config_sync::cli::Cli;
use outrigger_sidecar_runtime::wait_ready;

fn main() -> std::process::ExitCode {
    // `wait-ready` is the postStart hook injection adds: the app starts once the first files are
    // written.
    if std::env::args().nth(1).as_deref() == Some(wait_ready::COMMAND) {
        std::process::exit(wait_ready::run(None, Duration::from_secs(120)));
    }
    Cli::from_env().run()
}
