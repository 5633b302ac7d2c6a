//! The pure half of the plugin: statuses in, text out. Nothing here talks to a cluster, so every
//! view is tested on fixed statuses against the files under `tests/golden/`.

pub mod rollout;
pub mod scaling;
pub mod shards;
pub mod text;

use outrigger_api::common::Condition;
use serde_json::Value;

/// `Ready=True, Degraded=False (Reason: message)`: every condition, with the reason and message
/// of those in a bad state.
pub fn conditions(conditions: &[Condition]) -> String {
    if conditions.is_empty() {
        return "none reported yet".to_owned();
    }
    let parts: Vec<String> = conditions
        .iter()
        .map(|c| {
            let bad = match c.type_.as_str() {
                "Degraded" | "Progressing" => c.status == "True",
                _ => c.status != "True",
            };
            if bad && !c.message.is_empty() {
                format!("{}={} ({}: {})", c.type_, c.status, c.reason, c.message)
            } else {
                format!("{}={}", c.type_, c.status)
            }
        })
        .collect();
    parts.join(", ")
}

/// An enum as written in manifests (its serde name), e.g. `requestRate`.
pub fn wire_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".to_owned(),
    }
}
