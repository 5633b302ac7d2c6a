//! A stopping webhook server tells its HTTP/2 clients to go away, closes HTTP/1.1 connections with
//! their next response, still answers the review in flight, and returns once its connections have
//! closed. Real TLS on loopback, as the API server calls it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::SinkExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::jiff::Timestamp;
use outrigger_core::inject::SidecarDefaults;
use outrigger_operator::webhook::{bind, certs, serve, Injector, OwnerEntry, OwnerLookup, WebhookMetrics};
use prometheus_client::registry::Registry;
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use serde_json::json;
use tokio::sync::oneshot;

/// No test here should get near this; it only turns a hang into a failure.
const HANG_GUARD: Duration = Duration::from_secs(60);

struct NoOwners;

impl OwnerLookup for NoOwners {
    fn sidecars(&self, _kind: &str, _namespace: &str, _name: &str) -> Option<OwnerEntry> {
        None
    }
}

fn review() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "drain-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": "shop",
            "userInfo": {"username": "tester"},
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "plain"},
                "spec": {"containers": [{"name": "app", "image": "app:1"}]}
            }
        }
    }))
    .unwrap()
}

struct Server {
    addr: std::net::SocketAddr,
    ca_cert: String,
    stop: oneshot::Sender<()>,
    stopped: tokio::task::JoinHandle<()>,
}

async fn start_server() -> Server {
    let bundle = certs::issue(
        &["127.0.0.1".to_owned()],
        Duration::from_secs(3600),
        None,
        Timestamp::now(),
    )
    .unwrap();
    let served = Arc::new(certs::ServedCert::default());
    served.set(&bundle).unwrap();
    let mut registry = Registry::default();
    let injector = Arc::new(Injector {
        owners: Arc::new(NoOwners),
        defaults: SidecarDefaults::default(),
        native_sidecars: false,
        metrics: WebhookMetrics::register(&mut registry),
    });
    let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped_signal) = oneshot::channel::<()>();
    let stopped = tokio::spawn(async move {
        serve(listener, served, injector, async {
            let _ = stopped_signal.await;
        })
        .await
        .unwrap();
    });
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Server {
        addr,
        ca_cert: bundle.ca_cert.clone(),
        stop,
        stopped,
    }
}

type StreamedBody = StreamBody<futures::channel::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>>;

/// A TLS connection to the server, offering one protocol by ALPN.
async fn tls_to(server: &Server, protocol: &[u8]) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(server.ca_cert.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![protocol.to_vec()];
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(protocol));
    stream
}

/// An HTTP/2 connection over TLS, negotiated by ALPN.
async fn h2_client(
    server: &Server,
) -> (
    hyper::client::conn::http2::SendRequest<StreamedBody>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let stream = tls_to(server, b"h2").await;
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    (sender, tokio::spawn(connection))
}

/// An HTTP/1.1 keep-alive connection over TLS: what the API server opens to a webhook (it offers
/// only `http/1.1`, so that its reviews spread over the replicas).
async fn http1_client(
    server: &Server,
) -> (
    hyper::client::conn::http1::SendRequest<StreamedBody>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let stream = tls_to(server, b"http/1.1").await;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    (sender, tokio::spawn(connection))
}

/// A review's whole body, ready to send.
async fn whole_review() -> StreamedBody {
    let (mut body, frames) = futures::channel::mpsc::channel(1);
    body.send(Ok(Frame::data(Bytes::from(review())))).await.unwrap();
    StreamBody::new(frames)
}

