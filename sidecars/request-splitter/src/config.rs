//! The splitter's configuration document (a JSON file or a ConfigMap key), its parsing and its
//! validation. Validation is pure and reports every problem with its field path, so an operator
//! fixing a rejected document sees everything wrong with it at once.

use std::{collections::BTreeMap, fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use http::{uri::Authority, HeaderName};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a configuration document was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing the configuration at `{path}`: {message}")]
    Parse { path: String, message: String },
    #[error("invalid configuration: {}", join(problems))]
    Invalid { problems: Vec<Problem> },
}

impl ConfigError {
    /// A fixed category, for metric labels.
    pub fn category(&self) -> &'static str {
        match self {
            ConfigError::Read { .. } => "read",
            ConfigError::Parse { .. } => "parse",
            ConfigError::Invalid { .. } => "invalid",
        }
    }
}

fn join(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// One thing wrong with a document, at a field path such as `backends[1].endpoints[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A duration written as `250ms`, `5s`, `2m` or `1m30s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConfigDuration(pub Duration);

impl FromStr for ConfigDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || format!("{text:?} is not a duration like \"250ms\", \"5s\" or \"1m30s\"");
        let mut total = Duration::ZERO;
        let mut rest = text.trim();
        if rest.is_empty() {
            return Err(invalid());
        }
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(invalid)?;
            let value: u64 = rest[..digits].parse().map_err(|_| invalid())?;
            rest = &rest[digits..];
            let (unit, millis) = if rest.starts_with("ms") {
                ("ms", 1)
            } else if rest.starts_with('s') {
                ("s", 1_000)
            } else if rest.starts_with('m') {
                ("m", 60_000)
            } else if rest.starts_with('h') {
                ("h", 3_600_000)
            } else {
                return Err(invalid());
            };
            rest = &rest[unit.len()..];
            let part = value.checked_mul(millis).ok_or_else(invalid)?;
            total = total
                .checked_add(Duration::from_millis(part))
                .ok_or_else(invalid)?;
        }
        Ok(ConfigDuration(total))
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        if millis.is_multiple_of(1_000) {
            write!(f, "{}s", millis / 1_000)
        } else {
            write!(f, "{millis}ms")
        }
    }
}

impl Serialize for ConfigDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The whole document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SplitterConfig {
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
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub retry_budget: RetryBudgetConfig,
    #[serde(default)]
    pub outlier_detection: OutlierConfig,
    /// Serve TLS (with ALPN `h2` and `http/1.1`) with this certificate. Changing it needs a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Log one line per request (target `access`).
    #[serde(default = "yes")]
    pub access_log: bool,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}

fn yes() -> bool {
    true
}

/// One backend: a version of the service reachable at one or more endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 over cleartext (prior knowledge).
    H2c,
}

/// Where the stickiness key comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StickinessConfig {
    pub source: StickinessSource,
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

fn default_virtual_nodes() -> u32 {
    160
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StickinessSource {
    Header,
    Cookie,
    #[serde(rename = "sourceIP")]
    SourceIp,
}

/// A route: requests that match go to `backend`, whatever the weights say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfig {
    /// Name for metrics and logs.
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    pub backend: String,
}

/// What a request must carry: exactly one of `header` or `cookie`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum RouteMatch {
    Header(ValueMatch),
    Cookie(ValueMatch),
}

/// A named value: present, equal to `exact`, or wholly matching `regex`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueMatch {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// Copies of a share of requests to a shadow backend, fire-and-forget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorConfig {
    pub backend: String,
    /// Percent of requests copied, 0 to 100 (fractions allowed, to 0.01).
    pub percent: f64,
}

