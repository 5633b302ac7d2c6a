//! Command line of `outrigger-operator`.

use std::{io::Write, net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use outrigger_sidecar_runtime::telemetry::{self, LogFormat};

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use outrigger_api::common::SidecarKind;
use outrigger_core::{
    inject::SidecarDefaults,
    webhook_config::{FailurePolicy, WebhookEndpoint},
};

use crate::{
    leader::ElectionConfig,
    run::{run, RunConfig, WebhookConfig},
};

/// The Outrigger operator.
#[derive(Debug, Parser)]
#[command(name = "outrigger-operator", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print every CustomResourceDefinition as YAML (or write one file per CRD with --dir).
    Crd {
        /// Write `<name>.yaml` files into this directory instead of printing one stream.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run the controllers (on the elected leader) and the admin server.
    Run(Box<RunArgs>),
}

/// Arguments of `run`.
#[derive(Debug, Args)]
struct RunArgs {
    /// Address of the admin server (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "OUTRIGGER_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    admin_addr: SocketAddr,
    /// Log filter, in RUST_LOG syntax.
    #[arg(long, env = "OUTRIGGER_LOG", default_value = "info,kube_runtime=warn")]
    log: String,
    /// Log format: `json` or `text`.
    #[arg(long, env = "OUTRIGGER_LOG_FORMAT", default_value = "json")]
    log_format: LogFormat,
    /// Run without leader election (a single replica only).
    #[arg(long, env = "OUTRIGGER_NO_LEADER_ELECTION")]
    no_leader_election: bool,
    /// Namespace of the leader Lease (the operator's own namespace).
    #[arg(long, env = "OUTRIGGER_NAMESPACE", default_value = "outrigger-system")]
    namespace: String,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "OUTRIGGER_LEASE_NAME",
        default_value = "outrigger-operator-leader"
    )]
    lease_name: String,
    /// This replica's identity in the Lease; defaults to the pod / host name and process id.
    #[arg(long, env = "OUTRIGGER_IDENTITY")]
    identity: Option<String>,
    /// Seconds a lease is valid without renewal (the longest failover takes).
    #[arg(long, env = "OUTRIGGER_LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,
    /// Watch and manage only this namespace instead of the whole cluster.
    #[arg(long, env = "OUTRIGGER_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    #[command(flatten)]
    webhook: WebhookArgs,
}

/// Arguments of the sidecar-injection webhook.
#[derive(Debug, Args)]
struct WebhookArgs {
    /// Do not serve the injection webhook (nor manage its configuration).
    #[arg(long, env = "OUTRIGGER_NO_WEBHOOK")]
    no_webhook: bool,
    /// Address the HTTPS webhook listens on.
    #[arg(long, env = "OUTRIGGER_WEBHOOK_ADDR", default_value = "0.0.0.0:9443")]
    webhook_addr: SocketAddr,
    /// URL the API server calls (e.g. `https://127.0.0.1:9443` for an operator outside the cluster);
    /// without it, the API server goes through the Service named by --webhook-service.
    #[arg(long, env = "OUTRIGGER_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// Service in front of the webhook, in the operator's namespace.
    #[arg(long, env = "OUTRIGGER_WEBHOOK_SERVICE", default_value = "outrigger-webhook")]
    webhook_service: String,
    /// Port of that Service.
    #[arg(long, env = "OUTRIGGER_WEBHOOK_SERVICE_PORT", default_value_t = 443)]
    webhook_service_port: i32,
    /// What happens to pod creation while the webhook cannot answer: `Ignore` (pods start without
    /// sidecars) or `Fail` (creation is refused).
    #[arg(long, env = "OUTRIGGER_WEBHOOK_FAILURE_POLICY", default_value = "Ignore")]
    webhook_failure_policy: FailurePolicy,
    /// Name of the MutatingWebhookConfiguration the operator keeps up to date.
    #[arg(
        long,
        env = "OUTRIGGER_WEBHOOK_CONFIG_NAME",
        default_value = "outrigger-injector"
    )]
    webhook_config_name: String,
    /// Only namespaces with these labels (`key=value`, repeatable) are intercepted at all.
    #[arg(long = "webhook-namespace-label", env = "OUTRIGGER_WEBHOOK_NAMESPACE_LABELS", value_delimiter = ',', value_parser = parse_key_value)]
    webhook_namespace_labels: Vec<(String, String)>,
    /// Secret (in the operator's namespace) holding the webhook's CA and serving certificate.
    #[arg(
        long,
        env = "OUTRIGGER_WEBHOOK_SECRET",
        default_value = "outrigger-webhook-tls"
    )]
    webhook_secret: String,
    /// Lifetime of a serving certificate, in seconds (default 30 days).
    #[arg(long, env = "OUTRIGGER_CERT_VALIDITY_SECONDS", default_value_t = 30 * 24 * 3600)]
    cert_validity_seconds: u64,
    /// Replace the serving certificate this many seconds before it expires (default 10 days).
    #[arg(long, env = "OUTRIGGER_CERT_RENEW_BEFORE_SECONDS", default_value_t = 10 * 24 * 3600)]
    cert_renew_before_seconds: u64,
    /// How often to check the certificate, in seconds.
    #[arg(long, env = "OUTRIGGER_CERT_CHECK_SECONDS", default_value_t = 60)]
    cert_check_seconds: u64,
    /// Image of a sidecar, `name=image` (repeatable), e.g. `request-splitter=registry/rs:1.2`.
    #[arg(long = "sidecar-image", env = "OUTRIGGER_SIDECAR_IMAGES", value_delimiter = ',', value_parser = parse_key_value)]
    sidecar_images: Vec<(String, String)>,
    /// Tag of the default sidecar images `outrigger/<name>:<tag>`.
    #[arg(long, env = "OUTRIGGER_SIDECAR_IMAGE_TAG", default_value = "dev")]
    sidecar_image_tag: String,
    /// Requests and limits of every injected sidecar and rollout splitter, as a Kubernetes
    /// `resources` object in JSON (`{}` for none). The default fits namespaces whose
    /// ResourceQuota demands requests and limits.
    #[arg(
        long,
        env = "OUTRIGGER_SIDECAR_RESOURCES",
        default_value = r#"{"requests":{"cpu":"10m","memory":"32Mi"},"limits":{"cpu":"500m","memory":"128Mi"}}"#,
        value_parser = parse_resources
    )]
    sidecar_resources: ResourceRequirements,
    /// Requests and limits of one sidecar, `name=<JSON>` (repeatable), replacing those of
    /// --sidecar-resources resource by resource, e.g. `request-splitter={"limits":{"memory":"256Mi"}}`.
    #[arg(long = "sidecar-resources-for", env = "OUTRIGGER_SIDECAR_RESOURCES_FOR", value_delimiter = ';', value_parser = parse_key_value)]
    sidecar_resources_for: Vec<(String, String)>,
}

