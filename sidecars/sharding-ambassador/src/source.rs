//! The shard map from a file, re-read when its content changes. A map that fails to parse is
//! logged and ignored: the last good one stays in force.

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::{metrics::ResultLabels, shard::ShardSettings, shardmap, topology::Topology};

/// Polls `path` every `interval` and publishes a new topology whenever the file's content changes
/// and parses. Returns when every receiver is gone.
pub async fn watch_file(
    path: PathBuf,
    interval: Duration,
    settings: Arc<ShardSettings>,
    topology: watch::Sender<Arc<Topology>>,
) {
    let mut last: Option<Vec<u8>> = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = topology.closed() => return,
            _ = ticker.tick() => {}
        }
        let content = match tokio::fs::read(&path).await {
            Ok(content) => content,
            Err(error) => {
                if last.is_some() {
                    warn!(path = %path.display(), %error, "Shard map unreadable; keeping the last one.");
                }
                continue;
            }
        };
        if last.as_ref() == Some(&content) {
            continue;
        }
        match shardmap::parse(&content) {
            Ok(spec) => {
                settings
                    .metrics
                    .shard_map_loads
                    .get_or_create(&ResultLabels { result: "loaded" })
                    .inc();
                settings
                    .metrics
                    .shards
                    .set(i64::try_from(spec.shards.len()).unwrap_or(i64::MAX));
                let next = Topology::build(&spec, &topology.borrow(), &settings);
                info!(path = %path.display(), shards = spec.shards.len(), "Shard map loaded.");
                topology.send_replace(Arc::new(next));
            }
            Err(error) => {
                settings
                    .metrics
                    .shard_map_loads
                    .get_or_create(&ResultLabels { result: "rejected" })
                    .inc();
                warn!(path = %path.display(), %error, category = error.category(), "Shard map rejected; keeping the last good one.");
            }
        }
        last = Some(content);
    }
}
