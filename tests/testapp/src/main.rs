//! Test app: `GET /healthz` → 200; any other request → 200 with `version=<VERSION>` in the body,
//! or 500 for `ERROR_PERCENT` percent of requests (deterministically, every n-th request).
//! Environment: `PORT` (else `OUTRIGGER_ADMIN_PORT`, so it can stand in for a sidecar; default 8080),
//! `VERSION` (default `v1`), `ERROR_PERCENT` (default 0), `DRAIN_SECONDS` (default 2: how long it
//! keeps serving after SIGTERM, while the endpoints that route to it are being removed).
//!
//! `GET /redis/<word>/<word>/...` sends one Redis command (each path segment percent-decoded, one
//! argument) to `REDIS_ADDR` (default `127.0.0.1:6379`, where a sharding ambassador listens) and
//! answers 200 with the raw RESP reply, or 502 when Redis cannot be reached: images have no shell,
//! so this is how a test speaks Redis from inside a client pod.
//!
//! With `CONFIG_FILE`, it reads that file at start, on SIGHUP and on `POST /-/reload`: its config
//! version (the `"version"` of a JSON object, else the trimmed text) and the number of reloads are
//! added to every answer (`version=v1 config=c2 reloads=1`) and served on `GET /config`; a config
//! with `"healthy": false` makes `/healthz` answer 503 (a bad config the health gate rolls back),
//! and `"errorPercent": N` replaces `ERROR_PERCENT` (a bad config a rollout's analysis rolls back).
//! A file that cannot be read keeps the previous config.
//!
//! `outrigger-testapp watch FILE...` prints each change of the files' first lines with a timestamp,
//! and `outrigger-testapp procstat NAME` the RSS and CPU time of the processes so named (the config
//! sync benchmark uses both).
//!
//! `outrigger-testapp get http://127.0.0.1:PORT/PATH` is a tiny HTTP client (exit 0 on a 2xx), so
//! a test can check from inside a pod what the pod's containers reach on localhost;
//! `outrigger-testapp load URL RATE` sends `RATE` GETs a second for ever (load from inside the
//! cluster, for `make demo`).
//! `outrigger-testapp relay LISTEN TARGET` relays TCP connections from `LISTEN` to `TARGET` (a second
//! container relaying the pod IP to a loopback port, for tests that speak raw bytes to it).
//!
//! `outrigger-testapp files DIR` prints `name size` for each file of DIR (links followed, the
//! kubelet's `..` entries skipped), and `outrigger-testapp stop NAME` sends SIGTERM to the processes
//! so named (through a shared process namespace): the config sync tests check the synced files and
//! restart the sidecar with them.
//!
//! `POST /-/unready` makes `/healthz` answer 503 until `POST /-/ready` (a pod a test takes out of
//! its Service's endpoints and puts back, under the same name).
//! `GET /cache/...` answers with caching headers chosen by its query (`cc`, `vary`, `etag`, `size`,
//! `delay`; see `cache`), and `GET /-/cache-count` says how many of those it answered: the front
//! tier's cache tests count what reached the backend.
//!
//! With `LOG_DIR` set it also writes log files there for the log adapter (see `logs`).
//!
//! `outrigger-testapp sink` is a log sink that prints what it is sent and can be taken down for a
//! while (see `sink`).
//!
//! With `BURN_CPU=1` one thread spins for as long as the process runs, so the pod uses all the CPU
//! its limit allows (the autoscaling tests read it from the kubelet's summary).

mod cache;
mod logs;
mod sink;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};

struct App {
    version: String,
    /// Set by `POST /-/unready`: `/healthz` fails.
    unready: std::sync::atomic::AtomicBool,
    error_percent: u64,
    served: AtomicU64,
    config: Option<ConfigFile>,
}

/// The config file and what was last read from it.
struct ConfigFile {
    path: std::path::PathBuf,
    current: std::sync::Mutex<Config>,
    reloads: AtomicU64,
}

