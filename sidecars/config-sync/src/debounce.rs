//! Bursts of changes applied as one: a change is applied once the sources have been quiet for the
//! debounce time, and at the latest a few debounce times after the first change of a burst, so a
//! ConfigMap edited without pause still reaches the app.

use std::time::Duration;

use tokio::time::Instant;

/// How many quiet periods a burst may hold an apply back.
const MAX_HOLD_FACTOR: u32 = 5;

#[derive(Debug, Clone)]
pub struct Debounce {
    quiet: Duration,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Debounce {
    pub fn new(quiet: Duration) -> Debounce {
        Debounce {
            quiet,
            first: None,
            last: None,
        }
    }

    /// A source changed at `now`.
    pub fn changed(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// When the pending change is due; `None` when nothing is pending.
    pub fn due(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        Some((last + self.quiet).min(first + self.quiet * MAX_HOLD_FACTOR))
    }

    /// Takes the pending change if it is due at `now`.
    pub fn take_if_due(&mut self, now: Instant) -> bool {
        match self.due() {
            Some(due) if due <= now => {
                self.first = None;
                self.last = None;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Duration = Duration::from_millis(100);

    #[test]
    fn a_burst_is_applied_once_after_it_goes_quiet() {
        let start = Instant::now();
        let mut debounce = Debounce::new(QUIET);
        assert_eq!(debounce.due(), None);
        debounce.changed(start);
        debounce.changed(start + Duration::from_millis(40));
        debounce.changed(start + Duration::from_millis(80));
        assert_eq!(debounce.due(), Some(start + Duration::from_millis(180)));
        assert!(!debounce.take_if_due(start + Duration::from_millis(179)));
        assert!(debounce.take_if_due(start + Duration::from_millis(180)));
        assert_eq!(debounce.due(), None, "taken once");
    }

    #[test]
    fn changes_without_a_pause_are_still_applied_after_the_longest_hold() {
        let start = Instant::now();
        let mut debounce = Debounce::new(QUIET);
        for step in 0..20 {
            debounce.changed(start + Duration::from_millis(step * 50));
        }
        assert_eq!(debounce.due(), Some(start + QUIET * MAX_HOLD_FACTOR));
    }
}
