//! Socket writes of one scheduler pass, made together after the pass's reads.
//!
//! A write to a loopback or local socket wakes the reader at once, and Linux tends to run the woken
//! reader on the writer's core, ahead of the writer. When a worker wrote each response as soon as
//! it was ready, a client woken by the first response ran before the worker could write the
//! second; the client then slept again, woke for the next one, and so on. The worker lost a large
//! share of its core to those switches, and the client read one response per wake-up.
//!
//! Here the connection tasks of a worker queue their writes, and one flusher task, woken by the
//! first write queued, sends them all once the tasks woken before it have run: every read of the
//! pass first, then every write, as HAProxy's event loop does. Where the kernel offers io_uring,
//! the whole batch goes out in one system call, so no reader runs before the batch is out; it
//! then finds every response addressed to it at once. Without io_uring (an old kernel, or a
//! seccomp profile that forbids it) the batch goes out one `send` at a time.
//!
//! A task lends its write to the batch ([`lend`]) and goes on waiting for what comes next on its
//! connections (the backend's answer, the client's next request). A complete send wakes nobody:
//! the task collects it ([`Lent::finish`]) when it next needs the socket. Only a send the batch
//! could not finish (a full socket buffer, an error) wakes its task, which writes the rest the
//! usual way.
//!
//! Only a worker's own single-threaded runtime batches ([`start`] runs in each); elsewhere (a
//! multi-threaded runtime, where a task may move between threads) [`lend`] declines and the caller
//! writes at once.

// The batch is handed to the kernel by address (io_uring) and by file descriptor (`send`).
#![allow(unsafe_code)]

use std::{
    cell::RefCell,
    future::Future,
    io,
    os::fd::{AsRawFd, RawFd},
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll, Waker},
};

use bytes::BytesMut;
use tokio::{io::AsyncWriteExt, net::TcpStream, runtime::RuntimeFlavor};

/// Most writes handed to io_uring in one system call; larger batches go in several.
const RING_ENTRIES: u32 = 256;
/// `send` flags: never block (the rest is written the usual way) and no SIGPIPE.
const SEND_FLAGS: i32 = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;

/// How a worker thread sends its batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendMode {
    /// One io_uring submission per batch when the kernel allows it, else [`SendMode::OneByOne`].
    Ring,
    /// One `send` per write (still after the pass's reads).
    OneByOne,
}

/// Starts the flusher of this thread's runtime, when it is a single-threaded one and has none yet.
pub fn start(mode: SendMode) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if handle.runtime_flavor() != RuntimeFlavor::CurrentThread {
        return;
    }
    let alive = Arc::new(AtomicBool::new(true));
    let started = BATCH.with(|batch| {
        let mut batch = batch.borrow_mut();
        if batch
            .flusher
            .as_ref()
            .is_some_and(|flusher| flusher.alive.load(Ordering::Acquire))
        {
            return false;
        }
        batch.flusher = Some(FlusherHandle {
            alive: alive.clone(),
            waker: None,
        });
        batch.mode = mode;
        true
    });
    if started {
        handle.spawn(Flusher {
            alive,
            wakers: Vec::new(),
        });
    }
}

/// Lends `bytes` to the pass's batch for `stream`, on a batching worker (`None` elsewhere, and for
/// nothing to write: then `bytes` is untouched and the caller writes it). The calling task is woken
/// if the batch cannot send all of it; a complete send wakes nobody, and [`Lent::finish`] collects
/// it.
pub async fn lend(stream: &TcpStream, bytes: &mut BytesMut) -> Option<Lent> {
    if bytes.is_empty() {
        return None;
    }
    let slot = std::future::poll_fn(|cx| Poll::Ready(queue(stream.as_raw_fd(), bytes, cx.waker()))).await;
    slot.map(|slot| Lent { slot: Some(slot) })
}

/// Keeps the waker of the task that polls now in `kept`.
fn keep_waker(kept: &mut Waker, cx: &Context<'_>) {
    if !kept.will_wake(cx.waker()) {
        *kept = cx.waker().clone();
    }
}

/// A write lent to the batch. Dropped before the batch sent it, it leaves the batch unsent.
pub struct Lent {
    slot: Option<usize>,
}

