//! StatsD over UDP: counters, gauges, timers and histograms (DogStatsD tags too), aggregated
//! in memory under a series budget, with mapping rules from dotted names to metric names and
//! labels.
//!
//! A mapping rule matches a dotted name component by component, `*` standing for one whole
//! component; `$1`, `$2`, ... in the name and labels are the components the stars matched:
//! `{"match": "api.*.*.latency", "name": "api_latency_seconds", "labels": {"service": "$1", "endpoint": "$2"}}`.
//! Names that no rule matches keep their own, dots and dashes turned into underscores.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use serde::Deserialize;
use tokio::net::UdpSocket;

use crate::model::{is_valid_name, sanitize_name, Family, Kind, Sample};

/// Longest metric name accepted, and most tags on one line: what goes past is garbage or abuse.
const MAX_NAME_BYTES: usize = 256;
const MAX_TAGS: usize = 16;

/// The Prometheus client libraries' default buckets, in seconds.
pub const DEFAULT_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// One mapping rule as the settings give it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MappingSpec {
    #[serde(rename = "match")]
    pub pattern: String,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Why a mapping rule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("statsd mapping {pattern:?}: {what}")]
    Invalid { pattern: String, what: String },
}

#[derive(Debug, Clone)]
struct Rule {
    components: Vec<Option<String>>,
    name: String,
    labels: Vec<(String, String)>,
}

/// Compiled mapping rules, tried in order.
#[derive(Debug, Clone, Default)]
pub struct Mapper {
    rules: Vec<Rule>,
}

impl Mapper {
    pub fn compile(specs: &[MappingSpec]) -> Result<Mapper, MappingError> {
        let mut rules = Vec::with_capacity(specs.len());
        for spec in specs {
            let invalid = |what: String| MappingError::Invalid {
                pattern: spec.pattern.clone(),
                what,
            };
            let components: Vec<Option<String>> = spec
                .pattern
                .split('.')
                .map(|c| (c != "*").then(|| c.to_owned()))
                .collect();
            let stars = components.iter().filter(|c| c.is_none()).count();
            let check = |template: &str| -> Result<(), MappingError> {
                for (i, _) in template.match_indices('$') {
                    let digits: String = template[i + 1..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    match digits.parse::<usize>() {
                        Ok(n) if n >= 1 && n <= stars => {}
                        _ => {
                            return Err(invalid(format!(
                                "{template:?} refers to a component the pattern has no star for"
                            )))
                        }
                    }
                }
                Ok(())
            };
            check(&spec.name)?;
            if !spec.name.contains('$') && !is_valid_name(&spec.name) {
                return Err(invalid(format!("{:?} is not a valid metric name", spec.name)));
            }
            let mut labels = Vec::new();
            for (label, template) in &spec.labels {
                if !is_valid_name(label) || label.contains(':') {
                    return Err(invalid(format!("{label:?} is not a valid label name")));
                }
                check(template)?;
                labels.push((label.clone(), template.clone()));
            }
            rules.push(Rule {
                components,
                name: spec.name.clone(),
                labels,
            });
        }
        Ok(Mapper { rules })
    }

    /// The metric name and labels of a dotted StatsD name.
    fn map(&self, raw: &str) -> (String, Vec<(String, String)>) {
        let components: Vec<&str> = raw.split('.').collect();
        for rule in &self.rules {
            if rule.components.len() != components.len() {
                continue;
            }
            let mut captures: Vec<&str> = Vec::new();
            let matched = rule
                .components
                .iter()
                .zip(&components)
                .all(|(want, have)| match want {
                    Some(literal) => literal == have,
                    None => {
                        captures.push(have);
                        true
                    }
                });
            if matched {
                let expand = |template: &str| {
                    let mut out = template.to_owned();
                    // Highest first, so `$1` does not eat the start of `$12`.
                    for (i, capture) in captures.iter().enumerate().rev() {
                        out = out.replace(&format!("${}", i + 1), capture);
                    }
                    out
                };
                let labels = rule.labels.iter().map(|(l, t)| (l.clone(), expand(t))).collect();
                return (sanitize_name(&expand(&rule.name), true), labels);
            }
        }
        (sanitize_name(raw, true), Vec::new())
    }
}

/// What the table did with lines, since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub lines: u64,
    /// Lines that are not StatsD (bad syntax, unknown type, too long, negative counter).
    pub invalid: u64,
    /// Lines dropped because a new series would have gone past the budget.
    pub over_budget: u64,
    /// Lines whose name is already a metric of another type.
    pub type_conflicts: u64,
}

