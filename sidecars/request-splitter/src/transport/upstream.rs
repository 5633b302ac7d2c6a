//! Backends at run time: endpoints with their health and connection pool, the hash ring that keeps
//! a sticky client on one endpoint, and round-robin for everyone else. Pools and endpoint health
//! outlive a configuration generation, so a reload keeps pooled connections and ejections.
//!
//! The pool is deliberately small. HTTP/1.1: idle connections per endpoint, last in first out; a
//! connection goes back to the pool when its response body has been read to the end (a response
//! abandoned half way closes its connection); a pooled connection found closed when a request is
//! handed to it gives the request back unsent, and the next connection is tried.
//!
//! Plain HTTP/1.1 exchanges (a request without a body or with a buffered one, no upgrade) run on
//! the request's own task: the request is written straight to a pooled TCP connection, and the
//! response is parsed ([`crate::transport::h1`]) and its body read from the socket as the client side asks for
//! it. That saves hyper's connection task and the channel hops to it, per request. A connection
//! taken from the pool is probed first; one the backend closed while idle is dropped, and an
//! idempotent request that got nothing back on a reused connection is sent again on another. A
//! streamed request body or an upgrade goes through a hyper client connection instead.
//!
//! HTTP/2 (h2c): one multiplexed connection per endpoint, replaced when it closes. With several
//! workers (threads, each with its own runtime), every worker has its own idle connections, so a
//! connection's I/O and the requests on it stay on one thread.

use std::{
    cell::Cell,
    collections::{HashMap, VecDeque},
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use http::{
    header,
    uri::{Authority, PathAndQuery},
    HeaderMap, Method, Request, Response,
};
use http_body::{Body, Frame, SizeHint};
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use outrigger_hashring::HashRing;
use prometheus_client::metrics::counter::Counter;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    config::{parse_endpoint, BackendConfig, UpstreamProtocol},
    discovery::PodEndpoint,
    metrics::{BackendMetrics, Metrics},
    routing::health::EndpointHealth,
    routing::mix,
    transport::added::AddedHeaders,
    transport::body::{BoxError, RequestBody},
    transport::correlation::{RequestId, REQUEST_ID},
    transport::h1::{self, BodyDecoder, BufferedRequest, Decoded, H1Error},
    transport::sends,
};

/// Why an exchange with an endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting: {0}")]
    Connect(#[source] std::io::Error),
    #[error("connecting: no connection within {0:?}")]
    ConnectTimeout(Duration),
    #[error("HTTP handshake: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("{0}")]
    Exchange(#[source] hyper::Error),
    #[error("{0}")]
    Http1(#[source] H1Error),
    #[error("the endpoint sent nothing for {0:?} in the middle of the response body")]
    BodyTimeout(Duration),
}

impl UpstreamError {
    /// The request never left: safe to send again, whatever its method.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect(_) | UpstreamError::ConnectTimeout(_) | UpstreamError::Handshake(_)
        )
    }
}

/// One endpoint of a backend.
#[derive(Debug)]
pub struct Endpoint {
    pub address: String,
    /// The endpoint's node on the backend's hash ring: its pod's name when discovered, else its
    /// address.
    pub ring_name: String,
    pub authority: Authority,
    pub health: Arc<EndpointHealth>,
    pub pool: Arc<ConnectionPool>,
}

/// One backend of a configuration generation.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    ring: HashRing,
    next: AtomicUsize,
    pub protocol: UpstreamProtocol,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_retries: u32,
    pub metrics: BackendMetrics,
}

impl Backend {
    /// An endpoint to try: for a sticky key its place on the ring, otherwise the next in turn;
    /// never an ejected one or one in `tried`. `None` when none is left.
    pub fn pick(&self, key_hash: Option<u64>, now: u64, tried: impl Fn(usize) -> bool) -> Option<usize> {
        self.pick_where(key_hash, |index| {
            !tried(index) && self.endpoints[index].health.is_available(now)
        })
    }

    /// As [`Backend::pick`], ejected endpoints included: a held request tries every endpoint,
    /// since a refused connection is what it waits out, not a sign of a bad endpoint.
    pub fn pick_while_holding(&self, key_hash: Option<u64>, tried: impl Fn(usize) -> bool) -> Option<usize> {
        self.pick_where(key_hash, |index| !tried(index))
    }

