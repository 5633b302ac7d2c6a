//! Durations written as `250ms`, `5s`, `2m` or `1m30s`, for flags and environment variables.

use std::{fmt, str::FromStr, time::Duration};

/// A duration parsed from `250ms`, `5s`, `2m`, `1h` or a sum such as `1m30s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || format!("{text:?} is not a duration like \"250ms\", \"5s\" or \"1m30s\"");
        let mut rest = text.trim();
        if rest.is_empty() {
            return Err(invalid());
        }
        let mut total = Duration::ZERO;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(invalid)?;
            let value: u64 = rest[..digits].parse().map_err(|_| invalid())?;
            rest = &rest[digits..];
            let (unit, millis) = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)]
                .into_iter()
                .find(|(unit, _)| rest.starts_with(unit))
                .ok_or_else(invalid)?;
            rest = &rest[unit.len()..];
            let part = value.checked_mul(millis).ok_or_else(invalid)?;
            total = total
                .checked_add(Duration::from_millis(part))
                .ok_or_else(invalid)?;
        }
        Ok(HumanDuration(total))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        if millis.is_multiple_of(1_000) {
            write!(f, "{}s", millis / 1_000)
        } else {
            write!(f, "{millis}ms")
        }
    }
}

impl From<HumanDuration> for Duration {
    fn from(duration: HumanDuration) -> Duration {
        duration.0
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
                text.parse::<HumanDuration>().unwrap().0,
                Duration::from_millis(millis),
                "{text}"
            );
        }
        for bad in ["", "5", "s", "5x", "-1s", "1.5s"] {
            assert!(bad.parse::<HumanDuration>().is_err(), "{bad}");
        }
        assert_eq!(HumanDuration(Duration::from_millis(1_500)).to_string(), "1500ms");
        assert_eq!(HumanDuration(Duration::from_secs(25)).to_string(), "25s");
    }
}
