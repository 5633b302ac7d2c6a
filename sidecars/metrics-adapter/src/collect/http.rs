//! HTTP GET against the pod's own loopback, bounded in time and size. Targets come from the
//! settings only; nothing at scrape time can point the adapter elsewhere.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::CollectError;

/// An `http://` URL on loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalUrl {
    pub address: SocketAddr,
    pub path: String,
}

/// Why a URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{0:?} is not an http:// URL")]
    NotHttp(String),
    #[error("{0:?} does not name a port")]
    NoPort(String),
    #[error("{0:?} is not on the pod's loopback (127.0.0.0/8, ::1 or localhost)")]
    NotLocal(String),
}

impl LocalUrl {
    /// Reads `http://HOST:PORT/PATH`, where HOST is `localhost`, an address in 127.0.0.0/8 or
    /// `[::1]`.
    pub fn parse(url: &str) -> Result<LocalUrl, UrlError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| UrlError::NotHttp(url.to_owned()))?;
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        let address = parse_local_address(authority).map_err(|e| match e {
            UrlError::NoPort(_) => UrlError::NoPort(url.to_owned()),
            _ => UrlError::NotLocal(url.to_owned()),
        })?;
        Ok(LocalUrl {
            address,
            path: path.to_owned(),
        })
    }
}

/// Reads `HOST:PORT` on loopback (`localhost:6379`, `127.0.0.1:6379`, `[::1]:6379`).
pub fn parse_local_address(authority: &str) -> Result<SocketAddr, UrlError> {
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| UrlError::NoPort(authority.to_owned()))?;
    let port: u16 = port.parse().map_err(|_| UrlError::NoPort(authority.to_owned()))?;
    let ip = if host == "localhost" {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .map_err(|_| UrlError::NotLocal(authority.to_owned()))?
    };
    if !ip.is_loopback() {
        return Err(UrlError::NotLocal(authority.to_owned()));
    }
    Ok(SocketAddr::new(ip, port))
}

/// Limits of one fetch.
#[derive(Debug, Clone, Copy)]
pub struct FetchLimits {
    /// Connect, send and read the whole body within this.
    pub timeout: Duration,
    pub max_body_bytes: usize,
}

/// GETs `url`; a status other than 2xx, a body over the limit or a slow peer is an error.
pub async fn get(url: &LocalUrl, accept: &str, limits: FetchLimits) -> Result<Bytes, CollectError> {
    let (status, body) = fetch(url, accept, limits).await?;
    if !status.is_success() {
        return Err(CollectError::Status(status));
    }
    Ok(body)
}

/// GETs `url` and returns the status and body whatever the status; a body over the limit or a
/// slow peer is an error.
pub async fn fetch(
    url: &LocalUrl,
    accept: &str,
    limits: FetchLimits,
) -> Result<(StatusCode, Bytes), CollectError> {
    tokio::time::timeout(
        limits.timeout,
        fetch_unbounded(url, accept, limits.max_body_bytes),
    )
    .await
    .map_err(|_| CollectError::Timeout)?
}

async fn fetch_unbounded(
    url: &LocalUrl,
    accept: &str,
    max_body_bytes: usize,
) -> Result<(StatusCode, Bytes), CollectError> {
    let stream = TcpStream::connect(url.address)
        .await
        .map_err(CollectError::Connect)?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| CollectError::Protocol(e.to_string()))?;
    let connection = tokio::spawn(connection);
    let request = Request::get(url.path.as_str())
        .header(header::HOST, url.address.to_string())
        .header(header::ACCEPT, accept)
        .header(header::USER_AGENT, "outrigger-adapter")
        .body(Empty::new())
        .map_err(|e| CollectError::Protocol(e.to_string()))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| CollectError::Protocol(e.to_string()))?;
        let status = response.status();
        let declared = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > max_body_bytes) {
            return Err(CollectError::TooLarge);
        }
        let mut body = response.into_body();
        let mut collected = BytesMut::with_capacity(declared.unwrap_or(8192).min(max_body_bytes));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| CollectError::Protocol(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                if collected.len() + data.len() > max_body_bytes {
                    return Err(CollectError::TooLarge);
                }
                collected.extend_from_slice(&data);
            }
        }
        Ok((status, collected.freeze()))
    }
    .await;
    // Dropping the connection task closes the socket at once, also when the body was refused.
    connection.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_urls_are_accepted() {
        assert_eq!(
            LocalUrl::parse("http://localhost:8080/stats").unwrap(),
            LocalUrl {
                address: "127.0.0.1:8080".parse().unwrap(),
                path: "/stats".into()
            }
        );
        assert_eq!(LocalUrl::parse("http://[::1]:9").unwrap().path, "/");
        assert!(LocalUrl::parse("http://127.0.0.2:80/x").is_ok());
        for refused in [
            "http://10.0.0.1:80/",
            "http://example.com:80/",
            "https://127.0.0.1:443/",
            "http://127.0.0.1/",
        ] {
            assert!(LocalUrl::parse(refused).is_err(), "{refused}");
        }
        assert!(parse_local_address("localhost:6379").is_ok());
        assert!(parse_local_address("192.168.1.1:6379").is_err());
    }
}
