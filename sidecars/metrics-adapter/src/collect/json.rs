//! JSON over HTTP: values picked by paths from an app's JSON document, with labels from the keys
//! that wildcards matched or from fields beside the value.
//!
//! A path is dotted: `queues.*.depth`, `workers[*].busy`, `stats.0.count`. Each `*` matches every
//! key of an object or item of an array; the matched key (or index) is `$1`, `$2`, ... for labels.
//! A label value starting with `.` is a path from the object holding the value
//! (`{"queue": ".name"}`); anything else is a literal.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::CollectError;
use crate::model::{is_valid_name, Family, Kind};

/// One JSON target as the settings give it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsonTargetSpec {
    /// Name of the target, in the adapter's own metrics (`collector="json/<name>"`).
    pub name: String,
    /// `http://127.0.0.1:PORT/PATH` (loopback only).
    pub url: String,
    pub metrics: Vec<JsonMetricSpec>,
}

/// One metric of a JSON target.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsonMetricSpec {
    pub name: String,
    #[serde(default)]
    pub help: String,
    /// `gauge` (default) or `counter`.
    #[serde(default)]
    pub r#type: Option<String>,
    pub path: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Why a JSON mapping was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("metric name {0:?} is not a valid Prometheus name")]
    Name(String),
    #[error("metric {metric}: type {kind:?} is neither gauge nor counter")]
    Type { metric: String, kind: String },
    #[error("metric {metric}: label {label:?} uses ${index} but the path has fewer wildcards")]
    Capture {
        metric: String,
        label: String,
        index: usize,
    },
    #[error("metric {0}: empty path")]
    EmptyPath(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Key(String),
    Index(usize),
    Wildcard,
}

#[derive(Debug, Clone, PartialEq)]
enum LabelSource {
    Capture(usize),
    Relative(Vec<Segment>),
    Literal(String),
}

#[derive(Debug, Clone, PartialEq)]
struct Metric {
    name: String,
    help: String,
    kind: Kind,
    path: Vec<Segment>,
    labels: Vec<(String, LabelSource)>,
}

/// The compiled metrics of one target.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonMapping {
    metrics: Vec<Metric>,
}

fn parse_path(path: &str) -> Vec<Segment> {
    path.trim_start_matches('$')
        .replace("[*]", ".*")
        .replace('[', ".")
        .replace(']', "")
        .split('.')
        .filter(|s| !s.is_empty())
        .map(|s| match s {
            "*" => Segment::Wildcard,
            s => s
                .parse()
                .map_or_else(|_| Segment::Key(s.to_owned()), Segment::Index),
        })
        .collect()
}

impl JsonMapping {
    pub fn compile(specs: &[JsonMetricSpec]) -> Result<JsonMapping, MappingError> {
        let mut metrics = Vec::with_capacity(specs.len());
        for spec in specs {
            let kind = match spec.r#type.as_deref() {
                None | Some("gauge") => Kind::Gauge,
                Some("counter") => Kind::Counter,
                Some(other) => {
                    return Err(MappingError::Type {
                        metric: spec.name.clone(),
                        kind: other.to_owned(),
                    })
                }
            };
            if !is_valid_name(&spec.name) {
                return Err(MappingError::Name(spec.name.clone()));
            }
            let path = parse_path(&spec.path);
            if path.is_empty() {
                return Err(MappingError::EmptyPath(spec.name.clone()));
            }
            let wildcards = path.iter().filter(|s| **s == Segment::Wildcard).count();
            let mut labels = Vec::with_capacity(spec.labels.len());
            for (label, source) in &spec.labels {
                if !is_valid_name(label) || label.contains(':') {
                    return Err(MappingError::Name(label.clone()));
                }
                let source =
                    if let Some(index) = source.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
                        if index == 0 || index > wildcards {
                            return Err(MappingError::Capture {
                                metric: spec.name.clone(),
                                label: label.clone(),
                                index,
                            });
                        }
                        LabelSource::Capture(index - 1)
                    } else if source.starts_with('.') {
                        LabelSource::Relative(parse_path(source))
                    } else {
                        LabelSource::Literal(source.clone())
                    };
                labels.push((label.clone(), source));
            }
            metrics.push(Metric {
                name: spec.name.clone(),
                help: if spec.help.is_empty() {
                    format!("{} from the app's JSON", spec.path)
                } else {
                    spec.help.clone()
                },
                kind,
                path,
                labels,
            });
        }
        Ok(JsonMapping { metrics })
    }

    /// The families of one JSON document.
    pub fn apply(&self, body: &[u8]) -> Result<Vec<Family>, CollectError> {
        let document: Value =
            serde_json::from_slice(body).map_err(|e| CollectError::Malformed(e.to_string()))?;
        let mut families = Vec::with_capacity(self.metrics.len());
        for metric in &self.metrics {
            let mut family = Family::new(metric.name.clone(), metric.help.clone(), metric.kind);
            let mut captures = Vec::new();
            walk(
                &document,
                &metric.path,
                None,
                &mut captures,
                &mut |value, parent, captures| {
                    let Some(number) = as_number(value) else {
                        return;
                    };
                    let labels = metric
                        .labels
                        .iter()
                        .map(|(name, source)| {
                            let value = match source {
                                LabelSource::Capture(i) => captures.get(*i).cloned().unwrap_or_default(),
                                LabelSource::Literal(text) => text.clone(),
                                LabelSource::Relative(path) => parent
                                    .and_then(|p| lookup(p, path))
                                    .map(label_text)
                                    .unwrap_or_default(),
                            };
                            (name.clone(), value)
                        })
                        .collect();
                    family.push(labels, number);
                },
            );
            families.push(family);
        }
        Ok(families)
    }
}

