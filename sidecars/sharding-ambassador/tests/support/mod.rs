//! Real peers for the tests: `redis-server` shards, a `nutcracker` pool over them, the ambassador
//! in-process, and a small RESP client. Everything listens on loopback ports picked at random.

// Test fixtures: a failed setup step should stop the test right there, with its message.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    net::{SocketAddr, TcpListener as StdListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::BytesMut;
use outrigger_sharding_ambassador::{
    client::ClientSettings,
    resp::{self, Frame, Limits},
    server,
    shard::ShardSettings,
    shardmap,
    topology::Topology,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{oneshot, watch},
    time::{sleep, timeout},
};

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("outrigger-shard-{label}-{}-{n}", std::process::id()));
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

/// A free loopback port (free when asked; the peer binds it right after).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped.
pub struct Process {
    child: Child,
    _dir: TempDir,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command until dropped.
pub fn spawn(command: &mut Command) -> Process {
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Process {
        child,
        _dir: TempDir::new("process"),
    }
}

/// A client, once something listens on `addr`.
pub async fn connect_when_listening(addr: SocketAddr) -> Client {
    for _ in 0..100 {
        if let Ok(client) = Client::connect(addr).await {
            return client;
        }
        sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {addr}");
}

/// A `redis-server` on a loopback port, without persistence.
pub struct Redis {
    pub name: String,
    pub port: u16,
    process: Option<Process>,
}

impl Redis {
    pub async fn start(name: &str) -> Redis {
        let mut redis = Redis {
            name: name.to_owned(),
            port: free_port(),
            process: None,
        };
        redis.restart().await;
        redis
    }

    /// A shard entry for something else listening on `port` (no redis-server is started).
    pub fn standing_in(name: &str, port: u16) -> Redis {
        Redis {
            name: name.to_owned(),
            port,
            process: None,
        }
    }

    /// Starts (again) on the same port.
    pub async fn restart(&mut self) {
        let dir = TempDir::new("redis");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (hack/deps.sh)");
        self.process = Some(Process { child, _dir: dir });
        wait_for_ping(self.addr()).await;
    }

    pub fn stop(&mut self) {
        self.process = None;
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

async fn wait_for_ping(addr: SocketAddr) {
    for _ in 0..100 {
        if let Ok(mut client) = Client::connect(addr).await {
            if client.call(&["PING"]).await == Frame::Simple("PONG".into()) {
                return;
            }
        }
        sleep(Duration::from_millis(50)).await;
    }
    panic!("{addr} did not answer PING");
}

/// Starts `count` shards named `cache-shard-<i>`.
pub async fn start_shards(count: usize) -> Vec<Redis> {
    let mut shards = Vec::new();
    for index in 0..count {
        shards.push(Redis::start(&format!("cache-shard-{index}")).await);
    }
    shards
}

/// A nutcracker pool over `shards` with the given weights.
pub struct Nutcracker {
    pub port: u16,
    _process: Process,
}

impl Nutcracker {
    pub async fn start(shards: &[Redis], weights: &[u32], hash: &str, hash_tag: Option<&str>) -> Nutcracker {
        let dir = TempDir::new("nutcracker");
        let port = free_port();
        let mut config = format!(
            "pool:\n  listen: 127.0.0.1:{port}\n  hash: {hash}\n  distribution: ketama\n  redis: true\n  \
             auto_eject_hosts: false\n  timeout: 2000\n"
        );
        if let Some(tag) = hash_tag {
            config.push_str(&format!("  hash_tag: \"{tag}\"\n"));
        }
        config.push_str("  servers:\n");
        for (shard, weight) in shards.iter().zip(weights) {
            config.push_str(&format!(
                "   - 127.0.0.1:{}:{weight} {}\n",
                shard.port, shard.name
            ));
        }
        let path = dir.0.join("nutcracker.yml");
        std::fs::write(&path, config).unwrap();
        let child = Command::new("nutcracker")
            .arg("-c")
            .arg(&path)
            .args(["-s", &free_port().to_string(), "-a", "127.0.0.1"])
            .arg("-o")
            .arg(dir.0.join("nutcracker.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nutcracker must be installed (hack/deps.sh)");
        let nutcracker = Nutcracker {
            port,
            _process: Process { child, _dir: dir },
        };
        wait_for_ping(nutcracker.addr()).await;
        nutcracker
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

/// The shard map document the operator would write for `shards`.
pub fn shard_map_json(shards: &[Redis], hash: &str, hash_tag: Option<&str>) -> String {
    let shards: Vec<String> = shards
        .iter()
        .map(|shard| {
            format!(
                r#"{{"name":"{}","endpoints":["{}"]}}"#,
                shard.name,
                shard.endpoint()
            )
        })
        .collect();
    let tag = hash_tag
        .map(|tag| format!(r#""hashTag":"{tag}","#))
        .unwrap_or_default();
    format!(
        r#"{{"protocol":"redis","function":"ketama","hash":"{hash}","virtualNodes":160,{tag}"shards":[{}]}}"#,
        shards.join(",")
    )
}

/// The ambassador, in-process, on a loopback port.
pub struct Ambassador {
    pub addr: SocketAddr,
    pub topology: watch::Sender<Arc<Topology>>,
    _stop: oneshot::Sender<()>,
}

impl Ambassador {
    pub async fn start(shards: &[Redis], hash: &str, hash_tag: Option<&str>) -> Ambassador {
        Ambassador::start_with(
            shards,
            hash,
            hash_tag,
            ShardSettings::default(),
            ClientSettings::default(),
        )
        .await
    }

    pub async fn start_with(
        shards: &[Redis],
        hash: &str,
        hash_tag: Option<&str>,
        shard_settings: ShardSettings,
        client_settings: ClientSettings,
    ) -> Ambassador {
        let spec = shardmap::parse(shard_map_json(shards, hash, hash_tag).as_bytes()).unwrap();
        let topology = Topology::build(&spec, &Topology::empty(), &Arc::new(shard_settings));
        let (sender, receiver) = watch::channel(Arc::new(topology));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server::serve(
            listener,
            receiver,
            Arc::new(client_settings),
            server::ServerLimits::default(),
            async move {
                let _ = stopped.await;
            },
        ));
        Ambassador {
            addr,
            topology: sender,
            _stop: stop,
        }
    }
}

/// A RESP client that reads with the ambassador's own codec.
pub struct Client {
    stream: TcpStream,
    buf: BytesMut,
}

pub fn args<S: AsRef<[u8]>>(words: &[S]) -> Vec<Vec<u8>> {
    words.iter().map(|word| word.as_ref().to_vec()).collect()
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Client> {
        let stream = TcpStream::connect(addr).await?;
        Ok(Client {
            stream,
            buf: BytesMut::new(),
        })
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next reply; `None` when the server closed the connection.
    pub async fn read(&mut self) -> Option<Frame> {
        let limits = Limits::default();
        loop {
            if let Some(frame) = resp::decode_frame(&mut self.buf, &limits).unwrap() {
                return Some(frame);
            }
            let read = timeout(Duration::from_secs(10), self.stream.read_buf(&mut self.buf))
                .await
                .expect("reply within 10 s");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    pub async fn call<S: AsRef<[u8]>>(&mut self, words: &[S]) -> Frame {
        let mut out = BytesMut::new();
        resp::encode_command(words, &mut out);
        self.send_raw(&out).await;
        self.read().await.expect("a reply")
    }

    /// Sends every command in one write, then reads as many replies.
    pub async fn pipeline(&mut self, commands: &[Vec<Vec<u8>>]) -> Vec<Frame> {
        let mut out = BytesMut::new();
        for command in commands {
            resp::encode_command(command, &mut out);
        }
        self.send_raw(&out).await;
        let mut replies = Vec::with_capacity(commands.len());
        for _ in commands {
            replies.push(self.read().await.expect("a reply"));
        }
        replies
    }
}

pub fn bulk(text: impl AsRef<[u8]>) -> Frame {
    Frame::Bulk(bytes::Bytes::copy_from_slice(text.as_ref()))
}

pub fn error_text(frame: &Frame) -> String {
    match frame {
        Frame::Error(text) => String::from_utf8_lossy(text).into_owned(),
        other => panic!("expected an error, got {other:?}"),
    }
}
