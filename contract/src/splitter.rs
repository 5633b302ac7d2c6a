//! The request splitter's configuration document: what the operator writes into the splitter's
//! ConfigMap (key [`CONFIG_KEY`]) or an injected splitter's file, and what the splitter parses, with
//! the default of every field. The splitter validates and compiles it; this module only says what
//! the document is.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::duration::{ConfigDuration, DURATION_PATTERN};
pub use crate::rate_limit::{
    EndpointDiscoveryConfig, RateLimitKey, RateLimitsConfig, RouteRateLimitConfig, TokenBucketConfig,
};
pub use crate::routing::{AffinitySource, RouteMatch, ValueMatch};
use crate::ApiVersion;

/// Key of the splitter's document in the ConfigMap the operator writes.
pub const CONFIG_KEY: &str = "request-splitter.json";

/// The whole document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SplitterConfig {
    /// Version of this document's format; absent means `outrigger.dev/v1alpha1`.
    #[serde(default)]
    pub api_version: ApiVersion,
    /// Address the proxy listens on. Changing it needs a restart.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The named backends (versions), in a fixed order.
    pub backends: Vec<BackendConfig>,
    /// Percent of traffic per backend name; must add up to 100. Missing backends get 0.
    #[serde(default)]
    pub weights: BTreeMap<String, i64>,
    /// Where a client's stickiness key comes from; without it every request is split at random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stickiness: Option<StickinessConfig>,
    /// Routes that override the split, tried in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    /// Shadow traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorConfig>,
    /// Limits that protect the proxy from its clients.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// How many retries the proxy may add to the request rate.
    #[serde(default)]
    pub retry_budget: RetryBudgetConfig,
    /// When an endpoint is left out after failing.
    #[serde(default)]
    pub outlier_detection: OutlierConfig,
    /// Serve TLS (with ALPN `h2` and `http/1.1`) with this certificate. Changing it needs a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Log one line per request (target `access`).
    #[serde(default = "yes")]
    pub access_log: bool,
    /// Hold requests while the chosen backend has no endpoint to take them (a service scaled to
    /// zero), instead of answering 502 or 503 at once. Without it nothing is held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<HoldConfig>,
    /// Token-bucket rate limits per client key, tier and path prefix. Without it nothing is
    /// limited. Buckets keep their state across reloads that keep their limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<RateLimitsConfig>,
    /// A shared HTTP cache in front of the backends (GET and HEAD, by `Cache-Control`). Without
    /// it nothing is cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheConfig>,
}

impl SplitterConfig {
    /// A document with these backends and every other field at its default.
    pub fn new(listen: SocketAddr, backends: Vec<BackendConfig>) -> SplitterConfig {
        SplitterConfig {
            api_version: ApiVersion::default(),
            listen,
            backends,
            weights: BTreeMap::new(),
            stickiness: None,
            routes: Vec::new(),
            mirror: None,
            limits: LimitsConfig::default(),
            retry_budget: RetryBudgetConfig::default(),
            outlier_detection: OutlierConfig::default(),
            tls: None,
            access_log: yes(),
            hold: None,
            rate_limits: None,
            cache: None,
        }
    }

    /// The index of a backend by name.
    pub fn backend_index(&self, name: &str) -> Option<usize> {
        self.backends.iter().position(|backend| backend.name == name)
    }

    /// The weight of each backend, in backend order (a lone backend without weights gets 100).
    pub fn weight_vector(&self) -> Vec<u32> {
        if self.weights.is_empty() && self.backends.len() == 1 {
            return vec![100];
        }
        self.backends
            .iter()
            .map(|backend| {
                let weight = self.weights.get(&backend.name).copied().unwrap_or(0);
                u32::try_from(weight.clamp(0, 100)).unwrap_or(0)
            })
            .collect()
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}

fn yes() -> bool {
    true
}

/// One backend: a version of the service reachable at one or more endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendConfig {
    /// Name used in weights, routes, metrics and logs (`stable`, `canary`).
    pub name: String,
    /// `host:port` of each endpoint.
    pub endpoints: Vec<String>,
    /// How long one attempt may wait for the response headers.
    #[serde(default = "default_timeout")]
    pub timeout: ConfigDuration,
    /// How long opening a connection to an endpoint may take.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: ConfigDuration,
    /// Retries after the first attempt, for idempotent requests (and for any request whose
    /// connection could not be opened), within the retry budget.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Protocol spoken to the endpoints.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Take the endpoints from the ready pods behind a Kubernetes Service instead, one per pod, so
    /// a sticky key stays on one pod; `endpoints` serve while no ready pod is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<EndpointDiscoveryConfig>,
}

