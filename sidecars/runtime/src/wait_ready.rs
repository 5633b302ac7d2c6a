//! `<sidecar> wait-ready`: blocks until the sidecar's own `/readyz` answers 200.
//!
//! Injected as a postStart hook on clusters without native sidecars: the kubelet starts a pod's
//! containers in order and waits for each postStart hook, so the app starts only once the sidecars
//! placed before it are ready.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

/// The first argument that selects this mode.
pub const COMMAND: &str = "wait-ready";

fn ready(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream
        .write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

/// Waits up to `timeout` for `/readyz` on `port` (from `OUTRIGGER_ADMIN_PORT` when `None`).
/// Returns the process exit code: 0 when ready, 1 on timeout.
pub fn run(port: Option<u16>, timeout: Duration) -> i32 {
    let Some(port) = port.or_else(|| std::env::var("OUTRIGGER_ADMIN_PORT").ok()?.parse().ok()) else {
        eprintln!("wait-ready: no admin port (set OUTRIGGER_ADMIN_PORT)");
        return 1;
    };
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready(port) {
            return 0;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("wait-ready: 127.0.0.1:{port}/readyz did not answer 200 within {timeout:?}");
    1
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn returns_once_readyz_answers_200_and_times_out_otherwise() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buffer = [0u8; 256];
            let _ = stream.read(&mut buffer);
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
        });
        assert_eq!(run(Some(port), Duration::from_secs(5)), 0);
        server.join().unwrap();

        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert_eq!(run(Some(closed), Duration::from_millis(300)), 1);
    }
}
