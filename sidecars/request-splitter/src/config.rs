//! The splitter's configuration document (a JSON file or a ConfigMap key), its parsing and its
//! validation. The document's types are the contract the operator writes them with
//! (`outrigger_contract::splitter`); what the splitter adds is here. Validation is pure and reports
//! every problem with its field path, so an operator fixing a rejected document sees everything
//! wrong with it at once.

use std::{fmt, path::PathBuf};

use http::{uri::Authority, HeaderName};
pub use outrigger_contract::{
    json::merge_patch,
    splitter::*,
    // The splitter's name for where a stickiness key comes from.
    AffinitySource as StickinessSource,
};

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

/// Parses a JSON document into a `serde_json::Value` (the form layers are merged in).
pub fn parse_value(text: &[u8]) -> Result<serde_json::Value, ConfigError> {
    serde_json::from_slice(text).map_err(|error| ConfigError::Parse {
        path: ".".to_owned(),
        message: error.to_string(),
    })
}

/// What the splitter adds to the contract's document: reading it with the field path of a type error,
/// and validating it as a whole.
pub trait SplitterConfigExt: Sized {
    /// Reads and validates a document.
    fn from_value(value: serde_json::Value) -> Result<Self, ConfigError>;
    /// Parses and validates a JSON text.
    fn from_json(text: &[u8]) -> Result<Self, ConfigError>;
    /// Every problem of the document, or `Ok`.
    fn validate(&self) -> Result<(), ConfigError>;
}

