//! Request holding: which requests wait for a backend that has no endpoint yet (a service scaled
//! to zero), how many may wait at once, and how long a cold start took. The waiting itself (sleep,
//! connect again) is the proxy's; this module decides and counts, and takes the time from its
//! caller, so it is tested without clocks or sockets.

use std::{
    sync::{
        atomic::{AtomicI64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use prometheus_client::metrics::{counter::Counter, gauge::Gauge, histogram::Histogram};

use crate::metrics::{HoldLabels, Metrics};

/// The requests held now, the cold start in progress, and their metrics. One per process, shared
/// by every worker.
#[derive(Debug)]
pub struct HoldQueue {
    /// Requests held now; also the `held_requests` gauge.
    held: Gauge,
    /// When the first request of the current cold start was held.
    cold_start: Mutex<Option<Instant>>,
    cold_starts: Histogram,
    served: Counter,
    timed_out: Counter,
    queue_full: Counter,
}

/// Why a request could not be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{held} requests are held already, the most allowed")]
pub struct QueueFull {
    pub held: i64,
}

/// Whether one more request may be held when `held` are: the queue is bounded by `max`.
pub fn admits(held: i64, max: u32) -> bool {
    held < i64::from(max)
}

/// A request's place in the queue; leaving it (the request answered, timed out, or its client gone)
/// frees the place.
#[derive(Debug)]
pub struct Place<'a> {
    queue: &'a HoldQueue,
    served: bool,
}

impl HoldQueue {
    /// A queue counting into `metrics`.
    pub fn new(metrics: &Metrics) -> HoldQueue {
        let outcome = |outcome| metrics.held_outcomes.get_or_create_owned(&HoldLabels { outcome });
        HoldQueue {
            held: metrics.held_requests.clone(),
            cold_start: Mutex::new(None),
            cold_starts: metrics.cold_start.clone(),
            served: outcome("served"),
            timed_out: outcome("timeout"),
            queue_full: outcome("queue_full"),
        }
    }

    /// Requests held now.
    pub fn held(&self) -> i64 {
        self.held.get()
    }

    /// Takes a place for a request at `now`, unless `max` are held. The first request held while
    /// none is starts a cold start.
    pub fn enter(&self, max: u32, now: Instant) -> Result<Place<'_>, QueueFull> {
        let counter: &AtomicI64 = self.held.inner();
        match counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
            admits(held, max).then_some(held + 1)
        }) {
            Ok(before) => {
                if before == 0 {
                    if let Ok(mut started) = self.cold_start.lock() {
                        started.get_or_insert(now);
                    }
                }
                Ok(Place {
                    queue: self,
                    served: false,
                })
            }
            Err(held) => {
                self.queue_full.inc();
                Err(QueueFull { held })
            }
        }
    }
}

impl Place<'_> {
    /// The held request got its backend's answer at `now`. The first answer of a cold start ends
    /// it, and its duration (first request held to this answer) is returned and observed.
    pub fn served(mut self, now: Instant) -> Option<Duration> {
        self.served = true;
        self.queue.served.inc();
        let started = self.queue.cold_start.lock().ok()?.take()?;
        let took = now.saturating_duration_since(started);
        self.queue.cold_starts.observe(took.as_secs_f64());
        Some(took)
    }

    /// The request waited its whole `timeout`.
    pub fn timed_out(self) {
        self.queue.timed_out.inc();
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let before = self.queue.held.dec();
        // The last held request leaving without any answer (timed out, or its client gone) ends
        // the cold start unmeasured: a later one starts its own clock.
        if before == 1 && !self.served {
            if let Ok(mut started) = self.queue.cold_start.lock() {
                started.take();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;

    fn queue() -> (HoldQueue, Metrics) {
        let metrics = Metrics::register(&mut Registry::default());
        (HoldQueue::new(&metrics), metrics)
    }

    #[test]
    fn the_queue_admits_requests_up_to_its_bound() {
        let cases = [
            (0, 1, true),
            (0, 1000, true),
            (999, 1000, true),
            (1000, 1000, false),
            (1001, 1000, false),
        ];
        for (held, max, admitted) in cases {
            assert_eq!(admits(held, max), admitted, "{held} held of {max}");
        }
    }

    #[test]
    fn a_full_queue_refuses_and_counts_and_a_freed_place_admits_again() {
        let (queue, metrics) = queue();
        let now = Instant::now();
        let first = queue.enter(2, now).unwrap();
        let _second = queue.enter(2, now).unwrap();
        assert_eq!(queue.enter(2, now).unwrap_err(), QueueFull { held: 2 });
        assert_eq!(metrics.held_requests.get(), 2);
        drop(first);
        assert_eq!(queue.held(), 1);
        assert!(queue.enter(2, now).is_ok());
        let full = metrics.held_outcomes.get_or_create(&HoldLabels {
            outcome: "queue_full",
        });
        assert_eq!(full.get(), 1);
    }

    #[test]
    fn a_cold_start_lasts_from_the_first_held_request_to_the_first_answer() {
        let (queue, _) = queue();
        let start = Instant::now();
        let first = queue.enter(10, start).unwrap();
        let second = queue.enter(10, start + Duration::from_secs(1)).unwrap();
        assert_eq!(
            second.served(start + Duration::from_secs(3)),
            Some(Duration::from_secs(3))
        );
        // Later answers of the same cold start are not cold starts of their own.
        assert_eq!(first.served(start + Duration::from_secs(4)), None);
        // Held again later: a new cold start.
        let again = queue.enter(10, start + Duration::from_secs(60)).unwrap();
        assert_eq!(
            again.served(start + Duration::from_millis(61_500)),
            Some(Duration::from_millis(1_500))
        );
    }

    #[test]
    fn a_cold_start_nobody_was_answered_in_is_not_measured_and_the_next_starts_afresh() {
        let (queue, metrics) = queue();
        let start = Instant::now();
        queue.enter(10, start).unwrap().timed_out();
        let later = queue.enter(10, start + Duration::from_secs(100)).unwrap();
        assert_eq!(
            later.served(start + Duration::from_secs(101)),
            Some(Duration::from_secs(1))
        );
        let timed_out = metrics
            .held_outcomes
            .get_or_create(&HoldLabels { outcome: "timeout" });
        assert_eq!(timed_out.get(), 1);
    }
}
