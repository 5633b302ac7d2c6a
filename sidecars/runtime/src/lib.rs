//! What every Outrigger sidecar stands on, so that a sidecar crate holds only its own service.
//!
//! Always there: [`telemetry`] (structured logs), [`admin`] (`/metrics`, `/healthz`, `/readyz`,
//! `/config`), [`shutdown`] (signals and the graceful drain), [`metrics`] (registry helpers and the
//! reload families), [`encode`] (percent-encoding) and [`wait_ready`]. Behind features:
//! - `args`: the command-line groups a binary flattens (log, admin, API server, config source,
//!   drain), with `env` fallbacks and a per-binary environment prefix;
//! - `apiserver`: a small Kubernetes API client (GET, LIST, WATCH with resume, bookmarks, relist
//!   after `410 Gone`, token re-read, backoff), generic over the resource, without kube;
//! - `apiserver` also gives [`events`]: Kubernetes Events about the pod's owning service, aggregated,
//!   rate-limited and written off the data path;
//! - `config-source`: a mounted file merged with a watched ConfigMap key, validated into a typed
//!   document handed out through a `tokio::sync::watch`, the last good one kept.
//!
//! A new sidecar is a binary crate that flattens the groups and wires only its own service:
//!
//! ```ignore
//! #[derive(clap::Parser)]
//! struct Cli {
//!     #[command(flatten)] source: ConfigSourceArgs,
//!     #[command(flatten)] api: ApiServerArgs,
//!     #[command(flatten)] admin: AdminArgs,
//!     #[command(flatten)] drain: DrainArgs,
//!     #[command(flatten)] log: LogArgs,
//! }
//!
//! let Cli { source, api, admin, drain, log } = args::parse_with_env_prefix("LOG_ADAPTER");
//! log.init()?;
//! let settings = source.resolve("log-adapter.json");
//! let mut registry = metrics::registry("outrigger_log_adapter");
//! let documents = Arc::new(ConfigSource::new(ReloadMetrics::register(&mut registry), |value| {
//!     let document: LogAdapterConfig = config::deserialize(value)?;
//!     document.validate()?;
//!     Ok::<_, BoxError>(document)
//! }));
//! let configmap = settings.configmap.map(|reference| -> Result<_, Error> {
//!     Ok(ConfigMapSpec { reference: reference.parse()?, key: settings.configmap_key.clone(),
//!                        client: ApiClient::new(&api.into())? })
//! }).transpose()?;
//! let layers = LayerOptions { file: settings.file, configmap, poll_interval: settings.poll_interval };
//! let started = config::layers::start(&documents, layers, reload_now, stop.subscribe()).await?;
//! let admin_state = AdminState::new(registry).with_config(Arc::new(move || documents.status_json()));
//! // ... serve, `documents.subscribe()` for each new document, `shutdown::signal().await`,
//! // `shutdown::drain(&admin_state, drain.into(), close, finished).await`.
//! ```

pub mod admin;
#[cfg(feature = "apiserver")]
pub mod apiserver;
#[cfg(feature = "args")]
pub mod args;
#[cfg(feature = "config-source")]
pub mod config;
/// Durations as documents and flags write them (`250ms`, `1m30s`), one parser for both.
pub use outrigger_contract::duration;
pub mod encode;
#[cfg(feature = "apiserver")]
pub mod events;
pub mod http_server;
pub mod metrics;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod wait_ready;
