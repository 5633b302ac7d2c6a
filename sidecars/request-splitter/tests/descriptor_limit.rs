#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The descriptor limit is lowered with setrlimit.
#![allow(unsafe_code)]

//! Out of file descriptors: the listener pauses accepting (with backoff, instead of failing in a
//! tight loop), readiness fails and says why, and once descriptors are free again the clients that
//! waited in the backlog are served.
//!
//! A binary of its own: the limit is the whole process's, and no other test may run under it.

mod support;

use std::{
    io::{Read, Write},
    time::Duration,
};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;
use support::{backend, metric, splitter, Behaviour, Splitter, STEP};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn descriptor_limit() -> libc::rlimit {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    let result = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(result, 0);
    limit
}

fn set_descriptor_limit(limit: libc::rlimit) {
    // SAFETY: setrlimit only reads the struct it is given.
    let result = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    assert_eq!(result, 0, "{}", std::io::Error::last_os_error());
}

/// The lowest descriptor number free now: the next one the process would get.
fn lowest_free_descriptor() -> u64 {
    use std::os::fd::AsRawFd;
    let probe = std::fs::File::open("/dev/null").unwrap();
    u64::try_from(probe.as_raw_fd()).unwrap()
}

async fn admin(splitter: &Splitter, path: &str) -> (StatusCode, String) {
    // In process: at the limit, the admin port cannot take a connection either.
    let response = splitter.running.admin().respond(&Method::GET, path);
    let status = response.status();
    let body: Bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + STEP;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn out_of_descriptors_the_listener_pauses_readiness_fails_and_waiting_clients_are_served_later() {
    let stable = backend("stable", Behaviour::Named).await;
    let splitter =
        splitter(json!({"backends": [{"name": "stable", "endpoints": [stable.endpoint()]}]})).await;
    // One request first (its connection closed), so that the backend connection and the batch of
    // sends exist before descriptors run out.
    let mut first = tokio::net::TcpStream::connect(splitter.addr).await.unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(STEP, first.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(first);
    until("the first connection is closed", async || {
        splitter.running.open_connections() == 0
    })
    .await;
    assert_eq!(admin(&splitter, "/readyz").await.0, StatusCode::OK);

    // Clients connect while the splitter cannot run (this test holds its only thread): they wait
    // in the listen backlog. Then no descriptor is left for accepting them.
    let mut waiting: Vec<std::net::TcpStream> = (0..3)
        .map(|_| std::net::TcpStream::connect(splitter.addr).unwrap())
        .collect();
    let normal = descriptor_limit();
    set_descriptor_limit(libc::rlimit {
        rlim_cur: lowest_free_descriptor(),
        rlim_max: normal.rlim_max,
    });

    let paused = async || {
        let (status, _) = admin(&splitter, "/readyz").await;
        let metrics = admin(&splitter, "/metrics").await.1;
        status == StatusCode::SERVICE_UNAVAILABLE
            && metric(&metrics, "outrigger_splitter_accept_paused") == 1.0
    };
    until("readiness fails while accepting is paused", paused).await;
    // Still paused a while later, and none of the waiting clients accepted (or lost) meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(paused().await);
    assert_eq!(splitter.running.open_connections(), 0);

    set_descriptor_limit(normal);
    until("accepting resumes and readiness returns", async || {
        let metrics = admin(&splitter, "/metrics").await.1;
        admin(&splitter, "/readyz").await.0 == StatusCode::OK
            && metric(&metrics, "outrigger_splitter_accept_paused") == 0.0
    })
    .await;

    // The clients that waited are served now. Blocking reads on a thread of their own: this
    // thread runs the splitter.
    let answers = tokio::task::spawn_blocking(move || {
        waiting
            .iter_mut()
            .map(|stream| {
                stream.set_read_timeout(Some(STEP)).unwrap();
                stream
                    .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                    .unwrap();
                let mut answer = String::new();
                stream.read_to_string(&mut answer).unwrap();
                answer
            })
            .collect::<Vec<_>>()
    });
    let answers = tokio::time::timeout(STEP, answers).await.unwrap().unwrap();
    for answer in answers {
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("stable"), "{answer}");
    }
}
