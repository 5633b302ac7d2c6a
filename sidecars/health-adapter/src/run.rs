//! The check loops: each check on its own interval, its result recorded in the shared
//! [`Health`], transitions counted.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use outrigger_sidecar_runtime::events::Recorder;
use tracing::{info, warn};

use crate::{
    check,
    metrics::{CheckLabels, EndpointLabels, EndpointTransitionLabels, Metrics, RunLabels, TransitionLabels},
    report,
    settings::Probe,
    state::{Health, Status},
};

/// Shared health, metrics and the recorder of Events.
#[derive(Debug, Clone)]
pub struct Shared {
    pub health: Arc<Mutex<Health>>,
    pub metrics: Metrics,
    pub events: Recorder,
}

impl Shared {
    pub fn new(health: Health, metrics: Metrics, events: Recorder) -> Shared {
        let shared = Shared {
            health: Arc::new(Mutex::new(health)),
            metrics,
            events,
        };
        let health = shared.lock();
        for (check, state) in &health.checks {
            shared.set_status(&check.name, state.status);
        }
        for probe in Probe::ALL {
            shared.set_endpoint(probe, health.verdict(probe));
        }
        drop(health);
        shared
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_status(&self, check: &str, status: Status) {
        let value = match status {
            Status::Passing => 1,
            Status::Failing => 0,
            Status::Unknown => -1,
        };
        self.metrics
            .status
            .get_or_create(&CheckLabels {
                check: check.to_owned(),
            })
            .set(value);
    }

    fn set_endpoint(&self, probe: Probe, up: bool) {
        self.metrics
            .endpoint_up
            .get_or_create(&EndpointLabels {
                endpoint: probe.as_str().to_owned(),
            })
            .set(i64::from(up));
    }

    /// Records one result of check `index` and counts what changed.
    pub fn record(&self, index: usize, result: Result<(), check::CheckError>, duration: std::time::Duration) {
        let mut health = self.lock();
        let before: Vec<bool> = Probe::ALL.iter().map(|p| health.verdict(*p)).collect();
        let standing = health.standing();
        let Some(name) = health.checks.get(index).map(|(c, _)| c.name.clone()) else {
            return;
        };
        let category = result.as_ref().err().map_or("ok", check::CheckError::category);
        let message = result.as_ref().err().map(ToString::to_string);
        let changed = health.record(index, result.map_err(|e| e.to_string()), duration);
        self.metrics
            .runs
            .get_or_create(&RunLabels {
                check: name.clone(),
                result: category.to_owned(),
            })
            .inc();
        self.metrics
            .duration_ms
            .get_or_create(&CheckLabels { check: name.clone() })
            .set(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX));
        if let Some(status) = changed {
            self.set_status(&name, status);
            self.metrics
                .transitions
                .get_or_create(&TransitionLabels {
                    check: name.clone(),
                    to: status.as_str().to_owned(),
                })
                .inc();
            match status {
                Status::Failing => {
                    warn!(check = %name, error = message.as_deref().unwrap_or(""), "Check failing.")
                }
                _ => info!(check = %name, status = status.as_str(), "Check status changed."),
            }
        }
        for (probe, was) in Probe::ALL.iter().zip(before) {
            let now = health.verdict(*probe);
            if now != was {
                self.set_endpoint(*probe, now);
                self.metrics
                    .endpoint_transitions
                    .get_or_create(&EndpointTransitionLabels {
                        endpoint: probe.as_str().to_owned(),
                        to: if now { "up" } else { "down" }.to_owned(),
                    })
                    .inc();
                info!(endpoint = probe.path(), up = now, "Endpoint changed.");
            }
        }
        for note in report::transitions(standing, &health) {
            self.events.record(note);
        }
    }
}

/// Starts one loop per check; they run until the runtime stops.
pub fn spawn_checks(shared: &Shared) {
    let checks: Vec<_> = shared.lock().checks.iter().map(|(c, _)| c.clone()).collect();
    for (index, check) in checks.into_iter().enumerate() {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(check.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let started = Instant::now();
                let result = check::run(&check.target, check.timeout).await;
                shared.record(index, result, started.elapsed());
            }
        });
    }
}
