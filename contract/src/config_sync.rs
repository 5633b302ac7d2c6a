//! The config sync sidecar's settings, and the status it reports on its pod.
//!
//! A user writes the settings as the flat string map every sidecar gets (`spec.sidecars[].settings`,
//! handed over in `OUTRIGGER_SETTINGS`); [`ConfigSyncSettings::from_settings`] reads that map into
//! the typed document. The operator reads it with the same function (to build the Role naming the
//! objects, the shared volume and the process namespace), and the sidecar reads it at start-up, so
//! the two cannot disagree on a key. The status annotation ([`STATUS_ANNOTATION`]) is the other
//! direction: the sidecar writes a [`ConfigSyncStatus`], the operator reads it into the owner's
//! `ConfigSynced` condition, its Events and its status.
//!
//! A service whose config changes are rolled out like code adds a third document, the
//! [`ConfigRollout`]: the operator writes it into one ConfigMap per service and every sidecar of the
//! service watches it, to learn which version of the ConfigMaps its own pod applies.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{duration::ConfigDuration, ApiVersion};

/// Annotation on each pod holding the sidecar's [`ConfigSyncStatus`] as JSON.
pub const STATUS_ANNOTATION: &str = "outrigger.dev/config-sync-status";
/// Where the synced files appear in the app's containers unless `mountPath` says otherwise.
pub const DEFAULT_MOUNT_PATH: &str = "/etc/config";

/// Everything the config sync sidecar does for one pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigSyncSettings {
    /// Version of this document's format; absent means `outrigger.dev/v1alpha1`.
    #[serde(default)]
    pub api_version: ApiVersion,
    /// ConfigMaps of the pod's namespace whose keys become files (`configMaps: "app,flags"`).
    #[serde(default)]
    pub config_maps: Vec<String>,
    /// Secrets of the pod's namespace whose keys become files; with any Secret the shared volume
    /// lives in memory.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Where the app's containers see the files.
    pub mount_path: String,
    /// Mode of each file written (`fileMode: "0640"`).
    pub file_mode: u32,
    /// User and group the sidecar runs as, and so the owner of the files (`runAsUser`,
    /// `runAsGroup`); the restricted default (65534) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_group: Option<i64>,
    /// File type by file name where the extension does not say (`types: "app.cfg=ini"`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub types: BTreeMap<String, FileType>,
    /// JSON Schema checks: file name to the synced file holding its schema
    /// (`schemas: "app.json=app.schema.json"`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub schemas: BTreeMap<String, String>,
    /// How the app learns of new files.
    pub reload: Reload,
    /// Changes closer together than this are applied as one.
    pub debounce: ConfigDuration,
    /// The app's health, watched after each reload; a failure rolls the files back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    /// The ConfigMap holding the service's [`ConfigRollout`] (`rolloutConfigMap`): when set, the
    /// ConfigMaps are applied in the version it gives this pod. The operator sets it for a
    /// ReplicatedService with a `rolloutStrategyRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_config_map: Option<String>,
}

/// The syntax a file is checked for before it is written.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FileType {
    Json,
    Yaml,
    Toml,
    /// INI files and Java properties: `key = value`, `key: value`, `[section]`, comments.
    Ini,
    /// Not checked.
    Text,
}

impl FileType {
    /// The type a file name's extension says, [`FileType::Text`] when it says none we check.
    pub fn from_file_name(name: &str) -> FileType {
        let extension = name
            .rsplit_once('.')
            .map(|(_, extension)| extension.to_ascii_lowercase());
        match extension.as_deref() {
            Some("json") => FileType::Json,
            Some("yaml" | "yml") => FileType::Yaml,
            Some("toml") => FileType::Toml,
            Some("ini" | "properties" | "cfg" | "conf") => FileType::Ini,
            _ => FileType::Text,
        }
    }