    fn pick_where(&self, key_hash: Option<u64>, usable: impl Fn(usize) -> bool) -> Option<usize> {
        if let Some(hash) = key_hash {
            // A few rehashes find the key's next choice on the ring when its first is unusable, so
            // the clients of an ejected endpoint spread instead of piling onto one neighbour.
            let mut hash = hash;
            for _ in 0..3 {
                if let Some(index) = self
                    .ring
                    .node_for_hash(hash)
                    .and_then(|node| self.endpoints.iter().position(|e| e.ring_name == node))
                {
                    if usable(index) {
                        return Some(index);
                    }
                }
                hash = mix(hash.wrapping_add(1));
            }
        }
        let count = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..count)
            .map(|offset| (start + offset) % count)
            .find(|index| usable(*index))
    }
}

/// How long an idle pooled HTTP/1 connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle HTTP/1 connections kept per endpoint.
const MAX_IDLE: usize = 1_024;
/// Pooled connections tried before opening a fresh one, when they turn out closed.
const MAX_STALE: usize = 4;
/// First read buffer of a direct exchange: the response head and, usually, the whole body.
const READ_BUFFER: usize = 4 * 1024;
/// A connection's buffer larger than this (after a large response head) is not kept with it.
const MAX_KEPT_BUFFER: usize = 16 * 1024;
/// Request bodies up to this size go out in the same write as the head.
const COALESCE_BODY: usize = 16 * 1024;

struct IdleConnection {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
}

struct IdleStream {
    stream: TcpStream,
    /// Kept for the next exchange: its memory is used again once the last body bytes of the
    /// previous response have been sent on (and their handles dropped).
    buffer: BytesMut,
    since: Instant,
}

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Marks the current thread as worker `index` (0 is the main thread).
pub fn set_worker(index: usize) {
    WORKER.with(|worker| worker.set(index));
}

fn worker() -> usize {
    WORKER.with(Cell::get)
}

/// One worker's connections to an endpoint.
#[derive(Default)]
struct Slot {
    idle: Mutex<VecDeque<IdleConnection>>,
    /// Idle connections of direct exchanges.
    direct: Mutex<VecDeque<IdleStream>>,
    multiplexed: Mutex<Option<http2::SendRequest<RequestBody>>>,
}

/// The connections to one endpoint, per worker.
pub struct ConnectionPool {
    address: String,
    protocol: UpstreamProtocol,
    slots: Box<[Slot]>,
    /// The backend's `upstream_errors_total{kind="timeout"}`, for response bodies cut off: a
    /// direct exchange's body reaches it through the pool it already holds.
    timeouts: Counter,
}

