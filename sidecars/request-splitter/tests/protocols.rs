#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Protocols over real sockets: HTTP/2 with prior knowledge, TLS with ALPN (h2 and http/1.1), h2c
//! to the backend, Upgrade pass-through, and bodies that stream both ways without buffering.

mod support;

use std::{path::PathBuf, sync::Arc};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{pki_types::pem::PemObject, pki_types::CertificateDer, ClientConfig, RootCertStore};
use serde_json::json;
use support::{backend, client, get, splitter, Behaviour, STEP};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

async fn h2_get<T>(io: T, authority: &str) -> (StatusCode, String)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = Request::get(format!("https://{authority}/h2"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(STEP, sender.send_request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn http2_clients_with_prior_knowledge_are_served() {
    let stable = backend("stable", Behaviour::Named).await;
    let splitter =
        splitter(json!({"backends": [{"name": "stable", "endpoints": [stable.endpoint()]}]})).await;
    let stream = TcpStream::connect(splitter.addr).await.unwrap();
    let (status, body) = h2_get(stream, &splitter.addr.to_string()).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "stable"));
    // The backend got the HTTP/2 authority as its Host.
    let seen = stable.seen();
    assert_eq!(seen[0].headers["host"], splitter.addr.to_string());
}

#[tokio::test]
async fn tls_clients_negotiate_h2_or_http1_with_alpn() {
    let stable = backend("stable", Behaviour::Named).await;
    let splitter = splitter(json!({
        "backends": [{"name": "stable", "endpoints": [stable.endpoint()]}],
        "tls": {"certFile": fixture("localhost.crt"), "keyFile": fixture("localhost.key")}
    }))
    .await;
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(fixture("ca.crt")).unwrap())
        .unwrap();
    for (alpn, expect_h2) in [(&b"h2"[..], true), (&b"http/1.1"[..], false)] {
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(splitter.addr).await.unwrap();
        let tls = connector
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        if expect_h2 {
            let (status, body) = h2_get(tls, "localhost").await;
            assert_eq!((status.as_u16(), body.as_str()), (200, "stable"));
        } else {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .unwrap();
            tokio::spawn(connection);
            let request = Request::get("/h1")
                .header("host", "localhost")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            assert_eq!(response.status(), 200);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "stable");
        }
    }
    let seen = stable.seen();
    assert!(seen.iter().all(|s| s.headers["x-forwarded-proto"] == "https"));
}

#[tokio::test]
async fn h2c_backends_are_reached_over_http2() {
    let stable = backend("stable", Behaviour::Named).await;
    let splitter = splitter(json!({
        "backends": [{"name": "stable", "endpoints": [stable.endpoint()], "protocol": "h2c"}]
    }))
    .await;
    let client = client();
    for _ in 0..5 {
        let reply = get(&client, &splitter.url("/"), &[]).await;
        assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "stable"));
    }
}

#[tokio::test]
async fn upgrade_requests_pass_through_and_bytes_flow_both_ways() {
    let upgrade = backend("ws", Behaviour::Upgrade).await;
    let splitter = splitter(json!({"backends": [{"name": "ws", "endpoints": [upgrade.endpoint()]}]})).await;
    let mut stream = TcpStream::connect(splitter.addr).await.unwrap();
    stream
        .write_all(b"GET /socket HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    tokio::time::timeout(STEP, async {
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
    })
    .await
    .unwrap();
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    for message in [&b"ping"[..], b"second message", &[0u8, 159, 146, 150]] {
        stream.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(STEP, stream.read_exact(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echoed, message);
    }
}

#[tokio::test]
async fn request_and_response_bodies_stream_without_buffering() {
    let echo = backend("echo", Behaviour::Echo).await;
    let splitter = splitter(json!({"backends": [{"name": "echo", "endpoints": [echo.endpoint()]}]})).await;
    let (frames, receiver) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    let body = StreamBody::new(tokio_stream_from(receiver));
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(TcpStream::connect(splitter.addr).await.unwrap()))
            .await
            .unwrap();
    tokio::spawn(connection);
    // PUT is idempotent; without a content-length the body cannot be buffered for retries and must
    // stream.
    let request = Request::put("/upload").header("host", "x").body(body).unwrap();
    let response_future = tokio::spawn(sender.send_request(request));
    frames
        .send(Ok(Frame::data(Bytes::from("first chunk"))))
        .await
        .unwrap();
    let response = tokio::time::timeout(STEP, response_future)
        .await
        .expect("the response headers came before the request body ended")
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    // The first chunk comes back while the request body is still open: nothing waited for the end.
    let first = tokio::time::timeout(STEP, body.frame())
        .await
        .expect("the first chunk came back before the request body ended")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first chunk");
    frames
        .send(Ok(Frame::data(Bytes::from("second chunk"))))
        .await
        .unwrap();
    let second = tokio::time::timeout(STEP, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.into_data().unwrap(), "second chunk");
    drop(frames);
    let rest = tokio::time::timeout(STEP, body.collect()).await.unwrap().unwrap();
    assert!(rest.to_bytes().is_empty());
}

/// A `Stream` over an mpsc receiver (what `tokio-stream`'s `ReceiverStream` does).
fn tokio_stream_from<T>(receiver: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
}
