//! Prometheus text passthrough: an app's own `/metrics` parsed, relabelled with rules shaped like
//! Prometheus' `metric_relabel_configs`, and served again beside the other collectors.

use std::collections::HashMap;

use regex::Regex;
use serde::Deserialize;

use crate::model::{is_valid_name, Family, Kind, Sample};

/// One passthrough target as the settings give it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PromTargetSpec {
    pub name: String,
    /// `http://127.0.0.1:PORT/metrics` (loopback only).
    pub url: String,
    #[serde(default)]
    pub relabel: Vec<RelabelSpec>,
}

/// What a relabelling rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Replace,
    Keep,
    Drop,
    Labeldrop,
    Labelkeep,
}

/// A relabelling rule, as in Prometheus (`__name__` is the metric name).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RelabelSpec {
    #[serde(default)]
    pub action: Action,
    #[serde(default)]
    pub source_labels: Vec<String>,
    #[serde(default)]
    pub separator: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub target_label: Option<String>,
    #[serde(default)]
    pub replacement: Option<String>,
}

/// Why a relabelling rule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelabelError {
    #[error("relabel regex {regex:?}: {message}")]
    Regex { regex: String, message: String },
    #[error("relabel action replace needs a targetLabel")]
    NoTarget,
}

#[derive(Debug, Clone)]
struct Rule {
    action: Action,
    source_labels: Vec<String>,
    separator: String,
    regex: Regex,
    target_label: String,
    replacement: String,
}

/// Compiled relabelling rules.
#[derive(Debug, Clone, Default)]
pub struct Relabel {
    rules: Vec<Rule>,
}

impl Relabel {
    pub fn compile(specs: &[RelabelSpec]) -> Result<Relabel, RelabelError> {
        let mut rules = Vec::with_capacity(specs.len());
        for spec in specs {
            let pattern = spec.regex.clone().unwrap_or_else(|| "(.*)".to_owned());
            let regex = Regex::new(&format!("^(?:{pattern})$")).map_err(|e| RelabelError::Regex {
                regex: pattern.clone(),
                message: e.to_string(),
            })?;
            let target_label = spec.target_label.clone().unwrap_or_default();
            if spec.action == Action::Replace && target_label.is_empty() {
                return Err(RelabelError::NoTarget);
            }
            rules.push(Rule {
                action: spec.action,
                source_labels: spec.source_labels.clone(),
                separator: spec.separator.clone().unwrap_or_else(|| ";".to_owned()),
                regex,
                target_label,
                replacement: spec.replacement.clone().unwrap_or_else(|| "$1".to_owned()),
            });
        }
        Ok(Relabel { rules })
    }

    /// Applies the rules to one series (`labels[0]` is `__name__`); `false` when it is dropped.
    fn apply(&self, labels: &mut Vec<(String, String)>) -> bool {
        for rule in &self.rules {
            let value = || {
                rule.source_labels
                    .iter()
                    .map(|name| {
                        labels
                            .iter()
                            .find(|(l, _)| l == name)
                            .map_or("", |(_, v)| v.as_str())
                    })
                    .collect::<Vec<_>>()
                    .join(&rule.separator)
            };
            match rule.action {
                Action::Keep => {
                    if !rule.regex.is_match(&value()) {
                        return false;
                    }
                }
                Action::Drop => {
                    if rule.regex.is_match(&value()) {
                        return false;
                    }
                }
                Action::Replace => {
                    let source = value();
                    let Some(captures) = rule.regex.captures(&source) else {
                        continue;
                    };
                    let mut replaced = String::new();
                    captures.expand(&rule.replacement, &mut replaced);
                    match labels.iter_mut().find(|(l, _)| *l == rule.target_label) {
                        Some((_, v)) => *v = replaced,
                        None => labels.push((rule.target_label.clone(), replaced)),
                    }
                }
                Action::Labeldrop => labels.retain(|(l, _)| l == "__name__" || !rule.regex.is_match(l)),
                Action::Labelkeep => labels.retain(|(l, _)| l == "__name__" || rule.regex.is_match(l)),
            }
        }
        // An empty label is the same as no label.
        labels.retain(|(l, v)| l == "__name__" || !v.is_empty());
        true
    }
}

