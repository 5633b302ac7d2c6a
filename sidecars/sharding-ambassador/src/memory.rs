//! Gives the memory a burst of clients freed back to the system once a worker has no client left.
//!
//! glibc's allocator keeps what a thread freed in that thread's arena for its next allocations:
//! after fifty pipelining clients leave, their buffers stay resident until the process ends. An
//! ambassador lives beside its application under the pod's memory limit, so a worker left without
//! clients for [`SETTLE`] hands the free pages back. Connection churn does not trim on every
//! disconnect: the worker must stay empty for the whole pause.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::Notify;

/// How long a worker stays without clients before its free memory is released.
pub const SETTLE: Duration = Duration::from_millis(200);

/// The clients a worker serves, and the wake-up when the last one leaves.
#[derive(Debug, Default)]
pub struct Occupancy {
    clients: AtomicUsize,
    emptied: Notify,
}

impl Occupancy {
    /// Counts a client in until the guard drops.
    pub fn enter(self: &Arc<Self>) -> Occupant {
        self.clients.fetch_add(1, Ordering::Relaxed);
        Occupant(self.clone())
    }

    /// Releases free memory each time the worker has stayed empty for [`SETTLE`]; runs for as
    /// long as the worker does.
    pub async fn release_when_idle(&self) {
        loop {
            self.emptied.notified().await;
            tokio::time::sleep(SETTLE).await;
            if self.clients.load(Ordering::Relaxed) == 0 {
                release_free_memory();
            }
        }
    }
}

/// A client counted in an [`Occupancy`].
#[derive(Debug)]
pub struct Occupant(Arc<Occupancy>);

impl Drop for Occupant {
    fn drop(&mut self) {
        if self.0.clients.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.emptied.notify_one();
        }
    }
}

/// Returns the allocator's free pages to the system (glibc); elsewhere a no-op.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim(3) only walks the allocator's own free lists under its own locks;
        // it takes a plain integer and no pointer of ours.
        #[allow(unsafe_code)]
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn counts_clients_in_and_out() {
        let occupancy = Arc::new(Occupancy::default());
        let first = occupancy.enter();
        let second = occupancy.enter();
        assert_eq!(occupancy.clients.load(Ordering::Relaxed), 2);
        drop(first);
        drop(second);
        assert_eq!(occupancy.clients.load(Ordering::Relaxed), 0);
        // The last one out wakes the releaser, which runs once the pause is over.
        let releaser = tokio::spawn({
            let occupancy = occupancy.clone();
            async move { occupancy.release_when_idle().await }
        });
        tokio::time::sleep(SETTLE * 2).await;
        releaser.abort();
    }
}
