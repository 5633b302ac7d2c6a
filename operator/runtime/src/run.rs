//! `outrigger-operator run`: the admin server and the injection webhook on every replica, the
//! controllers on the elected leader.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use kube::Client;
use outrigger_api::common::SidecarKind;
use outrigger_core::{
    inject::SidecarDefaults,
    replicated::PdbApi,
    webhook_config::{FailurePolicy, WebhookEndpoint},
};
use outrigger_sidecar_runtime::{admin, shutdown};
use prometheus_client::registry::Registry;

use crate::{
    controller::{self, Context},
    leader::{self, ElectionConfig},
    metrics::Metrics,
    webhook::{self, certs},
};

/// Settings of a running operator.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub admin_addr: SocketAddr,
    pub election: Option<ElectionConfig>,
    /// Watch only this namespace (a namespace-scoped installation).
    pub watch_namespace: Option<String>,
    pub webhook: Option<WebhookConfig>,
    /// Images and defaults of the sidecars, also used for the splitters of rollouts.
    pub sidecar_defaults: SidecarDefaults,
}

/// Settings of the injection webhook.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub addr: SocketAddr,
    pub namespace: String,
    pub secret_name: String,
    pub config_name: String,
    pub endpoint: WebhookEndpoint,
    pub failure_policy: FailurePolicy,
    pub namespace_labels: BTreeMap<String, String>,
    pub cert_validity: Duration,
    pub cert_renew_before: Duration,
    pub cert_check_interval: Duration,
    pub defaults: SidecarDefaults,
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

/// Native sidecars (init containers with `restartPolicy: Always`) exist from Kubernetes 1.29.
async fn discover_native_sidecars(client: &Client) -> bool {
    match client.apiserver_version().await {
        Ok(version) => {
            let minor: u32 = version.minor.trim_end_matches('+').parse().unwrap_or(0);
            version.major == "1" && minor >= 29
        }
        Err(error) => {
            tracing::warn!(%error, "Cannot read the API server version; assuming no native sidecars.");
            false
        }
    }
}

fn certificate_names(config: &WebhookConfig) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    match &config.endpoint {
        WebhookEndpoint::Service { namespace, name, .. } => {
            for suffix in ["", ".svc", ".svc.cluster.local"] {
                names.push(format!("{name}.{namespace}{suffix}"));
            }
        }
        WebhookEndpoint::Url(url) => {
            let host = url
                .split("://")
                .nth(1)
                .unwrap_or(url)
                .split(['/', ':'])
                .next()
                .unwrap_or_default();
            if !host.is_empty() && !names.iter().any(|n| n == host) {
                names.push(host.to_owned());
            }
        }
    }
    names
}

async fn start_webhook(
    client: &Client,
    config: &WebhookConfig,
    registry: &mut Registry,
    watch_namespace: Option<&str>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let cert_config = certs::CertConfig {
        namespace: config.namespace.clone(),
        secret_name: config.secret_name.clone(),
        webhook_config_name: config.config_name.clone(),
        endpoint: config.endpoint.clone(),
        failure_policy: config.failure_policy,
        namespace_labels: config.namespace_labels.clone(),
        names: certificate_names(config),
        validity: config.cert_validity,
        renew_before: config.cert_renew_before,
        check_interval: config.cert_check_interval,
    };
    // Bound before the first certificate publishes the webhook configuration (see `webhook::bind`).
    let listener = webhook::bind(config.addr).await?;
    let served = Arc::new(certs::ServedCert::default());
    let mut bundle = None;
    // The first certificate must exist before anything is served; retry until the API answers.
    loop {
        match certs::reconcile(client, &cert_config, &served, &mut bundle).await {
            Ok(()) => break,
            Err(error) => {
                tracing::warn!(%error, "Preparing the webhook certificate failed; retrying.");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
    tokio::spawn(certs::maintain(
        client.clone(),
        cert_config,
        served.clone(),
        bundle,
    ));
    let injector = Arc::new(webhook::Injector {
        owners: Arc::new(webhook::CachedOwners::start(client, watch_namespace)),
        defaults: config.defaults.clone(),
        native_sidecars: discover_native_sidecars(client).await,
        metrics: webhook::WebhookMetrics::register(registry),
    });
    Ok(tokio::spawn(async move {
        if let Err(error) = webhook::serve(listener, served, injector, shutdown::signal()).await {
            tracing::error!(%error, "The webhook server stopped.");
        }
    }))
}

/// Runs until SIGTERM, or until leadership is lost (then returns an error so the process restarts
/// and stands for election again). On SIGTERM it returns once the webhook has drained.
pub async fn run(config: RunConfig) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let webhook_server = match &config.webhook {
        Some(webhook) => {
            Some(start_webhook(&client, webhook, &mut registry, config.watch_namespace.as_deref()).await?)
        }
        None => None,
    };
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
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            metrics.clone(),
            pdb_api,
            &identity,
            config.watch_namespace.clone(),
            config.sidecar_defaults.image(SidecarKind::RequestSplitter),
        )
        .with_splitter_resources(config.sidecar_defaults.resources(SidecarKind::RequestSplitter)),
    );
    // A follower is ready too: it serves the webhook and its admin endpoints and can take over.
    state.set_ready(true);

    run_controllers(&config, client, ctx, &metrics).await?;
    // Shutting down: the webhook server drains on the same signal; exiting before it has would
    // cut the reviews still in flight.
    if let Some(server) = webhook_server {
        if let Err(error) = server.await {
            tracing::error!(%error, "The webhook server task failed.");
        }
    }
    Ok(())
}

/// Runs the controllers until SIGTERM: at once without an election, otherwise once elected.
async fn run_controllers(
    config: &RunConfig,
    client: Client,
    ctx: Arc<Context>,
    metrics: &Metrics,
) -> anyhow::Result<()> {
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
                    Err(lost.into())
                }
            }
        }
    }
}
