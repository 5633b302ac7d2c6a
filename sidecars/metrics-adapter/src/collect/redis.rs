//! The Redis collector: `INFO ALL` and `CONFIG GET databases` on one kept connection, turned into
//! the metric names of `redis_exporter` so that its dashboards and alerts keep working.
//!
//! Names that `promtool check metrics` rejects (`*_duration_sec`, counters without `_total`) are
//! left out; `docs/metrics-adapter.md` lists them.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::{
    resp::{self, Reply},
    CollectError,
};
use crate::model::{Family, Kind};

/// Longest INFO reply read (a Redis with thousands of clients or commands stays far below).
const MAX_REPLY_BYTES: usize = 4 << 20;

/// INFO fields exported as gauges under `redis_<name>`; `scale` turns units into base units.
const GAUGES: &[(&str, &str, f64)] = &[
    ("active_defrag_running", "active_defrag_running", 1.0),
    ("allocator_active", "allocator_active_bytes", 1.0),
    ("allocator_allocated", "allocator_allocated_bytes", 1.0),
    ("allocator_frag_bytes", "allocator_frag_bytes", 1.0),
    ("allocator_frag_ratio", "allocator_frag_ratio", 1.0),
    ("allocator_resident", "allocator_resident_bytes", 1.0),
    ("allocator_rss_bytes", "allocator_rss_bytes", 1.0),
    ("allocator_rss_ratio", "allocator_rss_ratio", 1.0),
    ("aof_enabled", "aof_enabled", 1.0),
    ("aof_last_cow_size", "aof_last_cow_size_bytes", 1.0),
    ("aof_rewrite_in_progress", "aof_rewrite_in_progress", 1.0),
    ("aof_rewrite_scheduled", "aof_rewrite_scheduled", 1.0),
    ("blocked_clients", "blocked_clients", 1.0),
    (
        "client_recent_max_input_buffer",
        "client_recent_max_input_buffer_bytes",
        1.0,
    ),
    (
        "client_recent_max_output_buffer",
        "client_recent_max_output_buffer_bytes",
        1.0,
    ),
    ("clients_in_timeout_table", "clients_in_timeout_table", 1.0),
    ("cluster_connections", "cluster_connections", 1.0),
    ("cluster_enabled", "cluster_enabled", 1.0),
    ("connected_clients", "connected_clients", 1.0),
    ("connected_slaves", "connected_slaves", 1.0),
    ("active_defrag_hits", "defrag_hits", 1.0),
    ("active_defrag_misses", "defrag_misses", 1.0),
    ("active_defrag_key_hits", "defrag_key_hits", 1.0),
    ("active_defrag_key_misses", "defrag_key_misses", 1.0),
    ("expired_stale_perc", "expired_stale_percentage", 1.0),
    ("io_threads_active", "io_threads_active", 1.0),
    ("latest_fork_usec", "latest_fork_seconds", 1e-6),
    ("lazyfree_pending_objects", "lazyfree_pending_objects", 1.0),
    ("loading", "loading_dump_file", 1.0),
    ("master_repl_offset", "master_repl_offset", 1.0),
    ("maxclients", "config_maxclients", 1.0),
    ("maxmemory", "memory_max_bytes", 1.0),
    ("maxmemory", "config_maxmemory", 1.0),
    ("mem_clients_normal", "mem_clients_normal", 1.0),
    ("mem_clients_slaves", "mem_clients_slaves", 1.0),
    ("mem_fragmentation_bytes", "mem_fragmentation_bytes", 1.0),
    ("mem_fragmentation_ratio", "mem_fragmentation_ratio", 1.0),
    (
        "mem_not_counted_for_evict",
        "mem_not_counted_for_eviction_bytes",
        1.0,
    ),
    ("module_fork_in_progress", "module_fork_in_progress", 1.0),
    ("module_fork_last_cow_size", "module_fork_last_cow_size", 1.0),
    ("number_of_cached_scripts", "number_of_cached_scripts", 1.0),
    ("process_id", "process_id", 1.0),
    ("pubsub_channels", "pubsub_channels", 1.0),
    ("pubsub_patterns", "pubsub_patterns", 1.0),
    ("rdb_bgsave_in_progress", "rdb_bgsave_in_progress", 1.0),
    ("rdb_changes_since_last_save", "rdb_changes_since_last_save", 1.0),
    ("rdb_last_cow_size", "rdb_last_cow_size_bytes", 1.0),
    ("rdb_last_save_time", "rdb_last_save_timestamp_seconds", 1.0),
    ("repl_backlog_active", "repl_backlog_is_active", 1.0),
    (
        "repl_backlog_first_byte_offset",
        "repl_backlog_first_byte_offset",
        1.0,
    ),
    ("repl_backlog_histlen", "repl_backlog_history_bytes", 1.0),
    ("repl_backlog_size", "replication_backlog_bytes", 1.0),
    ("second_repl_offset", "second_repl_offset", 1.0),
    ("slave_expires_tracked_keys", "slave_expires_tracked_keys", 1.0),
    ("sync_full", "replica_resyncs_full", 1.0),
    ("sync_partial_err", "replica_partial_resync_denied", 1.0),
    ("sync_partial_ok", "replica_partial_resync_accepted", 1.0),
    ("tracking_clients", "tracking_clients", 1.0),
    ("tracking_total_items", "tracking_total_items", 1.0),
    ("tracking_total_keys", "tracking_total_keys", 1.0),
    ("tracking_total_prefixes", "tracking_total_prefixes", 1.0),
    ("uptime_in_seconds", "uptime_in_seconds", 1.0),
    ("used_memory", "memory_used_bytes", 1.0),
    ("used_memory_dataset", "memory_used_dataset_bytes", 1.0),
    ("used_memory_lua", "memory_used_lua_bytes", 1.0),
    ("used_memory_overhead", "memory_used_overhead_bytes", 1.0),
    ("used_memory_peak", "memory_used_peak_bytes", 1.0),
    ("used_memory_rss", "memory_used_rss_bytes", 1.0),
    ("used_memory_scripts", "memory_used_scripts_bytes", 1.0),
    ("used_memory_startup", "memory_used_startup_bytes", 1.0),
];

