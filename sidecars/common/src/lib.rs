//! What every Outrigger binary shares: telemetry setup, the admin server (`/metrics`, `/healthz`,
//! `/readyz`), and shutdown on SIGTERM / SIGINT.

pub mod admin;
pub mod shutdown;
pub mod telemetry;
pub mod wait_ready;
