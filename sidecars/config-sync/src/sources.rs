//! What the watched objects hold right now, and the file set they make together.

use std::collections::BTreeMap;

use crate::{validate::Invalid, writer::FileSet};

/// The kinds of object the files come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    ConfigMap,
    Secret,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ConfigMap => "ConfigMap",
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

/// The named objects and what each holds.
#[derive(Debug, Clone)]
pub struct Sources {
    names: Vec<(Kind, String)>,
    seen: BTreeMap<(Kind, String), Seen>,
}

impl Sources {
    pub fn new(config_maps: &[String], secrets: &[String]) -> Sources {
        let names = config_maps
            .iter()
            .map(|name| (Kind::ConfigMap, name.clone()))
            .chain(secrets.iter().map(|name| (Kind::Secret, name.clone())))
            .collect();
        Sources {
            names,
            seen: BTreeMap::new(),
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

    /// Every named object has been read at least once (present or absent).
    pub fn all_known(&self) -> bool {
        self.names.iter().all(|key| self.seen.contains_key(key))
    }

    /// The files the objects make together, in the order named. A missing object, or a key
    /// that two objects both hold, is a refusal: the last good files stay.
    pub fn desired(&self) -> Result<FileSet, Invalid> {
        let mut files = FileSet::new();
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
            match self.seen.get(key) {
                Some(Seen::Present(data)) => {
                    for (file, content) in data {
                        if !crate::writer::is_valid_name(file) {
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
                        files.insert(file.clone(), content.clone());
                    }
                }
                Some(Seen::Absent) => {
                    return Err(refuse(
                        object.clone(),
                        format!("{object} does not exist or cannot be read; keeping the last good files"),
                    ))
                }
                Some(Seen::Unreadable(why)) => {
                    return Err(Invalid {
                        category: "forbidden",
                        ..refuse(
                            object.clone(),
                            format!("the sidecar may not read it ({why}); keeping the last good files"),
                        )
                    })
                }
                None => {
                    return Err(refuse(object.clone(), format!("{object} has not been read yet")));
                }
            }
        }
        Ok(files)
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

    fn update(kind: Kind, name: &str, seen: Seen) -> Update {
        Update {
            kind,
            name: name.to_owned(),
            seen,
        }
    }

    #[test]
    fn configmaps_and_secrets_make_one_set_once_every_one_was_read() {
        let mut sources = Sources::new(&["app".to_owned()], &["db".to_owned()]);
        assert!(sources.update(update(Kind::ConfigMap, "app", present(&[("app.json", "{}")]))));
        assert!(!sources.all_known());
        assert!(sources.update(update(Kind::Secret, "db", present(&[("password", "s3cret")]))));
        assert!(sources.all_known());
        let files = sources.desired().unwrap();
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
        let mut sources = Sources::new(&["app".to_owned(), "flags".to_owned()], &[]);
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
        let mut sources = Sources::new(&["app".to_owned()], &["db".to_owned()]);
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
}