impl ConfigFile {
    fn read(&self) {
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            eprintln!(
                "testapp: cannot read {}; keeping the previous config",
                self.path.display()
            );
            return;
        };
        let json: Option<serde_json::Value> = serde_json::from_str(&text).ok();
        let field = |key: &str| json.as_ref().and_then(|value| value.get(key));
        let version = field("version")
            .and_then(serde_json::Value::as_str)
            .map_or_else(|| text.trim().to_owned(), str::to_owned);
        let healthy = field("healthy")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(true);
        let error_percent = field("errorPercent").and_then(serde_json::Value::as_u64);
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Config {
            version,
            healthy,
            error_percent,
        };
    }

    fn reload(&self) {
        self.read();
        self.reloads.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> Config {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn describe(&self) -> String {
        let version = self.get().version;
        format!(
            "config={version} reloads={}",
            self.reloads.load(Ordering::Relaxed)
        )
    }

    fn healthy(&self) -> bool {
        self.get().healthy
    }
}

/// What the config file last said.
#[derive(Debug, Clone, Default)]
struct Config {
    version: String,
    healthy: bool,
    error_percent: Option<u64>,
}

impl App {
    fn respond(&self, method: &http::Method, path: &str) -> Response<Full<Bytes>> {
        if method == http::Method::POST && (path == "/-/unready" || path == "/-/ready") {
            self.unready.store(path == "/-/unready", Ordering::Relaxed);
            return Response::new(Full::new(Bytes::from_static(b"ok\n")));
        }
        if path == "/healthz" {
            if self.unready.load(Ordering::Relaxed) {
                let mut response = Response::new(Full::new(Bytes::from_static(b"unready\n")));
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                return response;
            }
            if self.config.as_ref().is_some_and(|config| !config.healthy()) {
                let mut response = Response::new(Full::new(Bytes::from_static(b"unhealthy config\n")));
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                return response;
            }
            return Response::new(Full::new(Bytes::from_static(b"ok\n")));
        }
        if let Some(config) = &self.config {
            if path == "/-/reload" && method == http::Method::POST {
                config.reload();
                return Response::new(Full::new(Bytes::from(format!("{}\n", config.describe()))));
            }
            if path == "/config" {
                return Response::new(Full::new(Bytes::from(format!("{}\n", config.describe()))));
            }
        }
        let count = self.served.fetch_add(1, Ordering::Relaxed);
        let error_percent = self
            .config
            .as_ref()
            .and_then(|config| config.get().error_percent)
            .map_or(self.error_percent, |percent| percent.min(100));
        // Fails requests n where floor((n+1)*p/100) > floor(n*p/100): exactly p% over any 100.
        let fails = (count + 1) * error_percent / 100 > count * error_percent / 100;
        let status = if fails {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        };
        let config = self
            .config
            .as_ref()
            .map(|config| format!(" {}", config.describe()))
            .unwrap_or_default();
        let mut response = Response::new(Full::new(Bytes::from(format!(
            "version={}{config}\n",
            self.version
        ))));
        *response.status_mut() = status;
        response
    }
}

/// Percent-decodes one path segment.
fn percent_decode(segment: &str) -> Vec<u8> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = || {
            std::str::from_utf8(bytes.get(i + 1..i + 3)?)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        };
        match (bytes[i], hex()) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// The length of the first whole RESP reply in `buf`, if it is all there.
fn reply_len(buf: &[u8]) -> Option<usize> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let header = std::str::from_utf8(buf.get(1..line_end)?).ok()?;
    let after = line_end + 2;
    match buf.first()? {
        b'$' => {
            let len: i64 = header.parse().ok()?;
            if len < 0 {
                return Some(after);
            }
            let end = after + usize::try_from(len).ok()? + 2;
            (buf.len() >= end).then_some(end)
        }
        b'*' => {
            let count: i64 = header.parse().ok()?;
            let mut at = after;
            for _ in 0..count.max(0) {
                at += reply_len(buf.get(at..)?)?;
            }
            Some(at)
        }
        _ => Some(after),
    }
}

/// Sends one command to Redis at `address` and returns its raw reply.
async fn redis(address: &str, words: &[Vec<u8>]) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        let mut request = format!("*{}\r\n", words.len()).into_bytes();
        for word in words {
            request.extend_from_slice(format!("${}\r\n", word.len()).as_bytes());
            request.extend_from_slice(word);
            request.extend_from_slice(b"\r\n");
        }
        stream.write_all(&request).await?;
        let mut reply = Vec::new();
        loop {
            if let Some(len) = reply_len(&reply) {
                reply.truncate(len);
                return Ok(reply);
            }
            let mut chunk = [0u8; 4096];
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
            reply.extend_from_slice(&chunk[..read]);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), exchange)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