#[derive(Debug, Clone)]
enum Aggregate {
    Counter(f64),
    Gauge(f64),
    Histogram { buckets: Vec<u64>, sum: f64, count: u64 },
}

#[derive(Debug, Clone)]
struct Series {
    family: String,
    labels: Vec<(String, String)>,
    aggregate: Aggregate,
}

/// The aggregated series, at most `max_series` of them.
#[derive(Debug)]
pub struct Table {
    mapper: Mapper,
    buckets: Vec<f64>,
    max_series: usize,
    /// Raw key (`name|type|#tags`) to series: a line of a known series costs a lookup, no
    /// allocation.
    index: HashMap<Box<str>, usize>,
    /// Family name and sorted labels to series, to merge tags sent in another order.
    canonical: HashMap<String, usize>,
    kinds: HashMap<String, Kind>,
    series: Vec<Series>,
    key: String,
    stats: Stats,
}

/// One parsed line, borrowing from the datagram.
#[derive(Debug, Clone, PartialEq)]
pub struct Line<'a> {
    pub name: &'a str,
    pub value: f64,
    pub delta: bool,
    pub kind: LineKind,
    pub rate: f64,
    pub tags: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    Counter,
    Gauge,
    Timer,
    Histogram,
}

impl LineKind {
    fn code(self) -> &'static str {
        match self {
            LineKind::Counter => "c",
            LineKind::Gauge => "g",
            LineKind::Timer => "ms",
            LineKind::Histogram => "h",
        }
    }
}

/// Parses `name:value|type[|@rate][|#tag:value,...]`; `None` for anything else.
pub fn parse_line(line: &str) -> Option<Line<'_>> {
    let (name, rest) = line.split_once(':')?;
    if name.is_empty() || name.len() > MAX_NAME_BYTES || name.contains(['|', '#', ' ']) {
        return None;
    }
    let mut fields = rest.split('|');
    let value_text = fields.next()?;
    let kind = match fields.next()? {
        "c" => LineKind::Counter,
        "g" => LineKind::Gauge,
        "ms" => LineKind::Timer,
        "h" | "d" => LineKind::Histogram,
        _ => return None,
    };
    let delta = kind == LineKind::Gauge && value_text.starts_with(['+', '-']);
    let value: f64 = value_text.parse().ok().filter(|v: &f64| v.is_finite())?;
    let mut rate = 1.0;
    let mut tags = "";
    for field in fields {
        if let Some(r) = field.strip_prefix('@') {
            rate = r.parse().ok().filter(|r: &f64| *r > 0.0 && *r <= 1.0)?;
        } else if let Some(t) = field.strip_prefix('#') {
            tags = t;
        } else if field.starts_with('c') || field.starts_with('T') {
            // DogStatsD container id and timestamp fields: accepted, not used.
        } else {
            return None;
        }
    }
    if kind == LineKind::Counter && value < 0.0 {
        return None;
    }
    Some(Line {
        name,
        value,
        delta,
        kind,
        rate,
        tags,
    })
}

