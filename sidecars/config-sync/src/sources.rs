//! What the watched objects hold right now, and the file set they make together. With a rollout
//! document ([`ConfigRollout`]) the ConfigMaps are applied in the version it gives this pod: the
//! stable data, or (for a canary pod) the ConfigMaps as they are.

use std::collections::BTreeMap;

use outrigger_contract::config_sync::{
    config_revision, ConfigMapData, ConfigRollout, ConfigSyncSettings, ROLLOUT_KEY,
};

use crate::{validate::Invalid, writer::FileSet};

/// The kinds of object the sidecar watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    ConfigMap,
    Secret,
    /// The ConfigMap holding the rollout document: read, never written out as files.
    Rollout,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ConfigMap | Kind::Rollout => "ConfigMap",
            Kind::Secret => "Secret",
        }
    }
}

/// What one object holds, as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Present(FileSet),
    /// Deleted, or never created.
    Absent,
    /// The API server refused to let the sidecar read it (`403`, or `401`), with its answer.
    Unreadable(String),
}

/// One change reported by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub kind: Kind,
    pub name: String,
    pub seen: Seen,
}

/// What the sources make: the files, and the [`config_revision`] of the ConfigMap data in them
/// (what the operator compares with the rollout's revisions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub files: FileSet,
    pub config_revision: String,
}

/// The named objects and what each holds.
#[derive(Debug, Clone)]
pub struct Sources {
    names: Vec<(Kind, String)>,
    seen: BTreeMap<(Kind, String), Seen>,
    /// This pod's name, which the rollout document may list as a canary.
    pod: Option<String>,
}

impl Sources {
    pub fn new(settings: &ConfigSyncSettings, pod: Option<String>) -> Sources {
        let names = settings
            .config_maps
            .iter()
            .map(|name| (Kind::ConfigMap, name.clone()))
            .chain(settings.secrets.iter().map(|name| (Kind::Secret, name.clone())))
            .chain(
                settings
                    .rollout_config_map
                    .iter()
                    .map(|name| (Kind::Rollout, name.clone())),
            )
            .collect();
        Sources {
            names,
            seen: BTreeMap::new(),
            pod,
        }
    }

    /// Records an update; whether anything changed.
    pub fn update(&mut self, update: Update) -> bool {
        let key = (update.kind, update.name);
        if !self.names.contains(&key) {
            return false;
        }
        self.seen.insert(key, update.seen.clone()) != Some(update.seen)
    }

    /// Every named object has been read at least once (present, absent or refused).
    pub fn all_known(&self) -> bool {
        self.names.iter().all(|key| self.seen.contains_key(key))
    }

