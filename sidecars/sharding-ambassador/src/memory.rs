//! Gives the memory a burst of clients freed back to the system once no worker has a client left.
//!
//! glibc's allocator keeps what a thread freed in that thread's arena for its next allocations:
//! after fifty pipelining clients leave, their buffers stay resident until the process ends. An
//! ambassador lives beside its application under the pod's memory limit, so once it has been
//! without clients for [`SETTLE`] it hands the free pages back. Connection churn does not trim on
//! every disconnect: the ambassador must stay empty for the whole pause. Both releases act on the
//! whole process, so the workers count their clients in one [`Occupancy`].
//!
//! The same pause also unmaps the executable's code and read-only data. The kernel maps a file's
//! pages in blocks of 64 KiB or more around each one used, so code run once, at start-up or by a
//! burst, would otherwise stay in the resident set for good: most of the binary. Unmapped, the
//! pages stay in the page cache, where the kernel may reclaim them under memory pressure; code
//! still in use is mapped back at its next run, without reading the disk.
//! Only mappings that cannot differ from the file are dropped: not writable, and without a page
//! copied on write (the relocated read-only data of a static PIE binary has such pages).

use std::{
    ops::Range,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::Notify;

/// How long the ambassador stays without clients before its free memory is released.
pub const SETTLE: Duration = Duration::from_millis(200);

/// The clients all workers serve, and the wake-up when the last one leaves.
#[derive(Debug, Default)]
pub struct Occupancy {
    clients: AtomicUsize,
    emptied: Notify,
}

impl Occupancy {
    /// Counts a client in until the guard drops.
    pub fn enter(self: &Arc<Self>) -> Occupant {
        self.clients.fetch_add(1, Ordering::Relaxed);
        Occupant(self.clone())
    }

    /// Releases free memory once [`SETTLE`] after it starts (start-up code is done with by then)
    /// and each time there have been no clients for [`SETTLE`]; runs until aborted.
    pub async fn release_when_idle(&self) {
        self.emptied.notify_one();
        loop {
            self.emptied.notified().await;
            tokio::time::sleep(SETTLE).await;
            if self.clients.load(Ordering::Relaxed) == 0 {
                release_free_memory();
            }
        }
    }
}

/// A client counted in an [`Occupancy`].
#[derive(Debug)]
pub struct Occupant(Arc<Occupancy>);

impl Drop for Occupant {
    fn drop(&mut self) {
        if self.0.clients.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.emptied.notify_one();
        }
    }
}

/// Returns the allocator's free pages to the system (glibc) and unmaps the executable's clean
/// pages (Linux); elsewhere a no-op.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim(3) only walks the allocator's own free lists under its own locks;
        // it takes a plain integer and no pointer of ours.
        #[allow(unsafe_code)]
        unsafe {
            libc::malloc_trim(0);
        }
    }
    #[cfg(target_os = "linux")]
    unmap_clean_executable_pages();
}

#[cfg(target_os = "linux")]
fn unmap_clean_executable_pages() {
    let (Ok(smaps), Ok(executable)) = (
        std::fs::read_to_string("/proc/self/smaps"),
        std::fs::read_link("/proc/self/exe"),
    ) else {
        return;
    };
    for range in clean_mappings_of(&smaps, &executable.to_string_lossy()) {
        // SAFETY: the range is one whole mapping of the executable file, not writable and without
        // a page copied on write, so each of its pages holds the file's bytes. MADV_DONTNEED only
        // unmaps them, as reclaim would; the next access maps the same bytes back from the file.
        // No Rust reference points into a mapping the kernel can drop: its contents stay the same.
        #[allow(unsafe_code)]
        unsafe {
            libc::madvise(range.start as *mut libc::c_void, range.len(), libc::MADV_DONTNEED);
        }
    }
}

/// The address ranges of `executable`'s mappings in an `smaps` listing that are not writable and
/// hold no anonymous (copied-on-write) page: their pages can be unmapped and mapped back unchanged.
fn clean_mappings_of(smaps: &str, executable: &str) -> Vec<Range<usize>> {
    let mut clean = Vec::new();
    let mut candidate = None;
    for line in smaps.lines() {
        if let Some(anonymous) = line.strip_prefix("Anonymous:") {
            if let Some(range) = candidate.take() {
                if anonymous.trim() == "0 kB" {
                    clean.push(range);
                }
            }
        } else if let Some((range, permissions, path)) = mapping_header(line) {
            candidate = (path == executable && !permissions.contains('w')).then_some(range);
        }
    }
    clean
}

