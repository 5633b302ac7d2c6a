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
        Arc,
    },
    time::Duration,
};

use hyper::{
    body::Incoming,
    server::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{watch, Notify, OwnedSemaphorePermit, Semaphore},
};
use tokio_rustls::TlsAcceptor;

use crate::{
    config::LimitsConfig,
    fast,
    metrics::ReasonLabels,
    proxy::{self, ConnectionInfo, Shared},
    sends,
};

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nx-outrigger-reason: too-many-connections\r\ncontent-type: text/plain\r\ncontent-length: 21\r\nconnection: close\r\n\r\ntoo-many-connections\n";

/// Open client connections, for the drain.
pub struct Connections {
    open: AtomicUsize,
    closed: Notify,
    gauge: Gauge,
}

impl Connections {
    pub fn new(gauge: Gauge) -> Arc<Connections> {
        Arc::new(Connections {
            open: AtomicUsize::new(0),
            closed: Notify::new(),
            gauge,
        })
    }

    fn enter(self: &Arc<Self>) -> ConnectionGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.gauge.inc();
        ConnectionGuard(self.clone())
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Completes when no connection is open.
    pub async fn all_closed(&self) {
        loop {
            let closed = self.closed.notified();
            if self.open() == 0 {
                return;
            }
            closed.await;
        }
    }
}

struct ConnectionGuard(Arc<Connections>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.gauge.dec();
        if self.0.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.closed.notify_waiters();
        }
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
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Usually out of file descriptors: wait a little instead of spinning.
                tracing::warn!(%error, "Failed to accept a connection.");
                tokio::time::sleep(Duration::from_millis(10)).await;
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
        let guard = connections.enter();
        tokio::spawn(connection(
            stream,
            remote,
            shared.clone(),
            tls.clone(),
            shutdown.clone(),
            (permit, guard),
        ));
    }
}

async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
    shutdown: watch::Receiver<bool>,
    _held: (OwnedSemaphorePermit, ConnectionGuard),
) {
    let _ = stream.set_nodelay(true);
    let limits = shared
        .store
        .current()
        .map(|active| active.config.limits.clone())
        .unwrap_or_default();
    let info = ConnectionInfo::new(remote, tls.is_some());
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
        .max_header_size(limits.max_header_bytes as usize);
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