impl Lent {
    /// Ready once the batch has tried the write and left some of it unsent (a full socket buffer
    /// or an error): the caller should [`finish`](Lent::finish) it then. A complete send stays
    /// pending here.
    pub fn poll_incomplete(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(index) = self.slot else {
            return Poll::Ready(());
        };
        BATCH.with(|batch| match batch.borrow_mut().slots.get_mut(index) {
            Some(Slot::Queued { waker, .. }) => {
                keep_waker(waker, cx);
                Poll::Pending
            }
            Some(Slot::Sent { complete: true, .. }) => Poll::Pending,
            _ => Poll::Ready(()),
        })
    }

    /// Waits for the batch to send the write, writes what it left, and gives the bytes back.
    pub async fn finish(mut self, stream: &mut TcpStream, bytes: &mut BytesMut) -> io::Result<()> {
        let (returned, sent) = std::future::poll_fn(|cx| self.poll_outcome(cx)).await;
        *bytes = returned;
        let written = match sent {
            Ok(written) => written,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => 0,
            Err(error) => return Err(error),
        };
        if let Some(rest) = bytes.get(written..).filter(|rest| !rest.is_empty()) {
            stream.write_all(rest).await?;
        }
        Ok(())
    }

    fn poll_outcome(&mut self, cx: &mut Context<'_>) -> Poll<(BytesMut, io::Result<usize>)> {
        let Some(index) = self.slot else {
            return Poll::Ready((
                BytesMut::new(),
                Err(io::Error::other("a lent write was finished twice")),
            ));
        };
        let outcome = BATCH.with(|batch| {
            let mut batch = batch.borrow_mut();
            let batch = &mut *batch;
            match batch.slots.get_mut(index) {
                Some(Slot::Queued { waker, waiting, .. }) => {
                    keep_waker(waker, cx);
                    *waiting = true;
                    None
                }
                Some(Slot::Sent { .. }) => match batch.release(index) {
                    Slot::Sent { bytes, result, .. } => Some((bytes, result)),
                    _ => None,
                },
                _ => Some((
                    BytesMut::new(),
                    Err(io::Error::other("a lent write lost its slot")),
                )),
            }
        });
        match outcome {
            Some(done) => {
                self.slot = None;
                Poll::Ready(done)
            }
            None => Poll::Pending,
        }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let Some(index) = self.slot else {
            return;
        };
        let _ = BATCH.try_with(|batch| {
            let mut batch = batch.borrow_mut();
            if let Slot::Queued { .. } = batch.release(index) {
                batch.queued.retain(|queued| *queued != index);
            }
        });
    }
}

thread_local! {
    static BATCH: RefCell<Batch> = RefCell::new(Batch::default());
}

/// This thread's pending writes and its flusher.
struct Batch {
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Slots in the order their writes were queued.
    queued: Vec<usize>,
    /// The slots being sent, and their results: kept from one flush to the next, as is the
    /// flusher's list of tasks to wake, so that a flush allocates nothing.
    flushing: Vec<usize>,
    results: Vec<io::Result<usize>>,
    flusher: Option<FlusherHandle>,
    mode: SendMode,
    ring: Ring,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            slots: Vec::new(),
            free: Vec::new(),
            queued: Vec::new(),
            flushing: Vec::new(),
            results: Vec::new(),
            flusher: None,
            mode: SendMode::Ring,
            ring: Ring::Untried,
        }
    }
}

impl Batch {
    /// Frees a slot for the next write and returns what it held.
    fn release(&mut self, index: usize) -> Slot {
        match self.slots.get_mut(index) {
            Some(slot) => {
                self.free.push(index);
                std::mem::replace(slot, Slot::Free)
            }
            None => Slot::Free,
        }
    }
}

struct FlusherHandle {
    /// Cleared when the flusher is dropped (its runtime shut down), wherever that happens.
    alive: Arc<AtomicBool>,
    waker: Option<Waker>,
}

enum Slot {
    Free,
    Queued {
        fd: RawFd,
        bytes: BytesMut,
        waker: Waker,
        /// The task waits for the outcome ([`Lent::finish`]): wake it even for a complete send.
        waiting: bool,
    },
    Sent {
        bytes: BytesMut,
        result: io::Result<usize>,
        /// All of `bytes` went out.
        complete: bool,
    },
}

enum Ring {
    Untried,
    Ready(Box<io_uring::IoUring>),
    Unavailable,
}