impl Table {
    pub fn new(mapper: Mapper, buckets: Vec<f64>, max_series: usize) -> Table {
        Table {
            mapper,
            buckets,
            max_series,
            index: HashMap::new(),
            canonical: HashMap::new(),
            kinds: HashMap::new(),
            series: Vec::new(),
            key: String::with_capacity(MAX_NAME_BYTES * 2),
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// Takes a datagram: one line or many, separated by newlines.
    pub fn ingest(&mut self, datagram: &[u8]) {
        let text = String::from_utf8_lossy(datagram);
        for line in text.split('\n') {
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                continue;
            }
            self.stats.lines += 1;
            match parse_line(line) {
                Some(parsed) => self.apply(&parsed),
                None => self.stats.invalid += 1,
            }
        }
    }

    fn apply(&mut self, line: &Line<'_>) {
        self.key.clear();
        self.key.push_str(line.name);
        self.key.push('|');
        self.key.push_str(line.kind.code());
        self.key.push('|');
        self.key.push_str(line.tags);
        let at = match self.index.get(self.key.as_str()) {
            Some(&at) => at,
            None => match self.create(line) {
                Some(at) => at,
                None => return,
            },
        };
        let series = &mut self.series[at];
        match &mut series.aggregate {
            Aggregate::Counter(total) => *total += line.value / line.rate,
            Aggregate::Gauge(value) if line.delta => *value += line.value,
            Aggregate::Gauge(value) => *value = line.value,
            Aggregate::Histogram { buckets, sum, count } => {
                let observed = if line.kind == LineKind::Timer {
                    line.value / 1000.0
                } else {
                    line.value
                };
                // A sampled timer stands for 1/rate observations.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let times = (1.0 / line.rate).round().max(1.0) as u64;
                for (bound, n) in self.buckets.iter().zip(buckets.iter_mut()) {
                    if observed <= *bound {
                        *n += times;
                    }
                }
                #[allow(clippy::cast_precision_loss)]
                {
                    *sum += observed * times as f64;
                }
                *count += times;
            }
        }
    }

    /// A new series for a line of an unseen key, or `None` when the line is dropped.
    fn create(&mut self, line: &Line<'_>) -> Option<usize> {
        if self.series.len() >= self.max_series || self.index.len() >= self.max_series * 2 {
            self.stats.over_budget += 1;
            return None;
        }
        let (mut family, mut labels) = self.mapper.map(line.name);
        let kind = match line.kind {
            LineKind::Counter => {
                if !family.ends_with("_total") {
                    family.push_str("_total");
                }
                Kind::Counter
            }
            LineKind::Gauge => Kind::Gauge,
            LineKind::Timer | LineKind::Histogram => Kind::Histogram,
        };
        let tags: Vec<&str> = line.tags.split(',').filter(|t| !t.is_empty()).collect();
        if tags.len() > MAX_TAGS {
            self.stats.invalid += 1;
            return None;
        }
        for tag in tags {
            let (name, value) = tag.split_once(':').unwrap_or((tag, ""));
            let name = sanitize_name(name, false);
            if !labels.iter().any(|(l, _)| *l == name) && name != "le" {
                labels.push((name, value.to_owned()));
            }
        }
        labels.sort();
        match self.kinds.get(&family) {
            Some(&known) if known != kind => {
                self.stats.type_conflicts += 1;
                return None;
            }
            Some(_) => {}
            None => {
                self.kinds.insert(family.clone(), kind);
            }
        }
        let mut canonical = family.clone();
        for (label, value) in &labels {
            canonical.push('\0');
            canonical.push_str(label);
            canonical.push('=');
            canonical.push_str(value);
        }
        let at = match self.canonical.get(&canonical) {
            Some(&at) => at,
            None => {
                let aggregate = match kind {
                    Kind::Counter => Aggregate::Counter(0.0),
                    Kind::Gauge => Aggregate::Gauge(0.0),
                    _ => Aggregate::Histogram {
                        buckets: vec![0; self.buckets.len()],
                        sum: 0.0,
                        count: 0,
                    },
                };
                self.series.push(Series {
                    family,
                    labels,
                    aggregate,
                });
                self.canonical.insert(canonical, self.series.len() - 1);
                self.series.len() - 1
            }
        };
        self.index.insert(self.key.as_str().into(), at);
        Some(at)
    }

    /// The aggregated series as families.
    pub fn families(&self) -> Vec<Family> {
        let mut families: Vec<Family> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for series in &self.series {
            let kind = self.kinds.get(&series.family).copied().unwrap_or(Kind::Untyped);
            let at = *index.entry(series.family.as_str()).or_insert_with(|| {
                families.push(Family::new(series.family.clone(), "From StatsD", kind));
                families.len() - 1
            });
            let family = &mut families[at];
            match &series.aggregate {
                Aggregate::Counter(v) | Aggregate::Gauge(v) => family.push(series.labels.clone(), *v),
                Aggregate::Histogram { buckets, sum, count } => {
                    let sample = |suffix: &str, labels: Vec<(String, String)>, value: f64| Sample {
                        name: format!("{}{suffix}", series.family),
                        labels,
                        value,
                    };
                    for (bound, n) in self.buckets.iter().zip(buckets) {
                        let mut labels = series.labels.clone();
                        let mut le = String::new();
                        crate::expose::write_value(&mut le, *bound);
                        labels.push(("le".to_owned(), le));
                        #[allow(clippy::cast_precision_loss)]
                        family.samples.push(sample("_bucket", labels, *n as f64));
                    }
                    let mut labels = series.labels.clone();
                    labels.push(("le".to_owned(), "+Inf".to_owned()));
                    #[allow(clippy::cast_precision_loss)]
                    let count = *count as f64;
                    family.samples.push(sample("_bucket", labels, count));
                    family.samples.push(sample("_sum", series.labels.clone(), *sum));
                    family
                        .samples
                        .push(sample("_count", series.labels.clone(), count));
                }
            }
        }
        families
    }
}

/// Receives datagrams into the table until the socket fails for good.
pub async fn serve(socket: UdpSocket, table: Arc<Mutex<Table>>) {
    let mut buffer = vec![0u8; 65_536];
    loop {
        match socket.recv(&mut buffer).await {
            Ok(length) => table
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .ingest(&buffer[..length]),
            Err(error) => {
                tracing::warn!(%error, "StatsD receive failed.");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn table(rules: serde_json::Value, max_series: usize) -> Table {
        let specs: Vec<MappingSpec> = serde_json::from_value(rules).unwrap();
        Table::new(Mapper::compile(&specs).unwrap(), vec![0.1, 1.0], max_series)
    }

    fn samples(table: &Table) -> Vec<String> {
        table
            .families()
            .iter()
            .flat_map(|f| {
                f.samples.iter().map(|s| {
                    let labels: Vec<String> = s.labels.iter().map(|(l, v)| format!("{l}={v}")).collect();
                    format!("{}{{{}}} {}", s.name, labels.join(","), s.value)
                })
            })
            .collect()
    }

    #[test]
    fn lines_parse_with_rates_tags_and_signed_gauges() {
        assert_eq!(
            parse_line("a.b:2|c|@0.5|#env:prod"),
            Some(Line {
                name: "a.b",
                value: 2.0,
                delta: false,
                kind: LineKind::Counter,
                rate: 0.5,
                tags: "env:prod"
            })
        );
        assert!(parse_line("g:-3|g").unwrap().delta);
        for garbage in [
            "",
            "x",
            "x:|c",
            "x:1|q",
            "x:1|c|@2",
            ":1|c",
            "x:-1|c",
            "x:1|s",
            "x:NaN|g",
            "x:1|c|junk",
        ] {
            assert_eq!(parse_line(garbage), None, "{garbage}");
        }
    }

    #[test]
    fn counters_gauges_and_timers_aggregate_under_mapped_names() {
        let mut table = table(
            json!([{"match": "api.*.*.latency", "name": "api_latency_seconds", "labels": {"service": "$1", "endpoint": "$2"}}]),
            100,
        );
        table.ingest(b"hits:1|c\nhits:2|c|@0.5\nqueue.depth:5|g\nqueue.depth:-2|g\n");
        table.ingest(
            b"api.users.get.latency:50|ms\napi.users.get.latency:500|ms\napi.users.get.latency:2000|ms",
        );
        table.ingest(b"size:3|h|#region:eu,zone:a\nsize:4|h|#zone:a,region:eu\n");
        assert_eq!(
            samples(&table),
            [
                "hits_total{} 5",
                "queue_depth{} 3",
                "api_latency_seconds_bucket{endpoint=get,service=users,le=0.1} 1",
                "api_latency_seconds_bucket{endpoint=get,service=users,le=1} 2",
                "api_latency_seconds_bucket{endpoint=get,service=users,le=+Inf} 3",
                "api_latency_seconds_sum{endpoint=get,service=users} 2.55",
                "api_latency_seconds_count{endpoint=get,service=users} 3",
                "size_bucket{region=eu,zone=a,le=0.1} 0",
                "size_bucket{region=eu,zone=a,le=1} 0",
                "size_bucket{region=eu,zone=a,le=+Inf} 2",
                "size_sum{region=eu,zone=a} 7",
                "size_count{region=eu,zone=a} 2",
            ]
        );
        assert_eq!(table.stats().invalid, 0);
        table.ingest(b"hits_total:1|g");
        assert_eq!(
            table.stats().type_conflicts,
            1,
            "a gauge may not join a counter family"
        );
    }

    #[test]
    fn garbage_and_a_flood_of_unique_names_are_counted_and_bounded() {
        let mut table = table(json!([]), 50);
        table.ingest(b"\xff\xfe garbage\n:::\n||||\nok:1|c\n");
        for i in 0..10_000 {
            table.ingest(format!("flood.{i}:1|c").as_bytes());
        }
        let stats = table.stats();
        assert_eq!(stats.invalid, 3);
        assert_eq!(table.series_count(), 50);
        assert_eq!(stats.over_budget, 10_000 - 49);
    }

    #[test]
    fn rules_referring_to_missing_stars_are_refused() {
        let specs: Vec<MappingSpec> =
            serde_json::from_value(json!([{"match": "a.*", "name": "x_$2"}])).unwrap();
        assert!(Mapper::compile(&specs).is_err());
    }
}
