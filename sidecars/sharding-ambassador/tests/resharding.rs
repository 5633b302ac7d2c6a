//! Live resharding against real `redis-server` shards: the ambassador holds the previous ring beside
//! the new one, reads fall back to a moved key's previous owner, writes clear it there, and the
//! cache hit rate through a 3→4 reshard under load is measured against a plain ring swap.

// Helpers of the tests below: a failed step stops the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use outrigger_hashring::twemproxy::{KetamaRing, KeyHash};
use outrigger_sharding_ambassador::{
    client::ClientSettings, metrics::Metrics, resp::Frame, shard::ShardSettings, shardmap, topology::Topology,
};
use support::*;

fn endpoints(shards: &[Redis]) -> String {
    let entries: Vec<String> = shards
        .iter()
        .map(|shard| {
            format!(
                r#"{{"name":"{}","endpoints":["{}"]}}"#,
                shard.name,
                shard.endpoint()
            )
        })
        .collect();
    format!("[{}]", entries.join(","))
}

/// The map of `shards`, with `previous` as the ring of a migration when given.
fn map_json(shards: &[Redis], previous: Option<&[Redis]>, copy_on_read: bool) -> String {
    let migration = previous
        .map(|previous| {
            format!(
                r#""migration":{{"previousShards":{},"copyOnRead":{copy_on_read}}},"#,
                endpoints(previous)
            )
        })
        .unwrap_or_default();
    format!(
        r#"{{"protocol":"redis","function":"ketama","hash":"fnv1a64","virtualNodes":160,{migration}"shards":{}}}"#,
        endpoints(shards)
    )
}

/// Puts the map in force in a running ambassador, as the runtime does when the ConfigMap changes.
fn swap(ambassador: &Ambassador, map: &str) {
    let spec = shardmap::parse(map.as_bytes()).unwrap();
    let current = ambassador.topology.borrow().clone();
    let next = Topology::build(&spec, &current, &Arc::new(ShardSettings::default()));
    ambassador.topology.send_replace(Arc::new(next));
}

fn owner(shards: &[Redis], key: &str) -> usize {
    let names: Vec<&str> = shards.iter().map(|shard| shard.name.as_str()).collect();
    KetamaRing::with_names(&names)
        .index_for_key(key.as_bytes(), KeyHash::Fnv1a64, None)
        .unwrap()
}

