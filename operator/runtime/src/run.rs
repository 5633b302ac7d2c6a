//! `outrigger-operator run`: the admin server on every replica, the controllers on the leader.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use kube::Client;
use outrigger_core::replicated::PdbApi;
use outrigger_sidecar_common::{admin, shutdown};
use prometheus_client::registry::Registry;

use crate::{
    controller::{self, Context},
    leader::{self, ElectionConfig},
    metrics::Metrics,
};

/// Settings of a running operator.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub admin_addr: SocketAddr,
    pub election: Option<ElectionConfig>,
    /// Watch only this namespace (a namespace-scoped installation).
    pub watch_namespace: Option<String>,
}

/// Which PodDisruptionBudget API the cluster serves: `policy/v1` from Kubernetes 1.21, before
/// that only `policy/v1beta1`.
async fn discover_pdb_api(client: &Client) -> PdbApi {
    for (group_version, api) in [
        ("policy/v1", PdbApi::PolicyV1),
        ("policy/v1beta1", PdbApi::PolicyV1beta1),
    ] {
        if let Ok(resources) = client.list_api_group_resources(group_version).await {
            if resources
                .resources
                .iter()
                .any(|r| r.name == "poddisruptionbudgets")
            {
                return api;
            }
        }
    }
    PdbApi::None
}

/// Runs until SIGTERM, or until leadership is lost (then returns an error so the process restarts
/// and stands for election again).
pub async fn run(config: RunConfig) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let state = admin::AdminState::new(registry);
    let listener = admin::bind(config.admin_addr).await?;
    tokio::spawn(admin::serve(listener, state.clone(), shutdown::signal()));
    tracing::info!(addr = %config.admin_addr, "Admin server listening.");

    let pdb_api = discover_pdb_api(&client).await;
    tracing::info!(?pdb_api, "Discovered the PodDisruptionBudget API.");
    let identity = config
        .election
        .as_ref()
        .map_or_else(|| "standalone".to_owned(), |e| e.identity.clone());
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics.clone(),
        pdb_api,
        &identity,
        config.watch_namespace.clone(),
    ));
    // A follower is ready too: it serves its admin endpoints and can take over at any time.
    state.set_ready(true);

    match &config.election {
        None => {
            metrics.leader.set(1);
            controller::run_all(ctx, shutdown::signal()).await;
            Ok(())
        }
        Some(election) => {
            tokio::select! {
                acquired = leader::acquire(client.clone(), election) => acquired?,
                () = shutdown::signal() => return Ok(()),
            }
            metrics.leader.set(1);
            let controllers = controller::run_all(ctx, shutdown::signal());
            tokio::select! {
                () = controllers => Ok(()),
                lost = leader::hold(client, election) => {
                    metrics.leader.set(0);
                    tracing::error!(error = %lost, "Leadership lost; stopping so no stale write can follow.");
                    // Give in-flight requests no chance to continue: exit at once.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Err(lost.into())
                }
            }
        }
    }
}
