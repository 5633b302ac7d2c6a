//! Passive outlier detection per endpoint and the shared retry budget. Both survive configuration
//! reloads (they are kept by endpoint identity, not by configuration generation).

use std::{
    sync::{
        atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering},
        OnceLock,
    },
    time::{Duration, Instant},
};

use crate::config::{OutlierConfig, RetryBudgetConfig};

/// Milliseconds since the process started (monotonic).
pub fn now_millis() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let elapsed = START.get_or_init(Instant::now).elapsed();
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

/// The health of one endpoint as seen from its responses.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    consecutive_failures: AtomicU32,
    /// Ejections since the endpoint last succeeded; 0 when it is healthy.
    ejections: AtomicU32,
    ejected_until: AtomicU64,
}

impl EndpointHealth {
    /// Whether the endpoint may be tried at `now` (milliseconds from [`now_millis`]).
    pub fn is_available(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) <= now
    }

    /// A response came back (anything but a gateway error).
    pub fn record_success(&self) {
        // Loads first so that a healthy endpoint's cache line is not written on every request.
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// A connection failure, a reset, a timeout or a gateway error. Returns the ejection time when
    /// this failure ejected the endpoint. After an ejection and before the next success, one failure
    /// is enough to eject it again, for longer.
    pub fn record_failure(&self, now: u64, policy: &OutlierConfig) -> Option<Duration> {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let on_probation = self.ejections.load(Ordering::Relaxed) > 0;
        if failures < policy.consecutive_failures && !on_probation {
            return None;
        }
        if !self.is_available(now) {
            // Already ejected by a concurrent failure.
            return None;
        }
        self.consecutive_failures.store(0, Ordering::Relaxed);
        let ejections = self.ejections.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let time = policy
            .base_ejection_time
            .0
            .saturating_mul(ejections)
            .min(policy.max_ejection_time.0);
        let until = now.saturating_add(u64::try_from(time.as_millis()).unwrap_or(u64::MAX));
        self.ejected_until.store(until, Ordering::Relaxed);
        Some(time)
    }
}

/// Limits retries to a share of the request rate: every request deposits `ratio` of a retry, every
/// second adds `minPerSecond`, and a retry spends one. The balance is capped so that a quiet period
/// cannot save up an unbounded burst.
#[derive(Debug)]
pub struct RetryBudget {
    /// In thousandths of a retry.
    balance: AtomicI64,
    /// The second of the last refill; `NEVER` until the first, so the first second of the
    /// process gets its minimum too (a backend that is down from the start is the case that
    /// most needs it).
    second: AtomicU64,
}

const NEVER: u64 = u64::MAX;

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            balance: AtomicI64::new(0),
            second: AtomicU64::new(NEVER),
        }
    }
}

const UNIT: i64 = 1_000;

impl RetryBudget {
    fn cap(policy: &RetryBudgetConfig) -> i64 {
        i64::from(policy.min_per_second.max(10)) * 10 * UNIT
    }

    /// Called once per request.
    pub fn deposit(&self, policy: &RetryBudgetConfig) {
        let amount = (policy.ratio * UNIT as f64) as i64;
        if amount > 0 && self.balance.load(Ordering::Relaxed) < Self::cap(policy) {
            self.balance.fetch_add(amount, Ordering::Relaxed);
        }
    }

    /// Takes one retry from the budget, if there is one.
    pub fn try_withdraw(&self, now: u64, policy: &RetryBudgetConfig) -> bool {
        let second = now / 1_000;
        let last = self.second.load(Ordering::Relaxed);
        if second != last
            && self
                .second
                .compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let cap = Self::cap(policy);
            let refill = i64::from(policy.min_per_second) * UNIT;
            let _ = self
                .balance
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |balance| {
                    Some(balance.saturating_add(refill).min(cap.max(balance)))
                });
        }
        self.balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |balance| {
                (balance >= UNIT).then_some(balance - UNIT)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigDuration;

    fn policy() -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: 3,
            base_ejection_time: ConfigDuration(Duration::from_secs(10)),
            max_ejection_time: ConfigDuration(Duration::from_secs(25)),
        }
    }

    #[test]
    fn an_endpoint_is_ejected_after_consecutive_failures_and_comes_back_later() {
        let health = EndpointHealth::default();
        assert_eq!(health.record_failure(0, &policy()), None);
        assert_eq!(health.record_failure(0, &policy()), None);
        assert_eq!(health.record_failure(0, &policy()), Some(Duration::from_secs(10)));
        assert!(!health.is_available(9_999));
        assert!(health.is_available(10_000));
    }

    #[test]
    fn a_success_resets_the_count() {
        let health = EndpointHealth::default();
        for _ in 0..10 {
            assert_eq!(health.record_failure(0, &policy()), None);
            assert_eq!(health.record_failure(0, &policy()), None);
            health.record_success();
        }
        assert!(health.is_available(0));
    }

    #[test]
    fn a_failure_right_after_an_ejection_ejects_again_for_longer_up_to_the_maximum() {
        let health = EndpointHealth::default();
        for _ in 0..3 {
            health.record_failure(0, &policy());
        }
        assert_eq!(
            health.record_failure(10_000, &policy()),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            health.record_failure(30_000, &policy()),
            Some(Duration::from_secs(25))
        );
        health.record_success();
        assert_eq!(health.record_failure(60_000, &policy()), None);
    }

    #[test]
    fn retries_are_limited_to_the_ratio_plus_the_minimum_per_second() {
        let budget = RetryBudget::default();
        let policy = RetryBudgetConfig {
            ratio: 0.2,
            min_per_second: 2,
        };
        // The first withdrawal in a second adds the two-per-second minimum.
        assert!(budget.try_withdraw(1_000, &policy));
        assert!(budget.try_withdraw(1_000, &policy));
        assert!(!budget.try_withdraw(1_000, &policy));
        for _ in 0..50 {
            budget.deposit(&policy);
        }
        let granted = (0..100).filter(|_| budget.try_withdraw(1_500, &policy)).count();
        assert_eq!(granted, 10, "50 requests at 20% buy 10 retries");
    }

    #[test]
    fn the_first_second_of_the_process_has_its_minimum_too() {
        let budget = RetryBudget::default();
        let policy = RetryBudgetConfig {
            ratio: 0.2,
            min_per_second: 3,
        };
        budget.deposit(&policy);
        let granted = (0..10).filter(|_| budget.try_withdraw(0, &policy)).count();
        assert_eq!(
            granted, 3,
            "the minimum, and a fifth of one request is not a retry yet"
        );
    }

    #[test]
    fn a_quiet_period_cannot_save_up_more_than_the_cap() {
        let budget = RetryBudget::default();
        let policy = RetryBudgetConfig {
            ratio: 1.0,
            min_per_second: 10,
        };
        for _ in 0..10_000 {
            budget.deposit(&policy);
        }
        let granted = (0..10_000).filter(|_| budget.try_withdraw(0, &policy)).count();
        assert!(granted <= 101, "{granted}");
    }
}