async fn direct_get(shard: &Redis, key: &str) -> Frame {
    Client::connect(shard.addr())
        .await
        .unwrap()
        .call(&["GET", key])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_reshard_moved_keys_are_read_from_their_previous_owner_and_writes_clear_it() {
    let shards = start_shards(4).await;
    let metrics = Arc::new(Metrics::default());
    let ambassador = Ambassador::start_with(
        &shards[..3],
        "fnv1a64",
        None,
        ShardSettings::default(),
        ClientSettings {
            metrics: metrics.clone(),
            ..ClientSettings::default()
        },
    )
    .await;
    let keys: Vec<String> = (0..400).map(|i| format!("item:{i}")).collect();
    let mut client = Client::connect(ambassador.addr).await.unwrap();
    let sets: Vec<_> = keys.iter().map(|key| args(&["SET", key, key])).collect();
    assert!(client
        .pipeline(&sets)
        .await
        .iter()
        .all(|reply| *reply == Frame::ok()));

    swap(&ambassador, &map_json(&shards, Some(&shards[..3]), false));
    let moved: Vec<&String> = keys.iter().filter(|key| owner(&shards, key) == 3).collect();
    assert!(
        moved.len() > 40,
        "the new shard takes over about a quarter of the keys"
    );
    let gets: Vec<_> = keys.iter().map(|key| args(&["GET", key])).collect();
    for (key, value) in keys.iter().zip(client.pipeline(&gets).await) {
        assert_eq!(value, bulk(key), "{key} is still served during the migration");
    }
    assert_eq!(
        direct_get(&shards[3], moved[0]).await,
        Frame::Null,
        "without copyOnRead a read copies nothing"
    );
    let mut mget = vec!["MGET".to_owned()];
    mget.extend(keys.iter().cloned());
    let Frame::Array(values) = client.call(&mget).await else {
        panic!("MGET answers an array");
    };
    let expected: Vec<Frame> = keys.iter().map(bulk).collect();
    assert_eq!(values, expected, "an MGET over both rings finds every key");

    // A write goes to the new owner and deletes the previous copy, so no fallback can serve it.
    let (written, deleted) = (moved[0].as_str(), moved[1].as_str());
    assert_eq!(client.call(&["SET", written, "new"]).await, Frame::ok());
    assert_eq!(
        client.call(&["DEL", deleted]).await,
        Frame::Integer(0),
        "the count is the new owner's"
    );
    let previous_owner = owner(&shards[..3], written);
    assert_eq!(direct_get(&shards[3], written).await, bulk("new"));
    assert_eq!(direct_get(&shards[previous_owner], written).await, Frame::Null);
    assert_eq!(client.call(&["GET", written]).await, bulk("new"));
    assert_eq!(
        client.call(&["GET", deleted]).await,
        Frame::Null,
        "a deleted key stays deleted"
    );
    assert_eq!(client.call(&["GET", "never-written"]).await, Frame::Null);

    let fallbacks = |result: &'static str| {
        metrics
            .migration_fallbacks
            .get_or_create(&outrigger_sharding_ambassador::metrics::ResultLabels { result })
            .get()
    };
    assert_eq!(fallbacks("hit"), 2 * u64::try_from(moved.len()).unwrap());
    assert!(fallbacks("miss") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_copy_on_read_a_key_found_on_its_previous_owner_is_copied_with_its_expiry() {
    let shards = start_shards(4).await;
    let ambassador = Ambassador::start(&shards[..3], "fnv1a64", None).await;
    let key = (0..)
        .map(|i| format!("session:{i}"))
        .find(|key| owner(&shards, key) == 3)
        .unwrap();
    let mut client = Client::connect(ambassador.addr).await.unwrap();
    assert_eq!(client.call(&["SET", &key, "v", "EX", "100"]).await, Frame::ok());
    swap(&ambassador, &map_json(&shards, Some(&shards[..3]), true));
    assert_eq!(client.call(&["GET", &key]).await, bulk("v"));
    let mut direct = Client::connect(shards[3].addr()).await.unwrap();
    let mut copied = Frame::Null;
    for _ in 0..50 {
        copied = direct.call(&["GET", &key]).await;
        if copied != Frame::Null {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(copied, bulk("v"), "copied to the new owner");
    let Frame::Integer(ttl) = direct.call(&["TTL", &key]).await else {
        panic!("TTL is an integer");
    };
    assert!((90..=100).contains(&ttl), "the expiry came along: {ttl}");

    // After the cut-over, the copied key hits on its new owner alone.
    swap(&ambassador, &map_json(&shards, None, false));
    assert_eq!(client.call(&["GET", &key]).await, bulk("v"));
}

/// Hits and misses seen by cache-aside clients: a miss is written back, as an application does.
#[derive(Default)]
struct Tally {
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
}

impl Tally {
    fn take(&self) -> (u64, u64, u64) {
        (
            self.hits.swap(0, Ordering::Relaxed),
            self.misses.swap(0, Ordering::Relaxed),
            self.errors.swap(0, Ordering::Relaxed),
        )
    }
}

/// One cache-aside client: GET a random key of `keyspace`, SET it on a miss.
async fn cache_aside(
    addr: std::net::SocketAddr,
    keyspace: u64,
    seed: u64,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) {
    let mut client = Client::connect(addr).await.unwrap();
    let mut state = seed | 1;
    while !stop.load(Ordering::Relaxed) {
        // xorshift64: enough spread for picking keys, no dependency.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let key = format!("key:{}", state % keyspace);
        match client.call(&["GET", &key]).await {
            Frame::Bulk(_) => {
                tally.hits.fetch_add(1, Ordering::Relaxed);
            }
            Frame::Null => {
                tally.misses.fetch_add(1, Ordering::Relaxed);
                if client.call(&["SET", &key, "v"]).await != Frame::ok() {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {
                tally.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// What a reshard run measured: the hit rate in the window after the swap (and in each of its
/// slices), and errors.
#[derive(Debug)]
struct Measured {
    hit_rate_before: f64,
    hit_rate_after: f64,
    hit_rate_by_slice: Vec<f64>,
    /// In the first slice after the previous ring is dropped (the operator's cut-over).
    hit_rate_after_cut_over: f64,
    gets_after: u64,
    errors: u64,
}

/// Fills `keyspace` keys on 3 shards, runs `clients` cache-aside clients, swaps to 4 shards (with
/// the previous ring when `migrate` is set, copying on read when it is `Some(true)`) and measures
/// the hit rate for `window` after the swap.
async fn reshard_under_load(
    migrate: Option<bool>,
    keyspace: u64,
    clients: u64,
    window: Duration,
    slices: u32,
) -> Measured {
    let shards = start_shards(4).await;
    let ambassador = Ambassador::start(&shards[..3], "fnv1a64", None).await;
    let mut filler = Client::connect(ambassador.addr).await.unwrap();
    let keys: Vec<u64> = (0..keyspace).collect();
    for chunk in keys.chunks(1_000) {
        let sets: Vec<_> = chunk
            .iter()
            .map(|i| args(&["SET".to_owned(), format!("key:{i}"), "v".to_owned()]))
            .collect();
        filler.pipeline(&sets).await;
    }
    let (tally, stop) = (Arc::new(Tally::default()), Arc::new(AtomicBool::new(false)));
    let mut tasks = Vec::new();
    for seed in 0..clients {
        tasks.push(tokio::spawn(cache_aside(
            ambassador.addr,
            keyspace,
            0x9E37_79B9_7F4A_7C15 ^ (seed + 1),
            tally.clone(),
            stop.clone(),
        )));
    }
    tokio::time::sleep(window / 2).await;
    let (hits, misses, errors_before) = tally.take();
    let hit_rate_before = rate(hits, misses);
    let previous = migrate.map(|_| &shards[..3]);
    swap(
        &ambassador,
        &map_json(&shards, previous, migrate.unwrap_or_default()),
    );
    let started = Instant::now();
    let (mut hits, mut misses, mut errors_after) = (0, 0, 0);
    let mut hit_rate_by_slice = Vec::new();
    for _ in 0..slices.max(1) {
        tokio::time::sleep(window / slices.max(1)).await;
        let (slice_hits, slice_misses, slice_errors) = tally.take();
        hit_rate_by_slice.push(rate(slice_hits, slice_misses));
        (hits, misses, errors_after) = (
            hits + slice_hits,
            misses + slice_misses,
            errors_after + slice_errors,
        );
    }
    let elapsed = started.elapsed();
    swap(&ambassador, &map_json(&shards, None, false));
    tokio::time::sleep(window / slices.max(1)).await;
    let (cut_hits, cut_misses, cut_errors) = tally.take();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    assert!(elapsed >= window);
    Measured {
        hit_rate_before,
        hit_rate_after: rate(hits, misses),
        hit_rate_by_slice,
        hit_rate_after_cut_over: rate(cut_hits, cut_misses),
        gets_after: hits + misses,
        errors: errors_before + errors_after + cut_errors,
    }
}

fn rate(hits: u64, misses: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    let rate = hits as f64 / (hits + misses).max(1) as f64;
    rate
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reshard_under_load_keeps_the_hit_rate_where_a_plain_ring_swap_loses_the_moved_keys() {
    let window = Duration::from_millis(600);
    let plain = reshard_under_load(None, 4_000, 4, window, 1).await;
    let migrated = reshard_under_load(Some(false), 4_000, 4, window, 1).await;
    assert_eq!(
        (plain.errors, migrated.errors),
        (0, 0),
        "no client error in either"
    );
    assert!(
        plain.gets_after > 100 && migrated.gets_after > 100,
        "{plain:?} {migrated:?}"
    );
    assert!(migrated.hit_rate_before > 0.99, "{migrated:?}");
    assert!(
        migrated.hit_rate_after > 0.99,
        "every key is still found: {migrated:?}"
    );
    assert!(
        plain.hit_rate_after < 0.95,
        "a plain swap misses the moved keys until they are written again: {plain:?}"
    );
}

/// The figures of `docs/benchmarks.md`: a larger keyspace and more clients, run by hand under the
/// bench lock (`flock /tmp/outrigger-bench.lock cargo test -p outrigger-sharding-ambassador --test
/// resharding -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run under the bench lock"]
async fn measure_the_hit_rate_through_a_reshard_from_three_to_four_shards() {
    let window = Duration::from_secs(5);
    let runs = [
        ("plain ring swap", None),
        ("previous ring kept", Some(false)),
        ("previous ring kept, copyOnRead", Some(true)),
    ];
    for (label, migrate) in runs {
        let measured = reshard_under_load(migrate, 100_000, 16, window, 5).await;
        let slices: Vec<String> = measured
            .hit_rate_by_slice
            .iter()
            .map(|rate| format!("{rate:.4}"))
            .collect();
        println!(
            "{label}: hit rate before {:.4}, in the {window:?} after the swap {:.4} (by second: {}), in the second after the cut-over {:.4}; {} GETs after the swap, {} errors",
            measured.hit_rate_before,
            measured.hit_rate_after,
            slices.join(" "),
            measured.hit_rate_after_cut_over,
            measured.gets_after,
            measured.errors
        );
        assert_eq!(measured.errors, 0);
    }
}
