#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The tailer on real files in temporary directories: rotation by rename and by copytruncate,
//! deletion while reading, restarts (every line counted), unreadable files, long lines, binary
//! garbage, and stack traces that stay within their file.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use outrigger_log_adapter::{
    checkpoint::Checkpoints,
    notice::Notice,
    sink::{Batch, Sink, SinkError},
    tail::{Config, Tailer},
};
use serde_json::Value;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("outrigger-tail-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn config(dir: &TempDir) -> Config {
    Config {
        include: vec![format!("{}/*.log", dir.0.display())],
        checkpoint_path: Some(dir.join(".checkpoints.json")),
        rescan_interval: Duration::ZERO,
        rotate_wait: Duration::ZERO,
        poll_interval: Duration::from_millis(1),
        ..Config::default()
    }
}

fn append(path: &Path, lines: impl IntoIterator<Item = String>) {
    let mut file = OpenOptions::new().create(true).append(true).open(path).unwrap();
    let mut text = String::new();
    for line in lines {
        text.push_str(&line);
        text.push('\n');
    }
    file.write_all(text.as_bytes()).unwrap();
}

fn numbered(range: std::ops::Range<u32>) -> impl Iterator<Item = String> {
    range.map(|n| format!("line {n:06}"))
}

/// Polls until a look reads nothing twice in a row.
fn settle<S: Sink>(tailer: &mut Tailer<S>) {
    let mut quiet = 0;
    while quiet < 2 {
        if tailer.poll(Instant::now()).unwrap() {
            quiet = 0;
        } else {
            quiet += 1;
        }
    }
}

fn records(output: &[u8]) -> Vec<Value> {
    output
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).unwrap())
        .collect()
}

/// How often each `line NNNNNN` message was written.
fn counts(output: &[u8]) -> BTreeMap<u32, u32> {
    let mut counts = BTreeMap::new();
    for record in records(output) {
        let message = record["message"].as_str().unwrap();
        if let Some(n) = message.strip_prefix("line ") {
            *counts.entry(n.parse().unwrap()).or_default() += 1;
        }
    }
    counts
}

fn assert_each_once(output: &[u8], range: std::ops::Range<u32>) {
    let counts = counts(output);
    let want: BTreeMap<u32, u32> = range.map(|n| (n, 1)).collect();
    assert_eq!(counts, want);
}

#[test]
fn lines_already_in_a_file_and_appended_later_are_each_written_once() {
    let dir = TempDir::new("append");
    let log = dir.join("app.log");
    append(&log, numbered(0..100));
    let mut tailer = Tailer::new(config(&dir), Vec::new()).unwrap();
    settle(&mut tailer);
    append(&log, numbered(100..250));
    settle(&mut tailer);
    assert_each_once(tailer.sink(), 0..250);
    let record = &records(tailer.sink())[0];
    assert_eq!(record["source"], log.display().to_string());
    assert_eq!(record["format"], "plain");
}

#[test]
fn rotation_by_rename_reads_the_old_file_to_its_end_and_the_new_one_from_its_start() {
    let dir = TempDir::new("rename");
    let log = dir.join("app.log");
    append(&log, numbered(0..100));
    let mut tailer = Tailer::new(config(&dir), Vec::new()).unwrap();
    settle(&mut tailer);
    fs::rename(&log, dir.join("app.log.1")).unwrap();
    // The app still writes to its open file before it reopens the path.
    append(&dir.join("app.log.1"), numbered(100..150));
    append(&log, numbered(150..300));
    settle(&mut tailer);
    assert_each_once(tailer.sink(), 0..300);
    assert_eq!(
        tailer.files(),
        [log.as_path()],
        "the rotated file is closed once read"
    );
    let checkpoints = Checkpoints::load(Some(dir.join(".checkpoints.json"))).unwrap();
    assert_eq!(checkpoints.len(), 1, "the rotated file's checkpoint is dropped");
}

#[test]
fn rotation_by_copytruncate_starts_the_file_again_without_losing_a_line() {
    let dir = TempDir::new("copytruncate");
    let log = dir.join("app.log");
    append(&log, numbered(0..200));
    let mut tailer = Tailer::new(config(&dir), Vec::new()).unwrap();
    settle(&mut tailer);
    fs::copy(&log, dir.join("app.log.1")).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&log, numbered(200..230));
    settle(&mut tailer);
    assert_each_once(tailer.sink(), 0..230);
    assert_eq!(tailer.stats().truncations, 1);
}