/// INFO fields exported as counters.
const COUNTERS: &[(&str, &str)] = &[
    ("evicted_keys", "evicted_keys_total"),
    ("expired_keys", "expired_keys_total"),
    ("keyspace_hits", "keyspace_hits_total"),
    ("keyspace_misses", "keyspace_misses_total"),
    ("rejected_connections", "rejected_connections_total"),
    ("total_commands_processed", "commands_processed_total"),
    ("total_connections_received", "connections_received_total"),
    ("total_net_input_bytes", "net_input_bytes_total"),
    ("total_net_output_bytes", "net_output_bytes_total"),
    ("used_cpu_sys", "cpu_sys_seconds_total"),
    ("used_cpu_sys_children", "cpu_sys_children_seconds_total"),
    ("used_cpu_sys_main_thread", "cpu_sys_main_thread_seconds_total"),
    ("used_cpu_user", "cpu_user_seconds_total"),
    ("used_cpu_user_children", "cpu_user_children_seconds_total"),
    ("used_cpu_user_main_thread", "cpu_user_main_thread_seconds_total"),
];

/// `ok`/`err` fields, exported as 1/0.
const STATUSES: &[(&str, &str)] = &[
    ("aof_last_bgrewrite_status", "aof_last_bgrewrite_status"),
    ("aof_last_write_status", "aof_last_write_status"),
    ("rdb_last_bgsave_status", "rdb_last_bgsave_status"),
];

/// Fields that label `redis_instance_info`, as `redis_exporter` picks them.
const INSTANCE_LABELS: &[&str] = &[
    "maxmemory_policy",
    "os",
    "process_id",
    "redis_build_id",
    "redis_mode",
    "redis_version",
    "role",
    "run_id",
    "tcp_port",
];

