//! The client-facing listener: a connection limit, protocol detection (HTTP/1.1, or HTTP/2 by its
//! preface; with TLS, by ALPN), bad-input limits (header size, header read timeout) and graceful
//! drain: on shutdown the listener closes, HTTP/1 connections finish their request in flight and
//! close, HTTP/2 connections get GOAWAY and finish their streams.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use hyper::{
    body::Incoming,
    server::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use outrigger_sidecar_runtime::admin::AdminState;
use prometheus_client::metrics::gauge::Gauge;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{watch, Notify, OwnedSemaphorePermit, Semaphore},
};
use tokio_rustls::TlsAcceptor;

use crate::{
    config::LimitsConfig,
    metrics::ReasonLabels,
    transport::fast,
    transport::proxy::{self, ConnectionInfo, Shared},
    transport::sends,
};

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nx-outrigger-reason: too-many-connections\r\ncontent-type: text/plain\r\ncontent-length: 21\r\nconnection: close\r\n\r\ntoo-many-connections\n";

/// Open client connections, for the connection limit, the `active_connections` gauge and the
/// drain. An upgraded connection (a tunnel) stays counted until the tunnel closes; the drain does
/// not wait for tunnels.
pub struct Connections {
    open: AtomicUsize,
    tunnels: AtomicUsize,
    closed: Notify,
    gauge: Gauge,
    readiness: Readiness,
}

impl Connections {
    pub fn new(gauge: Gauge, readiness: Readiness) -> Arc<Connections> {
        Arc::new(Connections {
            open: AtomicUsize::new(0),
            tunnels: AtomicUsize::new(0),
            closed: Notify::new(),
            gauge,
            readiness,
        })
    }

    fn enter(self: &Arc<Self>) -> ConnectionGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.gauge.inc();
        ConnectionGuard(self.clone())
    }

    /// Connections open now, tunnels included.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections open now that the drain waits for: all but tunnels.
    pub fn serving(&self) -> usize {
        self.open().saturating_sub(self.tunnels.load(Ordering::Relaxed))
    }

    /// Completes when no connection but tunnels is open.
    pub async fn all_closed(&self) {
        loop {
            let closed = self.closed.notified();
            if self.serving() == 0 {
                return;
            }
            closed.await;
        }
    }

    /// What `/readyz` says.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    fn notify_if_idle(&self) {
        if self.serving() == 0 {
            self.closed.notify_waiters();
        }
    }
}

struct ConnectionGuard(Arc<Connections>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.gauge.dec();
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.notify_if_idle();
    }
}

/// What a client connection holds while it is open: its place under `maxConnections` and in the
/// count of open connections. Shared by the connection's requests, so that a tunnel made by an
/// upgrade keeps it after the HTTP connection has handed its socket over.
pub struct Held {
    _permit: OwnedSemaphorePermit,
    guard: ConnectionGuard,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held").finish_non_exhaustive()
    }
}

impl Held {
    /// Marks the connection as a tunnel until the mark is dropped.
    pub fn tunnel(&self) -> TunnelMark {
        let connections = self.guard.0.clone();
        connections.tunnels.fetch_add(1, Ordering::Relaxed);
        connections.notify_if_idle();
        TunnelMark(connections)
    }
}

/// A connection carrying a tunnel: counted, not drained.
pub struct TunnelMark(Arc<Connections>);