impl std::fmt::Debug for ConnectionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionPool")
            .field("address", &self.address)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl ConnectionPool {
    pub fn new(
        address: &str,
        protocol: UpstreamProtocol,
        workers: usize,
        timeouts: Counter,
    ) -> Arc<ConnectionPool> {
        Arc::new(ConnectionPool {
            address: address.to_owned(),
            protocol,
            slots: (0..workers.max(1)).map(|_| Slot::default()).collect(),
            timeouts,
        })
    }

    fn slot(&self) -> &Slot {
        &self.slots[worker() % self.slots.len()]
    }

    /// Sends a request and returns the response head; the body streams from the endpoint.
    pub async fn send(
        self: &Arc<Self>,
        request: Request<RequestBody>,
        connect_timeout: Duration,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        match self.protocol {
            UpstreamProtocol::Http1 => match request.into_parts() {
                (parts, RequestBody::Buffered(body)) if is_direct(&parts.method, &parts.headers) => {
                    let target = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
                    // A request that comes with a map has its added headers in it.
                    let request = BufferedRequest {
                        method: &parts.method,
                        target,
                        headers: &parts.headers,
                        added: &AddedHeaders::default(),
                        body: body.as_ref(),
                    };
                    self.send_buffered(request, connect_timeout).await
                }
                // Boxed: rare, and its large future would otherwise be part of every request's future.
                (parts, body) => {
                    let request = Request::from_parts(parts, body);
                    Box::pin(self.send_http1(request, connect_timeout)).await
                }
            },
            UpstreamProtocol::H2c => {
                let response = self.send_h2c(request, connect_timeout).await?;
                Ok(response.map(|body| UpstreamBody::hyper(body, None)))
            }
        }
    }

    /// A plain HTTP/1.1 exchange on the request's own task (see the module documentation); a
    /// request without `host` gets the endpoint's address as its host.
    pub async fn send_buffered(
        self: &Arc<Self>,
        request: BufferedRequest<'_>,
        connect_timeout: Duration,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let resend = crate::routing::retry::is_idempotent(request.method);
        for attempt in 0..=MAX_STALE {
            // The last attempt always opens a fresh connection.
            let pooled = if attempt < MAX_STALE {
                self.checkout_direct()
            } else {
                None
            };
            let reused = pooled.is_some();
            let (mut stream, mut buffer) = match pooled {
                Some(pooled) => pooled,
                None => (
                    Box::pin(self.connect(connect_timeout)).await?.into_inner(),
                    BytesMut::new(),
                ),
            };
            // The request is written from the connection's buffer, which then receives the response.
            buffer.clear();
            buffer.reserve(READ_BUFFER);
            h1::encode_request(&request, &self.address, &mut buffer);
            let separate = match request.body {
                Some(body) if body.len() <= COALESCE_BODY => {
                    buffer.extend_from_slice(body);
                    None
                }
                other => other,
            };
            match exchange(&mut stream, buffer, separate).await {
                Ok((head, buffer)) => {
                    let framing = h1::framing(request.method, &head).map_err(UpstreamError::Http1)?;
                    let reusable = head.keep_alive && framing != h1::Framing::Close;
                    let body = DirectBody {
                        stream: Some(stream),
                        buffer,
                        decoder: BodyDecoder::new(framing),
                        reusable,
                        pool: self.clone(),
                    };
                    // Left as lines for the client connection to write out; a response whose
                    // hop-by-hop headers are still to be stripped gets its map at once.
                    let (unmapped, headers) = if head.hop_by_hop_removed {
                        let unmapped = Unmapped {
                            lines: head.headers,
                            request_id: None,
                        };
                        (Some(unmapped), HeaderMap::new())
                    } else {
                        (None, head.headers.into_map())
                    };
                    let mut response = Response::new(UpstreamBody {
                        kind: BodyKind::Direct(body),
                        unmapped,
                        idle: None,
                    });
                    *response.status_mut() = head.status;
                    *response.version_mut() = head.version;
                    *response.headers_mut() = headers;
                    return Ok(response);
                }
                // The backend closed the pooled connection while it was idle.
                Err(error) if reused && error.nothing_received() && resend => {}
                Err(error) => return Err(UpstreamError::Http1(error)),
            }
        }
        // Not reached: the last attempt uses a fresh connection and returns either way.
        Err(UpstreamError::ConnectTimeout(connect_timeout))
    }

    /// The newest idle direct connection that is still open, with its buffer.
    fn checkout_direct(&self) -> Option<(TcpStream, BytesMut)> {
        let mut idle = lock(&self.slot().direct);
        while let Some(connection) = idle.pop_back() {
            // Nothing to read is what an open idle connection has; end of file or stray bytes mean
            // it cannot carry a request.
            let mut probe = [0u8; 1];
            if let Err(error) = connection.stream.try_read(&mut probe) {
                if error.kind() == std::io::ErrorKind::WouldBlock {
                    return Some((connection.stream, connection.buffer));
                }
            }
        }
        None
    }

    fn put_direct(&self, stream: TcpStream, mut buffer: BytesMut) {
        if buffer.capacity() > MAX_KEPT_BUFFER {
            buffer = BytesMut::new();
        }
        let now = Instant::now();
        let mut idle = lock(&self.slot().direct);
        while idle
            .front()
            .is_some_and(|oldest| now.duration_since(oldest.since) > IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        if idle.len() < MAX_IDLE {
            idle.push_back(IdleStream {
                stream,
                buffer,
                since: now,
            });
        }
    }

    async fn send_http1(
        self: &Arc<Self>,
        mut request: Request<RequestBody>,
        connect_timeout: Duration,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        for attempt in 0..=MAX_STALE {
            // The last attempt always opens a fresh connection.
            let pooled = if attempt < MAX_STALE {
                self.checkout()
            } else {
                None
            };
            let reused = pooled.is_some();
            let mut sender = match pooled {
                Some(sender) => sender,
                // Boxed: connecting is rare, and its large future would otherwise be part of (and
                // copied with) every request's future.
                None => self.connect_http1(connect_timeout).await?,
            };
            if reused && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let lease = Lease {
                        sender: Some(sender),
                        pool: self.clone(),
                    };
                    return Ok(response.map(|body| UpstreamBody::hyper(body, Some(lease))));
                }
                Err(mut error) => match error.take_message() {
                    // The pooled connection closed before the request was written: try another.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(UpstreamError::Exchange(error.into_error())),
                },
            }
        }
        // Not reached: the last attempt uses a fresh connection and returns either way.
        Err(UpstreamError::ConnectTimeout(connect_timeout))
    }

    async fn send_h2c(
        &self,
        request: Request<RequestBody>,
        connect_timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let current = lock(&self.slot().multiplexed)
            .as_ref()
            .filter(|sender| !sender.is_closed())
            .cloned();
        let current = match current {
            Some(mut sender) => sender.ready().await.is_ok().then_some(sender),
            None => None,
        };
        let mut sender = match current {
            Some(sender) => sender,
            // None yet, or it went away (GOAWAY, closed): open a new one.
            None => {
                let mut sender = Box::pin(self.connect_h2c(connect_timeout)).await?;
                *lock(&self.slot().multiplexed) = Some(sender.clone());
                sender.ready().await.map_err(UpstreamError::Exchange)?;
                sender
            }
        };
        sender
            .send_request(request)
            .await
            .map_err(UpstreamError::Exchange)
    }

    fn checkout(&self) -> Option<http1::SendRequest<RequestBody>> {
        let mut idle = lock(&self.slot().idle);
        while let Some(connection) = idle.pop_back() {
            if !connection.sender.is_closed() {
                return Some(connection.sender);
            }
        }
        None
    }

    fn put(&self, sender: http1::SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = lock(&self.slot().idle);
        while idle
            .front()
            .is_some_and(|oldest| now.duration_since(oldest.since) > IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        if idle.len() < MAX_IDLE {
            idle.push_back(IdleConnection { sender, since: now });
        }
    }

    async fn connect(&self, connect_timeout: Duration) -> Result<TokioIo<TcpStream>, UpstreamError> {
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(self.address.as_str()))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(connect_timeout))?
            .map_err(UpstreamError::Connect)?;
        let _ = stream.set_nodelay(true);
        Ok(TokioIo::new(stream))
    }

    async fn connect_http1(
        &self,
        connect_timeout: Duration,
    ) -> Result<http1::SendRequest<RequestBody>, UpstreamError> {
        let io = self.connect(connect_timeout).await?;
        let (sender, connection) = http1::handshake(io).await.map_err(UpstreamError::Handshake)?;
        // With upgrades, so that the same connections carry WebSocket and other Upgrade requests.
        let address = self.address.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, endpoint = %address, "Upstream connection ended with an error.");
            }
        });
        Ok(sender)
    }

    async fn connect_h2c(
        &self,
        connect_timeout: Duration,
    ) -> Result<http2::SendRequest<RequestBody>, UpstreamError> {
        let io = self.connect(connect_timeout).await?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(UpstreamError::Handshake)?;
        let address = self.address.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, endpoint = %address, "Upstream connection ended with an error.");
            }
        });
        Ok(sender)
    }
}

