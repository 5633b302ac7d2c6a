//! The Redis collector against Debian's `prometheus-redis-exporter`, both scraping one real
//! `redis-server` on loopback: the same names, types and labels, so dashboards and alerts written
//! for the exporter keep working.

// Test helpers: a failed setup step should stop the test right there.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;

use serde_json::json;
use support::{adapter, get, redis, redis_cli, redis_exporter, sample};

/// Family name to type, from `# TYPE` lines.
fn types(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect()
}

/// The core set named by the exporter's documentation and dashboards.
const CORE: &[&str] = &[
    "redis_up",
    "redis_instance_info",
    "redis_uptime_in_seconds",
    "redis_connected_clients",
    "redis_blocked_clients",
    "redis_memory_used_bytes",
    "redis_memory_max_bytes",
    "redis_commands_processed_total",
    "redis_commands_total",
    "redis_commands_duration_seconds_total",
    "redis_keyspace_hits_total",
    "redis_keyspace_misses_total",
    "redis_expired_keys_total",
    "redis_evicted_keys_total",
    "redis_connections_received_total",
    "redis_net_input_bytes_total",
    "redis_net_output_bytes_total",
    "redis_db_keys",
    "redis_db_keys_expiring",
    "redis_db_avg_ttl_seconds",
    "redis_rdb_last_save_timestamp_seconds",
    "redis_cpu_sys_seconds_total",
    "redis_cpu_user_seconds_total",
    "redis_connected_slaves",
    "redis_mem_fragmentation_ratio",
];

#[test]
fn the_redis_collector_speaks_redis_exporter_names_types_and_labels() {
    let (_redis, redis_port) = redis();
    for i in 0..20 {
        redis_cli(redis_port, &["set", &format!("key{i}"), "v"]);
    }
    redis_cli(redis_port, &["-n", "3", "set", "other", "v", "ex", "1000"]);
    redis_cli(redis_port, &["get", "key1"]);
    redis_cli(redis_port, &["get", "missing"]);
    let (_exporter, exporter_port) = redis_exporter(redis_port);
    let (_adapter, adapter_port) = adapter(&json!({"redis": format!("127.0.0.1:{redis_port}")}));

    let ours = get(adapter_port, "/metrics", None).body;
    let theirs = get(exporter_port, "/metrics", None).body;
    let (our_types, their_types) = (types(&ours), types(&theirs));

    for name in CORE {
        assert!(our_types.contains_key(*name), "the adapter lacks {name}:\n{ours}");
        assert_eq!(our_types.get(*name), their_types.get(*name), "type of {name}");
    }
    let ours_redis: Vec<&String> = our_types.keys().filter(|n| n.starts_with("redis_")).collect();
    for name in &ours_redis {
        assert_eq!(
            their_types.get(*name),
            our_types.get(*name),
            "{name} is not an exporter metric of the same type"
        );
    }
    let theirs_redis: Vec<&String> = their_types
        .keys()
        .filter(|n| n.starts_with("redis_") && !n.starts_with("redis_exporter_"))
        .collect();
    let missing: Vec<&&String> = theirs_redis
        .iter()
        .filter(|n| !our_types.contains_key(n.as_str()))
        .collect();
    eprintln!(
        "overlap: {} of the exporter's {} redis_ families; not emitted: {missing:?}",
        theirs_redis.len() - missing.len(),
        theirs_redis.len()
    );

    // Values that both read from the same INFO and do not move between the two scrapes.
    for series in [
        "redis_up",
        "redis_db_keys{db=\"db0\"}",
        "redis_db_keys{db=\"db3\"}",
        "redis_db_keys{db=\"db15\"}",
        "redis_db_keys_expiring{db=\"db3\"}",
        "redis_keyspace_hits_total",
        "redis_keyspace_misses_total",
        "redis_config_maxclients",
        "redis_memory_max_bytes",
    ] {
        let (a, b) = (sample(&ours, series), sample(&theirs, series));
        assert!(a.is_some(), "{series} missing from the adapter");
        assert_eq!(a, b, "{series}");
    }
    assert_eq!(sample(&ours, "redis_db_keys{db=\"db0\"}"), Some(20.0));
    assert!(ours.contains("redis_commands_total{cmd=\"set\"}"), "{ours}");
}

#[test]
fn a_redis_that_is_down_reads_as_redis_up_zero() {
    let (redis_process, redis_port) = redis();
    let (_adapter, adapter_port) = adapter(&json!({"redis": format!("127.0.0.1:{redis_port}")}));
    assert_eq!(
        sample(&get(adapter_port, "/metrics", None).body, "redis_up"),
        Some(1.0)
    );
    drop(redis_process);
    let down = get(adapter_port, "/metrics", None).body;
    assert_eq!(sample(&down, "redis_up"), Some(0.0), "{down}");
    assert_eq!(
        sample(&down, "metrics_adapter_collector_up{collector=\"redis\"}"),
        Some(0.0)
    );
    assert!(
        !down.contains("redis_db_keys"),
        "no values of a Redis that did not answer"
    );
}
