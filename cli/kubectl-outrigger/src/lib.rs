//! `kubectl outrigger`: a kubectl plugin for Outrigger's resources.
//!
//! - [`render`]: pure functions from statuses to text (golden-file tested);
//! - [`client`]: the thin layer that reads and annotates objects through the API server;
//! - [`run`]: the commands, tying the two together;
//! - [`examples`]: the example manifests, compiled in.

pub mod args;
pub mod client;
pub mod examples;
pub mod render;
pub mod run;
