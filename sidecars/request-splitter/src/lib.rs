//! The request-splitting ambassador: decides per request which version (backend) serves it.
//! Weighted split, sticky clients by consistent hashing, header and cookie routes, shadow
//! mirroring, retries within a budget, passive outlier detection, configuration reloads from a
//! file or a ConfigMap without dropping requests, and a graceful drain.
//!
//! Layers: [`config`] (the document and its validation), [`routing`] (pure decisions),
//! [`store`] (generations and atomic swaps), [`proxy`] (the service), [`server`] (sockets),
//! [`run`] (wiring) and [`cli`].

pub mod added;
pub mod apiserver;
pub mod body;
pub mod cli;
pub mod config;
#[cfg(feature = "configmap")]
pub mod configmap;
pub mod correlation;
pub mod fast;
pub mod h1;
pub mod health;
pub mod hop_by_hop;
pub mod metrics;
pub mod mirror;
pub mod proxy;
pub mod reload;
pub mod rng;
pub mod routing;
pub mod run;
pub mod sends;
pub mod server;
pub mod store;
pub mod tls;
pub mod upstream;
