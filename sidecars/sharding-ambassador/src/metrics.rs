//! The ambassador's Prometheus metrics, registered under `outrigger_sharding_`. Labels are bounded:
//! shard names come from the shard map, everything else is a fixed set. Keys, endpoints and error
//! strings never become labels.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use outrigger_sidecar_runtime::metrics::{histogram_family, Buckets, REQUEST_LATENCY_SECONDS};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
    },
    registry::Registry,
};

use crate::hotkeys::HotKeys;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// `forward`, `split`, `transaction`, `local` or `error`.
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabels {
    pub shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardErrorLabels {
    pub shard: String,
    pub category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardResultLabels {
    pub shard: String,
    /// `ok` or `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabels {
    pub category: &'static str,
}

/// Every metric of the ambassador; cheap to clone (the metrics are shared).
///
/// What every command touches is resolved once (the route counters here, each shard's counters in
/// [`ShardMetrics`]): a family lookup takes a lock shared by both worker threads and hashes the
/// labels, which the hot path can't afford per command.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Exchanges with a shard (a command, or a transaction sent as one), by shard and result.
    pub shard_operations: Family<ShardResultLabels, Counter>,
    /// Time from writing a command to a shard to its reply.
    pub shard_latency: Family<ShardLabels, Histogram, Buckets>,
    pub commands: Family<RouteLabels, Counter>,
    pub shard_errors: Family<ShardErrorLabels, Counter>,
    pub ejections: Family<ShardLabels, Counter>,
    pub clients: Gauge,
    pub client_errors: Family<CategoryLabels, Counter>,
    pub shards: Gauge,
    /// The most frequent keys, sampled; exported as a bounded top-k.
    pub hot_keys: Arc<HotKeys>,
    /// The shards of the map in force, for the skew gauge.
    shards_in_force: Arc<Mutex<Vec<String>>>,
    /// Reads that missed on a moved key's new owner and asked its previous owner: `hit`, `miss`
    /// or `error`.
    pub migration_fallbacks: Family<ResultLabels, Counter>,
    /// Keys copied to their new owner after a fallback hit: `copied`, `newer` (a write got there
    /// first) or `error`.
    pub migration_copies: Family<ResultLabels, Counter>,
    /// Writes that deleted moved keys on their previous owners: `ok` or `error`.
    pub migration_clears: Family<ResultLabels, Counter>,
    /// Shards of the previous ring while a reshard runs, else 0.
    pub previous_shards: Gauge,
    /// 1 while a password from the shard map's Secret is in force.
    pub password_loaded: Gauge,
    /// Reads of the password Secret that gave no password, by cause.
    pub auth_errors: Family<CategoryLabels, Counter>,
    routes: RouteCounters,
}

/// The counters of [`RouteLabels`], resolved once.
#[derive(Clone, Debug)]
struct RouteCounters {
    forward: Counter,
    split: Counter,
    transaction: Counter,
    local: Counter,
    error: Counter,
}

impl RouteCounters {
    fn of(family: &Family<RouteLabels, Counter>) -> RouteCounters {
        let counter = |route| family.get_or_create(&RouteLabels { route }).clone();
        RouteCounters {
            forward: counter("forward"),
            split: counter("split"),
            transaction: counter("transaction"),
            local: counter("local"),
            error: counter("error"),
        }
    }
}

/// One shard's metrics, resolved once per connection.
#[derive(Clone, Debug)]
pub struct ShardMetrics {
    ok: Counter,
    error: Counter,
    latency: Histogram,
}

impl ShardMetrics {
    /// One exchange with the shard ended: its reply after `latency`, or an error (`None`).
    pub fn operation(&self, latency: Option<Duration>) {
        match latency {
            Some(latency) => {
                self.ok.inc();
                self.latency.observe(latency.as_secs_f64());
            }
            None => {
                self.error.inc();
            }
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let commands = Family::default();
        Metrics {
            shard_operations: Family::default(),
            shard_latency: histogram_family(REQUEST_LATENCY_SECONDS),
            routes: RouteCounters::of(&commands),
            commands,
            shard_errors: Family::default(),
            ejections: Family::default(),
            clients: Gauge::default(),
            client_errors: Family::default(),
            shards: Gauge::default(),
            hot_keys: Arc::new(HotKeys::default()),
            shards_in_force: Arc::default(),
            migration_fallbacks: Family::default(),
            migration_copies: Family::default(),
            migration_clears: Family::default(),
            previous_shards: Gauge::default(),
            password_loaded: Gauge::default(),
            auth_errors: Family::default(),
        }
    }
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics::default();
        let r = registry.sub_registry_with_prefix("outrigger_sharding");
        r.register(
            "shard_operations",
            "Exchanges with a shard (a command, or a transaction sent as one), by shard and result",
            metrics.shard_operations.clone(),
        );
        r.register(
            "shard_latency_seconds",
            "Time from writing a command to a shard to its reply, by shard",
            metrics.shard_latency.clone(),
        );
        r.register(
            "commands",
            "Client commands, by route: forwarded to one shard, split over shards, a transaction, answered locally, or an error reply",
            metrics.commands.clone(),
        );
        r.register(
            "shard_errors",
            "Commands that got an error because their shard failed, by shard and cause",
            metrics.shard_errors.clone(),
        );
        r.register(
            "ejections",
            "Times a shard was ejected after repeated failures",
            metrics.ejections.clone(),
        );
        r.register("clients", "Client connections open", metrics.clients.clone());
        r.register(
            "client_errors",
            "Client connections ended by an error, by cause",
            metrics.client_errors.clone(),
        );
        r.register(
            "shard_map_shards",
            "Shards in the shard map in force",
            metrics.shards.clone(),
        );
        r.register(
            "migration_fallbacks",
            "Reads that missed on a moved key's new owner and asked its previous owner, by result (hit, miss, error)",
            metrics.migration_fallbacks.clone(),
        );
        r.register(
            "migration_copies",
            "Keys copied to their new owner after a fallback hit, by result (copied, newer, error)",
            metrics.migration_copies.clone(),
        );
        r.register(
            "migration_clears",
            "Writes that deleted moved keys on their previous owners, by result (ok, error)",
            metrics.migration_clears.clone(),
        );
        r.register(
            "shard_map_previous_shards",
            "Shards of the previous ring while a reshard runs, else 0",
            metrics.previous_shards.clone(),
        );
        r.register(
            "auth_password_loaded",
            "1 while a password from the shard map's Secret is in force",
            metrics.password_loaded.clone(),
        );
        r.register(
            "auth_secret_errors",
            "Reads of the shards' password Secret that gave no password, by cause",
            metrics.auth_errors.clone(),
        );
        r.register_collector(Box::new(SkewCollector {
            shards: metrics.shards_in_force.clone(),
            operations: metrics.shard_operations.clone(),
        }));
        r.register_collector(Box::new(HotKeysCollector(metrics.hot_keys.clone())));
        registry.register_collector(Box::new(ProcessCollector));
        metrics
    }

    pub fn auth_error(&self, category: &'static str) {
        self.auth_errors.get_or_create(&CategoryLabels { category }).inc();
    }

    pub fn fallback(&self, result: &'static str) {
        self.migration_fallbacks
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn copy(&self, result: &'static str) {
        self.migration_copies
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn clear(&self, result: &'static str) {
        self.migration_clears
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts a client command by its route.
    pub fn command(&self, route: &'static str) {
        let routes = &self.routes;
        match route {
            "forward" => routes.forward.inc(),
            "split" => routes.split.inc(),
            "transaction" => routes.transaction.inc(),
            "local" => routes.local.inc(),
            "error" => routes.error.inc(),
            other => self.commands.get_or_create(&RouteLabels { route: other }).inc(),
        };
    }

    /// The metrics of one shard, for its connection to keep.
    pub fn for_shard(&self, shard: &str) -> ShardMetrics {
        let result = |result| {
            self.shard_operations
                .get_or_create(&ShardResultLabels {
                    shard: shard.to_owned(),
                    result,
                })
                .clone()
        };
        ShardMetrics {
            ok: result("ok"),
            error: result("error"),
            latency: self
                .shard_latency
                .get_or_create(&ShardLabels {
                    shard: shard.to_owned(),
                })
                .clone(),
        }
    }

    /// The shards of the map now in force: the skew gauge compares their operations.
    pub fn set_shards_in_force(&self, shards: impl IntoIterator<Item = String>) {
        let mut names = self
            .shards_in_force
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        names.clear();
        names.extend(shards);
    }

    pub fn shard_error(&self, shard: &str, category: &'static str) {
        self.shard_errors
            .get_or_create(&ShardErrorLabels {
                shard: shard.to_owned(),
                category,
            })
            .inc();
    }

    /// One exchange with `shard` ended: its reply after `latency`, or an error (`None`).
    pub fn shard_operation(&self, shard: &str, latency: Option<std::time::Duration>) {
        let result = if latency.is_some() { "ok" } else { "error" };
        self.shard_operations
            .get_or_create(&ShardResultLabels {
                shard: shard.to_owned(),
                result,
            })
            .inc();
        if let Some(latency) = latency {
            self.shard_latency
                .get_or_create(&ShardLabels {
                    shard: shard.to_owned(),
                })
                .observe(latency.as_secs_f64());
        }
    }

    pub fn ejected(&self, shard: &str) {
        self.ejections
            .get_or_create(&ShardLabels {
                shard: shard.to_owned(),
            })
            .inc();
    }
}

/// `key_skew_ratio`: how unevenly the traffic spreads over the shards of the map in force, the
/// operations of the busiest shard over the mean (1 is even; with 4 shards, 4 means one shard takes
/// everything). Computed at scrape time over every operation since start; `max(rate(...)) /
/// avg(rate(...))` of `shard_operations_total` gives it over a window.
#[derive(Debug)]
struct SkewCollector {
    shards: Arc<Mutex<Vec<String>>>,
    operations: Family<ShardResultLabels, Counter>,
}

impl SkewCollector {
    fn ratio(&self) -> Option<f64> {
        let shards = self
            .shards
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let counts: Vec<u64> = shards
            .into_iter()
            .map(|shard| {
                ["ok", "error"]
                    .into_iter()
                    .map(|result| {
                        self.operations
                            .get_or_create(&ShardResultLabels {
                                shard: shard.clone(),
                                result,
                            })
                            .get()
                    })
                    .sum()
            })
            .collect();
        skew(&counts)
    }
}

/// The largest count over the mean; `None` without shards or operations.
#[allow(clippy::cast_precision_loss)] // counts far below 2^52
pub fn skew(counts: &[u64]) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    let max = counts.iter().copied().max()?;
    (total > 0).then(|| max as f64 * counts.len() as f64 / total as f64)
}

impl Collector for SkewCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(ratio) = self.ratio() else {
            return Ok(());
        };
        let gauge = ConstGauge::new(ratio);
        let metric = encoder.encode_descriptor(
            "key_skew_ratio",
            "Operations of the busiest shard of the map in force over the mean of its shards (1 is even)",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

/// `process_resident_memory_bytes`, the Prometheus convention, from `/proc/self/status`: how the
/// ambassador's memory stays bounded under bad input is read from its own metrics.
#[derive(Debug)]
struct ProcessCollector;

/// VmRSS of this process, in bytes (Linux only).
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(bytes) = resident_memory_bytes() else {
            return Ok(());
        };
        let gauge = ConstGauge::new(i64::try_from(bytes).unwrap_or(i64::MAX));
        let metric = encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HotKeyLabels {
    /// 1 for the hottest key.
    rank: String,
    /// The key, shortened and made printable.
    key: String,
    shard: String,
}

/// `hot_key_share{rank,key,shard}`: the top keys of the sampled commands and their share of them.
/// At most [`crate::hotkeys::EXPORTED`] series at a time, whatever the keys.
#[derive(Debug)]
struct HotKeysCollector(Arc<HotKeys>);

impl Collector for HotKeysCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let top = self.0.top();
        let sampled = ConstCounter::new(self.0.sampled());
        let metric = encoder.encode_descriptor(
            "hot_keys_sampled",
            "Commands sampled for the hot key estimate since start",
            None,
            sampled.metric_type(),
        )?;
        sampled.encode(metric)?;
        if top.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "hot_key_share",
            "Estimated share of keyed commands for each of the hottest keys (sampled, decaying), by rank",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (rank, hot) in top.into_iter().enumerate() {
            let labels = HotKeyLabels {
                rank: (rank + 1).to_string(),
                key: hot.key,
                shard: hot.shard.map(|shard| shard.to_string()).unwrap_or_default(),
            };
            ConstGauge::new(hot.share).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    fn scrape(registry: &Registry) -> String {
        let mut text = String::new();
        encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn skew_is_the_busiest_shard_over_the_mean() {
        assert_eq!(skew(&[10, 10, 10, 10]), Some(1.0));
        assert_eq!(skew(&[40, 0, 0, 0]), Some(4.0));
        assert_eq!(skew(&[0, 0]), None);
        assert_eq!(skew(&[]), None);
    }

    #[test]
    fn per_shard_operations_skew_and_hot_keys_are_scraped() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.set_shards_in_force(["s-0".to_owned(), "s-1".to_owned()]);
        let s0 = metrics.for_shard("s-0");
        for _ in 0..3 {
            s0.operation(Some(Duration::from_micros(300)));
        }
        metrics.for_shard("s-1").operation(None);
        for _ in 0..u64::from(metrics.hot_keys.every()) {
            metrics.hot_keys.record(b"user:1", Some(Arc::from("s-0")));
        }
        metrics.command("forward");
        let text = scrape(&registry);
        for line in [
            r#"outrigger_sharding_shard_operations_total{shard="s-0",result="ok"} 3"#,
            r#"outrigger_sharding_shard_operations_total{shard="s-1",result="error"} 1"#,
            r#"outrigger_sharding_shard_latency_seconds_count{shard="s-0"} 3"#,
            "outrigger_sharding_key_skew_ratio 1.5",
            r#"outrigger_sharding_hot_key_share{rank="1",key="user:1",shard="s-0"} 1.0"#,
            r#"outrigger_sharding_commands_total{route="forward"} 1"#,
            "process_resident_memory_bytes ",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
