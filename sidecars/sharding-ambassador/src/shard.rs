//! One shard's connection: commands from every client are written to it back to back (pipelined)
//! and its replies, which arrive in the same order, are handed back one by one.
//!
//! A connect failure, a reply that does not come within the request timeout, a closed connection
//! or a malformed reply counts as a failure; `failure_limit` failures in a row eject the shard for
//! `retry_interval`, during which its commands fail at once instead of queueing. The ring is not
//! rebuilt while a shard is ejected: only that shard's keys get errors, every other key stays put.

use std::{
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpStream,
    },
    sync::{mpsc, oneshot},
    task::JoinHandle,
    time::{timeout, Instant},
};
use tracing::{debug, warn};

use crate::{
    auth::PasswordWatch,
    deadline::Watchdog,
    metrics::{Metrics, ShardMetrics},
    resp::{self, reserve_for_read, Frame, Limits, ProtocolError},
};

/// How shard connections behave.
#[derive(Debug, Clone)]
pub struct ShardSettings {
    pub connect_timeout: Duration,
    /// How long a command may wait for its reply once written.
    pub request_timeout: Duration,
    /// Failures in a row that eject a shard.
    pub failure_limit: u32,
    /// How long an ejected shard is left alone.
    pub retry_interval: Duration,
    /// Commands waiting to be written to one shard; past this, commands fail at once.
    pub queue_len: usize,
    /// Commands written and not yet answered on one connection.
    pub max_in_flight: usize,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    /// The password connections authenticate with (`AUTH`) when they open; a new one replaces
    /// the open connections once their replies are in.
    pub password: PasswordWatch,
}

impl Default for ShardSettings {
    fn default() -> Self {
        ShardSettings {
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(1),
            failure_limit: 3,
            retry_interval: Duration::from_secs(5),
            queue_len: 4096,
            max_in_flight: 4096,
            limits: Limits::default(),
            metrics: Arc::default(),
            password: tokio::sync::watch::channel(None).1,
        }
    }
}

/// Why a command got no reply from its shard.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ShardError {
    #[error("shard is ejected after repeated failures")]
    Ejected,
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("no reply within the request timeout")]
    Timeout,
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    #[error("malformed reply: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("too many commands queued")]
    QueueFull,
    #[error("authentication refused: {0}")]
    Auth(String),
}

impl ShardError {
    /// A fixed label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            ShardError::Ejected => "ejected",
            ShardError::Connect(_) | ShardError::ConnectTimeout => "connect",
            ShardError::Timeout => "timeout",
            ShardError::ConnectionLost(_) => "connection_lost",
            ShardError::Protocol(_) => "protocol",
            ShardError::QueueFull => "queue_full",
            ShardError::Auth(_) => "auth",
        }
    }
}

/// A reply's wire bytes, or why there is none.
pub type ShardReply = Result<Bytes, ShardError>;

struct Request {
    payload: Bytes,
    /// Replies the payload draws; the last one is handed back.
    replies: usize,
    reply: oneshot::Sender<ShardReply>,
}

struct InFlight {
    replies: usize,
    reply: oneshot::Sender<ShardReply>,
    deadline: Instant,
}

/// Consecutive failures and ejection, shared by the connection task and the callers. Lock-free:
/// every command checks it.
#[derive(Debug)]
struct Health {
    failures: AtomicU32,
    /// Milliseconds after `epoch` until which the shard is ejected; 0 when it is not.
    ejected_until_ms: AtomicU64,
    epoch: Instant,
}

impl Health {
    fn new() -> Health {
        Health {
            failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn is_ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && self.now_ms() < until
    }

    fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }

    /// Counts a failure; returns true when it ejected the shard.
    fn failure(&self, settings: &ShardSettings) -> bool {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < settings.failure_limit {
            return false;
        }
        self.failures.store(0, Ordering::Relaxed);
        let retry_ms = u64::try_from(settings.retry_interval.as_millis()).unwrap_or(u64::MAX);
        let until = self.now_ms().saturating_add(retry_ms).max(1);
        self.ejected_until_ms.store(until, Ordering::Relaxed);
        true
    }
}

/// A shard: its name on the ring, its primary endpoint and the queue into its connection task.
/// Clones share the connection; the task ends when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct ShardHandle {
    name: Arc<str>,
    endpoint: Arc<str>,
    requests: mpsc::Sender<Request>,
    health: Arc<Health>,
}

