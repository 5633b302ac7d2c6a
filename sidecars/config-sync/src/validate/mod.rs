//! Checks a set of files before it is written: each file's syntax by its type (JSON, YAML, TOML,
//! INI/properties), then the JSON Schemas the settings name. The first problem is returned with
//! the file and, where the parser knows it, the line and column, so the log line, the Event and the
//! condition can point at it.

mod ini;
pub mod schema;
mod toml;

use std::collections::BTreeMap;

use outrigger_contract::config_sync::{ConfigSyncSettings, FileType};
use serde_json::Value;

/// Why a file set was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", position(*line, *column))]
pub struct Invalid {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
    /// `json`, `yaml`, `toml`, `ini`, `schema`, `encoding`, `missing`, `source` (a named object is
    /// missing or clashes), `forbidden` (it may not be read), `rollout` (the rollout document is
    /// broken): a metric label.
    pub category: &'static str,
}

fn position(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!(" line {line} column {column}"),
        (Some(line), None) => format!(" line {line}"),
        _ => String::new(),
    }
}

/// A syntax problem inside one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl Problem {
    pub fn at(line: usize, column: usize, message: impl Into<String>) -> Problem {
        Problem {
            line: Some(line),
            column: Some(column),
            message: message.into(),
        }
    }
}

/// Checks every file of `files`, then every schema of the settings.
pub fn validate(files: &BTreeMap<String, Vec<u8>>, settings: &ConfigSyncSettings) -> Result<(), Invalid> {
    for (name, content) in files {
        let kind = settings.file_type(name);
        check(kind, content).map_err(|problem| Invalid {
            file: name.clone(),
            line: problem.line,
            column: problem.column,
            message: problem.message,
            category: category(kind),
        })?;
    }
    for (file, schema_file) in &settings.schemas {
        let missing = |name: &str| Invalid {
            file: name.to_owned(),
            line: None,
            column: None,
            message: "the file is missing from the sources (its schema check needs it)".to_owned(),
            category: "missing",
        };
        let content = files.get(file).ok_or_else(|| missing(file))?;
        let schema_text = files.get(schema_file).ok_or_else(|| missing(schema_file))?;
        let schema: Value = serde_json::from_slice(schema_text).map_err(|error| Invalid {
            file: schema_file.clone(),
            line: Some(error.line()),
            column: Some(error.column()),
            message: format!("the schema is not JSON: {error}"),
            category: "schema",
        })?;
        let document = as_json(settings.file_type(file), content).ok_or_else(|| Invalid {
            file: file.clone(),
            line: None,
            column: None,
            message: "only JSON and YAML files can be checked against a schema".to_owned(),
            category: "schema",
        })?;
        schema::check(&schema, &document).map_err(|error| Invalid {
            file: file.clone(),
            line: None,
            column: None,
            message: format!("at {}: {}", error.path, error.message),
            category: "schema",
        })?;
    }
    Ok(())
}

fn category(kind: FileType) -> &'static str {
    match kind {
        FileType::Json => "json",
        FileType::Yaml => "yaml",
        FileType::Toml => "toml",
        FileType::Ini => "ini",
        FileType::Text => "encoding",
    }
}

/// Checks one file's syntax.
pub fn check(kind: FileType, content: &[u8]) -> Result<(), Problem> {
    if kind == FileType::Text {
        return Ok(());
    }
    let text = std::str::from_utf8(content).map_err(|error| {
        let before = &content[..error.valid_up_to()];
        let line = before.iter().filter(|byte| **byte == b'\n').count() + 1;
        let column = before.len()
            - before
                .iter()
                .rposition(|byte| *byte == b'\n')
                .map_or(0, |at| at + 1)
            + 1;
        Problem::at(line, column, "not UTF-8 text")
    })?;
    match kind {
        FileType::Json => serde_json::from_str::<serde::de::IgnoredAny>(text)
            .map(drop)
            .map_err(|error| Problem::at(error.line(), error.column(), error.to_string())),
        FileType::Yaml => {
            // Every document of a multi-document stream.
            for document in serde_yaml::Deserializer::from_str(text) {
                <serde_yaml::Value as serde::Deserialize>::deserialize(document).map_err(yaml_problem)?;
            }
            Ok(())
        }
        FileType::Toml => toml::check(text),
        FileType::Ini => ini::check(text),
        FileType::Text => Ok(()),
    }
}

