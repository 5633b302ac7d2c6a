//! A sidecar's settings from the `sidecars.json` document the operator mounts with a service's
//! configuration (`<config dir>/sidecars.json`), for sidecars that read their settings once at start.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use outrigger_contract::sidecars::{SidecarsConfig, SIDECARS_CONFIG_KEY};

/// Why the mounted document could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading {path}: {message}")]
pub struct SettingsDocumentError {
    pub path: PathBuf,
    pub message: String,
}

/// The settings of `sidecar` in `<config_dir>/sidecars.json`; `None` when there is no such file or
/// the document names no settings for it.
pub fn from_sidecars_document(
    config_dir: &Path,
    sidecar: &str,
) -> Result<Option<BTreeMap<String, String>>, SettingsDocumentError> {
    let path = config_dir.join(SIDECARS_CONFIG_KEY);
    if !path.exists() {
        return Ok(None);
    }
    let failed = |message: String| SettingsDocumentError {
        path: path.clone(),
        message,
    };
    let text = std::fs::read(&path).map_err(|error| failed(error.to_string()))?;
    let document = SidecarsConfig::from_json(&text).map_err(|error| failed(error.to_string()))?;
    Ok(document.sidecars.get(sidecar).cloned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_sidecars_settings_come_from_the_document_and_a_missing_file_is_none() {
        let dir = std::env::temp_dir().join(format!("runtime-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(from_sidecars_document(&dir, "health-adapter").unwrap().is_none());
        std::fs::write(
            dir.join(SIDECARS_CONFIG_KEY),
            r#"{"service": "web", "namespace": "shop", "sidecars": {"health-adapter": {"probeApp": "true"}}}"#,
        )
        .unwrap();
        let settings = from_sidecars_document(&dir, "health-adapter").unwrap().unwrap();
        assert_eq!(settings.get("probeApp").map(String::as_str), Some("true"));
        assert!(from_sidecars_document(&dir, "metrics-adapter").unwrap().is_none());
        std::fs::write(dir.join(SIDECARS_CONFIG_KEY), "{").unwrap();
        assert!(from_sidecars_document(&dir, "health-adapter").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
