//! The binary's wiring: without `OUTRIGGER_SETTINGS`, the settings come from this sidecar's entry
//! in the mounted `sidecars.json`.

// Test helpers: a failed setup step should stop the test right there.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Command, Stdio};

use serde_json::json;
use support::{free_port, get, sample, wait_for_port, Process};

#[test]
fn settings_are_read_from_the_mounted_sidecars_document_when_the_variable_is_absent() {
    let dir = std::env::temp_dir().join(format!("metrics-adapter-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let statsd = free_port();
    let document = json!({
        "service": "web", "namespace": "shop",
        "sidecars": {"metrics-adapter": {"statsd": format!("127.0.0.1:{statsd}")}},
    });
    std::fs::write(dir.join("sidecars.json"), document.to_string()).unwrap();
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_outrigger-metrics-adapter"))
        .env_remove("OUTRIGGER_SETTINGS")
        .env("OUTRIGGER_CONFIG_DIR", &dir)
        .env("OUTRIGGER_ADMIN_ADDR", format!("127.0.0.1:{port}"))
        .env("OUTRIGGER_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _adapter = Process { child };
    wait_for_port(port);
    let body = get(port, "/metrics", None).body;
    assert_eq!(
        sample(&body, "metrics_adapter_statsd_series"),
        Some(0.0),
        "{body}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
