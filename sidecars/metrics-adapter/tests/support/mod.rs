//! Real peers for the tests, all on loopback ports picked at random: `redis-server`, Debian's
//! `prometheus-redis-exporter`, the adapter binary itself, small HTTP servers that misbehave on
//! purpose, and a plain HTTP/1.0 client.

// Test fixtures: a failed setup step should stop the test right there, with its message.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

/// A free loopback port (free when asked; the peer binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped.
pub struct Process {
    pub child: Child,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Peak resident memory so far, in bytes (`VmHWM`).
    pub fn peak_rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fails with a hint when a Debian binary the tests need is missing.
pub fn require(binary: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(binary).is_file()))
        .unwrap_or(false);
    assert!(found, "{binary} is missing: run hack/deps.sh (Debian packages)");
}

/// Waits until something accepts connections on `port`.
pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A `redis-server` without persistence.
pub fn redis() -> (Process, u16) {
    require("redis-server");
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
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port);
    (Process { child }, port)
}

/// Runs a Redis command with `redis-cli`.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Debian's `prometheus-redis-exporter` scraping the Redis on `redis_port`.
pub fn redis_exporter(redis_port: u16) -> (Process, u16) {
    require("prometheus-redis-exporter");
    let port = free_port();
    let child = Command::new("prometheus-redis-exporter")
        .arg(format!("--redis.addr=redis://127.0.0.1:{redis_port}"))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port);
    (Process { child }, port)
}

/// The adapter binary with `settings` (a JSON object of strings).
pub fn adapter(settings: &serde_json::Value) -> (Process, u16) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_outrigger-metrics-adapter"))
        .env("OUTRIGGER_SETTINGS", settings.to_string())
        .env("OUTRIGGER_ADMIN_ADDR", format!("127.0.0.1:{port}"))
        .env("OUTRIGGER_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    wait_for_port(port);
    (Process { child }, port)
}

/// A response of a plain HTTP/1.0 GET: status, content type, body.
pub struct Got {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// GETs `path` on loopback with an optional `Accept`.
pub fn get(port: u16, path: &str, accept: Option<&str>) -> Got {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n{accept}\r\n").unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    Got {
        status,
        content_type,
        body: body.to_owned(),
    }
}

/// The value of one sample line (`name{labels}` exactly as written) in an exposition.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// What a misbehaving HTTP server does with each connection.
#[derive(Clone)]
pub enum Behaviour {
    /// Answers 200 with this body.
    Body(&'static str, String),
    /// Reads the request and never answers.
    Hang,
    /// Answers with `bytes` of body, with or without a Content-Length, counting what it sent.
    Huge { bytes: u64, declare_length: bool },
}

/// An HTTP server on a thread; `sent` counts the body bytes the huge behaviour got out.
pub struct Server {
    pub port: u16,
    pub sent: Arc<AtomicU64>,
}

pub fn server(behaviour: Behaviour) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let behaviour = behaviour.clone();
            let counter = counter.clone();
            thread::spawn(move || {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                match behaviour {
                    Behaviour::Body(content_type, body) => {
                        let _ = write!(
                            stream,
                            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Behaviour::Hang => thread::sleep(Duration::from_secs(60)),
                    Behaviour::Huge {
                        bytes,
                        declare_length,
                    } => {
                        let head = if declare_length {
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {bytes}\r\nConnection: close\r\n\r\n")
                        } else {
                            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_owned()
                        };
                        let _ = stream.write_all(head.as_bytes());
                        let chunk = vec![b'['; 64 * 1024];
                        let mut left = bytes;
                        while left > 0 {
                            let n = left.min(chunk.len() as u64) as usize;
                            if stream.write_all(&chunk[..n]).is_err() {
                                break;
                            }
                            counter.fetch_add(n as u64, Ordering::Relaxed);
                            left -= n as u64;
                        }
                    }
                }
            });
        }
    });
    Server { port, sent }
}
