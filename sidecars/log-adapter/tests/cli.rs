#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The binary in `--once` mode: settings from `OUTRIGGER_SETTINGS` apply, flags win over them,
//! enrichment comes from the pod's variables, and a bad setting stops the start with its name.

use std::{path::PathBuf, process::Command};

use serde_json::Value;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("outrigger-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn adapter() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_outrigger-log-adapter"));
    command
        .env_clear()
        .args(["--once", "--no-checkpoint", "--log", "warn"]);
    command
}

fn records(stdout: &[u8]) -> Vec<Value> {
    stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

#[test]
fn settings_choose_files_and_parser_and_flags_win_over_them() {
    let dir = TempDir::new("settings");
    std::fs::write(dir.0.join("app.log"), "level=warn msg=one\n").unwrap();
    std::fs::write(dir.0.join("app.txt"), "2024-01-02 03:04:05 ERROR two\n").unwrap();
    let settings = serde_json::json!({
        "include": format!("{}/*.txt", dir.0.display()),
        "parser": "plain",
        "timezone": "+01:00",
    })
    .to_string();

    let output = adapter()
        .env("OUTRIGGER_SETTINGS", &settings)
        .env("POD_NAME", "web-0")
        .env("OUTRIGGER_POD_NAMESPACE", "shop")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let from_settings = records(&output.stdout);
    assert_eq!(from_settings.len(), 1);
    assert_eq!(from_settings[0]["message"], "two");
    assert_eq!(
        from_settings[0]["timestamp"], "2024-01-02T02:04:05Z",
        "read at +01:00"
    );
    assert_eq!(
        (&from_settings[0]["pod"], &from_settings[0]["namespace"]),
        (&"web-0".into(), &"shop".into())
    );

    let output = adapter()
        .env("OUTRIGGER_SETTINGS", &settings)
        .args([
            "--include",
            &format!("{}/*.log", dir.0.display()),
            "--parser",
            "logfmt",
        ])
        .output()
        .unwrap();
    let from_flags = records(&output.stdout);
    assert_eq!(from_flags.len(), 1);
    assert_eq!(
        (&from_flags[0]["message"], &from_flags[0]["format"]),
        (&"one".into(), &"logfmt".into())
    );
}

#[test]
fn an_invalid_setting_stops_the_start_naming_it() {
    let output = adapter()
        .env("OUTRIGGER_SETTINGS", r#"{"parser":"yaml"}"#)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("setting parser"));
}

/// Polls `path` until `done` holds for its text, for at most five seconds.
fn wait_for(path: &std::path::Path, done: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if done(&text) || std::time::Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn an_unreadable_file_is_logged_once_skipped_and_read_once_permitted() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("unreadable");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let readable = dir.0.join("readable.log");
    let secret = dir.0.join("secret.log");
    std::fs::write(&readable, "line a\n").unwrap();
    std::fs::write(&secret, "line b\n").unwrap();
    std::fs::set_permissions(&readable, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    let binary = env!("CARGO_BIN_EXE_outrigger-log-adapter");
    // Permissions do not stop a privileged process: run the adapter as nobody then.
    let mut command = if std::fs::File::open(&secret).is_ok() {
        if !std::path::Path::new("/usr/bin/setpriv").exists() {
            eprintln!("skipped: privileged and no setpriv to drop the privilege");
            return;
        }
        let mut command = Command::new("/usr/bin/setpriv");
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups", binary]);
        command
    } else {
        Command::new(binary)
    };
    let out = dir.0.join("out.jsonl");
    let err = dir.0.join("err.txt");
    let mut child = command
        .env_clear()
        .args([
            "--include",
            &format!("{}/*.log", dir.0.display()),
            "--no-checkpoint",
            "--poll-interval-ms",
            "10",
            "--retry-unreadable-ms",
            "20",
            "--admin-addr",
            "127.0.0.1:0",
            "--log-format",
            "text",
        ])
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();

    let first = wait_for(&out, |text| text.contains("line a"));
    let warnings = wait_for(&err, |text| text.contains("Cannot read a log file"));
    // Several retries pass before the file becomes readable.
    std::thread::sleep(std::time::Duration::from_millis(200));
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let after = wait_for(&out, |text| text.contains("line b"));
    child.kill().unwrap();
    child.wait().unwrap();
    let stderr = std::fs::read_to_string(&err).unwrap();

    assert!(
        first.contains("line a"),
        "the readable file is read meanwhile: {first}"
    );
    assert!(!first.contains("line b"));
    assert!(warnings.contains("Cannot read a log file"), "{warnings}");
    assert!(after.contains("line b"), "read once permitted: {after}\n{stderr}");
    assert_eq!(
        stderr.matches("Cannot read a log file").count(),
        1,
        "logged once: {stderr}"
    );
}

#[test]
fn the_sidecars_document_entry_wins_over_the_injected_settings() {
    let dir = TempDir::new("document");
    std::fs::write(dir.0.join("app.log"), "level=warn msg=one\n").unwrap();
    let document = serde_json::json!({
        "service": "web", "namespace": "shop",
        "sidecars": {"log-adapter": {"parser": "logfmt", "include": format!("{}/*.log", dir.0.display())}},
    });
    std::fs::write(dir.0.join("sidecars.json"), document.to_string()).unwrap();

    let output = adapter()
        .env("OUTRIGGER_SETTINGS", r#"{"parser":"plain"}"#)
        .env("OUTRIGGER_CONFIG_DIR", &dir.0)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let records = records(&output.stdout);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["format"], "logfmt");

    std::fs::write(dir.0.join("sidecars.json"), "{\"service\":").unwrap();
    let output = adapter().env("OUTRIGGER_CONFIG_DIR", &dir.0).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("sidecars document"));
}
