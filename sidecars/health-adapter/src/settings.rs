//! Settings from the service's spec, as the JSON object of strings in `OUTRIGGER_SETTINGS`.
//!
//! | key         | value                                                                  |
//! |-------------|------------------------------------------------------------------------|
//! | `checks`    | JSON list of checks (below)                                            |
//! | `probeApp`  | `"true"`: injection points the app's probes at this adapter            |
//! | `probeAddr` | address of `/livez`, `/readyz`, `/startupz` (`0.0.0.0:9926`)           |
//!
//! A check: `{"name", "type": "tcp" | "http" | "redis" | "metric", "probes": ["liveness",
//! "readiness", "startup"], "dependency", "intervalMs", "timeoutMs", "failureThreshold",
//! "successThreshold"}` plus, by type: `address` (tcp, redis: loopback `HOST:PORT`); `url`,
//! `status` (`"200-399"`), `bodyContains` (http); `url`, `metric`, `labels`, `above`, `below`
//! (metric). A `dependency` (every Redis check is one) may only affect readiness: an outage of
//! something the app needs must take the pod out of its Service, never restart the app.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use outrigger_contract::sidecars::{HEALTH_PROBE_APP_SETTING, HEALTH_PROBE_PORT};
use outrigger_metrics_adapter::collect::http::{parse_local_address, LocalUrl, UrlError};
use serde::Deserialize;

/// Which endpoint a check counts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    Liveness,
    Readiness,
    Startup,
}

impl Probe {
    pub const ALL: [Probe; 3] = [Probe::Liveness, Probe::Readiness, Probe::Startup];

    pub fn as_str(self) -> &'static str {
        match self {
            Probe::Liveness => "liveness",
            Probe::Readiness => "readiness",
            Probe::Startup => "startup",
        }
    }

    /// The endpoint path.
    pub fn path(self) -> &'static str {
        match self {
            Probe::Liveness => "/livez",
            Probe::Readiness => "/readyz",
            Probe::Startup => "/startupz",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum CheckType {
    Tcp,
    Http,
    Redis,
    Metric,
}

/// One check as the settings give it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CheckSpec {
    name: String,
    r#type: CheckType,
    #[serde(default)]
    probes: Option<Vec<Probe>>,
    #[serde(default)]
    dependency: Option<bool>,
    #[serde(default)]
    interval_ms: Option<u64>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    failure_threshold: Option<u32>,
    #[serde(default)]
    success_threshold: Option<u32>,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    body_contains: Option<String>,
    #[serde(default)]
    metric: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    above: Option<f64>,
    #[serde(default)]
    below: Option<f64>,
}

/// What a check probes.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Tcp(SocketAddr),
    Http {
        url: LocalUrl,
        /// Inclusive range of statuses that pass.
        status: (u16, u16),
        body_contains: Option<String>,
    },
    Redis(SocketAddr),
    Metric {
        url: LocalUrl,
        metric: String,
        labels: Vec<(String, String)>,
        above: Option<f64>,
        below: Option<f64>,
    },
}

impl Target {
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Tcp(_) => "tcp",
            Target::Http { .. } => "http",
            Target::Redis(_) => "redis",
            Target::Metric { .. } => "metric",
        }
    }
}

/// One check, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub name: String,
    pub target: Target,
    pub probes: Vec<Probe>,
    pub dependency: bool,
    pub interval: Duration,
    pub timeout: Duration,
    /// Failures in a row that turn a passing check failing.
    pub failure_threshold: u32,
    /// Successes in a row that turn a failing (or new) check passing.
    pub success_threshold: u32,
}

/// Everything the health adapter reads from its settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub checks: Vec<Check>,
    pub probe_addr: SocketAddr,
    pub unknown: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            checks: Vec::new(),
            probe_addr: SocketAddr::from(([0, 0, 0, 0], HEALTH_PROBE_PORT)),
            unknown: Vec::new(),
        }
    }
}