impl BackendConfig {
    /// A backend at these endpoints with the default timeouts, retries and protocol.
    pub fn new(name: impl Into<String>, endpoints: Vec<String>) -> BackendConfig {
        BackendConfig {
            name: name.into(),
            endpoints,
            timeout: default_timeout(),
            connect_timeout: default_connect_timeout(),
            max_retries: default_max_retries(),
            protocol: UpstreamProtocol::default(),
            discovery: None,
        }
    }
}

fn default_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(15))
}

fn default_connect_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(1))
}

fn default_max_retries() -> u32 {
    2
}

/// Protocol to the backend's endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 over cleartext (prior knowledge).
    H2c,
}

/// Where the stickiness key comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StickinessConfig {
    /// `header`, `cookie` or `sourceIP`.
    pub source: AffinitySource,
    /// Header or cookie name; required for `header` and `cookie`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// With `cookie`: when a request has no cookie, choose a key and set the cookie on the response.
    #[serde(default = "yes")]
    pub set_cookie: bool,
    /// Points per endpoint on the hash ring that keeps a key on one endpoint of its backend.
    #[serde(default = "default_virtual_nodes")]
    pub virtual_nodes: u32,
}

impl StickinessConfig {
    /// Stickiness on a key from `source` (named by `name` for a header or cookie), with a cookie set
    /// when missing and the default ring size.
    pub fn new(source: AffinitySource, name: Option<String>) -> StickinessConfig {
        StickinessConfig {
            source,
            name,
            set_cookie: yes(),
            virtual_nodes: default_virtual_nodes(),
        }
    }
}

fn default_virtual_nodes() -> u32 {
    160
}

/// A route: requests that match go to `backend`, whatever the weights say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfig {
    /// Name for metrics and logs.
    pub name: String,
    /// What a request must carry: exactly one of `header` or `cookie`.
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    /// Name of the backend the matching requests go to.
    pub backend: String,
}

/// Copies of a share of requests to a shadow backend, fire-and-forget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorConfig {
    /// Name of the backend the copies go to.
    pub backend: String,
    /// Percent of requests copied, 0 to 100 (fractions allowed, to 0.01).
    pub percent: f64,
}

/// Limits that protect the proxy from its clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request head (request line and headers); larger gets 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: u32,
    /// Most header fields in a request (HTTP/1 lines or HTTP/2 fields); more gets 431.
    #[serde(default = "default_max_header_count")]
    pub max_header_count: u32,
    /// How long a client may take to send a request head (and how long an idle keep-alive
    /// connection stays open).
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: ConfigDuration,
    /// Concurrent client connections; more are answered 503 and closed. Changing it needs a restart.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Request bodies up to this size (known from `content-length`) are buffered so that they can be
    /// retried and mirrored; larger ones stream through without either.
    #[serde(default = "default_max_buffered_body_bytes")]
    pub max_buffered_body_bytes: u32,
    /// Mirror copies waiting to be sent; when full, new copies are dropped and counted.
    /// Changing it needs a restart.
    #[serde(default = "default_mirror_queue")]
    pub mirror_queue: u32,
    /// Mirror copies in flight at once. Changing it needs a restart.
    #[serde(default = "default_mirror_in_flight")]
    pub mirror_in_flight: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_header_bytes: default_max_header_bytes(),
            max_header_count: default_max_header_count(),
            header_read_timeout: default_header_read_timeout(),
            max_connections: default_max_connections(),
            max_buffered_body_bytes: default_max_buffered_body_bytes(),
            mirror_queue: default_mirror_queue(),
            mirror_in_flight: default_mirror_in_flight(),
        }
    }
}

fn default_max_header_bytes() -> u32 {
    16 * 1024
}

fn default_max_header_count() -> u32 {
    // Above what browsers and API clients send with room to spare, and the same on every protocol.
    200
}

fn default_header_read_timeout() -> ConfigDuration {
    // As nginx's client_header_timeout. It also bounds idle keep-alive connections, and clients
    // commonly keep idle connections for up to 90 s; a much shorter value makes them race the close.
    ConfigDuration(Duration::from_secs(60))
}

fn default_max_connections() -> u32 {
    10_000
}

fn default_max_buffered_body_bytes() -> u32 {
    64 * 1024
}

fn default_mirror_queue() -> u32 {
    1_024
}

fn default_mirror_in_flight() -> u32 {
    64
}

/// Retries may add at most `ratio` of the request rate, plus `minPerSecond`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudgetConfig {
    /// Retries as a share of requests, e.g. 0.2 for one retry per five requests.
    #[serde(default = "default_retry_ratio")]
    pub ratio: f64,
    /// Retries per second allowed whatever the request rate.
    #[serde(default = "default_min_retries_per_second")]
    pub min_per_second: u32,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            ratio: default_retry_ratio(),
            min_per_second: default_min_retries_per_second(),
        }
    }
}

