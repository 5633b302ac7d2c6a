//! Just enough of the Kubernetes API for a sidecar: a client for `GET`, `LIST` and watch requests
//! ([`client`]), typed calls on a collection ([`resource`]), a sans-IO decoder of the watch stream
//! ([`watch`]), the watch loop that resumes, relists and backs off ([`watcher`]) and the choice of
//! API version by discovery ([`discovery`]). A general-purpose Kubernetes client would triple the
//! size of a sidecar for a handful of calls.

pub mod client;
pub mod discovery;
pub mod resource;
pub mod watch;
pub mod watcher;

pub use client::{ApiClient, ApiError, ApiServerOptions};
pub use discovery::EndpointSliceVersion;
pub use resource::{Api, ConfigMap, EndpointSlice, ObjectList, ObjectRef, Resource, Secret, Selector};
pub use watch::{DecodeError, EventDecoder, ObjectMeta, Status, WatchEvent};
pub use watcher::{Event, WatchError, Watcher};
