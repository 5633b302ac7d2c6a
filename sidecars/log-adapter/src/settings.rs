//! Settings from the service's spec: injection hands a sidecar its `settings` map as the JSON
//! object in `OUTRIGGER_SETTINGS` (string keys, string values). Command-line flags and their own
//! variables win over these; these win over the defaults.
//!
//! | key             | value                                                        |
//! |-----------------|--------------------------------------------------------------|
//! | `include`       | include patterns, comma-separated (`/var/log/outrigger/*.log`) |
//! | `parser`        | `auto`, `json`, `logfmt`, `combined`, `nginx-error`, `klog`, `syslog`, `regex`, `plain` |
//! | `pattern`       | user regexes with named captures, one per line               |
//! | `timezone`      | offset of stamps without one: `UTC`, `+02:00`, `-0530`        |
//! | `maxLineBytes`  | longest line kept whole                                      |
//! | `checkpointPath`| checkpoint file, on the log volume                           |

use std::{collections::BTreeMap, path::PathBuf};

use crate::{
    parse::{Choice, ChoiceError},
    time::{OffsetError, UtcOffset},
};

/// The settings the log adapter reads; each is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    pub include: Vec<String>,
    pub parser: Option<Choice>,
    pub patterns: Vec<String>,
    pub timezone: Option<UtcOffset>,
    pub max_line_bytes: Option<usize>,
    pub checkpoint_path: Option<PathBuf>,
    /// Keys this adapter does not know (typos, or settings of a newer version), to log.
    pub unknown: Vec<String>,
}

/// Why the settings were rejected.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("OUTRIGGER_SETTINGS is not a JSON object of strings: {0}")]
    NotAMap(#[source] serde_json::Error),
    #[error("setting parser: {0}")]
    Parser(#[from] ChoiceError),
    #[error("setting timezone: {0}")]
    Timezone(#[from] OffsetError),
    #[error("setting maxLineBytes {0:?} is not a positive number")]
    MaxLineBytes(String),
}

impl Settings {
    /// Reads the JSON map; an empty text is no settings.
    pub fn from_json(text: &str) -> Result<Self, SettingsError> {
        Self::from_map(Self::map_from_json(text)?)
    }

    /// The JSON map as it is, to merge with another before reading it; an empty text is an
    /// empty map.
    pub fn map_from_json(text: &str) -> Result<BTreeMap<String, String>, SettingsError> {
        if text.trim().is_empty() {
            return Ok(BTreeMap::new());
        }
        serde_json::from_str(text).map_err(SettingsError::NotAMap)
    }

    /// Reads a settings map however it arrived (the variable, or this sidecar's entry in the
    /// service's sidecars document).
    pub fn from_map(map: BTreeMap<String, String>) -> Result<Self, SettingsError> {
        let mut settings = Settings::default();
        for (key, value) in map {
            match key.as_str() {
                "include" => {
                    settings.include = value
                        .split(',')
                        .map(str::trim)
                        .filter(|p| !p.is_empty())
                        .map(str::to_owned)
                        .collect();
                }
                "parser" => settings.parser = Some(value.parse()?),
                "pattern" => {
                    settings.patterns = value
                        .lines()
                        .filter(|p| !p.trim().is_empty())
                        .map(str::to_owned)
                        .collect();
                }
                "timezone" => settings.timezone = Some(value.parse()?),
                "maxLineBytes" => {
                    settings.max_line_bytes = Some(
                        value
                            .trim()
                            .parse()
                            .ok()
                            .filter(|&n: &usize| n > 0)
                            .ok_or(SettingsError::MaxLineBytes(value))?,
                    );
                }
                "checkpointPath" => settings.checkpoint_path = Some(PathBuf::from(value)),
                _ => settings.unknown.push(key),
            }
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_map_reads_every_key() {
        let settings = Settings::from_json(
            r#"{"include":"/a/*.log, /b/**/*.log","parser":"nginx","pattern":"^(?P<level>\\w+) (?P<message>.*)$\n^(?P<msg>.*)$",
                "timezone":"+01:00","maxLineBytes":"4096","checkpointPath":"/x/ckpt.json","colour":"blue"}"#,
        )
        .unwrap();
        assert_eq!(
            settings,
            Settings {
                include: vec!["/a/*.log".into(), "/b/**/*.log".into()],
                parser: Some(Choice::Combined),
                patterns: vec![r"^(?P<level>\w+) (?P<message>.*)$".into(), "^(?P<msg>.*)$".into()],
                timezone: Some(UtcOffset(3600)),
                max_line_bytes: Some(4096),
                checkpoint_path: Some("/x/ckpt.json".into()),
                unknown: vec!["colour".into()],
            }
        );
        assert_eq!(Settings::from_json("").unwrap(), Settings::default());
    }

    #[test]
    fn invalid_settings_say_which_key() {
        for (text, want) in [
            (r#"{"parser":"yaml"}"#, "setting parser"),
            (r#"{"timezone":"Mars/Olympus"}"#, "setting timezone"),
            (r#"{"maxLineBytes":"0"}"#, "maxLineBytes"),
            (r#"{"maxLineBytes":4096}"#, "not a JSON object of strings"),
        ] {
            let error = Settings::from_json(text).unwrap_err().to_string();
            assert!(error.contains(want), "{error}");
        }
    }
}
