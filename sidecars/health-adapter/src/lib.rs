//! The health adapter: checks the app and what it depends on (TCP connect, HTTP status and body,
//! Redis PING, thresholds on the app's own metrics), each with an interval, a timeout and
//! hysteresis, and answers the kubelet's probes on `/livez`, `/readyz` and `/startupz`.
//!
//! - [`settings`]: the checks the service's spec asks for;
//! - [`check`]: one run of one check; [`state`]: hysteresis and the endpoints' verdicts (pure);
//! - [`run`]: the check loops; [`server`]: the probe endpoints; [`metrics`]: transitions and runs;
//! - [`report`]: the Events about the endpoints' transitions, on the pod's owning service (pure).
//!
//! `main.rs` and `cli.rs` only parse arguments and wire these up, so that the shared sidecar
//! runtime can take over the CLI and admin server later.

pub mod check;
pub mod metrics;
pub mod report;
pub mod run;
pub mod server;
pub mod settings;
pub mod state;
