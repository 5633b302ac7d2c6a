//! One client connection: commands are read and dispatched as fast as they arrive (pipelining),
//! replies are written strictly in command order by a writer task that awaits them one by one.

use std::{sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::{mpsc, oneshot, watch},
    time::Instant,
};
use tracing::debug;

use crate::{
    deadline::{self, Watchdog},
    metrics::Metrics,
    migration::{self, Step},
    resp::{self, Frame, Limits, ProtocolError},
    routing::{self, Locate, Merge, Plan, Session},
    shard::{ShardError, ShardHandle, ShardReply},
    topology::Topology,
};

/// How client connections behave.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub limits: Limits,
    /// Commands read and not yet answered; a client that pipelines more waits.
    pub max_pipeline: usize,
    /// How long a client may leave a frame half sent before it is disconnected.
    pub partial_frame_timeout: Duration,
    /// Longest wait for a shard's reply, on top of the shard's own request timeout.
    pub reply_timeout: Duration,
    pub metrics: Arc<Metrics>,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            limits: Limits::default(),
            max_pipeline: 1024,
            partial_frame_timeout: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(5),
            metrics: Arc::default(),
        }
    }
}

/// Why a client connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("frame left incomplete for longer than the partial frame timeout")]
    Stalled,
}

impl ClientError {
    /// A fixed label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            ClientError::Io(_) => "io",
            ClientError::Protocol(error) => error.category(),
            ClientError::Stalled => "stalled",
        }
    }
}

/// A reply owed to the client, in command order.
enum Pending {
    Ready(Bytes),
    /// Write the reply, then close (QUIT, protocol errors).
    Last(Bytes),
    One {
        shard: Arc<str>,
        reply: oneshot::Receiver<ShardReply>,
    },
    /// The rarer kinds are boxed: a client's queue of owed replies is sized by its largest kind.
    Many {
        replies: Vec<(Arc<str>, oneshot::Receiver<ShardReply>)>,
        merge: Box<Merge>,
    },
    Fallback(Box<MovedRead>),
    /// An `MGET` with moved keys during a reshard: the nils of moved keys are read from their
    /// previous owners.
    FallbackValues {
        first: Box<Pending>,
        /// Position in the reply, previous owner, key, and the new owner's primary when hits are
        /// copied.
        moved: Vec<(usize, ShardHandle, Bytes, Option<ShardHandle>)>,
    },
    /// A write during a reshard, and the `DEL`s of its moved keys on their previous owners. The
    /// client gets the write's reply; the deletes are awaited so they are sent and counted.
    Clearing {
        first: Box<Pending>,
        clears: Vec<oneshot::Receiver<ShardReply>>,
    },
}

/// A read of a moved key during a reshard: on a miss, the command goes to the key's previous owner,
/// and a hit there may be copied to the new owner.
struct MovedRead {
    shard: Arc<str>,
    reply: oneshot::Receiver<ShardReply>,
    previous: ShardHandle,
    payload: Bytes,
    /// The new owner's primary and the key, when hits are copied.
    copy: Option<(ShardHandle, Bytes)>,
}

/// Serves one client until it disconnects, closes mid-frame or breaks the protocol.
pub async fn serve<S>(
    stream: S,
    topology: watch::Receiver<Arc<Topology>>,
    settings: Arc<ClientSettings>,
) -> Result<(), ClientError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, write) = tokio::io::split(stream);
    let (pending, queue) = mpsc::channel(settings.max_pipeline.max(1));
    let writer = tokio::spawn(deadline::with_watchdog(write_replies(
        write,
        queue,
        settings.clone(),
    )));
    let result = read_commands(read, &pending, topology, &settings).await;
    if let Err(ClientError::Protocol(error)) = &result {
        // Redis answers a protocol error and closes; so does the ambassador.
        let reply = Frame::error(format!("ERR Protocol error: {error}")).to_bytes();
        let _ = pending.send(Pending::Last(reply)).await;
    }
    drop(pending);
    let written = writer
        .await
        .map_err(|error| ClientError::Io(std::io::Error::other(error)))?;
    result.and(written)
}

