//! The metrics adapter: turns what an app and its neighbours on the pod's loopback know (Redis
//! INFO, a JSON status document, StatsD lines, a Prometheus endpoint) into one Prometheus
//! endpoint, bounded in time and in series.
//!
//! - [`model`]: families and samples; [`expose`]: the text format and OpenMetrics;
//! - [`collect`]: the fetching collectors, each behind a time-bounded slot;
//! - [`statsd`]: StatsD lines aggregated under a series budget;
//! - [`adapter`]: one scrape; [`server`]: HTTP; [`settings`]: what the service's spec asks for.
//!
//! `main.rs` and `cli.rs` only parse arguments and wire these up, so that the shared sidecar
//! runtime can take over the CLI and admin server later.

pub mod adapter;
pub mod collect;
pub mod expose;
pub mod model;
pub mod server;
pub mod settings;
pub mod statsd;
