//! The health gate after a reload: the app has to stay healthy for a window; enough consecutive
//! failed checks inside it roll the files back. Pure: checks are fed in, a verdict comes out.

use std::time::Duration;

use tokio::time::Instant;

/// What the gate says after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep checking.
    Watching,
    /// The window passed without enough failures: the version stays.
    Healthy,
    /// Restore the previous version.
    RollBack,
}

#[derive(Debug, Clone)]
pub struct HealthGate {
    ends: Instant,
    failures_to_roll_back: u32,
    consecutive_failures: u32,
}

impl HealthGate {
    pub fn new(started: Instant, window: Duration, failures_to_roll_back: u32) -> HealthGate {
        HealthGate {
            ends: started + window,
            failures_to_roll_back: failures_to_roll_back.max(1),
            consecutive_failures: 0,
        }
    }

    /// Records one check made at `now`.
    pub fn observe(&mut self, now: Instant, healthy: bool) -> Verdict {
        if healthy {
            self.consecutive_failures = 0;
        } else {
            self.consecutive_failures += 1;
            if self.consecutive_failures >= self.failures_to_roll_back {
                return Verdict::RollBack;
            }
        }
        if now >= self.ends {
            Verdict::Healthy
        } else {
            Verdict::Watching
        }
    }
}

/// Whether a rollback can happen: only with a previous version to go back to (a sidecar restarted
/// on a bad version, or the first version of a pod, has none, and reports instead).
pub fn can_roll_back(previous_version: Option<&str>, current_version: &str) -> bool {
    previous_version.is_some_and(|previous| previous != current_version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_failures_inside_the_window_roll_back() {
        let start = Instant::now();
        let mut gate = HealthGate::new(start, Duration::from_secs(10), 2);
        let at = |seconds| start + Duration::from_secs(seconds);
        assert_eq!(gate.observe(at(1), false), Verdict::Watching);
        assert_eq!(
            gate.observe(at(2), true),
            Verdict::Watching,
            "a success resets the count"
        );
        assert_eq!(gate.observe(at(3), false), Verdict::Watching);
        assert_eq!(gate.observe(at(4), false), Verdict::RollBack);
    }

    #[test]
    fn a_window_passed_healthy_keeps_the_version() {
        let start = Instant::now();
        let mut gate = HealthGate::new(start, Duration::from_secs(5), 3);
        assert_eq!(
            gate.observe(start + Duration::from_secs(4), false),
            Verdict::Watching
        );
        assert_eq!(
            gate.observe(start + Duration::from_secs(5), true),
            Verdict::Healthy
        );
    }

    #[test]
    fn without_a_different_previous_version_there_is_nothing_to_roll_back_to() {
        assert!(can_roll_back(Some("a"), "b"));
        assert!(!can_roll_back(Some("b"), "b"));
        assert!(!can_roll_back(None, "b"));
    }
}
