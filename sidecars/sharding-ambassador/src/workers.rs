//! Worker threads (`--workers`), each a single-threaded runtime with its own shard connections:
//! the client connections handed to a worker are served on it from the first byte to the last
//! reply, so a command never wakes another thread. Once no worker has a client left, the memory
//! they freed goes back (`memory`): what it releases belongs to the whole process, so the workers
//! count their clients together and one of them does the releasing.
//!
//! On one shared multi-threaded runtime, a command's client reader, shard writer, shard reader and
//! client writer tasks run wherever a thread is free, and the wake-ups between threads cost more
//! kernel time (futex, context switches) than the proxying itself. Here the threads share only
//! what is read-mostly: the shard map documents (each worker follows them and builds its own
//! topology), the settings and the metrics.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use tokio::{
    net::TcpStream,
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::warn;

use crate::{memory::Occupancy, topology::Topology};

/// What a worker runs for one accepted client: given the stream (registered on the worker's own
/// reactor) and the worker's topology.
pub type Job = Box<dyn FnOnce(TcpStream, watch::Receiver<Arc<Topology>>) -> BoxFuture + Send>;
type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Builds the future that keeps a worker's topology up to date (it owns the sender).
pub type Follower = Arc<dyn Fn(watch::Sender<Arc<Topology>>) -> BoxFuture + Send + Sync>;

/// Why the workers could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("starting a worker thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("a worker thread stopped before it started")]
    Lost,
}

/// The worker threads; dropping this stops them once their clients are gone.
pub struct Workers {
    jobs: Vec<mpsc::UnboundedSender<(std::net::TcpStream, Job)>>,
    followers: Vec<JoinHandle<()>>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("count", &self.jobs.len())
            .finish()
    }
}

impl Workers {
    /// Starts `count` worker threads (at least one), each following the shard map with `follower`.
    pub fn start(count: usize, follower: &Follower) -> Result<Workers, WorkerError> {
        let mut jobs = Vec::new();
        let mut followers = Vec::new();
        let occupancy = Arc::new(Occupancy::default());
        for index in 0..count.max(1) {
            let (sender, receiver) = mpsc::unbounded_channel();
            let (started, follower_handle) = std::sync::mpsc::sync_channel(1);
            let follower = follower.clone();
            let occupancy = occupancy.clone();
            let releases = index == 0;
            std::thread::Builder::new()
                .name(format!("ambassador-worker-{index}"))
                .spawn(move || run_worker(receiver, &follower, &started, occupancy, releases))
                .map_err(WorkerError::Thread)?;
            followers.push(follower_handle.recv().map_err(|_| WorkerError::Lost)?);
            jobs.push(sender);
        }
        Ok(Workers {
            jobs,
            followers,
            next: AtomicUsize::new(0),
        })
    }

    /// How many worker threads there are.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Always false: there is at least one worker.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Hands a client to the next worker, in turn.
    pub fn dispatch(&self, stream: TcpStream, job: Job) {
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                warn!(%error, "Could not hand a client to a worker.");
                return;
            }
        };
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.jobs.len();
        if self.jobs[turn].send((stream, job)).is_err() {
            warn!(worker = turn, "A worker has stopped; client dropped.");
        }
    }

    /// Stops following the shard map (at shutdown, so a new map can't make the process ready
    /// again).
    pub fn stop_following(&self) {
        for follower in &self.followers {
            follower.abort();
        }
    }
}

fn run_worker(
    mut jobs: mpsc::UnboundedReceiver<(std::net::TcpStream, Job)>,
    follower: &Follower,
    started: &std::sync::mpsc::SyncSender<JoinHandle<()>>,
    occupancy: Arc<Occupancy>,
    releases: bool,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            warn!(%error, "A worker's runtime did not start.");
            return;
        }
    };
    runtime.block_on(async move {
        let (topology, receiver) = watch::channel(Arc::new(Topology::empty()));
        let _ = started.send(tokio::spawn(follower(topology)));
        let releaser = releases.then(|| {
            let occupancy = occupancy.clone();
            tokio::spawn(async move { occupancy.release_when_idle().await })
        });
        while let Some((stream, job)) = jobs.recv().await {
            match TcpStream::from_std(stream) {
                Ok(stream) => {
                    let client = job(stream, receiver.clone());
                    let occupant = occupancy.enter();
                    tokio::spawn(async move {
                        client.await;
                        drop(occupant);
                    });
                }
                Err(error) => warn!(%error, "A worker could not take a client."),
            }
        }
        if let Some(releaser) = releaser {
            releaser.abort();
        }
    });
}