/// A mapping's header line in `smaps`: `start-end perms offset device inode   path`. Field lines
/// (`Rss:       4 kB`) are not headers.
fn mapping_header(line: &str) -> Option<(Range<usize>, &str, &str)> {
    let mut rest = line;
    let mut fields = [""; 5];
    for field in &mut fields {
        rest = rest.trim_start_matches(' ');
        let end = rest.find(' ').unwrap_or(rest.len());
        (*field, rest) = rest.split_at(end);
    }
    let (start, end) = fields[0].split_once('-')?;
    let range = usize::from_str_radix(start, 16).ok()?..usize::from_str_radix(end, 16).ok()?;
    Some((range, fields[1], rest.trim_start_matches(' ')))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55555fa18000-55555fa39000 rw-p 00000000 00:00 0                          [heap]
Rss:                 124 kB
Anonymous:           124 kB
7fa9f9400000-7fa9f956a000 r--p 00000000 fe:00 5383983                    /bin/ambassador
Rss:                 832 kB
Anonymous:             0 kB
VmFlags: rd mr mw me
7fa9f956a000-7fa9f9a35000 r-xp 00169000 fe:00 5383983                    /bin/ambassador
Rss:                3156 kB
Anonymous:             0 kB
7fa9f9a35000-7fa9f9a69000 r--p 00633000 fe:00 5383983                    /bin/ambassador
Rss:                 208 kB
Anonymous:           208 kB
7fa9f9a69000-7fa9f9a6f000 rw-p 00666000 fe:00 5383983                    /bin/ambassador
Rss:                  24 kB
Anonymous:             0 kB
7fa9f9b00000-7fa9f9b10000 r-xp 00000000 fe:00 5383984                    /bin/ambassador (deleted)
Anonymous:             0 kB
7fa9f9b20000-7fa9f9b30000 r-xp 00000000 fe:00 5383985                    /lib/with space.so
Anonymous:             0 kB
7fa9f9b87000-7fa9f9b89000 r-xp 00000000 00:00 0                          [vdso]
Anonymous:             0 kB
";

    #[test]
    fn only_the_executables_unwritten_mappings_without_copied_pages_are_clean() {
        let cases: [(&str, &[(usize, usize)]); 3] = [
            (
                "/bin/ambassador",
                &[
                    (0x7fa9_f940_0000, 0x7fa9_f956_a000),
                    (0x7fa9_f956_a000, 0x7fa9_f9a3_5000),
                ],
            ),
            ("/lib/with space.so", &[(0x7fa9_f9b2_0000, 0x7fa9_f9b3_0000)]),
            ("/bin/other", &[]),
        ];
        for (executable, clean) in cases {
            let found: Vec<_> = clean_mappings_of(SMAPS, executable)
                .into_iter()
                .map(|range| (range.start, range.end))
                .collect();
            assert_eq!(found, clean, "{executable}");
        }
    }

    #[test]
    fn field_lines_and_garbage_are_not_mapping_headers() {
        for line in [
            "Rss:                 124 kB",
            "VmFlags: rd mr mw me",
            "",
            "zz-1 r-xp",
        ] {
            assert_eq!(mapping_header(line), None, "{line:?}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn unmapping_the_clean_pages_of_the_running_test_keeps_its_mappings_and_its_code_running() {
        let own = || {
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
            let executable = std::fs::read_link("/proc/self/exe").unwrap_or_default();
            clean_mappings_of(&smaps, &executable.to_string_lossy())
        };
        let before = own();
        assert!(!before.is_empty(), "the test binary's code is a clean mapping");
        unmap_clean_executable_pages();
        // Only pages went: the mappings stay, and the code in them runs on (this test does).
        assert_eq!(own(), before);
    }

    #[tokio::test(start_paused = true)]
    async fn counts_clients_in_and_out() {
        let occupancy = Arc::new(Occupancy::default());
        let first = occupancy.enter();
        let second = occupancy.enter();
        assert_eq!(occupancy.clients.load(Ordering::Relaxed), 2);
        drop(first);
        drop(second);
        assert_eq!(occupancy.clients.load(Ordering::Relaxed), 0);
        // The last one out wakes the releaser, which runs once the pause is over.
        let releaser = tokio::spawn({
            let occupancy = occupancy.clone();
            async move { occupancy.release_when_idle().await }
        });
        tokio::time::sleep(SETTLE * 2).await;
        releaser.abort();
    }
}