impl ShardHandle {
    /// Starts the connection task of a shard. The connection is opened on the first command.
    pub fn spawn(name: &str, endpoint: &str, settings: Arc<ShardSettings>) -> ShardHandle {
        let (requests, receiver) = mpsc::channel(settings.queue_len.max(1));
        let handle = ShardHandle {
            name: Arc::from(name),
            endpoint: Arc::from(endpoint),
            requests,
            health: Arc::new(Health::new()),
        };
        let task = Connection {
            name: handle.name.clone(),
            endpoint: handle.endpoint.clone(),
            health: handle.health.clone(),
            password: settings.password.clone(),
            accepted: None,
            settings,
            current: None,
            watchdog: Watchdog::new(),
        };
        tokio::spawn(task.run(receiver));
        handle
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name, shared without copying.
    pub fn shared_name(&self) -> Arc<str> {
        self.name.clone()
    }

    /// Whether both handles feed the same connection task.
    pub fn same_connection(&self, other: &ShardHandle) -> bool {
        self.requests.same_channel(&other.requests)
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Whether the shard is ejected now (its commands would fail at once).
    pub fn is_ejected(&self) -> bool {
        self.health.is_ejected()
    }

    /// Queues one command (its wire bytes); the receiver yields its reply. Never waits: a full
    /// queue or an ejected shard answers at once.
    pub fn call(&self, payload: Bytes) -> oneshot::Receiver<ShardReply> {
        self.call_batch(payload, 1)
    }

    /// Queues commands written back to back, as one unit (`MULTI` ... `EXEC`): nothing of another
    /// client comes between them, and the receiver yields the last of their `replies` replies.
    pub fn call_batch(&self, payload: Bytes, replies: usize) -> oneshot::Receiver<ShardReply> {
        let (reply, receiver) = oneshot::channel();
        if self.health.is_ejected() {
            let _ = reply.send(Err(ShardError::Ejected));
            return receiver;
        }
        if let Err(error) = self.requests.try_send(Request {
            payload,
            replies: replies.max(1),
            reply,
        }) {
            let request = match error {
                mpsc::error::TrySendError::Full(request) | mpsc::error::TrySendError::Closed(request) => {
                    request
                }
            };
            let _ = request.reply.send(Err(ShardError::QueueFull));
        }
        receiver
    }
}

/// An open connection: the write half, and the queue of commands its reader answers.
struct Open {
    write: OwnedWriteHalf,
    in_flight: mpsc::Sender<InFlight>,
    reader: AbortOnDrop,
}

/// The reader of a connection, stopped when the connection is dropped: replies still owed are
/// failed by the dropped senders of the aborted reader.
struct AbortOnDrop(Option<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(reader) = self.0.take() {
            reader.abort();
        }
    }
}

impl Open {
    /// Lets the connection go without failing what is in flight: nothing more is written, the
    /// reader hands over the replies still owed (each within its deadline), then the socket
    /// closes. A shard leaving the map, or a new password, costs no command its reply.
    fn retire(self) {
        let Open {
            write,
            in_flight,
            mut reader,
        } = self;
        drop(in_flight);
        if let Some(reader) = reader.0.take() {
            tokio::spawn(async move {
                let _ = reader.await;
                drop(write);
            });
        }
    }
}

struct Connection {
    name: Arc<str>,
    endpoint: Arc<str>,
    health: Arc<Health>,
    settings: Arc<ShardSettings>,
    password: PasswordWatch,
    /// The password this shard accepted last.
    accepted: Option<crate::auth::Password>,
    current: Option<Open>,
    /// Bounds each write to the shard, without a new timer per write.
    watchdog: Watchdog,
}

/// Commands written with one `write` call at most.
const MAX_BATCH: usize = 128;

impl Connection {
    async fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut out = BytesMut::new();
        while requests.recv_many(&mut batch, MAX_BATCH).await > 0 {
            self.send(&mut batch, &mut out).await;
            batch.clear();
        }
        if let Some(open) = self.current.take() {
            open.retire();
        }
        debug!(shard = %self.name, "Shard removed from the map; connection closed once its replies are in.");
    }

