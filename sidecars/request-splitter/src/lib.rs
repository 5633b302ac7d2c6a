//! The request-splitting ambassador: decides per request which version (backend) serves it.
//! Weighted split, sticky clients by consistent hashing, header and cookie routes, shadow
//! mirroring, retries within a budget, passive outlier detection, configuration reloads from a
//! file or a ConfigMap without dropping requests, and a graceful drain.
//!
//! Layers: [`config`] (the document and its validation), [`routing`] (pure decisions),
//! [`store`] (generations compiled and swapped atomically), [`proxy`] (the service), [`server`]
//! (sockets), [`run`] (wiring) and [`cli`]. What every sidecar shares (command-line groups, admin
//! server, API client and watch, config source with the last good document kept, drain) is
//! `outrigger-sidecar-runtime`.

/// The runtime's API-server client, where the splitter's own used to be.
pub use outrigger_sidecar_runtime::apiserver;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod rng;
pub mod routing;
pub mod run;
pub mod store;
pub mod transport;

// The modules' paths before `routing/` and `transport/` existed.
pub use routing::health;
pub use transport::{
    added, body, correlation, fast, h1, hop_by_hop, mirror, proxy, sends, server, tls, upstream,
};