    fn parse(text: &str) -> Option<FileType> {
        Some(match text {
            "json" => FileType::Json,
            "yaml" | "yml" => FileType::Yaml,
            "toml" => FileType::Toml,
            "ini" | "properties" => FileType::Ini,
            "text" | "none" => FileType::Text,
            _ => return None,
        })
    }
}

/// How the app is told to read its files again.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Reload {
    /// The app reads its files itself (or watches `..data`).
    None,
    /// An HTTP request to the app (`reloadUrl`, `reloadMethod`, `reloadExpectStatus`).
    Http {
        url: String,
        method: String,
        expect_status: u16,
    },
    /// A signal to the process named `process` in the pod (`reloadProcess`, `reloadSignal`); the
    /// pod shares its process namespace.
    Signal { process: String, signal: String },
}

/// The health the sidecar watches after a reload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// A `GET` answering 2xx when the app is healthy (`healthUrl`).
    pub url: String,
    /// How long after a reload the app has to stay healthy (`healthWindow`).
    pub window: ConfigDuration,
    /// Time between checks (`healthInterval`).
    pub interval: ConfigDuration,
    /// Consecutive failed checks that roll back (`healthFailures`).
    pub failures: u32,
}

/// Why the settings map was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for SettingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "config-sync setting {:?}: {}", self.key, self.message)
    }
}

impl std::error::Error for SettingsError {}

/// The settings keys, for the unknown-key check.
pub const SETTINGS_KEYS: &[&str] = &[
    "configMaps",
    "secrets",
    "mountPath",
    "fileMode",
    "runAsUser",
    "runAsGroup",
    "types",
    "schemas",
    "reload",
    "reloadUrl",
    "reloadMethod",
    "reloadExpectStatus",
    "reloadProcess",
    "reloadSignal",
    "debounce",
    "healthUrl",
    "healthWindow",
    "healthInterval",
    "healthFailures",
    "rolloutConfigMap",
];

