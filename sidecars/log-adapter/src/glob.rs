//! Include patterns: `*`, `?` and `[a-z]` / `[!x]` within one path component, `**` for any
//! number of directories. Expanded by walking only the directories a pattern can reach.

use std::path::{Path, PathBuf};

/// Whether `name` matches the component pattern `pattern` (no `/` in either).
pub fn matches(pattern: &[u8], name: &[u8]) -> bool {
    // Iterative with one backtrack point for the last `*`: linear for usual patterns.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
                continue;
            }
            Some(b'?') => {
                p += 1;
                n += 1;
                continue;
            }
            Some(b'[') => {
                if let Some((hit, len)) = class(&pattern[p..], name[n]) {
                    if hit {
                        p += len;
                        n += 1;
                        continue;
                    }
                } else if name[n] == b'[' {
                    p += 1;
                    n += 1;
                    continue;
                }
            }
            Some(&c) if c == name[n] => {
                p += 1;
                n += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((sp, sn)) => {
                p = sp + 1;
                n = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// A `[...]` class at the start of `pattern`: whether `b` is in it, and the class's length.
fn class(pattern: &[u8], b: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negated = matches!(pattern.get(1), Some(b'!' | b'^'));
    if negated {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    loop {
        let c = *pattern.get(i)?;
        if c == b']' && !first {
            return Some((hit != negated, i + 1));
        }
        first = false;
        if pattern.get(i + 1) == Some(&b'-') && pattern.get(i + 2).is_some_and(|&e| e != b']') {
            let end = pattern[i + 2];
            hit |= (c..=end).contains(&b);
            i += 3;
        } else {
            hit |= c == b;
            i += 1;
        }
    }
}

fn has_magic(component: &[u8]) -> bool {
    component.iter().any(|b| matches!(b, b'*' | b'?' | b'['))
}

/// The regular files that match `pattern`, sorted. Unreadable directories are skipped: the caller
/// retries on its next scan.
pub fn expand(pattern: &str) -> Vec<PathBuf> {
    let path = Path::new(pattern);
    let mut base = PathBuf::new();
    let mut rest: Vec<&[u8]> = Vec::new();
    for component in path.components() {
        let bytes = component.as_os_str().as_encoded_bytes();
        if rest.is_empty() && !has_magic(bytes) {
            base.push(component);
        } else {
            rest.push(bytes);
        }
    }
    let mut out = Vec::new();
    if rest.is_empty() {
        if base.is_file() {
            out.push(base);
        }
        return out;
    }
    walk(&base, &rest, &mut out, 0);
    out.sort();
    out.dedup();
    out
}

/// Directory depth `**` descends at most: bounded like everything else.
const MAX_DEPTH: usize = 16;

fn walk(dir: &Path, rest: &[&[u8]], out: &mut Vec<PathBuf>, depth: usize) {
    let Some((first, tail)) = rest.split_first() else {
        return;
    };
    if *first == b"**" {
        // Zero directories ...
        walk(dir, tail, out, depth);
        if depth >= MAX_DEPTH {
            return;
        }
        // ... or one more, and `**` again.
        for entry in read_dir(dir) {
            if entry.1 {
                walk(&entry.0, rest, out, depth + 1);
            }
        }
        return;
    }
    for (path, is_dir) in read_dir(dir) {
        let Some(name) = path.file_name() else { continue };
        let name = name.as_encoded_bytes();
        // Hidden files (the checkpoint, editors' swap files) only match a pattern that says so.
        if name.first() == Some(&b'.') && first.first() != Some(&b'.') {
            continue;
        }
        if !matches(first, name) {
            continue;
        }
        if tail.is_empty() {
            if !is_dir {
                out.push(path);
            }
        } else if is_dir {
            walk(&path, tail, out, depth);
        }
    }
}

/// Entries of `dir` as (path, is a directory), following symlinks for the kind.
fn read_dir(dir: &Path) -> Vec<(PathBuf, bool)> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let path = entry.path();
            let meta = std::fs::metadata(&path).ok()?;
            Some((path, meta.is_dir()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_patterns_match_like_the_shell() {
        let cases: [(&str, &str, bool); 12] = [
            ("*.log", "app.log", true),
            ("*.log", "app.log.1", false),
            ("*.log*", "app.log.1", true),
            ("app-?.log", "app-1.log", true),
            ("app-?.log", "app-12.log", false),
            ("[ab]*", "bee", true),
            ("[!ab]*", "bee", false),
            ("[a-c]x", "bx", true),
            ("*a*b*c", "xxaxxbxxc", true),
            ("*a*b*c", "xxaxxbxxcx", false),
            ("*", "", true),
            ("[unclosed", "[unclosed", true),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(
                matches(pattern.as_bytes(), name.as_bytes()),
                want,
                "{pattern} {name}"
            );
        }
    }

    #[test]
    fn patterns_expand_to_files_under_nested_directories() {
        let dir = std::env::temp_dir().join(format!("outrigger-glob-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for file in ["a.log", "b.txt", "sub/c.log", "sub/deeper/d.log", ".hidden.log"] {
            let path = dir.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, "x\n").unwrap();
        }
        let names = |pattern: &str| -> Vec<String> {
            expand(&format!("{}/{pattern}", dir.display()))
                .iter()
                .map(|p| p.strip_prefix(&dir).unwrap().display().to_string())
                .collect()
        };
        assert_eq!(names("*.log"), ["a.log"]);
        assert_eq!(names("**/*.log"), ["a.log", "sub/c.log", "sub/deeper/d.log"]);
        assert_eq!(names("*/*.log"), ["sub/c.log"]);
        assert_eq!(names("a.log"), ["a.log"]);
        assert_eq!(names(".*.log"), [".hidden.log"]);
        assert!(names("missing/*.log").is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