fn default_retry_ratio() -> f64 {
    0.2
}

fn default_min_retries_per_second() -> u32 {
    10
}

/// Passive outlier detection: an endpoint failing `consecutiveFailures` times in a row is left out
/// for `baseEjectionTime` times the number of its ejections in a row, at most `maxEjectionTime`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierConfig {
    /// Failures in a row that eject an endpoint.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// How long a first ejection lasts.
    #[serde(default = "default_base_ejection")]
    pub base_ejection_time: ConfigDuration,
    /// The longest an ejection lasts, however often the endpoint failed.
    #[serde(default = "default_max_ejection")]
    pub max_ejection_time: ConfigDuration,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: default_consecutive_failures(),
            base_ejection_time: default_base_ejection(),
            max_ejection_time: default_max_ejection(),
        }
    }
}

fn default_consecutive_failures() -> u32 {
    5
}

fn default_base_ejection() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(10))
}

fn default_max_ejection() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(300))
}

/// Request holding: a request whose backend refuses connections (a Service without endpoints) or
/// has every endpoint ejected waits in a bounded queue and tries again every `retryInterval`, until
/// an endpoint answers or `timeout` passes. Only requests whose body is buffered (or empty) are
/// held; the connection never opened, so any method may be sent again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HoldConfig {
    /// Requests held at once (1 to 100,000); one more is answered 503 `hold-queue-full`.
    #[serde(default = "default_hold_max_requests")]
    pub max_requests: u32,
    /// Longest a request is held (1 s to 10 min); then it is answered 503 `hold-timeout`.
    #[serde(default = "default_hold_timeout")]
    pub timeout: ConfigDuration,
    /// How often a held request tries to connect again (10 ms to 5 s).
    #[serde(default = "default_hold_retry_interval")]
    pub retry_interval: ConfigDuration,
}

impl Default for HoldConfig {
    fn default() -> Self {
        HoldConfig {
            max_requests: default_hold_max_requests(),
            timeout: default_hold_timeout(),
            retry_interval: default_hold_retry_interval(),
        }
    }
}

fn default_hold_max_requests() -> u32 {
    1_000
}

fn default_hold_timeout() -> ConfigDuration {
    // A pod's start on a busy node (image present) takes a few seconds; a cold pull takes longer,
    // and clients commonly give up after 30 s.
    ConfigDuration(Duration::from_secs(30))
}

fn default_hold_retry_interval() -> ConfigDuration {
    // Kube-proxy adds the first endpoint's rules within a fraction of a second of the pod's
    // readiness; trying every 100 ms adds at most that much to a cold start.
    ConfigDuration(Duration::from_millis(100))
}

/// The serving certificate (chain) and its private key: PEM files (`certFile` and `keyFile`), or a
/// `kubernetes.io/tls` Secret (`secret`, keys `tls.crt` and `tls.key`) watched through the API
/// server, whose changes take effect for new handshakes without a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the certificate chain, leaf first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM file of the private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// `namespace/name` of a `kubernetes.io/tls` Secret holding the certificate and key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl TlsConfig {
    /// The certificate and key from PEM files.
    pub fn files(cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> TlsConfig {
        TlsConfig {
            cert_file: Some(cert_file.into()),
            key_file: Some(key_file.into()),
            secret: None,
        }
    }

    /// The certificate and key from the Secret `namespace/name`.
    pub fn secret(reference: impl Into<String>) -> TlsConfig {
        TlsConfig {
            cert_file: None,
            key_file: None,
            secret: Some(reference.into()),
        }
    }
}

/// The shared HTTP cache: responses to GET (served to HEAD too) kept by URL and the request headers
/// their `Vary` names, fresh for `s-maxage`, `max-age` or `Expires`, revalidated with `ETag` or
/// `Last-Modified` once stale. Concurrent misses for one URL send one request to the backend.
/// Responses marked `private` or `no-store`, and responses that set cookies or answer requests with
/// `Authorization` (unless `public` or `s-maxage`), are not shared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheConfig {
    /// Most bytes the cache holds (bodies, headers and keys), 1 MiB to 64 GiB; the least recently
    /// used responses are evicted to stay within it.
    pub max_bytes: u64,
    /// Largest response body stored (1 KiB to `maxBytes`); larger responses pass through.
    #[serde(default = "default_cache_max_object_bytes")]
    pub max_object_bytes: u64,
}

impl CacheConfig {
    /// A cache of `max_bytes` with the default object limit.
    pub fn new(max_bytes: u64) -> CacheConfig {
        CacheConfig {
            max_bytes,
            max_object_bytes: default_cache_max_object_bytes(),
        }
    }
}