impl ConfigSyncSettings {
    /// Reads the flat settings map. Unknown keys, malformed values and a source-less map are
    /// refused, naming the key.
    pub fn from_settings(map: &BTreeMap<String, String>) -> Result<ConfigSyncSettings, SettingsError> {
        let error = |key: &str, message: String| SettingsError {
            key: key.to_owned(),
            message,
        };
        if let Some(unknown) = map.keys().find(|key| !SETTINGS_KEYS.contains(&key.as_str())) {
            return Err(error(
                unknown,
                format!("unknown key; known keys: {}", SETTINGS_KEYS.join(", ")),
            ));
        }
        let get = |key: &str| {
            map.get(key)
                .map(|value| value.trim())
                .filter(|value| !value.is_empty())
        };
        let list = |key: &str| -> Vec<String> {
            get(key)
                .map(|value| {
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|name| !name.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let pairs = |key: &str| -> Result<BTreeMap<String, String>, SettingsError> {
            list(key)
                .into_iter()
                .map(|pair| match pair.split_once('=') {
                    Some((file, value)) if !file.trim().is_empty() && !value.trim().is_empty() => {
                        Ok((file.trim().to_owned(), value.trim().to_owned()))
                    }
                    _ => Err(error(key, format!("{pair:?} is not file=value"))),
                })
                .collect()
        };
        let duration = |key: &str, default: Duration| -> Result<ConfigDuration, SettingsError> {
            get(key).map_or(Ok(ConfigDuration(default)), |text| {
                text.parse().map_err(|message| error(key, message))
            })
        };
        let number = |key: &str| -> Result<Option<i64>, SettingsError> {
            get(key)
                .map(|text| {
                    text.parse()
                        .map_err(|_| error(key, format!("{text:?} is not a number")))
                })
                .transpose()
        };

        let config_maps = list("configMaps");
        let secrets = list("secrets");
        if config_maps.is_empty() && secrets.is_empty() {
            return Err(error(
                "configMaps",
                "name at least one ConfigMap or Secret".to_owned(),
            ));
        }
        for name in config_maps.iter().chain(&secrets) {
            if !is_dns_subdomain(name) {
                return Err(error("configMaps", format!("{name:?} is not an object name")));
            }
        }
        let rollout_config_map = get("rolloutConfigMap").map(str::to_owned);
        if let Some(name) = rollout_config_map
            .as_deref()
            .filter(|name| !is_dns_subdomain(name))
        {
            return Err(error(
                "rolloutConfigMap",
                format!("{name:?} is not an object name"),
            ));
        }
        let mount_path = get("mountPath").unwrap_or(DEFAULT_MOUNT_PATH).to_owned();
        if !mount_path.starts_with('/') {
            return Err(error(
                "mountPath",
                format!("{mount_path:?} is not an absolute path"),
            ));
        }
        let file_mode = match get("fileMode") {
            Some(text) => u32::from_str_radix(text.trim_start_matches("0o"), 8)
                .ok()
                .filter(|mode| *mode <= 0o777)
                .ok_or_else(|| error("fileMode", format!("{text:?} is not an octal mode like 0644")))?,
            None => 0o644,
        };
        let types = pairs("types")?
            .into_iter()
            .map(|(file, kind)| {
                FileType::parse(&kind)
                    .map(|kind| (file, kind))
                    .ok_or_else(|| error("types", format!("{kind:?} is not json, yaml, toml, ini or text")))
            })
            .collect::<Result<_, _>>()?;
        let reload_kind = get("reload").unwrap_or(if get("reloadUrl").is_some() {
            "http"
        } else if get("reloadProcess").is_some() {
            "signal"
        } else {
            "none"
        });
        let reload = match reload_kind {
            "none" => Reload::None,
            "http" => {
                let url = get("reloadUrl")
                    .ok_or_else(|| error("reloadUrl", "an HTTP reload needs a URL".to_owned()))?;
                check_http_url("reloadUrl", url)?;
                let expect_status = match get("reloadExpectStatus") {
                    Some(text) => text
                        .parse::<u16>()
                        .ok()
                        .filter(|status| (100..600).contains(status))
                        .ok_or_else(|| {
                            error("reloadExpectStatus", format!("{text:?} is not an HTTP status"))
                        })?,
                    None => 200,
                };
                Reload::Http {
                    url: url.to_owned(),
                    method: get("reloadMethod").unwrap_or("POST").to_ascii_uppercase(),
                    expect_status,
                }
            }
            "signal" => {
                let process = get("reloadProcess").ok_or_else(|| {
                    error("reloadProcess", "a signal reload needs a process name".to_owned())
                })?;
                let signal = get("reloadSignal")
                    .unwrap_or("HUP")
                    .trim_start_matches("SIG")
                    .to_owned();
                if !["HUP", "USR1", "USR2", "INT", "TERM", "QUIT"].contains(&signal.as_str()) {
                    return Err(error(
                        "reloadSignal",
                        format!("{signal:?} is not HUP, USR1, USR2, INT, TERM or QUIT"),
                    ));
                }
                Reload::Signal {
                    process: process.to_owned(),
                    signal,
                }
            }
            other => return Err(error("reload", format!("{other:?} is not none, http or signal"))),
        };
        let health = match get("healthUrl") {
            Some(url) => {
                check_http_url("healthUrl", url)?;
                let failures = number("healthFailures")?.unwrap_or(2);
                Some(HealthCheck {
                    url: url.to_owned(),
                    window: duration("healthWindow", Duration::from_secs(10))?,
                    interval: duration("healthInterval", Duration::from_secs(1))?,
                    failures: u32::try_from(failures)
                        .ok()
                        .filter(|failures| *failures >= 1)
                        .ok_or_else(|| error("healthFailures", "at least 1".to_owned()))?,
                })
            }
            None => None,
        };
        let settings = ConfigSyncSettings {
            api_version: ApiVersion::default(),
            config_maps,
            secrets,
            mount_path,
            file_mode,
            run_as_user: number("runAsUser")?,
            run_as_group: number("runAsGroup")?,
            types,
            schemas: pairs("schemas")?,
            reload,
            debounce: duration("debounce", Duration::from_millis(100))?,
            health,
            rollout_config_map,
        };
        Ok(settings)
    }

    /// Reads the settings as injection hands them over: the JSON object of `OUTRIGGER_SETTINGS`.
    pub fn from_json(text: &str) -> Result<ConfigSyncSettings, SettingsError> {
        let map: BTreeMap<String, String> = serde_json::from_str(text).map_err(|error| SettingsError {
            key: "OUTRIGGER_SETTINGS".to_owned(),
            message: format!("not a JSON object of strings: {error}"),
        })?;
        ConfigSyncSettings::from_settings(&map)
    }

    /// Whether any source is a Secret (the shared volume then lives in memory).
    pub fn has_secrets(&self) -> bool {
        !self.secrets.is_empty()
    }

    /// The type a file is checked as.
    pub fn file_type(&self, file: &str) -> FileType {
        self.types
            .get(file)
            .copied()
            .unwrap_or_else(|| FileType::from_file_name(file))
    }
}

fn check_http_url(key: &str, url: &str) -> Result<(), SettingsError> {
    if url.starts_with("http://") {
        Ok(())
    } else {
        Err(SettingsError {
            key: key.to_owned(),
            message: format!("{url:?} is not an http:// URL"),
        })
    }
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-' || byte == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.'])
}

/// What a pod's sidecar last did, as the [`STATUS_ANNOTATION`] holds it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigSyncStatus {
    /// Version of this document's format.
    #[serde(default)]
    pub api_version: ApiVersion,
    /// The version the app has applied: a digest of every file's name and content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_version: Option<String>,
    /// What the last change came to.
    pub state: SyncState,
    /// The file that was refused, on a rejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Why, on a rejection, a failed reload or a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The version that was refused or rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_version: Option<String>,
    /// The [`config_revision`] of the ConfigMap data the applied version was made of: what the
    /// operator compares with a [`ConfigRollout`]'s stable and canary revisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_revision: Option<String>,
}