/// The families of one `INFO ALL` reply. `databases` (from `CONFIG GET databases`) gives every
/// database a `redis_db_keys` sample, empty ones included, as `redis_exporter` does.
pub fn families_from_info(info: &str, databases: Option<u32>) -> Vec<Family> {
    let fields: Vec<(&str, &str)> = info
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.trim_end_matches('\r').split_once(':'))
        .collect();
    // One lookup per exported field: an INFO ALL has a few hundred lines.
    let by_name: HashMap<&str, &str> = fields.iter().copied().collect();
    let field = |name: &str| by_name.get(name).copied();
    let number = |name: &str| field(name).and_then(|v| v.parse::<f64>().ok());
    let mut families = Vec::with_capacity(GAUGES.len() + COUNTERS.len() + 16);
    families.push(Family::single(
        "redis_up",
        "Whether Redis answered",
        Kind::Gauge,
        1.0,
    ));

    let mut info_family = Family::new(
        "redis_instance_info",
        "Information about the Redis instance",
        Kind::Gauge,
    );
    let labels = INSTANCE_LABELS
        .iter()
        .filter_map(|&name| field(name).map(|v| (name.to_owned(), v.to_owned())))
        .collect();
    info_family.push(labels, 1.0);
    families.push(info_family);

    for &(field_name, metric, scale) in GAUGES {
        if let Some(value) = number(field_name) {
            families.push(Family::single(
                &format!("redis_{metric}"),
                &format!("{field_name} metric"),
                Kind::Gauge,
                value * scale,
            ));
        }
    }
    if let (Some(now), Some(uptime)) = (number("server_time_usec"), number("uptime_in_seconds")) {
        families.push(Family::single(
            "redis_start_time_seconds",
            "Start time of the Redis instance since unix epoch in seconds.",
            Kind::Gauge,
            (now / 1e6 - uptime).floor(),
        ));
    }
    for &(field_name, metric) in COUNTERS {
        if let Some(value) = number(field_name) {
            families.push(Family::single(
                &format!("redis_{metric}"),
                &format!("{field_name} metric"),
                Kind::Counter,
                value,
            ));
        }
    }
    for &(field_name, metric) in STATUSES {
        if let Some(value) = field(field_name) {
            families.push(Family::single(
                &format!("redis_{metric}"),
                &format!("{field_name} metric"),
                Kind::Gauge,
                if value == "ok" { 1.0 } else { 0.0 },
            ));
        }
    }
    families.extend(commandstats(&fields));
    families.extend(keyspace(&fields, databases));
    families
}

/// `cmdstat_get:calls=2,usec=16,usec_per_call=8.00,rejected_calls=0,failed_calls=0`.
fn commandstats(fields: &[(&str, &str)]) -> Vec<Family> {
    let mut calls = Family::new(
        "redis_commands_total",
        "Total number of calls per command",
        Kind::Counter,
    );
    let mut duration = Family::new(
        "redis_commands_duration_seconds_total",
        "Total amount of time in seconds spent per command",
        Kind::Counter,
    );
    let mut rejected = Family::new(
        "redis_commands_rejected_calls_total",
        "Total number of errors prior command execution per command",
        Kind::Counter,
    );
    let mut failed = Family::new(
        "redis_commands_failed_calls_total",
        "Total number of errors within command execution per command",
        Kind::Counter,
    );
    for (key, value) in fields {
        let Some(command) = key.strip_prefix("cmdstat_") else {
            continue;
        };
        let label = || vec![("cmd".to_owned(), command.to_owned())];
        for (stat, number) in value.split(',').filter_map(|kv| kv.split_once('=')) {
            let Ok(number) = number.parse::<f64>() else {
                continue;
            };
            match stat {
                "calls" => calls.push(label(), number),
                "usec" => duration.push(label(), number / 1e6),
                "rejected_calls" => rejected.push(label(), number),
                "failed_calls" => failed.push(label(), number),
                _ => {}
            }
        }
    }
    vec![calls, duration, rejected, failed]
}