/// Smallest `maxBytes` a cache may have.
pub const CACHE_MIN_BYTES: u64 = 1 << 20;
/// Largest `maxBytes` a cache may have.
pub const CACHE_MAX_BYTES: u64 = 64 << 30;
/// Smallest `maxObjectBytes`.
pub const CACHE_MIN_OBJECT_BYTES: u64 = 1 << 10;

fn default_cache_max_object_bytes() -> u64 {
    1 << 20
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn minimal() -> serde_json::Value {
        json!({"backends": [{"name": "stable", "endpoints": ["127.0.0.1:9001"]}]})
    }

    #[test]
    fn a_document_without_an_api_version_reads_as_v1alpha1_with_every_default() {
        let config: SplitterConfig = serde_json::from_value(minimal()).unwrap();
        let expected = SplitterConfig::new(
            SocketAddr::from(([0, 0, 0, 0], 8080)),
            vec![BackendConfig::new("stable", vec!["127.0.0.1:9001".to_owned()])],
        );
        assert_eq!(config, expected);
        assert_eq!(config.api_version, ApiVersion::V1alpha1);
        assert_eq!(
            config.backends[0].timeout,
            ConfigDuration(Duration::from_secs(15))
        );
        assert_eq!(
            config.backends[0].connect_timeout,
            ConfigDuration(Duration::from_secs(1))
        );
        assert_eq!(config.backends[0].max_retries, 2);
        assert_eq!(config.limits.max_header_bytes, 16 * 1024);
        assert_eq!(
            config.limits.header_read_timeout,
            ConfigDuration(Duration::from_secs(60))
        );
        assert_eq!(config.retry_budget.min_per_second, 10);
        assert_eq!(config.outlier_detection.consecutive_failures, 5);
        assert!(config.access_log);
    }

    #[test]
    fn the_constructors_give_the_same_defaults_as_an_absent_field() {
        let stickiness: StickinessConfig =
            serde_json::from_value(json!({"source": "header", "name": "x-user"})).unwrap();
        assert_eq!(
            stickiness,
            StickinessConfig::new(AffinitySource::Header, Some("x-user".to_owned()))
        );
        assert!(stickiness.set_cookie);
        assert_eq!(stickiness.virtual_nodes, 160);
        let limits: LimitsConfig = serde_json::from_value(json!({})).unwrap();
        assert_eq!(limits, LimitsConfig::default());
        let outlier: OutlierConfig = serde_json::from_value(json!({})).unwrap();
        assert_eq!(outlier, OutlierConfig::default());
        let budget: RetryBudgetConfig = serde_json::from_value(json!({})).unwrap();
        assert_eq!(budget, RetryBudgetConfig::default());
        let hold: HoldConfig = serde_json::from_value(json!({})).unwrap();
        assert_eq!(hold, HoldConfig::default());
        assert_eq!(hold.max_requests, 1_000);
        assert_eq!(hold.timeout, ConfigDuration(Duration::from_secs(30)));
    }

    #[test]
    fn a_written_document_carries_its_api_version_and_reads_back_equal() {
        let config: SplitterConfig = serde_json::from_value(minimal()).unwrap();
        let written = serde_json::to_value(&config).unwrap();
        assert_eq!(written["apiVersion"], "outrigger.dev/v1alpha1");
        assert_eq!(serde_json::from_value::<SplitterConfig>(written).unwrap(), config);
    }

    #[test]
    fn a_document_of_an_unknown_api_version_is_refused_with_both_versions_named() {
        let mut document = minimal();
        document["apiVersion"] = json!("outrigger.dev/v1beta1");
        let error = serde_json::from_value::<SplitterConfig>(document)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("unknown apiVersion \"outrigger.dev/v1beta1\""),
            "{error}"
        );
        assert!(error.contains("outrigger.dev/v1alpha1"), "{error}");
    }

    #[test]
    fn durations_parse_and_print() {
        let cases = [
            ("250ms", 250),
            ("5s", 5_000),
            ("1m30s", 90_000),
            ("2h", 7_200_000),
        ];
        for (text, millis) in cases {
            assert_eq!(
                text.parse::<ConfigDuration>().unwrap().0,
                Duration::from_millis(millis)
            );
        }
        for bad in ["", "5", "s", "5x", "-1s", "99999999999999999999h"] {
            assert!(bad.parse::<ConfigDuration>().is_err(), "{bad}");
        }
        assert_eq!(ConfigDuration(Duration::from_millis(1_500)).to_string(), "1500ms");
        assert_eq!(ConfigDuration(Duration::from_secs(90)).to_string(), "90s");
    }
}
