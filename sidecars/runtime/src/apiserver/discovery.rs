//! Which version of an API group the server serves, asked once at start-up. EndpointSlices are the
//! case that matters: Kubernetes 1.17–1.20 serve only `discovery.k8s.io/v1beta1`, 1.21–1.24 both,
//! and 1.25 removed `v1beta1`. The fields a sidecar reads are the same in both.

use serde::Deserialize;

use super::{ApiClient, ApiError};

/// A served version of `discovery.k8s.io` for EndpointSlices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointSliceVersion {
    V1,
    V1Beta1,
}

impl EndpointSliceVersion {
    /// `group/version`, as in the API path.
    pub fn group_version(self) -> &'static str {
        match self {
            EndpointSliceVersion::V1 => "discovery.k8s.io/v1",
            EndpointSliceVersion::V1Beta1 => "discovery.k8s.io/v1beta1",
        }
    }
}

/// The discovery document of one API group (`GET /apis/<group>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiGroup {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub versions: Vec<GroupVersion>,
}

/// One version of a group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupVersion {
    #[serde(default)]
    pub group_version: String,
    #[serde(default)]
    pub version: String,
}

/// The EndpointSlice version to use given what the group serves: `v1` when served, else `v1beta1`,
/// else none.
pub fn choose_endpoint_slice_version(group: &ApiGroup) -> Option<EndpointSliceVersion> {
    let served = |version: &str| group.versions.iter().any(|served| served.version == version);
    if served("v1") {
        Some(EndpointSliceVersion::V1)
    } else if served("v1beta1") {
        Some(EndpointSliceVersion::V1Beta1)
    } else {
        None
    }
}

/// Why no EndpointSlice version could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("asking the API server which versions of discovery.k8s.io it serves: {0}")]
    Api(#[from] ApiError),
    #[error("the API server serves no EndpointSlice version this sidecar reads (v1 or v1beta1)")]
    NotServed,
}

/// Asks the server's discovery once which EndpointSlice version it serves.
pub async fn endpoint_slice_version(client: &ApiClient) -> Result<EndpointSliceVersion, DiscoveryError> {
    let group = client
        .get::<ApiGroup>("/apis/discovery.k8s.io")
        .await?
        .unwrap_or_default();
    choose_endpoint_slice_version(&group).ok_or(DiscoveryError::NotServed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(versions: &[&str]) -> ApiGroup {
        serde_json::from_value(serde_json::json!({
            "kind": "APIGroup",
            "name": "discovery.k8s.io",
            "versions": versions.iter().map(|version| serde_json::json!({
                "groupVersion": format!("discovery.k8s.io/{version}"),
                "version": version,
            })).collect::<Vec<_>>(),
            "preferredVersion": {"groupVersion": "discovery.k8s.io/v1beta1", "version": "v1beta1"},
        }))
        .unwrap()
    }

    #[test]
    fn kubernetes_1_20_gets_v1beta1() {
        assert_eq!(
            choose_endpoint_slice_version(&group(&["v1beta1"])),
            Some(EndpointSliceVersion::V1Beta1)
        );
    }

    #[test]
    fn v1_is_taken_whenever_it_is_served_even_if_v1beta1_is_preferred() {
        assert_eq!(
            choose_endpoint_slice_version(&group(&["v1", "v1beta1"])),
            Some(EndpointSliceVersion::V1)
        );
        assert_eq!(
            choose_endpoint_slice_version(&group(&["v1"])),
            Some(EndpointSliceVersion::V1)
        );
    }

    #[test]
    fn a_server_without_the_group_serves_no_version() {
        assert_eq!(choose_endpoint_slice_version(&ApiGroup::default()), None);
        assert_eq!(choose_endpoint_slice_version(&group(&["v2alpha1"])), None);
    }
}
