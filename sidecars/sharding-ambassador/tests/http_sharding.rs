#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

//! HTTP sharding against real HTTP peers on loopback: three backends that answer with their shard's
//! name, the ambassador's HTTP server in front, a key from a header, a path segment or a query
//! parameter. Every key lands on the shard the ring names, requests reuse keep-alive connections to
//! the shards, and failures are statuses with a reason.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use ::http::{Request, Response, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
};
use outrigger_contract::shard_map::{HttpKey, ShardMap};
use outrigger_hashring::twemproxy::{KetamaRing, KeyHash};
use outrigger_sharding_ambassador::{
    http::{self as sharded_http, HttpSettings, SHARD_HEADER},
    shard::ShardSettings,
    shardmap,
    topology::Topology,
};
use outrigger_sidecar_runtime::config::Versioned;
use tokio::{net::TcpListener, sync::watch};

/// An HTTP backend standing for one shard's pod: answers `shard=<name> path=<path>` and counts the
/// connections it accepted.
struct Backend {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

async fn backend(name: &'static str) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| async move {
                    let body = format!("shard={name} path={}", request.uri());
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Backend { addr, connections }
}

const NAMES: [&str; 3] = ["web-shard-0", "web-shard-1", "web-shard-2"];

fn map(endpoints: &[String], http_key: Option<HttpKey>) -> ShardMap {
    let shards: Vec<serde_json::Value> = NAMES
        .iter()
        .zip(endpoints)
        .map(|(name, endpoint)| serde_json::json!({"name": name, "endpoints": [endpoint]}))
        .collect();
    let mut document = serde_json::json!({
        "protocol": "http", "function": "ketama", "hash": "fnv1a64", "virtualNodes": 160,
        "hashTag": "{}", "shards": shards,
    });
    if let Some(http_key) = http_key {
        document["httpKey"] = serde_json::to_value(http_key).unwrap();
    }
    ShardMap::from_json(document.to_string().as_bytes()).unwrap()
}

/// The ambassador's HTTP server on a loopback port, following `documents`.
struct Ambassador {
    addr: SocketAddr,
    documents: watch::Sender<Option<Arc<Versioned<ShardMap>>>>,
    _topology: watch::Sender<Arc<Topology>>,
}

async fn ambassador(map: ShardMap) -> Ambassador {
    let spec = shardmap::validate(&map).unwrap();
    let topology = Topology::build(&spec, &Topology::empty(), &Arc::new(ShardSettings::default()));
    let (topology_sender, topology) = watch::channel(Arc::new(topology));
    let (documents_sender, documents) = watch::channel(Some(Arc::new(Versioned {
        generation: 1,
        document: map,
        json: serde_json::Value::Null,
    })));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let settings = Arc::new(HttpSettings {
        request_timeout: Duration::from_secs(2),
        ..HttpSettings::default()
    });
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (topology, documents, settings) = (topology.clone(), documents.clone(), settings.clone());
            tokio::spawn(sharded_http::serve(stream, topology, documents, settings));
        }
    });
    Ambassador {
        addr,
        documents: documents_sender,
        _topology: topology_sender,
    }
}

fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// `(status, shard header, body)` of a GET through the ambassador.
async fn get(
    client: &Client<HttpConnector, Empty<Bytes>>,
    ambassador: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String, String) {
    let mut request = Request::get(format!("http://{ambassador}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client.request(request.body(Empty::new()).unwrap()).await.unwrap();
    let status = response.status();
    let shard = response
        .headers()
        .get(SHARD_HEADER)
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, shard, String::from_utf8_lossy(&body).into_owned())
}

fn ring_shard(key: &str) -> &'static str {
    let ring = KetamaRing::with_names(&NAMES);
    NAMES[ring
        .index_for_key(key.as_bytes(), KeyHash::Fnv1a64, Some((b'{', b'}')))
        .unwrap()]
}

async fn backends() -> (Vec<Backend>, Vec<String>) {
    let mut backends = Vec::new();
    for name in NAMES {
        backends.push(backend(name).await);
    }
    let endpoints = backends.iter().map(|b| b.addr.to_string()).collect();
    (backends, endpoints)
}

