//! `outrigger-delay SECONDS`: waits, then exits 0.
//!
//! Our images have no shell, so no `sleep`; Kubernetes before 1.29 has no `preStop.sleep` either.
//! The chart runs this as the operator's preStop hook: a terminating replica keeps serving webhook
//! calls until the API server has seen its endpoint go, instead of refusing the calls still on
//! their way. Built by hack/images.sh with rustc alone (no crates), statically linked.

use std::{env, process::ExitCode, thread, time::Duration};

fn main() -> ExitCode {
    let Some(seconds) = env::args().nth(1).and_then(|arg| arg.parse::<u64>().ok()) else {
        eprintln!("usage: outrigger-delay SECONDS");
        return ExitCode::from(2);
    };
    thread::sleep(Duration::from_secs(seconds.min(600)));
    ExitCode::SUCCESS
}
