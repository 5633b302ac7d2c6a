//! The health adapter binary against real peers on loopback: a `redis-server` that stops
//! answering (`DEBUG SLEEP`), an app endpoint that hangs, one that answers 50 MB, and an app's
//! metrics under thresholds.

// Test fixtures: a failed setup step should stop the test right there, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::json;

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn redis() -> (Process, u16) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        // Redis 7 refuses DEBUG unless asked; the test stalls Redis with DEBUG SLEEP.
        .args(["--enable-debug-command", "local"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server is missing: run hack/deps.sh");
    wait_for_port(port);
    (Process(child), port)
}

/// The adapter with `checks`; returns it with its probe and admin ports.
fn adapter(checks: &serde_json::Value) -> (Process, u16, u16) {
    let (probe, admin) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_outrigger-health-adapter"))
        .env(
            "OUTRIGGER_SETTINGS",
            json!({"checks": checks.to_string()}).to_string(),
        )
        .env("OUTRIGGER_PROBE_ADDR", format!("127.0.0.1:{probe}"))
        .env("OUTRIGGER_ADMIN_ADDR", format!("127.0.0.1:{admin}"))
        .env("OUTRIGGER_LOG", "warn")
        .spawn()
        .unwrap();
    wait_for_port(probe);
    (Process(child), probe, admin)
}

/// GET on loopback: status and body. Probes must answer quickly whatever the checks do.
fn get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (
        head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        body.to_owned(),
    )
}

fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {timeout:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// An HTTP server answering every request with `respond(stream)`.
fn app(respond: fn(&mut TcpStream)) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut request = [0u8; 2048];
                let _ = stream.read(&mut request);
                respond(&mut stream);
            });
        }
    });
    port
}

fn metric(admin: u16, series: &str) -> Option<f64> {
    let (_, body) = get(admin, "/metrics");
    body.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

#[test]
fn a_redis_that_stops_answering_fails_readiness_never_liveness_and_recovers() {
    let (_redis, redis_port) = redis();
    let app_port = app(|s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    });
    let (_adapter, probe, admin) = adapter(&json!([
        {"name": "app", "type": "http", "url": format!("http://127.0.0.1:{app_port}/healthz"), "bodyContains": "ok",
         "probes": ["liveness", "readiness", "startup"], "intervalMs": 100, "timeoutMs": 300},
        {"name": "cache", "type": "redis", "address": format!("127.0.0.1:{redis_port}"),
         "intervalMs": 100, "timeoutMs": 200, "failureThreshold": 2, "successThreshold": 2},
    ]));
    eventually("readiness", Duration::from_secs(5), || {
        get(probe, "/readyz").0 == 200
    });
    assert_eq!(get(probe, "/startupz").0, 200);

    let sleeper = thread::spawn(move || {
        Command::new("redis-cli")
            .args(["-p", &redis_port.to_string(), "DEBUG", "SLEEP", "2"])
            .output()
            .unwrap()
    });
    let started = Instant::now();
    let mut saw_unready = false;
    let mut saw_ready_again = false;
    while started.elapsed() < Duration::from_secs(6) {
        assert_eq!(
            get(probe, "/livez").0,
            200,
            "liveness failed at {:?}",
            started.elapsed()
        );
        let ready = get(probe, "/readyz").0 == 200;
        saw_unready |= !ready;
        if saw_unready && ready {
            saw_ready_again = true;
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    sleeper.join().unwrap();
    assert!(saw_unready, "readiness never failed while Redis slept");
    assert!(saw_ready_again, "readiness did not come back");

    let (_, detail) = get(probe, "/readyz?verbose");
    let detail: serde_json::Value = serde_json::from_str(&detail).unwrap();
    assert_eq!(detail["checks"][1]["name"], "cache");
    assert_eq!(detail["checks"][1]["dependency"], true);
    assert_eq!(
        metric(
            admin,
            "health_adapter_check_transitions_total{check=\"cache\",to=\"failing\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            admin,
            "health_adapter_endpoint_transitions_total{endpoint=\"readiness\",to=\"down\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            admin,
            "health_adapter_endpoint_transitions_total{endpoint=\"liveness\",to=\"down\"}"
        ),
        None
    );
}

#[test]
fn an_app_that_hangs_or_answers_50_mb_fails_its_check_while_probes_answer_at_once() {
    let hang = app(|_| thread::sleep(Duration::from_secs(30)));
    let huge = app(|s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..800 {
            if s.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let (mut adapter, probe, admin) = adapter(&json!([
        {"name": "hang", "type": "http", "url": format!("http://127.0.0.1:{hang}/"), "intervalMs": 100, "timeoutMs": 200, "failureThreshold": 1},
        {"name": "huge", "type": "http", "url": format!("http://127.0.0.1:{huge}/"), "bodyContains": "ok", "intervalMs": 100, "timeoutMs": 2000, "failureThreshold": 1},
    ]));
    eventually("liveness to fail", Duration::from_secs(5), || {
        let started = Instant::now();
        let (status, _) = get(probe, "/livez");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "a probe waited on a check"
        );
        status == 503
    });
    eventually("both checks to fail", Duration::from_secs(5), || {
        metric(
            admin,
            "health_adapter_check_runs_total{check=\"hang\",result=\"timeout\"}",
        )
        .is_some()
            && metric(
                admin,
                "health_adapter_check_runs_total{check=\"huge\",result=\"io\"}",
            )
            .is_some()
    });
    assert!(adapter.0.try_wait().unwrap().is_none(), "the adapter exited");
    let status = std::fs::read_to_string(format!("/proc/{}/status", adapter.0.id())).unwrap();
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(peak_kb < 32 * 1024, "peak RSS {peak_kb} kB");
}

#[test]
fn metric_thresholds_pass_and_fail_on_the_apps_own_metrics() {
    let metrics = app(|s| {
        let body = "# TYPE queue_depth gauge\nqueue_depth{queue=\"mail\"} 7\nqueue_depth{queue=\"sms\"} 70\n";
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    });
    let url = format!("http://127.0.0.1:{metrics}/metrics");
    let (_adapter, probe, _admin) = adapter(&json!([
        {"name": "mail", "type": "metric", "url": url, "metric": "queue_depth", "labels": {"queue": "mail"}, "below": 10,
         "probes": ["readiness"], "intervalMs": 100},
        {"name": "sms", "type": "metric", "url": url, "metric": "queue_depth", "labels": {"queue": "sms"}, "below": 10,
         "probes": ["readiness"], "intervalMs": 100, "failureThreshold": 1},
        {"name": "gone", "type": "metric", "url": url, "metric": "absent_metric", "above": 0,
         "probes": ["readiness"], "intervalMs": 100, "failureThreshold": 1},
    ]));
    eventually("the checks to settle", Duration::from_secs(5), || {
        let (_, body) = get(probe, "/readyz?detail");
        let detail: serde_json::Value = serde_json::from_str(&body).unwrap();
        detail["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] != "unknown")
    });
    let (status, body) = get(probe, "/readyz?detail");
    assert_eq!(status, 503);
    let detail: serde_json::Value = serde_json::from_str(&body).unwrap();
    let statuses: Vec<(&str, &str)> = detail["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        [("mail", "passing"), ("sms", "failing"), ("gone", "failing")]
    );
    assert!(detail["checks"][1]["lastError"].as_str().unwrap().contains("70"));
}