/// Queues a write on a batching thread; `None` where writes go out at once.
fn queue(fd: RawFd, bytes: &mut BytesMut, waker: &Waker) -> Option<usize> {
    BATCH
        .try_with(|batch| {
            let mut batch = batch.borrow_mut();
            let flusher = batch.flusher.as_ref()?;
            if !flusher.alive.load(Ordering::Acquire) {
                batch.flusher = None;
                return None;
            }
            let slot = Slot::Queued {
                fd,
                bytes: std::mem::take(bytes),
                waker: waker.clone(),
                waiting: false,
            };
            let index = match batch.free.pop() {
                Some(index) => {
                    batch.slots[index] = slot;
                    index
                }
                None => {
                    batch.slots.push(slot);
                    batch.slots.len() - 1
                }
            };
            batch.queued.push(index);
            if batch.queued.len() == 1 {
                if let Some(waker) = batch.flusher.as_ref().and_then(|flusher| flusher.waker.as_ref()) {
                    waker.wake_by_ref();
                }
            }
            Some(index)
        })
        .ok()
        .flatten()
}

/// The task that sends a thread's batch; it runs after the tasks that were woken before it.
struct Flusher {
    alive: Arc<AtomicBool>,
    /// Tasks to wake after a flush (woken outside the batch's borrow).
    wakers: Vec<Waker>,
}

impl Future for Flusher {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let wakers = &mut self.get_mut().wakers;
        BATCH.with(|batch| {
            let mut batch = batch.borrow_mut();
            if let Some(flusher) = batch.flusher.as_mut() {
                if !flusher
                    .waker
                    .as_ref()
                    .is_some_and(|waker| waker.will_wake(cx.waker()))
                {
                    flusher.waker = Some(cx.waker().clone());
                }
            }
            flush(&mut batch, wakers);
        });
        for waker in wakers.drain(..) {
            waker.wake();
        }
        Poll::Pending
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::Release);
    }
}

/// Sends every queued write, and adds to `wakers` the tasks that want the outcome.
fn flush(batch: &mut Batch, wakers: &mut Vec<Waker>) {
    if batch.queued.is_empty() {
        return;
    }
    std::mem::swap(&mut batch.queued, &mut batch.flushing);
    let Batch {
        slots,
        flushing,
        results,
        mode,
        ring,
        ..
    } = batch;
    results.clear();
    let batched = flushing.len() > 1 && *mode == SendMode::Ring;
    if batched && matches!(ring, Ring::Untried) {
        *ring = open_ring();
    }
    let ring_failed = match ring {
        Ring::Ready(open) if batched => send_on_ring(open, slots, flushing, results).err(),
        _ => {
            results.extend(flushing.iter().map(|index| match slots.get(*index) {
                Some(Slot::Queued { fd, bytes, .. }) => send(*fd, bytes),
                _ => Err(io::Error::other("no write in the slot")),
            }));
            None
        }
    };
    if let Some(error) = ring_failed {
        tracing::warn!(%error, "io_uring stopped working; batched sends go out one by one from now on.");
        // What the kernel still holds of this batch may point into its buffers: they are never
        // freed, and the ring is not used again.
        if let Ring::Ready(open) = std::mem::replace(ring, Ring::Unavailable) {
            std::mem::forget(open);
        }
        for index in flushing.iter() {
            if let Some(Slot::Queued { bytes, .. }) = slots.get_mut(*index) {
                std::mem::forget(std::mem::take(bytes));
            }
        }
        results.clear();
    }
    let mut outcomes = results.drain(..);
    for index in flushing.drain(..) {
        let Some(slot) = slots.get_mut(index) else {
            continue;
        };
        if let Slot::Queued {
            bytes,
            waker,
            waiting,
            ..
        } = std::mem::replace(slot, Slot::Free)
        {
            let result = outcomes
                .next()
                .unwrap_or_else(|| Err(io::Error::other("the write was not sent")));
            let complete = matches!(result, Ok(written) if written == bytes.len());
            if waiting || !complete {
                wakers.push(waker);
            }
            *slot = Slot::Sent {
                bytes,
                result,
                complete,
            };
        }
    }
}

fn send(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: `bytes` is a live slice for the length given; `fd` belongs to a stream that the
    // queued write borrows, so it is open (a dropped write leaves the batch first).
    let sent = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), SEND_FLAGS) };
    usize::try_from(sent).map_err(|_| io::Error::last_os_error())
}

