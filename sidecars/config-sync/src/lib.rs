//! The config sync sidecar: the ConfigMaps and Secrets its settings name, watched through the API
//! (not the kubelet's volume, which lags by up to a minute and never updates `subPath` mounts),
//! checked, written into a shared volume with the kubelet's atomic layout, the app reloaded, its
//! health watched and a bad version rolled back.
//!
//! - [`validate`]: syntax by file type with positions, and a JSON Schema subset;
//! - [`writer`]: the atomic layout (`..<timestamp>/`, `..data`, per-file links);
//! - [`sources`]: the watched objects and the file set they make;
//! - [`debounce`], [`health`]: when to apply, when to roll back (pure);
//! - [`reload`]: HTTP requests and signals to the app;
//! - [`engine`]: the loop over all of it; [`run`]: wiring over the sidecar runtime.

pub mod cli;
pub mod debounce;
pub mod engine;
pub mod health;
pub mod metrics;
pub mod reload;
pub mod run;
pub mod sources;
pub mod validate;
pub mod writer;