/// What the last change came to.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SyncState {
    /// The latest sources are written and the app reloaded them.
    Synced,
    /// The latest sources failed validation; the last good files stay.
    Rejected,
    /// The app could not be told to reload (retried).
    ReloadFailed,
    /// The app turned unhealthy after a reload; the previous files were restored.
    RolledBack,
}

impl SyncState {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Synced => "Synced",
            SyncState::Rejected => "Rejected",
            SyncState::ReloadFailed => "ReloadFailed",
            SyncState::RolledBack => "RolledBack",
        }
    }
}

/// The data of some ConfigMaps: ConfigMap name, then key, then value.
pub type ConfigMapData = BTreeMap<String, BTreeMap<String, String>>;

/// Key of the [`ConfigRollout`] in its ConfigMap.
pub const ROLLOUT_KEY: &str = "config-rollout.json";

/// Name of a service's rollout ConfigMap.
pub fn rollout_config_map_name(service: &str) -> String {
    format!("{service}-config-rollout")
}

/// A digest of ConfigMap data (every name, key and value, in order): the same data gives the same
/// revision in the operator, which reads the ConfigMaps, and in the sidecar, which applied them.
pub fn config_revision(data: &ConfigMapData) -> String {
    // FNV-1a, 64 bits, over each part with its length, so no two different sets feed the same bytes.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for byte in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for (name, entries) in data {
        feed(name.as_bytes());
        feed(&(entries.len() as u64).to_le_bytes());
        for (key, value) in entries {
            feed(key.as_bytes());
            feed(value.as_bytes());
        }
    }
    format!("{hash:016x}")
}

