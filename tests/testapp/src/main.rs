//! Test app: `GET /healthz` → 200; any other request → 200 with `version=<VERSION>` in the body,
//! or 500 for `ERROR_PERCENT` percent of requests (deterministically, every n-th request).
//! Environment: `PORT` (else `OUTRIGGER_ADMIN_PORT`, so it can stand in for a sidecar; default 8080),
//! `VERSION` (default `v1`), `ERROR_PERCENT` (default 0), `DRAIN_SECONDS` (default 2: how long it
//! keeps serving after SIGTERM, while the endpoints that route to it are being removed).
//!
//! `GET /redis/<word>/<word>/...` sends one Redis command (each path segment percent-decoded, one
//! argument) to `REDIS_ADDR` (default `127.0.0.1:6379`, where a sharding ambassador listens) and
//! answers 200 with the raw RESP reply, or 502 when Redis cannot be reached: images have no shell,
//! so this is how a test speaks Redis from inside a client pod.
//!
//! `outrigger-testapp get http://127.0.0.1:PORT/PATH` is a tiny HTTP client (exit 0 on a 2xx), so
//! a test can check from inside a pod what the pod's containers reach on localhost.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};

struct App {
    version: String,
    error_percent: u64,
    served: AtomicU64,
}

impl App {
    fn respond(&self, path: &str) -> Response<Full<Bytes>> {
        if path == "/healthz" {
            return Response::new(Full::new(Bytes::from_static(b"ok\n")));
        }
        let count = self.served.fetch_add(1, Ordering::Relaxed);
        // Fails requests n where floor((n+1)*p/100) > floor(n*p/100): exactly p% over any 100.
        let fails = (count + 1) * self.error_percent / 100 > count * self.error_percent / 100;
        let status = if fails {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        };
        let mut response = Response::new(Full::new(Bytes::from(format!("version={}\n", self.version))));
        *response.status_mut() = status;
        response
    }
}

/// Percent-decodes one path segment.
fn percent_decode(segment: &str) -> Vec<u8> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = || {
            std::str::from_utf8(bytes.get(i + 1..i + 3)?)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        };
        match (bytes[i], hex()) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// The length of the first whole RESP reply in `buf`, if it is all there.
fn reply_len(buf: &[u8]) -> Option<usize> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let header = std::str::from_utf8(buf.get(1..line_end)?).ok()?;
    let after = line_end + 2;
    match buf.first()? {
        b'$' => {
            let len: i64 = header.parse().ok()?;
            if len < 0 {
                return Some(after);
            }
            let end = after + usize::try_from(len).ok()? + 2;
            (buf.len() >= end).then_some(end)
        }
        b'*' => {
            let count: i64 = header.parse().ok()?;
            let mut at = after;
            for _ in 0..count.max(0) {
                at += reply_len(buf.get(at..)?)?;
            }
            Some(at)
        }
        _ => Some(after),
    }
}

/// Sends one command to Redis at `address` and returns its raw reply.
async fn redis(address: &str, words: &[Vec<u8>]) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        let mut request = format!("*{}\r\n", words.len()).into_bytes();
        for word in words {
            request.extend_from_slice(format!("${}\r\n", word.len()).as_bytes());
            request.extend_from_slice(word);
            request.extend_from_slice(b"\r\n");
        }
        stream.write_all(&request).await?;
        let mut reply = Vec::new();
        loop {
            if let Some(len) = reply_len(&reply) {
                reply.truncate(len);
                return Ok(reply);
            }
            let mut chunk = [0u8; 4096];
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
            reply.extend_from_slice(&chunk[..read]);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), exchange)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

async fn redis_response(path: &str) -> Response<Full<Bytes>> {
    let address = std::env::var("REDIS_ADDR").unwrap_or_else(|_| "127.0.0.1:6379".to_owned());
    let words: Vec<Vec<u8>> = path
        .split('/')
        .filter(|w| !w.is_empty())
        .map(percent_decode)
        .collect();
    let (status, body) = match redis(&address, &words).await {
        Ok(reply) => (StatusCode::OK, Bytes::from(reply)),
        Err(error) => (StatusCode::BAD_GATEWAY, Bytes::from(format!("{error}\n"))),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
}

/// GET `url` (`http://host:port/path`) and print the response; true on a 2xx.
fn get(url: &str) -> std::io::Result<bool> {
    use std::io::{Error, Read, Write};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| Error::other("only http:// URLs"))?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(authority)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    print!("{response}");
    Ok(response
        .split_whitespace()
        .nth(1)
        .is_some_and(|status| status.starts_with('2')))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("get") {
        let ok = get(args.get(2).map(String::as_str).unwrap_or_default())?;
        std::process::exit(if ok { 0 } else { 1 });
    }
    let port: u16 = ["PORT", "OUTRIGGER_ADMIN_PORT"]
        .iter()
        .find_map(|name| std::env::var(name).ok().and_then(|p| p.parse().ok()))
        .unwrap_or(8080);
    let app = Arc::new(App {
        version: std::env::var("VERSION").unwrap_or_else(|_| "v1".to_owned()),
        error_percent: std::env::var("ERROR_PERCENT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
            .min(100),
        served: AtomicU64::new(0),
    });
    let drain = std::time::Duration::from_secs(
        std::env::var("DRAIN_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2),
    );
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = terminate.recv() => tokio::time::sleep(drain).await,
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut stop => return Ok(()),
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let app = app.clone();
                async move {
                    let path = request.uri().path();
                    let response = match path.strip_prefix("/redis/") {
                        Some(command) => redis_response(command).await,
                        None => app.respond(path),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_is_complete_only_when_every_part_arrived() {
        assert_eq!(reply_len(b"+OK\r\n"), Some(5));
        assert_eq!(reply_len(b"$5\r\nhel"), None);
        assert_eq!(reply_len(b"$5\r\nhello\r\n+extra"), Some(11));
        assert_eq!(reply_len(b"$-1\r\n"), Some(5));
        assert_eq!(reply_len(b"*2\r\n$1\r\na\r\n"), None);
        assert_eq!(reply_len(b"*2\r\n$1\r\na\r\n:7\r\n"), Some(15));
    }

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(percent_decode("user%3A%7B42%7D"), b"user:{42}");
        assert_eq!(percent_decode("100%"), b"100%");
    }
}
