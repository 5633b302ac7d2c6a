//! The request-splitting ambassador: decides per request which version (backend) serves it.
//! Weighted split, sticky clients by consistent hashing, header and cookie routes, shadow
//! mirroring, retries within a budget, passive outlier detection, configuration reloads from a
//! file or a ConfigMap without dropping requests, and a graceful drain.
//!
//! Layers: [`config`] (the document and its validation), [`routing`] (what to do with a request:
//! routes, weights, stickiness, retries, endpoint health; pure), [`transport`] (how bytes move: the
//! listener, the HTTP/1.1 fast path and its batched sends, the hyper paths, the backend codec and
//! pools), [`certificates`] (the serving certificate from a watched Secret), [`cache`] (the shared HTTP cache: pure policy and store, wired to the proxy), [`store`] (generations compiled and swapped atomically), [`run`] (wiring) and [`cli`].
//! What every sidecar shares (command-line groups, admin server, API client and watch, config
//! source with the last good document kept, drain) is `outrigger-sidecar-runtime`.

pub mod cache;
pub mod certificates;
pub mod cli;
pub mod config;
pub mod discovery;
pub mod metrics;
pub mod rng;
pub mod routing;
pub mod run;
pub mod store;
pub mod transport;
