//! The config source every sidecar reads its document from: a mounted file (polled) and a
//! ConfigMap key (watched), the key merged over the file as a JSON merge patch, validated as a whole
//! into a typed document and handed out through a `tokio::sync::watch`. A document that fails
//! validation changes nothing: the last good one keeps serving, and the rejection is logged,
//! counted (`config_reloads_total{source, result="rejected"}`, `config_last_reload_successful`) and
//! shown on `/config`.
//!
//! ```ignore
//! let source = Arc::new(ConfigSource::new(ReloadMetrics::register(&mut registry), |value| {
//!     let document: MyDocument = config::deserialize(value)?;
//!     document.validate()?;
//!     Ok(document)
//! }));
//! let mut documents = source.subscribe();
//! ```

pub mod configmap;
pub mod file;
pub mod layers;
pub mod source;

pub use outrigger_contract::json::merge_patch;
pub use source::{
    deserialize, log_outcome, parse_layer, Applied, BoxError, ConfigSource, Rejection, ReloadError, Source,
    Versioned,
};