/// Why the settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("OUTRIGGER_SETTINGS is not a JSON object of strings: {0}")]
    NotAMap(#[source] serde_json::Error),
    #[error("setting checks: {0}")]
    Checks(#[source] serde_json::Error),
    #[error("check {check}: {message}")]
    Check { check: String, message: String },
    #[error("check {check}: {source}")]
    Url { check: String, source: UrlError },
    #[error("setting probeAddr {0:?} is not an address")]
    ProbeAddr(String),
}

fn parse_status(text: &str) -> Option<(u16, u16)> {
    let (low, high) = text.split_once('-').unwrap_or((text, text));
    let (low, high): (u16, u16) = (low.trim().parse().ok()?, high.trim().parse().ok()?);
    (100..=599).contains(&low).then_some(())?;
    (low <= high && high <= 599).then_some((low, high))
}

impl Check {
    fn from_spec(spec: CheckSpec) -> Result<Check, SettingsError> {
        let name = spec.name.clone();
        let invalid = |message: &str| SettingsError::Check {
            check: name.clone(),
            message: message.to_owned(),
        };
        let url_of = |url: &Option<String>| -> Result<LocalUrl, SettingsError> {
            let url = url.as_deref().ok_or_else(|| invalid("needs a url"))?;
            LocalUrl::parse(url).map_err(|source| SettingsError::Url {
                check: name.clone(),
                source,
            })
        };
        let address_of = |address: &Option<String>| -> Result<SocketAddr, SettingsError> {
            let address = address.as_deref().ok_or_else(|| invalid("needs an address"))?;
            parse_local_address(address.trim_start_matches("redis://")).map_err(|source| SettingsError::Url {
                check: name.clone(),
                source,
            })
        };
        if name.is_empty()
            || name.len() > 63
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid("the name must be 1 to 63 letters, digits, '-' or '_'"));
        }
        let target = match spec.r#type {
            CheckType::Tcp => Target::Tcp(address_of(&spec.address)?),
            CheckType::Redis => Target::Redis(address_of(&spec.address)?),
            CheckType::Http => Target::Http {
                url: url_of(&spec.url)?,
                status: match spec.status.as_deref() {
                    None => (200, 399),
                    Some(text) => {
                        parse_status(text).ok_or_else(|| invalid("status must be like 200 or 200-399"))?
                    }
                },
                body_contains: spec.body_contains.clone(),
            },
            CheckType::Metric => {
                if spec.above.is_none() && spec.below.is_none() {
                    return Err(invalid("a metric check needs above or below"));
                }
                Target::Metric {
                    url: url_of(&spec.url)?,
                    metric: spec.metric.clone().ok_or_else(|| invalid("needs a metric"))?,
                    labels: spec.labels.clone().into_iter().collect(),
                    above: spec.above,
                    below: spec.below,
                }
            }
        };
        let dependency = spec.dependency.unwrap_or(matches!(target, Target::Redis(_)));
        let probes = spec.probes.clone().unwrap_or_else(|| {
            if dependency {
                vec![Probe::Readiness]
            } else {
                vec![Probe::Liveness, Probe::Readiness]
            }
        });
        if dependency && probes.iter().any(|p| *p != Probe::Readiness) {
            return Err(invalid(
                "a dependency may only affect readiness: an outage must not restart the app",
            ));
        }
        let positive = |value: Option<u64>, default: u64| value.filter(|v| *v > 0).unwrap_or(default);
        let interval = Duration::from_millis(positive(spec.interval_ms, 2000));
        let timeout = Duration::from_millis(positive(spec.timeout_ms, 1000));
        Ok(Check {
            name: spec.name,
            target,
            probes,
            dependency,
            interval,
            timeout,
            failure_threshold: spec.failure_threshold.filter(|n| *n > 0).unwrap_or(3),
            success_threshold: spec.success_threshold.filter(|n| *n > 0).unwrap_or(1),
        })
    }
}

impl Settings {
    /// Reads the JSON map; an empty text is no settings.
    pub fn from_json(text: &str) -> Result<Settings, SettingsError> {
        if text.trim().is_empty() {
            return Ok(Settings::default());
        }
        let map: BTreeMap<String, String> = serde_json::from_str(text).map_err(SettingsError::NotAMap)?;
        Settings::from_map(&map)
    }