async fn read_commands<R: AsyncRead + Unpin>(
    mut read: R,
    pending: &mpsc::Sender<Pending>,
    topology: watch::Receiver<Arc<Topology>>,
    settings: &ClientSettings,
) -> Result<(), ClientError> {
    let mut buf = BytesMut::new();
    let mut session = Session::default();
    let hot_keys = &settings.metrics.hot_keys;
    let mut until_sample = hot_keys.every();
    let mut watchdog = Watchdog::new();
    loop {
        while let Some(command) = resp::decode_command(&mut buf, &settings.limits)? {
            let current = topology.borrow().clone();
            until_sample -= 1;
            if until_sample == 0 {
                until_sample = hot_keys.every();
                if let Some(key) = routing::first_key(&command.args) {
                    let shard = current
                        .shard_of(key)
                        .and_then(|index| current.shard(index))
                        .map(ShardHandle::shared_name);
                    hot_keys.record(key, shard);
                }
            }
            let (reply, last) = dispatch(command, &mut session, &current, &settings.metrics);
            if pending.send(reply).await.is_err() || last {
                return Ok(());
            }
        }
        resp::reserve_for_read(&mut buf);
        let count = if buf.is_empty() {
            read.read_buf(&mut buf).await?
        } else {
            // A half-sent frame holds buffer space: it must be finished in time.
            let deadline = Instant::now() + settings.partial_frame_timeout;
            watchdog
                .wait(deadline, read.read_buf(&mut buf))
                .await
                .ok_or(ClientError::Stalled)??
        };
        if count == 0 {
            resp::finish(&buf)?;
            return Ok(());
        }
    }
}

/// Routes one command; the flag says the connection ends after its reply.
fn dispatch(
    command: resp::Command,
    session: &mut Session,
    topology: &Topology,
    metrics: &Metrics,
) -> (Pending, bool) {
    let plan = session.plan(&command.args, topology);
    metrics.command(match &plan {
        Plan::Reply(Frame::Error(_)) => "error",
        Plan::Reply(_) | Plan::Quit => "local",
        Plan::Forward { .. } => "forward",
        Plan::Split { .. } => "split",
        Plan::Exec { .. } => "transaction",
    });
    let step = if topology.is_migrating() {
        migration::step(&command.args, &plan, topology)
    } else {
        Step::None
    };
    let fallback_payload = matches!(step, Step::Fallback { .. })
        .then(|| command.raw.clone().unwrap_or_else(|| encoded(&command.args)));
    let (pending, last) = route(command, plan, topology);
    match step {
        Step::None => (pending, last),
        Step::Fallback { previous, key } => {
            match (pending, topology.previous_shard(previous), fallback_payload) {
                (Pending::One { shard, reply }, Some(previous), Some(fallback_payload)) => (
                    Pending::Fallback(Box::new(MovedRead {
                        shard,
                        reply,
                        previous: previous.clone(),
                        payload: fallback_payload,
                        copy: topology
                            .copies_on_read()
                            .then(|| Some((topology.shard(topology.shard_of(&key)?)?.clone(), key)))
                            .flatten(),
                    })),
                    last,
                ),
                (pending, _, _) => (pending, last),
            }
        }
        Step::FallbackValues(moved) => {
            let moved = moved
                .into_iter()
                .filter_map(|moved| {
                    let previous = topology.previous_shard(moved.previous)?.clone();
                    let copy = topology
                        .copies_on_read()
                        .then(|| topology.shard(topology.shard_of(&moved.key)?).cloned())
                        .flatten();
                    Some((moved.position, previous, moved.key, copy))
                })
                .collect();
            (
                Pending::FallbackValues {
                    first: Box::new(pending),
                    moved,
                },
                last,
            )
        }
        Step::Clear(parts) => {
            let clears = parts
                .into_iter()
                .filter_map(|part| {
                    let handle = topology.previous_shard(part.shard)?;
                    Some(handle.call(encoded(&part.args)))
                })
                .collect();
            (
                Pending::Clearing {
                    first: Box::new(pending),
                    clears,
                },
                last,
            )
        }
    }
}

