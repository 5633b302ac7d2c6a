//! `/cache/...`: responses with caching headers chosen by the query, for the front tier's cache
//! tests, and `/-/cache-count`: how many `/cache/` requests this process answered (so a test sees
//! how many reached the backend).
//!
//! Query: `cc=` sets `Cache-Control`, `vary=<header>` sets `Vary` and appends `:<that header's
//! value>` to the body, `etag=` sets a quoted `ETag` (a matching `If-None-Match` gets 304),
//! `size=<n>` pads the body to n bytes (at most 1 MiB), `delay=<ms>` waits first (at most 10 s).

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;

static SERVED: AtomicU64 = AtomicU64::new(0);

/// The number of `/cache/` requests answered so far.
pub fn count() -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from(format!(
        "{}\n",
        SERVED.load(Ordering::Relaxed)
    ))))
}

fn param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
        .map(|value| String::from_utf8_lossy(&crate::percent_decode(value)).into_owned())
}

/// Answers one `/cache/` request.
pub async fn respond(query: &str, request: &HeaderMap) -> Response<Full<Bytes>> {
    SERVED.fetch_add(1, Ordering::Relaxed);
    if let Some(delay) = param(query, "delay").and_then(|delay| delay.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(delay.min(10_000))).await;
    }
    let etag = param(query, "etag").map(|tag| format!("\"{tag}\""));
    let matched = etag.as_ref().is_some_and(|etag| {
        request
            .get("if-none-match")
            .is_some_and(|condition| condition.as_bytes() == etag.as_bytes())
    });
    let vary = param(query, "vary");
    let mut body = std::env::var("VERSION").unwrap_or_else(|_| "v1".to_owned());
    if let Some(vary) = &vary {
        let value = request
            .get(vary.as_str())
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        body = format!("{body}:{value}");
    }
    if let Some(size) = param(query, "size").and_then(|size| size.parse::<usize>().ok()) {
        let size = size.min(1 << 20);
        body = format!("{body:x<size$}");
    }
    let mut response = Response::new(Full::new(if matched { Bytes::new() } else { Bytes::from(body) }));
    if matched {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
    }
    let headers = response.headers_mut();
    for (name, value) in [
        ("cache-control", param(query, "cc")),
        ("vary", vary),
        ("etag", etag),
    ] {
        if let Some(value) = value.and_then(|value| HeaderValue::from_str(&value).ok()) {
            headers.insert(name, value);
        }
    }
    response
}
