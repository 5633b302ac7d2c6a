//! Plain HTTP/1.1 client connections served on one task, without hyper's server: the request head
//! is parsed with httparse, the request goes through [`proxy::handle`] like any other, and the
//! response is written straight to the socket. With the direct backend exchanges of
//! [`crate::transport::upstream`], a plain request costs one task poll per socket event and no channel hop.
//!
//! Plain means: no request body (no `content-length` above 0, no `transfer-encoding`), no upgrade,
//! no `CONNECT`, no `expect`. Anything else, including a head that does not parse or is too large,
//! hands the connection over to hyper at that request, with the bytes already read, so hyper
//! answers it (400, 431, streamed bodies, WebSocket) exactly as it always did.

use std::{
    cell::RefCell,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use bytes::{Buf, Bytes, BytesMut};
use http::{header, Request, StatusCode, Version};
use http_body::Body;
use http_body_util::{BodyExt, Empty};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
    sync::watch,
    time::Instant,
};

use crate::{
    config::LimitsConfig,
    transport::h1::{parse_request, Parsed, Plain},
    transport::proxy::{self, BoxedResponse, ConnectionInfo, Shared},
    transport::sends,
};

/// First size of a connection's read buffer; it grows for larger heads.
const READ_BUFFER: usize = 4 * 1024;
/// Response body frames up to this size are copied next to the head (one write for both).
const COALESCE: usize = 16 * 1024;
/// Most response bytes a connection holds before writing them: past this the body is not read
/// further until the client has taken them, so a slow reader holds back the backend instead of
/// filling the splitter's memory.
pub const MAX_UNSENT: usize = 64 * 1024;
/// A write buffer grown past this by a large response is not kept for the next one.
const MAX_KEPT_OUT: usize = 2 * MAX_UNSENT;

/// How a connection ended on the fast path.
pub enum Outcome {
    /// Closed: by the client, after a response that ended it, on an I/O error, or for the drain.
    Closed,
    /// No complete request head within the header read timeout.
    HeaderTimeout,
    /// A request the fast path does not serve: hyper takes the connection from here.
    HandOff(Prefixed),
}