/// An HTTP/1 connection lent to one exchange; it returns to the pool when the response body ends.
struct Lease {
    sender: Option<http1::SendRequest<RequestBody>>,
    pool: Arc<ConnectionPool>,
}

impl Lease {
    fn release(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.pool.put(sender);
        }
    }
}

/// A response body from an endpoint, which gives its connection back once read to the end.
pub struct UpstreamBody {
    kind: BodyKind,
    /// The backend's header lines, without its hop-by-hop ones, when they are not in the
    /// response's map (which then has none of them): see [`UpstreamBody::take_unmapped`].
    unmapped: Option<Unmapped>,
    /// How long the body may wait for the endpoint between two reads.
    idle: Option<Idle>,
}

/// The wait of a response body for its endpoint. Only time spent waiting for the endpoint counts:
/// while the client is slow to take the bytes, nobody polls the body and no time is counted.
struct Idle {
    timeout: Duration,
    /// Counts the endpoint's silences (`upstream_errors_total{kind="timeout"}`); a direct
    /// exchange's body counts them through its pool, without a copy of the handle per response.
    timeouts: Option<Counter>,
    /// Made on the first wait: a body that is in the buffer at once never needs one.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When the current wait for the endpoint began; `None` while the body is not waiting.
    since: Option<tokio::time::Instant>,
}

/// The headers of a response that are not in its map: the backend's lines as received, and the
/// `x-request-id` the splitter adds to them when the backend sent none.
#[derive(Debug)]
pub struct Unmapped {
    pub lines: h1::RawHeaders,
    pub request_id: Option<RequestId>,
}

