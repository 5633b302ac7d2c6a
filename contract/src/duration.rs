//! Durations as every document and command line writes them: `250ms`, `5s`, `2m`, `1h` or a sum
//! such as `1m30s`.

use std::{fmt, str::FromStr, time::Duration};

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Pattern of a [`ConfigDuration`] in the document's schema: one or more `<number><unit>` groups.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";

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

impl JsonSchema for ConfigDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A duration: groups of a number and a unit (ms, s, m, h), e.g. 250ms, 5s or 1m30s.",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_add_up_and_garbage_is_refused() {
        for (text, millis) in [
            ("250ms", 250),
            ("5s", 5_000),
            ("1m30s", 90_000),
            ("0s", 0),
            ("1h", 3_600_000),
        ] {
            assert_eq!(
                text.parse::<ConfigDuration>().unwrap().0,
                Duration::from_millis(millis),
                "{text}"
            );
        }
        for bad in ["", "5", "s", "5x", "-1s", "1.5s"] {
            assert!(bad.parse::<ConfigDuration>().is_err(), "{bad}");
        }
        assert_eq!(ConfigDuration(Duration::from_millis(1_500)).to_string(), "1500ms");
        assert_eq!(ConfigDuration(Duration::from_secs(25)).to_string(), "25s");
    }
}