    async fn send(&mut self, batch: &mut Vec<Request>, out: &mut BytesMut) {
        if self.health.is_ejected() {
            fail_all(batch, &ShardError::Ejected);
            return;
        }
        if self
            .current
            .as_ref()
            .is_some_and(|open| open.in_flight.is_closed())
        {
            self.current = None;
        }
        if self.password.has_changed().unwrap_or(false) {
            // Authenticated with the old password: new commands go to a connection that
            // authenticates with the new one; the old hands over its replies, then closes.
            if let Some(open) = self.current.take() {
                open.retire();
            }
        }
        if self.current.is_none() {
            match self.connect().await {
                Ok(open) => self.current = Some(open),
                Err(error) => {
                    self.failed(&error);
                    fail_all(batch, &error);
                    return;
                }
            }
        }
        let Some(open) = self.current.as_mut() else {
            return;
        };
        out.clear();
        // One clock read for the batch: its commands go out together. A registration that has to
        // wait for room reads it again, since the wait is not the shard's time.
        let mut deadline = Instant::now() + self.settings.request_timeout;
        for request in batch.drain(..) {
            if request.reply.is_closed() {
                continue;
            }
            let in_flight = InFlight {
                replies: request.replies,
                reply: request.reply,
                deadline,
            };
            // Registered before the bytes go out, so the reader always knows whom a reply is for.
            let registered = match open.in_flight.try_send(in_flight) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(waiting)) => {
                    let sent = open.in_flight.send(waiting).await;
                    deadline = Instant::now() + self.settings.request_timeout;
                    sent.map_err(drop)
                }
                Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
            };
            if registered.is_err() {
                // The reader stopped (and counted the failure); these commands were not sent.
                self.current = None;
                return;
            }
            out.extend_from_slice(&request.payload);
        }
        match self.watchdog.wait(deadline, open.write.write_all(out)).await {
            Some(Ok(())) => {}
            Some(Err(error)) => {
                let error = ShardError::ConnectionLost(error.to_string());
                self.failed(&error);
                self.current = None;
            }
            None => {
                self.failed(&ShardError::Timeout);
                self.current = None;
            }
        }
    }

    async fn connect(&mut self) -> Result<Open, ShardError> {
        let password = self.password.borrow_and_update().clone();
        let mut stream = timeout(self.settings.connect_timeout, TcpStream::connect(&*self.endpoint))
            .await
            .map_err(|_| ShardError::ConnectTimeout)?
            .map_err(|error| ShardError::Connect(error.to_string()))?;
        let _ = stream.set_nodelay(true);
        if let Some(password) = password {
            let (limit, limits) = (self.settings.connect_timeout, &self.settings.limits);
            let refused = match timeout(limit, authenticate(&mut stream, &password, limits)).await {
                Ok(Ok(())) => None,
                Ok(Err(ShardError::Auth(refused))) => Some(refused),
                Ok(Err(error)) => return Err(error),
                Err(_) => return Err(ShardError::ConnectTimeout),
            };
            match (refused, self.accepted.clone()) {
                (None, _) => self.accepted = Some(password),
                // A password just changed in the Secret may not have reached this shard yet (its
                // pods take it up as they restart): the one it accepted last still opens it.
                (Some(refused), Some(old)) if old != password => {
                    match timeout(limit, authenticate(&mut stream, &old, limits)).await {
                        Ok(Ok(())) => {
                            debug!(shard = %self.name, "Shard refused the new password; the previous one opened it.");
                        }
                        _ => return Err(ShardError::Auth(refused)),
                    }
                }
                (Some(refused), _) => return Err(ShardError::Auth(refused)),
            }
        }
        let (read, write) = stream.into_split();
        // At least a batch: commands of a batch are registered before any of its bytes is written,
        // so a smaller queue could wait for replies to commands not yet sent.
        let (in_flight, answered) = mpsc::channel(self.settings.max_in_flight.max(MAX_BATCH));
        let reader = Reader {
            name: self.name.clone(),
            health: self.health.clone(),
            metrics: self.settings.metrics.for_shard(&self.name),
            settings: self.settings.clone(),
        };
        debug!(shard = %self.name, endpoint = %self.endpoint, "Connected to shard.");
        Ok(Open {
            write,
            in_flight,
            reader: AbortOnDrop(Some(tokio::spawn(reader.run(read, answered)))),
        })
    }

    fn failed(&self, error: &ShardError) {
        let ejected = self.health.failure(&self.settings);
        if ejected {
            self.settings.metrics.ejected(&self.name);
        }
        warn!(shard = %self.name, endpoint = %self.endpoint, %error, category = error.category(), ejected, "Shard failed.");
    }
}