    pub fn from_map(map: &BTreeMap<String, String>) -> Result<Settings, SettingsError> {
        let mut settings = Settings::default();
        for (key, value) in map {
            match key.as_str() {
                "checks" => {
                    let specs: Vec<CheckSpec> = serde_json::from_str(value).map_err(SettingsError::Checks)?;
                    for spec in specs {
                        if settings.checks.iter().any(|c| c.name == spec.name) {
                            return Err(SettingsError::Check {
                                check: spec.name,
                                message: "two checks have this name".to_owned(),
                            });
                        }
                        settings.checks.push(Check::from_spec(spec)?);
                    }
                }
                "probeAddr" => {
                    settings.probe_addr = value
                        .parse()
                        .map_err(|_| SettingsError::ProbeAddr(value.clone()))?;
                }
                // Read by injection, which points the app's probes here.
                key if key == HEALTH_PROBE_APP_SETTING => {}
                _ => settings.unknown.push(key.clone()),
            }
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn settings(checks: serde_json::Value) -> Result<Settings, SettingsError> {
        Settings::from_json(&json!({"checks": checks.to_string(), "probeApp": "true"}).to_string())
    }

    #[test]
    fn checks_of_every_type_read_with_their_defaults() {
        let settings = settings(json!([
            {"name": "port", "type": "tcp", "address": "127.0.0.1:8080", "probes": ["liveness", "startup"]},
            {"name": "app", "type": "http", "url": "http://localhost:8080/healthz", "status": "200", "bodyContains": "ok"},
            {"name": "cache", "type": "redis", "address": "redis://127.0.0.1:6379", "failureThreshold": 2},
            {"name": "backlog", "type": "metric", "url": "http://127.0.0.1:8080/metrics", "metric": "queue_depth",
             "labels": {"queue": "mail"}, "below": 1000, "intervalMs": 5000},
        ]))
        .unwrap();
        assert!(settings.unknown.is_empty());
        let [port, app, cache, backlog] = &settings.checks[..] else {
            panic!("four checks expected")
        };
        assert_eq!(port.probes, [Probe::Liveness, Probe::Startup]);
        assert_eq!(app.probes, [Probe::Liveness, Probe::Readiness]);
        assert!(matches!(
            &app.target,
            Target::Http {
                status: (200, 200),
                ..
            }
        ));
        assert!(cache.dependency, "a Redis is a dependency");
        assert_eq!(cache.probes, [Probe::Readiness]);
        assert_eq!((cache.failure_threshold, cache.success_threshold), (2, 1));
        assert_eq!(backlog.interval, Duration::from_secs(5));
        assert_eq!(settings.probe_addr.port(), HEALTH_PROBE_PORT);
    }

    #[test]
    fn a_dependency_in_liveness_is_refused() {
        let error = settings(json!([
            {"name": "cache", "type": "redis", "address": "127.0.0.1:6379", "probes": ["readiness", "liveness"]},
        ]))
        .unwrap_err()
        .to_string();
        assert!(error.contains("only affect readiness"), "{error}");
    }

    #[test]
    fn targets_off_loopback_and_incomplete_checks_are_refused() {
        for (checks, want) in [
            (
                json!([{"name": "x", "type": "tcp", "address": "10.1.2.3:80"}]),
                "loopback",
            ),
            (json!([{"name": "x", "type": "http"}]), "needs a url"),
            (
                json!([{"name": "x", "type": "metric", "url": "http://127.0.0.1:1/", "metric": "m"}]),
                "above or below",
            ),
            (
                json!([{"name": "x y", "type": "tcp", "address": "127.0.0.1:1"}]),
                "name must",
            ),
            (
                json!([{"name": "x", "type": "http", "url": "http://127.0.0.1:1/", "status": "700"}]),
                "status",
            ),
            (json!([{"name": "x", "type": "ping"}]), "setting checks"),
        ] {
            let error = settings(checks).unwrap_err().to_string();
            assert!(error.contains(want), "{error}");
        }
    }
}