/// Which version of its ConfigMaps each pod of a service applies while a change of them is rolled
/// out like a new version of code. The operator writes it (ConfigMap
/// [`rollout_config_map_name`], key [`ROLLOUT_KEY`]); every sidecar of the service watches it.
///
/// Pods named in `canaryPods` apply the ConfigMaps as they are now; every other pod applies
/// `stable`, whatever the ConfigMaps hold. So an edit reaches no pod until the operator chooses
/// canary pods for it; a promotion makes the new data `stable` (every pod moves); a rollback empties
/// `canaryPods` (the canary pods swap the stable files back in place). Secrets are not part of it:
/// they are always applied as they are.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigRollout {
    /// Version of this document's format.
    #[serde(default)]
    pub api_version: ApiVersion,
    /// [`config_revision`] of `stable`.
    pub stable_revision: String,
    /// Each source ConfigMap's data in the stable version.
    pub stable: ConfigMapData,
    /// [`config_revision`] of the ConfigMaps the canary pods apply; absent between rollouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_revision: Option<String>,
    /// The pods that apply the ConfigMaps as they are now.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub canary_pods: BTreeSet<String>,
}

impl ConfigRollout {
    /// The stable version and no canary.
    pub fn stable(stable: ConfigMapData) -> ConfigRollout {
        ConfigRollout {
            api_version: ApiVersion::default(),
            stable_revision: config_revision(&stable),
            stable,
            canary_revision: None,
            canary_pods: BTreeSet::new(),
        }
    }

