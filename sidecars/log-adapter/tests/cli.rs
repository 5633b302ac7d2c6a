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