impl Drop for TunnelMark {
    fn drop(&mut self) {
        self.0.tunnels.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `/readyz`: ready while the proxy serves (from start-up to the drain) and no listener has
/// paused accepting for lack of file descriptors.
pub struct Readiness {
    admin: AdminState,
    state: Mutex<ReadyState>,
    paused_gauge: Gauge,
}

#[derive(Default)]
struct ReadyState {
    serving: bool,
    paused: usize,
}

impl Readiness {
    pub fn new(admin: AdminState, paused_gauge: Gauge) -> Readiness {
        Readiness {
            admin,
            state: Mutex::default(),
            paused_gauge,
        }
    }

    /// Serving starts once the listener is up and ends with the drain.
    pub fn set_serving(&self, serving: bool) {
        self.update(|state| state.serving = serving);
    }

    fn pause(&self) {
        self.paused_gauge.inc();
        self.update(|state| state.paused += 1);
    }

    fn resume(&self) {
        self.paused_gauge.dec();
        self.update(|state| state.paused = state.paused.saturating_sub(1));
    }

    // One lock around the change and the flag it sets, so concurrent pauses and resumes of
    // several workers cannot leave the flag stale.
    fn update(&self, change: impl FnOnce(&mut ReadyState)) {
        let mut state = match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        change(&mut state);
        self.admin.set_ready(state.serving && state.paused == 0);
    }
}

/// First wait after `accept` ran out of descriptors; it doubles while that lasts.
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(10);
/// Longest wait between tries while out of descriptors.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Whether `accept` failed for lack of resources (descriptors, memory) rather than because of one
/// connection (aborted before it was accepted): retrying at once would fail the same way.
fn is_exhaustion(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// A listener paused for lack of descriptors; resumes readiness when dropped.
struct Paused<'a> {
    readiness: &'a Readiness,
    backoff: Duration,
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        self.readiness.resume();
        tracing::info!("Accepting connections again.");
    }
}

/// Accepts connections until `shutdown` turns true, then returns (closing the listener). `limit`
/// holds one permit per client connection allowed, shared by all workers.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
    limit: Arc<Semaphore>,
    connections: Arc<Connections>,
    mut shutdown: watch::Receiver<bool>,
) {
    sends::start(sends::SendMode::Ring);
    let mut paused: Option<Paused<'_>> = None;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => {
                paused = None;
                accepted
            }
            Err(error) if is_exhaustion(&error) => {
                // Out of descriptors: retrying at once fails again, so the listener waits, longer
                // each time, and readiness fails meanwhile. Clients wait in the listen backlog.
                let backoff = match paused.as_mut() {
                    Some(paused) => {
                        paused.backoff = (paused.backoff * 2).min(ACCEPT_BACKOFF_MAX);
                        paused.backoff
                    }
                    None => {
                        tracing::warn!(%error, "Out of file descriptors: accepting paused.");
                        connections.readiness.pause();
                        paused = Some(Paused {
                            readiness: &connections.readiness,
                            backoff: ACCEPT_BACKOFF_FIRST,
                        });
                        ACCEPT_BACKOFF_FIRST
                    }
                };
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
                continue;
            }
            Err(error) => {
                // One connection that failed before it was accepted (reset, aborted).
                tracing::debug!(%error, "Failed to accept a connection.");
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            shared.metrics.connections_rejected.inc();
            if tls.is_none() {
                let _ = stream.try_write(TOO_MANY_CONNECTIONS);
            }
            continue;
        };
        shared.metrics.connections.inc();
        let held = Held {
            _permit: permit,
            guard: connections.enter(),
        };
        tokio::spawn(connection(
            stream,
            remote,
            shared.clone(),
            tls.clone(),
            shutdown.clone(),
            held,
        ));
    }
}

async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
    shutdown: watch::Receiver<bool>,
    held: Held,
) {
    let _ = stream.set_nodelay(true);
    let limits = shared
        .store
        .current()
        .map(|active| active.config.limits.clone())
        .unwrap_or_default();
    let info = ConnectionInfo::holding(remote, tls.is_some(), held);
    let header_timeout = limits.header_read_timeout.0;
    // The TLS and HTTP/2 paths are boxed: their state is large, and inline it would make every
    // connection's task as big as the largest path.
    let result = match tls {
        Some(acceptor) => match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => {
                if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                    Box::pin(serve_h2(stream, shared.clone(), info.clone(), &limits, shutdown)).await
                } else {
                    Box::pin(serve_h1(stream, shared.clone(), info.clone(), &limits, shutdown)).await
                }
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, %remote, "TLS handshake failed.");
                count(&shared, "tls_handshake");
                return;
            }
            Err(_) => {
                count(&shared, "tls_handshake");
                return;
            }
        },
        None => match tokio::time::timeout(header_timeout, sniff_h2(&stream)).await {
            Ok(Ok(true)) => Box::pin(serve_h2(stream, shared.clone(), info.clone(), &limits, shutdown)).await,
            Ok(Ok(false)) => match fast::serve(stream, &shared, &info, &limits, shutdown.clone()).await {
                fast::Outcome::Closed => return,
                fast::Outcome::HeaderTimeout => {
                    // As with hyper below: an idle keep-alive connection timing out is no error.
                    if info.requests() == 0 {
                        count(&shared, "header_timeout");
                    }
                    return;
                }
                fast::Outcome::HandOff(io) => {
                    Box::pin(serve_h1(io, shared.clone(), info.clone(), &limits, shutdown)).await
                }
            },
            // Closed before sending anything.
            Ok(Err(_)) => return,
            Err(_) => {
                count(&shared, "header_timeout");
                return;
            }
        },
    };
    if let Err(error) = result {
        let reason = if error.is_parse_too_large() {
            Some("headers_too_large")
        } else if error.is_timeout() {
            // The header read timeout also closes keep-alive connections left idle that long:
            // that is no client error. A connection that never completed a request is one.
            (info.requests() == 0).then_some("header_timeout")
        } else if error.is_parse() {
            Some("malformed")
        } else {
            None
        };
        match reason {
            Some(reason) => {
                count(&shared, reason);
                tracing::debug!(%error, %remote, reason, "Closed a client connection for bad input.");
            }
            None => tracing::debug!(%error, %remote, "Client connection ended with an error."),
        }
    }
}