fn parse_resources(text: &str) -> Result<ResourceRequirements, String> {
    serde_json::from_str(text).map_err(|error| format!("{text:?} is not a resources object in JSON: {error}"))
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(key, value)| !key.is_empty() && !value.is_empty())
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{text:?} is not key=value"))
}

impl WebhookArgs {
    /// The sidecar defaults (used by the webhook and by rollouts' splitters) and the webhook's
    /// settings, unless it is off.
    fn into_config(self, namespace: &str) -> anyhow::Result<(SidecarDefaults, Option<WebhookConfig>)> {
        let Self {
            no_webhook,
            webhook_addr,
            webhook_url,
            webhook_service,
            webhook_service_port,
            webhook_failure_policy,
            webhook_config_name,
            webhook_namespace_labels,
            webhook_secret,
            cert_validity_seconds,
            cert_renew_before_seconds,
            cert_check_seconds,
            sidecar_images,
            sidecar_image_tag,
            sidecar_resources,
            sidecar_resources_for,
        } = self;
        let mut images = BTreeMap::new();
        for (name, image) in sidecar_images {
            let kind = SidecarKind::parse(&name).with_context(|| {
                format!(
                    "--sidecar-image: unknown sidecar {name:?}; known: {}",
                    SidecarKind::ALL.map(SidecarKind::as_str).join(", ")
                )
            })?;
            images.insert(kind, image);
        }
        let mut resources_for = BTreeMap::new();
        for (name, resources) in sidecar_resources_for {
            let kind = SidecarKind::parse(&name).with_context(|| {
                format!(
                    "--sidecar-resources-for: unknown sidecar {name:?}; known: {}",
                    SidecarKind::ALL.map(SidecarKind::as_str).join(", ")
                )
            })?;
            let resources = parse_resources(&resources)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("--sidecar-resources-for {name}"))?;
            resources_for.insert(kind, resources);
        }
        let empty = sidecar_resources.requests.as_ref().is_none_or(BTreeMap::is_empty)
            && sidecar_resources.limits.as_ref().is_none_or(BTreeMap::is_empty);
        let defaults = SidecarDefaults {
            images,
            image_tag: sidecar_image_tag,
            resources: (!empty).then_some(sidecar_resources),
            resources_for,
        };
        if no_webhook {
            return Ok((defaults, None));
        }
        anyhow::ensure!(
            cert_renew_before_seconds < cert_validity_seconds,
            "--cert-renew-before-seconds ({cert_renew_before_seconds}) must be below --cert-validity-seconds ({cert_validity_seconds})"
        );
        let endpoint = match webhook_url {
            Some(url) => WebhookEndpoint::Url(url),
            None => WebhookEndpoint::Service {
                namespace: namespace.to_owned(),
                name: webhook_service,
                port: webhook_service_port,
            },
        };
        let webhook = WebhookConfig {
            addr: webhook_addr,
            namespace: namespace.to_owned(),
            secret_name: webhook_secret,
            config_name: webhook_config_name,
            endpoint,
            failure_policy: webhook_failure_policy,
            namespace_labels: webhook_namespace_labels.into_iter().collect(),
            cert_validity: Duration::from_secs(cert_validity_seconds),
            cert_renew_before: Duration::from_secs(cert_renew_before_seconds),
            cert_check_interval: Duration::from_secs(cert_check_seconds.max(1)),
            defaults: defaults.clone(),
        };
        Ok((defaults, Some(webhook)))
    }
}

