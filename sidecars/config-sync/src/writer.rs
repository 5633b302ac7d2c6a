//! Writes a file set into the shared volume the way the kubelet writes a ConfigMap volume, so an
//! app reads either the whole old set or the whole new one, never a mix:
//!
//! ```text
//! <dir>/..2026_12_06_00_24_34.123456789/app.json   the files of one version
//! <dir>/..data -> ..2026_12_06_00_24_34.123456789    swapped with rename(2), atomically
//! <dir>/app.json -> ..data/app.json                  stable names for the app
//! ```
//!
//! A new version goes into a fresh timestamped directory; a symlink `..data_tmp` to it is renamed
//! over `..data`; then the per-file links are added or removed and the old directory deleted.

use std::{
    collections::BTreeMap,
    io::Write,
    os::unix::fs::{symlink, PermissionsExt},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

/// File name to content.
pub type FileSet = BTreeMap<String, Vec<u8>>;

/// The link that names the current version's directory.
pub const DATA_LINK: &str = "..data";
const DATA_LINK_TMP: &str = "..data_tmp";

/// Why a version could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0:?} cannot be a file name (no '/', no leading '..', not empty)")]
    BadName(String),
}

impl WriteError {
    pub fn category(&self) -> &'static str {
        match self {
            WriteError::Io { .. } => "io",
            WriteError::BadName(_) => "name",
        }
    }
}

/// Whether `name` can be a file of the set: what the API allows as a ConfigMap key, minus what
/// would collide with the layout.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name != "." && !name.starts_with("..") && !name.contains('/') && !name.contains('\0')
}

/// A short digest of a file set: names and contents. Equal sets have equal versions, so a restarted
/// sidecar recognises the files already on disk. Not a cryptographic hash; it names versions.
pub fn version_of(files: &FileSet) -> String {
    // FNV-1a, 64 bits, over (name, length, content) of each file in order.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for (name, content) in files {
        feed(name.as_bytes());
        feed(&(content.len() as u64).to_le_bytes());
        feed(content);
    }
    format!("{hash:016x}")
}

/// Writes versions into one directory.
#[derive(Debug, Clone)]
pub struct AtomicWriter {
    dir: PathBuf,
    mode: u32,
}

impl AtomicWriter {
    pub fn new(dir: impl Into<PathBuf>, mode: u32) -> AtomicWriter {
        AtomicWriter {
            dir: dir.into(),
            mode,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The set `..data` points at now, `None` when nothing was written yet (a fresh volume).
    pub fn read_current(&self) -> Result<Option<FileSet>, WriteError> {
        let data = self.dir.join(DATA_LINK);
        if std::fs::symlink_metadata(&data).is_err() {
            return Ok(None);
        }
        let entries = std::fs::read_dir(&data).map_err(|source| io("listing", &data, source))?;
        let mut files = FileSet::new();
        for entry in entries {
            let entry = entry.map_err(|source| io("listing", &data, source))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let content = std::fs::read(&path).map_err(|source| io("reading", &path, source))?;
            files.insert(name, content);
        }
        Ok(Some(files))
    }

    /// Writes `files` as the new current version.
    pub fn write(&self, files: &FileSet) -> Result<(), WriteError> {
        if let Some(bad) = files.keys().find(|name| !is_valid_name(name)) {
            return Err(WriteError::BadName(bad.clone()));
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| io("creating", &self.dir, source))?;
        let version_name = self.fresh_version_name();
        let version_dir = self.dir.join(&version_name);
        std::fs::create_dir(&version_dir).map_err(|source| io("creating", &version_dir, source))?;
        let _ = std::fs::set_permissions(&version_dir, std::fs::Permissions::from_mode(0o755));
        for (name, content) in files {
            let path = version_dir.join(name);
            let mut file = std::fs::File::create(&path).map_err(|source| io("creating", &path, source))?;
            file.write_all(content)
                .map_err(|source| io("writing", &path, source))?;
            file.set_permissions(std::fs::Permissions::from_mode(self.mode))
                .map_err(|source| io("setting the mode of", &path, source))?;
            file.sync_all().map_err(|source| io("syncing", &path, source))?;
        }
        // The swap: one rename of a link, which readers see all at once.
        let tmp = self.dir.join(DATA_LINK_TMP);
        let _ = std::fs::remove_file(&tmp);
        symlink(&version_name, &tmp).map_err(|source| io("linking", &tmp, source))?;
        let data = self.dir.join(DATA_LINK);
        std::fs::rename(&tmp, &data).map_err(|source| io("renaming over", &data, source))?;

        for name in files.keys() {
            let link = self.dir.join(name);
            let target = Path::new(DATA_LINK).join(name);
            if std::fs::read_link(&link).is_ok_and(|current| current == target) {
                continue;
            }
            let tmp = self.dir.join(format!("..{name}.tmp"));
            let _ = std::fs::remove_file(&tmp);
            symlink(&target, &tmp).map_err(|source| io("linking", &tmp, source))?;
            std::fs::rename(&tmp, &link).map_err(|source| io("renaming over", &link, source))?;
        }
        self.clean_up(files, &version_name)
    }

    /// Removes links to files no longer in the set and the directories of older versions.
    fn clean_up(&self, files: &FileSet, keep: &str) -> Result<(), WriteError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| io("listing", &self.dir, source))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name == DATA_LINK || name == keep {
                continue;
            }
            if name.starts_with("..") {
                if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                    let _ = std::fs::remove_dir_all(&path);
                }
            } else if !files.contains_key(&name)
                && std::fs::read_link(&path).is_ok_and(|target| target.starts_with(DATA_LINK))
            {
                std::fs::remove_file(&path).map_err(|source| io("removing", &path, source))?;
            }
        }
        Ok(())
    }

    /// `..YYYY_MM_DD_HH_MM_SS.NNNNNNNNN`, as the kubelet names them; made unique if two writes
    /// fall in the same nanosecond.
    fn fresh_version_name(&self) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let base = timestamp_name(now.as_secs(), now.subsec_nanos());
        let mut name = base.clone();
        let mut suffix = 0;
        while self.dir.join(&name).exists() {
            suffix += 1;
            name = format!("{base}_{suffix}");
        }
        name
    }
}