/// The path and headers of a request carrying `key`.
type RequestFor = fn(&str) -> (String, Vec<(&'static str, String)>);

#[tokio::test]
async fn keys_from_a_header_a_path_segment_or_a_query_parameter_land_on_the_shard_the_ring_names() {
    let (backends, endpoints) = backends().await;
    let client = client();
    let sources: [(HttpKey, RequestFor); 3] = [
        (HttpKey::Header("x-tenant".into()), |key| {
            ("/orders".to_owned(), vec![("x-tenant", key.to_owned())])
        }),
        (HttpKey::PathSegment(1), |key| {
            (
                format!("/users/{}/cart", key.replace('{', "%7B").replace('}', "%7D")),
                Vec::new(),
            )
        }),
        (HttpKey::QueryParameter("id".into()), |key| {
            (
                format!("/items?page=2&id={}", key.replace('{', "%7B").replace('}', "%7D")),
                Vec::new(),
            )
        }),
    ];
    for (source, request) in sources {
        let ambassador = ambassador(map(&endpoints, Some(source.clone()))).await;
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..150 {
            let key = if i % 10 == 0 {
                format!("user:{{{i}}}:profile")
            } else {
                format!("tenant-{i}")
            };
            let (path, headers) = request(&key);
            let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let (status, shard, body) = get(&client, ambassador.addr, &path, &headers).await;
            let home = ring_shard(&key);
            assert_eq!(status, StatusCode::OK, "{source:?} {key}: {body}");
            assert_eq!(shard, home, "{source:?}: {key} routed by the ring");
            assert!(body.starts_with(&format!("shard={home} path={path}")), "{body}");
            seen.insert(shard);
        }
        assert_eq!(seen.len(), 3, "{source:?}: keys spread over every shard");
        drop(ambassador);
    }
    // 450 requests over one client connection each time: the shards saw a handful of connections.
    for backend in &backends {
        let connections = backend.connections.load(Ordering::Relaxed);
        assert!(
            (1..=6).contains(&connections),
            "keep-alive to the shards: {connections} connections"
        );
    }
}

#[tokio::test]
async fn without_a_key_setting_the_path_is_the_key_and_the_key_header_of_older_maps_still_works() {
    let (_backends, endpoints) = backends().await;
    let client = client();
    let ambassador = ambassador(map(&endpoints, None)).await;
    for path in ["/a", "/b/c", "/user/{7}"] {
        let (status, shard, _) = get(
            &client,
            ambassador.addr,
            &path.replace('{', "%7B").replace('}', "%7D"),
            &[],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(shard, ring_shard(&path.replace('{', "%7B").replace('}', "%7D")));
    }
    let mut older = map(&endpoints, None);
    older.key_header = Some("x-user".into());
    ambassador.documents.send_replace(Some(Arc::new(Versioned {
        generation: 2,
        document: older,
        json: serde_json::Value::Null,
    })));
    let (status, shard, _) = get(&client, ambassador.addr, "/any", &[("x-user", "u-19")]).await;
    assert_eq!((status, shard.as_str()), (StatusCode::OK, ring_shard("u-19")));
}

#[tokio::test]
async fn failures_are_statuses_with_a_reason() {
    let (_backends, mut endpoints) = backends().await;
    // web-shard-1's pod is gone: nothing listens on its port.
    endpoints[1] = format!("127.0.0.1:{}", {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    });
    let client = client();
    let ambassador = ambassador(map(&endpoints, Some(HttpKey::Header("x-tenant".into())))).await;

    let (status, _, body) = get(&client, ambassador.addr, "/orders", &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, "no key: the request has no x-tenant header\n");

    let down = (0..)
        .map(|i| format!("t-{i}"))
        .find(|key| ring_shard(key) == NAMES[1])
        .unwrap();
    let (status, shard, body) = get(&client, ambassador.addr, "/orders", &[("x-tenant", &down)]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(shard, NAMES[1]);
    assert!(body.starts_with("shard web-shard-1 unreachable: "), "{body}");
    // Only that shard's keys fail.
    let up = (0..)
        .map(|i| format!("t-{i}"))
        .find(|key| ring_shard(key) == NAMES[2])
        .unwrap();
    let (status, _, _) = get(&client, ambassador.addr, "/orders", &[("x-tenant", &up)]).await;
    assert_eq!(status, StatusCode::OK);

    ambassador.documents.send_replace(None);
    let (status, _, body) = get(&client, ambassador.addr, "/orders", &[("x-tenant", &up)]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "no shard map with shards is loaded\n");
}
