//! Settings from the service's spec: injection hands a sidecar its `settings` map as the JSON
//! object in `OUTRIGGER_SETTINGS` (string keys, string values). Structured values (target lists,
//! mapping rules) are JSON inside the string.
//!
//! | key                  | value                                                           |
//! |----------------------|-----------------------------------------------------------------|
//! | `redis`              | Redis on loopback: `127.0.0.1:6379` (`redis://` allowed)        |
//! | `json`               | JSON list of `{name, url, metrics: [{name, path, type, help, labels}]}` |
//! | `prometheus`         | JSON list of `{name, url, relabel: [{action, sourceLabels, regex, targetLabel, replacement}]}` |
//! | `statsd`             | UDP address to listen on, loopback: `127.0.0.1:9125`             |
//! | `statsdMappings`     | JSON list of `{match, name, labels}`                            |
//! | `statsdBuckets`      | histogram buckets, comma-separated, seconds for timers          |
//! | `statsdMaxSeries`    | most StatsD series kept (10000)                                 |
//! | `maxSeries`          | most series of the fetching collectors in one scrape (20000)    |
//! | `scrapeBudgetMs`     | how long a scrape waits for fresh values (2000)                 |
//! | `collectTimeoutMs`   | when a collection is abandoned (10000)                          |
//! | `maxBodyBytes`       | largest app response read (8 MiB)                               |

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use crate::{
    collect::{
        http::{parse_local_address, LocalUrl, UrlError},
        json::{JsonMapping, JsonTargetSpec, MappingError as JsonMappingError},
        prom::{PromTargetSpec, Relabel, RelabelError},
        Limits,
    },
    statsd::{Mapper, MappingError as StatsdMappingError, MappingSpec, DEFAULT_BUCKETS},
};

/// A JSON target, compiled.
#[derive(Debug, Clone)]
pub struct JsonTarget {
    pub name: String,
    pub url: LocalUrl,
    pub mapping: JsonMapping,
}

/// A passthrough target, compiled.
#[derive(Debug, Clone)]
pub struct PromTarget {
    pub name: String,
    pub url: LocalUrl,
    pub relabel: Relabel,
}

/// StatsD settings.
#[derive(Debug, Clone)]
pub struct StatsdSettings {
    pub listen: SocketAddr,
    pub mapper: Mapper,
    pub buckets: Vec<f64>,
    pub max_series: usize,
}

/// Everything the metrics adapter reads from its settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub redis: Option<SocketAddr>,
    pub json: Vec<JsonTarget>,
    pub prometheus: Vec<PromTarget>,
    pub statsd: Option<StatsdSettings>,
    pub max_series: usize,
    pub scrape_budget: Duration,
    pub limits: Limits,
    /// Keys this adapter does not know, to log.
    pub unknown: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            redis: None,
            json: Vec::new(),
            prometheus: Vec::new(),
            statsd: None,
            max_series: 20_000,
            scrape_budget: Duration::from_millis(2000),
            limits: Limits {
                timeout: Duration::from_millis(10_000),
                max_body_bytes: 8 << 20,
            },
            unknown: Vec::new(),
        }
    }
}

