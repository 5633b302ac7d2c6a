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
//! | `sinkUrl`       | send records to this `http://` endpoint instead of stdout    |
//! | `sinkFormat`    | `json-lines`, `loki` or `elasticsearch`                      |
//! | `sinkLabels`    | Loki stream labels, `name=value` comma-separated             |

use std::{collections::BTreeMap, path::PathBuf};

use crate::{
    parse::{Choice, ChoiceError},
    sink::http::{format::FormatError, Format},
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
    pub sink_url: Option<String>,
    pub sink_format: Option<Format>,
    pub sink_labels: Vec<(String, String)>,
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
    #[error("setting sinkFormat: {0}")]
    SinkFormat(#[from] FormatError),
    #[error("setting sinkLabels: {0}")]
    SinkLabels(#[from] LabelError),
}

/// A label was not `name=value`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("label {0:?} is not name=value")]
pub struct LabelError(pub String);

/// Reads `name=value` (a Loki stream label).
pub fn parse_label(text: &str) -> Result<(String, String), LabelError> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(LabelError(text.to_owned())),
    }
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
                "sinkUrl" => settings.sink_url = Some(value.trim().to_owned()).filter(|u| !u.is_empty()),
                "sinkFormat" => settings.sink_format = Some(value.parse()?),
                "sinkLabels" => {
                    settings.sink_labels = value
                        .split(',')
                        .filter(|l| !l.trim().is_empty())
                        .map(parse_label)
                        .collect::<Result<_, _>>()?;
                }
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
                sink_url: None,
                sink_format: None,
                sink_labels: Vec::new(),
                unknown: vec!["colour".into()],
            }
        );
        assert_eq!(Settings::from_json("").unwrap(), Settings::default());
        let sink = Settings::from_json(
            r#"{"sinkUrl":"http://loki:3100/loki/api/v1/push","sinkFormat":"loki","sinkLabels":"job=web, env = prod"}"#,
        )
        .unwrap();
        assert_eq!(sink.sink_format, Some(Format::Loki));
        assert_eq!(
            sink.sink_labels,
            [("job".into(), "web".into()), ("env".into(), "prod".into())]
        );
    }

    #[test]
    fn invalid_settings_say_which_key() {
        for (text, want) in [
            (r#"{"parser":"yaml"}"#, "setting parser"),
            (r#"{"timezone":"Mars/Olympus"}"#, "setting timezone"),
            (r#"{"maxLineBytes":"0"}"#, "maxLineBytes"),
            (r#"{"maxLineBytes":4096}"#, "not a JSON object of strings"),
            (r#"{"sinkFormat":"splunk"}"#, "setting sinkFormat"),
            (r#"{"sinkLabels":"job"}"#, "setting sinkLabels"),
        ] {
            let error = Settings::from_json(text).unwrap_err().to_string();
            assert!(error.contains(want), "{error}");
        }
    }
}