fn encoded<B: AsRef<[u8]>>(args: &[B]) -> Bytes {
    let mut out = BytesMut::new();
    resp::encode_command(args, &mut out);
    out.freeze()
}

/// Sends a command where its plan says, without the steps of a reshard.
fn route(command: resp::Command, plan: Plan, topology: &Topology) -> (Pending, bool) {
    match plan {
        Plan::Reply(frame) => (Pending::Ready(frame.to_bytes()), false),
        Plan::Quit => (Pending::Last(Frame::ok().to_bytes()), true),
        Plan::Forward { shard } => {
            let reads = command
                .args
                .first()
                .is_some_and(|name| routing::is_read_only(name));
            let handle = if reads {
                topology.reader(shard)
            } else {
                topology.shard(shard)
            };
            let Some(handle) = handle else {
                return (
                    Pending::Ready(Frame::error("ERR shard map changed").to_bytes()),
                    false,
                );
            };
            let payload = command.raw.unwrap_or_else(|| {
                let mut out = BytesMut::new();
                resp::encode_command(&command.args, &mut out);
                out.freeze()
            });
            (
                Pending::One {
                    shard: handle.shared_name(),
                    reply: handle.call(payload),
                },
                false,
            )
        }
        Plan::Split { parts, merge } => {
            let mut replies = Vec::with_capacity(parts.len());
            for part in parts {
                let Some(handle) = topology.shard(part.shard) else {
                    return (
                        Pending::Ready(Frame::error("ERR shard map changed").to_bytes()),
                        false,
                    );
                };
                let mut out = BytesMut::new();
                resp::encode_command(&part.args, &mut out);
                replies.push((handle.shared_name(), handle.call(out.freeze())));
            }
            (
                Pending::Many {
                    replies,
                    merge: Box::new(merge),
                },
                false,
            )
        }
        Plan::Exec { shard, commands } => {
            let Some(handle) = topology.shard(shard) else {
                return (
                    Pending::Ready(Frame::error("ERR shard map changed").to_bytes()),
                    false,
                );
            };
            let mut out = BytesMut::new();
            resp::encode_command(&["MULTI"], &mut out);
            for command in &commands {
                resp::encode_command(command, &mut out);
            }
            resp::encode_command(&["EXEC"], &mut out);
            let reply = handle.call_batch(out.freeze(), commands.len() + 2);
            (
                Pending::One {
                    shard: handle.shared_name(),
                    reply,
                },
                false,
            )
        }
    }
}

/// Replies buffered before they are written even though more are queued.
const FLUSH_AT: usize = 64 * 1024;

async fn write_replies<W: AsyncWrite>(
    write: W,
    mut queue: mpsc::Receiver<Pending>,
    settings: Arc<ClientSettings>,
) -> Result<(), ClientError> {
    let mut write = std::pin::pin!(write);
    let mut out = BytesMut::new();
    while let Some(next) = queue.recv().await {
        let last = matches!(next, Pending::Last(_));
        let reply = match next {
            Pending::Ready(bytes) | Pending::Last(bytes) => bytes,
            Pending::One { shard, reply } => one_reply(&shard, reply, &settings).await,
            // The rarer kinds' state is allocated only while one is awaited, so an idle client's
            // writer task stays small.
            rare => Box::pin(resolve(rare, &settings)).await,
        };
        out.extend_from_slice(&reply);
        // Replies already known go out together; the flush waits only while more are queued.
        if last || queue.is_empty() || out.len() >= FLUSH_AT {
            write.write_all(&out).await?;
            out.clear();
            // A large reply's buffer is not kept for the small ones after it.
            if out.capacity() > 2 * FLUSH_AT {
                out = BytesMut::new();
            }
        }
        if last {
            break;
        }
    }
    if !out.is_empty() {
        write.write_all(&out).await?;
    }
    write.shutdown().await.or_else(|error| match error.kind() {
        std::io::ErrorKind::NotConnected | std::io::ErrorKind::BrokenPipe => Ok(()),
        _ => Err(error),
    })?;
    Ok(())
}

