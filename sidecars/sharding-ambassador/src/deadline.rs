//! Deadlines on the hot path without a timer per command.
//!
//! `tokio::time::timeout` registers a new timer entry per call, and a new entry that becomes the
//! runtime's earliest wakes the driver through its eventfd: with one timeout per command that was
//! a write syscall for every other command. A [`Watchdog`] keeps one timer for a whole task and
//! moves it only when it fires early (deadlines mostly come in increasing order, so the timer set
//! for an older deadline fires first, is found early, and is moved to the newer one).

use std::{cell::RefCell, future::Future, pin::Pin, time::Duration};

use tokio::time::{Instant, Sleep};

/// One reusable timer for the deadlines of one task.
#[derive(Debug)]
pub struct Watchdog {
    sleep: Pin<Box<Sleep>>,
}

impl Default for Watchdog {
    fn default() -> Self {
        Watchdog::new()
    }
}

/// Far enough that an unused watchdog never fires.
const IDLE: Duration = Duration::from_secs(24 * 60 * 60);

impl Watchdog {
    pub fn new() -> Watchdog {
        Watchdog {
            sleep: Box::pin(tokio::time::sleep(IDLE)),
        }
    }

    /// `future`'s output, or `None` once `deadline` passes first.
    pub async fn wait<F: Future>(&mut self, deadline: Instant, future: F) -> Option<F::Output> {
        let mut future = std::pin::pin!(future);
        if self.sleep.deadline() > deadline {
            self.sleep.as_mut().reset(deadline);
        }
        loop {
            tokio::select! {
                biased;
                output = &mut future => return Some(output),
                () = &mut self.sleep => {
                    if Instant::now() >= deadline {
                        return None;
                    }
                    // Set for an earlier deadline: move it to this one.
                    self.sleep.as_mut().reset(deadline);
                }
            }
        }
    }
}

tokio::task_local! {
    /// The watchdog of a task that waits for many replies in turn (a client's reply writer); taken
    /// out while a wait uses it.
    static TASK_WATCHDOG: RefCell<Option<Watchdog>>;
}

/// Runs `future` with a watchdog that [`within`] uses.
pub async fn with_watchdog<F: Future>(future: F) -> F::Output {
    TASK_WATCHDOG
        .scope(RefCell::new(Some(Watchdog::new())), future)
        .await
}

/// `future`'s output, or `None` after `limit`: on the task's watchdog when it has one that is free,
/// else with a timer of its own.
pub async fn within<F: Future>(limit: Duration, future: F) -> Option<F::Output> {
    let deadline = Instant::now() + limit;
    let watchdog = TASK_WATCHDOG
        .try_with(|cell| cell.borrow_mut().take())
        .ok()
        .flatten();
    match watchdog {
        Some(mut watchdog) => {
            let output = watchdog.wait(deadline, future).await;
            // Handed back for the next wait; a nested wait meanwhile used a timer of its own.
            let _ = TASK_WATCHDOG.try_with(|cell| *cell.borrow_mut() = Some(watchdog));
            output
        }
        None => tokio::time::timeout_at(deadline, future).await.ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_watchdog_times_out_at_each_deadline_in_turn() {
        let mut watchdog = Watchdog::new();
        let start = Instant::now();
        let never = std::future::pending::<()>();
        assert_eq!(watchdog.wait(start + Duration::from_secs(1), never).await, None);
        assert_eq!(Instant::now(), start + Duration::from_secs(1));
        // A later deadline after the timer fired.
        let never = std::future::pending::<()>();
        assert_eq!(watchdog.wait(start + Duration::from_secs(3), never).await, None);
        assert_eq!(Instant::now(), start + Duration::from_secs(3));
        // An earlier deadline than the timer's.
        watchdog.sleep.as_mut().reset(start + Duration::from_secs(100));
        let never = std::future::pending::<()>();
        assert_eq!(watchdog.wait(start + Duration::from_secs(4), never).await, None);
        assert_eq!(Instant::now(), start + Duration::from_secs(4));
        assert_eq!(
            watchdog.wait(start + Duration::from_secs(5), async { 7 }).await,
            Some(7)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_set_for_an_older_deadline_does_not_cut_a_newer_wait_short() {
        let mut watchdog = Watchdog::new();
        let start = Instant::now();
        assert_eq!(
            watchdog.wait(start + Duration::from_secs(1), async {}).await,
            Some(())
        );
        let slow = async {
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            "late but in time"
        };
        assert_eq!(
            watchdog.wait(start + Duration::from_secs(2), slow).await,
            Some("late but in time")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn within_uses_the_tasks_watchdog_and_works_without_one() {
        let never = std::future::pending::<()>;
        assert_eq!(within(Duration::from_secs(1), never()).await, None);
        let result = with_watchdog(async {
            let first = within(Duration::from_secs(1), never()).await;
            let second = within(Duration::from_secs(1), async { 2 }).await;
            (first, second)
        })
        .await;
        assert_eq!(result, (None, Some(2)));
    }
}
