//! The configuration every sidecar attached to a ReplicatedService's pods reads: the ConfigMap
//! `<service>-outrigger`, key [`SIDECARS_CONFIG_KEY`], mounted into each sidecar.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ApiVersion, SessionAffinity};

/// Key of the sidecars' document inside the service's ConfigMap.
pub const SIDECARS_CONFIG_KEY: &str = "sidecars.json";

/// Port of the health adapter's probe endpoints (`/livez`, `/readyz`, `/startupz`), where injection
/// points the app's probes when the health adapter's settings ask for it (`probeApp: "true"`).
/// Apart from the adapter's admin port, so that the adapter's own readiness never waits for the app.
pub const HEALTH_PROBE_PORT: u16 = 9926;

/// The health adapter's setting that asks injection to point the app's probes at it.
pub const HEALTH_PROBE_APP_SETTING: &str = "probeApp";

/// What the sidecars of a service share: whose pods they run in, how sessions stick, each sidecar's
/// settings and the traffic share of each track.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarsConfig {
    /// Version of this document's format; absent means `outrigger.dev/v1alpha1`.
    #[serde(default)]
    pub api_version: ApiVersion,
    /// Name of the ReplicatedService.
    pub service: String,
    /// Its namespace.
    pub namespace: String,
    /// The service's session affinity, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,
    /// Settings of every attached sidecar, by sidecar name (`request-splitter`, `log-adapter`, ...).
    #[serde(default)]
    pub sidecars: BTreeMap<String, BTreeMap<String, String>>,
    /// Percent of traffic per track (`stable`, `canary`).
    #[serde(default)]
    pub tracks: BTreeMap<String, TrackConfig>,
}

/// One track of the service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrackConfig {
    /// Percent of traffic, 0 to 100.
    pub weight: i32,
}

impl SidecarsConfig {
    /// Parses the document as found in its ConfigMap. Unknown fields and an unknown `apiVersion`
    /// are refused.
    pub fn from_json(text: &[u8]) -> Result<SidecarsConfig, serde_json::Error> {
        serde_json::from_slice(text)
    }

    /// The document as written into its ConfigMap.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::AffinitySource;

    #[test]
    fn a_document_written_before_documents_were_versioned_reads_as_v1alpha1() {
        let text = json!({
            "service": "web", "namespace": "shop",
            "sessionAffinity": {"source": "sourceIP", "virtualNodes": 160},
            "sidecars": {"log-adapter": {"format": "nginx"}},
            "tracks": {"stable": {"weight": 100}},
        })
        .to_string();
        let config = SidecarsConfig::from_json(text.as_bytes()).unwrap();
        assert_eq!(config.api_version, ApiVersion::V1alpha1);
        assert_eq!(
            config.session_affinity.map(|affinity| affinity.source),
            Some(AffinitySource::SourceIp)
        );
        assert_eq!(config.tracks["stable"].weight, 100);
    }

    #[test]
    fn a_written_document_carries_its_api_version_and_an_unknown_one_is_refused() {
        let config = SidecarsConfig {
            api_version: ApiVersion::default(),
            service: "web".to_owned(),
            namespace: "shop".to_owned(),
            session_affinity: None,
            sidecars: BTreeMap::new(),
            tracks: BTreeMap::from([("stable".to_owned(), TrackConfig { weight: 100 })]),
        };
        let mut written: serde_json::Value = serde_json::from_str(&config.to_json().unwrap()).unwrap();
        assert_eq!(written["apiVersion"], "outrigger.dev/v1alpha1");
        written["apiVersion"] = json!("outrigger.dev/v9");
        let error = SidecarsConfig::from_json(written.to_string().as_bytes()).unwrap_err();
        assert!(error.to_string().contains("unknown apiVersion"), "{error}");
    }
}
