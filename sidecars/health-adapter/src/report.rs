//! What the health adapter tells Kubernetes Events: the endpoints' transitions, from two
//! [`Standing`]s of the pure [`Health`]. Pure; `run` hands the notes to the runtime's recorder.
//!
//! Readiness is reported as failing when, after start-up, one of its checks is failing (a check
//! not yet decided makes the pod unready without being a failure worth an Event), so that a
//! dependency that is down from the start is reported too, not only one that goes down later.

use outrigger_sidecar_runtime::events::{EventType, Note};

use crate::{
    settings::Probe,
    state::{Health, Status},
};

/// The parts of the health that Events are written about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub live: bool,
    pub started: bool,
    pub readiness_failing: bool,
}

impl Health {
    pub fn standing(&self) -> Standing {
        let started = self.verdict(Probe::Startup);
        Standing {
            live: self.verdict(Probe::Liveness),
            started,
            readiness_failing: started && self.failing(Probe::Readiness).next().is_some(),
        }
    }

    /// The failing checks of an endpoint, with their last errors.
    fn failing(&self, probe: Probe) -> impl Iterator<Item = (&str, &str)> {
        self.checks
            .iter()
            .filter(move |(check, state)| check.probes.contains(&probe) && state.status == Status::Failing)
            .map(|(check, state)| {
                (
                    check.name.as_str(),
                    state.last_error.as_deref().unwrap_or("failed"),
                )
            })
    }

    /// `check redis: timed out; check app: status 500 outside 200-399`.
    fn failing_detail(&self, probe: Probe) -> String {
        self.failing(probe)
            .map(|(name, error)| format!("check {name}: {error}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Reasons of the Events, one per transition.
pub mod reason {
    pub const STARTED: &str = "StartupPassed";
    pub const LIVENESS_FAILING: &str = "LivenessFailing";
    pub const LIVENESS_RECOVERED: &str = "LivenessRecovered";
    pub const READINESS_FAILING: &str = "ReadinessFailing";
    pub const READINESS_RECOVERED: &str = "ReadinessRecovered";
}

/// The notes for a change from `before` to `health`'s standing now: a Warning naming the failing
/// checks and their errors, a Normal one on recovery and once start-up has passed.
pub fn transitions(before: Standing, health: &Health) -> Vec<Note> {
    let after = health.standing();
    let note = |type_, reason, message: String| Note {
        type_,
        reason,
        message,
    };
    let mut notes = Vec::new();
    if !before.started && after.started {
        notes.push(note(
            EventType::Normal,
            reason::STARTED,
            "startup checks passed".to_owned(),
        ));
    }
    match (before.live, after.live) {
        (true, false) => notes.push(note(
            EventType::Warning,
            reason::LIVENESS_FAILING,
            format!("liveness failing: {}", health.failing_detail(Probe::Liveness)),
        )),
        (false, true) => notes.push(note(
            EventType::Normal,
            reason::LIVENESS_RECOVERED,
            "liveness checks passing again".to_owned(),
        )),
        _ => {}
    }
    match (before.readiness_failing, after.readiness_failing) {
        (false, true) => notes.push(note(
            EventType::Warning,
            reason::READINESS_FAILING,
            format!("readiness failing: {}", health.failing_detail(Probe::Readiness)),
        )),
        (true, false) => notes.push(note(
            EventType::Normal,
            reason::READINESS_RECOVERED,
            "readiness checks passing again".to_owned(),
        )),
        _ => {}
    }
    notes
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::settings::Settings;

    const MS: Duration = Duration::from_millis(1);

    /// `app` answers every probe; `cache` is a dependency (readiness only), failing at once.
    fn health() -> Health {
        let checks = json!([
            {"name": "app", "type": "http", "url": "http://127.0.0.1:1/", "probes": ["liveness", "readiness", "startup"],
             "failureThreshold": 2},
            {"name": "cache", "type": "redis", "address": "127.0.0.1:2", "failureThreshold": 1},
        ]);
        let settings = Settings::from_json(&json!({"checks": checks.to_string()}).to_string()).unwrap();
        Health::new(settings.checks)
    }

    type Step = (
        usize,
        Result<(), &'static str>,
        &'static [(EventType, &'static str, &'static str)],
    );

    #[test]
    fn each_transition_is_one_note_naming_the_failing_check() {
        use EventType::{Normal, Warning};
        let steps: &[Step] = &[
            (1, Err("connecting: refused"), &[]),
            (
                0,
                Ok(()),
                &[
                    (Normal, reason::STARTED, "startup checks passed"),
                    (
                        Warning,
                        reason::READINESS_FAILING,
                        "readiness failing: check cache: connecting: refused",
                    ),
                ],
            ),
            (1, Err("timed out"), &[]),
            (
                1,
                Ok(()),
                &[(
                    Normal,
                    reason::READINESS_RECOVERED,
                    "readiness checks passing again",
                )],
            ),
            (
                1,
                Err("timed out"),
                &[(
                    Warning,
                    reason::READINESS_FAILING,
                    "readiness failing: check cache: timed out",
                )],
            ),
            (0, Err("status 500 outside 200-399"), &[]),
            (
                0,
                Err("status 503 outside 200-399"),
                &[(
                    Warning,
                    reason::LIVENESS_FAILING,
                    "liveness failing: check app: status 503 outside 200-399",
                )],
            ),
            (
                0,
                Ok(()),
                &[(
                    Normal,
                    reason::LIVENESS_RECOVERED,
                    "liveness checks passing again",
                )],
            ),
            (
                1,
                Ok(()),
                &[(
                    Normal,
                    reason::READINESS_RECOVERED,
                    "readiness checks passing again",
                )],
            ),
        ];
        let mut health = health();
        for (index, (check, result, expected)) in steps.iter().enumerate() {
            let before = health.standing();
            health.record(*check, result.map_err(str::to_owned), MS);
            let notes: Vec<_> = transitions(before, &health)
                .into_iter()
                .map(|n| (n.type_, n.reason, n.message))
                .collect();
            let expected: Vec<_> = expected
                .iter()
                .map(|(t, r, m)| (*t, *r, (*m).to_owned()))
                .collect();
            assert_eq!(notes, expected, "step {index}");
        }
    }

    #[test]
    fn an_undecided_dependency_is_not_a_failure() {
        let mut health = health();
        let before = health.standing();
        health.record(0, Ok(()), MS);
        assert!(!health.verdict(Probe::Readiness), "cache not yet decided");
        let reasons: Vec<_> = transitions(before, &health).iter().map(|n| n.reason).collect();
        assert_eq!(reasons, [reason::STARTED]);
    }
}
