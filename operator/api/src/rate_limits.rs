//! Rate limits of a ReplicatedService (`spec.rateLimits`), enforced by the request splitter in
//! front of it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use outrigger_contract::rate_limit::RateLimitKey;

/// Token-bucket rate limits per client, enforced by the request splitter in front of the service
/// (the service gets one even without a rollout). Requests carrying `identityHeader` are in the
/// `identified` tier and counted by its value; the others are `anonymous`, counted by `key`. A
/// request over its limit is answered 429 with `Retry-After`. The limits are service-wide: the
/// operator divides every rate and `burst` evenly among the splitter replicas (one,
/// or two once the service has more than one replica), each of which counts on its own, so a
/// client whose connections the Service spreads over the replicas gets about the service-wide
/// limit, and one that keeps a single connection to one replica gets that replica's share.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimits {
    /// What anonymous requests are counted by: `sourceIP` (the default), or a `header` or `cookie`
    /// named by `name` (a request without it is counted by its source IP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<RateLimitKey>,
    /// Header whose presence puts a request in the identified tier, counted by the header's value.
    /// The splitter does not authenticate it: set it in something the clients cannot bypass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), pattern(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"))]
    pub identity_header: Option<String>,
    /// Limit of each anonymous client; without it anonymous requests are not limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<RateLimit>,
    /// Limit of each identified client (usually higher); without it they are not limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identified: Option<RateLimit>,
    /// Limits for path prefixes, which replace the limits above for the requests they match (the
    /// longest matching prefix wins; a tier a route does not give keeps the service's limit).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub routes: Vec<RouteRateLimit>,
    /// Most client buckets each splitter replica keeps (clients × routes × tiers). Buckets of idle
    /// clients are forgotten first; a forgotten client starts again with a full bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 10000000))]
    pub max_keys: Option<i32>,
}

/// A token bucket: `requests` every `period` on average, up to `burst` at once after a pause.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Requests each client may send every `period`, service-wide.
    #[schemars(range(min = 1, max = 1000000))]
    pub requests: i32,
    /// The period `requests` are counted over (`1s`, `1m`, `1h`; 1s to 24h).
    #[serde(default = "default_period")]
    #[schemars(pattern(r"^([0-9]+(ms|s|m|h))+$"))]
    pub period: String,
    /// Requests a client may send at once after a pause, service-wide; `requests` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub burst: Option<i32>,
}

fn default_period() -> String {
    "1s".to_owned()
}

/// The limits of the requests whose path starts with `pathPrefix`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteRateLimit {
    /// Path prefix, starting with `/`.
    #[schemars(length(min = 1, max = 1024), pattern(r"^/"))]
    pub path_prefix: String,
    /// Limit of each anonymous client on this prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<RateLimit>,
    /// Limit of each identified client on this prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identified: Option<RateLimit>,
}
