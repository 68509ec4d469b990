//! A real NATS server with JetStream (the Debian package `nats-server`; `scripts/ensure-deps
//! test` installs it), started per test on a free loopback port with a scratch store, and
//! stopped when dropped.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsServer {
    pub addr: SocketAddr,
    child: Child,
    _store: tempfile::TempDir,
}

/// Debian installs it in /usr/sbin, which a non-root user's PATH may lack.
fn nats_server_bin() -> std::path::PathBuf {
    [
        "/usr/sbin/nats-server",
        "/usr/local/bin/nats-server",
        "/usr/bin/nats-server",
    ]
    .iter()
    .map(std::path::PathBuf::from)
    .find(|p| p.exists())
    .unwrap_or_else(|| "nats-server".into())
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let store = tempfile::tempdir().unwrap();
        let addr = crate::free_addr();
        let log = std::fs::File::create(store.path().join("nats.log")).unwrap();
        let child = Command::new(nats_server_bin())
            .args(["--jetstream", "--addr", "127.0.0.1", "--port"])
            .arg(addr.port().to_string())
            .arg("--store_dir")
            .arg(store.path().join("jetstream"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server (scripts/ensure-deps test installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        NatsServer {
            addr,
            child,
            _store: store,
        }
    }

    /// The server's process id (a benchmark reads its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// The stream's messages in order: (subject, `Nats-Msg-Id`, body as JSON).
    pub async fn messages(&self, stream: &str) -> Vec<(String, String, serde_json::Value)> {
        let client = async_nats::connect(self.url()).await.unwrap();
        let jetstream = async_nats::jetstream::new(client);
        let mut stream = jetstream.get_stream(stream).await.unwrap();
        let state = stream.info().await.unwrap().state.clone();
        let mut out = Vec::new();
        if state.messages == 0 {
            return out;
        }
        for seq in state.first_sequence..=state.last_sequence {
            let message = stream.get_raw_message(seq).await.unwrap();
            let id = message
                .headers
                .get("Nats-Msg-Id")
                .map(|v| v.to_string())
                .unwrap_or_default();
            let body = serde_json::from_slice(&message.payload).unwrap();
            out.push((message.subject.to_string(), id, body));
        }
        out
    }

    /// How many messages the stream holds (0 while it does not exist).
    pub async fn count(&self, stream: &str) -> u64 {
        let Ok(client) = async_nats::connect(self.url()).await else {
            return 0;
        };
        let jetstream = async_nats::jetstream::new(client);
        match jetstream.get_stream(stream).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