/// Limits that protect the proxy from its clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudgetConfig {
    #[serde(default = "default_retry_ratio")]
    pub ratio: f64,
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierConfig {
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    #[serde(default = "default_base_ejection")]
    pub base_ejection_time: ConfigDuration,
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

/// PEM files of the serving certificate (chain) and its private key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Parses a JSON document into a `serde_json::Value` (the form layers are merged in).
pub fn parse_value(text: &[u8]) -> Result<serde_json::Value, ConfigError> {
    serde_json::from_slice(text).map_err(|error| ConfigError::Parse {
        path: ".".to_owned(),
        message: error.to_string(),
    })
}

impl SplitterConfig {
    /// Reads and validates a document.
    pub fn from_value(value: serde_json::Value) -> Result<SplitterConfig, ConfigError> {
        let config: SplitterConfig =
            serde_path_to_error::deserialize(value).map_err(|error| ConfigError::Parse {
                path: error.path().to_string(),
                message: error.inner().to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Parses and validates a JSON text.
    pub fn from_json(text: &[u8]) -> Result<SplitterConfig, ConfigError> {
        SplitterConfig::from_value(parse_value(text)?)
    }

    /// Every problem of the document, or `Ok`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { problems })
        }
    }

    /// The index of a backend by name.
    pub fn backend_index(&self, name: &str) -> Option<usize> {
        self.backends.iter().position(|backend| backend.name == name)
    }

    fn problems(&self) -> Vec<Problem> {
        let mut problems = Problems::default();
        if self.backends.is_empty() {
            problems.push("backends", "at least one backend is required");
        }
        for (index, backend) in self.backends.iter().enumerate() {
            backend.check(&format!("backends[{index}]"), &mut problems);
            if self.backends[..index]
                .iter()
                .any(|other| other.name == backend.name)
            {
                problems.push(
                    format!("backends[{index}].name"),
                    format!("{:?} is used by an earlier backend", backend.name),
                );
            }
        }
        self.check_weights(&mut problems);
        if let Some(stickiness) = &self.stickiness {
            stickiness.check(&mut problems);
        }
        for (index, route) in self.routes.iter().enumerate() {
            let path = format!("routes[{index}]");
            route.check(&path, &mut problems);
            if self.routes[..index].iter().any(|other| other.name == route.name) {
                problems.push(
                    format!("{path}.name"),
                    format!("{:?} is used by an earlier route", route.name),
                );
            }
            if self.backend_index(&route.backend).is_none() {
                problems.push(
                    format!("{path}.backend"),
                    format!("no backend is named {:?}", route.backend),
                );
            }
        }
        if let Some(mirror) = &self.mirror {
            if self.backend_index(&mirror.backend).is_none() {
                problems.push(
                    "mirror.backend",
                    format!("no backend is named {:?}", mirror.backend),
                );
            }
            if !(0.0..=100.0).contains(&mirror.percent) {
                problems.push("mirror.percent", "must be between 0 and 100");
            }
        }
        self.limits.check(&mut problems);
        let budget = &self.retry_budget;
        if !(0.0..=10.0).contains(&budget.ratio) {
            problems.push("retryBudget.ratio", "must be between 0 and 10");
        }
        if budget.min_per_second > 100_000 {
            problems.push("retryBudget.minPerSecond", "must be at most 100000");
        }
        let outlier = &self.outlier_detection;
        if outlier.consecutive_failures == 0 {
            problems.push("outlierDetection.consecutiveFailures", "must be at least 1");
        }
        if outlier.base_ejection_time.0.is_zero() {
            problems.push("outlierDetection.baseEjectionTime", "must be more than 0");
        }
        if outlier.max_ejection_time < outlier.base_ejection_time {
            problems.push(
                "outlierDetection.maxEjectionTime",
                "must be at least baseEjectionTime",
            );
        }
        problems.0
    }

    fn check_weights(&self, problems: &mut Problems) {
        let mut total: i64 = 0;
        for (name, weight) in &self.weights {
            let path = format!("weights.{name}");
            if self.backend_index(name).is_none() {
                problems.push(&path, format!("no backend is named {name:?}"));
            }
            if !(0..=100).contains(weight) {
                problems.push(&path, format!("{weight} is not between 0 and 100"));
            }
            total = total.saturating_add(*weight);
        }
        let single_backend_default = self.weights.is_empty() && self.backends.len() == 1;
        if total != 100 && !single_backend_default {
            problems.push(
                "weights",
                format!("the weights add up to {total}, they must add up to 100"),
            );
        }
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

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}

impl BackendConfig {
    fn check(&self, path: &str, problems: &mut Problems) {
        if !is_dns_label(&self.name) {
            problems.push(
                format!("{path}.name"),
                format!(
                    "{:?} must be 1 to 63 lowercase letters, digits or '-', starting and ending with a letter or digit",
                    self.name
                ),
            );
        }
        if self.endpoints.is_empty() {
            problems.push(format!("{path}.endpoints"), "at least one endpoint is required");
        }
        for (index, endpoint) in self.endpoints.iter().enumerate() {
            if let Err(message) = parse_endpoint(endpoint) {
                problems.push(format!("{path}.endpoints[{index}]"), message);
            }
            if self.endpoints[..index].contains(endpoint) {
                problems.push(
                    format!("{path}.endpoints[{index}]"),
                    format!("{endpoint:?} is listed twice"),
                );
            }
        }
        if self.timeout.0.is_zero() {
            problems.push(format!("{path}.timeout"), "must be more than 0");
        }
        if self.connect_timeout.0.is_zero() {
            problems.push(format!("{path}.connectTimeout"), "must be more than 0");
        }
        if self.max_retries > 10 {
            problems.push(format!("{path}.maxRetries"), "must be at most 10");
        }
    }
}

impl StickinessConfig {
    fn check(&self, problems: &mut Problems) {
        match (self.source, self.name.as_deref()) {
            (StickinessSource::SourceIp, _) => {}
            (StickinessSource::Header, Some(name)) => {
                if HeaderName::from_bytes(name.as_bytes()).is_err() {
                    problems.push("stickiness.name", format!("{name:?} is not a header name"));
                }
            }
            (StickinessSource::Cookie, Some(name)) => {
                if !is_cookie_name(name) {
                    problems.push("stickiness.name", format!("{name:?} is not a cookie name"));
                }
            }
            (_, None) => problems.push("stickiness.name", "required for header and cookie"),
        }
        if !(1..=1_000).contains(&self.virtual_nodes) {
            problems.push("stickiness.virtualNodes", "must be between 1 and 1000");
        }
    }
}

impl RouteConfig {
    fn check(&self, path: &str, problems: &mut Problems) {
        if !is_dns_label(&self.name) {
            problems.push(
                format!("{path}.name"),
                format!("{:?} must be 1 to 63 lowercase letters, digits or '-'", self.name),
            );
        }
        let (kind, value) = match &self.matcher {
            RouteMatch::Header(value) => ("header", value),
            RouteMatch::Cookie(value) => ("cookie", value),
        };
        let field = format!("{path}.match.{kind}");
        let name_ok = match kind {
            "header" => HeaderName::from_bytes(value.name.as_bytes()).is_ok(),
            _ => is_cookie_name(&value.name),
        };
        if !name_ok {
            problems.push(
                format!("{field}.name"),
                format!("{:?} is not a {kind} name", value.name),
            );
        }
        if value.exact.is_some() && value.regex.is_some() {
            problems.push(&field, "give at most one of exact and regex");
        }
        if let Some(pattern) = &value.regex {
            if let Err(error) = compile_whole_match(pattern) {
                problems.push(format!("{field}.regex"), error.to_string());
            }
        }
    }
}

impl LimitsConfig {
    fn check(&self, problems: &mut Problems) {
        if !(1_024..=1_048_576).contains(&self.max_header_bytes) {
            problems.push("limits.maxHeaderBytes", "must be between 1024 and 1048576");
        }
        if !(16..=1_024).contains(&self.max_header_count) {
            problems.push("limits.maxHeaderCount", "must be between 16 and 1024");
        }
        if self.header_read_timeout.0.is_zero() {
            problems.push("limits.headerReadTimeout", "must be more than 0");
        }
        if self.max_connections == 0 {
            problems.push("limits.maxConnections", "must be at least 1");
        }
        if self.max_buffered_body_bytes > 16 * 1_048_576 {
            problems.push("limits.maxBufferedBodyBytes", "must be at most 16777216");
        }
        if !(1..=1_048_576).contains(&self.mirror_queue) {
            problems.push("limits.mirrorQueue", "must be between 1 and 1048576");
        }
        if !(1..=65_536).contains(&self.mirror_in_flight) {
            problems.push("limits.mirrorInFlight", "must be between 1 and 65536");
        }
    }
}

/// A regular expression that must match a whole value.
pub fn compile_whole_match(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
}

/// Parses `host:port` into an authority, rejecting user info and a missing or zero port.
pub fn parse_endpoint(endpoint: &str) -> Result<Authority, String> {
    let authority: Authority = endpoint
        .parse()
        .map_err(|_| format!("{endpoint:?} is not host:port"))?;
    if endpoint.contains('@') || authority.host().is_empty() {
        return Err(format!("{endpoint:?} is not host:port"));
    }
    match authority.port_u16() {
        Some(port) if port > 0 => Ok(authority),
        Some(_) => Err(format!("{endpoint:?} needs a port between 1 and 65535")),
        None => Err(format!("{endpoint:?} is not host:port (no port)")),
    }
}

fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

/// Applies a JSON merge patch (RFC 7386): objects merge key by key, `null` deletes, anything else
/// replaces. The ConfigMap layer is merged over the file layer this way.
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    use serde_json::Value;
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn valid() -> serde_json::Value {
        json!({
            "listen": "127.0.0.1:8080",
            "backends": [
                {"name": "stable", "endpoints": ["127.0.0.1:9001", "127.0.0.1:9002"]},
                {"name": "canary", "endpoints": ["localhost:9003"], "timeout": "250ms", "protocol": "h2c"}
            ],
            "weights": {"stable": 90, "canary": 10},
            "stickiness": {"source": "cookie", "name": "session"},
            "routes": [{"name": "testers", "match": {"header": {"name": "x-canary", "exact": "always"}}, "backend": "canary"}],
            "mirror": {"backend": "canary", "percent": 5}
        })
    }

    fn problems_of(value: serde_json::Value) -> Vec<String> {
        match SplitterConfig::from_value(value) {
            Err(ConfigError::Invalid { problems }) => problems.iter().map(ToString::to_string).collect(),
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn a_complete_document_is_accepted_with_defaults_filled_in() {
        let config = SplitterConfig::from_value(valid()).unwrap();
        assert_eq!(config.backends[1].timeout.0, Duration::from_millis(250));
        assert_eq!(config.backends[0].timeout.0, Duration::from_secs(15));
        assert_eq!(config.backends[1].protocol, UpstreamProtocol::H2c);
        assert_eq!(config.weight_vector(), vec![90, 10]);
        assert_eq!(config.limits.max_header_bytes, 16 * 1024);
        assert_eq!(config.limits.max_header_count, 200);
        assert!(config.access_log);
    }

    #[test]
    fn the_document_survives_a_round_trip_through_json() {
        let config = SplitterConfig::from_value(valid()).unwrap();
        let again = SplitterConfig::from_value(serde_json::to_value(&config).unwrap()).unwrap();
        assert_eq!(config, again);
    }

    #[test]
    fn every_problem_is_reported_with_its_field_path() {
        let problems = problems_of(json!({
            "backends": [
                {"name": "Stable", "endpoints": ["nope", "127.0.0.1:0"], "maxRetries": 11},
                {"name": "canary", "endpoints": []},
                {"name": "canary", "endpoints": ["127.0.0.1:1"]}
            ],
            "weights": {"stable": 90, "canary": 20},
            "stickiness": {"source": "header"},
            "routes": [{"name": "r", "match": {"cookie": {"name": "c", "exact": "a", "regex": "("}}, "backend": "ghost"}],
            "mirror": {"backend": "ghost", "percent": 120},
            "limits": {"maxHeaderBytes": 10, "maxHeaderCount": 2000},
            "outlierDetection": {"consecutiveFailures": 0}
        }));
        let expected = [
            "backends[0].name: \"Stable\" must be",
            "backends[0].endpoints[0]: \"nope\" is not host:port",
            "backends[0].endpoints[1]: \"127.0.0.1:0\" needs a port",
            "backends[0].maxRetries: must be at most 10",
            "backends[1].endpoints: at least one endpoint is required",
            "backends[2].name: \"canary\" is used by an earlier backend",
            "weights.stable: no backend is named \"stable\"",
            "weights: the weights add up to 110",
            "stickiness.name: required for header and cookie",
            "routes[0].match.cookie: give at most one of exact and regex",
            "routes[0].match.cookie.regex: regex parse error",
            "routes[0].backend: no backend is named \"ghost\"",
            "mirror.backend: no backend is named \"ghost\"",
            "mirror.percent: must be between 0 and 100",
            "limits.maxHeaderBytes: must be between 1024 and 1048576",
            "limits.maxHeaderCount: must be between 16 and 1024",
            "outlierDetection.consecutiveFailures: must be at least 1",
        ];
        for needle in expected {
            assert!(
                problems.iter().any(|problem| problem.starts_with(needle)),
                "missing {needle:?} in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    }

    #[test]
    fn type_errors_name_the_field_that_is_wrong() {
        let mut value = valid();
        value["backends"][1]["timeout"] = json!("soon");
        match SplitterConfig::from_value(value) {
            Err(ConfigError::Parse { path, message }) => {
                assert_eq!(path, "backends[1].timeout");
                assert!(message.contains("is not a duration"), "{message}");
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
        let mut value = valid();
        value["wieghts"] = json!({});
        match SplitterConfig::from_value(value) {
            Err(ConfigError::Parse { message, .. }) => assert!(message.contains("wieghts"), "{message}"),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn a_lone_backend_needs_no_weights_but_two_do() {
        let config = SplitterConfig::from_value(json!({
            "backends": [{"name": "only", "endpoints": ["127.0.0.1:1"]}]
        }))
        .unwrap();
        assert_eq!(config.weight_vector(), vec![100]);
        let problems = problems_of(json!({
            "backends": [{"name": "a", "endpoints": ["127.0.0.1:1"]}, {"name": "b", "endpoints": ["127.0.0.1:2"]}]
        }));
        assert_eq!(
            problems,
            ["weights: the weights add up to 0, they must add up to 100"]
        );
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

    #[test]
    fn merge_patch_overrides_deletes_and_keeps() {
        let mut base =
            json!({"weights": {"stable": 100}, "mirror": {"backend": "c", "percent": 5}, "accessLog": true});
        merge_patch(
            &mut base,
            &json!({"weights": {"stable": 80, "canary": 20}, "mirror": null}),
        );
        assert_eq!(
            base,
            json!({"weights": {"stable": 80, "canary": 20}, "accessLog": true})
        );
    }

    #[test]
    fn endpoints_need_a_host_and_a_port() {
        assert!(parse_endpoint("10.0.0.1:80").is_ok());
        assert!(parse_endpoint("[::1]:80").is_ok());
        assert!(parse_endpoint("canary.default.svc:8080").is_ok());
        for bad in ["10.0.0.1", "user@host:80", ":80", "host:99999", "http://host:80"] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }
}