/// Parses the Prometheus text format. Lines that do not parse are skipped and counted.
pub fn parse_text(body: &str) -> (Vec<Family>, usize) {
    let mut families: Vec<Family> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut helps: HashMap<String, String> = HashMap::new();
    let mut current: Option<usize> = None;
    let mut invalid = 0;
    for line in body.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some(kind)) if is_valid_name(name) => {
                    let at = *index.entry(name.to_owned()).or_insert_with(|| {
                        families.push(Family::new(name, String::new(), Kind::parse(kind.trim())));
                        families.len() - 1
                    });
                    if let Some(help) = helps.remove(name) {
                        families[at].help = help;
                    }
                    current = Some(at);
                }
                (Some("HELP"), Some(name), help) => {
                    let help = unescape_help(help.unwrap_or(""));
                    match index.get(name) {
                        Some(&at) => families[at].help = help,
                        None => {
                            helps.insert(name.to_owned(), help);
                        }
                    }
                }
                _ => {}
            }
            continue;
        }
        let Some(sample) = parse_sample(line) else {
            invalid += 1;
            continue;
        };
        let belongs = current.is_some_and(|at| belongs_to(&families[at], &sample.name));
        let at = if belongs {
            current.unwrap_or_default()
        } else {
            *index.entry(sample.name.clone()).or_insert_with(|| {
                families.push(Family::new(sample.name.clone(), String::new(), Kind::Untyped));
                families.len() - 1
            })
        };
        families[at].samples.push(sample);
    }
    for family in &mut families {
        if family.help.is_empty() {
            family.help = helps.remove(&family.name).unwrap_or_else(|| family.name.clone());
        }
    }
    (families, invalid)
}

fn belongs_to(family: &Family, sample: &str) -> bool {
    if sample == family.name {
        return true;
    }
    let Some(suffix) = sample.strip_prefix(family.name.as_str()) else {
        return false;
    };
    match family.kind {
        Kind::Histogram => matches!(suffix, "_bucket" | "_sum" | "_count" | "_created"),
        Kind::Summary => matches!(suffix, "_sum" | "_count" | "_created"),
        Kind::Counter => matches!(suffix, "_total" | "_created"),
        _ => false,
    }
}

fn unescape_help(text: &str) -> String {
    text.replace("\\n", "\n").replace("\\\\", "\\")
}

/// One sample line: `name{label="value",...} value [timestamp]`.
pub fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..name_end];
    if !is_valid_name(name) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, remaining) = parse_labels(after)?;
        labels = parsed;
        rest = remaining;
    }
    let mut fields = rest.split_whitespace();
    let value = parse_value(fields.next()?)?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn parse_labels(mut text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start();
        if let Some(rest) = text.strip_prefix('}') {
            return Some((labels, rest));
        }
        let eq = text.find('=')?;
        let name = text[..eq].trim();
        if !is_valid_name(name) || name.contains(':') {
            return None;
        }
        let mut chars = text[eq + 1..].trim_start().char_indices();
        let start = text.len() - text[eq + 1..].trim_start().len();
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        let mut end = None;
        let mut escaped = false;
        for (i, c) in chars {
            if escaped {
                value.push(match c {
                    'n' => '\n',
                    other => other,
                });
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                end = Some(start + i + 1);
                break;
            } else {
                value.push(c);
            }
        }
        labels.push((name.to_owned(), value));
        text = text[end?..].trim_start();
        if let Some(rest) = text.strip_prefix(',') {
            text = rest;
        }
    }
}

/// A sample value as either format spells it (`+Inf`, `-Inf`, `NaN`, floats).
pub fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        other => other.parse().ok().filter(|v: &f64| v.is_finite()),
    }
}

