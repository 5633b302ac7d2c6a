//! The request-splitting ambassador: decides per request which version (backend) serves it.
//! Weighted split, sticky clients by consistent hashing, header and cookie routes, shadow
//! mirroring, retries within a budget, passive outlier detection, configuration reloads from a
//! file or a ConfigMap without dropping requests, and a graceful drain.
//!
//! Layers: [`config`] (the document and its validation), [`routing`] (pure decisions),
//! [`store`] (generations and atomic swaps), [`proxy`] (the service), [`server`] (sockets),
//! [`run`] (wiring) and [`cli`].

pub mod apiserver;
pub mod cli;
pub mod config;
#[cfg(feature = "configmap")]
pub mod configmap;
pub mod metrics;
pub mod reload;
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
