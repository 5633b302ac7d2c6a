//! The ambassador's Prometheus metrics, registered under `outrigger_sharding_`. Labels are bounded:
//! shard names come from the shard map, everything else is a fixed set. Keys, endpoints and error
//! strings never become labels.

use outrigger_sidecar_runtime::metrics::{histogram_family, Buckets, REQUEST_LATENCY_SECONDS};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

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
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            shard_operations: Family::default(),
            shard_latency: histogram_family(REQUEST_LATENCY_SECONDS),
            commands: Family::default(),
            shard_errors: Family::default(),
            ejections: Family::default(),
            clients: Gauge::default(),
            client_errors: Family::default(),
            shards: Gauge::default(),
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

    pub fn command(&self, route: &'static str) {
        self.commands.get_or_create(&RouteLabels { route }).inc();
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