/// Serves plain requests until the connection ends or a request needs hyper.
pub async fn serve(
    mut stream: TcpStream,
    shared: &Arc<Shared>,
    info: &ConnectionInfo,
    limits: &LimitsConfig,
    shutdown: watch::Receiver<bool>,
) -> Outcome {
    let header_timeout = limits.header_read_timeout.0;
    let max_head = limits.max_header_bytes as usize;
    let max_count = limits.max_header_count as usize;
    let mut buffer = BytesMut::with_capacity(READ_BUFFER);
    let mut out = BytesMut::with_capacity(512);
    let mut spans = Vec::new();
    // One timer for the connection; it is re-armed only when it fires before the current deadline,
    // so a busy connection does not touch the timer wheel per request.
    let timer = tokio::time::sleep(header_timeout);
    let mut timer = std::pin::pin!(timer);
    // One wait for the drain for the connection too: made anew for every request, it registered
    // with the channel and left it again each time.
    let mut drain_watch = shutdown.clone();
    // A sender gone ends the connection as a drain does.
    let drained = async move {
        let _ = drain_watch.wait_for(|stop| *stop).await;
    };
    let mut drained = std::pin::pin!(drained);
    // The last write of the previous response, lent to the worker's batch of sends (see
    // [`sends`]): collected before the next write, or as soon as the batch could not send it all.
    let mut pending: Option<sends::Lent> = None;
    let ended = 'connection: loop {
        let mut deadline = Instant::now() + header_timeout;
        let request = loop {
            match parse_request(&mut buffer, (max_head, max_count), &mut spans) {
                Parsed::Complete(request) => break request,
                Parsed::Partial => {}
                Parsed::HandOff => break 'connection Ended::HandOff,
            }
            if buffer.capacity() - buffer.len() < 1024 {
                buffer.reserve(READ_BUFFER);
            }
            let waiting = buffer.is_empty();
            tokio::select! {
                biased;
                read = stream.read_buf(&mut buffer) => match read {
                    Ok(0) | Err(_) => break 'connection Ended::Closed,
                    Ok(_) => {}
                },
                () = std::future::poll_fn(|cx| match pending.as_mut() {
                    Some(lent) => lent.poll_incomplete(cx),
                    None => Poll::Pending,
                }), if pending.is_some() => {
                    // A full socket buffer: the rest is written now, and the wait for the next
                    // request starts after it.
                    if collect(&mut stream, &mut out, &mut pending).await.is_err() {
                        break 'connection Ended::Closed;
                    }
                    deadline = Instant::now() + header_timeout;
                }
                () = &mut timer => {
                    if Instant::now() < deadline {
                        timer.as_mut().reset(deadline);
                    } else {
                        break 'connection Ended::HeaderTimeout;
                    }
                }
                // Between requests the drain closes the connection at once; a request being read
                // is finished first.
                () = &mut drained, if waiting => break 'connection Ended::Closed,
            }
        };
        let Plain {
            request,
            close,
            head,
            trailers,
        } = request;
        let version = request.version();
        let Some(response) = handle_watching_client(&stream, &mut buffer, shared, request, info).await else {
            break Ended::Closed;
        };
        let close = close || *shutdown.borrow();
        let exchange = Exchange {
            version,
            head_request: head,
            trailers_accepted: trailers,
            close,
        };
        match write_response(&mut stream, &mut out, &mut pending, response, exchange).await {
            Ok(true) if !close => {}
            _ => break Ended::Closed,
        }
    };
    // The last response goes out whole before the connection closes or moves to hyper.
    if collect(&mut stream, &mut out, &mut pending).await.is_err() {
        return Outcome::Closed;
    }
    match ended {
        Ended::Closed => Outcome::Closed,
        Ended::HeaderTimeout => Outcome::HeaderTimeout,
        Ended::HandOff => hand_off(stream, buffer),
    }
}

/// Why the fast path stopped serving a connection.
enum Ended {
    Closed,
    HeaderTimeout,
    HandOff,
}

/// Handles the request while watching the client: when it closes the connection, the exchange is
/// dropped (and with it the backend request), as hyper does. Bytes of a pipelined request that
/// arrive meanwhile are kept in `buffer`. `None` when the client went away.
async fn handle_watching_client(
    stream: &TcpStream,
    buffer: &mut BytesMut,
    shared: &Arc<Shared>,
    request: Request<Empty<Bytes>>,
    info: &ConnectionInfo,
) -> Option<BoxedResponse> {
    let handling = proxy::handle(shared.clone(), request, info);
    let mut handling = std::pin::pin!(handling);
    let mut watching = true;
    loop {
        tokio::select! {
            biased;
            response = &mut handling => return Some(response),
            ready = stream.readable(), if watching => {
                if ready.is_err() {
                    return None;
                }
                if buffer.capacity() - buffer.len() < 1024 {
                    buffer.reserve(READ_BUFFER);
                }
                match stream.try_read_buf(buffer) {
                    Ok(0) => return None,
                    // The next request, pipelined: read later, after this response.
                    Ok(_) => watching = false,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return None,
                }
            }
        }
    }
}

fn hand_off(stream: TcpStream, buffer: BytesMut) -> Outcome {
    Outcome::HandOff(Prefixed {
        prefix: buffer.freeze(),
        stream,
    })
}

/// How the response body goes on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Delimited by closing the connection (an HTTP/1.0 client without a length).
    Close,
}

/// What the response's encoding depends on.
struct Exchange {
    version: Version,
    /// `HEAD`: the response has no body.
    head_request: bool,
    trailers_accepted: bool,
    /// Close after this response.
    close: bool,
}

