#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Plain HTTP/1.1 exchanges with backends that answer with exact bytes: chunked bodies with
//! extensions and trailers, bodies delimited by the end of the connection, interim 100 responses,
//! keep-alive reuse, and backends that close idle connections behind the splitter's back.

mod support;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::json;
use support::{client, get, send, splitter, STEP};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// What a scripted backend does after answering.
#[derive(Clone, Copy)]
enum After {
    KeepOpen,
    Close,
}

/// A backend that answers every request with `response` (exact bytes), counting connections.
async fn scripted(response: &'static [u8], after: After) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(answer(stream, response, after));
        }
    });
    (addr, connections)
}

async fn answer(mut stream: TcpStream, response: &'static [u8], after: After) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        // Requests here have no body: one request per blank line.
        while let Some(end) = received.windows(4).position(|window| window == b"\r\n\r\n") {
            received.drain(..end + 4);
            if stream.write_all(response).await.is_err() {
                return;
            }
            if let After::Close = after {
                return;
            }
        }
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => received.extend_from_slice(&buffer[..read]),
        }
    }
}

async fn splitter_for(backend: SocketAddr) -> support::Splitter {
    splitter(json!({"backends": [{"name": "stable", "endpoints": [backend.to_string()]}]})).await
}

#[tokio::test]
async fn a_chunked_body_with_extensions_and_trailers_arrives_whole_and_the_connection_is_reused() {
    let (backend, connections) = scripted(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-backend: stable\r\n\r\n\
          5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: yes\r\n\r\n",
        After::KeepOpen,
    )
    .await;
    let splitter = splitter_for(backend).await;
    let client = client();
    for _ in 0..5 {
        let reply = get(&client, &splitter.url("/"), &[]).await;
        assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "hello world"));
        assert_eq!(reply.headers["x-backend"], "stable");
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "one backend connection, reused"
    );
}

#[tokio::test]
async fn a_body_delimited_by_the_end_of_the_connection_is_relayed_and_the_next_request_reconnects() {
    let (backend, connections) = scripted(
        b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end",
        After::Close,
    )
    .await;
    let splitter = splitter_for(backend).await;
    let client = client();
    for _ in 0..3 {
        let reply = get(&client, &splitter.url("/"), &[]).await;
        assert_eq!(
            (reply.status.as_u16(), reply.body.as_str()),
            (200, "until the end")
        );
    }
    assert_eq!(connections.load(Ordering::SeqCst), 3);
}

/// The backend's header lines reach the client whichever side writes the response: the plain
/// HTTP/1.1 path (a GET without a body) and hyper (a GET with a body). The backend's own request id
/// is kept, not doubled, and its connection headers stay behind.
/// The replies to a GET on the plain HTTP/1.1 path, a GET with a body (served by hyper) and another
/// plain GET on the reused backend connection, from a backend that keeps answering `response`.
async fn replies_on_both_client_paths(response: &'static [u8]) -> Vec<support::Reply> {
    let (backend, _) = scripted(response, After::KeepOpen).await;
    let splitter = splitter_for(backend).await;
    let client = client();
    let with_body = Request::get(splitter.url("/"))
        .body(Full::new(Bytes::from_static(b"x")))
        .unwrap();
    vec![
        get(&client, &splitter.url("/"), &[]).await,
        send(&client, with_body).await,
        get(&client, &splitter.url("/"), &[]).await,
    ]
}

#[tokio::test]
async fn the_backends_headers_reach_the_client_once_without_its_connection_headers() {
    let replies = replies_on_both_client_paths(
        b"HTTP/1.1 200 OK\r\nX-Backend: stable\r\nX-Request-Id: from-backend\r\nConnection: keep-alive\r\n\
          Keep-Alive: timeout=5\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 2\r\n\r\nok",
    )
    .await;
    for reply in replies {
        assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "ok"));
        assert_eq!(reply.headers["x-backend"], "stable");
        let ids: Vec<_> = reply.headers.get_all("x-request-id").iter().collect();
        assert_eq!(ids, ["from-backend"]);
        let cookies: Vec<_> = reply.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert!(!reply.headers.contains_key("keep-alive"));
    }
}

/// RFC 9112 §6.3: `transfer-encoding` overrides `content-length`, and a proxy passes on only the
/// former; a client that believed the stated length would read the wrong body.
#[tokio::test]
async fn a_chunked_response_that_also_states_a_length_reaches_the_client_whole() {
    let replies = replies_on_both_client_paths(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    for reply in replies {
        assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "hello"));
        assert!(
            !reply.headers.contains_key("content-length"),
            "{:?}",
            reply.headers
        );
    }
}