impl SplitterConfigExt for SplitterConfig {
    fn from_value(value: serde_json::Value) -> Result<SplitterConfig, ConfigError> {
        let config: SplitterConfig =
            serde_path_to_error::deserialize(value).map_err(|error| ConfigError::Parse {
                path: error.path().to_string(),
                message: error.inner().to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    fn from_json(text: &[u8]) -> Result<SplitterConfig, ConfigError> {
        SplitterConfig::from_value(parse_value(text)?)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let problems = problems(self);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { problems })
        }
    }
}

fn problems(config: &SplitterConfig) -> Vec<Problem> {
    let mut problems = Problems::default();
    if config.backends.is_empty() {
        problems.push("backends", "at least one backend is required");
    }
    for (index, backend) in config.backends.iter().enumerate() {
        check_backend(backend, &format!("backends[{index}]"), &mut problems);
        if config.backends[..index]
            .iter()
            .any(|other| other.name == backend.name)
        {
            problems.push(
                format!("backends[{index}].name"),
                format!("{:?} is used by an earlier backend", backend.name),
            );
        }
    }
    check_weights(config, &mut problems);
    if let Some(stickiness) = &config.stickiness {
        check_stickiness(stickiness, &mut problems);
    }
    for (index, route) in config.routes.iter().enumerate() {
        let path = format!("routes[{index}]");
        check_route(route, &path, &mut problems);
        if config.routes[..index]
            .iter()
            .any(|other| other.name == route.name)
        {
            problems.push(
                format!("{path}.name"),
                format!("{:?} is used by an earlier route", route.name),
            );
        }
        if config.backend_index(&route.backend).is_none() {
            problems.push(
                format!("{path}.backend"),
                format!("no backend is named {:?}", route.backend),
            );
        }
    }
    if let Some(mirror) = &config.mirror {
        if config.backend_index(&mirror.backend).is_none() {
            problems.push(
                "mirror.backend",
                format!("no backend is named {:?}", mirror.backend),
            );
        }
        if !(0.0..=100.0).contains(&mirror.percent) {
            problems.push("mirror.percent", "must be between 0 and 100");
        }
    }
    check_limits(&config.limits, &mut problems);
    let budget = &config.retry_budget;
    if !(0.0..=10.0).contains(&budget.ratio) {
        problems.push("retryBudget.ratio", "must be between 0 and 10");
    }
    if budget.min_per_second > 100_000 {
        problems.push("retryBudget.minPerSecond", "must be at most 100000");
    }
    let outlier = &config.outlier_detection;
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
    if let Some(hold) = &config.hold {
        check_hold(hold, &mut problems);
    }
    if let Some(limits) = &config.rate_limits {
        check_rate_limits(limits, &mut problems);
    }
    if let Some(cache) = &config.cache {
        check_cache(cache, &mut problems);
    }
    if let Some(tls) = &config.tls {
        check_tls(tls, &mut problems);
    }
    problems.0
}

fn check_cache(cache: &CacheConfig, problems: &mut Problems) {
    if !(CACHE_MIN_BYTES..=CACHE_MAX_BYTES).contains(&cache.max_bytes) {
        problems.push("cache.maxBytes", "must be between 1 MiB (1048576) and 64 GiB");
    }
    if cache.max_object_bytes < CACHE_MIN_OBJECT_BYTES || cache.max_object_bytes > cache.max_bytes {
        problems.push(
            "cache.maxObjectBytes",
            "must be between 1 KiB (1024) and maxBytes",
        );
    }
}

fn check_tls(tls: &TlsConfig, problems: &mut Problems) {
    let files = tls.cert_file.is_some() || tls.key_file.is_some();
    match (&tls.secret, files) {
        (Some(_), true) => problems.push("tls", "give either certFile and keyFile, or secret"),
        (None, false) => problems.push("tls", "needs certFile and keyFile, or secret"),
        (None, true) => {
            if tls.cert_file.is_none() {
                problems.push("tls.certFile", "is required with keyFile");
            }
            if tls.key_file.is_none() {
                problems.push("tls.keyFile", "is required with certFile");
            }
        }
        (Some(secret), false) => {
            let valid = secret.split_once('/').is_some_and(|(namespace, name)| {
                !namespace.is_empty() && !name.is_empty() && !name.contains('/')
            });
            if !valid {
                problems.push("tls.secret", "must be namespace/name");
            }
        }
    }
}

fn check_hold(hold: &HoldConfig, problems: &mut Problems) {
    use std::time::Duration;
    if !(1..=100_000).contains(&hold.max_requests) {
        problems.push("hold.maxRequests", "must be between 1 and 100000");
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&hold.timeout.0) {
        problems.push("hold.timeout", "must be between 1s and 10m");
    }
    if !(Duration::from_millis(10)..=Duration::from_secs(5)).contains(&hold.retry_interval.0) {
        problems.push("hold.retryInterval", "must be between 10ms and 5s");
    }
}

fn check_rate_limits(limits: &RateLimitsConfig, problems: &mut Problems) {
    match (limits.key.source, limits.key.name.as_deref()) {
        (StickinessSource::SourceIp, _) => {}
        (StickinessSource::Header, Some(name)) => {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                problems.push("rateLimits.key.name", format!("{name:?} is not a header name"));
            }
        }
        (StickinessSource::Cookie, Some(name)) => {
            if !is_cookie_name(name) {
                problems.push("rateLimits.key.name", format!("{name:?} is not a cookie name"));
            }
        }
        (_, None) => problems.push("rateLimits.key.name", "required for header and cookie"),
    }
    if let Some(name) = &limits.identity_header {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            problems.push(
                "rateLimits.identityHeader",
                format!("{name:?} is not a header name"),
            );
        }
    }
    let identified = limits.identified.is_some() || limits.routes.iter().any(|r| r.identified.is_some());
    if identified && limits.identity_header.is_none() {
        problems.push("rateLimits.identityHeader", "required with identified limits");
    }
    let bucket = |problems: &mut Problems, path: String, bucket: Option<&TokenBucketConfig>| {
        let Some(bucket) = bucket else { return };
        if !(bucket.requests_per_second > 0.0 && bucket.requests_per_second <= 1_000_000.0) {
            problems.push(
                format!("{path}.requestsPerSecond"),
                "must be above 0 and at most 1000000",
            );
        }
        if !(1..=10_000_000).contains(&bucket.burst) {
            problems.push(format!("{path}.burst"), "must be between 1 and 10000000");
        }
    };
    bucket(
        problems,
        "rateLimits.anonymous".to_owned(),
        limits.anonymous.as_ref(),
    );
    bucket(
        problems,
        "rateLimits.identified".to_owned(),
        limits.identified.as_ref(),
    );
    for (index, route) in limits.routes.iter().enumerate() {
        let path = format!("rateLimits.routes[{index}]");
        bucket(problems, format!("{path}.anonymous"), route.anonymous.as_ref());
        bucket(problems, format!("{path}.identified"), route.identified.as_ref());
        if !route.path_prefix.starts_with('/') {
            problems.push(format!("{path}.pathPrefix"), "must start with /");
        }
        if limits.routes[..index]
            .iter()
            .any(|other| other.path_prefix == route.path_prefix)
        {
            problems.push(
                format!("{path}.pathPrefix"),
                format!("{:?} is given by an earlier route", route.path_prefix),
            );
        }
        if route.anonymous.is_none() && route.identified.is_none() {
            problems.push(path, "give an anonymous or an identified limit");
        }
    }
    if !(1..=10_000_000).contains(&limits.max_keys) {
        problems.push("rateLimits.maxKeys", "must be between 1 and 10000000");
    }
}