/// Writes the response, its last write lent to the batch in `pending`; `Ok(false)` when the
/// connection must close after it. The previous response's lent write is collected first.
async fn write_response(
    stream: &mut TcpStream,
    out: &mut BytesMut,
    pending: &mut Option<sends::Lent>,
    response: BoxedResponse,
    exchange: Exchange,
) -> io::Result<bool> {
    let Exchange {
        version,
        head_request,
        trailers_accepted,
        close,
    } = exchange;
    collect(stream, out, pending).await?;
    if out.capacity() > MAX_KEPT_OUT {
        *out = BytesMut::with_capacity(512);
    }
    let (parts, mut body) = (*response).into_parts();
    let unmapped = body.take_unmapped();
    let status = parts.status;
    out.clear();
    out.extend_from_slice(if version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut has_date = false;
    let mut length = None;
    // The backend's lines as it sent them (without its hop-by-hop ones) and the request id added
    // to them, then what the map holds: the splitter's other headers, or all of them when the
    // response came another way.
    if let Some(unmapped) = &unmapped {
        let raw = &unmapped.lines;
        // Read while the head was parsed; a response whose length lines are invalid does not
        // get this far.
        length = raw.content_length();
        has_date = raw.has_date();
        for run in raw.runs() {
            out.extend_from_slice(run);
            out.extend_from_slice(b"\r\n");
        }
        if let Some(id) = &unmapped.request_id {
            out.extend_from_slice(b"x-request-id: ");
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    for (name, value) in &parts.headers {
        if *name == header::CONNECTION || *name == header::TRANSFER_ENCODING {
            continue;
        }
        if *name == header::CONTENT_LENGTH {
            length = std::str::from_utf8(value.as_bytes())
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok());
        }
        has_date |= *name == header::DATE;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let bodyless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodyless {
        Framing::None
    } else if let Some(length) = length {
        Framing::Length(length)
    } else if let Some(exact) = body.size_hint().exact() {
        put_length(out, exact);
        Framing::Length(exact)
    } else if version == Version::HTTP_11 {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    } else {
        Framing::Close
    };
    let close = close || framing == Framing::Close;
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        put_date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if framing == Framing::None {
        // Dropping the body gives a complete upstream response's connection back.
        drop(body);
        lend_last(stream, out, pending).await?;
        return Ok(!close);
    }
    let mut remaining = match framing {
        Framing::Length(length) => Some(length),
        _ => None,
    };
    let mut trailers = None;
    loop {
        // The head goes out with the first body bytes when they are already there, and on its own
        // when the backend has not sent them yet.
        let polled = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
        let frame = match polled {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if !out.is_empty() {
                    stream.write_all(out).await?;
                    out.clear();
                }
                body.frame().await
            }
        };
        match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if data.is_empty() {
                        continue;
                    }
                    if let Some(left) = remaining.as_mut() {
                        *left = left
                            .checked_sub(data.len() as u64)
                            .ok_or_else(|| io::Error::other("the body is longer than its content-length"))?;
                    }
                    if framing == Framing::Chunked {
                        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                    }
                    if data.len() <= COALESCE {
                        out.extend_from_slice(&data);
                    } else {
                        stream.write_all(out).await?;
                        out.clear();
                        stream.write_all(&data).await?;
                    }
                    if framing == Framing::Chunked {
                        out.extend_from_slice(b"\r\n");
                    }
                    // The socket's pace, not the backend's: while the client reads slowly, the
                    // write waits and the body is not polled.
                    if out.len() >= MAX_UNSENT {
                        stream.write_all(out).await?;
                        out.clear();
                    }
                }
                Err(frame) => {
                    if let Ok(map) = frame.into_trailers() {
                        trailers = Some(map);
                    }
                }
            },
            Some(Err(error)) => return Err(io::Error::other(error)),
            None => break,
        }
    }
    if remaining.is_some_and(|left| left > 0) {
        return Err(io::Error::other("the body is shorter than its content-length"));
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"0\r\n");
        if let Some(trailers) = trailers.filter(|_| trailers_accepted) {
            for (name, value) in &trailers {
                out.extend_from_slice(name.as_str().as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(b"\r\n");
    }
    lend_last(stream, out, pending).await?;
    Ok(!close)
}

/// Lends a response's last write to the batch, to be collected later; written at once where the
/// worker does not batch.
async fn lend_last(
    stream: &mut TcpStream,
    out: &mut BytesMut,
    pending: &mut Option<sends::Lent>,
) -> io::Result<()> {
    *pending = sends::lend(stream, out).await;
    if pending.is_none() {
        stream.write_all(out).await?;
    }
    Ok(())
}

/// Collects the lent write in `pending`, if any: waits for the batch, writes what it left, and puts
/// the buffer back in `out`.
async fn collect(
    stream: &mut TcpStream,
    out: &mut BytesMut,
    pending: &mut Option<sends::Lent>,
) -> io::Result<()> {
    match pending.take() {
        Some(lent) => lent.finish(stream, out).await,
        None => Ok(()),
    }
}

fn put_length(out: &mut BytesMut, length: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(length.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    /// The `date` header value, rendered once per second per thread.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

fn put_date(out: &mut BytesMut) {
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    DATE.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second || cached.1.is_empty() {
            *cached = (second, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(cached.1.as_bytes());
    });
}

/// A connection handed to hyper: the bytes already read come first.
pub struct Prefixed {
    prefix: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let take = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix[..take]);
        this.prefix.advance(take);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Parsed, BytesMut) {
        let mut buffer = BytesMut::from(text);
        (parse_request(&mut buffer, (8192, 200), &mut Vec::new()), buffer)
    }

    #[test]
    fn a_plain_get_is_parsed_and_removed_from_the_buffer() {
        let (parsed, rest) = parse("GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Id: 7\r\n\r\nGET /next");
        let Parsed::Complete(plain) = parsed else {
            panic!("not plain");
        };
        assert_eq!(plain.request.uri(), "/a?b=1");
        assert_eq!(plain.request.headers()["x-id"], "7");
        assert!(!plain.close && !plain.head && !plain.trailers);
        assert_eq!(&rest[..], b"GET /next", "a pipelined request stays");
    }

    #[test]
    fn http_1_0_closes_unless_it_asks_for_keep_alive_and_1_1_closes_when_asked() {
        let closes = |text: &str| match parse(text).0 {
            Parsed::Complete(plain) => plain.close,
            _ => panic!("not plain: {text}"),
        };
        assert!(closes("GET / HTTP/1.0\r\n\r\n"));
        assert!(!closes("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(closes("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!closes("GET / HTTP/1.1\r\ncontent-length: 0\r\n\r\n"));
    }

    #[test]
    fn requests_with_bodies_upgrades_and_bad_heads_go_to_hyper_with_every_byte() {
        for text in [
            "POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            "GET /ws HTTP/1.1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
            "PUT / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 0\r\n\r\n",
            "CONNECT example:443 HTTP/1.1\r\n\r\n",
            "THIS IS NOT HTTP\r\n\r\n",
        ] {
            let (parsed, rest) = parse(text);
            assert!(matches!(parsed, Parsed::HandOff), "{text}");
            assert_eq!(&rest[..], text.as_bytes());
        }
        let mut large = BytesMut::from("GET / HTTP/1.1\r\nx-big: ");
        large.extend_from_slice(&[b'a'; 200]);
        assert!(matches!(
            parse_request(&mut large, (100, 200), &mut Vec::new()),
            Parsed::HandOff
        ));
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nHost: x\r\n").0,
            Parsed::Partial
        ));
    }

    #[test]
    fn the_date_is_an_http_date() {
        let mut out = BytesMut::new();
        put_date(&mut out);
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.ends_with(" GMT") && text.len() == 29, "{text}");
    }
}
