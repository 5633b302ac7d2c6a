//! The log adapter: tails the app's log files on the shared volume, parses each line (JSON,
//! logfmt, nginx / Apache, klog, syslog, user patterns), joins stack traces, and writes one JSON
//! record per line to a sink, advancing its checkpoint only after the sink has the batch.
//!
//! Everything here is library code; `main.rs` and `cli.rs` only parse arguments (the sidecar
//! runtime's shared groups plus the adapter's own flags) and wire it to the runtime's admin server,
//! telemetry, signals and drain.

pub mod checkpoint;
pub mod enrich;
pub mod glob;
pub mod line;
pub mod metrics;
pub mod multiline;
pub mod notice;
pub mod parse;
pub mod record;
pub mod settings;
pub mod sink;
pub mod tail;
pub mod time;
