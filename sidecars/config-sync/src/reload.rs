//! Telling the app: an HTTP request (reload, and the health checks after it) or a signal to a
//! process found by name in `/proc` (the pod shares its process namespace).

use std::{path::Path, time::Duration};

use outrigger_contract::config_sync::Reload;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Longest wait for the app's answer to a reload or a health check.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why telling the app failed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("{url} answered {status}, not {expected}")]
    Status { url: String, status: u16, expected: u16 },
    #[error("no process named {0:?} in the pod (is shareProcessNamespace on?)")]
    NoProcess(String),
    #[error("signalling {process} (pid {pid}): {source}")]
    Signal {
        process: String,
        pid: i32,
        source: std::io::Error,
    },
}

impl ReloadError {
    pub fn category(&self) -> &'static str {
        match self {
            ReloadError::Http { .. } => "http",
            ReloadError::Status { .. } => "status",
            ReloadError::NoProcess(_) => "no_process",
            ReloadError::Signal { .. } => "signal",
        }
    }
}

/// Asks the app to reload, as the settings say.
pub async fn reload(how: &Reload) -> Result<(), ReloadError> {
    match how {
        Reload::None => Ok(()),
        Reload::Http {
            url,
            method,
            expect_status,
        } => {
            let status = request(method, url).await?;
            if status == *expect_status {
                Ok(())
            } else {
                Err(ReloadError::Status {
                    url: url.clone(),
                    status,
                    expected: *expect_status,
                })
            }
        }
        Reload::Signal { process, signal } => signal_process(Path::new("/proc"), process, signal),
    }
}

/// `GET url`: whether it answered 2xx.
pub async fn healthy(url: &str) -> bool {
    matches!(request("GET", url).await, Ok(status) if (200..300).contains(&status))
}

/// Sends one HTTP/1.1 request with no body to an `http://` URL and returns the status code.
pub async fn request(method: &str, url: &str) -> Result<u16, ReloadError> {
    let fail = |message: String| ReloadError::Http {
        url: url.to_owned(),
        message,
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| fail("only http:// URLs".to_owned()))?;
    let (authority, path) = match rest.split_once('/') {
        Some((authority, path)) => (authority, format!("/{path}")),
        None => (rest, "/".to_owned()),
    };
    let exchange = async {
        let mut stream = TcpStream::connect(authority)
            .await
            .map_err(|error| fail(format!("connecting: {error}")))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: outrigger-config-sync\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|error| fail(format!("sending: {error}")))?;
        let mut buffer = [0u8; 64];
        let mut read = 0;
        while read < 12 {
            let count = stream
                .read(&mut buffer[read..])
                .await
                .map_err(|error| fail(format!("reading: {error}")))?;
            if count == 0 {
                break;
            }
            read += count;
        }
        parse_status(&buffer[..read]).ok_or_else(|| fail("the answer is not HTTP".to_owned()))
    };
    tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| fail(format!("no answer within {HTTP_TIMEOUT:?}")))?
}

fn parse_status(head: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(head.get(..12)?).ok()?;
    if !text.starts_with("HTTP/1.") {
        return None;
    }
    text.get(9..12)?.parse().ok()
}

/// The pids of processes named `name` under `proc`: by `comm` (the kernel's 15-byte name) or by
/// the file name of `argv[0]`.
pub fn find_processes(proc: &Path, name: &str) -> Vec<i32> {
    let own = std::process::id();
    let Ok(entries) = std::fs::read_dir(proc) else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = entries
        .flatten()
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()?
                .parse::<i32>()
                .ok()
                .map(|pid| (pid, entry.path()))
        })
        .filter(|(pid, _)| u32::try_from(*pid).is_ok_and(|pid| pid != own))
        .filter(|(_, path)| {
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            let comm_matches = comm.trim_end() == name || (name.len() > 15 && comm.trim_end() == &name[..15]);
            let argv0_matches = std::fs::read(path.join("cmdline")).is_ok_and(|cmdline| {
                let argv0 = cmdline.split(|byte| *byte == 0).next().unwrap_or_default();
                Path::new(&*String::from_utf8_lossy(argv0))
                    .file_name()
                    .is_some_and(|file| file == name)
            });
            comm_matches || argv0_matches
        })
        .map(|(pid, _)| pid)
        .collect();
    pids.sort_unstable();
    pids
}

