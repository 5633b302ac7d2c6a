//! The ambassador against real `redis-server` shards, and its ring against a real `nutcracker`.

// Helpers of the tests below: a failed step stops the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{collections::BTreeMap, time::Duration};

use outrigger_hashring::twemproxy::{KetamaNode, KetamaRing, KeyHash, POINTS_PER_SERVER};
use outrigger_sharding_ambassador::{client::ClientSettings, resp::Frame, shard::ShardSettings};
use support::*;
use tokio::time::sleep;

const TAG: Option<(u8, u8)> = Some((b'{', b'}'));

/// Keys of every shape placement depends on: plain, hash-tagged, empty tags, and bytes above 0x7f
/// (which twemproxy's `fnv1a_64` sign-extends).
fn placement_keys(prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    for i in 0..1_200 {
        keys.push(match i % 6 {
            0 => format!("{prefix}:user:{{{}}}:cart:{i}", i % 41),
            1 => format!("{prefix}:empty:{{}}:{i}"),
            2 => format!("{prefix}:clé:{i}"),
            3 => format!("{prefix}:ключ-{i}"),
            _ => format!("{prefix}:session:{i}"),
        });
    }
    keys
}

fn ring(shards: &[Redis], weights: &[u32]) -> KetamaRing {
    let nodes = shards
        .iter()
        .zip(weights)
        .map(|(shard, weight)| KetamaNode {
            name: shard.name.clone(),
            weight: *weight,
        })
        .collect();
    KetamaRing::new(nodes, POINTS_PER_SERVER)
}

/// Reads every key from the shard `ring` names, directly from that shard's Redis.
async fn assert_each_key_is_where_the_ring_says(
    shards: &[Redis],
    ring: &KetamaRing,
    hash: KeyHash,
    keys: &[String],
) {
    let mut by_shard: BTreeMap<usize, Vec<&String>> = BTreeMap::new();
    for key in keys {
        let shard = ring.index_for_key(key.as_bytes(), hash, TAG).unwrap();
        by_shard.entry(shard).or_default().push(key);
    }
    assert_eq!(by_shard.len(), shards.len(), "every shard owns some keys");
    for (shard, keys) in by_shard {
        let mut direct = Client::connect(shards[shard].addr()).await.unwrap();
        let gets: Vec<_> = keys.iter().map(|key| args(&["GET", key.as_str()])).collect();
        let values = direct.pipeline(&gets).await;
        for (key, value) in keys.iter().zip(values) {
            assert_eq!(
                value,
                bulk(key),
                "{hash:?}: key {key:?} is not on {}",
                shards[shard].name
            );
        }
    }
}