fn open_ring() -> Ring {
    let opened = io_uring::IoUring::new(RING_ENTRIES).and_then(|ring| {
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if probe.is_supported(io_uring::opcode::Send::CODE) {
            Ok(ring)
        } else {
            Err(io::Error::other("the kernel's io_uring has no send operation"))
        }
    });
    match opened {
        Ok(ring) => {
            tracing::debug!("Batched sends go out through io_uring.");
            Ring::Ready(Box::new(ring))
        }
        Err(error) => {
            tracing::info!(%error, "io_uring is not available; batched sends go out one by one.");
            Ring::Unavailable
        }
    }
}

/// Sends the queued writes of `flushing` with as few io_uring submissions as the ring's size
/// allows, their results in `results` in the same order. Returns only once the kernel has completed
/// every write it took, so the buffers are free to reuse.
fn send_on_ring(
    ring: &mut io_uring::IoUring,
    slots: &[Slot],
    flushing: &[usize],
    results: &mut Vec<io::Result<usize>>,
) -> io::Result<()> {
    // Filled in as the completions arrive; every entry the kernel takes completes.
    results.resize_with(flushing.len(), || Ok(0));
    for (chunk_index, chunk) in flushing.chunks(RING_ENTRIES as usize).enumerate() {
        let base = chunk_index * RING_ENTRIES as usize;
        let mut submitted = 0;
        {
            let mut submission = ring.submission();
            for (offset, index) in chunk.iter().enumerate() {
                let Some(Slot::Queued { fd, bytes, .. }) = slots.get(*index) else {
                    continue;
                };
                let length = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                let entry = io_uring::opcode::Send::new(io_uring::types::Fd(*fd), bytes.as_ptr(), length)
                    .flags(SEND_FLAGS)
                    .build()
                    .user_data((base + offset) as u64);
                // SAFETY: the buffer outlives the operation: this function returns only after the
                // kernel completed every entry it took, and the caller never frees the buffers
                // if it returns an error. The chunk fits the queue, which is empty.
                unsafe { submission.push(&entry) }
                    .map_err(|_| io::Error::other("the submission queue is full"))?;
                submitted += 1;
            }
        }
        let mut completed = 0;
        while completed < submitted {
            match ring.submit_and_wait(submitted - completed) {
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
            for entry in ring.completion() {
                let Some(result) = usize::try_from(entry.user_data())
                    .ok()
                    .and_then(|index| results.get_mut(index))
                else {
                    continue;
                };
                let code = entry.result();
                *result = usize::try_from(code).map_err(|_| io::Error::from_raw_os_error(-code));
                completed += 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{io::AsyncReadExt, net::TcpListener};

    /// Lends the write and waits for it, as a connection that needs the outcome at once does.
    async fn write_all(stream: &mut TcpStream, bytes: &mut BytesMut) -> io::Result<()> {
        match lend(stream, bytes).await {
            Some(lent) => lent.finish(stream, bytes).await,
            None => stream.write_all(bytes).await,
        }
    }

    /// Closes the writing side and returns everything the reader gets up to the close.
    async fn received_after_close(writer: TcpStream, reader: &mut TcpStream) -> Vec<u8> {
        drop(writer);
        let mut received = Vec::new();
        reader.read_to_end(&mut received).await.unwrap();
        received
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (connected, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
        (connected.unwrap(), accepted.unwrap().0)
    }

    /// Many connections write in the same pass; each peer reads exactly its own bytes.
    async fn writes_of_one_pass_reach_their_own_peers(mode: SendMode) {
        start(mode);
        let mut writers = Vec::new();
        for index in 0..40 {
            let (mut writer, mut reader) = pair().await;
            writers.push(tokio::spawn(async move {
                let mut bytes = BytesMut::from(format!("message {index}\n").as_bytes());
                let expected = bytes.clone();
                write_all(&mut writer, &mut bytes).await.unwrap();
                assert_eq!(bytes, expected, "the buffer comes back unchanged");
                assert_eq!(received_after_close(writer, &mut reader).await, expected);
            }));
        }
        for writer in writers {
            writer.await.unwrap();
        }
    }

    #[tokio::test]
    async fn batched_writes_reach_their_own_peers_through_the_ring() {
        writes_of_one_pass_reach_their_own_peers(SendMode::Ring).await;
    }

    #[tokio::test]
    async fn batched_writes_reach_their_own_peers_one_by_one() {
        writes_of_one_pass_reach_their_own_peers(SendMode::OneByOne).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_multi_threaded_runtime_writes_at_once() {
        start(SendMode::Ring);
        let (mut writer, mut reader) = pair().await;
        let mut bytes = BytesMut::from(&b"direct"[..]);
        write_all(&mut writer, &mut bytes).await.unwrap();
        assert_eq!(received_after_close(writer, &mut reader).await, b"direct");
    }

    /// More than a socket buffer holds: the batch sends what fits, the rest follows as the peer
    /// reads.
    #[tokio::test]
    async fn a_write_larger_than_the_socket_buffer_is_finished_after_the_batch() {
        start(SendMode::Ring);
        let (mut writer, mut reader) = pair().await;
        let (mut other_writer, mut other_reader) = pair().await;
        let large: Vec<u8> = (0..8 * 1024 * 1024)
            .map(|index: usize| (index % 251) as u8)
            .collect();
        let expected = large.clone();
        let reading = tokio::spawn(async move {
            let mut received = Vec::new();
            reader.read_to_end(&mut received).await.unwrap();
            received
        });
        let small = tokio::spawn(async move {
            let mut bytes = BytesMut::from(&b"small"[..]);
            write_all(&mut other_writer, &mut bytes).await.unwrap();
        });
        let mut bytes = BytesMut::from(&large[..]);
        write_all(&mut writer, &mut bytes).await.unwrap();
        drop(writer);
        small.await.unwrap();
        assert!(
            reading.await.unwrap() == expected,
            "the large write arrives whole and in order"
        );
        let mut received = [0; 5];
        other_reader.read_exact(&mut received).await.unwrap();
        assert_eq!(&received, b"small");
    }

    #[tokio::test]
    async fn a_write_to_a_reset_connection_fails() {
        start(SendMode::Ring);
        let (mut writer, reader) = pair().await;
        drop(reader);
        // The first write after the peer closed draws a reset; a later one fails on it.
        let mut failed = false;
        for _ in 0..5 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let mut bytes = BytesMut::from(&b"after the close"[..]);
            if write_all(&mut writer, &mut bytes).await.is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "writing to a reset connection reports an error");
    }

    struct CountedWakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountedWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The point of lending: a send the batch completes does not wake the task that lent it.
    #[tokio::test]
    async fn a_complete_send_wakes_nobody_and_is_collected_later() {
        start(SendMode::Ring);
        let (mut writer, mut reader) = pair().await;
        let wakes = Arc::new(CountedWakes(std::sync::atomic::AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut bytes = BytesMut::from(&b"quiet"[..]);
        // Lent from a task whose waker counts its wakes.
        let lent = {
            let lending = lend(&writer, &mut bytes);
            let mut lending = std::pin::pin!(lending);
            match lending.as_mut().poll(&mut Context::from_waker(&waker)) {
                Poll::Ready(lent) => lent,
                Poll::Pending => None,
            }
        };
        let mut lent = lent.expect("a single-threaded runtime batches");
        // The flusher runs while this task waits for the peer.
        let mut received = [0; 5];
        reader.read_exact(&mut received).await.unwrap();
        assert_eq!(&received, b"quiet");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "nobody was woken");
        assert!(lent
            .poll_incomplete(&mut Context::from_waker(&waker))
            .is_pending());
        lent.finish(&mut writer, &mut bytes).await.unwrap();
        assert_eq!(&bytes[..], b"quiet", "the bytes come back");
    }

    /// A write whose task is dropped before the flusher runs is never sent, and its slot is reused.
    #[tokio::test]
    async fn a_dropped_write_leaves_the_batch() {
        start(SendMode::Ring);
        let (mut writer, mut reader) = pair().await;
        let mut bytes = BytesMut::from(&b"never sent"[..]);
        {
            let writing = write_all(&mut writer, &mut bytes);
            let mut writing = std::pin::pin!(writing);
            // Polled once: queued, not yet sent (the flusher has not run).
            assert!(futures_poll_once(writing.as_mut()).await.is_pending());
        }
        let mut bytes = BytesMut::from(&b"sent"[..]);
        write_all(&mut writer, &mut bytes).await.unwrap();
        assert_eq!(received_after_close(writer, &mut reader).await, b"sent");
    }

    async fn futures_poll_once<F: Future + Unpin>(mut future: F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut future).poll(cx))).await
    }
}