async fn answer_of(response: http::Response<hyper::body::Incoming>) -> serde_json::Value {
    serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

fn post(body: StreamedBody) -> http::Request<StreamedBody> {
    http::Request::post("https://127.0.0.1/mutate")
        .header("content-type", "application/json")
        .body(body)
        .unwrap()
}

/// The client's connection closes without an error (`what`), and the server returns.
async fn connection_and_server_end(
    connection: tokio::task::JoinHandle<Result<(), hyper::Error>>,
    stopped: tokio::task::JoinHandle<()>,
    what: &str,
) {
    connection.await.unwrap().expect(what);
    stopped.await.unwrap();
}

#[tokio::test]
async fn a_stopping_server_answers_the_review_in_flight_and_closes_its_connections() {
    tokio::time::timeout(HANG_GUARD, async {
        let server = start_server().await;
        let (mut sender, connection) = h2_client(&server).await;

        // A review whose body is still arriving when the server is told to stop.
        let (mut body, frames) = futures::channel::mpsc::channel(4);
        let in_flight = sender.send_request(post(StreamBody::new(frames)));
        let in_flight = tokio::spawn(in_flight);
        let full = review();
        let (first, rest) = full.split_at(full.len() / 2);
        body.send(Ok(Frame::data(Bytes::copy_from_slice(first))))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;

        server.stop.send(()).unwrap();
        // The listener closes: new connections go to another replica.
        let mut refused = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(server.addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(refused, "the stopping server still accepts connections");

        body.send(Ok(Frame::data(Bytes::copy_from_slice(rest))))
            .await
            .unwrap();
        drop(body);
        let response = in_flight
            .await
            .unwrap()
            .expect("the review in flight is answered");
        assert_eq!(response.status(), 200);
        let answer = answer_of(response).await;
        assert_eq!(answer["response"]["uid"], "drain-1");
        assert_eq!(answer["response"]["allowed"], true);

        // The server has said GOAWAY: the client's connection ends cleanly, and the server
        // returns without waiting for its drain deadline.
        connection_and_server_end(
            connection,
            server.stopped,
            "the connection closes without an error",
        )
        .await;
    })
    .await
    .expect("the server drained");
}

#[tokio::test]
async fn a_stopping_server_closes_idle_connections_at_once() {
    tokio::time::timeout(HANG_GUARD, async {
        let server = start_server().await;
        let (mut sender, connection) = h2_client(&server).await;
        let response = sender.send_request(post(whole_review().await)).await.unwrap();
        assert_eq!(response.status(), 200);

        server.stop.send(()).unwrap();
        connection_and_server_end(
            connection,
            server.stopped,
            "the idle connection closes without an error",
        )
        .await;
        assert!(
            sender.ready().await.is_err(),
            "the closed connection takes no more requests"
        );
    })
    .await
    .expect("the server drained");
}

/// HTTP/1.1 has no GOAWAY: an idle connection the server closes can cross a review the API server
/// is sending on it, which then fails with `EOF` (and `Ignore` admits the pod without sidecars).
/// So a stopping server leaves an idle HTTP/1.1 connection open, and its next response closes it.
#[tokio::test]
async fn a_stopping_server_closes_an_http1_connection_with_its_next_response_not_while_idle() {
    tokio::time::timeout(HANG_GUARD, async {
        let server = start_server().await;
        let (mut sender, connection) = http1_client(&server).await;
        let first = sender.send_request(post(whole_review().await)).await.unwrap();
        assert_eq!(first.status(), 200);
        assert!(
            first.headers().get("connection").is_none(),
            "kept alive while serving"
        );
        answer_of(first).await;

        server.stop.send(()).unwrap();
        // Time in which the server, had it closed idle connections, would have closed this one.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!connection.is_finished(), "the idle connection stays open");
        sender.ready().await.unwrap();
        let second = sender.send_request(post(whole_review().await)).await.unwrap();
        assert_eq!(second.status(), 200);
        assert_eq!(second.headers().get("connection").unwrap(), "close");
        assert_eq!(answer_of(second).await["response"]["allowed"], true);
        connection_and_server_end(
            connection,
            server.stopped,
            "the connection closes after that response",
        )
        .await;
    })
    .await
    .expect("the server drained");
}

/// A connection the API server opened just before the drain began has not sent its review yet.
/// Telling it to go away at once closed it before its HTTP/2 preface was read, and the API server
/// reported `EOF`; now it is served first.
#[tokio::test]
async fn a_connection_that_opens_as_the_server_stops_still_gets_its_review_answered() {
    tokio::time::timeout(HANG_GUARD, async {
        let server = start_server().await;
        // The TLS handshake is done, so the server has accepted the connection.
        let (mut sender, connection) = h2_client(&server).await;
        server.stop.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;

        let response = sender
            .send_request(post(whole_review().await))
            .await
            .expect("the review on the fresh connection is answered");
        assert_eq!(response.status(), 200);
        let answer = answer_of(response).await;
        assert_eq!(answer["response"]["allowed"], true);

        connection_and_server_end(
            connection,
            server.stopped,
            "the connection closes without an error",
        )
        .await;
    })
    .await
    .expect("the server drained");
}