/// Relabels parsed families: dropped series go, renamed ones move to the family of their new name.
pub fn relabel(families: Vec<Family>, relabel: &Relabel) -> Vec<Family> {
    if relabel.rules.is_empty() {
        return families;
    }
    let mut out: Vec<Family> = Vec::with_capacity(families.len());
    let mut index: HashMap<String, usize> = HashMap::new();
    for family in families {
        for sample in family.samples {
            let mut labels = Vec::with_capacity(sample.labels.len() + 1);
            labels.push(("__name__".to_owned(), sample.name.clone()));
            labels.extend(sample.labels);
            if !relabel.apply(&mut labels) {
                continue;
            }
            let name = labels.remove(0).1;
            if !is_valid_name(&name) {
                continue;
            }
            // A renamed sample keeps its family's type only where the sample is the whole family.
            let (family_name, kind) = if name == sample.name {
                (family.name.clone(), family.kind)
            } else if sample.name == family.name {
                (name.clone(), family.kind)
            } else {
                (name.clone(), Kind::Untyped)
            };
            let at = *index.entry(family_name.clone()).or_insert_with(|| {
                out.push(Family::new(family_name, family.help.clone(), kind));
                out.len() - 1
            });
            out[at].samples.push(Sample {
                name,
                labels,
                value: sample.value,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const APP: &str = "# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n\
        http_requests_total{code=\"200\",path=\"/a\"} 10\nhttp_requests_total{code=\"500\",path=\"/a\"} 1 1700000000000\n\
        # TYPE latency_seconds histogram\nlatency_seconds_bucket{le=\"0.1\"} 2\nlatency_seconds_bucket{le=\"+Inf\"} 3\n\
        latency_seconds_sum 0.5\nlatency_seconds_count 3\ngo_goroutines 12\nthis is not a sample\nbad{x=\"1} 2\n";

    #[test]
    fn the_text_format_parses_into_families_and_bad_lines_are_counted() {
        let (families, invalid) = parse_text(APP);
        assert_eq!(invalid, 2);
        let names: Vec<_> = families
            .iter()
            .map(|f| (f.name.as_str(), f.kind, f.samples.len()))
            .collect();
        assert_eq!(
            names,
            [
                ("http_requests_total", Kind::Counter, 2),
                ("latency_seconds", Kind::Histogram, 4),
                ("go_goroutines", Kind::Untyped, 1)
            ]
        );
        assert_eq!(families[0].help, "Requests.");
        assert_eq!(families[1].samples[1].labels[0].1, "+Inf");
    }

    #[test]
    fn relabelling_drops_renames_and_rewrites_labels() {
        let rules: Vec<RelabelSpec> = serde_json::from_value(json!([
            {"action": "drop", "sourceLabels": ["__name__"], "regex": "go_.*"},
            {"sourceLabels": ["__name__"], "regex": "http_(.*)", "targetLabel": "__name__", "replacement": "app_http_$1"},
            {"sourceLabels": ["code"], "regex": "(\\d)\\d\\d", "targetLabel": "class", "replacement": "${1}xx"},
            {"action": "labeldrop", "regex": "code"},
        ]))
        .unwrap();
        let (families, _) = parse_text(APP);
        let out = relabel(families, &Relabel::compile(&rules).unwrap());
        let names: Vec<_> = out.iter().map(|f| (f.name.as_str(), f.kind)).collect();
        assert_eq!(
            names,
            [
                ("app_http_requests_total", Kind::Counter),
                ("latency_seconds", Kind::Histogram)
            ]
        );
        assert_eq!(
            out[0].samples[1].labels,
            [
                ("path".to_owned(), "/a".to_owned()),
                ("class".to_owned(), "5xx".to_owned())
            ]
        );
    }

    #[test]
    fn a_replace_without_target_and_a_bad_regex_are_refused() {
        let rules: Vec<RelabelSpec> = serde_json::from_value(json!([{"regex": "("}])).unwrap();
        assert!(Relabel::compile(&rules).is_err());
        let rules: Vec<RelabelSpec> =
            serde_json::from_value(json!([{"action": "drop", "regex": "("}])).unwrap();
        assert!(matches!(
            Relabel::compile(&rules),
            Err(RelabelError::Regex { .. })
        ));
    }
}
