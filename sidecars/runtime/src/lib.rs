//! What every Outrigger sidecar stands on, so that a sidecar crate holds only its own service.
//!
//! Always there: [`telemetry`] (structured logs), [`admin`] (`/metrics`, `/healthz`, `/readyz`,
//! `/config`), [`shutdown`] (signals and the graceful drain), [`metrics`] (registry helpers and the
//! reload families), [`encode`] (percent-encoding) and [`wait_ready`]. Behind features:
//! - `args`: the command-line groups a binary flattens (log, admin, API server, config source,
//!   drain), with `env` fallbacks and a per-binary environment prefix;
//! - `apiserver`: a small Kubernetes API client (GET, LIST, WATCH with resume, bookmarks, relist
//!   after `410 Gone`, token re-read, backoff), generic over the resource, without kube;
//! - `config-source`: a mounted file merged with a watched ConfigMap key, validated into a typed
//!   document handed out through a `tokio::sync::watch`, the last good one kept.

pub mod admin;
#[cfg(feature = "apiserver")]
pub mod apiserver;
#[cfg(feature = "args")]
pub mod args;
#[cfg(feature = "config-source")]
pub mod config;
pub mod duration;
pub mod encode;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;
pub mod wait_ready;