#[test]
fn a_file_deleted_while_being_read_is_read_to_its_end() {
    let dir = TempDir::new("delete");
    let log = dir.join("app.log");
    append(&log, numbered(0..2000));
    let mut tailer = Tailer::new(
        Config {
            read_chunk: 256,
            ..config(&dir)
        },
        Vec::new(),
    )
    .unwrap();
    tailer.poll(Instant::now()).unwrap();
    assert!(
        counts(tailer.sink()).len() < 2000,
        "the first look reads only part of the file"
    );
    fs::remove_file(&log).unwrap();
    settle(&mut tailer);
    assert_each_once(tailer.sink(), 0..2000);
    assert!(tailer.files().is_empty());
}

/// Writes every batch, but fails the `fail_at`-th after writing it, as a process killed between
/// writing a batch and committing its checkpoint would.
struct CrashingSink {
    out: Vec<u8>,
    batches: usize,
    fail_at: usize,
    failed_batch_records: usize,
}

impl Sink for CrashingSink {
    fn write_batch(&mut self, batch: &Batch) -> Result<(), SinkError> {
        self.out.extend_from_slice(batch.bytes());
        self.batches += 1;
        if self.batches == self.fail_at {
            self.failed_batch_records = batch.records();
            return Err(SinkError::Io(std::io::Error::other("killed")));
        }
        Ok(())
    }
}

#[test]
fn a_restart_resumes_at_the_checkpoint_losing_nothing_and_repeating_at_most_one_batch() {
    let dir = TempDir::new("restart");
    let log = dir.join("app.log");
    append(&log, numbered(0..10_000));
    let config = Config {
        batch_max_records: 100,
        read_chunk: 1024,
        ..config(&dir)
    };
    let mut first = Tailer::new(
        config.clone(),
        CrashingSink {
            out: Vec::new(),
            batches: 0,
            fail_at: 7,
            failed_batch_records: 0,
        },
    )
    .unwrap();
    let crashed_at = (0..10_000).find(|_| first.poll(Instant::now()).is_err());
    assert!(crashed_at.is_some(), "the sink fails its seventh batch");
    let crashed = std::mem::take(&mut first.sink_mut().out);
    let repeated_at_most = first.sink().failed_batch_records;
    drop(first);
    append(&log, numbered(10_000..12_000));

    let mut second = Tailer::new(config, Vec::new()).unwrap();
    settle(&mut second);
    let mut all = crashed.clone();
    all.extend_from_slice(second.sink());
    let counts = counts(&all);
    assert_eq!(counts.len(), 12_000, "every line is written");
    assert!(counts.keys().copied().eq(0..12_000));
    let repeated: u32 = counts.values().map(|c| c - 1).sum();
    assert!(repeated > 0, "the crash repeats the batch that was not committed");
    assert!(
        repeated as usize <= repeated_at_most,
        "{repeated} lines repeated, more than the failed batch of {repeated_at_most}"
    );
}

#[test]
fn shutdown_commits_so_a_clean_restart_repeats_nothing() {
    let dir = TempDir::new("clean-restart");
    let log = dir.join("app.log");
    append(&log, numbered(0..500));
    let mut first = Tailer::new(config(&dir), Vec::new()).unwrap();
    settle(&mut first);
    first.shutdown().unwrap();
    let mut all = first.sink().clone();
    append(&log, numbered(500..600));
    let mut second = Tailer::new(config(&dir), Vec::new()).unwrap();
    settle(&mut second);
    all.extend_from_slice(second.sink());
    assert_each_once(&all, 0..600);
}

#[test]
fn an_unreadable_file_is_skipped_and_read_once_it_can_be() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("unreadable");
    let log = dir.join("app.log");
    append(&log, numbered(0..10));
    fs::set_permissions(&log, fs::Permissions::from_mode(0o000)).unwrap();
    if File::open(&log).is_ok() {
        // Running as root: permissions do not stop the read, so there is nothing to test.
        return;
    }
    append(&dir.join("other.log"), numbered(10..20));
    let mut tailer = Tailer::new(
        Config {
            retry_unreadable: Duration::ZERO,
            ..config(&dir)
        },
        Vec::new(),
    )
    .unwrap();
    let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    tailer.on_notice({
        let notices = notices.clone();
        std::sync::Arc::new(move |notice| notices.lock().unwrap().push(notice))
    });
    settle(&mut tailer);
    assert_each_once(tailer.sink(), 10..20);
    assert_eq!(
        tailer.stats().unreadable,
        1,
        "logged once, however often it is retried"
    );
    assert!(
        matches!(notices.lock().unwrap().as_slice(), [Notice::Unreadable { path, .. }] if *path == log),
        "one notice (one Event) for the file"
    );
    fs::set_permissions(&log, fs::Permissions::from_mode(0o644)).unwrap();
    settle(&mut tailer);
    assert_each_once(tailer.sink(), 0..20);
}