    /// The rollout document, when there is one: `Ok(None)` without one (the setting is absent, or
    /// the operator has not written it: the ConfigMaps apply as they are).
    fn rollout(&self) -> Result<Option<ConfigRollout>, Invalid> {
        let Some(key @ (_, name)) = self.names.iter().find(|(kind, _)| *kind == Kind::Rollout) else {
            return Ok(None);
        };
        let object = format!("ConfigMap/{name}");
        let refuse = |message: String, category: &'static str| Invalid {
            file: object.clone(),
            line: None,
            column: None,
            message,
            category,
        };
        match self.seen.get(key) {
            Some(Seen::Present(data)) => {
                let text = data.get(ROLLOUT_KEY).ok_or_else(|| {
                    refuse(
                        format!("the rollout document has no key {ROLLOUT_KEY}"),
                        "rollout",
                    )
                })?;
                let text = String::from_utf8_lossy(text);
                ConfigRollout::from_json(&text)
                    .map(Some)
                    .map_err(|error| refuse(format!("the rollout document is invalid: {error}"), "rollout"))
            }
            Some(Seen::Absent) => Ok(None),
            Some(Seen::Unreadable(why)) => Err(refuse(
                format!("the sidecar may not read it ({why}); keeping the last good files"),
                "forbidden",
            )),
            None => Err(refuse(format!("{object} has not been read yet"), "source")),
        }
    }

    /// The files the objects make together, in the order named. A missing object, or a key
    /// that two objects both hold, is a refusal: the last good files stay.
    pub fn desired(&self) -> Result<Desired, Invalid> {
        let rollout = self.rollout()?;
        let mut files = FileSet::new();
        let mut config_data = ConfigMapData::new();
        let mut from: BTreeMap<String, String> = BTreeMap::new();
        for key @ (kind, name) in &self.names {
            let object = format!("{}/{name}", kind.as_str());
            let refuse = |file: String, message: String| Invalid {
                file,
                line: None,
                column: None,
                message,
                category: "source",
            };
            if *kind == Kind::Rollout {
                continue;
            }
            let pinned = match kind {
                Kind::ConfigMap => rollout
                    .as_ref()
                    .and_then(|rollout| rollout.pinned(self.pod.as_deref(), name)),
                _ => None,
            };
            let live = match (pinned, self.seen.get(key)) {
                (Some(_), _) => None,
                (None, Some(Seen::Present(data))) => Some(data),
                (None, Some(Seen::Absent)) => {
                    return Err(refuse(
                        object.clone(),
                        format!("{object} does not exist or cannot be read; keeping the last good files"),
                    ))
                }
                (None, Some(Seen::Unreadable(why))) => {
                    return Err(Invalid {
                        category: "forbidden",
                        ..refuse(
                            object.clone(),
                            format!("the sidecar may not read it ({why}); keeping the last good files"),
                        )
                    })
                }
                (None, None) => {
                    return Err(refuse(object.clone(), format!("{object} has not been read yet")));
                }
            };
            let data: FileSet = match (pinned, live) {
                (Some(stable), _) => stable
                    .iter()
                    .map(|(file, text)| (file.clone(), text.clone().into_bytes()))
                    .collect(),
                (None, Some(live)) => live.clone(),
                (None, None) => FileSet::new(),
            };
            if *kind == Kind::ConfigMap {
                config_data.insert(
                    name.clone(),
                    data.iter()
                        .map(|(file, bytes)| (file.clone(), String::from_utf8_lossy(bytes).into_owned()))
                        .collect(),
                );
            }
            for (file, content) in data {
                if !crate::writer::is_valid_name(&file) {
                    return Err(refuse(
                        file.clone(),
                        format!("{object} has a key that cannot be a file name"),
                    ));
                }
                if let Some(other) = from.insert(file.clone(), object.clone()) {
                    return Err(refuse(
                        file.clone(),
                        format!("both {other} and {object} hold this key"),
                    ));
                }
                files.insert(file, content);
            }
        }
        Ok(Desired {
            files,
            config_revision: config_revision(&config_data),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn present(pairs: &[(&str, &str)]) -> Seen {
        Seen::Present(
            pairs
                .iter()
                .map(|(name, text)| ((*name).to_owned(), text.as_bytes().to_vec()))
                .collect(),
        )
    }

    fn sources(config_maps: &str, secrets: &str, rollout: Option<&str>, pod: &str) -> Sources {
        let mut map = BTreeMap::from([
            ("configMaps".to_owned(), config_maps.to_owned()),
            ("secrets".to_owned(), secrets.to_owned()),
        ]);
        if let Some(rollout) = rollout {
            map.insert("rolloutConfigMap".to_owned(), rollout.to_owned());
        }
        Sources::new(
            &ConfigSyncSettings::from_settings(&map).unwrap(),
            Some(pod.to_owned()),
        )
    }

    fn update(kind: Kind, name: &str, seen: Seen) -> Update {
        Update {
            kind,
            name: name.to_owned(),
            seen,
        }
    }

    #[test]
    fn configmaps_and_secrets_make_one_set_once_every_one_was_read() {
        let mut sources = sources("app", "db", None, "web-a");
        assert!(sources.update(update(Kind::ConfigMap, "app", present(&[("app.json", "{}")]))));
        assert!(!sources.all_known());
        assert!(sources.update(update(Kind::Secret, "db", present(&[("password", "s3cret")]))));
        assert!(sources.all_known());
        let files = sources.desired().unwrap().files;
        assert_eq!(files.keys().collect::<Vec<_>>(), ["app.json", "password"]);
        assert!(
            !sources.update(update(Kind::Secret, "db", present(&[("password", "s3cret")]))),
            "the same content is no change"
        );
        assert!(
            !sources.update(update(Kind::ConfigMap, "other", present(&[]))),
            "unnamed objects are ignored"
        );
    }

    #[test]
    fn a_deleted_object_or_a_key_held_twice_is_refused_naming_it() {
        let mut sources = sources("app,flags", "", None, "web-a");
        sources.update(update(Kind::ConfigMap, "app", present(&[("a", "1")])));
        sources.update(update(Kind::ConfigMap, "flags", Seen::Absent));
        let error = sources.desired().unwrap_err();
        assert_eq!(error.file, "ConfigMap/flags");
        sources.update(update(Kind::ConfigMap, "flags", present(&[("a", "2")])));
        let error = sources.desired().unwrap_err();
        assert_eq!(
            error.to_string(),
            "a: both ConfigMap/app and ConfigMap/flags hold this key"
        );
    }

    #[test]
    fn a_secret_the_sidecar_may_not_read_is_refused_naming_it_and_the_answer() {
        let mut sources = sources("app", "db", None, "web-a");
        sources.update(update(Kind::ConfigMap, "app", present(&[("a", "1")])));
        let denied = Seen::Unreadable("403 Forbidden: secrets \"db\" is forbidden".to_owned());
        assert!(sources.update(update(Kind::Secret, "db", denied.clone())));
        assert!(
            sources.all_known(),
            "a refusal is an answer: the sidecar goes on with it"
        );
        let error = sources.desired().unwrap_err();
        assert_eq!((error.file.as_str(), error.category), ("Secret/db", "forbidden"));
        assert_eq!(
            error.to_string(),
            "Secret/db: the sidecar may not read it (403 Forbidden: secrets \"db\" is forbidden); \
             keeping the last good files"
        );
        assert!(
            !sources.update(update(Kind::Secret, "db", denied)),
            "the same refusal again is no change"
        );
        sources.update(update(Kind::Secret, "db", present(&[("password", "x")])));
        assert!(sources.desired().is_ok(), "granted access recovers");
    }

    fn rollout_document(stable: &str, canary_pods: &[&str]) -> Seen {
        let mut rollout = ConfigRollout::stable(ConfigMapData::from([(
            "app".to_owned(),
            BTreeMap::from([("app.json".to_owned(), stable.to_owned())]),
        )]));
        rollout.canary_pods = canary_pods.iter().map(|pod| (*pod).to_owned()).collect();
        present(&[(ROLLOUT_KEY, &rollout.to_json().unwrap())])
    }

    fn app_json(sources: &Sources) -> String {
        String::from_utf8(sources.desired().unwrap().files["app.json"].clone()).unwrap()
    }

    #[test]
    fn with_a_rollout_document_a_pod_applies_the_version_it_gives_that_pod() {
        // (pod, canary pods, the file it applies)
        for (pod, canary_pods, expected) in [
            ("web-a", vec![], "stable"),
            ("web-a", vec!["web-b"], "stable"),
            ("web-b", vec!["web-b"], "edited"),
            ("web-c", vec!["web-a", "web-b"], "stable"),
        ] {
            let mut sources = sources("app", "db", Some("web-config-rollout"), pod);
            sources.update(update(Kind::ConfigMap, "app", present(&[("app.json", "edited")])));
            sources.update(update(Kind::Secret, "db", present(&[("password", "live")])));
            assert!(!sources.all_known(), "the document is waited for");
            sources.update(update(
                Kind::Rollout,
                "web-config-rollout",
                rollout_document("stable", &canary_pods),
            ));
            assert_eq!(
                app_json(&sources),
                expected,
                "{pod} with canaries {canary_pods:?}"
            );
            let files = sources.desired().unwrap().files;
            assert_eq!(files["password"], b"live", "Secrets always apply as they are");
            assert!(!files.contains_key(ROLLOUT_KEY), "the document is not a file");
        }
    }

    #[test]
    fn the_config_revision_is_that_of_the_configmap_data_applied() {
        let mut sources = sources("app", "db", Some("web-config-rollout"), "web-a");
        sources.update(update(Kind::ConfigMap, "app", present(&[("app.json", "edited")])));
        sources.update(update(Kind::Secret, "db", present(&[("password", "x")])));
        sources.update(update(
            Kind::Rollout,
            "web-config-rollout",
            rollout_document("stable", &[]),
        ));
        let stable = ConfigMapData::from([(
            "app".to_owned(),
            BTreeMap::from([("app.json".to_owned(), "stable".to_owned())]),
        )]);
        assert_eq!(
            sources.desired().unwrap().config_revision,
            config_revision(&stable)
        );
        sources.update(update(
            Kind::Rollout,
            "web-config-rollout",
            rollout_document("stable", &["web-a"]),
        ));
        let edited = ConfigMapData::from([(
            "app".to_owned(),
            BTreeMap::from([("app.json".to_owned(), "edited".to_owned())]),
        )]);
        assert_eq!(
            sources.desired().unwrap().config_revision,
            config_revision(&edited)
        );
    }

    #[test]
    fn without_the_document_the_configmaps_apply_as_they_are_and_a_broken_one_is_refused() {
        let mut sources = sources("app", "", Some("web-config-rollout"), "web-a");
        sources.update(update(Kind::ConfigMap, "app", present(&[("app.json", "edited")])));
        sources.update(update(Kind::Rollout, "web-config-rollout", Seen::Absent));
        assert_eq!(app_json(&sources), "edited");
        sources.update(update(
            Kind::Rollout,
            "web-config-rollout",
            present(&[(ROLLOUT_KEY, "{not json")]),
        ));
        let error = sources.desired().unwrap_err();
        assert_eq!(
            (error.file.as_str(), error.category),
            ("ConfigMap/web-config-rollout", "rollout")
        );
    }

    #[test]
    fn a_stable_pod_keeps_the_stable_files_when_the_configmap_is_deleted() {
        let mut sources = sources("app", "", Some("web-config-rollout"), "web-a");
        sources.update(update(Kind::ConfigMap, "app", Seen::Absent));
        sources.update(update(
            Kind::Rollout,
            "web-config-rollout",
            rollout_document("stable", &[]),
        ));
        assert_eq!(app_json(&sources), "stable");
    }
}
