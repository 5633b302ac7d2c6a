//! What a request is routed by. A user writes these in a custom resource and the operator copies
//! them into the request splitter's document unchanged, so the CRDs and the document share one
//! declaration. Doc comments here become CRD descriptions: they speak to the user.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a consistent-hashing key is read from for a request.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AffinitySource {
    /// A request header, named by `name`.
    Header,
    /// A cookie, named by `name`.
    Cookie,
    /// The client's source IP address.
    // Spelt `sourceIP` in the CRD and in the document alike (not `sourceIp`, as `camelCase` alone
    // would give).
    #[serde(rename = "sourceIP")]
    SourceIp,
}

/// Session affinity: requests with the same key go to the same replica (and the same version during
/// a rollout), chosen on a consistent-hash ring so that scaling moves only the keys that must move.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionAffinity {
    /// Where the key comes from: `header`, `cookie` or `sourceIP`.
    pub source: AffinitySource,
    /// Header or cookie name; required for `header` and `cookie`, ignored for `sourceIP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub name: Option<String>,
    /// Points per replica on the hash ring; more points spread keys more evenly.
    #[serde(default = "default_virtual_nodes")]
    #[schemars(range(min = 1, max = 1000))]
    pub virtual_nodes: i32,
}

fn default_virtual_nodes() -> i32 {
    160
}

/// The part of a request a route matches on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum RouteMatch {
    /// A request header.
    Header(ValueMatch),
    /// A cookie.
    Cookie(ValueMatch),
}

/// A named value and what it must equal.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueMatch {
    /// Header or cookie name.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Exact value; without it (and without `regex`) the presence of the header or cookie matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Regular expression the whole value must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub regex: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn affinity_sources_keep_the_spelling_users_write_in_the_crd() {
        let cases = [
            (AffinitySource::Header, "header"),
            (AffinitySource::Cookie, "cookie"),
            (AffinitySource::SourceIp, "sourceIP"),
        ];
        for (source, spelling) in cases {
            assert_eq!(serde_json::to_value(source).unwrap(), json!(spelling));
            assert_eq!(
                serde_json::from_value::<AffinitySource>(json!(spelling)).unwrap(),
                source
            );
        }
    }

    #[test]
    fn a_misspelt_match_field_is_refused_rather_than_matching_on_presence() {
        let error =
            serde_json::from_value::<RouteMatch>(json!({"header": {"name": "x", "exct": "1"}})).unwrap_err();
        assert!(error.to_string().contains("exct"), "{error}");
    }
}