fn signal_number(signal: &str) -> libc::c_int {
    match signal {
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "INT" => libc::SIGINT,
        "TERM" => libc::SIGTERM,
        "QUIT" => libc::SIGQUIT,
        _ => libc::SIGHUP,
    }
}

/// Signals every process named `process`.
fn signal_process(proc: &Path, process: &str, signal: &str) -> Result<(), ReloadError> {
    let pids = find_processes(proc, process);
    if pids.is_empty() {
        return Err(ReloadError::NoProcess(process.to_owned()));
    }
    for pid in pids {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours; the pid was read from
        // /proc just now (a reused pid would be another process of the same pod, same user).
        #[allow(unsafe_code)]
        let result = unsafe { libc::kill(pid, signal_number(signal)) };
        if result != 0 {
            return Err(ReloadError::Signal {
                process: process.to_owned(),
                pid,
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    async fn server(answer: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buffer = vec![0u8; 1024];
            let count = stream.read(&mut buffer).await.unwrap();
            stream.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buffer[..count]).into_owned()
        });
        (format!("http://{address}"), task)
    }

    #[tokio::test]
    async fn an_http_reload_sends_the_method_and_checks_the_status() {
        let (base, seen) = server("HTTP/1.1 204 No Content\r\n\r\n").await;
        let how = Reload::Http {
            url: format!("{base}/-/reload"),
            method: "PUT".to_owned(),
            expect_status: 204,
        };
        reload(&how).await.unwrap();
        assert!(seen.await.unwrap().starts_with("PUT /-/reload HTTP/1.1\r\n"));

        let (base, _seen) = server("HTTP/1.1 500 Internal Server Error\r\n\r\n").await;
        let how = Reload::Http {
            url: format!("{base}/reload"),
            method: "POST".to_owned(),
            expect_status: 200,
        };
        let error = reload(&how).await.unwrap_err();
        assert_eq!(error.category(), "status");
    }

    #[tokio::test]
    async fn health_is_a_2xx_and_a_closed_port_is_unhealthy() {
        let (base, _seen) = server("HTTP/1.0 200 OK\r\n\r\nok").await;
        assert!(healthy(&format!("{base}/healthz")).await);
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(!healthy(&format!("http://{closed}/healthz")).await);
    }

    #[test]
    fn processes_are_found_by_comm_or_argv0_and_never_ourselves() {
        let proc = std::env::temp_dir().join(format!("config-sync-proc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&proc);
        for (pid, comm, cmdline) in [
            ("10", "nginx\n", "nginx: master\0"),
            ("11", "sh\n", "/usr/bin/my-long-app-name\0--flag\0"),
            ("12", "other\n", "other\0"),
        ] {
            std::fs::create_dir_all(proc.join(pid)).unwrap();
            std::fs::write(proc.join(pid).join("comm"), comm).unwrap();
            std::fs::write(proc.join(pid).join("cmdline"), cmdline).unwrap();
        }
        std::fs::create_dir_all(proc.join(std::process::id().to_string())).unwrap();
        std::fs::write(proc.join(std::process::id().to_string()).join("comm"), "nginx\n").unwrap();
        std::fs::create_dir_all(proc.join("self")).unwrap();
        assert_eq!(find_processes(&proc, "nginx"), [10]);
        assert_eq!(find_processes(&proc, "my-long-app-name"), [11]);
        assert!(find_processes(&proc, "absent").is_empty());
        assert!(matches!(
            signal_process(&proc, "absent", "HUP"),
            Err(ReloadError::NoProcess(_))
        ));
        std::fs::remove_dir_all(&proc).unwrap();
    }
}