/// `db0:keys=1,expires=0,avg_ttl=0`.
fn keyspace(fields: &[(&str, &str)], databases: Option<u32>) -> Vec<Family> {
    let mut keys = Family::new("redis_db_keys", "Total number of keys by DB", Kind::Gauge);
    let mut expiring = Family::new(
        "redis_db_keys_expiring",
        "Total number of expiring keys by DB",
        Kind::Gauge,
    );
    let mut ttl = Family::new("redis_db_avg_ttl_seconds", "Avg TTL in seconds", Kind::Gauge);
    let mut seen = Vec::new();
    for (key, value) in fields {
        let Some(index) = key.strip_prefix("db").and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let db = || vec![("db".to_owned(), format!("db{index}"))];
        for (stat, number) in value.split(',').filter_map(|kv| kv.split_once('=')) {
            let Ok(number) = number.parse::<f64>() else {
                continue;
            };
            match stat {
                "keys" => keys.push(db(), number),
                "expires" => expiring.push(db(), number),
                "avg_ttl" => ttl.push(db(), number / 1000.0),
                _ => {}
            }
        }
        seen.push(index);
    }
    for index in (0..databases.unwrap_or(0).min(1024)).filter(|i| !seen.contains(i)) {
        keys.push(vec![("db".to_owned(), format!("db{index}"))], 0.0);
        expiring.push(vec![("db".to_owned(), format!("db{index}"))], 0.0);
    }
    vec![keys, expiring, ttl]
}

/// The collector: one connection, kept between scrapes and opened again after any error.
#[derive(Debug)]
pub struct RedisCollector {
    address: SocketAddr,
    connection: Option<TcpStream>,
    buffer: Vec<u8>,
    request: Vec<u8>,
}

impl RedisCollector {
    pub fn new(address: SocketAddr) -> RedisCollector {
        let mut request = Vec::new();
        resp::encode_command(&mut request, &["INFO", "ALL"]);
        resp::encode_command(&mut request, &["CONFIG", "GET", "databases"]);
        RedisCollector {
            address,
            connection: None,
            buffer: Vec::with_capacity(64 * 1024),
            request,
        }
    }

    /// Collects once; on failure the families say `redis_up 0`, like `redis_exporter`'s.
    pub async fn collect(&mut self, connect_timeout: Duration) -> (Vec<Family>, Option<CollectError>) {
        match self.exchange(connect_timeout).await {
            Ok((info, databases)) => (families_from_info(&info, databases), None),
            Err(error) => {
                self.connection = None;
                (
                    vec![Family::single(
                        "redis_up",
                        "Whether Redis answered",
                        Kind::Gauge,
                        0.0,
                    )],
                    Some(error),
                )
            }
        }
    }

