//! What the checks found, with hysteresis, and what each endpoint answers. Pure: the runner feeds
//! results in, the server reads verdicts out.

use std::time::Duration;

use serde::Serialize;

use crate::settings::{Check, Probe};

/// A check's standing after hysteresis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Not yet enough results either way.
    Unknown,
    Passing,
    Failing,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Unknown => "unknown",
            Status::Passing => "passing",
            Status::Failing => "failing",
        }
    }
}

/// One check's record.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckState {
    pub status: Status,
    pub consecutive_successes: u32,
    pub consecutive_failures: u32,
    pub ever_passed: bool,
    pub last_error: Option<String>,
    pub last_duration_ms: u64,
}

impl Default for CheckState {
    fn default() -> Self {
        CheckState {
            status: Status::Unknown,
            consecutive_successes: 0,
            consecutive_failures: 0,
            ever_passed: false,
            last_error: None,
            last_duration_ms: 0,
        }
    }
}

impl CheckState {
    /// Records one result; returns the new status when it changed. A passing check fails only
    /// after `failure_threshold` failures in a row, and a failing or new one passes only after
    /// `success_threshold` successes in a row, so one slow answer does not flap the pod.
    pub fn record(
        &mut self,
        check: &Check,
        result: Result<(), String>,
        duration: Duration,
    ) -> Option<Status> {
        self.last_duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        let before = self.status;
        match result {
            Ok(()) => {
                self.consecutive_successes = self.consecutive_successes.saturating_add(1);
                self.consecutive_failures = 0;
                self.last_error = None;
                if self.status != Status::Passing && self.consecutive_successes >= check.success_threshold {
                    self.status = Status::Passing;
                    self.ever_passed = true;
                }
            }
            Err(error) => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.consecutive_successes = 0;
                self.last_error = Some(error);
                if self.status != Status::Failing && self.consecutive_failures >= check.failure_threshold {
                    self.status = Status::Failing;
                }
            }
        }
        (self.status != before).then_some(self.status)
    }
}

/// Every check with its record, and the endpoints' verdicts.
#[derive(Debug, Clone)]
pub struct Health {
    pub checks: Vec<(Check, CheckState)>,
    /// Startup is latched: once done, it stays done.
    started: bool,
}

impl Health {
    pub fn new(checks: Vec<Check>) -> Health {
        let mut health = Health {
            checks: checks.into_iter().map(|c| (c, CheckState::default())).collect(),
            started: false,
        };
        health.update_started();
        health
    }

    fn checks_of(&self, probe: Probe) -> impl Iterator<Item = &(Check, CheckState)> {
        self.checks
            .iter()
            .filter(move |(check, _)| check.probes.contains(&probe))
    }

    fn update_started(&mut self) {
        if self.started {
            return;
        }
        // Without startup checks, the liveness checks tell when the app has started.
        let probe = if self.checks_of(Probe::Startup).next().is_some() {
            Probe::Startup
        } else {
            Probe::Liveness
        };
        let started = self.checks_of(probe).all(|(_, state)| state.ever_passed);
        self.started = started;
    }

    /// Records a result of check `index`; returns its new status when it changed.
    pub fn record(&mut self, index: usize, result: Result<(), String>, duration: Duration) -> Option<Status> {
        let (check, state) = self.checks.get_mut(index)?;
        let changed = state.record(check, result, duration);
        self.update_started();
        changed
    }

    /// Whether an endpoint answers 200.
    pub fn verdict(&self, probe: Probe) -> bool {
        match probe {
            // A check not yet failing counts as alive: the startup probe holds the kubelet back
            // until the app has come up.
            Probe::Liveness => self
                .checks_of(Probe::Liveness)
                .all(|(_, s)| s.status != Status::Failing),
            Probe::Startup => self.started,
            Probe::Readiness => {
                self.started
                    && self
                        .checks_of(Probe::Readiness)
                        .all(|(_, s)| s.status == Status::Passing)
            }
        }
    }

    /// The JSON detail of an endpoint: its verdict and each of its checks.
    pub fn detail(&self, probe: Probe) -> serde_json::Value {
        let checks: Vec<serde_json::Value> = self
            .checks_of(probe)
            .map(|(check, state)| {
                let mut value = serde_json::to_value(state).unwrap_or_default();
                if let Some(object) = value.as_object_mut() {
                    object.insert("name".to_owned(), check.name.clone().into());
                    object.insert("type".to_owned(), check.target.kind().into());
                    object.insert("dependency".to_owned(), check.dependency.into());
                }
                value
            })
            .collect();
        serde_json::json!({
            "endpoint": probe.path(),
            "status": if self.verdict(probe) { "ok" } else { "failed" },
            "checks": checks,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::settings::Settings;

    fn health() -> Health {
        let checks = json!([
            {"name": "app", "type": "http", "url": "http://127.0.0.1:1/", "probes": ["liveness", "readiness", "startup"],
             "failureThreshold": 3, "successThreshold": 2},
            {"name": "cache", "type": "redis", "address": "127.0.0.1:2", "failureThreshold": 1},
        ]);
        let settings = Settings::from_json(&json!({"checks": checks.to_string()}).to_string()).unwrap();
        Health::new(settings.checks)
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_check_passes_after_enough_successes_and_fails_after_enough_failures() {
        let mut health = health();
        assert_eq!(health.record(0, Ok(()), MS), None, "one success of two");
        assert_eq!(health.record(0, Ok(()), MS), Some(Status::Passing));
        assert_eq!(health.record(0, Err("slow".into()), MS), None);
        assert_eq!(health.record(0, Err("slow".into()), MS), None);
        assert_eq!(
            health.record(0, Ok(()), MS),
            None,
            "a success in between resets the count"
        );
        for _ in 0..2 {
            assert_eq!(health.record(0, Err("down".into()), MS), None);
        }
        assert_eq!(health.record(0, Err("down".into()), MS), Some(Status::Failing));
        assert_eq!(health.checks[0].1.last_error.as_deref(), Some("down"));
    }

    #[test]
    fn a_dependency_outage_fails_readiness_but_never_liveness() {
        let mut health = health();
        assert!(health.verdict(Probe::Liveness), "alive before any result");
        assert!(!health.verdict(Probe::Startup));
        assert!(!health.verdict(Probe::Readiness));
        health.record(0, Ok(()), MS);
        health.record(0, Ok(()), MS);
        health.record(1, Ok(()), MS);
        assert!(health.verdict(Probe::Startup) && health.verdict(Probe::Readiness));

        health.record(1, Err("connection refused".into()), MS);
        assert!(!health.verdict(Probe::Readiness));
        assert!(health.verdict(Probe::Liveness));
        assert!(health.verdict(Probe::Startup), "startup stays done");
        health.record(1, Ok(()), MS);
        assert!(health.verdict(Probe::Readiness));

        let detail = health.detail(Probe::Readiness);
        assert_eq!(detail["status"], "ok");
        assert_eq!(detail["checks"][1]["name"], "cache");
        assert_eq!(detail["checks"][1]["dependency"], true);
        assert_eq!(detail["checks"][1]["status"], "passing");
    }
}