/// Why the settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("OUTRIGGER_SETTINGS is not a JSON object of strings: {0}")]
    NotAMap(#[source] serde_json::Error),
    #[error("setting {key}: {source}")]
    Json {
        key: &'static str,
        source: serde_json::Error,
    },
    #[error("setting {key}: {source}")]
    Url { key: &'static str, source: UrlError },
    #[error("setting json: {0}")]
    JsonMapping(#[from] JsonMappingError),
    #[error("setting prometheus: {0}")]
    Relabel(#[from] RelabelError),
    #[error("setting statsdMappings: {0}")]
    StatsdMapping(#[from] StatsdMappingError),
    #[error("setting {key} {value:?} is not a positive number")]
    Number { key: &'static str, value: String },
    #[error("setting statsdBuckets {0:?} is not an increasing list of numbers")]
    Buckets(String),
    #[error("two {kind} targets are named {name:?}")]
    DuplicateName { kind: &'static str, name: String },
}

fn positive(key: &'static str, value: &str) -> Result<u64, SettingsError> {
    value
        .trim()
        .parse()
        .ok()
        .filter(|n: &u64| *n > 0)
        .ok_or_else(|| SettingsError::Number {
            key,
            value: value.to_owned(),
        })
}

fn usize_of(key: &'static str, value: &str) -> Result<usize, SettingsError> {
    usize::try_from(positive(key, value)?).map_err(|_| SettingsError::Number {
        key,
        value: value.to_owned(),
    })
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

    /// Reads a settings map however it arrived (the variable, or this sidecar's entry in the
    /// service's `sidecars.json`).
    pub fn from_map(map: &BTreeMap<String, String>) -> Result<Settings, SettingsError> {
        let mut settings = Settings::default();
        let mut statsd_listen = None;
        let mut statsd_mappings = Vec::new();
        let mut statsd_buckets = DEFAULT_BUCKETS.to_vec();
        let mut statsd_max_series = 10_000;
        for (key, value) in map {
            match key.as_str() {
                "redis" => {
                    let address = value.trim().trim_start_matches("redis://").trim_end_matches('/');
                    settings.redis = Some(
                        parse_local_address(address)
                            .map_err(|source| SettingsError::Url { key: "redis", source })?,
                    );
                }
                "json" => {
                    let specs: Vec<JsonTargetSpec> = serde_json::from_str(value)
                        .map_err(|source| SettingsError::Json { key: "json", source })?;
                    for spec in specs {
                        if settings.json.iter().any(|t| t.name == spec.name) {
                            return Err(SettingsError::DuplicateName {
                                kind: "json",
                                name: spec.name,
                            });
                        }
                        settings.json.push(JsonTarget {
                            url: LocalUrl::parse(&spec.url)
                                .map_err(|source| SettingsError::Url { key: "json", source })?,
                            mapping: JsonMapping::compile(&spec.metrics)?,
                            name: spec.name,
                        });
                    }
                }
                "prometheus" => {
                    let specs: Vec<PromTargetSpec> =
                        serde_json::from_str(value).map_err(|source| SettingsError::Json {
                            key: "prometheus",
                            source,
                        })?;
                    for spec in specs {
                        if settings.prometheus.iter().any(|t| t.name == spec.name) {
                            return Err(SettingsError::DuplicateName {
                                kind: "prometheus",
                                name: spec.name,
                            });
                        }
                        settings.prometheus.push(PromTarget {
                            url: LocalUrl::parse(&spec.url).map_err(|source| SettingsError::Url {
                                key: "prometheus",
                                source,
                            })?,
                            relabel: Relabel::compile(&spec.relabel)?,
                            name: spec.name,
                        });
                    }
                }
                "statsd" => {
                    statsd_listen =
                        Some(
                            parse_local_address(value.trim()).map_err(|source| SettingsError::Url {
                                key: "statsd",
                                source,
                            })?,
                        );
                }
                "statsdMappings" => {
                    statsd_mappings = serde_json::from_str::<Vec<MappingSpec>>(value).map_err(|source| {
                        SettingsError::Json {
                            key: "statsdMappings",
                            source,
                        }
                    })?;
                }
                "statsdBuckets" => {
                    let buckets: Option<Vec<f64>> = value
                        .split(',')
                        .map(|b| b.trim().parse().ok().filter(|b: &f64| b.is_finite()))
                        .collect();
                    statsd_buckets = buckets
                        .filter(|b| !b.is_empty() && b.windows(2).all(|w| w[0] < w[1]))
                        .ok_or_else(|| SettingsError::Buckets(value.clone()))?;
                }
                "statsdMaxSeries" => statsd_max_series = usize_of("statsdMaxSeries", value)?,
                "maxSeries" => settings.max_series = usize_of("maxSeries", value)?,
                "scrapeBudgetMs" => {
                    settings.scrape_budget = Duration::from_millis(positive("scrapeBudgetMs", value)?);
                }
                "collectTimeoutMs" => {
                    settings.limits.timeout = Duration::from_millis(positive("collectTimeoutMs", value)?);
                }
                "maxBodyBytes" => settings.limits.max_body_bytes = usize_of("maxBodyBytes", value)?,
                _ => settings.unknown.push(key.clone()),
            }
        }
        settings.statsd = match statsd_listen {
            Some(listen) => Some(StatsdSettings {
                listen,
                mapper: Mapper::compile(&statsd_mappings)?,
                buckets: statsd_buckets,
                max_series: statsd_max_series,
            }),
            None => None,
        };
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn settings(map: serde_json::Value) -> Result<Settings, SettingsError> {
        let map: BTreeMap<String, String> = serde_json::from_value(map).unwrap();
        Settings::from_map(&map)
    }

    #[test]
    fn every_collector_is_read_from_its_key() {
        let settings = settings(json!({
            "redis": "redis://localhost:6379",
            "json": json!([{"name": "app", "url": "http://127.0.0.1:8080/stats", "metrics": [{"name": "app_up", "path": "up"}]}]).to_string(),
            "prometheus": json!([{"name": "app", "url": "http://127.0.0.1:8080/metrics", "relabel": [{"action": "drop", "sourceLabels": ["__name__"], "regex": "go_.*"}]}]).to_string(),
            "statsd": "127.0.0.1:9125",
            "statsdBuckets": "0.1, 1, 10",
            "scrapeBudgetMs": "500",
            "colour": "blue",
        }))
        .unwrap();
        assert_eq!(settings.redis, Some("127.0.0.1:6379".parse().unwrap()));
        assert_eq!(settings.json[0].url.path, "/stats");
        assert_eq!(settings.prometheus[0].name, "app");
        let statsd = settings.statsd.unwrap();
        assert_eq!(statsd.buckets, [0.1, 1.0, 10.0]);
        assert_eq!(statsd.max_series, 10_000);
        assert_eq!(settings.scrape_budget, Duration::from_millis(500));
        assert_eq!(settings.unknown, ["colour"]);
    }

    #[test]
    fn targets_off_the_pods_loopback_are_refused() {
        for (key, value) in [
            ("redis", "10.0.0.5:6379".to_owned()),
            ("statsd", "0.0.0.0:9125".to_owned()),
            (
                "json",
                json!([{"name": "x", "url": "http://metadata.internal:80/", "metrics": []}]).to_string(),
            ),
        ] {
            let error = settings(json!({ key: value })).unwrap_err().to_string();
            assert!(error.contains("loopback"), "{error}");
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        for (map, want) in [
            (json!({"maxSeries": "0"}), "maxSeries"),
            (json!({"statsdBuckets": "1,0.5"}), "statsdBuckets"),
            (json!({"json": "[{"}), "setting json"),
            (
                json!({"statsdMappings": "[{\"match\": \"a.*\", \"name\": \"b_$3\"}]", "statsd": "127.0.0.1:1"}),
                "statsd mapping",
            ),
        ] {
            let error = settings(map).unwrap_err().to_string();
            assert!(error.contains(want), "{error}");
        }
    }
}
