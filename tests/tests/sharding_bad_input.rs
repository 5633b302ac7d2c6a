#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // integration tests fail by panicking

//! Bad input on the cluster: a client pod's injected sharding ambassador gets malformed RESP, a bulk
//! length claiming 512 MB, an unknown command, and a client that sends half a frame and stalls.
//! Each gets an error reply or a closed connection; meanwhile another client of the same pod
//! (the app, through its `/redis/...` endpoint) keeps being served, and the ambassador's resident
//! memory, read from its own `/metrics`, stays bounded.
//!
//! The ambassador listens on the pod's loopback only, so the bad clients reach it through a relay
//! container in the same pod (the test app relaying the pod IP to `127.0.0.1:6379`, byte for byte).

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, PostParams};
use outrigger_api::ShardedService;
use outrigger_contract::shard_map::{ShardMap, SHARD_MAP_KEY};
use outrigger_tests::{
    admin_client, ambassador_image, client_image, create_injected, ensure_crds, eventually, example,
    http_get_from, is_ready, TestNamespace, WebhookOperator,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(180);

/// The relay container every client pod here gets: the test app relaying `pod IP:7000` to the
/// ambassador on the pod's loopback, byte for byte (`kubectl port-forward` would need socat on the
/// node).
const RELAY_PORT: u16 = 7000;

fn relay_container(target: &str) -> serde_json::Value {
    json!({
        "name": "relay",
        "image": client_image(),
        "imagePullPolicy": "Never",
        "args": ["relay", format!("0.0.0.0:{RELAY_PORT}"), target],
    })
}

/// Everything the server sends until it closes the connection (or the read timeout).
fn read_until_closed(stream: &mut TcpStream) -> (String, bool) {
    let mut received = Vec::new();
    let mut buf = [0; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&received).into_owned(), true),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&received).into_owned(), false),
        }
    }
}