async fn redis_response(path: &str) -> Response<Full<Bytes>> {
    let address = std::env::var("REDIS_ADDR").unwrap_or_else(|_| "127.0.0.1:6379".to_owned());
    let words: Vec<Vec<u8>> = path
        .split('/')
        .filter(|w| !w.is_empty())
        .map(percent_decode)
        .collect();
    let (status, body) = match redis(&address, &words).await {
        Ok(reply) => (StatusCode::OK, Bytes::from(reply)),
        Err(error) => (StatusCode::BAD_GATEWAY, Bytes::from(format!("{error}\n"))),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
}

/// Polls `files` every 5 ms and prints `<unix millis> <path> <first line>` whenever one changes
/// (the benchmark reads these lines to time how fast edits arrive). Runs until killed.
fn watch_files(files: &[String]) -> ! {
    let mut last: Vec<Option<String>> = vec![None; files.len()];
    loop {
        for (file, seen) in files.iter().zip(last.iter_mut()) {
            let now = std::fs::read_to_string(file)
                .ok()
                .map(|text| text.lines().next().unwrap_or_default().to_owned());
            if now.is_some() && now != *seen {
                let millis = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |since| since.as_millis());
                println!("{millis} {file} {}", now.as_deref().unwrap_or_default());
                *seen = now;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Prints the resident memory (kB) and CPU time (clock ticks) of every process named `name` (seen
/// through a shared process namespace).
fn process_stats(name: &str) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !name.starts_with(comm.trim_end()) || comm.trim_end().is_empty() {
            continue;
        }
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        let rss = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .map(|value| value.trim().trim_end_matches(" kB").to_owned())
            .unwrap_or_default();
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: utime and stime are the 12th and 13th.
        let ticks: u64 = stat
            .rsplit_once(')')
            .map(|(_, rest)| {
                rest.split_whitespace()
                    .skip(11)
                    .take(2)
                    .filter_map(|t| t.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or_default();
        println!(
            "pid={} rss_kb={rss} cpu_ticks={ticks}",
            entry.file_name().to_string_lossy()
        );
    }
}

/// Relays every TCP connection accepted on `listen` to `target`, byte for byte, both ways; when one
/// side closes its half, the other side's is closed too. A second container of a pod runs it so a
/// test reaches what listens on that pod's loopback (kubectl port-forward needs socat on the node).
async fn relay(listen: &str, target: &str) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    loop {
        let (mut inbound, _) = listener.accept().await?;
        let target = target.to_owned();
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// The processes whose `comm` (cut to 15 bytes by the kernel) begins `name`.
fn processes_named(name: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            let comm = comm.trim_end();
            (!comm.is_empty() && name.starts_with(comm)).then_some(pid)
        })
        .collect()
}

/// Sends SIGTERM to every process named `name`; true when there was one.
fn stop(name: &str) -> bool {
    let pids = processes_named(name);
    for pid in &pids {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        #[allow(unsafe_code)]
        let result = unsafe { libc::kill(*pid, libc::SIGTERM) };
        println!("pid={pid} signalled={}", result == 0);
    }
    !pids.is_empty()
}

/// Prints `name size` for every file of `dir`, sorted, without the `..`-prefixed entries.
fn list_files(dir: &str) -> std::io::Result<()> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("..") {
            continue;
        }
        let size = std::fs::metadata(entry.path()).map_or(0, |metadata| metadata.len());
        files.push(format!("{name} {size}"));
    }
    files.sort();
    for file in files {
        println!("{file}");
    }
    Ok(())
}

/// GET `url` (`http://host:port/path`): whether the answer is a 2xx, and the answer.
fn fetch(url: &str) -> std::io::Result<(bool, String)> {
    use std::io::{Error, Read, Write};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| Error::other("only http:// URLs"))?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(authority)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let ok = response
        .split_whitespace()
        .nth(1)
        .is_some_and(|status| status.starts_with('2'));
    Ok((ok, response))
}

fn get(url: &str) -> std::io::Result<bool> {
    let (ok, response) = fetch(url)?;
    print!("{response}");
    Ok(ok)
}

/// `outrigger-testapp load URL RATE`: GETs `URL` about `RATE` times a second, for ever, and prints
/// every 5 s how many answers were 2xx and how many were not (in-cluster load for a demo).
fn load(url: &str, rate: u32) -> ! {
    use std::time::{Duration, Instant};
    let pause = Duration::from_secs(1) / rate.max(1);
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut since = Instant::now();
    loop {
        match fetch(url) {
            Ok((true, _)) => ok += 1,
            _ => failed += 1,
        }
        if since.elapsed() >= Duration::from_secs(5) {
            println!("load: {ok} ok, {failed} failed in the last 5s");
            (ok, failed, since) = (0, 0, Instant::now());
        }
        std::thread::sleep(pause);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("watch") {
        watch_files(&args[2..]);
    }
    if args.get(1).map(String::as_str) == Some("procstat") {
        process_stats(args.get(2).map(String::as_str).unwrap_or_default());
        return Ok(());
    }
    if args.get(1).map(String::as_str) == Some("sink") {
        return sink::run().await;
    }
    if args.get(1).map(String::as_str) == Some("relay") {
        let listen = args.get(2).map(String::as_str).unwrap_or("0.0.0.0:7000");
        let target = args.get(3).map(String::as_str).unwrap_or("127.0.0.1:6379");
        return relay(listen, target).await;
    }
    if args.get(1).map(String::as_str) == Some("stop") {
        let found = stop(args.get(2).map(String::as_str).unwrap_or_default());
        std::process::exit(if found { 0 } else { 1 });
    }
    if args.get(1).map(String::as_str) == Some("files") {
        return list_files(args.get(2).map(String::as_str).unwrap_or("."));
    }
    if args.get(1).map(String::as_str) == Some("load") {
        let rate = args.get(3).and_then(|r| r.parse().ok()).unwrap_or(20);
        load(args.get(2).map(String::as_str).unwrap_or_default(), rate);
    }
    if args.get(1).map(String::as_str) == Some("get") {
        let ok = get(args.get(2).map(String::as_str).unwrap_or_default())?;
        std::process::exit(if ok { 0 } else { 1 });
    }
    logs::start();
    if std::env::var("BURN_CPU").is_ok_and(|value| value == "1") {
        std::thread::spawn(|| {
            let mut x: u64 = 1;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            }
        });
    }
    let port: u16 = ["PORT", "OUTRIGGER_ADMIN_PORT"]
        .iter()
        .find_map(|name| std::env::var(name).ok().and_then(|p| p.parse().ok()))
        .unwrap_or(8080);
    let app = Arc::new(App {
        version: std::env::var("VERSION").unwrap_or_else(|_| "v1".to_owned()),
        unready: std::sync::atomic::AtomicBool::new(false),
        error_percent: std::env::var("ERROR_PERCENT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
            .min(100),
        served: AtomicU64::new(0),
        config: std::env::var_os("CONFIG_FILE").map(|path| ConfigFile {
            path: path.into(),
            current: std::sync::Mutex::new(Config {
                healthy: true,
                ..Config::default()
            }),
            reloads: AtomicU64::new(0),
        }),
    });
    if let Some(config) = &app.config {
        config.read();
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let app = app.clone();
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                if let Some(config) = &app.config {
                    config.reload();
                }
            }
        });
    }
    let drain = std::time::Duration::from_secs(
        std::env::var("DRAIN_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2),
    );
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = terminate.recv() => tokio::time::sleep(drain).await,
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut stop => return Ok(()),
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let app = app.clone();
                async move {
                    let method = request.method().clone();
                    let path = request.uri().path();
                    let response = match path.strip_prefix("/redis/") {
                        Some(command) => redis_response(command).await,
                        None if path.starts_with("/cache/") => {
                            cache::respond(request.uri().query().unwrap_or(""), request.headers()).await
                        }
                        None if path == "/-/cache-count" => cache::count(),
                        None => app.respond(&method, path),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_is_complete_only_when_every_part_arrived() {
        assert_eq!(reply_len(b"+OK\r\n"), Some(5));
        assert_eq!(reply_len(b"$5\r\nhel"), None);
        assert_eq!(reply_len(b"$5\r\nhello\r\n+extra"), Some(11));
        assert_eq!(reply_len(b"$-1\r\n"), Some(5));
        assert_eq!(reply_len(b"*2\r\n$1\r\na\r\n"), None);
        assert_eq!(reply_len(b"*2\r\n$1\r\na\r\n:7\r\n"), Some(15));
    }

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(percent_decode("user%3A%7B42%7D"), b"user:{42}");
        assert_eq!(percent_decode("100%"), b"100%");
    }
}
