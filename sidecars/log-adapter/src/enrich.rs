//! Enrichment: who wrote the logs, from environment variables the pod spec sets with the
//! downward API, added to every record.
//!
//! | record field | variable                   | fallback        | downward API / value              |
//! |--------------|----------------------------|-----------------|-----------------------------------|
//! | `pod`        | `OUTRIGGER_POD_NAME`       | `POD_NAME`      | `metadata.name`                   |
//! | `namespace`  | `OUTRIGGER_POD_NAMESPACE`  | `POD_NAMESPACE` | `metadata.namespace`              |
//! | `node`       | `OUTRIGGER_NODE_NAME`      |                 | `spec.nodeName`                   |
//! | `container`  | `OUTRIGGER_CONTAINER_NAME` |                 | the app container's name (value)  |
//! | `owner`      | `OUTRIGGER_OWNER`          |                 | `Kind/name` of the owning service |
//!
//! Injection sets `POD_NAME` and `POD_NAMESPACE` today; the others are added by injection later
//! and simply absent until then. Empty values are left out.

use crate::record::write_json_string;

/// The variables read, in record order: (record field, variable, fallback variable).
pub const VARIABLES: [(&str, &str, Option<&str>); 5] = [
    ("pod", "OUTRIGGER_POD_NAME", Some("POD_NAME")),
    ("namespace", "OUTRIGGER_POD_NAMESPACE", Some("POD_NAMESPACE")),
    ("node", "OUTRIGGER_NODE_NAME", None),
    ("container", "OUTRIGGER_CONTAINER_NAME", None),
    ("owner", "OUTRIGGER_OWNER", None),
];

/// The enrichment members, encoded once (`,"pod":"web-0","namespace":"shop"`) and appended to
/// every record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enrichment {
    encoded: Vec<u8>,
}

impl Enrichment {
    /// From the process environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// From any lookup, for tests.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let mut encoded = Vec::new();
        for (field, variable, fallback) in VARIABLES {
            let value = lookup(variable)
                .filter(|v| !v.is_empty())
                .or_else(|| fallback.and_then(&lookup).filter(|v| !v.is_empty()));
            if let Some(value) = value {
                encoded.push(b',');
                write_json_string(&mut encoded, field.as_bytes());
                encoded.push(b':');
                write_json_string(&mut encoded, value.as_bytes());
            }
        }
        Enrichment { encoded }
    }

    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrichment_prefers_outrigger_variables_and_falls_back_to_injected_ones() {
        let env = |name: &str| {
            match name {
                "OUTRIGGER_POD_NAME" => Some("web-0"),
                "POD_NAME" => Some("ignored"),
                "POD_NAMESPACE" => Some("shop"),
                "OUTRIGGER_NODE_NAME" => Some(""),
                "OUTRIGGER_OWNER" => Some("ReplicatedService/web"),
                _ => None,
            }
            .map(str::to_owned)
        };
        let enrichment = Enrichment::from_lookup(env);
        assert_eq!(
            String::from_utf8_lossy(enrichment.encoded()),
            r#","pod":"web-0","namespace":"shop","owner":"ReplicatedService/web""#
        );
        assert!(Enrichment::from_lookup(|_| None).encoded().is_empty());
    }
}