    async fn exchange(&mut self, connect_timeout: Duration) -> Result<(String, Option<u32>), CollectError> {
        if self.connection.is_none() {
            let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(self.address))
                .await
                .map_err(|_| CollectError::Timeout)?
                .map_err(CollectError::Connect)?;
            let _ = stream.set_nodelay(true);
            self.connection = Some(stream);
        }
        let Some(stream) = self.connection.as_mut() else {
            return Err(CollectError::Protocol("no connection".into()));
        };
        stream.write_all(&self.request).await.map_err(CollectError::Io)?;
        self.buffer.clear();
        let mut replies = Vec::with_capacity(2);
        let mut consumed = 0;
        while replies.len() < 2 {
            match resp::parse(&self.buffer[consumed..], MAX_REPLY_BYTES)
                .map_err(|e| CollectError::Protocol(e.to_string()))?
            {
                Some((reply, used)) => {
                    consumed += used;
                    replies.push(reply);
                    continue;
                }
                None if self.buffer.len() > MAX_REPLY_BYTES + 1024 => return Err(CollectError::TooLarge),
                None => {}
            }
            let read = stream
                .read_buf(&mut self.buffer)
                .await
                .map_err(CollectError::Io)?;
            if read == 0 {
                return Err(CollectError::Protocol("Redis closed the connection".into()));
            }
        }
        let mut replies = replies.into_iter();
        let info = match replies.next() {
            Some(Reply::Bulk(Some(bytes))) => String::from_utf8_lossy(&bytes).into_owned(),
            Some(Reply::Error(message)) => return Err(CollectError::Protocol(message)),
            _ => return Err(CollectError::Protocol("INFO did not answer a bulk string".into())),
        };
        // CONFIG may be renamed or disabled; the databases count is then unknown.
        let databases = match replies.next() {
            Some(Reply::Array(Some(items))) => match items.get(1) {
                Some(Reply::Bulk(Some(value))) => {
                    std::str::from_utf8(value).ok().and_then(|v| v.parse().ok())
                }
                _ => None,
            },
            _ => None,
        };
        Ok((info, databases))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\nos:Linux\r\nprocess_id:42\r\n\
        uptime_in_seconds:100\r\nserver_time_usec:1000000000000\r\n# Clients\r\nconnected_clients:3\r\n\
        # Memory\r\nused_memory:1024\r\n# Persistence\r\nrdb_last_bgsave_status:ok\r\naof_last_write_status:err\r\n\
        # Stats\r\nkeyspace_hits:7\r\nlatest_fork_usec:250\r\n# Commandstats\r\n\
        cmdstat_get:calls=2,usec=16,usec_per_call=8.00,rejected_calls=0,failed_calls=1\r\n\
        # Keyspace\r\ndb0:keys=10,expires=2,avg_ttl=1500\r\n";

    fn value(families: &[Family], name: &str) -> Vec<(Vec<(String, String)>, f64)> {
        families
            .iter()
            .filter(|f| f.name == name)
            .flat_map(|f| f.samples.iter().map(|s| (s.labels.clone(), s.value)))
            .collect()
    }

    #[test]
    fn info_fields_become_redis_exporter_metrics_in_base_units() {
        let families = families_from_info(INFO, Some(2));
        assert_eq!(value(&families, "redis_up"), [(vec![], 1.0)]);
        assert_eq!(value(&families, "redis_connected_clients"), [(vec![], 3.0)]);
        assert_eq!(value(&families, "redis_memory_used_bytes"), [(vec![], 1024.0)]);
        assert_eq!(value(&families, "redis_keyspace_hits_total"), [(vec![], 7.0)]);
        assert_eq!(value(&families, "redis_latest_fork_seconds"), [(vec![], 0.00025)]);
        assert_eq!(value(&families, "redis_rdb_last_bgsave_status"), [(vec![], 1.0)]);
        assert_eq!(value(&families, "redis_aof_last_write_status"), [(vec![], 0.0)]);
        assert_eq!(
            value(&families, "redis_start_time_seconds"),
            [(vec![], 999_900.0)]
        );
        let cmd = vec![("cmd".to_owned(), "get".to_owned())];
        assert_eq!(value(&families, "redis_commands_total"), [(cmd.clone(), 2.0)]);
        assert_eq!(
            value(&families, "redis_commands_failed_calls_total"),
            [(cmd, 1.0)]
        );
        let db = |n: &str| vec![("db".to_owned(), n.to_owned())];
        assert_eq!(
            value(&families, "redis_db_keys"),
            [(db("db0"), 10.0), (db("db1"), 0.0)]
        );
        assert_eq!(value(&families, "redis_db_avg_ttl_seconds"), [(db("db0"), 1.5)]);
        let info = &value(&families, "redis_instance_info")[0].0;
        assert!(info.contains(&("redis_version".to_owned(), "7.0.15".to_owned())));
    }
}
