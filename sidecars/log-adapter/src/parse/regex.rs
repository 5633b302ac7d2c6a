//! User patterns: regular expressions with named captures. The captures `timestamp` (or `time`),
//! `level` and `message` (or `msg`) fill the header; every other named capture becomes a field.
//! The first pattern that matches a line wins.

use regex::bytes::Regex;

use super::{Context, ParseError};
use crate::{
    record::{Fields, Header, Level, Text},
    time::{parse_clf, parse_iso8601_exact, parse_slashed, Timestamp},
};

const FORMAT: &str = "regex";

/// Why a user pattern was rejected.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    #[error("invalid pattern {pattern:?}: {source}")]
    Invalid {
        pattern: String,
        #[source]
        source: regex::Error,
    },
    #[error("pattern {0:?} has no named capture group")]
    NoNames(String),
}

/// The configured patterns, compiled once.
#[derive(Debug, Clone, Default)]
pub struct Patterns {
    patterns: Vec<Regex>,
}

impl Patterns {
    pub fn new<S: AsRef<str>>(sources: &[S]) -> Result<Self, PatternError> {
        let mut patterns = Vec::with_capacity(sources.len());
        for source in sources {
            let source = source.as_ref();
            let regex = Regex::new(source).map_err(|error| PatternError::Invalid {
                pattern: source.to_owned(),
                source: error,
            })?;
            if regex.capture_names().flatten().next().is_none() {
                return Err(PatternError::NoNames(source.to_owned()));
            }
            patterns.push(regex);
        }
        Ok(Patterns { patterns })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn parse<'a>(
        &self,
        line: &'a [u8],
        ctx: &Context,
        fields: &mut Fields,
    ) -> Result<Header<'a>, ParseError> {
        for regex in &self.patterns {
            let Some(captures) = regex.captures(line) else {
                continue;
            };
            let mut header = Header {
                message: Text::Raw(line),
                ..Header::default()
            };
            let mut has_message = false;
            for name in regex.capture_names().flatten() {
                let Some(found) = captures.name(name) else {
                    continue;
                };
                let value = found.as_bytes();
                match name {
                    "timestamp" | "time" if header.timestamp.is_none() => {
                        header.timestamp = parse_any_stamp(value, ctx);
                        if header.timestamp.is_none() {
                            fields.str(name.as_bytes(), value);
                        }
                    }
                    "level" if header.level.is_none() => {
                        header.level = Level::from_name(value);
                        if header.level.is_none() {
                            fields.str(name.as_bytes(), value);
                        }
                    }
                    "message" | "msg" if !has_message => {
                        has_message = true;
                        header.message = Text::Raw(value);
                    }
                    _ => fields.str(name.as_bytes(), value),
                }
            }
            return Ok(header);
        }
        Err(ParseError::new(FORMAT, "no pattern matched"))
    }
}

/// A stamp in any form the built-in formats know, or epoch seconds / milliseconds.
fn parse_any_stamp(value: &[u8], ctx: &Context) -> Option<Timestamp> {
    parse_iso8601_exact(value, ctx.offset)
        .or_else(|| parse_clf(value))
        .or_else(|| parse_slashed(value, ctx.offset))
        .or_else(|| {
            std::str::from_utf8(value)
                .ok()?
                .parse::<f64>()
                .ok()
                .and_then(Timestamp::from_epoch_number)
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::parse::test_support::{ctx, render};

    #[test]
    fn user_patterns_fill_header_and_fields_from_named_captures() {
        let patterns = Patterns::new(&[
            r"^(?P<time>\S+) \[(?P<level>\w+)\] (?P<user>\w+): (?P<message>.*)$",
            r"^(?P<time>\d+) (?P<msg>.*)$",
        ])
        .unwrap();
        let cases = [
            (
                "2024-01-02T03:04:05Z [WARN] bob: disk low",
                json!({"timestamp": "2024-01-02T03:04:05Z", "level": "warn", "message": "disk low",
                       "fields": {"user": "bob"}}),
            ),
            (
                "yesterday [LOUD] bob: hi",
                json!({"timestamp": null, "level": null, "message": "hi",
                       "fields": {"time": "yesterday", "level": "LOUD", "user": "bob"}}),
            ),
            (
                "1700000000 second pattern",
                json!({"timestamp": "2023-11-14T22:13:20Z", "level": null, "message": "second pattern",
                       "fields": {}}),
            ),
        ];
        for (line, want) in cases {
            let mut fields = Fields::default();
            let header = patterns.parse(line.as_bytes(), &ctx(), &mut fields).unwrap();
            assert_eq!(render(&header, &fields), want, "{line}");
        }
        let mut fields = Fields::default();
        assert!(patterns.parse(b"no match", &ctx(), &mut fields).is_err());
    }

    #[test]
    fn patterns_without_names_or_invalid_are_rejected() {
        assert!(matches!(
            Patterns::new(&["(a"]),
            Err(PatternError::Invalid { .. })
        ));
        assert!(matches!(Patterns::new(&["(a)"]), Err(PatternError::NoNames(_))));
    }
}