fn io(action: &'static str, path: &Path, source: std::io::Error) -> WriteError {
    WriteError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// The directory name of a version written at `seconds` (Unix time, UTC) and `nanos`.
fn timestamp_name(seconds: u64, nanos: u32) -> String {
    let days = seconds / 86_400;
    let rest = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "..{year:04}_{month:02}_{day:02}_{:02}_{:02}_{:02}.{nanos:09}",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to a Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("config-sync-writer-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn set(pairs: &[(&str, &str)]) -> FileSet {
        pairs
            .iter()
            .map(|(name, text)| ((*name).to_owned(), text.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn a_version_is_a_timestamped_directory_behind_data_and_stable_links() {
        let dir = temp_dir("layout");
        let writer = AtomicWriter::new(&dir, 0o640);
        assert_eq!(
            writer.read_current().unwrap(),
            None,
            "a fresh volume holds no version"
        );
        writer
            .write(&set(&[("app.json", "{\"v\":1}"), ("flags", "a")]))
            .unwrap();
        let data = std::fs::read_link(dir.join(DATA_LINK)).unwrap();
        assert!(data.to_string_lossy().starts_with("..20"), "{data:?}");
        assert_eq!(
            std::fs::read_link(dir.join("app.json")).unwrap(),
            Path::new("..data/app.json")
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("app.json")).unwrap(),
            "{\"v\":1}"
        );
        let mode = std::fs::metadata(dir.join("app.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_new_version_replaces_the_old_removes_dropped_files_and_reads_back() {
        let dir = temp_dir("replace");
        let writer = AtomicWriter::new(&dir, 0o644);
        writer.write(&set(&[("a", "1"), ("b", "2")])).unwrap();
        let second = set(&[("a", "10"), ("c", "3")]);
        writer.write(&second).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "10");
        assert!(!dir.join("b").exists(), "a file dropped from the set disappears");
        let versions: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("..20"))
            .collect();
        assert_eq!(
            versions.len(),
            1,
            "old version directories are removed: {versions:?}"
        );
        assert_eq!(writer.read_current().unwrap(), Some(second.clone()));
        assert_eq!(
            version_of(&writer.read_current().unwrap().unwrap()),
            version_of(&second)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_that_would_escape_or_collide_with_the_layout_are_refused() {
        let writer = AtomicWriter::new(temp_dir("names"), 0o644);
        for bad in ["..data", "../x", "a/b", ""] {
            assert!(
                matches!(writer.write(&set(&[(bad, "x")])), Err(WriteError::BadName(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn versions_differ_by_name_and_content_and_timestamps_are_utc_dates() {
        assert_ne!(version_of(&set(&[("a", "1")])), version_of(&set(&[("b", "1")])));
        assert_ne!(version_of(&set(&[("a", "1")])), version_of(&set(&[("a", "2")])));
        assert_eq!(version_of(&set(&[("a", "1")])), version_of(&set(&[("a", "1")])));
        assert_eq!(
            timestamp_name(1_796_517_874, 5),
            "..2026_12_06_00_44_34.000000005"
        );
        assert_eq!(timestamp_name(951_782_400, 0), "..2000_02_29_00_00_00.000000000");
    }
}