/// More responses than the sockets hold: a client pipelines requests and reads nothing for a while,
/// so the worker's batched sends find the socket full and the rest of each response waits for the
/// client. Every response still arrives whole and in order (this test's runtime is single-threaded,
/// so the splitter batches its sends as a worker does).
#[tokio::test]
async fn pipelined_responses_larger_than_the_socket_buffers_arrive_whole_and_in_order() {
    const BODY: usize = 12_000;
    const REQUESTS: usize = 600;
    let mut response = format!("HTTP/1.1 200 OK\r\ncontent-length: {BODY}\r\n\r\n").into_bytes();
    response.extend((0..BODY).map(|index| b'a' + (index % 26) as u8));
    let response: &'static [u8] = Box::leak(response.into_boxed_slice());
    let (backend, _) = scripted(response, After::KeepOpen).await;
    let splitter = splitter_for(backend).await;
    let mut stream = TcpStream::connect(splitter.addr).await.unwrap();
    let requests: Vec<u8> = (0..REQUESTS)
        .flat_map(|index| format!("GET /{index} HTTP/1.1\r\nhost: test\r\n\r\n").into_bytes())
        .collect();
    stream.write_all(&requests).await.unwrap();
    // Let the splitter fill the socket buffers before anything is read.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let received = tokio::time::timeout(STEP, async {
        let mut received = Vec::new();
        let mut buffer = vec![0u8; 64 * 1024];
        let mut answered = 0;
        while answered < REQUESTS {
            let read = stream.read(&mut buffer).await.unwrap();
            assert!(read > 0, "closed after {answered} responses");
            received.extend_from_slice(&buffer[..read]);
            answered = count_responses(&received, BODY);
        }
        received
    })
    .await
    .expect("every response arrives");
    let mut rest = received.as_slice();
    for index in 0..REQUESTS {
        let head_end = rest.windows(4).position(|window| window == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&rest[..head_end]).to_lowercase();
        assert!(head.starts_with("http/1.1 200 ok"), "response {index}: {head}");
        assert!(
            head.contains(&format!("content-length: {BODY}")),
            "response {index}: {head}"
        );
        assert_eq!(
            &rest[head_end..head_end + BODY],
            &response[response.len() - BODY..],
            "body {index}"
        );
        rest = &rest[head_end + BODY..];
    }
    assert!(rest.is_empty(), "nothing after the last response");
}

/// Complete responses (head and `body` bytes) at the start of `received`.
fn count_responses(received: &[u8], body: usize) -> usize {
    let mut count = 0;
    let mut rest = received;
    while let Some(head_end) = rest.windows(4).position(|window| window == b"\r\n\r\n") {
        let Some(next) = rest.get(head_end + 4 + body..) else {
            break;
        };
        count += 1;
        rest = next;
    }
    count
}

#[tokio::test]
async fn an_interim_100_response_is_skipped() {
    let (backend, _) = scripted(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\nmade",
        After::KeepOpen,
    )
    .await;
    let splitter = splitter_for(backend).await;
    let reply = get(&client(), &splitter.url("/"), &[]).await;
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (201, "made"));
}

/// A backend that closes every connection after one response without saying so (no
/// `connection: close`), as one whose keep-alive timeout just expired does: requests on the pooled,
/// now closed connection must go out again on a fresh one, and the client sees no error.
#[tokio::test]
async fn connections_the_backend_closed_while_idle_are_not_used_and_clients_see_no_errors() {
    let (backend, connections) =
        scripted(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", After::Close).await;
    let splitter = splitter_for(backend).await;
    let client = client();
    for round in 0..20 {
        let reply = get(&client, &splitter.url("/"), &[]).await;
        assert_eq!(
            (reply.status.as_u16(), reply.body.as_str()),
            (200, "ok"),
            "request {round}"
        );
        if round % 2 == 0 {
            // Give the close time to arrive before the next request, sometimes.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    assert_eq!(connections.load(Ordering::SeqCst), 20);
    let metrics = splitter.metrics().await;
    let errors: f64 = metrics
        .lines()
        .filter(|line| line.starts_with("outrigger_splitter_upstream_errors_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(errors, 0.0, "{metrics}");
}

#[tokio::test]
async fn a_response_cut_short_is_an_error_for_the_client_not_a_hang() {
    let (backend, _) = scripted(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this",
        After::Close,
    )
    .await;
    let splitter = splitter_for(backend).await;
    let mut stream = TcpStream::connect(splitter.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let read = tokio::time::timeout(STEP, stream.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the client connection was left hanging");
    // The head may or may not have been sent before the splitter gave up on the connection; a
    // whole body cannot have been.
    let text = String::from_utf8_lossy(&received);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    assert!(body.len() < 100, "{text}");
}