fn count(shared: &Shared, reason: &'static str) {
    shared
        .metrics
        .client_errors
        .get_or_create(&ReasonLabels { reason })
        .inc();
}

/// Whether the client opens with the HTTP/2 preface (h2c with prior knowledge). Peeks only.
async fn sniff_h2(stream: &TcpStream) -> io::Result<bool> {
    let mut buffer = [0u8; 24];
    loop {
        let read = stream.peek(&mut buffer).await?;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if buffer[..read] != H2_PREFACE[..read] {
            return Ok(false);
        }
        if read == H2_PREFACE.len() {
            return Ok(true);
        }
        // A partial preface: rare, so a short wait is fine (bounded by the header read timeout).
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn serve_h1<I>(
    io: I,
    shared: Arc<Shared>,
    info: ConnectionInfo,
    limits: &LimitsConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = proxy::service::<Incoming>(shared, info);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.0)
        .max_header_size(limits.max_header_bytes as usize)
        .max_headers(limits.max_header_count as usize);
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    drive(connection, shutdown).await
}

async fn serve_h2<I>(
    io: I,
    shared: Arc<Shared>,
    info: ConnectionInfo,
    limits: &LimitsConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = proxy::service::<Incoming>(shared, info);
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes);
    drive(builder.serve_connection(TokioIo::new(io), service), shutdown).await
}

/// A connection that can be asked to finish.
trait Graceful {
    fn graceful(self: Pin<&mut Self>);
}

impl<I, S> Graceful for http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<Incoming>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E> Graceful for http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<Incoming>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

async fn drive<C>(connection: C, mut shutdown: watch::Receiver<bool>) -> Result<(), hyper::Error>
where
    C: Future<Output = Result<(), hyper::Error>> + Graceful,
{
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => return result,
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
    connection.as_mut().graceful();
    connection.await
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;

    #[test]
    fn readiness_needs_serving_and_no_listener_paused() {
        let admin = AdminState::new(Registry::default());
        let readiness = Readiness::new(admin.clone(), Gauge::default());
        assert!(!admin.is_ready(), "not before the listener is up");
        readiness.set_serving(true);
        assert!(admin.is_ready());
        // Two workers' listeners pause; readiness returns only when both resume.
        readiness.pause();
        readiness.pause();
        readiness.resume();
        assert!(!admin.is_ready());
        readiness.resume();
        assert!(admin.is_ready());
        // A pause ending during the drain does not make the process ready again.
        readiness.pause();
        readiness.set_serving(false);
        readiness.resume();
        assert!(!admin.is_ready());
    }

    #[test]
    fn only_running_out_of_descriptors_or_memory_pauses_accepting() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(is_exhaustion(&io::Error::from_raw_os_error(errno)), "{errno}");
        }
        for errno in [libc::ECONNABORTED, libc::EPERM, libc::EINTR] {
            assert!(!is_exhaustion(&io::Error::from_raw_os_error(errno)), "{errno}");
        }
    }
}