impl Cli {
    /// Runs the chosen command.
    pub async fn run(self) -> anyhow::Result<()> {
        let Self { command } = self;
        match command {
            Command::Crd { dir } => print_crds(dir),
            Command::Run(args) => args.run().await,
        }
    }
}

impl RunArgs {
    async fn run(self) -> anyhow::Result<()> {
        let Self {
            admin_addr,
            log,
            log_format,
            no_leader_election,
            namespace,
            lease_name,
            identity,
            lease_seconds,
            watch_namespace,
            webhook,
        } = self;
        telemetry::init(&log, log_format)?;
        let (sidecar_defaults, webhook) = webhook.into_config(&namespace)?;
        let identity = identity.unwrap_or_else(default_identity);
        let lease_duration = Duration::from_secs(lease_seconds.max(3));
        let election = (!no_leader_election).then(|| ElectionConfig {
            namespace,
            lease_name,
            identity,
            lease_duration,
            renew_interval: lease_duration / 3,
            retry_interval: lease_duration / 5,
        });
        run(RunConfig {
            admin_addr,
            election,
            watch_namespace,
            webhook,
            sidecar_defaults,
        })
        .await
    }
}

fn default_identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .or_else(|_| std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()))
        .unwrap_or_else(|_| "outrigger".to_owned());
    format!("{host}-{}", std::process::id())
}

fn print_crds(dir: Option<PathBuf>) -> anyhow::Result<()> {
    match dir {
        None => {
            let yaml = outrigger_api::crd::all_yaml().context("rendering CRDs")?;
            std::io::stdout()
                .write_all(yaml.as_bytes())
                .context("writing CRDs to stdout")?;
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for crd in outrigger_api::crd::all() {
                let path = dir.join(outrigger_api::crd::file_name(&crd));
                let yaml = outrigger_api::crd::to_yaml(&crd).context("rendering CRD")?;
                std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar_defaults(args: &[&str]) -> anyhow::Result<SidecarDefaults> {
        let cli = Cli::try_parse_from(["outrigger-operator", "run", "--no-webhook"].iter().chain(args))?;
        let Command::Run(run) = cli.command else {
            anyhow::bail!("not the run command");
        };
        Ok(run.webhook.into_config("outrigger-system")?.0)
    }

    fn json(resources: Option<ResourceRequirements>) -> serde_json::Value {
        serde_json::to_value(resources).unwrap()
    }

    #[test]
    fn sidecars_get_requests_and_limits_unless_told_otherwise() {
        let defaults = sidecar_defaults(&[]).unwrap();
        assert_eq!(
            json(defaults.resources(SidecarKind::LogAdapter)),
            serde_json::json!({"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "500m", "memory": "128Mi"}})
        );
        let none = sidecar_defaults(&["--sidecar-resources", "{}"]).unwrap();
        assert_eq!(none.resources(SidecarKind::LogAdapter), None);
    }

    #[test]
    fn one_sidecars_resources_are_overridden_resource_by_resource() {
        let defaults = sidecar_defaults(&[
            "--sidecar-resources-for",
            r#"request-splitter={"limits":{"memory":"256Mi"}}"#,
        ])
        .unwrap();
        assert_eq!(
            json(defaults.resources(SidecarKind::RequestSplitter))["limits"],
            serde_json::json!({"cpu": "500m", "memory": "256Mi"})
        );
        let unknown = sidecar_defaults(&["--sidecar-resources-for", "teleporter={}"]).unwrap_err();
        assert!(unknown.to_string().contains("unknown sidecar"), "{unknown}");
        assert!(sidecar_defaults(&["--sidecar-resources", "lots"]).is_err());
    }
}