async fn resolve(pending: Pending, settings: &ClientSettings) -> Bytes {
    let (reply_timeout, metrics) = (settings.reply_timeout, &*settings.metrics);
    match pending {
        Pending::Ready(bytes) | Pending::Last(bytes) => bytes,
        Pending::One { shard, reply } => one_reply(&shard, reply, settings).await,
        Pending::Many { replies, merge } => {
            let mut frames = Vec::with_capacity(replies.len());
            for (shard, reply) in replies {
                let frame = match wait(reply, reply_timeout).await {
                    Ok(bytes) => resp::parse_frame(&bytes)
                        .unwrap_or_else(|error| shard_error(&shard, &ShardError::Protocol(error), metrics)),
                    Err(error) => shard_error(&shard, &error, metrics),
                };
                frames.push(frame);
            }
            routing::merge(&merge, frames).to_bytes()
        }
        Pending::Fallback(moved) => {
            let MovedRead {
                shard,
                reply,
                previous,
                payload,
                copy,
            } = *moved;
            let first = match wait(reply, reply_timeout).await {
                Ok(bytes) => bytes,
                Err(error) => return shard_error(&shard, &error, metrics).to_bytes(),
            };
            if !migration::is_miss(&first) {
                return first;
            }
            let started = start_fallback(&previous, payload, copy);
            finish_fallback(first, &previous, started, settings).await
        }
        Pending::FallbackValues { first, moved } => {
            let reply = Box::pin(resolve(*first, settings)).await;
            let Ok(Frame::Array(mut values)) = resp::parse_frame(&reply) else {
                return reply;
            };
            // Every fallback is sent before any is awaited: one round trip for all of them.
            let started: Vec<_> = moved
                .into_iter()
                .filter(|(position, ..)| values.get(*position) == Some(&Frame::Null))
                .map(|(position, previous, key, copy)| {
                    let get = encoded(&[&b"GET"[..], &key]);
                    let copy = copy.map(|owner| (owner, key));
                    let started = start_fallback(&previous, get, copy);
                    (position, previous, started)
                })
                .collect();
            for (position, previous, started) in started {
                let found = finish_fallback(Frame::Null.to_bytes(), &previous, started, settings).await;
                if let (Ok(found), Some(slot)) = (resp::parse_frame(&found), values.get_mut(position)) {
                    *slot = found;
                }
            }
            Frame::Array(values).to_bytes()
        }
        Pending::Clearing { first, clears } => {
            let reply = Box::pin(resolve(*first, settings)).await;
            for clear in clears {
                let cleared = wait(clear, reply_timeout).await;
                metrics.clear(match cleared {
                    Ok(bytes) if !bytes.starts_with(b"-") => "ok",
                    _ => "error",
                });
            }
            reply
        }
    }
}

/// A single shard's reply, or the error that names the shard.
async fn one_reply(shard: &str, reply: oneshot::Receiver<ShardReply>, settings: &ClientSettings) -> Bytes {
    match wait(reply, settings.reply_timeout).await {
        Ok(bytes) => bytes,
        Err(error) => shard_error(shard, &error, &settings.metrics).to_bytes(),
    }
}

/// A read sent to a moved key's previous owner, and when hits are copied, the `DUMP` and `PTTL`
/// sent right behind it (so they see the value it read, or its deletion, never an older one).
struct Fallback {
    found: oneshot::Receiver<ShardReply>,
    copy: Option<(
        ShardHandle,
        Bytes,
        oneshot::Receiver<ShardReply>,
        oneshot::Receiver<ShardReply>,
    )>,
}