    /// The data pod `pod` applies for ConfigMap `name`: the stable data, unless the pod is a
    /// canary or the stable version does not know that ConfigMap (`None`: the ConfigMap as it is).
    pub fn pinned<'a>(&'a self, pod: Option<&str>, name: &str) -> Option<&'a BTreeMap<String, String>> {
        if pod.is_some_and(|pod| self.canary_pods.contains(pod)) {
            return None;
        }
        self.stable.get(name)
    }

    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }

    pub fn from_json(text: &str) -> serde_json::Result<ConfigRollout> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn a_flat_settings_map_reads_into_the_typed_document_with_defaults() {
        let settings = ConfigSyncSettings::from_settings(&map(&[
            ("configMaps", "app, flags"),
            ("secrets", "db"),
            ("fileMode", "0640"),
            ("schemas", "app.json=app.schema.json"),
            ("types", "app.cfg=ini"),
            ("reloadUrl", "http://127.0.0.1:8080/-/reload"),
            ("healthUrl", "http://127.0.0.1:8080/healthz"),
            ("healthWindow", "5s"),
        ]))
        .unwrap();
        assert_eq!(settings.config_maps, ["app", "flags"]);
        assert!(settings.has_secrets());
        assert_eq!(settings.file_mode, 0o640);
        assert_eq!(settings.mount_path, DEFAULT_MOUNT_PATH);
        assert_eq!(
            settings.reload,
            Reload::Http {
                url: "http://127.0.0.1:8080/-/reload".to_owned(),
                method: "POST".to_owned(),
                expect_status: 200
            }
        );
        let health = settings.health.clone().unwrap();
        assert_eq!(health.window.0, Duration::from_secs(5));
        assert_eq!(health.failures, 2);
        assert_eq!(settings.file_type("app.cfg"), FileType::Ini);
        assert_eq!(settings.file_type("x.yml"), FileType::Yaml);
        assert_eq!(settings.file_type("README"), FileType::Text);
    }

    #[test]
    fn a_process_name_means_a_signal_reload() {
        let settings =
            ConfigSyncSettings::from_settings(&map(&[("configMaps", "app"), ("reloadProcess", "nginx")]))
                .unwrap();
        assert_eq!(
            settings.reload,
            Reload::Signal {
                process: "nginx".to_owned(),
                signal: "HUP".to_owned()
            }
        );
    }

    #[test]
    fn bad_settings_name_their_key() {
        for (pairs, key) in [
            (vec![("secrets", "")], "configMaps"),
            (vec![("configMaps", "a"), ("fileMode", "999")], "fileMode"),
            (vec![("configMaps", "a"), ("colour", "red")], "colour"),
            (vec![("configMaps", "a"), ("reload", "http")], "reloadUrl"),
            (
                vec![
                    ("configMaps", "a"),
                    ("reloadProcess", "x"),
                    ("reloadSignal", "KILL"),
                ],
                "reloadSignal",
            ),
            (vec![("configMaps", "Bad_Name")], "configMaps"),
            (vec![("configMaps", "a"), ("types", "x=xml")], "types"),
        ] {
            let error = ConfigSyncSettings::from_settings(&map(&pairs)).unwrap_err();
            assert_eq!(error.key, key, "{pairs:?}: {error}");
        }
    }

    #[test]
    fn the_status_annotation_round_trips() {
        let status = ConfigSyncStatus {
            api_version: ApiVersion::default(),
            applied_version: Some("abc".to_owned()),
            state: SyncState::Rejected,
            file: Some("app.json".to_owned()),
            message: Some("line 1, column 2: expected value".to_owned()),
            refused_version: Some("def".to_owned()),
            config_revision: Some("0123456789abcdef".to_owned()),
        };
        let text = serde_json::to_string(&status).unwrap();
        assert_eq!(serde_json::from_str::<ConfigSyncStatus>(&text).unwrap(), status);
    }

    fn data(pairs: &[(&str, &str, &str)]) -> ConfigMapData {
        let mut data = ConfigMapData::new();
        for (name, key, value) in pairs {
            data.entry((*name).to_owned())
                .or_default()
                .insert((*key).to_owned(), (*value).to_owned());
        }
        data
    }

    #[test]
    fn a_revision_changes_with_any_name_key_or_value_and_only_then() {
        let base = data(&[("app", "app.json", "{}"), ("flags", "a", "1")]);
        let revision = config_revision(&base);
        assert_eq!(revision, config_revision(&base.clone()));
        assert_eq!(revision.len(), 16);
        for changed in [
            data(&[("app", "app.json", "{ }"), ("flags", "a", "1")]),
            data(&[("app", "app.yaml", "{}"), ("flags", "a", "1")]),
            data(&[("app", "app.json", "{}"), ("other", "a", "1")]),
            data(&[("app", "app.json", "{}")]),
            // The same bytes split differently between key and value.
            data(&[("app", "app.json{", "}"), ("flags", "a", "1")]),
        ] {
            assert_ne!(config_revision(&changed), revision, "{changed:?}");
        }
    }

    #[test]
    fn a_pod_applies_the_stable_data_unless_it_is_a_canary_or_stable_lacks_the_configmap() {
        let mut rollout = ConfigRollout::stable(data(&[("app", "app.json", "{\"v\":1}")]));
        rollout.canary_pods.insert("web-b".to_owned());
        let stable = Some(&rollout.stable["app"]);
        for (pod, name, expected) in [
            (Some("web-a"), "app", stable),
            (Some("web-b"), "app", None),
            (None, "app", stable),
            (Some("web-a"), "flags", None),
        ] {
            assert_eq!(rollout.pinned(pod, name), expected, "{pod:?} {name}");
        }
    }

    #[test]
    fn the_rollout_document_round_trips_and_refuses_unknown_fields() {
        let mut rollout = ConfigRollout::stable(data(&[("app", "k", "v")]));
        rollout.canary_revision = Some("abc".to_owned());
        rollout.canary_pods.insert("web-a".to_owned());
        let text = rollout.to_json().unwrap();
        assert_eq!(ConfigRollout::from_json(&text).unwrap(), rollout);
        assert!(ConfigRollout::from_json(r#"{"stableRevision":"x","stable":{},"colour":1}"#).is_err());
    }

    #[test]
    fn the_rollout_configmap_setting_is_an_object_name() {
        let settings = ConfigSyncSettings::from_settings(&map(&[
            ("configMaps", "app"),
            ("rolloutConfigMap", "web-config-rollout"),
        ]))
        .unwrap();
        assert_eq!(settings.rollout_config_map.as_deref(), Some("web-config-rollout"));
        let error =
            ConfigSyncSettings::from_settings(&map(&[("configMaps", "app"), ("rolloutConfigMap", "Web!")]))
                .unwrap_err();
        assert_eq!(error.key, "rolloutConfigMap");
    }
}
