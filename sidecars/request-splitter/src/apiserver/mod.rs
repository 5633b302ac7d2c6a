//! Just enough of the Kubernetes API for the splitter to watch its ConfigMap: a client for `GET`
//! and watch requests ([`client`]) and a sans-IO decoder of the watch stream ([`watch`]). A
//! general-purpose Kubernetes client would triple the size of the binary for two calls.

pub mod client;
pub mod watch;

pub use client::{ApiClient, ApiError, ApiServerOptions};
pub use watch::{DecodeError, EventDecoder, ObjectMeta, Status, WatchEvent};