/// Asks a moved key's previous owner after its new owner missed.
fn start_fallback(previous: &ShardHandle, payload: Bytes, copy: Option<(ShardHandle, Bytes)>) -> Fallback {
    let found = previous.call(payload);
    let copy = copy.map(|(owner, key)| {
        let [dump, pttl] = migration::dump_commands(&key);
        let (dump, pttl) = (previous.call(encoded(&dump)), previous.call(encoded(&pttl)));
        (owner, key, dump, pttl)
    });
    Fallback { found, copy }
}

/// The reply of a fallback. Whatever the previous owner has was never overwritten on the new one
/// (writes delete it there), so a hit is served; a miss, an error or no answer leaves the new
/// owner's `miss` as the reply.
async fn finish_fallback(
    miss: Bytes,
    previous: &ShardHandle,
    fallback: Fallback,
    settings: &ClientSettings,
) -> Bytes {
    let (reply_timeout, metrics) = (settings.reply_timeout, &settings.metrics);
    match wait(fallback.found, reply_timeout).await {
        Ok(found) if !migration::is_miss(&found) && !found.starts_with(b"-") => {
            metrics.fallback("hit");
            if let Some((owner, key, dump, pttl)) = fallback.copy {
                tokio::spawn(copy_over(owner, key, dump, pttl, reply_timeout, metrics.clone()));
            }
            found
        }
        Ok(_) => {
            metrics.fallback("miss");
            miss
        }
        Err(error) => {
            debug!(shard = previous.name(), %error, "Fallback read failed on the previous owner.");
            metrics.fallback("error");
            miss
        }
    }
}

/// Copies a key found on its previous owner to its new owner, unless a write got there first.
async fn copy_over(
    owner: ShardHandle,
    key: Bytes,
    dump: oneshot::Receiver<ShardReply>,
    pttl: oneshot::Receiver<ShardReply>,
    reply_timeout: Duration,
    metrics: Arc<Metrics>,
) {
    let frame = |reply: ShardReply| {
        reply
            .ok()
            .and_then(|bytes| resp::parse_frame(&bytes).ok())
            .unwrap_or(Frame::Null)
    };
    let dump = frame(wait(dump, reply_timeout).await);
    let pttl = frame(wait(pttl, reply_timeout).await);
    let Some(restore) = migration::restore_command(&key, &dump, &pttl) else {
        return;
    };
    let restored = frame(wait(owner.call(encoded(&restore)), reply_timeout).await);
    metrics.copy(migration::copy_result(&restored));
}

async fn wait(mut reply: oneshot::Receiver<ShardReply>, reply_timeout: Duration) -> ShardReply {
    // Pipelined replies are mostly in by the time the writer gets to them: no timer for those.
    if let Ok(ready) = reply.try_recv() {
        return ready;
    }
    match deadline::within(reply_timeout, reply).await {
        Some(Ok(reply)) => reply,
        Some(Err(_)) => Err(ShardError::ConnectionLost("connection reset".to_owned())),
        None => Err(ShardError::Timeout),
    }
}

fn shard_error(shard: &str, error: &ShardError, metrics: &Metrics) -> Frame {
    debug!(shard, %error, "Command failed on its shard.");
    metrics.shard_error(shard, error.category());
    Frame::error(format!("ERR shard {shard} unavailable: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owed_reply_is_no_larger_than_a_shared_byte_string_and_its_tag() {
        // Each client's queue allocates room for its replies in blocks: the common kinds set the size.
        assert!(
            std::mem::size_of::<Pending>() <= 40,
            "{}",
            std::mem::size_of::<Pending>()
        );
    }

    #[test]
    fn a_clients_writer_task_is_small_while_it_waits_for_common_replies() {
        // Every connected client holds one; the rare reply kinds' state is boxed when needed.
        let (stream, _peer) = tokio::io::duplex(64);
        let (_read, write) = tokio::io::split(stream);
        let (_pending, queue) = mpsc::channel::<Pending>(1);
        let writer = deadline::with_watchdog(write_replies(write, queue, Arc::default()));
        assert!(
            std::mem::size_of_val(&writer) <= 1024,
            "{}",
            std::mem::size_of_val(&writer)
        );
    }
}
