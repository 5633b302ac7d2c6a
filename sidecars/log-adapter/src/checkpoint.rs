//! Checkpoints: for each file (by device and inode, which survive a rename), the offset up to
//! which its records have been written by the sink. Kept in a small JSON file on the log volume,
//! replaced atomically (write a temporary file beside it, then rename), so a restart finds either
//! the old or the new state, never a torn one.
//!
//! No fsync: the file protects against the adapter restarting (a crash, an upgrade), and the
//! rename is atomic against that. A node crash takes the pod's `emptyDir` with it anyway.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// A file's identity: stable across renames, unlike its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// Why the checkpoint file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("reading checkpoints {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoints {path} are not valid: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing checkpoints {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl CheckpointError {
    /// A fixed label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            CheckpointError::Read { .. } => "read",
            CheckpointError::Invalid { .. } => "invalid",
            CheckpointError::Write { .. } => "write",
        }
    }
}

/// One file's entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub dev: u64,
    pub inode: u64,
    pub offset: u64,
    /// Where the file was last seen; for people reading the file, not used to match.
    pub path: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Document {
    version: u32,
    files: Vec<Entry>,
}

const VERSION: u32 = 1;

/// The checkpoint state in memory and where it is stored (`None`: kept in memory only).
#[derive(Debug, Default)]
pub struct Checkpoints {
    path: Option<PathBuf>,
    entries: BTreeMap<FileId, (u64, PathBuf)>,
    dirty: bool,
    scratch: Vec<u8>,
}

impl Checkpoints {
    /// Loads the file at `path`; a missing file is an empty state. A corrupt one is an error: the
    /// caller decides whether to start over.
    pub fn load(path: Option<PathBuf>) -> Result<Self, CheckpointError> {
        let mut checkpoints = Checkpoints {
            path,
            ..Checkpoints::default()
        };
        let Some(path) = checkpoints.path.clone() else {
            return Ok(checkpoints);
        };
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(checkpoints),
            Err(source) => return Err(CheckpointError::Read { path, source }),
        };
        let document: Document =
            serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Invalid {
                path: path.clone(),
                source,
            })?;
        for entry in document.files {
            checkpoints.entries.insert(
                FileId {
                    dev: entry.dev,
                    ino: entry.inode,
                },
                (entry.offset, PathBuf::from(entry.path)),
            );
        }
        Ok(checkpoints)
    }

    /// Where the state is stored from now on (the next persist writes all of it).
    pub fn set_path(&mut self, path: Option<PathBuf>) {
        self.path = path;
        self.dirty = true;
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The committed offset of a file, if it has one.
    pub fn offset(&self, id: FileId) -> Option<u64> {
        self.entries.get(&id).map(|(offset, _)| *offset)
    }

    /// Records that everything of `id` before `offset` has been written.
    pub fn set(&mut self, id: FileId, offset: u64, path: &Path) {
        match self.entries.get_mut(&id) {
            Some(entry) if entry.0 == offset && entry.1 == path => {}
            Some(entry) => {
                entry.0 = offset;
                if entry.1 != path {
                    path.clone_into(&mut entry.1);
                }
                self.dirty = true;
            }
            None => {
                self.entries.insert(id, (offset, path.to_owned()));
                self.dirty = true;
            }
        }
    }

    /// Forgets a file that is gone (deleted or rotated away, and read to its end).
    pub fn remove(&mut self, id: FileId) {
        self.dirty |= self.entries.remove(&id).is_some();
    }

    /// Forgets every file not in `live`: inodes are reused, and a stale entry could make a new
    /// file start in its middle.
    pub fn retain(&mut self, live: impl Fn(FileId, &Path) -> bool) {
        let before = self.entries.len();
        self.entries.retain(|id, (_, path)| live(*id, path));
        self.dirty |= self.entries.len() != before;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the state if it changed since the last write.
    pub fn persist(&mut self) -> Result<(), CheckpointError> {
        if !self.dirty {
            return Ok(());
        }
        let Some(path) = &self.path else {
            self.dirty = false;
            return Ok(());
        };
        let document = Document {
            version: VERSION,
            files: self
                .entries
                .iter()
                .map(|(id, (offset, path))| Entry {
                    dev: id.dev,
                    inode: id.ino,
                    offset: *offset,
                    path: path.to_string_lossy().into_owned(),
                })
                .collect(),
        };
        self.scratch.clear();
        serde_json::to_writer(&mut self.scratch, &document).map_err(|source| CheckpointError::Write {
            path: path.clone(),
            source: std::io::Error::other(source),
        })?;
        self.scratch.push(b'\n');
        let temporary = temporary_path(path);
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(&self.scratch)?;
            drop(file);
            std::fs::rename(&temporary, path)
        };
        write().map_err(|source| CheckpointError::Write {
            path: path.clone(),
            source,
        })?;
        self.dirty = false;
        Ok(())
    }
}

/// `<path>.tmp`, beside the file so that the rename stays on one filesystem.
pub fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_survive_a_reload_and_leave_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("outrigger-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("checkpoints.json");
        let id = FileId { dev: 1, ino: 2 };
        let mut checkpoints = Checkpoints::load(Some(path.clone())).unwrap();
        assert!(checkpoints.is_empty());
        checkpoints.set(id, 42, Path::new("/logs/app.log"));
        checkpoints.persist().unwrap();
        assert!(!temporary_path(&path).exists());
        let reloaded = Checkpoints::load(Some(path.clone())).unwrap();
        assert_eq!(reloaded.offset(id), Some(42));
        assert_eq!(reloaded.offset(FileId { dev: 1, ino: 3 }), None);
        std::fs::write(&path, "{not json").unwrap();
        let error = Checkpoints::load(Some(path)).unwrap_err();
        assert_eq!(error.category(), "invalid");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
