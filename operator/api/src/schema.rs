//! Schema helpers shared by the resource types, and the duration format they use.

use std::time::Duration;

use schemars::{json_schema, Schema, SchemaGenerator};

/// Pattern every duration field accepts: one or more `<number><unit>` groups, units `ms`, `s`, `m`, `h`
/// (`500ms`, `30s`, `5m`, `1h30m`).
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";

/// An embedded pod template: kept as an open object in the CRD (like Deployment templates in
/// Argo Rollouts) so the CRD stays small and newer pod fields pass through; the operator decodes
/// and checks it as a `PodTemplateSpec` before building anything.
pub fn pod_template(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "description": "Pod template of the workload, exactly as in a Deployment's spec.template (metadata and spec). The operator adds its own labels and the attached sidecars.",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// An optional embedded pod template (see [`pod_template`]).
pub fn optional_pod_template(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = pod_template(generator);
    schema.insert("nullable".to_owned(), serde_json::Value::Bool(true));
    schema
}

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("duration is empty")]
    Empty,
    #[error("duration {0:?} must be groups of a number and a unit (ms, s, m, h), e.g. 30s or 1m30s")]
    Malformed(String),
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Parses a duration in the [`DURATION_PATTERN`] format.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let malformed = || DurationError::Malformed(text.to_owned());
    let mut total_ms: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(malformed());
        }
        let (number, after_number) = rest.split_at(digits);
        let value: u64 = number
            .parse()
            .map_err(|_| DurationError::Overflow(text.to_owned()))?;
        let (unit_ms, unit_len) = if after_number.starts_with("ms") {
            (1, 2)
        } else if after_number.starts_with('s') {
            (1_000, 1)
        } else if after_number.starts_with('m') {
            (60_000, 1)
        } else if after_number.starts_with('h') {
            (3_600_000, 1)
        } else {
            return Err(malformed());
        };
        let part = value
            .checked_mul(unit_ms)
            .ok_or_else(|| DurationError::Overflow(text.to_owned()))?;
        total_ms = total_ms
            .checked_add(part)
            .ok_or_else(|| DurationError::Overflow(text.to_owned()))?;
        rest = &after_number[unit_len..];
    }
    Ok(Duration::from_millis(total_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit_and_combination() {
        let cases = [
            ("500ms", 500),
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("1h30m", 5_400_000),
            ("1m30s250ms", 90_250),
            ("0s", 0),
        ];
        for (text, millis) in cases {
            assert_eq!(parse_duration(text), Ok(Duration::from_millis(millis)), "{text}");
        }
    }

    #[test]
    fn malformed_durations_are_refused_with_the_input_named() {
        for text in ["30", "s", "1d", "1.5s", "-1s", "1 s", "1s x"] {
            assert_eq!(
                parse_duration(text),
                Err(DurationError::Malformed(text.to_owned())),
                "{text}"
            );
        }
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert!(matches!(
            parse_duration("99999999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn the_schema_pattern_accepts_exactly_what_the_parser_accepts() {
        // The API server checks DURATION_PATTERN, the operator parses: they must agree.
        let pattern = regex::Regex::new(DURATION_PATTERN).unwrap();
        for text in [
            "1s", "10m", "1h2m3s", "250ms", "30", "s", "1d", "1.5s", "-1s", "1 s", "", "5m5",
        ] {
            assert_eq!(pattern.is_match(text), parse_duration(text).is_ok(), "{text:?}");
        }
    }
}
