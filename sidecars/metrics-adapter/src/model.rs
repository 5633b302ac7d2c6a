//! What collectors produce and the exposition writes: metric families of samples, with no tie to
//! a wire format.

/// The type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

impl Kind {
    /// The name in `# TYPE` lines of the Prometheus text format.
    pub fn as_text(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
            Kind::Untyped => "untyped",
        }
    }

    /// Reads a `# TYPE` word (either format).
    pub fn parse(word: &str) -> Kind {
        match word {
            "counter" => Kind::Counter,
            "gauge" => Kind::Gauge,
            "histogram" => Kind::Histogram,
            "summary" => Kind::Summary,
            _ => Kind::Untyped,
        }
    }
}

/// One series: its full sample name (with `_total`, `_bucket`, ... where the type has them),
/// its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A metric family: samples sharing a name, type and help text.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// The family name as the Prometheus text format writes it (a counter's keeps `_total`).
    pub name: String,
    pub help: String,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

impl Family {
    pub fn new(name: impl Into<String>, help: impl Into<String>, kind: Kind) -> Family {
        Family {
            name: name.into(),
            help: help.into(),
            kind,
            samples: Vec::new(),
        }
    }

    /// A family of one unlabelled sample named as the family.
    pub fn single(name: &str, help: &str, kind: Kind, value: f64) -> Family {
        let mut family = Family::new(name, help, kind);
        family.push(Vec::new(), value);
        family
    }

    /// Adds a sample named as the family.
    pub fn push(&mut self, labels: Vec<(String, String)>, value: f64) {
        self.samples.push(Sample {
            name: self.name.clone(),
            labels,
            value,
        });
    }
}

/// A metric or label name as Prometheus accepts it: `[a-zA-Z_:][a-zA-Z0-9_:]*` (labels without
/// `:`). Anything else becomes `_`.
pub fn sanitize_name(raw: &str, allow_colon: bool) -> String {
    let mut name = String::with_capacity(raw.len() + 1);
    for (i, c) in raw.chars().enumerate() {
        let ok =
            c.is_ascii_alphabetic() || c == '_' || (allow_colon && c == ':') || (i > 0 && c.is_ascii_digit());
        if i == 0 && c.is_ascii_digit() {
            name.push('_');
            name.push(c);
        } else {
            name.push(if ok { c } else { '_' });
        }
    }
    if name.is_empty() {
        name.push('_');
    }
    name
}

/// Whether `name` is a valid metric name.
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_and_dashed_names_become_valid_metric_names() {
        assert_eq!(
            sanitize_name("api.get-user.latency", true),
            "api_get_user_latency"
        );
        assert_eq!(sanitize_name("9lives", false), "_9lives");
        assert_eq!(sanitize_name("a:b", false), "a_b");
        assert!(is_valid_name("redis_up") && !is_valid_name("9x") && !is_valid_name(""));
    }
}