fn check_weights(config: &SplitterConfig, problems: &mut Problems) {
    let mut total: i64 = 0;
    for (name, weight) in &config.weights {
        let path = format!("weights.{name}");
        if config.backend_index(name).is_none() {
            problems.push(&path, format!("no backend is named {name:?}"));
        }
        if !(0..=100).contains(weight) {
            problems.push(&path, format!("{weight} is not between 0 and 100"));
        }
        total = total.saturating_add(*weight);
    }
    let single_backend_default = config.weights.is_empty() && config.backends.len() == 1;
    if total != 100 && !single_backend_default {
        problems.push(
            "weights",
            format!("the weights add up to {total}, they must add up to 100"),
        );
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

fn check_backend(backend: &BackendConfig, path: &str, problems: &mut Problems) {
    if !is_dns_label(&backend.name) {
        problems.push(
            format!("{path}.name"),
            format!(
                "{:?} must be 1 to 63 lowercase letters, digits or '-', starting and ending with a letter or digit",
                backend.name
            ),
        );
    }
    if backend.endpoints.is_empty() {
        problems.push(format!("{path}.endpoints"), "at least one endpoint is required");
    }
    for (index, endpoint) in backend.endpoints.iter().enumerate() {
        if let Err(message) = parse_endpoint(endpoint) {
            problems.push(format!("{path}.endpoints[{index}]"), message);
        }
        if backend.endpoints[..index].contains(endpoint) {
            problems.push(
                format!("{path}.endpoints[{index}]"),
                format!("{endpoint:?} is listed twice"),
            );
        }
    }
    if backend.timeout.0.is_zero() {
        problems.push(format!("{path}.timeout"), "must be more than 0");
    }
    if backend.connect_timeout.0.is_zero() {
        problems.push(format!("{path}.connectTimeout"), "must be more than 0");
    }
    if backend.max_retries > 10 {
        problems.push(format!("{path}.maxRetries"), "must be at most 10");
    }
    if let Some(discovery) = &backend.discovery {
        for (field, value) in [
            ("namespace", &discovery.namespace),
            ("service", &discovery.service),
        ] {
            if !is_dns_label(value) {
                problems.push(
                    format!("{path}.discovery.{field}"),
                    format!("{value:?} is not a Kubernetes name (a DNS label)"),
                );
            }
        }
    }
}

fn check_stickiness(stickiness: &StickinessConfig, problems: &mut Problems) {
    match (stickiness.source, stickiness.name.as_deref()) {
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
    if !(1..=1_000).contains(&stickiness.virtual_nodes) {
        problems.push("stickiness.virtualNodes", "must be between 1 and 1000");
    }
}

fn check_route(route: &RouteConfig, path: &str, problems: &mut Problems) {
    if !is_dns_label(&route.name) {
        problems.push(
            format!("{path}.name"),
            format!(
                "{:?} must be 1 to 63 lowercase letters, digits or '-'",
                route.name
            ),
        );
    }
    let (kind, value) = match &route.matcher {
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

fn check_limits(limits: &LimitsConfig, problems: &mut Problems) {
    if !(1_024..=1_048_576).contains(&limits.max_header_bytes) {
        problems.push("limits.maxHeaderBytes", "must be between 1024 and 1048576");
    }
    if limits.header_read_timeout.0.is_zero() {
        problems.push("limits.headerReadTimeout", "must be more than 0");
    }
    if !(16..=1_024).contains(&limits.max_header_count) {
        problems.push("limits.maxHeaderCount", "must be between 16 and 1024");
    }
    if limits.max_connections == 0 {
        problems.push("limits.maxConnections", "must be at least 1");
    }
    if limits.max_buffered_body_bytes > 16 * 1_048_576 {
        problems.push("limits.maxBufferedBodyBytes", "must be at most 16777216");
    }
    if !(1..=1_048_576).contains(&limits.mirror_queue) {
        problems.push("limits.mirrorQueue", "must be between 1 and 1048576");
    }
    if !(1..=65_536).contains(&limits.mirror_in_flight) {
        problems.push("limits.mirrorInFlight", "must be between 1 and 65536");
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
            "outlierDetection": {"consecutiveFailures": 0},
            "hold": {"maxRequests": 0, "timeout": "500ms", "retryInterval": "1ms"}
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
            "hold.maxRequests: must be between 1 and 100000",
            "hold.timeout: must be between 1s and 10m",
            "hold.retryInterval: must be between 10ms and 5s",
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
    fn rate_limits_are_checked_field_by_field() {
        let mut value = valid();
        value["rateLimits"] = json!({
            "key": {"source": "cookie"},
            "anonymous": {"requestsPerSecond": 0, "burst": 0},
            "identified": {"requestsPerSecond": 5.5, "burst": 5},
            "routes": [{"pathPrefix": "api", "anonymous": {"requestsPerSecond": 1, "burst": 1}}, {"pathPrefix": "api"}],
            "maxKeys": 0
        });
        let problems = problems_of(value);
        let expected = [
            "rateLimits.key.name: required",
            "rateLimits.identityHeader: required with identified limits",
            "rateLimits.anonymous.requestsPerSecond: must be above 0",
            "rateLimits.anonymous.burst: must be between 1",
            "rateLimits.routes[0].pathPrefix: must start with /",
            "rateLimits.routes[1].pathPrefix: must start with /",
            "rateLimits.routes[1].pathPrefix: \"api\" is given by an earlier route",
            "rateLimits.routes[1]: give an anonymous or an identified limit",
            "rateLimits.maxKeys: must be between 1",
        ];
        for needle in expected {
            assert!(
                problems.iter().any(|problem| problem.starts_with(needle)),
                "missing {needle:?} in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), expected.len(), "{problems:#?}");
        let mut value = valid();
        value["rateLimits"] =
            json!({"identityHeader": "x-api-key", "identified": {"requestsPerSecond": 5.5, "burst": 5}});
        assert!(SplitterConfig::from_value(value).is_ok());
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
    fn a_document_of_an_unknown_api_version_is_a_parse_error_at_api_version() {
        let mut value = valid();
        value["apiVersion"] = json!("outrigger.dev/v2");
        match SplitterConfig::from_value(value) {
            Err(ConfigError::Parse { path, message }) => {
                assert_eq!(path, "apiVersion");
                assert!(
                    message.contains("unknown apiVersion \"outrigger.dev/v2\""),
                    "{message}"
                );
            }
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
    fn endpoints_need_a_host_and_a_port() {
        assert!(parse_endpoint("10.0.0.1:80").is_ok());
        assert!(parse_endpoint("[::1]:80").is_ok());
        assert!(parse_endpoint("canary.default.svc:8080").is_ok());
        for bad in ["10.0.0.1", "user@host:80", ":80", "host:99999", "http://host:80"] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }
}