async fn write_through(addr: std::net::SocketAddr, keys: &[String]) {
    let mut client = Client::connect(addr).await.unwrap();
    let sets: Vec<_> = keys
        .iter()
        .map(|key| args(&["SET", key.as_str(), key.as_str()]))
        .collect();
    for reply in client.pipeline(&sets).await {
        assert_eq!(reply, Frame::ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_written_through_nutcracker_sit_on_the_shard_the_ring_names_for_every_twemproxy_hash() {
    let shards = start_shards(4).await;
    let cases = [
        ("fnv1a_64", KeyHash::Fnv1a64, [1, 1, 1, 1]),
        ("md5", KeyHash::Md5, [1, 1, 1, 1]),
        ("murmur", KeyHash::Murmur, [1, 1, 1, 1]),
        // Unequal weights exercise twemproxy's single-precision point counts.
        ("fnv1a_64", KeyHash::Fnv1a64, [1, 2, 1, 3]),
        ("md5", KeyHash::Md5, [3, 1, 1, 5]),
    ];
    for (case, (name, hash, weights)) in cases.into_iter().enumerate() {
        let nutcracker = Nutcracker::start(&shards, &weights, name, Some("{}")).await;
        let keys = placement_keys(&format!("case{case}"));
        write_through(nutcracker.addr(), &keys).await;
        assert_each_key_is_where_the_ring_says(&shards, &ring(&shards, &weights), hash, &keys).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ambassador_and_nutcracker_agree_on_every_key() {
    let shards = start_shards(4).await;
    let nutcracker = Nutcracker::start(&shards, &[1, 1, 1, 1], "fnv1a_64", Some("{}")).await;
    let ambassador = Ambassador::start(&shards, "fnv1a64", Some("{}")).await;
    let keys = placement_keys("agree");
    let (written_by_nutcracker, written_by_ambassador) = keys.split_at(keys.len() / 2);
    write_through(nutcracker.addr(), written_by_nutcracker).await;
    write_through(ambassador.addr, written_by_ambassador).await;
    for (reader, addr) in [("ambassador", ambassador.addr), ("nutcracker", nutcracker.addr())] {
        let mut client = Client::connect(addr).await.unwrap();
        let gets: Vec<_> = keys.iter().map(|key| args(&["GET", key.as_str()])).collect();
        for (key, value) in keys.iter().zip(client.pipeline(&gets).await) {
            assert_eq!(value, bulk(key), "{reader} does not find {key:?}");
        }
    }
    assert_each_key_is_where_the_ring_says(&shards, &ring(&shards, &[1; 4]), KeyHash::Fnv1a64, &keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_are_answered_in_order() {
    let shards = start_shards(3).await;
    let ambassador = Ambassador::start(&shards, "fnv1a64", None).await;
    let mut client = Client::connect(ambassador.addr).await.unwrap();
    let mut commands = Vec::new();
    for i in 0..2_000 {
        commands.push(args(&[
            "SET".to_owned(),
            format!("pipe:{i}"),
            format!("value-{i}"),
        ]));
        commands.push(args(&["GET".to_owned(), format!("pipe:{i}")]));
        if i % 100 == 0 {
            commands.push(args(&[
                "MGET".to_owned(),
                format!("pipe:{i}"),
                "pipe:missing".into(),
                "pipe:0".into(),
            ]));
        }
    }
    let replies = client.pipeline(&commands).await;
    let mut replies = replies.into_iter();
    for i in 0..2_000 {
        assert_eq!(replies.next(), Some(Frame::ok()));
        assert_eq!(replies.next(), Some(bulk(format!("value-{i}"))));
        if i % 100 == 0 {
            let expected = Frame::Array(vec![bulk(format!("value-{i}")), Frame::Null, bulk("value-0")]);
            assert_eq!(replies.next(), Some(expected));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_key_commands_are_split_over_shards_and_merged() {
    let shards = start_shards(3).await;
    let ambassador = Ambassador::start(&shards, "fnv1a64", None).await;
    let mut client = Client::connect(ambassador.addr).await.unwrap();
    let keys: Vec<String> = (0..60).map(|i| format!("multi:{i}")).collect();
    let mut mset = vec!["MSET".to_owned()];
    for key in &keys {
        mset.push(key.clone());
        mset.push(format!("v:{key}"));
    }
    assert_eq!(client.call(&mset).await, Frame::ok());

    // Every shard got its own keys and only those.
    let ring = KetamaRing::with_names(&shards.iter().map(|s| s.name.clone()).collect::<Vec<_>>());
    for (index, shard) in shards.iter().enumerate() {
        let mut direct = Client::connect(shard.addr()).await.unwrap();
        let owned = keys
            .iter()
            .filter(|k| ring.index_for_key(k.as_bytes(), KeyHash::Fnv1a64, None) == Some(index));
        let Frame::Integer(count) = direct.call(&["DBSIZE"]).await else {
            panic!("DBSIZE")
        };
        assert_eq!(usize::try_from(count).unwrap(), owned.count(), "{}", shard.name);
    }

    let mut mget = vec!["MGET".to_owned()];
    mget.extend(keys.iter().cloned());
    mget.push("multi:absent".into());
    let mut expected: Vec<Frame> = keys.iter().map(|key| bulk(format!("v:{key}"))).collect();
    expected.push(Frame::Null);
    assert_eq!(client.call(&mget).await, Frame::Array(expected));

    let some = [
        "multi:1",
        "multi:2",
        "multi:3",
        "multi:4",
        "multi:5",
        "multi:nope",
    ];
    for command in ["EXISTS", "TOUCH"] {
        let mut words = vec![command];
        words.extend(some);
        assert_eq!(client.call(&words).await, Frame::Integer(5), "{command}");
    }
    let mut del = vec!["DEL"];
    del.extend(&some[..3]);
    assert_eq!(client.call(&del).await, Frame::Integer(3));
    let mut unlink = vec!["UNLINK"];
    unlink.extend(some);
    assert_eq!(client.call(&unlink).await, Frame::Integer(2));
    assert_eq!(
        client.call(&["EXISTS", "multi:1", "multi:5", "multi:6"]).await,
        Frame::Integer(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_that_span_shards_are_refused_and_never_reach_a_shard() {
    let shards = start_shards(3).await;
    let ambassador = Ambassador::start(&shards, "fnv1a64", Some("{}")).await;
    let mut client = Client::connect(ambassador.addr).await.unwrap();
    let keys: Vec<String> = (0..30).map(|i| format!("{i}:keep")).collect();
    write_through(ambassador.addr, &keys).await;
    let ring = KetamaRing::with_names(&shards.iter().map(|s| s.name.clone()).collect::<Vec<_>>());
    let shard_of = |key: &str| ring.index_for_key(key.as_bytes(), KeyHash::Fnv1a64, TAG);
    let other = keys
        .iter()
        .find(|key| shard_of(key) != shard_of(&keys[0]))
        .unwrap();

    let refused: Vec<Vec<&str>> = vec![
        vec!["WATCH", &keys[0]],
        vec!["KEYS", "*"],
        vec!["SCAN", "0"],
        vec!["FLUSHALL"],
        vec!["FLUSHDB"],
        vec!["RENAME", &keys[0], other],
        vec!["SUBSCRIBE", "news"],
        vec!["PUBLISH", "news", "hello"],
        vec!["BLPOP", &keys[0], "0"],
    ];
    for command in &refused {
        let reply = client.call(command).await;
        assert!(error_text(&reply).contains("refused"), "{command:?}: {reply:?}");
    }
    assert!(error_text(&client.call(&["FROBNICATE", "x"]).await).contains("unknown command"));
    // Nothing was flushed or renamed: every key is still there.
    let gets: Vec<_> = keys.iter().map(|key| args(&["GET", key.as_str()])).collect();
    for (key, value) in keys.iter().zip(client.pipeline(&gets).await) {
        assert_eq!(value, bulk(key));
    }
    // The same rename between keys that share a hash tag is served.
    assert_eq!(client.call(&["SET", "user:{7}:a", "1"]).await, Frame::ok());
    assert_eq!(
        client.call(&["RENAME", "user:{7}:a", "user:{7}:b"]).await,
        Frame::ok()
    );
    assert_eq!(client.call(&["GET", "user:{7}:b"]).await, bulk("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_a_protocol_error_and_the_connection_closes() {
    let shards = start_shards(2).await;
    let ambassador = Ambassador::start(&shards, "fnv1a64", None).await;
    let inputs: [&[u8]; 3] = [
        b"*x\r\n",
        b"*2\r\n$3\r\nGET\r\n$536870912\r\n",
        b"*2\r\n$3\r\nGET\r\n:1\r\n",
    ];
    for input in inputs {
        let mut client = Client::connect(ambassador.addr).await.unwrap();
        assert_eq!(client.call(&["SET", "before", "1"]).await, Frame::ok());
        client.send_raw(input).await;
        let reply = client.read().await.expect("an error reply");
        assert!(
            error_text(&reply).contains("Protocol error"),
            "{input:?}: {reply:?}"
        );
        assert_eq!(
            client.read().await,
            None,
            "the connection closes after a protocol error"
        );
    }
    // A line that is not RESP is an inline command, as Redis reads it: unknown, but no reason to close.
    let mut healthy = Client::connect(ambassador.addr).await.unwrap();
    healthy.send_raw(b"!garbage\r\n").await;
    assert!(error_text(&healthy.read().await.unwrap()).contains("unknown command '!garbage'"));
    assert_eq!(healthy.call(&["GET", "before"]).await, bulk("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_mid_frame_is_dropped_while_others_are_served() {
    let shards = start_shards(2).await;
    let settings = ClientSettings {
        partial_frame_timeout: Duration::from_millis(300),
        ..ClientSettings::default()
    };
    let ambassador =
        Ambassador::start_with(&shards, "fnv1a64", None, ShardSettings::default(), settings).await;
    let mut stalled = Client::connect(ambassador.addr).await.unwrap();
    stalled
        .send_raw(b"*3\r\n$3\r\nSET\r\n$5\r\nstall\r\n$10\r\nhalf")
        .await;
    let mut other = Client::connect(ambassador.addr).await.unwrap();
    for i in 0..20 {
        assert_eq!(
            other.call(&["SET", &format!("other:{i}"), "x"]).await,
            Frame::ok()
        );
        assert_eq!(other.call(&["GET", &format!("other:{i}")]).await, bulk("x"));
    }
    assert_eq!(stalled.read().await, None, "the stalled client is disconnected");
    assert_eq!(other.call(&["EXISTS", "stall"]).await, Frame::Integer(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_shard_fails_only_its_own_keys_is_ejected_and_comes_back() {
    let mut shards = start_shards(3).await;
    let settings = ShardSettings {
        connect_timeout: Duration::from_millis(200),
        request_timeout: Duration::from_millis(500),
        failure_limit: 2,
        retry_interval: Duration::from_millis(600),
        ..ShardSettings::default()
    };
    let ambassador =
        Ambassador::start_with(&shards, "fnv1a64", None, settings, ClientSettings::default()).await;
    let ring = KetamaRing::with_names(&shards.iter().map(|s| s.name.clone()).collect::<Vec<_>>());
    // The varying part comes first: twemproxy's `fnv1a_64` multiplies by a small prime, so keys that
    // differ only in their last bytes land next to each other on the ring.
    let keys: Vec<String> = (0..90).map(|i| format!("{i}:dead")).collect();
    let on = |index: usize| -> Vec<&String> {
        keys.iter()
            .filter(|k| ring.index_for_key(k.as_bytes(), KeyHash::Fnv1a64, None) == Some(index))
            .collect()
    };
    assert!(
        (0..3).all(|index| !on(index).is_empty()),
        "every shard owns some keys"
    );
    let mut client = Client::connect(ambassador.addr).await.unwrap();
    write_through(ambassador.addr, &keys).await;

    shards[1].stop();
    for _ in 0..3 {
        for key in on(1) {
            let reply = client.call(&["GET", key]).await;
            assert!(error_text(&reply).contains("cache-shard-1"), "{reply:?}");
        }
        for key in on(0).into_iter().chain(on(2)) {
            assert_eq!(client.call(&["GET", key]).await, bulk(key));
        }
    }
    // A split command fails as a whole when one of its shards is down, and says which.
    let reply = client.call(&["MGET", on(0)[0], on(1)[0]]).await;
    assert!(error_text(&reply).contains("cache-shard-1"));
    let reply = client.call(&["GET", on(1)[0]]).await;
    assert!(error_text(&reply).contains("ejected"), "{reply:?}");

    shards[1].restart().await;
    sleep(Duration::from_millis(700)).await;
    let key = on(1)[0];
    let mut recovered = false;
    for _ in 0..20 {
        if client.call(&["SET", key, "again"]).await == Frame::ok() {
            recovered = true;
            break;
        }
        sleep(Duration::from_millis(200)).await;
    }
    assert!(recovered, "the shard is used again after the retry interval");
    assert_eq!(client.call(&["GET", key]).await, bulk("again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_never_answers_times_out_without_holding_up_the_others() {
    let mut shards = start_shards(2).await;
    // Accepts connections and reads commands, but never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    shards.push(Redis::standing_in("cache-shard-2", silent_port));
    let settings = ShardSettings {
        request_timeout: Duration::from_millis(300),
        ..ShardSettings::default()
    };
    let ambassador = Ambassador::start_with(&shards, "md5", None, settings, ClientSettings::default()).await;
    let ring = KetamaRing::with_names(&shards.iter().map(|s| s.name.clone()).collect::<Vec<_>>());
    let keys: Vec<String> = (0..100).map(|i| format!("slow:{i}")).collect();
    let on = |index: usize| {
        keys.iter()
            .find(|k| ring.index_for_key(k.as_bytes(), KeyHash::Md5, None) == Some(index))
            .unwrap()
    };

    let mut waiting = Client::connect(ambassador.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut meanwhile = Client::connect(ambassador.addr).await.unwrap();
    waiting.send_raw(b"*2\r\n$3\r\nGET\r\n").await;
    waiting
        .send_raw(format!("${}\r\n{}\r\n", on(2).len(), on(2)).as_bytes())
        .await;
    for index in [0, 1] {
        assert_eq!(meanwhile.call(&["SET", on(index), "v"]).await, Frame::ok());
    }
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "other shards answer while one is silent"
    );
    let reply = waiting.read().await.unwrap();
    assert!(
        error_text(&reply).contains("no reply within the request timeout"),
        "{reply:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_commands_and_local_commands_are_served() {
    let shards = start_shards(2).await;
    let ambassador = Ambassador::start(&shards, "fnv1a64", None).await;
    let mut client = Client::connect(ambassador.addr).await.unwrap();
    client
        .send_raw(b"SET inline \"hello world\"\r\nGET inline\r\nPING\r\n")
        .await;
    assert_eq!(client.read().await, Some(Frame::ok()));
    assert_eq!(client.read().await, Some(bulk("hello world")));
    assert_eq!(client.read().await, Some(Frame::Simple("PONG".into())));
    assert_eq!(client.call(&["QUIT"]).await, Frame::ok());
    assert_eq!(client.read().await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_on_one_shard_runs_there_and_one_spanning_shards_is_aborted() {
    let shards = start_shards(3).await;
    let ambassador = Ambassador::start(&shards, "fnv1a64", Some("{}")).await;
    let mut client = Client::connect(ambassador.addr).await.unwrap();
    let queued = Frame::Simple("QUEUED".into());
    let replies = client
        .pipeline(&[
            args(&["MULTI"]),
            args(&["SET", "cart:{9}:total", "10"]),
            args(&["INCRBY", "cart:{9}:total", "5"]),
            args(&["RPUSH", "cart:{9}:items", "apple"]),
            args(&["EXEC"]),
        ])
        .await;
    assert_eq!(
        replies[..4],
        [Frame::ok(), queued.clone(), queued.clone(), queued.clone()]
    );
    assert_eq!(
        replies[4],
        Frame::Array(vec![Frame::ok(), Frame::Integer(15), Frame::Integer(1)])
    );

    let ring = KetamaRing::with_names(&shards.iter().map(|s| s.name.clone()).collect::<Vec<_>>());
    let shard_of = |key: &str| ring.index_for_key(key.as_bytes(), KeyHash::Fnv1a64, TAG);
    let first = "0:txn";
    let elsewhere = (1..100)
        .map(|i| format!("{i}:txn"))
        .find(|key| shard_of(key) != shard_of(first))
        .unwrap();
    assert_eq!(client.call(&["MULTI"]).await, Frame::ok());
    assert_eq!(client.call(&["SET", first, "1"]).await, queued);
    assert!(error_text(&client.call(&["SET", &elsewhere, "1"]).await).contains("one shard"));
    assert!(error_text(&client.call(&["EXEC"]).await).contains("EXECABORT"));
    assert_eq!(
        client.call(&["EXISTS", first, &elsewhere]).await,
        Frame::Integer(0),
        "nothing ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_follows_its_shard_map_file_and_keeps_the_last_good_map() {
    let shards = start_shards(3).await;
    let dir = TempDir::new("binary");
    let map = dir.0.join("shard-map.json");
    std::fs::write(&map, shard_map_json(&shards[..2], "fnv1a64", None)).unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let _ambassador = spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_outrigger-sharding-ambassador"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin-addr",
                &format!("127.0.0.1:{admin_port}"),
                "--config-poll-interval",
                "50ms",
                "--log-format",
                "text",
            ])
            .arg("--shard-map")
            .arg(&map),
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut client = connect_when_listening(addr).await;
    let keys: Vec<String> = (0..200).map(|i| format!("{i}:binary")).collect();
    let names = |count: usize| shards[..count].iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    let (two, three) = (
        KetamaRing::with_names(&names(2)),
        KetamaRing::with_names(&names(3)),
    );

    // The first map is loaded shortly after start; until then keys get an error.
    let mut loaded = false;
    for _ in 0..100 {
        if client.call(&["SET", &keys[0], &keys[0]]).await == Frame::ok() {
            loaded = true;
            break;
        }
        sleep(Duration::from_millis(50)).await;
    }
    assert!(loaded, "the shard map is loaded");
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], admin_port));
    assert!(
        http_get(admin, "/readyz").await.starts_with("HTTP/1.1 200"),
        "ready once a map is loaded"
    );
    write_through(addr, &keys).await;
    assert_each_key_is_where_the_ring_says(&shards[..2], &two, KeyHash::Fnv1a64, &keys).await;

    std::fs::write(&map, shard_map_json(&shards, "fnv1a64", None)).unwrap();
    let moved = keys
        .iter()
        .find(|key| three.index_for_key(key.as_bytes(), KeyHash::Fnv1a64, None) == Some(2))
        .unwrap();
    let mut third = Client::connect(shards[2].addr()).await.unwrap();
    let mut reloaded = false;
    for _ in 0..100 {
        client.call(&["SET", moved, "on the new shard"]).await;
        if third.call(&["GET", moved]).await == bulk("on the new shard") {
            reloaded = true;
            break;
        }
        sleep(Duration::from_millis(50)).await;
    }
    assert!(reloaded, "the new map routes keys to the new shard");

    // A broken map is ignored: the three-shard map stays in force.
    std::fs::write(&map, "{ not a shard map").unwrap();
    sleep(Duration::from_millis(300)).await;
    let renamed: Vec<String> = keys.iter().map(|key| format!("{key}:after")).collect();
    write_through(addr, &renamed).await;
    assert_each_key_is_where_the_ring_says(&shards, &three, KeyHash::Fnv1a64, &renamed).await;
    let metrics = http_get(admin, "/metrics").await;
    for line in [
        "outrigger_sharding_config_reloads_total{source=\"file\",result=\"applied\"} 2",
        "outrigger_sharding_config_reloads_total{source=\"file\",result=\"rejected\"} 1",
        "outrigger_sharding_shard_map_shards 3",
        "outrigger_sharding_commands_total{route=\"forward\"}",
        "outrigger_sharding_shard_operations_total{shard=",
        "outrigger_sharding_shard_latency_seconds_bucket{le=",
    ] {
        assert!(metrics.contains(line), "{line} missing from {metrics}");
    }
}

/// A whole HTTP/1.1 response, as text.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}