/// Called with each value a path reaches, the object holding it and the wildcard captures.
type Found<'f, 'a> = &'f mut dyn FnMut(&'a Value, Option<&'a Value>, &[String]);

fn walk<'a>(
    value: &'a Value,
    path: &[Segment],
    parent: Option<&'a Value>,
    captures: &mut Vec<String>,
    found: Found<'_, 'a>,
) {
    let Some((segment, rest)) = path.split_first() else {
        found(value, parent, captures);
        return;
    };
    match (segment, value) {
        (Segment::Key(key), Value::Object(map)) => {
            if let Some(child) = map.get(key) {
                walk(child, rest, Some(value), captures, found);
            }
        }
        (Segment::Index(index), Value::Array(items)) => {
            if let Some(child) = items.get(*index) {
                walk(child, rest, Some(value), captures, found);
            }
        }
        (Segment::Index(index), Value::Object(map)) => {
            if let Some(child) = map.get(&index.to_string()) {
                walk(child, rest, Some(value), captures, found);
            }
        }
        (Segment::Wildcard, Value::Object(map)) => {
            for (key, child) in map {
                captures.push(key.clone());
                walk(child, rest, Some(value), captures, found);
                captures.pop();
            }
        }
        (Segment::Wildcard, Value::Array(items)) => {
            for (index, child) in items.iter().enumerate() {
                captures.push(index.to_string());
                walk(child, rest, Some(value), captures, found);
                captures.pop();
            }
        }
        _ => {}
    }
}

fn lookup<'a>(value: &'a Value, path: &[Segment]) -> Option<&'a Value> {
    path.iter()
        .try_fold(value, |value, segment| match (segment, value) {
            (Segment::Key(key), Value::Object(map)) => map.get(key),
            (Segment::Index(index), Value::Array(items)) => items.get(*index),
            _ => None,
        })
}

fn as_number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn label_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn mapping(specs: Value) -> JsonMapping {
        let specs: Vec<JsonMetricSpec> = serde_json::from_value(specs).unwrap();
        JsonMapping::compile(&specs).unwrap()
    }

    /// A sample as name, labels and value.
    type Row = (String, Vec<(String, String)>, f64);

    fn samples(families: &[Family]) -> Vec<Row> {
        families
            .iter()
            .flat_map(|f| {
                f.samples
                    .iter()
                    .map(|s| (s.name.clone(), s.labels.clone(), s.value))
            })
            .collect()
    }

    #[test]
    fn wildcards_and_sibling_fields_become_labels() {
        let mapping = mapping(json!([
            {"name": "app_queue_depth", "path": "queues.*.depth", "labels": {"queue": "$1"}},
            {"name": "app_worker_busy", "path": "workers[*].busy", "labels": {"worker": ".id", "pool": "main"}},
            {"name": "app_requests_total", "type": "counter", "path": "$.stats.requests"},
        ]));
        let body = json!({
            "queues": {"mail": {"depth": 3}, "sms": {"depth": "4"}},
            "workers": [{"id": "w1", "busy": true}, {"id": "w2", "busy": false}, {"id": "w3"}],
            "stats": {"requests": 1200},
        });
        let families = mapping.apply(body.to_string().as_bytes()).unwrap();
        let l = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            samples(&families),
            [
                ("app_queue_depth".into(), l(&[("queue", "mail")]), 3.0),
                ("app_queue_depth".into(), l(&[("queue", "sms")]), 4.0),
                (
                    "app_worker_busy".into(),
                    l(&[("pool", "main"), ("worker", "w1")]),
                    1.0
                ),
                (
                    "app_worker_busy".into(),
                    l(&[("pool", "main"), ("worker", "w2")]),
                    0.0
                ),
                ("app_requests_total".into(), vec![], 1200.0),
            ]
        );
        assert_eq!(families[2].kind, Kind::Counter);
    }

    #[test]
    fn malformed_json_is_an_error_not_a_crash() {
        let mapping = mapping(json!([{"name": "x", "path": "a"}]));
        for body in [&b"{\"a\": "[..], b"\xff\xfe", b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["] {
            assert!(matches!(mapping.apply(body), Err(CollectError::Malformed(_))));
        }
    }

    #[test]
    fn invalid_mappings_are_refused_with_the_metric_named() {
        for (spec, want) in [
            (json!([{"name": "9x", "path": "a"}]), "not a valid"),
            (
                json!([{"name": "x", "path": "a.*", "labels": {"k": "$2"}}]),
                "uses $2",
            ),
            (
                json!([{"name": "x", "type": "histogram", "path": "a"}]),
                "neither gauge",
            ),
        ] {
            let specs: Vec<JsonMetricSpec> = serde_json::from_value(spec).unwrap();
            let error = JsonMapping::compile(&specs).unwrap_err().to_string();
            assert!(error.contains(want), "{error}");
        }
    }
}