#[test]
fn long_lines_are_truncated_and_binary_garbage_is_escaped() {
    let dir = TempDir::new("garbage");
    let log = dir.join("app.log");
    let mut bytes = vec![b'x'; 10 << 20];
    bytes.push(b'\n');
    bytes.extend_from_slice(b"\x00\xff\xfe\x1b[0m\xc3\n");
    bytes.extend_from_slice(b"{\"level\":\"error\",\"msg\":\"ok\"}\n");
    fs::write(&log, &bytes).unwrap();
    let mut tailer = Tailer::new(
        Config {
            max_line_bytes: 1000,
            ..config(&dir)
        },
        Vec::new(),
    )
    .unwrap();
    settle(&mut tailer);
    let records = records(tailer.sink());
    assert_eq!(records.len(), 3);
    assert_eq!(records[0]["truncated"], true);
    assert_eq!(records[0]["message"].as_str().unwrap().len(), 1000);
    assert_eq!(records[1]["message"], "\u{0}\\xff\\xfe\u{1b}[0m\\xc3");
    assert_eq!(records[2]["level"], "error");
    assert_eq!(records[2]["format"], "json");
}

#[test]
fn stack_traces_join_within_their_own_file_only() {
    let dir = TempDir::new("traces");
    let a = dir.join("a.log");
    let b = dir.join("b.log");
    append(
        &a,
        [
            "2024-01-02 03:04:05 ERROR request failed".to_owned(),
            "java.lang.IllegalStateException: boom".to_owned(),
        ],
    );
    append(&b, ["b first".to_owned()]);
    let mut tailer = Tailer::new(config(&dir), Vec::new()).unwrap();
    // Both files are read in the same look, the trace of `a` still pending.
    tailer.poll(Instant::now()).unwrap();
    append(&b, ["b second".to_owned()]);
    append(
        &a,
        [
            "\tat a.Handler.handle(Handler.java:42)".to_owned(),
            "next".to_owned(),
        ],
    );
    settle(&mut tailer);
    let mut by_source: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for record in records(tailer.sink()) {
        by_source
            .entry(record["source"].as_str().unwrap().to_owned())
            .or_default()
            .push(record["message"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        by_source[&a.display().to_string()],
        [
            "request failed\njava.lang.IllegalStateException: boom\n\tat a.Handler.handle(Handler.java:42)",
            "next"
        ]
    );
    assert_eq!(by_source[&b.display().to_string()], ["b first", "b second"]);
}

#[test]
fn a_line_written_in_two_pieces_becomes_one_record() {
    let dir = TempDir::new("pieces");
    let log = dir.join("app.log");
    fs::write(&log, "level=info msg=\"first ha").unwrap();
    let mut tailer = Tailer::new(config(&dir), Vec::new()).unwrap();
    settle(&mut tailer);
    assert!(tailer.sink().is_empty(), "an incomplete line waits for its end");
    let mut file = OpenOptions::new().append(true).open(&log).unwrap();
    file.write_all(b"lf\" n=1\n").unwrap();
    settle(&mut tailer);
    let records = records(tailer.sink());
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["message"], "first half");
    assert_eq!(records[0]["fields"]["n"], "1");
}

#[test]
fn records_flow_on_when_checkpoints_cannot_be_written() {
    let dir = TempDir::new("no-checkpoint-dir");
    let log = dir.join("app.log");
    append(&log, numbered(0..50));
    let mut tailer = Tailer::new(
        Config {
            checkpoint_path: Some(dir.join("missing/dir/checkpoints.json")),
            ..config(&dir)
        },
        Vec::new(),
    )
    .unwrap();
    settle(&mut tailer);
    append(&log, numbered(50..60));
    settle(&mut tailer);
    assert_each_once(tailer.sink(), 0..60);
    assert!(tailer.stats().checkpoint_errors >= 2);
}