/// One reply line (enough for the simple replies asked for here).
fn read_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0; 1];
    while !line.ends_with(b"\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "connection closed mid-reply");
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// One Redis command through the app container's `/redis/...` endpoint: another client of the same
/// ambassador.
fn through_app(client_ip: &str, words: &[&str]) -> String {
    let path = words.join("/");
    http_get_from(&format!("{client_ip}:8080"), &format!("/redis/{path}"))
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// The ambassador's resident memory, from its `/metrics` on the pod IP.
fn ambassador_rss(client_ip: &str) -> f64 {
    let (_, metrics) = http_get_from(&format!("{client_ip}:9902"), "/metrics").unwrap();
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("process_resident_memory_bytes "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no process_resident_memory_bytes in\n{metrics}"))
}

fn metric_sum(client_ip: &str, family: &str) -> f64 {
    let (_, metrics) = http_get_from(&format!("{client_ip}:9902"), "/metrics").unwrap();
    metrics
        .lines()
        .filter(|line| line.starts_with(family))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn bad_clients_get_an_error_or_a_closed_connection_while_others_are_served_in_bounded_memory() {
    ensure_crds().unwrap();
    let namespace = TestNamespace::create("sharding-bad").unwrap();
    let image = format!("sharding-ambassador={}", ambassador_image());
    let _operator = WebhookOperator::start(&namespace, true, &["--sidecar-image", &image]).unwrap();
    let client = admin_client().await.unwrap();
    let services: Api<ShardedService> = Api::namespaced(client.clone(), &namespace.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace.name);

    let mut cache = example("shardedservice.yaml").unwrap();
    cache["spec"]["replicasPerShard"] = json!(1);
    cache["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = json!("Never");
    let cache: ShardedService = serde_json::from_value(cache).unwrap();
    services.create(&PostParams::default(), &cache).await.unwrap();
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace.name);
    eventually("a shard map with an endpoint for every shard", WAIT, || {
        let configmaps = configmaps.clone();
        async move {
            let Some(data) = configmaps.get_opt("cache-shard-map").await?.and_then(|c| c.data) else {
                return Ok(None);
            };
            let map = ShardMap::from_json(data[SHARD_MAP_KEY].as_bytes())?;
            Ok((map.shards.len() == 3 && map.shards.iter().all(|s| !s.endpoints.is_empty())).then_some(()))
        }
    })
    .await
    .unwrap();

    let app: Pod = serde_json::from_value(json!({
        "metadata": {"name": "client", "annotations": {"outrigger.dev/sharded-service": "cache"}},
        "spec": {"containers": [
            {"name": "app", "image": client_image(), "imagePullPolicy": "Never"},
            relay_container("127.0.0.1:6379"),
        ]},
    }))
    .unwrap();
    create_injected(&pods, &app, "sharding-ambassador", WAIT)
        .await
        .unwrap();
    let client_ip = eventually("the client pod and its ambassador ready", WAIT, || {
        let pods = pods.clone();
        async move {
            let pod = pods.get("client").await?;
            Ok(is_ready(&pod)
                .then(|| pod.status.and_then(|s| s.pod_ip))
                .flatten())
        }
    })
    .await
    .unwrap();
    eventually("the shards answer through the ambassador", WAIT, || async {
        Ok((through_app(&client_ip, &["SET", "good:0", "v"]) == "+OK\r\n").then_some(()))
    })
    .await
    .unwrap();
    let rss_before = ambassador_rss(&client_ip);
    let connect = || {
        let stream = TcpStream::connect((client_ip.as_str(), RELAY_PORT)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        stream
    };

    // A good client through the port-forward first: the path itself works.
    let mut good = connect();
    good.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    assert_eq!(read_line(&mut good), "+PONG\r\n");

    // An unknown command is an error reply; the connection stays usable.
    let mut unknown = connect();
    unknown
        .write_all(b"*2\r\n$9\r\nFROBULATE\r\n$1\r\nx\r\n*1\r\n$4\r\nPING\r\n")
        .unwrap();
    assert_eq!(read_line(&mut unknown), "-ERR unknown command 'FROBULATE'\r\n");
    assert_eq!(read_line(&mut unknown), "+PONG\r\n");

    // A client that sends half a frame and stalls holds its connection for the partial frame
    // timeout (10 s), then is disconnected. It is left stalling while the others are tried.
    let mut stalled = connect();
    stalled
        .write_all(b"*3\r\n$3\r\nSET\r\n$5\r\nstall\r\n$10\r\nhal")
        .unwrap();
    let stalled_at = Instant::now();

    // Malformed RESP: an error reply, then the connection is closed, as Redis does.
    for (what, bytes) in [
        ("an integer inside a command", &b"*2\r\n$3\r\nGET\r\n:1\r\n"[..]),
        (
            "a length that is not a number",
            &b"*2\r\n$3\r\nGET\r\n$abc\r\n"[..],
        ),
        ("a type byte RESP does not have", &b"*1\r\n!oops\r\n"[..]),
        (
            "a bulk string longer than its length",
            &b"*1\r\n$3\r\nGETXY\r\n"[..],
        ),
    ] {
        let mut bad = connect();
        bad.write_all(bytes).unwrap();
        let (reply, closed) = read_until_closed(&mut bad);
        assert!(reply.starts_with("-ERR Protocol error"), "{what}: {reply:?}");
        assert!(closed, "{what}: the connection is closed after the error");
    }

    // A bulk length claiming 512 MB is refused as soon as its header arrives: nothing is allocated
    // for it, and the megabytes it announces are not waited for.
    let mut huge = connect();
    huge.write_all(b"*3\r\n$3\r\nSET\r\n$4\r\nhuge\r\n$536870912\r\n")
        .unwrap();
    let (reply, closed) = read_until_closed(&mut huge);
    assert!(
        reply.starts_with("-ERR Protocol error: bulk length 536870912 over the limit"),
        "{reply:?}"
    );
    assert!(closed);

    // Everyone else is still served: the app's own connection and a fresh one.
    assert_eq!(through_app(&client_ip, &["SET", "good:1", "still"]), "+OK\r\n");
    assert_eq!(through_app(&client_ip, &["GET", "good:1"]), "$5\r\nstill\r\n");
    good.write_all(b"*2\r\n$3\r\nGET\r\n$6\r\ngood:1\r\n").unwrap();
    assert_eq!(read_line(&mut good), "$5\r\n");
    assert_eq!(read_line(&mut good), "still\r\n");

    // The staller is cut after the partial frame timeout, not before, and never got a reply.
    let (reply, closed) = read_until_closed(&mut stalled);
    let held = stalled_at.elapsed();
    assert!(closed, "the stalled client is disconnected");
    assert!(
        !reply.contains("+OK"),
        "the half-sent SET was never executed: {reply:?}"
    );
    assert!(
        held >= Duration::from_secs(8) && held < Duration::from_secs(25),
        "cut after {held:?}"
    );
    assert_eq!(through_app(&client_ip, &["GET", "stall"]), "$-1\r\n");

    // Bounded memory: a few MiB at most over what it used before the bad clients came.
    let rss_after = ambassador_rss(&client_ip);
    assert!(
        rss_after < rss_before + 16.0 * 1024.0 * 1024.0 && rss_after < 64.0 * 1024.0 * 1024.0,
        "RSS went from {rss_before} to {rss_after} bytes"
    );
    // The closed connections were counted by cause, and the ambassador never restarted.
    assert!(metric_sum(&client_ip, "outrigger_sharding_client_errors_total") >= 6.0);
    let restarts: i32 = pods
        .get("client")
        .await
        .unwrap()
        .status
        .and_then(|s| s.container_statuses)
        .unwrap_or_default()
        .iter()
        .map(|c| c.restart_count)
        .sum();
    assert_eq!(restarts, 0);
}