fn yaml_problem(error: serde_yaml::Error) -> Problem {
    let message = error.to_string();
    match error.location() {
        Some(location) => Problem::at(location.line(), location.column(), message),
        None => Problem {
            line: None,
            column: None,
            message,
        },
    }
}

/// A JSON or YAML file as a JSON value, for its schema check.
fn as_json(kind: FileType, content: &[u8]) -> Option<Value> {
    match kind {
        FileType::Json => serde_json::from_slice(content).ok(),
        FileType::Yaml => serde_yaml::from_slice(content).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> ConfigSyncSettings {
        let mut map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        map.insert("configMaps".to_owned(), "app".to_owned());
        ConfigSyncSettings::from_settings(&map).unwrap()
    }

    fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(name, text)| ((*name).to_owned(), text.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn broken_json_is_refused_with_its_line_and_column() {
        let error = validate(
            &files(&[("ok.json", "{}"), ("app.json", "{\n  \"port\": 80,\n  oops\n}")]),
            &settings(&[]),
        )
        .unwrap_err();
        assert_eq!(
            (error.file.as_str(), error.line, error.column),
            ("app.json", Some(3), Some(3))
        );
        assert_eq!(error.category, "json");
        assert!(
            error.to_string().starts_with("app.json line 3 column 3: "),
            "{error}"
        );
    }

    #[test]
    fn broken_yaml_is_refused_with_its_position_and_every_document_is_read() {
        let error = validate(&files(&[("app.yaml", "a: 1\n---\nb: [1, 2\n")]), &settings(&[])).unwrap_err();
        assert_eq!(error.file, "app.yaml");
        assert_eq!(error.category, "yaml");
        assert!(error.line.is_some(), "{error}");
        assert!(validate(&files(&[("app.yml", "a: 1\n---\nb: [1, 2]\n")]), &settings(&[])).is_ok());
    }

    #[test]
    fn the_settings_type_overrides_the_extension_and_text_is_not_checked() {
        let broken = files(&[("app.cfg", "[server\nport = 80\n")]);
        let error = validate(&broken, &settings(&[])).unwrap_err();
        assert_eq!((error.category, error.line), ("ini", Some(1)));
        assert!(validate(&broken, &settings(&[("types", "app.cfg=text")])).is_ok());
        let error = validate(
            &files(&[("settings", "{")]),
            &settings(&[("types", "settings=json")]),
        )
        .unwrap_err();
        assert_eq!(error.category, "json");
        assert!(validate(&files(&[("notes.txt", "{ not json")]), &settings(&[])).is_ok());
    }

    #[test]
    fn invalid_utf8_in_a_typed_file_is_named_with_its_position() {
        let mut set = files(&[]);
        set.insert("app.toml".to_owned(), b"a = 1\nb = \"\xff\"\n".to_vec());
        let error = validate(&set, &settings(&[])).unwrap_err();
        assert_eq!((error.line, error.column), (Some(2), Some(6)));
    }

    #[test]
    fn a_schema_names_the_field_that_does_not_fit() {
        let schema = r#"{"type":"object","required":["port"],"properties":{"port":{"type":"integer","minimum":1,"maximum":65535}}}"#;
        let settings = settings(&[("schemas", "app.json=app.schema.json")]);
        let good = files(&[("app.json", r#"{"port": 8080}"#), ("app.schema.json", schema)]);
        assert!(validate(&good, &settings).is_ok());
        let bad = files(&[("app.json", r#"{"port": 0}"#), ("app.schema.json", schema)]);
        let error = validate(&bad, &settings).unwrap_err();
        assert_eq!(
            error.to_string(),
            "app.json: at /port: 0 is less than the minimum 1"
        );
        let missing = files(&[("app.schema.json", schema)]);
        assert_eq!(validate(&missing, &settings).unwrap_err().category, "missing");
    }
}
