//! Command-line arguments.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use clap::Parser;

use crate::{client::ClientSettings, metrics::Metrics, server::ServerLimits, shard::ShardSettings};

/// Routes Redis commands to the shard owning each key, placing keys as a twemproxy ketama pool.
#[derive(Debug, Clone, Parser)]
#[command(name = "outrigger-sharding-ambassador", version)]
pub struct Args {
    /// Address clients connect to.
    #[arg(long, env = "OUTRIGGER_LISTEN", default_value = "127.0.0.1:6379")]
    pub listen: SocketAddr,
    /// Address of the admin server (`/metrics`, `/healthz`, `/readyz`: ready once a shard map is
    /// loaded).
    #[arg(long, env = "OUTRIGGER_ADMIN_ADDR", default_value = "0.0.0.0:9902")]
    pub admin_addr: SocketAddr,
    /// Shard map document (JSON), re-read when it changes.
    #[arg(long, env = "OUTRIGGER_SHARD_MAP")]
    pub shard_map: PathBuf,
    /// How often the shard map file is checked for changes, in milliseconds.
    #[arg(long, env = "OUTRIGGER_SHARD_MAP_POLL_MS", default_value_t = 1000)]
    pub shard_map_poll_ms: u64,
    /// Log filter (`info`, `outrigger_sharding_ambassador=debug`).
    #[arg(long, env = "OUTRIGGER_LOG", default_value = "info")]
    pub log_level: String,
    /// Log format: `json` or `text`.
    #[arg(long, env = "OUTRIGGER_LOG_FORMAT", default_value = "json")]
    pub log_format: outrigger_sidecar_runtime::telemetry::LogFormat,
    /// Clients served at once.
    #[arg(long, env = "OUTRIGGER_MAX_CLIENTS", default_value_t = 10_000)]
    pub max_clients: usize,
    /// How long connected clients get to leave after SIGTERM, in milliseconds.
    #[arg(long, env = "OUTRIGGER_DRAIN_MS", default_value_t = 5000)]
    pub drain_ms: u64,
    /// Connect timeout to a shard, in milliseconds.
    #[arg(long, env = "OUTRIGGER_CONNECT_TIMEOUT_MS", default_value_t = 500)]
    pub connect_timeout_ms: u64,
    /// How long a shard may take to answer, in milliseconds.
    #[arg(long, env = "OUTRIGGER_REQUEST_TIMEOUT_MS", default_value_t = 1000)]
    pub request_timeout_ms: u64,
    /// Failures in a row that eject a shard.
    #[arg(long, env = "OUTRIGGER_FAILURE_LIMIT", default_value_t = 3)]
    pub failure_limit: u32,
    /// How long an ejected shard is left alone, in milliseconds.
    #[arg(long, env = "OUTRIGGER_RETRY_INTERVAL_MS", default_value_t = 5000)]
    pub retry_interval_ms: u64,
}

impl Args {
    /// The settings of shard connections.
    pub fn shard_settings(&self, metrics: &Arc<Metrics>) -> ShardSettings {
        ShardSettings {
            metrics: metrics.clone(),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            failure_limit: self.failure_limit.max(1),
            retry_interval: Duration::from_millis(self.retry_interval_ms),
            ..ShardSettings::default()
        }
    }

    /// Client count and drain.
    pub fn server_limits(&self) -> ServerLimits {
        ServerLimits {
            max_clients: self.max_clients,
            drain: Duration::from_millis(self.drain_ms),
        }
    }

    /// The settings of client connections.
    pub fn client_settings(&self, metrics: &Arc<Metrics>) -> ClientSettings {
        ClientSettings {
            metrics: metrics.clone(),
            // A reply is awaited a little longer than the shard may take to connect and answer,
            // so the shard's own error, which names the cause, normally comes first.
            reply_timeout: Duration::from_millis(self.connect_timeout_ms + self.request_timeout_ms + 1000),
            ..ClientSettings::default()
        }
    }
}