impl Unmapped {
    /// Moves the headers into `map`, after what it holds.
    pub fn append_to(self, map: &mut HeaderMap) {
        self.lines.append_to(map);
        if let Some(id) = self.request_id {
            map.append(&REQUEST_ID, id.to_value());
        }
    }
}

enum BodyKind {
    Hyper { body: Incoming, lease: Option<Lease> },
    Direct(DirectBody),
}

impl UpstreamBody {
    fn hyper(body: Incoming, lease: Option<Lease>) -> UpstreamBody {
        UpstreamBody {
            kind: BodyKind::Hyper { body, lease },
            unmapped: None,
            idle: None,
        }
    }

    /// Ends the body with an error when the endpoint sends nothing for `timeout` while the body
    /// waits for it, counting it in `timeouts`.
    pub fn set_idle_timeout(&mut self, timeout: Duration, timeouts: &Counter) {
        let timeouts = match self.kind {
            BodyKind::Direct(_) => None,
            BodyKind::Hyper { .. } => Some(timeouts.clone()),
        };
        self.idle = Some(Idle {
            timeout,
            timeouts,
            timer: None,
            since: None,
        });
    }

    /// The body waits for the endpoint: `Pending` until the endpoint has been silent for the
    /// idle timeout, then an error (and the connection is given up).
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(idle) = self.idle.as_mut() else {
            return Poll::Pending;
        };
        let since = *idle.since.get_or_insert_with(tokio::time::Instant::now);
        let deadline = since + idle.timeout;
        let timer = idle
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        // The timer is moved only when it fires early (it was set for an earlier wait), so a body
        // that waits often does not touch the timer wheel each time.
        while std::future::Future::poll(timer.as_mut(), cx).is_ready() {
            if tokio::time::Instant::now() >= deadline {
                let timeout = idle.timeout;
                match (idle.timeouts.take(), &mut self.kind) {
                    (Some(timeouts), _) => {
                        timeouts.inc();
                    }
                    (None, BodyKind::Direct(body)) => {
                        body.pool.timeouts.inc();
                        body.stream = None;
                    }
                    (None, BodyKind::Hyper { .. }) => {}
                }
                self.idle = None;
                return Poll::Ready(Some(Err(Box::new(UpstreamError::BodyTimeout(timeout)))));
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }

    /// Whether the response's hop-by-hop headers are already gone, so that nothing needs to look
    /// for them again: a direct exchange keeps the lines apart only when it has left them out
    /// (see [`h1::parse_head`]).
    pub fn hop_by_hop_removed(&self) -> bool {
        self.unmapped.is_some()
    }

    /// The headers that are not in the response's map. A direct exchange leaves the backend's
    /// lines as received, so that an HTTP/1.1 client connection writes them out without a map;
    /// whoever needs the map moves them into it.
    pub fn unmapped_mut(&mut self) -> Option<&mut Unmapped> {
        self.unmapped.as_mut()
    }

    pub fn take_unmapped(&mut self) -> Option<Unmapped> {
        self.unmapped.take()
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            BodyKind::Hyper { body, .. } => f
                .debug_struct("UpstreamBody")
                .field("body", body)
                .finish_non_exhaustive(),
            BodyKind::Direct(body) => f
                .debug_struct("UpstreamBody")
                .field("decoder", &body.decoder)
                .finish_non_exhaustive(),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            BodyKind::Hyper { body, lease } => {
                let polled = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(None) = polled {
                    if let Some(lease) = lease.as_mut() {
                        lease.release();
                    }
                }
                polled.map_err(Into::into)
            }
            BodyKind::Direct(body) => body.poll_frame(cx).map_err(Into::into),
        };
        match polled {
            Poll::Pending => this.poll_idle(cx),
            ready => {
                if let Some(idle) = this.idle.as_mut() {
                    idle.since = None;
                }
                ready
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Hyper { body, .. } => body.is_end_stream(),
            BodyKind::Direct(body) => body.decoder.is_done(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Hyper { body, .. } => body.size_hint(),
            BodyKind::Direct(body) => body
                .decoder
                .remaining()
                .map_or_else(SizeHint::default, SizeHint::with_exact),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body that was complete before anyone polled it (`content-length: 0`, HEAD) still gives
        // its connection back; one dropped half way does not.
        match &mut self.kind {
            BodyKind::Hyper { body, lease } => {
                if body.is_end_stream() {
                    if let Some(lease) = lease.as_mut() {
                        lease.release();
                    }
                }
            }
            BodyKind::Direct(body) => body.release(),
        }
    }
}

/// The body of a direct exchange, read from the backend's socket by whoever polls it.
struct DirectBody {
    /// `None` once the connection went back to the pool or was given up.
    stream: Option<TcpStream>,
    /// Bytes received and not yet decoded.
    buffer: BytesMut,
    decoder: BodyDecoder,
    /// The backend keeps the connection open after this response.
    reusable: bool,
    pool: Arc<ConnectionPool>,
}

impl DirectBody {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        loop {
            match self.decoder.decode(&mut self.buffer) {
                Err(error) => {
                    self.stream = None;
                    return Poll::Ready(Some(Err(error)));
                }
                Ok(Decoded::Data(data)) => {
                    // Given back before the last bytes are sent on, so the next request can use it.
                    self.release();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Trailers(trailers)) => {
                    self.release();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Ok(Decoded::End) => {
                    self.release();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
            }
            let Some(stream) = self.stream.as_ref() else {
                return Poll::Ready(Some(Err(H1Error::ClosedInBody)));
            };
            if self.buffer.capacity() - self.buffer.len() < 1024 {
                self.buffer.reserve(READ_BUFFER);
            }
            match stream.try_read_buf(&mut self.buffer) {
                Ok(0) => {
                    self.stream = None;
                    if let Err(error) = self.decoder.finish() {
                        return Poll::Ready(Some(Err(error)));
                    }
                }
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    match stream.poll_read_ready(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(error)) => {
                            self.stream = None;
                            return Poll::Ready(Some(Err(H1Error::Broken(error))));
                        }
                    }
                }
                Err(error) => {
                    self.stream = None;
                    return Poll::Ready(Some(Err(H1Error::Broken(error))));
                }
            }
        }
    }

    /// Gives the connection back once the whole response has been read from it, and nothing more.
    fn release(&mut self) {
        if self.decoder.is_done() && self.reusable && self.buffer.is_empty() {
            if let Some(stream) = self.stream.take() {
                self.pool.put_direct(stream, std::mem::take(&mut self.buffer));
            }
        }
    }
}

/// Writes the request in `buffer` (and `body`, when it was not coalesced into it), then reads into
/// the same buffer until a final response head; 1xx interim responses are skipped. Returns the
/// head and what followed it.
async fn exchange(
    stream: &mut TcpStream,
    buffer: BytesMut,
    body: Option<&Bytes>,
) -> Result<(h1::Head, BytesMut), H1Error> {
    // The same buffer throughout: lent to the worker's batch of sends, then reused for the response.
    let mut request = buffer;
    match sends::lend(stream, &mut request).await {
        None => stream.write_all(&request).await.map_err(H1Error::Write)?,
        Some(mut lent) => {
            if body.is_none() {
                // A complete send wakes nobody: the task sleeps until the backend answers (or
                // closes), unless the batch could not send it all.
                std::future::poll_fn(|cx| {
                    if lent.poll_incomplete(cx).is_ready() {
                        return std::task::Poll::Ready(());
                    }
                    stream.poll_read_ready(cx).map(|_| ())
                })
                .await;
            }
            lent.finish(stream, &mut request).await.map_err(H1Error::Write)?;
        }
    }
    if let Some(body) = body {
        stream.write_all(body).await.map_err(H1Error::Write)?;
    }
    let mut buffer = request;
    buffer.clear();
    let mut received = false;
    loop {
        match h1::parse_head(&mut buffer)? {
            Some(head) if head.status == http::StatusCode::SWITCHING_PROTOCOLS => {
                return Err(H1Error::Malformed("101 without an upgrade request"));
            }
            Some(head) if head.status.is_informational() => continue,
            Some(head) => return Ok((head, buffer)),
            None => {}
        }
        if buffer.capacity() - buffer.len() < 1024 {
            buffer.reserve(READ_BUFFER);
        }
        match stream.read_buf(&mut buffer).await {
            Ok(0) if received => return Err(H1Error::ClosedInHead),
            Ok(0) => return Err(H1Error::ClosedBeforeResponse),
            Ok(_) => received = true,
            Err(error) if received => return Err(H1Error::Broken(error)),
            Err(error) => return Err(H1Error::Read(error)),
        }
    }
}

/// Whether a request with a buffered body can take the direct path: not `CONNECT`, not an upgrade.
pub fn is_direct(method: &Method, headers: &HeaderMap) -> bool {
    *method != Method::CONNECT && !headers.contains_key(header::UPGRADE)
}

/// An endpoint's state that outlives configuration generations, by (backend name, address).
type EndpointStates = HashMap<(String, String), (Arc<EndpointHealth>, Arc<ConnectionPool>)>;

/// What outlives configuration generations: endpoint health and connection pools.
pub struct Resources {
    endpoints: Mutex<EndpointStates>,
    /// The backends of the last generation built, whose metric series are exported.
    names: Mutex<Vec<String>>,
    workers: usize,
}

impl Resources {
    /// Resources for `workers` worker threads.
    pub fn new(workers: usize) -> Resources {
        Resources {
            endpoints: Mutex::default(),
            names: Mutex::default(),
            workers: workers.max(1),
        }
    }

    /// Builds the backends of a new generation, reusing the health and pools of endpoints that
    /// stay, and forgetting the rest (old generations still in use keep their own).
    pub fn backends(&self, configs: &[BackendConfig], virtual_nodes: u32, metrics: &Metrics) -> Vec<Backend> {
        self.backends_with_pods(configs, &|_| None, virtual_nodes, metrics)
    }

    /// As [`Resources::backends`], with the endpoints of a backend that discovers its pods taken from
    /// `pods` (name and address of each) when it knows any; the static endpoints serve otherwise.
    pub fn backends_with_pods(
        &self,
        configs: &[BackendConfig],
        pods: &dyn Fn(&BackendConfig) -> Option<Vec<PodEndpoint>>,
        virtual_nodes: u32,
        metrics: &Metrics,
    ) -> Vec<Backend> {
        let mut known = lock(&self.endpoints);
        let mut kept = HashMap::new();
        let mut backends = Vec::with_capacity(configs.len());
        for config in configs {
            let backend_metrics = metrics.backend(&config.name);
            let timeouts = &backend_metrics.timeouts;
            let members: Vec<(String, String)> = match pods(config) {
                Some(pods) if !pods.is_empty() => {
                    pods.into_iter().map(|pod| (pod.name, pod.address)).collect()
                }
                _ => config
                    .endpoints
                    .iter()
                    .map(|address| (address.clone(), address.clone()))
                    .collect(),
            };
            let endpoints: Vec<Endpoint> = members
                .iter()
                .filter_map(|(ring_name, address)| {
                    let authority = parse_endpoint(address).ok()?;
                    let id = (config.name.clone(), address.clone());
                    let (health, pool) = match known.remove(&id) {
                        Some((health, pool)) if pool.protocol == config.protocol => (health, pool),
                        Some((health, _)) => (
                            health,
                            ConnectionPool::new(address, config.protocol, self.workers, timeouts.clone()),
                        ),
                        None => (
                            Arc::default(),
                            ConnectionPool::new(address, config.protocol, self.workers, timeouts.clone()),
                        ),
                    };
                    kept.insert(id, (health.clone(), pool.clone()));
                    Some(Endpoint {
                        address: address.clone(),
                        ring_name: ring_name.clone(),
                        authority,
                        health,
                        pool,
                    })
                })
                .collect();
            let ring = HashRing::new(
                &endpoints.iter().map(|e| e.ring_name.as_str()).collect::<Vec<_>>(),
                virtual_nodes,
            );
            backends.push(Backend {
                name: config.name.clone(),
                endpoints,
                ring,
                next: AtomicUsize::new(0),
                protocol: config.protocol,
                timeout: config.timeout.0,
                connect_timeout: config.connect_timeout.0,
                max_retries: config.max_retries,
                metrics: backend_metrics,
            });
        }
        *known = kept;
        drop(known);
        let mut names = lock(&self.names);
        for gone in names
            .iter()
            .filter(|name| !configs.iter().any(|config| &config.name == *name))
        {
            metrics.remove_backend(gone);
        }
        *names = configs.iter().map(|config| config.name.clone()).collect();
        backends
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;
    use serde_json::json;

    use super::*;
    use crate::config::{ConfigDuration, OutlierConfig, SplitterConfig, SplitterConfigExt};

    fn backends(resources: &Resources, endpoints: &[&str]) -> Vec<Backend> {
        let config = SplitterConfig::from_value(json!({
            "backends": [{"name": "stable", "endpoints": endpoints}]
        }))
        .unwrap();
        let metrics = Metrics::register(&mut Registry::default());
        resources.backends(&config.backends, 160, &metrics)
    }

    #[tokio::test]
    async fn round_robin_skips_ejected_and_tried_endpoints() {
        let resources = Resources::new(1);
        let backend = &backends(&resources, &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"])[0];
        let picks: Vec<_> = (0..6)
            .map(|_| backend.pick(None, 0, |_| false).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let policy = OutlierConfig {
            consecutive_failures: 1,
            base_ejection_time: ConfigDuration(Duration::from_secs(1)),
            max_ejection_time: ConfigDuration(Duration::from_secs(1)),
        };
        backend.endpoints[1].health.record_failure(0, &policy);
        assert!((0..6).all(|_| backend.pick(None, 0, |_| false) != Some(1)));
        assert_eq!(backend.pick(None, 0, |index| index != 2), Some(2));
        assert_eq!(backend.pick(None, 0, |index| index != 1), None);
    }

    #[tokio::test]
    async fn a_sticky_key_keeps_its_endpoint_and_moves_only_while_it_is_ejected() {
        let resources = Resources::new(1);
        let backend = &backends(&resources, &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"])[0];
        let home = backend.pick(Some(42), 0, |_| false).unwrap();
        assert!((0..20).all(|_| backend.pick(Some(42), 0, |_| false) == Some(home)));
        let elsewhere = backend.pick(Some(42), 0, |index| index == home).unwrap();
        assert_ne!(elsewhere, home);
    }

    fn pods_backend(resources: &Resources, pods: &[(&str, &str)]) -> Backend {
        let config = SplitterConfig::from_value(json!({
            "backends": [{"name": "stable", "endpoints": ["10.96.0.10:80"],
                          "discovery": {"namespace": "shop", "service": "web-stable"}}]
        }))
        .unwrap();
        let pods: Vec<PodEndpoint> = pods
            .iter()
            .map(|(name, address)| PodEndpoint {
                name: (*name).to_owned(),
                address: (*address).to_owned(),
            })
            .collect();
        let metrics = Metrics::register(&mut Registry::default());
        resources
            .backends_with_pods(&config.backends, &|_| Some(pods.clone()), 160, &metrics)
            .remove(0)
    }

    fn homes(backend: &Backend) -> Vec<String> {
        (0..2_000u64)
            .map(|key| {
                let index = backend.pick(Some(outrigger_hashring::fnv1a64(&key.to_be_bytes())), 0, |_| {
                    false
                });
                backend.endpoints[index.unwrap()].ring_name.clone()
            })
            .collect()
    }

    #[tokio::test]
    async fn a_pod_that_turns_unready_gives_its_keys_away_and_takes_them_back_at_any_address() {
        let resources = Resources::new(1);
        let all = [
            ("web-a", "172.17.0.2:8080"),
            ("web-b", "172.17.0.3:8080"),
            ("web-c", "172.17.0.4:8080"),
        ];
        let before = homes(&pods_backend(&resources, &all));
        let without_b = homes(&pods_backend(&resources, &[all[0], all[2]]));
        for (old, new) in before.iter().zip(&without_b) {
            if old == "web-b" {
                assert_ne!(new, "web-b");
            } else {
                assert_eq!(old, new, "only web-b's keys move");
            }
        }
        // Back, even at another address: every key is where it was.
        let back = homes(&pods_backend(
            &resources,
            &[all[0], ("web-b", "172.17.0.9:8080"), all[2]],
        ));
        assert_eq!(before, back);
    }

    #[tokio::test]
    async fn without_ready_pods_the_static_endpoints_serve() {
        let resources = Resources::new(1);
        let backend = pods_backend(&resources, &[]);
        assert_eq!(backend.endpoints.len(), 1);
        assert_eq!(backend.endpoints[0].address, "10.96.0.10:80");
    }

    #[tokio::test]
    async fn endpoint_health_survives_a_rebuild_of_the_backends() {
        let resources = Resources::new(1);
        let first = backends(&resources, &["127.0.0.1:1", "127.0.0.1:2"]);
        let second = backends(&resources, &["127.0.0.1:2", "127.0.0.1:9"]);
        assert!(Arc::ptr_eq(
            &first[0].endpoints[1].health,
            &second[0].endpoints[0].health
        ));
        assert!(!Arc::ptr_eq(
            &first[0].endpoints[0].health,
            &second[0].endpoints[1].health
        ));
    }
}