/// Sends `AUTH <password>` on a new connection and reads its reply before any command goes out.
async fn authenticate(
    stream: &mut TcpStream,
    password: &crate::auth::Password,
    limits: &Limits,
) -> Result<(), ShardError> {
    let lost = |error: std::io::Error| ShardError::ConnectionLost(error.to_string());
    let mut out = BytesMut::new();
    resp::encode_command(&[&b"AUTH"[..], password.as_bytes()], &mut out);
    stream.write_all(&out).await.map_err(lost)?;
    let mut buf = BytesMut::with_capacity(512);
    loop {
        if let Some(reply) = resp::decode_frame(&mut buf, limits)? {
            return match reply {
                Frame::Simple(_) => Ok(()),
                // A shard started before its password was set (the operator sets it on every new
                // pod within seconds); the connection stays authenticated once it is.
                Frame::Error(message) if no_password_set(&message) => Ok(()),
                // The shard's own words (`WRONGPASS ...`, `ERR AUTH ... no password is set`).
                Frame::Error(message) => {
                    Err(ShardError::Auth(String::from_utf8_lossy(&message).into_owned()))
                }
                other => Err(ShardError::Auth(format!("unexpected reply {other:?}"))),
            };
        }
        if stream.read_buf(&mut buf).await.map_err(lost)? == 0 {
            return Err(ShardError::ConnectionLost("closed during AUTH".to_owned()));
        }
    }
}

/// Whether an `AUTH` error says the shard requires no password (Redis 6 and later, then Redis 5).
fn no_password_set(message: &[u8]) -> bool {
    let message = String::from_utf8_lossy(message);
    message.contains("without any password configured") || message.contains("no password is set")
}

fn fail_all(batch: &mut Vec<Request>, error: &ShardError) {
    for request in batch.drain(..) {
        let _ = request.reply.send(Err(error.clone()));
    }
}

struct Reader {
    name: Arc<str>,
    health: Arc<Health>,
    metrics: ShardMetrics,
    settings: Arc<ShardSettings>,
}

impl Reader {
    async fn run(self, mut read: OwnedReadHalf, mut answered: mpsc::Receiver<InFlight>) {
        let mut buf = BytesMut::new();
        let mut watchdog = Watchdog::new();
        // When the bytes in `buf` arrived: every reply decoded from one read arrived together, so
        // the clock is read once per read, not once per reply.
        let mut arrived = Instant::now();
        while let Some(waiting) = answered.recv().await {
            let mut last = self
                .next_reply(&mut read, &mut buf, waiting.deadline, &mut watchdog, &mut arrived)
                .await;
            for _ in 1..waiting.replies {
                if last.is_err() {
                    break;
                }
                last = self
                    .next_reply(&mut read, &mut buf, waiting.deadline, &mut watchdog, &mut arrived)
                    .await;
            }
            let latency = self
                .settings
                .request_timeout
                .saturating_sub(waiting.deadline.saturating_duration_since(arrived));
            self.metrics.operation(last.is_ok().then_some(latency));
            match last {
                Ok(reply) => {
                    self.health.success();
                    let _ = waiting.reply.send(Ok(reply));
                }
                Err(error) => {
                    let ejected = self.health.failure(&self.settings);
                    if ejected {
                        self.settings.metrics.ejected(&self.name);
                    }
                    warn!(shard = %self.name, %error, category = error.category(), ejected, "Shard connection failed.");
                    let _ = waiting.reply.send(Err(error.clone()));
                    // Replies after a lost one can't be matched to their commands: fail them all.
                    answered.close();
                    while let Some(waiting) = answered.recv().await {
                        let _ = waiting.reply.send(Err(error.clone()));
                    }
                    return;
                }
            }
        }
    }

    async fn next_reply(
        &self,
        read: &mut OwnedReadHalf,
        buf: &mut BytesMut,
        deadline: Instant,
        watchdog: &mut Watchdog,
        arrived: &mut Instant,
    ) -> Result<Bytes, ShardError> {
        loop {
            if let Some(reply) = resp::decode_raw(buf, &self.settings.limits)? {
                return Ok(reply);
            }
            reserve_for_read(buf);
            match watchdog.wait(deadline, read.read_buf(buf)).await {
                None => return Err(ShardError::Timeout),
                Some(Err(error)) => return Err(ShardError::ConnectionLost(error.to_string())),
                Some(Ok(0)) => {
                    let why = match resp::finish(buf) {
                        Ok(()) => "closed by the shard".to_owned(),
                        Err(error) => error.to_string(),
                    };
                    return Err(ShardError::ConnectionLost(why));
                }
                Some(Ok(_)) => *arrived = Instant::now(),
            }
        }
    }
}
