//! Signals: SIGTERM / SIGINT end the process after a graceful drain, SIGHUP asks for a reload.

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "Cannot listen for SIGTERM; only Ctrl-C stops the process.");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Notifies `reload_now` on every SIGHUP (the config file poller reads the file at once), until
/// the returned task is aborted.
pub fn reload_on_hangup(reload_now: std::sync::Arc<tokio::sync::Notify>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hangup) = signal(SignalKind::hangup()) else {
                tracing::warn!(
                    "Cannot listen for SIGHUP; the configuration file is reloaded by polling only."
                );
                return;
            };
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the configuration file.");
                reload_now.notify_one();
            }
        }
        #[cfg(not(unix))]
        drop(reload_now);
    })
}

/// How a process drains after SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainTiming {
    /// Time between failing readiness and closing the listener, so load balancers stop sending.
    pub delay: std::time::Duration,
    /// Longest wait for open work to finish once the listener is closed.
    pub timeout: std::time::Duration,
}

/// The graceful drain every sidecar does: fails `/readyz`, waits `timing.delay`, runs `close` (stop
/// accepting), then waits at most `timing.timeout` for `finished`. Returns whether everything
/// finished before the deadline.
pub async fn drain<C, F>(admin: &crate::admin::AdminState, timing: DrainTiming, close: C, finished: F) -> bool
where
    C: std::future::Future<Output = ()>,
    F: std::future::Future<Output = ()>,
{
    admin.set_ready(false);
    tokio::time::sleep(timing.delay).await;
    close.await;
    let drained = tokio::time::timeout(timing.timeout, finished).await.is_ok();
    if drained {
        tracing::info!("Drained everything in flight.");
    } else {
        tracing::warn!(timeout = ?timing.timeout, "Drain deadline reached; closing the rest.");
    }
    drained
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus_client::registry::Registry;

    use super::*;
    use crate::admin::AdminState;

    #[tokio::test(start_paused = true)]
    async fn drain_fails_readiness_first_and_gives_up_at_its_deadline() {
        let admin = AdminState::new(Registry::default());
        admin.set_ready(true);
        let timing = DrainTiming {
            delay: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
        };
        let started = tokio::time::Instant::now();
        let finished = drain(&admin, timing, async {}, std::future::pending()).await;
        assert!(!finished, "pending work never finishes");
        assert!(!admin.is_ready());
        assert_eq!(started.elapsed(), Duration::from_secs(7));
        assert!(drain(&admin, timing, async {}, async {}).await);
    }
}
