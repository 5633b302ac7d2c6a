//! Rate limits as the request splitter enforces them (`rateLimits` in its document), and the key a
//! bucket is counted by, which the ReplicatedService CRD re-uses. Doc comments on the shared types
//! become CRD descriptions: they speak to the user.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::AffinitySource;

/// What a client's requests are counted by.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitKey {
    /// `sourceIP`, `header` or `cookie`. A request without the header or cookie is counted by its
    /// source IP.
    pub source: AffinitySource,
    /// Header or cookie name; required for `header` and `cookie`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub name: Option<String>,
}

impl Default for RateLimitKey {
    fn default() -> Self {
        RateLimitKey {
            source: AffinitySource::SourceIp,
            name: None,
        }
    }
}

/// A token bucket, per key, as one splitter replica enforces it: `requestsPerSecond` tokens are
/// added every second up to `burst`; a request takes one.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenBucketConfig {
    /// Tokens added per second (above 0; fractions allowed).
    pub requests_per_second: f64,
    /// The most tokens a bucket holds: how many requests a client may send at once after a pause.
    pub burst: u32,
}

/// Limits of one path prefix; a tier it does not give falls back to the document's.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRateLimitConfig {
    /// Requests whose path starts with this (the longest matching prefix wins).
    pub path_prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<TokenBucketConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identified: Option<TokenBucketConfig>,
}

/// Rate limits of the request splitter: token buckets per client key, a tier for requests without
/// the identity header (`anonymous`, counted by `key`) and one for requests with it (`identified`,
/// counted by the header's value), per path prefix. A request over its limit is answered 429 with
/// `Retry-After`. A tier without a limit is not limited.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// What anonymous requests are counted by; the source IP when absent.
    #[serde(default)]
    pub key: RateLimitKey,
    /// Header whose presence puts a request in the identified tier, counted by its value. It should
    /// be set by something the clients cannot bypass (an authenticating gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<TokenBucketConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identified: Option<TokenBucketConfig>,
    /// Limits for path prefixes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteRateLimitConfig>,
    /// Most buckets kept (keys × routes × tiers); past it idle buckets are dropped first, then the
    /// least recently used of a sample.
    #[serde(default = "default_max_keys")]
    pub max_keys: u32,
}

impl RateLimitsConfig {
    /// Limits on these tiers, counted by source IP, with no routes and the default key cap.
    pub fn new(anonymous: Option<TokenBucketConfig>, identified: Option<TokenBucketConfig>) -> Self {
        RateLimitsConfig {
            key: RateLimitKey::default(),
            identity_header: None,
            anonymous,
            identified,
            routes: Vec::new(),
            max_keys: default_max_keys(),
        }
    }
}

fn default_max_keys() -> u32 {
    100_000
}

/// Where the endpoints of a backend come from when they are discovered: the ready pods behind a
/// Kubernetes Service, read from its EndpointSlices, one endpoint per pod, on the hash ring by pod
/// name. The backend's `endpoints` serve while no ready pod is known.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointDiscoveryConfig {
    /// Namespace of the Service.
    pub namespace: String,
    /// Name of the Service (its EndpointSlices carry `kubernetes.io/service-name`).
    pub service: String,
}

/// How long a bucket left alone is certainly full again, so it can be forgotten.
pub fn refill_time(bucket: &TokenBucketConfig) -> Duration {
    if bucket.requests_per_second > 0.0 {
        Duration::from_secs_f64((f64::from(bucket.burst) / bucket.requests_per_second).min(86_400.0))
    } else {
        Duration::from_secs(86_400)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_empty_rate_limits_document_counts_by_source_ip_and_limits_nothing() {
        let config: RateLimitsConfig = serde_json::from_value(json!({})).unwrap();
        assert_eq!(config, RateLimitsConfig::new(None, None));
        assert_eq!(config.key.source, AffinitySource::SourceIp);
        assert_eq!(config.max_keys, 100_000);
    }

    #[test]
    fn a_bucket_refills_in_burst_over_rate() {
        let bucket = TokenBucketConfig {
            requests_per_second: 2.0,
            burst: 10,
        };
        assert_eq!(refill_time(&bucket), Duration::from_secs(5));
    }
}
